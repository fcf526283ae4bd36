"""BERT — Devlin, Chang, Lee & Toutanova (2019), "BERT: Pre-training of Deep Bidirectional
Transformers for Language Understanding".

§3 (Model Architecture): a multi-layer *bidirectional* Transformer encoder, the encoder of Vaswani
et al. (2017) — post-LN blocks, h = LN(x + Attn(x)), out = LN(h + FFN(h)) — with L layers, hidden
size H, A self-attention heads and a 4H feed-forward: BERT-BASE (L=12, H=768, A=12, 110M) and
BERT-LARGE (L=24, H=1024, A=16, 340M). Appendix A.2: "a gelu activation rather than the standard
relu, following OpenAI GPT", dropout 0.1 on all layers, learned positions up to 512.

§3 (Input/Output Representations), Figure 2: the input of a token is the sum of its WordPiece
embedding (30,000-token vocabulary), a learned *segment* embedding (sentence A or B) and a learned
position embedding; a sequence starts with ``[CLS]`` and sentence pairs are separated by ``[SEP]``.
The final hidden vector C of ``[CLS]`` is the aggregate representation used for classification
(the released code, which transformers follows, passes it through a dense + tanh "pooler").

§3.1 pre-training: a masked LM (15% of WordPiece positions chosen; 80% ``[MASK]``, 10% a random
token, 10% unchanged; ``hf_paper_models.data.nsp.mlm_nsp_collator`` uses transformers'
``DataCollatorForLanguageModeling``) plus next sentence prediction from C (50% IsNext, 50% a random
sentence: ``hf_paper_models.data.nsp.build_nsp_pairs``). The MLM output layer is a dense + GELU +
LayerNorm transform followed by the transposed token embedding and an output-only bias.

Module and parameter names follow transformers' ``BertModel`` (``embeddings.word_embeddings``,
``encoder.layer.N.intermediate.dense``, ``encoder.layer.N.output.LayerNorm``, ``pooler.dense``,
``cls.predictions.transform``, ``cls.seq_relationship`` …) except the attention, which is the zoo's
shared ``MultiHeadAttention``: ``attention.self.{q,k,v,out}_proj`` where transformers has
``attention.self.{query,key,value}`` and ``attention.output.dense``
(``hf_paper_models.conversions.bert`` renames them).
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import PreTrainedConfig
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.masking_utils import create_bidirectional_mask
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import (
    BaseModelOutputWithPoolingAndCrossAttentions,
    MaskedLMOutput,
    MultipleChoiceModelOutput,
    NextSentencePredictorOutput,
    QuestionAnsweringModelOutput,
    SequenceClassifierOutput,
    TokenClassifierOutput,
)
from transformers.models.bert.modeling_bert import BertForPreTrainingOutput

from .attention import MultiHeadAttention
from .common import (
    PaperPreTrainedModel,
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


class PaperBertConfig(PreTrainedConfig):
    """BERT hyper-parameters, with transformers' ``BertConfig`` names. Defaults are BERT-BASE.

    The zoo's shared names are aliases (``d_model``/``n_embd`` → ``hidden_size``, ``n_layer``,
    ``n_head``, ``n_positions``, ``d_ff``, ``resid_pdrop`` → ``hidden_dropout_prob``, ``attn_pdrop`` →
    ``attention_probs_dropout_prob``).
    """

    model_type = "paper-bert"
    attribute_map = {
        "n_embd": "hidden_size",
        "d_model": "hidden_size",
        "n_layer": "num_hidden_layers",
        "n_head": "num_attention_heads",
        "n_positions": "max_position_embeddings",
        "d_ff": "intermediate_size",
        "resid_pdrop": "hidden_dropout_prob",
        "attn_pdrop": "attention_probs_dropout_prob",
    }

    vocab_size: int = 30522  # the released uncased WordPiece vocabulary (§3: "30,000 token vocabulary")
    hidden_size: int = 768  # H
    num_hidden_layers: int = 12  # L
    num_attention_heads: int = 12  # A
    intermediate_size: int = 3072  # "the feed-forward/filter size to be 4H"
    hidden_act: str = "gelu"  # the exact (erf) GELU of the released code
    hidden_dropout_prob: float = 0.1  # A.2: "dropout probability of 0.1 on all layers"
    attention_probs_dropout_prob: float = 0.1
    max_position_embeddings: int = 512
    type_vocab_size: int = 2  # segments A and B
    initializer_range: float = 0.02
    layer_norm_eps: float = 1e-12
    pad_token_id: int | None = 0
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None
    classifier_dropout: float | None = None  # None: hidden_dropout_prob
    tie_word_embeddings: bool = True  # the MLM decoder is the transposed token embedding

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)  # sets the alias names (d_model, attn_pdrop, ...) first
        check_heads(self)
        for name in (
            "vocab_size",
            "num_hidden_layers",
            "intermediate_size",
            "max_position_embeddings",
            "type_vocab_size",
        ):
            check_int(self, name)
        for name in ("hidden_dropout_prob", "attention_probs_dropout_prob"):
            _check_dropout(self, name)
        if self.classifier_dropout is not None:
            _check_dropout(self, "classifier_dropout")
        check_positive_float(self, "layer_norm_eps")
        check_positive_float(self, "initializer_range")
        check_activation(self, "hidden_act")
        for name in ("pad_token_id", "bos_token_id", "eos_token_id"):
            value = getattr(self, name)
            ids = value if isinstance(value, list) else [value]
            if any(i is not None and not 0 <= i < self.vocab_size for i in ids):
                raise ValueError(
                    f"{type(self).__name__}: `{name}`={value!r} is outside the vocabulary "
                    f"[0, {self.vocab_size - 1}]."
                )


def _check_dropout(config: PaperBertConfig, name: str) -> None:
    """``check_probability`` whose message also names the field's aliases (``attn_pdrop`` ...)."""
    try:
        check_probability(config, name)
    except ValueError as error:
        aliases = [alias for alias, target in config.attribute_map.items() if target == name]
        if not aliases:
            raise
        names = ", ".join(f"`{a}`" for a in aliases)
        raise ValueError(f"{error} (also set as {names})") from None


# §3: "BERT-BASE (L=12, H=768, A=12, Total Parameters=110M) and BERT-LARGE (L=24, H=1024, A=16,
# Total Parameters=340M)", feed-forward 4H.
PRESETS = {
    "bert-base": dict(num_hidden_layers=12, hidden_size=768, num_attention_heads=12, intermediate_size=3072),
    "bert-large": dict(
        num_hidden_layers=24, hidden_size=1024, num_attention_heads=16, intermediate_size=4096
    ),
}
# The paper's totals count the encoder (embeddings, layers, pooler) without the pre-training heads:
# ours 109,482,240 and 335,141,888, exactly transformers' BertModel.
PAPER_PARAMETERS = {"bert-base": 110e6, "bert-large": 340e6}


# ----------------------------------------------------------------------------------------------
# The encoder
# ----------------------------------------------------------------------------------------------


class PaperBertEmbeddings(nn.Module):
    """Token + segment + learned position embeddings, then LayerNorm and dropout (Figure 2)."""

    def __init__(self, config: PaperBertConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(
            config.vocab_size, config.hidden_size, padding_idx=config.pad_token_id
        )
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(
        self,
        input_ids: torch.Tensor | None,
        token_type_ids: torch.Tensor | None,
        position_ids: torch.Tensor | None,
        inputs_embeds: torch.Tensor | None,
    ) -> torch.Tensor:
        if inputs_embeds is None:
            inputs_embeds = self.word_embeddings(input_ids)
        batch, length = inputs_embeds.shape[:2]
        if position_ids is None:
            position_ids = torch.arange(length, device=inputs_embeds.device).unsqueeze(0)
        if token_type_ids is None:  # a single sentence: every token in segment A
            token_type_ids = torch.zeros(batch, length, dtype=torch.long, device=inputs_embeds.device)
        embeddings = (
            inputs_embeds
            + self.token_type_embeddings(token_type_ids)
            + self.position_embeddings(position_ids)
        )
        return self.dropout(self.LayerNorm(embeddings))


class PaperBertSelfOutput(nn.Module):
    """The residual and LayerNorm of the attention sub-layer: LN(x + Dropout(Attn(x)))."""

    def __init__(self, config: PaperBertConfig):
        super().__init__()
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, attention_output: torch.Tensor, input_tensor: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(input_tensor + self.dropout(attention_output))


class PaperBertAttention(nn.Module):
    """Bidirectional multi-head self-attention (``self``) and its post-LN residual (``output``)."""

    def __init__(self, config: PaperBertConfig, layer_idx: int):
        super().__init__()
        self.self = MultiHeadAttention(
            config,
            config.hidden_size,
            config.num_attention_heads,
            layer_idx=layer_idx,
            is_causal=False,  # every token sees both its left and right context (§3)
            dropout=config.attention_probs_dropout_prob,
        )
        self.output = PaperBertSelfOutput(config)

    def forward(self, hidden_states, attention_mask=None, **kwargs):
        attention_output, weights = self.self(hidden_states, attention_mask=attention_mask, **kwargs)
        return self.output(attention_output, hidden_states), weights


class PaperBertIntermediate(nn.Module):
    def __init__(self, config: PaperBertConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.intermediate_size)
        self.intermediate_act_fn = ACT2FN[config.hidden_act]

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.intermediate_act_fn(self.dense(hidden_states))


class PaperBertOutput(nn.Module):
    """The second FFN projection with the post-LN residual: LN(h + Dropout(W2·act(W1·h)))."""

    def __init__(self, config: PaperBertConfig):
        super().__init__()
        self.dense = nn.Linear(config.intermediate_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, hidden_states: torch.Tensor, input_tensor: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(input_tensor + self.dropout(self.dense(hidden_states)))


class PaperBertLayer(GradientCheckpointingLayer):
    """h = LN(x + Attn(x)); out = LN(h + FFN(h)) — the post-LN Transformer encoder layer."""

    def __init__(self, config: PaperBertConfig, layer_idx: int):
        super().__init__()
        self.attention = PaperBertAttention(config, layer_idx)
        self.intermediate = PaperBertIntermediate(config)
        self.output = PaperBertOutput(config)

    def forward(self, hidden_states, attention_mask=None, **kwargs):
        attention_output, weights = self.attention(hidden_states, attention_mask, **kwargs)
        return self.output(self.intermediate(attention_output), attention_output), weights


class PaperBertEncoder(nn.Module):
    """The L layers, kept under ``encoder.layer.N`` for transformers' names; ``PaperBertModel`` runs them."""

    def __init__(self, config: PaperBertConfig):
        super().__init__()
        self.layer = nn.ModuleList([PaperBertLayer(config, i) for i in range(config.num_hidden_layers)])


class PaperBertPooler(nn.Module):
    """C, the final hidden vector of ``[CLS]``, through dense + tanh (as in the released code)."""

    def __init__(self, config: PaperBertConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.activation = nn.Tanh()

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.activation(self.dense(hidden_states[:, 0]))


# ----------------------------------------------------------------------------------------------
# Pre-training heads (§3.1)
# ----------------------------------------------------------------------------------------------


class PaperBertPredictionHeadTransform(nn.Module):
    def __init__(self, config: PaperBertConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.transform_act_fn = ACT2FN[config.hidden_act]
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.transform_act_fn(self.dense(hidden_states)))


class PaperBertLMPredictionHead(nn.Module):
    """Masked-LM output: transform, then the tied token embedding with an output-only bias."""

    def __init__(self, config: PaperBertConfig):
        super().__init__()
        self.transform = PaperBertPredictionHeadTransform(config)
        self.decoder = nn.Linear(config.hidden_size, config.vocab_size, bias=True)
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))  # tied to decoder.bias

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.transform(hidden_states))


class PaperBertOnlyMLMHead(nn.Module):
    def __init__(self, config: PaperBertConfig):
        super().__init__()
        self.predictions = PaperBertLMPredictionHead(config)

    def forward(self, sequence_output: torch.Tensor) -> torch.Tensor:
        return self.predictions(sequence_output)


class PaperBertOnlyNSPHead(nn.Module):
    def __init__(self, config: PaperBertConfig):
        super().__init__()
        self.seq_relationship = nn.Linear(config.hidden_size, 2)  # IsNext (0) / NotNext (1)

    def forward(self, pooled_output: torch.Tensor) -> torch.Tensor:
        return self.seq_relationship(pooled_output)


class PaperBertPreTrainingHeads(nn.Module):
    def __init__(self, config: PaperBertConfig):
        super().__init__()
        self.predictions = PaperBertLMPredictionHead(config)
        self.seq_relationship = nn.Linear(config.hidden_size, 2)

    def forward(self, sequence_output, pooled_output):
        return self.predictions(sequence_output), self.seq_relationship(pooled_output)


# ----------------------------------------------------------------------------------------------
# Models
# ----------------------------------------------------------------------------------------------

_TIED_MLM_DECODER = {
    "cls.predictions.decoder.weight": "bert.embeddings.word_embeddings.weight",
    "cls.predictions.decoder.bias": "cls.predictions.bias",
}


class PaperBertPreTrainedModel(PaperPreTrainedModel):
    config_class = PaperBertConfig
    base_model_prefix = "bert"
    supports_gradient_checkpointing = True
    _no_split_modules = ["PaperBertEmbeddings", "PaperBertLayer"]
    _supports_sdpa = True
    _supports_flash_attn = False
    _supports_flex_attn = False
    _supports_attention_backend = True

    @torch.no_grad()
    def _init_weights(self, module):
        # N(0, initializer_range) for linear and embedding weights, zero biases, unit LayerNorm gains
        # (the released code draws from a normal truncated at 2σ; transformers uses the plain normal).
        super()._init_weights(module)
        if isinstance(module, PaperBertLMPredictionHead):
            init.zeros_(module.bias)


def _check_ids(ids: torch.Tensor | None, size: int, name: str, what: str) -> None:
    """Segment and position ids must index their tables: a clear ValueError, not an IndexError."""
    if ids is None or torch.compiler.is_compiling() or ids.numel() == 0:
        return
    low, high = int(ids.min()), int(ids.max())
    if low < 0 or high >= size:
        raise ValueError(
            f"`{name}` contains {low if low < 0 else high}, but the model has {what} [0, {size - 1}]."
        )


class PaperBertModel(PaperBertPreTrainedModel):
    """The bidirectional encoder: embeddings, L post-LN layers and the ``[CLS]`` pooler."""

    def __init__(self, config: PaperBertConfig, add_pooling_layer: bool = True):
        super().__init__(config)
        self.embeddings = PaperBertEmbeddings(config)
        self.encoder = PaperBertEncoder(config)
        self.pooler = PaperBertPooler(config) if add_pooling_layer else None
        self.gradient_checkpointing = False
        self.post_init()

    def get_input_embeddings(self):
        return self.embeddings.word_embeddings

    def set_input_embeddings(self, value):
        self.embeddings.word_embeddings = value

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.LongTensor | None = None,
        position_ids: torch.LongTensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPoolingAndCrossAttentions:
        config = self.config
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("Pass exactly one of `input_ids` or `inputs_embeds`.")
        output_attentions = config.output_attentions if output_attentions is None else output_attentions
        output_hidden_states = (
            config.output_hidden_states if output_hidden_states is None else output_hidden_states
        )
        if output_attentions and config._attn_implementation != "eager":
            raise ValueError(
                f"output_attentions=True needs attn_implementation='eager'; the "
                f"{config._attn_implementation!r} kernel does not return attention weights. Load the model "
                "with `attn_implementation='eager'` or call `model.set_attn_implementation('eager')`."
            )

        shape = input_ids.shape if input_ids is not None else inputs_embeds.shape[:-1]
        if len(shape) != 2:
            raise ValueError(
                f"Expected inputs of shape (batch, sequence), got {tuple(shape)}. Inputs with several "
                "sequences per example (batch, choices, sequence) go to PaperBertForMultipleChoice."
            )
        check_input_ids(input_ids, config.vocab_size)
        check_length(shape[1], config.max_position_embeddings)
        check_attention_mask(attention_mask, shape[0], shape[1])
        for name, ids in (("token_type_ids", token_type_ids), ("position_ids", position_ids)):
            if ids is not None and ids.shape[-1] != shape[1]:
                raise ValueError(f"`{name}` has shape {tuple(ids.shape)}, expected ({shape[0]}, {shape[1]}).")
        _check_ids(token_type_ids, config.type_vocab_size, "token_type_ids", "`type_vocab_size` segments")
        _check_ids(position_ids, config.max_position_embeddings, "position_ids", "positions")

        hidden_states = self.embeddings(input_ids, token_type_ids, position_ids, inputs_embeds)
        # Padding only: bidirectional, no causal triangle (None when nothing is padded, for SDPA's fast path).
        mask = create_bidirectional_mask(
            config=config, inputs_embeds=hidden_states, attention_mask=attention_mask
        )

        all_hidden, all_attentions = (), ()
        for layer in self.encoder.layer:
            if output_hidden_states:
                all_hidden += (hidden_states,)
            hidden_states, weights = layer(hidden_states, mask, **kwargs)
            if output_attentions:
                all_attentions += (weights,)
        if output_hidden_states:
            all_hidden += (hidden_states,)
        pooled = self.pooler(hidden_states) if self.pooler is not None else None
        return BaseModelOutputWithPoolingAndCrossAttentions(
            last_hidden_state=hidden_states,
            pooler_output=pooled,
            hidden_states=all_hidden or None,
            attentions=all_attentions or None,
        )


class PaperBertForPreTraining(PaperBertPreTrainedModel):
    """Masked LM + next sentence prediction (§3.1); the loss is their sum, as in transformers.

    With only ``labels`` (MLM) or only ``next_sentence_label`` the loss is that one term
    (transformers then returns no loss).
    """

    _tied_weights_keys = _TIED_MLM_DECODER

    def __init__(self, config: PaperBertConfig):
        super().__init__(config)
        self.bert = PaperBertModel(config)
        self.cls = PaperBertPreTrainingHeads(config)
        self.post_init()

    def get_output_embeddings(self):
        return self.cls.predictions.decoder

    def set_output_embeddings(self, new_embeddings):
        self.cls.predictions.decoder = new_embeddings
        self.cls.predictions.bias = new_embeddings.bias

    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        token_type_ids=None,
        position_ids=None,
        inputs_embeds=None,
        labels=None,
        next_sentence_label=None,
        output_attentions=None,
        output_hidden_states=None,
        return_dict=None,
        **kwargs,
    ) -> BertForPreTrainingOutput:
        outputs = self.bert(
            input_ids,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            **kwargs,
        )
        prediction_logits, seq_relationship_logits = self.cls(
            outputs.last_hidden_state, outputs.pooler_output
        )
        loss = None
        if labels is not None:
            loss = nn.functional.cross_entropy(
                prediction_logits.view(-1, self.config.vocab_size).float(),
                labels.view(-1).to(prediction_logits.device),
            )
        if next_sentence_label is not None:
            nsp_loss = nn.functional.cross_entropy(
                seq_relationship_logits.view(-1, 2).float(),
                next_sentence_label.view(-1).to(prediction_logits.device),
            )
            loss = nsp_loss if loss is None else loss + nsp_loss
        return BertForPreTrainingOutput(
            loss=loss,
            prediction_logits=prediction_logits,
            seq_relationship_logits=seq_relationship_logits,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )


class PaperBertForMaskedLM(PaperBertPreTrainedModel):
    """The masked-LM head alone (``pipeline("fill-mask")``); the encoder has no pooler here."""

    _tied_weights_keys = _TIED_MLM_DECODER

    def __init__(self, config: PaperBertConfig):
        super().__init__(config)
        self.bert = PaperBertModel(config, add_pooling_layer=False)
        self.cls = PaperBertOnlyMLMHead(config)
        self.post_init()

    def get_output_embeddings(self):
        return self.cls.predictions.decoder

    def set_output_embeddings(self, new_embeddings):
        self.cls.predictions.decoder = new_embeddings
        self.cls.predictions.bias = new_embeddings.bias

    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        token_type_ids=None,
        position_ids=None,
        inputs_embeds=None,
        labels=None,
        output_attentions=None,
        output_hidden_states=None,
        return_dict=None,
        **kwargs,
    ) -> MaskedLMOutput:
        num_items_in_batch = kwargs.pop("num_items_in_batch", None)
        outputs = self.bert(
            input_ids,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            **kwargs,
        )
        logits = self.cls(outputs.last_hidden_state)
        loss = None
        if labels is not None:  # mean cross-entropy over the positions whose label is not -100
            loss = self.loss_function(
                logits, labels, vocab_size=self.config.vocab_size, num_items_in_batch=num_items_in_batch
            )
        return MaskedLMOutput(
            loss=loss, logits=logits, hidden_states=outputs.hidden_states, attentions=outputs.attentions
        )


class PaperBertForNextSentencePrediction(PaperBertPreTrainedModel):
    """The NSP classifier on the pooled ``[CLS]`` vector; label 0 = IsNext, 1 = NotNext."""

    def __init__(self, config: PaperBertConfig):
        super().__init__(config)
        self.bert = PaperBertModel(config)
        self.cls = PaperBertOnlyNSPHead(config)
        self.post_init()

    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        token_type_ids=None,
        position_ids=None,
        inputs_embeds=None,
        labels=None,
        output_attentions=None,
        output_hidden_states=None,
        return_dict=None,
        **kwargs,
    ) -> NextSentencePredictorOutput:
        outputs = self.bert(
            input_ids,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            **kwargs,
        )
        logits = self.cls(outputs.pooler_output)
        loss = None
        if labels is not None:
            loss = nn.functional.cross_entropy(logits.view(-1, 2).float(), labels.view(-1).to(logits.device))
        return NextSentencePredictorOutput(
            loss=loss, logits=logits, hidden_states=outputs.hidden_states, attentions=outputs.attentions
        )


class PaperBertForSequenceClassification(PaperBertPreTrainedModel):
    """§4.1: a classification layer W on C (the pooled ``[CLS]``), loss log(softmax(CWᵀ)).

    ``num_labels=1`` is regression (MSE), float multi-hot labels multi-label (BCE), as in transformers.
    """

    def __init__(self, config: PaperBertConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.bert = PaperBertModel(config)
        dropout = config.classifier_dropout
        self.dropout = nn.Dropout(config.hidden_dropout_prob if dropout is None else dropout)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        token_type_ids=None,
        position_ids=None,
        inputs_embeds=None,
        labels=None,
        output_attentions=None,
        output_hidden_states=None,
        return_dict=None,
        **kwargs,
    ) -> SequenceClassifierOutput:
        kwargs.pop("num_items_in_batch", None)
        outputs = self.bert(
            input_ids,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            **kwargs,
        )
        logits = self.classifier(self.dropout(outputs.pooler_output))
        loss = None
        if labels is not None:
            loss = self.loss_function(labels=labels, pooled_logits=logits, config=self.config)
        return SequenceClassifierOutput(
            loss=loss, logits=logits, hidden_states=outputs.hidden_states, attentions=outputs.attentions
        )


class PaperBertForTokenClassification(PaperBertPreTrainedModel):
    """Token tagging (the paper's CoNLL-2003 NER, §5.3): each token's final hidden vector through a
    classification layer."""

    def __init__(self, config: PaperBertConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.bert = PaperBertModel(config, add_pooling_layer=False)
        dropout = config.classifier_dropout
        self.dropout = nn.Dropout(config.hidden_dropout_prob if dropout is None else dropout)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        token_type_ids=None,
        position_ids=None,
        inputs_embeds=None,
        labels=None,
        output_attentions=None,
        output_hidden_states=None,
        return_dict=None,
        **kwargs,
    ) -> TokenClassifierOutput:
        kwargs.pop("num_items_in_batch", None)
        outputs = self.bert(
            input_ids,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            **kwargs,
        )
        logits = self.classifier(self.dropout(outputs.last_hidden_state))
        loss = None
        if labels is not None:
            loss = self.loss_function(logits, labels, self.config)
        return TokenClassifierOutput(
            loss=loss, logits=logits, hidden_states=outputs.hidden_states, attentions=outputs.attentions
        )


class PaperBertForQuestionAnswering(PaperBertPreTrainedModel):
    """§4.2 (SQuAD): a start vector S and an end vector E; P_i = softmax_j(S·T_j) over the tokens.

    The two vectors are one ``qa_outputs`` layer of width 2 (transformers sizes it by ``num_labels``,
    which must then be 2).
    """

    def __init__(self, config: PaperBertConfig):
        super().__init__(config)
        self.bert = PaperBertModel(config, add_pooling_layer=False)
        self.qa_outputs = nn.Linear(config.hidden_size, 2)
        self.post_init()

    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        token_type_ids=None,
        position_ids=None,
        inputs_embeds=None,
        start_positions=None,
        end_positions=None,
        output_attentions=None,
        output_hidden_states=None,
        return_dict=None,
        **kwargs,
    ) -> QuestionAnsweringModelOutput:
        kwargs.pop("num_items_in_batch", None)
        outputs = self.bert(
            input_ids,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            **kwargs,
        )
        start_logits, end_logits = self.qa_outputs(outputs.last_hidden_state).unbind(dim=-1)
        start_logits, end_logits = start_logits.contiguous(), end_logits.contiguous()
        loss = None
        if start_positions is not None and end_positions is not None:
            # the mean of the start and end cross-entropies; positions outside the input are ignored
            loss = self.loss_function(start_logits, end_logits, start_positions, end_positions)
        return QuestionAnsweringModelOutput(
            loss=loss,
            start_logits=start_logits,
            end_logits=end_logits,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )


class PaperBertForMultipleChoice(PaperBertPreTrainedModel):
    """§4.4 (SWAG): each (context, choice) pair is encoded; a vector on C scores it; softmax over choices.

    Inputs are (batch, choices, sequence).
    """

    def __init__(self, config: PaperBertConfig):
        super().__init__(config)
        self.bert = PaperBertModel(config)
        dropout = config.classifier_dropout
        self.dropout = nn.Dropout(config.hidden_dropout_prob if dropout is None else dropout)
        self.classifier = nn.Linear(config.hidden_size, 1)
        self.post_init()

    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        token_type_ids=None,
        position_ids=None,
        inputs_embeds=None,
        labels=None,
        output_attentions=None,
        output_hidden_states=None,
        return_dict=None,
        **kwargs,
    ) -> MultipleChoiceModelOutput:
        kwargs.pop("num_items_in_batch", None)
        source = input_ids if input_ids is not None else inputs_embeds
        if source is None:
            raise ValueError("Pass exactly one of `input_ids` or `inputs_embeds`.")
        expected_dims = 3 if input_ids is not None else 4
        if source.dim() != expected_dims:
            raise ValueError(
                f"Multiple-choice inputs are (batch, choices, sequence), got shape {tuple(source.shape[:3])}."
            )
        num_choices = source.shape[1]

        def flat(t):  # (batch, choices, n, ...) -> (batch·choices, n, ...)
            if t is None or t.dim() < 3:
                return t  # a wrong shape is reported by the encoder's checks
            return t.reshape(-1, *t.shape[2:])

        outputs = self.bert(
            flat(input_ids),
            attention_mask=flat(attention_mask),
            token_type_ids=flat(token_type_ids),
            position_ids=flat(position_ids),
            inputs_embeds=flat(inputs_embeds),
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            **kwargs,
        )
        logits = self.classifier(self.dropout(outputs.pooler_output)).view(-1, num_choices)
        loss = None
        if labels is not None:
            loss = nn.functional.cross_entropy(logits.float(), labels.view(-1).to(logits.device))
        return MultipleChoiceModelOutput(
            loss=loss, logits=logits, hidden_states=outputs.hidden_states, attentions=outputs.attentions
        )


# The Auto classes this paper registers with (ZOO.md §2); also marks them for Hub export.
AUTO_CLASSES = {
    "AutoModel": PaperBertModel,
    "AutoModelForPreTraining": PaperBertForPreTraining,
    "AutoModelForMaskedLM": PaperBertForMaskedLM,
    "AutoModelForNextSentencePrediction": PaperBertForNextSentencePrediction,
    "AutoModelForSequenceClassification": PaperBertForSequenceClassification,
    "AutoModelForTokenClassification": PaperBertForTokenClassification,
    "AutoModelForQuestionAnswering": PaperBertForQuestionAnswering,
    "AutoModelForMultipleChoice": PaperBertForMultipleChoice,
}
register_for_auto_classes(PaperBertConfig, AUTO_CLASSES)

__all__ = [
    "PaperBertConfig",
    "PaperBertModel",
    "PaperBertForPreTraining",
    "PaperBertForMaskedLM",
    "PaperBertForNextSentencePrediction",
    "PaperBertForSequenceClassification",
    "PaperBertForTokenClassification",
    "PaperBertForQuestionAnswering",
    "PaperBertForMultipleChoice",
    "PaperBertPreTrainedModel",
]
