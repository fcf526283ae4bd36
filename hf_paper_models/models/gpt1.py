"""GPT-1 — Radford, Narasimhan, Salimans & Sutskever (2018), "Improving Language Understanding by
Generative Pre-Training".

§3.1/§4.1: a 12-layer decoder-only Transformer (768 wide, 12 heads of 64, 3072-wide feed-forward),
learned position embeddings over 512 tokens, a 40,000-merge BPE vocabulary, GELU activations and
N(0, 0.02) initialisation. Blocks are post-LN as in Vaswani et al. (2017): h = LN(x + Attn(x)),
out = LN(h + MLP(h)), and no LayerNorm follows the last block (GPT-2 moved LN to the sub-block
inputs). The output layer is the transposed token embedding (eq. 2: P(u) = softmax(h_n W_eᵀ)).

§3.2: supervised fine-tuning feeds the last block's activation at the extract token to a linear
layer, with the language-modelling objective kept as an auxiliary loss: L3 = L2 + λ·L1, λ = 0.5.
§3.3 / Figure 1: structured inputs become one token sequence with a start token ``<s>``, a
delimiter ``$`` and an extract token ``e`` (``GPT1TaskFormatter``); for similarity both orders are
processed and their final representations summed; for multiple choice each answer is a sequence
and a softmax runs over the answers.

Module names follow transformers' ``OpenAIGPTModel``/``OpenAIGPTDoubleHeadsModel`` so that the
released ``openai-gpt`` weights convert by name (its ``Conv1D`` weights transposed into
``nn.Linear``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from transformers import GenerationMixin
from transformers import initialization as init
from transformers.cache_utils import Cache
from transformers.loss.loss_utils import ForCausalLMLoss, ForSequenceClassificationLoss
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import CausalLMOutputWithPast
from transformers.utils import ModelOutput

from .attention import CausalSelfAttention, FeedForward
from .common import (
    PaperDecoderConfig,
    PaperPreTrainedModel,
    check_probability,
    register_for_auto_classes,
)
from .decoder import DecoderStack


class PaperGPT1Config(PaperDecoderConfig):
    """GPT-1 hyper-parameters (§4.1). Defaults are the paper's single model (≈117M).

    ``activation_function`` is ``"gelu_new"``: the paper's GELU as OpenAI's released code computes
    it (the tanh approximation), which is also what transformers' ``openai-gpt`` runs for its
    ``afn="gelu"``. The exact erf GELU (``"gelu"``) is selectable but differs by up to 5e-4 per unit.
    """

    model_type = "paper-gpt1"
    attribute_map = {
        **PaperDecoderConfig.attribute_map,
        "summary_first_dropout": "clf_pdrop",  # transformers' OpenAIGPTConfig name
    }

    vocab_size: int = 40478  # 40,000 BPE merges + base symbols, as released
    max_position_embeddings: int = 512
    activation_function: str = "gelu_new"
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None
    # §3.2: weight λ of the auxiliary language-modelling objective, L3 = L2 + λ·L1 (λ = 0.5, §4.1).
    lm_coef: float = 0.5
    # §4.1 fine-tuning: "We add dropout to the classifier with a rate of 0.1."
    clf_pdrop: float = 0.1

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        check_probability(self, "clf_pdrop")
        value = self.lm_coef
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or not math.isfinite(value)
            or value < 0
        ):
            raise ValueError(
                f"PaperGPT1Config: `lm_coef` (λ of the auxiliary LM loss) must be a finite number >= 0, "
                f"got {value!r}."
            )


# §4.1 "Model specifications": 12 layers, 768-dimensional states, 12 attention heads, 3072-wide
# position-wise feed-forward networks, 512-token contexts.
PRESETS = {
    "gpt1": dict(
        num_hidden_layers=12,
        hidden_size=768,
        num_attention_heads=12,
        intermediate_size=3072,
        max_position_embeddings=512,
        vocab_size=40478,
    ),
}
# The paper gives no count; 117M is the figure OpenAI later quoted (GPT-2 paper, Table 2). The
# released model, which ours matches exactly, has 116.5M.
PAPER_PARAMETERS = {"gpt1": 117e6}


# ----------------------------------------------------------------------------------------------
# Output dataclasses
# ----------------------------------------------------------------------------------------------


@dataclass
class PaperGPT1SequenceClassifierOutput(ModelOutput):
    """``loss`` = ``clf_loss`` + λ·``lm_loss`` (§3.2, L3) when both terms are computed, else the one there is.

    ``logits`` are the class scores (batch, num_labels); ``lm_logits`` the auxiliary LM's token scores,
    returned only when ``lm_labels`` were given.
    """

    loss: torch.Tensor | None = None
    clf_loss: torch.Tensor | None = None
    lm_loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    lm_logits: torch.Tensor | None = None
    past_key_values: Cache | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None


@dataclass
class PaperGPT1DoubleHeadsModelOutput(ModelOutput):
    """``loss`` = ``mc_loss`` + λ·``lm_loss`` (§3.2, L3) when both terms are computed, else the one there is.

    ``logits`` are the LM scores (batch, num_choices, sequence, vocab) as in transformers'
    ``OpenAIGPTDoubleHeadsModelOutput``; ``mc_logits`` the choice scores (batch, num_choices).
    """

    loss: torch.Tensor | None = None
    mc_loss: torch.Tensor | None = None
    lm_loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    mc_logits: torch.Tensor | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None


# ----------------------------------------------------------------------------------------------
# Modules
# ----------------------------------------------------------------------------------------------


class PaperGPT1Block(GradientCheckpointingLayer):
    """h = LN₁(x + Attn(x)); out = LN₂(h + MLP(h)) — the post-LN block of Vaswani et al. (2017)."""

    def __init__(self, config: PaperGPT1Config, layer_idx: int):
        super().__init__()
        self.attention_type = "full_attention"
        self.attn = CausalSelfAttention(config, layer_idx)
        self.ln_1 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_epsilon)
        self.mlp = FeedForward(config)
        self.ln_2 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_epsilon)

    def forward(self, hidden_states, attention_mask=None, past_key_values=None, **kwargs):
        attn_output, weights = self.attn(hidden_states, attention_mask, past_key_values, **kwargs)
        hidden_states = self.ln_1(hidden_states + attn_output)
        hidden_states = self.ln_2(hidden_states + self.mlp(hidden_states))
        return hidden_states, weights


class PaperGPT1MultipleChoiceHead(nn.Module):
    """Linear scorer W_y on the extract token's final activation (§3.2), with the classifier dropout.

    Named ``summary`` as transformers' ``OpenAIGPTSequenceSummary`` (one score per choice, with bias).
    """

    def __init__(self, config: PaperGPT1Config):
        super().__init__()
        self.dropout = nn.Dropout(config.clf_pdrop)
        self.summary = nn.Linear(config.hidden_size, 1)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.summary(self.dropout(pooled)).squeeze(-1)


class PaperGPT1PreTrainedModel(PaperPreTrainedModel):
    config_class = PaperGPT1Config
    base_model_prefix = "transformer"
    supports_gradient_checkpointing = True
    _no_split_modules = ["PaperGPT1Block"]
    _skip_keys_device_placement = ["past_key_values"]
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = False
    _supports_attention_backend = True
    _can_compile_fullgraph = True

    @torch.no_grad()
    def _init_weights(self, module):
        # §4.1: "Since layernorm is used extensively throughout the model, a simple weight
        # initialization of N(0, 0.02) was sufficient." Biases start at zero, LayerNorm at identity.
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            init.normal_(module.weight, mean=0.0, std=std)
        elif isinstance(module, nn.LayerNorm):
            init.ones_(module.weight)
            init.zeros_(module.bias)


class PaperGPT1Model(DecoderStack, PaperGPT1PreTrainedModel):
    def __init__(self, config: PaperGPT1Config):
        super().__init__(config)
        self.tokens_embed = nn.Embedding(config.vocab_size, config.hidden_size)
        self.positions_embed = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.drop = nn.Dropout(config.embd_pdrop)
        self.h = nn.ModuleList([PaperGPT1Block(config, i) for i in range(config.num_hidden_layers)])
        self.gradient_checkpointing = False
        self.post_init()

    def get_input_embeddings(self):
        return self.tokens_embed

    def set_input_embeddings(self, new_embeddings):
        self.tokens_embed = new_embeddings

    def embed(self, input_ids, inputs_embeds, position_ids, past_length):
        """h₀ = U W_e + W_p (eq. 2): token plus learned position embeddings."""
        if inputs_embeds is None:
            inputs_embeds = self.tokens_embed(input_ids)
        if position_ids is None:
            position_ids = torch.arange(inputs_embeds.shape[1], device=inputs_embeds.device) + past_length
            position_ids = position_ids.unsqueeze(0)
        return inputs_embeds + self.positions_embed(position_ids), position_ids

    # Post-LN: the last block ends in a LayerNorm already; the paper has no final one (final_norm = identity).


class PaperGPT1LMHeadModel(PaperGPT1PreTrainedModel, GenerationMixin):
    """The pre-training model: P(u) = softmax(h_n W_eᵀ) (eq. 2), objective L1 (eq. 1)."""

    _tied_weights_keys = {"lm_head.weight": "transformer.tokens_embed.weight"}

    def __init__(self, config: PaperGPT1Config):
        super().__init__(config)
        self.transformer = PaperGPT1Model(config)
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


# ----------------------------------------------------------------------------------------------
# Fine-tuning heads (§3.2, §3.3)
# ----------------------------------------------------------------------------------------------


def _flatten_choices(tensor: torch.Tensor | None, name: str, leading: tuple[int, ...]) -> torch.Tensor | None:
    """(batch, k, ...) → (batch·k, ...), checking that the leading dimensions match the inputs'."""
    if tensor is None:
        return None
    if tuple(tensor.shape[: len(leading)]) != leading or tensor.dim() < len(leading) + 1:
        raise ValueError(
            f"`{name}` has shape {tuple(tensor.shape)}, expected {leading + ('sequence',)} like the inputs."
        )
    return tensor.reshape(-1, *tensor.shape[len(leading) :])


def _extract_positions(
    mc_token_ids: torch.Tensor | None,
    attention_mask: torch.Tensor | None,
    input_ids: torch.Tensor | None,
    pad_token_id: int | None,
    rows: int,
    length: int,
    device: torch.device,
) -> torch.Tensor:
    """Position of each (flattened) sequence's extract token: ``mc_token_ids`` when given, else the last
    non-padding token from ``attention_mask``, else from ``pad_token_id``, else the last position."""
    if mc_token_ids is not None:
        positions = mc_token_ids.reshape(-1).to(device)
        if positions.numel() != rows:
            raise ValueError(
                f"`mc_token_ids` has {positions.numel()} entries, expected one per sequence ({rows})."
            )
        if (
            not torch.compiler.is_compiling()
            and positions.numel()
            and (int(positions.min()) < 0 or int(positions.max()) >= length)
        ):
            raise ValueError(
                f"`mc_token_ids` must be positions in [0, {length - 1}], got values from "
                f"{int(positions.min())} to {int(positions.max())}."
            )
        return positions.long()
    index = torch.arange(length, device=device)
    if attention_mask is not None and attention_mask.dim() == 2:
        keep = attention_mask[:, -length:].to(device) != 0
        return (index * keep).argmax(-1)
    if input_ids is not None and pad_token_id is not None:
        return (index * (input_ids.to(device) != pad_token_id)).argmax(-1)
    return torch.full((rows,), length - 1, device=device, dtype=torch.long)


def _combine_losses(task_loss, lm_loss, lm_coef: float):
    """L3 = L2 + λ·L1 (§3.2); with one term only, that term."""
    if task_loss is not None and lm_loss is not None:
        return task_loss + lm_coef * lm_loss
    return task_loss if task_loss is not None else lm_loss


class PaperGPT1ForSequenceClassification(PaperGPT1PreTrainedModel):
    """Classification, entailment and similarity fine-tuning (§3.2, §3.3).

    ``input_ids`` of shape (batch, sequence): the class scores come from the extract token's final
    activation through ``score`` (no bias, as transformers' ``OpenAIGPTForSequenceClassification``),
    which by default is the last non-padding token. Shape (batch, k, sequence), e.g. the two orderings
    of ``GPT1TaskFormatter.transform_similarity``: "we process both input sequences independently to
    produce two sequence representations h_l^m which are added element-wise before being fed into the
    linear output layer" (§3.3). ``lm_labels`` adds the auxiliary LM loss: loss = L2 + λ·L1.
    """

    _tied_weights_keys = {"lm_head.weight": "transformer.tokens_embed.weight"}
    accepts_loss_kwargs = False  # our loss mixes two terms; Trainer's token count would misnormalise it

    def __init__(self, config: PaperGPT1Config):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.transformer = PaperGPT1Model(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)  # auxiliary L1
        self.dropout = nn.Dropout(config.clf_pdrop)
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
        lm_labels=None,
        mc_token_ids=None,
        use_cache=None,
        output_attentions=None,
        output_hidden_states=None,
        return_dict=None,
        **kwargs,
    ) -> PaperGPT1SequenceClassifierOutput:
        r"""
        labels: (batch,) class ids, or (batch, num_labels) floats for regression / multi-label.
        lm_labels: (batch, [k,] sequence) token ids for the auxiliary LM loss (shifted inside; -100 ignored).
        mc_token_ids: (batch, [k]) position of the extract token; default the last non-padding token.
        """
        kwargs.pop("num_items_in_batch", None)
        inputs = input_ids if input_ids is not None else inputs_embeds
        if inputs is None:
            raise ValueError("Pass exactly one of `input_ids` or `inputs_embeds`.")
        orders = inputs.dim() == (3 if input_ids is not None else 4)
        batch = inputs.shape[0]
        if orders:  # (batch, k, sequence): k orderings whose final representations are summed
            leading = tuple(inputs.shape[:2])
            input_ids = _flatten_choices(input_ids, "input_ids", leading)
            inputs_embeds = _flatten_choices(inputs_embeds, "inputs_embeds", leading)
            attention_mask = _flatten_choices(attention_mask, "attention_mask", leading)
            token_type_ids = _flatten_choices(token_type_ids, "token_type_ids", leading)
            position_ids = _flatten_choices(position_ids, "position_ids", leading)
            lm_labels = _flatten_choices(lm_labels, "lm_labels", leading)
            use_cache = False
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
        rows, length = hidden_states.shape[:2]
        positions = _extract_positions(
            mc_token_ids,
            attention_mask,
            input_ids,
            self.config.pad_token_id,
            rows,
            length,
            hidden_states.device,
        )
        pooled = hidden_states[torch.arange(rows, device=hidden_states.device), positions]
        pooled = pooled.view(batch, -1, pooled.shape[-1]).sum(1)  # k = 1 for plain sequences
        logits = self.score(self.dropout(pooled))

        clf_loss = lm_loss = lm_logits = None
        if labels is not None:
            clf_loss = ForSequenceClassificationLoss(labels=labels, pooled_logits=logits, config=self.config)
        if lm_labels is not None:
            lm_logits = self.lm_head(hidden_states)
            lm_loss = ForCausalLMLoss(lm_logits, lm_labels, vocab_size=self.config.vocab_size)
            if orders:
                lm_logits = lm_logits.view(*leading, *lm_logits.shape[1:])
        return PaperGPT1SequenceClassifierOutput(
            loss=_combine_losses(clf_loss, lm_loss, self.config.lm_coef),
            clf_loss=clf_loss,
            lm_loss=lm_loss,
            logits=logits,
            lm_logits=lm_logits,
            past_key_values=outputs.past_key_values,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )


class PaperGPT1DoubleHeadsModel(PaperGPT1PreTrainedModel):
    """Multiple choice with the auxiliary LM (§3.2, §3.3): LM head (tied) + ``multiple_choice_head``.

    Inputs are (batch, num_choices, sequence), one ``[<s>; context; $; answer; e]`` per answer. Each
    choice is scored from its extract token (``mc_token_ids``, default the last non-padding token) and
    the scores are normalised with a softmax over the choices.

    Labels, in transformers' two conventions: ``labels`` of shape (batch,) are the choice labels (as
    ``AutoModelForMultipleChoice`` passes them); with ``mc_labels`` given, ``labels`` are the LM labels
    (as ``OpenAIGPTDoubleHeadsModel``). ``lm_labels`` always means LM labels. With both terms,
    ``loss`` = mc_loss + λ·lm_loss (L3).
    """

    _tied_weights_keys = {"lm_head.weight": "transformer.tokens_embed.weight"}
    accepts_loss_kwargs = False

    def __init__(self, config: PaperGPT1Config):
        super().__init__(config)
        self.transformer = PaperGPT1Model(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.multiple_choice_head = PaperGPT1MultipleChoiceHead(config)
        self.post_init()

    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        token_type_ids=None,
        position_ids=None,
        inputs_embeds=None,
        mc_token_ids=None,
        labels=None,
        mc_labels=None,
        lm_labels=None,
        output_attentions=None,
        output_hidden_states=None,
        return_dict=None,
        **kwargs,
    ) -> PaperGPT1DoubleHeadsModelOutput:
        kwargs.pop("num_items_in_batch", None)
        kwargs.pop("use_cache", None)
        inputs = input_ids if input_ids is not None else inputs_embeds
        if inputs is None or (input_ids is not None and inputs_embeds is not None):
            raise ValueError("Pass exactly one of `input_ids` or `inputs_embeds`.")
        if inputs.dim() != (3 if input_ids is not None else 4):
            raise ValueError(
                f"Multiple-choice inputs must be (batch, num_choices, sequence), got {tuple(inputs.shape)}."
            )
        leading = tuple(inputs.shape[:2])
        if labels is not None and labels.dim() == 1:  # AutoModelForMultipleChoice: labels pick the choice
            if mc_labels is not None:
                raise ValueError(
                    "Got `mc_labels` and 1-D `labels`: with `mc_labels`, `labels` are the LM labels of shape "
                    "(batch, num_choices, sequence)."
                )
            mc_labels, labels = labels, None
        if labels is not None:
            if lm_labels is not None:
                raise ValueError("Pass the LM labels once: as `labels` (with `mc_labels`) or as `lm_labels`.")
            lm_labels = labels
        if mc_labels is not None and tuple(mc_labels.shape) != leading[:1]:
            raise ValueError(f"`mc_labels` has shape {tuple(mc_labels.shape)}, expected ({leading[0]},).")

        flat_ids = _flatten_choices(input_ids, "input_ids", leading)
        flat_mask = _flatten_choices(attention_mask, "attention_mask", leading)
        outputs = self.transformer(
            flat_ids,
            attention_mask=flat_mask,
            token_type_ids=_flatten_choices(token_type_ids, "token_type_ids", leading),
            position_ids=_flatten_choices(position_ids, "position_ids", leading),
            inputs_embeds=_flatten_choices(inputs_embeds, "inputs_embeds", leading),
            use_cache=False,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            **kwargs,
        )
        hidden_states = outputs.last_hidden_state
        rows, length = hidden_states.shape[:2]
        lm_logits = self.lm_head(hidden_states)
        positions = _extract_positions(
            mc_token_ids, flat_mask, flat_ids, self.config.pad_token_id, rows, length, hidden_states.device
        )
        pooled = hidden_states[torch.arange(rows, device=hidden_states.device), positions]
        mc_logits = self.multiple_choice_head(pooled).view(leading)

        mc_loss = lm_loss = None
        if mc_labels is not None:
            mc_loss = nn.functional.cross_entropy(mc_logits, mc_labels.to(mc_logits.device))
        if lm_labels is not None:
            flat_labels = _flatten_choices(lm_labels, "LM labels", leading)
            lm_loss = ForCausalLMLoss(lm_logits, flat_labels, vocab_size=self.config.vocab_size)
        return PaperGPT1DoubleHeadsModelOutput(
            loss=_combine_losses(mc_loss, lm_loss, self.config.lm_coef),
            mc_loss=mc_loss,
            lm_loss=lm_loss,
            logits=lm_logits.view(*leading, *lm_logits.shape[1:]),
            mc_logits=mc_logits,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )


# ----------------------------------------------------------------------------------------------
# §3.3 / Figure 1: task-specific input transformations
# ----------------------------------------------------------------------------------------------


@dataclass
class GPT1TaskFormatter:
    """Turns structured inputs into token sequences with the paper's special tokens (§3.3, Figure 1).

    ``start_id`` is ``<s>``, ``delimiter_id`` is ``$``, ``extract_id`` is ``e`` (the token whose final
    activation feeds the linear output layer); all inputs are lists of token ids.
    """

    start_id: int
    delimiter_id: int
    extract_id: int
    pad_id: int = 0
    max_length: int | None = None

    def __post_init__(self):
        for name in ("start_id", "delimiter_id", "extract_id", "pad_id"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"GPT1TaskFormatter: `{name}` must be a token id >= 0, got {value!r}.")
        if self.max_length is not None and (not isinstance(self.max_length, int) or self.max_length < 3):
            raise ValueError(
                f"GPT1TaskFormatter: `max_length` must be an integer >= 3, got {self.max_length!r}."
            )

    def transform_classification(self, text: Sequence[int]) -> list[int]:
        """Classification: ``[<s>; text; e]``."""
        return [self.start_id, *text, self.extract_id]

    def transform_entailment(self, premise: Sequence[int], hypothesis: Sequence[int]) -> list[int]:
        """Entailment: ``[<s>; premise; $; hypothesis; e]``."""
        return [self.start_id, *premise, self.delimiter_id, *hypothesis, self.extract_id]

    def transform_similarity(self, a: Sequence[int], b: Sequence[int]) -> list[list[int]]:
        """Similarity has no inherent order: both ``[<s>; a; $; b; e]`` and ``[<s>; b; $; a; e]``."""
        return [self.transform_entailment(a, b), self.transform_entailment(b, a)]

    def transform_multiple_choice(
        self, context: Sequence[int], answers: Sequence[Sequence[int]]
    ) -> list[list[int]]:
        """Question answering / commonsense reasoning: ``[<s>; z; q; $; a_k; e]`` for each answer a_k.

        ``context`` is the document z followed by the question q (if any).
        """
        if not answers:
            raise ValueError("transform_multiple_choice needs at least one answer.")
        return [self.transform_entailment(context, answer) for answer in answers]

    def batch(
        self,
        examples: Sequence[Sequence[int]] | Sequence[Sequence[Sequence[int]]],
        labels: Sequence[int] | Sequence[float] | None = None,
        lm_labels: bool = False,
    ) -> dict[str, torch.Tensor]:
        """Right-pads transformed examples into tensors.

        ``examples`` are either sequences (→ ``input_ids`` (batch, n)) or groups of k sequences, such as
        the two similarity orders or the answers of one question (→ (batch, k, n)). Returns
        ``input_ids``, ``attention_mask`` and ``mc_token_ids`` (the extract token: each sequence's last
        token), plus ``labels`` when given and ``lm_labels`` (the inputs with padding set to -100) when
        asked for. Feed the result to ``PaperGPT1ForSequenceClassification`` or
        ``PaperGPT1DoubleHeadsModel`` with ``**``.
        """
        if not examples:
            raise ValueError("GPT1TaskFormatter.batch needs at least one example.")
        first = examples[0][0] if len(examples[0]) else 0
        grouped = hasattr(first, "__len__") and not (torch.is_tensor(first) and first.dim() == 0)
        groups = [list(map(list, ex)) for ex in examples] if grouped else [[list(ex)] for ex in examples]
        k = len(groups[0])
        if any(len(g) != k for g in groups):
            raise ValueError(
                f"Every example must have the same number of sequences, got {sorted({len(g) for g in groups})}."
            )
        lengths = [len(seq) for g in groups for seq in g]
        if min(lengths) == 0:
            raise ValueError("GPT1TaskFormatter.batch got an empty sequence.")
        width = max(lengths)
        if self.max_length is not None and width > self.max_length:
            raise ValueError(
                f"A transformed sequence is {width} tokens long, more than `max_length`={self.max_length}; "
                "truncate the texts before transforming them."
            )
        input_ids = torch.full((len(groups), k, width), self.pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(groups), k, width), dtype=torch.long)
        for i, group in enumerate(groups):
            for j, seq in enumerate(group):
                input_ids[i, j, : len(seq)] = torch.tensor(seq, dtype=torch.long)
                attention_mask[i, j, : len(seq)] = 1
        mc_token_ids = attention_mask.sum(-1) - 1
        out = {"input_ids": input_ids, "attention_mask": attention_mask, "mc_token_ids": mc_token_ids}
        if lm_labels:
            out["lm_labels"] = input_ids.masked_fill(attention_mask == 0, -100)
        if not grouped:
            out = {key: value.squeeze(1) for key, value in out.items()}
        if labels is not None:
            if len(labels) != len(groups):
                raise ValueError(f"Got {len(labels)} labels for {len(groups)} examples.")
            out["labels"] = torch.tensor(labels)
        return out


# The Auto classes this paper registers with (ZOO.md §2); also marks them for Hub export.
AUTO_CLASSES = {
    "AutoModel": PaperGPT1Model,
    "AutoModelForCausalLM": PaperGPT1LMHeadModel,
    "AutoModelForSequenceClassification": PaperGPT1ForSequenceClassification,
    "AutoModelForMultipleChoice": PaperGPT1DoubleHeadsModel,
}
register_for_auto_classes(PaperGPT1Config, AUTO_CLASSES)

__all__ = [
    "GPT1TaskFormatter",
    "PaperGPT1Config",
    "PaperGPT1DoubleHeadsModel",
    "PaperGPT1DoubleHeadsModelOutput",
    "PaperGPT1ForSequenceClassification",
    "PaperGPT1LMHeadModel",
    "PaperGPT1Model",
    "PaperGPT1PreTrainedModel",
    "PaperGPT1SequenceClassifierOutput",
]
