"""Tiny configs and inputs for the contract suite, derived from the registry.

A new model type gets the whole suite by being registered in ``hf_paper_models.REGISTRY``; only a
model whose tiny config needs more than the generic overrides adds a line to ``EXTRA``.
"""

from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

import hf_paper_models
from hf_paper_models.presets import PRESETS, preset

TINY = dict(
    vocab_size=99,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=64,
    max_position_embeddings=64,
    bos_token_id=1,
    eos_token_id=2,
    pad_token_id=0,
)
# Per model type: what the generic tiny overrides don't cover.
EXTRA: dict[str, dict] = {
    "paper-gpt3": dict(sliding_window=8),  # shorter than the test sequences: the banded kernel runs
    "paper-gpt4": dict(sliding_window=8, image_token_id=98),  # GPT-3's band; <image> inside the tiny vocabulary
    "paper-rnnsearch": dict(num_hidden_layers=1, embedding_size=16),  # the paper's single GRU layers
}
SEQ_LEN = 20

MODEL_TYPES = list(hf_paper_models.REGISTRY)


def tiny_config(model_type: str, **overrides):
    name = next(n for n, t in PRESETS.items() if t == model_type)
    return preset(name, **{**TINY, **EXTRA.get(model_type, {}), **overrides})


def model_classes(model_type: str) -> dict:
    return hf_paper_models.REGISTRY[model_type][1]


def is_generative(model_type: str) -> bool:
    classes = model_classes(model_type)
    return AutoModelForCausalLM in classes or AutoModelForSeq2SeqLM in classes


def generative_class(model_type: str):
    classes = model_classes(model_type)
    return classes.get(AutoModelForCausalLM) or classes.get(AutoModelForSeq2SeqLM)


def main_input_name(model_type: str) -> str:
    """What the model's main input is (``input_ids`` for token models, ``input_values`` for feature vectors)."""
    return next(iter(model_classes(model_type).values())).main_input_name


def takes_token_ids(model_type: str) -> bool:
    return main_input_name(model_type) == "input_ids"


def make_inputs(config, batch: int = 2, seq_len: int = SEQ_LEN, padded: bool = True, seed: int = 0) -> dict:
    """input_ids avoiding the special ids; the first row left-padded by 3 when ``padded``. A model whose
    main input is ``input_values`` gets float feature vectors (batch, config.input_size) instead."""
    generator = torch.Generator().manual_seed(seed)
    if main_input_name(config.model_type) == "input_values":
        return {"input_values": torch.randn(batch, config.input_size, generator=generator)}
    input_ids = torch.randint(3, config.vocab_size, (batch, seq_len), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    if padded:
        input_ids[0, :3] = config.pad_token_id
        attention_mask[0, :3] = 0
    inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
    if getattr(config, "is_encoder_decoder", False):
        inputs["decoder_input_ids"] = torch.randint(3, config.vocab_size, (batch, seq_len // 2), generator=generator)
    return inputs


def build(model_class, config, seed: int = 0):
    torch.manual_seed(seed)
    return model_class(config).eval()
