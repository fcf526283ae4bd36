"""The local-experts reproduction (Jacobs et al. 1991): its specialisation metric and error criterion on
hand-worked cases, the systems of Table 1, and a smoke run that writes sane JSON and a PNG.

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


def test_epochs_to_criterion_and_stats():
    errors = [0.3, 0.2, 0.09, 0.08, 0.05]  # errors[e]: after e epochs
    assert local_experts_jacobs.epochs_to_criterion(errors, 0.08) == 3
    assert local_experts_jacobs.epochs_to_criterion(errors, 0.01) is None
    st = local_experts_jacobs.step_stats([{"epochs_to_criterion": v} for v in (10, None, 30)])
    assert st["median"] == 30 and st["reached"] == 2 and st["mean_of_reached"] == 20 and st["sd_of_reached"] == 10


def test_training_error_is_the_criterion_of_each_system():
    """Hand-worked: two experts with outputs (1, 0) and (0, 1), gate (0.25, 0.75), target (1, 0)."""
    from types import SimpleNamespace

    outputs = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    gates = torch.tensor([[0.25, 0.75]])
    out = SimpleNamespace(expert_outputs=outputs, gate_probs=gates, logits=(gates[..., None] * outputs).sum(1))
    d = torch.tensor([[1.0, 0.0]])
    # competitive: sum_i p_i ||d - o_i||^2 / outputs = (0.25 * 0 + 0.75 * 2) / 2
    assert local_experts_jacobs.training_error("competitive-4", out, d).item() == pytest.approx(0.75)
    # cooperative: ||d - blend||^2 / outputs, blend = (0.25, 0.75)
    assert local_experts_jacobs.training_error("cooperative-4", out, d).item() == pytest.approx(
        (0.75**2 + 0.75**2) / 2
    )


def test_systems_have_the_papers_architectures():
    counts = {system: local_experts_jacobs.make_model(system, 0).num_parameters()
              for system in local_experts_jacobs.SYSTEMS}  # fmt: skip
    # mixtures: n experts x (2*4 + 4) + gate n x (2 + 1); backprop nets: H x 3 + 4 x (H + 1) = 46 and 88,
    # plus the inert 3-parameter gate of a one-expert "mixture" (its softmax over one expert is always 1)
    assert counts == {"competitive-4": 60, "competitive-8": 120, "cooperative-4": 60, "backprop-6": 46 + 3,
                      "backprop-12": 88 + 3}  # fmt: skip
    bp = local_experts_jacobs.make_model("backprop-6", 0)
    torch.testing.assert_close(bp(input_values=torch.randn(3, 2)).gate_probs, torch.ones(3, 1))
    a, b = local_experts_jacobs.make_model("competitive-4", 3), local_experts_jacobs.make_model("cooperative-4", 3)
    assert all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters()))  # paired initialisation
    assert a.model.gate.proj.weight.abs().sum() == 0  # the paper's unbiased gate


def test_local_experts_smoke(tmp_path):
    returned = local_experts_jacobs.main(["--smoke", "--output-dir", str(tmp_path), "--set", "num_seeds=1"])
    png = tmp_path / f"{local_experts_jacobs.NAME}.png"
    assert png.read_bytes()[:8] == PNG_MAGIC and png.stat().st_size > 1000
    data = json.loads((tmp_path / f"{local_experts_jacobs.NAME}.json").read_text())
    for key in ("claims", "rules", "paper_table_1", "smoke", "device", "data", "num_parameters", "step_sizes",
                "specialisation_holds", "convergence_holds", "decision", "runs", "seconds", "settings"):  # fmt: skip
        assert key in data, key
    assert data["smoke"] is True and data["settings"]["num_seeds"] == 1
    assert data["rules"] == json.loads(json.dumps(local_experts_jacobs.RULES))
    assert data["specialisation_holds"] == returned["specialisation_holds"]
    assert isinstance(data["specialisation_holds"], bool) and isinstance(data["convergence_holds"], bool)
    assert data["num_parameters"]["competitive-4"] == 60  # the model card's count
    assert set(data["runs"]) == set(local_experts_jacobs.SYSTEMS)
    for system, runs in data["runs"].items():
        assert data["step_sizes"][system]["chosen"] in data["settings"]["step_size_grid"]
        for r in runs:
            assert 0 <= r["final_test_accuracy"] <= 1 and math.isfinite(r["final_training_error"])
            assert r["epochs_run"] <= data["settings"]["max_epochs"]
            assert r["error_curve_epochs"][0] == 0 and r["error_curve_epochs"][-1] == r["epochs_run"]
            assert len(r["error_curve"]) == len(r["error_curve_epochs"])
            m = r["specialisation"]
            assert 0 < m["purity"] <= 1 and sum(m["owner_share"]) == pytest.approx(1)
    assert set(data["decision"]) == {"specialisation", "convergence"}
    print("local experts smoke (too small to learn): specialisation holds", data["specialisation_holds"],
          "convergence holds", data["convergence_holds"])  # fmt: skip


def test_local_experts_diagnosis_smoke(tmp_path):
    from reproductions.local_experts_jacobs_diagnosis import main as diagnose

    result = diagnose(["--output-dir", str(tmp_path), "--epochs", "12", "--seeds", "1", "--long-epochs", "12"])
    assert (tmp_path / "local_experts_jacobs_diagnosis.json").exists()
    assert result["gradients"]["max_abs_diff_gate_logits_vs_p_minus_h"] < 1e-6
    assert result["gradients"]["max_abs_diff_expert_outputs_vs_h_weighted_error"] < 1e-6
    assert len(result["runs"]) == 6 and all(len(r["experts_used"]) == 1 for r in result["runs"].values())
