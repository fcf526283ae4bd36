"""Conversion routes for transformers twins beyond the GPT family (registered on import).

Each module builds a ``hf_paper_models.convert.Route`` for one transformers model type and calls
``register_route``; ``hf_paper_models/__init__.py`` imports them after ``convert``.
"""
