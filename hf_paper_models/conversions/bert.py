"""transformers' ``bert`` checkpoints <-> ``paper-bert``, with identical outputs.

Every parameter keeps transformers' name except the attention, which is the zoo's shared
``MultiHeadAttention``: ``attention.self.{query,key,value}`` become ``attention.self.{q,k,v}_proj``
and ``attention.output.dense`` becomes ``attention.self.out_proj`` (the attention's LayerNorm stays
``attention.output.LayerNorm``).
"""

from __future__ import annotations

import transformers
from transformers import PreTrainedConfig

from ..convert import Route, register_route
from ..models import bert

# Config fields with the same name and meaning on both sides.
_FIELDS = (
    "vocab_size",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "intermediate_size",
    "hidden_act",
    "hidden_dropout_prob",
    "attention_probs_dropout_prob",
    "max_position_embeddings",
    "type_vocab_size",
    "initializer_range",
    "layer_norm_eps",
    "pad_token_id",
    "bos_token_id",
    "eos_token_id",
    "classifier_dropout",
    "tie_word_embeddings",
)

# (transformers' name, ours), matched inside each encoder layer's key
_RENAMES = (
    (".attention.self.query.", ".attention.self.q_proj."),
    (".attention.self.key.", ".attention.self.k_proj."),
    (".attention.self.value.", ".attention.self.v_proj."),
    (".attention.output.dense.", ".attention.self.out_proj."),
)


def _labels(config: PreTrainedConfig) -> dict:
    return {
        "id2label": dict(config.id2label),
        "label2id": dict(config.label2id),
        "problem_type": config.problem_type,
    }


def _bert_to_ours(theirs: PreTrainedConfig) -> dict:
    if getattr(theirs, "is_decoder", False) or getattr(theirs, "add_cross_attention", False):
        raise ValueError(
            "BERT checkpoints with `is_decoder` or `add_cross_attention` are not the paper's encoder."
        )
    if getattr(theirs, "position_embedding_type", "absolute") != "absolute":
        raise ValueError("Only BERT checkpoints with absolute (learned) position embeddings convert.")
    if not isinstance(theirs.hidden_act, str):
        raise ValueError(f"`hidden_act` must name an activation, got {theirs.hidden_act!r}.")
    return {**{name: getattr(theirs, name, None) for name in _FIELDS}, **_labels(theirs)}


def _bert_to_theirs(ours: PreTrainedConfig) -> PreTrainedConfig:
    return transformers.BertConfig(**{name: getattr(ours, name) for name in _FIELDS}, **_labels(ours))


def _rename(state: dict, pairs) -> dict:
    renamed = {}
    for key, value in state.items():
        for old, new in pairs:
            if old in key:
                key = key.replace(old, new)
                break
        renamed[key] = value
    return renamed


def state_to_ours(state: dict) -> dict:
    """transformers' BERT state dict with our attention names."""
    return _rename(state, _RENAMES)


def state_to_theirs(state: dict) -> dict:
    """Our BERT state dict with transformers' attention names."""
    return _rename(state, [(new, old) for old, new in _RENAMES])


register_route(
    Route(
        "bert",
        _bert_to_ours,
        _bert_to_theirs,
        heads={
            "BertModel": "Model",
            "BertForPreTraining": "ForPreTraining",
            "BertForMaskedLM": "ForMaskedLM",
            "BertForNextSentencePrediction": "ForNextSentencePrediction",
            "BertForSequenceClassification": "ForSequenceClassification",
            "BertForTokenClassification": "ForTokenClassification",
            "BertForQuestionAnswering": "ForQuestionAnswering",
            "BertForMultipleChoice": "ForMultipleChoice",
        },
        paper_types={"paper-bert": (bert, "PaperBert")},
        state_to_ours=state_to_ours,
        state_to_theirs=state_to_theirs,
    )
)
