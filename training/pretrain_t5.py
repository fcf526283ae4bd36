"""T5 and Switch Transformer pre-training (ZOO.md §3): the span-corruption objective of Raffel et al.
(2020), §3.1.4, which Fedus et al. (2022, §2.3) pre-train the Switch Transformer with.

    python training/pretrain_t5.py --config training/configs/t5_tiny.yaml
    python training/pretrain_t5.py --config training/configs/switch_tiny.yaml
    python training/pretrain_t5.py --config training/configs/switch_tiny.yaml --model_overrides \\
        '{"dropout_rate": 0.0, "num_experts": 16, "capacity_factor": 1.0}'
    python training/pretrain_t5.py --config training/configs/t5_tiny.yaml --max_steps 20 --output_dir runs/x
    python training/pretrain_t5.py --config training/configs/t5_tiny.yaml --dataset wikitext \\
        --dataset_config wikitext-103-raw-v1
    python training/pretrain_t5.py --config training/configs/t5_tiny.yaml --dataset my_documents.txt
    accelerate launch --cpu --num_processes 2 training/pretrain_t5.py --config training/configs/t5_tiny.yaml

Documents are tokenized with a SentencePiece-style Unigram vocabulary that carries 100 sentinels
(``<extra_id_0>`` on the top id), concatenated and cut into blocks of ``span_corruption_lengths(
inputs_length)[0]`` raw tokens, so that every corrupted input is exactly ``inputs_length`` tokens
(T5: 568 raw tokens -> 512). ``DataCollatorForSpanCorruption`` drops 15% of each block in spans of
mean length 3 as each batch is drawn: one sentinel per span in the inputs, sentinel-delimited spans
as the targets. As the paper's vocabulary (§2.2: SentencePiece trained on English C4 mixed with some
German, French and Romanian), the default vocabulary is trained on the English corpus mixed with the
target side of the embedded parallel corpus and the words of the text-to-text task prefixes and
answers, so that one vocabulary serves pre-training and the fine-tuning of ``training/finetune_t5.py``.

Any encoder-decoder preset trains: ``t5-*`` (dense) and ``switch-*`` (a Switch layer every other FFN).
A mixture-of-experts model's own forward pass adds its auxiliary loss (α · load balancing [+ router
z-loss] of every Switch layer) to ``loss`` in training, so the recipe optimises ``loss`` as returned
(``train_loss`` includes it; ``eval_loss`` is the cross-entropy alone) and logs beside it, from the
model's outputs (``routing_metrics``): ``train_aux_loss``, ``train_load_balancing_loss`` (unweighted,
summed over the Switch layers), ``train_expert_load_min`` / ``_max`` (the least and most loaded
expert's share of a layer's tokens, averaged over the Switch layers; 1/experts each when balanced) and
``train_dropped_fraction`` (tokens over capacity, averaged over the Switch layers); the final
evaluation adds the same statistics as ``eval_*`` to ``eval_results.json``.

Runs resume from the latest checkpoint in ``output_dir`` (``--resume_from_checkpoint no`` to start
afresh); the model, tokenizer and README land in ``output_dir/final``, TensorBoard logs in
``output_dir/runs``, held-out loss and span-token accuracy in ``output_dir/eval_results.json``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from accelerate import Accelerator
from torch.utils.data import DataLoader
from transformers import AutoModelForSeq2SeqLM, AutoTokenizer, PreTrainedConfig, PreTrainedTokenizerBase

from hf_paper_models import PRESETS, preset
from hf_paper_models.data.span_corruption import (
    COLA_TARGETS,
    MEAN_NOISE_SPAN_LENGTH,
    NOISE_DENSITY,
    TASK_TEMPLATES,
    DataCollatorForSpanCorruption,
    span_corruption_lengths,
    translation_prefix,
)
from hf_paper_models.training_utils import (
    EmbeddedFactsArguments,
    PresetArguments,
    TrainingLoopArguments,
    flat_config,
    group_texts,
    load_text_dataset,
    make_accelerator,
    parse_args,
    routing_metrics,
    save_final,
    train_loop,
)

TOKENIZER_VERSION = 2  # bump when the mixed-corpus recipe below changes
PARALLEL_TARGETS_IN_VOCABULARY = 3000  # target-side sentences mixed into the tokenizer's training text
TASK_TEXT_REPEATS = 100  # how often the text-to-text task words appear in it


@dataclass
class ModelArguments(PresetArguments):
    preset: str = field(
        default="t5-small",
        metadata={"help": f"An encoder-decoder preset (t5-* dense, switch-* sparse): {', '.join(PRESETS)}."},
    )
    model_overrides: dict | str | None = field(
        default=None,
        metadata={
            "help": 'Any other config fields, as a mapping (YAML) or JSON ({"dropout_rate": 0.0}; for a '
            'switch-* preset also e.g. {"num_experts": 8, "capacity_factor": 1.25}).'
        },
    )
    vocab_size: int = field(
        default=4096, metadata={"help": "Unigram vocabulary to train, 100 sentinels included."}
    )
    tokenizer_corpus: Literal["lm", "lm+parallel"] = field(
        default="lm+parallel",
        metadata={
            "help": "Train the vocabulary on the English corpus, or mixed with the parallel corpus's targets."
        },
    )
    tokenizer_path: str | None = field(default=None, metadata={"help": "Load a saved tokenizer instead."})
    tokenizer_cache_dir: str | None = field(
        default=None, metadata={"help": "Reuse trained tokenizers across runs."}
    )

    def __post_init__(self) -> None:
        self.check_preset(AutoModelForSeq2SeqLM, "is not an encoder-decoder")


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
    inputs_length: int = field(default=64, metadata={"help": "Corrupted input tokens per example (T5: 512)."})
    noise_density: float = field(
        default=NOISE_DENSITY, metadata={"help": "Share of tokens dropped (§3.1.4)."}
    )
    mean_noise_span_length: float = field(default=MEAN_NOISE_SPAN_LENGTH, metadata={"help": "§3.3.4: 3."})
    max_documents: int | None = field(
        default=None, metadata={"help": "Use only the first N documents per split."}
    )

    def __post_init__(self) -> None:
        self.check_embedded_facts()
        if self.inputs_length < 8:
            raise ValueError(f"DataArguments: `inputs_length` must be >= 8, got {self.inputs_length}.")
        if not 0.0 < self.noise_density < 1.0:
            raise ValueError(f"DataArguments: `noise_density` must be in (0, 1), got {self.noise_density}.")
        if self.mean_noise_span_length < 1.0:
            raise ValueError(
                f"DataArguments: `mean_noise_span_length` must be >= 1, got {self.mean_noise_span_length}."
            )
        if self.max_documents is not None and self.max_documents < 1:
            raise ValueError(f"DataArguments: `max_documents` must be >= 1, got {self.max_documents}.")

    def lengths(self) -> tuple[int, int]:
        """(raw tokens per block, target length) for ``inputs_length`` corrupted input tokens."""
        return span_corruption_lengths(self.inputs_length, self.noise_density, self.mean_noise_span_length)


def build_config(model_args: ModelArguments, data_args: DataArguments, **extra: Any) -> PreTrainedConfig:
    """The preset's config with the recipe's overrides; raises ValueError for an impossible one (an
    unknown ``model_overrides`` key is refused earlier, by ``PresetArguments.check_preset``)."""
    config = preset(model_args.preset, **{**model_args.config_overrides(), **extra})
    limit = getattr(config, "max_position_embeddings", None)
    if limit is not None and max(data_args.inputs_length, data_args.lengths()[1]) > limit:
        raise ValueError(
            f"inputs_length={data_args.inputs_length} (targets {data_args.lengths()[1]}) exceeds the model's "
            f"max_position_embeddings={limit}; lower inputs_length or raise max_position_embeddings."
        )
    return config


def task_words_text() -> list[str]:
    """The words of the text-to-text format: task prefixes ("translate English to Target:", "cola
    sentence:", ...) and answers ("acceptable", "not acceptable"). The paper's vocabulary, trained on
    C4, knows these words; the embedded corpus never uses them, so the mixed vocabulary gets them here."""
    prefixes = [re.sub(r"\{\w+\}", "", template) for template in TASK_TEMPLATES.values()]
    return [*prefixes, translation_prefix("English", "Target"), *COLA_TARGETS]


def train_t5_tokenizer(
    vocab_size: int, corpus: str = "lm+parallel", cache_dir: str | None = None, model_max_length: int = 512
) -> PreTrainedTokenizerBase:
    """T5's kind of vocabulary (Unigram + 100 sentinels) trained on the embedded data, cached on disk."""
    from hf_paper_models.tokenizers import TRAIN_DOCUMENTS, get_tokenizer, train_tokenizer

    if corpus == "lm":
        return get_tokenizer(
            "unigram", vocab_size=vocab_size, cache_dir=cache_dir, model_max_length=model_max_length
        )
    if corpus != "lm+parallel":
        raise ValueError(f"tokenizer_corpus must be 'lm' or 'lm+parallel', got {corpus!r}")
    path = None
    if cache_dir is not None:
        path = Path(cache_dir) / f"unigram-{vocab_size}-lm+parallel-v{TOKENIZER_VERSION}"
        if (path / "tokenizer.json").is_file():
            return AutoTokenizer.from_pretrained(path, model_max_length=model_max_length)
    from hf_paper_models.data import lm_corpus, parallel_corpus

    texts = lm_corpus(TRAIN_DOCUMENTS) + [
        t for _, t in parallel_corpus("train", PARALLEL_TARGETS_IN_VOCABULARY)
    ]
    texts += task_words_text() * TASK_TEXT_REPEATS
    tokenizer = train_tokenizer("unigram", texts, vocab_size=vocab_size, model_max_length=model_max_length)
    if path is not None:
        tmp = path.with_name(path.name + f".tmp-{os.getpid()}")
        tokenizer.save_pretrained(tmp)
        if path.exists():  # another process got there first
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            os.replace(tmp, path)
    return tokenizer


def load_tokenizer(
    model_args: ModelArguments, output_dir: str, max_length: int, data_args: DataArguments | None = None
) -> PreTrainedTokenizerBase:
    """The run's tokenizer: the one an earlier (interrupted) run saved in ``output_dir/tokenizer``, else
    ``tokenizer_path``, else T5's kind trained on the embedded data."""
    saved = Path(output_dir) / "tokenizer"
    if saved.is_dir():
        return AutoTokenizer.from_pretrained(saved)
    if model_args.tokenizer_path:
        tokenizer = AutoTokenizer.from_pretrained(model_args.tokenizer_path)
    else:
        tokenizer = train_t5_tokenizer(
            model_args.vocab_size, model_args.tokenizer_corpus, model_args.tokenizer_cache_dir, max_length
        )
    if data_args is not None:
        data_args.add_town_tokens(tokenizer)  # part of the saved copy
    tokenizer.save_pretrained(saved)
    return tokenizer


def build_datasets(data_args: DataArguments, tokenizer: PreTrainedTokenizerBase, seed: int) -> dict[str, Any]:
    """Tokenize each document (no EOS: T5 adds it to each corrupted example), concatenate, cut into
    blocks of raw tokens."""

    def embedded(split: str) -> Any:
        return data_args.embedded_corpus(split, data_args.max_documents)

    raw = load_text_dataset(
        data_args.dataset,
        config_name=data_args.dataset_config,
        data_files=data_args.data_files,
        default=embedded,
        validation_split_percentage=data_args.validation_split_percentage,
        seed=seed,
    )
    column, block = data_args.text_column, data_args.lengths()[0]

    def tokenize(batch: dict[str, list[str]]) -> dict[str, list[list[int]]]:
        return {"input_ids": tokenizer(batch[column], add_special_tokens=False, verbose=False)["input_ids"]}

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
            group_texts, batched=True, fn_kwargs={"block_size": block}, desc=f"chunk {split}"
        )
        blocks[split] = dataset.remove_columns("labels")
    if len(blocks["train"]) == 0:
        raise ValueError(f"The training data is shorter than one block of {block} tokens.")
    return blocks




def span_corruption_loss(
    model: torch.nn.Module, batch: dict[str, torch.Tensor]
) -> torch.Tensor | tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Mean cross-entropy of the target spans (sentinels and EOS included), teacher-forced. A Switch
    model's ``loss`` already holds its auxiliary loss in training (its forward adds it; nothing is added
    here) and comes with its ``routing_metrics`` to log."""
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"])
    metrics = routing_metrics(out)
    return (out.loss, metrics) if metrics else out.loss


def sentinel_id_tensor(tokenizer: PreTrainedTokenizerBase) -> torch.Tensor:
    """The ids of all ``<extra_id_N>`` sentinels of ``tokenizer``."""
    return torch.tensor(sorted(i for t, i in tokenizer.get_vocab().items() if t.startswith("<extra_id_")))


@torch.no_grad()
def evaluate_spans(accelerator: Accelerator, model: torch.nn.Module, dataloader: Any, sentinels: torch.Tensor,
                   max_batches: int | None = None) -> dict[str, float]:  # fmt: skip
    """Held-out loss and the accuracy of the teacher-forced argmax on the dropped tokens (sentinels and
    EOS excluded): how often the model fills a blank with the right token; for a mixture-of-experts
    model also its ``routing_metrics`` in evaluation, averaged over the batches, as ``eval_*``."""
    model.eval()
    loss_sum, correct, total, batches = 0.0, 0, 0, 0
    routing: dict[str, float] = {}
    for index, batch in enumerate(dataloader):
        if max_batches is not None and index >= max_batches:
            break
        out = model(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]
        )
        labels = batch["labels"]
        sentinel = torch.isin(labels, sentinels.to(labels.device))
        real = (labels >= 0) & ~sentinel & (labels != accelerator.unwrap_model(model).config.eos_token_id)
        hits = (out.logits.argmax(-1) == labels) & real
        stats = accelerator.reduce(
            torch.tensor(
                [out.loss.item(), hits.sum().item(), real.sum().item(), 1.0], device=accelerator.device
            ),
            "sum",
        )
        loss_sum += stats[0].item()
        correct += int(stats[1].item())
        total += int(stats[2].item())
        batches += int(stats[3].item())
        metrics = routing_metrics(out)
        if metrics:
            sums = accelerator.reduce(torch.stack(list(metrics.values())).to(accelerator.device), "sum")
            for key, value in zip(metrics, sums.tolist()):
                routing[key] = routing.get(key, 0.0) + value
    model.train()
    results = {"eval_loss": loss_sum / max(batches, 1), "span_token_accuracy": correct / max(total, 1)}
    return {**results, **{f"eval_{key}": value / max(batches, 1) for key, value in routing.items()}}


def main(argv: list[str] | None = None) -> Path:
    loop_args, model_args, data_args = parse_args(
        [TrainingLoopArguments, ModelArguments, DataArguments], argv
    )
    config = build_config(model_args, data_args)  # fail fast on a bad preset/size, before any work

    accelerator: Accelerator = make_accelerator(loop_args)
    with accelerator.main_process_first():
        tokenizer = load_tokenizer(model_args, loop_args.output_dir, max(data_args.inputs_length, 512), data_args)
        data = build_datasets(data_args, tokenizer, loop_args.seed)
    config = build_config(
        model_args,
        data_args,
        vocab_size=len(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.pad_token_id,  # T5 starts decoding from the padding token
    )
    model = AutoModelForSeq2SeqLM.from_config(config)
    collator = DataCollatorForSpanCorruption(
        tokenizer, data_args.noise_density, data_args.mean_noise_span_length, seed=loop_args.seed
    )
    raw_length, target_length = data_args.lengths()
    experts = getattr(config, "num_experts", None)
    sparse = any(getattr(config, f"{stack}_sparse_step", 1) for stack in ("encoder", "decoder"))
    routing = (
        f", {experts} experts per Switch layer (capacity factor {config.capacity_factor})" if experts else ""
    ) if sparse else ", no Switch layer"
    accelerator.print(
        f"{model_args.preset} ({config.model_type}{routing}): {model.num_parameters() / 1e6:.2f}M parameters, vocab "
        f"{len(tokenizer)}, {len(data['train'])} train / {len(data['validation'])} validation blocks of "
        f"{raw_length} tokens -> {data_args.inputs_length} input / {target_length} target tokens, "
        f"{accelerator.num_processes} process(es)."
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
    result = train_loop(
        accelerator,
        model,
        train_loader,
        span_corruption_loss,
        loop_args,
        eval_loader,
        tracker_config=flat_config(loop_args, model_args, data_args),
    )
    prepared_eval = accelerator.prepare(eval_loader)
    metrics = evaluate_spans(
        accelerator, result.model, prepared_eval, sentinel_id_tensor(tokenizer), loop_args.max_eval_batches
    )
    final = save_final(accelerator, result.model, tokenizer, loop_args.output_dir)
    if accelerator.is_main_process:
        results = {"step": result.step, "train_loss": result.train_loss, **metrics, "history": result.history}
        (Path(loop_args.output_dir) / "eval_results.json").write_text(json.dumps(results, indent=2) + "\n")
    accelerator.end_training()  # closes TensorBoard and the process group: last of all
    accelerator.print(
        f"Done at step {result.step}: train loss {result.train_loss}, eval loss {metrics['eval_loss']:.4f}, "
        f"span token accuracy {metrics['span_token_accuracy']:.3f}. Saved {final}."
    )
    return final


if __name__ == "__main__":
    main()
