"""Embedded data, built offline and deterministically (ZOO.md §5).

- ``corpus``: an English-like language-modelling corpus from a seeded probabilistic grammar.
- ``parallel``: its sentences paired with a rule-based translation into an invented head-final
  language, 5 to 80 tokens long.
- ``vowels``: the multi-speaker vowel task of the mixtures of local experts (F1/F2 formants, four vowels).
- ``instructions``: instruction tasks with checkable answers, the programmatic labeler, demonstrations
  and comparisons for the InstructGPT pipeline (SFT, reward model, PPO-ptx), as ``datasets`` in TRL's
  conversational formats.
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
from .instructions import (
    FAMILIES,
    InstructionTask,
    candidate_responses,
    compare,
    demonstrate,
    ideal_response,
    kwise_dataset,
    label,
    load_instruction_dataset,
    make_tasks,
    messages,
    preference_dataset,
    prompt_dataset,
    rank,
    sft_dataset,
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
    "FAMILIES",
    "InstructionTask",
    "VOWELS",
    "DEFAULT_NUM_DOCUMENTS",
    "DEFAULT_NUM_PAIRS",
    "Grammar",
    "candidate_responses",
    "compare",
    "corpus_size_bytes",
    "demonstrate",
    "detokenize",
    "ideal_response",
    "kwise_dataset",
    "label",
    "length_histogram",
    "lm_corpus",
    "lm_dataset",
    "load_instruction_dataset",
    "make_tasks",
    "make_vowel_data",
    "messages",
    "parallel_corpus",
    "parallel_dataset",
    "preference_dataset",
    "prompt_dataset",
    "rank",
    "sft_dataset",
    "split_by_speaker",
    "target_lexicon",
    "translate_rule_based",
    "vocabulary",
]
