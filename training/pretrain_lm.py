"""Causal-LM pretraining for GPT-1, GPT-2, GPT-3 and MoE-LSTM (ZOO.md §3; any causal-LM preset):
next-token prediction, the objective of these papers (GPT-1 §3.1 L1(U) = Σ log P(u_i | u_{i-k}, ..., u_{i-1}; Θ)).

    python training/pretrain_lm.py --config training/configs/gpt2_tiny.yaml
    python training/pretrain_lm.py --config training/configs/gpt2_tiny.yaml --max_steps 20 --output_dir runs/x
    python training/pretrain_lm.py --config training/configs/gpt2_tiny.yaml --dataset wikitext \\
        --dataset_config wikitext-2-raw-v1
    python training/pretrain_lm.py --config training/configs/gpt2_tiny.yaml --dataset my_corpus.txt
    accelerate launch --num_processes 2 --multi_gpu training/pretrain_lm.py --config ...   # DDP

DDP on a machine without GPUs also goes through ``--multi_gpu`` (torchrun underneath): the recipe
then forms a gloo process group on CPU. accelerate 1.x's ``accelerate launch --cpu --num_processes 2``
runs the script unchanged but as ONE process (its CPU launcher only starts several through MPI).

Runs resume from the latest checkpoint in ``output_dir`` (``--resume_from_checkpoint no`` to start
afresh). The trained model and tokenizer land in ``output_dir/final``; TensorBoard logs in
``output_dir/runs``. The loop itself is ``hf_paper_models.training_utils.train_loop``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import datasets
import torch
from accelerate import Accelerator
from torch.utils.data import DataLoader
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedConfig,
    PreTrainedTokenizerBase,
    default_data_collator,
)

from hf_paper_models import PRESETS, preset
from hf_paper_models.training_utils import (
    EmbeddedFactsArguments,
    PresetArguments,
    TrainingLoopArguments,
    flat_config,
    group_texts,
    latest_checkpoint,
    load_text_dataset,
    make_accelerator,
    parse_args,
    routing_metrics,
    save_final,
    train_loop,
)

# The tokenizer kind of each paper: GPT-1 a lower-cased BPE (§4.1), GPT-2/3 byte-level BPE (GPT-2 §2.2).
TOKENIZER_OF_MODEL_TYPE = {"paper-gpt1": "bpe"}
DEFAULT_TOKENIZER = "byte_bpe"


@dataclass
class ModelArguments(PresetArguments):
    preset: str = field(default="gpt2-small", metadata={"help": f"A causal-LM preset: {', '.join(PRESETS)}."})
    model_overrides: dict | str | None = field(
        default=None,
        metadata={"help": 'Any other config fields, as a mapping (YAML) or JSON ({"sliding_window": 32}).'},
    )
    tokenizer_kind: Literal["byte_bpe", "bpe"] | None = field(
        default=None, metadata={"help": "Default: the paper's (bpe for GPT-1, byte_bpe for GPT-2/3)."}
    )
    vocab_size: int = field(
        default=4096, metadata={"help": "Tokenizer vocabulary to train (an upper bound)."}
    )
    tokenizer_path: str | None = field(default=None, metadata={"help": "Load a saved tokenizer instead."})
    tokenizer_cache_dir: str | None = field(
        default=None, metadata={"help": "Reuse trained tokenizers across runs."}
    )

    def __post_init__(self) -> None:
        self.check_preset(AutoModelForCausalLM, "has no causal-LM head")


    @property
    def model_type(self) -> str:
        return PRESETS[self.preset]


@dataclass
class DataArguments(EmbeddedFactsArguments):
    dataset: str = field(
        default="embedded",
        metadata={
            "help": "'embedded' (the built-in corpus), a datasets name, a builder (text/json) or a file."
        },
    )
    dataset_config: str | None = None
    data_files: list[str] | None = field(default=None, metadata={"help": "Files for a builder dataset."})
    text_column: str = "text"
    validation_split_percentage: int = 5
    block_size: int = field(default=128, metadata={"help": "Tokens per training sequence."})
    max_documents: int | None = field(
        default=None, metadata={"help": "Use only the first N documents per split."}
    )

    def __post_init__(self) -> None:
        self.check_embedded_facts()
        if self.block_size < 2:
            raise ValueError(f"DataArguments: `block_size` must be >= 2, got {self.block_size}.")
        if self.max_documents is not None and self.max_documents < 1:
            raise ValueError(f"DataArguments: `max_documents` must be >= 1, got {self.max_documents}.")


def build_config(model_args: ModelArguments, data_args: DataArguments, **extra: Any) -> PreTrainedConfig:
    """The preset's config with the recipe's overrides; raises ValueError for an impossible one."""
    overrides = model_args.config_overrides()
    known = preset(model_args.preset).to_dict()
    unknown = sorted(set(overrides) - set(known))
    if unknown:
        raise ValueError(
            f"model_overrides {unknown} are not fields of {model_args.model_type}'s config; "
            f"known fields: {', '.join(sorted(known))}."
        )
    config = preset(model_args.preset, **{**overrides, **extra})
    if data_args.block_size > config.max_position_embeddings:
        raise ValueError(
            f"block_size={data_args.block_size} is larger than the model's {config.max_position_embeddings} "
            "positions (max_position_embeddings); lower block_size or raise max_position_embeddings."
        )
    return config


def load_tokenizer(
    model_args: ModelArguments,
    loop_args: TrainingLoopArguments,
    max_length: int,
    is_main_process: bool,
    data_args: DataArguments | None = None,
) -> PreTrainedTokenizerBase:
    """The run's tokenizer, kept in ``output_dir/tokenizer`` so that a resumed run and every process
    use exactly the one the checkpoints were trained with.

    The main process reuses that copy when resuming, else loads ``tokenizer_path`` or trains the
    paper's kind on the embedded corpus (``get_tokenizer``), and saves it there; the other processes
    (which run after it, see ``main_process_first``) load that copy.
    """
    saved = Path(loop_args.output_dir) / "tokenizer"
    resuming = loop_args.resume_from_checkpoint.lower() not in ("no", "none", "false", "")
    if not is_main_process or (resuming and saved.is_dir() and latest_checkpoint(loop_args.output_dir)):
        return AutoTokenizer.from_pretrained(saved)
    if model_args.tokenizer_path:
        tokenizer = AutoTokenizer.from_pretrained(model_args.tokenizer_path)
    else:
        from hf_paper_models.tokenizers import get_tokenizer

        kind = model_args.tokenizer_kind or TOKENIZER_OF_MODEL_TYPE.get(
            model_args.model_type, DEFAULT_TOKENIZER
        )
        tokenizer = get_tokenizer(
            kind,
            vocab_size=model_args.vocab_size,
            cache_dir=model_args.tokenizer_cache_dir,
            model_max_length=max_length,
        )
    if data_args is not None:
        data_args.add_town_tokens(tokenizer)  # part of the saved copy
    tokenizer.save_pretrained(saved)
    return tokenizer


def build_datasets(data_args: DataArguments, tokenizer: PreTrainedTokenizerBase, seed: int) -> dict[str, Any]:
    """Tokenize each document (end-of-text after each, when the tokenizer has one), then concatenate
    and chunk into ``block_size`` blocks."""

    def embedded(split: str) -> Any:
        # generated, so only what's used
        return data_args.embedded_corpus(split, data_args.max_documents)

    raw = load_text_dataset(
        data_args.dataset,
        config_name=data_args.dataset_config,
        data_files=data_args.data_files,
        default=embedded,
        validation_split_percentage=data_args.validation_split_percentage,
        seed=seed,
    )
    eos = tokenizer.eos_token_id
    column = data_args.text_column

    def tokenize(batch: dict[str, list[str]]) -> dict[str, list[list[int]]]:
        ids = tokenizer(batch[column], add_special_tokens=False, verbose=False)["input_ids"]
        return {"input_ids": [x + [eos] for x in ids] if eos is not None else ids}

    blocks = {}
    for split, dataset in raw.items():
        if column not in dataset.column_names:
            raise ValueError(f"The {split} split has no {column!r} column (columns: {dataset.column_names}).")
        if data_args.max_documents is not None:
            dataset = dataset.select(range(min(data_args.max_documents, len(dataset))))
        dataset = dataset.filter(lambda b: [bool(t and t.strip()) for t in b[column]], batched=True)
        dataset = dataset.map(
            tokenize, batched=True, remove_columns=dataset.column_names, desc=f"tokenize {split}"
        )
        dataset = dataset.map(
            group_texts, batched=True, fn_kwargs={"block_size": data_args.block_size}, desc=f"chunk {split}"
        )
        blocks[split] = dataset.with_format("torch")
    if len(blocks["train"]) == 0:
        raise ValueError(f"The training data is shorter than one block of {data_args.block_size} tokens.")
    return blocks


def causal_lm_loss(
    model: torch.nn.Module, batch: dict[str, torch.Tensor]
) -> torch.Tensor | tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Mean next-token cross-entropy; the model shifts ``labels`` by one position itself. A mixture-of-
    experts model (MoE-LSTM) adds its auxiliary loss to the loss in training and reports it: logged beside
    the loss, with its unweighted parts and the least and most loaded expert's share of the tokens."""
    out = model(input_ids=batch["input_ids"], labels=batch["labels"])
    metrics = routing_metrics(out)
    return (out.loss, metrics) if metrics else out.loss


def main(argv: list[str] | None = None) -> Path:
    loop_args, model_args, data_args = parse_args(
        [TrainingLoopArguments, ModelArguments, DataArguments], argv
    )
    config = build_config(model_args, data_args)  # fail fast on a bad preset/size, before any work

    accelerator: Accelerator = make_accelerator(loop_args)
    if not accelerator.is_local_main_process:
        datasets.disable_progress_bars()  # one set of progress bars per machine
    with accelerator.main_process_first():
        tokenizer = load_tokenizer(
            model_args, loop_args, config.max_position_embeddings, accelerator.is_main_process, data_args
        )
        data = build_datasets(data_args, tokenizer, loop_args.seed)
    config = build_config(
        model_args,
        data_args,
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = AutoModelForCausalLM.from_config(config)
    accelerator.print(
        f"{model_args.preset} ({config.model_type}): {model.num_parameters() / 1e6:.2f}M parameters, "
        f"vocab {len(tokenizer)}, {len(data['train'])} train / {len(data['validation'])} validation blocks "
        f"of {data_args.block_size} tokens, {accelerator.num_processes} process(es)."
    )

    train_loader = DataLoader(
        data["train"],
        batch_size=loop_args.per_device_train_batch_size,
        shuffle=True,  # made seedable and resumable by accelerate (see make_accelerator)
        drop_last=True,
        collate_fn=default_data_collator,
        num_workers=loop_args.dataloader_num_workers,
    )
    eval_loader = DataLoader(
        data["validation"], batch_size=loop_args.per_device_eval_batch_size, collate_fn=default_data_collator
    )
    result = train_loop(
        accelerator,
        model,
        train_loader,
        causal_lm_loss,
        loop_args,
        eval_loader,
        tracker_config=flat_config(loop_args, model_args, data_args),
    )
    final = save_final(accelerator, result.model, tokenizer, loop_args.output_dir)
    accelerator.end_training()  # closes TensorBoard and the process group: last of all
    accelerator.print(
        f"Done at step {result.step}: train loss {result.train_loss}, eval loss {result.eval_loss}. "
        f"Saved {final}."
    )
    return final


if __name__ == "__main__":
    main()
