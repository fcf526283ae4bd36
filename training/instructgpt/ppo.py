"""InstructGPT step 3 (Ouyang et al. 2022, §3.5 "Reinforcement learning"): PPO-ptx from the SFT policy
against the reward model, with a per-token KL penalty to the SFT model and the pretraining term.

    python training/instructgpt/ppo.py --config training/instructgpt/ppo.yaml \
        --sft_path runs/ig/sft --reward_path runs/ig/reward
    python training/instructgpt/ppo.py --config training/instructgpt/ppo.yaml ... --ptx_coef 0   # plain PPO
    python training/instructgpt/ppo.py --config training/instructgpt/ppo.yaml ... --use_peft true  # LoRA policy
    accelerate launch --multi_gpu --num_processes 2 training/instructgpt/ppo.py --config ...
"""

from __future__ import annotations

from trl import TrlParser

from hf_paper_models.rlhf.ppo import PPOConfig
from hf_paper_models.rlhf.stages import PPOStageArguments, ppo_stage


def main(argv: list[str] | None = None):
    stage, config, remaining = TrlParser((PPOStageArguments, PPOConfig)).parse_args_and_config(
        argv, return_remaining_strings=True
    )
    if remaining:
        raise ValueError(f"Unknown arguments: {remaining}")
    return ppo_stage(stage, config, f"{config.output_dir}/final")[0]


if __name__ == "__main__":
    main()
