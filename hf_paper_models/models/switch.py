"""Switch Transformers — Fedus, Zoph & Shazeer (2022), "Switch Transformers: Scaling to Trillion Parameter
Models with Simple and Efficient Sparsity", JMLR 23(120).

T5 (``t5.py``, the same blocks, imported) whose feed-forward network is, every other layer, a Switch
layer (§2.1, Figure 2): a router sends each token to ONE expert FFN (top-1, "k = 1 routing") and scales
the expert's output by the router probability. The machinery is ``moe.py``'s:

- expert capacity = (tokens / experts) × capacity factor, per sequence; tokens over it are dropped: the
  Switch layer outputs 0 for them and the residual connection carries them to the next layer (§2.2);
  optionally "No-Token-Left-Behind" re-routing of the overflow to its next choice;
- the auxiliary load-balancing loss α · N · Σ_i f_i · P_i with α = 0.01 (§2.2), added to the training loss;
- "selective precision" (§2.4): the router runs in float32 even in a bfloat16 model or under autocast;
- router jitter: the router's input multiplied by U(1 − ε, 1 + ε) noise in training;
- "smaller parameter initialization" (§2.4): every weight matrix drawn from a truncated normal with
  σ = sqrt(s / fan_in) and the scale s reduced from 1.0 to 0.1;
- "expert dropout" (§3): a higher dropout rate inside the experts for fine-tuning.

transformers' ``SwitchTransformers*`` is the same architecture; ``conversions/switch.py`` maps it both
ways with identical logits. Its differences, all kept out of the forward pass in evaluation: the router
z-loss of ST-MoE (Zoph et al. 2022; here ``router_z_loss_coef``, 0 by default as in the Switch paper,
copied on conversion), its α of 0.001, its jitter also applied to the experts' input (here the
router's only, as the paper and Mesh TensorFlow), and its aux losses computed over all the stack's
layers at once (here per layer and summed, as the paper adds one per Switch layer).

Module names follow transformers' (``layer.{-1}.mlp``, ``mlp.router``, ``mlp.experts``) except that the
experts' weights are stacked as (in, out) matrices, ``mlp.experts.wi`` (experts, d_model, d_ff), for one
grouped matmul, and
the attention projections are T5's ``q_proj/k_proj/v_proj/out_proj``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.cache_utils import Cache
from transformers.modeling_outputs import Seq2SeqMoEModelOutput, Seq2SeqMoEOutput

from .common import check_int, check_positive_float, check_probability, register_for_auto_classes
from .moe import Experts, RouterStats, SwitchFeedForward, SwitchRouter
from .t5 import (
    PaperT5Block,
    PaperT5Config,
    PaperT5DenseActDense,
    PaperT5EncoderModel,
    PaperT5ForConditionalGeneration,
    PaperT5LayerNorm,
    PaperT5Model,
    PaperT5PreTrainedModel,
    PaperT5Stack,
    PaperT5Sublayer,
)


class PaperSwitchConfig(PaperT5Config):
    """Switch Transformer hyper-parameters: T5's (``PaperT5Config``, transformers' names) plus the routing.

    - ``num_experts``: experts per Switch layer.
    - ``encoder_sparse_step`` / ``decoder_sparse_step``: every ``step``-th feed-forward layer of the stack
      is a Switch layer, starting with the second (layers 1, 3, 5, … at the paper's step 2; every layer at
      1, as Switch-C; none at 0). The positions are transformers' and the released checkpoints'.
    - ``capacity_factor`` (training) / ``eval_capacity_factor`` (evaluation; ``None``: never drop):
      each expert takes at most ``ceil(capacity_factor · tokens / experts)`` tokens of a sequence.
      ``expert_capacity``, if set, fixes that number instead (transformers' convention, 64 in its
      released configs), in training and evaluation alike. ``capacity_scope``: "sequence" (the tokens
      of a sequence share the capacity, as transformers') or "batch" (all tokens of a batch do, as the
      paper's "tokens per batch" and Mesh TensorFlow's one group per device): short sequences with
      few tokens per expert drop far fewer tokens with "batch".
    - ``router_jitter_noise`` ε, ``router_aux_loss_coef`` α (0.01, §2.2), ``router_z_loss_coef`` (ST-MoE's
      z-loss, 0: not in this paper), ``reroute_overflow`` (No-Token-Left-Behind),
      ``expert_dropout_rate`` (``None``: ``dropout_rate``; §3 fine-tunes with 0.4 inside the experts).
    - ``initializer_scale`` s: weights ~ truncated normal with σ = sqrt(s / fan_in); 0.1 (§2.4).

    Defaults are Switch-Base with 8 experts.
    """

    model_type = "paper-switch"

    d_model: int = 768
    d_ff: int = 3072
    num_layers: int = 12
    num_heads: int = 12
    num_experts: int = 8
    encoder_sparse_step: int = 2
    decoder_sparse_step: int = 2
    capacity_factor: float = 1.25
    eval_capacity_factor: float | None = None
    expert_capacity: int | None = None
    router_jitter_noise: float = 0.01
    router_aux_loss_coef: float = 0.01
    router_z_loss_coef: float = 0.0
    reroute_overflow: bool = False
    capacity_scope: str = "sequence"
    expert_dropout_rate: float | None = None
    initializer_scale: float = 0.1

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        check_int(self, "num_experts")
        check_int(self, "encoder_sparse_step", 0)
        check_int(self, "decoder_sparse_step", 0)
        check_int(self, "expert_capacity", 1, True)
        check_positive_float(self, "capacity_factor")
        if self.eval_capacity_factor is not None:
            check_positive_float(self, "eval_capacity_factor")
        check_probability(self, "router_jitter_noise")
        if self.capacity_scope not in ("sequence", "batch"):
            raise ValueError(
                f"{type(self).__name__}: `capacity_scope` must be 'sequence' or 'batch', got {self.capacity_scope!r}."
            )
        for name in ("router_aux_loss_coef", "router_z_loss_coef"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise ValueError(f"{type(self).__name__}: `{name}` must be a number >= 0, got {value!r}.")
        if self.expert_dropout_rate is not None:
            check_probability(self, "expert_dropout_rate")
        check_positive_float(self, "initializer_scale")
        if not isinstance(self.reroute_overflow, bool):
            raise ValueError(f"{type(self).__name__}: `reroute_overflow` must be a bool.")


def is_sparse_layer(layer_idx: int, step: int) -> bool:
    """Whether FFN ``layer_idx`` of a stack is a Switch layer at this sparse step (see the config)."""
    return step == 1 or (step > 1 and layer_idx % step == 1)


# Table 9 (and §3, Table 1 for Switch-Base): d_model, d_ff, d_kv, heads, layers per stack, experts, and
# the expert frequency (a Switch layer every other FFN, every FFN for Switch-C). The Switch-Base family is
# the released one (T5-Base v1.0 sizes, ReLU FFN of 3072; 8 … 256 experts, §3 Figure 4); the larger
# ones keep T5 v1.0's ReLU FFN (the paper's Table 9 rows use T5 v1.1's GEGLU except Switch-C):
# Switch-Large takes T5-Large's d_ff of 4096, which matches the table's 26B; Switch-XXL's row is kept
# as printed, see PAPER_PARAMETERS.
_BASE = dict(hidden_size=768, intermediate_size=3072, head_dim=64, num_attention_heads=12, num_hidden_layers=12)
PRESETS = {
    **{f"switch-base-{n}": dict(_BASE, num_experts=n) for n in (8, 16, 32, 64, 128, 256)},
    "switch-large-128": dict(
        hidden_size=1024, intermediate_size=4096, head_dim=64, num_attention_heads=16, num_hidden_layers=24,
        num_experts=128,
    ),
    "switch-xxl-64": dict(
        hidden_size=4096, intermediate_size=10240, head_dim=64, num_attention_heads=64, num_hidden_layers=24,
        num_experts=64,
    ),
    "switch-c-2048": dict(
        hidden_size=2080, intermediate_size=6144, head_dim=64, num_attention_heads=32, num_hidden_layers=15,
        num_experts=2048, encoder_sparse_step=1, decoder_sparse_step=1,
    ),
}
# Table 9's parameter counts, as printed (Switch-Base is its 128-expert model). Ours: 7.42B, 26.3B and
# 1571.3B. Switch-XXL's "395B" does not follow from its own row (64 experts of d_ff 10240 every other
# layer give 201B even with GEGLU, 135.8B with our ReLU FFN; 395B needs about twice the experts, like
# the released switch-xxl-128), so it has no entry here.
PAPER_PARAMETERS = {"switch-base-128": 7e9, "switch-large-128": 26e9, "switch-c-2048": 1571e9}


# ----------------------------------------------------------------------------------------------
# Modules: T5's blocks with a Switch layer as the FFN of every ``step``-th layer
# ----------------------------------------------------------------------------------------------


def switch_layer(config: PaperSwitchConfig) -> SwitchFeedForward:
    expert_dropout = config.dropout_rate if config.expert_dropout_rate is None else config.expert_dropout_rate
    return SwitchFeedForward(
        config.d_model,
        config.d_ff,
        config.num_experts,
        ACT2FN[config.feed_forward_proj],
        capacity_factor=config.capacity_factor,
        eval_capacity_factor=config.eval_capacity_factor,
        capacity=config.expert_capacity,
        jitter_noise=config.router_jitter_noise,
        expert_dropout=expert_dropout,
        aux_loss_coef=config.router_aux_loss_coef,
        z_loss_coef=config.router_z_loss_coef,
        reroute_overflow=config.reroute_overflow,
        capacity_scope=config.capacity_scope,
    )


class PaperSwitchLayerFF(PaperT5Sublayer):
    """x + Dropout(mlp(LN(x))), ``mlp`` a Switch layer or T5's dense FFN (transformers' name)."""

    def __init__(self, config: PaperSwitchConfig, mlp: nn.Module):
        super().__init__(config)
        self.mlp = mlp

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return hidden_states + self.dropout(self.mlp(self.layer_norm(hidden_states)))


class PaperSwitchBlock(PaperT5Block):
    """T5's block; its FFN is a Switch layer where ``is_sparse_layer``."""

    def make_feed_forward_layer(self, config: PaperSwitchConfig, layer_idx: int) -> nn.Module:
        step = config.decoder_sparse_step if self.is_decoder else config.encoder_sparse_step
        sparse = is_sparse_layer(layer_idx, step)
        return PaperSwitchLayerFF(config, switch_layer(config) if sparse else PaperT5DenseActDense(config))


class PaperSwitchStack(PaperT5Stack):
    def make_block(self, config: PaperSwitchConfig, layer_idx: int, is_decoder: bool) -> PaperSwitchBlock:
        return PaperSwitchBlock(config, layer_idx, is_decoder, has_relative_attention_bias=layer_idx == 0)

    def switch_layers(self) -> list[SwitchFeedForward]:
        return [b.layer[-1].mlp for b in self.block if isinstance(b.layer[-1].mlp, SwitchFeedForward)]

    def router_stats(self) -> list[RouterStats]:
        """The statistics of each Switch layer's last forward pass, first layer first."""
        return [layer.stats for layer in self.switch_layers() if layer.stats is not None]


@dataclass
class PaperSwitchSeq2SeqLMOutput(Seq2SeqMoEOutput):
    """transformers' ``Seq2SeqMoEOutput`` (``encoder_aux_loss`` … are the unweighted load-balancing and z
    losses summed over each stack's Switch layers) plus what a recipe logs: ``aux_loss``, the weighted
    total added to the training loss; ``expert_load`` (Switch layers, experts), the fraction of each
    layer's tokens whose first choice is each expert (encoder layers first); ``dropped_fraction``
    (Switch layers,), the fraction no expert processed."""

    aux_loss: torch.Tensor | None = None
    expert_load: torch.Tensor | None = None
    dropped_fraction: torch.Tensor | None = None


@dataclass
class PaperSwitchSeq2SeqModelOutput(Seq2SeqMoEModelOutput):
    """``Seq2SeqMoEModelOutput`` with the routing statistics of ``PaperSwitchSeq2SeqLMOutput``."""

    encoder_z_loss: torch.Tensor | None = None
    decoder_z_loss: torch.Tensor | None = None
    encoder_aux_loss: torch.Tensor | None = None
    decoder_aux_loss: torch.Tensor | None = None
    aux_loss: torch.Tensor | None = None
    expert_load: torch.Tensor | None = None
    dropped_fraction: torch.Tensor | None = None


# ----------------------------------------------------------------------------------------------
# Models
# ----------------------------------------------------------------------------------------------

# Mesh TensorFlow's truncated normal is cut at two standard deviations and rescaled to keep its σ.
_TRUNCATED_STD = 0.87962566103423978


class PaperSwitchPreTrainedModel(PaperT5PreTrainedModel):
    config_class = PaperSwitchConfig
    _no_split_modules = ["PaperSwitchBlock"]
    stack_class = PaperSwitchStack

    @torch.no_grad()
    def _init_weights(self, module):
        """§2.4: weight matrices ~ truncated normal (±2σ), σ = sqrt(s / fan_in) × ``initializer_factor``,
        s = ``initializer_scale`` (0.1): T5's σ (fan_in^-1/2, queries (d_model·d_kv)^-1/2) times √s. The
        embeddings (and the output layer tied to them) and the position biases keep T5's."""
        factor = self.config.initializer_factor * math.sqrt(self.config.initializer_scale) / _TRUNCATED_STD

        def draw(weight: torch.Tensor, std: float) -> None:
            std = factor * std
            init.trunc_normal_(weight, mean=0.0, std=std, a=-2 * std, b=2 * std)

        if isinstance(module, nn.Linear) and getattr(module, "t5_init_std", None) != 1.0:  # 1.0: the tied head
            draw(module.weight, getattr(module, "t5_init_std", module.in_features**-0.5))
        elif isinstance(module, Experts):
            draw(module.wi, module.wi.shape[-2] ** -0.5)  # (experts, in, out): fan_in is dim -2
            draw(module.wo, module.wo.shape[-2] ** -0.5)
        elif isinstance(module, SwitchRouter):
            draw(module.weight, module.weight.shape[-1] ** -0.5)
        elif isinstance(module, (nn.Linear, nn.Embedding, PaperT5LayerNorm)):
            super()._init_weights(module)

    def _with_routing(self, out, output_class: type, encoder_ran: bool, output_router_logits: bool):
        """T5's output as ``output_class`` with each stack's Switch-layer statistics summed into
        transformers' fields plus ours; in training the weighted aux loss joins the loss."""
        fields, aux, loads, dropped = {}, [], [], []
        device = self.shared.weight.device
        stacks = {"encoder": self.encoder if encoder_ran else None, "decoder": getattr(self, "decoder", None)}
        for name, stack in stacks.items():
            if stack is None:  # the encoder did not run (its outputs were passed in)
                continue
            stats = stack.router_stats()
            zero = torch.zeros((), device=device)
            fields[f"{name}_aux_loss"] = sum((s.losses["load_balancing"] for s in stats), zero)
            fields[f"{name}_z_loss"] = sum((s.losses["router_z"] for s in stats), zero)
            if output_router_logits:
                fields[f"{name}_router_logits"] = tuple(s.router_logits for s in stats)
            aux += [s.aux_loss for s in stats]
            loads += [s.expert_load for s in stats]
            dropped += [s.dropped_fraction for s in stats]
        fields["aux_loss"] = sum(aux, torch.zeros((), device=device))
        fields["expert_load"] = torch.stack(loads) if loads else None
        fields["dropped_fraction"] = torch.stack(dropped) if dropped else None
        if out.get("loss") is not None and self.training:
            out["loss"] = out.loss + fields["aux_loss"]
        return output_class(**out, **fields)


class PaperSwitchModel(PaperSwitchPreTrainedModel, PaperT5Model):
    """Encoder-decoder without a head: the decoder's last hidden states and the routing statistics."""

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
        output_router_logits: bool = False,
        return_dict: bool | None = None,
        **kwargs,
    ) -> PaperSwitchSeq2SeqModelOutput:
        out = super().forward(
            input_ids=input_ids, attention_mask=attention_mask, decoder_input_ids=decoder_input_ids,
            decoder_attention_mask=decoder_attention_mask, encoder_outputs=encoder_outputs,
            past_key_values=past_key_values, inputs_embeds=inputs_embeds,
            decoder_inputs_embeds=decoder_inputs_embeds, use_cache=use_cache,
            output_attentions=output_attentions, output_hidden_states=output_hidden_states, **kwargs,
        )
        return self._with_routing(out, PaperSwitchSeq2SeqModelOutput, encoder_outputs is None, output_router_logits)


class PaperSwitchForConditionalGeneration(PaperSwitchPreTrainedModel, PaperT5ForConditionalGeneration):
    """Switch Transformer with T5's tied LM head. With ``labels``, ``loss`` is the token cross-entropy
    plus, in training, ``aux_loss`` (α · load balancing [+ z-loss] of every Switch layer); in evaluation
    the loss is the cross-entropy alone (perplexity) and ``aux_loss`` is reported beside it."""

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
        output_router_logits: bool = False,
        return_dict: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        **kwargs,
    ) -> PaperSwitchSeq2SeqLMOutput:
        out = super().forward(
            input_ids=input_ids, attention_mask=attention_mask, decoder_input_ids=decoder_input_ids,
            decoder_attention_mask=decoder_attention_mask, encoder_outputs=encoder_outputs,
            past_key_values=past_key_values, inputs_embeds=inputs_embeds,
            decoder_inputs_embeds=decoder_inputs_embeds, labels=labels, use_cache=use_cache,
            output_attentions=output_attentions, output_hidden_states=output_hidden_states,
            logits_to_keep=logits_to_keep, **kwargs,
        )
        return self._with_routing(out, PaperSwitchSeq2SeqLMOutput, encoder_outputs is None, output_router_logits)


class PaperSwitchEncoderModel(PaperSwitchPreTrainedModel, PaperT5EncoderModel):
    """The encoder alone; ``model.encoder.router_stats()`` holds its Switch layers' statistics."""


# The Auto classes this paper registers with (ZOO.md §2); also marks them for Hub export.
AUTO_CLASSES = {
    "AutoModel": PaperSwitchModel,
    "AutoModelForSeq2SeqLM": PaperSwitchForConditionalGeneration,
}
register_for_auto_classes(PaperSwitchConfig, AUTO_CLASSES)

__all__ = [
    "PaperSwitchConfig",
    "PaperSwitchModel",
    "PaperSwitchForConditionalGeneration",
    "PaperSwitchEncoderModel",
    "PaperSwitchPreTrainedModel",
    "PaperSwitchStack",
    "PaperSwitchBlock",
    "PaperSwitchLayerFF",
    "PaperSwitchSeq2SeqLMOutput",
    "PaperSwitchSeq2SeqModelOutput",
    "is_sparse_layer",
    "switch_layer",
]
