"""GPT-1 (Radford et al. 2018) against transformers' ``openai-gpt`` implementation and the paper's formulas."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from transformers import (
    OpenAIGPTConfig,
    OpenAIGPTDoubleHeadsModel,
    OpenAIGPTForSequenceClassification,
    OpenAIGPTLMHeadModel,
)

from hf_paper_models.models.gpt1 import (
    PAPER_PARAMETERS,
    PRESETS,
    GPT1TaskFormatter,
    PaperGPT1Config,
    PaperGPT1DoubleHeadsModel,
    PaperGPT1ForSequenceClassification,
    PaperGPT1LMHeadModel,
    PaperGPT1Model,
)

ATOL = 1e-4
VOCAB, POSITIONS, HIDDEN, LAYERS, HEADS = 99, 32, 32, 2, 4
# transformers' Conv1D stores (in, out); nn.Linear stores (out, in).
CONV1D_SUFFIXES = (".attn.c_attn.weight", ".attn.c_proj.weight", ".mlp.c_fc.weight", ".mlp.c_proj.weight")


def tiny_config(**overrides) -> PaperGPT1Config:
    kwargs = dict(
        vocab_size=VOCAB,
        max_position_embeddings=POSITIONS,
        hidden_size=HIDDEN,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
    )
    return PaperGPT1Config(**{**kwargs, **overrides})


def tiny_reference_config(**overrides) -> OpenAIGPTConfig:
    kwargs = dict(
        vocab_size=VOCAB, n_positions=POSITIONS, n_embd=HIDDEN, n_layer=LAYERS, n_head=HEADS, afn="gelu"
    )
    return OpenAIGPTConfig(**{**kwargs, **overrides})


def randomize(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Weights far from their initialisation (LayerNorms included) so that every term shows up."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=generator)
            if ".ln_" in name and name.endswith("weight"):
                param.copy_(1 + 0.2 * noise)
            else:
                param.copy_(0.15 * noise)
    return model.eval()


def copy_from_transformers(reference: torch.nn.Module, ours: torch.nn.Module) -> torch.nn.Module:
    """Transformers' state dict into ours by name, transposing its Conv1D weights."""
    state = {
        key: value.t() if key.endswith(CONV1D_SUFFIXES) else value
        for key, value in reference.state_dict().items()
    }
    missing, unexpected = ours.load_state_dict(state, strict=False)
    assert not unexpected, unexpected
    assert set(missing) <= {"lm_head.weight"}, missing  # tied to tokens_embed
    assert ours.lm_head.weight is ours.transformer.tokens_embed.weight
    return ours.eval()


def random_ids(*shape, low=1, seed=0):
    return torch.randint(low, VOCAB, shape, generator=torch.Generator().manual_seed(seed))


# ----------------------------------------------------------------------------------------------
# Against transformers' OpenAIGPT* models
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("attn_implementation", ["sdpa", "eager"])
def test_lm_head_matches_transformers(attn_implementation):
    reference = randomize(OpenAIGPTLMHeadModel(tiny_reference_config()))
    ours = copy_from_transformers(
        reference, PaperGPT1LMHeadModel(tiny_config(attn_implementation=attn_implementation))
    )
    input_ids = random_ids(2, 12)
    with torch.no_grad():
        expected = reference(input_ids, labels=input_ids)
        got = ours(input_ids, labels=input_ids, use_cache=False)
    assert expected.logits.abs().max() > 1  # a comparison of non-trivial numbers
    torch.testing.assert_close(got.logits, expected.logits, atol=ATOL, rtol=0)
    torch.testing.assert_close(got.loss, expected.loss, atol=ATOL, rtol=0)

    # Right padding: the real positions are unaffected and agree with transformers.
    mask = torch.ones_like(input_ids)
    mask[1, 7:] = 0
    with torch.no_grad():
        expected = reference(input_ids, attention_mask=mask).logits
        got = ours(input_ids, attention_mask=mask).logits
    keep = mask.bool()
    torch.testing.assert_close(got[keep], expected[keep], atol=ATOL, rtol=0)


def test_greedy_generation_matches_transformers_and_cache():
    reference = randomize(OpenAIGPTLMHeadModel(tiny_reference_config()), seed=1)
    ours = copy_from_transformers(reference, PaperGPT1LMHeadModel(tiny_config()))
    prompt = random_ids(2, 5, seed=1)
    settings = dict(max_new_tokens=10, do_sample=False, pad_token_id=0)
    with torch.no_grad():
        cached = ours.generate(prompt, use_cache=True, **settings)
        uncached = ours.generate(prompt, use_cache=False, **settings)
        expected = reference.generate(prompt, **settings)
    assert cached.shape == (2, 15)
    assert torch.equal(cached, uncached)
    assert torch.equal(cached, expected)


def test_double_heads_matches_transformers_each_loss_term():
    reference = randomize(OpenAIGPTDoubleHeadsModel(tiny_reference_config()), seed=2)
    ours = copy_from_transformers(reference, PaperGPT1DoubleHeadsModel(tiny_config()))
    assert set(dict(ours.multiple_choice_head.named_parameters())) == {"summary.weight", "summary.bias"}
    batch, choices, length = 2, 3, 9
    input_ids = random_ids(batch, choices, length, seed=2)
    mc_token_ids = torch.tensor([[8, 5, 6], [3, 8, 7]])
    lm_labels = input_ids.clone()
    lm_labels[0, 1, 6:] = -100
    mc_labels = torch.tensor([2, 0])
    with torch.no_grad():
        expected = reference(input_ids, mc_token_ids=mc_token_ids, labels=lm_labels, mc_labels=mc_labels)
        got = ours(input_ids, mc_token_ids=mc_token_ids, labels=lm_labels, mc_labels=mc_labels)
    assert got.logits.shape == (batch, choices, length, VOCAB) and got.mc_logits.shape == (batch, choices)
    torch.testing.assert_close(got.logits, expected.logits, atol=ATOL, rtol=0)
    torch.testing.assert_close(got.mc_logits, expected.mc_logits, atol=ATOL, rtol=0)
    # transformers' DoubleHeads returns the LM loss as `loss` and the choice loss as `mc_loss`.
    torch.testing.assert_close(got.lm_loss, expected.loss, atol=ATOL, rtol=0)
    torch.testing.assert_close(got.mc_loss, expected.mc_loss, atol=ATOL, rtol=0)
    # §3.2: L3 = L2 + λ·L1 with λ = 0.5.
    torch.testing.assert_close(got.loss, expected.mc_loss + 0.5 * expected.loss, atol=ATOL, rtol=0)


def test_sequence_classification_matches_transformers():
    reference = randomize(
        OpenAIGPTForSequenceClassification(tiny_reference_config(num_labels=3, pad_token_id=0)), seed=3
    )
    ours = copy_from_transformers(
        reference, PaperGPT1ForSequenceClassification(tiny_config(num_labels=3, pad_token_id=0))
    )
    input_ids = random_ids(3, 10, seed=3)
    mask = torch.ones_like(input_ids)
    for row, length in enumerate([10, 6, 3]):  # right padding with the pad id
        input_ids[row, length:] = 0
        mask[row, length:] = 0
    labels = torch.tensor([2, 0, 1])
    with torch.no_grad():
        expected = reference(input_ids, attention_mask=mask, labels=labels)
        by_mask = ours(input_ids, attention_mask=mask, labels=labels)
        by_pad_id = ours(input_ids, labels=labels)
    for got in (by_mask, by_pad_id):
        torch.testing.assert_close(got.logits, expected.logits, atol=ATOL, rtol=0)
        torch.testing.assert_close(got.loss, expected.loss, atol=ATOL, rtol=0)
    assert by_mask.lm_loss is None and torch.equal(by_mask.loss, by_mask.clf_loss)


# ----------------------------------------------------------------------------------------------
# The paper's own formulas
# ----------------------------------------------------------------------------------------------


def test_post_ln_blocks_and_no_final_layernorm():
    model = randomize(PaperGPT1Model(tiny_config()), seed=4)
    assert not hasattr(model, "ln_f")
    input_ids = random_ids(2, 8, seed=4)
    seen = []
    hook = model.h[-1].ln_2.register_forward_hook(lambda module, args, out: seen.append(out))
    with torch.no_grad():
        out = model(input_ids, output_hidden_states=True, use_cache=False)
        hook.remove()
        x = model.tokens_embed(input_ids) + model.positions_embed(torch.arange(8))
        for block, given in zip(model.h, out.hidden_states[:-1]):
            torch.testing.assert_close(given, x, atol=ATOL, rtol=0)
            a, _ = block.attn(x)  # no mask: plain causal attention
            h = block.ln_1(x + a)  # h = LN(x + Attn(x))
            m = block.mlp.c_proj(F.gelu(block.mlp.c_fc(h), approximate="tanh"))
            x = block.ln_2(h + m)  # out = LN(h + MLP(h))
    torch.testing.assert_close(out.last_hidden_state, x, atol=ATOL, rtol=0)
    # The model's output is the last block's LN₂ output, untouched.
    assert torch.equal(out.last_hidden_state, seen[0])


def test_sequence_classification_l3_by_hand():
    config = tiny_config(num_labels=2, lm_coef=0.5)
    model = randomize(PaperGPT1ForSequenceClassification(config), seed=5)
    assert model.lm_head.weight is model.transformer.tokens_embed.weight
    input_ids = random_ids(2, 7, seed=5)
    labels = torch.tensor([1, 0])
    lm_labels = input_ids.clone()
    lm_labels[1, 5:] = -100
    with torch.no_grad():
        out = model(input_ids, labels=labels, lm_labels=lm_labels)
        hidden = model.transformer(input_ids, use_cache=False).last_hidden_state
    class_logits = hidden[:, -1] @ model.score.weight.t()
    l2 = F.cross_entropy(class_logits, labels)
    token_logits = hidden @ model.transformer.tokens_embed.weight.t()  # eq. 2: softmax(h W_eᵀ)
    l1 = F.cross_entropy(
        token_logits[:, :-1].reshape(-1, VOCAB), lm_labels[:, 1:].reshape(-1), ignore_index=-100
    )
    torch.testing.assert_close(out.logits, class_logits, atol=ATOL, rtol=0)
    torch.testing.assert_close(out.clf_loss, l2, atol=ATOL, rtol=0)
    torch.testing.assert_close(out.lm_loss, l1, atol=ATOL, rtol=0)
    torch.testing.assert_close(out.loss, l2 + 0.5 * l1, atol=ATOL, rtol=0)
    assert (l1 - l2).abs() > 1e-2  # the two terms are distinguishable

    model.config.lm_coef = 0.25
    with torch.no_grad():
        out = model(input_ids, labels=labels, lm_labels=lm_labels)
    torch.testing.assert_close(out.loss, l2 + 0.25 * l1, atol=ATOL, rtol=0)


def test_similarity_sums_both_orders_by_hand():
    model = randomize(PaperGPT1ForSequenceClassification(tiny_config(num_labels=1)), seed=6)
    fmt = GPT1TaskFormatter(start_id=96, delimiter_id=97, extract_id=98)
    pairs = [([5, 6, 7], [8, 9]), ([10, 11], [12, 13, 14, 15])]
    batch = fmt.batch([fmt.transform_similarity(a, b) for a, b in pairs], labels=[0.5, -1.0])
    assert batch["input_ids"].shape == (2, 2, 9)
    with torch.no_grad():
        out = model(**batch)
        expected, one_order = [], []
        for a, b in pairs:  # each order alone, unpadded; h at its extract token (the last one)
            h_ab = model.transformer(torch.tensor([fmt.transform_entailment(a, b)])).last_hidden_state[0, -1]
            h_ba = model.transformer(torch.tensor([fmt.transform_entailment(b, a)])).last_hidden_state[0, -1]
            expected.append(model.score(h_ab + h_ba))
            one_order.append(model.score(h_ab))
    expected = torch.stack(expected)
    torch.testing.assert_close(out.logits, expected, atol=ATOL, rtol=0)
    torch.testing.assert_close(out.loss, F.mse_loss(expected.squeeze(-1), batch["labels"]), atol=ATOL, rtol=0)
    assert (out.logits - torch.stack(one_order)).abs().max() > 1e-3  # the second order counts


def test_multiple_choice_convention_and_default_extract_token():
    model = randomize(PaperGPT1DoubleHeadsModel(tiny_config(pad_token_id=0)), seed=7)
    fmt = GPT1TaskFormatter(start_id=96, delimiter_id=97, extract_id=98, pad_id=0)
    contexts = [[5, 6, 7, 8], [9, 10]]
    answers = [[[20], [21, 22, 23], [24, 25]], [[30, 31], [32], [33, 34, 35, 36]]]
    batch = fmt.batch(
        [fmt.transform_multiple_choice(c, a) for c, a in zip(contexts, answers)],
        labels=[1, 2],
        lm_labels=True,
    )
    assert batch["input_ids"].shape == (2, 3, 10) and batch["mc_token_ids"].shape == (2, 3)
    extract = batch["input_ids"].gather(-1, batch["mc_token_ids"].unsqueeze(-1))
    assert (extract == 98).all()

    with torch.no_grad():
        full = model(**batch)
        # AutoModelForMultipleChoice style: (b, c, n) inputs, (b,) labels pick the choice.
        auto = model(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]
        )
        by_pad_id = model(input_ids=batch["input_ids"])
    torch.testing.assert_close(auto.mc_logits, full.mc_logits, atol=ATOL, rtol=0)
    torch.testing.assert_close(by_pad_id.mc_logits, full.mc_logits, atol=ATOL, rtol=0)
    assert auto.lm_loss is None
    torch.testing.assert_close(auto.loss, F.cross_entropy(full.mc_logits, batch["labels"]), atol=ATOL, rtol=0)
    # mc_labels + labels as LM labels (transformers' DoubleHeads convention) == lm_labels.
    with torch.no_grad():
        classic = model(
            **{k: v for k, v in batch.items() if k not in ("labels", "lm_labels")},
            mc_labels=batch["labels"],
            labels=batch["lm_labels"],
        )
    torch.testing.assert_close(classic.loss, full.loss, atol=ATOL, rtol=0)
    torch.testing.assert_close(full.loss, full.mc_loss + 0.5 * full.lm_loss, atol=ATOL, rtol=0)

    # Each choice's score is W_y applied to its extract token's state, choice by choice.
    with torch.no_grad():
        for i, (c, ans) in enumerate(zip(contexts, answers)):
            for j, a in enumerate(ans):
                h = model.transformer(torch.tensor([fmt.transform_entailment(c, a)])).last_hidden_state[0, -1]
                torch.testing.assert_close(
                    full.mc_logits[i, j], model.multiple_choice_head.summary(h)[0], atol=ATOL, rtol=0
                )


def test_task_formatter_layouts():
    fmt = GPT1TaskFormatter(start_id=1, delimiter_id=2, extract_id=3, pad_id=0, max_length=8)
    assert fmt.transform_classification([7, 8]) == [1, 7, 8, 3]
    assert fmt.transform_entailment([7], [8, 9]) == [1, 7, 2, 8, 9, 3]
    assert fmt.transform_similarity([7], [8, 9]) == [[1, 7, 2, 8, 9, 3], [1, 8, 9, 2, 7, 3]]
    assert fmt.transform_multiple_choice([7, 8], [[9], [10, 11]]) == [
        [1, 7, 8, 2, 9, 3],
        [1, 7, 8, 2, 10, 11, 3],
    ]

    batch = fmt.batch(
        [fmt.transform_classification([7, 8, 9]), fmt.transform_classification([7])],
        labels=[1, 0],
        lm_labels=True,
    )
    assert batch["input_ids"].tolist() == [[1, 7, 8, 9, 3], [1, 7, 3, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]]
    assert batch["mc_token_ids"].tolist() == [4, 2]
    assert batch["lm_labels"].tolist() == [[1, 7, 8, 9, 3], [1, 7, 3, -100, -100]]
    assert batch["labels"].tolist() == [1, 0]

    with pytest.raises(ValueError, match="max_length"):
        fmt.batch([fmt.transform_classification(list(range(4, 12)))])
    with pytest.raises(ValueError, match="same number of sequences"):
        fmt.batch([fmt.transform_multiple_choice([7], [[8], [9]]), fmt.transform_multiple_choice([7], [[8]])])
    with pytest.raises(ValueError, match="extract_id"):
        GPT1TaskFormatter(start_id=1, delimiter_id=2, extract_id=-3)


# ----------------------------------------------------------------------------------------------
# Sizes, initialisation, config and input validation, saving
# ----------------------------------------------------------------------------------------------


def test_gpt1_preset_parameter_count_on_meta():
    config = PaperGPT1Config(**PRESETS["gpt1"])
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads) == (768, 12, 12)
    assert (config.intermediate_size, config.max_position_embeddings, config.vocab_size) == (3072, 512, 40478)
    with torch.device("meta"):
        ours = PaperGPT1LMHeadModel(config)
        reference = OpenAIGPTLMHeadModel(OpenAIGPTConfig())
    count = sum(p.numel() for p in ours.parameters())
    assert count == sum(p.numel() for p in reference.parameters())
    assert abs(count - PAPER_PARAMETERS["gpt1"]) / PAPER_PARAMETERS["gpt1"] < 0.01


def test_initialisation_is_normal_002():
    model = PaperGPT1LMHeadModel(tiny_config(vocab_size=2000, hidden_size=64))
    std = model.transformer.tokens_embed.weight.std().item()
    assert 0.019 < std < 0.021
    assert 0.018 < model.transformer.h[0].mlp.c_proj.weight.std().item() < 0.022  # no 1/√N (that is GPT-2)
    assert torch.all(model.transformer.h[0].attn.c_attn.bias == 0)
    assert torch.all(model.transformer.h[0].ln_1.weight == 1)


def test_config_defaults_and_validation():
    config = PaperGPT1Config()
    assert config.model_type == "paper-gpt1"
    assert (config.vocab_size, config.max_position_embeddings, config.n_embd) == (40478, 512, 768)
    assert (config.lm_coef, config.clf_pdrop, config.tie_word_embeddings) == (0.5, 0.1, True)
    assert config.bos_token_id is None and config.eos_token_id is None
    for bad in (-0.1, float("nan"), "0.5"):
        with pytest.raises(ValueError, match="lm_coef"):
            PaperGPT1Config(lm_coef=bad)
    with pytest.raises(ValueError, match="clf_pdrop"):
        PaperGPT1Config(clf_pdrop=1.0)
    with pytest.raises(ValueError, match="num_attention_heads"):
        PaperGPT1Config(hidden_size=30, num_attention_heads=4)
    assert PaperGPT1Config(lm_coef=0).lm_coef == 0  # "w/o aux LM" ablation of Table 5


def test_bad_inputs_raise_value_errors():
    lm = PaperGPT1LMHeadModel(tiny_config()).eval()
    with pytest.raises(ValueError, match="positions"):
        lm(random_ids(1, POSITIONS + 1))
    with pytest.raises(ValueError, match="vocabulary"):
        lm(torch.tensor([[1, VOCAB]]))
    with pytest.raises(ValueError, match="attention_mask"):
        lm(random_ids(2, 5), attention_mask=torch.ones(2, 4, dtype=torch.long))
    mc = PaperGPT1DoubleHeadsModel(tiny_config()).eval()
    with pytest.raises(ValueError, match="num_choices"):
        mc(random_ids(2, 5))
    with pytest.raises(ValueError, match="mc_token_ids"):
        mc(random_ids(2, 3, 5), mc_token_ids=torch.full((2, 3), 5))
    with pytest.raises(ValueError, match="mc_labels"):
        mc(random_ids(2, 3, 5), labels=torch.tensor([0, 1]), mc_labels=torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="attention_mask"):
        mc(random_ids(2, 3, 5), attention_mask=torch.ones(2, 5, dtype=torch.long))


def test_save_and_reload_double_heads(tmp_path):
    model = randomize(PaperGPT1DoubleHeadsModel(tiny_config()), seed=8)
    model.save_pretrained(tmp_path)
    names = {p.name for p in tmp_path.iterdir()}
    assert "model.safetensors" in names and not any(n.endswith(".bin") for n in names)
    assert "gpt1.py" in names
    auto_map = json.loads((tmp_path / "config.json").read_text())["auto_map"]
    assert auto_map["AutoModelForMultipleChoice"].endswith("PaperGPT1DoubleHeadsModel")
    loaded = PaperGPT1DoubleHeadsModel.from_pretrained(tmp_path).eval()
    input_ids = random_ids(1, 2, 6, seed=8)
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids).mc_logits, model(input_ids).mc_logits, atol=ATOL, rtol=0)
    assert loaded.lm_head.weight is loaded.transformer.tokens_embed.weight
