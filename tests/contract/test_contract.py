"""ZOO.md §1, checked for every registered model type."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from contract_specs import (
    MODEL_TYPES,
    build,
    generative_class,
    is_generative,
    make_inputs,
    model_classes,
    takes_token_ids,
    tiny_config,
)
from transformers import AutoConfig, AutoModelForMultipleChoice

import hf_paper_models

HEADS = [(t, auto, cls) for t in MODEL_TYPES for auto, cls in model_classes(t).items()]
HEAD_IDS = [f"{t}-{auto.__name__}" for t, auto, _ in HEADS]


def inputs_for(auto_class, config, **kwargs) -> dict:
    inputs = make_inputs(config, **kwargs)
    if auto_class is AutoModelForMultipleChoice:  # (batch, choices, seq)
        inputs = {k: torch.stack([v, v.flip(-1)], dim=1) for k, v in inputs.items()}
    return inputs


def real_positions(output: torch.Tensor, inputs: dict) -> torch.Tensor:
    """Positions of real (unpadded) tokens when the output is aligned with ``input_ids``; else all."""
    if "attention_mask" not in inputs:  # feature-vector inputs: every output is real
        return torch.ones(output.shape[:2], dtype=torch.bool)
    mask = inputs["attention_mask"].bool()
    if output.shape[: mask.dim()] != mask.shape:  # e.g. decoder logits of an encoder-decoder
        return torch.ones(output.shape[:2], dtype=torch.bool)
    return mask


def trainable_class(model_type: str):
    """A head that computes a loss from ``labels`` shaped like its token inputs."""
    classes = model_classes(model_type)
    for name in ("AutoModelForCausalLM", "AutoModelForSeq2SeqLM", "AutoModelForMaskedLM",
                 "AutoModelForSequenceClassification"):
        for auto_class, model_class in classes.items():
            if auto_class.__name__ == name:
                return model_class
    return next(iter(classes.values()))


def labels_for(config, inputs: dict) -> torch.Tensor:
    """Training labels: the target tokens, or for a feature-vector model one class index per case."""
    if "input_values" in inputs:
        generator = torch.Generator().manual_seed(1)
        return torch.randint(0, config.num_labels, (inputs["input_values"].shape[0],), generator=generator)
    return inputs.get("decoder_input_ids", inputs["input_ids"])


def main_output(output) -> torch.Tensor:
    for name in ("logits", "last_hidden_state"):
        if getattr(output, name, None) is not None:
            return getattr(output, name)
    return output[0]


# ---------------------------------------------------------------------------------------------
# Registration and configs
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_auto_registration(model_type):
    config = AutoConfig.for_model(model_type)
    config_class, classes = hf_paper_models.REGISTRY[model_type]
    assert type(config) is config_class
    assert config_class.__name__.startswith("Paper")
    for auto_class, model_class in classes.items():
        assert auto_class._model_mapping[config_class] is model_class
        assert model_class.__name__.startswith("Paper")


@pytest.mark.parametrize("model_type", MODEL_TYPES)
@pytest.mark.parametrize(
    "field, value",
    [("num_attention_heads", 5), ("num_hidden_layers", 0), ("vocab_size", -3), ("attn_pdrop", 1.5),
     ("num_experts", 0)],
)
def test_config_rejects_impossible_values(model_type, field, value):
    config_class = hf_paper_models.REGISTRY[model_type][0]
    declared = {f.name for f in dataclasses.fields(config_class)} | set(config_class.attribute_map)
    if field not in declared:  # e.g. attention heads or attention dropout of an RNN (RNNsearch)
        pytest.skip(f"{config_class.__name__} has no `{field}`")
    with pytest.raises(ValueError, match=field if field != "num_attention_heads" else "divisible"):
        tiny_config(model_type, **{field: value})


# ---------------------------------------------------------------------------------------------
# Save / load / Hub export
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("model_type, auto_class, model_class", HEADS, ids=HEAD_IDS)
def test_save_load_safetensors(tmp_path, model_type, auto_class, model_class):
    config = tiny_config(model_type, num_labels=3)
    model = build(model_class, config)
    inputs = inputs_for(auto_class, config)
    with torch.no_grad():
        expected = main_output(model(**inputs))
    model.save_pretrained(tmp_path)
    files = os.listdir(tmp_path)
    assert "model.safetensors" in files and not any(f.endswith((".bin", ".pt", ".pth")) for f in files)
    loaded = auto_class.from_pretrained(tmp_path).eval()
    assert type(loaded) is model_class
    with torch.no_grad():
        torch.testing.assert_close(main_output(loaded(**inputs)), expected)


HUB_SCRIPT = textwrap.dedent(
    """
    import sys, importlib.abc
    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] == "hf_paper_models":
                raise ImportError("hf_paper_models is blocked in this process")
    sys.meta_path.insert(0, Block())
    import torch, transformers
    folder, auto_name = sys.argv[1], sys.argv[2]
    model = getattr(transformers, auto_name).from_pretrained(folder, trust_remote_code=True).eval()
    assert "hf_paper_models" not in type(model).__module__, type(model).__module__
    inputs = torch.load(folder + "/inputs.pt", weights_only=True)
    with torch.no_grad():
        out = model(**inputs)
    torch.save(out.logits if getattr(out, "logits", None) is not None else out[0], folder + "/out.pt")
    """
)


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_hub_export_loads_without_the_package(tmp_path, model_type):
    classes = model_classes(model_type)
    auto_class, model_class = next(iter(classes.items())) if not is_generative(model_type) else next(
        (a, c) for a, c in classes.items() if c is generative_class(model_type)
    )
    config = tiny_config(model_type)
    model = build(model_class, config)
    model.save_pretrained(tmp_path)
    saved = set(os.listdir(tmp_path))
    assert any(f.endswith(".py") for f in saved), saved
    config_json = (tmp_path / "config.json").read_text()
    assert "auto_map" in config_json
    inputs = inputs_for(auto_class, config)
    torch.save(inputs, tmp_path / "inputs.pt")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules")}
    env.pop("PYTHONPATH", None)
    result = subprocess.run(
        [sys.executable, "-c", HUB_SCRIPT, str(tmp_path), auto_class.__name__],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    with torch.no_grad():
        expected = main_output(model(**inputs))
    torch.testing.assert_close(torch.load(tmp_path / "out.pt", weights_only=True), expected)


# ---------------------------------------------------------------------------------------------
# Generation, attention implementations, training features, dtypes
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("model_type", [t for t in MODEL_TYPES if is_generative(t)])
@pytest.mark.parametrize("mode", ["greedy", "beam"])
def test_generate_with_cache_equals_without(model_type, mode):
    config = tiny_config(model_type)
    model = build(generative_class(model_type), config)
    inputs = make_inputs(config, seq_len=6)
    inputs.pop("decoder_input_ids", None)
    kwargs = dict(max_new_tokens=14, do_sample=False, pad_token_id=config.pad_token_id)
    if mode == "beam":
        kwargs.update(num_beams=3)
    cached = model.generate(**inputs, use_cache=True, **kwargs)
    uncached = model.generate(**inputs, use_cache=False, **kwargs)
    assert cached.shape[1] > inputs["input_ids"].shape[1]
    torch.testing.assert_close(cached, uncached, rtol=0, atol=0)


@pytest.mark.parametrize("model_type", [t for t in MODEL_TYPES if is_generative(t)])
def test_sampling_is_seeded(model_type):
    config = tiny_config(model_type)
    model = build(generative_class(model_type), config)
    inputs = make_inputs(config, seq_len=6)
    inputs.pop("decoder_input_ids", None)
    outs = []
    for _ in range(2):
        torch.manual_seed(1)
        outs.append(model.generate(**inputs, max_new_tokens=8, do_sample=True, top_k=20, pad_token_id=0))
    torch.testing.assert_close(outs[0], outs[1], rtol=0, atol=0)


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_sdpa_equals_eager(model_type):
    model_class = generative_class(model_type) or next(iter(model_classes(model_type).values()))
    if not model_class._supports_sdpa:  # additive attention (RNNsearch) has no SDPA path to compare
        pytest.skip(f"{model_class.__name__} declares no SDPA attention")
    config = tiny_config(model_type)
    sdpa = build(model_class, config)
    assert sdpa.config._attn_implementation == "sdpa"
    eager = build(model_class, tiny_config(model_type, attn_implementation="eager"))
    assert eager.config._attn_implementation == "eager"
    eager.load_state_dict(sdpa.state_dict())
    inputs = make_inputs(config)
    with torch.no_grad():
        a, b = main_output(sdpa(**inputs)), main_output(eager(**inputs))
    mask = real_positions(a, inputs)
    torch.testing.assert_close(a[mask], b[mask], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_gradient_checkpointing_same_gradients(model_type):
    model_class = trainable_class(model_type)
    if not model_class.supports_gradient_checkpointing:  # no stack of layers (local experts)
        pytest.skip(f"{model_class.__name__} has no layers to checkpoint")
    config = tiny_config(model_type)
    inputs = make_inputs(config, padded=False)
    grads = []
    for checkpointing in (False, True):
        model = build(model_class, config).train()
        for module in model.modules():  # same function with and without checkpointing
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.0
        if checkpointing:
            model.gradient_checkpointing_enable()
            assert model.is_gradient_checkpointing
        out = model(**inputs, labels=labels_for(config, inputs))
        out.loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_bfloat16_forward(tmp_path, model_type):
    model_class = generative_class(model_type) or next(iter(model_classes(model_type).values()))
    config = tiny_config(model_type)
    model = build(model_class, config)
    model.save_pretrained(tmp_path)
    bf16 = model_class.from_pretrained(tmp_path, dtype=torch.bfloat16).eval()
    assert all(p.dtype == torch.bfloat16 for p in bf16.parameters())
    inputs = make_inputs(config)
    with torch.no_grad():
        full, half = main_output(model(**inputs)), main_output(bf16(**inputs))
    mask = real_positions(full, inputs)
    assert half.dtype == torch.bfloat16 and torch.isfinite(half).all()
    torch.testing.assert_close(half.float()[mask], full[mask], atol=0.1, rtol=0.05)


# Decoder models (ZOO.md §1) and the feature-vector models, whose forward pass is as small.
COMPILED = [t for t in MODEL_TYPES if is_generative(t) or not takes_token_ids(t)]
TRAINED_WITH_LORA = COMPILED


@pytest.mark.parametrize("model_type", COMPILED)
def test_torch_compile_forward_has_no_graph_breaks(model_type):
    config = tiny_config(model_type)
    model = build(generative_class(model_type) or trainable_class(model_type), config)
    inputs = make_inputs(config)
    torch._dynamo.reset()
    compiled = torch.compile(model, backend="eager", fullgraph=True)  # fullgraph: a break raises
    with torch.no_grad():
        torch.testing.assert_close(main_output(compiled(**inputs)), main_output(model(**inputs)))


@pytest.mark.parametrize("model_type", TRAINED_WITH_LORA)
def test_peft_lora_trains_saves_and_reloads(tmp_path, model_type):
    from peft import LoraConfig, PeftModel, get_peft_model

    config = tiny_config(model_type)
    model_class = generative_class(model_type) or trainable_class(model_type)
    base = build(model_class, config)
    peft_model = get_peft_model(base, LoraConfig(target_modules="all-linear", r=4, lora_alpha=8))
    trainable = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    inputs = make_inputs(config, padded=False)
    labels = labels_for(config, inputs)
    optimizer = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=1e-2)
    peft_model.train()
    losses = []
    for _ in range(8):
        loss = peft_model(**inputs, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    peft_model.eval()
    with torch.no_grad():
        expected = main_output(peft_model(**inputs))
    peft_model.save_pretrained(tmp_path)
    assert (tmp_path / "adapter_model.safetensors").exists()
    reloaded = PeftModel.from_pretrained(build(model_class, config), tmp_path).eval()
    with torch.no_grad():
        torch.testing.assert_close(main_output(reloaded(**inputs)), expected)


# ---------------------------------------------------------------------------------------------
# Bad input gets a clear ValueError
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_bad_inputs_raise_value_error(model_type):
    model_class = generative_class(model_type) or next(iter(model_classes(model_type).values()))
    config = tiny_config(model_type)
    model = build(model_class, config)
    good = make_inputs(config)
    if not takes_token_ids(model_type):  # feature vectors: a wrong shape or dtype, not positions/vocabulary
        values = good["input_values"]
        for bad in (values[:, :-1], values[..., None], values.long()):
            with pytest.raises(ValueError, match="input_values"):
                model(input_values=bad)
        return
    too_long = make_inputs(config, seq_len=config.max_position_embeddings + 1, padded=False)
    with pytest.raises(ValueError, match="positions"):
        model(**too_long)
    out_of_vocab = dict(good, input_ids=good["input_ids"].clone())
    out_of_vocab["input_ids"][1, 4] = config.vocab_size
    with pytest.raises(ValueError, match="vocabulary"):
        model(**out_of_vocab)
    negative = dict(good, input_ids=good["input_ids"].clone())
    negative["input_ids"][0, 5] = -1
    with pytest.raises(ValueError, match="vocabulary"):
        model(**negative)
    with pytest.raises(ValueError, match="attention_mask"):
        model(**dict(good, attention_mask=good["attention_mask"][:, :-1]))


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_loading_another_model_type_raises_value_error(tmp_path, model_type):
    other = next(t for t in MODEL_TYPES if t != model_type)
    other_model = build(next(iter(model_classes(other).values())), tiny_config(other))
    other_model.save_pretrained(tmp_path)
    model_class = next(iter(model_classes(model_type).values()))
    with pytest.raises(ValueError, match="model type"):
        model_class.from_pretrained(tmp_path)


@pytest.mark.parametrize("model_type", MODEL_TYPES)
@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_damaged_weight_file_raises_value_error(tmp_path, model_type, damage):
    model_class = next(iter(model_classes(model_type).values()))
    build(model_class, tiny_config(model_type)).save_pretrained(tmp_path)
    weights = tmp_path / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2] if damage == "truncated" else b"\x07" * 64)
    with pytest.raises(ValueError, match="safetensors|truncated|corrupted"):
        model_class.from_pretrained(tmp_path)

