"""T5 fine-tuning (ZOO.md §3): any task as text in, text out, with the paper's task prefix (§2.4).

    python training/finetune_t5.py --config training/configs/t5_finetune_tiny.yaml \\
        --model_path runs/t5_tiny/final                       # the embedded translation task
    python training/finetune_t5.py --config training/configs/t5_finetune_tiny.yaml \\
        --model_path runs/t5_tiny/final --task cola           # word-order acceptability, CoLA-style
    python training/finetune_t5.py --config training/configs/t5_finetune_tiny.yaml --task custom \\
        --dataset wmt16 --dataset_config ro-en --source_column en --target_column ro \\
        --prefix "translate English to Romanian: "            # a real dataset (a local file works too)
    accelerate launch --cpu --num_processes 2 training/finetune_t5.py --config training/configs/t5_finetune_tiny.yaml

Embedded tasks (no download):

- ``translation``: the parallel corpus (English -> an invented head-final language), as
  "translate English to Target: <sentence>" -> "<translation>"; scored by BLEU (sacrebleu) and exact
  match of the generated translation. ``max_source_words`` keeps the shorter sentences.
- ``cola``: sentences of the held-out corpus, half with their words shuffled (``hf_paper_models.data.
  nsp.word_order_task``), as "cola sentence: <sentence>" -> "acceptable" / "not acceptable", the
  paper's CoLA format (§2.4, Figure 1); scored by accuracy of the generated answer.

Without ``--model_path`` the preset is trained from random weights with a fresh vocabulary (the
baseline that shows what pre-training buys). Runs resume from the latest checkpoint in ``output_dir``;
the model, tokenizer and README land in ``output_dir/final``, the generated predictions' scores in
``output_dir/eval_results.json``.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from accelerate import Accelerator
from torch.utils.data import DataLoader
from transformers import AutoModelForSeq2SeqLM, AutoTokenizer, DataCollatorForSeq2Seq, PreTrainedTokenizerBase

from hf_paper_models import PRESETS, preset
from hf_paper_models.data.span_corruption import COLA_TARGETS, TASK_TEMPLATES, translation_prefix
from hf_paper_models.training_utils import (
    TrainingLoopArguments,
    flat_config,
    load_text_dataset,
    make_accelerator,
    parse_args,
    save_final,
    train_loop,
)

TASKS = ("translation", "cola", "custom")


@dataclass
class ModelArguments:
    model_path: str | None = field(
        default=None,
        metadata={"help": "A pre-trained model folder (e.g. runs/t5_tiny/final); else random init."},
    )
    preset: str = field(
        default="t5-small", metadata={"help": "Preset for a model trained from random weights."}
    )
    hidden_size: int | None = None
    num_hidden_layers: int | None = None
    num_attention_heads: int | None = None
    intermediate_size: int | None = None
    model_overrides: dict | str | None = field(default=None, metadata={"help": "Other config fields (JSON)."})
    vocab_size: int = field(
        default=2048, metadata={"help": "Vocabulary to train when starting from scratch."}
    )
    tokenizer_cache_dir: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.model_overrides, str):
            try:
                self.model_overrides = json.loads(self.model_overrides)
            except json.JSONDecodeError as error:
                raise ValueError(
                    f"model_overrides must be a JSON object, got {self.model_overrides!r}"
                ) from error
        if self.model_path is None and self.preset not in PRESETS:
            raise ValueError(f"Unknown preset {self.preset!r}. Available presets: {', '.join(PRESETS)}.")
        if self.model_path is not None and not Path(self.model_path).is_dir():
            raise ValueError(f"model_path {self.model_path!r} is not a folder with a saved model.")


@dataclass
class DataArguments:
    task: Literal["translation", "cola", "custom"] = field(
        default="translation", metadata={"help": f"One of {TASKS}; 'custom' reads --dataset's columns."}
    )
    dataset: str = field(
        default="embedded", metadata={"help": "'embedded', a datasets name, a builder or a file."}
    )
    dataset_config: str | None = None
    data_files: list[str] | None = None
    source_column: str = "source"
    target_column: str = "target"
    prefix: str | None = field(default=None, metadata={"help": "Task prefix (default: the task's own)."})
    validation_split_percentage: int = 5
    max_source_length: int = 64
    max_target_length: int = 64
    max_source_words: int | None = field(
        default=12, metadata={"help": "translation: keep pairs whose source has at most this many tokens."}
    )
    max_corpus_pairs: int | None = field(
        default=None,
        metadata={"help": "translation: draw from the first N training pairs (default: all 40,000)."},
    )
    max_documents: int | None = field(
        default=None, metadata={"help": "cola: corpus documents to take sentences from (default 2000 / 300)."}
    )
    max_train_examples: int | None = None
    max_eval_examples: int | None = 200
    num_beams: int = field(default=1, metadata={"help": "Beam width of the final evaluation's generate()."})

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"DataArguments: `task` must be one of {TASKS}, got {self.task!r}.")
        if self.task == "custom" and self.dataset in ("", "embedded"):
            raise ValueError("DataArguments: task 'custom' needs --dataset (a datasets name or a file).")
        for name in ("max_source_length", "max_target_length", "num_beams"):
            if getattr(self, name) < 1:
                raise ValueError(f"DataArguments: `{name}` must be >= 1, got {getattr(self, name)}.")

    def task_prefix(self) -> str:
        if self.prefix is not None:
            return self.prefix
        cola = TASK_TEMPLATES["cola"].split("{")[0]  # "cola sentence: "
        return {"translation": translation_prefix("English", "Target"), "cola": cola}.get(self.task, "")


def embedded_task(task: str, split: str, data_args: DataArguments, seed: int) -> Any:
    """``source``/``target`` columns of an embedded task (train from the train data, validation from
    the held-out data)."""
    import datasets

    if task == "translation":
        from hf_paper_models.data import parallel_corpus

        # the validation split of the corpus is held out from training
        pairs = (
            parallel_corpus("train", data_args.max_corpus_pairs)
            if split == "train"
            else parallel_corpus("validation")
        )
        if data_args.max_source_words is not None:
            pairs = [(s, t) for s, t in pairs if len(s.split()) <= data_args.max_source_words]
        return datasets.Dataset.from_dict({"source": [s for s, _ in pairs], "target": [t for _, t in pairs]})
    if task == "cola":
        from hf_paper_models.data import lm_corpus
        from hf_paper_models.data.nsp import word_order_task

        count = data_args.max_documents or (2000 if split == "train" else 300)
        documents = lm_corpus(count, split="train" if split == "train" else "validation")
        examples = word_order_task(documents, seed=seed + (split != "train"))
        return datasets.Dataset.from_dict(
            {"source": examples["text"], "target": [COLA_TARGETS[y] for y in examples["label"]]}
        )
    raise ValueError(f"No embedded data for task {task!r}.")


def build_datasets(data_args: DataArguments, tokenizer: PreTrainedTokenizerBase, seed: int) -> dict[str, Any]:
    """Prefix the sources, tokenize both sides (EOS appended by the tokenizer), truncate."""
    raw = load_text_dataset(
        None if data_args.task != "custom" else data_args.dataset,
        config_name=data_args.dataset_config,
        data_files=data_args.data_files,
        default=lambda split: embedded_task(data_args.task, split, data_args, seed),
        validation_split_percentage=data_args.validation_split_percentage,
        seed=seed,
    )
    prefix = data_args.task_prefix()
    src, tgt = data_args.source_column, data_args.target_column

    def tokenize(batch: dict[str, list[str]]) -> dict[str, list[list[int]]]:
        inputs = tokenizer(
            [prefix + s for s in batch[src]], max_length=data_args.max_source_length, truncation=True
        )
        labels = tokenizer(batch[tgt], max_length=data_args.max_target_length, truncation=True)["input_ids"]
        return {
            "input_ids": inputs["input_ids"],
            "attention_mask": inputs["attention_mask"],
            "labels": labels,
        }

    out = {}
    for split, dataset in raw.items():
        for column in (src, tgt):
            if column not in dataset.column_names:
                raise ValueError(
                    f"The {split} split has no {column!r} column (columns: {dataset.column_names})."
                )
        limit = data_args.max_train_examples if split == "train" else data_args.max_eval_examples
        if limit is not None:
            dataset = dataset.shuffle(seed=seed).select(range(min(limit, len(dataset))))
        texts = {"source": dataset[src], "target": dataset[tgt]}
        dataset = dataset.map(
            tokenize, batched=True, remove_columns=dataset.column_names, desc=f"tokenize {split}"
        )
        out[split], out[f"{split}_texts"] = dataset, texts
    if len(out["train"]) == 0:
        raise ValueError("The training split is empty.")
    return out


def load_model_and_tokenizer(model_args: ModelArguments, output_dir: str) -> tuple[torch.nn.Module, Any]:
    """The pre-trained model and its tokenizer, or the preset from random weights with a fresh vocabulary
    (kept in ``output_dir/tokenizer`` for resumed runs)."""
    if model_args.model_path is not None:
        tokenizer = AutoTokenizer.from_pretrained(model_args.model_path)
        model = AutoModelForSeq2SeqLM.from_pretrained(
            model_args.model_path, **(model_args.model_overrides or {})
        )
        return model, tokenizer
    saved = Path(output_dir) / "tokenizer"
    if saved.is_dir():
        tokenizer = AutoTokenizer.from_pretrained(saved)
    else:
        tokenizer = _pretrain_module().train_t5_tokenizer(
            model_args.vocab_size, cache_dir=model_args.tokenizer_cache_dir
        )
        tokenizer.save_pretrained(saved)
    sizes = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size")
    overrides = {k: getattr(model_args, k) for k in sizes if getattr(model_args, k) is not None}
    config = preset(
        model_args.preset,
        **overrides,
        **(model_args.model_overrides or {}),
        vocab_size=len(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.pad_token_id,
    )
    return AutoModelForSeq2SeqLM.from_config(config), tokenizer


def _pretrain_module():
    """``training/pretrain_t5.py`` (its tokenizer recipe), loaded as a module: scripts are not a package."""
    name = "pretrain_t5"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name("pretrain_t5.py"))
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def seq2seq_loss(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    return model(
        input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]
    ).loss


@torch.no_grad()
def generate_and_score(
    accelerator: Accelerator,
    model: torch.nn.Module,
    tokenizer: Any,
    sources: list[str],
    references: list[str],
    prefix: str,
    *,
    batch_size: int = 32,
    max_new_tokens: int = 64,
    num_beams: int = 1,
) -> dict[str, Any]:
    """Generate for every source (main process) and score against the references: exact match, and
    corpus BLEU (sacrebleu) for texts longer than a word."""
    import sacrebleu

    unwrapped = accelerator.unwrap_model(model)
    unwrapped.eval()
    predictions: list[str] = []
    for start in range(0, len(sources), batch_size):
        chunk = [prefix + s for s in sources[start : start + batch_size]]
        enc = tokenizer(chunk, return_tensors="pt", padding=True, truncation=True, max_length=512).to(
            accelerator.device
        )
        out = unwrapped.generate(**enc, max_new_tokens=max_new_tokens, num_beams=num_beams, do_sample=False)
        predictions += tokenizer.batch_decode(out, skip_special_tokens=True)
    predictions = [p.strip() for p in predictions]
    exact = sum(p == r.strip() for p, r in zip(predictions, references)) / max(len(references), 1)
    bleu = sacrebleu.corpus_bleu(predictions, [references]).score
    return {
        "exact_match": exact,
        "bleu": bleu,
        "examples": [{"source": s, "reference": r, "prediction": p}
                     for s, r, p in list(zip(sources, references, predictions))[:5]],
    }  # fmt: skip


def main(argv: list[str] | None = None) -> Path:
    loop_args, model_args, data_args = parse_args(
        [TrainingLoopArguments, ModelArguments, DataArguments], argv
    )
    accelerator: Accelerator = make_accelerator(loop_args)
    with accelerator.main_process_first():
        model, tokenizer = load_model_and_tokenizer(model_args, loop_args.output_dir)
        data = build_datasets(data_args, tokenizer, loop_args.seed)
    accelerator.print(
        f"{'pre-trained ' + model_args.model_path if model_args.model_path else model_args.preset + ' from scratch'}"
        f" ({model.num_parameters() / 1e6:.2f}M parameters), task {data_args.task!r} with prefix "
        f"{data_args.task_prefix()!r}: {len(data['train'])} train / {len(data['validation'])} validation examples."
    )
    collator = DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=-100)
    train_loader = DataLoader(
        data["train"], batch_size=loop_args.per_device_train_batch_size, shuffle=True, drop_last=True,
        collate_fn=collator, num_workers=loop_args.dataloader_num_workers,
    )  # fmt: skip
    eval_loader = DataLoader(
        data["validation"], batch_size=loop_args.per_device_eval_batch_size, collate_fn=collator
    )
    result = train_loop(
        accelerator, model, train_loader, seq2seq_loss, loop_args, eval_loader,
        tracker_config=flat_config(loop_args, model_args, data_args),
    )  # fmt: skip
    final = save_final(accelerator, result.model, tokenizer, loop_args.output_dir)
    if accelerator.is_main_process:
        texts = data["validation_texts"]
        scores = generate_and_score(
            accelerator, result.model, tokenizer, texts["source"], texts["target"], data_args.task_prefix(),
            batch_size=loop_args.per_device_eval_batch_size, max_new_tokens=data_args.max_target_length,
            num_beams=data_args.num_beams,
        )  # fmt: skip
        results = {"step": result.step, "train_loss": result.train_loss, "eval_loss": result.eval_loss,
                   "task": data_args.task, "num_eval_examples": len(texts["source"]), **scores,
                   "history": result.history}  # fmt: skip
        (Path(loop_args.output_dir) / "eval_results.json").write_text(json.dumps(results, indent=2) + "\n")
        accelerator.print(
            f"Done at step {result.step}: eval loss {result.eval_loss}, exact match {scores['exact_match']:.3f}, "
            f"BLEU {scores['bleu']:.1f}. Saved {final}."
        )
    accelerator.end_training()
    return final


if __name__ == "__main__":
    main()
