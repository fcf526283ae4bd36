"""paper-local-experts (Jacobs, Jordan, Nowlan & Hinton 1991): the two losses against the paper's
formulas on hand-worked cases, the gate, and the synthetic vowel data's statistics."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import AutoModel, AutoModelForSequenceClassification

import hf_paper_models
from hf_paper_models.data.vowels import (
    GROUP_SHARES,
    GROUPS,
    PETERSON_BARNEY_MEANS,
    VOWELS,
    make_vowel_data,
    split_by_speaker,
)
from hf_paper_models.models.local_experts import (
    PaperLocalExpertsForSequenceClassification,
    PaperLocalExpertsModel,
)


def hand_set_model(moe_loss: str, output_activation: str = "linear", num_labels: int = 2):
    """Two single-layer experts on x = (1, 0): o_1 = (1, 0), o_2 = (0, 2) (linear outputs: biases, zero
    weights); the gate's biases log 1 and log 3 give p = (0.25, 0.75) for every input."""
    config = hf_paper_models.preset(
        "local-experts-vowel", num_experts=2, num_labels=num_labels, moe_loss=moe_loss,
        output_activation=output_activation, id2label=None, label2id=None,
    )
    model = PaperLocalExpertsForSequenceClassification(config)
    with torch.no_grad():
        for expert, bias in zip(model.model.experts, ([1.0, 0.0], [0.0, 2.0])):
            expert.output.weight.zero_()
            expert.output.bias.copy_(torch.tensor(bias[:num_labels]))
        model.model.gate.proj.weight.zero_()
        model.model.gate.proj.bias.copy_(torch.tensor([0.0, math.log(3.0)]))
    return model


X = torch.tensor([[1.0, 0.0]])


def test_cooperative_loss_hand_worked():
    # E = ‖d − Σ p_i o_i‖²: blend = 0.25·(1, 0) + 0.75·(0, 2) = (0.25, 1.5); d = (1, 1).
    out = hand_set_model("cooperative")(input_values=X, labels=torch.tensor([[1.0, 1.0]]))
    torch.testing.assert_close(out.logits, torch.tensor([[0.25, 1.5]]))
    assert out.loss.item() == pytest.approx(0.75**2 + 0.5**2)


def test_competitive_loss_hand_worked():
    # E = −log Σ p_i exp(−½‖d − o_i‖²): ‖d − o_1‖² = 1, ‖d − o_2‖² = 2.
    out = hand_set_model("competitive")(input_values=X, labels=torch.tensor([[1.0, 1.0]]))
    assert out.loss.item() == pytest.approx(-math.log(0.25 * math.exp(-0.5) + 0.75 * math.exp(-1.0)))


def test_classification_targets_are_one_hot_with_logistic_outputs():
    # Class 1 of 2: d = (0, 1); logistic outputs o_1 = σ(1, 0), o_2 = σ(0, 2).
    model = hand_set_model("competitive", output_activation=None)
    out = model(input_values=X, labels=torch.tensor([1]))
    s = lambda v: 1 / (1 + math.exp(-v))  # noqa: E731
    o1, o2 = (s(1.0), s(0.0)), (s(0.0), s(2.0))
    dist = [(o[0] - 0) ** 2 + (o[1] - 1) ** 2 for o in (o1, o2)]
    expected = -math.log(0.25 * math.exp(-0.5 * dist[0]) + 0.75 * math.exp(-0.5 * dist[1]))
    assert out.loss.item() == pytest.approx(expected, rel=1e-6)
    torch.testing.assert_close(out.logits, torch.tensor([[0.25 * o1[0] + 0.75 * o2[0], 0.25 * o1[1] + 0.75 * o2[1]]]))


def test_regression_with_one_output():
    model = hand_set_model("cooperative", num_labels=1)  # o_1 = 1, o_2 = 0: blend 0.25
    out = model(input_values=X, labels=torch.tensor([2.0]))
    assert out.loss.item() == pytest.approx((2.0 - 0.25) ** 2)


def test_competitive_gradient_is_the_posterior_weighted_error_and_cooperative_couples_experts():
    """Jacobs et al. eq. 1.3's derivative: ∂E/∂o_i = −h_i (d − o_i), h_i = p_i e^{−½‖d−o_i‖²} / Σ_j …, each
    expert pulled to the whole target by its posterior; eq. 1.1's: ∂E/∂o_i = −2 p_i (d − Σ_j p_j o_j)."""
    torch.manual_seed(0)
    outputs = torch.randn(1, 3, 2, requires_grad=True)
    gates = torch.softmax(torch.randn(1, 3), -1)
    d = torch.randn(1, 2)
    from hf_paper_models.models.moe import competitive_loss, cooperative_loss

    competitive_loss(outputs, d, gates).backward()
    o, p = outputs.detach()[0], gates[0]
    h = p * torch.exp(-0.5 * ((d - o) ** 2).sum(-1))
    h = h / h.sum()
    torch.testing.assert_close(outputs.grad[0], -h[:, None] * (d - o))
    outputs.grad = None
    cooperative_loss(outputs, d, gates).backward()
    blend = (p[:, None] * o).sum(0)
    torch.testing.assert_close(outputs.grad[0], -2 * p[:, None] * (d - blend))


def test_competitive_gradient_wrt_gate_is_prior_minus_posterior():
    """Jacobs et al.: the gating network's logits s_i get ∂E/∂s_i = p_i − h_i (E of eq. 1.3 per case; the model
    averages over cases, so (p_i − h_i)/N), and its weights (p − h)ᵀ[x, 1]/N, through the model."""
    model = PaperLocalExpertsForSequenceClassification(hf_paper_models.preset("local-experts-vowel"))
    torch.manual_seed(0)
    with torch.no_grad():  # a non-uniform gate, so that p ≠ h
        model.model.gate.proj.weight.normal_()
        model.model.gate.proj.bias.normal_()
    x, labels = torch.rand(6, 2) * 3, torch.tensor([0, 1, 2, 3, 0, 2])
    out = model(input_values=x, labels=labels)
    out.loss.backward()
    p, o, d = out.gate_probs.detach(), out.expert_outputs.detach(), torch.eye(4)[labels]
    h = p * torch.exp(-0.5 * ((d[:, None] - o) ** 2).sum(-1))
    h = h / h.sum(-1, keepdim=True)
    assert (p - h).abs().max() > 1e-3  # the check is not trivially zero
    torch.testing.assert_close(model.model.gate.proj.weight.grad, (p - h).T @ x / 6)
    torch.testing.assert_close(model.model.gate.proj.bias.grad, (p - h).mean(0))
    # hand-worked: the two-expert model (p = (0.25, 0.75), ‖d − o_1‖² = 1, ‖d − o_2‖² = 2) at d = (1, 1):
    # h_1 = 0.25 e^{-1/2} / (0.25 e^{-1/2} + 0.75 e^{-1}) = 0.3546, so ∂E/∂b_gate = (0.25 − 0.3546, 0.75 − 0.6454)
    hand = hand_set_model("competitive")
    hand(input_values=X, labels=torch.tensor([[1.0, 1.0]])).loss.backward()
    h1 = 0.25 * math.exp(-0.5) / (0.25 * math.exp(-0.5) + 0.75 * math.exp(-1.0))
    torch.testing.assert_close(hand.model.gate.proj.bias.grad, torch.tensor([0.25 - h1, h1 - 0.25]))


def test_gate_is_a_dense_distribution_summing_to_one():
    model = PaperLocalExpertsModel(hf_paper_models.preset("local-experts-vowel"))
    out = model(input_values=torch.randn(7, 2) * 3)
    torch.testing.assert_close(out.gate_probs.sum(-1), torch.ones(7))
    assert (out.gate_probs > 0).all() and out.expert_outputs.shape == (7, 4, 4)
    torch.testing.assert_close(out.last_hidden_state, (out.gate_probs[..., None] * out.expert_outputs).sum(1))


def test_gate_starts_unbiased_and_uniform_init_is_kept_as_an_option():
    # §3: "the gating network assigning equal mixing proportions to all experts in all cases"
    model = PaperLocalExpertsModel(hf_paper_models.preset("local-experts-vowel"))
    assert model.gate.proj.weight.abs().sum() == 0 and model.gate.proj.bias.abs().sum() == 0
    out = model(input_values=torch.randn(5, 2) * 3)
    torch.testing.assert_close(out.gate_probs, torch.full((5, 4), 0.25))
    assert all(e.output.weight.abs().sum() > 0 for e in model.experts)  # the experts start random
    old = PaperLocalExpertsModel(hf_paper_models.preset("local-experts-vowel", gate_init="uniform"))
    r = old.config.initializer_range
    assert old.gate.proj.weight.abs().sum() > 0 and old.gate.proj.weight.abs().max() <= r


def test_class_probs_normalise_each_expert_then_mix():
    # Table 1 caption: each expert's outputs are a distribution over the classes, mixed by the gate.
    model = hand_set_model("competitive", output_activation="sigmoid", num_labels=2)
    out = model(input_values=X)
    o = torch.sigmoid(torch.tensor([[1.0, 0.0], [0.0, 2.0]]))
    expected = 0.25 * o[0] / o[0].sum() + 0.75 * o[1] / o[1].sum()
    torch.testing.assert_close(out.class_probs[0], expected)
    torch.testing.assert_close(out.class_probs.sum(-1), torch.ones(1))
    assert hand_set_model("competitive", output_activation="linear")(input_values=X).class_probs is None


def test_preset_and_auto_classes():
    config = hf_paper_models.preset("local-experts-vowel")
    assert (config.input_size, config.num_labels, config.num_experts, config.moe_loss) == (2, 4, 4, "competitive")
    assert config.hidden_size is None and config.id2label[3] == "ʌ"
    assert type(AutoModel.from_config(config)) is PaperLocalExpertsModel
    assert type(AutoModelForSequenceClassification.from_config(config)) is PaperLocalExpertsForSequenceClassification


@pytest.mark.parametrize(
    "kwargs, match",
    [(dict(num_experts=0), "num_experts"), (dict(moe_loss="mse"), "moe_loss"), (dict(input_size=0), "input_size"),
     (dict(hidden_act="nope"), "hidden_act")],
)
def test_config_rejects_impossible_values(kwargs, match):
    with pytest.raises(ValueError, match=match):
        hf_paper_models.preset("local-experts-vowel", **kwargs)


def test_bad_labels_raise_value_error():
    model = PaperLocalExpertsForSequenceClassification(hf_paper_models.preset("local-experts-vowel"))
    with pytest.raises(ValueError, match="class indices"):
        model(input_values=torch.randn(2, 2), labels=torch.tensor([0, 4]))


# ---------------------------------------------------------------------------------------------
# The synthetic vowel data
# ---------------------------------------------------------------------------------------------


def test_vowel_data_is_deterministic_and_shaped():
    a, b, c = make_vowel_data(seed=0), make_vowel_data(seed=0), make_vowel_data(seed=1)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["input_values"], c["input_values"])
    assert a["input_values"].shape == (75 * 4 * 2, 2) and a["input_values"].dtype == torch.float32
    assert torch.bincount(a["labels"]).tolist() == [150] * 4  # balanced classes
    torch.testing.assert_close(a["input_values"], (a["formants_hz"] / 1000).float())


def test_vowel_data_speaker_groups_and_means_follow_peterson_and_barney():
    data = make_vowel_data(num_speakers=760, utterances_per_vowel=2, seed=3)
    speakers_per_group = torch.bincount(data["group"], minlength=3) // 8
    total = sum(GROUP_SHARES.values())
    for g, name in enumerate(GROUPS):
        assert abs(int(speakers_per_group[g]) - 760 * GROUP_SHARES[name] / total) <= 1
        for v, vowel in enumerate(VOWELS):
            rows = data["formants_hz"][(data["group"] == g) & (data["labels"] == v)]
            # median of log-normal scatter around the mean: the geometric mean equals the table value
            geometric = rows.log().mean(0).exp()
            for measured, table in zip(geometric.tolist(), PETERSON_BARNEY_MEANS[name][vowel]):
                assert measured == pytest.approx(table, rel=0.02)
    # F2 of [i] exceeds F2 of [a] for every group; F1 of [a] exceeds F1 of [i]: the vowel triangle.
    for name in GROUPS:
        assert PETERSON_BARNEY_MEANS[name]["i"][1] > PETERSON_BARNEY_MEANS[name]["a"][1]
        assert PETERSON_BARNEY_MEANS[name]["a"][0] > PETERSON_BARNEY_MEANS[name]["i"][0]


def test_speaker_scale_moves_a_speakers_formants_together():
    data = make_vowel_data(num_speakers=300, utterance_std=0.0, seed=0)
    # without utterance noise, every formant of a speaker is its group mean times the same factor
    ratios = []
    for row, label, group in zip(data["formants_hz"], data["labels"], data["group"]):
        mean = torch.tensor(PETERSON_BARNEY_MEANS[GROUPS[group]][VOWELS[label]], dtype=torch.float64)
        ratios.append(row / mean)
    ratios = torch.stack(ratios).view(300, 8, 2)
    assert torch.allclose(ratios, ratios[:, :1, :1].expand_as(ratios))
    assert ratios[:, 0, 0].log().std().item() == pytest.approx(0.06, rel=0.2)


def test_peterson_barney_speaker_order_puts_the_children_in_the_papers_test_split():
    data = make_vowel_data(seed=0, speaker_order="peterson_barney")
    groups = data["group"].view(75, 8)[:, 0]
    assert groups.tolist() == sorted(groups.tolist())  # men, then women, then children
    train, test = split_by_speaker(data, 50)  # "the first 50 speakers ... the remaining 25"
    assert torch.bincount(train["group"], minlength=3).div(8).tolist() == [32, 18, 0]
    assert torch.bincount(test["group"], minlength=3).div(8).tolist() == [0, 10, 15]
    with pytest.raises(ValueError, match="speaker_order"):
        make_vowel_data(speaker_order="alphabetical")


def test_split_by_speaker_is_disjoint():
    train, test = split_by_speaker(make_vowel_data(seed=0), 50)
    assert set(train["speaker"].tolist()).isdisjoint(test["speaker"].tolist())
    assert len(set(train["speaker"].tolist())) == 50 and len(set(test["speaker"].tolist())) == 25
    assert len(set(test["group"].tolist())) == 3  # speakers of every group on both sides


def test_the_mixture_learns_the_vowel_task():
    torch.manual_seed(0)
    train, test = split_by_speaker(make_vowel_data(seed=0), 50)
    model = PaperLocalExpertsForSequenceClassification(hf_paper_models.preset("local-experts-vowel"))
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(300):
        loss = model(input_values=train["input_values"], labels=train["labels"]).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        out = model(input_values=test["input_values"])
    assert (out.logits.argmax(-1) == test["labels"]).float().mean() > 0.8
    assert (out.class_probs.argmax(-1) == test["labels"]).float().mean() > 0.8


# ---------------------------------------------------------------------------------------------
# The vowel recipe
# ---------------------------------------------------------------------------------------------


def test_vowel_recipe_trains_saves_and_reports(tmp_path):
    import importlib.util
    import json
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2] / "training"
    spec = importlib.util.spec_from_file_location("train_local_experts_under_test", root / "train_local_experts.py")
    script = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = script  # its dataclasses look their module up there
    spec.loader.exec_module(script)
    final = script.main([
        "--config", str(root / "configs" / "local_experts_vowel.yaml"), "--output_dir", str(tmp_path),
        "--max_steps", "40", "--eval_steps", "0", "--save_steps", "0", "--report_to", "none",
        "--moe_loss", "cooperative",
    ])
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["step"] == 40 and 0.0 <= results["test_accuracy"] <= 1.0
    for shares in results["expert_share"].values():
        assert sum(shares) == pytest.approx(1.0)
    loaded = AutoModelForSequenceClassification.from_pretrained(final)
    assert loaded.config.moe_loss == "cooperative" and loaded.config.num_labels == 4
