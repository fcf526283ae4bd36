"""InstructGPT step 1 (Ouyang et al. 2022, §3.5 "Supervised fine-tuning"): fine-tune a pretrained GPT on
demonstrations with TRL's ``SFTTrainer``, the loss on the assistant turns only.

    python training/instructgpt/sft.py --config training/instructgpt/sft.yaml --model_path runs/ig/pretrain/final
    accelerate launch --multi_gpu --num_processes 2 training/instructgpt/sft.py --config ... # DDP (gloo on CPU)

``--dataset my_demos.jsonl`` (a ``messages`` column) trains on your own demonstrations instead of the
embedded ones. Checkpoints in ``--output_dir``; a rerun resumes from the last one.
"""

from __future__ import annotations

from trl import SFTConfig, TrlParser

from hf_paper_models.rlhf.stages import SFTStageArguments, sft_stage, use_cpu_group_under_launcher


def main(argv: list[str] | None = None):
    use_cpu_group_under_launcher()  # DDP on CPU: one gloo group, not N lone rank-0 runs
    stage, config, remaining = TrlParser((SFTStageArguments, SFTConfig)).parse_args_and_config(
        argv, return_remaining_strings=True
    )
    if remaining:
        raise ValueError(f"Unknown arguments: {remaining}")
    return sft_stage(stage, config, f"{config.output_dir}/final")


if __name__ == "__main__":
    main()
