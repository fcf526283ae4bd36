"""InstructGPT's RLHF stages (Ouyang et al. 2022, §3.5): the K-wise reward model and PPO-ptx; the stage
functions that chain them with SFT live in ``hf_paper_models.rlhf.stages``."""

from .ppo import PPOConfig, PPOTrainer
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
    "PPOConfig",
    "PPOTrainer",
    "kwise_loss",
    "normalize_reward_bias",
    "score_responses",
    "tokenize_response",
]
