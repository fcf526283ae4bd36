"""One file per paper (config, size table, modules, heads) plus the shared blocks they import.

A paper's module declares ``AUTO_CLASSES`` (Auto class name -> model class) and ``PRESETS``; the
package registers every module listed here that exists, in the order the papers appeared.
"""

from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType

PAPERS = [
    "local_experts",  # Jacobs, Jordan, Nowlan & Hinton 1991
    "rnnsearch",  # Bahdanau, Cho & Bengio 2015
    "moe_lstm",  # Shazeer et al. 2017
    "transformer",  # Vaswani et al. 2017
    "gpt1",  # Radford et al. 2018
    "bert",  # Devlin et al. 2019
    "gpt2",  # Radford et al. 2019
    "t5",  # Raffel et al. 2020
    "gpt3",  # Brown et al. 2020
    "switch",  # Fedus, Zoph & Shazeer 2022
    "gpt4",  # OpenAI 2023
]


def paper_modules() -> list[ModuleType]:
    """The paper modules present in this installation, imported, oldest paper first."""
    modules = []
    for name in PAPERS:
        if importlib.util.find_spec(f"{__name__}.{name}") is not None:
            modules.append(importlib.import_module(f"{__name__}.{name}"))
    return modules


def config_class_of(module: ModuleType) -> type:
    from transformers import PreTrainedConfig

    for name in module.__all__:
        obj = getattr(module, name)
        if isinstance(obj, type) and issubclass(obj, PreTrainedConfig) and getattr(obj, "model_type", ""):
            return obj
    raise LookupError(f"{module.__name__} declares no config class in __all__")
