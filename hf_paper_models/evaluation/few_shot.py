"""Few-shot evaluation as GPT-3 does it (Brown et al. 2020, §2.4), and GPT-2's zero-shot prompts.

"For each example in the evaluation set, we evaluate K examples by randomly drawing K examples from
that task's training set as conditioning, delimited by 1 or 2 newlines depending on the task. [...]
On tasks that involve choosing one correct completion from several options (multiple choice), we
provide K examples of context plus correct completion, followed by one example of context only, and
compare the LM likelihood of each completion. For most tasks we compare the per-token likelihood
(to normalize for length), however on a small number of datasets [...] we [...] normalize by the
unconditional probability of each completion, by computing P(completion|context) /
P(completion|answer_context)."
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

import torch

NORMALIZATIONS = ("sum", "mean", "unconditional")


@dataclass(frozen=True)
class MultipleChoiceExample:
    """One task instance: a context, its candidate completions and the index of the correct one."""

    context: str
    options: tuple[str, ...]
    label: int

    def __post_init__(self):
        if not self.options:
            raise ValueError("A multiple-choice example needs at least one option.")
        if not 0 <= self.label < len(self.options):
            raise ValueError(f"label {self.label} is not an index into {len(self.options)} options.")


def build_prompt(
    demonstrations: Sequence[MultipleChoiceExample],
    query: MultipleChoiceExample,
    instruction: str = "",
    delimiter: str = "\n\n",
) -> str:
    """K demonstrations with their correct completions, then the query's context alone."""
    parts = [instruction] if instruction else []
    parts += [d.context + d.options[d.label] for d in demonstrations]
    parts.append(query.context)
    return delimiter.join(parts)


@torch.no_grad()
def completion_log_likelihoods(model, tokenizer, prompt: str, completions: Sequence[str]) -> torch.Tensor:
    """Σ log p(completion tokens | prompt) for each completion, and their token counts, as (n, 2).

    All completions go through the model in one right-padded batch. The prompt is truncated from the
    left if prompt + completion would exceed the model's context.
    """
    device = next(model.parameters()).device
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"] if prompt else []
    max_len = model.config.max_position_embeddings
    rows, spans = [], []
    for completion in completions:
        completion_ids = tokenizer(completion, add_special_tokens=False)["input_ids"]
        if not completion_ids:
            raise ValueError(f"Completion {completion!r} encodes to no tokens.")
        if len(completion_ids) >= max_len:
            raise ValueError(f"Completion {completion!r} is longer than the model's context.")
        context = prompt_ids[-(max_len - len(completion_ids)) :] if prompt_ids else []
        if not context:  # score the first token from a begin-of-text token when there is no context
            bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
            if bos is None:
                raise ValueError("An empty context needs a tokenizer with a bos or eos token.")
            context = [bos]
        rows.append(context + completion_ids)
        spans.append((len(context), len(completion_ids)))
    width = max(len(r) for r in rows)
    input_ids = torch.zeros(len(rows), width, dtype=torch.long)
    attention_mask = torch.zeros_like(input_ids)
    for i, row in enumerate(rows):
        input_ids[i, : len(row)] = torch.tensor(row)
        attention_mask[i, : len(row)] = 1
    logits = model(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device)).logits.float()
    log_probs = torch.log_softmax(logits, dim=-1)
    results = []
    for i, (start, length) in enumerate(spans):
        targets = input_ids[i, start : start + length].to(device)
        # Token t is predicted from position t - 1.
        picked = log_probs[i, start - 1 : start - 1 + length].gather(-1, targets[:, None]).squeeze(-1)
        results.append((picked.sum().item(), float(length)))
    return torch.tensor(results)


def score_options(
    model,
    tokenizer,
    prompt: str,
    options: Sequence[str],
    normalization: str = "mean",
    answer_context: str = "Answer:",
) -> torch.Tensor:
    """A score per option (higher is better) under one of GPT-3's three normalisations."""
    if normalization not in NORMALIZATIONS:
        raise ValueError(f"normalization={normalization!r}; choose one of {NORMALIZATIONS}.")
    scored = completion_log_likelihoods(model, tokenizer, prompt, options)
    if normalization == "sum":
        return scored[:, 0]
    if normalization == "mean":
        return scored[:, 0] / scored[:, 1]
    unconditional = completion_log_likelihoods(model, tokenizer, answer_context, options)
    return scored[:, 0] - unconditional[:, 0]  # log P(c|context) - log P(c|answer_context)


def evaluate_few_shot(
    model,
    tokenizer,
    examples: Sequence[MultipleChoiceExample],
    demonstrations: Sequence[MultipleChoiceExample],
    k: int,
    normalization: str = "mean",
    instruction: str = "",
    delimiter: str = "\n\n",
    seed: int = 0,
) -> dict:
    """Accuracy with K demonstrations drawn at random (per example) from ``demonstrations``."""
    if k < 0 or k > len(demonstrations):
        raise ValueError(f"k={k} must be between 0 and the {len(demonstrations)} demonstrations available.")
    rng = random.Random(seed)
    was_training = model.training
    model.eval()
    correct = 0
    for example in examples:
        shots = rng.sample(list(demonstrations), k)
        prompt = build_prompt(shots, example, instruction, delimiter)
        scores = score_options(model, tokenizer, prompt, example.options, normalization)
        correct += int(scores.argmax().item() == example.label)
    model.train(was_training)
    return {"k": k, "accuracy": correct / max(len(examples), 1), "n": len(examples),
            "normalization": normalization}


# GPT-2 §3: tasks are induced zero-shot by how the prompt is written.
ZERO_SHOT_TEMPLATES = {
    "summarization": "{text}\nTL;DR:",  # §3.6, "TL;DR:" after the article
    "translation": "{source} = ",  # §3.7, after example pairs "english sentence = french sentence"
    "question_answering": "{context}\nQ: {question}\nA:",  # §3.5/3.8 style
}


def zero_shot_prompt(task: str, **fields: str) -> str:
    """GPT-2's zero-shot prompt for ``task`` ("summarization" takes ``text`` and ends in "TL;DR:")."""
    if task not in ZERO_SHOT_TEMPLATES:
        raise ValueError(f"Unknown zero-shot task {task!r}; known: {sorted(ZERO_SHOT_TEMPLATES)}.")
    try:
        return ZERO_SHOT_TEMPLATES[task].format(**fields)
    except KeyError as err:
        raise ValueError(f"Task {task!r} needs the field {err.args[0]!r}.") from err
