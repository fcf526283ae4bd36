"""T5's data: the span-corruption objective and the text-to-text task format (Raffel et al. 2020).

Span corruption (§3.1.4, §3.3.4 and Figure 2): "we randomly sample and then drop out 15% of tokens
in the input sequence. All consecutive spans of dropped-out tokens are replaced by a single sentinel
token. Each sentinel token is assigned a token ID that is unique to the sequence. [...] The target
then corresponds to all of the dropped-out spans of tokens, delimited by the same sentinel tokens
used in the input sequence plus a final sentinel token to mark the end of the target sequence." The
mean span length is 3 (§3.3.4, Table 7's choice). Sentinels are the vocabulary's top ids:
``<extra_id_0>`` is the highest, ``<extra_id_1>`` the next one down, and so on.

- ``random_spans_noise_mask(length, ...)``: which tokens are dropped. Exactly
  ``round(length · density)`` noise tokens in ``round(noise / mean_span)`` spans; the noise tokens
  and the kept tokens are each cut into that many non-empty runs uniformly at random, and the runs
  alternate kept, noise, kept, noise … (so a sequence starts with kept tokens and ends with noise).
- ``span_corrupt(tokens, noise_mask, sentinel_start_id)``: (inputs, targets). Each run of noise
  becomes one sentinel in the inputs; each run of kept tokens becomes one sentinel in the targets,
  which therefore read "<X> dropped span <Y> dropped span … <Z>" as in Figure 2.
- ``DataCollatorForSpanCorruption``: a ``DataLoader`` collator that corrupts token blocks, appends
  EOS and pads (labels padded with -100). Each example's mask is drawn from a generator seeded by
  (seed, the example's tokens), so a batch does not depend on what came before it: resumed and
  multi-process runs see the same corruption.
- ``span_corruption_lengths(inputs_length)``: the raw block length whose corrupted inputs fill
  ``inputs_length`` tokens exactly (T5 pre-trains on 512-token inputs).

Text-to-text (§2.4): every task is "text in, text out" with a task prefix; ``text_to_text(task, ...)``
formats an example as the paper does ("translate English to German: That is good.", "cola sentence:
…", "stsb sentence1: … sentence2: …"), ``stsb_target`` rounds a similarity score to the paper's
0.2 grid (§2.4: STS-B as 21 classes).
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

__all__ = [
    "NOISE_DENSITY",
    "MEAN_NOISE_SPAN_LENGTH",
    "COLA_TARGETS",
    "TASK_TEMPLATES",
    "DataCollatorForSpanCorruption",
    "random_spans_noise_mask",
    "sentinel_ids",
    "span_corrupt",
    "span_corruption_lengths",
    "stsb_target",
    "text_to_text",
    "translation_prefix",
]

NOISE_DENSITY = 0.15  # §3.1.4: "15% of tokens"
MEAN_NOISE_SPAN_LENGTH = 3.0  # §3.3.4: "an average span length of 3"


# ----------------------------------------------------------------------------------------------
# The noise mask
# ----------------------------------------------------------------------------------------------


def _noise_counts(length: int, noise_density: float, mean_noise_span_length: float) -> tuple[int, int]:
    """(noise tokens, noise spans) for a sequence of ``length`` tokens; at least one kept token."""
    num_noise = min(max(int(round(length * noise_density)), 1), length - 1)
    num_spans = max(int(round(num_noise / mean_noise_span_length)), 1)
    return num_noise, num_spans


def _random_segmentation(num_items: int, num_segments: int, rng: np.random.Generator) -> np.ndarray:
    """Lengths of ``num_segments`` non-empty runs that add up to ``num_items``, uniformly at random
    among all such compositions (cut the row of items at ``num_segments - 1`` distinct gaps)."""
    cuts = np.sort(rng.choice(num_items - 1, size=num_segments - 1, replace=False)) + 1
    return np.diff(np.concatenate([[0], cuts, [num_items]]))


def random_spans_noise_mask(
    length: int,
    noise_density: float = NOISE_DENSITY,
    mean_noise_span_length: float = MEAN_NOISE_SPAN_LENGTH,
    rng: np.random.Generator | int | None = None,
) -> np.ndarray:
    """Boolean mask of the tokens span corruption drops (True = noise), of shape (``length``,).

    ``round(length · noise_density)`` noise tokens (at least 1, at most ``length - 1``) in
    ``round(noise tokens / mean_noise_span_length)`` spans (at least 1). Kept and noise runs alternate,
    starting with kept tokens. Sequences shorter than 2 tokens get no noise.
    """
    if not 0.0 < noise_density < 1.0:
        raise ValueError(f"noise_density must be in (0, 1), got {noise_density!r}")
    if not mean_noise_span_length >= 1.0:
        raise ValueError(f"mean_noise_span_length must be >= 1, got {mean_noise_span_length!r}")
    if length < 2:
        return np.zeros(max(length, 0), dtype=bool)
    rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    num_noise, num_spans = _noise_counts(length, noise_density, mean_noise_span_length)
    num_spans = min(num_spans, num_noise, length - num_noise)  # each run needs a token
    noise_lengths = _random_segmentation(num_noise, num_spans, rng)
    kept_lengths = _random_segmentation(length - num_noise, num_spans, rng)
    runs = np.stack([kept_lengths, noise_lengths], axis=1).reshape(-1)  # kept, noise, kept, noise ...
    is_noise = np.tile([False, True], num_spans)
    return np.repeat(is_noise, runs)


# ----------------------------------------------------------------------------------------------
# Inputs and targets
# ----------------------------------------------------------------------------------------------


def sentinel_ids(tokenizer: Any, count: int = 1) -> list[int]:
    """The ids of ``<extra_id_0>``, ``<extra_id_1>``, … in ``tokenizer`` (descending from the top)."""
    ids = tokenizer.convert_tokens_to_ids([f"<extra_id_{i}>" for i in range(count)])
    unk = getattr(tokenizer, "unk_token_id", None)
    if any(i is None or i == unk for i in ids):
        raise ValueError(
            "The tokenizer has no <extra_id_N> sentinel tokens (T5's Unigram tokenizer has 100)."
        )
    return ids


def _runs_to_sentinels(tokens: np.ndarray, drop: np.ndarray, sentinel_start_id: int) -> np.ndarray:
    """Replace each maximal run of ``drop`` positions by one sentinel, numbered from 0 in order."""
    starts = drop & ~np.concatenate([[False], drop[:-1]])  # first position of each dropped run
    sentinels = sentinel_start_id - (np.cumsum(starts) - 1)  # <extra_id_k> = top id - k
    out = np.where(starts, sentinels, tokens)
    return out[~drop | starts]


def span_corrupt(
    tokens: Sequence[int] | np.ndarray,
    noise_mask: Sequence[bool] | np.ndarray,
    sentinel_start_id: int,
    eos_token_id: int | None = None,
) -> tuple[list[int], list[int]]:
    """(inputs, targets) of span corruption for one sequence and its noise mask (Figure 2).

    Inputs: the tokens with each noise span replaced by one sentinel. Targets: the noise spans, each
    after its sentinel, with the kept runs likewise replaced by sentinels; the targets of a sequence
    that ends with kept tokens thus end with one more sentinel (Figure 2's "<Z>"). ``eos_token_id``
    is appended to both when given. Sentinel ``k`` has id ``sentinel_start_id - k``.
    """
    tokens = np.asarray(tokens, dtype=np.int64)
    mask = np.asarray(noise_mask, dtype=bool)
    if tokens.shape != mask.shape or tokens.ndim != 1:
        raise ValueError(f"tokens {tokens.shape} and noise_mask {mask.shape} must be 1-D of the same length.")
    inputs = _runs_to_sentinels(tokens, mask, sentinel_start_id).tolist()
    # A virtual kept token in front: a sequence that starts with noise still gets sentinel 0 before
    # its first span (for one that starts with kept tokens, it merges into the first kept run).
    targets = _runs_to_sentinels(
        np.concatenate([[0], tokens]), np.concatenate([[True], ~mask]), sentinel_start_id
    ).tolist()
    if eos_token_id is not None:
        inputs.append(eos_token_id)
        targets.append(eos_token_id)
    return inputs, targets


def span_corruption_lengths(
    inputs_length: int,
    noise_density: float = NOISE_DENSITY,
    mean_noise_span_length: float = MEAN_NOISE_SPAN_LENGTH,
) -> tuple[int, int]:
    """(raw tokens per block, target length) such that corrupting a block of raw tokens gives inputs
    of at most ``inputs_length`` tokens, EOS included (T5's pre-training packs 512-token inputs).

    With the mask of ``random_spans_noise_mask`` (ending with noise) the lengths are fixed by the
    counts: inputs = kept + spans + EOS, targets = noise + spans + EOS.
    """
    if inputs_length < 3:
        raise ValueError(f"inputs_length must be >= 3, got {inputs_length}")

    def lengths(raw: int) -> tuple[int, int]:
        noise, spans = _noise_counts(raw, noise_density, mean_noise_span_length)
        spans = min(spans, noise, raw - noise)
        return raw - noise + spans + 1, noise + spans + 1

    raw = 2
    while lengths(raw + 1)[0] <= inputs_length:
        raw += 1
    return raw, lengths(raw)[1]


@dataclass
class DataCollatorForSpanCorruption:
    """Span corruption as a ``DataLoader`` collator (T5's pre-training objective, §3.1.4).

    Takes examples holding token blocks (``{"input_ids": [...]}`` or plain lists, without EOS) and
    returns ``input_ids``, ``attention_mask`` and ``labels`` tensors: corrupted inputs + EOS, and
    sentinel-delimited spans + EOS as labels (padding -100, ignored by the loss). The model builds
    its decoder inputs by shifting the labels right.

    ``tokenizer`` supplies the sentinel, EOS and padding ids unless they are given (and the number
    of sentinels, which bounds the spans per block). Each example's noise mask comes from a
    generator seeded by ``seed`` and the example's own tokens.
    """

    tokenizer: Any = None
    noise_density: float = NOISE_DENSITY
    mean_noise_span_length: float = MEAN_NOISE_SPAN_LENGTH
    sentinel_start_id: int | None = None
    eos_token_id: int | None = None
    pad_token_id: int | None = None
    seed: int = 0
    label_pad_token_id: int = -100
    num_sentinels: int = 100

    def __post_init__(self) -> None:
        if self.tokenizer is not None:
            self.num_sentinels = sum(t.startswith("<extra_id_") for t in self.tokenizer.get_vocab())
            if self.sentinel_start_id is None:
                self.sentinel_start_id = sentinel_ids(self.tokenizer)[0]
            if self.eos_token_id is None:
                self.eos_token_id = self.tokenizer.eos_token_id
            if self.pad_token_id is None:
                self.pad_token_id = self.tokenizer.pad_token_id
        for name in ("sentinel_start_id", "eos_token_id", "pad_token_id"):
            if getattr(self, name) is None:
                raise ValueError(
                    f"DataCollatorForSpanCorruption needs `{name}` (or a tokenizer that has it)."
                )
        if not 0.0 < self.noise_density < 1.0:
            raise ValueError(f"noise_density must be in (0, 1), got {self.noise_density!r}")
        if not self.mean_noise_span_length >= 1.0:
            raise ValueError(f"mean_noise_span_length must be >= 1, got {self.mean_noise_span_length!r}")

    def _rng(self, tokens: np.ndarray) -> np.random.Generator:
        return np.random.default_rng([self.seed, zlib.crc32(tokens.tobytes())])

    def corrupt(self, tokens: Sequence[int]) -> tuple[list[int], list[int]]:
        """(inputs, targets) of one token block, EOS appended."""
        tokens = np.asarray(tokens, dtype=np.int64)
        mask = random_spans_noise_mask(
            len(tokens), self.noise_density, self.mean_noise_span_length, self._rng(tokens)
        )
        spans = int((mask & ~np.concatenate([[False], mask[:-1]])).sum())
        if spans + 1 > self.num_sentinels:  # + the targets' final sentinel, when the block ends kept
            raise ValueError(
                f"A block of {len(tokens)} tokens has {spans} noise spans, more than the {self.num_sentinels} "
                "sentinels; use shorter blocks (span_corruption_lengths)."
            )
        return span_corrupt(tokens, mask, self.sentinel_start_id, self.eos_token_id)

    def __call__(self, examples: Sequence[Mapping[str, Any] | Sequence[int]]) -> dict[str, torch.Tensor]:
        pairs = []
        for example in examples:
            tokens = example["input_ids"] if isinstance(example, Mapping) else example
            if isinstance(tokens, torch.Tensor):
                tokens = tokens.tolist()
            pairs.append(self.corrupt(tokens))
        width_in = max(len(i) for i, _ in pairs)
        width_out = max(len(t) for _, t in pairs)
        input_ids = torch.full((len(pairs), width_in), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(pairs), width_in), dtype=torch.long)
        labels = torch.full((len(pairs), width_out), self.label_pad_token_id, dtype=torch.long)
        for row, (inputs, targets) in enumerate(pairs):
            input_ids[row, : len(inputs)] = torch.tensor(inputs)
            attention_mask[row, : len(inputs)] = 1
            labels[row, : len(targets)] = torch.tensor(targets)
        return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


# ----------------------------------------------------------------------------------------------
# Text-to-text
# ----------------------------------------------------------------------------------------------

#: The paper's task formats (§2.4, Figure 1, Appendix D): a prefix naming the task, then the fields.
TASK_TEMPLATES: dict[str, str] = {
    "translate_en_de": "translate English to German: {text}",
    "translate_en_fr": "translate English to French: {text}",
    "translate_en_ro": "translate English to Romanian: {text}",
    "summarize": "summarize: {text}",
    "cola": "cola sentence: {sentence}",
    "sst2": "sst2 sentence: {sentence}",
    "mrpc": "mrpc sentence1: {sentence1} sentence2: {sentence2}",
    "qqp": "qqp question1: {question1} question2: {question2}",
    "stsb": "stsb sentence1: {sentence1} sentence2: {sentence2}",
    "mnli": "mnli hypothesis: {hypothesis} premise: {premise}",
    "qnli": "qnli question: {question} sentence: {sentence}",
    "rte": "rte sentence1: {sentence1} sentence2: {sentence2}",
    "wnli": "wnli sentence1: {sentence1} sentence2: {sentence2}",
    "squad": "question: {question} context: {context}",
}


#: CoLA's answers as text, index = label (Figure 1: "cola sentence: The course is jumping well." ->
#: "not acceptable").
COLA_TARGETS = ("not acceptable", "acceptable")


def translation_prefix(source_language: str, target_language: str) -> str:
    """``"translate English to German: "`` — the prefix of any translation direction."""
    return f"translate {source_language} to {target_language}: "


def text_to_text(task: str, **fields: str) -> str:
    """An example of ``task`` as T5 reads it: ``text_to_text("cola", sentence="The course is jumping
    well.")`` -> ``"cola sentence: The course is jumping well."``. ``task`` is a key of
    ``TASK_TEMPLATES``; the fields are the template's placeholders."""
    if task not in TASK_TEMPLATES:
        raise ValueError(
            f"Unknown task {task!r}; known: {sorted(TASK_TEMPLATES)} (or use translation_prefix)."
        )
    try:
        return TASK_TEMPLATES[task].format(**fields)
    except KeyError as err:
        raise ValueError(f"Task {task!r} needs the field {err.args[0]!r}: {TASK_TEMPLATES[task]!r}") from None


def stsb_target(score: float) -> str:
    """STS-B as text (§2.4): the similarity score rounded to the nearest increment of 0.2, e.g. "2.6"."""
    return f"{round(float(score) * 5) / 5:.1f}"
