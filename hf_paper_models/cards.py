"""Model cards (ZOO.md §6): one Hub README per model type, kept in ``model_cards/``.

``model_card(MODEL_TYPE)`` returns the card; the recipes' ``save_final`` writes it as README.md.
"""

from __future__ import annotations

from pathlib import Path

CARDS_DIR = Path(__file__).resolve().parent.parent / "model_cards"


def model_card(model_type: str) -> str:
    path = CARDS_DIR / f"{model_type}.md"
    if not path.is_file():
        known = sorted(p.stem for p in CARDS_DIR.glob("*.md")) if CARDS_DIR.is_dir() else []
        raise ValueError(f"No model card for {model_type!r}; cards exist for: {known}.")
    return path.read_text(encoding="utf-8")
