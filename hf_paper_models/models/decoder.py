"""The decoder-only stack GPT-1, GPT-2, GPT-3 and GPT-4 share: embed, run the blocks, normalise.

A paper's base model subclasses ``DecoderStack`` and provides ``embed`` (token + position
embeddings, and anything it splices in), ``self.h`` (its blocks), ``self.drop`` and
``final_norm`` (GPT-2's final LayerNorm; identity for post-LN GPT-1). Blocks take
``(hidden, mask, cache, padding_mask=..., position_ids=...)`` and return ``(hidden, attention)``;
a block whose ``attention_type`` is ``"sliding_attention"`` gets the banded mask.

Hub-exportable: standard library, ``torch``, ``transformers`` and siblings only.
"""

from __future__ import annotations

import torch
from transformers.cache_utils import DynamicCache
from transformers.masking_utils import create_causal_mask, create_sliding_window_causal_mask
from transformers.modeling_outputs import BaseModelOutputWithPast

from .common import cache_mask_kwargs, check_attention_mask, check_input_ids, check_length


class DecoderStack:
    """Mixin with the forward pass of a decoder-only base model (a ``PreTrainedModel``)."""

    def final_norm(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return hidden_states

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        past_key_values=None,
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
            raise ValueError(
                f"Expected inputs of shape (batch, sequence), got {tuple(shape)}. Inputs with several "
                "sequences per example (batch, k, sequence) go to the multiple-choice heads."
            )
        check_input_ids(input_ids, config.vocab_size)
        check_length(past_length + shape[1], config.max_position_embeddings)
        check_attention_mask(attention_mask, shape[0], past_length + shape[1])

        hidden_states, position_ids = self.embed(input_ids, inputs_embeds, position_ids, past_length)
        if token_type_ids is not None:  # as transformers' GPTs: segment ids share the token table
            check_input_ids(token_type_ids, config.vocab_size, "token_type_ids")
            hidden_states = hidden_states + self.get_input_embeddings()(token_type_ids)
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
        hidden_states = self.final_norm(hidden_states)
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
            position_ids=position_ids,
            **cache_mask_kwargs(past_key_values),
        )
        masks = {"full_attention": create_causal_mask(**mask_kwargs)}
        if getattr(self.config, "sliding_window", None) is not None:
            if past_length == 0:
                # Without a cache the banded layers use the O(n·w) kernel when n > w; for n ≤ w the
                # band is the whole causal triangle. No n×n band mask is ever built here.
                masks["sliding_attention"] = masks["full_attention"]
            else:
                masks["sliding_attention"] = create_sliding_window_causal_mask(**mask_kwargs)
        return masks
