"""GPT-4 — OpenAI (2023), "GPT-4 Technical Report".

The report (§1-2) describes "a large multimodal model capable of processing image and text inputs and
producing text outputs", "a Transformer-style model pre-trained to predict the next token", and
gives no architecture, sizes or training details. This file therefore builds the smallest model that
has the report's interface on the project's GPT-3 file: GPT-3's decoder (dense and banded layers,
imported from ``gpt3.py``) reading text, with images split into patches, embedded by a patch
encoder (a strided convolution, learned position embeddings and optional pre-LN transformer
layers, as in ViT) and projected into the token stream where the text holds ``<image>``
placeholders (one per patch, as in LLaVA). Everything beyond "image and text in, text out" is our
choice, named in the model card; ``gpt4-tiny`` is the project's demo size.

The processor's chat template has a ``system`` role: the report's steerability ("developers [...]
can prescribe their AI's style and task by describing those directions in the 'system' message").

Hub-exportable: standard library, ``torch``, ``transformers`` and siblings only.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from transformers import BatchFeature, ProcessorMixin
from transformers.activations import ACT2FN
from transformers.image_processing_utils import BaseImageProcessor
from transformers.image_utils import ChannelDimension, infer_channel_dimension_format
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import CausalLMOutputWithPast

from .common import CHAT_TEMPLATE, check_input_ids, check_int, register_for_auto_classes
from .gpt2 import PaperGPT2LMHeadModel
from .gpt3 import PaperGPT3Config, PaperGPT3LMHeadModel, PaperGPT3Model, PaperGPT3PreTrainedModel


class PaperGPT4Config(PaperGPT3Config):
    """GPT-3's decoder fields plus the image side: ``image_size`` × ``image_size`` pictures of
    ``num_channels`` channels, cut into ``patch_size`` squares, each patch one ``<image>`` token
    (``image_token_id``). ``vision_num_hidden_layers=0`` keeps only the linear patch embedding."""

    model_type = "paper-gpt4"

    vocab_size: int = 50258  # GPT-2's byte-level BPE plus <image>
    image_size: int = 32
    patch_size: int = 8
    num_channels: int = 3
    vision_hidden_size: int | None = None  # defaults to hidden_size
    vision_num_hidden_layers: int = 0
    vision_num_attention_heads: int | None = None  # defaults to num_attention_heads
    vision_intermediate_size: int | None = None  # defaults to 4 · vision_hidden_size
    image_token_id: int = 50257

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        for name in ("image_size", "patch_size", "num_channels"):
            check_int(self, name)
        if self.image_size % self.patch_size:
            raise ValueError(
                f"PaperGPT4Config: `patch_size`={self.patch_size} does not divide `image_size`="
                f"{self.image_size}; choose a patch size that tiles the image."
            )
        if self.num_patches > self.max_position_embeddings:
            raise ValueError(
                f"PaperGPT4Config: `image_size`={self.image_size} with `patch_size`={self.patch_size} gives "
                f"{self.num_patches} image tokens, more than `max_position_embeddings`="
                f"{self.max_position_embeddings}."
            )
        if self.vision_hidden_size is None:
            self.vision_hidden_size = self.hidden_size
        if self.vision_num_attention_heads is None:
            self.vision_num_attention_heads = self.num_attention_heads
        if self.vision_intermediate_size is None:
            self.vision_intermediate_size = 4 * self.vision_hidden_size
        check_int(self, "vision_hidden_size")
        check_int(self, "vision_num_hidden_layers", minimum=0)
        check_int(self, "vision_num_attention_heads")
        check_int(self, "vision_intermediate_size")
        if self.vision_hidden_size % self.vision_num_attention_heads:
            raise ValueError(
                f"PaperGPT4Config: `vision_hidden_size`={self.vision_hidden_size} is not divisible by "
                f"`vision_num_attention_heads`={self.vision_num_attention_heads}."
            )
        check_int(self, "image_token_id", minimum=0)
        if self.image_token_id >= self.vocab_size:
            raise ValueError(
                f"PaperGPT4Config: `image_token_id`={self.image_token_id} is outside the vocabulary "
                f"[0, {self.vocab_size - 1}]; the `<image>` token must be one of the model's tokens."
            )

    @property
    def num_patches(self) -> int:
        """Image tokens per image: (image_size / patch_size)²."""
        return (self.image_size // self.patch_size) ** 2


# The report gives no sizes. gpt4-tiny is the project's demo size, matched to
# ``hf_paper_models.tokenizers.image_chat_tokenizer()`` (2048 BPE merges + 5 chat tokens + <image>)
# and to the embedded image tasks (32×32 pictures, 16 patches of 8×8).
PRESETS = {
    "gpt4-tiny": dict(
        vocab_size=2054,
        max_position_embeddings=256,
        hidden_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        sliding_window=64,
        image_size=32,
        patch_size=8,
        num_channels=3,
        vision_hidden_size=64,
        vision_num_hidden_layers=2,
        vision_num_attention_heads=4,
        bos_token_id=0,
        eos_token_id=2048,
        pad_token_id=2049,
        image_token_id=2053,
    ),
}


# ----------------------------------------------------------------------------------------------
# The image side: patches -> vectors in the decoder's width.
# ----------------------------------------------------------------------------------------------


class PaperGPT4VisionLayer(GradientCheckpointingLayer):
    """Pre-LN transformer layer over the patches (ViT): x + Attn(LN x), then x + MLP(LN x).
    Attention is bidirectional: every patch sees the whole image."""

    def __init__(self, config: PaperGPT4Config):
        super().__init__()
        width = config.vision_hidden_size
        self.num_heads = config.vision_num_attention_heads
        self.ln_1 = nn.LayerNorm(width, eps=config.layer_norm_epsilon)
        self.qkv = nn.Linear(width, 3 * width)
        self.out_proj = nn.Linear(width, width)
        self.ln_2 = nn.LayerNorm(width, eps=config.layer_norm_epsilon)
        self.fc_in = nn.Linear(width, config.vision_intermediate_size)
        self.act = ACT2FN[config.activation_function]
        self.fc_out = nn.Linear(config.vision_intermediate_size, width)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        batch, length, width = hidden_states.shape
        qkv = self.qkv(self.ln_1(hidden_states)).view(batch, length, 3, self.num_heads, -1)
        query, key, value = qkv.permute(2, 0, 3, 1, 4)
        attended = F.scaled_dot_product_attention(query, key, value)
        hidden_states = hidden_states + self.out_proj(attended.transpose(1, 2).reshape(batch, length, width))
        return hidden_states + self.fc_out(self.act(self.fc_in(self.ln_2(hidden_states))))


class PaperGPT4VisionEncoder(nn.Module):
    """Image (B, C, H, W) -> (B, num_patches, hidden_size): patchify with a stride-``patch_size``
    convolution (a linear map of each flattened patch), add learned positions, run the optional
    layers, then project into the decoder's embedding space with a two-layer MLP (LLaVA-1.5)."""

    def __init__(self, config: PaperGPT4Config):
        super().__init__()
        self.config = config
        width = config.vision_hidden_size
        self.patch_embedding = nn.Conv2d(
            config.num_channels, width, config.patch_size, stride=config.patch_size
        )
        self.position_embedding = nn.Embedding(config.num_patches, width)
        self.layers = nn.ModuleList(
            PaperGPT4VisionLayer(config) for _ in range(config.vision_num_hidden_layers)
        )
        self.post_layernorm = (
            nn.LayerNorm(width, eps=config.layer_norm_epsilon)
            if config.vision_num_hidden_layers
            else nn.Identity()
        )
        self.projector_in = nn.Linear(width, config.hidden_size)
        self.projector_act = ACT2FN[config.activation_function]
        self.projector_out = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        check_pixel_values(pixel_values, self.config)
        pixel_values = pixel_values.to(self.patch_embedding.weight.dtype)
        patches = self.patch_embedding(pixel_values).flatten(2).transpose(1, 2)  # (B, N, width), row-major
        hidden_states = patches + self.position_embedding.weight
        for layer in self.layers:
            hidden_states = layer(hidden_states)
        hidden_states = self.post_layernorm(hidden_states)
        return self.projector_out(self.projector_act(self.projector_in(hidden_states)))


def check_pixel_values(pixel_values: torch.Tensor, config: PaperGPT4Config) -> None:
    expected = (config.num_channels, config.image_size, config.image_size)
    if pixel_values.dim() != 4 or tuple(pixel_values.shape[1:]) != expected:
        raise ValueError(
            f"`pixel_values` has shape {tuple(pixel_values.shape)}, expected (images, {expected[0]}, "
            f"{expected[1]}, {expected[2]}): {config.num_channels} channels of `image_size`={config.image_size} "
            "pixels square. Run the images through PaperGPT4ImageProcessor (AutoProcessor) first."
        )
    if not pixel_values.dtype.is_floating_point:
        raise ValueError(
            f"`pixel_values` must be floating point (rescaled, normalised), got {pixel_values.dtype}."
        )


# ----------------------------------------------------------------------------------------------
# Models
# ----------------------------------------------------------------------------------------------


class PaperGPT4PreTrainedModel(PaperGPT3PreTrainedModel):
    config_class = PaperGPT4Config
    input_modalities = ("image", "text")
    _no_split_modules = ["PaperGPT2Block", "PaperGPT4VisionLayer"]


class PaperGPT4Model(PaperGPT4PreTrainedModel, PaperGPT3Model):
    """GPT-3's decoder whose token embeddings at ``<image>`` positions are replaced by image patches."""

    def __init__(self, config: PaperGPT4Config):
        super().__init__(config)
        self.vision_encoder = PaperGPT4VisionEncoder(config)
        self.post_init()

    def get_image_features(self, pixel_values: torch.Tensor, **kwargs) -> torch.Tensor:
        """(images, C, H, W) -> (images, num_patches, hidden_size): what replaces the placeholders."""
        return self.vision_encoder(pixel_values)

    def merge_image_features(self, input_ids: torch.Tensor, pixel_values: torch.Tensor) -> torch.Tensor:
        """Token embeddings with the ``<image>`` positions filled by the projected patches, in order:
        image ``i``'s patches go to the ``i``-th run of ``num_patches`` placeholders (row-major)."""
        check_input_ids(input_ids, self.config.vocab_size)
        features = self.get_image_features(pixel_values)
        embeds = self.wte(input_ids)
        placeholders = input_ids == self.config.image_token_id
        found, needed = int(placeholders.sum()), features.shape[0] * features.shape[1]
        if found != needed:
            raise ValueError(
                f"The text holds {found} image tokens (id {self.config.image_token_id}) but "
                f"{features.shape[0]} image(s) need {needed} ({self.config.num_patches} per image). Put one "
                "`<image>` per image in the text and let PaperGPT4Processor expand it."
            )
        mask = placeholders.unsqueeze(-1).expand_as(embeds)
        return embeds.masked_scatter(mask, features.to(embeds.dtype))

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.Tensor | None = None,
        past_key_values=None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.LongTensor | None = None,
        position_ids: torch.LongTensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        **kwargs,
    ):
        # Without images an <image> id is an ordinary token (text-only use is exactly GPT-3).
        if pixel_values is not None:
            if input_ids is None or inputs_embeds is not None:
                raise ValueError(
                    "Images need `input_ids` (not `inputs_embeds`) to find the `<image>` placeholders."
                )
            inputs_embeds, input_ids = self.merge_image_features(input_ids, pixel_values), None
        return super().forward(
            input_ids,
            past_key_values=past_key_values,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            **kwargs,
        )


class PaperGPT4ForConditionalGeneration(PaperGPT4PreTrainedModel, PaperGPT3LMHeadModel):
    """Image + text in, text out (``AutoModelForImageTextToText``): GPT-3's LM head (tied to the token
    embeddings) over ``PaperGPT4Model``. ``generate`` passes ``pixel_values`` on the prefill step only:
    later cached steps see new text tokens, whose past already holds the image (transformers drops
    ``pixel_values`` outside prefill; without a cache every step re-reads the whole prompt)."""

    def __init__(self, config: PaperGPT4Config):
        # Skip PaperGPT2LMHeadModel.__init__ (it builds a text-only base model); same modules otherwise.
        super(PaperGPT2LMHeadModel, self).__init__(config)
        self.transformer = PaperGPT4Model(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_image_features(self, pixel_values: torch.Tensor, **kwargs) -> torch.Tensor:
        return self.transformer.get_image_features(pixel_values)

    def forward(
        self,
        input_ids=None,
        pixel_values=None,
        past_key_values=None,
        attention_mask=None,
        labels=None,
        logits_to_keep: int | torch.Tensor = 0,
        **kwargs,
    ) -> CausalLMOutputWithPast:
        """GPT-3's LM-head forward; ``pixel_values`` travel to ``PaperGPT4Model`` with the other kwargs."""
        return super().forward(
            input_ids,
            past_key_values=past_key_values,
            attention_mask=attention_mask,
            labels=labels,
            logits_to_keep=logits_to_keep,
            pixel_values=pixel_values,
            **kwargs,
        )


class PaperGPT4ForCausalLM(PaperGPT4ForConditionalGeneration):
    """The same model and weights for ``AutoModelForCausalLM`` (text only; images still accepted).
    A class of its own so that a saved folder's ``auto_map`` names the Auto class it was saved as."""


# ----------------------------------------------------------------------------------------------
# Image processor and processor
# ----------------------------------------------------------------------------------------------


class PaperGPT4ImageProcessor(BaseImageProcessor):
    """Images (PIL, NumPy or torch; HWC or CHW; a list or one) -> ``pixel_values`` (B, C, H, W) float32:
    resize to ``image_size`` (bilinear, antialiased), rescale by 1/255, normalise by mean/std.
    A wrong channel count, an empty image or (with ``do_resize=False``) a wrong size is a ValueError."""

    model_input_names = ["pixel_values"]

    def __init__(
        self,
        image_size: int = 32,
        num_channels: int = 3,
        do_resize: bool = True,
        do_rescale: bool = True,
        rescale_factor: float = 1 / 255,
        do_normalize: bool = True,
        image_mean: list[float] | None = None,
        image_std: list[float] | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
            raise ValueError(
                f"PaperGPT4ImageProcessor: `image_size` must be an integer >= 1, got {image_size!r}."
            )
        self.image_size = image_size
        self.num_channels = num_channels
        self.do_resize = do_resize
        self.do_rescale = do_rescale
        self.rescale_factor = rescale_factor
        self.do_normalize = do_normalize
        self.image_mean = list(image_mean) if image_mean is not None else [0.5] * num_channels
        self.image_std = list(image_std) if image_std is not None else [0.5] * num_channels
        if len(self.image_mean) != num_channels or len(self.image_std) != num_channels:
            raise ValueError(
                f"PaperGPT4ImageProcessor: `image_mean`/`image_std` need {num_channels} values (one per channel)."
            )

    def _to_chw(self, image) -> torch.Tensor:
        if hasattr(image, "mode") and hasattr(image, "size"):  # a PIL image
            image = np.asarray(image)
        array = image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
        if array.ndim == 2:  # grayscale without a channel axis
            array = array[None]
        if array.ndim != 3 or 0 in array.shape:
            raise ValueError(
                f"Each image must be a non-empty (H, W), (H, W, C) or (C, H, W) array, got shape {array.shape}."
            )
        channels = (self.num_channels,) if self.num_channels not in (1, 3) else (1, 3)
        try:
            channel_dim = infer_channel_dimension_format(array, num_channels=channels)
        except ValueError as err:
            raise ValueError(
                f"The image of shape {array.shape} does not have {self.num_channels} channels "
                f"(`num_channels`={self.num_channels})."
            ) from err
        if channel_dim == ChannelDimension.LAST:
            array = array.transpose(2, 0, 1)
        if array.shape[0] != self.num_channels:
            raise ValueError(
                f"The image of shape {array.shape} has {array.shape[0]} channels, but the model reads "
                f"{self.num_channels} (`num_channels`). Convert it (e.g. `image.convert('RGB')`) first."
            )
        return torch.from_numpy(np.ascontiguousarray(array)).float()

    def preprocess(
        self,
        images,
        do_resize: bool | None = None,
        do_rescale: bool | None = None,
        do_normalize: bool | None = None,
        return_tensors=None,
        **kwargs,
    ) -> BatchFeature:
        do_resize = self.do_resize if do_resize is None else do_resize
        do_rescale = self.do_rescale if do_rescale is None else do_rescale
        do_normalize = self.do_normalize if do_normalize is None else do_normalize
        images = _flat_images(images)
        if not images:
            raise ValueError("PaperGPT4ImageProcessor: no images given.")
        size = (self.image_size, self.image_size)
        out = []
        for image in images:
            pixels = self._to_chw(image)
            if tuple(pixels.shape[1:]) != size:
                if not do_resize:
                    raise ValueError(
                        f"The image is {tuple(pixels.shape[1:])} pixels but the model reads {size} "
                        "(`image_size`) and `do_resize` is off."
                    )
                pixels = F.interpolate(
                    pixels[None], size=size, mode="bilinear", antialias=True, align_corners=False
                )[0]
            if do_rescale:
                pixels = pixels * self.rescale_factor
            if do_normalize:
                mean = torch.tensor(self.image_mean).view(-1, 1, 1)
                std = torch.tensor(self.image_std).view(-1, 1, 1)
                pixels = (pixels - mean) / std
            out.append(pixels)
        pixel_values = torch.stack(out)
        if return_tensors in (None, "pt"):
            return BatchFeature({"pixel_values": pixel_values})
        return BatchFeature({"pixel_values": pixel_values.numpy()}, tensor_type=return_tensors)


def _flat_images(images) -> list:
    """One image, a (B, ...) batch array, or (nested) lists of them -> a flat list of single images."""
    if isinstance(images, (list, tuple)):
        return [image for item in images for image in _flat_images(item)]
    if isinstance(images, (np.ndarray, torch.Tensor)) and images.ndim == 4:
        return list(images)
    return [images]


class PaperGPT4Processor(ProcessorMixin):
    """Tokenizer + image processor. Each ``<image>`` in the text becomes ``num_patches`` image tokens
    ((image_size / patch_size)²), which the model fills with the image's projected patches."""

    def __init__(
        self,
        image_processor=None,
        tokenizer=None,
        patch_size: int = 8,
        image_token: str = "<image>",
        chat_template: str | None = None,
        **kwargs,
    ):
        self.patch_size = patch_size
        self.image_token = image_token
        self.image_token_id = tokenizer.convert_tokens_to_ids(image_token) if tokenizer is not None else None
        if tokenizer is not None and (
            self.image_token_id is None or self.image_token_id == tokenizer.unk_token_id
        ):
            raise ValueError(f"The tokenizer has no `{image_token}` token; add it as a special token first.")
        super().__init__(image_processor, tokenizer, chat_template=chat_template or CHAT_TEMPLATE)

    @classmethod
    def for_model(cls, config: PaperGPT4Config, tokenizer, **kwargs) -> PaperGPT4Processor:
        """The processor that matches ``config``'s image size, channels and patch size."""
        image_processor = PaperGPT4ImageProcessor(
            image_size=config.image_size, num_channels=config.num_channels
        )
        return cls(image_processor, tokenizer, patch_size=config.patch_size, **kwargs)

    @property
    def num_image_tokens(self) -> int:
        return (self.image_processor.image_size // self.patch_size) ** 2

    def replace_image_token(self, image_inputs: dict, image_idx: int, **kwargs) -> str:
        return self.image_token * self.num_image_tokens


# The Auto classes this paper registers with (ZOO.md §2); also marks them for Hub export.
AUTO_CLASSES = {
    "AutoModel": PaperGPT4Model,
    "AutoModelForImageTextToText": PaperGPT4ForConditionalGeneration,
    "AutoModelForCausalLM": PaperGPT4ForCausalLM,
}
register_for_auto_classes(PaperGPT4Config, AUTO_CLASSES)
# Processors the package registers for this config (``AutoImageProcessor`` / ``AutoProcessor``).
PROCESSOR_CLASSES = {"AutoImageProcessor": PaperGPT4ImageProcessor, "AutoProcessor": PaperGPT4Processor}
for _auto_name, _processor_class in PROCESSOR_CLASSES.items():
    _processor_class.register_for_auto_class(_auto_name)

__all__ = [
    "PaperGPT4Config",
    "PaperGPT4Model",
    "PaperGPT4ForConditionalGeneration",
    "PaperGPT4ForCausalLM",
    "PaperGPT4PreTrainedModel",
    "PaperGPT4ImageProcessor",
    "PaperGPT4Processor",
]
