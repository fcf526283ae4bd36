"""Steerability through the system message (GPT-4 Technical Report, OpenAI 2023, §6): "developers
(and soon ChatGPT users) can prescribe their AI's style and task by describing those directions in
the 'system' message".

The measurement: the same user prompt is asked under system messages that each ask for one style
(capital letters, an exclamation mark at the end, the answer only, ...), and again with no system
message (the baseline). The programmatic labeler's constraint checks
(``hf_paper_models.data.instructions.constraints_kept``) judge whether each reply has the style; the
gap between the two rates is how much the system message steers the model. Correctness of the content
(``is_correct``) is reported beside it, so that a style bought by dropping the answer shows.

    from hf_paper_models.evaluation.steerability import evaluate_steerability, model_responder
    report = evaluate_steerability(model_responder(model, tokenizer), make_tasks(40, "heldout"))
    report["followed_with_system"], report["followed_without_system"], report["styles"]

``respond`` is any function from a list of chat-message lists to one reply each, so the scoring is
tested with hand-written replies and a rule-based responder, without a model.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from hf_paper_models.data.instructions import InstructionTask, constraints_kept, is_correct

Messages = list[dict[str, str]]
Responder = Callable[[Sequence[Messages]], list[str]]

__all__ = [
    "DEMONSTRATION_STYLES",
    "STYLES",
    "SteeringCase",
    "Style",
    "evaluate_steerability",
    "model_responder",
    "steerability",
    "steering_cases",
]


@dataclass(frozen=True)
class Style:
    """A style a system message asks for: its ``name``, the ``system`` message, and the labeler
    ``constraints`` (``instructions.constraints_kept`` kinds) that check a reply for it."""

    name: str
    system: str
    constraints: dict[str, Any] = field(default_factory=dict)

    @property
    def about_case(self) -> bool:
        return "case" in self.constraints


# The styles in new words (none of these system messages is in the SFT demonstrations, except
# "Reply with the answer only.", the labeler's own phrase).
STYLES: tuple[Style, ...] = (
    Style("capital_letters", "Answer in capital letters.", {"case": "upper"}),
    Style("exclamation_mark", "End every reply with an exclamation mark.", {"end": "!"}),
    Style("answer_only", "Reply with the answer only.", {"style": "bare"}),
    Style("answer_prefix", 'Start every reply with "Answer:".', {"prefix": "Answer:"}),
    Style("lowercase", "Use only lowercase letters.", {"case": "lower"}),
)
# The same styles in the phrases of the embedded demonstrations (``instructions._PHRASES``), which put
# about a third of their constraints in a system message: in-distribution for a model SFT'd on them.
DEMONSTRATION_STYLES: tuple[Style, ...] = (
    Style("capital_letters", "Write your reply in capital letters.", {"case": "upper"}),
    Style("exclamation_mark", "End your reply with an exclamation mark.", {"end": "!"}),
    Style("answer_only", "Reply with the answer only.", {"style": "bare"}),
    Style("answer_prefix", 'Begin your reply with "Answer:".', {"prefix": "Answer:"}),
    Style("lowercase", "Write your reply in lowercase.", {"case": "lower"}),
)

# A question whose answer is itself a case edit ("Write the word 'apple' in upper case.") cannot be
# steered to the other case without being answered wrong: the case styles skip those.
_CASE_IN_QUESTION = re.compile(r"\b(upper ?case|lower ?case|capital letters|small letters)\b", re.I)


@dataclass(frozen=True)
class SteeringCase:
    """One question under one style: ``steered`` has the style's system message, ``baseline`` the
    same user prompt alone; both carry the style's constraints, which is what the labeler checks."""

    style: Style
    steered: InstructionTask
    baseline: InstructionTask


def _style_applies(style: Style, task: InstructionTask) -> bool:
    if not style.about_case:
        return True
    return any(ch.isalpha() for ch in task.answer) and not _CASE_IN_QUESTION.search(task.question)


def steering_cases(tasks: Sequence[InstructionTask], styles: Sequence[Style] = STYLES) -> list[SteeringCase]:
    """Every (task, style) pair where the style is checkable: the task's own constraint phrases and
    system message are dropped (``task.question``), then the style's system message is added (steered)
    or not (baseline). Case styles skip answers without letters and questions that ask for a case."""
    if not styles:
        raise ValueError("steering_cases needs at least one style.")
    cases = []
    for task in tasks:
        bare = replace(task, prompt=task.question, system=None, constraints={})
        for style in styles:
            if _style_applies(style, bare):
                baseline = replace(bare, constraints=dict(style.constraints))
                cases.append(SteeringCase(style, replace(baseline, system=style.system), baseline))
    if not cases:
        raise ValueError("No task can be checked for any of the styles.")
    return cases


def _follows(task: InstructionTask, response: str) -> bool:
    return all(constraints_kept(task, response).values())


def _rates(
    cases: Sequence[SteeringCase], steered: Sequence[str], baseline: Sequence[str]
) -> dict[str, float]:
    n = len(cases)
    return {
        "n": n,
        "followed_with_system": sum(_follows(c.steered, r) for c, r in zip(cases, steered)) / n,
        "followed_without_system": sum(_follows(c.baseline, r) for c, r in zip(cases, baseline)) / n,
        "correct_with_system": sum(is_correct(c.steered, r) for c, r in zip(cases, steered)) / n,
        "correct_without_system": sum(is_correct(c.baseline, r) for c, r in zip(cases, baseline)) / n,
    }


def steerability(
    cases: Sequence[SteeringCase], steered: Sequence[str], baseline: Sequence[str]
) -> dict[str, Any]:
    """How often the replies have each case's style with its system message (``steered``) and without
    (``baseline``, the reply to the same user prompt alone), overall and per style; and how often their
    content is right. ``followed_*`` count a reply that keeps every constraint of the style."""
    if not (len(cases) == len(steered) == len(baseline)) or not cases:
        raise ValueError(
            f"steerability needs one steered and one baseline reply per case (>= 1): {len(cases)} cases, "
            f"{len(steered)} and {len(baseline)} replies."
        )
    names = list(dict.fromkeys(c.style.name for c in cases))
    per_style = {}
    for name in names:
        idx = [i for i, c in enumerate(cases) if c.style.name == name]
        per_style[name] = {
            "system": cases[idx[0]].style.system,
            **_rates([cases[i] for i in idx], [steered[i] for i in idx], [baseline[i] for i in idx]),
        }
    return {**_rates(cases, steered, baseline), "styles": per_style}


def evaluate_steerability(
    respond: Responder,
    tasks: Sequence[InstructionTask],
    styles: Sequence[Style] = STYLES,
    num_samples: int = 5,
) -> dict[str, Any]:
    """Ask every task's question under each style's system message and once without one (one baseline
    reply per question, scored against every style), and score both with ``steerability``; a few
    (style, question, replies) samples are kept for reading."""
    cases = steering_cases(tasks, styles)
    questions = list(dict.fromkeys(c.baseline.prompt for c in cases))
    replies = respond(
        [c.steered.messages() for c in cases] + [[{"role": "user", "content": q}] for q in questions]
    )
    if len(replies) != len(cases) + len(questions):
        raise ValueError(
            f"respond returned {len(replies)} replies for {len(cases) + len(questions)} prompts."
        )
    steered, alone = replies[: len(cases)], dict(zip(questions, replies[len(cases) :]))
    baseline = [alone[c.baseline.prompt] for c in cases]
    report = steerability(cases, steered, baseline)
    report["samples"] = [
        {
            "style": c.style.name,
            "system": c.style.system,
            "user": c.baseline.prompt,
            "with_system": s,
            "without_system": b,
        }
        for c, s, b in list(zip(cases, steered, baseline))[:num_samples]
    ]
    return report


def model_responder(model: Any, tokenizer: Any, max_new_tokens: int = 32, batch_size: int = 32) -> Responder:
    """Greedy replies of a chat model through its tokenizer's chat template (``win_rate.generate_responses``)."""
    from .win_rate import generate_responses

    def respond(prompts: Sequence[Messages]) -> list[str]:
        return generate_responses(
            model, tokenizer, list(prompts), max_new_tokens=max_new_tokens, do_sample=False, batch_size=batch_size
        )

    return respond


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """``python -m hf_paper_models.evaluation.steerability MODEL_DIR [--tasks N] [--output FILE]``: a chat
    model (``AutoModelForCausalLM`` + its tokenizer's chat template) on held-out instruction questions,
    under both phrasings of the styles; prints the rates and writes them as JSON."""
    import argparse
    import json

    from transformers import AutoModelForCausalLM, AutoTokenizer

    import hf_paper_models  # noqa: F401  (registers the paper models with the Auto classes)
    from hf_paper_models.data.instructions import make_tasks

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("model", help="A folder with a chat model and its tokenizer.")
    parser.add_argument("--tasks", type=int, default=100, help="Held-out questions.")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max_new_tokens", type=int, default=24)
    parser.add_argument("--output", default=None, help="JSON report (default: print only).")
    args = parser.parse_args(argv)
    model = AutoModelForCausalLM.from_pretrained(args.model).eval()
    respond = model_responder(model, AutoTokenizer.from_pretrained(args.model), args.max_new_tokens)
    tasks = make_tasks(args.tasks, "heldout", seed=args.seed)
    report = {
        "model": args.model,
        "tasks": args.tasks,
        "new_phrasings": evaluate_steerability(respond, tasks, STYLES),
        "demonstration_phrasings": evaluate_steerability(respond, tasks, DEMONSTRATION_STYLES),
    }
    for name in ("new_phrasings", "demonstration_phrasings"):
        print(f"{name}: style kept with / without the system message, content correct with / without")
        for style, r in [("all", report[name]), *report[name]["styles"].items()]:
            print(
                f"  {style:17} n={r['n']:4}  {r['followed_with_system']:.3f} / {r['followed_without_system']:.3f}"
                f"  {r['correct_with_system']:.3f} / {r['correct_without_system']:.3f}"
            )
    if args.output:
        with open(args.output, "w") as f:
            json.dump(report, f, indent=2)
    return report


if __name__ == "__main__":
    main()
