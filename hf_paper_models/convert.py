"""transformers-native checkpoints <-> ours, with identical outputs.

Our modules carry transformers' parameter names where the architecture is the same, so converting
is a config translation plus a state-dict copy; transformers' GPT ``Conv1D`` layers store their
weight as (in, out) and are transposed into our ``nn.Linear`` (out, in).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType

import torch
import transformers
from transformers import AutoConfig, PreTrainedConfig, PreTrainedModel
from transformers.pytorch_utils import Conv1D

from .models import gpt1, gpt2, gpt3


@dataclass
class Route:
    """How one transformers model type maps onto ours (and back).

    ``paper_types`` maps each of our model types this checkpoint can become to (module, class-name
    prefix); the first is the default. ``heads`` maps transformers' class names to our class-name
    suffixes. ``state_to_ours`` / ``state_to_theirs`` rename state-dict keys where our names differ
    (GPT ``Conv1D`` weights are transposed by the engine itself).
    """

    their_type: str
    config_to_ours: Callable[[PreTrainedConfig], dict]
    config_to_theirs: Callable[[PreTrainedConfig], PreTrainedConfig]
    heads: dict[str, str]
    paper_types: dict[str, tuple[ModuleType, str]]
    state_to_ours: Callable[[dict], dict] | None = None
    state_to_theirs: Callable[[dict], dict] | None = None
    adjust_config: Callable[[str, dict], dict] | None = None  # (our model type, kwargs) -> kwargs


#: transformers model type -> Route. Papers with a transformers twin add theirs with register_route.
ROUTES: dict[str, Route] = {}


def register_route(route: Route) -> None:
    ROUTES[route.their_type] = route


_COMMON = ("vocab_size", "num_hidden_layers", "num_attention_heads", "initializer_range",
           "layer_norm_epsilon", "resid_pdrop", "embd_pdrop", "attn_pdrop")


def _labels(config: PreTrainedConfig) -> dict:
    return {"id2label": dict(config.id2label), "label2id": dict(config.label2id),
            "problem_type": config.problem_type}


def _gpt2_to_ours(theirs) -> dict:
    for flag in ("add_cross_attention", "scale_attn_by_inverse_layer_idx"):
        if getattr(theirs, flag, False):
            raise ValueError(f"GPT-2 checkpoints with `{flag}=True` are not the paper's architecture.")
    if not getattr(theirs, "scale_attn_weights", True):
        raise ValueError("GPT-2 checkpoints with `scale_attn_weights=False` are not supported.")
    kwargs = {name: getattr(theirs, name) for name in _COMMON}
    kwargs.update(
        hidden_size=theirs.n_embd,
        max_position_embeddings=theirs.n_positions,
        intermediate_size=theirs.n_inner or 4 * theirs.n_embd,
        activation_function=theirs.activation_function,
        bos_token_id=theirs.bos_token_id,
        eos_token_id=theirs.eos_token_id,
        pad_token_id=theirs.pad_token_id,
        tie_word_embeddings=theirs.tie_word_embeddings,
        **_labels(theirs),
    )
    return kwargs


def _gpt2_to_theirs(ours) -> PreTrainedConfig:
    if getattr(ours, "layer_types", None) and any(t != "full_attention" for t in ours.layer_types):
        raise ValueError("Only GPT-3 configs whose layers are all dense have a transformers GPT-2 twin.")
    if ours.head_dim * ours.num_attention_heads != ours.hidden_size:
        raise ValueError("transformers' GPT-2 needs head_dim * num_attention_heads == hidden_size.")
    return transformers.GPT2Config(
        **{name: getattr(ours, name) for name in _COMMON},
        n_embd=ours.hidden_size,
        n_positions=ours.max_position_embeddings,
        n_inner=ours.intermediate_size,
        activation_function=ours.activation_function,
        bos_token_id=ours.bos_token_id,
        eos_token_id=ours.eos_token_id,
        pad_token_id=ours.pad_token_id,
        tie_word_embeddings=ours.tie_word_embeddings,
        **_labels(ours),
    )


# transformers' OpenAI GPT names its activations itself: its "gelu" is the tanh approximation.
_OPENAI_ACT_TO_OURS = {"gelu": "gelu_new", "relu": "relu", "silu": "silu", "swish": "silu"}
_OURS_ACT_TO_OPENAI = {"gelu_new": "gelu", "relu": "relu", "silu": "silu"}


def _gpt1_to_ours(theirs) -> dict:
    kwargs = {name: getattr(theirs, name) for name in _COMMON}
    kwargs.update(
        hidden_size=theirs.n_embd,
        max_position_embeddings=theirs.n_positions,
        activation_function=_OPENAI_ACT_TO_OURS[theirs.afn],
        clf_pdrop=theirs.summary_first_dropout,
        pad_token_id=getattr(theirs, "pad_token_id", None),
        tie_word_embeddings=theirs.tie_word_embeddings,
        **_labels(theirs),
    )
    return kwargs


def _gpt1_to_theirs(ours) -> PreTrainedConfig:
    if ours.intermediate_size != 4 * ours.hidden_size:
        raise ValueError("transformers' OpenAI GPT has a fixed 4·hidden_size feed-forward.")
    if ours.activation_function not in _OURS_ACT_TO_OPENAI:
        raise ValueError(f"transformers' OpenAI GPT has no {ours.activation_function!r} activation.")
    return transformers.OpenAIGPTConfig(
        **{name: getattr(ours, name) for name in _COMMON},
        n_embd=ours.hidden_size,
        n_positions=ours.max_position_embeddings,
        afn=_OURS_ACT_TO_OPENAI[ours.activation_function],
        summary_first_dropout=ours.clf_pdrop,
        pad_token_id=ours.pad_token_id,
        tie_word_embeddings=ours.tie_word_embeddings,
        **_labels(ours),
    )


def _gpt3_all_dense(model_type: str, kwargs: dict) -> dict:
    if model_type == "paper-gpt3":  # GPT-2 weights as a GPT-3 whose every layer is dense
        kwargs["layer_types"] = ["full_attention"] * kwargs["num_hidden_layers"]
        kwargs["sliding_window"] = kwargs["max_position_embeddings"]
    return kwargs


register_route(Route(
    "gpt2", _gpt2_to_ours, _gpt2_to_theirs,
    heads={
        "GPT2Model": "Model",
        "GPT2LMHeadModel": "LMHeadModel",
        "GPT2ForSequenceClassification": "ForSequenceClassification",
        "GPT2ForTokenClassification": "ForTokenClassification",
    },
    paper_types={"paper-gpt2": (gpt2, "PaperGPT2"), "paper-gpt3": (gpt3, "PaperGPT3")},
    adjust_config=_gpt3_all_dense,
))
register_route(Route(
    "openai-gpt", _gpt1_to_ours, _gpt1_to_theirs,
    heads={
        "OpenAIGPTModel": "Model",
        "OpenAIGPTLMHeadModel": "LMHeadModel",
        "OpenAIGPTDoubleHeadsModel": "DoubleHeadsModel",
        "OpenAIGPTForSequenceClassification": "ForSequenceClassification",
    },
    paper_types={"paper-gpt1": (gpt1, "PaperGPT1")},
))


def _transposed_keys(model: torch.nn.Module) -> set[str]:
    return {f"{name}.weight" for name, module in model.named_modules() if isinstance(module, Conv1D)}


def _load_theirs(source: str | os.PathLike | PreTrainedModel) -> PreTrainedModel:
    if isinstance(source, PreTrainedModel):
        return source
    path = str(source)
    if not os.path.isdir(path):
        raise ValueError(f"{path!r} is not a local folder holding a transformers checkpoint.")
    config = AutoConfig.from_pretrained(path)
    if config.model_type not in ROUTES:
        raise ValueError(
            f"{path} holds model type {config.model_type!r}; convertible types: {sorted(ROUTES)}."
        )
    architecture = (config.architectures or [None])[0]
    cls = getattr(transformers, architecture, None) if architecture else None
    if cls is None:
        cls = transformers.AutoModel._model_mapping[type(config)]
    return cls.from_pretrained(path)


def convert_from_transformers(
    model_or_path: str | os.PathLike | PreTrainedModel, model_type: str | None = None
) -> PreTrainedModel:
    """A transformers-native model (or local checkpoint folder) as the zoo's model, same outputs.

    ``model_type`` picks the target when several papers share the architecture (``"paper-gpt3"``
    takes a GPT-2 checkpoint with every layer dense).
    """
    theirs = _load_theirs(model_or_path)
    their_type = theirs.config.model_type
    if their_type not in ROUTES:
        raise ValueError(f"Model type {their_type!r} has no conversion; supported: {sorted(ROUTES)}.")
    route = ROUTES[their_type]
    head = route.heads.get(type(theirs).__name__)
    if head is None:
        raise ValueError(f"{type(theirs).__name__} has no counterpart; supported: {sorted(route.heads)}.")
    model_type = model_type or next(iter(route.paper_types))
    if model_type not in route.paper_types:
        raise ValueError(
            f"A {their_type!r} checkpoint cannot become {model_type!r}; it can become {list(route.paper_types)}."
        )
    module, prefix = route.paper_types[model_type]
    kwargs = route.config_to_ours(theirs.config)
    if route.adjust_config is not None:
        kwargs = route.adjust_config(model_type, kwargs)
    for name in ("bos_token_id", "eos_token_id", "pad_token_id"):  # transformers only warns on these
        if isinstance(kwargs.get(name), int) and not 0 <= kwargs[name] < kwargs["vocab_size"]:
            kwargs[name] = None
    ours = getattr(module, f"{prefix}{head}")(getattr(module, f"{prefix}Config")(**kwargs))
    transposed = _transposed_keys(theirs)
    state = {k: (v.t().contiguous() if k in transposed else v) for k, v in theirs.state_dict().items()}
    if route.state_to_ours is not None:
        state = route.state_to_ours(state)
    _load_exact(ours, state, theirs)
    return ours.to(theirs.dtype).train(theirs.training)


def convert_to_transformers(model: PreTrainedModel) -> PreTrainedModel:
    """The zoo's model as transformers' own class of the same architecture, same outputs."""
    model_type = model.config.model_type
    route = next((r for r in ROUTES.values() if model_type in r.paper_types), None)
    if route is None:
        twins = sorted(t for r in ROUTES.values() for t in r.paper_types)
        raise ValueError(f"{model_type!r} has no transformers twin; convertible: {twins}.")
    _, prefix = route.paper_types[model_type]
    head = type(model).__name__.removeprefix(prefix)
    their_name = next((t for t, o in route.heads.items() if o == head), None)
    if their_name is None:
        raise ValueError(f"{type(model).__name__} has no transformers counterpart.")
    theirs = getattr(transformers, their_name)(route.config_to_theirs(model.config))
    state = model.state_dict()
    if route.state_to_theirs is not None:
        state = route.state_to_theirs(state)
    transposed = _transposed_keys(theirs)
    state = {k: (v.t().contiguous() if k in transposed else v) for k, v in state.items()}
    _load_exact(theirs, state, model)
    return theirs.to(model.dtype).train(model.training)


def _load_exact(model: torch.nn.Module, state: dict[str, torch.Tensor], source=None) -> None:
    """Load ``state`` strictly; tied copies (an LM head tied to the embeddings) are filled or dropped."""
    expected = set(model.state_dict())
    state = {k: v for k, v in state.items() if k in expected or not k.endswith((".attn.bias", ".masked_bias"))}
    for target, origin in (getattr(model, "_tied_weights_keys", None) or {}).items():
        if target not in state and origin in state:
            state[target] = state[origin]
    source_ties = getattr(source, "_tied_weights_keys", None) or {}
    state = {k: v for k, v in state.items() if k in expected or k not in source_ties}
    missing, unexpected = expected - set(state), set(state) - expected
    if missing or unexpected:
        raise ValueError(
            f"Weights do not line up: missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}."
        )
    model.load_state_dict(state, strict=True)
