"""Predictable scaling (GPT-4 report §3, ``hf_paper_models.scaling``): the fit of L(C) = a·C^b + c against
known laws, 6·N·D against a hand count, the ladder's compute span, and smoke runs of ``hfpm scaling
--quick`` and the reproduction (the prediction is on disk before the target trains)."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from datetime import datetime

import numpy as np
import pytest

import hf_paper_models
from hf_paper_models.models.gpt3 import PaperGPT3LMHeadModel
from hf_paper_models.scaling import (
    QUICK,
    ScalingSettings,
    fit_power_law,
    holdout_runs,
    model_flops,
    non_embedding_parameters,
    plan_ladder,
    predict_then_train,
    target_run,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("a, b, c", [(50.0, -0.12, 1.7), (3e4, -0.35, 2.5), (8.0, -0.05, 0.0)])
def test_fit_recovers_a_noise_free_law(a, b, c):
    compute = np.geomspace(1e10, 3e13, 6)
    fit = fit_power_law(compute, a * compute**b + c)
    assert fit.b == pytest.approx(b, rel=1e-6)
    assert fit.a == pytest.approx(a, rel=1e-5)
    assert fit.c == pytest.approx(c, abs=1e-6)
    target = 3e15  # 100x beyond the last point
    assert fit.predict(target) == pytest.approx(a * target**b + c, rel=1e-8)
    assert fit.rmse < 1e-8


def test_fit_with_noise_predicts_within_tolerance():
    a, b, c = 50.0, -0.12, 1.7
    compute = np.geomspace(1e10, 3e13, 8)
    rng = np.random.default_rng(0)
    errors = []
    for _ in range(20):
        loss = (a * compute**b + c) * (1 + 0.003 * rng.standard_normal(compute.size))  # 0.3% noise
        fit = fit_power_law(compute, loss)
        assert fit.b < 0 and fit.a > 0 and 0 <= fit.c < loss.min()
        target = 1e15  # 30x beyond the last point, as the ladder's 1/30
        errors.append(abs(fit.predict(target) - (a * target**b + c)) / (a * target**b + c))
    assert np.median(errors) < 0.01 and max(errors) < 0.03


def test_fit_keeps_its_bounds_and_rejects_bad_input():
    compute = np.geomspace(1e9, 1e12, 5)
    fit = fit_power_law(compute, 20 * compute**-0.1 - 0.5)  # a negative "irreducible" loss: c stops at 0
    assert fit.c == 0.0 and fit.b < 0
    with pytest.raises(ValueError, match="at least 3"):
        fit_power_law([1e9, 1e10], [3.0, 2.0])
    with pytest.raises(ValueError, match="does not fall"):
        fit_power_law(compute, np.linspace(2.0, 3.0, 5))  # loss rising with compute
    with pytest.raises(ValueError, match="> 0"):
        fit_power_law([0.0, 1.0, 2.0], [3.0, 2.0, 1.0])


def test_model_flops_is_6ND_with_non_embedding_parameters_counted_by_hand():
    d, layers, ff, vocab, positions = 32, 2, 128, 97, 16
    config = hf_paper_models.preset(
        "gpt3-small", hidden_size=d, num_hidden_layers=layers, num_attention_heads=4, head_dim=8,
        intermediate_size=ff, vocab_size=vocab, max_position_embeddings=positions, sliding_window=8,
    )  # fmt: skip
    per_layer = (
        2 * d  # ln_1
        + d * 3 * d + 3 * d  # c_attn (q, k, v) with bias
        + d * d + d  # c_proj
        + 2 * d  # ln_2
        + d * ff + ff  # mlp c_fc
        + ff * d + d  # mlp c_proj
    )  # fmt: skip
    hand = layers * per_layer + 2 * d  # + ln_f; wte, wpe and the tied head are embeddings
    assert non_embedding_parameters(config) == hand
    assert model_flops(config, 1000) == 6 * hand * 1000
    total = sum(p.numel() for p in PaperGPT3LMHeadModel(config).parameters())
    assert total - hand == vocab * d + positions * d  # exactly the two tables are left out
    # the output layer counted: its vocab x d matmul per token, the position lookup still free
    assert model_flops(config, 1000, output_layer=True) == 6 * (hand + vocab * d) * 1000


def test_ladder_spans_the_requested_compute_range():
    settings = ScalingSettings()
    target = target_run(settings)
    runs = plan_ladder(settings)
    assert len(runs) == settings.rungs * settings.rung_seeds
    # replicates: the same run from seeds seed, seed + 1, ...
    by_rung = [runs[i : i + settings.rung_seeds] for i in range(0, len(runs), settings.rung_seeds)]
    for replicates in by_rung:
        assert [r.seed for r in replicates] == [settings.seed + k for k in range(settings.rung_seeds)]
        assert len({(r.hidden_size, r.num_hidden_layers, r.steps, r.batch_size) for r in replicates}) == 1
    ladder = [replicates[0] for replicates in by_rung]
    fractions = [r.compute / target.compute for r in ladder]
    assert fractions == sorted(fractions)
    assert fractions[0] == pytest.approx(1e-3, rel=0.1) and fractions[-1] == pytest.approx(1 / 30, rel=0.1)
    ratios = np.diff(np.log(fractions))
    assert np.allclose(ratios, ratios.mean(), rtol=0.5)  # spaced geometrically (shapes are discrete)
    # every run, the target too, takes about equal_steps steps: the batch grows with the tokens
    assert target.steps == settings.equal_steps and target.batch_size == 64  # 3,072,000 / (750 * 64)
    assert target.tokens == settings.target_steps * settings.batch_size * settings.block_size
    for r in ladder:
        assert r.compute == pytest.approx(6 * r.non_embedding_parameters * r.tokens)
        assert r.fraction == pytest.approx(r.compute / target.compute)
        assert r.tokens == r.steps * r.batch_size * settings.block_size
        assert abs(r.steps - settings.equal_steps) <= 0.2 * settings.equal_steps
        assert r.num_hidden_layers >= settings.min_layers
        assert (
            r.hidden_size % settings.head_dim == 0
            and r.num_attention_heads * settings.head_dim == r.hidden_size
        )
        assert r.non_embedding_parameters < target.non_embedding_parameters and r.tokens < target.tokens
    # both size and tokens grow along the ladder (N ∝ C^0.5 here)
    assert ladder[-1].non_embedding_parameters > 5 * ladder[0].non_embedding_parameters
    assert ladder[-1].tokens > ladder[0].tokens
    # one batch for all: steps in proportion to tokens
    fixed = ScalingSettings(equal_steps=0)
    assert target_run(fixed).steps == fixed.target_steps
    assert all(r.batch_size == fixed.batch_size for r in plan_ladder(fixed))
    # batch_exponent 0.5: batch and steps both grow as sqrt(tokens), anchored at the target's batch
    sqrt_rule = ScalingSettings(batch_exponent=0.5)
    anchor = target_run(sqrt_rule)
    assert anchor.batch_size == 64 and anchor.steps == sqrt_rule.equal_steps
    for r in plan_ladder(sqrt_rule)[:: sqrt_rule.rung_seeds]:
        # (the batch is set from the requested tokens; the run's tokens are then whole steps of it)
        assert abs(r.batch_size - 64 * math.sqrt(r.tokens / anchor.tokens)) <= 1
        assert r.steps == pytest.approx(sqrt_rule.equal_steps * math.sqrt(r.tokens / anchor.tokens), rel=0.15)
    with pytest.raises(ValueError, match="min_fraction"):
        ScalingSettings(min_fraction=0.1, max_fraction=0.01)
    with pytest.raises(ValueError, match="equal_steps"):
        ScalingSettings(equal_steps=-1)


def test_tokens_per_parameter_and_holdout_targets():
    settings = ScalingSettings(target_hidden=96, target_layers=4, tokens_per_parameter=20,
                               holdout_targets="80x3, 112x4")  # fmt: skip
    main = target_run(settings)
    assert main.tokens == pytest.approx(20 * main.non_embedding_parameters, rel=0.01)
    held = holdout_runs(settings)
    assert [h.name for h in held] == ["target-80x3", "target-112x4"]
    assert [(h.hidden_size, h.num_hidden_layers) for h in held] == [(80, 3), (112, 4)]
    for h in held:  # the main target's tokens per parameter, the same shape family
        assert h.tokens == pytest.approx(20 * h.non_embedding_parameters, rel=0.01)
        assert h.num_attention_heads * settings.head_dim == h.hidden_size
        assert h.compute == pytest.approx(6 * h.non_embedding_parameters * h.tokens)
    # N counting the output layer: the tokens per parameter, the compute and the rungs' sizes all use it
    counted = replace(settings, count_output_layer=True)
    for run in (target_run(counted), *holdout_runs(counted)):
        assert run.output_layer_parameters == counted.vocab_size * run.hidden_size
        n = run.non_embedding_parameters + run.output_layer_parameters
        assert run.tokens == pytest.approx(20 * n, rel=0.01) and run.compute == pytest.approx(6 * n * run.tokens)
    top = target_run(counted)
    ladder = plan_ladder(counted)
    for r in ladder:
        n = r.non_embedding_parameters + r.output_layer_parameters
        assert r.output_layer_parameters == counted.vocab_size * r.hidden_size
        assert r.compute == pytest.approx(6 * n * r.tokens) and r.fraction == pytest.approx(r.compute / top.compute)
    assert ladder[0].fraction == pytest.approx(1e-3, rel=0.15) and ladder[-1].fraction == pytest.approx(1 / 30, rel=0.15)
    for bad in ("96", "95x4", "axb", "0x3"):
        with pytest.raises(ValueError, match="WIDTHxLAYERS|multiple of head_dim"):
            ScalingSettings(holdout_targets=bad)


def test_prediction_is_written_before_the_target_trains(tmp_path):
    settings = ScalingSettings(target_hidden=32, target_layers=2, head_dim=8, target_steps=10)
    target = target_run(settings)
    fit = fit_power_law([1e6, 1e7, 1e8], [5.0, 4.0, 3.4])
    seen = {}

    def fake_train(run, settings, data, folder):  # what is on disk when training starts
        seen["prediction"] = json.loads((tmp_path / "prediction.json").read_text())
        run.final_loss = 3.0
        return run

    holdout = replace(target, name="target-16x2", hidden_size=16, compute=target.compute / 4)
    out = predict_then_train(target, fit, settings, None, tmp_path, train=fake_train, holdouts=[holdout])
    assert seen["prediction"]["predicted_loss"] == pytest.approx(fit.predict(target.compute))
    assert "actual_loss" not in seen["prediction"]
    assert out["relative_error"] == pytest.approx(abs(out["predicted_loss"] - 3.0) / 3.0)
    # the held-out target's prediction was on disk before the first target trained
    (recorded,) = seen["prediction"]["holdouts"]
    assert recorded["predicted_loss"] == pytest.approx(fit.predict(target.compute / 4))
    (measured,) = out["holdouts"]
    assert measured["target"]["name"] == "target-16x2"
    on_disk = json.loads((tmp_path / "measured.json").read_text())  # kept as each target finished
    assert [m["target"]["name"] for m in on_disk] == ["target", "target-16x2"]
    assert on_disk[1]["actual_loss"] == measured["actual_loss"] == 3.0
    assert measured["relative_error"] == pytest.approx(abs(recorded["predicted_loss"] - 3.0) / 3.0)


def check_outputs(data: dict, directory, name: str) -> None:
    png = directory / f"{name}.png"
    assert png.is_file() and png.read_bytes()[:8] == PNG_MAGIC and png.stat().st_size > 1000
    prediction = json.loads((directory / "prediction.json").read_text())
    assert prediction["predicted_loss"] == pytest.approx(data["predicted_loss"])
    recorded = datetime.fromisoformat(data["prediction_recorded_at"])
    assert (
        recorded
        <= datetime.fromisoformat(data["target_started_at"])
        < datetime.fromisoformat(data["target_finished_at"])
    )
    ladder = data["ladder"]
    assert len(ladder) == data["settings"]["rungs"] and all(math.isfinite(r["final_loss"]) for r in ladder)
    fit = data["fit"]
    assert fit["b"] < 0 and 0 <= fit["c"] < min(r["final_loss"] for r in ladder)
    assert data["predicted_loss"] == pytest.approx(
        fit["a"] * data["target"]["compute"] ** fit["b"] + fit["c"]
    )
    actual = data["target"]["final_loss"]
    assert data["actual_loss"] == actual
    assert data["relative_error"] == pytest.approx(abs(data["predicted_loss"] - actual) / actual)
    assert data["target"]["compute"] > max(r["compute"] for r in ladder)


def test_hfpm_scaling_quick(tmp_path):
    from hf_paper_models.cli import main

    assert main(["scaling", "--quick", "--output-dir", str(tmp_path)]) == 0
    data = json.loads((tmp_path / "scaling.json").read_text())
    check_outputs(data, tmp_path, "scaling")
    assert data["holdouts"] == []
    # a second study reuses the finished rungs (same runs, same settings) and trains the target again,
    # then a held-out target the same fit predicts
    first = [r["final_loss"] for r in data["ladder"]]
    assert main(["scaling", "--quick", "--output-dir", str(tmp_path), "--holdout-targets", "16x2"]) == 0
    again = json.loads((tmp_path / "scaling.json").read_text())
    assert [r["final_loss"] for r in again["ladder"]] == first
    assert again["actual_loss"] == pytest.approx(data["actual_loss"], abs=1e-5)  # seeded: the same run
    (held,) = again["holdouts"]
    assert (held["target"]["hidden_size"], held["target"]["num_hidden_layers"]) == (16, 2)
    assert held["target"]["compute"] < again["target"]["compute"]


def test_gpt4_scaling_reproduction_smoke(tmp_path):
    from reproductions import gpt4_scaling

    returned = gpt4_scaling.main(["--smoke", "--output-dir", str(tmp_path), "--set", "holdout_targets=24x2"])
    data = json.loads((tmp_path / f"{gpt4_scaling.NAME}.json").read_text())
    check_outputs(data, tmp_path, gpt4_scaling.NAME)
    (held,) = data["holdouts"]  # trained after the main target, on its tokens per parameter
    target = data["target"]
    assert (held["target"]["hidden_size"], held["target"]["num_hidden_layers"]) == (24, 2)
    assert held["target"]["tokens"] / held["target"]["non_embedding_parameters"] == pytest.approx(
        target["tokens"] / target["non_embedding_parameters"], rel=0.05
    )
    fit = data["fit"]
    assert held["predicted_loss"] == pytest.approx(
        fit["a"] * held["target"]["compute"] ** fit["b"] + fit["c"]
    )
    assert held["relative_error"] == pytest.approx(
        abs(held["predicted_loss"] - held["actual_loss"]) / held["actual_loss"]
    )
    assert datetime.fromisoformat(data["prediction_recorded_at"]) <= datetime.fromisoformat(
        held["target_started_at"]
    )
    assert data["tolerance"] == 0.03 and data["smoke"] is True
    assert data["claim_holds"] == (data["relative_error"] <= 0.03) == returned["claim_holds"]
    print("GPT-4 scaling smoke (too short to be a power law): predicted", round(data["predicted_loss"], 4),
          "measured", round(data["actual_loss"], 4), "error", f"{100 * data['relative_error']:.2f}%")  # fmt: skip


def test_ladder_only_trains_no_target_and_reuses_the_rungs(tmp_path):
    """``--ladder-only``: the ladder and its fit, no target run and no prediction; the fit is the least
    squares of the rungs written (refitted here from their records)."""
    from reproductions import gpt4_scaling

    args = ["--smoke", "--ladder-only", "--output-dir", str(tmp_path), "--set", "count_output_layer=true"]
    gpt4_scaling.main(args)
    data = json.loads((tmp_path / "ladder.json").read_text())
    assert not (tmp_path / "prediction.json").exists() and not (tmp_path / "runs" / "target").exists()
    rungs = data["ladder"]
    assert len(rungs) == QUICK["rungs"] * QUICK["rung_seeds"] and "output layer" in data["compute_convention"]
    for r in rungs:  # N counts the output layer: C = 6 (non-embedding + vocab x width) D
        n = r["non_embedding_parameters"] + QUICK["vocab_size"] * r["hidden_size"]
        assert r["output_layer_parameters"] == QUICK["vocab_size"] * r["hidden_size"]
        assert r["compute"] == pytest.approx(6 * n * r["tokens"])
    refit = fit_power_law([r["compute"] for r in rungs], [r["final_loss"] for r in rungs])
    assert data["fit"]["b"] == pytest.approx(refit.b) and data["fit"]["c"] == pytest.approx(refit.c)
    gpt4_scaling.main(args)  # the records are read back, not retrained
    again = json.loads((tmp_path / "ladder.json").read_text())
    assert [r["final_loss"] for r in again["ladder"]] == [r["final_loss"] for r in rungs]
