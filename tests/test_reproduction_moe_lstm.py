"""Smoke run of the MoE-LSTM reproduction (Shazeer et al. 2017): the pipeline runs through the recipe and
writes sane JSON and a PNG; the MoE models share their active parameters per token while their totals grow
with the number of experts, by the hand-counted formula.

The smoke sizes are far too small to learn, so the claim is printed, not asserted; the default run
(``python reproductions/moe_lstm_experts.py``) is where it is decided.
"""

from __future__ import annotations

import json
import math

from reproductions import moe_lstm_experts

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def lstm_layer(d: int) -> int:
    return 2 * (4 * d * d + 4 * d)  # input and recurrent matrices (gates i, f, g, o) with their biases


def test_moe_lstm_experts_smoke(tmp_path):
    returned = moe_lstm_experts.main(["--smoke", "--output-dir", str(tmp_path)])
    png = tmp_path / f"{moe_lstm_experts.NAME}.png"
    assert png.read_bytes()[:8] == PNG_MAGIC and png.stat().st_size > 1000
    data = json.loads((tmp_path / f"{moe_lstm_experts.NAME}.json").read_text())
    assert not (tmp_path / "runs").exists()  # run folders are removed unless keep_runs
    for key in ("claim", "holds", "perplexity_falls_monotonically", "largest_moe_beats_baseline", "models",
                "seconds", "settings", "device", "smoke"):  # fmt: skip
        assert key in data, key
    assert data["holds"] == returned["holds"] and data["smoke"] and data["device"]
    s = data["settings"]
    d, h, k = s["hidden_size"], s["expert_hidden_size"], s["top_k"]
    models = data["models"]
    base, moes = models[0], models[1:]
    assert base["experts"] is None and [m["experts"] for m in moes] == [
        int(n) for n in s["experts"].split(",")
    ]

    vocab = base["config"]["vocab_size"]
    embedding_softmax = 2 * vocab * d + vocab  # embedding; softmax matrix and bias (untied)
    assert base["total_parameters"] == embedding_softmax + 4 * lstm_layer(d)
    assert base["active_parameters_per_token"] == base["total_parameters"]
    for m in moes:
        n = m["experts"]
        assert m["k"] == k and m["config"]["num_expert_groups"] is None and m["config"]["vocab_size"] == vocab
        assert m["parameters_per_expert"] == 2 * d * h  # [d·h] + [h·d], no biases
        assert m["expert_parameters"] == n * 2 * d * h
        assert m["router_parameters"] == 2 * d * n  # W_g and W_noise
        assert m["total_parameters"] == embedding_softmax + 2 * lstm_layer(d) + 2 * d * n + n * 2 * d * h
        active = embedding_softmax + 2 * lstm_layer(d) + k * 2 * d * h
        assert m["active_parameters_per_token"] == active
        assert m["active_parameters_per_token_with_router"] == active + 2 * d * n
    assert len({m["active_parameters_per_token"] for m in moes}) == 1
    totals = [m["total_parameters"] for m in moes]
    assert all(a < b for a, b in zip(totals, totals[1:]))

    for m in models:  # same steps, same tokens
        assert (
            m["steps"] == s["max_steps"]
            and m["train_tokens"] == s["max_steps"] * s["batch_size"] * s["block_size"]
        )
        assert math.isclose(m["validation_perplexity"], math.exp(m["validation_loss"]), rel_tol=1e-9)
        assert m["curves"]["eval_loss"][-1][0] == s["max_steps"]
    for m in moes:
        for name in ("aux_loss_final", "importance_loss_final", "load_loss_final"):
            assert math.isfinite(m[name]) and m[name] >= 0, name
        assert "train_importance_loss" in m["curves"] and "train_load_loss" in m["curves"]
        spread = m["expert_load_logged_final"]
        assert math.isclose(spread["ideal"], k / m["experts"])
        assert 0 <= spread["min"] <= spread["ideal"] + 1e-6 and spread["ideal"] - 1e-6 <= spread["max"] <= 1
        load = m["validation_expert_load"]["per_expert"]
        assert len(load) == m["experts"] and math.isclose(sum(load), k, rel_tol=1e-4)  # k experts per token

    ppl = [m["validation_perplexity"] for m in moes]
    monotone = all(a > b for a, b in zip(ppl, ppl[1:]))
    assert data["perplexity_falls_monotonically"] == monotone
    assert data["largest_moe_beats_baseline"] == (ppl[-1] < base["validation_perplexity"])
    assert data["holds"] == (monotone and ppl[-1] < base["validation_perplexity"])
    print("MoE-LSTM smoke (too small to learn): perplexity", {m["label"]: round(m["validation_perplexity"], 2)
                                                             for m in models}, "claim holds:", data["holds"])  # fmt: skip


def test_the_facts_settings_reach_both_recipes(tmp_path):
    """The reproductions' ``facts`` / ``fact_towns`` / ``fact_zipf`` settings arrive in the recipes'
    DataArguments (a setting the recipe silently ignored would train on another corpus than reported)."""
    from hf_paper_models.training_utils import parse_args
    from reproductions import switch_vs_t5
    from reproductions.common import load_script

    cases = (
        (moe_lstm_experts, "pretrain_lm.py",
         lambda s: moe_lstm_experts.recipe_argv(moe_lstm_experts.model_specs(s)[0], s, tmp_path, tmp_path)),
        (switch_vs_t5, "pretrain_t5.py", lambda s: switch_vs_t5.recipe_argv("switch", s, tmp_path, tmp_path)),
    )  # fmt: skip
    for module, recipe_file, argv_of in cases:
        recipe = load_script(moe_lstm_experts.ROOT / "training" / recipe_file)
        types = [recipe.TrainingLoopArguments, recipe.ModelArguments, recipe.DataArguments]
        data = parse_args(types, argv_of(module.Settings(facts=12, fact_towns=5000, fact_zipf=0.0)))[2]
        assert (data.embedded_facts, data.embedded_fact_towns, data.embedded_fact_zipf) == (12, 5000, 0.0)
        assert not data.embedded_fact_town_tokens
        data = parse_args(types, argv_of(module.Settings()))[2]  # no facts unless asked
        assert data.embedded_facts == 0
    settings = moe_lstm_experts.Settings(facts=12, fact_towns=500, fact_town_tokens=True)
    argv = moe_lstm_experts.recipe_argv(moe_lstm_experts.model_specs(settings)[0], settings, tmp_path, tmp_path)
    recipe = load_script(moe_lstm_experts.ROOT / "training" / "pretrain_lm.py")
    data = parse_args([recipe.TrainingLoopArguments, recipe.ModelArguments, recipe.DataArguments], argv)[2]
    assert data.embedded_fact_town_tokens and data.embedded_fact_towns == 500
