"""paper-moe-lstm (Shazeer et al. 2017) against independent references: ``torch.nn.LSTM`` with the same
weights, the paper's formulas (eq. 12-14, Appendix A-C) written out here token by token, Table 7."""

from __future__ import annotations

import math
import sys

import pytest
import torch
from transformers import AutoModel, AutoModelForCausalLM

import hf_paper_models
from hf_paper_models.models.moe import NoisyTopKMoE
from hf_paper_models.models.moe_lstm import (
    PAPER_PARAMETERS,
    PAPER_PARAMETERS_EXCLUDING_EMBEDDINGS,
    PaperMoELSTMForCausalLM,
    PaperMoELSTMLSTM,
    PaperMoELSTMModel,
)

TINY = dict(vocab_size=40, hidden_size=8, intermediate_size=6, pad_token_id=0, bos_token_id=1, eos_token_id=2)


def tiny(name="moe-lstm-4", **overrides):
    return hf_paper_models.preset(name, **{**TINY, **overrides})


def hierarchical(**overrides):
    return tiny("moe-lstm-256-h", num_experts=12, num_expert_groups=3, **overrides)


def randomise_gates(model, seed=0):
    """The paper starts every gate at zero (all ties); give them values so that routing is non-trivial."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "w_gate" in name or "w_noise" in name:
                p.copy_(torch.randn(p.shape, generator=generator))


def nn_lstm_from(layer: PaperMoELSTMLSTM) -> torch.nn.LSTM:
    ref = torch.nn.LSTM(layer.input_size, layer.hidden_size, batch_first=True)
    with torch.no_grad():
        ref.weight_ih_l0.copy_(layer.input_proj.weight)
        ref.bias_ih_l0.copy_(layer.input_proj.bias)
        ref.weight_hh_l0.copy_(layer.weight_hh_l0)
        ref.bias_hh_l0.copy_(layer.bias_hh_l0)
    return ref


# ---------------------------------------------------------------------------------------------
# The LSTM layer
# ---------------------------------------------------------------------------------------------


def test_lstm_layer_equals_torch_nn_lstm_fused_and_step_by_step():
    torch.manual_seed(0)
    layer = PaperMoELSTMLSTM(5, 7)
    for p in layer.parameters():
        torch.nn.init.uniform_(p, -0.5, 0.5)
    ref = nn_lstm_from(layer)
    x = torch.randn(3, 6, 5)
    h0, c0 = torch.randn(3, 7), torch.randn(3, 7)
    expected, (h_n, c_n) = ref(x, (h0[None], c0[None]))
    fused, (h, c) = layer(x, (h0, c0))  # no mask: the fused kernel
    stepped, (h2, c2) = layer(x, (h0, c0), mask=torch.ones(3, 6, dtype=torch.bool))  # step by step
    for out, hh, cc in ((fused, h, c), (stepped, h2, c2)):
        torch.testing.assert_close(out, expected, atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(hh, h_n[0], atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(cc, c_n[0], atol=1e-6, rtol=1e-5)


def test_lstm_layer_holds_its_state_over_padding():
    torch.manual_seed(0)
    layer = PaperMoELSTMLSTM(4, 5)
    ref = nn_lstm_from(layer)
    x = torch.randn(1, 4, 4)
    padded = torch.cat([torch.randn(1, 3, 4), x], dim=1)  # left padding: 3 junk positions
    mask = torch.tensor([[False] * 3 + [True] * 4])
    out, (h, c) = layer(padded, mask=mask)
    expected, (h_n, c_n) = ref(x)
    torch.testing.assert_close(out[:, 3:], expected, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close((h, c), (h_n[0], c_n[0]), atol=1e-6, rtol=1e-5)


# ---------------------------------------------------------------------------------------------
# The MoE layers, from the paper's formulas
# ---------------------------------------------------------------------------------------------


def phi(z: float) -> float:
    return 0.5 * (1.0 + math.erf(z / math.sqrt(2.0)))


def kth_excluding(values: list[float], k: int, i: int) -> float:
    """Appendix A: the k-th highest component of ``values``, excluding component i."""
    others = sorted((v for j, v in enumerate(values) if j != i), reverse=True)
    return others[k - 1]


def expert_reference(layer: NoisyTopKMoE, e: int, x: torch.Tensor) -> torch.Tensor:
    return torch.relu(x @ layer.experts.wi[e]) @ layer.experts.wo[e]


def softmax_top_k(logits: torch.Tensor, k: int) -> dict[int, float]:
    values = logits.tolist()
    top = sorted(range(len(values)), key=lambda i: -values[i])[:k]
    z = sum(math.exp(values[i]) for i in top)
    return {i: math.exp(values[i]) / z for i in top}


def test_flat_moe_layer_keeps_k_experts_and_follows_the_formulas():
    torch.manual_seed(0)
    layer = NoisyTopKMoE(6, 5, 8, 3, torch.nn.ReLU()).eval()
    for p in layer.parameters():
        torch.nn.init.normal_(p)
    x = torch.randn(10, 6)
    y = layer(x)
    stats = layer.stats
    importance, load = [0.0] * 8, [0.0] * 8
    for t in range(10):
        clean = x[t] @ layer.gate.w_gate.T  # eval: H(x) = x W_g (no noise)
        std = torch.nn.functional.softplus(x[t] @ layer.gate.w_noise.T).detach()
        gates = softmax_top_k(clean, 3)
        assert len(gates) == 3
        expected = sum(g * expert_reference(layer, e, x[t]) for e, g in gates.items())
        torch.testing.assert_close(y[t], expected, atol=1e-5, rtol=1e-4)
        values = clean.tolist()
        for i in range(8):
            importance[i] += gates.get(i, 0.0)
            load[i] += phi((values[i] - kth_excluding(values, 3, i)) / float(std[i]))

    def cv2(v):
        mean = sum(v) / len(v)
        return sum((a - mean) ** 2 for a in v) / len(v) / mean**2

    assert stats.losses["importance"].item() == pytest.approx(cv2(importance), rel=1e-4)
    assert stats.losses["load"].item() == pytest.approx(cv2(load), rel=1e-4)
    assert stats.aux_loss.item() == pytest.approx(0.1 * cv2(importance) + 0.1 * cv2(load), rel=1e-4)
    assert stats.expert_load.sum().item() == pytest.approx(3.0)  # each token goes to exactly k experts


def test_hierarchical_moe_layer_follows_appendix_b():
    """eq. 12: y = Σ_i Σ_j G_primary(x)_i G_i(x)_j E_ij(x); eq. 13 Importance_H; eq. 14
    Load_H(X)_ij = Load_primary(X)_i · Load_i(X^(i))_j / |X^(i)|."""
    torch.manual_seed(1)
    groups, b, k1, k2 = 4, 3, 2, 2
    layer = NoisyTopKMoE(6, 5, groups * b, k2, torch.nn.ReLU(), num_groups=groups, group_k=k1).eval()
    for p in layer.parameters():
        torch.nn.init.normal_(p)
    x = torch.randn(9, 6)
    y = layer(x)
    importance = [[0.0] * b for _ in range(groups)]
    load_primary = [0.0] * groups
    load_secondary = [[0.0] * b for _ in range(groups)]
    sent = [0] * groups
    for t in range(9):
        primary_logits = x[t] @ layer.gate.w_gate.T
        primary_std = torch.nn.functional.softplus(x[t] @ layer.gate.w_noise.T).detach()
        primary = softmax_top_k(primary_logits, k1)
        values = primary_logits.tolist()
        for i in range(groups):
            load_primary[i] += phi((values[i] - kth_excluding(values, k1, i)) / float(primary_std[i]))
        expected = torch.zeros(6)
        for i, g_primary in primary.items():
            logits = x[t] @ layer.secondary_w_gate[i]  # G_i, only for the groups x is sent to
            std = torch.nn.functional.softplus(x[t] @ layer.secondary_w_noise[i]).detach()
            secondary = softmax_top_k(logits, k2)
            sent[i] += 1
            for j, g in secondary.items():
                expected = expected + g_primary * g * expert_reference(layer, i * b + j, x[t])
                importance[i][j] += g_primary * g
            vals = logits.tolist()
            for j in range(b):
                load_secondary[i][j] += phi((vals[j] - kth_excluding(vals, k2, j)) / float(std[j]))
        torch.testing.assert_close(y[t], expected, atol=1e-5, rtol=1e-4)
    flat_importance = [v for row in importance for v in row]
    load = [load_primary[i] * load_secondary[i][j] / max(sent[i], 1) for i in range(groups) for j in range(b)]

    def cv2(v):
        mean = sum(v) / len(v)
        return sum((a - mean) ** 2 for a in v) / len(v) / mean**2

    assert layer.stats.losses["importance"].item() == pytest.approx(cv2(flat_importance), rel=1e-4)
    assert layer.stats.losses["load"].item() == pytest.approx(cv2(load), rel=1e-4)
    assert layer.stats.expert_load.sum().item() == pytest.approx(k1 * k2)


def test_noise_in_training_only_and_gradients_reach_every_gate():
    torch.manual_seed(0)
    layer = NoisyTopKMoE(6, 5, 12, 2, torch.nn.ReLU(), num_groups=3, group_k=2)
    torch.nn.init.normal_(layer.experts.wi)  # experts start empty (the model's _init_weights fills them)
    torch.nn.init.normal_(layer.experts.wo)
    x = torch.randn(16, 6)
    layer.eval()
    assert torch.equal(layer(x), layer(x))
    layer.train()
    out = layer(x)
    (out.sum() + layer.stats.aux_loss).backward()
    for name in ("gate.w_gate", "gate.w_noise", "secondary_w_gate", "secondary_w_noise"):
        grad = dict(layer.named_parameters())[name].grad
        assert grad is not None and grad.abs().sum() > 0, name


# ---------------------------------------------------------------------------------------------
# The language model
# ---------------------------------------------------------------------------------------------


def test_stack_is_appendix_c_residual_dropout_and_sigmoid():
    """x ← x + LSTM(x); x ← x + σ(MoE(x)); x ← x + LSTM(x) (eval: dropout off), with nn.LSTM references."""
    config = tiny(num_experts=6, num_experts_per_tok=2)
    model = PaperMoELSTMModel(config).eval()
    randomise_gates(model)
    ids = torch.randint(3, 40, (2, 5))
    x = model.embed_tokens(ids)
    first, second = model.layers
    with torch.no_grad():
        x = x + nn_lstm_from(first.lstm)(x)[0]
        x = x + torch.sigmoid(first.moe(x))
        x = x + nn_lstm_from(second.lstm)(x)[0]
        out = model(ids)
    assert second.moe is None
    torch.testing.assert_close(out.last_hidden_state, x, atol=1e-5, rtol=1e-4)


def test_training_loss_adds_the_weighted_balancing_losses():
    config = tiny(num_experts=6, num_experts_per_tok=2)
    model = PaperMoELSTMForCausalLM(config)
    randomise_gates(model)
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    ids = torch.randint(3, 40, (2, 7))
    model.eval()
    with torch.no_grad():
        out = model(ids, labels=ids)
    logits = out.logits[:, :-1].reshape(-1, 40)
    cross_entropy = torch.nn.functional.cross_entropy(logits, ids[:, 1:].reshape(-1))
    torch.testing.assert_close(out.loss, cross_entropy)  # evaluation: perplexity's loss alone
    assert out.aux_loss.item() == pytest.approx(0.1 * out.importance_loss.item() + 0.1 * out.load_loss.item())
    assert out.aux_loss.item() > 0
    assert out.expert_load.shape == (1, 6)
    model.train()
    torch.manual_seed(3)
    out = model(ids, labels=ids)
    logits = out.logits[:, :-1].reshape(-1, 40)
    cross_entropy = torch.nn.functional.cross_entropy(logits, ids[:, 1:].reshape(-1))
    torch.testing.assert_close(out.loss, cross_entropy + out.aux_loss)


def test_dense_baseline_has_no_moe_and_four_lstm_layers():
    model = PaperMoELSTMModel(hf_paper_models.preset("lstm-baseline", **TINY))
    assert len(model.layers) == 4 and not model.moe_layers()
    out = model(torch.randint(3, 40, (1, 4)))
    assert out.expert_load is None and out.aux_loss.item() == 0.0


def test_padded_prompt_gives_the_logits_of_the_prompt_alone():
    model = PaperMoELSTMForCausalLM(hierarchical()).eval()
    randomise_gates(model)
    ids = torch.randint(3, 40, (1, 5))
    padded = torch.cat([torch.zeros(1, 3, dtype=torch.long), ids], dim=1)
    mask = torch.tensor([[0, 0, 0, 1, 1, 1, 1, 1]])
    with torch.no_grad():
        alone = model(ids).logits
        batch = model(padded, attention_mask=mask).logits
    torch.testing.assert_close(batch[:, 3:], alone, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("beams", [1, 3])
def test_generation_cached_equals_uncached_with_sparse_hierarchical_routing(beams):
    model = PaperMoELSTMForCausalLM(hierarchical()).eval()
    randomise_gates(model)
    ids = torch.randint(3, 40, (2, 5))
    mask = torch.ones_like(ids)
    ids[0, :2], mask[0, :2] = 0, 0
    kwargs = dict(attention_mask=mask, max_new_tokens=8, do_sample=False, num_beams=beams, pad_token_id=0)
    cached = model.generate(ids, use_cache=True, **kwargs)
    uncached = model.generate(ids, use_cache=False, **kwargs)
    assert torch.equal(cached, uncached)
    # greedy by hand: argmax of the full-prefix logits, one token at a time
    if beams == 1:
        seq, m = ids, mask
        for _ in range(8):
            with torch.no_grad():
                nxt = model(seq, attention_mask=m).logits[:, -1].argmax(-1, keepdim=True)
            seq, m = torch.cat([seq, nxt], 1), torch.cat([m, torch.ones_like(nxt)], 1)
        assert torch.equal(cached, seq)


def test_auto_classes():
    config = tiny()
    assert type(AutoModel.from_config(config)) is PaperMoELSTMModel
    assert type(AutoModelForCausalLM.from_config(config)) is PaperMoELSTMForCausalLM


# ---------------------------------------------------------------------------------------------
# Presets against the paper (Table 7 of Appendix C)
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(PAPER_PARAMETERS))
def test_preset_parameter_counts_match_table_7(name):
    """Table 7 (Appendix C, 1B Word): "#Params excluding embedding and softmax layers" printed to 0.1M
    (8.4M … 4303.4M) and "Total #Params" printed to 0.1B."""
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(hf_paper_models.preset(name))
    total = sum(p.numel() for p in model.parameters())
    outside = model.model.embed_tokens.weight.numel() + sum(p.numel() for p in model.lm_head.parameters())
    assert round((total - outside) / 1e5) == round(PAPER_PARAMETERS_EXCLUDING_EMBEDDINGS[name] / 1e5)
    assert round(total / 1e8) == round(PAPER_PARAMETERS[name] / 1e8)


def test_presets_are_the_papers_configurations():
    flat = hf_paper_models.preset("moe-lstm-256")
    assert (flat.hidden_size, flat.intermediate_size, flat.num_experts, flat.num_experts_per_tok) == (512, 1024, 256, 4)
    assert flat.num_expert_groups is None and flat.vocab_size == 793471 and flat.moe_layers == [0]
    h = hf_paper_models.preset("moe-lstm-4096-h")
    assert (h.num_experts, h.num_expert_groups, h.num_groups_per_tok, h.num_experts_per_tok) == (4096, 16, 2, 2)
    assert (h.w_importance, h.w_load) == (0.1, 0.1)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(num_experts=0), "num_experts"),
        (dict(num_experts=6, num_expert_groups=4), "divisible"),
        (dict(num_experts_per_tok=5), "num_experts_per_tok"),
        (dict(moe_layers=[2]), "moe_layers"),
        (dict(dropout=1.0), "dropout"),
        (dict(hidden_act="nope"), "hidden_act"),
        (dict(w_load=-1.0), "w_load"),
    ],
)
def test_config_rejects_impossible_values(kwargs, match):
    with pytest.raises(ValueError, match=match):
        tiny(**kwargs)


# ---------------------------------------------------------------------------------------------
# The causal-LM recipe
# ---------------------------------------------------------------------------------------------


def _pretrain_lm_script():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "training" / "pretrain_lm.py"
    spec = importlib.util.spec_from_file_location("pretrain_lm_for_moe_lstm", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module, path.parent / "configs" / "moe_lstm_tiny.yaml"


def test_recipe_config_builds_a_hierarchical_moe_lstm_and_logs_the_balancing_losses():
    script, config_file = _pretrain_lm_script()
    loop_args, model_args, data_args = script.parse_args(
        [script.TrainingLoopArguments, script.ModelArguments, script.DataArguments], ["--config", str(config_file)]
    )
    config = script.build_config(model_args, data_args, vocab_size=50)
    assert config.model_type == "paper-moe-lstm" and config.num_expert_groups == 4 and config.num_experts == 32
    assert data_args.block_size <= config.max_position_embeddings and loop_args.max_steps >= 100
    model = PaperMoELSTMForCausalLM(config).train()
    ids = torch.randint(0, 50, (2, 9))
    loss, extras = script.causal_lm_loss(model, {"input_ids": ids, "labels": ids})
    assert set(extras) == {"aux_loss", "importance_loss", "load_loss", "expert_load_min", "expert_load_max"}
    torch.testing.assert_close(extras["aux_loss"], 0.1 * extras["importance_loss"] + 0.1 * extras["load_loss"])
    assert 0 <= extras["expert_load_min"] <= 4 / 32 <= extras["expert_load_max"] <= 1


def test_sparse_hierarchical_model_compiles_without_graph_breaks_and_checkpoints_exactly():
    """The contract suite's tiny config routes densely (4 of 4 experts); this one routes sparsely through
    both gate levels, with padding (the step-by-step LSTM path)."""
    torch.manual_seed(0)
    model = PaperMoELSTMForCausalLM(hierarchical()).eval()
    randomise_gates(model)
    ids = torch.randint(3, 40, (2, 10))
    mask = torch.ones_like(ids)
    mask[0, :3] = 0
    torch._dynamo.reset()
    compiled = torch.compile(model, backend="eager", fullgraph=True)
    with torch.no_grad():
        torch.testing.assert_close(compiled(ids, attention_mask=mask).logits, model(ids, attention_mask=mask).logits)
    model.train()
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    grads = []
    for checkpointing in (False, True):
        model.zero_grad()
        if checkpointing:
            model.gradient_checkpointing_enable()
        torch.manual_seed(5)  # the same gate noise in both runs (checkpointing replays the RNG)
        model(ids, labels=ids).loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and any("secondary" in n for n in grads[0])
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], atol=1e-6, rtol=1e-5)
