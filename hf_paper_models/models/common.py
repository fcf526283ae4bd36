"""Machinery every paper's model shares: config validation, input checks and safe loading.

Hub-exportable: this file imports only the standard library, ``torch`` and ``transformers``, so
it travels with a saved model folder (``trust_remote_code=True``) beside the paper's own file.
"""

from __future__ import annotations

import functools
import inspect
import json
import os
from collections.abc import Iterable
from typing import Any

import torch
from transformers import PreTrainedConfig, PreTrainedModel
from transformers.activations import ACT2FN

# ----------------------------------------------------------------------------------------------
# Config validation: every impossible value raises ValueError naming field, value and what's allowed.
# ----------------------------------------------------------------------------------------------


def check_int(config: Any, name: str, minimum: int = 1, allow_none: bool = False) -> None:
    value = getattr(config, name)
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(
            f"{type(config).__name__}: `{name}` must be an integer >= {minimum}, got {value!r}."
        )


def check_probability(config: Any, name: str) -> None:
    value = getattr(config, name)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
        raise ValueError(
            f"{type(config).__name__}: `{name}` must be a probability in [0, 1), got {value!r}."
        )


def check_positive_float(config: Any, name: str) -> None:
    value = getattr(config, name)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(f"{type(config).__name__}: `{name}` must be a number > 0, got {value!r}.")


def check_choice(config: Any, name: str, allowed: Iterable[str]) -> None:
    value = getattr(config, name)
    allowed = sorted(allowed)
    if value not in allowed:
        raise ValueError(
            f"{type(config).__name__}: `{name}`={value!r} is not supported; allowed: {allowed}."
        )


def check_activation(config: Any, name: str) -> None:
    check_choice(config, name, ACT2FN.keys())


def check_special_token_ids(config: Any, names: Iterable[str] = ("bos_token_id", "eos_token_id", "pad_token_id")) -> None:
    """Each special token id (an int, a list of ints or None) must lie in [0, vocab_size)."""
    for name in names:
        value = getattr(config, name)
        ids = value if isinstance(value, list) else [value]
        if any(i is not None and not 0 <= i < config.vocab_size for i in ids):
            raise ValueError(
                f"{type(config).__name__}: `{name}`={value!r} is outside the vocabulary "
                f"[0, {config.vocab_size - 1}]."
            )


def check_heads(config: Any) -> None:
    """Heads must tile the hidden size unless the paper decouples ``head_dim`` (GPT-3)."""
    check_int(config, "hidden_size")
    check_int(config, "num_attention_heads")
    if getattr(config, "head_dim", None) is None:
        if config.hidden_size % config.num_attention_heads:
            raise ValueError(
                f"{type(config).__name__}: `hidden_size`={config.hidden_size} is not divisible by "
                f"`num_attention_heads`={config.num_attention_heads}; choose sizes that divide or set "
                "`head_dim` explicitly."
            )
    else:
        check_int(config, "head_dim")


# ----------------------------------------------------------------------------------------------
# Input validation: clear ValueErrors instead of IndexErrors or silent garbage.
# ----------------------------------------------------------------------------------------------


def _compiling() -> bool:
    return torch.compiler.is_compiling()


def check_input_ids(input_ids: torch.Tensor | None, vocab_size: int, name: str = "input_ids") -> None:
    if input_ids is None or _compiling() or input_ids.numel() == 0:
        return
    if input_ids.dtype.is_floating_point:
        raise ValueError(f"`{name}` must hold integer token ids, got dtype {input_ids.dtype}.")
    low, high = int(input_ids.min()), int(input_ids.max())
    if low < 0 or high >= vocab_size:
        bad = low if low < 0 else high
        raise ValueError(
            f"`{name}` contains token id {bad}, outside the model's vocabulary [0, {vocab_size - 1}]. "
            "Was the text encoded with a different tokenizer?"
        )


def check_length(total_length: int, max_positions: int, what: str = "sequence") -> None:
    if total_length > max_positions:
        raise ValueError(
            f"The {what} is {total_length} tokens long (cache included), but the model has only "
            f"{max_positions} positions (`max_position_embeddings`). Truncate the input."
        )


def check_attention_mask(attention_mask: torch.Tensor | None, batch_size: int, length: int) -> None:
    """A 2-D padding mask must be (batch, past + current length); 4-D masks are the caller's."""
    if attention_mask is None or attention_mask.dim() == 4 or _compiling():
        return
    if attention_mask.dim() != 2 or tuple(attention_mask.shape) != (batch_size, length):
        raise ValueError(
            f"`attention_mask` has shape {tuple(attention_mask.shape)}, expected ({batch_size}, {length}) "
            "(batch size, cached + current tokens)."
        )


# ----------------------------------------------------------------------------------------------
# Loading: refuse other model types and broken weight files with a clear ValueError.
# ----------------------------------------------------------------------------------------------


def _check_folder(cls: type, path: str) -> None:
    config_file = os.path.join(path, "config.json")
    if os.path.isfile(config_file):
        try:
            with open(config_file, encoding="utf-8") as handle:
                found = json.load(handle).get("model_type")
        except json.JSONDecodeError as err:
            raise ValueError(f"{config_file} is not valid JSON: {err}") from err
        expected = getattr(cls.config_class, "model_type", None)
        if expected and found and found != expected:
            hint = ""
            if found in {"gpt2", "openai-gpt", "bert", "t5", "switch_transformers", "marian"}:
                hint = " Use `hf_paper_models.convert_from_transformers(path)` to convert it."
            raise ValueError(
                f"{path} holds a checkpoint of model type {found!r}, but {cls.__name__} expects "
                f"{expected!r}.{hint}"
            )
    for name in sorted(os.listdir(path)):
        if name.endswith(".safetensors"):
            _check_safetensors(os.path.join(path, name))


def _check_safetensors(filename: str) -> None:
    """Check the header and the declared byte ranges against the file size (cheap, no tensor read)."""
    size = os.path.getsize(filename)
    with open(filename, "rb") as handle:
        head = handle.read(8)
        if len(head) < 8:
            raise ValueError(f"{filename} is truncated or not a safetensors file ({size} bytes).")
        header_len = int.from_bytes(head, "little")
        if header_len <= 0 or 8 + header_len > size:
            raise ValueError(f"{filename} is truncated or corrupted: its header claims {header_len} bytes.")
        try:
            header = json.loads(handle.read(header_len))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ValueError(f"{filename} is corrupted: unreadable header ({err}).") from err
    end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    if 8 + header_len + end != size:
        raise ValueError(
            f"{filename} is truncated or corrupted: tensors need {8 + header_len + end} bytes, "
            f"the file has {size}."
        )


def register_for_auto_classes(config_class: type, auto_classes: dict[str, type]) -> None:
    """Mark a paper's config and models for Hub export (``auto_map`` + source files on save)."""
    config_class.register_for_auto_class()
    for auto_name, model_class in auto_classes.items():
        model_class.register_for_auto_class(auto_name)


def _accepts_cache_kwarg(forward):
    """Let a ``forward(..., past_key_values=...)`` also take the KV cache as ``cache``.

    transformers 5.25 renamed ``past_key_values`` to ``cache``: ``generate`` now passes ``cache=``, which
    a forward written against the old name would swallow in ``**kwargs`` and then decode every step
    without its past. Our models keep the old parameter name (older 5.x releases pass it) and take
    either; the outputs' ``past_key_values`` field is mapped by transformers itself.
    """

    @functools.wraps(forward)
    def wrapper(self, *args, **kwargs):
        if "cache" in kwargs:
            cache = kwargs.pop("cache")
            if cache is not None and kwargs.get("past_key_values") is not None:
                raise ValueError("Pass the KV cache as `cache` or as `past_key_values`, not both.")
            if cache is not None or "past_key_values" not in kwargs:
                kwargs["past_key_values"] = cache
        return forward(self, *args, **kwargs)

    return wrapper


def cache_mask_kwargs(cache: Any) -> dict[str, Any]:
    """The KV cache as the keyword transformers' mask builders take (``cache`` from 5.25, before it
    ``past_key_values``)."""
    return {_MASK_CACHE_KWARG: cache}


def _mask_cache_kwarg() -> str:
    from transformers.masking_utils import create_causal_mask

    parameters = inspect.signature(inspect.unwrap(create_causal_mask)).parameters
    return "cache" if "cache" in parameters else "past_key_values"


_MASK_CACHE_KWARG = _mask_cache_kwarg()


class PaperPreTrainedModel(PreTrainedModel):
    """``PreTrainedModel`` with the zoo's loading checks (model type, truncated weights), and a forward
    that takes the KV cache under transformers' old name (``past_key_values``) and its new one (``cache``)."""

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        forward = cls.forward
        if getattr(forward, "_takes_cache_kwarg", False):
            return
        if "past_key_values" in inspect.signature(forward).parameters:
            cls.forward = _accepts_cache_kwarg(forward)
            cls.forward._takes_cache_kwarg = True

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        path = str(pretrained_model_name_or_path)
        if os.path.isdir(path) and not isinstance(kwargs.get("config"), cls.config_class or ()):
            _check_folder(cls, path)
        return super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)


def last_token_pool(
    hidden_states: torch.Tensor, input_ids: torch.Tensor | None, pad_token_id: int | None
) -> torch.Tensor:
    """Hidden state of each row's last non-padding token (right or left padding)."""
    batch = hidden_states.shape[0]
    if input_ids is None or pad_token_id is None:
        last = torch.full((batch,), hidden_states.shape[1] - 1, device=hidden_states.device)
    else:
        positions = torch.arange(input_ids.shape[-1], device=input_ids.device)
        last = (positions * (input_ids != pad_token_id)).argmax(-1)
    return hidden_states[torch.arange(batch, device=hidden_states.device), last]


# ----------------------------------------------------------------------------------------------
# The decoder config fields GPT-1, GPT-2, GPT-3 and GPT-4 share (transformers' standard names;
# the papers' names map onto them through ``attribute_map``).
# ----------------------------------------------------------------------------------------------


class PaperDecoderConfig(PreTrainedConfig):
    attribute_map = {
        "n_embd": "hidden_size",
        "d_model": "hidden_size",
        "n_layer": "num_hidden_layers",
        "n_head": "num_attention_heads",
        "n_positions": "max_position_embeddings",
        "n_ctx": "max_position_embeddings",
        "n_inner": "intermediate_size",
        "d_ff": "intermediate_size",
        "afn": "activation_function",
    }
    keys_to_ignore_at_inference = ["past_key_values"]

    vocab_size: int = 50257
    max_position_embeddings: int = 1024
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    head_dim: int | None = None
    intermediate_size: int | None = None
    activation_function: str = "gelu_new"
    resid_pdrop: float = 0.1
    embd_pdrop: float = 0.1
    attn_pdrop: float = 0.1
    layer_norm_epsilon: float = 1e-5
    initializer_range: float = 0.02
    use_cache: bool = True
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None
    pad_token_id: int | None = None
    tie_word_embeddings: bool = True

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)  # sets the papers' alias names (n_embd, ...) first
        check_heads(self)
        if self.head_dim is None:
            self.head_dim = self.hidden_size // self.num_attention_heads
        if self.intermediate_size is None:  # the papers' 4·d_model feed-forward
            self.intermediate_size = 4 * self.hidden_size
        for name in ("vocab_size", "max_position_embeddings", "num_hidden_layers", "intermediate_size"):
            check_int(self, name)
        for name in ("resid_pdrop", "embd_pdrop", "attn_pdrop"):
            check_probability(self, name)
        check_positive_float(self, "layer_norm_epsilon")
        check_positive_float(self, "initializer_range")
        check_activation(self, "activation_function")
        check_special_token_ids(self)


# <|system|>\n...<|end|>\n<|user|>\n...<|end|>\n<|assistant|>\n...<|end|>. The assistant content
# and its <|end|> sit inside {% generation %} so return_assistant_tokens_mask (TRL's
# assistant_only_loss) trains exactly the reply and the token that stops it. Nothing follows an
# assistant's <|end|>: a rendered conversation then ends exactly where generation from
# add_generation_prompt stops, so a reward model reads its score at the same token whether the
# reply was rendered (RewardTrainer, TRL's RLOO/GRPO) or sampled (our PPO). A message's content is a
# string or a list of content items (transformers' multimodal form): {"type": "text", "text": ...}
# writes its text, {"type": "image"} writes "<image>" (the GPT-4 processor expands it to patches).
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- set ns = namespace(text='') -%}"
    "{%- if message['content'] is string -%}{%- set ns.text = message['content'] -%}"
    "{%- else -%}{%- for item in message['content'] -%}"
    "{%- if item['type'] == 'image' -%}{%- set ns.text = ns.text + '<image>' -%}"
    "{%- elif item['type'] == 'text' -%}{%- set ns.text = ns.text + item['text'] -%}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
    "{%- if message['role'] == 'assistant' -%}"
    "{{ '<|assistant|>\\n' }}"
    "{%- generation -%}{{ ns.text + eos_token }}{%- endgeneration -%}"
    "{%- elif message['role'] == 'system' or message['role'] == 'user' -%}"
    "{{ '<|' + message['role'] + '|>\\n' + ns.text + eos_token + '\\n' }}"
    "{%- else -%}"
    "{{ raise_exception('unknown role: ' + message['role']) }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|assistant|>\\n' }}{%- endif -%}"
)
