"""BERT's recipes (``training/pretrain_bert.py``, ``training/finetune_bert.py``) and its reproduction
(``reproductions/bert_mlm_nsp.py``), run as a user would, at a tiny size."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForSequenceClassification

from reproductions.common import load_script

ROOT = Path(__file__).resolve().parents[1]
PRETRAIN = ROOT / "training" / "pretrain_bert.py"
FINETUNE = ROOT / "training" / "finetune_bert.py"
REPRODUCTION = ROOT / "reproductions" / "bert_mlm_nsp.py"
CONFIGS = ROOT / "training" / "configs"

# 2 layers × 32 wide, a 512-piece WordPiece vocabulary, the first 40 embedded documents.
TINY = [
    "--config", str(CONFIGS / "bert_tiny.yaml"),
    "--hidden_size", "32", "--num_hidden_layers", "2", "--num_attention_heads", "2", "--intermediate_size", "64",
    "--vocab_size", "512", "--max_seq_length", "48", "--max_documents", "40",
    "--per_device_train_batch_size", "8", "--per_device_eval_batch_size", "16", "--learning_rate", "2e-3",
    "--warmup_steps", "2", "--logging_steps", "2", "--eval_steps", "0", "--max_eval_batches", "2",
]  # fmt: skip


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("bert_recipes")


def _env(shared: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               HF_DATASETS_CACHE=str(shared / "datasets"),
               PYTHONPATH=os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]))  # fmt: skip
    return env


def _pretrain(shared: Path, output_dir: Path, *extra: str, check: bool = True) -> subprocess.CompletedProcess:
    command = [sys.executable, str(PRETRAIN), *TINY, "--tokenizer_cache_dir", str(shared / "tokenizers"),
               "--output_dir", str(output_dir), *extra]  # fmt: skip
    result = subprocess.run(command, env=_env(shared), cwd=ROOT, capture_output=True, text=True, timeout=600)
    if check and result.returncode != 0:
        raise AssertionError(f"exit {result.returncode}\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}")
    return result


def _scalars(output_dir: Path) -> set[str]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tags = set()
    for events in (output_dir / "runs").rglob("events.out.tfevents.*"):
        accumulator = EventAccumulator(str(events))
        accumulator.Reload()
        tags.update(accumulator.Tags()["scalars"])
    return tags


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--preset", "gpt2-small"], "no MLM \\+ NSP pre-training head"),
        (["--max_seq_length", "128"], "max_seq_length=128 is larger than the model's 64 positions"),
        (["--num_attention_heads", "3"], "divisible"),
        (["--mlm_probability", "1.5"], "mlm_probability"),
        (["--model_overrides", '{"type_vocab_size": 0}'], "type_vocab_size"),
        (["--max_documents", "1"], "max_documents"),
    ],
)
def test_pretrain_bad_config_raises_before_any_work(tmp_path: Path, extra: list[str], message: str):
    output_dir = tmp_path / "out"
    with pytest.raises(ValueError, match=message):
        load_script(PRETRAIN).main([*TINY, "--output_dir", str(output_dir), *extra])
    assert not output_dir.exists()


def test_finetune_bad_config_raises(tmp_path: Path):
    with pytest.raises(ValueError, match="not a folder"):
        load_script(FINETUNE).main(["--config", str(CONFIGS / "bert_finetune_tiny.yaml"), "--model_path",
                              str(tmp_path / "missing"), "--output_dir", str(tmp_path / "out")])  # fmt: skip


def test_pretrain_resumes_exactly_then_finetunes(shared: Path, tmp_path: Path):
    """An uninterrupted run and a run killed after step 4 (checkpoint at 3) then resumed end with the same
    weights; the result fine-tunes into a sequence classifier. Only the killed run is a subprocess."""
    pretrain = load_script(PRETRAIN)
    steps = ["--max_steps", "6", "--save_steps", "3", "--tokenizer_cache_dir", str(shared / "tokenizers")]
    whole, broken = tmp_path / "whole", tmp_path / "broken"
    killed = _pretrain(shared, broken, *steps, "--interrupt_at_step", "4", check=False)
    assert killed.returncode != 0 and (broken / "checkpoint-3").is_dir() and not (broken / "final").exists()
    pretrain.main([*TINY, *steps, "--output_dir", str(whole)])
    pretrain.main([*TINY, *steps, "--output_dir", str(broken)])  # resumes from checkpoint-3
    assert json.loads((broken / "eval_results.json").read_text())["history"][0]["step"] > 3
    left = load_file(whole / "final" / "model.safetensors")
    right = load_file(broken / "final" / "model.safetensors")
    assert left.keys() == right.keys()
    assert all(torch.equal(left[k], right[k]) for k in left), "weights differ after resume"

    report = json.loads((whole / "eval_results.json").read_text())
    assert (
        report["step"] == 6
        and 0.0 <= report["eval_mlm_accuracy"] <= 1
        and 0 <= report["eval_nsp_accuracy"] <= 1
    )
    assert report["eval_masked_tokens"] > 0 and report["eval_pairs"] > 0
    assert {"train_loss", "train_mlm_accuracy", "train_nsp_accuracy", "learning_rate"} <= _scalars(whole)
    assert (whole / "final" / "tokenizer.json").exists()

    out = tmp_path / "finetune"
    final = load_script(FINETUNE).main([
        "--config", str(CONFIGS / "bert_finetune_tiny.yaml"), "--model_path", str(whole / "final"),
        "--output_dir", str(out), "--max_documents", "15", "--max_steps", "3", "--warmup_steps", "1",
        "--per_device_train_batch_size", "8", "--logging_steps", "1", "--eval_steps", "0", "--report_to", "none",
    ])  # fmt: skip
    classifier = AutoModelForSequenceClassification.from_pretrained(final)
    assert (
        type(classifier).__name__ == "PaperBertForSequenceClassification"
        and classifier.config.num_labels == 2
    )
    encoder = load_file(final / "model.safetensors")
    name = "bert.encoder.layer.1.attention.self.q_proj.weight"
    assert not torch.equal(encoder[name], left[name])  # fine-tuned from the pre-trained weights
    assert json.loads((out / "eval_results.json").read_text())["eval_examples"] > 0


def test_reproduction_smoke_runs_quickly(tmp_path: Path):
    start = time.perf_counter()
    results = load_script(REPRODUCTION).main(["--smoke", "--output_dir", str(tmp_path)])
    assert time.perf_counter() - start < 60
    written = json.loads((tmp_path / "bert_mlm_nsp.json").read_text())
    assert written["smoke"] and written["pretraining"]["step"] == results["pretraining"]["step"] > 0
    for key in ("eval_mlm_accuracy", "eval_nsp_accuracy"):
        assert 0.0 <= written["pretraining"][key] <= 1.0
    assert set(written["finetune_word_order"]) == {"pretrained", "random_init"}
    assert (tmp_path / "bert_mlm_nsp.png").stat().st_size > 10_000
