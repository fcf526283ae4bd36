"""GPT-4: GPT-3's decoder reading image patches at <image> placeholders (OpenAI 2023), its image
processor, processor (chat template with a system role) and the pipeline."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from transformers import AutoModelForCausalLM, AutoModelForImageTextToText, AutoProcessor, pipeline

from hf_paper_models import preset
from hf_paper_models.models.gpt3 import PaperGPT3Config, PaperGPT3LMHeadModel
from hf_paper_models.models.gpt4 import (
    PaperGPT4Config,
    PaperGPT4ForCausalLM,
    PaperGPT4ForConditionalGeneration,
    PaperGPT4ImageProcessor,
    PaperGPT4Processor,
)
from hf_paper_models.tokenizers import image_chat_tokenizer

SMALL = dict(
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    sliding_window=8,
    vision_hidden_size=16,
    vision_num_hidden_layers=1,
    vision_num_attention_heads=2,
)
MESSAGES = [
    {"role": "system", "content": "Answer in one word."},
    {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What colour is the square?"}]},
]


def tiny_config(**overrides) -> PaperGPT4Config:
    return preset("gpt4-tiny", **{**SMALL, **overrides})


def build(config: PaperGPT4Config, cls=PaperGPT4ForConditionalGeneration, seed: int = 0):
    torch.manual_seed(seed)
    return cls(config).eval()


def picture(seed: int = 0, size: int = 40) -> Image.Image:
    return Image.fromarray(np.random.RandomState(seed).randint(0, 256, (size, size, 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def tokenizer():
    return image_chat_tokenizer()


@pytest.fixture(scope="module")
def processor(tokenizer):
    return PaperGPT4Processor.for_model(tiny_config(), tokenizer)


def image_prompt(config: PaperGPT4Config, before: int = 5, after: int = 7, images: int = 1, seed: int = 0):
    """Random text ids around `images` runs of num_patches placeholders, and random pixel values."""
    generator = torch.Generator().manual_seed(seed)
    parts = []
    for _ in range(images):
        parts += [
            torch.randint(3, 2000, (before,), generator=generator),
            torch.full((config.num_patches,), config.image_token_id),
        ]
    parts.append(torch.randint(3, 2000, (after,), generator=generator))
    input_ids = torch.cat(parts)[None]
    pixel_values = torch.randn(
        images, config.num_channels, config.image_size, config.image_size, generator=generator
    )
    return input_ids, pixel_values


# ---------------------------------------------------------------------------------------------
# The model
# ---------------------------------------------------------------------------------------------


def test_preset_and_sizes():
    config = preset("gpt4-tiny")
    assert config.num_patches == 16 and config.image_token_id == config.vocab_size - 1
    tokenizer_size = 2054  # image_chat_tokenizer(): 2048 BPE + 5 chat tokens + <image>
    assert config.vocab_size == tokenizer_size


def test_text_only_equals_gpt3_with_the_same_weights():
    config = tiny_config()
    gpt4 = build(config, PaperGPT4ForCausalLM)
    fields = {k: v for k, v in config.to_dict().items() if k in PaperGPT3Config.__dataclass_fields__}
    gpt3 = PaperGPT3LMHeadModel(PaperGPT3Config(**{**fields, "model_type": "paper-gpt3"})).eval()
    state = {k: v for k, v in gpt4.state_dict().items() if "vision_encoder" not in k}
    gpt3.load_state_dict(state, strict=True)
    input_ids = torch.randint(0, config.vocab_size, (2, 24), generator=torch.Generator().manual_seed(1))
    input_ids[0, 3] = config.image_token_id  # without images, <image> is an ordinary token
    with torch.no_grad():
        torch.testing.assert_close(gpt4(input_ids).logits, gpt3(input_ids).logits)


def test_placeholders_hold_the_projected_patches_by_hand():
    config = tiny_config(vision_num_hidden_layers=0)  # linear patch embedding only: checkable by hand
    model = build(config)
    input_ids, pixel_values = image_prompt(config)
    encoder = model.transformer.vision_encoder
    p = config.patch_size
    # Row-major patches, each flattened as (channel, row, column): the convolution's weight layout.
    patches = (
        pixel_values.unfold(2, p, p)
        .unfold(3, p, p)
        .permute(0, 2, 3, 1, 4, 5)
        .reshape(1, config.num_patches, -1)
    )
    conv = encoder.patch_embedding
    hidden = (
        patches @ conv.weight.reshape(conv.out_channels, -1).T + conv.bias + encoder.position_embedding.weight
    )
    hidden = F.linear(hidden, encoder.projector_in.weight, encoder.projector_in.bias)
    hidden = (
        0.5 * hidden * (1 + torch.tanh((2 / torch.pi) ** 0.5 * (hidden + 0.044715 * hidden**3)))
    )  # gelu_new
    expected = F.linear(hidden, encoder.projector_out.weight, encoder.projector_out.bias)
    with torch.no_grad():
        merged = model.transformer.merge_image_features(input_ids, pixel_values)
        at_image = input_ids[0] == config.image_token_id
        torch.testing.assert_close(merged[0, at_image], expected[0], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(merged[0, ~at_image], model.transformer.wte(input_ids[0, ~at_image]))
        # The forward pass reads exactly these embeddings.
        direct = model(input_ids, pixel_values=pixel_values).logits
        by_embeds = model(inputs_embeds=merged).logits
    torch.testing.assert_close(direct, by_embeds)


def test_image_changes_only_the_positions_after_it():
    config = tiny_config()
    model = build(config)
    input_ids, pixel_values = image_prompt(config, before=5)
    with torch.no_grad():
        with_image = model(input_ids, pixel_values=pixel_values).logits
        other_image = model(input_ids, pixel_values=pixel_values.flip(-1)).logits
    torch.testing.assert_close(with_image[:, :5], other_image[:, :5])
    assert (with_image[:, 5:] - other_image[:, 5:]).abs().amax() > 1e-3


def test_two_images_fill_their_placeholders_in_order():
    config = tiny_config()
    model = build(config)
    input_ids, pixel_values = image_prompt(config, images=2)
    with torch.no_grad():
        merged = model.transformer.merge_image_features(input_ids, pixel_values)
        features = model.get_image_features(pixel_values)
    at_image = input_ids[0] == config.image_token_id
    torch.testing.assert_close(merged[0, at_image], features.reshape(-1, config.hidden_size))


def test_bad_images_raise_value_error():
    config = tiny_config()
    model = build(config)
    input_ids, pixel_values = image_prompt(config)
    with pytest.raises(ValueError, match="image_size"):
        model(input_ids, pixel_values=pixel_values[..., :16, :16])
    with pytest.raises(ValueError, match="channels"):
        model(input_ids, pixel_values=pixel_values[:, :1])
    short = input_ids.clone()
    short[0, 5] = 7  # the first placeholder (after 5 text tokens) made text: one short
    with pytest.raises(ValueError, match="image tokens"):
        model(short, pixel_values=pixel_values)
    with pytest.raises(ValueError, match="image tokens"):  # two images' worth of pixels, one placeholder run
        model(input_ids, pixel_values=torch.cat([pixel_values, pixel_values]))
    with pytest.raises(ValueError, match="vocabulary"):
        bad = input_ids.clone()
        bad[0, 0] = config.vocab_size
        model(bad, pixel_values=pixel_values)


@pytest.mark.parametrize(
    "field, value, match",
    [
        ("patch_size", 5, "patch_size"),
        ("image_token_id", 2054, "image_token_id"),
        ("num_channels", 0, "num_channels"),
        ("vision_num_attention_heads", 3, "vision_hidden_size"),
        ("vision_num_hidden_layers", -1, "vision_num_hidden_layers"),
        ("image_size", 512, "image_size"),
    ],
)
def test_config_rejects_impossible_vision_values(field, value, match):
    with pytest.raises(ValueError, match=match):
        tiny_config(**{field: value})


def test_loss_trains_the_vision_encoder():
    config = tiny_config()
    model = build(config).train()
    input_ids, pixel_values = image_prompt(config)
    labels = input_ids.masked_fill(input_ids == config.image_token_id, -100)
    model(input_ids, pixel_values=pixel_values, labels=labels).loss.backward()
    grad = model.transformer.vision_encoder.patch_embedding.weight.grad
    assert grad is not None and grad.abs().sum() > 0


def test_cached_generation_reads_the_image_once_and_equals_uncached():
    config = tiny_config()
    model = build(config)
    input_ids, pixel_values = image_prompt(config)
    calls = []
    model.transformer.vision_encoder.register_forward_hook(lambda *args: calls.append(1))
    kwargs = dict(
        pixel_values=pixel_values,
        max_new_tokens=8,
        do_sample=False,
        pad_token_id=config.pad_token_id,
        eos_token_id=None,
    )
    cached = model.generate(input_ids, use_cache=True, **kwargs)
    assert len(calls) == 1  # prefill only: later steps reuse the cache
    uncached = model.generate(input_ids, use_cache=False, **kwargs)
    assert len(calls) == 1 + 8
    torch.testing.assert_close(cached, uncached, rtol=0, atol=0)
    # An argmax loop over full forward passes gives the same tokens.
    ids = input_ids
    with torch.no_grad():
        for _ in range(8):
            next_id = model(ids, pixel_values=pixel_values).logits[:, -1].argmax(-1, keepdim=True)
            ids = torch.cat([ids, next_id], dim=1)
    torch.testing.assert_close(cached, ids, rtol=0, atol=0)


# ---------------------------------------------------------------------------------------------
# Image processor and processor
# ---------------------------------------------------------------------------------------------


def test_image_processor_rescales_and_normalises_by_hand():
    processor = PaperGPT4ImageProcessor(image_size=32, image_mean=[0.1, 0.2, 0.3], image_std=[0.5, 0.25, 2.0])
    array = np.random.RandomState(0).randint(0, 256, (32, 32, 3), dtype=np.uint8)
    out = processor(Image.fromarray(array), return_tensors="pt")["pixel_values"]
    mean, std = np.array([0.1, 0.2, 0.3]), np.array([0.5, 0.25, 2.0])
    expected = torch.from_numpy(((array / 255.0 - mean) / std).transpose(2, 0, 1)).float()[None]
    torch.testing.assert_close(out, expected)
    # Channels-first NumPy and torch inputs give the same; a constant colour stays constant when resized.
    torch.testing.assert_close(processor(array.transpose(2, 0, 1))["pixel_values"], out)
    torch.testing.assert_close(processor(torch.from_numpy(array))["pixel_values"], out)
    big = processor(np.full((80, 48, 3), 255, dtype=np.uint8))["pixel_values"]
    assert big.shape == (1, 3, 32, 32)
    torch.testing.assert_close(
        big, ((1.0 - torch.tensor(mean)) / torch.tensor(std)).float().view(1, 3, 1, 1).expand(1, 3, 32, 32)
    )


def test_image_processor_rejects_wrong_channels_and_sizes():
    processor = PaperGPT4ImageProcessor(image_size=32)
    for bad in (np.zeros((32, 32), np.uint8), np.zeros((32, 32, 4), np.uint8), np.zeros((0, 5, 3), np.uint8)):
        with pytest.raises(ValueError, match="channels|non-empty"):
            processor(bad)
    with pytest.raises(ValueError, match="channels"):
        processor(Image.new("RGBA", (32, 32)))
    with pytest.raises(ValueError, match="image_size"):
        processor(np.zeros((40, 40, 3), np.uint8), do_resize=False)
    with pytest.raises(ValueError, match="image_size"):
        PaperGPT4ImageProcessor(image_size=0)


def test_processor_expands_the_placeholder_and_matches_a_direct_forward(tokenizer, processor):
    config = tiny_config()
    model = build(config)
    text = processor.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=False)
    assert text.startswith("<|system|>\nAnswer in one word.<|end|>\n<|user|>\n<image>What colour")
    assert text.endswith("<|assistant|>\n") and text.count("<image>") == 1
    image = picture()
    inputs = processor(images=image, text=text, return_tensors="pt")
    assert (inputs["input_ids"] == config.image_token_id).sum() == config.num_patches
    # Direct: the expanded text through the tokenizer, the image resized/rescaled/normalised by hand.
    ids = tokenizer(text.replace("<image>", "<image>" * config.num_patches), return_tensors="pt")["input_ids"]
    torch.testing.assert_close(inputs["input_ids"], ids)
    resized = F.interpolate(
        torch.from_numpy(np.array(image)).permute(2, 0, 1).float()[None],
        size=(32, 32),
        mode="bilinear",
        antialias=True,
        align_corners=False,
    )
    pixel_values = (resized / 255 - 0.5) / 0.5
    torch.testing.assert_close(inputs["pixel_values"], pixel_values)
    # The chat-template path the pipeline takes (tokenize=True, images in the messages) is the same.
    messages = [
        MESSAGES[0],
        {"role": "user", "content": [{"type": "image", "image": image}, MESSAGES[1]["content"][1]]},
    ]
    templated = processor.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
    )
    torch.testing.assert_close(templated["input_ids"], ids)
    torch.testing.assert_close(templated["pixel_values"], pixel_values)
    with torch.no_grad():
        torch.testing.assert_close(model(**inputs).logits, model(ids, pixel_values=pixel_values).logits)
    # The pipeline generates what greedy decoding over the direct forward gives.
    pipe = pipeline("image-text-to-text", model=model, processor=processor)
    result = pipe(
        text=messages, max_new_tokens=6, generate_kwargs={"do_sample": False}, return_full_text=False
    )
    generated = ids
    with torch.no_grad():
        for _ in range(6):
            next_id = model(generated, pixel_values=pixel_values).logits[:, -1].argmax(-1, keepdim=True)
            generated = torch.cat([generated, next_id], dim=1)
            if next_id.item() == tokenizer.eos_token_id:
                break
    expected = tokenizer.decode(generated[0, ids.shape[1] :], skip_special_tokens=True)
    assert result[0]["generated_text"] == expected


def test_processor_checks_the_image_count(processor):
    with pytest.raises(ValueError, match="image"):
        processor(images=[picture(), picture(1)], text="<image> one placeholder", return_tensors="pt")
    with pytest.raises(ValueError, match="image"):
        processor(text="<image> but no picture", return_tensors="pt")


def test_save_and_load_through_the_auto_classes(tmp_path, processor):
    config = tiny_config()
    model = build(config)
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    loaded_processor = AutoProcessor.from_pretrained(tmp_path)
    assert type(loaded_processor) is PaperGPT4Processor
    assert type(loaded_processor.image_processor) is PaperGPT4ImageProcessor
    loaded = AutoModelForImageTextToText.from_pretrained(tmp_path).eval()
    assert type(loaded) is PaperGPT4ForConditionalGeneration
    text = processor.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=False)
    inputs = processor(images=picture(), text=text, return_tensors="pt")
    again = loaded_processor(images=picture(), text=text, return_tensors="pt")
    for key in inputs:
        torch.testing.assert_close(again[key], inputs[key])
    with torch.no_grad():
        torch.testing.assert_close(loaded(**again).logits, model(**inputs).logits)
    text_only = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert type(text_only) is PaperGPT4ForCausalLM
    with torch.no_grad():
        torch.testing.assert_close(text_only(**inputs).logits, model(**inputs).logits)
