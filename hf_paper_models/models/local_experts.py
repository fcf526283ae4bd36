"""Adaptive mixtures of local experts — Jacobs, Jordan, Nowlan & Hinton (1991), Neural Computation 3(1).

A set of expert networks and a gating network that all see the same input vector x (here feature
vectors, e.g. the first two formants of a vowel; the model's main input is ``input_values``, not token
ids):

- expert i maps x to an output vector o_i (a single layer of logistic output units, as the vowel
  experiment's experts whose decision lines the paper draws, or with ``hidden_size`` set, one hidden
  layer before it);
- the gating network is a single linear layer with a softmax (``moe.SoftmaxGate``):
  p_i = exp(x·w_i) / Σ_j exp(x·w_j), a dense distribution over the experts;
- the output of the mixture is the expected output Σ_i p_i o_i; for classification, the class probabilities
  of §3's Table 1 caption, Σ_i p_i ô_i with each expert's logistic outputs normalised to a distribution
  over the classes, ô_i = o_i / Σ_k o_ik (``class_probs``: "each expert assigns a probability distribution
  over the classes and these distributions are combined using proportions given by the gating network").

The gating network starts unbiased (§3: "the gating network assigning equal mixing proportions to all
experts in all cases"): its weights are zero at initialisation (``gate_init="zeros"``).

The paper's point is the objective (``moe_loss``): the **competitive** loss of eq. 1.3,
E = −log Σ_i p_i exp(−½‖d − o_i‖²) — the negative log-likelihood of a mixture of unit Gaussians, under
which each expert is trained on a case in proportion to its posterior responsibility, so the experts
compete and each one takes a region of the input space — rather than the **cooperative** loss of eq. 1.1,
E = ‖d − Σ_i p_i o_i‖², under which every expert corrects the residual error of the blend and the experts
stay coupled. Both are ``moe.py``'s functions.

Hub-exportable: standard library, ``torch``, ``transformers`` and sibling modules only.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedConfig
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.modeling_outputs import ModelOutput

from .common import (
    PaperPreTrainedModel,
    check_activation,
    check_choice,
    check_int,
    check_positive_float,
    register_for_auto_classes,
)
from .moe import SoftmaxGate, competitive_loss, cooperative_loss

MOE_LOSSES = ("competitive", "cooperative")
GATE_INITS = ("zeros", "uniform")


class PaperLocalExpertsConfig(PreTrainedConfig):
    """Hyper-parameters of a mixture of local experts; defaults are the vowel experiment's (§4).

    - ``input_size``: length of the feature vector (2: F1 and F2).
    - ``num_experts``: expert networks (4; the paper also reports 8).
    - ``hidden_size``: ``None`` for single-layer experts (the paper's vowel experts), else the width of
      one hidden layer in each expert, with ``hidden_act`` (logistic by default, as in 1991).
    - ``num_labels`` (transformers' name): the output units, 4 vowel classes; 1 for regression.
    - ``output_activation``: the experts' output units, ``None`` for logistic units when classifying and
      linear ones for regression, or any transformers activation name, or ``"linear"``.
    - ``moe_loss``: ``"competitive"`` (eq. 1.3, the paper's) or ``"cooperative"`` (eq. 1.1).
    - ``initializer_range``: the experts' weights start uniform in ±initializer_range.
    - ``gate_init``: ``"zeros"`` (default; the paper's unbiased start, equal mixing proportions p_i = 1/n for
      every input) or ``"uniform"`` (the gate too starts uniform in ±initializer_range, this model's
      behaviour before the fidelity review).
    """

    model_type = "paper-local-experts"

    input_size: int = 2
    num_experts: int = 4
    hidden_size: int | None = None
    hidden_act: str = "sigmoid"
    output_activation: str | None = None
    moe_loss: str = "competitive"
    initializer_range: float = 0.3
    gate_init: str = "zeros"

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        check_int(self, "input_size")
        check_int(self, "num_experts")
        check_int(self, "hidden_size", allow_none=True)
        check_int(self, "num_labels")
        check_activation(self, "hidden_act")
        if self.output_activation is not None and self.output_activation != "linear":
            check_activation(self, "output_activation")
        check_choice(self, "moe_loss", MOE_LOSSES)
        check_positive_float(self, "initializer_range")
        check_choice(self, "gate_init", GATE_INITS)

    @property
    def expert_output_activation(self) -> str:
        if self.output_activation is not None:
            return self.output_activation
        return "linear" if self.num_labels == 1 else "sigmoid"


# §4: the vowel discrimination task: two formants in, four vowel classes ([i], [ɪ], [a], [ʌ]) out, four
# single-layer experts (Table 1 reports 4 and 8 experts), competitive loss.
PRESETS = {
    "local-experts-vowel": dict(
        input_size=2,
        num_experts=4,
        hidden_size=None,
        num_labels=4,
        id2label={0: "i", 1: "ɪ", 2: "a", 3: "ʌ"},
        label2id={"i": 0, "ɪ": 1, "a": 2, "ʌ": 3},
        moe_loss="competitive",
    ),
}
PAPER_PARAMETERS: dict[str, float] = {}  # the paper prints no parameter counts


# ----------------------------------------------------------------------------------------------
# Modules
# ----------------------------------------------------------------------------------------------


class PaperLocalExpertsExpert(nn.Module):
    """One expert: o = f(W x + b), or o = f(W₂ g(W₁ x + b₁) + b₂) with a hidden layer."""

    def __init__(self, config: PaperLocalExpertsConfig):
        super().__init__()
        width = config.input_size
        self.hidden = None
        if config.hidden_size is not None:
            self.hidden = nn.Linear(config.input_size, config.hidden_size)
            self.act = ACT2FN[config.hidden_act]
            width = config.hidden_size
        self.output = nn.Linear(width, config.num_labels)
        name = config.expert_output_activation
        self.output_act = nn.Identity() if name == "linear" else ACT2FN[name]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.hidden is not None:
            x = self.act(self.hidden(x))
        return self.output_act(self.output(x))


@dataclass
class PaperLocalExpertsOutput(ModelOutput):
    """``last_hidden_state``: the mixture's output Σ_i p_i o_i (batch, outputs); ``expert_outputs`` o_i
    (batch, experts, outputs); ``gate_probs`` p (batch, experts)."""

    last_hidden_state: torch.Tensor | None = None
    expert_outputs: torch.Tensor | None = None
    gate_probs: torch.Tensor | None = None


@dataclass
class PaperLocalExpertsClassifierOutput(ModelOutput):
    """``loss``: the configured mixture loss (mean over cases); ``logits``: Σ_i p_i o_i; plus the experts'
    outputs and the gate probabilities, as ``PaperLocalExpertsOutput``. ``class_probs`` (classification with
    non-negative, e.g. logistic, expert outputs; else ``None``): Σ_i p_i o_i / Σ_k o_ik, the paper's readout
    (Table 1 caption), whose argmax is the system's response."""

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    expert_outputs: torch.Tensor | None = None
    gate_probs: torch.Tensor | None = None
    class_probs: torch.Tensor | None = None


class PaperLocalExpertsPreTrainedModel(PaperPreTrainedModel):
    config_class = PaperLocalExpertsConfig
    base_model_prefix = "model"
    main_input_name = "input_values"  # feature vectors, not token ids
    supports_gradient_checkpointing = False  # no stack of layers to checkpoint
    _supports_sdpa = False  # no attention
    _supports_flash_attn = False
    _supports_flex_attn = False
    _can_compile_fullgraph = True

    @torch.no_grad()
    def _init_weights(self, module):
        """The experts: small random weights, uniform in ±initializer_range (the paper's networks start random).
        The gate's linear layer: zero with ``gate_init="zeros"``,
        so that every expert starts with the mixing proportion 1/n everywhere (§3: the system "begins in an
        unbiased state")."""
        if isinstance(module, nn.Linear):
            if getattr(module, "_is_local_experts_gate", False) and self.config.gate_init == "zeros":
                init.zeros_(module.weight)
                if module.bias is not None:
                    init.zeros_(module.bias)
                return
            r = self.config.initializer_range
            init.uniform_(module.weight, -r, r)
            if module.bias is not None:
                init.uniform_(module.bias, -r, r)


class PaperLocalExpertsModel(PaperLocalExpertsPreTrainedModel):
    """The experts and the gating network; the output is the mixture Σ_i p_i o_i with its parts."""

    def __init__(self, config: PaperLocalExpertsConfig):
        super().__init__(config)
        self.experts = nn.ModuleList(PaperLocalExpertsExpert(config) for _ in range(config.num_experts))
        self.gate = SoftmaxGate(config.input_size, config.num_experts)
        self.gate.proj._is_local_experts_gate = True  # marks it for ``_init_weights`` (gate_init)
        self.post_init()

    def forward(
        self, input_values: torch.Tensor | None = None, return_dict: bool | None = None, **kwargs
    ) -> PaperLocalExpertsOutput:
        x = self._check_input(input_values)
        expert_outputs = torch.stack([expert(x) for expert in self.experts], dim=-2)  # (batch, experts, out)
        gate_probs = self.gate(x)  # (batch, experts)
        mixture = (gate_probs.unsqueeze(-1) * expert_outputs).sum(-2)
        output = PaperLocalExpertsOutput(mixture, expert_outputs, gate_probs)
        return output if return_dict is not False else output.to_tuple()

    def _check_input(self, input_values: torch.Tensor | None) -> torch.Tensor:
        size = self.config.input_size
        if input_values is None:
            raise ValueError(f"Pass `input_values`, a float tensor of feature vectors (batch, {size}).")
        if not torch.is_tensor(input_values) or not input_values.is_floating_point():
            raise ValueError(
                f"`input_values` must be a float tensor of feature vectors (batch, {size}), got "
                f"{getattr(input_values, 'dtype', type(input_values).__name__)}."
            )
        if input_values.dim() != 2 or input_values.shape[-1] != size:
            raise ValueError(
                f"`input_values` has shape {tuple(input_values.shape)}, expected (batch, {size}) "
                f"(`input_size`={size} features per case)."
            )
        return input_values.to(self.gate.proj.weight.dtype)


class PaperLocalExpertsForSequenceClassification(PaperLocalExpertsPreTrainedModel):
    """The mixture trained with the paper's objective. ``labels``: class indices (the target d is their
    one-hot vector, the 1-of-N coding of the vowel task) or, with ``num_labels=1``, real targets
    (regression). ``loss``: ``config.moe_loss``, competitive (eq. 1.3) or cooperative (eq. 1.1), averaged
    over the cases. ``logits``: the mixture's output Σ_i p_i o_i (its argmax is the predicted class)."""

    def __init__(self, config: PaperLocalExpertsConfig):
        super().__init__(config)
        self.model = PaperLocalExpertsModel(config)
        self.post_init()

    def forward(
        self,
        input_values: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> PaperLocalExpertsClassifierOutput:
        out = self.model(input_values)
        loss = None
        if labels is not None:
            target = self.target(labels, out.expert_outputs)
            objective = competitive_loss if self.config.moe_loss == "competitive" else cooperative_loss
            loss = objective(out.expert_outputs, target, out.gate_probs)
        output = PaperLocalExpertsClassifierOutput(
            loss, out.last_hidden_state, out.expert_outputs, out.gate_probs, self.class_probs(out)
        )
        return output if return_dict is not False else output.to_tuple()

    def class_probs(self, out: PaperLocalExpertsOutput) -> torch.Tensor | None:
        """§3, Table 1 caption: "each expert assigns a probability distribution over the classes and these
        distributions are combined using proportions given by the gating network. The most probable class is
        then taken to be the response of the system": Σ_i p_i ô_i with ô_i = o_i / Σ_k o_ik. Only for
        classification with logistic (or other non-negative) output units; ``None`` otherwise."""
        if self.config.num_labels < 2 or self.config.problem_type == "regression":
            return None
        if self.config.expert_output_activation not in ("sigmoid", "relu"):
            return None
        outputs = out.expert_outputs
        normalised = outputs / outputs.sum(-1, keepdim=True).clamp_min(torch.finfo(outputs.dtype).tiny)
        return (out.gate_probs.unsqueeze(-1) * normalised).sum(-2)

    def target(self, labels: torch.Tensor, expert_outputs: torch.Tensor) -> torch.Tensor:
        """The desired output vector d of each case."""
        batch, num_labels = expert_outputs.shape[0], self.config.num_labels
        labels = labels.to(expert_outputs.device)
        if self.config.problem_type == "regression" or num_labels == 1 or labels.is_floating_point():
            target = labels.to(expert_outputs.dtype).reshape(batch, -1)
            if target.shape[-1] != num_labels:
                raise ValueError(f"`labels` of shape {tuple(labels.shape)} do not fit {num_labels} outputs.")
            return target
        if labels.shape != (batch,):
            raise ValueError(f"`labels` must be class indices of shape ({batch},), got {tuple(labels.shape)}.")
        if not torch.compiler.is_compiling() and labels.numel() and not 0 <= int(labels.min()) <= int(
            labels.max()
        ) < num_labels:
            raise ValueError(f"`labels` must be class indices in [0, {num_labels - 1}].")
        return F.one_hot(labels, num_labels).to(expert_outputs.dtype)


# The Auto classes this paper registers with (ZOO.md §2); also marks them for Hub export.
AUTO_CLASSES = {
    "AutoModel": PaperLocalExpertsModel,
    "AutoModelForSequenceClassification": PaperLocalExpertsForSequenceClassification,
}
register_for_auto_classes(PaperLocalExpertsConfig, AUTO_CLASSES)

__all__ = [
    "PaperLocalExpertsConfig",
    "PaperLocalExpertsModel",
    "PaperLocalExpertsForSequenceClassification",
    "PaperLocalExpertsPreTrainedModel",
    "PaperLocalExpertsExpert",
    "PaperLocalExpertsOutput",
    "PaperLocalExpertsClassifierOutput",
    "MOE_LOSSES",
    "GATE_INITS",
]
