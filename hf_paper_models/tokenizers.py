"""Each paper's tokenizer kind, trained offline on the embedded corpus with the ``tokenizers`` library.

======================  =============================  ==========================================
kind                    papers                         what it is
======================  =============================  ==========================================
``"byte_bpe"``          GPT-2, GPT-3 (and GPT-4 here)  byte-level BPE, ``<|endoftext|>`` only
``"bpe"``               GPT-1                          lower-cased BPE with ``</w>`` word ends and
                                                       the fine-tuning tokens ``<s> <$> <e>``
``"wordpiece"``         BERT                           lower-cased WordPiece, ``[CLS] a [SEP] b
                                                       [SEP]`` with token type ids
``"unigram"``           T5, Switch                     SentencePiece-style Unigram (Metaspace),
                                                       ``</s>`` appended, 100 sentinels on top
======================  =============================  ==========================================

``train_tokenizer`` returns a ``PreTrainedTokenizerFast`` that saves with ``save_pretrained`` and
loads back with ``AutoTokenizer.from_pretrained``. ``get_tokenizer`` memoises trained tokenizers
(in memory, and on disk with ``cache_dir``) so tests and recipes train each one once.

``chat_tokenizer`` is the byte-level BPE of GPT-2 trained on the LM corpus plus the instruction
tasks (``corpus="chat"``), with role tokens and a chat template for the InstructGPT pipeline
(Ouyang et al. 2022): system/user/assistant turns, assistant turns marked with
``{% generation %}`` for TRL's ``assistant_only_loss``, each ending with the eos token ``<|end|>``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from typing import Any

from tokenizers import (
    AddedToken,
    Regex,
    Tokenizer,
    decoders,
    models,
    normalizers,
    pre_tokenizers,
    processors,
    trainers,
)
from transformers import PreTrainedTokenizerFast

from .models.common import CHAT_TEMPLATE

__all__ = [
    "CHAT_SPECIAL_TOKENS",
    "CHAT_TEMPLATE",
    "DEFAULT_VOCAB_SIZE",
    "IMAGE_TOKEN",
    "KINDS",
    "chat_tokenizer",
    "image_chat_tokenizer",
    "get_tokenizer",
    "train_tokenizer",
]

KINDS = ("byte_bpe", "bpe", "wordpiece", "unigram")
# Upper bounds: BPE-type trainers stop early once every word of the corpus is a single token.
DEFAULT_VOCAB_SIZE = {"byte_bpe": 4096, "bpe": 4096, "wordpiece": 4096, "unigram": 4096}
DEFAULT_MAX_LENGTH = {"byte_bpe": 1024, "bpe": 512, "wordpiece": 512, "unigram": 512}
TRAIN_DOCUMENTS = 1500  # about 1 MB of the embedded corpus: a few seconds per tokenizer
_CACHE_VERSION = 1  # bump when the corpus or the recipes below change

# BERT's and GPT-1's special tokens, in id order
GPT1_SPECIALS = {
    "unk_token": "<unk>",
    "bos_token": "<s>",
    "sep_token": "<$>",
    "cls_token": "<e>",
    "pad_token": "<pad>",
}
BERT_SPECIALS = {
    "pad_token": "[PAD]",
    "unk_token": "[UNK]",
    "cls_token": "[CLS]",
    "sep_token": "[SEP]",
    "mask_token": "[MASK]",
}
T5_SPECIALS = {"pad_token": "<pad>", "eos_token": "</s>", "unk_token": "<unk>"}


def _default_texts(corpus: str) -> list[str]:
    if corpus == "lm":
        from .data.corpus import lm_corpus

        return lm_corpus(TRAIN_DOCUMENTS)
    if corpus == "parallel":  # both languages, for translation models with a shared vocabulary
        from .data.parallel import parallel_corpus

        pairs = parallel_corpus("train", num_pairs=10_000)
        return [s for s, _ in pairs] + [t for _, t in pairs]
    if corpus == "chat":  # the LM corpus plus instruction prompts and replies, for chat_tokenizer
        import random

        from .data.corpus import lm_corpus
        from .data.instructions import candidate_responses, make_tasks

        rng = random.Random("chat-tokenizer")
        texts = []
        for task in make_tasks(2000, "train"):
            texts += [task.system or "", task.prompt, *candidate_responses(task, 4, rng)]
        return lm_corpus(TRAIN_DOCUMENTS) + texts
    raise ValueError(f"corpus must be 'lm', 'parallel' or 'chat', got {corpus!r}")


def _byte_bpe(vocab_size: int, min_frequency: int) -> tuple[Tokenizer, Any, dict[str, Any]]:
    """GPT-2: BPE over the 256 bytes (mapped to printable characters), so nothing is unknown."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    eot = "<|endoftext|>"
    # GPT-2 has no padding token; the usual choice, the end-of-text token, lets collators pad.
    specials = {"bos_token": eot, "eos_token": eot, "unk_token": eot, "pad_token": eot}
    return (
        tok,
        trainer,
        {**specials, "add_prefix_space": False, "model_input_names": ["input_ids", "attention_mask"]},
    )


def _gpt1_bpe(vocab_size: int, min_frequency: int) -> tuple[Tokenizer, Any, dict[str, Any]]:
    """GPT-1: lower-cased, split on whitespace and punctuation, BPE with a ``</w>`` end-of-word suffix.

    The post-processor applies the paper's input transformation (§3.3): ``<s> text <e>`` and
    ``<s> a <$> b <e>``; pass ``add_special_tokens=False`` for plain language-model text.
    """
    tok = Tokenizer(models.BPE(unk_token="<unk>", end_of_word_suffix="</w>"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.BPEDecoder(suffix="</w>")
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(GPT1_SPECIALS.values()),
        end_of_word_suffix="</w>",
        show_progress=False,
    )
    ids = {t: i for i, t in enumerate(GPT1_SPECIALS.values())}
    post = processors.TemplateProcessing(
        single="<s> $A <e>",
        pair="<s> $A <$> $B <e>",
        special_tokens=[(t, ids[t]) for t in ("<s>", "<$>", "<e>")],
    )
    return tok, (trainer, post), {**GPT1_SPECIALS, "model_input_names": ["input_ids", "attention_mask"]}


def _wordpiece(vocab_size: int, min_frequency: int) -> tuple[Tokenizer, Any, dict[str, Any]]:
    """BERT: lower-cased WordPiece with ``##`` continuations; ``[CLS] A [SEP] B [SEP]``."""
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]", max_input_chars_per_word=100))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece(prefix="##")
    trainer = trainers.WordPieceTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(BERT_SPECIALS.values()),
        continuing_subword_prefix="##",
        show_progress=False,
    )
    post = processors.TemplateProcessing(
        single="[CLS]:0 $A:0 [SEP]:0",
        pair="[CLS]:0 $A:0 [SEP]:0 $B:1 [SEP]:1",
        special_tokens=[("[CLS]", 2), ("[SEP]", 3)],
    )
    names = ["input_ids", "token_type_ids", "attention_mask"]
    return tok, (trainer, post), {**BERT_SPECIALS, "model_input_names": names}


def _unigram(vocab_size: int, extra_ids: int) -> tuple[Tokenizer, Any, dict[str, Any]]:
    """T5: SentencePiece-style Unigram over Metaspace pieces; ``<pad>``=0, ``</s>``=1, ``<unk>``=2,
    ``</s>`` appended to every sequence, and ``extra_ids`` sentinels on the top ids."""
    if vocab_size - extra_ids < 64:
        raise ValueError(f"vocab_size={vocab_size} leaves fewer than 64 pieces beside {extra_ids} sentinels")
    tok = Tokenizer(models.Unigram())
    # like SentencePiece's nmt_nfkc: NFKC, and any run of whitespace (newlines too) is one space
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Replace(Regex(r"\s+"), " ")])
    tok.pre_tokenizer = _metaspace_pre_tokenizer()
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    trainer = trainers.UnigramTrainer(
        vocab_size=vocab_size - extra_ids + 1,  # + the seeding marker, removed after training
        special_tokens=list(T5_SPECIALS.values()),
        unk_token="<unk>",
        max_piece_length=16,
        show_progress=False,
    )
    post = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", 1)]
    )
    sentinels = [f"<extra_id_{i}>" for i in range(extra_ids)]
    names = ["input_ids", "attention_mask"]
    return (
        tok,
        (trainer, post),
        {**T5_SPECIALS, "extra_special_tokens": sentinels, "model_input_names": names},
    )


_SEED_MARK = "\ue000"  # a private-use character that never occurs in the data


def _metaspace_pre_tokenizer(mark: str = "") -> pre_tokenizers.PreTokenizer:
    """Spaces become "▁" word starts; a punctuation mark or symbol (with the "▁" before it, if
    any) stays apart from letters, as SentencePiece's split-by-script does. ``mark`` may follow
    the mark (for seeding, see ``_train_unigram``)."""
    punct = r"▁?[[\p{P}\p{S}]&&[^▁]]" + (f"{mark}?" if mark else "")
    return pre_tokenizers.Sequence(
        [
            pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True),
            pre_tokenizers.Split(Regex(punct), behavior="isolated"),
        ]
    )


def _train_unigram(tok: Tokenizer, texts: Iterable[str], trainer: Any) -> Tokenizer:
    """Unigram training with every word available as a seed piece.

    The ``tokenizers`` trainer takes its seed pieces from substrings that repeat across the
    *distinct* pre-tokenized words, so a frequent word that is no other word's substring ("and")
    is never a candidate. SentencePiece, which scans running text, has no such gap. Adding each
    distinct word once more with a marker character makes every word a repeat; the marked words
    count once each, so the EM barely notices them, and pieces holding the marker are dropped.
    """
    texts = list(texts)
    words: dict[str, None] = {}
    normalize, pre_tokenize = tok.normalizer.normalize_str, tok.pre_tokenizer.pre_tokenize_str
    for text in texts:
        for word, _ in pre_tokenize(normalize(text)):
            words.setdefault(word.lstrip("▁"), None)
    marked = " ".join(w + _SEED_MARK for w in words if w)
    final = tok.pre_tokenizer
    tok.pre_tokenizer = _metaspace_pre_tokenizer(mark=_SEED_MARK)  # keeps "▁," + mark together
    tok.train_from_iterator([*texts, marked], trainer=trainer)
    tok.pre_tokenizer = final
    state = json.loads(tok.to_str())
    state["model"]["vocab"] = [p for p in state["model"]["vocab"] if _SEED_MARK not in p[0]]
    return Tokenizer.from_str(json.dumps(state))


def _train_backend(
    kind: str, texts: Iterable[str], vocab_size: int, min_frequency: int, extra_ids: int
) -> tuple[Tokenizer, dict[str, Any]]:
    if kind == "byte_bpe":
        if vocab_size < 257:
            raise ValueError(
                f"byte_bpe needs vocab_size >= 257 (256 bytes + <|endoftext|>), got {vocab_size}"
            )
        tok, trainer, init = _byte_bpe(vocab_size, min_frequency)
        post = None
    elif kind == "bpe":
        tok, (trainer, post), init = _gpt1_bpe(vocab_size, min_frequency)
    elif kind == "wordpiece":
        tok, (trainer, post), init = _wordpiece(vocab_size, min_frequency)
    elif kind == "unigram":
        tok, (trainer, post), init = _unigram(vocab_size, extra_ids)
    else:
        raise ValueError(f"unknown tokenizer kind {kind!r}; choose from {KINDS}")
    if kind == "unigram":
        tok = _train_unigram(tok, texts, trainer)
    else:
        tok.train_from_iterator(texts, trainer=trainer)
    if post is not None:
        tok.post_processor = post
    if kind == "unigram" and extra_ids:
        # T5 order: <extra_id_0> takes the highest id, <extra_id_99> the lowest of the sentinels
        tok.add_special_tokens(
            [
                AddedToken(f"<extra_id_{i}>", special=True, normalized=False)
                for i in reversed(range(extra_ids))
            ]
        )
    return tok, init


def _wrap(backend_json: str, init: dict[str, Any]) -> PreTrainedTokenizerFast:
    return PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(backend_json), **init)


def _prepare(
    kind: str,
    texts: Iterable[str] | None,
    vocab_size: int | None,
    *,
    corpus: str,
    model_max_length: int | None,
    padding_side: str,
    min_frequency: int,
    extra_ids: int,
) -> tuple[str, dict[str, Any]]:
    if kind not in KINDS:
        raise ValueError(f"unknown tokenizer kind {kind!r}; choose from {KINDS}")
    if padding_side not in ("right", "left"):
        raise ValueError(f"padding_side must be 'right' or 'left', got {padding_side!r}")
    vocab_size = DEFAULT_VOCAB_SIZE[kind] if vocab_size is None else int(vocab_size)
    if vocab_size < 16:
        raise ValueError(f"vocab_size must be at least 16, got {vocab_size}")
    if texts is None:
        texts = _default_texts(corpus)
    backend, init = _train_backend(kind, texts, vocab_size, min_frequency, extra_ids)
    init = {
        **init,
        "model_max_length": model_max_length or DEFAULT_MAX_LENGTH[kind],
        "padding_side": padding_side,
        "clean_up_tokenization_spaces": False,
    }
    return backend.to_str(), init


def train_tokenizer(
    kind: str,
    texts: Iterable[str] | None = None,
    vocab_size: int | None = None,
    *,
    corpus: str = "lm",
    model_max_length: int | None = None,
    padding_side: str = "right",
    min_frequency: int = 2,
    extra_ids: int = 100,
) -> PreTrainedTokenizerFast:
    """Train a tokenizer of ``kind`` (see ``KINDS``) on ``texts``.

    ``texts`` defaults to the first ``TRAIN_DOCUMENTS`` documents of the embedded LM corpus, or
    with ``corpus="parallel"`` to both sides of the parallel corpus. ``vocab_size`` is the full
    size including special tokens (and, for ``"unigram"``, the ``extra_ids`` sentinels); trainers
    stop earlier when the corpus has nothing left to merge, so read ``len(tokenizer)``.
    """
    backend_json, init = _prepare(
        kind,
        texts,
        vocab_size,
        corpus=corpus,
        model_max_length=model_max_length,
        padding_side=padding_side,
        min_frequency=min_frequency,
        extra_ids=extra_ids,
    )
    return _wrap(backend_json, init)


_MEMO: dict[tuple[Any, ...], tuple[str, dict[str, Any]]] = {}
_INIT_FILE = "hfpm_tokenizer_init.json"


def get_tokenizer(
    kind: str,
    vocab_size: int | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    *,
    corpus: str = "lm",
    min_frequency: int = 2,
    extra_ids: int = 100,
    model_max_length: int | None = None,
    padding_side: str = "right",
) -> PreTrainedTokenizerFast:
    """A tokenizer of ``kind`` trained on the embedded data, once per process (see ``train_tokenizer``).

    Each call returns a fresh object, so changing it does not leak to other callers. With
    ``cache_dir`` the trained tokenizer is saved under it and loaded from there next time.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown tokenizer kind {kind!r}; choose from {KINDS}")
    vocab_size = DEFAULT_VOCAB_SIZE[kind] if vocab_size is None else int(vocab_size)
    key = (kind, vocab_size, corpus, min_frequency, extra_ids if kind == "unigram" else 0)
    if key not in _MEMO:
        path = None
        if cache_dir is not None:
            name = f"{kind}-{vocab_size}-{corpus}-f{min_frequency}-x{key[-1]}-v{_CACHE_VERSION}"
            path = os.path.join(os.fspath(cache_dir), name)
        if path is not None and os.path.isfile(os.path.join(path, _INIT_FILE)):
            with open(os.path.join(path, "tokenizer.json"), encoding="utf-8") as f:
                backend_json = f.read()
            with open(os.path.join(path, _INIT_FILE), encoding="utf-8") as f:
                init = json.load(f)
        else:
            backend_json, init = _prepare(
                kind,
                None,
                vocab_size,
                corpus=corpus,
                model_max_length=None,
                padding_side="right",
                min_frequency=min_frequency,
                extra_ids=extra_ids,
            )
            if path is not None:
                _wrap(backend_json, init).save_pretrained(path)
                with open(os.path.join(path, _INIT_FILE), "w", encoding="utf-8") as f:
                    json.dump(init, f)
        _MEMO[key] = (backend_json, init)
    backend_json, init = _MEMO[key]
    init = {**init, "padding_side": padding_side}
    if model_max_length is not None:
        init["model_max_length"] = model_max_length
    return _wrap(backend_json, init)


# ------------------------------------------------------------------------------------------------
# The chat tokenizer of the InstructGPT pipeline
# ------------------------------------------------------------------------------------------------

CHAT_SPECIAL_TOKENS = {
    "system": "<|system|>",
    "user": "<|user|>",
    "assistant": "<|assistant|>",
    "eos": "<|end|>",  # ends every turn; as eos it stops generation after the assistant's reply
    "pad": "<|pad|>",
}

# The chat template (roles, {% generation %} marks, image content items) is shared with the GPT-4
# processor, so it lives with the models (``models/common.py``) and travels with an exported model.


def chat_tokenizer(
    vocab_size: int = 2048,
    cache_dir: str | os.PathLike[str] | None = None,
    *,
    corpus: str = "chat",
    model_max_length: int | None = None,
    padding_side: str = "right",
) -> PreTrainedTokenizerFast:
    """GPT-2's byte-level BPE with role tokens, a pad token and ``CHAT_TEMPLATE``.

    Trained once per process (and cached under ``cache_dir``) like ``get_tokenizer``; by default on
    the LM corpus plus instruction text (``corpus="chat"``). ``<|endoftext|>`` stays the bos/unk
    token and document separator; ``<|end|>`` is eos, so ``generate`` stops at the end of the
    assistant's turn; ``<|pad|>`` pads. The added tokens take the ids after the trained vocabulary,
    so ``len(tokenizer)`` is the model's ``vocab_size``.
    """
    tok = get_tokenizer(
        "byte_bpe",
        vocab_size,
        cache_dir,
        corpus=corpus,
        model_max_length=model_max_length,
        padding_side=padding_side,
    )
    t = CHAT_SPECIAL_TOKENS
    tok.add_special_tokens(
        {
            "eos_token": t["eos"],
            "pad_token": t["pad"],
            "extra_special_tokens": [t["system"], t["user"], t["assistant"]],
        }
    )
    tok.chat_template = CHAT_TEMPLATE
    return tok


IMAGE_TOKEN = "<image>"


def image_chat_tokenizer(
    vocab_size: int = 2048, cache_dir: str | os.PathLike[str] | None = None, **kwargs: Any
) -> PreTrainedTokenizerFast:
    """``chat_tokenizer`` plus the ``<image>`` placeholder of the GPT-4 model as one special token.

    It takes the id after the chat tokens, so ``len(tokenizer)`` (2054 at the default size) is the
    ``vocab_size`` of the ``gpt4-tiny`` preset and ``<image>`` is its ``image_token_id`` (2053).
    """
    tok = chat_tokenizer(vocab_size, cache_dir, **kwargs)
    tok.add_special_tokens({"extra_special_tokens": [IMAGE_TOKEN]}, replace_extra_special_tokens=False)
    return tok
