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


# ----------------------------------------------------------------------------------------------
# Equal-time training and the Figure 2 reproduction (reproductions/rnnsearch_length.py)
# ----------------------------------------------------------------------------------------------

REPRODUCTION = ROOT / "reproductions" / "rnnsearch_length.py"


def test_a_time_budget_ends_the_run_after_the_step_that_spends_it(tmp_path):
    """``--max_train_seconds``: a budget smaller than one step stops the run after its first step, which is
    checkpointed and saved like a last step; the summary says how long training took."""
    cache, out = tmp_path / "cache", tmp_path / "run"
    command = [sys.executable, str(SCRIPT), "--config", str(CONFIGS / "rnnsearch_tiny.yaml"), *TINY,
               "--max_steps", "50", "--max_train_seconds", "1e-9", "--train_clock", "process",
               "--skip_bleu", "true", "--report_to", "none",
               "--tokenizer_cache_dir", str(cache / "tokenizers"), "--output_dir", str(out)]  # fmt: skip
    _run(cache, command)
    summary = json.loads((out / "bleu.json").read_text())
    assert summary["step"] == 1 and summary["train_clock"] == "process" and summary["train_seconds"] > 0
    assert (out / "checkpoint-1").is_dir() and (out / "final" / "model.safetensors").is_file()


def _reproduction():
    import importlib.util

    spec = importlib.util.spec_from_file_location("rnnsearch_length", REPRODUCTION)
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(spec.name, module)
    spec.loader.exec_module(module)
    return module


def test_pooled_bleu_is_sacrebleu_on_the_sentences_in_the_span():
    import sacrebleu

    reproduction = _reproduction()
    sources = ["a b c d e", "a " * 29 + "a", "a " * 79 + "a", "b " * 81]  # 5, 30, 80, 81 words
    hypotheses = ["the cat sat on the mat", "a dog ran in the park today", "x y z w", "one two three four"]
    references = ["the cat sat on a mat", "a dog ran in the park", "x y z w", "one two three five"]
    bleu, count = reproduction.pooled_bleu(sources, hypotheses, references, (30, 81))
    expected = sacrebleu.corpus_bleu(hypotheses[1:3], [references[1:3]]).score  # 81 words: outside [30, 81)
    assert count == 2 and bleu == pytest.approx(expected)
    assert reproduction.pooled_bleu(sources, hypotheses, references, (6, 29)) == (None, 0)


def test_the_figure_2_rule():
    reproduction = _reproduction()

    def result(short, long):
        return {"test": {"short_bleu": short, "long_bleu": long, "bleu": (short + long) / 2}}

    # RNNsearch keeps 15/20 = 75%, RNNencdec 5/25 = 20%: the claim holds.
    assert reproduction.length_claim(result(20.0, 15.0), result(25.0, 5.0))["holds"]
    # Higher on long sentences but falling faster than the baseline: it does not.
    decided = reproduction.length_claim(result(40.0, 10.0), result(10.0, 8.0))
    assert (
        decided["rnnsearch_higher_on_long"] and not decided["rnnsearch_keeps_more"] and not decided["holds"]
    )
    # Lower on long sentences: it does not.
    assert not reproduction.length_claim(result(10.0, 5.0), result(30.0, 6.0))["holds"]
    assert reproduction.transformer_claim(result(10.0, 5.0), result(12.0, 6.0))["holds"]


def test_reproduction_smoke_figure_2_and_the_transformer(tmp_path):
    _run(tmp_path / "cache", [sys.executable, str(REPRODUCTION), "--smoke", "--transformer", "--threads", "1",
                              "--output-dir", str(tmp_path / "out")])  # fmt: skip
    out = tmp_path / "out"
    length = json.loads((out / "rnnsearch_length.json").read_text())
    versus = json.loads((out / "rnnsearch_vs_transformer.json").read_text())
    assert length["smoke"] and set(length["models"]) == {"rnnsearch", "rnnencdec"}
    assert set(versus["models"]) == {"rnnsearch", "transformer"}
    for result in (length, versus):
        assert isinstance(result["holds"], bool) and {"claim", "rule", "settings"} <= result.keys()
        for model in result["models"].values():
            assert model["steps"] == 3 and model["train_clock"] == "process"
            test = model["test"]
            assert (
                test["count"] == 12
                and 0.0 <= test["bleu"] <= 100.0
                and {"short_bleu", "long_bleu"} <= test.keys()
            )
            spans = [(b["min_length"], b["max_length"]) for b in test["by_length"]]
            assert spans == [(5, 9), (10, 19), (20, 29), (30, 39), (40, 59), (60, 80)]
            assert sum(b["count"] for b in test["by_length"]) == 12  # every test sentence has 5-80 words
    assert length["models"]["rnnsearch"]["test"] == versus["models"]["rnnsearch"]["test"]  # one RNNsearch run
    for name in ("rnnsearch_length", "rnnsearch_vs_transformer"):
        assert (out / f"{name}.png").read_bytes().startswith(PNG_SIGNATURE)


def test_models_trained_one_at_a_time_combine_with_reuse(tmp_path):
    """The recorded GPU run trains each model in its own process, then combines them: a model trained
    alone leaves its result in models/NAME.json, and --reuse takes it from there without training."""
    cache = tmp_path / "cache"
    for model in ("rnnsearch", "rnnencdec"):
        _run(cache, [sys.executable, str(REPRODUCTION), "--smoke", "--models", model, "--threads", "1",
                     "--output-dir", str(tmp_path / model)])  # fmt: skip
        assert not (tmp_path / model / "rnnsearch_length.json").exists()  # one model: no figure yet
    combined = tmp_path / "combined" / "models"
    combined.mkdir(parents=True)
    for model in ("rnnsearch", "rnnencdec"):
        (combined / f"{model}.json").write_bytes((tmp_path / model / "models" / f"{model}.json").read_bytes())
    done = _run(cache, [sys.executable, str(REPRODUCTION), "--smoke", "--reuse", "--threads", "1",
                        "--output-dir", str(tmp_path / "combined")])  # fmt: skip
    assert "training for" not in done.stdout and "result taken from" in done.stdout  # nothing trained again
    length = json.loads((tmp_path / "combined" / "rnnsearch_length.json").read_text())
    assert length["reused"] == ["rnnsearch", "rnnencdec"]
    for model in ("rnnsearch", "rnnencdec"):
        alone = json.loads((combined / f"{model}.json").read_text())
        assert length["models"][model]["test"]["bleu"] == alone["test"]["bleu"]
    bad = _run(cache, [sys.executable, str(REPRODUCTION), "--smoke", "--models", "lstm"], check=False)
    assert bad.returncode != 0 and "--models: unknown ['lstm']" in bad.stderr
