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
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import (
    CausalLMOutputWithPast,
    SequenceClassifierOutputWithPast,
    TokenClassifierOutput,
)

from .attention import CausalSelfAttention, FeedForward
from .common import (
    PaperDecoderConfig,
    PaperPreTrainedModel,
    last_token_pool,
    register_for_auto_classes,
)
from .decoder import DecoderStack


class PaperGPT2Config(PaperDecoderConfig):
    """GPT-2 hyper-parameters. Defaults are GPT-2 small (124M): 12 layers, 768 wide, 12 heads.

    ``score_bias`` gives the sequence-classification head a bias. Off by default, as in
    transformers' ``GPT2ForSequenceClassification`` (same parameters, exact conversion); the
    InstructGPT reward model turns it on to hold its normalisation shift (Ouyang et al. 2022, §3.5:
    demonstrations score 0 on average before RL; see ``hf_paper_models.rlhf.normalize_reward_bias``).
    """

    model_type = "paper-gpt2"

    vocab_size: int = 50257
    max_position_embeddings: int = 1024
    activation_function: str = "gelu_new"
    bos_token_id: int | None = 50256
    eos_token_id: int | list[int] | None = 50256
    score_bias: bool = False


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


class PaperGPT2Model(DecoderStack, PaperGPT2PreTrainedModel):
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

    def final_norm(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.ln_f(hidden_states)  # §2.3: "an additional layer normalization was added after the final self-attention block"


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
        # No bias unless `score_bias` (the reward model's normalisation shift; see the config).
        bias = bool(getattr(config, "score_bias", False))
        self.score = nn.Linear(config.hidden_size, config.num_labels, bias=bias)
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
