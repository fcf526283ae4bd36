"""transformers' Switch Transformers (``switch_transformers``) <-> ``paper-switch``.

The configs share T5's field names. The state dicts differ in T5's attention projections (renamed as in
``conversions/t5.py``), in the router (transformers' ``router.classifier`` linear layer is our bare
``router.weight``) and in the experts, which transformers keeps as ``experts.expert_{i}.wi/wo`` linear
layers and we stack, transposed to (in, out), into ``experts.wi`` (experts, d_model, d_ff) and
``experts.wo`` (experts, d_ff, d_model).

transformers caps each expert at a fixed ``expert_capacity`` tokens per sequence; the conversion keeps
that number (``expert_capacity``), so the same tokens are dropped on both sides. A model of ours that
drops by capacity factor in evaluation has no exact transformers twin and is refused; one that never
drops in evaluation (``eval_capacity_factor=None``) gets a capacity of ``max_position_embeddings``.
"""

from __future__ import annotations

import re

import torch
import transformers
from transformers import PreTrainedConfig

from ..convert import Route, register_route
from ..models import switch
from . import t5 as t5_conversion
from .t5 import _OURS_TO_THEIRS, _THEIRS_TO_OURS, _rename

# T5's shared fields (its FFN activation is called `dense_act_fn` here) plus the routing ones.
_SHARED_FIELDS = tuple(name for name in t5_conversion._SHARED_FIELDS if name != "feed_forward_proj") + (
    "num_experts",
    "router_jitter_noise",
    "router_z_loss_coef",
    "router_aux_loss_coef",
)
_THEIR_EXPERT = re.compile(r"^(.*\.mlp\.experts)\.expert_(\d+)\.(wi|wo)\.weight$")
_OUR_EXPERTS = re.compile(r"^(.*\.mlp\.experts)\.(wi|wo)$")


def _their_sparse_layers(num_layers: int, num_sparse: int) -> list[int]:
    """The layers transformers makes sparse (its config's step and its block rule)."""
    step = num_layers // num_sparse if num_sparse > 0 else num_layers
    return [i for i in range(num_layers) if (i % step == 1 or step == 1) if step > 0]


def _switch_to_ours(theirs: PreTrainedConfig) -> dict:
    if theirs.dense_act_fn.startswith("gated") or getattr(theirs, "is_gated_act", False):
        raise ValueError(f"Switch checkpoints with a gated feed-forward ({theirs.dense_act_fn!r}) are not supported.")
    if theirs.router_bias:
        raise ValueError("Switch checkpoints with `router_bias=True` are not the paper's router (no bias).")
    if theirs.router_dtype != "float32":
        raise ValueError(
            f"This checkpoint routes in {theirs.router_dtype}; `paper-switch` always routes in float32 (§2.4)."
        )
    if not getattr(theirs, "tie_word_embeddings", True):
        raise ValueError("Switch checkpoints with an untied output layer are not supported (T5 v1.0 ties it).")
    kwargs = {name: getattr(theirs, name) for name in _SHARED_FIELDS}
    for stack, layers, sparse in (
        ("encoder", theirs.num_layers, theirs.num_sparse_encoder_layers),
        ("decoder", theirs.num_decoder_layers, theirs.num_sparse_decoder_layers),
    ):
        wanted = _their_sparse_layers(layers, sparse)
        step = next((s for s in range(layers + 1)
                     if [i for i in range(layers) if switch.is_sparse_layer(i, s)] == wanted), None)
        if step is None:
            raise ValueError(f"The {stack}'s Switch layers {wanted} follow no sparse step of `paper-switch`.")
        kwargs[f"{stack}_sparse_step"] = step
    kwargs["feed_forward_proj"] = theirs.dense_act_fn
    kwargs["expert_capacity"] = theirs.expert_capacity
    kwargs["bos_token_id"] = getattr(theirs, "bos_token_id", None)
    start = getattr(theirs, "decoder_start_token_id", None)
    kwargs["decoder_start_token_id"] = theirs.pad_token_id if start is None else start
    kwargs["max_position_embeddings"] = getattr(theirs, "n_positions", None) or 512
    return kwargs


def _switch_to_theirs(ours: PreTrainedConfig) -> PreTrainedConfig:
    capacity = ours.expert_capacity
    if capacity is not None and getattr(ours, "capacity_scope", "sequence") != "sequence":
        raise ValueError(
            "transformers' Switch caps every expert per sequence; this config shares the capacity over the "
            "batch (`capacity_scope='batch'`) and has no transformers twin."
        )
    if capacity is None:
        if ours.eval_capacity_factor is not None or ours.max_position_embeddings is None:
            raise ValueError(
                "transformers' Switch caps every expert at a fixed `expert_capacity` per sequence; this config "
                "drops tokens by capacity factor instead. Set `expert_capacity` to convert it."
            )
        capacity = ours.max_position_embeddings  # we never drop in evaluation: neither will it
    sparse = {}
    for stack, layers, step in (
        ("encoder", ours.num_layers, ours.encoder_sparse_step),
        ("decoder", ours.num_decoder_layers, ours.decoder_sparse_step),
    ):
        ours_sparse = [i for i in range(layers) if switch.is_sparse_layer(i, step)]
        sparse[stack] = len(ours_sparse)
        if _their_sparse_layers(layers, len(ours_sparse)) != ours_sparse:
            raise ValueError(
                f"transformers' Switch cannot place the {stack}'s Switch layers at {ours_sparse} "
                f"({stack}_sparse_step={step} with {layers} layers)."
            )
    return transformers.SwitchTransformersConfig(
        **{name: getattr(ours, name) for name in _SHARED_FIELDS},
        num_sparse_encoder_layers=sparse["encoder"],
        num_sparse_decoder_layers=sparse["decoder"],
        expert_capacity=capacity,
        dense_act_fn=ours.feed_forward_proj,
        router_bias=False,
        router_dtype="float32",
        tie_word_embeddings=True,
        bos_token_id=ours.bos_token_id,
        decoder_start_token_id=ours.decoder_start_token_id,
    )


def _to_ours(state: dict) -> dict:
    state = _rename(state, _THEIRS_TO_OURS)
    out, experts = {}, {}
    for key, value in state.items():
        match = _THEIR_EXPERT.match(key)
        if match:
            experts.setdefault((match.group(1), match.group(3)), {})[int(match.group(2))] = value
        else:
            out[key.replace(".mlp.router.classifier.weight", ".mlp.router.weight")] = value
    for (prefix, name), by_index in experts.items():
        out[f"{prefix}.{name}"] = torch.stack([by_index[i].t() for i in range(len(by_index))]).contiguous()
    return out


def _to_theirs(state: dict) -> dict:
    out = {}
    for key, value in _rename(state, _OURS_TO_THEIRS).items():
        match = _OUR_EXPERTS.match(key)
        if match:
            for i, weight in enumerate(value.unbind(0)):
                out[f"{match.group(1)}.expert_{i}.{match.group(2)}.weight"] = weight.t().contiguous()
        else:
            out[key.replace(".mlp.router.weight", ".mlp.router.classifier.weight")] = value
    return out


register_route(
    Route(
        "switch_transformers",
        _switch_to_ours,
        _switch_to_theirs,
        heads={
            "SwitchTransformersModel": "Model",
            "SwitchTransformersForConditionalGeneration": "ForConditionalGeneration",
            "SwitchTransformersEncoderModel": "EncoderModel",
        },
        paper_types={"paper-switch": (switch, "PaperSwitch")},
        state_to_ours=_to_ours,
        state_to_theirs=_to_theirs,
    )
)
