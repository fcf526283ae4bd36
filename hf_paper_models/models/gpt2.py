"""GPT-2 — Radford, Wu, Child, Luan, Amodei & Sutskever (2019), "Language Models are Unsupervised
Multitask Learners".

What the paper changes from GPT-1 (§2.3): layer normalisation moves to the input of each sub-block
(pre-LN) and a final LayerNorm follows the last block; residual projections are initialised with
weights scaled by 1/√N for N residual layers; the context grows to 1024 tokens and the byte-level
BPE vocabulary to 50,257. Module names follow transformers' ``GPT2Model`` so that checkpoints
convert by name (transformers' ``Conv1D`` weights are transposed into ``nn.Linear``).
"""

from __future__ import annotations

import math

import torch
from torch import nn
from transformers import GenerationMixin
from transformers import initialization as init
from transformers.cache_utils import Cache, DynamicCache
from transformers.masking_utils import create_causal_mask, create_sliding_window_causal_mask
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import (
    BaseModelOutputWithPast,
    CausalLMOutputWithPast,
    SequenceClassifierOutputWithPast,
    TokenClassifierOutput,
)

from .attention import CausalSelfAttention, FeedForward
from .common import (
    PaperDecoderConfig,
    PaperPreTrainedModel,
    check_attention_mask,
    check_input_ids,
    check_length,
    last_token_pool,
    register_for_auto_classes,
)


class PaperGPT2Config(PaperDecoderConfig):
    """GPT-2 hyper-parameters. Defaults are GPT-2 small (124M): 12 layers, 768 wide, 12 heads."""

    model_type = "paper-gpt2"

    vocab_size: int = 50257
    max_position_embeddings: int = 1024
    activation_function: str = "gelu_new"
    bos_token_id: int | None = 50256
    eos_token_id: int | list[int] | None = 50256


# Table 2 of the paper (layers, d_model); heads are d_model / 64 as in the released models.
PRESETS = {
    "gpt2-small": dict(num_hidden_layers=12, hidden_size=768, num_attention_heads=12),
    "gpt2-medium": dict(num_hidden_layers=24, hidden_size=1024, num_attention_heads=16),
    "gpt2-large": dict(num_hidden_layers=36, hidden_size=1280, num_attention_heads=20),
    "gpt2-xl": dict(num_hidden_layers=48, hidden_size=1600, num_attention_heads=25),
}
# Parameter counts the paper reports (Table 2: 117M/345M/762M/1542M) were later corrected by
# OpenAI to the released models' 124M/355M/774M/1558M, which ours match exactly.
PAPER_PARAMETERS = {"gpt2-small": 124e6, "gpt2-medium": 355e6, "gpt2-large": 774e6, "gpt2-xl": 1558e6}


class PaperGPT2Block(GradientCheckpointingLayer):
    """x + Attn(LN(x)), then x + MLP(LN(x)) — the pre-LN block of §2.3."""

    def __init__(self, config: PaperGPT2Config, layer_idx: int):
        super().__init__()
        layer_types = getattr(config, "layer_types", None)
        banded = layer_types is not None and layer_types[layer_idx] == "sliding_attention"
        self.attention_type = "sliding_attention" if banded else "full_attention"
        self.ln_1 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_epsilon)
        self.attn = CausalSelfAttention(config, layer_idx, config.sliding_window if banded else None)
        self.ln_2 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_epsilon)
        self.mlp = FeedForward(config)

    def forward(self, hidden_states, attention_mask=None, past_key_values=None, **kwargs):
        attn_output, weights = self.attn(self.ln_1(hidden_states), attention_mask, past_key_values, **kwargs)
        hidden_states = hidden_states + attn_output
        hidden_states = hidden_states + self.mlp(self.ln_2(hidden_states))
        return hidden_states, weights


class PaperGPT2PreTrainedModel(PaperPreTrainedModel):
    config_class = PaperGPT2Config
    base_model_prefix = "transformer"
    supports_gradient_checkpointing = True
    _no_split_modules = ["PaperGPT2Block"]
    _skip_keys_device_placement = ["past_key_values"]
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = False
    _supports_attention_backend = True
    _can_compile_fullgraph = True

    @torch.no_grad()
    def _init_weights(self, module):
        super()._init_weights(module)
        # §2.3: "scale the weights of residual layers at initialization by a factor of 1/√N where N is
        # the number of residual layers" — two residual branches (attention, MLP) per block. (Set
        # on the projection itself: transformers skips parents without direct parameters.)
        if isinstance(module, nn.Linear) and getattr(module, "is_residual_projection", False):
            std = self.config.initializer_range / math.sqrt(2 * self.config.num_hidden_layers)
            init.normal_(module.weight, mean=0.0, std=std)


class PaperGPT2Model(PaperGPT2PreTrainedModel):
    def __init__(self, config: PaperGPT2Config):
        super().__init__(config)
        self.wte = nn.Embedding(config.vocab_size, config.hidden_size)
        self.wpe = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.drop = nn.Dropout(config.embd_pdrop)
        self.h = nn.ModuleList([PaperGPT2Block(config, i) for i in range(config.num_hidden_layers)])
        self.ln_f = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_epsilon)
        self.gradient_checkpointing = False
        self.post_init()

    def get_input_embeddings(self):
        return self.wte

    def set_input_embeddings(self, new_embeddings):
        self.wte = new_embeddings

    def embed(self, input_ids, inputs_embeds, position_ids, past_length):
        """Token + learned position embeddings. Subclasses (GPT-4) splice other inputs in here."""
        if inputs_embeds is None:
            inputs_embeds = self.wte(input_ids)
        if position_ids is None:
            position_ids = torch.arange(inputs_embeds.shape[1], device=inputs_embeds.device) + past_length
            position_ids = position_ids.unsqueeze(0)
        return inputs_embeds + self.wpe(position_ids), position_ids

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        past_key_values: Cache | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.LongTensor | None = None,
        position_ids: torch.LongTensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPast:
        config = self.config
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("Pass exactly one of `input_ids` or `inputs_embeds`.")
        use_cache = config.use_cache if use_cache is None else use_cache
        if self.gradient_checkpointing and self.training:
            use_cache = False
        output_attentions = config.output_attentions if output_attentions is None else output_attentions
        output_hidden_states = (
            config.output_hidden_states if output_hidden_states is None else output_hidden_states
        )
        if use_cache and past_key_values is None:
            past_key_values = DynamicCache(config=config)
        past_length = past_key_values.get_seq_length() if past_key_values is not None else 0

        shape = input_ids.shape if input_ids is not None else inputs_embeds.shape[:-1]
        if len(shape) != 2:
            raise ValueError(f"Expected inputs of shape (batch, sequence), got {tuple(shape)}.")
        check_input_ids(input_ids, config.vocab_size)
        check_length(past_length + shape[1], config.max_position_embeddings)
        check_attention_mask(attention_mask, shape[0], past_length + shape[1])

        hidden_states, position_ids = self.embed(input_ids, inputs_embeds, position_ids, past_length)
        if token_type_ids is not None:  # as transformers' GPT-2: segment ids share the token table
            check_input_ids(token_type_ids, config.vocab_size, "token_type_ids")
            hidden_states = hidden_states + self.wte(token_type_ids)
        hidden_states = self.drop(hidden_states)

        masks = self._attention_masks(hidden_states, attention_mask, past_key_values, position_ids, past_length)
        padding_mask = attention_mask if attention_mask is not None and attention_mask.dim() == 2 else None

        all_hidden, all_attentions = (), ()
        for block in self.h:
            if output_hidden_states:
                all_hidden += (hidden_states,)
            hidden_states, weights = block(
                hidden_states,
                masks[block.attention_type],
                past_key_values,
                padding_mask=padding_mask,
                position_ids=position_ids,
                **kwargs,
            )
            if output_attentions:
                all_attentions += (weights,)
        hidden_states = self.ln_f(hidden_states)
        if output_hidden_states:
            all_hidden += (hidden_states,)
        return BaseModelOutputWithPast(
            last_hidden_state=hidden_states,
            past_key_values=past_key_values if use_cache else None,
            hidden_states=all_hidden or None,
            attentions=all_attentions or None,
        )

    def _attention_masks(self, hidden_states, attention_mask, past_key_values, position_ids, past_length):
        mask_kwargs = dict(
            config=self.config,
            inputs_embeds=hidden_states,
            attention_mask=attention_mask,
            past_key_values=past_key_values,
            position_ids=position_ids,
        )
        masks = {"full_attention": create_causal_mask(**mask_kwargs)}
        window = getattr(self.config, "sliding_window", None)
        if window is not None:
            if past_length == 0:
                # Without a cache the banded layers use the O(n·w) kernel when n > w; for n ≤ w the
                # band is the whole causal triangle. No n×n band mask is ever built here.
                masks["sliding_attention"] = masks["full_attention"]
            else:
                masks["sliding_attention"] = create_sliding_window_causal_mask(**mask_kwargs)
        return masks


class PaperGPT2LMHeadModel(PaperGPT2PreTrainedModel, GenerationMixin):
    _tied_weights_keys = {"lm_head.weight": "transformer.wte.weight"}

    def __init__(self, config: PaperGPT2Config):
        super().__init__(config)
        self.transformer = PaperGPT2Model(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def forward(
        self,
        input_ids=None,
        past_key_values=None,
        attention_mask=None,
        token_type_ids=None,
        position_ids=None,
        inputs_embeds=None,
        labels=None,
        use_cache=None,
        output_attentions=None,
        output_hidden_states=None,
        return_dict=None,
        logits_to_keep: int | torch.Tensor = 0,
        **kwargs,
    ) -> CausalLMOutputWithPast:
        outputs = self.transformer(
            input_ids,
            past_key_values=past_key_values,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            **kwargs,
        )
        hidden_states = outputs.last_hidden_state
        keep = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
        logits = self.lm_head(hidden_states[:, keep, :])
        loss = None
        if labels is not None:
            loss = self.loss_function(logits, labels, vocab_size=self.config.vocab_size, **kwargs)
        return CausalLMOutputWithPast(
            loss=loss,
            logits=logits,
            past_key_values=outputs.past_key_values,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )


class PaperGPT2ForSequenceClassification(PaperGPT2PreTrainedModel):
    """Scores each sequence from its last non-padding token (as transformers' GPT-2 does)."""

    def __init__(self, config: PaperGPT2Config):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.transformer = PaperGPT2Model(config)
        self.score = nn.Linear(config.hidden_size, config.num_labels, bias=False)
        self.post_init()

    def forward(
        self,
        input_ids=None,
        past_key_values=None,
        attention_mask=None,
        token_type_ids=None,
        position_ids=None,
        inputs_embeds=None,
        labels=None,
        use_cache=None,
        output_attentions=None,
        output_hidden_states=None,
        return_dict=None,
        **kwargs,
    ) -> SequenceClassifierOutputWithPast:
        outputs = self.transformer(
            input_ids,
            past_key_values=past_key_values,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            **kwargs,
        )
        logits = self.score(outputs.last_hidden_state)
        pooled_logits = last_token_pool(logits, input_ids, self.config.pad_token_id)
        loss = None
        if labels is not None:
            loss = self.loss_function(labels=labels, pooled_logits=pooled_logits, config=self.config)
        return SequenceClassifierOutputWithPast(
            loss=loss,
            logits=pooled_logits,
            past_key_values=outputs.past_key_values,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )


class PaperGPT2ForTokenClassification(PaperGPT2PreTrainedModel):
    def __init__(self, config: PaperGPT2Config):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.transformer = PaperGPT2Model(config)
        dropout = getattr(config, "classifier_dropout", None)
        self.dropout = nn.Dropout(config.resid_pdrop if dropout is None else dropout)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def forward(
        self,
        input_ids=None,
        past_key_values=None,
        attention_mask=None,
        token_type_ids=None,
        position_ids=None,
        inputs_embeds=None,
        labels=None,
        use_cache=None,
        output_attentions=None,
        output_hidden_states=None,
        return_dict=None,
        **kwargs,
    ) -> TokenClassifierOutput:
        outputs = self.transformer(
            input_ids,
            past_key_values=past_key_values,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            use_cache=False,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            **kwargs,
        )
        logits = self.classifier(self.dropout(outputs.last_hidden_state))
        loss = None
        if labels is not None:
            loss = nn.functional.cross_entropy(logits.view(-1, self.num_labels), labels.view(-1).to(logits.device))
        return TokenClassifierOutput(
            loss=loss, logits=logits, hidden_states=outputs.hidden_states, attentions=outputs.attentions
        )


# The Auto classes this paper registers with (ZOO.md §2); also marks them for Hub export.
AUTO_CLASSES = {
    "AutoModel": PaperGPT2Model,
    "AutoModelForCausalLM": PaperGPT2LMHeadModel,
    "AutoModelForSequenceClassification": PaperGPT2ForSequenceClassification,
    "AutoModelForTokenClassification": PaperGPT2ForTokenClassification,
}
register_for_auto_classes(PaperGPT2Config, AUTO_CLASSES)

__all__ = [
    "PaperGPT2Config",
    "PaperGPT2Model",
    "PaperGPT2LMHeadModel",
    "PaperGPT2ForSequenceClassification",
    "PaperGPT2ForTokenClassification",
    "PaperGPT2PreTrainedModel",
]
