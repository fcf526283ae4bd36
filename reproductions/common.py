"""Small helpers shared by the reproductions: seeding, a timer, JSON and PNG output."""

from __future__ import annotations

import importlib.util
import json
import os
import random
import sys
import time
from dataclasses import fields, replace
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch

__all__ = [
    "Timer",
    "apply_settings",
    "device_name",
    "new_figure",
    "output_dir",
    "save_figure",
    "seed_everything",
    "write_json",
]


S = TypeVar("S")


def load_script(path: str | os.PathLike[str]):
    """A training script (``training/*.py``: scripts, not part of the package) as a module, imported once
    under its file name."""
    path = Path(path)
    name = path.stem
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses look their module up while being created
        spec.loader.exec_module(module)
    return sys.modules[name]


def add_set_option(parser) -> None:
    """``--set KEY=VALUE ...`` on an ``argparse`` parser: overrides of any field of the run's settings."""
    parser.add_argument(
        "--set", nargs="*", metavar="KEY=VALUE", default=[],
        help="override any setting, e.g. --set max_steps=4000 hidden_size=256",
    )  # fmt: skip


def apply_settings(settings: S, assignments: list[str] | None) -> S:
    """``settings`` (a dataclass) with ``KEY=VALUE`` assignments from the command line (``--set``)
    applied, each value converted to the type of the field's default. An unknown key or a value
    of the wrong type raises ``ValueError`` naming it and the known keys."""
    known = {f.name: f for f in fields(settings)}
    changes: dict[str, Any] = {}
    for item in assignments or []:
        key, sep, text = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or key not in known:
            raise ValueError(f"--set {item!r}: expected KEY=VALUE with KEY one of {', '.join(sorted(known))}")
        default = getattr(settings, key)
        try:
            if text.lower() in ("none", "null") and (default is None or "None" in str(known[key].type)):
                value: Any = None
            elif isinstance(default, bool):
                if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError(text)
                value = text.lower() in ("true", "1", "yes")
            elif isinstance(default, (int, float, str)):
                value = type(default)(text)
            elif isinstance(default, tuple):  # comma-separated, each as the first item's type (str if none)
                kind = type(default[0]) if default else str
                value = tuple(kind(part.strip()) for part in text.split(",") if part.strip())
            elif default is None:  # an optional number
                value = float(text) if any(c in text for c in ".eE") else int(text)
            else:
                raise ValueError(
                    f"field of type {type(default).__name__} cannot be set from the command line"
                )
        except ValueError as error:
            raise ValueError(f"--set {item!r}: cannot read {text!r} as the type of {key} ({error})") from None
        changes[key] = value
    return replace(settings, **changes)


def device_name() -> str:
    """What the run trained on: the GPU's name when CUDA is used, else the CPU and torch's thread count."""
    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)} (CUDA {torch.version.cuda}, torch {torch.__version__})"
    import platform

    cpu = platform.processor() or platform.machine()
    return f"CPU {cpu}, {torch.get_num_threads()} torch thread(s), torch {torch.__version__}"


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and PyTorch's generators."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class Timer:
    """``with Timer() as t: ...`` then ``t.seconds`` (wall clock) and ``t.cpu_seconds`` (this
    process's CPU time, which says more than the wall clock on a shared machine)."""

    def __enter__(self) -> Timer:
        self.start, self.cpu_start = time.perf_counter(), time.process_time()
        self.seconds = self.cpu_seconds = 0.0
        return self

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def __exit__(self, *exc: object) -> None:
        self.seconds = self.elapsed()
        self.cpu_seconds = time.process_time() - self.cpu_start


def output_dir(path: str | os.PathLike[str]) -> Path:
    """Create ``path`` (and its parents) and return it as a ``Path``."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    return path


def write_json(path: str | os.PathLike[str], data: dict[str, Any]) -> Path:
    """Write ``data`` as indented JSON (non-finite floats become ``null``)."""

    def clean(value: Any) -> Any:
        if isinstance(value, float) and not np.isfinite(value):
            return None
        if isinstance(value, dict):
            return {str(k): clean(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [clean(v) for v in value]
        return value

    path = Path(path)
    path.write_text(json.dumps(clean(data), indent=2) + "\n", encoding="utf-8")
    return path


def new_figure(ncols: int = 1, width: float = 5.0, height: float = 4.0):
    """A matplotlib figure with ``ncols`` axes side by side, on the non-interactive Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, ncols, figsize=(width * ncols, height), squeeze=False)
    return fig, list(axes[0])


def save_figure(fig, path: str | os.PathLike[str]) -> Path:
    """Save ``fig`` as PNG and close it."""
    import matplotlib.pyplot as plt

    path = Path(path)
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=120)
    plt.close(fig)
    return path
