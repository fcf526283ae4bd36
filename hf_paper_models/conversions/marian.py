"""transformers' Marian (``MarianMTModel`` / ``MarianModel``) <-> the paper's Transformer.

Marian is the paper's architecture: post-LN sub-layers (``normalize_before`` does not exist there: the
layers are post-LN by construction), fixed sinusoidal positions, √d_model-scaled embeddings
(``scale_embedding=True``), one embedding matrix for source, target and output
(``share_encoder_decoder_embeddings`` and ``tie_word_embeddings``), no final encoder/decoder LayerNorm.
Module names are the same on both sides. Three details need care:

- **Sinusoid layout.** The paper interleaves its encodings — PE(pos, 2i) = sin, PE(pos, 2i+1) = cos —
  while ``MarianSinusoidalPositionalEmbedding`` puts the sines in the first half of the vector and the
  cosines in the second. The tables are permutations of each other, and everything that reads or
  writes the residual stream (embeddings, Q/K/V and FFN input columns, attention-output and FFN-output
  rows and biases, LayerNorm gains and biases) is permuted along the model width the same way; a
  LayerNorm does not care about the order of its features, so the two models compute the same function.
  Head dimensions (Q/K/V output rows) are not the residual stream and stay as they are.
- **Output bias.** Marian checkpoints carry ``final_logits_bias`` (a buffer; released models fill it
  from Marian's ``decoder_ff_logit_out_b``). The paper's output layer has no bias, so converted models
  set ``add_final_logits_bias=True`` and keep it; a model of ours without one converts back with zeros.
- **Fixed sizes.** Marian's LayerNorms use eps 1e-5 and its heads/FFN sizes may differ between encoder
  and decoder; ours has one of each. Marian's ``activation_dropout`` and layer-drop act only in training
  and are not part of the paper (dropped, with their values named in a warning).
"""

from __future__ import annotations

import logging
import threading

import torch
import transformers

from ..convert import Route, register_route
from ..models import transformer

logger = logging.getLogger(__name__)

_MARIAN_LAYER_NORM_EPS = 1e-5  # nn.LayerNorm's default, fixed in modeling_marian
_POSITION_KEYS = ("encoder.embed_positions.weight", "decoder.embed_positions.weight")

# Residual-stream axes by parameter name suffix: 1 = input columns of a Linear / embedding columns,
# 0 = output rows (and the matching bias or LayerNorm vector).
_COLUMNS = ("q_proj.weight", "k_proj.weight", "v_proj.weight", "fc1.weight", "embed_tokens.weight",
            "shared.weight", "lm_head.weight")  # fmt: skip
_ROWS = ("out_proj.weight", "fc2.weight", "out_proj.bias", "fc2.bias", "layer_norm.weight", "layer_norm.bias")


def paper_from_marian_order(dim: int) -> torch.Tensor:
    """Index ``idx`` with ``ours[..., p] = marian[..., idx[p]]``: ours interleaves sin_i (2i), cos_i (2i+1);
    Marian holds sin_i at i and cos_i at ceil(d/2) + i."""
    half = (dim + 1) // 2
    idx = torch.empty(dim, dtype=torch.long)
    idx[0::2] = torch.arange(half)
    idx[1::2] = half + torch.arange(dim // 2)
    return idx


def _permute(state: dict[str, torch.Tensor], index: torch.Tensor) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in state.items():
        if key.endswith(_COLUMNS):
            value = value.index_select(1, index)
        elif key.endswith(_ROWS):
            value = value.index_select(0, index)
        out[key] = value.contiguous()
    return out


def _width(state: dict[str, torch.Tensor]) -> int:
    key = next(k for k in state if k.endswith(("shared.weight", "embed_tokens.weight")))
    return state[key].shape[1]


# ----------------------------------------------------------------------------------------------
# Configs
# ----------------------------------------------------------------------------------------------


def _marian_to_ours(theirs) -> dict:
    if theirs.encoder_attention_heads != theirs.decoder_attention_heads:
        raise ValueError(
            f"Marian config has {theirs.encoder_attention_heads} encoder and {theirs.decoder_attention_heads} "
            "decoder attention heads; the paper's Transformer uses one head count (h)."
        )
    if theirs.encoder_ffn_dim != theirs.decoder_ffn_dim:
        raise ValueError(
            f"Marian config has encoder_ffn_dim={theirs.encoder_ffn_dim} and decoder_ffn_dim="
            f"{theirs.decoder_ffn_dim}; the paper's Transformer uses one d_ff."
        )
    if not theirs.tie_word_embeddings:
        raise ValueError(
            "Marian checkpoints with an untied output layer are not the paper's architecture (§3.4)."
        )
    if (theirs.decoder_vocab_size or theirs.vocab_size) != theirs.vocab_size:
        raise ValueError("Marian checkpoints with separate source/target vocabulary sizes are not supported.")
    ignored = {
        name: getattr(theirs, name, 0)
        for name in ("activation_dropout", "encoder_layerdrop", "decoder_layerdrop")
        if getattr(theirs, name, 0)
    }
    if ignored:
        logger.warning("Marian training-only settings not in the paper's model were dropped: %s", ignored)
    return dict(
        vocab_size=theirs.vocab_size,
        hidden_size=theirs.d_model,
        num_hidden_layers=theirs.encoder_layers,
        encoder_layers=theirs.encoder_layers,
        decoder_layers=theirs.decoder_layers,
        num_attention_heads=theirs.encoder_attention_heads,
        intermediate_size=theirs.encoder_ffn_dim,
        activation_function=theirs.activation_function,
        dropout=theirs.dropout,
        attention_dropout=theirs.attention_dropout,
        max_position_embeddings=theirs.max_position_embeddings,
        init_std=theirs.init_std,
        layer_norm_eps=_MARIAN_LAYER_NORM_EPS,
        scale_embedding=theirs.scale_embedding,
        share_embeddings=theirs.share_encoder_decoder_embeddings,
        add_final_logits_bias=True,
        pad_token_id=theirs.pad_token_id,
        bos_token_id=theirs.bos_token_id,
        eos_token_id=theirs.eos_token_id,
        decoder_start_token_id=theirs.decoder_start_token_id,
        id2label=dict(theirs.id2label),
        label2id=dict(theirs.label2id),
    )


# convert_to_transformers calls config_to_theirs and then state_to_theirs; the second needs the sizes
# of Marian's position tables, which a state dict of ours (positions are not parameters) cannot tell.
_PENDING = threading.local()


def _ours_to_marian(ours) -> transformers.MarianConfig:
    if abs(ours.layer_norm_eps - _MARIAN_LAYER_NORM_EPS) > 1e-12:
        raise ValueError(
            f"transformers' Marian LayerNorms use eps {_MARIAN_LAYER_NORM_EPS}; this model has "
            f"layer_norm_eps={ours.layer_norm_eps}."
        )
    their_config = transformers.MarianConfig(
        vocab_size=ours.vocab_size,
        decoder_vocab_size=ours.vocab_size,
        d_model=ours.hidden_size,
        encoder_layers=ours.encoder_layers,
        decoder_layers=ours.decoder_layers,
        encoder_attention_heads=ours.num_attention_heads,
        decoder_attention_heads=ours.num_attention_heads,
        encoder_ffn_dim=ours.intermediate_size,
        decoder_ffn_dim=ours.intermediate_size,
        activation_function=ours.activation_function,
        dropout=ours.dropout,
        attention_dropout=ours.attention_dropout,
        activation_dropout=0.0,
        max_position_embeddings=ours.max_position_embeddings,
        init_std=ours.init_std if ours.init_std is not None else ours.hidden_size**-0.5,
        scale_embedding=ours.scale_embedding,
        share_encoder_decoder_embeddings=ours.share_embeddings,
        tie_word_embeddings=True,
        pad_token_id=ours.pad_token_id,
        bos_token_id=ours.bos_token_id,
        eos_token_id=ours.eos_token_id,
        forced_eos_token_id=None,
        decoder_start_token_id=ours.decoder_start_token_id,
        id2label=dict(ours.id2label),
        label2id=dict(ours.label2id),
    )
    _PENDING.positions = (ours.max_position_embeddings, ours.hidden_size)
    _PENDING.vocab_size = ours.vocab_size
    return their_config


# ----------------------------------------------------------------------------------------------
# Weights
# ----------------------------------------------------------------------------------------------


def _state_to_ours(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    state = {k: v for k, v in state.items() if not k.endswith(_POSITION_KEYS)}  # fixed, recomputed by ours
    return _permute(state, paper_from_marian_order(_width(state)))


def _state_to_theirs(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    index = paper_from_marian_order(_width(state))
    state = _permute(state, torch.argsort(index))
    positions = getattr(_PENDING, "positions", None)
    if positions is None:
        raise RuntimeError("state_to_theirs needs the Marian config made by config_to_theirs first.")
    del _PENDING.positions
    table = transformers.models.marian.modeling_marian.MarianSinusoidalPositionalEmbedding(
        *positions
    ).create_weight()
    prefix = "model." if any(k.startswith("model.") for k in state) else ""
    for key in _POSITION_KEYS:
        state[prefix + key] = table.clone()
    if "lm_head.weight" in state and "final_logits_bias" not in state:
        state["final_logits_bias"] = torch.zeros(1, _PENDING.vocab_size, dtype=state["lm_head.weight"].dtype)
    return state


register_route(
    Route(
        "marian",
        _marian_to_ours,
        _ours_to_marian,
        heads={"MarianModel": "Model", "MarianMTModel": "ForConditionalGeneration"},
        paper_types={"paper-transformer": (transformer, "PaperTransformer")},
        state_to_ours=_state_to_ours,
        state_to_theirs=_state_to_theirs,
    )
)
