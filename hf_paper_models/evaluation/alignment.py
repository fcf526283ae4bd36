"""Alignment plots like Figure 3 of Bahdanau, Cho & Bengio (2015).

A source sentence is translated (greedy or beam search), the translation is read back through the
decoder with ``output_attentions=True``, and the annotation weights α_ij are drawn as a grayscale heat
map (0: black, 1: white) with the source words along the x-axis and the generated words along the
y-axis, as in the paper.

    matrix = alignment_matrix(model, tokenizer, "the dog eats the bread in the park .")
    plot_alignment(model, tokenizer, "the dog eats the bread in the park .", "alignment.png")

Works for any sequence-to-sequence model of the zoo that returns cross-attention weights: RNNsearch's
single alignment model, or the Transformer's last decoder layer averaged over its heads.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

__all__ = ["Alignment", "alignment_matrix", "plot_alignment"]


@dataclass
class Alignment:
    """α (target, source) with the token strings along each axis and the translation's text."""

    source_tokens: list[str]
    target_tokens: list[str]
    weights: torch.Tensor
    translation: str


def _token_strings(tokenizer: PreTrainedTokenizerBase, ids: list[int]) -> list[str]:
    strings = [tokenizer.decode([i]).strip() for i in ids]
    return [s if s else tokenizer.convert_ids_to_tokens(i) for s, i in zip(strings, ids)]


@torch.no_grad()
def alignment_matrix(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    source: str,
    *,
    num_beams: int = 1,
    max_new_tokens: int | None = None,
) -> Alignment:
    """Translate ``source`` (its tokens plus the end-of-sentence token, as the translation recipe encodes
    it) and return the alignment weights of the translation, one row per generated token."""
    if getattr(model.config, "use_attention", True) is False:
        raise ValueError(
            "This model has no alignment model (RNNencdec, use_attention=False): its context is fixed."
        )
    if not source.strip():
        raise ValueError("The source sentence is empty.")
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    ids = tokenizer(source, add_special_tokens=False)["input_ids"]
    if tokenizer.eos_token_id is not None:
        ids = ids + [tokenizer.eos_token_id]
    input_ids = torch.tensor([ids], device=device)
    kwargs = dict(num_beams=num_beams, do_sample=False)
    if max_new_tokens is not None:
        kwargs["max_new_tokens"] = max_new_tokens
    generated = model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), **kwargs)
    out = model(input_ids=input_ids, decoder_input_ids=generated[:, :-1], output_attentions=True)
    weights = out.cross_attentions[-1][0]  # row i: the weights used to emit generated token i + 1
    if weights.dim() == 3:  # (heads, target, source): a multi-head model, averaged over heads
        weights = weights.mean(0)
    model.train(was_training)
    target_ids = generated[0, 1:].tolist()
    return Alignment(
        source_tokens=_token_strings(tokenizer, ids),
        target_tokens=_token_strings(tokenizer, target_ids),
        weights=weights.float().cpu(),
        translation=tokenizer.decode(target_ids, skip_special_tokens=True).strip(),
    )


def plot_alignment(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    source: str,
    path: str | Path,
    *,
    num_beams: int = 1,
    max_new_tokens: int | None = None,
    title: str | None = None,
) -> Alignment:
    """Translate ``source`` and write its alignment matrix to ``path`` as a PNG (the paper's Figure 3:
    source tokens on the x-axis, generated tokens on the y-axis, α_ij in grayscale). Returns the matrix."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    alignment = alignment_matrix(model, tokenizer, source, num_beams=num_beams, max_new_tokens=max_new_tokens)
    rows, columns = alignment.weights.shape
    fig, ax = plt.subplots(figsize=(max(4.0, 0.35 * columns + 1.5), max(3.0, 0.35 * rows + 1.5)))
    ax.imshow(alignment.weights.numpy(), cmap="gray", vmin=0.0, vmax=1.0, aspect="equal")
    ax.set_xticks(range(columns), alignment.source_tokens, rotation=90)
    ax.set_yticks(range(rows), alignment.target_tokens)
    ax.xaxis.tick_top()
    ax.set_xlabel("source")
    ax.set_ylabel("translation")
    if title:
        ax.set_title(title, pad=12)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, format="png")
    plt.close(fig)
    return alignment
