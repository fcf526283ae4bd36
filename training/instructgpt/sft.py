"""InstructGPT step 1 (Ouyang et al. 2022, §3.5 "Supervised fine-tuning"): fine-tune a pretrained GPT on
demonstrations with TRL's ``SFTTrainer``, the loss on the assistant turns only.

    python training/instructgpt/sft.py --config training/instructgpt/sft.yaml --model_path runs/ig/pretrain/final
    accelerate launch --multi_gpu --num_processes 2 training/instructgpt/sft.py --config ... # DDP (gloo on CPU)

``--dataset my_demos.jsonl`` (a ``messages`` column) trains on your own demonstrations instead of the
embedded ones. Checkpoints in ``--output_dir``; a rerun resumes from the last one.
"""

from __future__ import annotations

import os

import torch
from trl import SFTConfig, TrlParser

from hf_paper_models.rlhf.stages import SFTStageArguments, sft_stage


def main(argv: list[str] | None = None):
    # DDP on a machine without an accelerator: TrainingArguments forms a gloo group only when told it runs
    # on CPU; otherwise every process trains alone as rank 0 (training_utils.make_accelerator does the same).
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.accelerator.is_available():
        os.environ["ACCELERATE_USE_CPU"] = "true"
    stage, config, remaining = TrlParser((SFTStageArguments, SFTConfig)).parse_args_and_config(
        argv, return_remaining_strings=True
    )
    if remaining:
        raise ValueError(f"Unknown arguments: {remaining}")
    return sft_stage(stage, config, f"{config.output_dir}/final")


if __name__ == "__main__":
    main()
