"""RNNsearch — Bahdanau, Cho & Bengio (2015), "Neural Machine Translation by Jointly Learning to Align
and Translate" (ICLR 2015); and its baseline RNNencdec (Cho et al. 2014a) with ``use_attention=False``.

The model of Appendix A.2, in the order the data meets it:

- **Encoder** (A.2.1): source word embeddings E x_j (m = 620), a forward and a backward GRU of n = 1000
  units sharing that embedding, and the annotations h_j = [→h_j; ←h_j] (2n). Each direction runs as one
  call of the fused GRU kernel (``torch.gru``, what ``nn.GRU`` calls, with ``nn.GRU``'s parameters).
- **Initial decoder state** (A.2.2): s_0 = tanh(W_s ←h_1).
- **Alignment model** (§3.1, A.1.2): e_ij = v_aᵀ tanh(W_a s_{i-1} + U_a h_j), α_ij = softmax_j(e_ij),
  context c_i = Σ_j α_ij h_j. U_a h_j does not depend on i and is computed once per sentence (A.1.2);
  padded source positions get α = 0.
- **Decoder GRU** (A.2.2): s_i = (1 - z_i)∘s_{i-1} + z_i∘s̃_i with
  s̃_i = tanh(W E y_{i-1} + U[r_i∘s_{i-1}] + C c_i), z_i = σ(W_z E y_{i-1} + U_z s_{i-1} + C_z c_i),
  r_i = σ(W_r E y_{i-1} + U_r s_{i-1} + C_r c_i) — the reset gate applied before U, as in the paper.
- **Deep output with maxout** (A.2.2): t̃_i = U_o s_{i-1} + V_o E y_{i-1} + C_o c_i (2l), t_i = the
  maximum of each pair (t̃_{i,2j-1}, t̃_{i,2j}) (l = 500 maxout units), p(y_i) ∝ exp(y_iᵀ W_o t_i).

RNNencdec (§4.2): one forward GRU encoder of n units; the context is fixed, c_i = →h_{T_x} ("the model
becomes RNN Encoder–Decoder if we fix c_i to →h_{T_x}", A.2.2), and the decoder starts from
s_0 = tanh(W_s c) as in Cho et al. (2014a), there being no backward state.

Generation carries the recurrent state as the cache (``PaperRNNSearchCache``: the decoder state s_{i-1},
the annotations and their projection U_a h_j, the source mask), so a cached step costs one decoder step
and gives the same result as re-reading the whole prefix.

Hub-exportable: standard library, ``torch``, ``transformers`` and sibling modules only.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import GenerationMixin, PreTrainedConfig
from transformers import initialization as init
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutput, Seq2SeqModelOutput

from .common import (
    PaperPreTrainedModel,
    check_attention_mask,
    check_choice,
    check_input_ids,
    check_int,
    check_length,
    check_positive_float,
    check_probability,
    register_for_auto_classes,
)
from .transformer import PaperTransformerForConditionalGeneration

READOUT_STATES = ("previous", "current")


class PaperRNNSearchConfig(PreTrainedConfig):
    """RNNsearch / RNNencdec hyper-parameters; defaults are the paper's (§4.2, Appendix A.2.2).

    ``hidden_size`` is n (1000 GRU units per direction and in the decoder), ``embedding_size`` m (620),
    ``alignment_size`` n' (the alignment model's hidden layer; None: n, the paper's 1000),
    ``maxout_size`` l (500 maxout units; alias ``intermediate_size``). ``vocab_size`` is the target
    shortlist K_y and ``source_vocab_size`` K_x (None: the same size; the paper keeps 30,000 words per
    language). ``use_attention=False`` gives RNNencdec. ``max_train_sentence_length`` records the
    training-set cut (30 or 50 words, the "-30"/"-50" of the model names; the training recipe applies
    it). An RNN has no position table: ``max_position_embeddings`` is only the longest source or target
    the model accepts (longer inputs get a ValueError). ``readout_state`` picks which decoder state feeds
    the deep output: ``"previous"`` (s_{i-1}, Appendix A.2.2's t̃_i) or ``"current"`` (s_i, eq. 4 of §3.1
    and the authors' GroundHog code). ``dropout`` (on the maxout output) is 0: the paper uses none.
    ``init_std`` (0.01) and ``alignment_init_std`` (0.001) are the Gaussian scales of Appendix B.1.
    """

    model_type = "paper-rnnsearch"
    keys_to_ignore_at_inference = ["past_key_values"]
    attribute_map = {
        "intermediate_size": "maxout_size",
        "n_positions": "max_position_embeddings",
        "initializer_range": "init_std",
    }

    vocab_size: int = 30000
    source_vocab_size: int | None = None
    hidden_size: int = 1000
    embedding_size: int = 620
    alignment_size: int | None = None
    maxout_size: int = 500
    num_hidden_layers: int = 1
    use_attention: bool = True
    max_train_sentence_length: int | None = 50
    max_position_embeddings: int = 512
    readout_state: str = "previous"
    dropout: float = 0.0
    init_std: float = 0.01
    alignment_init_std: float = 0.001
    use_cache: bool = True
    is_encoder_decoder: bool = True
    tie_word_embeddings: bool = False
    pad_token_id: int | None = 0
    bos_token_id: int | None = 1
    eos_token_id: int | list[int] | None = 2
    decoder_start_token_id: int | None = None

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        if self.source_vocab_size is None:
            self.source_vocab_size = self.vocab_size
        if self.alignment_size is None:
            self.alignment_size = self.hidden_size
        for name in ("vocab_size", "source_vocab_size", "hidden_size", "embedding_size", "alignment_size",
                     "maxout_size", "max_position_embeddings"):  # fmt: skip
            check_int(self, name)
        check_int(self, "max_train_sentence_length", allow_none=True)
        if self.num_hidden_layers != 1:
            raise ValueError(
                f"{type(self).__name__}: `num_hidden_layers`={self.num_hidden_layers!r} is not supported: the "
                "paper's encoder (one bidirectional GRU layer) and decoder (one GRU layer) have 1 layer."
            )
        if not isinstance(self.use_attention, bool):
            raise ValueError(
                f"{type(self).__name__}: `use_attention` must be True or False, got {self.use_attention!r}."
            )
        check_choice(self, "readout_state", READOUT_STATES)
        check_probability(self, "dropout")
        check_positive_float(self, "init_std")
        check_positive_float(self, "alignment_init_std")
        if self.tie_word_embeddings:
            raise ValueError(
                f"{type(self).__name__}: `tie_word_embeddings`=True is not supported: W_o (K_y × l) and the "
                "target embedding (K_y × m) are separate matrices in the paper."
            )
        if self.decoder_start_token_id is None:
            self.decoder_start_token_id = self.bos_token_id
        vocabularies = {"pad_token_id": self.source_vocab_size}
        for name in ("bos_token_id", "eos_token_id", "pad_token_id", "decoder_start_token_id"):
            value = getattr(self, name)
            size = min(self.vocab_size, vocabularies.get(name, self.vocab_size))
            ids = value if isinstance(value, list) else [value]
            if any(i is not None and not 0 <= i < size for i in ids):
                raise ValueError(
                    f"{type(self).__name__}: `{name}`={value!r} is outside the vocabulary [0, {size - 1}]."
                )

    @property
    def context_size(self) -> int:
        """Width of the annotations and contexts: 2n (bidirectional) for RNNsearch, n for RNNencdec."""
        return 2 * self.hidden_size if self.use_attention else self.hidden_size


# §4.2 and Appendix A.2.2: n = 1000, m = 620, n' = 1000, l = 500; "a shortlist of 30,000 most frequent
# words in each language" (§4.1; the source vocabulary follows vocab_size). -30/-50: trained on sentences
# of up to 30/50 words.
_PAPER_SIZES = dict(
    vocab_size=30000, hidden_size=1000, embedding_size=620, alignment_size=1000, maxout_size=500
)
PRESETS = {
    "rnnsearch-30": dict(_PAPER_SIZES, use_attention=True, max_train_sentence_length=30),
    "rnnsearch-50": dict(_PAPER_SIZES, use_attention=True, max_train_sentence_length=50),
    "rnnencdec-30": dict(_PAPER_SIZES, use_attention=False, max_train_sentence_length=30),
    "rnnencdec-50": dict(_PAPER_SIZES, use_attention=False, max_train_sentence_length=50),
}
# The paper reports no parameter counts; see the model card for the closed-form counts of these presets.
PAPER_PARAMETERS: dict[str, float] = {}


# ----------------------------------------------------------------------------------------------
# Cache: the recurrent state
# ----------------------------------------------------------------------------------------------


class PaperRNNSearchCache:
    """What a decoder step needs from the past: the state s_{i-1}, the annotations h_j, their projection
    U_a h_j (computed once per sentence) and the source mask; plus the number of tokens read.

    Not a key/value cache: generation reorders it for beam search through ``reorder_cache``, as it does
    transformers' other recurrent caches (xLSTM, RWKV)."""

    is_compileable = False

    def __init__(self):
        self.decoder_state: torch.Tensor | None = None
        self.annotations: torch.Tensor | None = None
        self.projected_annotations: torch.Tensor | None = None
        self.source_mask: torch.Tensor | None = None
        self.seen_tokens = 0

    def __repr__(self) -> str:
        return f"{type(self).__name__}(seen_tokens={self.seen_tokens})"

    @property
    def is_initialized(self) -> bool:
        return self.decoder_state is not None

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.seen_tokens

    def update(self, decoder_state, annotations, projected_annotations, source_mask, new_tokens: int) -> None:
        self.decoder_state, self.annotations = decoder_state, annotations
        self.projected_annotations, self.source_mask = projected_annotations, source_mask
        self.seen_tokens += new_tokens

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        """Keep the rows of the beams that survive (beam search)."""
        for name in ("decoder_state", "annotations", "projected_annotations", "source_mask"):
            value = getattr(self, name)
            if value is not None:
                setattr(self, name, value.index_select(0, beam_idx.to(value.device)))


# ----------------------------------------------------------------------------------------------
# Layers
# ----------------------------------------------------------------------------------------------


class PaperRNNSearchGRU(nn.Module):
    """One unidirectional GRU layer: ``nn.GRU``'s parameters (same names and layout) run by the same
    fused kernel ``nn.GRU`` calls (``torch.gru``; cuDNN on GPU). Called directly because TorchDynamo
    refuses to trace ``nn.GRU`` modules, and the forward pass must compile without graph breaks.
    Like ``nn.GRU`` (and cuDNN) the reset gate multiplies U h after the product: r∘(U h + b)."""

    def __init__(self, input_size: int, hidden_size: int):
        super().__init__()
        self.input_size, self.hidden_size = input_size, hidden_size
        self.weight_ih_l0 = nn.Parameter(torch.empty(3 * hidden_size, input_size))  # [W_r; W_z; W]
        self.weight_hh_l0 = nn.Parameter(torch.empty(3 * hidden_size, hidden_size))  # [U_r; U_z; U]
        self.bias_ih_l0 = nn.Parameter(torch.empty(3 * hidden_size))
        self.bias_hh_l0 = nn.Parameter(torch.empty(3 * hidden_size))

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        """(batch, time, input) -> the states (batch, time, hidden), starting from h_0 = 0 (A.2.1)."""
        h0 = inputs.new_zeros(1, inputs.shape[0], self.hidden_size)
        weights = [self.weight_ih_l0, self.weight_hh_l0, self.bias_ih_l0, self.bias_hh_l0]
        # has_biases, num_layers, dropout, train, bidirectional, batch_first
        return torch.gru(inputs, h0, weights, True, 1, 0.0, self.training, False, True)[0]


def _real_first_order(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For each row: the positions of its real tokens in order, then its padding (``order``), and the
    index that reverses the real part in place (``reverse``)."""
    length = mask.shape[1]
    positions = torch.arange(length, device=mask.device).expand_as(mask)
    order = torch.argsort(positions + (~mask).long() * length, dim=1, stable=True)
    lengths = mask.sum(1, keepdim=True)
    reverse = torch.where(positions < lengths, lengths - 1 - positions, positions)
    return order, reverse


def first_and_last_real(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices of each row's first and last real (unmasked) token, for left or right padding."""
    as_int = mask.int()
    first = as_int.argmax(1)
    last = mask.shape[1] - 1 - as_int.flip(1).argmax(1)
    return first, last


class PaperRNNSearchEncoderLayer(GradientCheckpointingLayer):
    """A forward GRU and (RNNsearch) a backward GRU over the embedded source (A.2.1).

    Padding is skipped exactly: the real tokens of each row are gathered to the front (in order for the
    forward GRU, reversed for the backward one), each GRU reads them first, and the states are put back
    at their positions; padded positions get zero annotations. Returns the annotations
    (batch, source, 2n) — [→h_j; ←h_j] — or (batch, source, n) →h_j for RNNencdec."""

    def __init__(self, config: PaperRNNSearchConfig):
        super().__init__()
        self.forward_rnn = PaperRNNSearchGRU(config.embedding_size, config.hidden_size)
        self.backward_rnn = (
            PaperRNNSearchGRU(config.embedding_size, config.hidden_size) if config.use_attention else None
        )

    def forward(self, inputs_embeds: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        order, reverse = _real_first_order(mask)
        width = inputs_embeds.shape[-1]
        packed = inputs_embeds.gather(1, order[..., None].expand(-1, -1, width))  # real tokens first
        states = [self.forward_rnn(packed)]  # →h, read left to right
        if self.backward_rnn is not None:
            backward_input = packed.gather(1, reverse[..., None].expand(-1, -1, width))
            backward = self.backward_rnn(backward_input)  # ←h, read right to left
            states.append(backward.gather(1, reverse[..., None].expand(-1, -1, backward.shape[-1])))
        packed_states = torch.cat(states, dim=-1)
        restore = torch.argsort(order, dim=1)  # packed position of each original position
        annotations = packed_states.gather(1, restore[..., None].expand(-1, -1, packed_states.shape[-1]))
        return annotations * mask[..., None].to(annotations.dtype)


class PaperRNNSearchEncoder(nn.Module):
    """Source word embeddings E x_j (shared by both directions, A.2.1) and the bidirectional GRU layer."""

    main_input_name = "input_ids"

    def __init__(self, config: PaperRNNSearchConfig):
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.source_vocab_size, config.embedding_size)
        self.layer = PaperRNNSearchEncoderLayer(config)

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
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
        check_input_ids(input_ids, config.source_vocab_size)
        check_length(shape[1], config.max_position_embeddings, "source sequence")
        check_attention_mask(attention_mask, shape[0], shape[1])
        if attention_mask is not None and attention_mask.dim() != 2:
            raise ValueError("`attention_mask` must be a 2-D (batch, source) padding mask.")
        if inputs_embeds is None:
            inputs_embeds = self.embed_tokens(input_ids)
        mask = _as_bool_mask(attention_mask, shape, inputs_embeds.device)
        annotations = self.layer(inputs_embeds, mask)
        output_hidden_states = (
            config.output_hidden_states if output_hidden_states is None else output_hidden_states
        )
        output = BaseModelOutput(
            last_hidden_state=annotations,
            hidden_states=(inputs_embeds, annotations) if output_hidden_states else None,
        )
        return output if return_dict is not False else output.to_tuple()


class PaperRNNSearchAlignment(nn.Module):
    """The alignment model a(s_{i-1}, h_j) = v_aᵀ tanh(W_a s_{i-1} + U_a h_j) (§3.1, A.1.2), a one-layer
    perceptron scoring every annotation, and the context c_i = Σ_j α_ij h_j."""

    def __init__(self, config: PaperRNNSearchConfig):
        super().__init__()
        self.W_a = _with_init(nn.Linear(config.hidden_size, config.alignment_size, bias=False), "alignment")
        self.U_a = _with_init(nn.Linear(config.context_size, config.alignment_size), "alignment")  # + bias
        self.v_a = _with_init(nn.Linear(config.alignment_size, 1, bias=False), "zeros")

    def project_annotations(self, annotations: torch.Tensor) -> torch.Tensor:
        """U_a h_j for every j: independent of i, computed once per source sentence (A.1.2)."""
        return self.U_a(annotations)

    def forward(self, state, annotations, projected_annotations, mask):
        energies = self.v_a(torch.tanh(self.W_a(state)[:, None, :] + projected_annotations)).squeeze(-1)
        energies = energies.masked_fill(~mask, torch.finfo(energies.dtype).min)  # α_ij = 0 on padding
        upcast = torch.promote_types(energies.dtype, torch.float32)  # softmax in float32 at least
        weights = torch.softmax(energies.to(upcast), dim=-1).to(annotations.dtype)
        context = torch.bmm(weights[:, None, :], annotations).squeeze(1)
        return context, weights


class PaperRNNSearchDecoderStep(GradientCheckpointingLayer):
    """One target position i: α_i and c_i from s_{i-1}, the deep-output features t_i, and s_i (A.2.2)."""

    def __init__(self, config: PaperRNNSearchConfig):
        super().__init__()
        n, l_2 = config.hidden_size, 2 * config.maxout_size
        self.readout_from_previous = config.readout_state == "previous"
        self.alignment = PaperRNNSearchAlignment(config) if config.use_attention else None
        # GRU of A.2.2; W E y_{i-1} (with the biases) comes precomputed for all positions.
        self.context_gates = nn.Linear(config.context_size, 3 * n, bias=False)  # [C_z; C_r; C]
        self.hidden_gates = _with_init(nn.Linear(n, 2 * n, bias=False), "orthogonal")  # [U_z; U_r]
        self.hidden_candidate = _with_init(nn.Linear(n, n, bias=False), "orthogonal")  # U
        # Deep output: t̃_i = U_o s + V_o E y_{i-1} + C_o c_i; V_o E y_{i-1} comes precomputed.
        self.U_o = nn.Linear(n, l_2)
        self.C_o = nn.Linear(config.context_size, l_2, bias=False)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, state, word_gates, word_readout, annotations, projected_annotations, mask):
        """state s_{i-1} (B, n); word_gates W E y_{i-1} + b (B, 3n); word_readout V_o E y_{i-1} (B, 2l);
        annotations (B, S, 2n) — for RNNencdec the fixed context (B, 1, n); projected_annotations U_a h
        (B, S, n') or None; mask (B, S). Returns s_i, t_i (B, l) and α_i (B, S) or None."""
        if self.alignment is not None:
            context, weights = self.alignment(state, annotations, projected_annotations, mask)
        else:  # RNNencdec: c_i = →h_{T_x} for every i
            context, weights = annotations[:, 0], None
        w_z, w_r, w = word_gates.chunk(3, dim=-1)
        c_z, c_r, c = self.context_gates(context).chunk(3, dim=-1)
        u_z, u_r = self.hidden_gates(state).chunk(2, dim=-1)
        update = torch.sigmoid(w_z + u_z + c_z)
        reset = torch.sigmoid(w_r + u_r + c_r)
        candidate = torch.tanh(w + self.hidden_candidate(reset * state) + c)
        new_state = (1 - update) * state + update * candidate
        readout_state = state if self.readout_from_previous else new_state
        pre_maxout = self.U_o(readout_state) + word_readout + self.C_o(context)
        maxout = pre_maxout.unflatten(-1, (-1, 2)).amax(-1)  # max over (t̃_{2j-1}, t̃_{2j})
        return new_state, self.dropout(maxout), weights


class PaperRNNSearchDecoder(nn.Module):
    """Target embeddings, the initial state s_0 and one ``PaperRNNSearchDecoderStep`` per position."""

    def __init__(self, config: PaperRNNSearchConfig):
        super().__init__()
        self.config = config
        n = config.hidden_size
        self.embed_tokens = nn.Embedding(config.vocab_size, config.embedding_size)
        self.W_s = nn.Linear(n, n)
        self.word_gates = nn.Linear(config.embedding_size, 3 * n)  # [W_z; W_r; W] E y_{i-1} + biases
        self.V_o = nn.Linear(config.embedding_size, 2 * config.maxout_size, bias=False)
        self.step = PaperRNNSearchDecoderStep(config)

    def forward(
        self,
        inputs_embeds: torch.Tensor,
        annotations: torch.Tensor,
        mask: torch.Tensor,
        past_key_values: PaperRNNSearchCache | None = None,
        use_cache: bool = False,
        output_attentions: bool = False,
        output_hidden_states: bool = False,
    ):
        if past_key_values is not None and past_key_values.is_initialized:
            state = past_key_values.decoder_state
            annotations, mask = past_key_values.annotations, past_key_values.source_mask
            projected = past_key_values.projected_annotations
        else:
            first, last = first_and_last_real(mask)
            rows = torch.arange(annotations.shape[0], device=annotations.device)
            if self.config.use_attention:
                backward_first = annotations[rows, first, self.config.hidden_size :]  # ←h_1
                state = torch.tanh(self.W_s(backward_first))  # s_0 = tanh(W_s ←h_1) (A.2.2)
                projected = self.step.alignment.project_annotations(annotations)  # U_a h_j, once
            else:  # RNNencdec: c = →h_{T_x} at every step, s_0 = tanh(W_s c) (Cho et al. 2014a)
                context = annotations[rows, last]
                state = torch.tanh(self.W_s(context))
                annotations, mask, projected = context[:, None], mask[:, :1] | True, None
        word_gates = self.word_gates(inputs_embeds)  # W E y_{i-1} for every position at once
        word_readout = self.V_o(inputs_embeds)
        features, weights, states = [], [], []
        for i in range(inputs_embeds.shape[1]):
            state, t_i, alpha_i = self.step(
                state, word_gates[:, i], word_readout[:, i], annotations, projected, mask
            )
            features.append(t_i)
            if output_attentions and alpha_i is not None:
                weights.append(alpha_i)
            if output_hidden_states:
                states.append(state)
        if use_cache:
            if past_key_values is None:
                past_key_values = PaperRNNSearchCache()
            past_key_values.update(state, annotations, projected, mask, inputs_embeds.shape[1])
        return (
            torch.stack(features, dim=1),
            past_key_values if use_cache else None,
            torch.stack(weights, dim=1) if weights else None,
            torch.stack(states, dim=1) if states else None,
        )


# ----------------------------------------------------------------------------------------------
# Models
# ----------------------------------------------------------------------------------------------


class PaperRNNSearchPreTrainedModel(PaperPreTrainedModel):
    config_class = PaperRNNSearchConfig
    base_model_prefix = "model"
    main_input_name = "input_ids"
    supports_gradient_checkpointing = True
    _no_split_modules = ["PaperRNNSearchEncoderLayer", "PaperRNNSearchDecoderStep"]
    _skip_keys_device_placement = ["past_key_values"]
    _supports_sdpa = False  # additive attention: there is no dot-product attention to dispatch
    _supports_flash_attn = False
    _supports_flex_attn = False
    _can_compile_fullgraph = True
    _is_stateful = True  # a recurrent state cannot be rolled back (no assisted decoding)

    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:
        return False  # the model builds its own PaperRNNSearchCache

    @torch.no_grad()
    def _init_weights(self, module):
        """Appendix B.1: recurrent matrices (U, U_z, U_r of every GRU) random orthogonal; W_a and U_a
        N(0, 0.001²); v_a and all biases zero; every other weight matrix N(0, 0.01²). (transformers calls
        this for the modules that hold parameters; linear layers carry their rule in ``init_rule``.)"""
        config = self.config
        if isinstance(module, PaperRNNSearchGRU):
            init.normal_(module.weight_ih_l0, std=config.init_std)
            _orthogonal_blocks(module.weight_hh_l0, module.hidden_size)
            init.zeros_(module.bias_ih_l0)
            init.zeros_(module.bias_hh_l0)
        elif isinstance(module, nn.Linear):
            rule = getattr(module, "init_rule", "normal")
            if rule == "orthogonal":
                _orthogonal_blocks(module.weight, module.weight.shape[1])
            elif rule == "zeros":
                init.zeros_(module.weight)
            else:
                std = config.alignment_init_std if rule == "alignment" else config.init_std
                init.normal_(module.weight, std=std)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            init.normal_(module.weight, std=config.init_std)


def _with_init(linear: nn.Linear, rule: str) -> nn.Linear:
    """Tag a linear layer with its Appendix B.1 initialisation: "orthogonal", "alignment" or "zeros"."""
    linear.init_rule = rule
    return linear


def _orthogonal_blocks(weight: torch.Tensor, size: int) -> None:
    """Each (size × size) block of a stacked gate matrix random orthogonal (Appendix B.1)."""
    if getattr(weight, "_is_hf_initialized", False) or weight.device.type == "meta":
        return
    for start in range(0, weight.shape[0], size):
        init.orthogonal_(weight[start : start + size])


class PaperRNNSearchModel(PaperRNNSearchPreTrainedModel):
    """Encoder and decoder; ``last_hidden_state`` is the deep-output features t_i (batch, target, l),
    ``cross_attentions`` the alignment weights α (batch, target, source) and ``decoder_hidden_states``
    (embeddings, decoder states s_i) when asked."""

    def __init__(self, config: PaperRNNSearchConfig):
        super().__init__(config)
        self.encoder = PaperRNNSearchEncoder(config)
        self.decoder = PaperRNNSearchDecoder(config)
        self.gradient_checkpointing = False
        self.post_init()

    def get_input_embeddings(self):
        return self.encoder.embed_tokens

    def set_input_embeddings(self, value):
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
        past_key_values: PaperRNNSearchCache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        decoder_inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> Seq2SeqModelOutput:
        config = self.config
        if decoder_input_ids is None and decoder_inputs_embeds is None:
            raise ValueError(
                "Pass `decoder_input_ids` (the targets shifted right), or `labels` to "
                "PaperRNNSearchForConditionalGeneration, which shifts them itself."
            )
        if decoder_input_ids is not None and decoder_inputs_embeds is not None:
            raise ValueError("Pass only one of `decoder_input_ids` or `decoder_inputs_embeds`.")
        use_cache = config.use_cache if use_cache is None else use_cache
        if self.gradient_checkpointing and self.training:
            use_cache = False
        output_attentions = config.output_attentions if output_attentions is None else output_attentions
        output_hidden_states = (
            config.output_hidden_states if output_hidden_states is None else output_hidden_states
        )
        if past_key_values is not None and not isinstance(past_key_values, PaperRNNSearchCache):
            raise ValueError(
                f"`past_key_values` must be a PaperRNNSearchCache (the recurrent state), got "
                f"{type(past_key_values).__name__}."
            )
        cached = past_key_values is not None and past_key_values.is_initialized
        if encoder_outputs is None and not cached:
            encoder_outputs = self.encoder(input_ids, attention_mask, inputs_embeds, output_hidden_states)
        elif encoder_outputs is not None and not isinstance(encoder_outputs, BaseModelOutput):
            encoder_outputs = BaseModelOutput(
                last_hidden_state=encoder_outputs[0],
                hidden_states=encoder_outputs[1] if len(encoder_outputs) > 1 else None,
            )
        annotations = encoder_outputs.last_hidden_state if encoder_outputs is not None else None

        shape = decoder_input_ids.shape if decoder_input_ids is not None else decoder_inputs_embeds.shape[:-1]
        if len(shape) != 2:
            raise ValueError(f"Expected decoder inputs of shape (batch, sequence), got {tuple(shape)}.")
        past_length = past_key_values.get_seq_length() if past_key_values is not None else 0
        check_input_ids(decoder_input_ids, config.vocab_size, "decoder_input_ids")
        check_length(past_length + shape[1], config.max_position_embeddings, "target sequence")
        check_attention_mask(decoder_attention_mask, shape[0], past_length + shape[1])
        mask = None
        if annotations is not None:
            check_attention_mask(attention_mask, annotations.shape[0], annotations.shape[1])
            mask = _as_bool_mask(attention_mask, annotations.shape[:2], annotations.device)
        if decoder_inputs_embeds is None:
            decoder_inputs_embeds = self.decoder.embed_tokens(decoder_input_ids)
        features, past_key_values, alignments, states = self.decoder(
            decoder_inputs_embeds,
            annotations,
            mask,
            past_key_values=past_key_values,
            use_cache=use_cache,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
        )
        output = Seq2SeqModelOutput(
            last_hidden_state=features,
            past_key_values=past_key_values,
            decoder_hidden_states=(decoder_inputs_embeds, states) if output_hidden_states else None,
            cross_attentions=(alignments,) if alignments is not None else None,
            encoder_last_hidden_state=annotations,
            encoder_hidden_states=encoder_outputs.hidden_states if encoder_outputs is not None else None,
        )
        return output if return_dict is not False else output.to_tuple()


def _as_bool_mask(attention_mask: torch.Tensor | None, shape, device) -> torch.Tensor:
    if attention_mask is None:
        return torch.ones(tuple(shape), dtype=torch.bool, device=device)
    return attention_mask.to(device=device) != 0


class PaperRNNSearchForConditionalGeneration(PaperRNNSearchPreTrainedModel, GenerationMixin):
    """RNNsearch with its output layer: p(y_i | ...) ∝ exp(y_iᵀ W_o t_i) (A.2.2); ``lm_head`` is W_o.

    ``labels`` are the target ids (-100 where ignored); the decoder inputs are the labels shifted right
    behind ``decoder_start_token_id``; ``loss`` is the mean token negative log-likelihood (the paper's
    training objective, §3). ``generate()`` runs greedy, sampling or beam search with the recurrent
    state as the cache; ``output_attentions=True`` returns the alignment weights α (batch, target,
    source) as ``cross_attentions[0]``."""

    def __init__(self, config: PaperRNNSearchConfig):
        super().__init__(config)
        self.model = PaperRNNSearchModel(config)
        self.lm_head = nn.Linear(config.maxout_size, config.vocab_size)  # W_o (with its bias)
        self.post_init()

    # The sequence-to-sequence head's plumbing — embedding accessors, labels shifted right into decoder
    # inputs, ``forward`` (base model, lm_head, token cross-entropy, ``Seq2SeqLMOutput``) — is the
    # Transformer's, shared rather than written again; W_o has its own bias, so no extra logits bias.
    final_logits_bias = None
    get_input_embeddings = PaperTransformerForConditionalGeneration.get_input_embeddings
    set_input_embeddings = PaperTransformerForConditionalGeneration.set_input_embeddings
    get_output_embeddings = PaperTransformerForConditionalGeneration.get_output_embeddings
    set_output_embeddings = PaperTransformerForConditionalGeneration.set_output_embeddings
    get_encoder = PaperTransformerForConditionalGeneration.get_encoder
    get_decoder = PaperTransformerForConditionalGeneration.get_decoder
    prepare_decoder_input_ids_from_labels = (
        PaperTransformerForConditionalGeneration.prepare_decoder_input_ids_from_labels
    )
    forward = PaperTransformerForConditionalGeneration.forward

    @torch.no_grad()
    def generate(self, inputs=None, generation_config=None, **kwargs):
        """``GenerationMixin.generate``; without a length limit, up to twice the longest source (by
        ``attention_mask``) plus 10 new tokens, capped by ``max_position_embeddings`` (the paper gives
        no limit)."""
        config = generation_config if generation_config is not None else self.generation_config
        length_given = "max_new_tokens" in kwargs or "max_length" in kwargs
        if not length_given and config.max_new_tokens is None and config.max_length is None:
            source = inputs if inputs is not None else kwargs.get("input_ids")
            mask = kwargs.get("attention_mask")
            if isinstance(source, torch.Tensor) and source.dim() == 2:
                longest = int(mask.sum(-1).max()) if mask is not None and mask.dim() == 2 else source.shape[1]
                kwargs["max_new_tokens"] = min(2 * longest + 10, self.config.max_position_embeddings - 1)
        return super().generate(inputs, generation_config, **kwargs)


# The Auto classes this paper registers with (ZOO.md §2); also marks them for Hub export.
AUTO_CLASSES = {
    "AutoModel": PaperRNNSearchModel,
    "AutoModelForSeq2SeqLM": PaperRNNSearchForConditionalGeneration,
}
register_for_auto_classes(PaperRNNSearchConfig, AUTO_CLASSES)

__all__ = [
    "PaperRNNSearchConfig",
    "PaperRNNSearchModel",
    "PaperRNNSearchForConditionalGeneration",
    "PaperRNNSearchPreTrainedModel",
    "PaperRNNSearchCache",
    "first_and_last_real",
]
