"""Sampling chat responses and comparing two policies by a judge (InstructGPT, Ouyang et al. 2022, §4.1).

The paper's headline metric is the win rate of one model's outputs over a baseline's, judged by
labelers on held-out prompts ("how often our labelers prefer the outputs of model X over the 175B
SFT model"). Here the judge is a function ``compare(task, a, b) -> 1 | 0 | -1`` (the programmatic
labeler of ``hf_paper_models.data.instructions``): never the reward model that RL optimised. A tie
counts half a win, so two identical policies score 50%.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch


def _prompt_ids(tokenizer: Any, prompt: Any) -> list[int]:
    if isinstance(prompt, str):
        return tokenizer(prompt, add_special_tokens=False)["input_ids"]
    ids = tokenizer.apply_chat_template(list(prompt), add_generation_prompt=True, tokenize=True)
    if isinstance(ids, dict) or hasattr(ids, "keys"):  # some versions return a BatchEncoding
        ids = ids["input_ids"]
    return list(ids)


@torch.no_grad()
def generate_responses(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[Any],
    *,
    max_new_tokens: int = 32,
    do_sample: bool = True,
    temperature: float = 1.0,
    top_k: int | None = None,
    seed: int = 0,
    batch_size: int = 32,
) -> list[str]:
    """One response per prompt (chat messages through the tokenizer's chat template, or plain text),
    generated with the KV cache from left-padded batches and cut at the first end-of-sequence token.

    Sampling is seeded per batch from ``seed``, so the responses do not depend on what ran before.
    """
    if batch_size < 1 or max_new_tokens < 1:
        raise ValueError(f"batch_size and max_new_tokens must be >= 1, got {batch_size} and {max_new_tokens}.")
    device = next(model.parameters()).device
    eos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    was_training = model.training
    model.eval()
    responses: list[str] = []
    for start in range(0, len(prompts), batch_size):
        rows = [_prompt_ids(tokenizer, p) for p in prompts[start : start + batch_size]]
        width = max(len(r) for r in rows)
        if width + max_new_tokens > model.config.max_position_embeddings:
            raise ValueError(
                f"A prompt of {width} tokens plus {max_new_tokens} new tokens exceeds the model's "
                f"{model.config.max_position_embeddings} positions."
            )
        input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
        attention_mask = torch.zeros_like(input_ids)
        for i, row in enumerate(rows):  # left padding: every prompt ends where generation starts
            input_ids[i, width - len(row) :] = torch.tensor(row)
            attention_mask[i, width - len(row) :] = 1
        generator_seed = seed * 1_000_003 + start
        torch.manual_seed(generator_seed)
        out = model.generate(
            input_ids=input_ids.to(device),
            attention_mask=attention_mask.to(device),
            max_new_tokens=max_new_tokens,
            do_sample=do_sample,
            temperature=temperature if do_sample else None,
            top_k=top_k if do_sample else None,
            top_p=None,
            pad_token_id=pad,
            eos_token_id=eos,
            use_cache=True,
        )
        for row in out[:, width:].tolist():
            if eos is not None and eos in row:
                row = row[: row.index(eos)]
            responses.append(tokenizer.decode(row, skip_special_tokens=True).strip())
    model.train(was_training)
    return responses


def win_rate(
    tasks: Sequence[Any],
    responses_a: Sequence[str],
    responses_b: Sequence[str],
    compare: Callable[[Any, str, str], int],
) -> dict[str, float]:
    """How often the judge prefers ``responses_a`` over ``responses_b`` on the same tasks (ties count
    half): ``{"win_rate", "wins", "ties", "losses", "n"}``."""
    if not (len(tasks) == len(responses_a) == len(responses_b)) or not tasks:
        raise ValueError(
            f"win_rate needs as many responses as tasks (>= 1): {len(tasks)} tasks, "
            f"{len(responses_a)} and {len(responses_b)} responses."
        )
    outcomes = [compare(t, a, b) for t, a, b in zip(tasks, responses_a, responses_b)]
    if any(o not in (-1, 0, 1) for o in outcomes):
        raise ValueError("compare must return 1 (a better), 0 (tie) or -1 (b better).")
    wins, ties = outcomes.count(1), outcomes.count(0)
    n = len(outcomes)
    return {"win_rate": (wins + 0.5 * ties) / n, "wins": wins, "ties": ties, "losses": n - wins - ties, "n": n}
