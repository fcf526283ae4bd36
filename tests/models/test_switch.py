"""Switch Transformers and the shared MoE machinery, against transformers' Switch after conversion and
against the papers' formulas written out here (Shazeer et al. 2017 Appendix A; Fedus et al. 2022 §2)."""

from __future__ import annotations

import math

import pytest
import torch
import transformers
from test_t5 import OUR_TINY as T5_OUR_TINY
from test_t5 import THEIR_TINY as T5_THEIR_TINY
from test_t5 import count, ids, padded  # the T5 tests' helpers: token ids, padded batches, parameter count

from hf_paper_models import convert_from_transformers, convert_to_transformers, preset
from hf_paper_models.models import moe
from hf_paper_models.models.switch import (
    PAPER_PARAMETERS,
    PRESETS,
    PaperSwitchConfig,
    PaperSwitchEncoderModel,
    PaperSwitchForConditionalGeneration,
    PaperSwitchModel,
    is_sparse_layer,
)

# The T5 tests' tiny sizes with four layers a side (Switch layers 1 and 3) and four experts.
THEIR_TINY = dict(
    T5_THEIR_TINY, num_layers=4, num_decoder_layers=4, num_sparse_encoder_layers=2, num_sparse_decoder_layers=2,
    num_experts=4,
)
OUR_TINY = dict(T5_OUR_TINY, num_hidden_layers=4, num_experts=4)


def their_tiny(cls, **kw):
    torch.manual_seed(0)
    return cls(transformers.SwitchTransformersConfig(**{**THEIR_TINY, **kw})).eval()


def ours_tiny(**kw) -> PaperSwitchForConditionalGeneration:
    torch.manual_seed(0)
    return PaperSwitchForConditionalGeneration(preset("switch-base-8", **{**OUR_TINY, **kw})).eval()


# ---------------------------------------------------------------------------------------------
# Against transformers' Switch Transformers
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("capacity", [64, 3], ids=["room-for-all", "tokens-dropped"])
@pytest.mark.parametrize(
    "their_class, our_class",
    [
        (transformers.SwitchTransformersForConditionalGeneration, PaperSwitchForConditionalGeneration),
        (transformers.SwitchTransformersModel, PaperSwitchModel),
        (transformers.SwitchTransformersEncoderModel, PaperSwitchEncoderModel),
    ],
)
def test_conversion_both_ways_keeps_outputs(their_class, our_class, capacity):
    theirs = their_tiny(their_class, expert_capacity=capacity)
    ours = convert_from_transformers(theirs)
    assert type(ours) is our_class and ours.config.expert_capacity == capacity
    assert ours.config.encoder_sparse_step == 2
    input_ids, mask = padded()
    kwargs = dict(input_ids=input_ids, attention_mask=mask)
    key = "last_hidden_state"
    if their_class is not transformers.SwitchTransformersEncoderModel:
        kwargs["decoder_input_ids"] = ids(length=11, seed=1)
    if their_class is transformers.SwitchTransformersForConditionalGeneration:
        key = "logits"
    with torch.no_grad():
        a, b = theirs(**kwargs), ours(**kwargs)
    torch.testing.assert_close(b[key], a[key], atol=1e-4, rtol=1e-4)
    stats = ours.encoder.router_stats()
    assert len(stats) == 2  # layers 1 and 3 of 4
    dropped = torch.stack([s.dropped_fraction for s in stats])
    assert (dropped > 0).any() if capacity == 3 else (dropped == 0).all()
    back = convert_to_transformers(ours)
    assert type(back) is their_class
    with torch.no_grad():
        torch.testing.assert_close(back(**kwargs)[key], a[key], atol=1e-4, rtol=1e-4)


def test_router_losses_match_transformers_with_one_switch_layer_per_stack(tmp_path):
    # With one Switch layer per stack transformers' stack-wide losses are the per-layer ones.
    theirs = their_tiny(
        transformers.SwitchTransformersForConditionalGeneration,
        num_layers=2, num_decoder_layers=2, num_sparse_encoder_layers=1, num_sparse_decoder_layers=1,
        expert_capacity=5,
    )
    theirs.save_pretrained(tmp_path)
    ours = convert_from_transformers(tmp_path)  # from a folder, too
    input_ids, mask = padded()
    labels = ids(length=9, seed=2)
    with torch.no_grad():
        a = theirs(input_ids=input_ids, attention_mask=mask, labels=labels, output_router_logits=True)
        b = ours(input_ids=input_ids, attention_mask=mask, labels=labels, output_router_logits=True)
    torch.testing.assert_close(b.logits, a.logits, atol=1e-4, rtol=1e-4)
    for name in ("encoder_aux_loss", "decoder_aux_loss", "encoder_z_loss", "decoder_z_loss"):
        torch.testing.assert_close(b[name], a[name], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(b.encoder_router_logits[0], a.encoder_router_logits[0])


@pytest.mark.parametrize("beams", [1, 2])
def test_generation_matches_transformers(beams):
    theirs = their_tiny(transformers.SwitchTransformersForConditionalGeneration, expert_capacity=64)
    ours = convert_from_transformers(theirs)
    input_ids, mask = padded()
    kwargs = dict(attention_mask=mask, max_new_tokens=8, do_sample=False, num_beams=beams)
    torch.testing.assert_close(ours.generate(input_ids, **kwargs), theirs.generate(input_ids, **kwargs))


def test_conversion_refusals():
    with pytest.raises(ValueError, match="router_bias"):
        convert_from_transformers(their_tiny(transformers.SwitchTransformersModel, router_bias=True))
    with pytest.raises(ValueError, match="expert_capacity"):
        convert_to_transformers(ours_tiny(eval_capacity_factor=2.0))
    with pytest.raises(ValueError, match="sparse"):  # every third layer has no transformers twin here
        convert_to_transformers(ours_tiny(encoder_sparse_step=3, num_hidden_layers=5))
    # Never dropping in evaluation converts, with room for every position.
    assert convert_to_transformers(ours_tiny()).config.expert_capacity == 64


# ---------------------------------------------------------------------------------------------
# Gates and losses, from the papers' formulas
# ---------------------------------------------------------------------------------------------


def test_noisy_top_k_gate_keeps_exactly_k_and_follows_the_formula():
    torch.manual_seed(0)
    gate = moe.NoisyTopKGate(input_size=6, num_experts=8, k=3)
    torch.nn.init.normal_(gate.w_gate)
    torch.nn.init.normal_(gate.w_noise)
    x, noise = torch.randn(50, 6), torch.randn(50, 8)
    out = gate(x, noise=noise)
    assert ((out.gates != 0).sum(-1) == 3).all()
    torch.testing.assert_close(out.gates.sum(-1), torch.ones(50))
    # H(x) = x W_g + N(0, 1) · softplus(x W_noise); G = softmax(KeepTopK(H, k)), KeepTopK -> -inf elsewhere.
    h = x @ gate.w_gate.T + noise * torch.log1p(torch.exp(x @ gate.w_noise.T))
    kth = h.sort(-1, descending=True).values[:, 2:3]
    expected = torch.softmax(torch.where(h >= kth, h, torch.tensor(-math.inf)), -1)
    torch.testing.assert_close(out.gates, expected)
    gate.train()
    assert ((gate(x).gates != 0).sum(-1) == 3).all()  # with its own noise, too


def _cv_squared(values: list[float]) -> float:
    mean = sum(values) / len(values)
    return (sum((v - mean) ** 2 for v in values) / len(values)) / mean**2


@pytest.mark.parametrize("k", [1, 2, 4])
def test_load_and_importance_losses_equal_the_papers_formulas(k):
    torch.manual_seed(1)
    num_experts, tokens = 6, 20
    gate = moe.NoisyTopKGate(input_size=5, num_experts=num_experts, k=k)
    torch.nn.init.normal_(gate.w_gate)
    torch.nn.init.normal_(gate.w_noise)
    x, noise = torch.randn(tokens, 5).double(), torch.randn(tokens, num_experts).double()
    gate = gate.double()
    out = gate(x, noise=noise)
    clean = (x @ gate.w_gate.T).tolist()
    std = torch.nn.functional.softplus(x @ gate.w_noise.T).tolist()
    h = out.noisy_logits.tolist()
    # Appendix A: P(x, i) = Φ((clean_i − kth_excluding(H(x), k, i)) / noise_std_i); Load_i = Σ_x P(x, i).
    load = [0.0] * num_experts
    for t in range(tokens):
        for i in range(num_experts):
            others = sorted((h[t][j] for j in range(num_experts) if j != i), reverse=True)
            kth_excluding = others[k - 1]
            z = (clean[t][i] - kth_excluding) / std[t][i]
            load[i] += 0.5 * (1 + math.erf(z / math.sqrt(2)))
    torch.testing.assert_close(moe.smooth_load(out, k).double(), torch.tensor(load, dtype=torch.double))
    assert moe.load_loss(out, k).item() == pytest.approx(_cv_squared(load), rel=1e-5)
    importance = out.gates.sum(0).tolist()  # Importance(X) = Σ_x G(x)
    assert moe.importance_loss(out.gates).item() == pytest.approx(_cv_squared(importance), rel=1e-5)


def test_local_experts_losses_hand_worked():
    # Two cases, two experts, 2-d targets (Jacobs et al. 1991, eq. 1 and 1.3).
    outputs = torch.tensor([[[1.0, 0.0], [0.0, 2.0]], [[0.5, 0.5], [1.0, 1.0]]])
    target = torch.tensor([[1.0, 1.0], [0.0, 1.0]])
    gates = torch.tensor([[0.25, 0.75], [0.5, 0.5]])
    # Cooperative: blended outputs (0.25, 1.5) and (0.75, 0.75); errors 0.5625+0.25, 0.5625+0.0625.
    assert moe.cooperative_loss(outputs, target, gates).item() == pytest.approx((0.8125 + 0.625) / 2)
    # Competitive: squared distances (1, 2) and (0.5, 1).
    case0 = -math.log(0.25 * math.exp(-0.5) + 0.75 * math.exp(-1.0))
    case1 = -math.log(0.5 * math.exp(-0.25) + 0.5 * math.exp(-0.5))
    assert moe.competitive_loss(outputs, target, gates).item() == pytest.approx((case0 + case1) / 2)
    probs = moe.SoftmaxGate(3, 4)(torch.randn(5, 3))
    torch.testing.assert_close(probs.sum(-1), torch.ones(5))
    assert (probs > 0).all()  # dense: every expert has a share


def test_load_balancing_is_alpha_at_uniform_routing_and_n_when_collapsed():
    num_experts, tokens, alpha = 4, 16, 0.01
    uniform = torch.full((2, tokens, num_experts), 1 / num_experts)
    balanced = torch.arange(tokens).remainder(num_experts).expand(2, tokens)
    assert (alpha * moe.load_balancing_loss(uniform, balanced)).item() == pytest.approx(alpha)
    collapsed = torch.zeros(1, tokens, num_experts)
    collapsed[..., 0] = 1.0
    assert moe.load_balancing_loss(collapsed, torch.zeros(1, tokens, dtype=torch.long)).item() == pytest.approx(4)


def test_switch_layer_aux_loss_is_alpha_n_sum_f_p():
    torch.manual_seed(0)
    layer = moe.SwitchFeedForward(8, 16, 4, torch.nn.ReLU(), aux_loss_coef=0.01, z_loss_coef=0.001).eval()
    torch.nn.init.normal_(layer.router.weight)
    torch.nn.init.normal_(layer.experts.wi)
    torch.nn.init.normal_(layer.experts.wo)
    x = torch.randn(3, 10, 8)
    layer(x)
    # §2.2 eq. 4-6 per sequence: f_i = (1/T) Σ_x 1{argmax p(x) = i}, P_i = (1/T) Σ_x p_i(x).
    probs = torch.softmax(x @ layer.router.weight.T, -1)
    per_sequence = []
    for b in range(3):
        f = [sum(int(probs[b, t].argmax()) == i for t in range(10)) / 10 for i in range(4)]
        p = probs[b].mean(0).tolist()
        per_sequence.append(4 * sum(fi * pi for fi, pi in zip(f, p, strict=True)))
    balance = sum(per_sequence) / 3
    z = (torch.logsumexp(x @ layer.router.weight.T, -1) ** 2).mean().item()
    assert layer.stats.losses["load_balancing"].item() == pytest.approx(balance, rel=1e-5)
    assert layer.stats.aux_loss.item() == pytest.approx(0.01 * balance + 0.001 * z, rel=1e-5)
    assert layer.stats.expert_load.sum().item() == pytest.approx(1.0)


def test_router_runs_in_float32_under_bfloat16():
    torch.manual_seed(0)
    layer = moe.SwitchFeedForward(16, 32, 4, torch.nn.ReLU()).to(torch.bfloat16).eval()
    torch.nn.init.normal_(layer.router.weight)
    x = torch.randn(2, 5, 16, dtype=torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = layer.router(x)
        out = layer(x)
        linear = torch.nn.functional.linear(x.float(), layer.router.weight.float())
    assert linear.dtype == torch.bfloat16  # what autocast does to an ordinary matmul
    assert logits.dtype == torch.float32 and layer.stats.router_logits.dtype == torch.float32
    expected = x.double() @ layer.router.weight.double().T
    torch.testing.assert_close(logits.double(), expected, atol=1e-5, rtol=1e-5)
    assert out.dtype == torch.bfloat16
    # The whole bfloat16 model routes in float32, too.
    model = ours_tiny().to(torch.bfloat16)
    with torch.no_grad():
        model(input_ids=ids(), decoder_input_ids=ids(length=5))
    assert all(s.router_logits.dtype == torch.float32 for s in model.encoder.router_stats())


def test_jitter_multiplies_the_router_input_in_training_only():
    torch.manual_seed(0)
    router = moe.SwitchRouter(6, 3, jitter_noise=0.1)
    torch.nn.init.normal_(router.weight)
    x = torch.randn(4, 6)
    clean = x @ router.weight.T
    torch.testing.assert_close(router.eval()(x), clean)
    torch.manual_seed(5)
    noisy = router.train()(x)
    torch.manual_seed(5)
    factor = torch.empty_like(x).uniform_(0.9, 1.1)
    torch.testing.assert_close(noisy, (x * factor) @ router.weight.T)


def test_dropped_tokens_pass_through_the_residual_unchanged():
    model = ours_tiny(expert_capacity=1)
    layer_ff = model.encoder.block[1].layer[-1]
    switch = layer_ff.mlp
    torch.nn.init.normal_(switch.router.weight)
    h = torch.randn(2, 9, 32)
    with torch.no_grad():
        out = layer_ff(h)
        choice = (layer_ff.layer_norm(h) @ switch.router.weight.T).argmax(-1)
    for b in range(2):
        seen = set()
        for t in range(9):  # capacity 1: only the first token (in order) choosing an expert gets it
            first = int(choice[b, t]) not in seen
            seen.add(int(choice[b, t]))
            if first:
                assert not torch.equal(out[b, t], h[b, t])
            else:
                assert torch.equal(out[b, t], h[b, t])
    assert switch.stats.dropped_fraction.item() == pytest.approx(1 - sum(len(set(c.tolist())) for c in choice) / 18)


def _expert(layer: moe.SwitchFeedForward, e: int, x: torch.Tensor) -> torch.Tensor:
    return torch.relu(x @ layer.experts.wi[e]) @ layer.experts.wo[e]


@pytest.mark.parametrize("reroute", [False, True])
def test_capacity_and_no_token_left_behind_hand_worked(reroute):
    # Four tokens, three experts, capacity 1 (ceil(1.0 · 4 / 3) = 2 would fit two: fix it at 1).
    layer = moe.SwitchFeedForward(3, 5, 3, torch.nn.ReLU(), capacity=1, reroute_overflow=reroute).eval()
    torch.manual_seed(0)
    torch.nn.init.normal_(layer.experts.wi)
    torch.nn.init.normal_(layer.experts.wo)
    with torch.no_grad():
        layer.router.weight.copy_(torch.eye(3))
    # Router logits = x: first choices 0, 0, 0, 1; second choices 1, 2, 1, 0.
    x = torch.tensor([[3.0, 2.0, 0.0], [3.0, 0.0, 2.0], [3.0, 1.0, 0.5], [0.0, 3.0, 1.0]])
    p = torch.softmax(x, -1)
    with torch.no_grad():
        out = layer(x.unsqueeze(0)).squeeze(0)
        expected = torch.zeros_like(x)
        expected[0] = p[0, 0] * _expert(layer, 0, x[0])  # first at expert 0
        expected[3] = p[3, 1] * _expert(layer, 1, x[3])  # first at expert 1
        if reroute:  # token 1 -> its second choice, expert 2 (free); token 2 -> expert 1 (taken by token 3)
            expected[1] = p[1, 2] * _expert(layer, 2, x[1])
    torch.testing.assert_close(out, expected)
    assert moe.expert_capacity(4, 3, 1.0) == 2 and moe.expert_capacity(10, 4, 1.25) == 4


@pytest.mark.parametrize("scope", ["sequence", "batch"])
def test_capacity_per_sequence_or_per_batch_hand_worked(scope):
    """Two sequences of two tokens, two experts, capacity factor 1: sequence 0 sends both its tokens to
    expert 0, sequence 1 both to expert 1. Per sequence an expert takes ceil(2 · 1 / 2) = 1 token, so
    each sequence's second token is dropped (output 0); over the batch it takes ceil(4 · 1 / 2) = 2, so
    none is."""
    layer = moe.SwitchFeedForward(2, 3, 2, torch.nn.ReLU(), capacity_factor=1.0, capacity_scope=scope).train()
    torch.manual_seed(0)
    torch.nn.init.normal_(layer.experts.wi)
    torch.nn.init.normal_(layer.experts.wo)
    with torch.no_grad():
        layer.router.weight.copy_(torch.eye(2))
    x = torch.tensor([[[2.0, 0.0], [2.0, 0.0]], [[0.0, 2.0], [0.0, 2.0]]])
    p_top = torch.softmax(torch.tensor([2.0, 0.0]), -1)[0]
    with torch.no_grad():
        out = layer(x)
    expected = torch.stack([p_top * _expert(layer, 0, x[0, 0]), p_top * _expert(layer, 1, x[1, 0])])
    torch.testing.assert_close(out[:, 0], expected)
    if scope == "sequence":
        assert torch.all(out[:, 1] == 0) and layer.stats.dropped_fraction.item() == 0.5
    else:
        torch.testing.assert_close(out[:, 1], expected)
        assert layer.stats.dropped_fraction.item() == 0.0
    with pytest.raises(ValueError, match="capacity_scope"):
        moe.SwitchFeedForward(2, 3, 2, torch.nn.ReLU(), capacity_scope="group")
    with pytest.raises(ValueError, match="capacity_scope"):
        preset("switch-base-8", capacity_scope="device")
    with pytest.raises(ValueError, match="no transformers twin"):
        convert_to_transformers(ours_tiny(capacity_scope="batch", expert_capacity=4))


@pytest.mark.parametrize(
    "grouped, dtype, eager_cpu, act",
    [(True, torch.float32, True, "relu"), (True, torch.float64, True, "relu"), (True, torch.float32, True, "gelu"),
     (True, torch.float32, False, "relu"), (False, torch.float32, False, "relu")],
    # eager CPU: _CPUGroupedLinear (a matmul per expert into reused memory), the ReLU in place, another
    # activation out of place; eager_cpu=False: the paths CUDA and torch.compile take (grouped_mm's own
    # autograd, the loop's custom op)
    ids=["cpu-relu", "cpu-float64", "cpu-gelu", "grouped_mm-autograd", "loop-custom-op"],
)  # fmt: skip
def test_dispatch_equals_a_per_token_loop(monkeypatch, grouped, dtype, eager_cpu, act):
    if not grouped:
        monkeypatch.setattr(moe, "_grouped_mm_available", lambda x, w: False)
    if not eager_cpu:
        monkeypatch.setattr(moe, "_eager_cpu", lambda x: False)
    activation = {"relu": torch.nn.ReLU(), "gelu": torch.nn.GELU()}[act]
    torch.manual_seed(0)
    experts = moe.Experts(5, 6, 10, activation).to(dtype)
    torch.nn.init.normal_(experts.wi)
    torch.nn.init.normal_(experts.wo)
    x = torch.randn(30, 6, dtype=dtype, requires_grad=True)
    index = torch.randint(0, 5, (30, 2))
    weights = torch.rand(30, 2, dtype=dtype, requires_grad=True)
    keep = torch.rand(30, 2) > 0.3
    out = moe.dispatch(x, index, weights, keep, experts)
    rows = []
    for t in range(30):
        row = torch.zeros(6, dtype=dtype)
        for j in range(2):
            if keep[t, j]:
                e = int(index[t, j])
                row = row + weights[t, j] * (activation(x[t] @ experts.wi[e]) @ experts.wo[e])
        rows.append(row)
    expected = torch.stack(rows)
    torch.testing.assert_close(out, expected)
    grads = torch.autograd.grad(out.sum(), (x, weights, experts.wi, experts.wo))
    expected_grads = torch.autograd.grad(expected.sum(), (x, weights, experts.wi, experts.wo))
    for got, want in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(got, want)


def test_expert_weight_gradient_memory_is_reused_only_when_nothing_holds_it():
    """On the CPU the stacked weight gradient goes on the last one's memory once the optimiser has
    dropped it (set_to_none), never while a tensor still holds it."""
    torch.manual_seed(0)
    layer = moe.SwitchFeedForward(8, 16, 4, torch.nn.ReLU(), capacity=24).train()
    for weight in (layer.router.weight, layer.experts.wi, layer.experts.wo):
        torch.nn.init.normal_(weight)
    x = torch.randn(2, 12, 8)

    def backward():
        layer(x).square().sum().backward()

    backward()
    first = layer.experts.wi.grad
    held = first.clone()
    layer.zero_grad(set_to_none=True)
    backward()
    second = layer.experts.wi.grad
    assert second.data_ptr() != first.data_ptr()  # `first` is still alive: fresh memory
    torch.testing.assert_close(first, held)  # and it was not written over
    torch.testing.assert_close(second, held)  # same input, same gradient
    del first
    layer.zero_grad(set_to_none=True)
    backward()
    assert layer.experts.wi.grad.data_ptr() != second.data_ptr()  # `second` is alive
    pointer = layer.experts.wi.grad.data_ptr()
    layer.zero_grad(set_to_none=True)
    backward()  # nothing holds the last gradient now (only `second`, an older one): its memory is reused
    assert layer.experts.wi.grad.data_ptr() == pointer
    torch.testing.assert_close(layer.experts.wi.grad, held)
    backward()  # accumulation (no zero_grad) adds into .grad, whose memory is not handed out again
    torch.testing.assert_close(layer.experts.wi.grad, 2 * held)


def test_reused_activation_memory_never_overwrites_a_live_tensor():
    """On the CPU each projection's output and input gradient go on the last call's memory only once
    nothing holds it: outputs kept by the caller, or two forwards before one backward, stay intact."""
    torch.manual_seed(0)
    experts = moe.Experts(3, 4, 8, torch.nn.ReLU())
    for weight in (experts.wi, experts.wo):
        torch.nn.init.normal_(weight)
    offsets = torch.tensor([3, 5, 8], dtype=torch.int32)

    def reference(x):
        rows = [torch.relu(x[i] @ experts.wi[e]) @ experts.wo[e] for e, i in ((0, 0), (0, 1), (0, 2), (1, 3),
                                                                              (1, 4), (2, 5), (2, 6), (2, 7))]
        return torch.stack(rows)  # fmt: skip

    a, b = torch.randn(8, 4), torch.randn(8, 4)
    with torch.no_grad():
        kept = experts(a, offsets)
        snapshot = kept.clone()
        other = experts(b, offsets)  # `kept` is alive: fresh memory
        assert other.data_ptr() != kept.data_ptr()
        torch.testing.assert_close(kept, snapshot)
        torch.testing.assert_close(other, reference(b))
        pointer = other.data_ptr()
        del other
        assert experts(a, offsets).data_ptr() == pointer  # nothing holds it now: reused
    # two forwards, then one backward (gradient accumulation): both graphs keep their own activations
    a.requires_grad_(True)
    b.requires_grad_(True)
    (experts(a, offsets).square().sum() + experts(b, offsets).square().sum()).backward()
    got = (a.grad, b.grad, experts.wi.grad, experts.wo.grad)
    a2, b2 = a.detach().requires_grad_(True), b.detach().requires_grad_(True)
    want = torch.autograd.grad(reference(a2).square().sum() + reference(b2).square().sum(),
                               (a2, b2, experts.wi, experts.wo))  # fmt: skip
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w)


@pytest.mark.parametrize("k", [1, 2])
def test_reused_dispatch_memory_never_overwrites_a_live_tensor(k):
    """The CPU dispatch's permuted input, combined output and their gradients also go on reused memory:
    a kept output stays intact, and two forwards (with dropped assignments) before one backward give
    a per-token loop's outputs and gradients."""
    torch.manual_seed(0)
    experts = moe.Experts(4, 6, 10, torch.nn.ReLU())
    for weight in (experts.wi, experts.wo):
        torch.nn.init.normal_(weight)
    calls = [(torch.randn(20, 6), torch.randint(0, 4, (20, k)), torch.rand(20, k), torch.rand(20, k) > 0.25)
             for _ in range(2)]  # fmt: skip

    def reference(x, index, weights, keep):
        rows = [sum((weights[t, j] * (torch.relu(x[t] @ experts.wi[int(index[t, j])]) @ experts.wo[int(index[t, j])])
                     for j in range(k) if keep[t, j]), torch.zeros(6)) for t in range(len(x))]  # fmt: skip
        return torch.stack(rows)

    with torch.no_grad():
        kept = moe.dispatch(*calls[0][:3], calls[0][3], experts)
        snapshot = kept.clone()
        other = moe.dispatch(*calls[1][:3], calls[1][3], experts)
        torch.testing.assert_close(kept, snapshot)
        torch.testing.assert_close(other, reference(*calls[1]))
    leaves = [(x.clone().requires_grad_(True), index, w.clone().requires_grad_(True), keep)
              for x, index, w, keep in calls]  # fmt: skip
    total = sum(moe.dispatch(x, i, w, keep, experts).square().sum() for x, i, w, keep in leaves)
    total.backward()
    got = [t for x, _, w, _ in leaves for t in (x.grad, w.grad)] + [experts.wi.grad, experts.wo.grad]
    refs = [(x.clone().requires_grad_(True), index, w.clone().requires_grad_(True), keep)
            for x, index, w, keep in calls]  # fmt: skip
    inputs = [t for x, _, w, _ in refs for t in (x, w)] + [experts.wi, experts.wo]
    want = torch.autograd.grad(sum(reference(*r).square().sum() for r in refs), inputs)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w)


@pytest.fixture
def two_intra_op_threads(monkeypatch):
    """The caller has 2 intra-op threads and every layer is big enough for the expert threads."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    monkeypatch.setattr(moe, "_PARALLEL_MIN_MACS", 0)
    yield
    torch.set_num_threads(before)


def test_expert_threads_give_a_per_token_loop_result(two_intra_op_threads, monkeypatch):
    """Experts split over worker threads (small matmuls, several intra-op threads): outputs and every
    gradient as a per-token loop's, with an empty expert in the middle; the workers ran the matmuls
    single-threaded and the caller's thread count is untouched."""
    import threading

    ran_on = []
    real_for_each = moe._for_each_expert

    def spy(ends, macs_per_row, body):
        def recording(expert, start, end):
            ran_on.append((threading.get_ident(), torch.get_num_threads(), torch.is_grad_enabled()))
            body(expert, start, end)

        real_for_each(ends, macs_per_row, recording)

    monkeypatch.setattr(moe, "_for_each_expert", spy)
    torch.manual_seed(0)
    experts = moe.Experts(6, 5, 7, torch.nn.ReLU())
    for weight in (experts.wi, experts.wo):
        torch.nn.init.normal_(weight)
    x = torch.randn(40, 5, requires_grad=True)
    index = torch.randint(0, 6, (40, 1))
    index[index == 3] = 4  # expert 3 gets nothing
    weights = torch.rand(40, 1, requires_grad=True)
    keep = torch.ones(40, 1, dtype=torch.bool)
    out = moe.dispatch(x, index, weights, keep, experts)
    expected = torch.stack([weights[t, 0] * (torch.relu(x[t] @ experts.wi[int(index[t, 0])])
                                             @ experts.wo[int(index[t, 0])]) for t in range(40)])  # fmt: skip
    torch.testing.assert_close(out, expected)
    got = torch.autograd.grad(out.square().sum(), (x, weights, experts.wi, experts.wo))
    want = torch.autograd.grad(expected.square().sum(), (x, weights, experts.wi, experts.wo))
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w)
    assert got[2][3].abs().sum() == 0 and got[3][3].abs().sum() == 0  # the empty expert's gradient is zero
    workers = {ident for ident, _, _ in ran_on}
    assert threading.get_ident() not in workers and len(workers) == 2
    assert all(count == 1 and not grad for _, count, grad in ran_on)
    assert torch.get_num_threads() == 2
    seen = []
    fresh = threading.Thread(target=lambda: seen.append(torch.get_num_threads()))
    fresh.start()
    fresh.join()
    assert seen == [2]  # a thread started afterwards takes the caller's count, not the workers' 1


def test_expert_threads_pass_on_an_error_and_survive_a_fork(two_intra_op_threads):
    """A failure inside a worker reaches the caller; a forked child (a DataLoader worker, say) runs the
    layer on fresh expert threads instead of waiting on its parent's, which it does not have."""
    import multiprocessing

    def failing(expert, start, end):
        if expert == 3:
            raise RuntimeError("expert 3 failed")

    with pytest.raises(RuntimeError, match="expert 3 failed"):
        moe._for_each_expert([10, 20, 30, 40], 1, failing)
    moe._for_each_expert([10, 20, 30, 40], 1, lambda *args: None)  # the pool exists in the parent
    assert moe._WORKERS["pool"] is not None
    context = multiprocessing.get_context("fork")
    with context.Pool(1) as pool:
        assert pool.apply_async(_threaded_rows_in_child).get(timeout=60) == [[0, 10], [10, 20], [20, 30], [30, 40]]


def test_expert_threads_under_inference_mode_and_a_flop_counter(two_intra_op_threads):
    """Inference mode reaches the workers (they write into the caller's inference tensors), and a
    FLOP counter, which sees only its own thread's operations, gets every matmul counted."""
    from torch.utils.flop_counter import FlopCounterMode

    torch.manual_seed(0)
    experts = moe.Experts(6, 5, 7, torch.nn.ReLU())
    for weight in (experts.wi, experts.wo):
        torch.nn.init.normal_(weight)
    rows = [8, 6, 0, 10, 9, 7]
    offsets = torch.tensor(rows, dtype=torch.int32).cumsum(0)
    owner = torch.repeat_interleave(torch.arange(6), torch.tensor(rows))
    x = torch.randn(40, 5)
    expected = torch.stack([torch.relu(x[t] @ experts.wi[owner[t]]) @ experts.wo[owner[t]] for t in range(40)])
    with torch.inference_mode():
        torch.testing.assert_close(experts(x, offsets), expected)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        experts(x, offsets)
    assert counter.get_total_flops() == 2 * (40 * 5 * 7) * 2  # two projections, 2 FLOPs a multiply-add


def _threaded_rows_in_child():
    torch.set_num_threads(2)
    rows = []
    moe._PARALLEL_MIN_MACS = 0
    moe._for_each_expert([10, 20, 30, 40], 1, lambda expert, start, end: rows.append([start, end]))
    return sorted(rows)


@pytest.mark.parametrize("where", ["module", "global", "global-backward"])
def test_a_hooked_activation_module_still_runs(where):
    """The CPU path's in-place ReLU stands in for ``experts.act`` only while nothing is hooked on it:
    a hook of its own, or one registered for every module, sees the activation called."""
    experts = moe.Experts(2, 4, 8, torch.nn.ReLU())
    for weight in (experts.wi, experts.wo):
        torch.nn.init.normal_(weight)
    seen = []

    def forward_hook(module, args, out):
        if module is experts.act:
            seen.append(out.shape)

    def backward_hook(module, grad_input, grad_output):
        if module is experts.act:
            seen.append(grad_output[0].shape)

    if where == "module":
        handle = experts.act.register_forward_hook(forward_hook)
    elif where == "global":
        handle = torch.nn.modules.module.register_module_forward_hook(forward_hook)
    else:
        handle = torch.nn.modules.module.register_module_full_backward_hook(backward_hook)
    try:
        x = torch.randn(6, 4, requires_grad=True)
        out = experts(x, torch.tensor([2, 6], dtype=torch.int32))
        out.sum().backward()
    finally:
        handle.remove()
    assert seen == [torch.Size([6, 8])] and out.shape == (6, 4)


def test_dropped_rows_never_leak_into_gradients(monkeypatch):
    """The grouped kernels leave the rows of dropped assignments unspecified (uninitialised memory):
    fill them with NaN and check that no gradient sees them."""
    real = moe.grouped_linear

    def garbage_past_the_end(x, weight, offsets):
        out = real(x, weight, offsets)
        rows = torch.arange(out.shape[0]).unsqueeze(-1)
        return torch.where(rows >= offsets[-1].long(), torch.nan, out)

    monkeypatch.setattr(moe, "grouped_linear", garbage_past_the_end)
    torch.manual_seed(0)
    layer = moe.SwitchFeedForward(8, 16, 4, torch.nn.ReLU(), capacity=2).train()
    for weight in (layer.router.weight, layer.experts.wi, layer.experts.wo):
        torch.nn.init.normal_(weight)
    x = torch.randn(2, 12, 8, requires_grad=True)
    out = layer(x)
    (out.sum() + layer.stats.aux_loss).backward()
    assert layer.stats.dropped_fraction > 0
    assert torch.isfinite(out).all() and torch.isfinite(x.grad).all()
    assert all(torch.isfinite(p.grad).all() for p in layer.parameters())


def test_training_loss_adds_the_weighted_aux_loss():
    # Room for every token in training too (capacity factor = experts), so that eval computes the same.
    model = ours_tiny(dropout_rate=0.0, router_jitter_noise=0.0, router_z_loss_coef=0.001, capacity_factor=4.0)
    model.train()
    input_ids, labels = ids(), ids(length=7, seed=3)
    out = model(input_ids=input_ids, labels=labels)
    ce = torch.nn.functional.cross_entropy(out.logits.reshape(-1, 101), labels.reshape(-1))
    stats = model.encoder.router_stats() + model.decoder.router_stats()
    assert len(stats) == 4 and out.expert_load.shape == (4, 4)
    aux = sum(0.01 * s.losses["load_balancing"] + 0.001 * s.losses["router_z"] for s in stats)
    torch.testing.assert_close(out.aux_loss, aux)
    torch.testing.assert_close(out.loss, ce + aux)
    with torch.no_grad():
        assert model.eval()(input_ids=input_ids, labels=labels).loss.item() == pytest.approx(ce.item(), rel=1e-5)


# ---------------------------------------------------------------------------------------------
# Architecture, initialisation, config, presets
# ---------------------------------------------------------------------------------------------


def test_switch_layers_every_other_ffn_and_expert_dropout():
    assert [i for i in range(12) if is_sparse_layer(i, 2)] == [1, 3, 5, 7, 9, 11]
    assert [i for i in range(4) if is_sparse_layer(i, 1)] == [0, 1, 2, 3]
    assert not any(is_sparse_layer(i, 0) for i in range(4))
    model = ours_tiny(expert_dropout_rate=0.4)
    kinds = [type(b.layer[-1].mlp).__name__ for b in model.decoder.block]
    assert kinds == ["PaperT5DenseActDense", "SwitchFeedForward"] * 2
    switch = model.decoder.block[1].layer[-1].mlp
    assert switch.experts.dropout.p == 0.4 and model.decoder.block[0].layer[-1].mlp.dropout.p == 0.1


def test_no_switch_layer_is_t5_exactly():
    """Sparse step 0 in both stacks: T5 (``paper-t5``, itself checked against transformers' T5) with the
    same weights: the same parameters (renamed ``DenseReluDense`` -> ``mlp``), logits and loss, train and
    eval (the aux loss is 0). This is the dense baseline of ``reproductions/switch_vs_t5.py``."""
    from hf_paper_models.models.t5 import PaperT5ForConditionalGeneration

    torch.manual_seed(0)
    t5 = PaperT5ForConditionalGeneration(preset("t5-small", **T5_OUR_TINY, dropout_rate=0.0))
    dense = ours_tiny(**T5_OUR_TINY, encoder_sparse_step=0, decoder_sparse_step=0, dropout_rate=0.0)
    assert not dense.encoder.switch_layers() and not dense.decoder.switch_layers()
    weights = {k.replace("DenseReluDense", "mlp"): v for k, v in t5.state_dict().items()}
    assert set(weights) == set(dense.state_dict()) and count(dense) == count(t5)
    dense.load_state_dict(weights)
    input_ids, labels = ids(), ids(length=7, seed=3)
    for training in (True, False):
        ours = dense.train(training)(input_ids=input_ids, labels=labels)
        theirs = t5.train(training)(input_ids=input_ids, labels=labels)
        torch.testing.assert_close(ours.logits, theirs.logits, rtol=0, atol=0)
        torch.testing.assert_close(ours.loss, theirs.loss, rtol=0, atol=0)
        assert ours.aux_loss.item() == 0.0 and ours.expert_load is None


def test_reduced_initialisation_scale():
    config = preset(
        "switch-base-8", hidden_size=256, num_hidden_layers=2, num_attention_heads=4, intermediate_size=1024
    )
    assert config.initializer_scale == 0.1
    torch.manual_seed(0)
    model = PaperSwitchForConditionalGeneration(config)
    switch = model.encoder.block[1].layer[-1].mlp
    attention = model.encoder.block[1].layer[0].SelfAttention
    s, d, d_ff, d_kv = 0.1, 256, 1024, 64
    expected = {
        "router": (switch.router.weight, math.sqrt(s / d)),
        "experts.wi": (switch.experts.wi, math.sqrt(s / d)),
        "experts.wo": (switch.experts.wo, math.sqrt(s / d_ff)),
        "k": (attention.k_proj.weight, math.sqrt(s / d)),
        "q": (attention.q_proj.weight, math.sqrt(s / (d * d_kv))),
        "dense wi": (model.encoder.block[0].layer[-1].mlp.wi.weight, math.sqrt(s / d)),
        "shared": (model.shared.weight, 1.0),
    }
    for name, (weight, std) in expected.items():
        assert abs(weight.std().item() - std) / std < 0.1, name
    bound = 2 * math.sqrt(s / d) / 0.8796 + 1e-6  # truncated at two (pre-truncation) σ
    assert switch.experts.wi.abs().max().item() <= bound


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(num_experts=0), "num_experts"),
        (dict(capacity_factor=0.0), "capacity_factor"),
        (dict(eval_capacity_factor=-1.0), "eval_capacity_factor"),
        (dict(expert_capacity=0), "expert_capacity"),
        (dict(router_jitter_noise=1.5), "router_jitter_noise"),
        (dict(router_aux_loss_coef=-0.1), "router_aux_loss_coef"),
        (dict(encoder_sparse_step=-1), "encoder_sparse_step"),
        (dict(initializer_scale=0.0), "initializer_scale"),
    ],
)
def test_config_rejects_impossible_values(kwargs, match):
    with pytest.raises(ValueError, match=match):
        PaperSwitchConfig(**kwargs)


def _their_config(config: PaperSwitchConfig) -> transformers.SwitchTransformersConfig:
    return transformers.SwitchTransformersConfig(
        vocab_size=config.vocab_size, d_model=config.d_model, d_kv=config.d_kv, d_ff=config.d_ff,
        num_layers=config.num_layers, num_decoder_layers=config.num_decoder_layers, num_heads=config.num_heads,
        num_experts=config.num_experts, num_sparse_encoder_layers=config.num_layers // 2,
        num_sparse_decoder_layers=config.num_decoder_layers // 2,
    )


@pytest.mark.parametrize("name", [n for n in PRESETS if n.startswith("switch-base")])
def test_switch_base_parameter_counts_equal_transformers(name):
    config = preset(name)
    with torch.device("meta"):
        ours = PaperSwitchForConditionalGeneration(config)
        theirs = transformers.SwitchTransformersForConditionalGeneration(_their_config(config))
    assert count(ours) == count(theirs)


@pytest.mark.parametrize("name, tolerance", [
    ("switch-base-128", 0.5e9),  # "7B": rounded to the billion
    ("switch-large-128", 0.5e9),  # "26B"
    ("switch-c-2048", 0.5e9),  # "1571B"
])
def test_preset_parameter_counts_match_the_papers_table(name, tolerance):
    with torch.device("meta"):
        model = PaperSwitchForConditionalGeneration(preset(name))
    assert abs(count(model) - PAPER_PARAMETERS[name]) <= tolerance


def test_preset_sizes():
    c = preset("switch-c-2048")
    assert (c.d_model, c.d_ff, c.num_heads, c.num_layers, c.num_experts) == (2080, 6144, 32, 15, 2048)
    assert c.encoder_sparse_step == c.decoder_sparse_step == 1
    xxl = preset("switch-xxl-64")
    assert (xxl.d_model, xxl.d_ff, xxl.d_kv, xxl.num_heads, xxl.num_experts) == (4096, 10240, 64, 64, 64)
    assert preset("switch-base-256").num_experts == 256


def test_benchmark_runs_and_compares_equal_layers():
    """Smoke test of benchmarks/moe.py at tiny sizes (no speed is asserted)."""
    import dataclasses
    import importlib.util
    import sys
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "benchmarks" / "moe.py"
    spec = importlib.util.spec_from_file_location("benchmarks_moe", path)
    bench = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = bench  # dataclasses look their module up while the file executes
    try:
        spec.loader.exec_module(bench)
    finally:
        sys.modules.pop(spec.name, None)
    sizes = dataclasses.replace(bench.QUICK, d_model=16, d_ff=32, batch=2, seq=8, experts=(4,), warmup=0, repeats=1)
    checks: dict = {}
    rows = bench.moe_rows(sizes, checks)
    assert len(rows) == 2 and all(r["ours"] > 0 and r["theirs"] > 0 for r in rows)
    assert checks["switch_4e_max_abs_diff"] < 1e-5
