"""RNNsearch and RNNencdec (Bahdanau, Cho & Bengio 2015) against the paper's equations, written out here
independently of the module's code path (plain loops over positions, ``torch.nn.GRU`` for the encoder),
hand-computed small cases, and parameter counts in closed form."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import AutoConfig, AutoModelForSeq2SeqLM

from hf_paper_models import preset
from hf_paper_models.models.rnnsearch import (
    PRESETS,
    PaperRNNSearchAlignment,
    PaperRNNSearchCache,
    PaperRNNSearchConfig,
    PaperRNNSearchDecoderStep,
    PaperRNNSearchForConditionalGeneration,
)

V_SRC, V_TGT = 37, 41


def tiny(name: str = "rnnsearch-50", **overrides) -> PaperRNNSearchConfig:
    values = dict(vocab_size=V_TGT, source_vocab_size=V_SRC, hidden_size=6, embedding_size=5,
                  alignment_size=7, maxout_size=4, max_position_embeddings=32)  # fmt: skip
    return preset(name, **{**values, **overrides})


def build(name: str = "rnnsearch-50", seed: int = 0, **overrides) -> PaperRNNSearchForConditionalGeneration:
    """A tiny model whose every parameter is drawn at a scale where all terms matter (v_a included)."""
    torch.manual_seed(seed)
    model = PaperRNNSearchForConditionalGeneration(tiny(name, **overrides)).double().eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_(0.0, 0.6)
    return model


# ----------------------------------------------------------------------------------------------
# A reference written from Appendix A.2, one sentence at a time
# ----------------------------------------------------------------------------------------------


def reference_gru(weights: dict, inputs: torch.Tensor, prefix: str) -> torch.Tensor:
    """``torch.nn.GRU`` with the model's parameters over one unpadded sequence (time, input)."""
    n = weights[f"{prefix}.weight_hh_l0"].shape[1]
    gru = torch.nn.GRU(inputs.shape[-1], n, batch_first=True).double()
    gru.load_state_dict({k.split(".")[-1]: v for k, v in weights.items() if k.startswith(prefix)})
    return gru(inputs[None])[0][0]


def reference_logits(
    model, source: list[int], target_in: list[int]
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Logits (target, K_y) and alignments (target, source) of one sentence pair from the equations."""
    config = model.config
    w = {k: v.detach() for k, v in model.state_dict().items()}
    n, l_ = config.hidden_size, config.maxout_size
    x = w["model.encoder.embed_tokens.weight"][source]  # E x_j
    forward = reference_gru(w, x, "model.encoder.layer.forward_rnn")  # →h_j
    if config.use_attention:
        backward = reference_gru(w, x.flip(0), "model.encoder.layer.backward_rnn").flip(0)  # ←h_j
        h = torch.cat([forward, backward], dim=-1)  # h_j = [→h_j; ←h_j]
        s = torch.tanh(w["model.decoder.W_s.weight"] @ backward[0] + w["model.decoder.W_s.bias"])  # s_0
    else:
        c_fixed = forward[-1]  # →h_{T_x}
        s = torch.tanh(w["model.decoder.W_s.weight"] @ c_fixed + w["model.decoder.W_s.bias"])
    step = "model.decoder.step."
    W_in, b_in = w["model.decoder.word_gates.weight"], w["model.decoder.word_gates.bias"]
    Wz, Wr, W = W_in.split(n)
    bz, br, b = b_in.split(n)
    Cz, Cr, C = w[step + "context_gates.weight"].split(n)
    Uz, Ur = w[step + "hidden_gates.weight"].split(n)
    U = w[step + "hidden_candidate.weight"]
    logits, alignments = [], []
    for y_prev in target_in:
        e_y = w["model.decoder.embed_tokens.weight"][y_prev]  # E y_{i-1}
        if config.use_attention:
            Wa, Ua, ba = (
                w[step + "alignment.W_a.weight"],
                w[step + "alignment.U_a.weight"],
                w[step + "alignment.U_a.bias"],
            )
            va = w[step + "alignment.v_a.weight"][0]
            e = torch.stack([va @ torch.tanh(Wa @ s + Ua @ h_j + ba) for h_j in h])  # e_ij
            alpha = torch.exp(e) / torch.exp(e).sum()  # α_ij
            c = (alpha[:, None] * h).sum(0)  # c_i
            alignments.append(alpha)
        else:
            c = c_fixed
        z = torch.sigmoid(Wz @ e_y + bz + Uz @ s + Cz @ c)
        r = torch.sigmoid(Wr @ e_y + br + Ur @ s + Cr @ c)
        s_tilde = torch.tanh(W @ e_y + b + U @ (r * s) + C @ c)
        s_new = (1 - z) * s + z * s_tilde
        s_read = s if config.readout_state == "previous" else s_new
        t_tilde = (w[step + "U_o.weight"] @ s_read + w[step + "U_o.bias"] + w["model.decoder.V_o.weight"] @ e_y
                   + w[step + "C_o.weight"] @ c)  # fmt: skip
        t = torch.stack([torch.maximum(t_tilde[2 * j], t_tilde[2 * j + 1]) for j in range(l_)])  # maxout
        logits.append(w["lm_head.weight"] @ t + w["lm_head.bias"])  # W_o t_i
        s = s_new
    return torch.stack(logits), (torch.stack(alignments) if alignments else None)


SOURCES = [[5, 9, 14, 3, 22, 8], [30, 4, 11]]
TARGETS = [[1, 7, 12, 19, 3], [1, 25, 6, 33, 2]]


def padded_batch(side: str) -> dict[str, torch.Tensor]:
    width = max(map(len, SOURCES))
    ids, mask = (
        torch.zeros(len(SOURCES), width, dtype=torch.long),
        torch.zeros(len(SOURCES), width, dtype=torch.long),
    )
    for row, source in enumerate(SOURCES):
        span = slice(0, len(source)) if side == "right" else slice(width - len(source), width)
        ids[row, span], mask[row, span] = torch.tensor(source), 1
    return {"input_ids": ids, "attention_mask": mask, "decoder_input_ids": torch.tensor(TARGETS)}


@pytest.mark.parametrize("name", ["rnnsearch-50", "rnnencdec-30"])
@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("readout_state", ["previous", "current"])
def test_forward_matches_the_papers_equations(name, side, readout_state):
    model = build(name, readout_state=readout_state)
    batch = padded_batch(side)
    with torch.no_grad():
        out = model(**batch, output_attentions=True)
    width = batch["input_ids"].shape[1]
    for row, (source, target) in enumerate(zip(SOURCES, TARGETS)):
        logits, alignments = reference_logits(model, source, target)
        torch.testing.assert_close(out.logits[row], logits, atol=1e-10, rtol=1e-9)
        if alignments is None:
            assert out.cross_attentions is None
            continue
        real = slice(0, len(source)) if side == "right" else slice(width - len(source), width)
        got = out.cross_attentions[0][row]  # (target, source)
        torch.testing.assert_close(got[:, real], alignments, atol=1e-10, rtol=1e-9)
        assert float(got.sum() - got[:, real].sum()) == 0.0  # padded positions: exactly zero


def test_alignment_model_on_a_hand_computed_case():
    """e_j = v_aᵀ tanh(W_a s + U_a h_j + b), α = softmax over the unmasked j, c = Σ α_j h_j; by hand."""
    config = tiny(hidden_size=1, alignment_size=2)  # annotations of width 2n = 2
    alignment = PaperRNNSearchAlignment(config).double()
    with torch.no_grad():
        alignment.W_a.weight.copy_(torch.tensor([[2.0], [-1.0]]))
        alignment.U_a.weight.copy_(torch.tensor([[1.0, 0.5], [0.0, -1.0]], dtype=torch.float64))
        alignment.U_a.bias.copy_(torch.tensor([0.1, 0.2], dtype=torch.float64))
        alignment.v_a.weight.copy_(torch.tensor([[1.5, -2.0]]))
    s = 0.3
    h = [(0.2, -0.4), (1.0, 0.6), (-0.7, 0.9), (5.0, 5.0)]  # the last one is padding
    energies = []
    for h1, h2 in h[:3]:
        a1 = math.tanh(2.0 * s + 1.0 * h1 + 0.5 * h2 + 0.1)
        a2 = math.tanh(-1.0 * s - 1.0 * h2 + 0.2)
        energies.append(1.5 * a1 - 2.0 * a2)
    total = sum(math.exp(e) for e in energies)
    alpha = [math.exp(e) / total for e in energies] + [0.0]
    context = [sum(a * hj[k] for a, hj in zip(alpha, h)) for k in range(2)]

    annotations = torch.tensor([h], dtype=torch.float64)
    mask = torch.tensor([[True, True, True, False]])
    got_context, got_alpha = alignment(
        torch.tensor([[s]], dtype=torch.float64),
        annotations,
        alignment.project_annotations(annotations),
        mask,
    )
    torch.testing.assert_close(got_alpha[0], torch.tensor(alpha, dtype=torch.float64), atol=1e-12, rtol=0)
    torch.testing.assert_close(got_context[0], torch.tensor(context, dtype=torch.float64), atol=1e-12, rtol=0)


def test_maxout_takes_the_larger_of_each_pair():
    """t_i = [max(t̃_{2j-1}, t̃_{2j})]_j over t̃ = U_o s + V_o E y + C_o c (l = 3 units, by hand)."""
    config = tiny("rnnencdec-50", hidden_size=2, maxout_size=3)
    step = PaperRNNSearchDecoderStep(config).double().eval()
    with torch.no_grad():
        for parameter in step.parameters():
            parameter.zero_()
        step.U_o.bias.copy_(torch.tensor([0.0, 0.0, 0.0, 0.0, 1.0, 0.0]))
        step.U_o.weight[0, 0] = 1.0  # t̃_1 += s_1
        step.C_o.weight[3, 1] = -2.0  # t̃_4 += -2 c_2
    state = torch.tensor([[0.5, -0.25]], dtype=torch.float64)
    context = torch.tensor([[[0.3, -1.5]]], dtype=torch.float64)  # RNNencdec: the fixed c, (B, 1, n)
    word_readout = torch.tensor([[1.0, 5.0, -2.0, -3.0, 0.5, 0.25]], dtype=torch.float64)
    t_tilde = [1.0 + 0.5, 5.0, -2.0, -3.0 + 3.0, 0.5 + 1.0, 0.25]
    expected = [max(t_tilde[0], t_tilde[1]), max(t_tilde[2], t_tilde[3]), max(t_tilde[4], t_tilde[5])]
    _, t, weights = step(state, torch.zeros(1, 6, dtype=torch.float64), word_readout, context, None,
                         torch.ones(1, 1, dtype=torch.bool))  # fmt: skip
    assert weights is None
    assert t[0].tolist() == expected == [5.0, 0.0, 1.5]


# ----------------------------------------------------------------------------------------------
# Attention weights, RNNencdec's fixed context, the cache
# ----------------------------------------------------------------------------------------------


def test_alignment_weights_sum_to_one_and_ignore_padding():
    model = build()
    left, right = padded_batch("left"), padded_batch("right")
    with torch.no_grad():
        a = model(**left, output_attentions=True)
        b = model(**right, output_attentions=True)
        alone = model(input_ids=torch.tensor([SOURCES[1]]), decoder_input_ids=torch.tensor([TARGETS[1]]),
                      output_attentions=True)  # fmt: skip
    for out, batch in ((a, left), (b, right)):
        alpha = out.cross_attentions[0]
        assert alpha.shape == (2, len(TARGETS[0]), batch["input_ids"].shape[1])
        torch.testing.assert_close(alpha.sum(-1), torch.ones(alpha.shape[:2], dtype=alpha.dtype))
        assert bool((alpha[batch["attention_mask"][:, None, :].expand_as(alpha) == 0] == 0).all())
    torch.testing.assert_close(a.logits, b.logits, atol=1e-12, rtol=0)
    torch.testing.assert_close(a.logits[1], alone.logits[0], atol=1e-12, rtol=0)
    torch.testing.assert_close(
        b.cross_attentions[0][1, :, :3], alone.cross_attentions[0][0], atol=1e-12, rtol=0
    )


def test_rnnencdec_sees_the_source_only_through_the_last_forward_state():
    """RNNencdec (use_attention=False): c_i = →h_{T_x} for every i. Two sources with the same last forward
    state give the same translation probabilities: make the forward GRU forget everything but the last
    word (nn.GRU: h_j = (1 - z)·ĥ_j + z·h_{j-1}, with z pinned to 0 and ĥ_j depending on x_j alone)."""
    model = build("rnnencdec-50")
    assert model.config.use_attention is False and model.model.encoder.layer.backward_rnn is None
    assert not any("alignment" in name for name, _ in model.named_parameters())
    gru = model.model.encoder.layer.forward_rnn
    n = model.config.hidden_size
    with torch.no_grad():  # rows [r; z; ĥ] of nn.GRU's stacked gates
        gru.weight_ih_l0[n : 2 * n] = 0.0
        gru.weight_hh_l0[n : 2 * n] = 0.0
        gru.bias_ih_l0[n : 2 * n] = -40.0  # z = σ(-40) ≈ 0
        gru.bias_hh_l0[n : 2 * n] = 0.0
        gru.weight_hh_l0[2 * n :] = 0.0  # ĥ_j = tanh(W x_j + b + r·(0·h + 0)): x_j alone
        gru.bias_hh_l0[2 * n :] = 0.0
    target = torch.tensor([[1, 7, 12, 19]])
    with torch.no_grad():
        a = model(input_ids=torch.tensor([[5, 9, 14, 8]]), decoder_input_ids=target).logits
        b = model(input_ids=torch.tensor([[30, 4, 11, 21, 8]]), decoder_input_ids=target).logits
        c = model(input_ids=torch.tensor([[30, 4, 11, 21, 9]]), decoder_input_ids=target).logits
    torch.testing.assert_close(a, b, atol=1e-9, rtol=0)
    assert (a - c).abs().max() > 1e-3  # the last word does matter


def test_cached_steps_equal_the_full_forward_and_beams_reorder_the_cache():
    model = build()
    batch = padded_batch("left")
    with torch.no_grad():
        full = model(**batch).logits
        cache, steps = None, []
        for i in range(batch["decoder_input_ids"].shape[1]):
            out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                        decoder_input_ids=batch["decoder_input_ids"][:, i : i + 1], past_key_values=cache,
                        use_cache=True)  # fmt: skip
            cache = out.past_key_values
            steps.append(out.logits)
    assert isinstance(cache, PaperRNNSearchCache) and cache.get_seq_length() == 5
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-12, rtol=0)
    state = cache.decoder_state.clone()
    cache.reorder_cache(torch.tensor([1, 1]))
    assert torch.equal(cache.decoder_state, state[[1, 1]]) and torch.equal(
        cache.source_mask[0], cache.source_mask[1]
    )


def test_generate_returns_alignments_and_beam_search_agrees_with_and_without_cache():
    model = build().float()
    batch = padded_batch("left")
    batch.pop("decoder_input_ids")
    out = model.generate(**batch, max_new_tokens=6, num_beams=1, do_sample=False, output_attentions=True,
                         return_dict_in_generate=True)  # fmt: skip
    assert len(out.cross_attentions) == out.sequences.shape[1] - 1
    step = out.cross_attentions[0][0]  # (batch, 1 target, source)
    assert step.shape == (2, 1, batch["input_ids"].shape[1])
    assert float(step[1, 0, :3].sum()) == 0.0  # the left padding of the shorter source
    for beams in (1, 4):
        kwargs = dict(max_new_tokens=8, num_beams=beams, do_sample=False)
        torch.testing.assert_close(
            model.generate(**batch, use_cache=True, **kwargs),
            model.generate(**batch, use_cache=False, **kwargs),
        )


# ----------------------------------------------------------------------------------------------
# Presets, parameter counts, config checks, initialisation
# ----------------------------------------------------------------------------------------------


def closed_form_count(attention: bool, n=1000, m=620, n_a=1000, l_=500, k_x=30000, k_y=30000) -> int:
    """Appendix A.2 with biases: encoder GRU(s) as nn.GRU (b_ih + b_hh), W_s + bias, alignment W_a, U_a +
    bias, v_a; decoder GRU W·E y (+ bias), U (3 n×n), C (3 n×ctx); deep output U_o (+ bias), V_o, C_o;
    W_o + bias; two embedding tables."""
    ctx = 2 * n if attention else n
    gru = 3 * (n * m + n * n + 2 * n)
    total = (k_x + k_y) * m + (2 if attention else 1) * gru + (n * n + n)
    if attention:
        total += n_a * n + (n_a * ctx + n_a) + n_a
    total += (3 * n * m + 3 * n) + 3 * n * n + 3 * n * ctx
    total += (2 * l_ * n + 2 * l_) + 2 * l_ * m + 2 * l_ * ctx
    return total + k_y * l_ + k_y


@pytest.mark.parametrize("name", list(PRESETS))
def test_preset_parameter_counts_match_the_closed_form(name):
    config = preset(name)
    assert (config.hidden_size, config.embedding_size, config.alignment_size, config.maxout_size) == (
        1000,
        620,
        1000,
        500,
    )
    assert config.vocab_size == config.source_vocab_size == 30000
    assert config.max_train_sentence_length == int(name.split("-")[1])
    assert config.use_attention == name.startswith("rnnsearch")
    with torch.device("meta"):
        model = AutoModelForSeq2SeqLM.from_config(config)
    count = sum(p.numel() for p in model.parameters())
    assert count == closed_form_count(config.use_attention)
    assert count == (80_449_000 if config.use_attention else 68_581_000)


@pytest.mark.parametrize(
    "overrides, field",
    [
        (dict(num_hidden_layers=2), "num_hidden_layers"),
        (dict(embedding_size=0), "embedding_size"),
        (dict(maxout_size=-1), "maxout_size"),
        (dict(readout_state="next"), "readout_state"),
        (dict(dropout=1.0), "dropout"),
        (dict(tie_word_embeddings=True), "tie_word_embeddings"),
        (dict(use_attention="yes"), "use_attention"),
        (dict(source_vocab_size=5, pad_token_id=7), "pad_token_id"),  # padding is a source id too
    ],
)
def test_config_rejects_impossible_values(overrides, field):
    with pytest.raises(ValueError, match=field):
        tiny(**overrides)


def test_config_aliases_and_auto_config():
    config = AutoConfig.for_model("paper-rnnsearch", intermediate_size=12, hidden_size=8)
    assert config.maxout_size == 12 and config.alignment_size == 8 and config.source_vocab_size == 30000
    assert config.decoder_start_token_id == config.bos_token_id


def test_bad_source_ids_use_the_source_vocabulary():
    model = build()
    with pytest.raises(ValueError, match="vocabulary"):
        model(input_ids=torch.tensor([[V_SRC]]), decoder_input_ids=torch.tensor([[1]]))
    model(input_ids=torch.tensor([[V_SRC - 1]]), decoder_input_ids=torch.tensor([[V_TGT - 1]]))
    with pytest.raises(ValueError, match="decoder_input_ids"):
        model(input_ids=torch.tensor([[3]]), decoder_input_ids=torch.tensor([[V_TGT]]))


@torch.no_grad()
def test_initialisation_follows_appendix_b1():
    torch.manual_seed(0)
    config = preset("rnnsearch-50", vocab_size=300, hidden_size=64, embedding_size=48, maxout_size=32)
    model = PaperRNNSearchForConditionalGeneration(config)
    step = model.model.decoder.step
    n = config.hidden_size
    eye = torch.eye(n)
    for weight in (model.model.encoder.layer.forward_rnn.weight_hh_l0, step.hidden_gates.weight,
                   step.hidden_candidate.weight):  # fmt: skip
        for block in weight.detach().split(n):
            torch.testing.assert_close(block @ block.T, eye, atol=1e-5, rtol=0)  # orthogonal
    assert step.alignment.v_a.weight.abs().max() == 0 and step.alignment.U_a.bias.abs().max() == 0
    assert 0.0007 < float(step.alignment.W_a.weight.std()) < 0.0013
    assert 0.007 < float(model.lm_head.weight.std()) < 0.013 and model.lm_head.bias.abs().max() == 0
    assert model.model.encoder.layer.forward_rnn.bias_hh_l0.abs().max() == 0


def test_rnnencdec_saves_and_loads(tmp_path):
    model = build("rnnencdec-30").float()
    batch = padded_batch("right")
    model.save_pretrained(tmp_path)
    loaded = AutoModelForSeq2SeqLM.from_pretrained(tmp_path).eval()
    assert loaded.config.use_attention is False and loaded.config.max_train_sentence_length == 30
    with torch.no_grad():
        torch.testing.assert_close(loaded(**batch).logits, model(**batch).logits, rtol=0, atol=0)
