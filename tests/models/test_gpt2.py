"""GPT-2 against transformers' own implementation and the paper's sizes."""

from __future__ import annotations

import math

import pytest
import torch
import transformers

from hf_paper_models import convert_from_transformers, convert_to_transformers, preset
from hf_paper_models.models.gpt2 import (
    PAPER_PARAMETERS,
    PRESETS,
    PaperGPT2ForSequenceClassification,
    PaperGPT2ForTokenClassification,
    PaperGPT2LMHeadModel,
    PaperGPT2Model,
)

TINY = dict(n_embd=32, n_layer=2, n_head=4, vocab_size=101, n_positions=48, bos_token_id=1, eos_token_id=1)


def count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())  # shared (tied) tensors counted once


def their_tiny(cls, **kw):
    torch.manual_seed(0)
    return cls(transformers.GPT2Config(**{**TINY, **kw})).eval()


def ids(batch=3, length=17, vocab=101, seed=0):
    return torch.randint(0, vocab, (batch, length), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize(
    "their_class, our_class",
    [
        (transformers.GPT2Model, PaperGPT2Model),
        (transformers.GPT2LMHeadModel, PaperGPT2LMHeadModel),
        (transformers.GPT2ForSequenceClassification, PaperGPT2ForSequenceClassification),
        (transformers.GPT2ForTokenClassification, PaperGPT2ForTokenClassification),
    ],
)
def test_conversion_both_ways_keeps_outputs(their_class, our_class):
    theirs = their_tiny(their_class, num_labels=3, pad_token_id=0)
    ours = convert_from_transformers(theirs)
    assert type(ours) is our_class
    input_ids = ids()
    input_ids[0, -4:] = 0  # right padding: the classifier reads the last real token
    mask = (input_ids != 0).long()
    mask[1:] = 1
    with torch.no_grad():
        a, b = theirs(input_ids, attention_mask=mask), ours(input_ids, attention_mask=mask)
    key = "last_hidden_state" if their_class is transformers.GPT2Model else "logits"
    torch.testing.assert_close(b[key], a[key], atol=1e-4, rtol=1e-4)
    back = convert_to_transformers(ours)
    assert type(back) is their_class
    with torch.no_grad():
        torch.testing.assert_close(back(input_ids, attention_mask=mask)[key], a[key], atol=1e-4, rtol=1e-4)


def test_conversion_from_a_saved_folder_and_losses_match(tmp_path):
    theirs = their_tiny(transformers.GPT2LMHeadModel)
    theirs.save_pretrained(tmp_path)
    ours = convert_from_transformers(tmp_path)
    input_ids = ids()
    with torch.no_grad():
        torch.testing.assert_close(ours(input_ids, labels=input_ids).loss, theirs(input_ids, labels=input_ids).loss)
    with pytest.raises(ValueError, match="convert"):
        PaperGPT2LMHeadModel.from_pretrained(tmp_path)  # a native checkpoint needs the converter


def test_greedy_generation_matches_transformers():
    theirs = their_tiny(transformers.GPT2LMHeadModel)
    ours = convert_from_transformers(theirs)
    prompt = ids(batch=2, length=5)
    kwargs = dict(max_new_tokens=20, do_sample=False, pad_token_id=0)
    torch.testing.assert_close(ours.generate(prompt, **kwargs), theirs.generate(prompt, **kwargs), rtol=0, atol=0)


@pytest.mark.parametrize("name", list(PRESETS))
def test_preset_parameter_counts(name):
    config = preset(name)
    their_config = transformers.GPT2Config(
        n_embd=config.hidden_size, n_layer=config.num_hidden_layers, n_head=config.num_attention_heads
    )
    with torch.device("meta"):
        ours, theirs = PaperGPT2LMHeadModel(config), transformers.GPT2LMHeadModel(their_config)
    assert count(ours) == count(theirs)
    # OpenAI's corrected figures for the released models (the paper's Table 2 undercounted).
    assert abs(count(ours) - PAPER_PARAMETERS[name]) / PAPER_PARAMETERS[name] < 0.005


def test_scaled_residual_initialisation():
    config = preset("gpt2-small", num_hidden_layers=8, hidden_size=256, num_attention_heads=4)
    model = PaperGPT2LMHeadModel(config)
    expected = 0.02 / math.sqrt(2 * 8)  # §2.3: 1/√N over N = 2·n_layer residual layers
    for block in model.transformer.h:
        for proj in (block.attn.c_proj.weight, block.mlp.c_proj.weight):
            assert abs(proj.std().item() - expected) / expected < 0.1
        assert abs(block.mlp.c_fc.weight.std().item() - 0.02) / 0.02 < 0.1


def test_pre_layer_norm_structure():
    """x + Attn(LN1(x)) then + MLP(LN2(.)), with a final LayerNorm: checked by recomputing a block."""
    model = PaperGPT2Model(preset("gpt2-small", hidden_size=32, num_hidden_layers=1, num_attention_heads=4)).eval()
    x = torch.randn(1, 6, 32)
    block = model.h[0]
    with torch.no_grad():
        attn_out, _ = block.attn(block.ln_1(x))
        h = x + attn_out
        expected = h + block.mlp(block.ln_2(h))
        got, _ = block(x)
    torch.testing.assert_close(got, expected)
    assert isinstance(model.ln_f, torch.nn.LayerNorm)
