"""RNNsearch and RNNencdec through the translation recipe (``training/train_translation.py`` with
``training/configs/rnnsearch_tiny.yaml`` / ``rnnencdec_tiny.yaml``), and the alignment plots (the paper's
Figure 3: ``hf_paper_models.evaluation.alignment.plot_alignment`` and ``hfpm align``)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_translation_recipe import _run, load_recipe

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "training" / "train_translation.py"
CONFIGS = ROOT / "training" / "configs"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

TINY = [
    "--hidden_size", "16", "--intermediate_size", "8", "--model_overrides", '{"embedding_size": 12}',
    "--vocab_size", "512", "--max_train_pairs", "120", "--max_eval_pairs", "8", "--max_test_pairs", "4",
    "--per_device_train_batch_size", "8", "--per_device_eval_batch_size", "8", "--max_steps", "3",
    "--save_steps", "3", "--logging_steps", "1", "--eval_steps", "0", "--max_eval_batches", "1",
    "--max_new_tokens", "6", "--generation_batch_size", "4", "--num_beams", "2",
]  # fmt: skip


def _train(cache: Path, config: str, output_dir: Path) -> subprocess.CompletedProcess:
    command = [sys.executable, str(SCRIPT), "--config", str(CONFIGS / config), *TINY,
               "--tokenizer_cache_dir", str(cache / "tokenizers"), "--output_dir", str(output_dir)]  # fmt: skip
    return _run(cache, command)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One tiny run of each recipe, sharing a tokenizer."""
    cache = tmp_path_factory.mktemp("rnnsearch_cache")
    out = {}
    for name in ("rnnsearch", "rnnencdec"):
        out[name] = tmp_path_factory.mktemp(name)
        _train(cache, f"{name}_tiny.yaml", out[name])
    return out


def test_the_recipe_trains_and_scores_rnnsearch_and_rnnencdec(runs):
    from transformers import AutoModelForSeq2SeqLM

    import hf_paper_models  # noqa: F401

    for name, use_attention in (("rnnsearch", True), ("rnnencdec", False)):
        summary = json.loads((runs[name] / "bleu.json").read_text())
        assert summary["model_type"] == "paper-rnnsearch" and summary["preset"] == f"{name}-50"
        assert summary["step"] == 3 and summary["label_smoothing"] == 0.0
        assert summary["final"]["count"] == 4 and 0.0 <= summary["final"]["bleu"] <= 100.0
        model = AutoModelForSeq2SeqLM.from_pretrained(runs[name] / "final")
        assert model.config.use_attention is use_attention and model.config.max_train_sentence_length == 50
        assert (model.config.hidden_size, model.config.embedding_size, model.config.maxout_size) == (
            16,
            12,
            8,
        )


def test_training_pairs_are_cut_at_the_presets_sentence_length():
    from datasets import Dataset

    recipe = load_recipe()

    rows = {"source": ["a " * 29 + "a", "a " * 30 + "a", "b b"], "target": ["c", "d", "e " * 31 + "e"]}
    kept = recipe.within_sentence_length(Dataset.from_dict(rows), 30)
    assert kept["source"] == [rows["source"][0]]  # 30 words kept; 31 words (either side) dropped
    assert len(recipe.within_sentence_length(Dataset.from_dict(rows), None)) == 3
    with pytest.raises(ValueError, match="adadelta"):
        recipe.TranslationArguments(optimizer="adadelta", paper_schedule=True)


def test_plot_alignment_writes_a_png_of_the_alignment_matrix(runs, tmp_path):
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    import hf_paper_models  # noqa: F401
    from hf_paper_models.evaluation.alignment import plot_alignment

    final = runs["rnnsearch"] / "final"
    model, tokenizer = AutoModelForSeq2SeqLM.from_pretrained(final), AutoTokenizer.from_pretrained(final)
    source = "the dog eats the bread in the park ."
    alignment = plot_alignment(model, tokenizer, source, tmp_path / "figure3.png", max_new_tokens=7)
    data = (tmp_path / "figure3.png").read_bytes()
    assert data.startswith(PNG_SIGNATURE) and len(data) > 5_000
    source_ids = tokenizer(source, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    assert alignment.weights.shape == (len(alignment.target_tokens), len(source_ids))
    assert len(alignment.source_tokens) == len(source_ids) and 1 <= len(alignment.target_tokens) <= 7
    torch.testing.assert_close(alignment.weights.sum(-1), torch.ones(len(alignment.target_tokens)))


def test_hfpm_align(runs, tmp_path, capsys):
    from hf_paper_models.cli import main

    out = tmp_path / "align.png"
    argv = [
        "align",
        str(runs["rnnsearch"] / "final"),
        "a man sees the cat .",
        "-o",
        str(out),
        "--max-new-tokens",
        "5",
    ]
    assert main(argv) == 0
    assert out.read_bytes().startswith(PNG_SIGNATURE)
    assert "alignment" in capsys.readouterr().out
    assert (
        main(
            ["align", str(runs["rnnencdec"] / "final"), "a man sees the cat .", "-o", str(tmp_path / "x.png")]
        )
        == 2
    )
    assert "no alignment model" in capsys.readouterr().err
    assert main(["align", str(tmp_path / "missing"), "a man .", "-o", str(tmp_path / "y.png")]) == 2
