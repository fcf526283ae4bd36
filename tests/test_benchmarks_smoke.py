"""Smoke test of ``benchmarks/run.py`` at tiny sizes: every row comes out with positive numbers.

Nothing here asserts a speed (ENGINEERING.md: speed is measured in benchmarks/, never as timed
tests); it checks that the benchmark runs end to end, compares the same weights on both sides and
writes the JSON that ``make bench`` records.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest
import torch

RUN_PY = Path(__file__).resolve().parents[1] / "benchmarks" / "run.py"
EXPECTED_ROWS = {
    "train_tokens_per_s",
    "train_mfu",
    "decode_b1_tokens_per_s",
    "decode_b2_tokens_per_s",
    "attention_op_tokens_per_s",
    "attention_scores_mib",
    "gpt3_forward_tokens_per_s",
    "gpt2_forward_tokens_per_s",
    "transformer_train_tokens_per_s",
    "bert_train_tokens_per_s",
    "t5_train_tokens_per_s",
    "transformer_decode_tokens_per_s",
    "t5_decode_tokens_per_s",
    *(f"switch_{n}e_{kind}_tokens_per_s" for n in (2, 8) for kind in ("fwd_bwd", "vs_dense")),
    "ppo_rollout_L2_tokens_per_s",
    "ppo_update_L2_ms_per_sample",
    "ppo_memory_models_mib",  # the peak-RSS row needs subprocesses: covered by the PPO test below
    "ppo_memory_training_state_mib",
}


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("benchmarks_run", RUN_PY)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file executes
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


def tiny_sizes(bench):
    return dataclasses.replace(
        bench.QUICK,
        layers=1,
        hidden=32,
        heads=2,
        vocab=128,
        batch=2,
        seq=16,
        train_warmup=0,
        train_repeats=1,
        prompt=4,
        new_tokens=4,
        decode_batches=(1, 2),
        decode_repeats=1,
        matmul_size=64,
        matmul_count=1,
        attention_tokens=256,
        window=32,
        attention_repeats=1,
        model_layers=2,
        model_tokens=128,
        model_repeats=1,
        measure_memory=False,  # a child process importing transformers: covered by the test below
        encoders=dataclasses.replace(
            bench.encoders.QUICK, layers=1, hidden=32, heads=2, ffn=64, vocab=64, source=8, target=8,
            train_warmup=0, train_repeats=1, prompt=4, new_tokens=3, decode_repeats=1,
        ),  # fmt: skip
        moe=dataclasses.replace(
            bench.moe_bench.QUICK, d_model=16, d_ff=32, batch=2, seq=16, experts=(2, 8), warmup=0, repeats=1
        ),
        ppo=dataclasses.replace(tiny_ppo_sizes(bench), lengths=(2,)),
    )


def test_quick_run_writes_every_row_with_positive_numbers(bench, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(bench, "QUICK", tiny_sizes(bench))
    out = tmp_path / "results.json"
    bench.main(["--quick", "--out", str(out)])

    results = json.loads(out.read_text())
    rows = {r["key"]: r for r in results["rows"]}
    assert set(rows) == EXPECTED_ROWS
    for key, r in rows.items():
        for field in ("ours", "theirs", "ratio"):
            assert math.isfinite(r[field]) and r[field] > 0, (key, field, r[field])
        assert r["ratio"] == pytest.approx(r["ours"] / r["theirs"])
    assert 0 < rows["train_mfu"]["ours"] < 5 and 0 < rows["train_mfu"]["theirs"] < 5
    assert results["matmul_flops_per_second"] > 0
    # Same weights on both sides: identical first loss and identical greedy tokens.
    assert results["checks"]["train_initial_loss_abs_diff"] < 1e-4
    assert results["checks"]["decode_b1_same_tokens"] and results["checks"]["decode_b2_same_tokens"]
    for name in ("transformer", "bert", "t5"):
        assert results["checks"][f"{name}_initial_loss_abs_diff"] < 1e-4, name
    assert results["checks"]["transformer_decode_same_tokens"] and results["checks"]["t5_decode_same_tokens"]
    for n in (2, 8):  # our Switch layer and transformers' hold the same weights: the same outputs
        assert results["checks"][f"switch_{n}e_max_abs_diff"] < 1e-5, n
    assert results["run"] == "quick" and results["machine"]["torch"]

    table = capsys.readouterr().out
    assert table.count("\n| ") == len(EXPECTED_ROWS) + 1  # header + one line per row


def test_peak_rss_delta_sees_a_known_allocation(bench):
    """The memory instrument itself: a 64 MiB tensor allocated after the reset shows up as ~64 MiB."""
    script = "import torch\nreset_peak()\nx = torch.ones(64 * 2**20 // 4)\n"
    mib = bench.peak_rss_delta_bytes(script) / 2**20
    assert 60 < mib < 80, mib


# ------------------------------------------------------------------------------------------------
# benchmarks/ppo.py
# ------------------------------------------------------------------------------------------------


def tiny_ppo_sizes(bench):
    return dataclasses.replace(
        bench.ppo_bench.QUICK,
        hidden=16,
        layers=1,
        heads=2,
        positions=32,
        vocab=280,
        prompt=6,
        batch=2,
        mini_batch=1,
        ptx_batch=1,
        ptx_block=8,
        lengths=(2, 4),
        warmup=0,
        repeats=1,
        memory_hidden=32,
        memory_layers=1,
        memory_heads=2,
        memory_new_tokens=2,
        lora_r=2,
    )


def test_ppo_quick_run_every_row_and_the_lora_run_holds_less(bench, tmp_path, monkeypatch, capsys):
    """``benchmarks/ppo.py --quick``: a rollout and an update row per response length, the memory rows;
    ours and theirs (transformers' GPT-2, same weights) sample the same tokens; the LoRA run holds the
    full-copy run's models less one policy copy plus the adapter (a count, not a timing)."""
    ppo = bench.ppo_bench
    sizes = tiny_ppo_sizes(bench)
    monkeypatch.setattr(ppo, "QUICK", sizes)
    out = tmp_path / "ppo.json"
    ppo.main(["--quick", "--out", str(out)])

    results = json.loads(out.read_text())
    rows = {r["key"]: r for r in results["rows"]}
    expected = {
        *(f"ppo_rollout_L{n}_tokens_per_s" for n in sizes.lengths),
        *(f"ppo_update_L{n}_ms_per_sample" for n in sizes.lengths),
        "ppo_memory_peak_rss_mib",
        "ppo_memory_models_mib",
        "ppo_memory_training_state_mib",
    }
    assert set(rows) == expected
    for key, r in rows.items():
        for field in ("ours", "theirs", "ratio"):
            assert math.isfinite(r[field]) and r[field] > 0, (key, field, r[field])
    assert set(results["scaling"]) == {str(n) for n in sizes.lengths}
    for n in sizes.lengths:  # the same weights and seeds: the same samples and log-probs
        assert results["checks"][f"ppo_generate_L{n}_same_tokens"], n
        assert results["checks"][f"ppo_rollout_L{n}_logprob_max_abs_diff"] < 1e-4, n

    # Models held: the full run has policy + reference + value + reward; the LoRA run has one policy
    # (frozen base, shared with the reference) with r·(in + out) adapter weights per linear layer.
    memory = rows["ppo_memory_models_mib"]
    assert memory["ours"] < memory["theirs"]
    assert rows["ppo_memory_training_state_mib"]["ours"] < rows["ppo_memory_training_state_mib"]["theirs"]
    tok = ppo.load_tokenizer(ppo.save_tokenizer(sizes, tmp_path / "tok"))
    models = ppo.our_models(tok, sizes, sizes.memory_hidden, sizes.memory_layers, sizes.memory_heads)
    policy = models["policy"]
    policy_elements = sum(p.numel() for p in policy.parameters()) + sum(b.numel() for b in policy.buffers())
    adapter_elements = sum(
        sizes.lora_r * (m.in_features + m.out_features)
        for name, m in policy.named_modules()
        if isinstance(m, torch.nn.Linear) and name != "lm_head"  # "all-linear" leaves the output layer out
    )
    held = memory["full"]["model_elements"] - memory["lora"]["model_elements"]
    assert held == policy_elements - adapter_elements
    assert adapter_elements > 0

    table = capsys.readouterr().out
    assert table.count("\n| ") == len(expected) + 1 + len(sizes.lengths) + 1  # two tables, header + rows
