"""hf_paper_models: the papers that built modern language models, as transformers models.

Importing the package registers every paper's config with ``AutoConfig`` and its model classes with
the ``Auto*`` classes its file declares in ``AUTO_CLASSES`` (ZOO.md §2).
"""

from __future__ import annotations

import transformers
from transformers import AutoConfig, AutoImageProcessor

from .models import config_class_of, paper_modules

#: model type -> (config class, {Auto class: model class})
REGISTRY: dict[str, tuple[type, dict[type, type]]] = {}

for _module in paper_modules():
    _config_class = config_class_of(_module)
    _classes = {getattr(transformers, auto): cls for auto, cls in _module.AUTO_CLASSES.items()}
    REGISTRY[_config_class.model_type] = (_config_class, _classes)
    AutoConfig.register(_config_class.model_type, _config_class, exist_ok=True)
    for _auto_class, _model_class in _classes.items():
        _auto_class.register(_config_class, _model_class, exist_ok=True)
    # Image-text models (GPT-4) also declare their processors: AutoProcessor.from_pretrained(folder).
    for _auto_name, _processor_class in getattr(_module, "PROCESSOR_CLASSES", {}).items():
        if _auto_name == "AutoImageProcessor":
            AutoImageProcessor.register(
                _config_class, image_processor_classes={"pil": _processor_class}, exist_ok=True
            )
        else:
            getattr(transformers, _auto_name).register(_config_class, _processor_class, exist_ok=True)

from . import conversions  # noqa: E402, F401  (routes for transformers twins beyond the GPTs)
from .convert import convert_from_transformers, convert_to_transformers  # noqa: E402
from .presets import PRESETS, preset  # noqa: E402

__version__ = "0.1.0"
__all__ = ["REGISTRY", "PRESETS", "preset", "convert_from_transformers", "convert_to_transformers"]
