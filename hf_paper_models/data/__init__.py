"""Embedded data, built offline and deterministically (ZOO.md §5).

- ``corpus``: an English-like language-modelling corpus from a seeded probabilistic grammar.
- ``parallel``: its sentences paired with a rule-based translation into an invented head-final
  language, 5 to 80 tokens long.
"""

from .corpus import (
    DEFAULT_NUM_DOCUMENTS,
    Grammar,
    corpus_size_bytes,
    detokenize,
    lm_corpus,
    lm_dataset,
    vocabulary,
)
from .parallel import (
    DEFAULT_NUM_PAIRS,
    length_histogram,
    parallel_corpus,
    parallel_dataset,
    target_lexicon,
    translate_rule_based,
)

__all__ = [
    "DEFAULT_NUM_DOCUMENTS",
    "DEFAULT_NUM_PAIRS",
    "Grammar",
    "corpus_size_bytes",
    "detokenize",
    "length_histogram",
    "lm_corpus",
    "lm_dataset",
    "parallel_corpus",
    "parallel_dataset",
    "target_lexicon",
    "translate_rule_based",
    "vocabulary",
]
