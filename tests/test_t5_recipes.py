"""T5's recipes (``training/pretrain_t5.py``, ``training/finetune_t5.py``) and its reproduction
(``reproductions/t5_span_corruption.py``), run in-process at a tiny size.

The claims themselves (the span loss falls, pre-training helps the text-to-text tasks) are measured by
the default run of the reproduction and recorded in the model card; here the pipeline must run, write
sane JSON and a PNG, resume exactly, read a local file of a real dataset's schema, and refuse bad
configurations before doing any work.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from reproductions.common import load_script

ROOT = Path(__file__).resolve().parents[1]
PRETRAIN = ROOT / "training" / "pretrain_t5.py"
FINETUNE = ROOT / "training" / "finetune_t5.py"
CONFIG = ROOT / "training" / "configs" / "t5_tiny.yaml"
FINETUNE_CONFIG = ROOT / "training" / "configs" / "t5_finetune_tiny.yaml"

TINY = [
    "--config", str(CONFIG), "--hidden_size", "32", "--num_hidden_layers", "1", "--num_attention_heads", "2",
    "--intermediate_size", "64", "--vocab_size", "512", "--max_documents", "40", "--inputs_length", "32",
    "--per_device_train_batch_size", "4", "--per_device_eval_batch_size", "8", "--logging_steps", "1",
    "--eval_steps", "0", "--max_eval_batches", "1", "--warmup_steps", "0", "--report_to", "none",
    "--model_overrides", '{"dropout_rate": 0.1}',  # dropout on: resuming must restore its randomness too
]  # fmt: skip


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("t5_tokenizers")


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path]:
    from reproductions import t5_span_corruption

    out = tmp_path_factory.mktemp("t5_repro")
    return t5_span_corruption.main(["--smoke", "--output_dir", str(out)]), out


def test_reproduction_smoke_writes_json_and_png(smoke):
    results, out = smoke
    assert (out / "t5_span_corruption.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    saved = json.loads((out / "t5_span_corruption.json").read_text())
    assert saved["smoke"] is True and saved["pretraining"]["steps"] == 6
    for key in ("first_eval_loss", "final_eval_loss", "final_train_loss"):
        assert math.isfinite(saved["pretraining"][key]) and saved["pretraining"][key] > 0
    assert 0.0 <= saved["pretraining"]["span_token_accuracy"] <= 1.0
    assert 0.0 < saved["pretraining"]["constant_guess_accuracy"] < 1.0
    assert 0.0 < saved["pretraining"]["unigram_cross_entropy"] < math.log(512) + 1
    for start in ("pretrained", "scratch"):
        report = saved["finetuning"]["cola"][start]
        assert 0.0 <= report["exact_match"] <= 1.0 and report["bleu"] >= 0.0
        assert report["num_eval_examples"] == 8 and len(report["examples"]) == 5
    prompts = [e["source"] for e in saved["finetuning"]["cola"]["pretrained"]["examples"]]
    assert all(p.endswith(".") for p in prompts)  # sentences; the prefix is added by the recipe
    final = out / "pretrain" / "final"
    assert (final / "model.safetensors").is_file() and (final / "tokenizer.json").is_file()
    assert json.loads((final / "config.json").read_text())["model_type"] == "paper-t5"


def test_pretraining_resumes_exactly(tmp_path, tokenizers):
    """Stopped at a checkpoint and resumed, a run ends with bitwise the weights of an uninterrupted
    one: the span-corruption masks depend on each block and the seed only, not on the data order."""
    pretrain = load_script(PRETRAIN)
    common = [*TINY, "--tokenizer_cache_dir", str(tokenizers), "--lr_scheduler_type", "constant"]
    pretrain.main([*common, "--max_steps", "6", "--save_steps", "3", "--output_dir", str(tmp_path / "whole")])
    pretrain.main([*common, "--max_steps", "3", "--save_steps", "3", "--output_dir", str(tmp_path / "parts")])
    pretrain.main([*common, "--max_steps", "6", "--save_steps", "3", "--output_dir", str(tmp_path / "parts")])
    whole = load_file(tmp_path / "whole" / "final" / "model.safetensors")
    parts = load_file(tmp_path / "parts" / "final" / "model.safetensors")
    assert whole.keys() == parts.keys()
    for name in whole:
        assert torch.equal(whole[name], parts[name]), name
    history = json.loads((tmp_path / "whole" / "eval_results.json").read_text())["history"]
    assert [h["step"] for h in history if "train_loss" in h] == [1, 2, 3, 4, 5, 6]


def test_finetuning_on_the_embedded_translation_task(tmp_path, smoke):
    _, out = smoke
    finetune = load_script(FINETUNE)
    finetune.main([
        "--config", str(FINETUNE_CONFIG), "--model_path", str(out / "pretrain" / "final"), "--task", "translation",
        "--max_corpus_pairs", "2000", "--max_steps", "2", "--per_device_train_batch_size", "4",
        "--eval_steps", "0", "--max_eval_batches", "1", "--max_eval_examples", "4", "--max_target_length", "8",
        "--report_to", "none", "--output_dir", str(tmp_path / "run"),
    ])  # fmt: skip
    report = json.loads((tmp_path / "run" / "eval_results.json").read_text())
    assert report["task"] == "translation" and report["num_eval_examples"] == 4
    assert all(len(e["source"].split()) <= 12 for e in report["examples"])  # max_source_words
    assert 0.0 <= report["bleu"] <= 100.0


def test_finetuning_reads_a_local_file_of_a_real_datasets_schema(tmp_path, smoke):
    """``--task custom`` with a JSON-lines file shaped like WMT16 ro-en's flattened columns."""
    _, out = smoke
    rows = [{"en": f"the dog number {i} sleeps .", "ro": f"cainele numarul {i} doarme ."} for i in range(40)]
    data = tmp_path / "wmt_like.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    finetune = load_script(FINETUNE)
    finetune.main([
        "--config", str(FINETUNE_CONFIG), "--model_path", str(out / "pretrain" / "final"), "--task", "custom",
        "--dataset", str(data), "--source_column", "en", "--target_column", "ro",
        "--prefix", "translate English to Romanian: ", "--validation_split_percentage", "10",
        "--max_steps", "2", "--per_device_train_batch_size", "4", "--eval_steps", "0", "--max_eval_batches", "1",
        "--max_target_length", "8", "--report_to", "none", "--output_dir", str(tmp_path / "run"),
    ])  # fmt: skip
    report = json.loads((tmp_path / "run" / "eval_results.json").read_text())
    assert report["task"] == "custom" and report["num_eval_examples"] == 4 and report["step"] == 2
    assert report["examples"][0]["reference"].startswith("cainele")


@pytest.mark.parametrize(
    "argv, match",
    [
        (["--preset", "gpt2-small"], "encoder-decoder"),
        (["--inputs_length", "200", "--max_position_embeddings", "128"], "max_position_embeddings"),
        (["--noise_density", "1.5"], "noise_density"),
        (["--mean_noise_span_length", "0.5"], "mean_noise_span_length"),
        (["--hidden_size", "30", "--num_attention_heads", "4"], "divisible"),
    ],
)
def test_pretraining_refuses_bad_configurations_before_any_work(tmp_path, argv, match):
    pretrain = load_script(PRETRAIN)
    with pytest.raises(ValueError, match=match):
        pretrain.main([*TINY, *argv, "--output_dir", str(tmp_path / "run")])
    assert not (tmp_path / "run" / "tokenizer").exists()


def test_finetuning_refuses_bad_configurations(tmp_path):
    finetune = load_script(FINETUNE)
    with pytest.raises(ValueError, match="custom"):
        finetune.main(["--config", str(FINETUNE_CONFIG), "--task", "custom", "--output_dir", str(tmp_path)])
    with pytest.raises(ValueError, match="model_path"):
        finetune.main(["--config", str(FINETUNE_CONFIG), "--model_path", str(tmp_path / "missing"),
                       "--output_dir", str(tmp_path)])  # fmt: skip
