"""The papers' own model sizes, collected from the size table each paper's file declares.

``preset(NAME, **overrides)`` returns that paper's config at the paper's sizes; overrides shrink it to
a test size with the same architecture (``preset("gpt3-175b", hidden_size=64, num_hidden_layers=2,
num_attention_heads=4)``).
"""

from __future__ import annotations

from types import ModuleType

from transformers import PreTrainedConfig

from .models import config_class_of, paper_modules

#: The paper modules whose size tables are collected here, oldest paper first.
PAPER_MODULES: list[ModuleType] = paper_modules()


def _collect() -> tuple[dict[str, tuple[type[PreTrainedConfig], dict]], dict[str, float]]:
    presets, paper = {}, {}
    for module in PAPER_MODULES:
        config_class = config_class_of(module)
        for name, values in module.PRESETS.items():
            if name in presets:
                raise RuntimeError(f"preset {name!r} is declared twice")
            presets[name] = (config_class, dict(values))
        paper.update(getattr(module, "PAPER_PARAMETERS", {}))
    return presets, paper


_PRESETS, PAPER_PARAMETERS = _collect()

#: Preset name -> model type, in the order the papers appeared.
PRESETS: dict[str, str] = {name: cls.model_type for name, (cls, _) in _PRESETS.items()}


def preset(name: str, **overrides) -> PreTrainedConfig:
    """The config of preset ``name`` at the paper's sizes, with ``overrides`` applied."""
    if name not in _PRESETS:
        raise ValueError(f"Unknown preset {name!r}. Available presets: {', '.join(PRESETS)}.")
    config_class, values = _PRESETS[name]
    values = dict(values)
    # A shrunk width or head count without an explicit head_dim falls back to hidden/heads.
    if {"hidden_size", "num_attention_heads"} & overrides.keys() and "head_dim" not in overrides:
        values.pop("head_dim", None)
    values.update(overrides)
    if "vocab_size" in overrides:  # a shrunk vocabulary drops special ids it no longer holds
        for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
            default = getattr(config_class, name, None) if name not in values else values[name]
            if name not in overrides and isinstance(default, int) and default >= overrides["vocab_size"]:
                values[name] = None
    return config_class(**values)


def model_types() -> list[str]:
    return [config_class_of(module).model_type for module in PAPER_MODULES]
