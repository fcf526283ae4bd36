"""InstructGPT step 2 (Ouyang et al. 2022, §3.5 "Reward modeling"): a reward model started from the SFT
model, trained on K-wise rankings (all C(K,2) comparisons of a prompt in one batch element), its bias
then shifted so that SFT samples score 0 on average.

    python training/instructgpt/reward.py --config training/instructgpt/reward.yaml --sft_path runs/ig/sft
    accelerate launch --multi_gpu --num_processes 2 training/instructgpt/reward.py --config ...
"""

from __future__ import annotations

from trl import TrlParser

from hf_paper_models.rlhf.reward import KWiseRewardConfig
from hf_paper_models.rlhf.stages import RewardStageArguments, reward_stage, use_cpu_group_under_launcher


def main(argv: list[str] | None = None):
    use_cpu_group_under_launcher()  # DDP on CPU: one gloo group, not N lone rank-0 runs
    stage, config, remaining = TrlParser((RewardStageArguments, KWiseRewardConfig)).parse_args_and_config(
        argv, return_remaining_strings=True
    )
    if remaining:
        raise ValueError(f"Unknown arguments: {remaining}")
    return reward_stage(stage, config, f"{config.output_dir}/final")[0]


if __name__ == "__main__":
    main()
