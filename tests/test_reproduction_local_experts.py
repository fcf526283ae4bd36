"""The local-experts reproduction (Jacobs et al. 1991): its specialisation metric on a hand-worked case,
and a smoke run that writes sane JSON and a PNG.

The smoke sizes are too small to learn, so the claims are printed, not asserted; the default run
(``python reproductions/local_experts_jacobs.py``) is where they are decided.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from reproductions import local_experts_jacobs

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def hand_case():
    """6 test cases, 3 experts, 2 classes; ``correct[n][e]``: whether expert e's own output is right."""
    gates = torch.tensor([
        [0.7, 0.2, 0.1],  # class 0, owner 0
        [0.6, 0.3, 0.1],  # class 0, owner 0
        [0.2, 0.5, 0.3],  # class 0, owner 1
        [0.1, 0.1, 0.8],  # class 1, owner 2
        [0.2, 0.2, 0.6],  # class 1, owner 2
        [0.3, 0.3, 0.4],  # class 1, owner 2
    ], dtype=torch.float64)  # fmt: skip
    labels = torch.tensor([0, 0, 0, 1, 1, 1])
    correct = torch.tensor(
        [[1, 0, 0], [1, 1, 0], [0, 0, 1], [0, 0, 1], [1, 0, 0], [1, 1, 1]], dtype=torch.bool
    )
    right, wrong = torch.nn.functional.one_hot(labels, 2), torch.nn.functional.one_hot(1 - labels, 2)
    outputs = torch.where(correct.unsqueeze(-1), right.unsqueeze(1), wrong.unsqueeze(1)).double()  # (6, 3, 2)
    return gates, outputs, labels


def test_specialisation_metrics_hand_worked():
    gates, outputs, labels = hand_case()
    m = local_experts_jacobs.specialisation_metrics(gates, outputs, labels, min_owner_share=0.10)
    # class 0: owners 0, 0, 1 -> majority expert 0 with 2/3; class 1: owners 2, 2, 2 -> 1
    assert m["majority_expert"] == [0, 2]
    assert m["purity"] == pytest.approx((2 / 3 + 1) / 2)
    assert m["owner_share"] == pytest.approx([2 / 6, 1 / 6, 3 / 6])
    assert m["experts_used"] == 3  # every expert owns at least 10% of the cases
    assert local_experts_jacobs.specialisation_metrics(gates, outputs, labels, 0.2)["experts_used"] == 2
    assert m["gate_max"] == pytest.approx((0.7 + 0.6 + 0.5 + 0.8 + 0.6 + 0.4) / 6)
    # the owner alone is right on cases 0, 1, 3, 5
    assert m["owner_accuracy"] == pytest.approx(4 / 6)
    # sum_i p_i [expert i right]: 0.7, 0.9, 0.3, 0.8, 0.2, 1.0
    assert m["selected_expert_accuracy"] == pytest.approx(3.9 / 6)


def test_steps_to_target_and_stats():
    curve = [{"step": 0, "accuracy": 0.2}, {"step": 5, "accuracy": 0.89}, {"step": 10, "accuracy": 0.9}]
    assert local_experts_jacobs.steps_to_target(curve, 0.9) == 10
    assert local_experts_jacobs.steps_to_target(curve, 0.95) is None
    st = local_experts_jacobs.step_stats([{"steps_to_target": v} for v in (10, None, 30)])
    assert st["median"] == 30 and st["reached"] == 2 and st["mean_of_reached"] == 20


def test_local_experts_smoke(tmp_path):
    returned = local_experts_jacobs.main(["--smoke", "--output-dir", str(tmp_path), "--set", "num_seeds=1"])
    png = tmp_path / f"{local_experts_jacobs.NAME}.png"
    assert png.read_bytes()[:8] == PNG_MAGIC and png.stat().st_size > 1000
    data = json.loads((tmp_path / f"{local_experts_jacobs.NAME}.json").read_text())
    for key in ("claims", "rules", "smoke", "device", "data", "num_parameters", "specialisation_holds",
                "convergence_holds", "by_optimiser", "seconds", "settings"):  # fmt: skip
        assert key in data, key
    assert data["smoke"] is True and data["settings"]["num_seeds"] == 1
    assert data["rules"] == local_experts_jacobs.RULES
    assert data["specialisation_holds"] == returned["specialisation_holds"]
    assert isinstance(data["specialisation_holds"], bool) and isinstance(data["convergence_holds"], bool)
    assert data["num_parameters"]["competitive"] == 60  # the model card's count
    for opt, block in data["by_optimiser"].items():
        assert opt in ("adam", "sgd")
        steps = data["settings"]["adam_steps" if opt == "adam" else "sgd_steps"]
        assert set(block["runs"]) == {"competitive", "cooperative", "backprop"}
        for runs in block["runs"].values():
            for r in runs:
                assert 0 <= r["final_accuracy"] <= 1 and math.isfinite(r["final_train_loss"])
                assert r["curve_steps"][0] == 0 and r["curve_steps"][-1] == steps
                assert len(r["curve_accuracy"]) == len(r["curve_steps"])
                assert all(0 <= a <= 1 for a in r["curve_accuracy"])
                m = r["specialisation"]
                assert 0 < m["purity"] <= 1 and sum(m["owner_share"]) == pytest.approx(1)
        assert set(block["decision"]) == {"specialisation", "convergence"}
    print("local experts smoke (too small to learn): specialisation holds", data["specialisation_holds"],
          "convergence holds", data["convergence_holds"])  # fmt: skip
