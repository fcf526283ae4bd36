"""The InstructGPT reward model — Ouyang et al. (2022), "Training language models to follow
instructions with human feedback", §3.5 and Appendix C.2.

A GPT with a scalar head (``AutoModelForSequenceClassification`` with ``num_labels=1``) reads a
prompt and one response and returns a reward, taken at the last non-padding token. Labelers rank
K = 4..9 responses per prompt, which gives C(K,2) comparisons. The paper (§3.5) trains on "all
C(K,2) comparisons from each prompt as a single batch element": one forward pass per response
instead of per comparison, and no overfitting from seeing each response in K−1 separate updates.
Its loss (eq. 1) is

    loss(θ) = −1/C(K,2) · E_{(x, y_w, y_l)} [log σ(r_θ(x, y_w) − r_θ(x, y_l))].

After training the reward is shifted by a bias so that the labeler demonstrations (here: SFT
samples) "achieve a mean score of 0 before doing RL" (§3.5). The shift lives in the score head's
bias (``score_bias`` in the GPT config), so the saved model carries it.

This module holds the loss (:func:`kwise_loss`), the collator, :class:`KWiseRewardConfig` beside
:class:`KWiseRewardTrainer` (TRL's layout: a config dataclass beside its trainer), and the two
functions the PPO stage uses: :func:`score_responses` and :func:`normalize_reward_bias`.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    Trainer,
    TrainingArguments,
)
from transformers.data.data_collator import DataCollatorMixin

Messages = list[dict[str, str]]

# ----------------------------------------------------------------------------------------------
# The K-wise loss (§3.5, eq. 1)
# ----------------------------------------------------------------------------------------------


def kwise_loss(
    rewards: torch.Tensor, scores: torch.Tensor, mask: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The reward-model loss of Ouyang et al. 2022, §3.5 eq. 1, and its pairwise accuracy.

    Args:
        rewards: ``(B, K_max)`` rewards r_θ(x, y) of each prompt's responses (one prompt per row).
        scores: ``(B, K_max)`` the labeler's scores; higher is better. A pair (y_w, y_l) counts when
            ``score_w > score_l``; equal scores carry no comparison and are skipped.
        mask: ``(B, K_max)`` true for real responses, false for padding (prompts with K < K_max).

    Returns:
        ``(loss, accuracy)``: −log σ(r_w − r_l) averaged over the comparable pairs of each prompt
        (the paper's 1/C(K,2), which becomes 1/#pairs when ties are skipped), then over the prompts
        that have at least one pair; and the fraction of those pairs with r_w > r_l, averaged the
        same way. Both are 0 when no prompt has a pair (the loss then still carries a graph).
    """
    if rewards.shape != scores.shape or rewards.dim() != 2:
        raise ValueError(
            f"`rewards` and `scores` must both be (batch, K), got {tuple(rewards.shape)} and {tuple(scores.shape)}."
        )
    if mask is None:
        mask = torch.ones_like(rewards, dtype=torch.bool)
    elif mask.shape != rewards.shape:
        raise ValueError(f"`mask` must be {tuple(rewards.shape)}, got {tuple(mask.shape)}.")
    mask = mask.bool()
    rewards = rewards.masked_fill(~mask, 0.0)  # padded slots (even non-finite ones) reach neither loss nor grad
    scores = scores.to(rewards.device)
    # pairs[b, w, l]: response w is ranked above response l for prompt b, both real.
    pairs = (scores.unsqueeze(2) > scores.unsqueeze(1)) & mask.unsqueeze(2) & mask.unsqueeze(1)
    margin = rewards.unsqueeze(2) - rewards.unsqueeze(1)  # r_w − r_l
    pair_loss = -nn.functional.logsigmoid(margin)
    per_prompt_pairs = pairs.sum(dim=(1, 2))
    has_pairs = per_prompt_pairs > 0
    if not bool(has_pairs.any()):
        zero = rewards.sum() * 0.0
        return zero, zero.detach()
    denominator = per_prompt_pairs.clamp(min=1).to(rewards.dtype)
    per_prompt_loss = torch.where(pairs, pair_loss, 0.0).sum(dim=(1, 2)) / denominator
    loss = per_prompt_loss[has_pairs].mean()
    with torch.no_grad():
        correct = (pairs & (margin > 0)).sum(dim=(1, 2)).to(rewards.dtype) / denominator
        accuracy = correct[has_pairs].mean()
    return loss, accuracy


# ----------------------------------------------------------------------------------------------
# Tokenisation and collation
# ----------------------------------------------------------------------------------------------


def _as_messages(prompt: str | Messages) -> Messages:
    return [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)


def tokenize_response(
    tokenizer: PreTrainedTokenizerBase,
    prompt: str | Messages,
    response: str,
    max_length: int | None = None,
    truncation_side: str = "left",
) -> list[int]:
    """Token ids of ``prompt + [assistant: response]`` through the tokenizer's chat template.

    A plain-string prompt is one user turn. Longer than ``max_length``, the ids are cut on
    ``truncation_side``: ``"left"`` (default) keeps the end of the response, where the reward is read.
    """
    conversation = _as_messages(prompt) + [{"role": "assistant", "content": response}]
    ids = tokenizer.apply_chat_template(conversation, tokenize=True, return_dict=True)["input_ids"]
    ids = list(ids)
    if max_length is not None and len(ids) > max_length:
        ids = ids[-max_length:] if truncation_side == "left" else ids[:max_length]
    return ids


def _pad_right(sequences: Sequence[Sequence[int]], pad_token_id: int, multiple: int | None = None):
    """Right-padded ``(input_ids, attention_mask)``: positions start at 0 in every row, as alone."""
    length = max(len(s) for s in sequences)
    if multiple:
        length = -(-length // multiple) * multiple
    input_ids = torch.full((len(sequences), length), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(sequences), length), dtype=torch.long)
    for row, ids in enumerate(sequences):
        input_ids[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        attention_mask[row, : len(ids)] = 1
    return input_ids, attention_mask


@dataclass
class DataCollatorForKWise(DataCollatorMixin):
    """Collates K-wise examples (``input_ids``: K token lists, ``scores``: K floats) for one forward.

    Returns ``input_ids``/``attention_mask`` of shape ``(N, L)`` with every response of the batch in
    prompt order (N = Σ K_b, right padding), and ``scores``/``response_mask`` of shape ``(B, K_max)``.
    The trainer scatters the N rewards back into ``(B, K_max)`` with ``response_mask``. Prompts with
    fewer than K_max responses get no dummy all-padding rows: those would cost a forward each and
    an all-masked attention row, whose softmax can be NaN.
    """

    pad_token_id: int
    pad_to_multiple_of: int | None = None
    return_tensors: str = "pt"

    def torch_call(self, examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        k_max = max(len(example["input_ids"]) for example in examples)
        scores = torch.zeros((len(examples), k_max), dtype=torch.float)
        response_mask = torch.zeros((len(examples), k_max), dtype=torch.bool)
        sequences = []
        for row, example in enumerate(examples):
            k = len(example["input_ids"])
            if len(example["scores"]) != k:
                raise ValueError(f"An example has {k} responses but {len(example['scores'])} scores.")
            sequences.extend(example["input_ids"])
            scores[row, :k] = torch.tensor(example["scores"], dtype=torch.float)
            response_mask[row, :k] = True
        input_ids, attention_mask = _pad_right(sequences, self.pad_token_id, self.pad_to_multiple_of)
        return {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "scores": scores,
            "response_mask": response_mask,
        }


# ----------------------------------------------------------------------------------------------
# Config and trainer
# ----------------------------------------------------------------------------------------------


# Subclasses TrainingArguments, not trl.RewardConfig: RewardConfig's own fields describe the pairwise
# pipeline (chosen/rejected columns, samples *filtered* above max_length, EOS appended to plain text,
# model_init_kwargs/chat_template_path loading, activation offloading) and TRL's base config turns
# gradient checkpointing and bf16 on by default. Inheriting them would advertise options this trainer
# does not honour; the few that carry over (max_length, disable_dropout, pad_to_multiple_of,
# dataset_num_proc, learning_rate) are declared here with TRL's names and defaults.
@dataclass
class KWiseRewardConfig(TrainingArguments):
    r"""Configuration of :class:`KWiseRewardTrainer` (Ouyang et al. 2022, §3.5, Appendix C.2).

    Parameters beyond :class:`~transformers.TrainingArguments`:
        max_length: longest tokenised prompt + response; longer ones are truncated (not dropped).
        truncation_side: ``"left"`` keeps the end of each sequence, where the reward is read;
            ``"right"`` keeps the start.
        disable_dropout: set every dropout of the model to 0 (TRL's default for reward models).
        pad_to_multiple_of: pad the collated length to a multiple of this.
        dataset_num_proc: processes for tokenising the dataset.

    Defaults that differ from ``TrainingArguments``: ``learning_rate`` 1e-4 (TRL's), ``logging_steps``
    10, and ``num_train_epochs`` 1: the paper trains its reward model for a single epoch, since it
    overfits when comparisons are seen again (§3.5, Appendix C.2).
    """

    learning_rate: float = field(default=1e-4, metadata={"help": "The initial learning rate for AdamW."})
    logging_steps: float = field(default=10, metadata={"help": "Log every X update steps."})
    num_train_epochs: float = field(
        default=1.0, metadata={"help": "Epochs; the paper trains its reward model for one (Appendix C.2)."}
    )
    max_length: int | None = field(
        default=1024, metadata={"help": "Truncate each tokenised prompt + response to this many tokens."}
    )
    truncation_side: str = field(
        default="left", metadata={"help": "'left' keeps the end of each sequence (where the reward is read)."}
    )
    disable_dropout: bool = field(default=True, metadata={"help": "Set all dropout probabilities to 0."})
    pad_to_multiple_of: int | None = field(
        default=None, metadata={"help": "Pad lengths to a multiple of this."}
    )
    dataset_num_proc: int | None = field(default=None, metadata={"help": "Processes for tokenisation."})

    def __post_init__(self):
        super().__post_init__()
        if self.truncation_side not in ("left", "right"):
            raise ValueError(
                f"KWiseRewardConfig: `truncation_side`={self.truncation_side!r}; allowed: ['left', 'right']."
            )
        if self.max_length is not None and self.max_length < 1:
            raise ValueError(
                f"KWiseRewardConfig: `max_length` must be >= 1 or None, got {self.max_length!r}."
            )


def disable_dropout_in_model(model: nn.Module) -> None:
    """All ``nn.Dropout`` modules and attention-probability dropout (a float on the attention) to 0."""
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0
        if isinstance(getattr(module, "attention_dropout", None), float):
            module.attention_dropout = 0.0


class KWiseRewardTrainer(Trainer):
    """Trains a reward model on K ranked responses per prompt (Ouyang et al. 2022, §3.5).

    Dataset columns: ``prompt`` (chat messages, ``[{"role": "system"|"user", "content": ...}]``, or a
    string for one user turn), ``responses`` (K strings; K may vary between prompts) and ``scores``
    (K floats from the labeler, higher is better; equal scores are ties and form no pair). A dataset
    already holding ``input_ids`` (K token lists per row) and ``scores`` is used as it is.

    Each batch element is one prompt with all its responses; the batch's responses go through the
    model in ONE forward pass, the rewards are laid out as ``(B, K_max)`` and :func:`kwise_loss`
    averages −log σ(r_w − r_l) over each prompt's pairs, then over prompts. Logs ``loss``,
    ``accuracy`` (pairwise, ranked-higher response rewarded higher), ``mean_reward``,
    ``num_pairs``; evaluation logs ``eval_loss`` and ``eval_accuracy``. Predictions are the
    ``(B, K_max)`` rewards.
    """

    _tag_names = ["trl", "reward-trainer", "instructgpt", "hf_paper_models"]

    def __init__(
        self,
        model: PreTrainedModel | str,
        args: KWiseRewardConfig | None = None,
        data_collator: Callable | None = None,
        train_dataset=None,
        eval_dataset=None,
        processing_class: PreTrainedTokenizerBase | None = None,
        compute_metrics: Callable | None = None,
        callbacks: list | None = None,
        optimizers: tuple = (None, None),
        **kwargs: Any,
    ):
        if args is None:
            name = model if isinstance(model, str) else model.config._name_or_path
            args = KWiseRewardConfig(f"{str(name).split('/')[-1] or 'model'}-kwise-reward")
        if isinstance(model, str):
            if processing_class is None:
                processing_class = AutoTokenizer.from_pretrained(model)
            model = AutoModelForSequenceClassification.from_pretrained(model, num_labels=1)
        if processing_class is None:
            raise ValueError("KWiseRewardTrainer needs `processing_class`: a tokenizer with a chat template.")
        if model.config.num_labels != 1:
            raise ValueError(
                f"A reward model has one output (`num_labels=1`), got {model.config.num_labels}."
            )
        # The head reads the reward at the last token that is not padding, so model and tokenizer must
        # agree on the pad id (TRL falls back to EOS the same way).
        if processing_class.pad_token is None:
            if processing_class.eos_token is None:
                raise ValueError("The tokenizer has neither a pad nor an EOS token to pad with.")
            processing_class.pad_token = processing_class.eos_token
        model.config.pad_token_id = processing_class.pad_token_id
        if args.disable_dropout:
            disable_dropout_in_model(model)
        if data_collator is None:
            data_collator = DataCollatorForKWise(processing_class.pad_token_id, args.pad_to_multiple_of)
        train_dataset = self._prepare_dataset(train_dataset, processing_class, args, "train")
        if isinstance(eval_dataset, dict):
            eval_dataset = {
                k: self._prepare_dataset(d, processing_class, args, k) for k, d in eval_dataset.items()
            }
        else:
            eval_dataset = self._prepare_dataset(eval_dataset, processing_class, args, "eval")
        super().__init__(
            model=model,
            args=args,
            data_collator=data_collator,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            processing_class=processing_class,
            compute_metrics=compute_metrics,
            callbacks=callbacks,
            optimizers=optimizers,
            **kwargs,
        )
        # Trainer calls compute_loss in evaluation only when it can return a loss without labels.
        self.can_return_loss = True
        self.label_names = []
        self._metrics: dict[str, dict[str, list[float]]] = {
            "train": defaultdict(list),
            "eval": defaultdict(list),
        }
        if hasattr(self.model, "add_model_tags"):
            self.model.add_model_tags(self._tag_names)

    @staticmethod
    def _prepare_dataset(dataset, tokenizer: PreTrainedTokenizerBase, args: KWiseRewardConfig, name: str):
        if dataset is None:
            return None
        columns = set(dataset.column_names or [])
        if {"input_ids", "scores"} <= columns:
            return dataset
        missing = {"prompt", "responses", "scores"} - columns
        if missing:
            raise ValueError(
                f"The {name} dataset lacks columns {sorted(missing)}; a K-wise dataset has `prompt` (chat "
                "messages), `responses` (K strings) and `scores` (K floats)."
            )

        def tokenize(example: dict[str, Any]) -> dict[str, Any]:
            responses, scores = example["responses"], example["scores"]
            if len(responses) != len(scores) or len(responses) < 2:
                raise ValueError(
                    f"Each prompt needs K >= 2 responses and one score per response; got {len(responses)} "
                    f"responses and {len(scores)} scores."
                )
            ids = [
                tokenize_response(tokenizer, example["prompt"], r, args.max_length, args.truncation_side)
                for r in responses
            ]
            return {"input_ids": ids, "scores": [float(s) for s in scores]}

        remove = [c for c in dataset.column_names if c not in ("scores",)]
        kwargs = {"num_proc": args.dataset_num_proc} if hasattr(dataset, "num_rows") else {}
        return dataset.map(tokenize, remove_columns=remove, **kwargs)

    def _set_signature_columns_if_needed(self):
        if self._signature_columns is None:
            self._signature_columns = ["input_ids", "scores"]

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        mode = "train" if self.model.training else "eval"
        scores, response_mask = inputs["scores"], inputs["response_mask"].bool()
        # One forward over every response of the batch, then the rewards back to (B, K_max).
        outputs = model(
            input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], use_cache=False
        )
        flat = outputs.logits.squeeze(-1)
        rewards = flat.new_zeros(response_mask.shape).masked_scatter(response_mask, flat)
        loss, accuracy = kwise_loss(rewards, scores, response_mask)
        with torch.no_grad():
            gather = self.accelerator.gather_for_metrics
            pairs = (
                (scores.unsqueeze(2) > scores.unsqueeze(1))
                & response_mask.unsqueeze(2)
                & response_mask.unsqueeze(1)
            )
            # kwise_loss's accuracy is a mean over this process's prompts that have a pair: weight each
            # process by that count, as one process holding the whole batch would.
            prompts = (pairs.sum(dim=(1, 2)) > 0).sum().to(accuracy.dtype)
            counted = gather(torch.stack([accuracy * prompts, prompts]).reshape(1, 2)).sum(0)
            self._metrics[mode]["accuracy"].append((counted[0] / counted[1].clamp(min=1)).item())
            # The number of responses differs between processes (K varies), and a gather needs equal
            # shapes on every process: gather each process's (sum, count) instead of the rewards.
            reward_sum = flat.detach().float().sum()
            total = gather(
                torch.stack([reward_sum, torch.ones_like(reward_sum) * flat.numel()]).reshape(1, 2)
            )
            self._metrics[mode]["mean_reward"].append((total[:, 0].sum() / total[:, 1].sum()).item())
            self._metrics[mode]["num_pairs"].append(float(gather(pairs.sum().reshape(1)).sum().item()))
        return (loss, {"rewards": rewards}) if return_outputs else loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        mode = "train" if self.model.training else "eval"
        metrics = {key: sum(values) / len(values) for key, values in self._metrics[mode].items() if values}
        if mode == "eval":
            metrics = {f"eval_{key}": value for key, value in metrics.items()}
        logs.update(metrics)
        super().log(logs, start_time)
        self._metrics[mode].clear()


# ----------------------------------------------------------------------------------------------
# Scoring and the bias normalisation (§3.5)
# ----------------------------------------------------------------------------------------------


@torch.no_grad()
def score_responses(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str | Messages],
    responses: Sequence[str],
    batch_size: int = 16,
    max_length: int | None = None,
) -> torch.Tensor:
    """Rewards r(x, y) of each (prompt, response) pair as a float32 tensor of shape ``(N,)``.

    ``prompts[i]`` is the chat messages (or a string: one user turn) that ``responses[i]`` answers.
    Sequences go through the chat template, in batches, in eval mode without gradients. Batches are
    built here with right padding whatever ``tokenizer.padding_side`` says: our GPTs number
    positions from the first column, so left padding would shift them. The pad id is the model's
    ``pad_token_id`` (which the head pools on), else the tokenizer's pad or EOS.
    """
    prompts, responses = list(prompts), list(responses)  # also a `datasets` column, which may not slice
    if len(prompts) != len(responses):
        raise ValueError(
            f"{len(prompts)} prompts but {len(responses)} responses; pass one prompt per response."
        )
    pad_id = model.config.pad_token_id
    if pad_id is None:
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        if pad_id is None:
            raise ValueError("Neither the model nor the tokenizer defines a pad or EOS token to pad with.")
        model.config.pad_token_id = pad_id
    if max_length is None:
        max_length = getattr(model.config, "max_position_embeddings", None)
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    out = []
    try:
        for start in range(0, len(responses), batch_size):
            ids = [
                tokenize_response(tokenizer, p, r, max_length)
                for p, r in zip(prompts[start : start + batch_size], responses[start : start + batch_size])
            ]
            input_ids, attention_mask = _pad_right(ids, pad_id)
            logits = model(
                input_ids=input_ids.to(device), attention_mask=attention_mask.to(device), use_cache=False
            ).logits
            out.append(logits.squeeze(-1).float().cpu())
    finally:
        model.train(was_training)
    return torch.cat(out) if out else torch.zeros(0)


def normalize_reward_bias(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str | Messages],
    responses: Sequence[str],
    batch_size: int = 16,
    max_length: int | None = None,
) -> float:
    """Shift the reward so that the given (SFT sample) responses score 0 on average (§3.5).

    "At the end of training, we normalize the reward model using a bias so that the labeler
    demonstrations achieve a mean score of 0 before doing RL" (Ouyang et al. 2022, §3.5). The shift
    goes into the score head's bias; a head without one (``score_bias=False``, the default) gets a
    zero bias first and ``config.score_bias`` is set, so ``save_pretrained`` →
    ``AutoModelForSequenceClassification.from_pretrained`` reproduces the shifted rewards.

    Returns the shift added to every reward (minus the old mean): new r = old r + shift.
    """
    head = getattr(model, "score", None)
    if not isinstance(head, nn.Linear) or head.out_features != 1:
        raise ValueError(
            f"{type(model).__name__} has no scalar `score` head (nn.Linear with one output); the bias "
            "normalisation needs a reward model (`num_labels=1`)."
        )
    if not hasattr(type(model.config), "score_bias"):
        raise ValueError(
            f"{type(model.config).__name__} has no `score_bias` field, so a bias added to the head would be "
            "lost on reload; use a GPT-2/GPT-3 reward model."
        )
    if len(responses) == 0:
        raise ValueError("normalize_reward_bias needs at least one response to average over.")
    mean = (
        score_responses(model, tokenizer, prompts, responses, batch_size, max_length).double().mean().item()
    )
    if head.bias is None:
        head.bias = nn.Parameter(torch.zeros(1, dtype=head.weight.dtype, device=head.weight.device))
        model.config.score_bias = True
    with torch.no_grad():
        head.bias.sub_(mean)
    return -mean


__all__ = [
    "DataCollatorForKWise",
    "KWiseRewardConfig",
    "KWiseRewardTrainer",
    "kwise_loss",
    "normalize_reward_bias",
    "score_responses",
    "tokenize_response",
]
