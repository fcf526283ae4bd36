"""The RL stage through TRL's own trainers, for comparison with our PPO-ptx (ppo.py): ``RLOOTrainer``
(REINFORCE leave-one-out) or ``GRPOTrainer`` (group-relative advantages), the policy started from the
SFT model and our reward model (``AutoModelForSequenceClassification``, one label) as the reward.
Neither has a value model, a ptx term or a per-token KL in the reward: those are PPO-ptx's.

    python training/instructgpt/trl_rl.py --trainer rloo --sft_path runs/ig/sft --reward_path runs/ig/reward \
        --output_dir runs/ig/rloo --max_steps 40
    python training/instructgpt/trl_rl.py --trainer grpo ... --output_dir runs/ig/grpo
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field

import yaml
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer
from trl import GRPOConfig, GRPOTrainer, RLOOConfig, RLOOTrainer, TrlParser

import hf_paper_models  # noqa: F401  (registers our model types with the Auto classes)
from hf_paper_models.data.instructions import prompt_dataset
from hf_paper_models.rlhf.stages import use_cpu_group_under_launcher, write_stage_card


@dataclass
class RLArguments:
    trainer: str = field(default="rloo", metadata={"help": "'rloo' or 'grpo'."})
    sft_path: str = field(default="", metadata={"help": "The SFT policy to start from."})
    reward_path: str = field(default="", metadata={"help": "Our reward model folder (the reward)."})
    num_prompts: int = 2000
    task_seed: int = 0

    def __post_init__(self) -> None:
        if self.trainer not in ("rloo", "grpo"):
            raise ValueError(f"RLArguments: `trainer` must be 'rloo' or 'grpo', got {self.trainer!r}.")


def build_trainer(rl: RLArguments, config: GRPOConfig | RLOOConfig):
    tokenizer = AutoTokenizer.from_pretrained(rl.sft_path, padding_side="left")
    reward_tokenizer = AutoTokenizer.from_pretrained(rl.reward_path)
    policy = AutoModelForCausalLM.from_pretrained(rl.sft_path)
    reward_model = AutoModelForSequenceClassification.from_pretrained(rl.reward_path)
    prompts = prompt_dataset(rl.num_prompts, "train", seed=rl.task_seed + 5).select_columns(["prompt"])
    cls = GRPOTrainer if rl.trainer == "grpo" else RLOOTrainer
    return cls(
        model=policy, reward_funcs=reward_model, args=config, train_dataset=prompts, processing_class=tokenizer,
        reward_processing_classes=reward_tokenizer,
    )  # fmt: skip


def _trainer_name(args: list[str]) -> str:
    """``--trainer`` from the command line, else from the ``--config`` YAML, else 'rloo': it picks the
    config class (``GRPOConfig`` or ``RLOOConfig``) before the full parse."""
    peek = argparse.ArgumentParser(add_help=False)
    peek.add_argument("--trainer")
    peek.add_argument("--config")
    known = peek.parse_known_args(args)[0]
    if known.trainer is not None:
        return known.trainer
    if known.config is not None:
        with open(known.config) as f:
            return str((yaml.safe_load(f) or {}).get("trainer", "rloo"))
    return "rloo"


def main(argv: list[str] | None = None):
    use_cpu_group_under_launcher()  # DDP on CPU: one gloo group, not N lone rank-0 runs
    args = list(sys.argv[1:] if argv is None else argv)
    config_class = GRPOConfig if _trainer_name(args) == "grpo" else RLOOConfig
    rl, config, remaining = TrlParser((RLArguments, config_class)).parse_args_and_config(
        args, return_remaining_strings=True
    )
    if remaining:
        raise ValueError(f"Unknown arguments: {remaining}")
    trainer = build_trainer(rl, config)
    trainer.train()
    final = f"{config.output_dir}/final"
    trainer.save_model(final)
    if trainer.accelerator.is_main_process:
        last = (
            {k: v for k, v in trainer.state.log_history[-1].items() if isinstance(v, float)}
            if trainer.state.log_history
            else {}
        )
        write_stage_card(final, rl.trainer.upper(), {"steps": trainer.state.global_step, **last})
    trainer.accelerator.wait_for_everyone()
    return trainer


if __name__ == "__main__":
    main()
