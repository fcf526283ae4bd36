"""Smoke runs of the GPT-1 and GPT-3 reproductions: the pipeline runs and writes sane JSON and a PNG.

The smoke sizes are far too small to learn, so the headline claims are printed, not asserted; the
default runs (``python reproductions/<name>.py``) are where they must hold.
"""

from __future__ import annotations

import json
import math

from reproductions import gpt1_auxiliary_loss, gpt3_few_shot

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def load_outputs(directory, name: str) -> dict:
    png = directory / f"{name}.png"
    assert png.is_file() and png.read_bytes()[:8] == PNG_MAGIC
    assert png.stat().st_size > 1000
    return json.loads((directory / f"{name}.json").read_text())


def is_probability(x) -> bool:
    return isinstance(x, (int, float)) and 0.0 <= x <= 1.0


def test_gpt3_few_shot_smoke(tmp_path):
    returned = gpt3_few_shot.main(["--smoke", "--output-dir", str(tmp_path)])
    data = load_outputs(tmp_path, gpt3_few_shot.NAME)
    assert data["claim_holds"] == returned["claim_holds"]
    for key in ("claim", "chance", "accuracy_per_k", "zero_shot_accuracy", "claim_gain_points", "claim_holds",
                "training_curve", "num_parameters", "layer_types", "seconds", "settings"):  # fmt: skip
        assert key in data, key
    settings = data["settings"]
    assert data["chance"] == 1 / settings["num_options"]
    assert [r["k"] for r in data["accuracy_per_k"]] == list(settings["ks"])
    assert data["accuracy_per_k"][0]["k"] == 0
    queries = settings["eval_tasks"] * settings["eval_items"]
    ideal = [r["ideal_accuracy"] for r in data["accuracy_per_k"]]
    assert math.isclose(ideal[0], data["chance"])  # no demonstrations: a guess
    assert ideal == sorted(ideal) and all(is_probability(x) for x in ideal)
    for r in data["accuracy_per_k"]:
        assert is_probability(r["accuracy"]) and r["n"] == queries
        assert math.isclose(r["accuracy"] * queries, round(r["accuracy"] * queries))  # a count of right answers
    # the dense and banded layers alternate, GPT-3 §2.1
    assert set(data["layer_types"]) == {"full_attention", "sliding_attention"}
    curve = data["training_curve"]
    assert curve[-1]["step"] == settings["steps"]
    assert all(math.isfinite(c["loss"]) and c["loss"] > 0 and is_probability(c["label_accuracy"]) for c in curve)
    assert curve[-1]["loss"] < curve[0]["loss"] + 1.0  # training does not blow up
    gain = 100 * (data["accuracy_per_k"][-1]["accuracy"] - data["zero_shot_accuracy"])
    assert math.isclose(data["claim_gain_points"], gain, abs_tol=1e-9)
    print("GPT-3 smoke (too small to learn): accuracy per k",
          {r["k"]: round(r["accuracy"], 3) for r in data["accuracy_per_k"]}, "claim holds:", data["claim_holds"])


def test_gpt1_auxiliary_loss_smoke(tmp_path):
    gpt1_auxiliary_loss.main(["--smoke", "--output-dir", str(tmp_path)])
    data = load_outputs(tmp_path, gpt1_auxiliary_loss.NAME)
    for key in ("claim", "chance", "by_train_size", "aux_helps", "pretrain_curve", "pretrain_final_loss",
                "num_parameters", "seconds", "settings"):  # fmt: skip
        assert key in data, key
    settings = data["settings"]
    assert data["chance"] == 1 / len(settings["topics"])
    assert sorted(data["by_train_size"]) == sorted(str(n) for n in settings["train_sizes"])
    # pre-training lowers the LM loss from about ln(vocab)
    pre = data["pretrain_curve"]
    assert pre[-1]["loss"] < pre[0]["loss"] and pre[-1]["loss"] < math.log(data["vocab_size"]) + 0.5
    for block in data["by_train_size"].values():
        runs = block["runs"]
        assert sorted((r["lm_coef"], r["seed"]) for r in runs) == sorted(
            (lam, seed) for lam in (settings["lm_coef"], 0.0) for seed in settings["seeds"]
        )
        for r in runs:
            assert is_probability(r["final_accuracy"]) and r["best_accuracy"] >= r["final_accuracy"]
            assert r["eval_curve"][0]["step"] == 0 and r["eval_curve"][-1]["step"] == settings["finetune_steps"]
            assert len(r["train_curve"]) == settings["finetune_steps"]
            for step in r["train_curve"]:
                assert math.isfinite(step["clf_loss"]) and step["clf_loss"] >= 0
                if r["lm_coef"] == 0:
                    assert step["lm_loss"] is None and math.isclose(step["loss"], step["clf_loss"])
                else:  # L3 = L2 + λ·L1 (§3.2)
                    expected = step["clf_loss"] + r["lm_coef"] * step["lm_loss"]
                    assert math.isclose(step["loss"], expected, rel_tol=1e-5)
        summary = block["summary"]
        gain = summary["paired_accuracy_gain"]["mean"]
        assert -1.0 <= gain <= 1.0
        assert math.isclose(gain, summary["final_accuracy_with_aux"]["mean"]
                            - summary["final_accuracy_without_aux"]["mean"], abs_tol=1e-9)  # fmt: skip
        # both arms start from the same pre-trained weights and head: identical accuracy at step 0
        start = {r["lm_coef"]: r["eval_curve"][0]["accuracy"] for r in runs if r["seed"] == settings["seeds"][0]}
        assert len(set(start.values())) == 1
    print("GPT-1 smoke (too small to learn): aux LM helps per train size:", data["aux_helps"])
