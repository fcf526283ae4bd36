"""transformers' T5 (v1.0: ReLU feed-forward, tied output layer) <-> ``paper-t5``.

The configs share their field names; the state dicts differ only in the attention projections,
transformers' ``q/k/v/o`` being our shared ``MultiHeadAttention``'s ``q_proj/k_proj/v_proj/out_proj``.
T5 v1.1 checkpoints (gated-GELU feed-forward, untied output layer: ``google/t5-v1_1-*``, Flan-T5,
mT5 weights in a T5 class) are a different architecture and are refused with a ``ValueError``.
"""

from __future__ import annotations

import re

import transformers
from transformers import PreTrainedConfig

from ..convert import Route, register_route
from ..models import t5

# Field names the two configs share (transformers' T5Config names).
_SHARED_FIELDS = (
    "vocab_size",
    "d_model",
    "d_kv",
    "d_ff",
    "num_layers",
    "num_decoder_layers",
    "num_heads",
    "relative_attention_num_buckets",
    "relative_attention_max_distance",
    "dropout_rate",
    "layer_norm_epsilon",
    "initializer_factor",
    "feed_forward_proj",
    "pad_token_id",
    "eos_token_id",
)
_THEIRS_TO_OURS = {"q": "q_proj", "k": "k_proj", "v": "v_proj", "o": "out_proj"}
_OURS_TO_THEIRS = {v: k for k, v in _THEIRS_TO_OURS.items()}
_ATTENTION_KEY = re.compile(
    r"(\.(?:SelfAttention|EncDecAttention)\.)(q|k|v|o|q_proj|k_proj|v_proj|out_proj)(\.weight)$"
)
# Old transformers checkpoints carry an unused position table in the decoder's first cross-attention.
_UNUSED = "decoder.block.0.layer.1.EncDecAttention.relative_attention_bias.weight"


def _t5_to_ours(theirs: PreTrainedConfig) -> dict:
    feed_forward = getattr(theirs, "feed_forward_proj", "relu")
    if feed_forward != "relu" or getattr(theirs, "is_gated_act", False):
        raise ValueError(
            f"This T5 checkpoint has feed_forward_proj={feed_forward!r}: a gated or non-ReLU feed-forward is "
            "T5 v1.1 (or Flan-T5 / mT5), not the paper's T5 v1.0 that `paper-t5` implements. Only the original "
            "ReLU checkpoints (t5-small ... t5-11b) convert."
        )
    if not getattr(theirs, "scale_decoder_outputs", True):
        raise ValueError(
            "This T5 checkpoint has an untied output layer (`tie_word_embeddings=False`, T5 v1.1); `paper-t5` "
            "is the paper's T5 v1.0, whose output layer is the input embedding."
        )
    kwargs = {name: getattr(theirs, name) for name in _SHARED_FIELDS}
    kwargs["bos_token_id"] = getattr(theirs, "bos_token_id", None)
    # T5 starts decoding with the padding token; transformers' config leaves it unset unless saved.
    start = getattr(theirs, "decoder_start_token_id", None)
    kwargs["decoder_start_token_id"] = theirs.pad_token_id if start is None else start
    # transformers' T5 has no length limit; the released configs record the training length.
    kwargs["max_position_embeddings"] = getattr(theirs, "n_positions", None) or 512
    if getattr(theirs, "task_specific_params", None):
        kwargs["task_specific_params"] = theirs.task_specific_params  # the released task prefixes
    return kwargs


def _t5_to_theirs(ours: PreTrainedConfig) -> PreTrainedConfig:
    if ours.feed_forward_proj != "relu":
        raise ValueError(
            f"transformers' T5 v1.0 twin has a ReLU feed-forward; this config has {ours.feed_forward_proj!r}."
        )
    config = transformers.T5Config(
        **{name: getattr(ours, name) for name in _SHARED_FIELDS},
        tie_word_embeddings=True,
        bos_token_id=ours.bos_token_id,
        decoder_start_token_id=ours.decoder_start_token_id,
    )
    if ours.max_position_embeddings is not None:
        config.n_positions = ours.max_position_embeddings  # informational, as in the released configs
    return config


def _rename(state: dict, mapping: dict) -> dict:
    def key(name: str) -> str:
        match = _ATTENTION_KEY.search(name)
        if match is None or match.group(2) not in mapping:
            return name
        return name[: match.start()] + match.group(1) + mapping[match.group(2)] + match.group(3)

    return {key(k): v for k, v in state.items() if k != _UNUSED}


register_route(
    Route(
        "t5",
        _t5_to_ours,
        _t5_to_theirs,
        heads={
            "T5Model": "Model",
            "T5ForConditionalGeneration": "ForConditionalGeneration",
            "T5EncoderModel": "EncoderModel",
        },
        paper_types={"paper-t5": (t5, "PaperT5")},
        state_to_ours=lambda state: _rename(state, _THEIRS_TO_OURS),
        state_to_theirs=lambda state: _rename(state, _OURS_TO_THEIRS),
    )
)
