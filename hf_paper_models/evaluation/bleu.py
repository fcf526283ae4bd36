"""Corpus BLEU with sacrebleu, overall and by source-sentence length.

Vaswani et al. (2017) report corpus BLEU on newstest2014; Bahdanau et al. (2015, Figure 2) plot BLEU
against sentence length. ``bleu_report`` gives both for one set of translations: the corpus score and
one corpus score per source-length bucket (length in whitespace-separated tokens of the source).

    report = bleu_report(sources, hypotheses, references, edges=(0, 10, 20, 30, 40, 50, 60, 80))
    report["bleu"], report["by_length"][0]  # {"min_length": 0, "max_length": 9, "count": ..., "bleu": ...}
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sacrebleu

__all__ = ["DEFAULT_EDGES", "bleu_by_length", "bleu_report", "corpus_bleu", "length_bucket"]

#: Bucket edges in source tokens: [0, 10), [10, 20), ..., [60, 80], the embedded corpus's 5..80 range.
DEFAULT_EDGES = (0, 10, 20, 30, 40, 50, 60, 81)


def corpus_bleu(hypotheses: Sequence[str], references: Sequence[str], tokenize: str = "13a") -> float:
    """sacrebleu's corpus BLEU (0-100) of ``hypotheses`` against one reference each."""
    hypotheses, references = list(hypotheses), list(references)
    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses but {len(references)} references.")
    if not hypotheses:
        raise ValueError("BLEU of an empty corpus is undefined.")
    return float(sacrebleu.corpus_bleu(hypotheses, [references], tokenize=tokenize).score)


def length_bucket(length: int, edges: Sequence[int] = DEFAULT_EDGES) -> int | None:
    """Index of the bucket [edges[i], edges[i+1]) holding ``length``; None when outside all buckets."""
    for i in range(len(edges) - 1):
        if edges[i] <= length < edges[i + 1]:
            return i
    return None


def _check_edges(edges: Sequence[int]) -> None:
    if len(edges) < 2 or any(b <= a for a, b in zip(edges, edges[1:])):
        raise ValueError(f"edges must be at least two strictly increasing lengths, got {list(edges)}.")


def bleu_by_length(
    sources: Sequence[str],
    hypotheses: Sequence[str],
    references: Sequence[str],
    edges: Sequence[int] = DEFAULT_EDGES,
    tokenize: str = "13a",
) -> list[dict[str, Any]]:
    """Corpus BLEU of the sentences whose source length falls in each bucket [edges[i], edges[i+1]).

    Each entry: ``min_length``, ``max_length`` (inclusive), ``count`` and ``bleu`` (None for an empty
    bucket). Sentences outside every bucket are left out.
    """
    _check_edges(edges)
    if not len(sources) == len(hypotheses) == len(references):
        raise ValueError(
            f"sources, hypotheses and references differ in number: {len(sources)}, {len(hypotheses)}, "
            f"{len(references)}."
        )
    groups: list[list[int]] = [[] for _ in range(len(edges) - 1)]
    for i, source in enumerate(sources):
        bucket = length_bucket(len(source.split()), edges)
        if bucket is not None:
            groups[bucket].append(i)
    results = []
    for b, members in enumerate(groups):
        bleu = (
            corpus_bleu([hypotheses[i] for i in members], [references[i] for i in members], tokenize)
            if members
            else None
        )
        results.append(
            {"min_length": edges[b], "max_length": edges[b + 1] - 1, "count": len(members), "bleu": bleu}
        )
    return results


def bleu_report(
    sources: Sequence[str],
    hypotheses: Sequence[str],
    references: Sequence[str],
    edges: Sequence[int] = DEFAULT_EDGES,
    tokenize: str = "13a",
) -> dict[str, Any]:
    """``{"bleu": corpus BLEU, "count": n, "signature": sacrebleu's, "by_length": bleu_by_length(...)}``."""
    by_length = bleu_by_length(sources, hypotheses, references, edges, tokenize)  # validates the inputs
    if not hypotheses:
        raise ValueError("BLEU of an empty corpus is undefined.")
    metric = sacrebleu.BLEU(tokenize=tokenize)
    score = metric.corpus_score(list(hypotheses), [list(references)])
    return {
        "bleu": float(score.score),
        "count": len(hypotheses),
        "signature": str(metric.get_signature()),
        "by_length": by_length,
    }
