"""Small helpers shared by the reproductions: seeding, a timer, JSON and PNG output."""

from __future__ import annotations

import json
import os
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["Timer", "new_figure", "output_dir", "save_figure", "seed_everything", "write_json"]


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
