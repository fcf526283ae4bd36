"""Conversion routes for transformers twins beyond the GPT family, registered on import.

Each module here builds a ``hf_paper_models.convert.Route`` for one transformers model type and
calls ``register_route``; every module present is imported.
"""

from __future__ import annotations

import importlib
import pkgutil

for _info in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_info.name}")
