"""T5 (v1.0) — Raffel, Shazeer, Roberts, Lee, Narang, Matena, Zhou, Li & Liu (2020), "Exploring the
Limits of Transfer Learning with a Unified Text-to-Text Transformer", JMLR 21(140).

The architecture of §2.1 (it "closely follows its originally-proposed form", Vaswani et al. 2017):

- "a simplified version of layer normalization where the activations are only rescaled and no
  additive bias is applied" (an RMS norm: no mean subtraction, no bias), applied to the *input* of
  each sub-block (pre-LN), with a final norm after each stack; "dropout is applied within the
  feed-forward network, on the skip connection, on the attention weights, and at the input and
  output of the entire stack";
- no absolute positions: "a simplified form of position embeddings where each 'embedding' is simply
  a scalar that is added to the corresponding logit used for computing the attention weights", one
  scalar per head and per bucket of the key-query offset, 32 buckets whose ranges grow
  logarithmically up to an offset of 128; the parameters are shared across all layers, so the first
  layer of each stack computes the bias and the others reuse it. The encoder's buckets are
  bidirectional, the decoder's causal;
- a ReLU feed-forward network (§3.1.1).

As in the released v1.0 models (Mesh TensorFlow): no biases in any projection; no 1/√d_kv scaling of
the attention logits (the initialisation of the query projection absorbs it); the output layer is the
input embedding matrix, the decoder output being rescaled by d_model^-0.5 before it.

Module and parameter names follow transformers' ``T5Model`` (``shared``,
``encoder.block.{i}.layer.0.SelfAttention``, ``layer.{-1}.DenseReluDense.wi``, ``final_layer_norm``)
except the attention projections, which are the shared ``MultiHeadAttention``'s
``q_proj/k_proj/v_proj/out_proj`` (transformers: ``q/k/v/o``); ``conversions/t5.py`` renames them.

The blocks are built to be reused (Switch Transformers, ``switch.py``): ``PaperT5LayerFF`` takes any
feed-forward module, ``PaperT5Block.make_feed_forward`` / ``make_feed_forward_layer`` and
``PaperT5Stack.make_block`` are the hooks to override, and the models build their stacks from
``stack_class``.
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationMixin, PreTrainedConfig
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.cache_utils import Cache, DynamicCache, EncoderDecoderCache
from transformers.masking_utils import create_bidirectional_mask, create_causal_mask
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import (
    BaseModelOutput,
    BaseModelOutputWithPastAndCrossAttentions,
    Seq2SeqLMOutput,
    Seq2SeqModelOutput,
)

from .attention import MultiHeadAttention
from .common import (
    PaperPreTrainedModel,
    cache_mask_kwargs,
    check_activation,
    check_attention_mask,
    check_heads,
    check_input_ids,
    check_int,
    check_length,
    check_positive_float,
    check_probability,
    register_for_auto_classes,
)


class PaperT5Config(PreTrainedConfig):
    """T5 hyper-parameters in transformers' ``T5Config`` names. Defaults are T5-Small (60M).

    ``d_kv`` defaults to ``d_model // num_heads`` (64 at the defaults); set it explicitly to decouple
    the head size from the width, as T5-3B and T5-11B do (1024 wide, heads of 128).

    ``max_position_embeddings``: T5 has no position table and so no hard length limit. The paper
    pre-trains and fine-tunes with sequences of 512 tokens (§3.1.2, §3.7), so by default the model
    refuses (``ValueError``) encoder inputs or decoder sequences longer than 512 tokens, which it has
    never been trained on. Raise it freely, or set ``None`` to switch the check off; nothing else
    depends on it.

    ``attn_pdrop`` is an alias of ``dropout_rate``: T5 uses one dropout rate everywhere, the
    attention weights included.
    """

    model_type = "paper-t5"
    keys_to_ignore_at_inference = ["past_key_values"]
    attribute_map = {
        "hidden_size": "d_model",
        "num_hidden_layers": "num_layers",
        "num_attention_heads": "num_heads",
        "intermediate_size": "d_ff",
        "head_dim": "d_kv",
        "attn_pdrop": "dropout_rate",
    }

    vocab_size: int = 32128
    d_model: int = 512
    d_kv: int | None = None
    d_ff: int = 2048
    num_layers: int = 6
    num_decoder_layers: int | None = None
    num_heads: int = 8
    relative_attention_num_buckets: int = 32
    relative_attention_max_distance: int = 128
    max_position_embeddings: int | None = 512
    dropout_rate: float = 0.1
    layer_norm_epsilon: float = 1e-6
    initializer_factor: float = 1.0
    feed_forward_proj: str = "relu"
    is_encoder_decoder: bool = True
    use_cache: bool = True
    tie_word_embeddings: bool = True
    pad_token_id: int | None = 0
    eos_token_id: int | list[int] | None = 1
    bos_token_id: int | None = None
    decoder_start_token_id: int | None = 0

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)  # applies the standard names (hidden_size, ...) first
        _named(self, check_heads)
        if self.d_kv is None:
            self.d_kv = self.d_model // self.num_heads
        if self.num_decoder_layers is None:  # symmetric encoder and decoder, as in the paper
            self.num_decoder_layers = self.num_layers
        for name in (
            "vocab_size",
            "num_layers",
            "num_decoder_layers",
            "d_ff",
            "relative_attention_max_distance",
        ):
            _named(self, check_int, name)
        _named(self, check_int, "relative_attention_num_buckets", 4)
        _named(self, check_int, "max_position_embeddings", 1, True)
        if self.relative_attention_max_distance <= self.relative_attention_num_buckets // 2:
            raise ValueError(
                f"{type(self).__name__}: `relative_attention_max_distance`={self.relative_attention_max_distance} "
                f"must exceed half of `relative_attention_num_buckets`={self.relative_attention_num_buckets}: "
                "the exact buckets cover the offsets below that, the logarithmic ones reach up to it."
            )
        _named(self, check_probability, "dropout_rate")
        _named(self, check_positive_float, "layer_norm_epsilon")
        _named(self, check_positive_float, "initializer_factor")
        if not isinstance(self.feed_forward_proj, str) or self.feed_forward_proj.startswith("gated-"):
            raise ValueError(
                f"{type(self).__name__}: `feed_forward_proj`={self.feed_forward_proj!r} is not supported: the "
                "gated feed-forward ('gated-gelu') is T5 v1.1, not the paper's T5 (v1.0), whose feed-forward "
                "is ReLU(x W_i) W_o; use 'relu' (or another plain activation)."
            )
        check_activation(self, "feed_forward_proj")
        if self.tie_word_embeddings is not True:
            raise ValueError(
                f"{type(self).__name__}: `tie_word_embeddings`={self.tie_word_embeddings!r} is not supported: the "
                "paper's T5 (v1.0) shares the output layer with the input embedding; the untied head is T5 v1.1."
            )
        if not isinstance(self.is_encoder_decoder, bool):
            raise ValueError(f"{type(self).__name__}: `is_encoder_decoder` must be a bool.")
        for name in ("bos_token_id", "eos_token_id", "pad_token_id", "decoder_start_token_id"):
            value = getattr(self, name)
            ids = value if isinstance(value, list) else [value]
            if any(i is not None and not (isinstance(i, int) and 0 <= i < self.vocab_size) for i in ids):
                raise ValueError(
                    f"{type(self).__name__}: `{name}`={value!r} is outside the vocabulary [0, {self.vocab_size - 1}]."
                )

    def get_text_config(self, decoder=None, encoder=None) -> PreTrainedConfig:
        """The decoder's view has ``num_decoder_layers`` layers: generation sizes its caches from it."""
        config = super().get_text_config(decoder=decoder, encoder=encoder)
        if decoder and not encoder and self.num_decoder_layers != self.num_layers:
            config = copy.deepcopy(config) if config is self else config
            config.num_layers = self.num_decoder_layers
        return config


def _named(config: PreTrainedConfig, check, *args) -> None:
    """Run a ``common.check_*`` on a field and name its standard alias too (``num_layers`` is also
    ``num_hidden_layers``), so that the error reads in whichever name the caller used."""
    try:
        check(config, *args)
    except ValueError as err:
        name = args[0] if args else None
        aliases = [
            a for a, target in config.attribute_map.items() if target == name and f"`{a}`" not in str(err)
        ]
        if not aliases:
            raise
        also = ", ".join(f"`{a}`" for a in aliases)
        raise ValueError(f"{err} (`{name}` is also called {also}.)") from None


# §3.7 "Putting it all together", paragraph "Model sizes": d_model, d_ff, d_kv, heads, and layers in
# each of the encoder and decoder. Vocabulary 32,128 as released (the paper's 32,000
# wordpieces rounded up to a multiple of 128, with the 100 sentinels among them).
PRESETS = {
    "t5-small": dict(
        hidden_size=512, intermediate_size=2048, head_dim=64, num_attention_heads=8, num_hidden_layers=6
    ),
    "t5-base": dict(
        hidden_size=768, intermediate_size=3072, head_dim=64, num_attention_heads=12, num_hidden_layers=12
    ),
    "t5-large": dict(
        hidden_size=1024, intermediate_size=4096, head_dim=64, num_attention_heads=16, num_hidden_layers=24
    ),
    "t5-3b": dict(
        hidden_size=1024, intermediate_size=16384, head_dim=128, num_attention_heads=32, num_hidden_layers=24
    ),
    "t5-11b": dict(
        hidden_size=1024, intermediate_size=65536, head_dim=128, num_attention_heads=128, num_hidden_layers=24
    ),
}
# The paper's rounded figures (§3.7: "60 million", "220 million", "770 million", "2.8 billion",
# "11 billion"). Ours equal transformers' T5ForConditionalGeneration exactly (60.5M, 222.9M, 737.7M,
# 2.85B, 11.3B); the paper's "770 million" for T5-Large is 4% above the architecture it describes.
PAPER_PARAMETERS = {"t5-small": 60e6, "t5-base": 220e6, "t5-large": 770e6, "t5-3b": 2.8e9, "t5-11b": 11e9}


# ----------------------------------------------------------------------------------------------
# Modules, in the order the data meets them
# ----------------------------------------------------------------------------------------------


class PaperT5LayerNorm(nn.Module):
    """y = w · x / √(mean(x²) + ε): "the activations are only rescaled and no additive bias is applied" (§2.1).

    No mean subtraction and no bias (a root-mean-square norm). The statistic is accumulated in
    float32 and the result cast back for half-precision weights, as in Mesh TensorFlow.
    """

    def __init__(self, hidden_size: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.variance_epsilon = eps

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        variance = hidden_states.to(torch.float32).pow(2).mean(-1, keepdim=True)
        hidden_states = hidden_states * torch.rsqrt(variance + self.variance_epsilon)
        if self.weight.dtype in (torch.float16, torch.bfloat16):
            hidden_states = hidden_states.to(self.weight.dtype)
        return self.weight * hidden_states


def relative_position_bucket(
    relative_position: torch.Tensor,
    bidirectional: bool = True,
    num_buckets: int = 32,
    max_distance: int = 128,
) -> torch.Tensor:
    """The bucket of each key-minus-query offset (§2.1, after Mesh TensorFlow).

    Bidirectional (encoder): half of the buckets for keys before the query, half for keys after it.
    Causal (decoder): keys after the query cannot be attended to, so they all share bucket 0 with
    offset 0. Within a half, offsets below ``max_exact = buckets/2`` have a bucket each; larger ones
    share buckets whose width grows logarithmically up to ``max_distance``; beyond it, the last one.
    """
    buckets = torch.zeros_like(relative_position)
    if bidirectional:
        num_buckets //= 2
        buckets = buckets + (relative_position > 0).to(relative_position.dtype) * num_buckets
        distance = relative_position.abs()
    else:
        distance = (-relative_position).clamp(min=0)
    max_exact = num_buckets // 2
    is_small = distance < max_exact
    # The same float32 operations, in the same order, as Mesh TensorFlow and transformers.
    scaled = (
        torch.log(distance.float().clamp(min=max_exact) / max_exact)
        / math.log(max_distance / max_exact)
        * (num_buckets - max_exact)
    )
    large = (max_exact + scaled.to(relative_position.dtype)).clamp(max=num_buckets - 1)
    return buckets + torch.where(is_small, distance, large)


class PaperT5Attention(MultiHeadAttention):
    """The shared ``MultiHeadAttention`` (no biases, no 1/√d_kv scaling) plus, in the first layer of a
    stack, the table of relative position scalars (one per bucket and head) and ``compute_bias``."""

    def __init__(
        self,
        config: PaperT5Config,
        *,
        layer_idx: int,
        is_causal: bool,
        is_cross_attention: bool = False,
        has_relative_attention_bias: bool = False,
    ):
        super().__init__(
            config,
            config.d_model,
            config.num_heads,
            config.d_kv,
            layer_idx=layer_idx,
            bias=False,
            is_causal=is_causal,
            is_cross_attention=is_cross_attention,
            dropout=config.dropout_rate,
            scaling=1.0,
        )
        # T5's initialisation (Mesh TF): N(0, fan_in^-1/2) for every projection, and the query's extra
        # d_kv^-1/2 stands in for the logit scaling the paper drops.
        self.q_proj.t5_init_std = (config.d_model * config.d_kv) ** -0.5
        self.has_relative_attention_bias = has_relative_attention_bias
        if has_relative_attention_bias:
            self.relative_attention_bias = nn.Embedding(
                config.relative_attention_num_buckets, config.num_heads
            )
            self.relative_attention_bias.t5_init_std = config.d_model**-0.5

    def compute_bias(self, query_length: int, key_length: int, past_length: int = 0) -> torch.Tensor:
        """(1, heads, query_length, key_length) scalars added to the attention logits; the queries sit
        at positions ``past_length ...`` (decoding with a cache), the keys at ``0 ... key_length-1``."""
        device = self.relative_attention_bias.weight.device
        query_position = torch.arange(query_length, dtype=torch.long, device=device)[:, None] + past_length
        key_position = torch.arange(key_length, dtype=torch.long, device=device)[None, :]
        buckets = relative_position_bucket(
            key_position - query_position,
            bidirectional=not self.is_causal,
            num_buckets=self.config.relative_attention_num_buckets,
            max_distance=self.config.relative_attention_max_distance,
        )
        return self.relative_attention_bias(buckets).permute(2, 0, 1).unsqueeze(0)


class PaperT5DenseActDense(nn.Module):
    """FFN(x) = ReLU(x W_i) W_o, no biases (§2.1), dropout on the hidden activations."""

    def __init__(self, config: PaperT5Config):
        super().__init__()
        self.wi = nn.Linear(config.d_model, config.d_ff, bias=False)
        self.wo = nn.Linear(config.d_ff, config.d_model, bias=False)
        self.dropout = nn.Dropout(config.dropout_rate)
        self.act = ACT2FN[config.feed_forward_proj]

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.wo(self.dropout(self.act(self.wi(hidden_states))))


class PaperT5Sublayer(nn.Module):
    """The pre-LN residual wrapper of every sub-layer: x + Dropout(f(LN(x))) (§2.1)."""

    def __init__(self, config: PaperT5Config):
        super().__init__()
        self.layer_norm = PaperT5LayerNorm(config.d_model, eps=config.layer_norm_epsilon)
        self.dropout = nn.Dropout(config.dropout_rate)


class PaperT5LayerSelfAttention(PaperT5Sublayer):
    """x + Dropout(SelfAttention(LN(x)))."""

    def __init__(
        self, config: PaperT5Config, layer_idx: int, is_decoder: bool, has_relative_attention_bias: bool
    ):
        super().__init__(config)
        self.SelfAttention = PaperT5Attention(
            config,
            layer_idx=layer_idx,
            is_causal=is_decoder,
            has_relative_attention_bias=has_relative_attention_bias,
        )

    def forward(self, hidden_states, attention_mask=None, past_key_values=None, **kwargs):
        output, weights = self.SelfAttention(
            self.layer_norm(hidden_states),
            attention_mask=attention_mask,
            past_key_values=past_key_values,
            **kwargs,
        )
        return hidden_states + self.dropout(output), weights


class PaperT5LayerCrossAttention(PaperT5Sublayer):
    """x + Dropout(EncDecAttention(LN(x), encoder states)); cross-attention has no position bias."""

    def __init__(self, config: PaperT5Config, layer_idx: int):
        super().__init__(config)
        self.EncDecAttention = PaperT5Attention(
            config, layer_idx=layer_idx, is_causal=False, is_cross_attention=True
        )

    def forward(self, hidden_states, key_value_states, attention_mask=None, past_key_values=None, **kwargs):
        output, weights = self.EncDecAttention(
            self.layer_norm(hidden_states),
            key_value_states=key_value_states,
            attention_mask=attention_mask,
            past_key_values=past_key_values,
            **kwargs,
        )
        return hidden_states + self.dropout(output), weights


class PaperT5LayerFF(PaperT5Sublayer):
    """x + Dropout(FFN(LN(x))). ``feed_forward`` is any module mapping (b, n, d) -> (b, n, d); the
    default is T5's ReLU network. (Switch Transformers swaps the whole sub-layer, through
    ``PaperT5Block.make_feed_forward_layer``, for one that names its FFN ``mlp`` as transformers does.)"""

    def __init__(self, config: PaperT5Config, feed_forward: nn.Module | None = None):
        super().__init__(config)
        self.DenseReluDense = feed_forward if feed_forward is not None else PaperT5DenseActDense(config)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return hidden_states + self.dropout(self.DenseReluDense(self.layer_norm(hidden_states)))


class PaperT5Block(GradientCheckpointingLayer):
    """One encoder layer (self-attention, FFN) or decoder layer (self-attention, cross-attention, FFN).

    ``layer[0]`` of the first block owns the stack's relative position table. Returns
    ``(hidden_states, self-attention weights, cross-attention weights)``.
    """

    def __init__(
        self,
        config: PaperT5Config,
        layer_idx: int,
        is_decoder: bool,
        has_relative_attention_bias: bool = False,
    ):
        super().__init__()
        self.is_decoder = is_decoder
        self.layer = nn.ModuleList(
            [PaperT5LayerSelfAttention(config, layer_idx, is_decoder, has_relative_attention_bias)]
        )
        if is_decoder:
            self.layer.append(PaperT5LayerCrossAttention(config, layer_idx))
        self.layer.append(self.make_feed_forward_layer(config, layer_idx))

    def make_feed_forward(self, config: PaperT5Config, layer_idx: int) -> nn.Module:
        """The feed-forward network of this layer (override to swap it, e.g. for a Switch layer)."""
        return PaperT5DenseActDense(config)

    def make_feed_forward_layer(self, config: PaperT5Config, layer_idx: int) -> nn.Module:
        """The residual feed-forward sub-layer, ``layer[-1]`` (override to rename or rewrap it)."""
        return PaperT5LayerFF(config, self.make_feed_forward(config, layer_idx))

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        encoder_hidden_states: torch.Tensor | None = None,
        encoder_attention_mask: torch.Tensor | None = None,
        past_key_values: Cache | None = None,
        **kwargs,
    ):
        hidden_states, self_weights = self.layer[0](hidden_states, attention_mask, past_key_values, **kwargs)
        cross_weights = None
        if self.is_decoder and encoder_hidden_states is not None:
            hidden_states, cross_weights = self.layer[1](
                hidden_states, encoder_hidden_states, encoder_attention_mask, past_key_values, **kwargs
            )
        hidden_states = self.layer[-1](hidden_states)
        return hidden_states, self_weights, cross_weights


def _add_position_bias(bias: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """One additive float mask: the position bias where attention is allowed, the dtype's minimum
    where it is not (``mask`` is transformers' boolean keep-mask for SDPA, or its additive float mask
    for eager attention)."""
    if mask is None:
        return bias
    if mask.dtype == torch.bool:
        return torch.where(mask, bias, torch.finfo(bias.dtype).min)
    return bias + mask.to(bias.dtype)


class PaperT5Stack(nn.Module):
    """Embed, dropout, the blocks (position bias computed once, by the first), final norm, dropout."""

    main_input_name = "input_ids"

    def __init__(self, config: PaperT5Config, embed_tokens: nn.Embedding, is_decoder: bool):
        super().__init__()
        self.config = config
        self.is_decoder = is_decoder
        self.embed_tokens = embed_tokens  # the model's `shared` embedding, the same module
        num_layers = config.num_decoder_layers if is_decoder else config.num_layers
        self.block = nn.ModuleList([self.make_block(config, i, is_decoder) for i in range(num_layers)])
        self.final_layer_norm = PaperT5LayerNorm(config.d_model, eps=config.layer_norm_epsilon)
        self.dropout = nn.Dropout(config.dropout_rate)
        self.gradient_checkpointing = False

    def make_block(self, config: PaperT5Config, layer_idx: int, is_decoder: bool) -> PaperT5Block:
        """Block ``layer_idx`` (override to build other blocks on T5's, e.g. Switch layers)."""
        return PaperT5Block(config, layer_idx, is_decoder, has_relative_attention_bias=layer_idx == 0)

    def get_input_embeddings(self):
        return self.embed_tokens

    def set_input_embeddings(self, new_embeddings):
        self.embed_tokens = new_embeddings

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        encoder_hidden_states: torch.Tensor | None = None,
        encoder_attention_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        past_key_values: Cache | None = None,
        use_cache: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPastAndCrossAttentions:
        config = self.config
        which = "decoder_input_ids" if self.is_decoder else "input_ids"
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError(f"Pass exactly one of `{which}` or its embeddings.")
        output_attentions = config.output_attentions if output_attentions is None else output_attentions
        output_hidden_states = (
            config.output_hidden_states if output_hidden_states is None else output_hidden_states
        )
        if not self.is_decoder:
            past_key_values = None  # the encoder never caches
        elif isinstance(past_key_values, Cache) and not isinstance(past_key_values, EncoderDecoderCache):
            past_key_values = EncoderDecoderCache(
                past_key_values, DynamicCache(config=config.get_text_config(decoder=True))
            )
        self_cache = past_key_values.self_attention_cache if past_key_values is not None else None
        past_length = self_cache.get_seq_length() if self_cache is not None else 0

        shape = input_ids.shape if input_ids is not None else inputs_embeds.shape[:-1]
        if len(shape) != 2:
            raise ValueError(f"Expected `{which}` of shape (batch, sequence), got {tuple(shape)}.")
        check_input_ids(input_ids, config.vocab_size, which)
        if config.max_position_embeddings is not None:
            check_length(
                past_length + shape[1],
                config.max_position_embeddings,
                "decoder sequence" if self.is_decoder else "input",
            )
        check_attention_mask(attention_mask, shape[0], past_length + shape[1])
        if encoder_hidden_states is not None and encoder_attention_mask is not None:
            if encoder_attention_mask.dim() == 2 and not torch.compiler.is_compiling():
                expected = tuple(encoder_hidden_states.shape[:2])
                if tuple(encoder_attention_mask.shape) != expected:
                    raise ValueError(
                        f"`attention_mask` has shape {tuple(encoder_attention_mask.shape)}, but the encoder "
                        f"output is {expected} (batch size, input tokens)."
                    )

        if inputs_embeds is None:
            inputs_embeds = self.embed_tokens(input_ids)
        hidden_states = self.dropout(inputs_embeds)

        # Masks from transformers' helpers (a boolean keep-mask for SDPA, an additive one for eager),
        # then the relative position bias of the first layer added in, once for every layer.
        if self.is_decoder:
            mask = create_causal_mask(
                config=config,
                inputs_embeds=inputs_embeds,
                attention_mask=attention_mask,
                allow_is_causal_skip=False,
                **cache_mask_kwargs(self_cache),
            )
        else:
            mask = create_bidirectional_mask(
                config=config, inputs_embeds=inputs_embeds, attention_mask=attention_mask
            )
        first_attention = self.block[0].layer[0].SelfAttention
        bias = first_attention.compute_bias(shape[1], past_length + shape[1], past_length)
        self_mask = _add_position_bias(bias.to(inputs_embeds.dtype), mask)
        cross_mask = None
        if self.is_decoder and encoder_hidden_states is not None:
            cross_mask = create_bidirectional_mask(
                config=config,
                inputs_embeds=inputs_embeds,
                attention_mask=encoder_attention_mask,
                encoder_hidden_states=encoder_hidden_states,
            )

        all_hidden, all_self, all_cross = (), (), ()
        for block in self.block:
            if output_hidden_states:
                all_hidden += (hidden_states,)
            hidden_states, self_weights, cross_weights = block(
                hidden_states,
                self_mask,
                encoder_hidden_states,
                cross_mask,
                past_key_values=past_key_values,
                **kwargs,
            )
            if output_attentions:
                all_self += (self_weights,)
                if self.is_decoder:
                    all_cross += (cross_weights,)
        hidden_states = self.dropout(self.final_layer_norm(hidden_states))
        if output_hidden_states:
            all_hidden += (hidden_states,)
        return BaseModelOutputWithPastAndCrossAttentions(
            last_hidden_state=hidden_states,
            past_key_values=past_key_values,
            hidden_states=all_hidden or None,
            attentions=all_self or None,
            cross_attentions=all_cross or None,
        )


# ----------------------------------------------------------------------------------------------
# Models
# ----------------------------------------------------------------------------------------------


class PaperT5PreTrainedModel(PaperPreTrainedModel):
    config_class = PaperT5Config
    base_model_prefix = "transformer"
    supports_gradient_checkpointing = True
    _no_split_modules = ["PaperT5Block"]
    _skip_keys_device_placement = ["past_key_values"]
    _supports_sdpa = True
    _supports_flash_attn = False  # the position bias is an additive mask: SDPA's math/efficient kernels
    _supports_flex_attn = False
    _can_compile_fullgraph = True
    # Older transformers checkpoints carry an unused position table in the decoder's cross-attention.
    _keys_to_ignore_on_load_unexpected = [
        r"decoder\.block\.0\.layer\.1\.EncDecAttention\.relative_attention_bias"
    ]
    stack_class = PaperT5Stack  # the encoder and decoder stacks (Switch Transformers swaps in its own)

    @torch.no_grad()
    def _init_weights(self, module):
        """Mesh TensorFlow's initialisation, scaled by ``initializer_factor``: N(0, 1) embeddings,
        N(0, fan_in^-1/2) projections (queries N(0, (d_model·d_kv)^-1/2)), unit norms.

        The standard deviation sits on each leaf module (``t5_init_std``), so that the rule also
        holds where transformers initialises leaves only (remote code)."""
        factor = self.config.initializer_factor
        if isinstance(module, PaperT5LayerNorm):
            init.constant_(module.weight, factor * 1.0)
        elif isinstance(module, nn.Linear):
            std = getattr(module, "t5_init_std", module.in_features**-0.5)
            init.normal_(module.weight, mean=0.0, std=factor * std)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            init.normal_(module.weight, mean=0.0, std=factor * getattr(module, "t5_init_std", 1.0))
        else:
            super()._init_weights(module)

    def _shift_right(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Decoder inputs from targets: start token first, targets shifted right, -100 -> pad."""
        return shift_right(input_ids, self.config.decoder_start_token_id, self.config.pad_token_id)

    def _make_cache(self, past_key_values, use_cache: bool):
        if self.decoder.gradient_checkpointing and self.training:
            use_cache = False
        if use_cache and past_key_values is None:
            decoder_config = self.config.get_text_config(decoder=True)
            past_key_values = EncoderDecoderCache(
                DynamicCache(config=decoder_config), DynamicCache(config=decoder_config)
            )
        return past_key_values if use_cache else None


def shift_right(
    input_ids: torch.Tensor, decoder_start_token_id: int | None, pad_token_id: int | None
) -> torch.Tensor:
    """Teacher forcing: the decoder reads ``[start] y_1 … y_{n-1}`` to predict ``y_1 … y_n``."""
    if decoder_start_token_id is None or pad_token_id is None:
        raise ValueError(
            "`decoder_start_token_id` and `pad_token_id` must be set to build decoder inputs from labels."
        )
    shifted = input_ids.new_zeros(input_ids.shape)
    shifted[..., 1:] = input_ids[..., :-1].clone()
    shifted[..., 0] = decoder_start_token_id
    return shifted.masked_fill(shifted == -100, pad_token_id)


def _check_labels(labels: torch.Tensor | None, vocab_size: int) -> None:
    if labels is None or torch.compiler.is_compiling() or labels.numel() == 0:
        return
    bad = labels[(labels != -100) & ((labels < 0) | (labels >= vocab_size))]
    if bad.numel():
        raise ValueError(
            f"`labels` contains id {int(bad[0])}, outside the vocabulary [0, {vocab_size - 1}] (use -100 to ignore)."
        )


def _as_encoder_output(encoder_outputs) -> BaseModelOutput:
    if isinstance(encoder_outputs, BaseModelOutput):
        return encoder_outputs
    return BaseModelOutput(
        last_hidden_state=encoder_outputs[0],
        hidden_states=encoder_outputs[1] if len(encoder_outputs) > 1 else None,
        attentions=encoder_outputs[2] if len(encoder_outputs) > 2 else None,
    )


class PaperT5Model(PaperT5PreTrainedModel):
    """Encoder-decoder without a head: returns the decoder's last hidden states."""

    _tied_weights_keys = {
        "encoder.embed_tokens.weight": "shared.weight",
        "decoder.embed_tokens.weight": "shared.weight",
    }

    def __init__(self, config: PaperT5Config):
        super().__init__(config)
        self.shared = nn.Embedding(config.vocab_size, config.d_model)
        self.encoder = self.stack_class(self.config, self.shared, is_decoder=False)
        self.decoder = self.stack_class(self.config, self.shared, is_decoder=True)
        self.post_init()

    def get_input_embeddings(self):
        return self.shared

    def set_input_embeddings(self, new_embeddings):
        self.shared = new_embeddings
        self.encoder.set_input_embeddings(new_embeddings)
        self.decoder.set_input_embeddings(new_embeddings)

    def get_encoder(self, modality=None):
        return self.encoder

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        decoder_input_ids: torch.LongTensor | None = None,
        decoder_attention_mask: torch.Tensor | None = None,
        encoder_outputs=None,
        past_key_values: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        decoder_inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> Seq2SeqModelOutput:
        use_cache = self.config.use_cache if use_cache is None else use_cache
        if encoder_outputs is None:
            encoder_outputs = self.encoder(
                input_ids,
                attention_mask,
                inputs_embeds=inputs_embeds,
                output_attentions=output_attentions,
                output_hidden_states=output_hidden_states,
                **kwargs,
            )
        encoder_outputs = _as_encoder_output(encoder_outputs)
        if decoder_input_ids is None and decoder_inputs_embeds is None:
            raise ValueError("PaperT5Model needs `decoder_input_ids` (or `decoder_inputs_embeds`).")
        decoder_outputs = self.decoder(
            decoder_input_ids,
            decoder_attention_mask,
            encoder_hidden_states=encoder_outputs.last_hidden_state,
            encoder_attention_mask=attention_mask,
            inputs_embeds=decoder_inputs_embeds,
            past_key_values=self._make_cache(past_key_values, use_cache),
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            **kwargs,
        )
        return Seq2SeqModelOutput(
            last_hidden_state=decoder_outputs.last_hidden_state,
            past_key_values=decoder_outputs.past_key_values if use_cache else None,
            decoder_hidden_states=decoder_outputs.hidden_states,
            decoder_attentions=decoder_outputs.attentions,
            cross_attentions=decoder_outputs.cross_attentions,
            encoder_last_hidden_state=encoder_outputs.last_hidden_state,
            encoder_hidden_states=encoder_outputs.hidden_states,
            encoder_attentions=encoder_outputs.attentions,
        )


class PaperT5ForConditionalGeneration(PaperT5PreTrainedModel, GenerationMixin):
    """T5 with its tied LM head: logits = (d_model^-0.5 · decoder output) Eᵀ; loss = token cross-entropy
    over ``labels`` (-100 ignored), the decoder reading the labels shifted right."""

    _tied_weights_keys = {
        "encoder.embed_tokens.weight": "shared.weight",
        "decoder.embed_tokens.weight": "shared.weight",
        "lm_head.weight": "shared.weight",
    }

    def __init__(self, config: PaperT5Config):
        super().__init__(config)
        self.model_dim = config.d_model
        self.shared = nn.Embedding(config.vocab_size, config.d_model)
        self.encoder = self.stack_class(self.config, self.shared, is_decoder=False)
        self.decoder = self.stack_class(self.config, self.shared, is_decoder=True)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        self.lm_head.t5_init_std = 1.0  # it is the embedding matrix
        self.post_init()

    def get_input_embeddings(self):
        return self.shared

    def set_input_embeddings(self, new_embeddings):
        self.shared = new_embeddings
        self.encoder.set_input_embeddings(new_embeddings)
        self.decoder.set_input_embeddings(new_embeddings)

    def get_output_embeddings(self):
        return self.lm_head

    def set_output_embeddings(self, new_embeddings):
        self.lm_head = new_embeddings

    def get_encoder(self, modality=None):
        return self.encoder

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        decoder_input_ids: torch.LongTensor | None = None,
        decoder_attention_mask: torch.Tensor | None = None,
        encoder_outputs=None,
        past_key_values: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        decoder_inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        **kwargs,
    ) -> Seq2SeqLMOutput:
        use_cache = self.config.use_cache if use_cache is None and labels is None else bool(use_cache)
        if encoder_outputs is None:
            encoder_outputs = self.encoder(
                input_ids,
                attention_mask,
                inputs_embeds=inputs_embeds,
                output_attentions=output_attentions,
                output_hidden_states=output_hidden_states,
                **kwargs,
            )
        encoder_outputs = _as_encoder_output(encoder_outputs)
        _check_labels(labels, self.config.vocab_size)
        if labels is not None and decoder_input_ids is None and decoder_inputs_embeds is None:
            decoder_input_ids = self._shift_right(labels)
        if decoder_input_ids is None and decoder_inputs_embeds is None:
            raise ValueError("Pass `labels` or `decoder_input_ids` (or use `generate`).")
        decoder_outputs = self.decoder(
            decoder_input_ids,
            decoder_attention_mask,
            encoder_hidden_states=encoder_outputs.last_hidden_state,
            encoder_attention_mask=attention_mask,
            inputs_embeds=decoder_inputs_embeds,
            past_key_values=self._make_cache(past_key_values, use_cache),
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            **kwargs,
        )
        hidden_states = decoder_outputs.last_hidden_state
        keep = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
        # The tied output layer reads the decoder output rescaled by d_model^-0.5 (Mesh TF's T5).
        logits = self.lm_head(hidden_states[:, keep, :] * self.model_dim**-0.5)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(
                logits.float().reshape(-1, logits.shape[-1]),
                labels.to(logits.device).reshape(-1),
                ignore_index=-100,
            )
        return Seq2SeqLMOutput(
            loss=loss,
            logits=logits,
            past_key_values=decoder_outputs.past_key_values if use_cache else None,
            decoder_hidden_states=decoder_outputs.hidden_states,
            decoder_attentions=decoder_outputs.attentions,
            cross_attentions=decoder_outputs.cross_attentions,
            encoder_last_hidden_state=encoder_outputs.last_hidden_state,
            encoder_hidden_states=encoder_outputs.hidden_states,
            encoder_attentions=encoder_outputs.attentions,
        )

    def prepare_decoder_input_ids_from_labels(self, labels: torch.Tensor) -> torch.Tensor:
        return self._shift_right(labels)


class PaperT5EncoderModel(PaperT5PreTrainedModel):
    """The encoder alone (for embeddings or encoder-only fine-tuning); returns its hidden states."""

    _tied_weights_keys = {"encoder.embed_tokens.weight": "shared.weight"}
    _keys_to_ignore_on_load_unexpected = [r"decoder\.", r"lm_head\."]

    def __init__(self, config: PaperT5Config):
        super().__init__(config)
        self.shared = nn.Embedding(config.vocab_size, config.d_model)
        self.encoder = self.stack_class(self.config, self.shared, is_decoder=False)
        self.post_init()

    def get_input_embeddings(self):
        return self.shared

    def set_input_embeddings(self, new_embeddings):
        self.shared = new_embeddings
        self.encoder.set_input_embeddings(new_embeddings)

    def get_encoder(self, modality=None):
        return self.encoder

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> BaseModelOutput:
        out = self.encoder(
            input_ids,
            attention_mask,
            inputs_embeds=inputs_embeds,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            **kwargs,
        )
        return BaseModelOutput(
            last_hidden_state=out.last_hidden_state,
            hidden_states=out.hidden_states,
            attentions=out.attentions,
        )


# The Auto classes this paper registers with (ZOO.md §2); also marks them for Hub export.
AUTO_CLASSES = {
    "AutoModel": PaperT5Model,
    "AutoModelForSeq2SeqLM": PaperT5ForConditionalGeneration,
}
register_for_auto_classes(PaperT5Config, AUTO_CLASSES)

__all__ = [
    "PaperT5Config",
    "PaperT5Model",
    "PaperT5ForConditionalGeneration",
    "PaperT5EncoderModel",
    "PaperT5PreTrainedModel",
    "PaperT5Stack",
    "PaperT5Block",
    "PaperT5Sublayer",
    "PaperT5LayerSelfAttention",
    "PaperT5LayerCrossAttention",
    "PaperT5LayerFF",
    "PaperT5DenseActDense",
    "PaperT5Attention",
    "PaperT5LayerNorm",
    "relative_position_bucket",
    "shift_right",
]
