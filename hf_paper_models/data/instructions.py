"""Instruction tasks with checkable answers, and the programmatic labeler of the InstructGPT pipeline.

Ouyang et al. 2022 ("Training language models to follow instructions with human feedback") train
in three stages: supervised fine-tuning (SFT) on labeler-written demonstrations, a reward model
(RM) on labeler rankings of K = 4..9 model outputs per prompt, and PPO(-ptx) against the RM. Their
labelers are people; ours is code. Everything here is built offline and deterministically from
``random.Random``.

Tasks
    Five families (``FAMILIES``): arithmetic, string_edit, sorting, lookup (small embedded tables,
    including capitals of invented countries) and formatting. Each family has seven phrasing
    templates; the last two of every family are held out (``HELDOUT_TEMPLATES``). The paper split
    its prompts by user so that no user's prompts appear in both train and evaluation; we split by
    template, so held-out prompts are phrased in ways the policy never saw.

    Every task also carries one or two checkable *instruction constraints* (``constraints``),
    phrased in the user message or in a system message:

    ==================  =============================================================
    ``style: "bare"``   an answer only: no more words than the answer, no added ".!?:"
                        (an allowed prefix/end excepted); right or wrong, so the style
                        is judged apart from correctness
    ``case``            ``"upper"`` / ``"lower"``: every letter of the reply
    ``end``             ``"."`` / ``"!"``: the reply ends with it
    ``max_words``       the reply has at most that many whitespace-separated words
    ``prefix``          ``"Answer:"``: the reply starts with it (case-insensitive)
    ==================  =============================================================

The labeler (``label``, ``compare``, ``rank``)
    The paper's labelers judged helpfulness first, then adherence to explicit constraints in the
    instruction (its Table 3 metadata: "follows explicit constraints"). Our score is::

        label = 1.0 * correct  +  0.25 * (number of constraints kept)  +  0.1 * brevity

    ``correct`` is whether the answer content, extracted from the reply, is right (the last
    integer for numeric answers, the last n items for sorting, otherwise the answer as a whole-word
    match that is not part of a longer list or repetition nor hedged with a rival word);
    ``brevity = min(1, len(ideal) / len(reply))`` in characters, where ``ideal`` is the shortest
    reply that keeps every constraint (``ideal_response``). At most two constraints, so an
    incorrect reply scores at most 0.6 and a correct one at least 1.0: correctness dominates, and
    among correct replies the ones that ignore the instruction's style rank lower. The ideal reply
    scores ``1.1 + 0.25 * len(constraints)``. Known limits: a numeric reply is judged by its last number ("67 or 68" passes
    for 68), and a text answer hedged with an unrelated word that is no near-spelling still passes.

Demonstrations (``demonstrate``)
    Our stand-in for demonstrators of varying quality. A demonstration is always correct in content,
    but its style is drawn from ``DEMO_STYLES``: ``"exact"`` (the labeler's ideal reply, 45%),
    ``"chatty"`` (a friendly opener and closer around the answer, 20%), ``"restate"`` (repeats the
    question before answering, 15%) and ``"loose"`` (short, but ignores the case/prefix/end/bare
    constraints, 20%). Every non-exact style scores strictly below the exact one. So SFT imitates
    a mix, and the labeler-preferred style is left for the reward model and PPO to reinforce -- the
    room that lets PPO beat SFT in the paper (its Figure 1) exists here by construction, which is a
    simplification we state rather than a finding.

Comparisons (``candidate_responses``)
    K distinct replies per prompt mixing correct and incorrect content (off-by-one numbers, wrong
    order, a wrong word or letter) in the styles above, for the RM's K-wise loss (paper §3.5).
"""

from __future__ import annotations

import difflib
import json
import os
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import datasets

__all__ = [
    "CONSTRAINT_WEIGHT",
    "BREVITY_WEIGHT",
    "DEMO_STYLES",
    "FAMILIES",
    "HELDOUT_TEMPLATES",
    "SPLITS",
    "TEMPLATES",
    "InstructionTask",
    "candidate_responses",
    "compare",
    "constraints_kept",
    "demonstrate",
    "ideal_response",
    "is_correct",
    "kwise_dataset",
    "label",
    "load_instruction_dataset",
    "make_tasks",
    "messages",
    "preference_dataset",
    "prompt_dataset",
    "rank",
    "render_style",
    "sft_dataset",
]

FAMILIES = ("arithmetic", "string_edit", "sorting", "lookup", "formatting")
SPLITS = ("train", "heldout")
CORRECT_WEIGHT = 1.0
CONSTRAINT_WEIGHT = 0.25
BREVITY_WEIGHT = 0.1

# --------------------------------------------------------------------------------------------
# Embedded vocabularies and lookup tables
# --------------------------------------------------------------------------------------------

EDIT_WORDS = (
    "apple", "garden", "river", "planet", "window", "silver", "rabbit", "candle", "forest", "market",
    "pencil", "button", "castle", "dragon", "lemon", "tiger", "basket", "winter", "island", "mirror",
    "rocket", "violin", "pepper", "ladder", "jacket", "meadow", "harbor", "copper", "wagon", "summer",
)  # fmt: skip
ITEM_WORDS = (
    "ant", "bear", "cat", "dog", "eel", "fox", "goat", "hen", "ibis", "jay", "kiwi", "lion", "mole",
    "newt", "owl", "pig", "quail", "rat", "seal", "toad", "vole", "wolf", "yak", "zebra",
)  # fmt: skip
SENTENCE_WORDS = (
    "the", "small", "boat", "sailed", "across", "a", "quiet", "lake", "under", "grey", "sky", "old",
    "farmer", "found", "red", "stone", "near", "bridge", "children", "sang", "softly", "morning",
)  # fmt: skip

LOOKUP_TABLES: dict[str, dict[str, str]] = {
    "colour": {
        "banana": "yellow", "lime": "green", "cherry": "red", "plum": "purple", "blueberry": "blue",
        "lemon": "yellow", "strawberry": "red", "grape": "purple", "pear": "green", "tomato": "red",
        "coconut": "brown", "peach": "pink",
    },
    "opposite": {
        "hot": "cold", "big": "small", "up": "down", "early": "late", "open": "closed", "full": "empty",
        "fast": "slow", "light": "dark", "old": "new", "happy": "sad", "high": "low", "wet": "dry",
        "strong": "weak", "loud": "quiet",
    },
    "plural": {
        "mouse": "mice", "child": "children", "box": "boxes", "city": "cities", "foot": "feet",
        "tooth": "teeth", "knife": "knives", "woman": "women", "leaf": "leaves", "goose": "geese",
        "person": "people", "cactus": "cacti",
    },
    # invented countries, so the answer can only come from this table
    "capital": {
        "Velmora": "Tarsk", "Quenland": "Ostrabel", "Durnhold": "Mirenne", "Zephyria": "Lumen",
        "Brakkos": "Haldur", "Orvania": "Sellis", "Tamburi": "Kovak", "Ilthera": "Navon",
        "Morrowmere": "Dunmarch", "Pellucia": "Arvid",
    },
}  # fmt: skip
_TABLE_OF_VALUE = {v.lower(): name for name, table in LOOKUP_TABLES.items() for v in table.values()}

# --------------------------------------------------------------------------------------------
# Operations: rng -> (slots for the template, answer)
# --------------------------------------------------------------------------------------------

Op = Callable[[random.Random], tuple[dict[str, Any], str]]


def _add(rng: random.Random) -> tuple[dict[str, Any], str]:
    a, b = rng.randint(2, 60), rng.randint(2, 60)
    return {"a": a, "b": b}, str(a + b)


def _sub(rng: random.Random) -> tuple[dict[str, Any], str]:
    a = rng.randint(10, 99)
    b = rng.randint(1, a - 1)
    return {"a": a, "b": b}, str(a - b)


def _mul(rng: random.Random) -> tuple[dict[str, Any], str]:
    a, b = rng.randint(2, 12), rng.randint(2, 12)
    return {"a": a, "b": b}, str(a * b)


def _reverse(rng: random.Random) -> tuple[dict[str, Any], str]:
    w = rng.choice(EDIT_WORDS)
    return {"w": w}, w[::-1]


def _upper(rng: random.Random) -> tuple[dict[str, Any], str]:
    w = rng.choice(EDIT_WORDS)
    return {"w": w}, w.upper()


def _lower(rng: random.Random) -> tuple[dict[str, Any], str]:
    w = rng.choice(EDIT_WORDS)
    return {"w": w.upper()}, w


def _drop(rng: random.Random) -> tuple[dict[str, Any], str]:
    w = rng.choice(EDIT_WORDS)
    c = rng.choice(sorted(set(w)))
    return {"w": w, "c": c}, w.replace(c, "")


def _repeat(rng: random.Random) -> tuple[dict[str, Any], str]:
    w, n = rng.choice(ITEM_WORDS), rng.randint(2, 4)
    return {"w": w, "n": n}, " ".join([w] * n)


def _sort_numbers(descending: bool) -> Op:
    def op(rng: random.Random) -> tuple[dict[str, Any], str]:
        items = rng.sample(range(1, 100), rng.randint(3, 6))
        return {"items": ", ".join(map(str, items))}, ", ".join(map(str, sorted(items, reverse=descending)))

    return op


def _sort_words(descending: bool) -> Op:
    def op(rng: random.Random) -> tuple[dict[str, Any], str]:
        items = rng.sample(ITEM_WORDS, rng.randint(3, 6))
        return {"items": ", ".join(items)}, ", ".join(sorted(items, reverse=descending))

    return op


def _lookup(table: str, slot: str) -> Op:
    def op(rng: random.Random) -> tuple[dict[str, Any], str]:
        key = rng.choice(sorted(LOOKUP_TABLES[table]))
        return {slot: key}, LOOKUP_TABLES[table][key]

    return op


def _join(sep: str) -> Op:
    def op(rng: random.Random) -> tuple[dict[str, Any], str]:
        items = rng.sample(ITEM_WORDS, rng.randint(3, 5))
        return {"items": " ".join(items)}, sep.join(items)

    return op


def _bullets(rng: random.Random) -> tuple[dict[str, Any], str]:
    items = rng.sample(ITEM_WORDS, rng.randint(3, 5))
    return {"items": " ".join(items)}, "\n".join(f"- {w}" for w in items)


def _brackets(rng: random.Random) -> tuple[dict[str, Any], str]:
    w = rng.choice(EDIT_WORDS)
    return {"w": w}, f"[{w}]"


def _count_words(rng: random.Random) -> tuple[dict[str, Any], str]:
    n = rng.randint(2, 9)
    return {"sentence": " ".join(rng.choice(SENTENCE_WORDS) for _ in range(n))}, str(n)


# (question template, operation); the last two of every family are held out.
TEMPLATES: dict[str, list[tuple[str, Op]]] = {
    "arithmetic": [
        ("What is {a} plus {b}?", _add),
        ("What is {a} minus {b}?", _sub),
        ("What is {a} times {b}?", _mul),
        ("Add {a} and {b}.", _add),
        ("Subtract {b} from {a}.", _sub),
        ("Compute {a} * {b}.", _mul),
        ("Tell me the sum of {a} and {b}.", _add),
    ],
    "string_edit": [
        ("Reverse the word '{w}'.", _reverse),
        ("Write the word '{w}' in upper case.", _upper),
        ("Rewrite '{w}' in small letters.", _lower),
        ("Remove every letter '{c}' from the word '{w}'.", _drop),
        ("Repeat the word '{w}' {n} times, separated by spaces.", _repeat),
        ("Spell '{w}' backwards.", _reverse),
        ("Delete each '{c}' in '{w}'.", _drop),
    ],
    "sorting": [
        ("Sort these numbers from smallest to largest: {items}.", _sort_numbers(False)),
        ("Sort these numbers from largest to smallest: {items}.", _sort_numbers(True)),
        ("Put these words in alphabetical order: {items}.", _sort_words(False)),
        ("Put these words in reverse alphabetical order: {items}.", _sort_words(True)),
        ("Order the following numbers in ascending order: {items}.", _sort_numbers(False)),
        ("List these numbers in decreasing order: {items}.", _sort_numbers(True)),
        ("Alphabetise the following words: {items}.", _sort_words(False)),
    ],
    "lookup": [
        ("What colour is a ripe {fruit}?", _lookup("colour", "fruit")),
        ("What is the opposite of '{word}'?", _lookup("opposite", "word")),
        ("What is the plural of '{word}'?", _lookup("plural", "word")),
        ("What is the capital of {country}?", _lookup("capital", "country")),
        ("Which colour does a ripe {fruit} have?", _lookup("colour", "fruit")),
        ("Give the opposite of the word '{word}'.", _lookup("opposite", "word")),
        ("Which city is the capital of {country}?", _lookup("capital", "country")),
    ],
    "formatting": [
        ("Join these words with commas: {items}.", _join(", ")),
        ("Make a bulleted list of these words: {items}.", _bullets),
        ("Wrap the word '{w}' in square brackets.", _brackets),
        ('How many words are in the sentence "{sentence}"?', _count_words),
        ("Join these words with semicolons: {items}.", _join("; ")),
        ("Put the word '{w}' inside square brackets.", _brackets),
        ("Count the words in this sentence: '{sentence}'.", _count_words),
    ],
}
HELDOUT_TEMPLATES = frozenset(f"{fam}/{i}" for fam in FAMILIES for i in (5, 6))
_CASE_IS_CONTENT = {_upper, _lower}  # never asked for a case constraint on top

# Instruction phrasings of each constraint (user message or system message).
_PHRASES: dict[str, Callable[[Any], str]] = {
    "style": lambda v: "Reply with the answer only.",
    "case": lambda v: (
        "Write your reply in capital letters." if v == "upper" else "Write your reply in lowercase."
    ),
    "end": lambda v: (
        "End your reply with a full stop." if v == "." else "End your reply with an exclamation mark."
    ),
    "max_words": lambda v: f"Use at most {v} words.",
    "prefix": lambda v: f'Begin your reply with "{v}".',
}
_SYSTEM_INTRO = ("You are a helpful assistant.", "You are a careful assistant that follows instructions.")


@dataclass(frozen=True)
class InstructionTask:
    """One instruction: the user ``prompt`` (question plus constraint phrases unless those are in
    ``system``), its canonical ``answer`` content and the checkable ``constraints``."""

    family: str
    template_id: str
    prompt: str
    answer: str
    system: str | None = None
    constraints: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        """A JSON string, so a task can travel in a ``datasets`` column."""
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, s: str) -> InstructionTask:
        return cls(**json.loads(s))

    def messages(self, response: str | None = None) -> list[dict[str, str]]:
        return messages(self, response)

    @property
    def question(self) -> str:
        """The user prompt without its constraint phrases."""
        q = self.prompt
        for kind, value in self.constraints.items():
            q = q.replace(" " + _PHRASES[kind](value), "")
        return q


def messages(task: InstructionTask, response: str | None = None) -> list[dict[str, str]]:
    """The conversational format: ``[system?, user, assistant?]`` (the assistant turn iff ``response``)."""
    out = [{"role": "system", "content": task.system}] if task.system else []
    out.append({"role": "user", "content": task.prompt})
    if response is not None:
        out.append({"role": "assistant", "content": response})
    return out


def _bounded_in(needle: str, hay: str, case_sensitive: bool = False) -> bool:
    flags = 0 if case_sensitive else re.I
    return re.search(rf"(?<![A-Za-z0-9]){re.escape(needle)}(?![A-Za-z0-9])", hay, flags) is not None


def _apply_case(text: str, case: str | None) -> str:
    return text.upper() if case == "upper" else text.lower() if case == "lower" else text


def ideal_response(task: InstructionTask) -> str:
    """The shortest reply that is correct and keeps every constraint: the labeler's top style."""
    c = task.constraints
    text = task.answer
    if "prefix" in c:
        text = f"{c['prefix']} {text}"
    if "end" in c:
        text += c["end"]
    return _apply_case(text, c.get("case"))


def _make_task(family: str, index: int, rng: random.Random) -> InstructionTask:
    text, op = TEMPLATES[family][index]
    for _ in range(100):
        slots, answer = op(rng)
        question = text.format(**slots)
        # a text answer must not already stand in the question (a restated question would pass)
        if (
            answer.isdigit()
            or family == "sorting"
            or not _bounded_in(answer, question, family == "string_edit")
        ):
            break
    else:  # pragma: no cover - the tables make this unreachable
        raise RuntimeError(f"could not draw a task for {family}/{index}")
    kinds = ["style", "end", "max_words", "prefix"]
    if any(ch.isalpha() for ch in answer) and op not in _CASE_IS_CONTENT:
        kinds.append("case")
    chosen = rng.sample(kinds, rng.choice((1, 2)))
    constraints: dict[str, Any] = {}
    for kind in sorted(chosen, key=lambda k: k == "max_words"):  # max_words last: it measures the rest
        if kind == "style":
            constraints[kind] = "bare"
        elif kind == "case":
            constraints[kind] = rng.choice(("upper", "lower"))
        elif kind == "end":
            constraints[kind] = rng.choice((".", "!"))
        elif kind == "prefix":
            constraints[kind] = "Answer:"
        else:
            partial = InstructionTask(family, "", "", answer, None, dict(constraints))
            constraints[kind] = len(ideal_response(partial).split()) + 2
    phrases = " ".join(_PHRASES[k](v) for k, v in constraints.items())
    if rng.random() < 0.35:
        system, prompt = f"{rng.choice(_SYSTEM_INTRO)} {phrases}", question
    else:
        system, prompt = None, f"{question} {phrases}"
    return InstructionTask(family, f"{family}/{index}", prompt, answer, system, constraints)


def make_tasks(n: int, split: str = "train", seed: int = 0) -> list[InstructionTask]:
    """``n`` tasks, families in turn, templates drawn from the split's own (split by template)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    rng = random.Random(f"instructions-{split}-{seed}")
    held = split == "heldout"
    tasks = []
    for i in range(n):
        family = FAMILIES[i % len(FAMILIES)]
        ids = [j for j in range(len(TEMPLATES[family])) if (f"{family}/{j}" in HELDOUT_TEMPLATES) == held]
        tasks.append(_make_task(family, rng.choice(ids), rng))
    return tasks


# --------------------------------------------------------------------------------------------
# The labeler
# --------------------------------------------------------------------------------------------

_NORMALISE = re.compile(r"\s+")


def _extract_items(task: InstructionTask, response: str, n: int) -> list[str]:
    expected = task.answer.split(", ")
    if expected[0].isdigit():
        found = re.findall(r"\d+", response)
    else:
        vocab = {w.lower() for w in expected}
        found = [w.lower() for w in re.findall(r"[A-Za-z]+", response) if w.lower() in vocab]
    return found[-n:]


def _text_match(answer: str, response: str, case_sensitive: bool) -> bool:
    """A whole-word match of ``answer`` that is not part of a longer list or repetition."""
    flags = 0 if case_sensitive else re.I
    hay, needle = _NORMALISE.sub(" ", response), _NORMALISE.sub(" ", answer.strip())
    tokens = needle.split(" ")
    for m in re.finditer(rf"(?<![A-Za-z0-9]){re.escape(needle)}(?![A-Za-z0-9])", hay, flags):
        before, after = hay[: m.start()].rstrip(" "), hay[m.end() :].lstrip(" ")
        if before.endswith((",", ";")) or re.match(r"[,;]\s*\w", after):
            continue  # a longer comma/semicolon list
        if tokens[0] == "-" and (re.search(r"(^|\s)-\s\S+$", before) or after.startswith("- ")):
            continue  # a longer bulleted list
        prev, nxt = before.split(" ")[-1:], after.split(" ")[:1]
        if len(set(tokens)) == 1 and (prev == tokens[:1] or nxt == tokens[:1]):
            continue  # a longer repetition
        return True
    return False


def is_correct(task: InstructionTask, response: str) -> bool:
    """Whether the answer content in ``response`` is right (constraints aside).

    Numeric answers: the last integer in the reply. Sorting: the last n listed items, in order.
    Otherwise the answer as a whole-word match, case-insensitive except for string edits without a
    case constraint (where case is the content, e.g. "write 'apple' in upper case").
    """
    if not response.strip():
        return False
    if re.fullmatch(r"\d+", task.answer):
        numbers = re.findall(r"\d+", response)
        return bool(numbers) and int(numbers[-1]) == int(task.answer)
    if task.family == "sorting":
        expected = [w.lower() for w in task.answer.split(", ")]
        return _extract_items(task, response, len(expected)) == expected
    case_sensitive = task.family == "string_edit" and "case" not in task.constraints
    return _text_match(task.answer, response, case_sensitive) and not _hedged(task, response)


_FILLER = frozenset(
    "sure of course happy to help great question the answer is it was you asked let me know if need "
    "anything else i hope this helps here are that a an and or in with your reply word words".split()
)


def _hedged(task: InstructionTask, response: str) -> bool:
    """Whether a one-word answer comes with a rival: another value of its lookup table, or a
    near-spelling (``difflib`` ratio >= 0.8, e.g. "elpa" beside "elppa") absent from the prompt."""
    answer = task.answer.lower()
    if not answer.isalpha():
        return False
    context = set(re.findall(r"[a-z0-9]+", f"{task.system or ''} {task.prompt}".lower()))
    table = _TABLE_OF_VALUE.get(answer)
    rivals = {v.lower() for v in LOOKUP_TABLES[table].values()} - {answer} if table else set()
    words = {w.lower() for w in re.findall(r"[A-Za-z]+", response)}
    for word in words - context - _FILLER - {answer}:
        if word in rivals or difflib.SequenceMatcher(None, word, answer).ratio() >= 0.8:
            return True
    return False


def _strip_frame(task: InstructionTask, text: str) -> str:
    c = task.constraints
    text = text.strip()
    if "prefix" in c and text.lower().startswith(c["prefix"].lower()):
        text = text[len(c["prefix"]) :].strip()
    if "end" in c and text.endswith(c["end"]):
        text = text[: -len(c["end"])].strip()
    return text


def constraints_kept(task: InstructionTask, response: str) -> dict[str, bool]:
    """Each constraint of ``task`` and whether ``response`` keeps it."""
    kept = {}
    text = response.strip()
    for kind, value in task.constraints.items():
        if kind == "style":  # an answer only, right or wrong: no more words than the answer and no
            # added sentence punctuation, the allowed prefix/end aside
            core = _strip_frame(task, text)
            extra = set(".!?:") - set(task.answer)
            kept[kind] = (
                bool(core)
                and len(core.split()) <= len(task.answer.split())
                and not any(ch in extra for ch in core)
            )
        elif kind == "case":
            letters = [ch for ch in text if ch.isalpha()]
            kept[kind] = bool(letters) and all(
                ch.isupper() if value == "upper" else ch.islower() for ch in letters
            )
        elif kind == "end":
            kept[kind] = text.endswith(value)
        elif kind == "max_words":
            kept[kind] = 0 < len(text.split()) <= int(value)
        elif kind == "prefix":
            kept[kind] = text.lower().startswith(str(value).lower())
        else:
            raise ValueError(f"unknown constraint {kind!r}")
    return kept


def label(task: InstructionTask, response: str) -> float:
    """The labeler's score: ``1.0 * correct + 0.25 * constraints kept + 0.1 * brevity``.

    ``brevity = min(1, len(ideal_response(task)) / len(response.strip()))`` (0 for an empty reply).
    The ideal reply scores ``1.1 + 0.25 * len(task.constraints)``; an incorrect one at most 0.6.
    """
    text = response.strip()
    score = CORRECT_WEIGHT * is_correct(task, response)
    score += CONSTRAINT_WEIGHT * sum(constraints_kept(task, response).values())
    if text:
        score += BREVITY_WEIGHT * min(1.0, len(ideal_response(task)) / len(text))
    return float(score)


def compare(task: InstructionTask, a: str, b: str) -> int:
    """1 if the labeler prefers ``a``, -1 if it prefers ``b``, 0 for a tie."""
    sa, sb = label(task, a), label(task, b)
    return 0 if abs(sa - sb) < 1e-9 else (1 if sa > sb else -1)


def rank(task: InstructionTask, responses: Sequence[str]) -> list[int]:
    """Indices of ``responses``, best first (ties keep their order), as the paper's labelers ranked K outputs."""
    scores = [label(task, r) for r in responses]
    return sorted(range(len(responses)), key=lambda i: -scores[i])


# --------------------------------------------------------------------------------------------
# Demonstrations and comparison candidates
# --------------------------------------------------------------------------------------------

DEMO_STYLES = {"exact": 0.45, "chatty": 0.20, "restate": 0.15, "loose": 0.20}
_OPENERS = ("Sure!", "Of course!", "Happy to help!", "Great question!")
_CLOSERS = ("Let me know if you need anything else.", "I hope this helps.", "Anything else?")


def render_style(task: InstructionTask, style: str, content: str, rng: random.Random) -> str:
    """``content`` (an answer, right or wrong) written in one demonstrator ``style``.

    ``"exact"`` keeps every constraint, ``"chatty"`` wraps the answer in an opener and a closer,
    ``"restate"`` repeats the question first, ``"loose"`` gives a short reply that ignores the
    case/prefix/end/bare constraints.
    """
    case = task.constraints.get("case")
    if style == "exact":
        return ideal_response(InstructionTask(task.family, "", "", content, None, task.constraints))
    if style == "chatty":
        body = _apply_case(content, case)
        body = f"\n{body}\n" if "\n" in content else f" {body}. "
        return f"{rng.choice(_OPENERS)} The answer is:{body}{rng.choice(_CLOSERS)}"
    if style == "restate":
        return f"You asked: {task.question} The answer is {_apply_case(content, case)}"
    if style == "loose":
        return f"The answer: {content}"
    raise ValueError(f"unknown style {style!r}; choose from {tuple(DEMO_STYLES)}")


def demonstrate(task: InstructionTask, rng: random.Random) -> str:
    """A correct demonstration in a style drawn from ``DEMO_STYLES`` (see the module docstring)."""
    style = rng.choices(list(DEMO_STYLES), weights=list(DEMO_STYLES.values()))[0]
    return render_style(task, style, task.answer, rng)


def _char_edits(text: str, rng: random.Random) -> list[str]:
    out = []
    letters = [i for i, ch in enumerate(text) if ch.isalnum()]
    for i in rng.sample(letters, min(3, len(letters))):
        out.append(text[:i] + text[i + 1 :])  # a letter dropped
        out.append(text[:i] + text[i] + text[i:])  # a letter doubled
    for i in range(len(text) - 1):
        if text[i].isalnum() and text[i + 1].isalnum() and text[i] != text[i + 1]:
            out.append(text[:i] + text[i + 1] + text[i] + text[i + 2 :])  # two letters swapped
    return out


def _wrong_answers(task: InstructionTask, rng: random.Random) -> list[str]:
    a = task.answer
    if a.isdigit():
        value = int(a)
        out = [str(value + d) for d in (1, -1, 2, -2, 10, -10) if value + d >= 0]
    elif task.family == "sorting":
        items = a.split(", ")
        orders = [items[::-1], items[:-1], items[1:], sorted(items, key=lambda _: rng.random())]
        for i in range(len(items) - 1):
            orders.append(items[:i] + [items[i + 1], items[i]] + items[i + 2 :])
        out = [", ".join(o) for o in orders]
    else:
        table = _TABLE_OF_VALUE.get(a.lower())
        out = [v for v in LOOKUP_TABLES[table].values() if v.lower() != a.lower()] if table else []
        out += _char_edits(a, rng)
        if task.family == "string_edit":
            out.append(a + a[-1])
    rng.shuffle(out)
    return [w for w in dict.fromkeys(out) if w != a]


def candidate_responses(task: InstructionTask, k: int, rng: random.Random) -> list[str]:
    """``k`` distinct replies for a comparison: correct and incorrect content in several styles.

    At least one is correct and at least one incorrect (for ``k >= 2``).
    """
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    correct = [render_style(task, s, task.answer, rng) for s in DEMO_STYLES]
    correct.append(task.answer)  # right content, instruction ignored outright
    wrong = []
    for content in _wrong_answers(task, rng)[:6]:
        for style in rng.sample(list(DEMO_STYLES), 2):
            wrong.append(render_style(task, style, content, rng))
    correct = [r for r in dict.fromkeys(correct) if is_correct(task, r)]
    wrong = [r for r in dict.fromkeys(wrong) if not is_correct(task, r) and r not in correct]
    rng.shuffle(correct)
    rng.shuffle(wrong)
    n_correct = min(len(correct), max(1, rng.randint(1, k - 1) if k > 1 else 1))
    picked = correct[:n_correct] + wrong[: k - n_correct]
    picked += correct[n_correct : n_correct + k - len(picked)]
    if len(picked) < k:
        raise ValueError(f"only {len(picked)} distinct candidates for {task.template_id}, asked for {k}")
    rng.shuffle(picked)
    return picked


# --------------------------------------------------------------------------------------------
# datasets builders (TRL's conversational formats)
# --------------------------------------------------------------------------------------------


def sft_dataset(n: int, split: str = "train", seed: int = 0) -> datasets.Dataset:
    """Demonstrations: ``messages`` (system?/user/assistant) and ``task`` (JSON)."""
    from datasets import Dataset

    rng = random.Random(f"demonstrations-{split}-{seed}")
    rows = [
        {"messages": messages(t, demonstrate(t, rng)), "task": t.to_json()}
        for t in make_tasks(n, split, seed)
    ]
    return Dataset.from_list(rows)


def preference_dataset(n: int, split: str = "train", seed: int = 0) -> datasets.Dataset:
    """Pairs in TRL's conversational preference format: ``prompt`` (messages), ``chosen`` and
    ``rejected`` (one assistant message each, the chosen one strictly better by the labeler), ``task``."""
    from datasets import Dataset

    rng = random.Random(f"preferences-{split}-{seed}")
    rows = []
    for t in make_tasks(n, split, seed):
        cands = candidate_responses(t, 4, rng)
        scores = [label(t, c) for c in cands]
        pairs = [(i, j) for i in range(4) for j in range(4) if scores[i] > scores[j] + 1e-9]
        i, j = rng.choice(pairs)
        rows.append(
            {
                "prompt": messages(t),
                "chosen": [{"role": "assistant", "content": cands[i]}],
                "rejected": [{"role": "assistant", "content": cands[j]}],
                "task": t.to_json(),
            }
        )
    return Dataset.from_list(rows)


def kwise_dataset(
    n: int, split: str = "train", seed: int = 0, k_min: int = 4, k_max: int = 9
) -> datasets.Dataset:
    """K-wise comparisons (paper §3.5, K = 4..9): ``prompt`` (messages), ``responses`` (K distinct
    strings, K uniform in ``[k_min, k_max]``), ``scores`` (the labeler's, per response), ``task``."""
    from datasets import Dataset

    if not 2 <= k_min <= k_max:
        raise ValueError(f"need 2 <= k_min <= k_max, got k_min={k_min}, k_max={k_max}")
    rng = random.Random(f"kwise-{split}-{seed}")
    rows = []
    for t in make_tasks(n, split, seed):
        responses = candidate_responses(t, rng.randint(k_min, k_max), rng)
        rows.append(
            {
                "prompt": messages(t),
                "responses": responses,
                "scores": [label(t, r) for r in responses],
                "task": t.to_json(),
            }
        )
    return Dataset.from_list(rows)


def prompt_dataset(n: int, split: str = "heldout", seed: int = 0) -> datasets.Dataset:
    """Prompts for PPO rollouts and evaluation: ``prompt`` (messages, no assistant turn), ``task``."""
    from datasets import Dataset

    return Dataset.from_list(
        [{"prompt": messages(t), "task": t.to_json()} for t in make_tasks(n, split, seed)]
    )


# --------------------------------------------------------------------------------------------
# Real datasets by name or path
# --------------------------------------------------------------------------------------------

_KINDS = {
    # kind: alternatives, each a set of columns that suffices
    "sft": ({"messages"}, {"prompt", "completion"}, {"text"}),
    "preference": ({"prompt", "chosen", "rejected"}, {"chosen", "rejected"}),
    "prompt": ({"prompt"},),
}
_BUILDERS = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet"}


def load_instruction_dataset(name_or_path: str, kind: str, split: str = "train") -> datasets.Dataset:
    """Load a real instruction dataset and check its schema against ``kind``.

    ``kind``: ``"sft"`` (``messages``, or ``prompt`` + ``completion``, or ``text``),
    ``"preference"`` (``chosen`` + ``rejected``, with ``prompt`` or an implicit prompt; standard or
    conversational) or ``"prompt"`` (``prompt``). ``name_or_path`` is a local JSON/JSONL/CSV/parquet
    file, a local folder, or a Hub dataset name for ``datasets.load_dataset``.
    """
    import datasets as ds

    if kind not in _KINDS:
        raise ValueError(f"kind must be one of {tuple(_KINDS)}, got {kind!r}")
    ext = os.path.splitext(name_or_path)[1].lower()
    if os.path.isfile(name_or_path):
        if ext not in _BUILDERS:
            raise ValueError(f"cannot read {name_or_path!r}: use one of {sorted(_BUILDERS)}")
        data = ds.load_dataset(_BUILDERS[ext], data_files={split: name_or_path}, split=split)
    else:
        data = ds.load_dataset(name_or_path, split=split)
    columns = set(data.column_names)
    if not any(option <= columns for option in _KINDS[kind]):
        best = min(_KINDS[kind], key=lambda o: len(o - columns))
        alternatives = " or ".join("+".join(sorted(o)) for o in _KINDS[kind])
        raise ValueError(
            f"{name_or_path!r} is not a {kind!r} dataset: missing column(s) {sorted(best - columns)} "
            f"(needs {alternatives}; has {sorted(columns)})"
        )
    for column in ("messages", "prompt", "chosen", "rejected"):
        if column in columns and len(data) and isinstance(data[0][column], list):
            turns = data[0][column]
            if not all(isinstance(m, dict) and {"role", "content"} <= set(m) for m in turns):
                raise ValueError(
                    f"column {column!r} holds a list that is not of {{'role', 'content'}} messages"
                )
    return data
