"""MoE-LSTM — Shazeer, Mirhoseini, Maziarz, Davis, Le, Hinton & Dean (2017), "Outrageously Large Neural
Networks: The Sparsely-Gated Mixture-of-Experts Layer" (ICLR 2017).

The language models of §5.1 and Appendix C (1 Billion Word benchmark), in the order the data meets them:

- a word embedding layer (512), a recurrent LSTM layer (512 units), a **MoE layer**, a second LSTM layer,
  and a softmax layer ("five layers", Appendix C). Each LSTM layer holds ``nn.LSTM``'s parameters (the
  input matrix as an ``nn.Linear``, ``input_proj``, so that adapters reach it) and runs the same fused
  kernel ``nn.LSTM`` calls (``torch.lstm``) when no position is padded; with padding it runs step by step
  and holds each row's state over its padded positions, so a padded prompt gives the state of its real
  tokens alone. (TorchDynamo refuses to trace ``nn.LSTM`` modules; the functional kernel it traces.)
- "For every layer other than the softmax, we apply dropout to the layer output [...]. After dropout,
  the output of the previous layer is added to the layer output" (Appendix C): x ← x + Dropout(f(x)) for
  each LSTM and MoE layer (the embedding layer gets dropout only). "The output of the MoE layer is passed
  through a sigmoid function before dropout": x ← x + Dropout(σ(MoE(x))).
- The MoE layer (``moe.NoisyTopKMoE``): experts with one ReLU hidden layer of 1024 and output 512 (no
  biases: "[512 ∗ 1024] + [1024 ∗ 512] = 1M parameters" each), the noisy top-k gate
  ``G(x) = Softmax(KeepTopK(H(x), k))``, ``H(x) = x W_g + StandardNormal() · Softplus(x W_noise)`` (§2.1)
  with k = 4 for the flat layers; the hierarchical layer of Appendix B for the ``-h`` models (a primary
  gate over 16 groups and a secondary gate in each group, k = 2 at each level: 4 experts per token).
- The balancing losses w_importance · CV(Importance)² (§4, eq. 6-7) and w_load · CV(Load)² with the
  smooth normal-CDF load estimator (Appendix A, eq. 8-11; eq. 13-14 for the hierarchical layer),
  w_importance = w_load = 0.1 (Appendix C), added to the LM loss in training and reported in the
  outputs with each MoE layer's per-expert load.

The dense baseline ``lstm-baseline`` is the paper's computationally matched "4xLSTM-512" (Appendix C:
"We replace the MoE layer with two additional 512-unit LSTM layers").

Generation carries the LSTM states (h, c) of every layer as the cache (``PaperMoELSTMCache``): a cached
step reads one token and equals re-reading the whole prefix; beam search reorders it.

Hub-exportable: standard library, ``torch``, ``transformers`` and sibling modules only.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationMixin, PreTrainedConfig
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import MoeCausalLMOutputWithPast, MoeModelOutputWithPast

from .common import (
    PaperPreTrainedModel,
    check_activation,
    check_attention_mask,
    check_input_ids,
    check_int,
    check_length,
    check_positive_float,
    check_probability,
    check_special_token_ids,
    register_for_auto_classes,
)
from .moe import Experts, NoisyTopKGate, NoisyTopKMoE


class PaperMoELSTMConfig(PreTrainedConfig):
    """MoE-LSTM language model hyper-parameters; defaults are the paper's MoE-4 (Appendix C).

    - ``hidden_size``: embedding, LSTM and MoE input/output width (512); ``num_hidden_layers``: LSTM layers
      (2); ``moe_layers``: after which LSTM layers (0-based) a MoE layer sits (``None``: after the first,
      the paper's; ``[]``: a dense LSTM stack).
    - ``num_experts``, ``intermediate_size`` (each expert's ReLU hidden layer, 1024), ``hidden_act``.
    - ``num_experts_per_tok``: k of the noisy top-k gate (4 flat; in a hierarchical layer, the secondary
      gates' k). ``num_expert_groups``: ``None`` for a flat MoE, else the primary gate's branching factor
      (16 in the paper's ``-h`` models), each group holding ``num_experts / num_expert_groups`` experts;
      ``num_groups_per_tok``: the primary gate's k (2).
    - ``w_importance``, ``w_load``: the balancing losses' weights (0.1 each, Appendix C).
    - ``dropout``: DropProb (0.1 for the models up to 256 experts, 0.2 for MoE-1024-h/4096-h, Table 7).
    - ``vocab_size``: 793,471, the 1B Word benchmark's vocabulary. An RNN has no position table:
      ``max_position_embeddings`` is only the longest sequence the model accepts (a ValueError beyond).
    - ``initializer_range``: scale of the embedding's uniform initialisation (the paper gives none).
    """

    model_type = "paper-moe-lstm"
    keys_to_ignore_at_inference = ["past_key_values"]
    attribute_map = {
        "d_model": "hidden_size",
        "n_positions": "max_position_embeddings",
        "dropout_prob": "dropout",
    }

    vocab_size: int = 793471
    hidden_size: int = 512
    num_hidden_layers: int = 2
    moe_layers: list[int] | None = None
    num_experts: int = 4
    intermediate_size: int = 1024
    num_experts_per_tok: int = 4
    num_expert_groups: int | None = None
    num_groups_per_tok: int = 2
    hidden_act: str = "relu"
    w_importance: float = 0.1
    w_load: float = 0.1
    dropout: float = 0.1
    max_position_embeddings: int = 1024
    initializer_range: float = 0.05
    use_cache: bool = True
    tie_word_embeddings: bool = False
    pad_token_id: int | None = None
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        for name in ("vocab_size", "hidden_size", "num_hidden_layers", "num_experts", "intermediate_size",
                     "num_experts_per_tok", "num_groups_per_tok", "max_position_embeddings"):  # fmt: skip
            check_int(self, name)
        check_int(self, "num_expert_groups", allow_none=True)
        if self.moe_layers is None:
            self.moe_layers = [0]
        if not isinstance(self.moe_layers, (list, tuple)) or any(
            isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < self.num_hidden_layers
            for i in self.moe_layers
        ):
            raise ValueError(
                f"{type(self).__name__}: `moe_layers`={self.moe_layers!r} must list LSTM layer indices in "
                f"[0, {self.num_hidden_layers - 1}] (`num_hidden_layers`={self.num_hidden_layers})."
            )
        self.moe_layers = sorted(set(self.moe_layers))
        experts_per_gate = self.num_experts
        if self.num_expert_groups is not None:
            if self.num_experts % self.num_expert_groups:
                raise ValueError(
                    f"{type(self).__name__}: `num_experts`={self.num_experts} is not divisible by "
                    f"`num_expert_groups`={self.num_expert_groups}."
                )
            experts_per_gate = self.num_experts // self.num_expert_groups
            if self.num_groups_per_tok > self.num_expert_groups:
                raise ValueError(
                    f"{type(self).__name__}: `num_groups_per_tok`={self.num_groups_per_tok} must be at most "
                    f"`num_expert_groups`={self.num_expert_groups}."
                )
        if self.num_experts_per_tok > experts_per_gate:
            raise ValueError(
                f"{type(self).__name__}: `num_experts_per_tok`={self.num_experts_per_tok} must be at most the "
                f"experts each gate chooses from ({experts_per_gate})."
            )
        check_activation(self, "hidden_act")
        check_probability(self, "dropout")
        check_positive_float(self, "initializer_range")
        for name in ("w_importance", "w_load"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise ValueError(f"{type(self).__name__}: `{name}` must be a number >= 0, got {value!r}.")
        check_special_token_ids(self)


# Appendix C and Table 7: MoE-4, -32, -256 (flat, k = 4), MoE-256-h, -1024-h, -4096-h (16 groups, k = 2 at
# each level), DropProb as in Table 7; the dense baseline is 4xLSTM-512.
_HIERARCHICAL = dict(num_expert_groups=16, num_groups_per_tok=2, num_experts_per_tok=2)
PRESETS = {
    "moe-lstm-4": dict(num_experts=4, dropout=0.1),
    "moe-lstm-32": dict(num_experts=32, dropout=0.1),
    "moe-lstm-256": dict(num_experts=256, dropout=0.1),
    "moe-lstm-256-h": dict(_HIERARCHICAL, num_experts=256, dropout=0.1),
    "moe-lstm-1024-h": dict(_HIERARCHICAL, num_experts=1024, dropout=0.2),
    "moe-lstm-4096-h": dict(_HIERARCHICAL, num_experts=4096, dropout=0.2),
    "lstm-baseline": dict(num_hidden_layers=4, moe_layers=[], dropout=0.1),
}
# Table 7, "Total #Params" (billions, one decimal; embedding and softmax of the 793,471-word vocabulary
# included); the column "#Params excluding embedding and softmax layers" is PAPER_PARAMETERS_EXCLUDING_EMBEDDINGS.
PAPER_PARAMETERS = {
    "moe-lstm-4": 0.8e9, "moe-lstm-32": 0.9e9, "moe-lstm-256": 1.1e9, "moe-lstm-256-h": 1.1e9,
    "moe-lstm-1024-h": 1.9e9, "moe-lstm-4096-h": 5.1e9, "lstm-baseline": 0.8e9,
}
PAPER_PARAMETERS_EXCLUDING_EMBEDDINGS = {
    "moe-lstm-4": 8.4e6, "moe-lstm-32": 37.8e6, "moe-lstm-256": 272.9e6, "moe-lstm-256-h": 272.9e6,
    "moe-lstm-1024-h": 1079.0e6, "moe-lstm-4096-h": 4303.4e6, "lstm-baseline": 8.4e6,
}


# ----------------------------------------------------------------------------------------------
# Cache: the recurrent state
# ----------------------------------------------------------------------------------------------


class PaperMoELSTMCache:
    """The LSTM states (h, c), each (batch, hidden), of every layer after the tokens read so far.

    Not a key/value cache: generation reorders it for beam search through ``reorder_cache``, as it does
    transformers' other recurrent caches (xLSTM, RWKV)."""

    is_compileable = False

    def __init__(self, num_layers: int):
        self.states: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * num_layers
        self.seen_tokens = 0

    def __repr__(self) -> str:
        return f"{type(self).__name__}(seen_tokens={self.seen_tokens})"

    @property
    def is_initialized(self) -> bool:
        return self.states[0] is not None

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.seen_tokens

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        """Keep the rows of the beams that survive (beam search)."""
        self.states = [
            None if s is None else tuple(t.index_select(0, beam_idx.to(t.device)) for t in s) for s in self.states
        ]


# ----------------------------------------------------------------------------------------------
# Layers
# ----------------------------------------------------------------------------------------------


class PaperMoELSTMLSTM(nn.Module):
    """One LSTM layer (Hochreiter & Schmidhuber 1997 with the forget gate of Gers et al. 2000), with
    ``nn.LSTM``'s parameters: ``input_proj`` holds ``weight_ih_l0``/``bias_ih_l0`` (gates i, f, g, o),
    ``weight_hh_l0``/``bias_hh_l0`` as named there.

    i, f, o = σ(W x + U h + b), g = tanh(W_g x + U_g h + b_g), c ← f∘c + i∘g, h ← o∘tanh(c)."""

    def __init__(self, input_size: int, hidden_size: int):
        super().__init__()
        self.input_size, self.hidden_size = input_size, hidden_size
        self.input_proj = nn.Linear(input_size, 4 * hidden_size)
        self.weight_hh_l0 = nn.Parameter(torch.empty(4 * hidden_size, hidden_size))
        self.bias_hh_l0 = nn.Parameter(torch.empty(4 * hidden_size))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """``nn.LSTM``'s default (every tensor uniform ±hidden^-1/2), so a layer used on its own holds
        numbers; the model's ``_init_weights`` then applies the paper's scheme."""
        bound = self.hidden_size**-0.5
        for weight in (self.input_proj.weight, self.input_proj.bias, self.weight_hh_l0, self.bias_hh_l0):
            nn.init.uniform_(weight, -bound, bound)

    def forward(
        self,
        inputs: torch.Tensor,
        state: tuple[torch.Tensor, torch.Tensor] | None = None,
        mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """(batch, time, input) -> states h (batch, time, hidden) and the last (h, c). ``mask`` (batch, time),
        True at real tokens: the state is held over the others (their output is the held h)."""
        batch = inputs.shape[0]
        if state is None:
            zeros = inputs.new_zeros(batch, self.hidden_size)
            state = (zeros, zeros)
        if mask is None and type(self.input_proj) is nn.Linear:  # the fused kernel, nn.LSTM's
            weights = [self.input_proj.weight, self.weight_hh_l0, self.input_proj.bias, self.bias_hh_l0]
            hx = (state[0].unsqueeze(0).contiguous(), state[1].unsqueeze(0).contiguous())
            # has_biases, num_layers, dropout, train, bidirectional, batch_first
            out, h, c = torch.lstm(inputs, hx, weights, True, 1, 0.0, self.training, False, True)
            return out, (h[0], c[0])
        # Step by step: padding (hold the state) or an adapted input projection (LoRA).
        gates_x = self.input_proj(inputs)  # W x + b for every step at once
        h, c = state
        outputs = []
        for t in range(inputs.shape[1]):
            gates = gates_x[:, t] + F.linear(h, self.weight_hh_l0, self.bias_hh_l0)
            i, f, g, o = gates.chunk(4, dim=-1)
            c_new = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            h_new = torch.sigmoid(o) * torch.tanh(c_new)
            if mask is not None:
                real = mask[:, t, None]
                h_new, c_new = torch.where(real, h_new, h), torch.where(real, c_new, c)
            h, c = h_new, c_new
            outputs.append(h)
        return torch.stack(outputs, dim=1), (h, c)


class PaperMoELSTMBlock(GradientCheckpointingLayer):
    """An LSTM layer, then (where ``config.moe_layers`` says) a MoE layer, each with Appendix C's dropout
    and residual connection: x ← x + Dropout(LSTM(x)); x ← x + Dropout(σ(MoE(x)))."""

    def __init__(self, config: PaperMoELSTMConfig, layer_idx: int):
        super().__init__()
        self.lstm = PaperMoELSTMLSTM(config.hidden_size, config.hidden_size)
        self.moe = None
        if layer_idx in config.moe_layers:
            self.moe = NoisyTopKMoE(
                config.hidden_size,
                config.intermediate_size,
                config.num_experts,
                config.num_experts_per_tok,
                ACT2FN[config.hidden_act],
                num_groups=config.num_expert_groups,
                group_k=config.num_groups_per_tok,
                w_importance=config.w_importance,
                w_load=config.w_load,
            )
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, hidden_states, state=None, mask=None):
        out, state = self.lstm(hidden_states, state, mask)
        hidden_states = hidden_states + self.dropout(out)
        if self.moe is not None:
            hidden_states = hidden_states + self.dropout(torch.sigmoid(self.moe(hidden_states, mask)))
        return hidden_states, state


# ----------------------------------------------------------------------------------------------
# Outputs
# ----------------------------------------------------------------------------------------------


@dataclass
class PaperMoELSTMModelOutput(MoeModelOutputWithPast):
    """``MoeModelOutputWithPast`` plus the balancing statistics: ``aux_loss`` (the weighted sum over MoE
    layers that training adds to the loss), ``importance_loss`` and ``load_loss`` (unweighted CV², summed
    over MoE layers), ``expert_load`` (MoE layers, experts): the fraction of real tokens each expert
    processed. ``router_logits`` (when asked): each MoE layer's clean gate logits x W_g."""

    aux_loss: torch.Tensor | None = None
    importance_loss: torch.Tensor | None = None
    load_loss: torch.Tensor | None = None
    expert_load: torch.Tensor | None = None


@dataclass
class PaperMoELSTMCausalLMOutput(MoeCausalLMOutputWithPast):
    """``MoeCausalLMOutputWithPast`` with the statistics of ``PaperMoELSTMModelOutput``."""

    importance_loss: torch.Tensor | None = None
    load_loss: torch.Tensor | None = None
    expert_load: torch.Tensor | None = None


# ----------------------------------------------------------------------------------------------
# Models
# ----------------------------------------------------------------------------------------------


class PaperMoELSTMPreTrainedModel(PaperPreTrainedModel):
    config_class = PaperMoELSTMConfig
    base_model_prefix = "model"
    main_input_name = "input_ids"
    supports_gradient_checkpointing = True
    _no_split_modules = ["PaperMoELSTMBlock"]
    _skip_keys_device_placement = ["past_key_values"]
    _supports_sdpa = False  # no attention
    _supports_flash_attn = False
    _supports_flex_attn = False
    _can_compile_fullgraph = True
    _is_stateful = True  # a recurrent state cannot be rolled back (no assisted decoding)

    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:
        return False  # the model builds its own PaperMoELSTMCache

    @torch.no_grad()
    def _init_weights(self, module):
        """The paper gives no initialisation. LSTM and linear layers: PyTorch's U(±1/√fan_in) (nn.LSTM's
        U(±1/√hidden)); experts U(±1/√fan_in); embeddings U(±initializer_range); the gates' W_g and
        W_noise zero (Appendix A: "initialize W_g and W_noise to all zeros")."""
        if isinstance(module, PaperMoELSTMLSTM):
            bound = module.hidden_size**-0.5
            init.uniform_(module.weight_hh_l0, -bound, bound)
            init.uniform_(module.bias_hh_l0, -bound, bound)
        elif isinstance(module, nn.Linear):
            bound = module.in_features**-0.5
            init.uniform_(module.weight, -bound, bound)
            if module.bias is not None:
                init.uniform_(module.bias, -bound, bound)
        elif isinstance(module, nn.Embedding):
            r = self.config.initializer_range
            init.uniform_(module.weight, -r, r)
        elif isinstance(module, Experts):
            for weight in (module.wi, module.wo):
                bound = weight.shape[-2] ** -0.5  # (experts, in, out): fan_in is dim -2
                init.uniform_(weight, -bound, bound)
        elif isinstance(module, NoisyTopKGate):
            init.zeros_(module.w_gate)
            init.zeros_(module.w_noise)
        elif isinstance(module, NoisyTopKMoE) and module.num_groups is not None:
            init.zeros_(module.secondary_w_gate)
            init.zeros_(module.secondary_w_noise)


class PaperMoELSTMModel(PaperMoELSTMPreTrainedModel):
    """Embedding and the stack of LSTM (+ MoE) blocks; ``last_hidden_state`` is the input of the softmax."""

    def __init__(self, config: PaperMoELSTMConfig):
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.dropout = nn.Dropout(config.dropout)
        self.layers = nn.ModuleList(PaperMoELSTMBlock(config, i) for i in range(config.num_hidden_layers))
        self.gradient_checkpointing = False
        self.post_init()

    def get_input_embeddings(self):
        return self.embed_tokens

    def set_input_embeddings(self, value):
        self.embed_tokens = value

    def moe_layers(self) -> list[NoisyTopKMoE]:
        return [block.moe for block in self.layers if block.moe is not None]

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        past_key_values: PaperMoELSTMCache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        output_hidden_states: bool | None = None,
        output_router_logits: bool = False,
        return_dict: bool | None = None,
        **kwargs,
    ) -> PaperMoELSTMModelOutput:
        config = self.config
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("Pass exactly one of `input_ids` or `inputs_embeds`.")
        shape = input_ids.shape if input_ids is not None else inputs_embeds.shape[:-1]
        if len(shape) != 2:
            raise ValueError(f"Expected inputs of shape (batch, sequence), got {tuple(shape)}.")
        if past_key_values is not None and not isinstance(past_key_values, PaperMoELSTMCache):
            raise ValueError(
                f"`past_key_values` must be a PaperMoELSTMCache (the LSTM states), got "
                f"{type(past_key_values).__name__}."
            )
        use_cache = config.use_cache if use_cache is None else use_cache
        if self.gradient_checkpointing and self.training:
            use_cache = False
        output_hidden_states = config.output_hidden_states if output_hidden_states is None else output_hidden_states
        batch, length = shape
        past_length = past_key_values.get_seq_length() if past_key_values is not None else 0
        check_input_ids(input_ids, config.vocab_size)
        check_length(past_length + length, config.max_position_embeddings)
        check_attention_mask(attention_mask, batch, past_length + length)

        # Padding: the state is held over padded positions. Without any (checked outside compilation)
        # the fused kernel runs.
        mask = None
        if attention_mask is not None and attention_mask.dim() == 2:
            if torch.compiler.is_compiling() or not bool(attention_mask.all()):
                mask = attention_mask[:, -length:].to(device=(input_ids if input_ids is not None else
                                                              inputs_embeds).device) != 0

        if inputs_embeds is None:
            inputs_embeds = self.embed_tokens(input_ids)
        hidden_states = self.dropout(inputs_embeds)  # Appendix C: dropout on every layer's output
        if use_cache and past_key_values is None:
            past_key_values = PaperMoELSTMCache(len(self.layers))
        all_hidden = (hidden_states,) if output_hidden_states else None
        for i, block in enumerate(self.layers):
            state = past_key_values.states[i] if past_key_values is not None else None
            hidden_states, state = block(hidden_states, state, mask)
            if use_cache:
                past_key_values.states[i] = state
            if output_hidden_states:
                all_hidden += (hidden_states,)
        if use_cache:
            past_key_values.seen_tokens += length

        stats = [layer.stats for layer in self.moe_layers()]
        zero = hidden_states.new_zeros((), dtype=torch.float32)
        output = PaperMoELSTMModelOutput(
            last_hidden_state=hidden_states,
            past_key_values=past_key_values if use_cache else None,
            hidden_states=all_hidden,
            router_logits=tuple(s.router_logits for s in stats) if output_router_logits else None,
            aux_loss=sum((s.aux_loss for s in stats), zero),
            importance_loss=sum((s.losses["importance"] for s in stats), zero),
            load_loss=sum((s.losses["load"] for s in stats), zero),
            expert_load=torch.stack([s.expert_load for s in stats]) if stats else None,
        )
        return output if return_dict is not False else output.to_tuple()


class PaperMoELSTMForCausalLM(PaperMoELSTMPreTrainedModel, GenerationMixin):
    """The language model: the stack and the softmax layer (its own matrix and bias; the paper's Table 7
    counts embedding and softmax separately). With ``labels`` (the input ids; shifted inside, -100
    ignored), ``loss`` is the next-token cross-entropy plus, in training, ``aux_loss``; in evaluation the
    cross-entropy alone (perplexity), ``aux_loss`` reported beside it."""

    def __init__(self, config: PaperMoELSTMConfig):
        super().__init__(config)
        self.model = PaperMoELSTMModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size)
        self.post_init()

    def get_input_embeddings(self):
        return self.model.embed_tokens

    def set_input_embeddings(self, value):
        self.model.embed_tokens = value

    def get_output_embeddings(self):
        return self.lm_head

    def set_output_embeddings(self, value):
        self.lm_head = value

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        past_key_values: PaperMoELSTMCache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        output_hidden_states: bool | None = None,
        output_router_logits: bool = False,
        return_dict: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        **kwargs,
    ) -> PaperMoELSTMCausalLMOutput:
        out = self.model(
            input_ids=input_ids, attention_mask=attention_mask, past_key_values=past_key_values,
            inputs_embeds=inputs_embeds, use_cache=use_cache, output_hidden_states=output_hidden_states,
            output_router_logits=output_router_logits,
        )
        hidden = out.last_hidden_state
        keep = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
        logits = self.lm_head(hidden[:, keep, :])
        loss = None
        if labels is not None:
            loss = self.loss_function(logits, labels, vocab_size=self.config.vocab_size, **kwargs)
            if self.training:
                loss = loss + out.aux_loss
        output = PaperMoELSTMCausalLMOutput(
            loss=loss,
            aux_loss=out.aux_loss,
            logits=logits,
            past_key_values=out.past_key_values,
            hidden_states=out.hidden_states,
            router_logits=out.router_logits,
            importance_loss=out.importance_loss,
            load_loss=out.load_loss,
            expert_load=out.expert_load,
        )
        return output if return_dict is not False else output.to_tuple()


# The Auto classes this paper registers with (ZOO.md §2); also marks them for Hub export.
AUTO_CLASSES = {
    "AutoModel": PaperMoELSTMModel,
    "AutoModelForCausalLM": PaperMoELSTMForCausalLM,
}
register_for_auto_classes(PaperMoELSTMConfig, AUTO_CLASSES)

__all__ = [
    "PaperMoELSTMConfig",
    "PaperMoELSTMModel",
    "PaperMoELSTMForCausalLM",
    "PaperMoELSTMPreTrainedModel",
    "PaperMoELSTMCache",
    "PaperMoELSTMLSTM",
    "PaperMoELSTMBlock",
    "PaperMoELSTMModelOutput",
    "PaperMoELSTMCausalLMOutput",
]
