"""Timing and memory helpers shared by every benchmark in ``benchmarks/``.

Two callables are always timed in the same process, interleaved (ours, theirs, ours, theirs …) so
that drift in clock speed or load from other processes hits both alike; each reports the median.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch


@dataclass
class Timing:
    """Wall-clock seconds of the timed calls of one callable (warm-up calls excluded)."""

    samples: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def spread(self) -> float:
        """(max - min) / median: how noisy the run was."""
        return (max(self.samples) - min(self.samples)) / self.median


def time_once(fn: Callable[[], object]) -> float:
    """Wall time of one call; on a machine with CUDA, the GPU's queued work is waited for at both ends."""
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    sync()
    start = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - start


def time_interleaved(fns: dict[str, Callable[[], object]], warmup: int, repeats: int) -> dict[str, Timing]:
    """Run every callable ``warmup`` times, then ``repeats`` timed rounds, alternating within each round.

    The order inside a round flips every round so neither callable always runs first.
    """
    names = list(fns)
    for _ in range(warmup):
        for name in names:
            fns[name]()
    timings = {name: Timing() for name in names}
    for round_index in range(repeats):
        for name in names if round_index % 2 == 0 else reversed(names):
            timings[name].samples.append(time_once(fns[name]))
    return timings


def matmul_workload(size: int, count: int) -> tuple[Callable[[], object], float]:
    """A callable doing ``count`` fp32 ``size``×``size`` @ ``size``×``size`` matmuls, and its FLOPs.

    Timed interleaved with a model's steps, it gives the machine's matmul throughput under the same
    conditions: the denominator of model FLOP utilisation.
    """
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(size, size, generator=generator)
    b = torch.randn(size, size, generator=generator)
    out = torch.empty(size, size)

    def call() -> None:
        for _ in range(count):
            torch.mm(a, b, out=out)

    return call, 2.0 * size**3 * count


def peak_rss_delta_bytes(script: str) -> int:
    """Peak resident memory that ``script`` adds in a fresh Python process, in bytes.

    ``script`` prepares its inputs, then calls ``reset_peak()`` and runs the measured work; the
    child prints ``VmHWM - VmRSS`` at the reset point subtracted from ``VmHWM`` at the end. The RSS
    high-water mark is reset through ``/proc/self/clear_refs`` (Linux); where that is not possible
    the child falls back to ``ru_maxrss`` deltas, which can under-count if imports peaked higher.
    """
    prelude = (
        "import resource, json\n"
        "def _status(key):\n"
        "    with open('/proc/self/status') as f:\n"
        "        return next(int(s.split()[1]) * 1024 for s in f if s.startswith(key + ':'))\n"
        "def _peak():\n"
        "    try:\n"
        "        return _status('VmHWM')\n"
        "    except OSError:\n"
        "        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024\n"
        "def reset_peak():\n"
        "    global _BASE\n"
        "    try:\n"
        "        with open('/proc/self/clear_refs', 'w') as f:\n"
        "            f.write('5')\n"
        "        _BASE = _status('VmRSS')\n"
        "    except OSError:\n"
        "        _BASE = _peak()\n"
    )
    epilogue = "\nprint('PEAK_RSS_DELTA', json.dumps(_peak() - _BASE))\n"
    # Fixed mmap threshold: every allocation >= 64 KiB is its own mapping, returned to the OS on free,
    # so the warm-up call's freed memory cannot hide the measured call's peak.
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path), MALLOC_MMAP_THRESHOLD_="65536")
    result = subprocess.run(
        [sys.executable, "-c", prelude + script + epilogue],
        capture_output=True,
        text=True,
        check=True,
        env=env,
    )
    line = next(s for s in result.stdout.splitlines() if s.startswith("PEAK_RSS_DELTA"))
    return int(json.loads(line.split(maxsplit=1)[1]))


def machine_info() -> dict[str, object]:
    """What the numbers were measured on: CPU, thread count, library versions, load."""
    import transformers

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as handle:
            cpu = next(s.split(":", 1)[1].strip() for s in handle if s.startswith("model name"))
    except (OSError, StopIteration):
        pass
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    return {
        "cpu": cpu,
        "logical_cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "load_average_at_start": [round(x, 2) for x in load],
    }


def row(
    key: str,
    benchmark: str,
    unit: str,
    ours: float,
    theirs: float,
    better: str = "higher",
    timings: tuple[Timing, Timing] | None = None,
    note: str = "",
) -> dict:
    """One table row: a quantity for ours and theirs and the ratio (inverted when lower is better
    for the best-of-runs column, so that > 1 always means ours wins there)."""
    entry = {
        "key": key,
        "benchmark": benchmark,
        "unit": unit,
        "ours": ours,
        "theirs": theirs,
        "ratio": ours / theirs,
        "better": better,
        "note": note,
    }
    if timings is not None:
        entry["ours_seconds"], entry["theirs_seconds"] = timings[0].samples, timings[1].samples
        best = min(timings[1].samples) / min(timings[0].samples)
        entry["ratio_best"] = best if better == "higher" else 1 / best
    return entry


def throughput_row(key: str, benchmark: str, tokens: int, timings: dict[str, Timing], note: str = "") -> dict:
    ours, theirs = timings["ours"], timings["theirs"]
    return row(
        key,
        benchmark,
        "tokens/s",
        tokens / ours.median,
        tokens / theirs.median,
        timings=(ours, theirs),
        note=note,
    )


def train_step_fn(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> Callable[[], float]:
    """One optimiser step on a fixed batch: forward with labels, backward, AdamW, zero grads."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step() -> float:
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.item()

    return step


def machine_lines(results: dict) -> list[str]:
    """The report lines that say which machine, load and library versions a run had."""
    info = results["machine"]
    return [
        f"- CPU: {info['cpu']} ({info['logical_cpus']} logical CPUs, torch threads {info['torch_threads']}); "
        f"load average at start {info['load_average_at_start']}, at end {results['load_average_at_end']}",
        f"- torch {info['torch']}, transformers {info['transformers']}, Python {info['python']}",
    ]


def ratio_table(rows: list[dict], format_value) -> list[str]:
    """The ours/theirs table every benchmark report prints, one line a row."""
    lines = [
        "| benchmark | unit | ours | theirs | ours/theirs (median) | (best of runs) | better | note |",
        "|---|---|---:|---:|---:|---:|---|---|",
    ]
    for r in rows:
        best = f"{r['ratio_best']:.2f}×" if "ratio_best" in r else ""
        lines.append(
            f"| {r['benchmark']} | {r['unit']} | {format_value(r['ours'], r['unit'])} | "
            f"{format_value(r['theirs'], r['unit'])} | {r['ratio']:.2f}× | {best} | {r['better']} | {r['note']} |"
        )
    return lines
