"""Predictable scaling (GPT-4 technical report, §3): predict a run's final loss from much smaller runs.

The report fits "a scaling law with an irreducible loss term (as in Henighan et al.)",
``L(C) = a·C^b + c``, to models "trained using the same methodology but using at most 10,000x less
compute than GPT-4", and predicts the big run's final loss before it is trained. Here:

- ``fit_power_law``: the least-squares fit of ``L(C) = a·C^b + c`` with ``a > 0``, ``b < 0`` and
  ``0 <= c < min(L)``. For a fixed exponent ``b`` the model is linear in ``(a, c)``, so each ``b`` has an
  exact linear least-squares answer; the loss is then minimised over ``b`` alone (a grid, then golden
  section). Noise-free points of a power law give back its ``(a, b, c)`` to float precision.
- ``model_flops``: training compute ``C ≈ 6·N·D`` with ``N`` the non-embedding parameters and ``D`` the
  training tokens (Kaplan et al. 2020, §2.1: embeddings — token and position tables, and a tied output
  head — are left out of ``N``); ``count_output_layer`` adds the output layer's weights to ``N``, whose
  matmul is compute like any other layer's (Hoffmann et al. 2022 count it).
- ``plan_ladder``: the small runs, spread geometrically over ``[min_fraction, max_fraction]`` of the
  target's compute; each rung's size is ``N_target · fraction^size_exponent`` (by default 0.5: parameters and
  tokens grow together, Hoffmann et al. 2022; Kaplan et al. 2020's 0.73 shrinks the small runs to the
  smallest shape at this scale, where their losses bend off the power law), the nearest shape of the
  same head width and at least ``min_layers`` layers, its tokens make up the rest of the compute, and
  each rung is trained from ``rung_seeds`` seeds.
- ``run_ladder`` / ``predict_then_train`` / ``run_scaling``: every run is the causal-LM recipe
  (``training/pretrain_lm.py``'s data, tokenizer and loss, ``training_utils.train_loop``) with the same
  tokenizer, peak learning rate, number of optimiser steps (``equal_steps``: the batch grows with a
  run's tokens) and schedule (warm-up, then cosine to the end of the run); its final loss is measured
  on one fixed validation set. The prediction is written to ``prediction.json`` before the target
  starts training.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = [
    "QUICK",
    "PowerLawFit",
    "ScalingRun",
    "ScalingSettings",
    "fit_power_law",
    "model_flops",
    "non_embedding_parameters",
    "plan_ladder",
    "plot_scaling",
    "predict_then_train",
    "run_ladder",
    "run_scaling",
    "fit_ladder",
    "holdout_runs",
    "parse_shape",
    "target_run",
    "train_run",
]


# ----------------------------------------------------------------------------------------------
# The fit
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PowerLawFit:
    """``L(C) = a·C^b + c``: ``c`` is the irreducible loss, ``b < 0`` the exponent."""

    a: float
    b: float
    c: float
    rmse: float = 0.0  # root-mean-square residual on the fitted points, in loss units

    def predict(self, compute: float | Sequence[float] | np.ndarray) -> float | np.ndarray:
        value = self.a * np.asarray(compute, dtype=np.float64) ** self.b + self.c
        return float(value) if value.ndim == 0 else value

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def _fit_fixed_exponent(x: np.ndarray, y: np.ndarray, b: float) -> tuple[float, float, float]:
    """Least squares of ``y = a·x^b + c`` for a fixed ``b``, with ``0 <= c <= ceiling``: ``(sse, a, c)``."""
    basis = x**b
    ceiling = y.min() * (1 - 1e-9)
    design = np.stack([basis, np.ones_like(basis)], axis=1)
    (a, c), *_ = np.linalg.lstsq(design, y, rcond=None)
    if not 0 <= c <= ceiling:  # the optimum lies on a bound: fix c there and solve for a alone
        c = min(max(c, 0.0), ceiling)
        a = float(basis @ (y - c) / (basis @ basis))
    if a <= 0:
        return math.inf, a, c
    residual = a * basis + c - y
    return float(residual @ residual), float(a), float(c)


def fit_power_law(
    compute: Sequence[float],
    loss: Sequence[float],
    *,
    exponent_range: tuple[float, float] = (-2.0, -1e-4),
    grid: int = 400,
) -> PowerLawFit:
    """Fit ``L(C) = a·C^b + c`` (``a > 0``, ``b`` in ``exponent_range``, ``0 <= c < min(loss)``) by least
    squares in loss units. ``c`` and ``a`` are exact linear least squares for each ``b``; ``b`` is found on
    a grid uniform in ``log(-b)`` and refined by golden-section search around the best grid point."""
    x = np.asarray(compute, dtype=np.float64)
    y = np.asarray(loss, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"compute and loss must be 1-D and of one length, got {x.shape} and {y.shape}.")
    if len(x) < 3:
        raise ValueError(f"A fit of three parameters needs at least 3 points, got {len(x)}.")
    if not (np.all(np.isfinite(x)) and np.all(x > 0) and np.all(np.isfinite(y)) and np.all(y > 0)):
        raise ValueError("compute and loss must be finite and > 0.")
    if np.corrcoef(np.log(x), y)[0, 1] >= 0:
        raise ValueError("No decreasing power law fits these points (the loss does not fall with compute).")
    low, high = exponent_range
    if not low < high < 0:
        raise ValueError(f"exponent_range must satisfy low < high < 0, got {exponent_range}.")
    scale = float(np.exp(np.log(x).mean()))  # fit on C / scale (geometric mean) for conditioning
    xs = x / scale

    def sse(b: float) -> float:
        return _fit_fixed_exponent(xs, y, b)[0]

    bs = -np.exp(np.linspace(np.log(-high), np.log(-low), grid))[::-1]  # low ... high
    values = [sse(b) for b in bs]
    best = int(np.argmin(values))
    left, right = bs[max(best - 1, 0)], bs[min(best + 1, grid - 1)]
    ratio = (math.sqrt(5) - 1) / 2
    p, q = right - ratio * (right - left), left + ratio * (right - left)
    fp, fq = sse(p), sse(q)
    for _ in range(200):  # golden section: the bracket shrinks by 0.618 per step
        if abs(right - left) <= 1e-13 * max(1.0, abs(left)):
            break
        if fp <= fq:
            right, q, fq = q, p, fp
            p = right - ratio * (right - left)
            fp = sse(p)
        else:
            left, p, fp = p, q, fq
            q = left + ratio * (right - left)
            fq = sse(q)
    candidates = [(values[best], float(bs[best])), (fp, p), (fq, q)]
    _, b = min(candidates)
    total, a, c = _fit_fixed_exponent(xs, y, b)
    if not math.isfinite(total):
        raise ValueError("No decreasing power law fits these points (the loss does not fall with compute).")
    # a·(C/scale)^b = (a·scale^-b)·C^b
    return PowerLawFit(a=float(a * scale ** (-b)), b=float(b), c=float(c), rmse=math.sqrt(total / len(x)))


# ----------------------------------------------------------------------------------------------
# Compute
# ----------------------------------------------------------------------------------------------


def non_embedding_parameters(config: Any) -> int:
    """Parameters of the causal-LM model ``config`` describes, less its embedding tables (token and
    position ``nn.Embedding``s; a tied output head shares the token table and is not counted again; an
    untied one is an embedding too, as in Kaplan et al. 2020). Built on the meta device."""
    from transformers import AutoModelForCausalLM

    import hf_paper_models  # noqa: F401  (registers the model types)

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    embedding = {id(p) for m in model.modules() if isinstance(m, torch.nn.Embedding) for p in m.parameters()}
    output = model.get_output_embeddings()
    if output is not None:
        embedding |= {id(p) for p in output.parameters()}
    return sum(p.numel() for p in model.parameters() if id(p) not in embedding)


def model_flops(config: Any, tokens: float, *, output_layer: bool = False) -> float:
    """Training compute in FLOPs, ``6·N·D`` (Kaplan et al. 2020, §2.1: 2·N per token forward, twice
    that backward), with ``N`` the non-embedding parameters and ``D = tokens``; attention's
    context-dependent term is left out, as there. ``output_layer=True`` adds the output layer's
    ``vocab_size · hidden_size`` to ``N``: its matmul costs FLOPs per token like any other weight's (a
    lookup into the input table costs none), which Kaplan et al. leave out and Hoffmann et al. 2022
    count; at a small width on a large vocabulary it is a large share of the real compute."""
    n = non_embedding_parameters(config)
    if output_layer:
        n += config.vocab_size * config.hidden_size
    return 6.0 * n * float(tokens)


# ----------------------------------------------------------------------------------------------
# Settings and the ladder
# ----------------------------------------------------------------------------------------------


@dataclass
class ScalingSettings:
    """One scaling study: the target model, the ladder below it, and the recipe every run shares."""

    # the target (a GPT-3-style decoder: ``preset`` with these sizes)
    preset: str = "gpt3-small"
    target_hidden: int = 128
    target_layers: int = 4
    target_steps: int = 3000  # the target's tokens: target_steps × batch_size × block_size (3.07M)
    head_dim: int = 16  # every run's heads are this wide: num_attention_heads = hidden / head_dim
    # the ladder
    rungs: int = 9
    min_fraction: float = 1e-3  # of the target's compute
    max_fraction: float = 1 / 30
    size_exponent: float = 0.5  # N_rung = N_target · fraction^size_exponent (Hoffmann et al. 2022)
    min_layers: int = 2  # one-layer models fall off the trend of deeper ones (Kaplan et al. 2020, §3.1)
    min_steps: int = 20
    # every run, the target included, takes this many optimiser steps, its batch grown with its tokens
    # (batch = tokens / (equal_steps · block_size), rounded; GPT-3 too grew the batch with the model). At
    # this scale a run's loss depends on its number of updates as well as its tokens: with one batch for
    # all, the target's 3,000 steps against the smallest rung's 93 put an optimisation gap between
    # them that no law in C describes. 0: one batch (``batch_size``) for every run, steps ∝ tokens.
    equal_steps: int = 750
    # how a run's batch grows with its tokens D: batch = B_T · (D / D_T)^batch_exponent, anchored at the
    # target (D_T tokens in ``equal_steps`` steps of B_T sequences). 1: every run takes ``equal_steps``
    # steps; 0.5: batch and steps both grow as sqrt(D), so a small run is neither step-limited nor
    # left with batches of one or two sequences
    batch_exponent: float = 1.0
    # 0: the target trains on ``target_steps`` × ``batch_size`` × ``block_size`` tokens; > 0: on this many
    # tokens per parameter of N (Hoffmann et al. 2022's compute-optimal rule is about 20)
    tokens_per_parameter: float = 0.0
    # further targets ("WIDTHxLAYERS", comma-separated), each trained on the main target's tokens per
    # parameter of N and predicted by the same fit: every prediction is recorded before any
    # target trains, so each is a held-out check of the fitted law at a compute the design never used
    holdout_targets: tuple[str, ...] = ()
    # count the output layer's vocab_size × hidden weights in N (C = 6·N·D, the rungs' sizes and the
    # tokens per parameter): its matmul is compute like any other layer's (see ``model_flops``)
    count_output_layer: bool = False
    # each rung trained from this many seeds (initialisation and data order: seed, seed + 1, ...); the fit
    # takes every replicate, so its least squares runs through their mean at each compute
    rung_seeds: int = 2
    # the recipe, the same for every run
    block_size: int = 64
    sliding_window: int = 32  # GPT-3's banded layers (§2.1)
    batch_size: int = 16  # every run's batch when equal_steps is 0; the unit of target_steps
    learning_rate: float = 4e-3  # the best of 2e-3 .. 3.2e-2 for most rungs of a sweep
    min_lr_rate: float = 0.1  # cosine down to this share of the peak, at the end of each run
    warmup_fraction: float = 0.05
    min_warmup_steps: int = 5
    weight_decay: float = 0.1
    vocab_size: int = 2048  # byte-level BPE trained on the embedded corpus (GPT-2 §2.2)
    # documents of the embedded corpus (generated: more than its default 4,300 make a longer corpus);
    # 20,000 give about 3M training tokens, one epoch of the default target
    max_documents: int | None = 20_000
    eval_blocks: int = 128  # the fixed validation set: its first blocks
    eval_batch_size: int = 32
    seed: int = 0
    tokenizer_cache_dir: str | None = None
    notes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        for name in ("target_hidden", "target_layers", "target_steps", "head_dim", "rungs", "block_size",
                     "batch_size", "eval_blocks", "min_steps", "min_layers", "rung_seeds"):  # fmt: skip
            if getattr(self, name) < 1:
                raise ValueError(f"ScalingSettings: `{name}` must be >= 1, got {getattr(self, name)!r}.")
        if self.target_hidden % self.head_dim:
            raise ValueError(
                f"ScalingSettings: `target_hidden`={self.target_hidden} is not a multiple of "
                f"`head_dim`={self.head_dim}."
            )
        if not 0 < self.min_fraction < self.max_fraction < 1:
            raise ValueError(
                f"ScalingSettings: need 0 < min_fraction < max_fraction < 1, got {self.min_fraction} "
                f"and {self.max_fraction}."
            )
        if self.equal_steps < 0:
            raise ValueError(f"ScalingSettings: `equal_steps` must be >= 0, got {self.equal_steps}.")
        if self.rungs < 3:
            raise ValueError(f"ScalingSettings: `rungs` must be >= 3 (three parameters), got {self.rungs}.")
        if not 0 <= self.batch_exponent <= 1:
            raise ValueError(
                f"ScalingSettings: `batch_exponent` must be in [0, 1], got {self.batch_exponent}."
            )
        if self.tokens_per_parameter < 0:
            raise ValueError(
                f"ScalingSettings: `tokens_per_parameter` must be >= 0, got {self.tokens_per_parameter}."
            )
        if isinstance(self.holdout_targets, str):
            self.holdout_targets = tuple(t for t in self.holdout_targets.split(",") if t.strip())
        self.holdout_targets = tuple(str(t).strip() for t in self.holdout_targets)
        for shape in self.holdout_targets:
            parse_shape(shape, self.head_dim)

    @property
    def tokens_per_step(self) -> int:
        return self.batch_size * self.block_size


#: A study of seconds that checks the pipeline (``hfpm scaling --quick``, the reproduction's ``--smoke``):
#: far too short to be in the power-law regime, and its ladder spans 1/100 to 1/5 of the target only.
QUICK = dict(
    target_hidden=32, target_layers=2, target_steps=60, head_dim=8, rungs=3, min_fraction=1e-2, max_fraction=0.2,
    min_steps=5, block_size=32, sliding_window=16, batch_size=8, vocab_size=512, max_documents=300,
    eval_blocks=16, min_warmup_steps=2, min_layers=1, equal_steps=0, rung_seeds=1,
)  # fmt: skip


@dataclass
class ScalingRun:
    """One training run of the study (a rung of the ladder, or the target)."""

    name: str
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    steps: int
    tokens: int
    non_embedding_parameters: int
    compute: float  # 6·N·D, N = non_embedding_parameters + output_layer_parameters
    fraction: float = 1.0  # of the target's compute
    final_loss: float | None = None  # on the fixed validation set, after the last step
    train_loss: float | None = None
    train_seconds: float | None = None
    batch_size: int = 16  # sequences per step
    learning_rate: float = 2e-3  # peak
    seed: int = 0  # initialisation and data order
    output_layer_parameters: int = 0  # counted in N only with ``count_output_layer``

    def spec(self) -> dict[str, Any]:
        """What defines the run (not its results)."""
        keys = ("name", "hidden_size", "num_hidden_layers", "num_attention_heads", "steps", "tokens",
                "batch_size", "learning_rate", "seed")  # fmt: skip
        return {k: getattr(self, k) for k in keys}


def run_config(settings: ScalingSettings, hidden: int, layers: int, tokenizer: Any = None) -> Any:
    """The config of one run: ``settings.preset`` at this size, without dropout (every run sees each
    token at most a few times), with the tokenizer's vocabulary and special ids when given."""
    from hf_paper_models import preset

    extra: dict[str, Any] = {"vocab_size": settings.vocab_size}
    if tokenizer is not None:
        extra = {"vocab_size": len(tokenizer), "bos_token_id": tokenizer.bos_token_id,
                 "eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id}  # fmt: skip
    return preset(
        settings.preset,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=hidden // settings.head_dim,
        head_dim=settings.head_dim,
        max_position_embeddings=settings.block_size,
        sliding_window=min(settings.sliding_window, settings.block_size),
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        **extra,
    )


@lru_cache(maxsize=512)
def _shape_parameters(settings_key: str, hidden: int, layers: int) -> int:
    settings = ScalingSettings(**json.loads(settings_key))
    return non_embedding_parameters(run_config(settings, hidden, layers))


def _non_embedding(settings: ScalingSettings, hidden: int, layers: int) -> int:
    keys = ("preset", "head_dim", "block_size", "sliding_window", "vocab_size")
    key = json.dumps({k: getattr(settings, k) for k in keys}, sort_keys=True)
    return _shape_parameters(key, hidden, layers)


def _output_layer(settings: ScalingSettings, hidden: int) -> int:
    return settings.vocab_size * hidden if settings.count_output_layer else 0


def _parameters(settings: ScalingSettings, hidden: int, layers: int) -> int:
    """The study's ``N`` of a shape: non-embedding parameters, plus the output layer's if counted."""
    return _non_embedding(settings, hidden, layers) + _output_layer(settings, hidden)


def parse_shape(shape: str, head_dim: int) -> tuple[int, int]:
    """``"WIDTHxLAYERS"`` → ``(width, layers)``; the width a multiple of ``head_dim``."""
    try:
        hidden, layers = (int(v) for v in shape.lower().split("x"))
    except ValueError:
        raise ValueError(f"A target shape is 'WIDTHxLAYERS' (e.g. '112x4'), got {shape!r}.") from None
    if hidden < 1 or layers < 1 or hidden % head_dim:
        raise ValueError(
            f"Target shape {shape!r}: width and layers must be >= 1 and the width a multiple of head_dim={head_dim}."
        )
    return hidden, layers


def _target_tokens(settings: ScalingSettings) -> float:
    """The main target's training tokens (before rounding to whole steps)."""
    if settings.tokens_per_parameter:
        n = _parameters(settings, settings.target_hidden, settings.target_layers)
        return settings.tokens_per_parameter * n
    return float(settings.target_steps * settings.tokens_per_step)


def target_run(settings: ScalingSettings, shape: str | None = None, name: str = "target") -> ScalingRun:
    """The run whose loss the ladder predicts: the main target, or (``shape``, "WIDTHxLAYERS") a held-out
    target trained on the main target's tokens per non-embedding parameter."""
    hidden, layers = settings.target_hidden, settings.target_layers
    tokens = _target_tokens(settings)
    if shape is not None:
        ratio = tokens / _parameters(settings, hidden, layers)
        hidden, layers = parse_shape(shape, settings.head_dim)
        tokens = ratio * _parameters(settings, hidden, layers)
    n = _parameters(settings, hidden, layers)
    steps, batch = _steps_and_batch(settings, tokens, 1)
    tokens = steps * batch * settings.block_size
    return ScalingRun(
        name=name, hidden_size=hidden, num_hidden_layers=layers,
        num_attention_heads=hidden // settings.head_dim, steps=steps, tokens=tokens,
        non_embedding_parameters=_non_embedding(settings, hidden, layers), compute=6.0 * n * tokens,
        batch_size=batch, learning_rate=settings.learning_rate, seed=settings.seed,
        output_layer_parameters=_output_layer(settings, hidden),
    )  # fmt: skip


def holdout_runs(settings: ScalingSettings) -> list[ScalingRun]:
    """The held-out targets (``settings.holdout_targets``), named ``target-WIDTHxLAYERS``."""
    return [target_run(settings, shape, name=f"target-{shape}") for shape in settings.holdout_targets]


def _steps_and_batch(settings: ScalingSettings, tokens: float, min_steps: int) -> tuple[int, int]:
    """Steps and sequences per step of a run of about ``tokens`` training tokens (see ``equal_steps``
    and ``batch_exponent``)."""
    batch = settings.batch_size
    if settings.equal_steps:
        target_tokens = _target_tokens(settings)
        target_batch = target_tokens / (settings.equal_steps * settings.block_size)
        batch = max(1, round(target_batch * (tokens / target_tokens) ** settings.batch_exponent))
    return max(min_steps, round(tokens / (batch * settings.block_size))), batch


def plan_ladder(settings: ScalingSettings) -> list[ScalingRun]:
    """``settings.rungs`` runs at compute fractions spaced geometrically from ``min_fraction`` to
    ``max_fraction`` of the target's. Each takes the shape (width a multiple of ``head_dim`` up to the
    target's, ``min_layers`` to the target's depth) whose non-embedding size is nearest, in log, to
    ``N_target · fraction^size_exponent`` (ties: the depth-to-width ratio nearest the target's), and the
    number of steps that makes up its compute (at least ``min_steps``, which may overshoot the fraction
    for a tiny target; the returned ``fraction`` is the real one)."""
    target = target_run(settings)
    shapes = [
        (hidden, layers, _parameters(settings, hidden, layers))
        for hidden in range(settings.head_dim, settings.target_hidden + 1, settings.head_dim)
        for layers in range(settings.min_layers, settings.target_layers + 1)
    ]
    aspect = math.log(settings.target_hidden / settings.target_layers)
    fractions = np.geomspace(settings.min_fraction, settings.max_fraction, settings.rungs)
    runs = []
    for i, fraction in enumerate(fractions):
        wanted = math.log(_parameters(settings, target.hidden_size, target.num_hidden_layers)
                          * fraction**settings.size_exponent)  # fmt: skip
        hidden, layers, n = min(
            shapes,
            key=lambda s: (round(abs(math.log(s[2]) - wanted), 6), abs(math.log(s[0] / s[1]) - aspect)),
        )
        steps, batch = _steps_and_batch(settings, fraction * target.compute / (6.0 * n), settings.min_steps)
        tokens = steps * batch * settings.block_size
        runs.extend(
            ScalingRun(
                name=f"rung{i}" if replicate == 0 else f"rung{i}-seed{settings.seed + replicate}",
                hidden_size=hidden,
                num_hidden_layers=layers,
                num_attention_heads=hidden // settings.head_dim,
                steps=steps,
                tokens=tokens,
                non_embedding_parameters=_non_embedding(settings, hidden, layers),
                output_layer_parameters=_output_layer(settings, hidden),
                compute=6.0 * n * tokens,
                fraction=6.0 * n * tokens / target.compute,
                batch_size=batch,
                learning_rate=settings.learning_rate,
                seed=settings.seed + replicate,
            )  # fmt: skip
            for replicate in range(settings.rung_seeds)
        )
    return runs


# ----------------------------------------------------------------------------------------------
# Training the runs (the causal-LM recipe's pieces)
# ----------------------------------------------------------------------------------------------


@dataclass
class ScalingData:
    """What every run shares: the tokenizer, the training blocks (in one seeded order) and the fixed
    validation blocks."""

    tokenizer: Any
    train: Any
    validation: Any


def load_data(settings: ScalingSettings) -> ScalingData:
    """The embedded corpus, tokenized and chunked by the causal-LM recipe (``build_datasets``)."""
    from hf_paper_models.demo import load_pretrain_recipe
    from hf_paper_models.tokenizers import get_tokenizer

    recipe = load_pretrain_recipe()
    tokenizer = get_tokenizer(
        "byte_bpe", vocab_size=settings.vocab_size, cache_dir=settings.tokenizer_cache_dir,
        model_max_length=settings.block_size,
    )  # fmt: skip
    data_args = recipe.DataArguments(block_size=settings.block_size, max_documents=settings.max_documents)
    blocks = recipe.build_datasets(data_args, tokenizer, settings.seed)
    validation = blocks["validation"]
    if len(validation) < settings.eval_blocks:
        raise ValueError(
            f"eval_blocks={settings.eval_blocks} but the validation split holds {len(validation)} blocks of "
            f"{settings.block_size} tokens."
        )
    return ScalingData(tokenizer, blocks["train"], validation.select(range(settings.eval_blocks)))


def train_run(
    run: ScalingRun, settings: ScalingSettings, data: ScalingData, output_dir: str | os.PathLike
) -> ScalingRun:
    """Train ``run`` from scratch with ``training_utils.train_loop`` and the recipe's causal-LM loss;
    return it with its final validation loss. Same seed (initialisation and data order), batch,
    learning rate and schedule family for every run; the cosine ends at the run's last step."""
    from torch.utils.data import DataLoader
    from transformers import AutoModelForCausalLM, default_data_collator

    from hf_paper_models.demo import load_pretrain_recipe

    from .training_utils import TrainingLoopArguments, make_accelerator, train_loop

    recipe = load_pretrain_recipe()
    folder = Path(output_dir)
    shutil.rmtree(folder, ignore_errors=True)  # a run always starts afresh
    args = TrainingLoopArguments(
        output_dir=str(folder), seed=run.seed, per_device_train_batch_size=run.batch_size,
        per_device_eval_batch_size=settings.eval_batch_size, learning_rate=run.learning_rate,
        weight_decay=settings.weight_decay, lr_scheduler_type="cosine_with_min_lr",
        lr_scheduler_kwargs={"min_lr_rate": settings.min_lr_rate},
        warmup_steps=max(settings.min_warmup_steps, round(settings.warmup_fraction * run.steps)),
        max_steps=run.steps, logging_steps=max(1, run.steps // 10), eval_steps=0, save_steps=0,
        save_total_limit=1, resume_from_checkpoint="no", report_to="none",
    )  # fmt: skip
    accelerator = make_accelerator(args)  # seeds the initialisation
    model = AutoModelForCausalLM.from_config(
        run_config(settings, run.hidden_size, run.num_hidden_layers, data.tokenizer)
    )
    train_loader = DataLoader(
        data.train,
        batch_size=run.batch_size,
        shuffle=True,
        drop_last=True,
        collate_fn=default_data_collator,
    )
    eval_loader = DataLoader(
        data.validation, batch_size=settings.eval_batch_size, collate_fn=default_data_collator
    )
    result = train_loop(accelerator, model, train_loader, recipe.causal_lm_loss, args, eval_loader)
    shutil.rmtree(folder, ignore_errors=True)  # the end-of-run checkpoint; only the loss is kept
    return replace(
        run, final_loss=result.eval_loss, train_loss=result.train_loss, train_seconds=result.train_seconds
    )


def run_ladder(
    runs: Sequence[ScalingRun], settings: ScalingSettings, data: ScalingData, output_dir: str | os.PathLike
) -> list[ScalingRun]:
    """Train each rung (smallest first). A rung whose ``output_dir/<name>.json`` records the same run
    and the same settings is read back instead of retrained, so an interrupted study picks up."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    settings_record = _recipe_record(settings)
    done = []
    for run in runs:
        record = out / f"{run.name}.json"
        if record.is_file():
            saved = json.loads(record.read_text())
            if saved.get("spec") == run.spec() and saved.get("settings") == settings_record:
                done.append(ScalingRun(**saved["run"]))
                print(f"[scaling] {run.name}: reused {record} (loss {saved['run']['final_loss']:.4f})")
                continue
        print(f"[scaling] {run.name}: d={run.hidden_size} L={run.num_hidden_layers} N={run.non_embedding_parameters:,} "
              f"steps={run.steps} batch={run.batch_size} lr={run.learning_rate:.3g} C={run.compute:.3g} "
              f"({run.fraction:.2%} of the target)")  # fmt: skip
        trained = train_run(run, settings, data, out / run.name)
        record.write_text(
            json.dumps({"spec": run.spec(), "settings": settings_record, "run": asdict(trained)}, indent=2)
        )
        done.append(trained)
    return done


def _recipe_record(settings: ScalingSettings) -> dict[str, Any]:
    """The settings that change a run's outcome (not the ladder's layout)."""
    skip = {"rungs", "min_fraction", "max_fraction", "size_exponent", "min_layers", "min_steps",
            "equal_steps", "batch_size", "learning_rate", "rung_seeds", "batch_exponent",
            "tokens_per_parameter", "holdout_targets", "count_output_layer",
            "target_hidden", "target_layers", "target_steps", "notes", "tokenizer_cache_dir"}  # fmt: skip
    return {k: v for k, v in asdict(settings).items() if k not in skip}


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def predict_then_train(
    target: ScalingRun,
    fit: PowerLawFit,
    settings: ScalingSettings,
    data: ScalingData,
    output_dir: str | os.PathLike,
    train: Callable[..., ScalingRun] = train_run,
    holdouts: Sequence[ScalingRun] = (),
) -> dict[str, Any]:
    """Write the fit's prediction of the target's final loss (and of each held-out target's) to
    ``output_dir/prediction.json``, then (only then) train the targets, and return the prediction, the
    measured loss and the relative error ``|predicted - actual| / actual`` of each (the held-out ones
    under ``"holdouts"``). Each target's outcome is added to ``output_dir/measured.json`` as it
    finishes, so an interrupted study keeps the targets already trained."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    predicted = fit.predict(target.compute)
    prediction = {"predicted_loss": predicted, "target": target.spec(), "target_compute": target.compute,
                  "fit": fit.to_dict(), "recorded_at": _now(),
                  "holdouts": [{"predicted_loss": fit.predict(h.compute), "target": h.spec(),
                                "target_compute": h.compute} for h in holdouts]}  # fmt: skip
    (out / "prediction.json").write_text(json.dumps(prediction, indent=2) + "\n")
    for run in (target, *holdouts):
        print(f"[scaling] prediction for {run.name} (C={run.compute:.3g}): loss {fit.predict(run.compute):.4f}, "
              f"recorded in {out / 'prediction.json'} before training it")  # fmt: skip

    measured: list[dict[str, Any]] = []

    def measure(run: ScalingRun) -> dict[str, Any]:
        expected = fit.predict(run.compute)
        started = _now()
        trained = train(run, settings, data, out / run.name)
        actual = trained.final_loss
        outcome = {"predicted_loss": expected, "actual_loss": actual,
                   "relative_error": abs(expected - actual) / actual, "target_started_at": started,
                   "target_finished_at": _now(), "target": asdict(trained)}  # fmt: skip
        measured.append(outcome)  # each target's result on disk as soon as it is known
        (out / "measured.json").write_text(json.dumps(measured, indent=2) + "\n")
        return outcome

    outcome = measure(target)
    outcome["prediction_recorded_at"] = prediction["recorded_at"]
    outcome["holdouts"] = [measure(h) for h in holdouts]
    return outcome


def plot_scaling(result: dict[str, Any], path: str | os.PathLike) -> Path:
    """Log-log compute vs final loss: the ladder, the fit extended past the target, the prediction and
    the target's measured loss."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fit = PowerLawFit(**result["fit"])
    ladder = result["ladder"]
    target = result["target"]
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    holdouts = result.get("holdouts", [])
    top = max([target["compute"]] + [h["target"]["compute"] for h in holdouts])
    xs = np.geomspace(min(r["compute"] for r in ladder) / 2, top * 3, 200)
    ax.plot(xs, fit.predict(xs), "-", color="C0", alpha=0.8,
            label=f"fit L = {fit.a:.3g}·C^{fit.b:.3f} + {fit.c:.3f}")  # fmt: skip
    if fit.c > 0:  # (none to draw on a log axis when the fit puts it at 0)
        ax.axhline(fit.c, color="gray", ls=":", lw=1, label=f"irreducible loss c = {fit.c:.3f}")
    ax.plot([r["compute"] for r in ladder], [r["final_loss"] for r in ladder], "o", color="C0",
            label="ladder (fitted)")  # fmt: skip
    ax.plot([target["compute"]], [result["predicted_loss"]], "s", mfc="none", mec="C3", ms=10,
            label=f"predicted {result['predicted_loss']:.4f}")  # fmt: skip
    if result.get("actual_loss") is not None:
        ax.plot(
            [target["compute"]],
            [result["actual_loss"]],
            "*",
            color="C3",
            ms=12,
            label=f"target, measured {result['actual_loss']:.4f} (error {100 * result['relative_error']:.2f}%)",
        )
    for i, h in enumerate(holdouts):
        color = f"C{4 + i}"
        ax.plot([h["target"]["compute"]], [h["predicted_loss"]], "s", mfc="none", mec=color, ms=9)
        ax.plot([h["target"]["compute"]], [h["actual_loss"]], "*", color=color, ms=11,
                label=f"held-out {h['target']['name']}: predicted {h['predicted_loss']:.3f}, measured "
                      f"{h['actual_loss']:.3f} ({100 * h['relative_error']:.2f}%)")  # fmt: skip
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("training compute C = 6·N·D (FLOPs, non-embedding N)")
    ax.set_ylabel("final validation loss (nats/token)")
    ax.set_title("Predictable scaling (GPT-4 report §3)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=120)
    plt.close(fig)
    return Path(path)


def _compute_convention(settings: ScalingSettings) -> str:
    if settings.count_output_layer:
        return "C = 6·N·D, N = non-embedding parameters + the output layer's vocab × width, D = training tokens"
    return "C = 6·N·D, N = non-embedding parameters (Kaplan et al. 2020), D = training tokens"


def fit_ladder(settings: ScalingSettings, output_dir: str | os.PathLike) -> dict[str, Any]:
    """The ladder alone: train it (or read back its records) and fit ``L(C)``; no target is planned for
    training, nothing predicted. For looking at a design's ladder before spending a target on it."""
    started = time.perf_counter()
    ladder = run_ladder(plan_ladder(settings), settings, load_data(settings), Path(output_dir) / "runs")
    fit = fit_power_law([r.compute for r in ladder], [r.final_loss for r in ladder])
    return {
        "compute_convention": _compute_convention(settings), "fit": fit.to_dict(),
        "ladder": [asdict(r) for r in ladder], "seconds": time.perf_counter() - started,
        "settings": asdict(settings),
    }  # fmt: skip


def run_scaling(
    settings: ScalingSettings, output_dir: str | os.PathLike, name: str = "scaling"
) -> dict[str, Any]:
    """The whole study: plan and train the ladder, fit ``L(C)``, predict the target, train it, and write
    ``output_dir/<name>.json`` and ``<name>.png``. Returns the JSON's content."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    target = target_run(settings)
    plan = plan_ladder(settings)
    data = load_data(settings)
    ladder = run_ladder(plan, settings, data, out / "runs")
    fit = fit_power_law([r.compute for r in ladder], [r.final_loss for r in ladder])
    print(f"[scaling] fit: L(C) = {fit.a:.4g}·C^{fit.b:.4f} + {fit.c:.4f} (rmse {fit.rmse:.4f})")
    outcome = predict_then_train(target, fit, settings, data, out, holdouts=holdout_runs(settings))
    epochs = target.tokens / (len(data.train) * settings.block_size)
    result = {
        "name": name,
        "claim": "the fit on the ladder predicts the target's final loss within 3% (|pred - actual| / actual <= 0.03)",
        "compute_convention": _compute_convention(settings),
        **outcome,
        "fit": fit.to_dict(),
        "ladder": [asdict(r) for r in ladder],
        "ladder_fraction_range": [min(r.fraction for r in ladder), max(r.fraction for r in ladder)],
        "train_tokens_available": len(data.train) * settings.block_size,
        "target_epochs": epochs,
        "validation_tokens": len(data.validation) * settings.block_size,
        "vocab_size": len(data.tokenizer),
        "seconds": time.perf_counter() - started,
        "settings": asdict(settings),
    }
    (out / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    plot_scaling(result, out / f"{name}.png")
    for run in (outcome, *outcome["holdouts"]):
        print(f"[scaling] {run['target']['name']}: predicted {run['predicted_loss']:.4f}, measured "
              f"{run['actual_loss']:.4f}: error {100 * run['relative_error']:.2f}%")  # fmt: skip
    print(f"[scaling] wrote {out / (name + '.json')} and .png")
    return result
