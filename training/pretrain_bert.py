"""BERT pre-training (ZOO.md §3): the masked LM and next sentence prediction of Devlin et al. (2019),
§3.1 and Appendix A.1/A.2, summed into one loss.

    python training/pretrain_bert.py --config training/configs/bert_tiny.yaml
    python training/pretrain_bert.py --config training/configs/bert_tiny.yaml --max_steps 20 --output_dir runs/x
    python training/pretrain_bert.py --config training/configs/bert_tiny.yaml --dataset wikitext \\
        --dataset_config wikitext-103-raw-v1
    python training/pretrain_bert.py --config training/configs/bert_tiny.yaml --dataset my_documents.jsonl
    torchrun --nproc_per_node 2 training/pretrain_bert.py --config training/configs/bert_tiny.yaml   # DDP (CPU: gloo)
    accelerate launch --multi_gpu --num_processes 2 training/pretrain_bert.py --config training/configs/bert_tiny.yaml

Each row of the dataset is a document. Its sentences become NSP pairs (50% IsNext, 50% a random
span of another document; ``hf_paper_models.data.nsp.build_nsp_pairs``) whose segments are runs of
whole sentences filling ``max_seq_length`` as in the released code (``--nsp_segments sentences`` for
single sentences), encoded as ``[CLS] A [SEP] B [SEP]`` with segment ids, and transformers' ``DataCollatorForLanguageModeling``
masks 15% of the WordPiece positions (80% ``[MASK]``, 10% random, 10% unchanged) as each batch is
drawn. Runs resume from the latest checkpoint in ``output_dir`` (``--resume_from_checkpoint no`` to
start afresh); the model, tokenizer and README land in ``output_dir/final``, TensorBoard logs in
``output_dir/runs`` and the held-out MLM/NSP accuracies in ``output_dir/eval_results.json``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from torch.utils.data import DataLoader
from transformers import AutoModelForPreTraining, AutoTokenizer, PreTrainedConfig, PreTrainedTokenizerBase

from hf_paper_models import preset
from hf_paper_models.data.nsp import DataCollatorForMLMAndNSP, nsp_dataset, tokenize_pairs
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
    preset: str = field(default="bert-base", metadata={"help": "A BERT preset: bert-base or bert-large."})
    model_overrides: dict | str | None = field(
        default=None,
        metadata={
            "help": 'Any other config fields, as a mapping (YAML) or JSON ({"hidden_dropout_prob": 0.0}).'
        },
    )
    vocab_size: int = field(
        default=4096, metadata={"help": "WordPiece vocabulary to train (an upper bound)."}
    )
    tokenizer_path: str | None = field(default=None, metadata={"help": "Load a saved tokenizer instead."})
    tokenizer_cache_dir: str | None = field(
        default=None, metadata={"help": "Reuse trained tokenizers across runs."}
    )

    def __post_init__(self) -> None:
        self.check_preset(AutoModelForPreTraining, "has no MLM + NSP pre-training head")



@dataclass
class DataArguments:
    dataset: str = field(
        default="embedded",
        metadata={
            "help": "'embedded' (the built-in corpus), a datasets name, a builder (text/json) or a file."
        },
    )
    dataset_config: str | None = None
    data_files: list[str] | None = field(default=None, metadata={"help": "Files for a builder dataset."})
    text_column: str = field(default="text", metadata={"help": "One document per row."})
    validation_split_percentage: int = 5
    max_seq_length: int = field(default=128, metadata={"help": "[CLS] A [SEP] B [SEP] is truncated to this."})
    max_documents: int | None = field(
        default=None, metadata={"help": "Use only the first N documents per split."}
    )
    mlm_probability: float = field(default=0.15, metadata={"help": "§3.1: 15% of the WordPiece positions."})
    nsp_segments: str = field(
        default="spans",
        metadata={"help": "'spans': A and B are runs of whole sentences filling max_seq_length (the released "
                          "code); 'sentences': one sentence each."},
    )  # fmt: skip

    def __post_init__(self) -> None:
        if self.max_seq_length < 8:
            raise ValueError(f"DataArguments: `max_seq_length` must be >= 8, got {self.max_seq_length}.")
        if self.max_documents is not None and self.max_documents < 2:
            raise ValueError(f"DataArguments: `max_documents` must be >= 2 (NSP needs another document), "
                             f"got {self.max_documents}.")  # fmt: skip
        if not 0.0 < self.mlm_probability < 1.0:
            raise ValueError(
                f"DataArguments: `mlm_probability` must be in (0, 1), got {self.mlm_probability}."
            )
        if self.nsp_segments not in ("spans", "sentences"):
            raise ValueError(
                f"DataArguments: `nsp_segments` must be 'spans' or 'sentences', got {self.nsp_segments!r}."
            )


def build_config(model_args: ModelArguments, data_args: DataArguments, **extra: Any) -> PreTrainedConfig:
    """The preset's config with the recipe's overrides; raises ValueError for an impossible one."""
    config = preset(model_args.preset, **{**model_args.config_overrides(), **extra})
    if data_args.max_seq_length > config.max_position_embeddings:
        raise ValueError(
            f"max_seq_length={data_args.max_seq_length} is larger than the model's "
            f"{config.max_position_embeddings} positions (max_position_embeddings); lower max_seq_length or "
            "raise max_position_embeddings."
        )
    return config


def load_tokenizer(model_args: ModelArguments, output_dir: str, max_length: int) -> PreTrainedTokenizerBase:
    """The run's tokenizer: the one an earlier (interrupted) run saved in ``output_dir/tokenizer``, else
    ``tokenizer_path``, else a lower-cased WordPiece (the paper's kind, §3) trained on the embedded corpus."""
    saved = Path(output_dir) / "tokenizer"
    if saved.is_dir():
        return AutoTokenizer.from_pretrained(saved)
    if model_args.tokenizer_path:
        tokenizer = AutoTokenizer.from_pretrained(model_args.tokenizer_path)
    else:
        from hf_paper_models.tokenizers import get_tokenizer

        tokenizer = get_tokenizer(
            "wordpiece",
            vocab_size=model_args.vocab_size,
            cache_dir=model_args.tokenizer_cache_dir,
            model_max_length=max_length,
        )
    if tokenizer.mask_token is None or tokenizer.sep_token is None or tokenizer.cls_token is None:
        raise ValueError("BERT pre-training needs a tokenizer with [CLS], [SEP] and [MASK] tokens.")
    tokenizer.save_pretrained(saved)
    return tokenizer


def build_datasets(data_args: DataArguments, tokenizer: PreTrainedTokenizerBase, seed: int) -> dict[str, Any]:
    """Tokenized NSP pairs per split: ``input_ids``, ``token_type_ids``, ``attention_mask``,
    ``special_tokens_mask`` and ``next_sentence_label`` (MLM masking happens in the collator)."""

    def embedded(split: str) -> Any:
        from hf_paper_models.data import DEFAULT_NUM_DOCUMENTS, lm_dataset

        count = DEFAULT_NUM_DOCUMENTS[split]  # generated, so only what's used
        return lm_dataset(split, num_documents=min(count, data_args.max_documents or count))

    raw = load_text_dataset(
        data_args.dataset,
        config_name=data_args.dataset_config,
        data_files=data_args.data_files,
        default=embedded,
        validation_split_percentage=data_args.validation_split_percentage,
        seed=seed,
    )
    column = data_args.text_column
    out = {}
    for index, (split, dataset) in enumerate(raw.items()):
        if column not in dataset.column_names:
            raise ValueError(f"The {split} split has no {column!r} column (columns: {dataset.column_names}).")
        if data_args.max_documents is not None:
            dataset = dataset.select(range(min(data_args.max_documents, len(dataset))))
        documents = [text for text in dataset[column] if text and text.strip()]
        spans = data_args.nsp_segments == "spans"
        pairs = nsp_dataset(
            documents,
            seed=seed + index,
            target_length=data_args.max_seq_length - 3 if spans else None,  # [CLS] A [SEP] B [SEP]
            length=lambda text: len(tokenizer.tokenize(text)),
        )
        if len(pairs) == 0:
            raise ValueError(
                f"The {split} split has no document with two sentences: NSP needs sentence pairs."
            )
        out[split] = pairs.map(
            tokenize_pairs(tokenizer, data_args.max_seq_length),
            batched=True,
            remove_columns=["text_a", "text_b"],
            desc=f"tokenize {split}",
        )
    return out


def pretraining_loss(model: torch.nn.Module, batch: dict[str, torch.Tensor]):
    """MLM + NSP loss (the model's sum), with both accuracies for the logs."""
    out = model(**batch)
    with torch.no_grad():
        stats = mlm_nsp_counts(out, batch)
        extras = {
            "mlm_accuracy": stats["mlm_correct"] / stats["mlm_total"].clamp(min=1),
            "nsp_accuracy": stats["nsp_correct"] / stats["nsp_total"],
        }
    return out.loss, extras


def mlm_nsp_counts(out: Any, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Correct predictions and totals of both tasks, and their summed losses (for exact averages)."""
    labels = batch["labels"]
    selected = labels != -100
    logits = out.prediction_logits[selected].float()
    targets = labels[selected]
    nsp_logits = out.seq_relationship_logits.float()
    nsp_labels = batch["next_sentence_label"].view(-1)
    f = torch.nn.functional
    return {
        "mlm_correct": (logits.argmax(-1) == targets).sum().float(),
        "mlm_total": selected.sum().float(),
        "mlm_loss_sum": f.cross_entropy(logits, targets, reduction="sum")
        if targets.numel()
        else logits.sum(),
        "nsp_correct": (nsp_logits.argmax(-1) == nsp_labels).sum().float(),
        "nsp_total": torch.tensor(float(nsp_labels.numel()), device=nsp_logits.device),
        "nsp_loss_sum": f.cross_entropy(nsp_logits, nsp_labels, reduction="sum"),
    }


@torch.no_grad()
def evaluate_pretraining(
    accelerator: Accelerator, model: torch.nn.Module, dataloader: Any, max_batches: int | None = None
) -> dict[str, float]:
    """Held-out MLM accuracy and loss (over masked positions) and NSP accuracy and loss (over pairs),
    summed across processes. ``model`` and ``dataloader`` are prepared."""
    was_training = model.training
    model.eval()
    totals: dict[str, torch.Tensor] = {}
    for index, batch in enumerate(dataloader):
        if max_batches is not None and index >= max_batches:
            break
        for key, value in mlm_nsp_counts(model(**batch), batch).items():
            totals[key] = totals.get(key, 0) + value
    model.train(was_training)
    if not totals:
        return {}
    summed = accelerator.reduce(torch.stack(list(totals.values())), "sum").tolist()
    t = dict(zip(totals, summed))
    return {
        "eval_mlm_accuracy": t["mlm_correct"] / max(t["mlm_total"], 1.0),
        "eval_mlm_loss": t["mlm_loss_sum"] / max(t["mlm_total"], 1.0),
        "eval_nsp_accuracy": t["nsp_correct"] / t["nsp_total"],
        "eval_nsp_loss": t["nsp_loss_sum"] / t["nsp_total"],
        "eval_masked_tokens": t["mlm_total"],
        "eval_pairs": t["nsp_total"],
    }


def make_loaders(data: dict[str, Any], tokenizer: PreTrainedTokenizerBase, loop_args: TrainingLoopArguments,
                 data_args: DataArguments) -> tuple[DataLoader, DataLoader]:  # fmt: skip
    """Shuffled training batches and fixed-order evaluation batches, masked as they are drawn."""
    collator = DataCollatorForMLMAndNSP(
        tokenizer, mlm_probability=data_args.mlm_probability, seed=loop_args.seed
    )
    train_loader = DataLoader(
        data["train"],
        batch_size=loop_args.per_device_train_batch_size,
        shuffle=True,  # made seedable and resumable by accelerate (see make_accelerator)
        drop_last=True,
        collate_fn=collator,
        num_workers=loop_args.dataloader_num_workers,
    )
    eval_loader = DataLoader(
        data["validation"], batch_size=loop_args.per_device_eval_batch_size, collate_fn=collator
    )
    return train_loader, eval_loader


def main(argv: list[str] | None = None) -> Path:
    loop_args, model_args, data_args = parse_args(
        [TrainingLoopArguments, ModelArguments, DataArguments], argv
    )
    config = build_config(model_args, data_args)  # fail fast on a bad preset/size, before any work

    accelerator: Accelerator = make_accelerator(loop_args)
    with accelerator.main_process_first():
        tokenizer = load_tokenizer(model_args, loop_args.output_dir, data_args.max_seq_length)
        data = build_datasets(data_args, tokenizer, loop_args.seed)
    config = build_config(
        model_args, data_args, vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id
    )
    model = AutoModelForPreTraining.from_config(config)
    accelerator.print(
        f"{model_args.preset} ({config.model_type}): {model.num_parameters() / 1e6:.2f}M parameters, "
        f"vocab {len(tokenizer)}, {len(data['train'])} train / {len(data['validation'])} validation NSP pairs "
        f"of at most {data_args.max_seq_length} tokens, {accelerator.num_processes} process(es)."
    )
    train_loader, eval_loader = make_loaders(data, tokenizer, loop_args, data_args)
    result = train_loop(
        accelerator,
        model,
        train_loader,
        pretraining_loss,
        loop_args,
        eval_loader,
        tracker_config=flat_config(loop_args, model_args, data_args),
    )
    metrics = evaluate_pretraining(
        accelerator, result.model, accelerator.prepare(eval_loader), loop_args.max_eval_batches
    )
    final = save_final(accelerator, result.model, tokenizer, loop_args.output_dir)
    if accelerator.is_main_process:
        report = {"step": result.step, "train_loss": result.train_loss, **metrics, "history": result.history}
        (Path(loop_args.output_dir) / "eval_results.json").write_text(json.dumps(report, indent=2) + "\n")
    accelerator.end_training()  # closes TensorBoard and the process group: last of all
    accelerator.print(
        f"Done at step {result.step}: train loss {result.train_loss}, held-out MLM accuracy "
        f"{metrics.get('eval_mlm_accuracy', float('nan')):.3f}, NSP accuracy "
        f"{metrics.get('eval_nsp_accuracy', float('nan')):.3f}. Saved {final}."
    )
    return final


if __name__ == "__main__":
    main()
