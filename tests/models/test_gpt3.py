"""GPT-3: GPT-2 blocks with alternating dense and locally banded attention (Brown et al. 2020)."""

from __future__ import annotations

import pytest
import torch
import transformers

from hf_paper_models import convert_from_transformers, preset
from hf_paper_models.models.attention import banded_attention_forward
from hf_paper_models.models.gpt3 import PAPER_PARAMETERS, PRESETS, PaperGPT3Config, PaperGPT3LMHeadModel


def count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def band_mask(n: int, window: int) -> torch.Tensor:
    """Written out independently of the kernel: query q sees key k iff q - window < k <= q."""
    mask = torch.zeros(n, n, dtype=torch.bool)
    for q in range(n):
        for k in range(n):
            mask[q, k] = q - window < k <= q
    return mask


@pytest.mark.parametrize("n, window", [(37, 8), (64, 16), (5, 8), (33, 1), (50, 7)])
@pytest.mark.parametrize("padded", [False, True])
@pytest.mark.parametrize("block", [None, 1, 3, "window"])
def test_banded_kernel_equals_dense_attention_under_a_band_mask(n, window, padded, block):
    block = window if block == "window" else block
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, n, 8) for _ in range(3))
    padding = torch.ones(2, n, dtype=torch.bool)
    if padded:
        padding[0, : n // 3] = False  # left padding in the first row
    module = torch.nn.Module().eval()
    for use_sdpa in (True, False):
        out, _ = banded_attention_forward(
            module, q, k, v, window, padding if padded else None, use_sdpa=use_sdpa, block=block
        )
        mask = band_mask(n, window)[None, None] & padding[:, None, None, :]
        scores = (q @ k.transpose(-1, -2)) / 8**0.5
        expected = torch.softmax(scores.masked_fill(~mask, float("-inf")), -1) @ v
        got = out.transpose(1, 2)
        for b in range(2):  # compare the real (unpadded) query positions
            torch.testing.assert_close(got[b][:, padding[b]], expected[b][:, padding[b]], atol=1e-5, rtol=1e-4)


def test_gpt3_with_every_layer_dense_equals_gpt2_on_the_same_weights():
    torch.manual_seed(0)
    their = transformers.GPT2LMHeadModel(
        transformers.GPT2Config(n_embd=32, n_layer=3, n_head=4, vocab_size=90, n_positions=64)
    ).eval()
    ours = convert_from_transformers(their, model_type="paper-gpt3")
    assert isinstance(ours, PaperGPT3LMHeadModel) and set(ours.config.layer_types) == {"full_attention"}
    input_ids = torch.randint(0, 90, (2, 50))
    with torch.no_grad():
        torch.testing.assert_close(ours(input_ids).logits, their(input_ids).logits, atol=1e-4, rtol=1e-4)


def test_banded_layer_in_the_model_matches_a_masked_dense_reference():
    """A GPT-3 model with alternating layers equals GPT-2 weights run with band masks on odd layers."""
    config = PaperGPT3Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, vocab_size=50,
                             max_position_embeddings=64, sliding_window=6, bos_token_id=0, eos_token_id=0)
    assert config.layer_types == ["full_attention", "sliding_attention"]
    torch.manual_seed(0)
    model = PaperGPT3LMHeadModel(config).eval()
    x = torch.randint(0, 50, (1, 40))
    n = x.shape[1]
    causal = torch.ones(n, n, dtype=torch.bool).tril()
    band = band_mask(n, 6)
    # Reference: every block recomputed by hand with explicit masks.
    t = model.transformer
    h = t.wte(x) + t.wpe(torch.arange(n))[None]
    with torch.no_grad():
        for block, mask in zip(t.h, (causal, band)):
            a = block.attn
            qkv = a.c_attn(block.ln_1(h)).view(1, n, 3, 4, 8).permute(2, 0, 3, 1, 4)
            scores = qkv[0] @ qkv[1].transpose(-1, -2) / 8**0.5
            att = torch.softmax(scores.masked_fill(~mask, float("-inf")), -1) @ qkv[2]
            h = h + a.c_proj(att.transpose(1, 2).reshape(1, n, 32))
            h = h + block.mlp(block.ln_2(h))
        expected = model.lm_head(t.ln_f(h))
        torch.testing.assert_close(model(x).logits, expected, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("name", list(PRESETS))
def test_preset_parameter_counts(name):
    config = preset(name)
    assert config.max_position_embeddings == 2048 and config.vocab_size == 50257
    with torch.device("meta"):
        ours = PaperGPT3LMHeadModel(config)
    paper = PAPER_PARAMETERS[name]
    # Table 2.1 rounds loosely (e.g. "350M" for 355.9M): within 2% of the paper's figure.
    assert abs(count(ours) - paper) / paper < 0.02, count(ours)
    if config.head_dim * config.num_attention_heads == config.hidden_size:
        their_config = transformers.GPT2Config(
            n_embd=config.hidden_size, n_layer=config.num_hidden_layers, n_head=config.num_attention_heads,
            n_positions=2048,
        )
        with torch.device("meta"):
            assert count(ours) == count(transformers.GPT2LMHeadModel(their_config))


def test_config_rejects_a_window_larger_than_the_context():
    with pytest.raises(ValueError, match="sliding_window"):
        PaperGPT3Config(max_position_embeddings=128, sliding_window=256)
    with pytest.raises(ValueError, match="layer_types"):
        PaperGPT3Config(num_hidden_layers=2, layer_types=["full_attention", "sparse"])


def test_head_dim_is_independent_of_width():
    config = preset("gpt3-13b", num_hidden_layers=1, vocab_size=10, max_position_embeddings=16, sliding_window=8)
    assert (config.hidden_size, config.num_attention_heads, config.head_dim) == (5140, 40, 128)
    with torch.device("meta"):
        model = PaperGPT3LMHeadModel(config)
    assert model.transformer.h[0].attn.c_attn.weight.shape == (3 * 40 * 128, 5140)
    assert model.transformer.h[0].attn.c_proj.weight.shape == (5140, 40 * 128)
