"""Evaluation helpers: few-shot scoring (GPT-3), zero-shot prompts (GPT-2), perplexity."""

from .few_shot import (
    MultipleChoiceExample,
    build_prompt,
    completion_log_likelihoods,
    evaluate_few_shot,
    score_options,
    zero_shot_prompt,
)
from .perplexity import perplexity

__all__ = [
    "MultipleChoiceExample",
    "build_prompt",
    "completion_log_likelihoods",
    "evaluate_few_shot",
    "perplexity",
    "score_options",
    "zero_shot_prompt",
]
