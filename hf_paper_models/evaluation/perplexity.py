"""Perplexity of a causal LM over texts, by non-overlapping windows of the model's context."""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch


@torch.no_grad()
def perplexity(model, tokenizer, texts: Iterable[str], block_size: int | None = None, batch_size: int = 8) -> float:
    """exp(mean token negative log-likelihood) over the concatenated texts, EOS-separated."""
    block_size = block_size or model.config.max_position_embeddings
    if block_size > model.config.max_position_embeddings:
        raise ValueError(f"block_size {block_size} exceeds the model's {model.config.max_position_embeddings} positions.")
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    ids: list[int] = []
    for text in texts:
        ids += tokenizer(text, add_special_tokens=False)["input_ids"] + eos
    if len(ids) < 2:
        raise ValueError("Perplexity needs at least two tokens of text.")
    blocks = [ids[i : i + block_size] for i in range(0, len(ids) - 1, block_size)]
    blocks = [b for b in blocks if len(b) > 1]
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    total_nll, total_tokens = 0.0, 0
    for start in range(0, len(blocks), batch_size):
        batch = blocks[start : start + batch_size]
        width = max(len(b) for b in batch)
        input_ids = torch.zeros(len(batch), width, dtype=torch.long)
        labels = torch.full_like(input_ids, -100)
        mask = torch.zeros_like(input_ids)
        for i, block in enumerate(batch):
            input_ids[i, : len(block)] = torch.tensor(block)
            labels[i, : len(block)] = torch.tensor(block)
            mask[i, : len(block)] = 1
        logits = model(input_ids=input_ids.to(device), attention_mask=mask.to(device)).logits.float()
        nll = torch.nn.functional.cross_entropy(
            logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1).to(device),
            ignore_index=-100, reduction="sum",
        )
        total_nll += nll.item()
        total_tokens += int((labels[:, 1:] != -100).sum())
    model.train(was_training)
    return math.exp(total_nll / total_tokens)
