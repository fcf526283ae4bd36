"""Shared machinery of the training recipes in ``training/`` (ZOO.md §3), on ``accelerate`` directly.

A recipe script only parses, loads, trains and saves (the TRL way)::

    loop_args, *recipe_args = parse_args([TrainingLoopArguments, MyArguments])
    accelerator = make_accelerator(loop_args)
    model, tokenizer, train_loader, eval_loader = ...            # the recipe's own part
    result = train_loop(accelerator, model, train_loader, my_loss_fn, loop_args, eval_loader)
    save_final(accelerator, model, tokenizer, loop_args.output_dir)
    accelerator.end_training()                                   # trackers and process group

What lives here, once for every objective (causal LM, MLM + NSP, span corruption, translation):

- ``TrainingLoopArguments``: the common options (batch, optimiser, schedule, intervals, resume), and
  ``parse_args``: YAML recipe + command-line overrides through TRL's ``TrlParser``.
- ``load_text_dataset`` / ``group_texts``: the embedded corpus or a real ``datasets`` dataset, and
  the standard concatenate-and-chunk into fixed blocks.
- Checkpoints: ``save_checkpoint`` writes ``accelerator.save_state`` into a temporary folder and
  renames it into place, so an interruption never leaves a half-written "latest" checkpoint; the
  newest ``save_total_limit`` are kept. ``latest_checkpoint`` finds the one to resume from.
- ``train_loop``: gradient accumulation, clipping, the scheduler, a tqdm bar, TensorBoard scalars
  (loss, lr, tokens/s, eval loss and perplexity), periodic evaluation and checkpoints, and an exact
  resume. Exact means bitwise: a run killed after a checkpoint and resumed ends with the same weights
  as an uninterrupted run with the same seed, because (1) the data order is a pure function of
  (seed, epoch) through accelerate's seedable sampler and the resumed epoch skips the batches already
  consumed (``accelerator.skip_first_batches``), and (2) the random state of each micro-batch (dropout)
  is re-derived from (seed, step, micro-batch, process) instead of flowing on from the previous step,
  so nothing depends on where the run last started.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
import signal
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, ProjectConfiguration, set_seed
from torch import nn
from tqdm.auto import tqdm
from transformers import SchedulerType, get_scheduler

from hf_paper_models.data.corpus import FACT_TOWNS, FACT_ZIPF

logger = logging.getLogger(__name__)

__all__ = [
    "CHECKPOINT_PREFIX",
    "TrainingLoopArguments",
    "TrainResult",
    "build_optimizer",
    "build_scheduler",
    "evaluate",
    "group_texts",
    "latest_checkpoint",
    "list_checkpoints",
    "load_text_dataset",
    "make_accelerator",
    "micro_batch_seed",
    "parse_args",
    "resume_state",
    "routing_metrics",
    "save_checkpoint",
    "save_final",
    "train_loop",
]

CHECKPOINT_PREFIX = "checkpoint-"
_TMP_PREFIX = ".tmp-"
_STATE_FILE = "trainer_state.json"
_SCHEDULERS = [s.value for s in SchedulerType]


# ----------------------------------------------------------------------------------------------
# Arguments
# ----------------------------------------------------------------------------------------------


@dataclass
class TrainingLoopArguments:
    """The options every recipe shares. Names follow ``transformers.TrainingArguments`` where one exists."""

    output_dir: str = field(default="runs/train", metadata={"help": "Checkpoints, TensorBoard logs, final/."})
    seed: int = field(default=42, metadata={"help": "Seeds initialisation, data order and dropout."})
    per_device_train_batch_size: int = 16
    per_device_eval_batch_size: int = 32
    gradient_accumulation_steps: int = 1
    learning_rate: float = 6e-4
    weight_decay: float = field(
        default=0.01,
        metadata={"help": "AdamW decay on weight matrices and embeddings only (not biases, gains)."},
    )
    adam_beta1: float = 0.9
    adam_beta2: float = 0.95
    adam_epsilon: float = 1e-8
    max_grad_norm: float = field(default=1.0, metadata={"help": "Global gradient-norm clip; 0 disables it."})
    lr_scheduler_type: str = field(default="cosine", metadata={"help": f"One of {_SCHEDULERS}."})
    lr_scheduler_kwargs: dict | str | None = field(
        default=None,
        metadata={"help": 'Extra scheduler options, e.g. {"min_lr_rate": 0.1} (JSON on the CLI).'},
    )
    warmup_steps: int = 0
    max_steps: int = field(
        default=1000, metadata={"help": "Optimizer steps to train for (the schedule's length)."}
    )
    logging_steps: int = 10
    eval_steps: int = field(default=100, metadata={"help": "Evaluate every N steps (0: only at the end)."})
    max_eval_batches: int | None = field(
        default=None, metadata={"help": "Cap on evaluation batches per process."}
    )
    save_steps: int = field(default=100, metadata={"help": "Checkpoint every N steps (0: only at the end)."})
    save_total_limit: int = field(
        default=2, metadata={"help": "Checkpoints kept in output_dir (newest first)."}
    )
    resume_from_checkpoint: str = field(
        default="auto",
        metadata={
            "help": "'auto': the latest checkpoint in output_dir if any; 'no': start afresh; or a path."
        },
    )
    mixed_precision: str = field(default="no", metadata={"help": "'no', 'bf16' or 'fp16' (accelerate)."})
    report_to: str = field(default="tensorboard", metadata={"help": "'tensorboard' or 'none'."})
    run_name: str = field(default="tensorboard", metadata={"help": "TensorBoard run under output_dir/runs/."})
    dataloader_num_workers: int = 0
    interrupt_at_step: int | None = field(
        default=None,
        metadata={"help": "Testing aid: SIGKILL the process right after this step (simulates a preemption)."},
    )
    max_train_seconds: float | None = field(
        default=None,
        metadata={"help": "Also stop after this many seconds of training (evaluation and checkpoints not "
                  "counted; a resumed session counts afresh), for equal-time comparisons; None: no limit."},
    )  # fmt: skip
    train_clock: str = field(
        default="wall",
        metadata={"help": "Clock of max_train_seconds: 'wall', or 'process' (this process's CPU time, "
                  "which other load on a shared machine does not inflate)."},
    )  # fmt: skip

    def __post_init__(self) -> None:
        if isinstance(self.lr_scheduler_kwargs, str):
            try:
                self.lr_scheduler_kwargs = json.loads(self.lr_scheduler_kwargs)
            except json.JSONDecodeError as error:
                raise ValueError(
                    f"lr_scheduler_kwargs must be a JSON object, got {self.lr_scheduler_kwargs!r}"
                ) from error
        _require(
            self, "lr_scheduler_kwargs", isinstance(self.lr_scheduler_kwargs, (dict, type(None))), "a mapping"
        )
        positive = (
            "per_device_train_batch_size",
            "per_device_eval_batch_size",
            "gradient_accumulation_steps",
        )
        for name in (*positive, "max_steps", "logging_steps", "save_total_limit"):
            _require(self, name, getattr(self, name) >= 1, "an integer >= 1")
        for name in ("warmup_steps", "eval_steps", "save_steps", "dataloader_num_workers"):
            _require(self, name, getattr(self, name) >= 0, "an integer >= 0")
        _require(self, "learning_rate", self.learning_rate > 0, "a number > 0")
        _require(self, "weight_decay", self.weight_decay >= 0, "a number >= 0")
        _require(self, "max_grad_norm", self.max_grad_norm >= 0, "a number >= 0 (0 disables clipping)")
        _require(self, "adam_beta1", 0 <= self.adam_beta1 < 1, "in [0, 1)")
        _require(self, "adam_beta2", 0 <= self.adam_beta2 < 1, "in [0, 1)")
        _require(self, "lr_scheduler_type", self.lr_scheduler_type in _SCHEDULERS, f"one of {_SCHEDULERS}")
        _require(
            self, "mixed_precision", self.mixed_precision in ("no", "bf16", "fp16"), "'no', 'bf16' or 'fp16'"
        )
        _require(self, "report_to", self.report_to in ("tensorboard", "none"), "'tensorboard' or 'none'")
        if self.max_eval_batches is not None:
            _require(self, "max_eval_batches", self.max_eval_batches >= 1, "an integer >= 1 or None")
        if self.max_train_seconds is not None:
            _require(self, "max_train_seconds", self.max_train_seconds > 0, "a number > 0 or None")
        _require(self, "train_clock", self.train_clock in ("wall", "process"), "'wall' or 'process'")


def _require(args: Any, name: str, ok: bool, what: str) -> None:
    if not ok:
        raise ValueError(f"{type(args).__name__}: `{name}` must be {what}, got {getattr(args, name)!r}.")


def parse_args(dataclass_types: Sequence[type], argv: Sequence[str] | None = None) -> tuple[Any, ...]:
    """Parse ``--config recipe.yaml`` plus command-line overrides into ``dataclass_types``.

    TRL's ``TrlParser`` (a ``transformers.HfArgumentParser``): the YAML sets the defaults, flags on the
    command line win, and a YAML key that no dataclass declares is an error. Invalid values raise
    ``ValueError`` from the dataclasses' ``__post_init__`` before anything is loaded.
    """
    from trl import TrlParser

    return tuple(
        TrlParser(list(dataclass_types)).parse_args_and_config(list(argv) if argv is not None else None)
    )


def flat_config(*dataclasses_: Any) -> dict[str, int | float | str | bool]:
    """The parsed arguments as one flat dict of scalars (what TensorBoard's hparams accept)."""
    flat: dict[str, int | float | str | bool] = {}
    for obj in dataclasses_:
        for key, value in asdict(obj).items():
            flat[key] = value if isinstance(value, (int, float, str, bool)) else json.dumps(value)
    return flat


# ----------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------

_FILE_BUILDERS = {
    ".txt": "text",
    ".text": "text",
    ".json": "json",
    ".jsonl": "json",
    ".csv": "csv",
    ".parquet": "parquet",
}


def load_text_dataset(
    name: str | None,
    *,
    config_name: str | None = None,
    data_files: Sequence[str] | None = None,
    default: Callable[[str], Any] | None = None,
    validation_split_percentage: int = 5,
    seed: int = 42,
    splits: Sequence[str] = ("train", "validation"),
) -> dict[str, Any]:
    """``{split: datasets.Dataset}`` for ``splits`` from one of:

    - ``None`` / ``"embedded"``: ``default(split)`` (the recipe's embedded corpus, no network);
    - a ``datasets`` name with an optional config (``"wikitext", "wikitext-2-raw-v1"``);
    - a builder with files (``"text"``/``"json"``/``"csv"`` + ``data_files``), or a local file or folder
      path (its extension picks the builder; a folder from ``Dataset.save_to_disk`` loads as saved).

    A dataset without a validation split gets one from ``validation_split_percentage`` of train.
    """
    import datasets

    if name in (None, "", "embedded"):
        if default is None:
            raise ValueError("No dataset given and this recipe has no embedded default.")
        return {split: default(split) for split in splits}

    if os.path.isfile(name):
        builder = _FILE_BUILDERS.get(Path(name).suffix.lower())
        if builder is None:
            raise ValueError(f"Cannot tell the format of {name!r}; use one of {sorted(_FILE_BUILDERS)}.")
        loaded = datasets.load_dataset(builder, data_files={"train": name})
    elif any((Path(name) / marker).is_file() for marker in ("dataset_dict.json", "state.json")):
        loaded = datasets.load_from_disk(name)  # a folder written by save_to_disk
    else:
        files = list(data_files) if data_files else None
        loaded = datasets.load_dataset(name, config_name, data_files=files)
    if isinstance(loaded, datasets.Dataset):
        loaded = datasets.DatasetDict({"train": loaded})
    loaded = dict(loaded)

    if "train" not in loaded:
        raise ValueError(f"Dataset {name!r} has no 'train' split (found {sorted(loaded)}).")
    if "validation" in splits and "validation" not in loaded:
        if not 0 < validation_split_percentage < 100:
            raise ValueError(f"{name!r} has no validation split and validation_split_percentage is 0.")
        parts = loaded["train"].train_test_split(test_size=validation_split_percentage / 100, seed=seed)
        loaded["train"], loaded["validation"] = parts["train"], parts["test"]
    missing = [s for s in splits if s not in loaded]
    if missing:
        raise ValueError(f"Dataset {name!r} has no split(s) {missing} (found {sorted(loaded)}).")
    return {split: loaded[split] for split in splits}


def group_texts(examples: Mapping[str, list[list[int]]], block_size: int) -> dict[str, list[list[int]]]:
    """Concatenate token lists and cut them into ``block_size`` blocks, dropping the short remainder.

    The standard ``group_texts`` of transformers' ``run_clm.py``, for ``Dataset.map(batched=True)``.
    ``labels`` are a copy of ``input_ids``; causal-LM heads shift them internally.
    """
    keys = [k for k in examples if k != "labels"]
    concatenated = {k: [t for seq in examples[k] for t in seq] for k in keys}
    total = (len(concatenated[keys[0]]) // block_size) * block_size
    blocks = {
        k: [v[i : i + block_size] for i in range(0, total, block_size)] for k, v in concatenated.items()
    }
    blocks["labels"] = [list(b) for b in blocks["input_ids"]]
    return blocks


# ----------------------------------------------------------------------------------------------
# Accelerator, optimiser, schedule
# ----------------------------------------------------------------------------------------------


def make_accelerator(args: TrainingLoopArguments) -> Accelerator:
    """An ``Accelerator`` with TensorBoard under ``output_dir/runs`` and a seeded, resumable data order."""
    project = ProjectConfiguration(
        project_dir=args.output_dir, logging_dir=os.path.join(args.output_dir, "runs")
    )
    # Several processes (torchrun / `accelerate launch --multi_gpu`) on a machine without an
    # accelerator: accelerate only forms a gloo process group when told it runs on CPU; otherwise
    # every process would silently train alone.
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    cpu_ddp = world_size > 1 and not torch.accelerator.is_available()
    accelerator = Accelerator(
        cpu=cpu_ddp,
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        mixed_precision=args.mixed_precision,
        log_with="tensorboard" if args.report_to == "tensorboard" else None,
        project_config=project,
        # The sampler's order is a function of (data_seed, epoch) only: identical on every process
        # and after a resume.
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=args.seed),
        # The schedule counts optimizer steps, whatever the number of processes.
        step_scheduler_with_optimizer=False,
    )
    if accelerator.num_processes != world_size:
        raise RuntimeError(
            f"WORLD_SIZE={world_size} processes were launched but accelerate formed a group of "
            f"{accelerator.num_processes}; check the launcher's settings."
        )
    set_seed(args.seed)  # model initialisation
    return accelerator


def build_optimizer(model: nn.Module, args: TrainingLoopArguments) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices and embeddings only — GPT-1 §4.1's "modified L2
    regularization ... on all non bias or gain weights" (nanoGPT's rule: decay iff ``dim >= 2``)."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": args.weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(
        groups, lr=args.learning_rate, betas=(args.adam_beta1, args.adam_beta2), eps=args.adam_epsilon
    )


def build_scheduler(optimizer: torch.optim.Optimizer, args: TrainingLoopArguments) -> Any:
    """transformers' ``get_scheduler`` over ``max_steps`` optimizer steps."""
    return get_scheduler(
        args.lr_scheduler_type,
        optimizer,
        num_warmup_steps=args.warmup_steps,
        num_training_steps=args.max_steps,
        scheduler_specific_kwargs=args.lr_scheduler_kwargs,
    )


def micro_batch_seed(seed: int, step: int, micro_step: int, process_index: int) -> int:
    """The torch seed of one micro-batch: a hash of where it sits in training, not of what ran before."""
    return int(np.random.SeedSequence([seed, step, micro_step, process_index]).generate_state(1)[0])


# ----------------------------------------------------------------------------------------------
# Checkpoints
# ----------------------------------------------------------------------------------------------


def list_checkpoints(output_dir: str | os.PathLike[str]) -> list[Path]:
    """Complete checkpoints in ``output_dir``, oldest first (temporary folders are never listed)."""
    root = Path(output_dir)
    if not root.is_dir():
        return []
    found = []
    for path in root.iterdir():
        match = re.fullmatch(rf"{CHECKPOINT_PREFIX}(\d+)", path.name)
        if match and path.is_dir() and (path / _STATE_FILE).is_file():
            found.append((int(match.group(1)), path))
    return [path for _, path in sorted(found)]


def latest_checkpoint(output_dir: str | os.PathLike[str]) -> Path | None:
    checkpoints = list_checkpoints(output_dir)
    return checkpoints[-1] if checkpoints else None


def save_checkpoint(
    accelerator: Accelerator,
    output_dir: str | os.PathLike[str],
    step: int,
    state: Mapping[str, Any] | None = None,
    save_total_limit: int = 2,
) -> Path:
    """``accelerator.save_state`` into ``output_dir/checkpoint-<step>``, atomically.

    Every process writes into ``.tmp-checkpoint-<step>`` (weights, optimizer, scheduler, its RNG
    state); then the main process adds ``trainer_state.json`` and renames the folder into place, and
    deletes all but the newest ``save_total_limit`` checkpoints. A crash at any point leaves either
    the previous checkpoints or the new complete one.
    """
    root = Path(output_dir)
    final = root / f"{CHECKPOINT_PREFIX}{step}"
    tmp = root / f"{_TMP_PREFIX}{CHECKPOINT_PREFIX}{step}"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)  # a leftover from an interrupted save
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        payload = {"step": step, **(state or {})}
        (tmp / _STATE_FILE).write_text(json.dumps(payload, indent=2) + "\n")
        if final.exists():  # the same step saved again (e.g. a finished run started once more)
            shutil.rmtree(final)
        os.replace(tmp, final)
        for old in list_checkpoints(root)[:-save_total_limit]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def resume_state(accelerator: Accelerator, args: TrainingLoopArguments) -> dict[str, Any]:
    """Load the checkpoint ``args.resume_from_checkpoint`` points to, if any; return its trainer state
    (``{"step": 0}`` for a fresh start)."""
    choice = args.resume_from_checkpoint
    if choice.lower() in ("no", "none", "false", ""):
        stale = latest_checkpoint(args.output_dir)
        if stale is not None:  # they would be mixed with (and rotate out) the new run's checkpoints
            raise ValueError(
                f"resume_from_checkpoint={choice!r} but {args.output_dir} holds checkpoints of an earlier run "
                f"({stale.name}); choose another output_dir or delete them."
            )
        return {"step": 0}
    if choice.lower() == "auto":
        path = latest_checkpoint(args.output_dir)
        if path is None:
            return {"step": 0}
    else:
        path = Path(choice)
        if not (path / _STATE_FILE).is_file():
            raise ValueError(
                f"resume_from_checkpoint={choice!r} is not a checkpoint folder (no {_STATE_FILE})."
            )
    accelerator.load_state(str(path))
    state = json.loads((path / _STATE_FILE).read_text())
    accelerator.print(f"Resumed from {path} (step {state['step']}).")
    return state


# ----------------------------------------------------------------------------------------------
# The loop
# ----------------------------------------------------------------------------------------------

#: ``loss_fn(model, batch)`` returns the scalar loss, or ``(loss, {name: scalar tensor})`` of extra
#: metrics to log (e.g. an MoE auxiliary loss).
LossFn = Callable[
    [nn.Module, dict[str, torch.Tensor]], "torch.Tensor | tuple[torch.Tensor, dict[str, torch.Tensor]]"
]


@dataclass
class TrainResult:
    model: nn.Module  # the prepared (possibly DDP-wrapped) model; save it with ``save_final``
    step: int
    train_loss: float | None  # mean over the last logging interval
    eval_loss: float | None
    history: list[dict[str, float]]  # what was logged, step by step (this session only)
    train_seconds: float = 0.0  # training time of this session on ``args.train_clock`` (pauses excluded)


def _release(dataloader: Any) -> None:
    end = getattr(dataloader, "end", None)  # accelerate's DataLoaderShard / DataLoaderDispatcher
    if callable(end):
        end()


def _split_loss(output: Any) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    return output if isinstance(output, tuple) else (output, {})


@torch.no_grad()
def evaluate(
    accelerator: Accelerator,
    model: nn.Module,
    dataloader: Iterable[dict[str, torch.Tensor]],
    loss_fn: LossFn,
    max_batches: int | None = None,
) -> dict[str, float]:
    """Mean loss over the (prepared) ``dataloader`` across processes, and its perplexity."""
    was_training = model.training
    model.eval()
    losses = []
    for index, batch in enumerate(dataloader):
        if max_batches is not None and index >= max_batches:
            # An accelerate loader left early stays the "active" one for gradient accumulation, which
            # would then miss the end of the training epoch; release it as exhausting it would.
            _release(dataloader)
            break
        loss, _ = _split_loss(loss_fn(model, batch))
        size = next(iter(batch.values())).shape[0]
        losses.append(accelerator.gather_for_metrics(loss.detach().float().repeat(size)))
    model.train(was_training)
    if not losses:
        return {}
    mean = torch.cat(losses).mean().item()
    return {"eval_loss": mean, "eval_perplexity": math.exp(min(mean, 50.0))}


def train_loop(
    accelerator: Accelerator,
    model: nn.Module,
    train_dataloader: torch.utils.data.DataLoader,
    loss_fn: LossFn,
    args: TrainingLoopArguments,
    eval_dataloader: torch.utils.data.DataLoader | None = None,
    *,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any = None,
    tokens_per_batch: Callable[[dict[str, torch.Tensor]], int] | None = None,
    tracker_config: Mapping[str, Any] | None = None,
) -> TrainResult:
    """Train ``model`` for ``args.max_steps`` optimizer steps of ``loss_fn`` over ``train_dataloader``.

    ``model`` and the data loaders are plain (unprepared); the optimizer and schedule default to
    ``build_optimizer``/``build_scheduler``; ``args.max_train_seconds`` may end the run earlier. Resumes
    from a checkpoint as ``args.resume_from_checkpoint`` says, checkpoints every ``save_steps`` and at the
    end, evaluates every ``eval_steps`` and at the end.
    Returns the prepared model with the last logged losses. Call ``accelerator.end_training()`` last of
    all (after ``save_final``): it closes the trackers and the process group.
    """
    optimizer = optimizer or build_optimizer(model, args)
    scheduler = scheduler or build_scheduler(optimizer, args)
    prepared = accelerator.prepare(model, optimizer, train_dataloader, scheduler)
    model, optimizer, train_dataloader, scheduler = prepared
    if eval_dataloader is not None:
        eval_dataloader = accelerator.prepare(eval_dataloader)
    tokens_per_batch = tokens_per_batch or (lambda batch: batch["input_ids"].numel())

    batches_per_epoch = len(train_dataloader)
    if batches_per_epoch == 0:
        raise ValueError(
            "The training data gives no full batch per process; use more data or a smaller batch/block size."
        )
    steps_per_epoch = math.ceil(batches_per_epoch / args.gradient_accumulation_steps)

    state = resume_state(accelerator, args)
    step = int(state["step"])
    if args.report_to != "none":
        accelerator.init_trackers(args.run_name, config=dict(tracker_config or {}))

    progress = tqdm(
        total=args.max_steps, initial=step, desc="train", dynamic_ncols=True,
        disable=not accelerator.is_local_main_process,
    )  # fmt: skip
    history: list[dict[str, float]] = []
    last_loss: float | None = None
    eval_metrics: dict[str, float] = {}
    window_loss = torch.zeros((), device=accelerator.device)
    window_micro, window_tokens, window_start = 0, 0, time.perf_counter()
    extra_sums: dict[str, torch.Tensor] = {}
    grad_norm: torch.Tensor | None = None  # before clipping, at the last optimizer step

    def log(values: dict[str, float], at: int) -> None:
        history.append({"step": at, **values})
        if args.report_to != "none":
            accelerator.log(values, step=at)

    def checkpoint(at: int) -> None:
        save_checkpoint(
            accelerator, args.output_dir, at, {"epoch": at // steps_per_epoch}, args.save_total_limit
        )

    clock = time.process_time if args.train_clock == "process" else time.perf_counter
    clock_start, clock_paused = clock(), 0.0  # training time = clock() - clock_start - clock_paused

    model.train()
    epoch = step // steps_per_epoch
    out_of_time = False
    while step < args.max_steps and not out_of_time:
        # Resume mid-epoch: the same permutation as the uninterrupted run, minus the consumed batches.
        skip = (step - epoch * steps_per_epoch) * args.gradient_accumulation_steps
        loader = accelerator.skip_first_batches(train_dataloader, skip) if skip else train_dataloader
        loader.set_epoch(epoch)
        sampler = train_dataloader.get_sampler()  # shared with the skipping loader's batch sampler
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)
        micro = 0
        for batch in loader:
            torch.manual_seed(micro_batch_seed(args.seed, step, micro, accelerator.process_index))
            with accelerator.accumulate(model):
                loss, extras = _split_loss(loss_fn(model, batch))
                accelerator.backward(loss)
                if accelerator.sync_gradients and args.max_grad_norm > 0:
                    grad_norm = accelerator.clip_grad_norm_(model.parameters(), args.max_grad_norm)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            window_loss += loss.detach().float()
            for key, value in extras.items():
                extra_sums[key] = extra_sums.get(key, 0) + value.detach().float()
            window_micro += 1
            window_tokens += tokens_per_batch(batch)
            micro += 1
            if not accelerator.sync_gradients:
                continue

            # --- one optimizer step done ---
            if not accelerator.optimizer_step_was_skipped:
                scheduler.step()
            step += 1
            micro = 0
            progress.update(1)

            out_of_time = (
                args.max_train_seconds is not None
                and clock() - clock_start - clock_paused >= args.max_train_seconds
            )
            if args.max_train_seconds is not None and accelerator.num_processes > 1:  # stop together
                flag = torch.tensor(float(out_of_time), device=accelerator.device)
                out_of_time = bool(accelerator.reduce(flag, "max").item())
            final = step == args.max_steps or out_of_time
            if step % args.logging_steps == 0 or final:
                means = accelerator.reduce(torch.stack([window_loss, *extra_sums.values()]), "mean")
                means = (means / window_micro).tolist()
                tokens = accelerator.reduce(
                    torch.tensor(window_tokens, device=accelerator.device), "sum"
                ).item()
                last_loss = means[0]
                values = {"train_loss": last_loss, "learning_rate": scheduler.get_last_lr()[0]}
                values.update({f"train_{k}": v for k, v in zip(extra_sums, means[1:])})
                if grad_norm is not None:
                    values["grad_norm"] = float(grad_norm)
                values["tokens_per_second"] = tokens / max(time.perf_counter() - window_start, 1e-9)
                log(values, step)
                progress.set_postfix(loss=f"{last_loss:.3f}", lr=f"{values['learning_rate']:.2e}")
                window_loss.zero_()
                extra_sums = {}
                window_micro, window_tokens, window_start = 0, 0, time.perf_counter()

            paused, clock_pause_start = time.perf_counter(), clock()
            if eval_dataloader is not None and (final or (args.eval_steps and step % args.eval_steps == 0)):
                eval_metrics = evaluate(accelerator, model, eval_dataloader, loss_fn, args.max_eval_batches)
                if eval_metrics:
                    log(eval_metrics, step)
                    progress.write(
                        f"step {step}: " + ", ".join(f"{k}={v:.4f}" for k, v in eval_metrics.items())
                    )
            if final or (args.save_steps and step % args.save_steps == 0):
                checkpoint(step)
            window_start += time.perf_counter() - paused  # tokens/s counts training only
            clock_paused += clock() - clock_pause_start
            if args.interrupt_at_step is not None and step == args.interrupt_at_step:
                accelerator.print(f"interrupt_at_step={step}: killing this process.", flush=True)
                os.kill(os.getpid(), signal.SIGKILL)
            if final:
                _release(loader)
                break
        epoch += 1

    progress.close()
    return TrainResult(
        model=model, step=step, train_loss=last_loss, eval_loss=eval_metrics.get("eval_loss"), history=history,
        train_seconds=clock() - clock_start - clock_paused,
    )  # fmt: skip


# ----------------------------------------------------------------------------------------------
# The end product
# ----------------------------------------------------------------------------------------------


def save_final(
    accelerator: Accelerator,
    model: nn.Module,
    tokenizer: Any,
    output_dir: str | os.PathLike[str],
    subdir: str = "final",
) -> Path:
    """``save_pretrained`` (safetensors) of the model and tokenizer into ``output_dir/final``, with a
    model card when ``hf_paper_models.cards`` provides one. Written to a temporary folder first."""
    accelerator.wait_for_everyone()
    final = Path(output_dir) / subdir
    tmp = Path(output_dir) / f"{_TMP_PREFIX}{subdir}"
    state_dict = accelerator.get_state_dict(model)  # collective under FSDP/DeepSpeed: every process calls it
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        unwrapped = accelerator.unwrap_model(model)
        unwrapped.save_pretrained(tmp, state_dict=state_dict, safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        _write_model_card(unwrapped, tmp)
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
    accelerator.wait_for_everyone()
    return final


def _write_model_card(model: nn.Module, folder: Path) -> None:
    """A README.md from ``hf_paper_models.cards`` if that module exists (optional)."""
    import importlib.util

    if importlib.util.find_spec("hf_paper_models.cards") is None:
        return
    from . import cards  # type: ignore[attr-defined]

    writer = getattr(cards, "model_card", None) or getattr(cards, "render_card", None)
    if writer is None:
        return
    try:
        text = writer(model.config.model_type)
    except Exception as error:  # a card is a courtesy; never lose a trained model over it
        logger.warning("No model card written: %s", error)
        return
    if isinstance(text, str) and text:
        (folder / "README.md").write_text(text)


# ----------------------------------------------------------------------------------------------
# The model arguments every recipe shares
# ----------------------------------------------------------------------------------------------


@dataclass
class PresetArguments:
    """The size fields (``OVERRIDE_FIELDS``) and ``model_overrides`` the recipes' ``ModelArguments``
    dataclasses share, and their checks; a recipe adds ``preset`` (and may redeclare ``model_overrides``
    with its own help example)."""

    hidden_size: int | None = None
    num_hidden_layers: int | None = None
    num_attention_heads: int | None = None
    intermediate_size: int | None = None
    max_position_embeddings: int | None = None
    model_overrides: dict | str | None = field(
        default=None, metadata={"help": "Any other config fields, as a mapping (YAML) or JSON."}
    )

    OVERRIDE_FIELDS: ClassVar[tuple[str, ...]] = (
        "hidden_size",
        "num_hidden_layers",
        "num_attention_heads",
        "intermediate_size",
        "max_position_embeddings",
    )

    def check_preset(self, auto_class: type | None = None, needs: str = "") -> None:
        """Parse ``model_overrides`` and check that ``preset`` exists (and, given ``auto_class``, that
        its model type has that head; ``needs`` names it in the error) and that every ``model_overrides``
        key is a field of its config (``num_experts`` for a dense T5 would otherwise stay an unused
        attribute, and another model than asked would train)."""
        from hf_paper_models import PRESETS, REGISTRY, preset

        if isinstance(self.model_overrides, str):
            try:
                self.model_overrides = json.loads(self.model_overrides)
            except json.JSONDecodeError as error:
                raise ValueError(f"model_overrides must be a JSON object, got {self.model_overrides!r}") from error
        if self.model_overrides is not None and not isinstance(self.model_overrides, dict):
            raise ValueError(f"model_overrides must be a mapping, got {self.model_overrides!r}")
        if self.preset not in PRESETS:
            raise ValueError(f"Unknown preset {self.preset!r}. Available presets: {', '.join(PRESETS)}.")
        if auto_class is not None and auto_class not in REGISTRY[PRESETS[self.preset]][1]:
            raise ValueError(f"Preset {self.preset!r} ({PRESETS[self.preset]}) {needs}.")
        base = preset(self.preset)
        known = set(base.to_dict()) | set(base.attribute_map)
        unknown = sorted(set(self.model_overrides or {}) - known)
        if unknown:
            raise ValueError(
                f"model_overrides {unknown} are not fields of {base.model_type}'s config (preset "
                f"{self.preset!r}); known fields: {', '.join(sorted(known))}."
            )

    def config_overrides(self) -> dict[str, Any]:
        """The size fields that were set, then ``model_overrides`` on top."""
        values = {k: getattr(self, k) for k in self.OVERRIDE_FIELDS if getattr(self, k) is not None}
        return {**values, **(self.model_overrides or {})}


@dataclass
class EmbeddedFactsArguments:
    """The gazetteer facts the embedded corpus can carry (``hf_paper_models.data.lm_corpus``), shared by
    the recipes' ``DataArguments`` (which have a ``dataset`` field and call ``check_embedded_facts``)."""

    embedded_facts: int = field(
        default=0,
        metadata={"help": "The embedded corpus only: end each document with up to N facts about the "
                          "gazetteer's long tail of towns (0: none)."},
    )
    embedded_fact_towns: int = field(
        default=FACT_TOWNS, metadata={"help": f"Facts about the gazetteer's first N towns only (at most {FACT_TOWNS})."}
    )
    embedded_fact_zipf: float = field(
        default=FACT_ZIPF, metadata={"help": "A town's share of the facts ∝ rank^-s (0: every town equally often)."}
    )
    embedded_fact_town_tokens: bool = field(
        default=False,
        metadata={"help": "Give each town the facts name one token of its own, as in a word-level "
                          "vocabulary; the vocabulary grows by embedded_fact_towns."},
    )

    def check_embedded_facts(self) -> None:
        name = type(self).__name__
        if self.embedded_facts < 0:
            raise ValueError(f"{name}: `embedded_facts` must be >= 0, got {self.embedded_facts}.")
        if self.embedded_facts and self.dataset != "embedded":
            raise ValueError(
                f"{name}: `embedded_facts` adds to the embedded corpus only, not to dataset={self.dataset!r}."
            )
        if not 1 <= self.embedded_fact_towns <= FACT_TOWNS:
            raise ValueError(f"{name}: `embedded_fact_towns` must be 1 to {FACT_TOWNS}, got {self.embedded_fact_towns}.")
        if not (self.embedded_fact_zipf >= 0 and math.isfinite(self.embedded_fact_zipf)):
            raise ValueError(f"{name}: `embedded_fact_zipf` must be a finite number >= 0, got {self.embedded_fact_zipf}.")
        if self.embedded_fact_town_tokens and not self.embedded_facts:
            raise ValueError(f"{name}: `embedded_fact_town_tokens` needs facts to name the towns (embedded_facts > 0).")

    def add_town_tokens(self, tokenizer: Any) -> None:
        """With ``embedded_fact_town_tokens``: each town the facts name becomes one token, matched as a whole
        word only (so "Late" takes nothing from "Later"; the space before it stays a token of its own),
        appended to ``tokenizer`` in the gazetteer's order (a token already there is skipped). The recipes
        call it on the tokenizer they train, before saving the run's copy that every process and a resumed
        run load."""
        if not self.embedded_fact_town_tokens:
            return
        from tokenizers import AddedToken

        from hf_paper_models.data.corpus import gazetteer

        towns = gazetteer()[0][: self.embedded_fact_towns]
        tokenizer.add_tokens([AddedToken(town, single_word=True, normalized=False) for town in towns])

    def embedded_corpus(self, split: str, num_documents: int | None) -> Any:
        """The embedded corpus's ``split`` as a ``datasets.Dataset``, with these facts."""
        from hf_paper_models.data import lm_dataset

        return lm_dataset(split, num_documents=num_documents, facts=self.embedded_facts,
                          fact_towns=self.embedded_fact_towns, fact_zipf=self.embedded_fact_zipf)  # fmt: skip


def routing_metrics(out: Any) -> dict[str, torch.Tensor]:
    """The routing statistics of a mixture-of-experts model's output, as scalars to log; ``{}`` for a
    dense model. ``aux_loss``: the weighted auxiliary loss (what training adds to the loss);
    ``importance_loss`` / ``load_loss``: the MoE-LSTM's unweighted balancing losses, when the output has
    them; ``load_balancing_loss``: the Switch layers' unweighted load-balancing part, summed over the
    layers, when the output has it (N · Σ f_i · P_i, 1 per layer when balanced); ``expert_load_min`` / ``expert_load_max``: the
    least and most loaded expert's share of each MoE layer's tokens, averaged over the layers
    (``expert_load`` is (layers, experts) or (experts,)); ``dropped_fraction``: the share of tokens no
    expert processed, averaged over the layers."""
    aux = getattr(out, "aux_loss", None)
    if aux is None:
        return {}
    metrics = {"aux_loss": aux.detach().float()}
    for name in ("importance_loss", "load_loss"):  # the MoE-LSTM's unweighted parts (Shazeer et al. §4)
        if getattr(out, name, None) is not None:
            metrics[name] = getattr(out, name).detach().float()
    parts = [getattr(out, f"{stack}_aux_loss", None) for stack in ("encoder", "decoder")]
    if any(p is not None for p in parts):
        metrics["load_balancing_loss"] = sum(p.detach().float() for p in parts if p is not None)
    load = getattr(out, "expert_load", None)
    if load is not None:
        load = load.detach().float().reshape(-1, load.shape[-1])
        metrics["expert_load_min"] = load.min(-1).values.mean()
        metrics["expert_load_max"] = load.max(-1).values.mean()
    dropped = getattr(out, "dropped_fraction", None)
    if dropped is not None:
        metrics["dropped_fraction"] = dropped.detach().float().mean()
    return metrics
