"""BERT fine-tuning for sequence classification (ZOO.md §3; Devlin et al. 2019, §4.1 and Appendix A.3):
a classification layer on the pooled ``[CLS]`` vector, all parameters fine-tuned end to end.

    python training/finetune_bert.py --config training/configs/bert_finetune_tiny.yaml
    python training/finetune_bert.py --config training/configs/bert_finetune_tiny.yaml \\
        --model_path runs/bert_tiny/final                 # start from a pre-trained model (the paper's way)
    python training/finetune_bert.py --config training/configs/bert_finetune_tiny.yaml --model_path none \\
        --preset bert-base --hidden_size 128 ...          # the same encoder from random weights, for comparison
    python training/finetune_bert.py --config training/configs/bert_finetune_tiny.yaml --dataset glue \\
        --dataset_config sst2 --text_column sentence --model_path my_pretrained_bert
    torchrun --nproc_per_node 2 training/finetune_bert.py --config ...   # or accelerate launch --multi_gpu

The embedded task (``--dataset embedded``) is sentence acceptability by word order, built from the
embedded corpus (``hf_paper_models.data.nsp.word_order_task``): label 1 for a sentence as written, 0
for the same words shuffled. Runs resume like every recipe; the classifier and tokenizer land in
``output_dir/final`` and the held-out accuracy in ``output_dir/eval_results.json``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from torch.utils.data import DataLoader
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    DataCollatorWithPadding,
    PreTrainedTokenizerBase,
)

from hf_paper_models import preset
from hf_paper_models.training_utils import (
    PresetArguments,
    TrainingLoopArguments,
    flat_config,
    load_text_dataset,
    make_accelerator,
    parse_args,
    save_final,
    train_loop,
)


@dataclass
class ModelArguments(PresetArguments):
    model_path: str | None = field(
        default=None,
        metadata={"help": "A pre-trained BERT folder (e.g. pretrain_bert.py's output_dir/final); 'none': "
                          "random weights from `preset`."},
    )  # fmt: skip
    preset: str = field(default="bert-base", metadata={"help": "Used without model_path."})
    model_overrides: dict | str | None = field(
        default=None, metadata={"help": 'Other config fields (JSON on the CLI), e.g. {"classifier_dropout": 0.2}.'}
    )
    vocab_size: int = field(default=4096, metadata={"help": "WordPiece vocabulary without model_path."})
    tokenizer_cache_dir: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.model_path, str) and self.model_path.lower() in ("", "none"):
            self.model_path = None
        if self.model_path is not None and not Path(self.model_path).is_dir():
            raise ValueError(f"model_path={self.model_path!r} is not a folder with a saved model.")
        self.check_preset(AutoModelForSequenceClassification, "has no sequence-classification head")


@dataclass
class DataArguments:
    dataset: str = field(
        default="embedded",
        metadata={"help": "'embedded' (word-order task), a datasets name, a builder (json/csv) or a file."},
    )
    dataset_config: str | None = None
    data_files: list[str] | None = None
    text_column: str = "text"
    text_pair_column: str | None = field(default=None, metadata={"help": "Second segment (B) for pair tasks."})
    label_column: str = "label"
    validation_split_percentage: int = 5
    max_seq_length: int = 64
    max_documents: int | None = field(
        default=None, metadata={"help": "Embedded task: documents per split to draw sentences from."}
    )

    def __post_init__(self) -> None:
        if self.max_seq_length < 4:
            raise ValueError(f"DataArguments: `max_seq_length` must be >= 4, got {self.max_seq_length}.")
        if self.max_documents is not None and self.max_documents < 1:
            raise ValueError(f"DataArguments: `max_documents` must be >= 1, got {self.max_documents}.")


def word_order_splits(data_args: DataArguments, seed: int) -> dict[str, Any]:
    """The embedded word-order task: train sentences from the corpus's train documents, validation from
    its validation documents (disjoint by construction)."""
    import datasets

    from hf_paper_models.data import DEFAULT_NUM_DOCUMENTS, lm_corpus
    from hf_paper_models.data.nsp import word_order_task

    def split(name: str, offset: int) -> datasets.Dataset:
        count = DEFAULT_NUM_DOCUMENTS[name]
        documents = lm_corpus(min(count, data_args.max_documents or count), split=name)
        return datasets.Dataset.from_dict(word_order_task(documents, seed=seed + offset))

    return {"train": split("train", 0), "validation": split("validation", 1)}


def load_model_and_tokenizer(model_args: ModelArguments, data_args: DataArguments, num_labels: int,
                             output_dir: str) -> tuple[torch.nn.Module, PreTrainedTokenizerBase]:  # fmt: skip
    """The pre-trained encoder with a new classifier, or the preset from random weights (and a fresh
    WordPiece tokenizer, kept in ``output_dir/tokenizer`` for resumed runs)."""
    if model_args.model_path is not None:
        tokenizer = AutoTokenizer.from_pretrained(model_args.model_path)
        # the sizes come from the checkpoint; only `model_overrides` (e.g. classifier_dropout) apply
        model = AutoModelForSequenceClassification.from_pretrained(
            model_args.model_path, num_labels=num_labels, **(model_args.model_overrides or {})
        )
        return model, tokenizer
    saved = Path(output_dir) / "tokenizer"
    if saved.is_dir():
        tokenizer = AutoTokenizer.from_pretrained(saved)
    else:
        from hf_paper_models.tokenizers import get_tokenizer

        tokenizer = get_tokenizer("wordpiece", vocab_size=model_args.vocab_size,
                                  cache_dir=model_args.tokenizer_cache_dir)  # fmt: skip
        tokenizer.save_pretrained(saved)
    config = preset(
        model_args.preset,
        **model_args.config_overrides(),
        vocab_size=len(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        num_labels=num_labels,
    )
    return AutoModelForSequenceClassification.from_config(config), tokenizer


def classification_loss(model: torch.nn.Module, batch: dict[str, torch.Tensor]):
    out = model(**batch)
    with torch.no_grad():
        accuracy = (out.logits.argmax(-1) == batch["labels"]).float().mean()
    return out.loss, {"accuracy": accuracy}


@torch.no_grad()
def evaluate_accuracy(accelerator: Accelerator, model: torch.nn.Module, dataloader: Any) -> dict[str, float]:
    """Held-out accuracy over every example (prepared model and loader)."""
    was_training = model.training
    model.eval()
    correct, total = [], []
    for batch in dataloader:
        predictions = accelerator.gather_for_metrics(model(**batch).logits.argmax(-1))
        labels = accelerator.gather_for_metrics(batch["labels"])
        correct.append((predictions == labels).sum())
        total.append(labels.numel())
    model.train(was_training)
    accuracy = (torch.stack(correct).sum() / max(sum(total), 1)).item() if total else float("nan")
    return {"eval_accuracy": accuracy, "eval_examples": int(sum(total))}


def main(argv: list[str] | None = None) -> Path:
    loop_args, model_args, data_args = parse_args([TrainingLoopArguments, ModelArguments, DataArguments], argv)
    accelerator: Accelerator = make_accelerator(loop_args)

    with accelerator.main_process_first():
        if data_args.dataset in (None, "", "embedded"):
            raw = word_order_splits(data_args, loop_args.seed)
        else:
            raw = load_text_dataset(
                data_args.dataset,
                config_name=data_args.dataset_config,
                data_files=data_args.data_files,
                validation_split_percentage=data_args.validation_split_percentage,
                seed=loop_args.seed,
            )
        columns = [c for c in (data_args.text_column, data_args.text_pair_column, data_args.label_column) if c]
        for split, dataset in raw.items():
            missing = [c for c in columns if c not in dataset.column_names]
            if missing:
                raise ValueError(f"The {split} split has no column(s) {missing} (columns: {dataset.column_names}).")
        num_labels = len(set(raw["train"][data_args.label_column]))
        model, tokenizer = load_model_and_tokenizer(model_args, data_args, num_labels, loop_args.output_dir)
        if data_args.max_seq_length > model.config.max_position_embeddings:
            raise ValueError(
                f"max_seq_length={data_args.max_seq_length} is larger than the model's "
                f"{model.config.max_position_embeddings} positions."
            )

        def tokenize(batch: dict[str, list]) -> dict[str, list]:
            pair = batch[data_args.text_pair_column] if data_args.text_pair_column else None
            encoded = tokenizer(batch[data_args.text_column], pair, truncation=True,
                                max_length=data_args.max_seq_length)  # fmt: skip
            return {**encoded, "labels": batch[data_args.label_column]}

        data = {
            split: dataset.map(tokenize, batched=True, remove_columns=dataset.column_names, desc=f"tokenize {split}")
            for split, dataset in raw.items()
        }

    accelerator.print(
        f"{type(model).__name__}: {model.num_parameters() / 1e6:.2f}M parameters "
        f"({'pre-trained from ' + model_args.model_path if model_args.model_path else 'random initialisation'}), "
        f"{num_labels} labels, {len(data['train'])} train / {len(data['validation'])} validation examples."
    )
    collator = DataCollatorWithPadding(tokenizer)
    train_loader = DataLoader(
        data["train"],
        batch_size=loop_args.per_device_train_batch_size,
        shuffle=True,
        drop_last=True,
        collate_fn=collator,
        num_workers=loop_args.dataloader_num_workers,
    )
    eval_loader = DataLoader(data["validation"], batch_size=loop_args.per_device_eval_batch_size, collate_fn=collator)
    result = train_loop(
        accelerator,
        model,
        train_loader,
        classification_loss,
        loop_args,
        eval_loader,
        tracker_config=flat_config(loop_args, model_args, data_args),
    )
    metrics = evaluate_accuracy(accelerator, result.model, accelerator.prepare(eval_loader))
    final = save_final(accelerator, result.model, tokenizer, loop_args.output_dir)
    if accelerator.is_main_process:
        report = {"step": result.step, "train_loss": result.train_loss, **metrics, "history": result.history}
        (Path(loop_args.output_dir) / "eval_results.json").write_text(json.dumps(report, indent=2) + "\n")
    accelerator.end_training()
    accelerator.print(f"Done at step {result.step}: held-out accuracy {metrics['eval_accuracy']:.3f}. Saved {final}.")
    return final


if __name__ == "__main__":
    main()
