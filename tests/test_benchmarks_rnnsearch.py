"""Smoke test of ``benchmarks/rnnsearch.py`` at tiny sizes: it runs end to end, every figure is positive,
the parts of the time add up, and its GRU path computes what ``nn.GRU`` computes.

Nothing here asserts a speed (speed is measured in benchmarks/, never as timed tests).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "rnnsearch.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("benchmarks_rnnsearch", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file executes
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


def test_quick_run_writes_the_table_and_the_json(bench, tmp_path, monkeypatch, capsys):
    tiny = dataclasses.replace(
        bench.QUICK, hidden=16, embedding=12, maxout=8, vocab=64, batch=4, source=6, target=5,
        train_warmup=0, train_repeats=1, decode_batch=2, new_tokens=3, decode_repeats=1, profile_repeats=1,
    )  # fmt: skip
    monkeypatch.setattr(bench, "QUICK", tiny)
    out = tmp_path / "rnnsearch.json"
    bench.main(["--quick", "--out", str(out)])
    results = json.loads(out.read_text())

    assert results["run"] == "quick" and results["sizes"]["hidden"] == 16 and results["parameters"] > 0
    assert results["train"]["tokens"] == 4 * 6 - 1 * 2 + 4 * 5  # source (last row: 2 of 6 padded) + target
    assert results["train"]["tokens_per_second"] > 0
    assert set(results["decode"]) == {"greedy", "beam4"}
    for decode in results["decode"].values():
        assert decode["sentences_per_second"] > 0
        assert decode["tokens_per_second"] == pytest.approx(3 * decode["sentences_per_second"])
    step = results["breakdown"]["train_step"]
    columns = [(step["forward"], step["forward_parts"])]
    columns += [(d["profiled_seconds"], d["parts"]) for d in results["decode"].values()]
    for total, parts in columns:
        assert set(parts) == set(bench.PARTS)
        assert all(math.isfinite(v) for v in parts.values())
        assert sum(parts.values()) == pytest.approx(total)
        assert all(parts[p] > 0 for p in ("encoder", "alignment", "decoder GRU", "output layer W_o"))
    (gru,) = results["rows"]
    assert gru["ours"] > 0 and gru["theirs"] > 0
    assert results["checks"]["gru_max_abs_diff"] < 1e-5  # the same states as torch.nn.GRU
    table = capsys.readouterr().out
    assert "| alignment |" in table and "| decoder GRU |" in table and "tokens/s" in table
