"""hf_paper_models: the papers that built modern language models, as transformers models.

Importing the package registers every config with ``AutoConfig`` and every model class with the
``Auto*`` classes its paper calls for (ZOO.md §2).
"""

from __future__ import annotations

from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForMultipleChoice,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
)

from .models import gpt1, gpt2, gpt3

# model type -> (config class, {Auto class: model class})
REGISTRY = {
    gpt1.PaperGPT1Config.model_type: (
        gpt1.PaperGPT1Config,
        {
            AutoModel: gpt1.PaperGPT1Model,
            AutoModelForCausalLM: gpt1.PaperGPT1LMHeadModel,
            AutoModelForSequenceClassification: gpt1.PaperGPT1ForSequenceClassification,
            AutoModelForMultipleChoice: gpt1.PaperGPT1DoubleHeadsModel,
        },
    ),
    gpt2.PaperGPT2Config.model_type: (
        gpt2.PaperGPT2Config,
        {
            AutoModel: gpt2.PaperGPT2Model,
            AutoModelForCausalLM: gpt2.PaperGPT2LMHeadModel,
            AutoModelForSequenceClassification: gpt2.PaperGPT2ForSequenceClassification,
            AutoModelForTokenClassification: gpt2.PaperGPT2ForTokenClassification,
        },
    ),
    gpt3.PaperGPT3Config.model_type: (
        gpt3.PaperGPT3Config,
        {
            AutoModel: gpt3.PaperGPT3Model,
            AutoModelForCausalLM: gpt3.PaperGPT3LMHeadModel,
            AutoModelForSequenceClassification: gpt3.PaperGPT3ForSequenceClassification,
        },
    ),
}

for _model_type, (_config_class, _models) in REGISTRY.items():
    AutoConfig.register(_model_type, _config_class, exist_ok=True)
    for _auto_class, _model_class in _models.items():
        _auto_class.register(_config_class, _model_class, exist_ok=True)

from .convert import convert_from_transformers, convert_to_transformers  # noqa: E402
from .presets import PRESETS, preset  # noqa: E402

__version__ = "0.1.0"
__all__ = ["REGISTRY", "PRESETS", "preset", "convert_from_transformers", "convert_to_transformers"]
