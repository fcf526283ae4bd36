"""The Transformer — Vaswani, Shazeer, Parmar, Uszkoreit, Jones, Gomez, Kaiser & Polosukhin (2017),
"Attention Is All You Need".

An encoder-decoder built from attention and position-wise feed-forward layers only (§3):

- token embeddings multiplied by √d_model (§3.4) plus fixed sinusoidal position encodings (§3.5),
  dropout on their sum (§5.4);
- N encoder layers, each LayerNorm(x + Dropout(SelfAttention(x))) then
  LayerNorm(x + Dropout(FFN(x))) — post-LN residual sub-layers (§3.1), FFN(x) = max(0, xW1 + b1)W2 + b2
  (§3.3);
- N decoder layers: causal self-attention, attention over the encoder output, FFN, each post-LN;
- one weight matrix shared by the source embedding, the target embedding and the pre-softmax linear
  transformation (§3.4), so the output layer is the embedding transpose.

Module names follow transformers' ``MarianMTModel`` (post-LN, sinusoidal: the same architecture), so
``hf_paper_models.conversions.marian`` converts by name. The two differ in the layout of the sinusoid
table (the paper interleaves sin/cos, Marian puts all sines first); the converter permutes the model
width to match.

Decoding (§6.1): beam search with beam 4 and length penalty α = 0.6 [GNMT, Wu et al. 2016], maximum
output length input length + 50. These are the defaults of the generation config the model writes;
the length penalty is GNMT's lp(Y) = ((5 + |Y|) / 6)^α (see ``length_penalty_formula``).

Hub-exportable: standard library, ``torch``, ``transformers`` and sibling modules only.
"""

from __future__ import annotations

import inspect
import math

import torch
from torch import nn
from transformers import GenerationMixin, PreTrainedConfig
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.cache_utils import Cache, DynamicCache, EncoderDecoderCache
from transformers.loss.loss_utils import ForMaskedLMLoss
from transformers.masking_utils import create_bidirectional_mask, create_causal_mask
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import (
    BaseModelOutput,
    BaseModelOutputWithPastAndCrossAttentions,
    Seq2SeqLMOutput,
    Seq2SeqModelOutput,
)
from transformers.optimization import get_inverse_sqrt_schedule

from .attention import MultiHeadAttention
from .common import (
    PaperPreTrainedModel,
    cache_mask_kwargs,
    check_activation,
    check_attention_mask,
    check_choice,
    check_heads,
    check_input_ids,
    check_int,
    check_length,
    check_positive_float,
    check_probability,
    register_for_auto_classes,
)

#: §6.1: "We set the maximum output length during inference to input length + 50".
MAX_OUTPUT_LENGTH_OFFSET = 50
LENGTH_PENALTY_FORMULAS = ("gnmt", "power")


class PaperTransformerConfig(PreTrainedConfig):
    """Transformer hyper-parameters. Defaults are the base model of Table 3 (65M in the paper).

    ``num_hidden_layers`` (the paper's N) sets both ``encoder_layers`` and ``decoder_layers`` unless
    they are given. ``dropout`` is the paper's P_drop (residual and embedding dropout, §5.4);
    ``attention_dropout`` is 0 as in the paper. ``label_smoothing`` (ε_ls = 0.1, §5.4) is stored for
    the training recipe; the model's own ``loss`` is the plain cross-entropy (its exponential is the
    perplexity the paper reports). ``length_penalty_formula`` picks how beam search normalises scores:
    ``"gnmt"`` — log P(Y|X) / ((5 + |Y|) / 6)^α, the paper's reference [GNMT] — or ``"power"`` —
    transformers' log P(Y|X) / |Y|^α. α is ``generation_config.length_penalty`` (0.6, §6.1).
    ``add_final_logits_bias`` adds a (non-trained) output bias buffer: the paper has none; transformers'
    Marian checkpoints carry one (``final_logits_bias``), so converted Marian models keep it.
    """

    model_type = "paper-transformer"
    keys_to_ignore_at_inference = ["past_key_values"]
    attribute_map = {
        "d_model": "hidden_size",
        "d_ff": "intermediate_size",
        "h": "num_attention_heads",
        "N": "num_hidden_layers",
        "P_drop": "dropout",
        "epsilon_ls": "label_smoothing",
        "attn_pdrop": "attention_dropout",
        "n_positions": "max_position_embeddings",
        "layer_norm_epsilon": "layer_norm_eps",
        "initializer_range": "init_std",
    }

    vocab_size: int = 37000
    hidden_size: int = 512
    num_hidden_layers: int = 6
    encoder_layers: int | None = None
    decoder_layers: int | None = None
    num_attention_heads: int = 8
    intermediate_size: int = 2048
    activation_function: str = "relu"
    dropout: float = 0.1
    attention_dropout: float = 0.0
    max_position_embeddings: int = 512
    init_std: float | None = None
    layer_norm_eps: float = 1e-5
    scale_embedding: bool = True
    share_embeddings: bool = True
    tie_word_embeddings: bool = True
    add_final_logits_bias: bool = False
    label_smoothing: float = 0.1
    length_penalty_formula: str = "gnmt"
    use_cache: bool = True
    is_encoder_decoder: bool = True
    pad_token_id: int | None = 0
    bos_token_id: int | None = 1
    eos_token_id: int | list[int] | None = 2
    decoder_start_token_id: int | None = None

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)  # sets the paper's alias names (d_model, h, N, ...) first
        check_heads(self)
        check_int(self, "num_hidden_layers")
        for name in ("encoder_layers", "decoder_layers"):
            if getattr(self, name) is None:
                setattr(self, name, self.num_hidden_layers)
            check_int(self, name)
        for name in ("vocab_size", "intermediate_size", "max_position_embeddings"):
            check_int(self, name)
        check_probability(self, "dropout")
        if isinstance(self.attention_dropout, bool) or not (
            isinstance(self.attention_dropout, (int, float)) and 0.0 <= self.attention_dropout < 1.0
        ):
            raise ValueError(
                f"{type(self).__name__}: `attention_dropout` (alias `attn_pdrop`) must be a probability in "
                f"[0, 1), got {self.attention_dropout!r}."
            )
        check_probability(self, "label_smoothing")
        check_positive_float(self, "layer_norm_eps")
        if self.init_std is not None:
            check_positive_float(self, "init_std")
        check_activation(self, "activation_function")
        check_choice(self, "length_penalty_formula", LENGTH_PENALTY_FORMULAS)
        if not self.tie_word_embeddings:
            raise ValueError(
                f"{type(self).__name__}: `tie_word_embeddings`=False is not supported: the paper's "
                "pre-softmax linear transformation is the (target) embedding matrix (§3.4)."
            )
        if self.decoder_start_token_id is None:
            self.decoder_start_token_id = self.bos_token_id
        for name in ("bos_token_id", "eos_token_id", "pad_token_id", "decoder_start_token_id"):
            value = getattr(self, name)
            ids = value if isinstance(value, list) else [value]
            if any(i is not None and not 0 <= i < self.vocab_size for i in ids):
                raise ValueError(
                    f"{type(self).__name__}: `{name}`={value!r} is outside the vocabulary "
                    f"[0, {self.vocab_size - 1}]."
                )


# Table 3 of the paper (N, d_model, d_ff, h, P_drop) with the shared ~37,000-token BPE vocabulary of
# WMT 2014 English-German (§5.1). The big model's English-French run used P_drop = 0.1 (§6.1).
PRESETS = {
    "transformer-base": dict(
        vocab_size=37000, num_hidden_layers=6, hidden_size=512, intermediate_size=2048,
        num_attention_heads=8, dropout=0.1,
    ),
    "transformer-big": dict(
        vocab_size=37000, num_hidden_layers=6, hidden_size=1024, intermediate_size=4096,
        num_attention_heads=16, dropout=0.3,
    ),
}  # fmt: skip
# Table 3's "params ×10^6" column. With the paper's own hyper-parameters the architecture has 63.08M
# (base) and 214.25M (big) parameters — the base figure of 65M is not reproducible from the stated
# sizes (see the model card); ours are exact counts of the architecture described.
PAPER_PARAMETERS = {"transformer-base": 65e6, "transformer-big": 213e6}


# ----------------------------------------------------------------------------------------------
# Positions, learning-rate schedule
# ----------------------------------------------------------------------------------------------


def sinusoid_table(num_positions: int, dim: int) -> torch.Tensor:
    """§3.5: PE(pos, 2i) = sin(pos / 10000^(2i/d)), PE(pos, 2i+1) = cos(pos / 10000^(2i/d)).

    Computed in float64 and returned as float32, (num_positions, dim).
    """
    position = torch.arange(num_positions, dtype=torch.float64)[:, None]
    even = torch.arange(0, dim, 2, dtype=torch.float64)  # the 2i of the formula
    angle = position / torch.pow(10000.0, even / dim)
    table = torch.zeros(num_positions, dim, dtype=torch.float64)
    table[:, 0::2] = torch.sin(angle)
    table[:, 1::2] = torch.cos(angle[:, : dim // 2])
    return table.float()


class PaperTransformerSinusoidalPositions(nn.Module):
    """The fixed position encodings of §3.5: a table (not parameters), looked up by position id."""

    def __init__(self, num_positions: int, dim: int):
        super().__init__()
        self.num_positions, self.dim = num_positions, dim
        self.register_buffer("table", sinusoid_table(num_positions, dim), persistent=False)

    def forward(self, position_ids: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
        return self.table[position_ids].to(dtype or self.table.dtype)


def learning_rate_schedule(
    optimizer: torch.optim.Optimizer, d_model: int, warmup_steps: int = 4000, scale: float = 1.0
) -> torch.optim.lr_scheduler.LambdaLR:
    """§5.3: lrate = d_model^-0.5 · min(step^-0.5, step · warmup_steps^-1.5), times ``scale``.

    This is exactly transformers' inverse-square-root schedule (linear warm-up to the peak, then
    ∝ step^-0.5) with the peak learning rate d_model^-0.5 · warmup_steps^-0.5, which this function
    writes into the optimizer's parameter groups. After ``s`` scheduler steps the learning rate is the
    paper's lrate at step_num = s.
    """
    if isinstance(warmup_steps, bool) or not isinstance(warmup_steps, int) or warmup_steps < 1:
        raise ValueError(f"`warmup_steps` must be an integer >= 1, got {warmup_steps!r}.")
    for group in optimizer.param_groups:
        group["lr"] = scale * d_model**-0.5 * warmup_steps**-0.5
    return get_inverse_sqrt_schedule(optimizer, num_warmup_steps=warmup_steps)


def label_smoothed_cross_entropy(
    logits: torch.Tensor, labels: torch.Tensor, epsilon: float = 0.1, ignore_index: int = -100
) -> torch.Tensor:
    """§5.4 label smoothing of value ε_ls (Szegedy et al. 2016): the cross-entropy against the target
    distribution (1 - ε)·one_hot(y) + ε/K over all K classes, averaged over the tokens whose label is not
    ``ignore_index``. Computed in float32 with torch's ``cross_entropy(label_smoothing=ε)``, which is
    that formula (and the one of ``Trainer``'s ``label_smoothing_factor``)."""
    return nn.functional.cross_entropy(
        logits.float().reshape(-1, logits.shape[-1]),
        labels.reshape(-1).to(logits.device),
        ignore_index=ignore_index,
        label_smoothing=epsilon,
    )


def shift_tokens_right(labels: torch.Tensor, pad_token_id: int | None, decoder_start_token_id: int | None):
    """Decoder inputs are the targets "offset by one position" (§3.1): start token, then labels[:-1]."""
    if decoder_start_token_id is None:
        raise ValueError("`decoder_start_token_id` (or `bos_token_id`) must be set to shift labels right.")
    if pad_token_id is None:
        raise ValueError(
            "`pad_token_id` must be set to replace the ignored (-100) labels when shifting them."
        )
    shifted = labels.new_full(labels.shape, decoder_start_token_id)
    shifted[:, 1:] = labels[:, :-1]
    return shifted.masked_fill(shifted == -100, pad_token_id)


# ----------------------------------------------------------------------------------------------
# Layers
# ----------------------------------------------------------------------------------------------


class PaperTransformerEncoderLayer(GradientCheckpointingLayer):
    """LayerNorm(x + Dropout(SelfAttention(x))), then LayerNorm(x + Dropout(FFN(x))) (§3.1, §5.4)."""

    def __init__(self, config: PaperTransformerConfig):
        super().__init__()
        d = config.hidden_size
        self.self_attn = MultiHeadAttention(
            config, d, config.num_attention_heads, dropout=config.attention_dropout
        )
        self.self_attn_layer_norm = nn.LayerNorm(d, eps=config.layer_norm_eps)
        self.fc1 = nn.Linear(d, config.intermediate_size)
        self.activation_fn = ACT2FN[config.activation_function]
        self.fc2 = nn.Linear(config.intermediate_size, d)
        self.final_layer_norm = nn.LayerNorm(d, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, hidden_states, attention_mask=None, **kwargs):
        attn_output, weights = self.self_attn(hidden_states, attention_mask=attention_mask)
        hidden_states = self.self_attn_layer_norm(hidden_states + self.dropout(attn_output))
        ffn_output = self.fc2(self.activation_fn(self.fc1(hidden_states)))  # max(0, xW1 + b1)W2 + b2 (§3.3)
        hidden_states = self.final_layer_norm(hidden_states + self.dropout(ffn_output))
        return hidden_states, weights


class PaperTransformerDecoderLayer(GradientCheckpointingLayer):
    """Causal self-attention, encoder-decoder attention, FFN; each LayerNorm(x + Dropout(Sublayer(x)))."""

    def __init__(self, config: PaperTransformerConfig, layer_idx: int):
        super().__init__()
        d, h = config.hidden_size, config.num_attention_heads
        self.self_attn = MultiHeadAttention(
            config, d, h, layer_idx=layer_idx, is_causal=True, dropout=config.attention_dropout
        )
        self.self_attn_layer_norm = nn.LayerNorm(d, eps=config.layer_norm_eps)
        self.encoder_attn = MultiHeadAttention(
            config, d, h, layer_idx=layer_idx, is_cross_attention=True, dropout=config.attention_dropout
        )
        self.encoder_attn_layer_norm = nn.LayerNorm(d, eps=config.layer_norm_eps)
        self.fc1 = nn.Linear(d, config.intermediate_size)
        self.activation_fn = ACT2FN[config.activation_function]
        self.fc2 = nn.Linear(config.intermediate_size, d)
        self.final_layer_norm = nn.LayerNorm(d, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.dropout)

    def forward(
        self,
        hidden_states,
        attention_mask=None,
        encoder_hidden_states=None,  # positional, so that gradient checkpointing passes its gradient
        encoder_attention_mask=None,
        past_key_values=None,
        **kwargs,
    ):
        attn_output, self_weights = self.self_attn(
            hidden_states, attention_mask=attention_mask, past_key_values=past_key_values
        )
        hidden_states = self.self_attn_layer_norm(hidden_states + self.dropout(attn_output))
        attn_output, cross_weights = self.encoder_attn(
            hidden_states,
            key_value_states=encoder_hidden_states,
            attention_mask=encoder_attention_mask,
            past_key_values=past_key_values,
        )
        hidden_states = self.encoder_attn_layer_norm(hidden_states + self.dropout(attn_output))
        ffn_output = self.fc2(self.activation_fn(self.fc1(hidden_states)))
        hidden_states = self.final_layer_norm(hidden_states + self.dropout(ffn_output))
        return hidden_states, self_weights, cross_weights


# ----------------------------------------------------------------------------------------------
# Models
# ----------------------------------------------------------------------------------------------


class PaperTransformerPreTrainedModel(PaperPreTrainedModel):
    config_class = PaperTransformerConfig
    base_model_prefix = "model"
    main_input_name = "input_ids"
    supports_gradient_checkpointing = True
    _no_split_modules = ["PaperTransformerEncoderLayer", "PaperTransformerDecoderLayer"]
    _skip_keys_device_placement = ["past_key_values"]
    _supports_sdpa = True
    _supports_flash_attn = False
    _supports_flex_attn = False
    _supports_attention_backend = True
    _can_compile_fullgraph = True

    @torch.no_grad()
    def _init_weights(self, module):
        """The reference implementation's initialisation (the paper gives none): Glorot-uniform linear
        layers with zero biases, embeddings N(0, d_model^-0.5) so that √d_model-scaled embeddings start
        at unit variance (tensor2tensor), LayerNorm gains 1 and biases 0; positions from §3.5."""
        config = self.config
        if isinstance(module, nn.Linear):
            if getattr(module, "is_output_projection", False):
                return  # the tied embedding matrix: initialised as an embedding
            init.xavier_uniform_(module.weight)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            std = config.init_std if config.init_std is not None else config.hidden_size**-0.5
            init.normal_(module.weight, mean=0.0, std=std)
        elif isinstance(module, nn.LayerNorm):
            init.ones_(module.weight)
            init.zeros_(module.bias)
        elif isinstance(module, PaperTransformerSinusoidalPositions):
            init.copy_(module.table, sinusoid_table(module.num_positions, module.dim))
        elif (
            isinstance(module, PaperTransformerForConditionalGeneration)
            and module.final_logits_bias is not None
        ):
            init.zeros_(module.final_logits_bias)


class PaperTransformerEncoder(nn.Module):
    """Embeddings · √d_model + positions, dropout, then N encoder layers (no final LayerNorm: post-LN)."""

    def __init__(self, config: PaperTransformerConfig):
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.embed_scale = math.sqrt(config.hidden_size) if config.scale_embedding else 1.0
        self.embed_positions = PaperTransformerSinusoidalPositions(
            config.max_position_embeddings, config.hidden_size
        )
        self.dropout = nn.Dropout(config.dropout)
        self.layers = nn.ModuleList(
            [PaperTransformerEncoderLayer(config) for _ in range(config.encoder_layers)]
        )

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
        config = self.config
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("Pass exactly one of `input_ids` or `inputs_embeds` to the encoder.")
        shape = input_ids.shape if input_ids is not None else inputs_embeds.shape[:-1]
        if len(shape) != 2:
            raise ValueError(f"Expected source inputs of shape (batch, sequence), got {tuple(shape)}.")
        check_input_ids(input_ids, config.vocab_size)
        check_length(shape[1], config.max_position_embeddings, "source sequence")
        check_attention_mask(attention_mask, shape[0], shape[1])
        output_attentions = config.output_attentions if output_attentions is None else output_attentions
        output_hidden_states = (
            config.output_hidden_states if output_hidden_states is None else output_hidden_states
        )

        if inputs_embeds is None:
            inputs_embeds = self.embed_tokens(input_ids)
        positions = torch.arange(shape[1], device=inputs_embeds.device)
        hidden_states = inputs_embeds * self.embed_scale + self.embed_positions(
            positions, inputs_embeds.dtype
        )  # §3.4, §3.5
        hidden_states = self.dropout(hidden_states)  # §5.4
        mask = create_bidirectional_mask(
            config=config, inputs_embeds=hidden_states, attention_mask=attention_mask
        )

        all_hidden, all_attentions = (), ()
        for layer in self.layers:
            if output_hidden_states:
                all_hidden += (hidden_states,)
            hidden_states, weights = layer(hidden_states, mask)
            if output_attentions:
                all_attentions += (weights,)
        if output_hidden_states:
            all_hidden += (hidden_states,)
        output = BaseModelOutput(
            last_hidden_state=hidden_states,
            hidden_states=all_hidden or None,
            attentions=all_attentions or None,
        )
        return output if return_dict is not False else output.to_tuple()


class PaperTransformerDecoder(nn.Module):
    """Embeddings · √d_model + positions, dropout, then N decoder layers over the encoder output."""

    def __init__(self, config: PaperTransformerConfig):
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.embed_scale = math.sqrt(config.hidden_size) if config.scale_embedding else 1.0
        self.embed_positions = PaperTransformerSinusoidalPositions(
            config.max_position_embeddings, config.hidden_size
        )
        self.dropout = nn.Dropout(config.dropout)
        self.layers = nn.ModuleList(
            [PaperTransformerDecoderLayer(config, layer_idx=i) for i in range(config.decoder_layers)]
        )

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        encoder_hidden_states: torch.Tensor | None = None,
        encoder_attention_mask: torch.Tensor | None = None,
        past_key_values: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPastAndCrossAttentions:
        config = self.config
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("Pass exactly one of `decoder_input_ids` or `decoder_inputs_embeds`.")
        if encoder_hidden_states is None:
            raise ValueError("The decoder attends to the encoder: pass `encoder_hidden_states`.")
        shape = input_ids.shape if input_ids is not None else inputs_embeds.shape[:-1]
        if len(shape) != 2:
            raise ValueError(f"Expected decoder inputs of shape (batch, sequence), got {tuple(shape)}.")
        use_cache = config.use_cache if use_cache is None else use_cache
        output_attentions = config.output_attentions if output_attentions is None else output_attentions
        output_hidden_states = (
            config.output_hidden_states if output_hidden_states is None else output_hidden_states
        )
        if use_cache and past_key_values is None:
            past_key_values = EncoderDecoderCache(DynamicCache(), DynamicCache())
        elif past_key_values is not None and not isinstance(past_key_values, EncoderDecoderCache):
            past_key_values = EncoderDecoderCache(past_key_values, DynamicCache())
        past_length = past_key_values.get_seq_length() if past_key_values is not None else 0

        check_input_ids(input_ids, config.vocab_size, "decoder_input_ids")
        check_length(past_length + shape[1], config.max_position_embeddings, "target sequence")
        check_attention_mask(attention_mask, shape[0], past_length + shape[1])
        check_attention_mask(
            encoder_attention_mask, encoder_hidden_states.shape[0], encoder_hidden_states.shape[1]
        )

        if inputs_embeds is None:
            inputs_embeds = self.embed_tokens(input_ids)
        position_ids = torch.arange(shape[1], device=inputs_embeds.device) + past_length
        hidden_states = inputs_embeds * self.embed_scale + self.embed_positions(
            position_ids, inputs_embeds.dtype
        )
        hidden_states = self.dropout(hidden_states)

        self_cache = past_key_values.self_attention_cache if past_key_values is not None else None
        causal_mask = create_causal_mask(
            config=config,
            inputs_embeds=hidden_states,
            attention_mask=attention_mask,
            position_ids=position_ids.unsqueeze(0),
            **cache_mask_kwargs(self_cache),
        )
        cross_mask = create_bidirectional_mask(
            config=config,
            inputs_embeds=hidden_states,
            attention_mask=encoder_attention_mask,
            encoder_hidden_states=encoder_hidden_states,
        )

        all_hidden, all_self, all_cross = (), (), ()
        for layer in self.layers:
            if output_hidden_states:
                all_hidden += (hidden_states,)
            hidden_states, self_weights, cross_weights = layer(
                hidden_states, causal_mask, encoder_hidden_states, cross_mask, past_key_values=past_key_values
            )
            if output_attentions:
                all_self += (self_weights,)
                all_cross += (cross_weights,)
        if output_hidden_states:
            all_hidden += (hidden_states,)
        output = BaseModelOutputWithPastAndCrossAttentions(
            last_hidden_state=hidden_states,
            past_key_values=past_key_values if use_cache else None,
            hidden_states=all_hidden or None,
            attentions=all_self or None,
            cross_attentions=all_cross or None,
        )
        return output if return_dict is not False else output.to_tuple()


class PaperTransformerModel(PaperTransformerPreTrainedModel):
    """Encoder and decoder over one shared embedding matrix (§3.4); returns the decoder's states."""

    _tied_weights_keys = {
        "encoder.embed_tokens.weight": "shared.weight",
        "decoder.embed_tokens.weight": "shared.weight",
    }

    def __init__(self, config: PaperTransformerConfig):
        super().__init__(config)
        if config.share_embeddings:  # one source/target vocabulary and embedding (§3.4)
            self.shared = nn.Embedding(config.vocab_size, config.hidden_size)
        else:
            self._tied_weights_keys = None
        self.encoder = PaperTransformerEncoder(config)
        self.decoder = PaperTransformerDecoder(config)
        self.gradient_checkpointing = False
        self.post_init()

    def get_input_embeddings(self):
        return self.shared if self.config.share_embeddings else self.encoder.embed_tokens

    def set_input_embeddings(self, value):
        if self.config.share_embeddings:
            self.shared = value
            self.encoder.embed_tokens = value
            self.decoder.embed_tokens = value
        else:
            self.encoder.embed_tokens = value

    def get_encoder(self, modality=None):
        return self.encoder

    def get_decoder(self):
        return self.decoder

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        decoder_input_ids: torch.LongTensor | None = None,
        decoder_attention_mask: torch.Tensor | None = None,
        encoder_outputs: BaseModelOutput | tuple | None = None,
        past_key_values: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        decoder_inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> Seq2SeqModelOutput:
        if decoder_input_ids is None and decoder_inputs_embeds is None:
            raise ValueError(
                "Pass `decoder_input_ids` (the targets shifted right), or `labels` to "
                "PaperTransformerForConditionalGeneration, which shifts them itself."
            )
        if self.gradient_checkpointing and self.training:
            use_cache = False
        if encoder_outputs is None:
            encoder_outputs = self.encoder(
                input_ids=input_ids,
                attention_mask=attention_mask,
                inputs_embeds=inputs_embeds,
                output_attentions=output_attentions,
                output_hidden_states=output_hidden_states,
            )
        elif not isinstance(encoder_outputs, BaseModelOutput):
            encoder_outputs = BaseModelOutput(
                last_hidden_state=encoder_outputs[0],
                hidden_states=encoder_outputs[1] if len(encoder_outputs) > 1 else None,
                attentions=encoder_outputs[2] if len(encoder_outputs) > 2 else None,
            )
        decoder_outputs = self.decoder(
            input_ids=decoder_input_ids,
            attention_mask=decoder_attention_mask,
            encoder_hidden_states=encoder_outputs.last_hidden_state,
            encoder_attention_mask=attention_mask,
            past_key_values=past_key_values,
            inputs_embeds=decoder_inputs_embeds,
            use_cache=use_cache,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
        )
        output = Seq2SeqModelOutput(
            last_hidden_state=decoder_outputs.last_hidden_state,
            past_key_values=decoder_outputs.past_key_values,
            decoder_hidden_states=decoder_outputs.hidden_states,
            decoder_attentions=decoder_outputs.attentions,
            cross_attentions=decoder_outputs.cross_attentions,
            encoder_last_hidden_state=encoder_outputs.last_hidden_state,
            encoder_hidden_states=encoder_outputs.hidden_states,
            encoder_attentions=encoder_outputs.attentions,
        )
        return output if return_dict is not False else output.to_tuple()


class PaperTransformerForConditionalGeneration(PaperTransformerPreTrainedModel, GenerationMixin):
    """The Transformer with its output layer: logits = decoder states · Eᵀ (the shared embedding, §3.4).

    ``labels`` are the target ids (-100 where ignored); the decoder inputs are the labels shifted right
    behind ``decoder_start_token_id``. ``loss`` is the mean token cross-entropy; the recipe adds the
    paper's label smoothing (``config.label_smoothing``), as does ``Trainer`` with
    ``label_smoothing_factor``. ``generate()`` defaults to §6.1's beam 4, α = 0.6 and a maximum output
    length of the (longest) input length + 50.
    """

    _tied_weights_keys = {
        "lm_head.weight": "model.shared.weight",
        "model.encoder.embed_tokens.weight": "model.shared.weight",
        "model.decoder.embed_tokens.weight": "model.shared.weight",
    }

    def __init__(self, config: PaperTransformerConfig):
        super().__init__(config)
        if not config.share_embeddings:  # separate source embedding; target embedding = output layer
            self._tied_weights_keys = {"lm_head.weight": "model.decoder.embed_tokens.weight"}
        self.model = PaperTransformerModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.lm_head.is_output_projection = True
        if config.add_final_logits_bias:  # transformers' Marian output bias (a buffer there too)
            self.register_buffer("final_logits_bias", torch.zeros(1, config.vocab_size))
        else:
            self.final_logits_bias = None
        self.post_init()
        if self.generation_config is not None:  # §6.1
            self.generation_config.num_beams = 4
            self.generation_config.length_penalty = 0.6

    def get_input_embeddings(self):
        return self.model.get_input_embeddings()

    def set_input_embeddings(self, value):
        self.model.set_input_embeddings(value)

    def get_output_embeddings(self):
        return self.lm_head

    def set_output_embeddings(self, new_embeddings):
        self.lm_head = new_embeddings

    def get_encoder(self, modality=None):
        return self.model.encoder

    def get_decoder(self):
        return self.model.decoder

    def prepare_decoder_input_ids_from_labels(self, labels: torch.Tensor) -> torch.Tensor:
        return shift_tokens_right(labels, self.config.pad_token_id, self.config.decoder_start_token_id)

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        decoder_input_ids: torch.LongTensor | None = None,
        decoder_attention_mask: torch.Tensor | None = None,
        encoder_outputs: BaseModelOutput | tuple | None = None,
        past_key_values: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        decoder_inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> Seq2SeqLMOutput:
        if labels is not None:
            use_cache = False
            if decoder_input_ids is None and decoder_inputs_embeds is None:
                decoder_input_ids = self.prepare_decoder_input_ids_from_labels(labels)
        outputs = self.model(
            input_ids,
            attention_mask=attention_mask,
            decoder_input_ids=decoder_input_ids,
            decoder_attention_mask=decoder_attention_mask,
            encoder_outputs=encoder_outputs,
            past_key_values=past_key_values,
            inputs_embeds=inputs_embeds,
            decoder_inputs_embeds=decoder_inputs_embeds,
            use_cache=use_cache,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
        )
        logits = self.lm_head(outputs.last_hidden_state)
        if self.final_logits_bias is not None:
            logits = logits + self.final_logits_bias.to(logits.dtype)
        loss = None
        if labels is not None:  # labels are aligned with the logits: no shift here
            loss = ForMaskedLMLoss(
                logits, labels, self.config.vocab_size, num_items_in_batch=kwargs.get("num_items_in_batch")
            )
        output = Seq2SeqLMOutput(
            loss=loss,
            logits=logits,
            past_key_values=outputs.past_key_values,
            decoder_hidden_states=outputs.decoder_hidden_states,
            decoder_attentions=outputs.decoder_attentions,
            cross_attentions=outputs.cross_attentions,
            encoder_last_hidden_state=outputs.encoder_last_hidden_state,
            encoder_hidden_states=outputs.encoder_hidden_states,
            encoder_attentions=outputs.encoder_attentions,
        )
        return output if return_dict is not False else output.to_tuple()

    # ------------------------------------------------------------------------------------------
    # Decoding (§6.1)
    # ------------------------------------------------------------------------------------------

    @torch.no_grad()
    def generate(self, inputs=None, generation_config=None, **kwargs):
        """``GenerationMixin.generate`` with §6.1's maximum output length when none is given: the
        longest source in the batch (by ``attention_mask``) + 50 new tokens, capped by the positions."""
        config = generation_config if generation_config is not None else self.generation_config
        length_given = "max_new_tokens" in kwargs or "max_length" in kwargs
        if not length_given and config.max_new_tokens is None and config.max_length is None:
            source = inputs if inputs is not None else kwargs.get("input_ids")
            mask = kwargs.get("attention_mask")
            if isinstance(source, torch.Tensor) and source.dim() == 2:
                longest = int(mask.sum(-1).max()) if mask is not None and mask.dim() == 2 else source.shape[1]
                kwargs["max_new_tokens"] = min(
                    longest + MAX_OUTPUT_LENGTH_OFFSET, self.config.max_position_embeddings - 1
                )
        return super().generate(inputs, generation_config, **kwargs)

    def _gnmt(self) -> bool:
        return self.config.length_penalty_formula == "gnmt"

    def _update_finished_beams(self, *args, **kwargs):
        """Finished hypotheses are scored log P / lp(Y) with GNMT's lp(Y) = ((5 + |Y|) / 6)^α
        (§6.1's reference [38]) instead of transformers' |Y|^α; |Y| counts the generated tokens,
        end-of-sentence included, as in tensor2tensor."""
        if not self._gnmt():
            return super()._update_finished_beams(*args, **kwargs)
        bound = _bind(GenerationMixin._update_finished_beams, self, args, kwargs)
        length = bound["cur_len"] + 1 - bound["decoder_prompt_len"]
        bound["topk_log_probs"] = bound["topk_log_probs"] / gnmt_length_penalty(
            length, bound["length_penalty"]
        )
        bound["length_penalty"] = 0.0  # |Y|^0 = 1: transformers' own division becomes a no-op
        return super()._update_finished_beams(**bound)

    def _check_early_stop_heuristic(self, *args, **kwargs):
        """transformers' early-stop test with the same GNMT length penalty as the finished beams."""
        if not self._gnmt():
            return GenerationMixin._check_early_stop_heuristic(*args, **kwargs)
        bound = _bind(GenerationMixin._check_early_stop_heuristic, None, args, kwargs)
        alpha, prompt = bound["length_penalty"], bound["decoder_prompt_len"]
        if bound["early_stopping"] == "never" and alpha > 0.0:
            best_length = bound["max_length"] - prompt
        else:
            best_length = bound["cur_len"] - prompt
        bound["running_beam_scores"] = bound["running_beam_scores"] / gnmt_length_penalty(best_length, alpha)
        bound["length_penalty"] = 0.0
        return GenerationMixin._check_early_stop_heuristic(**bound)


def gnmt_length_penalty(length: int, alpha: float) -> float:
    """Wu et al. (2016), eq. 14: lp(Y) = (5 + |Y|)^α / (5 + 1)^α."""
    return ((5.0 + length) / 6.0) ** alpha


def _bind(function, self_, args, kwargs) -> dict:
    """The arguments of a (possibly static) GenerationMixin method call, by name."""
    signature = inspect.signature(function)
    names = [n for n in signature.parameters if n != "self"]
    bound = dict(zip(names, args))
    bound.update(kwargs)
    return bound


# The Auto classes this paper registers with (ZOO.md §2); also marks them for Hub export.
AUTO_CLASSES = {
    "AutoModel": PaperTransformerModel,
    "AutoModelForSeq2SeqLM": PaperTransformerForConditionalGeneration,
}
register_for_auto_classes(PaperTransformerConfig, AUTO_CLASSES)

__all__ = [
    "PaperTransformerConfig",
    "PaperTransformerModel",
    "PaperTransformerForConditionalGeneration",
    "PaperTransformerPreTrainedModel",
    "gnmt_length_penalty",
    "label_smoothed_cross_entropy",
    "learning_rate_schedule",
    "sinusoid_table",
]
