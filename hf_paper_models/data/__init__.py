"""Embedded data, built offline and deterministically (ZOO.md §5).

- ``corpus``: an English-like language-modelling corpus from a seeded probabilistic grammar.
- ``parallel``: its sentences paired with a rule-based translation into an invented head-final
  language, 5 to 80 tokens long.
- ``vowels``: the multi-speaker vowel task of the mixtures of local experts (F1/F2 formants, four vowels).
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
from .vowels import VOWELS, make_vowel_data, split_by_speaker

__all__ = [
    "VOWELS",
    "DEFAULT_NUM_DOCUMENTS",
    "DEFAULT_NUM_PAIRS",
    "Grammar",
    "corpus_size_bytes",
    "detokenize",
    "length_histogram",
    "lm_corpus",
    "lm_dataset",
    "make_vowel_data",
    "parallel_corpus",
    "parallel_dataset",
    "split_by_speaker",
    "target_lexicon",
    "translate_rule_based",
    "vocabulary",
]
