"""PPO-ptx — the RL stage of InstructGPT (Ouyang et al. 2022, "Training language models to follow
instructions with human feedback", §3.5 and Appendix C.4), as a ``PPOConfig`` + ``PPOTrainer`` pair in
TRL's style, on ``accelerate`` directly (TRL 1.x no longer ships a PPO trainer).

The objective the paper maximises (§3.5, eq. 2)::

    objective(φ) = E_{(x,y)∼D_πφ} [ r_θ(x, y) − β · log(π_φ(y|x) / π_SFT(y|x)) ]
                 + γ · E_{x∼D_pretrain} [ log π_φ(x) ]

- the policy π_φ starts from the SFT model, which stays frozen as the reference π_SFT;
- the reward r_θ is the reward model's scalar on prompt + response (given at the last response token);
- the KL penalty β · log(π/π_SFT) is charged on every response token (β = 0.02 in the paper);
- the value function is initialised from the reward model (Appendix C.4);
- "PPO-ptx" adds the pretraining log-likelihood with coefficient γ (27.8 in the paper; γ = 0 is plain
  PPO), here mixed into every PPO update as a causal-LM loss on a pretraining batch.

The RL part is PPO (Schulman et al. 2017, "Proximal Policy Optimization Algorithms"): the clipped
surrogate objective (eq. 7), a clipped value loss, several epochs of mini-batch updates per rollout,
with advantages from generalised advantage estimation (Schulman et al. 2016, "High-Dimensional
Continuous Control Using Generalized Advantage Estimation", eq. 16) over the response tokens, each
token being one action of an episode that ends at the response's end.

Conventions follow TRL's PPO trainers (log-probs of the sampling distribution, i.e. logits divided by the
temperature; dropout off while sampling and training; a value model ``score`` head read at every
response position; advantage whitening), with code of our own.

Determinism: everything random — the prompts of a rollout, generation sampling, mini-batch shuffles,
pretraining batches, dropout — is a pure function of ``(seed, rollout index, …, process index)``, so a
run interrupted after a checkpoint and resumed ends with bitwise the same weights as an uninterrupted
run (checkpoints: ``training_utils.save_checkpoint``, atomic ``accelerator.save_state``).

Several processes: ``accelerate launch --multi_gpu --num_processes 2 script.py`` or ``torchrun`` (on a
CPU machine the trainer forms a gloo group itself, as ``training_utils.make_accelerator`` does;
accelerate 1.x's ``launch --cpu`` starts a single process unless MPI is used). Batch sizes are per
process.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import ProjectConfiguration, set_seed
from torch import nn
from tqdm.auto import tqdm
from transformers import GenerationConfig, SchedulerType, get_scheduler

from ..training_utils import _require, flat_config, group_texts, resume_state, save_checkpoint

logger = logging.getLogger(__name__)

__all__ = [
    "PPOConfig",
    "PPOTrainer",
    "PolicyAndValue",
    "compute_gae",
    "entropy_from_logits",
    "kl_penalized_rewards",
    "logprobs_from_logits",
    "masked_mean",
    "policy_loss",
    "ptx_loss",
    "value_loss",
    "whiten",
]

_SCHEDULERS = [s.value for s in SchedulerType]


# ----------------------------------------------------------------------------------------------
# Configuration
# ----------------------------------------------------------------------------------------------


@dataclass
class PPOConfig:
    """Options of ``PPOTrainer``. Batch sizes are per process (as ``per_device_train_batch_size``).

    Paper values (InstructGPT §3.5 / Appendix C.4): ``kl_coef`` β = 0.02, ``ptx_coef`` γ = 27.8 for
    PPO-ptx (0 gives the paper's plain "PPO" models), clip ratio 0.2, sampling temperature 1. The other
    defaults follow TRL's former ``PPOConfig`` (γ_GAE = 1, λ = 0.95, 4 PPO epochs, vf_coef 0.1).
    """

    output_dir: str = field(
        default="runs/ppo", metadata={"help": "Checkpoints, TensorBoard logs, log_history.json."}
    )
    seed: int = field(default=42, metadata={"help": "All randomness derives from (seed, rollout index)."})
    learning_rate: float = field(default=1e-5, metadata={"help": "Policy AdamW learning rate."})
    value_learning_rate: float = field(default=1e-5, metadata={"help": "Value-model AdamW learning rate."})
    weight_decay: float = 0.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.95
    adam_epsilon: float = 1e-8
    lr_scheduler_type: str = field(default="constant", metadata={"help": f"One of {_SCHEDULERS}."})
    warmup_steps: int = field(default=0, metadata={"help": "Warm-up, in PPO updates (mini-batches)."})
    num_rollouts: int = field(default=100, metadata={"help": "Rollout + optimisation iterations."})
    total_episodes: int | None = field(
        default=None,
        metadata={"help": "If set, num_rollouts = ceil(total_episodes / (rollout_batch_size × processes))."},
    )
    rollout_batch_size: int = field(default=64, metadata={"help": "Prompts per rollout, per process."})
    mini_batch_size: int = field(default=16, metadata={"help": "Episodes per PPO update, per process."})
    ppo_epochs: int = field(default=4, metadata={"help": "Passes over each rollout's episodes."})
    max_prompt_length: int | None = field(
        default=None, metadata={"help": "Keep at most this many (last) prompt tokens; None: all."}
    )
    max_new_tokens: int = 64
    temperature: float = 1.0
    top_k: int = field(default=0, metadata={"help": "0 disables top-k filtering."})
    top_p: float = 1.0
    kl_coef: float = field(default=0.02, metadata={"help": "β of the per-token KL penalty (paper: 0.02)."})
    gamma: float = field(default=1.0, metadata={"help": "GAE discount γ."})
    lam: float = field(default=0.95, metadata={"help": "GAE λ."})
    cliprange: float = field(default=0.2, metadata={"help": "PPO ratio clip ε."})
    cliprange_value: float = field(default=0.2, metadata={"help": "Value clip around the rollout values."})
    vf_coef: float = field(default=0.1, metadata={"help": "Weight of the value loss."})
    ptx_coef: float = field(
        default=0.0, metadata={"help": "γ of the pretraining term (paper's PPO-ptx: 27.8; 0: plain PPO)."}
    )
    ptx_batch_size: int = field(
        default=8, metadata={"help": "Pretraining sequences per update, per process."}
    )
    ptx_block_size: int = field(default=128, metadata={"help": "Block length when ptx_dataset has `text`."})
    whiten_advantages: bool = True
    whiten_rewards: bool = False
    max_grad_norm: float = field(default=1.0, metadata={"help": "Gradient-norm clip per model; 0 disables."})
    missing_eos_penalty: float | None = field(
        default=None, metadata={"help": "Subtracted from the score of responses that never emit EOS."}
    )
    max_nonfinite_updates: int = field(
        default=10, metadata={"help": "Consecutive updates with a non-finite loss/gradient before giving up."}
    )
    disable_dropout: bool = field(
        default=True, metadata={"help": "Run policy and value model without dropout."}
    )
    logging_steps: int = field(default=1, metadata={"help": "Log every N rollouts (means over the window)."})
    save_steps: int = field(
        default=50, metadata={"help": "Checkpoint every N rollouts (0: only at the end)."}
    )
    save_total_limit: int = 2
    resume_from_checkpoint: str = field(
        default="auto",
        metadata={"help": "'auto': latest in output_dir if any; 'no': start afresh; or a path."},
    )
    report_to: str = field(default="tensorboard", metadata={"help": "'tensorboard' or 'none'."})
    run_name: str = "tensorboard"
    bf16: bool = field(default=False, metadata={"help": "bf16 autocast (accelerate mixed precision)."})

    def __post_init__(self) -> None:
        ints_ge1 = (
            "rollout_batch_size", "mini_batch_size", "ppo_epochs", "max_new_tokens", "ptx_batch_size",
            "logging_steps", "save_total_limit", "max_nonfinite_updates",
        )  # fmt: skip
        for name in ints_ge1:
            _require(
                self,
                name,
                isinstance(getattr(self, name), int) and getattr(self, name) >= 1,
                "an integer >= 1",
            )
        if self.total_episodes is None:
            _require(self, "num_rollouts", self.num_rollouts >= 1, "an integer >= 1")
        else:
            _require(self, "total_episodes", self.total_episodes >= 1, "an integer >= 1 or None")
        _require(
            self,
            "mini_batch_size",
            self.rollout_batch_size % self.mini_batch_size == 0,
            f"a divisor of rollout_batch_size={self.rollout_batch_size}",
        )
        for name in ("save_steps", "warmup_steps", "top_k"):
            _require(self, name, getattr(self, name) >= 0, "an integer >= 0")
        for name in ("learning_rate", "value_learning_rate", "temperature", "cliprange", "cliprange_value"):
            _require(
                self, name, getattr(self, name) > 0 and math.isfinite(getattr(self, name)), "a number > 0"
            )
        for name in ("kl_coef", "vf_coef", "ptx_coef", "max_grad_norm", "weight_decay"):
            _require(
                self, name, getattr(self, name) >= 0 and math.isfinite(getattr(self, name)), "a number >= 0"
            )
        for name in ("gamma", "lam"):
            _require(self, name, 0 <= getattr(self, name) <= 1, "in [0, 1]")
        _require(self, "top_p", 0 < self.top_p <= 1, "in (0, 1]")
        _require(self, "adam_beta1", 0 <= self.adam_beta1 < 1, "in [0, 1)")
        _require(self, "adam_beta2", 0 <= self.adam_beta2 < 1, "in [0, 1)")
        _require(self, "ptx_block_size", self.ptx_block_size >= 2, "an integer >= 2")
        if self.max_prompt_length is not None:
            _require(self, "max_prompt_length", self.max_prompt_length >= 1, "an integer >= 1 or None")
        if self.missing_eos_penalty is not None:
            _require(self, "missing_eos_penalty", self.missing_eos_penalty >= 0, "a number >= 0 or None")
        _require(self, "lr_scheduler_type", self.lr_scheduler_type in _SCHEDULERS, f"one of {_SCHEDULERS}")
        _require(self, "report_to", self.report_to in ("tensorboard", "none"), "'tensorboard' or 'none'")
        _require(
            self,
            "resume_from_checkpoint",
            isinstance(self.resume_from_checkpoint, str) and self.resume_from_checkpoint != "",
            "'auto', 'no' or a checkpoint path",
        )


# ----------------------------------------------------------------------------------------------
# The formulas (pure functions on right-padded (batch, response_length) tensors)
# ----------------------------------------------------------------------------------------------


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Σ x·m / Σ m over all elements (or along ``dim``); 0 where the mask is empty."""
    mask = mask.to(x.dtype)
    if dim is None:
        return (x * mask).sum() / mask.sum().clamp(min=1)
    return (x * mask).sum(dim) / mask.sum(dim).clamp(min=1)


def whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8) -> torch.Tensor:
    """Normalise ``x`` to mean 0 and variance 1 over the positions where ``mask`` is 1.

    ``(x − μ) / sqrt(σ² + eps)`` with μ and σ² (the population variance) taken over the masked
    positions only; with ``shift_mean=False`` the mean is added back (``x`` is only rescaled, as for
    rewards). Masked-out positions are set to 0.
    """
    mask = mask.to(x.dtype)
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    out = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        out = out + mean
    return out * mask


def compute_gae(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation (Schulman et al. 2016, eq. 16) over response tokens.

    For each episode (one row, valid tokens t = 0 … T−1 where ``mask`` is 1, right-padded)::

        δ_t = r_t + γ · V_{t+1} − V_t          (V_T = 0: the episode ends after the last token)
        A_t = δ_t + γ · λ · A_{t+1}            (A_T = 0)
        R_t = A_t + V_t                        (the value target, "returns")

    Returns ``(advantages, returns)``, both 0 at padded positions.
    """
    mask = mask.to(values.dtype)
    values = values * mask
    rewards = rewards * mask
    length = rewards.shape[-1]
    advantages = torch.zeros_like(rewards)
    next_advantage = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(length)):
        next_value = values[:, t + 1] if t + 1 < length else torch.zeros_like(values[:, 0])
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        next_advantage = (delta + gamma * lam * next_advantage) * mask[:, t]
        advantages[:, t] = next_advantage
    returns = (advantages + values) * mask
    return advantages, returns


def kl_penalized_rewards(
    score: torch.Tensor,
    logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor,
    mask: torch.Tensor,
    kl_coef: float,
) -> torch.Tensor:
    """Per-token rewards of InstructGPT §3.5 (eq. 2): the KL penalty on every response token and the
    reward model's score on the last one::

        r_t = −β · (log π(y_t | x, y_<t) − log π_SFT(y_t | x, y_<t))      for every valid token t
        r_{T−1} += r_θ(x, y)                                                at the last valid token

    ``score`` is (batch,); the others are (batch, response_length), right-padded by ``mask``.
    """
    mask = mask.to(logprobs.dtype)
    rewards = -kl_coef * (logprobs - ref_logprobs) * mask
    last = (mask.sum(-1).long() - 1).clamp(min=0)
    rows = torch.arange(rewards.shape[0], device=rewards.device)
    rewards[rows, last] += score.to(rewards.dtype) * (mask.sum(-1) > 0).to(rewards.dtype)
    return rewards


def policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    cliprange: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """PPO's clipped surrogate (Schulman et al. 2017, eq. 7), as a loss to minimise::

        ρ_t = exp(log π(a_t) − log π_old(a_t))
        L   = mean_t max(−A_t · ρ_t, −A_t · clip(ρ_t, 1 − ε, 1 + ε))

    averaged over the valid tokens. Also returns the clip fraction (share of tokens where the clipped
    term is the larger one, i.e. is used) and the approximate KL ``½ · mean_t (log π − log π_old)²``.
    """
    log_ratio = logprobs - old_logprobs
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - cliprange, 1.0 + cliprange)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask)
    clipfrac = masked_mean((clipped > unclipped).to(logprobs.dtype), mask)
    approx_kl = 0.5 * masked_mean(log_ratio.detach() ** 2, mask)
    return loss, clipfrac.detach(), approx_kl


def value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    cliprange_value: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Clipped value loss (as in PPO's reference implementation and TRL)::

        V_clip = V_old + clip(V − V_old, −ε_v, ε_v)
        L_V    = ½ · mean_t max((V − R)², (V_clip − R)²)

    averaged over the valid tokens; also returns the share of tokens where the clipped error is larger.
    """
    clipped_values = old_values + torch.clamp(values - old_values, -cliprange_value, cliprange_value)
    error = (values - returns) ** 2
    error_clipped = (clipped_values - returns) ** 2
    loss = 0.5 * masked_mean(torch.maximum(error, error_clipped), mask)
    clipfrac = masked_mean((error_clipped > error).to(values.dtype), mask)
    return loss, clipfrac.detach()


def logprobs_from_logits(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """log softmax(logits)[token] at each position: (batch, length, vocab), (batch, length) → (batch, length),
    in float32 (TRL's ``selective_log_softmax``: the gathered logit minus logsumexp, without the full
    log-softmax tensor)."""
    from trl.trainer.utils import selective_log_softmax

    return selective_log_softmax(logits.float(), tokens)


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of softmax(logits) per position, H = logsumexp(z) − Σ_v softmax(z)_v · z_v, in float32
    (TRL's chunked ``entropy_from_logits``)."""
    from trl.trainer.utils import entropy_from_logits as chunked_entropy

    return chunked_entropy(logits.float())


def ptx_loss(policy: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The pretraining term of PPO-ptx (InstructGPT §3.5, eq. 2: γ · E_{x∼D_pretrain}[log π(x)]) as a
    loss: the policy's mean next-token cross-entropy on a pretraining batch (``input_ids``, optional
    ``attention_mask`` and ``labels``; labels default to the input ids with padding set to −100)."""
    input_ids = batch["input_ids"]
    attention_mask = batch.get("attention_mask")
    labels = batch.get("labels")
    if labels is None:
        labels = input_ids if attention_mask is None else input_ids.masked_fill(attention_mask == 0, -100)
    return policy(input_ids=input_ids, attention_mask=attention_mask, labels=labels, use_cache=False).loss


# ----------------------------------------------------------------------------------------------
# Models
# ----------------------------------------------------------------------------------------------


def _position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions counted over the valid tokens, as ``generate`` does for left-padded prompts."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def _backbone(model: nn.Module) -> nn.Module:
    """The base transformer of a ``*ForSequenceClassification`` model (``model.transformer`` for ours)."""
    prefix = getattr(model, "base_model_prefix", "")
    base = getattr(model, prefix, None) if prefix else None
    if base is None:
        raise ValueError(
            f"{type(model).__name__} has no base model under `{prefix}`; expected a *ForSequenceClassification model."
        )
    if not hasattr(model, "score"):
        raise ValueError(
            f"{type(model).__name__} has no `score` head; expected a *ForSequenceClassification model."
        )
    return base


def _token_scalars(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """The ``score`` head of a sequence-classification model (num_labels=1) at every position: (batch, length)."""
    hidden = _backbone(model)(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=_position_ids(attention_mask),
        use_cache=False,
    ).last_hidden_state
    return model.score(hidden).squeeze(-1).float()


def _last_valid(attention_mask: torch.Tensor) -> torch.Tensor:
    positions = torch.arange(attention_mask.shape[-1], device=attention_mask.device)
    return (positions * attention_mask.long()).argmax(-1)


@torch.no_grad()
def score_sequences(
    reward_model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor
) -> torch.Tensor:
    """The reward model's scalar for each padded sequence, read at its last valid token (masks, not pad
    ids, say where that is: our tokenizers use one id for pad and EOS). Returns (batch,)."""
    values = _token_scalars(reward_model, input_ids, attention_mask)
    rows = torch.arange(values.shape[0], device=values.device)
    return values[rows, _last_valid(attention_mask)]


class PolicyAndValue(nn.Module):
    """Policy and value model as one module, so that one DDP wrapper synchronises both and one
    ``forward`` gives the policy logits, the per-token values and (optionally) the ptx loss."""

    def __init__(self, policy: nn.Module, value_model: nn.Module):
        super().__init__()
        self.policy = policy
        self.value_model = value_model

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        ptx_batch: dict[str, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        logits = self.policy(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=_position_ids(attention_mask),
            use_cache=False,
        ).logits
        values = _token_scalars(self.value_model, input_ids, attention_mask)
        ptx = ptx_loss(self.policy, ptx_batch) if ptx_batch is not None else None
        return logits, values, ptx


def _is_peft(model: nn.Module) -> bool:
    try:
        from peft import PeftModel
    except ImportError:  # pragma: no cover - peft is a dependency
        return False
    return isinstance(model, PeftModel)


# ----------------------------------------------------------------------------------------------
# Deterministic randomness
# ----------------------------------------------------------------------------------------------

_PROMPTS, _GENERATE, _SHUFFLE, _PTX, _DROPOUT = range(5)


def _seed(*parts: int) -> int:
    """A 63-bit seed that is a hash of ``parts`` (never of what ran before)."""
    state = np.random.SeedSequence([int(p) for p in parts]).generate_state(2, dtype=np.uint32)
    return int(state[0]) << 31 | int(state[1]) >> 1


@lru_cache(maxsize=8)
def _permutation(size: int, seed: int) -> tuple[int, ...]:
    return tuple(torch.randperm(size, generator=torch.Generator().manual_seed(seed)).tolist())


def _stream(size: int, seed: int, salt: int, start: int, count: int) -> list[int]:
    """Items ``start … start+count−1`` of an endless stream of indices into ``size`` items: epoch e of
    the stream is the permutation seeded by (seed, salt, e)."""
    out: list[int] = []
    position = start
    while len(out) < count:
        epoch, offset = divmod(position, size)
        take = min(count - len(out), size - offset)
        out.extend(_permutation(size, _seed(seed, salt, epoch))[offset : offset + take])
        position += take
    return out


# ----------------------------------------------------------------------------------------------
# The trainer
# ----------------------------------------------------------------------------------------------

RewardFn = Callable[[list[Any], list[str]], "torch.Tensor | Sequence[float]"]


@dataclass
class _Rollout:
    query: torch.Tensor  # (B, P) left-padded prompt ids
    input_ids: torch.Tensor  # (B, P + R) prompt + response
    attention_mask: torch.Tensor  # (B, P + R)
    response: torch.Tensor  # (B, R)
    response_mask: torch.Tensor  # (B, R) right-padded, includes the first EOS
    logprobs: torch.Tensor  # the policy's at sampling time (the reference's only enter the rewards)
    values: torch.Tensor
    advantages: torch.Tensor
    returns: torch.Tensor
    score: torch.Tensor  # (B,)
    stats: dict[str, torch.Tensor]


class PPOTrainer:
    """PPO-ptx trainer (InstructGPT §3.5): generate → score → KL-penalised per-token rewards → GAE →
    ``ppo_epochs`` of clipped policy + value updates on shuffled mini-batches, with the ptx loss in every
    update.

    Args:
        config: a ``PPOConfig``.
        policy: a causal LM initialised from the SFT model (ours, or a PEFT ``PeftModel`` around one).
        ref_policy: the frozen SFT model; ``None`` when ``policy`` is a ``PeftModel``, whose adapter is
            then switched off for the reference log-probs (no second copy in memory).
        value_model: a ``*ForSequenceClassification`` model (``num_labels=1``), initialised from the
            reward model as in the paper; ``None`` copies ``reward_model``.
        reward_model: the frozen reward model (same tokenizer), scored at the last response token; or
        reward_fn: ``reward_fn(prompts, responses) -> (batch,)`` scores (e.g. a programmatic labeler).
        processing_class: the tokenizer (needs a pad token and, for chat prompts, a chat template).
        train_dataset: a ``datasets.Dataset`` with a ``prompt`` column: chat messages
            (``[{"role": ..., "content": ...}]``, rendered with ``add_generation_prompt=True``) or text.
        ptx_dataset: pretraining data for ``ptx_coef > 0``: ``input_ids`` (blocks or documents) or
            ``text`` (tokenised and cut into ``ptx_block_size`` blocks); sampled endlessly, seeded.
        callbacks: objects with any of ``on_rollout_end(trainer, rollout, metrics)``,
            ``on_log(trainer, metrics)``, ``on_save(trainer, path)``.
    """

    def __init__(
        self,
        config: PPOConfig,
        policy: nn.Module,
        ref_policy: nn.Module | None,
        value_model: nn.Module | None,
        reward_model: nn.Module | None = None,
        processing_class: Any = None,
        train_dataset: Any = None,
        ptx_dataset: Any = None,
        reward_fn: RewardFn | None = None,
        callbacks: Sequence[Any] | None = None,
    ) -> None:
        if not isinstance(config, PPOConfig):
            raise TypeError(f"config must be a PPOConfig, got {type(config).__name__}")
        if (reward_model is None) == (reward_fn is None):
            raise ValueError(
                "Pass exactly one of `reward_model` (a sequence-classification model) or `reward_fn`."
            )
        if processing_class is None:
            raise ValueError("`processing_class` (the tokenizer) is required.")
        if processing_class.pad_token_id is None:
            raise ValueError("The tokenizer has no pad token; set `tokenizer.pad_token` first.")
        if train_dataset is None or "prompt" not in train_dataset.column_names:
            raise ValueError("`train_dataset` must be a datasets.Dataset with a `prompt` column.")
        if len(train_dataset) == 0:
            raise ValueError("`train_dataset` is empty.")
        self.is_peft = _is_peft(policy)
        if ref_policy is None and not self.is_peft:
            raise ValueError(
                "ref_policy=None needs a PEFT policy (the reference is then the adapter switched off); "
                "pass the frozen SFT model as `ref_policy`."
            )
        if ref_policy is not None and ref_policy is policy:
            raise ValueError(
                "`ref_policy` must be a separate (frozen) copy of the SFT model, not the policy itself."
            )
        if value_model is None:
            if reward_model is None:
                raise ValueError("value_model=None copies the reward model, but only `reward_fn` was given.")
            # "The value function is initialised from the RM" (Appendix C.4); trained in full.
            value_model = copy.deepcopy(reward_model).requires_grad_(True)
        _backbone(value_model)
        if reward_model is not None:
            _backbone(reward_model)
        if config.ptx_coef > 0 and ptx_dataset is None:
            raise ValueError(
                f"ptx_coef={config.ptx_coef} needs a `ptx_dataset` (or set ptx_coef=0 for plain PPO)."
            )

        self.config = config
        self.processing_class = processing_class
        self.reward_fn = reward_fn
        self.callbacks = list(callbacks or [])
        self.accelerator = self._make_accelerator()
        set_seed(config.seed)

        # Data: tokenised once; which prompts a rollout takes is a function of (seed, rollout, process).
        self.prompts = list(train_dataset["prompt"])
        self.prompt_ids = [self._tokenize_prompt(p) for p in self.prompts]
        max_positions = getattr(getattr(policy, "config", None), "max_position_embeddings", None)
        longest = max(len(ids) for ids in self.prompt_ids) + config.max_new_tokens
        if max_positions is not None and longest > max_positions:
            raise ValueError(
                f"The longest prompt plus max_new_tokens={config.max_new_tokens} is {longest} tokens, more than "
                f"the policy's max_position_embeddings={max_positions}; set max_prompt_length or max_new_tokens."
            )
        self.ptx_blocks = self._prepare_ptx(ptx_dataset) if config.ptx_coef > 0 else None

        # Models. The reference and reward model are frozen and never wrapped for DDP.
        device = self.accelerator.device
        self.ref_policy = ref_policy
        self.reward_model = reward_model
        for frozen in (ref_policy, reward_model):
            if frozen is not None:
                frozen.requires_grad_(False).eval().to(device)
        self.policy = policy
        self.value_model = value_model
        self.updates_per_rollout = config.ppo_epochs * (config.rollout_batch_size // config.mini_batch_size)
        self.num_processes = self.accelerator.num_processes
        episodes = config.rollout_batch_size * self.num_processes
        self.num_rollouts = (
            math.ceil(config.total_episodes / episodes)
            if config.total_episodes is not None
            else config.num_rollouts
        )
        policy_params = [p for p in policy.parameters() if p.requires_grad]
        value_params = [p for p in value_model.parameters() if p.requires_grad]
        if not policy_params or not value_params:
            raise ValueError("The policy and the value model need trainable parameters.")
        policy_optimizer = self._optimizer(policy_params, config.learning_rate)
        value_optimizer = self._optimizer(value_params, config.value_learning_rate)
        total_updates = self.num_rollouts * self.updates_per_rollout
        schedulers = [
            get_scheduler(
                config.lr_scheduler_type,
                opt,
                num_warmup_steps=config.warmup_steps,
                num_training_steps=total_updates,
            )
            for opt in (policy_optimizer, value_optimizer)
        ]
        prepared = self.accelerator.prepare(
            PolicyAndValue(policy, value_model), policy_optimizer, value_optimizer, *schedulers
        )
        (
            self.model,
            self.policy_optimizer,
            self.value_optimizer,
            self.policy_scheduler,
            self.value_scheduler,
        ) = prepared
        self._policy_params, self._value_params = policy_params, value_params
        self.generation_config = GenerationConfig(
            do_sample=True,
            max_new_tokens=config.max_new_tokens,
            min_new_tokens=0,
            temperature=config.temperature,
            top_k=config.top_k if config.top_k > 0 else None,
            top_p=config.top_p,
            use_cache=True,
            pad_token_id=processing_class.pad_token_id,
            eos_token_id=processing_class.eos_token_id,
            bos_token_id=getattr(processing_class, "bos_token_id", None),
        )
        eos = processing_class.eos_token_id
        self._eos_ids = torch.tensor([eos] if isinstance(eos, int) else list(eos or []), device=device)
        self.rollout = 0  # rollouts completed
        self.skipped_updates = 0
        self._consecutive_skips = 0
        self.history: list[dict[str, float]] = []

    # -- set-up helpers --------------------------------------------------------------------------

    def _make_accelerator(self) -> Accelerator:
        config = self.config
        project = ProjectConfiguration(
            project_dir=config.output_dir, logging_dir=os.path.join(config.output_dir, "runs")
        )
        # Several processes on a machine without an accelerator: accelerate forms a gloo group only
        # when told it runs on CPU (as training_utils.make_accelerator).
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        cpu_ddp = world_size > 1 and not torch.accelerator.is_available()
        accelerator = Accelerator(
            cpu=cpu_ddp,
            mixed_precision="bf16" if config.bf16 else "no",
            log_with="tensorboard" if config.report_to == "tensorboard" else None,
            project_config=project,
            step_scheduler_with_optimizer=False,
        )
        if accelerator.num_processes != world_size:
            raise RuntimeError(
                f"WORLD_SIZE={world_size} processes were launched but accelerate formed a group of "
                f"{accelerator.num_processes}; check the launcher's settings."
            )
        return accelerator

    def _optimizer(self, params: list[nn.Parameter], lr: float) -> torch.optim.AdamW:
        c = self.config
        return torch.optim.AdamW(
            params, lr=lr, betas=(c.adam_beta1, c.adam_beta2), eps=c.adam_epsilon, weight_decay=c.weight_decay
        )

    def _tokenize_prompt(self, prompt: Any) -> list[int]:
        tok = self.processing_class
        if isinstance(prompt, str):
            text = prompt
        elif isinstance(prompt, list) and all(isinstance(m, dict) and "role" in m for m in prompt):
            if getattr(tok, "chat_template", None) is None:
                raise ValueError("Chat prompts need `processing_class.chat_template` to be set.")
            text = tok.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)
        else:
            raise ValueError(f"A prompt must be a string or a list of chat messages, got {prompt!r:.200}")
        ids = tok(text, add_special_tokens=False)["input_ids"]
        if not ids:
            raise ValueError(f"Prompt {prompt!r:.200} tokenises to nothing.")
        if self.config.max_prompt_length is not None:
            ids = ids[-self.config.max_prompt_length :]
        return list(ids)

    def _prepare_ptx(self, dataset: Any) -> list[list[int]]:
        columns = dataset.column_names
        if "input_ids" in columns:
            blocks = [list(ids) for ids in dataset["input_ids"]]
        elif "text" in columns:
            tok = self.processing_class
            ids = [
                tok(t, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
                for t in dataset["text"]
                if t
            ]
            blocks = group_texts({"input_ids": ids}, self.config.ptx_block_size)["input_ids"]
        else:
            raise ValueError(f"`ptx_dataset` needs an `input_ids` or `text` column, got {columns}.")
        blocks = [b for b in blocks if len(b) >= 2]
        if not blocks:
            raise ValueError("`ptx_dataset` gives no sequence of two or more tokens.")
        return blocks

    # -- batches ---------------------------------------------------------------------------------

    def _pad(self, rows: list[list[int]], left: bool) -> tuple[torch.Tensor, torch.Tensor]:
        from trl.trainer.utils import pad

        side = "left" if left else "right"
        ids = pad([torch.tensor(r, dtype=torch.long) for r in rows], self.processing_class.pad_token_id, side)
        mask = pad([torch.ones(len(r), dtype=torch.long) for r in rows], 0, side)
        device = self.accelerator.device
        return ids.to(device), mask.to(device)

    def _ptx_batch(self, update: int) -> dict[str, torch.Tensor]:
        """The pretraining batch of global PPO update ``update`` on this process."""
        size = self.config.ptx_batch_size
        start = (update * self.num_processes + self.accelerator.process_index) * size
        indices = _stream(len(self.ptx_blocks), self.config.seed, _PTX, start, size)
        ids, mask = self._pad([self.ptx_blocks[i] for i in indices], left=False)
        return {"input_ids": ids, "attention_mask": mask, "labels": ids.masked_fill(mask == 0, -100)}

    # -- rollout ---------------------------------------------------------------------------------

    def _forward_chunks(self, fn: Callable[..., Any], *tensors: torch.Tensor) -> Any:
        """``fn`` over mini-batch-sized chunks (bounded memory), outputs concatenated."""
        size = self.config.mini_batch_size
        outs = [fn(*(t[i : i + size] for t in tensors)) for i in range(0, tensors[0].shape[0], size)]
        if isinstance(outs[0], tuple):
            return tuple(torch.cat(parts) for parts in zip(*outs))
        return torch.cat(outs)

    def _ref_logits(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        kwargs = dict(input_ids=ids, attention_mask=mask, position_ids=_position_ids(mask), use_cache=False)
        if self.ref_policy is not None:
            return self.ref_policy(**kwargs).logits
        with self.policy.disable_adapter():  # PEFT: the SFT model is the base without the adapter
            return self.policy(**kwargs).logits

    @torch.no_grad()
    def _generate_rollout(self, index: int) -> _Rollout:
        config, accelerator = self.config, self.accelerator
        process = accelerator.process_index
        size = config.rollout_batch_size
        start = (index * self.num_processes + process) * size
        chosen = _stream(len(self.prompts), config.seed, _PROMPTS, start, size)
        prompts = [self.prompts[i] for i in chosen]
        query, query_mask = self._pad([self.prompt_ids[i] for i in chosen], left=True)
        width = query.shape[1]

        unwrapped = accelerator.unwrap_model(self.model)
        unwrapped.eval()
        torch.manual_seed(_seed(config.seed, _GENERATE, index, process))
        with accelerator.autocast():
            generated = self.policy.generate(
                input_ids=query, attention_mask=query_mask, generation_config=self.generation_config
            )
        response = generated[:, width:]
        if response.shape[1] == 0:
            raise RuntimeError("generate() returned no new tokens.")
        # Truncate after the first EOS (kept as the episode's last action).
        is_eos = torch.isin(response, self._eos_ids)
        after_eos = (is_eos.long().cumsum(-1) - is_eos.long()) > 0
        response_mask = (~after_eos).long()
        response = response.masked_fill(after_eos, self.processing_class.pad_token_id)
        input_ids = torch.cat([query, response], dim=1)
        attention_mask = torch.cat([query_mask, response_mask], dim=1)

        def evaluate(ids: torch.Tensor, mask: torch.Tensor, resp: torch.Tensor) -> tuple[torch.Tensor, ...]:
            with accelerator.autocast():
                logits, values, _ = unwrapped(ids, mask)
                ref_logits = self._ref_logits(ids, mask)
            logits = logits[:, width - 1 : -1].float() / config.temperature
            ref_logits = ref_logits[:, width - 1 : -1].float() / config.temperature
            return (
                logprobs_from_logits(logits, resp),
                logprobs_from_logits(ref_logits, resp),
                values[:, width - 1 : -1],
                entropy_from_logits(logits),
            )

        logprobs, ref_logprobs, values, entropy = self._forward_chunks(
            evaluate, input_ids, attention_mask, response
        )
        score = self._score(prompts, input_ids, attention_mask, response, response_mask)
        if config.missing_eos_penalty is not None:
            score = score - config.missing_eos_penalty * (~is_eos.any(-1)).float()

        mask = response_mask.float()
        logprobs, ref_logprobs, values = logprobs * mask, ref_logprobs * mask, values * mask
        rewards = kl_penalized_rewards(score, logprobs, ref_logprobs, mask, config.kl_coef)
        if config.whiten_rewards:
            rewards = whiten(rewards, mask, shift_mean=False)
        advantages, returns = compute_gae(rewards, values, mask, config.gamma, config.lam)
        if config.whiten_advantages:
            advantages = whiten(advantages, mask)
        kl = ((logprobs - ref_logprobs) * mask).sum(-1)
        stats = {
            "score": score.mean(),
            "kl": kl.mean(),  # Σ_t log π/π_SFT per response, mean over responses
            "non_score_reward": (-config.kl_coef * kl).mean(),
            "entropy": masked_mean(entropy, mask),
            "response_length": mask.sum(-1).mean(),
            "eos_fraction": is_eos.any(-1).float().mean(),
        }
        return _Rollout(
            query, input_ids, attention_mask, response, response_mask, logprobs, values, advantages, returns,
            score, stats,
        )  # fmt: skip

    def _score(
        self,
        prompts: list[Any],
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        response: torch.Tensor,
        response_mask: torch.Tensor,
    ) -> torch.Tensor:
        device = self.accelerator.device
        if self.reward_model is not None:
            with self.accelerator.autocast():
                score = self._forward_chunks(
                    lambda i, m: score_sequences(self.reward_model, i, m), input_ids, attention_mask
                )
        else:
            texts = self.processing_class.batch_decode(
                response.masked_fill(response_mask == 0, self.processing_class.pad_token_id),
                skip_special_tokens=True,
            )
            score = (
                torch.as_tensor(self.reward_fn(prompts, texts), dtype=torch.float32).to(device).reshape(-1)
            )
            if score.shape[0] != len(prompts):
                raise ValueError(f"reward_fn returned {score.shape[0]} scores for {len(prompts)} responses.")
        score = score.float()
        if not torch.isfinite(score).all():
            raise ValueError(f"The reward is not finite for some responses: {score.tolist()}")
        return score

    # -- optimisation ----------------------------------------------------------------------------

    def _ppo_update(self, index: int, rollout: _Rollout) -> dict[str, torch.Tensor]:
        config, accelerator = self.config, self.accelerator
        process = accelerator.process_index
        size, mb = config.rollout_batch_size, config.mini_batch_size
        width = rollout.query.shape[1]
        self.model.train(not config.disable_dropout)
        sums: dict[str, torch.Tensor] = {}
        done = 0
        for epoch in range(config.ppo_epochs):
            generator = torch.Generator().manual_seed(_seed(config.seed, _SHUFFLE, index, epoch, process))
            order = torch.randperm(size, generator=generator).to(accelerator.device)
            for k in range(size // mb):
                update = index * self.updates_per_rollout + epoch * (size // mb) + k
                sel = order[k * mb : (k + 1) * mb]
                mask = rollout.response_mask[sel].float()
                ptx_batch = self._ptx_batch(update) if config.ptx_coef > 0 else None
                torch.manual_seed(_seed(config.seed, _DROPOUT, update, process))
                with accelerator.autocast():
                    logits, values, ptx = self.model(
                        rollout.input_ids[sel], rollout.attention_mask[sel], ptx_batch
                    )
                logits = logits[:, width - 1 : -1].float() / config.temperature
                logprobs = logprobs_from_logits(logits, rollout.response[sel])
                values = values[:, width - 1 : -1].float()
                pg_loss, pg_clipfrac, approx_kl = policy_loss(
                    logprobs, rollout.logprobs[sel], rollout.advantages[sel], mask, config.cliprange
                )
                vf_loss, vf_clipfrac = value_loss(
                    values, rollout.values[sel], rollout.returns[sel], mask, config.cliprange_value
                )
                loss = pg_loss + config.vf_coef * vf_loss
                if ptx is not None:
                    loss = loss + config.ptx_coef * ptx
                accelerator.backward(loss)
                max_norm = config.max_grad_norm if config.max_grad_norm > 0 else float("inf")
                policy_norm = accelerator.clip_grad_norm_(self._policy_params, max_norm)
                value_norm = accelerator.clip_grad_norm_(self._value_params, max_norm)
                bad = torch.tensor(
                    float(
                        not (
                            torch.isfinite(loss)
                            and torch.isfinite(policy_norm)
                            and torch.isfinite(value_norm)
                        )
                    ),
                    device=accelerator.device,
                )
                skipped = accelerator.reduce(bad, "max").item() > 0
                if skipped:
                    self._skip_update(update)
                else:
                    self._consecutive_skips = 0
                    self.policy_optimizer.step()
                    self.value_optimizer.step()
                self.policy_optimizer.zero_grad(set_to_none=True)
                self.value_optimizer.zero_grad(set_to_none=True)
                # The schedule counts updates, skipped or not, so it is a function of the update index.
                with warnings.catch_warnings():
                    if skipped:  # torch warns of a scheduler step without an optimizer step
                        warnings.filterwarnings(
                            "ignore", message=".*lr_scheduler.step.*", category=UserWarning
                        )
                    self.policy_scheduler.step()
                    self.value_scheduler.step()
                step_stats = {
                    "policy_loss": pg_loss.detach(),
                    "value_loss": vf_loss.detach(),
                    "policy_clipfrac": pg_clipfrac,
                    "value_clipfrac": vf_clipfrac,
                    "approx_kl": approx_kl.detach(),
                    "policy_grad_norm": policy_norm.detach().float(),
                    "value_grad_norm": value_norm.detach().float(),
                }
                if ptx is not None:
                    step_stats["ptx_loss"] = ptx.detach()
                for key, value in step_stats.items():
                    value = torch.nan_to_num(value.float(), nan=0.0, posinf=0.0, neginf=0.0)
                    sums[key] = sums.get(key, 0) + value
                done += 1
        self.model.eval()
        return {key: value / done for key, value in sums.items()}

    def _skip_update(self, update: int) -> None:
        self.skipped_updates += 1
        self._consecutive_skips += 1
        logger.warning("PPO update %d: non-finite loss or gradient; update skipped.", update)
        if self._consecutive_skips >= self.config.max_nonfinite_updates:
            raise RuntimeError(
                f"{self._consecutive_skips} consecutive PPO updates had a non-finite loss or gradient "
                f"(last: update {update}); lower the learning rates or check the reward / data."
            )

    # -- the loop --------------------------------------------------------------------------------

    def train(self) -> list[dict[str, float]]:
        """Run ``num_rollouts`` rollout + PPO iterations (resuming as ``resume_from_checkpoint`` says).
        Returns ``self.history``: the logged metrics, one dict per logging step (also in
        ``output_dir/log_history.json`` and TensorBoard under ``output_dir/runs``)."""
        config, accelerator = self.config, self.accelerator
        state = resume_state(accelerator, config)
        self.rollout = int(state["step"])
        self.skipped_updates = int(state.get("skipped_updates", 0))
        self.history = list(state.get("log_history", []))
        if self.rollout > self.num_rollouts:
            raise ValueError(
                f"The checkpoint is at rollout {self.rollout}, past num_rollouts={self.num_rollouts}."
            )
        if config.report_to != "none":
            accelerator.init_trackers(config.run_name, config=flat_config(config))
        progress = tqdm(
            total=self.num_rollouts, initial=self.rollout, desc="ppo", dynamic_ncols=True,
            disable=not accelerator.is_local_main_process,
        )  # fmt: skip
        window: list[dict[str, torch.Tensor]] = []
        tokens, window_start = 0.0, time.perf_counter()
        self.model.eval()
        while self.rollout < self.num_rollouts:
            index = self.rollout
            rollout = self._generate_rollout(index)
            stats = {**rollout.stats, **self._ppo_update(index, rollout)}
            tokens += rollout.response_mask.sum().item()
            window.append(stats)
            self.rollout += 1
            progress.update(1)
            for callback in self.callbacks:
                if hasattr(callback, "on_rollout_end"):
                    callback.on_rollout_end(self, self.rollout, {k: float(v) for k, v in stats.items()})
            final = self.rollout == self.num_rollouts
            if self.rollout % config.logging_steps == 0 or final:
                elapsed = max(time.perf_counter() - window_start, 1e-9)
                metrics = self._reduce_window(window)
                total_tokens = accelerator.reduce(
                    torch.tensor(tokens, device=accelerator.device), "sum"
                ).item()
                metrics.update(
                    tokens_per_second=total_tokens / elapsed,
                    learning_rate=self.policy_scheduler.get_last_lr()[0],
                    value_learning_rate=self.value_scheduler.get_last_lr()[0],
                    episode=self.rollout * config.rollout_batch_size * self.num_processes,
                    skipped_updates=self.skipped_updates,
                )
                self._log(metrics)
                progress.set_postfix(score=f"{metrics['score']:.3f}", kl=f"{metrics['kl']:.3f}")
                window, tokens = [], 0.0
            if final or (config.save_steps and self.rollout % config.save_steps == 0):
                self._save_checkpoint()
            window_start = time.perf_counter() if not window else window_start
        progress.close()
        for tracker in accelerator.trackers:
            writer = getattr(tracker, "writer", None)
            if writer is not None and hasattr(writer, "flush"):
                writer.flush()
        return self.history

    def _reduce_window(self, window: list[dict[str, torch.Tensor]]) -> dict[str, float]:
        keys = sorted(window[0])
        means = torch.stack([torch.stack([w[k].float() for w in window]).mean() for k in keys])
        means = self.accelerator.reduce(means.to(self.accelerator.device), "mean")
        return dict(zip(keys, means.tolist()))

    def _log(self, metrics: dict[str, float]) -> None:
        entry = {"rollout": self.rollout, **metrics}
        self.history.append(entry)
        if self.config.report_to != "none":
            self.accelerator.log(metrics, step=self.rollout)
        if self.accelerator.is_main_process:
            Path(self.config.output_dir).mkdir(parents=True, exist_ok=True)
            (Path(self.config.output_dir) / "log_history.json").write_text(
                json.dumps(self.history, indent=1) + "\n"
            )
        for callback in self.callbacks:
            if hasattr(callback, "on_log"):
                callback.on_log(self, metrics)

    def _save_checkpoint(self) -> Path:
        state = {
            "rollout": self.rollout,
            "episodes": self.rollout * self.config.rollout_batch_size * self.num_processes,
            "updates": self.rollout * self.updates_per_rollout,
            # The ptx sampler is a pure function of the update index; its position, for the record.
            "ptx_position": self.rollout
            * self.updates_per_rollout
            * self.config.ptx_batch_size
            * self.num_processes
            if self.ptx_blocks is not None
            else 0,
            "skipped_updates": self.skipped_updates,
            "log_history": self.history,
        }
        path = save_checkpoint(
            self.accelerator, self.config.output_dir, self.rollout, state, self.config.save_total_limit
        )
        for callback in self.callbacks:
            if hasattr(callback, "on_save"):
                callback.on_save(self, path)
        return path

    def save_model(
        self, output_dir: str | os.PathLike[str] | None = None, merge_adapter: bool = False
    ) -> Path:
        """``save_pretrained`` (safetensors) of the policy and the tokenizer into ``output_dir``
        (default ``config.output_dir/final``). A PEFT policy saves its adapter, or with
        ``merge_adapter=True`` the merged full model."""
        accelerator = self.accelerator
        target = Path(output_dir) if output_dir is not None else Path(self.config.output_dir) / "final"
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            policy = accelerator.unwrap_model(self.model).policy
            if self.is_peft and merge_adapter:
                policy = copy.deepcopy(policy).merge_and_unload()
            policy.save_pretrained(target, safe_serialization=True)
            self.processing_class.save_pretrained(target)
        accelerator.wait_for_everyone()
        return target
