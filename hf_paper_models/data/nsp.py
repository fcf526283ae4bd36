"""BERT's pre-training data (Devlin et al. 2019, §3.1 and Appendix A.1), built from any documents.

- ``build_nsp_pairs``: Task #2, next sentence prediction. "When choosing the sentences A and B for
  each pre-training example, 50% of the time B is the actual next sentence that follows A (labeled
  as IsNext), and 50% of the time it is a random sentence from the corpus (labeled as NotNext)."
  A "sentence" may be a span of several sentences filling the sequence (§3, Appendix A.2), as the
  released ``create_pretraining_data.py`` builds them; the random one comes from another document.
  Labels follow transformers' ``next_sentence_label``: 0 = IsNext, 1 = NotNext.
- ``tokenize_pairs``: ``[CLS] A [SEP] B [SEP]`` with segment ids (token_type_ids) 0 for A and 1 for B,
  truncated to ``max_length``, with the special-tokens mask the MLM collator needs.
- ``DataCollatorForMLMAndNSP``: Task #1, the masked LM, through transformers'
  ``DataCollatorForLanguageModeling`` (15% of the non-special positions; of those 80% ``[MASK]``, 10%
  a random token, 10% unchanged), keeping ``token_type_ids`` and ``next_sentence_label``.
- ``word_order_task``: a sentence classification task for fine-tuning demos: is this sentence as
  written (1) or are its words shuffled (0)? Word order decides it, so bag-of-words cannot.
"""

from __future__ import annotations

import hashlib
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from transformers import DataCollatorForLanguageModeling

if TYPE_CHECKING:
    import datasets
    from transformers import PreTrainedTokenizerBase

__all__ = [
    "IS_NEXT",
    "NOT_NEXT",
    "DataCollatorForMLMAndNSP",
    "NSPPair",
    "build_nsp_pairs",
    "nsp_dataset",
    "split_sentences",
    "tokenize_pairs",
    "word_order_task",
]

IS_NEXT, NOT_NEXT = 0, 1  # transformers' BertForPreTraining convention
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def split_sentences(document: str) -> list[str]:
    """The sentences of ``document`` in order (paragraphs are split on blank lines, sentences after
    ``.``, ``!`` or ``?`` followed by white space)."""
    return [s for paragraph in document.split("\n\n") for s in _SENTENCE_END.split(paragraph.strip()) if s]


@dataclass(frozen=True)
class NSPPair:
    """One NSP example: segment A is sentences ``[sentence_a, sentence_a + len_a)`` of document
    ``document_a``, segment B the sentences from ``sentence_b`` of ``document_b``."""

    text_a: str
    text_b: str
    next_sentence_label: int  # IS_NEXT (0) or NOT_NEXT (1)
    document_a: int
    sentence_a: int
    document_b: int
    sentence_b: int


def _words(text: str) -> int:
    return len(text.split())


def build_nsp_pairs(
    documents: Sequence[str],
    *,
    seed: int = 0,
    is_next_probability: float = 0.5,
    target_length: int | None = None,
    length: Callable[[str], int] = _words,
) -> list[NSPPair]:
    """NSP pairs from ``documents`` (one string each), deterministic for a given ``seed``.

    With ``target_length=None`` each segment is one sentence: one pair per sentence that has a
    successor in its document. With a ``target_length`` (in units of ``length``, e.g. tokens for
    ``max_seq_length - 3``), segments are spans of whole sentences as in the released
    ``create_pretraining_data.py`` (the paper's "sentence" is "an arbitrary span of contiguous
    text"): consecutive sentences of a document are gathered until they reach ``target_length``, a
    random cut splits them into A and the rest; with probability ``1 - is_next_probability`` the rest
    is replaced by sentences of a random other document, from a random start, until A + B reach
    ``target_length`` — and the unused sentences go back into the stream.

    IsNext: B starts with the sentence right after A's last one. NotNext: B comes from another
    document. A span of a single sentence (a one-sentence document) yields no pair.
    """
    if not 0.0 <= is_next_probability <= 1.0:
        raise ValueError(f"is_next_probability must be in [0, 1], got {is_next_probability!r}")
    if target_length is not None and target_length < 2:
        raise ValueError(f"target_length must be >= 2 or None, got {target_length!r}")
    sentences = [split_sentences(d) for d in documents]
    if sum(1 for s in sentences if s) < 2:
        raise ValueError("NSP needs at least two documents with sentences (NotNext draws from another document).")
    donors = [i for i, s in enumerate(sentences) if s]
    rng = random.Random(seed)

    def other_document(doc: int) -> int:
        while True:
            pick = donors[rng.randrange(len(donors))]
            if pick != doc:
                return pick

    pairs = []
    for doc, sents in enumerate(sentences):
        start = 0
        while start < len(sents) - 1:
            # gather the span [start, end): one sentence each side, or sentences up to target_length
            end, total = start, 0
            while end < len(sents) and (end - start < 2 if target_length is None else total < target_length):
                total += length(sents[end])
                end += 1
            if end - start < 2:
                break
            cut = start + 1 if target_length is None else rng.randint(start + 1, end - 1)
            text_a = " ".join(sents[start:cut])
            if rng.random() < is_next_probability:
                pairs.append(NSPPair(text_a, " ".join(sents[cut:end]), IS_NEXT, doc, start, doc, cut))
                start = end if target_length is not None else start + 1
                continue
            doc_b = other_document(doc)
            b_sents = sentences[doc_b]
            b_start = rng.randrange(len(b_sents))
            b_end, b_total = b_start + 1, length(b_sents[b_start])
            budget = None if target_length is None else target_length - sum(length(x) for x in sents[start:cut])
            while budget is not None and b_end < len(b_sents) and b_total < budget:
                b_total += length(b_sents[b_end])
                b_end += 1
            pairs.append(NSPPair(text_a, " ".join(b_sents[b_start:b_end]), NOT_NEXT, doc, start, doc_b, b_start))
            start = cut if target_length is not None else start + 1  # A's successors go back into the stream
    return pairs


def nsp_dataset(
    documents: Sequence[str],
    *,
    seed: int = 0,
    target_length: int | None = None,
    length: Callable[[str], int] = _words,
) -> datasets.Dataset:
    """``build_nsp_pairs`` as a ``datasets.Dataset`` with ``text_a``, ``text_b``, ``next_sentence_label``."""
    import datasets

    pairs = build_nsp_pairs(documents, seed=seed, target_length=target_length, length=length)
    return datasets.Dataset.from_dict(
        {
            "text_a": [p.text_a for p in pairs],
            "text_b": [p.text_b for p in pairs],
            "next_sentence_label": [p.next_sentence_label for p in pairs],
        }
    )


def tokenize_pairs(
    tokenizer: PreTrainedTokenizerBase, max_length: int
) -> Callable[[dict[str, list]], dict[str, list]]:
    """A ``Dataset.map(batched=True)`` function: ``[CLS] A [SEP] B [SEP]`` with token_type_ids,
    truncated to ``max_length`` (longest segment first), and the ``special_tokens_mask``."""

    def tokenize(batch: dict[str, list]) -> dict[str, list]:
        encoded = tokenizer(
            batch["text_a"],
            batch["text_b"],
            truncation="longest_first",
            max_length=max_length,
            return_token_type_ids=True,
            return_special_tokens_mask=True,
        )
        return {**encoded, "next_sentence_label": batch["next_sentence_label"]}

    return tokenize


@dataclass
class DataCollatorForMLMAndNSP(DataCollatorForLanguageModeling):
    """transformers' MLM collator (BERT's 15% and 80/10/10 by default) for NSP pair features.

    Pads ``input_ids``, ``token_type_ids`` and ``attention_mask``, stacks ``next_sentence_label``
    and adds MLM ``labels`` (-100 where nothing was masked). Special tokens and padding are never
    masked. With ``seed`` set, each batch is masked from a generator seeded by (seed, the batch's
    token ids): a batch is masked the same way wherever a run stops and resumes, while an example
    gets a fresh mask when it lands in another batch (another epoch).
    """

    def torch_mask_tokens(
        self, inputs: Any, special_tokens_mask: Any | None = None, offset_mapping: Any | None = None
    ) -> tuple[Any, Any]:
        if self.seed is not None:
            digest = hashlib.blake2b(inputs.numpy().tobytes(), digest_size=8).digest()
            batch_seed = (self.seed * 1_000_003 + int.from_bytes(digest, "little")) % 2**63
            self.generator = torch.Generator().manual_seed(batch_seed)
        return super().torch_mask_tokens(inputs, special_tokens_mask, offset_mapping)


def word_order_task(documents: Sequence[str], *, seed: int = 0) -> dict[str, list]:
    """Sentences labelled 1 as written or 0 with their words shuffled (half of them, at random).

    Returns ``{"text": [...], "label": [...]}``. Both classes are lower-cased, lose their commas and
    get a capital and a final full stop, so only the order of the words tells them apart.
    """
    rng = random.Random(seed)
    texts, labels = [], []
    for document in documents:
        for sentence in split_sentences(document):
            words = sentence.rstrip(".").replace(",", "").lower().split()
            if len(words) < 4 or len(set(words)) < 2:
                continue
            label = int(rng.random() < 0.5)
            if not label:
                shuffled = words[:]
                while shuffled == words:
                    rng.shuffle(shuffled)
                words = shuffled
            text = " ".join(words)
            texts.append(text[0].upper() + text[1:] + ".")
            labels.append(label)
    return {"text": texts, "label": labels}
