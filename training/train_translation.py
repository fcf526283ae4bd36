"""Translation training for the encoder-decoder papers (ZOO.md §3): the Transformer (Vaswani et al.
2017) and, with its own preset, RNNsearch (Bahdanau et al. 2015). The model is chosen by preset name.

    python training/train_translation.py --config training/configs/transformer_tiny.yaml
    python training/train_translation.py --config training/configs/transformer_tiny.yaml --max_steps 50 \\
        --output_dir runs/try --max_test_pairs 100
    python training/train_translation.py --config training/configs/transformer_tiny.yaml --dataset wmt14 \\
        --dataset_config de-en --translation_column translation --source_lang en --target_lang de
    accelerate launch --multi_gpu --num_processes 2 training/train_translation.py \\
        --config training/configs/transformer_tiny.yaml

What the Transformer recipe does, after the paper (§5):

- **Data.** The embedded parallel corpus (``hf_paper_models.data.parallel``: English-like sources, an
  invented head-final target language, 5-80 words) or any ``datasets`` translation data. One BPE
  vocabulary shared by both languages (§5.1; byte-level BPE trained on both sides,
  ``get_tokenizer(kind, corpus="parallel")``); sources and targets end with the end-of-sentence token.
- **Batches by length.** "Sentence pairs were batched together by approximate sequence length"
  (§5.1): with ``max_tokens_per_batch`` the pairs are sorted by length and packed into batches of
  about that many source + target tokens; the order of the batches is shuffled each epoch.
- **Objective.** Cross-entropy with label smoothing ε_ls = 0.1 (§5.4; ``config.label_smoothing``) on
  the training batches; evaluation reports the plain cross-entropy and its perplexity.
- **Optimiser and schedule.** Adam with β1 = 0.9, β2 = 0.98, ε = 10^-9 and
  lrate = d_model^-0.5 · min(step^-0.5, step · warmup_steps^-1.5) (§5.3) with ``paper_schedule``:
  transformers' inverse-square-root schedule with the peak d_model^-0.5 · warmup^-0.5 (× ``lr_scale``).
- **Checkpoint averaging.** ``average_last_checkpoints`` N > 1 averages the last N checkpoints into
  ``output_dir/averaged`` (§6.1: the base models average the last 5).
- **Evaluation.** Beam search with beam 4 and length penalty α = 0.6, maximum output length
  input + 50 (§6.1), then sacrebleu BLEU on the test split, overall and by source length
  (``output_dir/bleu.json``; TensorBoard ``test_bleu``).

RNNsearch and RNNencdec (Bahdanau et al. 2015; presets ``rnnsearch-30/-50``, ``rnnencdec-30/-50``,
``training/configs/rnnsearch_tiny.yaml`` and ``rnnencdec_tiny.yaml``) use the same loop with the paper's
own choices (§4.2, Appendix B.2): training pairs of up to ``max_train_sentence_length`` words (30 or 50,
from the preset; validation and test pairs are not cut), plain negative log-likelihood (no label
smoothing), the gradient norm clipped at 1 and minibatches of 80 pairs; the paper's Adadelta (ρ = 0.95,
ε = 10^-6) is ``--optimizer adadelta`` (the tiny configs use Adam, and say why).

Runs resume from the latest checkpoint in ``output_dir`` (``--resume_from_checkpoint no`` to start
afresh); the trained model and tokenizer land in ``output_dir/final``. The loop is
``hf_paper_models.training_utils.train_loop`` (progress bar, TensorBoard, accelerate).
"""

from __future__ import annotations

import json
import math
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from accelerate import Accelerator
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm
from transformers import (
    AutoModelForSeq2SeqLM,
    AutoTokenizer,
    DataCollatorForSeq2Seq,
    PreTrainedConfig,
    PreTrainedTokenizerBase,
)

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hf_paper_models import PRESETS, preset
from hf_paper_models.averaging import average_checkpoints
from hf_paper_models.evaluation.bleu import DEFAULT_EDGES, bleu_report
from hf_paper_models.models.transformer import label_smoothed_cross_entropy, learning_rate_schedule
from hf_paper_models.training_utils import (
    PresetArguments,
    TrainingLoopArguments,
    build_optimizer,
    build_scheduler,
    flat_config,
    list_checkpoints,
    load_text_dataset,
    make_accelerator,
    parse_args,
    save_final,
    train_loop,
)

SPLITS = ("train", "validation", "test")


@dataclass
class ModelArguments(PresetArguments):
    OVERRIDE_FIELDS = (*PresetArguments.OVERRIDE_FIELDS, "dropout")

    preset: str = field(
        default="transformer-base", metadata={"help": f"A sequence-to-sequence preset: {', '.join(PRESETS)}."}
    )
    dropout: float | None = None
    model_overrides: dict | str | None = field(
        default=None,
        metadata={"help": 'Any other config fields, as a mapping (YAML) or JSON ({"decoder_layers": 2}).'},
    )
    tokenizer_kind: Literal["byte_bpe", "unigram"] = field(
        default="byte_bpe",
        metadata={"help": "Shared subword vocabulary of both languages (byte-level BPE, or Unigram)."},
    )
    vocab_size: int = field(
        default=4096, metadata={"help": "Tokenizer vocabulary to train (an upper bound)."}
    )
    tokenizer_path: str | None = field(default=None, metadata={"help": "Load a saved tokenizer instead."})
    tokenizer_cache_dir: str | None = field(
        default=None, metadata={"help": "Reuse trained tokenizers across runs."}
    )

    def __post_init__(self) -> None:
        self.check_preset(AutoModelForSeq2SeqLM, "is not a sequence-to-sequence model")



@dataclass
class DataArguments:
    dataset: str = field(
        default="embedded",
        metadata={"help": "'embedded' (the built-in parallel corpus), a datasets name, a builder or a file."},
    )
    dataset_config: str | None = None
    data_files: list[str] | None = field(default=None, metadata={"help": "Files for a builder dataset."})
    source_column: str = "source"
    target_column: str = "target"
    translation_column: str | None = field(
        default=None,
        metadata={"help": "A column of {lang: text} dicts (WMT style); then source/target_lang."},
    )
    source_lang: str = "src"
    target_lang: str = "tgt"
    validation_split_percentage: int = 5
    max_train_pairs: int | None = field(
        default=None, metadata={"help": "Use only the first N training pairs."}
    )
    max_eval_pairs: int | None = field(default=500, metadata={"help": "Validation pairs for the eval loss."})
    max_test_pairs: int | None = field(default=500, metadata={"help": "Test pairs translated for BLEU."})
    max_source_length: int = field(default=128, metadata={"help": "Longer training pairs are skipped."})
    max_target_length: int = field(default=128, metadata={"help": "Longer training pairs are skipped."})
    max_tokens_per_batch: int | None = field(
        default=None,
        metadata={"help": "Batch by length (§5.1): about this many source+target tokens per batch; "
                  "None: per_device_train_batch_size pairs."},
    )  # fmt: skip

    def __post_init__(self) -> None:
        for name in ("max_train_pairs", "max_eval_pairs", "max_test_pairs", "max_tokens_per_batch"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"DataArguments: `{name}` must be >= 1 or None, got {value}.")
        for name in ("max_source_length", "max_target_length"):
            if getattr(self, name) < 2:
                raise ValueError(f"DataArguments: `{name}` must be >= 2, got {getattr(self, name)}.")


@dataclass
class TranslationArguments:
    label_smoothing: float | None = field(
        default=None,
        metadata={"help": "ε_ls on the training loss; None: the config's (0.1 for the Transformer)."},
    )
    paper_schedule: bool = field(
        default=False,
        metadata={"help": "§5.3: lrate = lr_scale · d_model^-0.5 · min(step^-0.5, step · warmup^-1.5); "
                  "replaces learning_rate and lr_scheduler_type."},
    )  # fmt: skip
    lr_scale: float = field(default=1.0, metadata={"help": "Factor on the paper's learning rate."})
    optimizer: Literal["adamw", "adadelta"] = field(
        default="adamw",
        metadata={"help": "adamw (adam_* and weight_decay), or adadelta with adadelta_rho/adadelta_epsilon "
                  "and learning_rate (RNNsearch, Appendix B.2: ρ = 0.95, ε = 1e-6)."},
    )  # fmt: skip
    adadelta_rho: float = 0.95
    adadelta_epsilon: float = 1e-6
    average_last_checkpoints: int = field(
        default=0,
        metadata={"help": "Average the last N checkpoints into output_dir/averaged (§6.1); 0/1: off."},
    )
    num_beams: int = field(default=4, metadata={"help": "Beam size for the test translations (§6.1: 4)."})
    length_penalty: float = field(default=0.6, metadata={"help": "α of the length penalty (§6.1: 0.6)."})
    max_new_tokens: int | None = field(
        default=None,
        metadata={"help": "Output length limit; None: the model's default (input + 50 for the Transformer)."},
    )
    generation_batch_size: int = 32
    bleu_edges: list[int] = field(
        default_factory=lambda: list(DEFAULT_EDGES), metadata={"help": "Source-length bucket edges for BLEU."}
    )
    skip_bleu: bool = field(default=False, metadata={"help": "Train only; no test translation."})

    def __post_init__(self) -> None:
        if self.label_smoothing is not None and not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(
                f"TranslationArguments: `label_smoothing` must be in [0, 1), got {self.label_smoothing}."
            )
        for name in ("num_beams", "generation_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"TranslationArguments: `{name}` must be >= 1, got {getattr(self, name)}.")
        if self.average_last_checkpoints < 0:
            raise ValueError("TranslationArguments: `average_last_checkpoints` must be >= 0.")
        if self.lr_scale <= 0:
            raise ValueError(f"TranslationArguments: `lr_scale` must be > 0, got {self.lr_scale}.")
        if self.optimizer == "adadelta" and self.paper_schedule:
            raise ValueError("TranslationArguments: `paper_schedule` is the Transformer's Adam schedule; "
                             "it does not combine with optimizer=adadelta.")  # fmt: skip


# ----------------------------------------------------------------------------------------------
# Config and tokenizer
# ----------------------------------------------------------------------------------------------


def build_config(model_args: ModelArguments, **extra: Any) -> PreTrainedConfig:
    """The preset's config with the recipe's overrides; raises ValueError for an impossible one."""
    return preset(model_args.preset, **{**model_args.config_overrides(), **extra})


def load_tokenizer(model_args: ModelArguments, output_dir: str, max_length: int) -> PreTrainedTokenizerBase:
    """The tokenizer saved in ``output_dir/tokenizer`` by an earlier run, else ``tokenizer_path``, else one
    vocabulary trained on both sides of the embedded parallel corpus (§5.1's shared source-target BPE)."""
    saved = Path(output_dir) / "tokenizer"
    if saved.is_dir():
        return AutoTokenizer.from_pretrained(saved)
    if model_args.tokenizer_path:
        tokenizer = AutoTokenizer.from_pretrained(model_args.tokenizer_path)
    else:
        from hf_paper_models.tokenizers import get_tokenizer

        tokenizer = get_tokenizer(
            model_args.tokenizer_kind,
            vocab_size=model_args.vocab_size,
            cache_dir=model_args.tokenizer_cache_dir,
            corpus="parallel",
            model_max_length=max_length,
        )
    if tokenizer.eos_token_id is None or tokenizer.pad_token_id is None:
        raise ValueError("A translation tokenizer needs an end-of-sentence and a padding token.")
    saved.parent.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(saved)
    return tokenizer


def special_ids(tokenizer: PreTrainedTokenizerBase) -> dict[str, int]:
    """Model ids from the tokenizer. The decoder starts from BOS when the vocabulary has one, else from
    padding (T5's convention); a byte-level BPE's single ``<|endoftext|>`` serves as BOS, EOS and padding,
    as fairseq starts its decoder from EOS."""
    bos = tokenizer.bos_token_id
    return dict(
        vocab_size=len(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=bos,
        decoder_start_token_id=bos if bos is not None else tokenizer.pad_token_id,
    )


# ----------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------


def load_pairs(data_args: DataArguments, seed: int) -> dict[str, Any]:
    """``{split: Dataset}`` with ``source`` and ``target`` text columns for train, validation and test."""

    def embedded(split: str) -> Any:
        from hf_paper_models.data import parallel_dataset

        limits = {"train": data_args.max_train_pairs, "validation": data_args.max_eval_pairs,
                  "test": data_args.max_test_pairs}  # fmt: skip
        return parallel_dataset(split, num_pairs=limits[split]).select_columns(["source", "target"])

    def load(splits: tuple[str, ...]) -> dict[str, Any]:
        return load_text_dataset(
            data_args.dataset,
            config_name=data_args.dataset_config,
            data_files=data_args.data_files,
            default=embedded,
            validation_split_percentage=data_args.validation_split_percentage,
            seed=seed,
            splits=splits,
        )

    raw = load(("train", "validation"))
    try:
        raw["test"] = load(("train", "test"))["test"]
    except ValueError as error:  # a single file: hold out a test share of the training pairs too
        if "test" not in str(error):
            raise
        parts = raw["train"].train_test_split(
            test_size=data_args.validation_split_percentage / 100, seed=seed
        )
        raw["train"], raw["test"] = parts["train"], parts["test"]
    limits = {"train": data_args.max_train_pairs, "validation": data_args.max_eval_pairs,
              "test": data_args.max_test_pairs}  # fmt: skip
    pairs = {}
    for split, dataset in raw.items():
        if limits[split] is not None:
            dataset = dataset.select(range(min(limits[split], len(dataset))))
        if data_args.translation_column is not None:
            column, src, tgt = data_args.translation_column, data_args.source_lang, data_args.target_lang
            if column not in dataset.column_names:
                raise ValueError(
                    f"The {split} split has no {column!r} column (columns: {dataset.column_names})."
                )
            dataset = dataset.map(
                _split_translation, batched=True, fn_kwargs={"column": column, "source": src, "target": tgt},
                remove_columns=dataset.column_names, desc=f"columns {split}",
            )  # fmt: skip
        else:
            for column in (data_args.source_column, data_args.target_column):
                if column not in dataset.column_names:
                    raise ValueError(
                        f"The {split} split has no {column!r} column (columns: {dataset.column_names})."
                    )
            dataset = dataset.rename_columns(
                {
                    c: n
                    for c, n in ((data_args.source_column, "source"), (data_args.target_column, "target"))
                    if c != n
                }
            ).select_columns(["source", "target"])
        pairs[split] = dataset
    return pairs


def _split_translation(batch: dict[str, list], column: str, source: str, target: str) -> dict[str, list[str]]:
    """WMT-style ``{lang: text}`` rows -> ``source`` and ``target`` columns."""
    return {"source": [t[source] for t in batch[column]], "target": [t[target] for t in batch[column]]}


def within_sentence_length(dataset: Any, max_words: int | None) -> Any:
    """The pairs whose source and target have at most ``max_words`` words (RNNsearch-30/-50 train on
    "sentences of length up to 30 [50] words", §4.2); all pairs when ``max_words`` is None."""
    if max_words is None:
        return dataset

    def short(batch: dict[str, list[str]]) -> list[bool]:
        pairs = zip(batch["source"], batch["target"])
        return [max(len(s.split()), len(t.split())) <= max_words for s, t in pairs]

    return dataset.filter(short, batched=True, desc=f"sentences of <= {max_words} words")


def tokenize_pairs(dataset: Any, tokenizer: PreTrainedTokenizerBase, split: str) -> Any:
    """``input_ids`` = source + EOS, ``labels`` = target + EOS (the decoder inputs are the labels shifted right)."""
    eos = tokenizer.eos_token_id

    def tokenize(batch: dict[str, list[str]]) -> dict[str, list[list[int]]]:
        source = tokenizer(batch["source"], add_special_tokens=False, verbose=False)["input_ids"]
        target = tokenizer(batch["target"], add_special_tokens=False, verbose=False)["input_ids"]
        return {"input_ids": [s + [eos] for s in source], "labels": [t + [eos] for t in target]}

    return dataset.map(tokenize, batched=True, remove_columns=dataset.column_names, desc=f"tokenize {split}")


def length_batches(
    source_lengths: Sequence[int], target_lengths: Sequence[int], max_tokens: int
) -> list[list[int]]:
    """Pack pairs sorted by length into batches whose padded source + target size stays within
    ``max_tokens`` (§5.1: "batched together by approximate sequence length"). Deterministic."""
    order = sorted(range(len(source_lengths)), key=lambda i: (source_lengths[i], target_lengths[i], i))
    batches: list[list[int]] = []
    current: list[int] = []
    longest_source = longest_target = 0
    for i in order:
        s, t = max(longest_source, source_lengths[i]), max(longest_target, target_lengths[i])
        if current and (len(current) + 1) * (s + t) > max_tokens:
            batches.append(current)
            current, s, t = [], source_lengths[i], target_lengths[i]
        current.append(i)
        longest_source, longest_target = s, t
    if current:
        batches.append(current)
    return batches


class BatchDataset(Dataset):
    """Rows that are whole batches (lists of examples), for a loader with ``batch_size=1``."""

    def __init__(self, dataset: Any, batches: list[list[int]]):
        self.dataset, self.batches = dataset, batches

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, index: int) -> list[dict[str, list[int]]]:
        return [self.dataset[i] for i in self.batches[index]]


class _Unwrap:
    """Collate a loader row that is already a batch."""

    def __init__(self, collator: DataCollatorForSeq2Seq):
        self.collator = collator

    def __call__(self, rows: list[list[dict[str, list[int]]]]) -> dict[str, torch.Tensor]:
        return self.collator(rows[0])


def make_loaders(
    data: dict[str, Any],
    collator: DataCollatorForSeq2Seq,
    loop_args: TrainingLoopArguments,
    data_args: DataArguments,
) -> tuple[DataLoader, DataLoader]:
    train = data["train"]
    if data_args.max_tokens_per_batch is not None:
        batches = length_batches(
            [len(x) for x in train["input_ids"]],
            [len(x) for x in train["labels"]],
            data_args.max_tokens_per_batch,
        )
        train_loader = DataLoader(
            BatchDataset(train, batches), batch_size=1, shuffle=True, drop_last=False,
            collate_fn=_Unwrap(collator), num_workers=loop_args.dataloader_num_workers,
        )  # fmt: skip
    else:
        train_loader = DataLoader(
            train, batch_size=loop_args.per_device_train_batch_size, shuffle=True, drop_last=True,
            collate_fn=collator, num_workers=loop_args.dataloader_num_workers,
        )  # fmt: skip
    eval_loader = DataLoader(
        data["validation"], batch_size=loop_args.per_device_eval_batch_size, collate_fn=collator
    )
    return train_loader, eval_loader


# ----------------------------------------------------------------------------------------------
# Loss, translation, BLEU
# ----------------------------------------------------------------------------------------------


def make_loss_fn(label_smoothing: float):
    """Label-smoothed cross-entropy while training (§5.4), the plain one in evaluation (so that the
    logged eval loss and perplexity are the model's, as the paper reports perplexity)."""

    def loss_fn(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        logits = model(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            decoder_input_ids=batch["decoder_input_ids"],
            use_cache=False,
        ).logits
        return label_smoothed_cross_entropy(
            logits, batch["labels"], label_smoothing if model.training else 0.0
        )

    return loss_fn


def real_tokens(batch: dict[str, torch.Tensor]) -> int:
    return int(batch["attention_mask"].sum()) + int((batch["labels"] != -100).sum())


@torch.no_grad()
def translate(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    sources: Sequence[str],
    *,
    num_beams: int = 4,
    length_penalty: float = 0.6,
    max_new_tokens: int | None = None,
    batch_size: int = 32,
    max_source_tokens: int | None = None,
    progress: bool = True,
) -> list[str]:
    """Beam-search translations of ``sources`` (sorted by length into batches, returned in order).
    Sources longer than ``max_source_tokens`` (EOS included) are cut to that length."""
    was_training = model.training
    model.eval()
    eos, device = tokenizer.eos_token_id, next(model.parameters()).device
    encoded = tokenizer(list(sources), add_special_tokens=False, verbose=False)["input_ids"]
    limit = max_source_tokens or max(len(ids) + 1 for ids in encoded)
    encoded = [ids[: limit - 1] + [eos] for ids in encoded]
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
    outputs: list[str] = [""] * len(encoded)
    kwargs: dict[str, Any] = dict(num_beams=num_beams, length_penalty=length_penalty, do_sample=False)
    if max_new_tokens is not None:
        kwargs["max_new_tokens"] = max_new_tokens
    for start in tqdm(range(0, len(order), batch_size), desc="translate", disable=not progress):
        chunk = order[start : start + batch_size]
        batch = tokenizer.pad({"input_ids": [encoded[i] for i in chunk]}, return_tensors="pt")
        generated = model.generate(
            input_ids=batch["input_ids"].to(device),
            attention_mask=batch["attention_mask"].to(device),
            **kwargs,
        )
        for i, text in zip(chunk, tokenizer.batch_decode(generated, skip_special_tokens=True)):
            outputs[i] = text.strip()
    model.train(was_training)
    return outputs


def evaluate_bleu(
    model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, test: Any, args: TranslationArguments
) -> dict[str, Any]:
    sources, references = list(test["source"]), list(test["target"])
    start = time.perf_counter()
    positions = model.config.max_position_embeddings
    hypotheses = translate(
        model, tokenizer, sources, num_beams=args.num_beams, length_penalty=args.length_penalty,
        max_new_tokens=args.max_new_tokens, batch_size=args.generation_batch_size, max_source_tokens=positions,
    )  # fmt: skip
    report = bleu_report(sources, hypotheses, references, edges=args.bleu_edges)
    report["decode_seconds"] = time.perf_counter() - start
    lengths = tokenizer(sources, add_special_tokens=False, verbose=False)["input_ids"]
    report["truncated_sources"] = sum(len(ids) + 1 > positions for ids in lengths)
    report["examples"] = [
        {"source": s, "reference": r, "hypothesis": h}
        for s, r, h in list(zip(sources, references, hypotheses))[:5]
    ]
    return report


def load_averaged(model: torch.nn.Module, folder: Path) -> None:
    """Load ``folder/model.safetensors`` (an average of checkpoints) into ``model``; tied copies and the
    fixed position tables may be absent from the file."""
    from safetensors.torch import load_file

    state = load_file(str(folder / "model.safetensors"))
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = set(getattr(model, "all_tied_weights_keys", {}) or {})
    missing = [k for k in missing if k not in tied]
    if missing or unexpected:
        raise ValueError(
            f"Averaged weights do not fit the model: missing {missing[:5]}, unexpected {unexpected[:5]}."
        )


# ----------------------------------------------------------------------------------------------
# Main
# ----------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> dict[str, Any]:
    loop_args, model_args, data_args, args = parse_args(
        [TrainingLoopArguments, ModelArguments, DataArguments, TranslationArguments], argv
    )
    config = build_config(model_args)  # fail fast on a bad preset/size, before any work
    if args.average_last_checkpoints > loop_args.save_total_limit:
        raise ValueError(
            f"average_last_checkpoints={args.average_last_checkpoints} needs save_total_limit >= that many "
            f"checkpoints (it is {loop_args.save_total_limit})."
        )
    if args.paper_schedule and loop_args.warmup_steps < 1:
        raise ValueError("paper_schedule needs warmup_steps >= 1 (§5.3 uses 4000).")
    if max(data_args.max_source_length, data_args.max_target_length) > config.max_position_embeddings:
        raise ValueError(
            f"max_source_length/max_target_length exceed the model's {config.max_position_embeddings} positions."
        )

    accelerator: Accelerator = make_accelerator(loop_args)
    with accelerator.main_process_first():
        tokenizer = load_tokenizer(model_args, loop_args.output_dir, config.max_position_embeddings)
        pairs = load_pairs(data_args, loop_args.seed)
        max_words = getattr(config, "max_train_sentence_length", None)  # RNNsearch-30/-50 (§4.2)
        pairs["train"] = within_sentence_length(pairs["train"], max_words)
        data = {split: tokenize_pairs(pairs[split], tokenizer, split) for split in ("train", "validation")}
    limits = (data_args.max_source_length, data_args.max_target_length)
    for split in ("train", "validation"):  # pairs longer than the limits are skipped (the test set is not)
        data[split] = data[split].filter(
            lambda b: [len(s) <= limits[0] and len(t) <= limits[1] for s, t in zip(b["input_ids"], b["labels"])],
            batched=True, desc=f"length filter {split}",
        )  # fmt: skip
        if len(data[split]) == 0:
            raise ValueError(f"No {split} pair fits max_source_length/max_target_length.")
    config = build_config(model_args, **special_ids(tokenizer))
    model = AutoModelForSeq2SeqLM.from_config(config)
    label_smoothing = args.label_smoothing
    if label_smoothing is None:
        label_smoothing = float(getattr(config, "label_smoothing", 0.0) or 0.0)
    accelerator.print(
        f"{model_args.preset} ({config.model_type}): {model.num_parameters() / 1e6:.2f}M parameters, "
        f"shared vocabulary {len(tokenizer)}, {len(data['train'])} train / {len(data['validation'])} validation "
        f"/ {len(pairs['test'])} test pairs, label smoothing {label_smoothing}, "
        f"{accelerator.num_processes} process(es)."
    )

    collator = DataCollatorForSeq2Seq(tokenizer, model=model, label_pad_token_id=-100, padding=True)
    train_loader, eval_loader = make_loaders(data, collator, loop_args, data_args)
    if args.optimizer == "adadelta":
        optimizer = torch.optim.Adadelta(
            model.parameters(), lr=loop_args.learning_rate, rho=args.adadelta_rho, eps=args.adadelta_epsilon,
            weight_decay=loop_args.weight_decay,
        )  # fmt: skip
    else:
        optimizer = build_optimizer(model, loop_args)
    if args.paper_schedule:
        scheduler = learning_rate_schedule(
            optimizer, d_model=config.hidden_size, warmup_steps=loop_args.warmup_steps, scale=args.lr_scale
        )
        loop_args.learning_rate = optimizer.param_groups[0]["lr"]  # the peak, for the logged hyper-parameters
    else:
        scheduler = build_scheduler(optimizer, loop_args)
    result = train_loop(
        accelerator,
        model,
        train_loader,
        make_loss_fn(label_smoothing),
        loop_args,
        eval_loader,
        optimizer=optimizer,
        scheduler=scheduler,
        tokens_per_batch=real_tokens,
        tracker_config=flat_config(loop_args, model_args, data_args, args),
    )
    final = save_final(accelerator, result.model, tokenizer, loop_args.output_dir)
    summary: dict[str, Any] = {
        "preset": model_args.preset,
        "model_type": config.model_type,
        "parameters": model.num_parameters(),
        "step": result.step,
        "train_seconds": result.train_seconds,
        "train_clock": loop_args.train_clock,
        "train_loss": result.train_loss,
        "eval_loss": result.eval_loss,
        "eval_perplexity": math.exp(min(result.eval_loss, 50.0)) if result.eval_loss is not None else None,
        "label_smoothing": label_smoothing,
        "num_beams": args.num_beams,
        "length_penalty": args.length_penalty,
        "history": result.history,
    }
    unwrapped = accelerator.unwrap_model(result.model)
    if not args.skip_bleu and accelerator.is_main_process:
        summary["final"] = evaluate_bleu(unwrapped, tokenizer, pairs["test"], args)
        accelerator.print(f"test BLEU (last weights): {summary['final']['bleu']:.2f}")
    checkpoints = list_checkpoints(loop_args.output_dir)[-args.average_last_checkpoints :]
    if args.average_last_checkpoints > 1 and len(checkpoints) > 1:
        if accelerator.is_main_process:
            average_checkpoints(checkpoints, Path(loop_args.output_dir) / ".averaged-weights")
        accelerator.wait_for_everyone()
        load_averaged(unwrapped, Path(loop_args.output_dir) / ".averaged-weights")
        save_final(accelerator, result.model, tokenizer, loop_args.output_dir, subdir="averaged")
        if accelerator.is_main_process:  # the averaged model now lives in output_dir/averaged
            shutil.rmtree(Path(loop_args.output_dir) / ".averaged-weights", ignore_errors=True)
        summary["averaged_checkpoints"] = [p.name for p in checkpoints]
        if not args.skip_bleu and accelerator.is_main_process:
            summary["averaged"] = evaluate_bleu(unwrapped, tokenizer, pairs["test"], args)
            accelerator.print(
                f"test BLEU (average of {len(checkpoints)} checkpoints): {summary['averaged']['bleu']:.2f}"
            )
    if accelerator.is_main_process:
        if loop_args.report_to != "none":
            scores = {f"test_bleu_{k}": summary[k]["bleu"] for k in ("final", "averaged") if k in summary}
            if scores:
                accelerator.log(scores, step=result.step)
        (Path(loop_args.output_dir) / "bleu.json").write_text(json.dumps(summary, indent=2) + "\n")
    accelerator.wait_for_everyone()
    accelerator.end_training()  # closes TensorBoard and the process group: last of all
    accelerator.print(f"Done at step {result.step}. Saved {final}.")
    return summary


if __name__ == "__main__":
    main()
