"""InstructGPT's RLHF stages (Ouyang et al. 2022): the K-wise reward model (§3.5) and PPO-ptx (§3.5)."""

from .reward import (
    DataCollatorForKWise,
    KWiseRewardConfig,
    KWiseRewardTrainer,
    kwise_loss,
    normalize_reward_bias,
    score_responses,
    tokenize_response,
)

__all__ = [
    "DataCollatorForKWise",
    "KWiseRewardConfig",
    "KWiseRewardTrainer",
    "kwise_loss",
    "normalize_reward_bias",
    "score_responses",
    "tokenize_response",
]

from .ppo import PPOConfig, PPOTrainer  # noqa: E402  (PPO-ptx, §3.5; its formulas live in .ppo)

__all__ += ["PPOConfig", "PPOTrainer"]
