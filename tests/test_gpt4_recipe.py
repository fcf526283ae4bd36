"""The GPT-4 image-task recipe (``training/train_gpt4_images.py``): loss on the answer tokens only,
greedy answers scored by exact match beside the majority baseline, and a ``final`` folder that loads
through the Auto classes. The accuracy a real run reaches is in the model card (measured, not tested)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForImageTextToText, AutoProcessor

from hf_paper_models import preset
from hf_paper_models.data.images import image_tasks, majority_baseline, split_tasks
from hf_paper_models.models.gpt4 import PaperGPT4Processor
from hf_paper_models.tokenizers import image_chat_tokenizer
from reproductions.common import load_script

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "training" / "train_gpt4_images.py"
CONFIG = ROOT / "training" / "configs" / "gpt4_tiny_images.yaml"
SMALL = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, sliding_window=8,
             vision_hidden_size=16, vision_num_hidden_layers=1, vision_num_attention_heads=2)  # fmt: skip


@pytest.fixture(scope="module")
def recipe():
    return load_script(SCRIPT)


@pytest.fixture(scope="module")
def processor():
    return PaperGPT4Processor.for_model(preset("gpt4-tiny"), image_chat_tokenizer())


def test_labels_are_the_answer_and_the_loss_counts_only_them(recipe, processor):
    tasks = image_tasks(6, seed=3)
    rows = recipe.encode(processor, tasks, "Answer with one word.")
    tokenizer = processor.tokenizer
    assert len({len(r["input_ids"]) for r in rows}) == 1  # padded to one length
    for row, task in zip(rows, tasks):
        kept = row["labels"][row["labels"] != recipe.IGNORE_INDEX]
        assert tokenizer.decode(kept) == task.answer + tokenizer.eos_token
        assert (row["input_ids"][row["attention_mask"] == 0] == tokenizer.pad_token_id).all()
        assert (row["labels"][row["attention_mask"] == 0] == recipe.IGNORE_INDEX).all()
    # The recipe's loss equals the cross-entropy over the answer positions alone, computed by hand.
    torch.manual_seed(0)
    model = AutoModelForImageTextToText.from_config(preset("gpt4-tiny", **SMALL)).eval()
    batch = {k: torch.stack([r[k] for r in rows]) for k in rows[0]}
    with torch.no_grad():
        loss, extras = recipe.answer_loss(model, batch)
        logits = model(batch["input_ids"], pixel_values=batch["pixel_values"],
                       attention_mask=batch["attention_mask"]).logits  # fmt: skip
    positions = (batch["labels"][:, 1:] != recipe.IGNORE_INDEX).nonzero()
    by_hand = F.cross_entropy(
        torch.stack([logits[b, t] for b, t in positions]),
        torch.stack([batch["labels"][b, t + 1] for b, t in positions]),
    )
    torch.testing.assert_close(loss, by_hand)
    assert 0.0 <= float(extras["answer_token_accuracy"]) <= 1.0


def test_score_by_hand(recipe):
    train, held = image_tasks(40, seed=1), image_tasks(8, seed=2)
    answers = [t.answer if i % 2 == 0 else "nothing" for i, t in enumerate(held)]
    answers[0] = f" {held[0].answer}".upper()  # exact match: case counts
    result = recipe.score(train, held, answers)
    assert result["accuracy"] == pytest.approx(3 / 8)
    assert result["majority_baseline"] == majority_baseline(train, held)
    kinds = result["per_question_type"]
    assert sum(v["n"] for v in kinds.values()) == 8
    assert kinds[held[2].kind]["accuracy"] == 1.0  # kinds cycle: items 2 and 6 share one, both right


def test_recipe_trains_answers_and_saves_a_loadable_model(tmp_path, recipe):
    out = tmp_path / "run"
    overrides = json.dumps({k: v for k, v in SMALL.items() if k not in ("hidden_size", "num_hidden_layers",
                                                                        "num_attention_heads")})  # fmt: skip
    final = recipe.main([
        "--config", str(CONFIG), "--output_dir", str(out), "--max_steps", "4", "--num_train", "48",
        "--num_eval", "12", "--per_device_train_batch_size", "8", "--per_device_eval_batch_size", "8",
        "--hidden_size", "32", "--num_hidden_layers", "2", "--num_attention_heads", "2",
        "--model_overrides", overrides, "--warmup_steps", "0", "--logging_steps", "1", "--eval_steps", "0",
        "--save_steps", "0", "--report_to", "none",
    ])  # fmt: skip
    results = json.loads((out / "results.json").read_text())
    assert results["step"] == 4 and results["n_held_out"] == 12
    assert 0.0 <= results["accuracy"] <= 1.0 and 0.0 < results["majority_baseline"] <= 1.0
    assert set(results["per_question_type"]) == {"shape", "colour", "count", "position"}
    model = AutoModelForImageTextToText.from_pretrained(final).eval()
    processor = AutoProcessor.from_pretrained(final)
    assert type(processor) is PaperGPT4Processor and model.config.hidden_size == 32
    # The recorded answers are the reloaded model's greedy answers.
    _, held = split_tasks(48, 12, seed=0)
    again = recipe.answer_held_out(model, processor, held, "Answer with one word.", 4, 5)
    assert [s["generated"] for s in results["samples"]] == again[: len(results["samples"])]


def test_refuses_a_preset_without_images(recipe):
    with pytest.raises(ValueError, match="gpt2-small"):
        recipe.ImageTaskArguments(preset="gpt2-small")
    with pytest.raises(ValueError, match="num_train"):
        recipe.ImageTaskArguments(num_train=0)


TINY_RUN = [
    "--config", str(CONFIG), "--max_steps", "2", "--per_device_train_batch_size", "4",
    "--per_device_eval_batch_size", "4", "--hidden_size", "32", "--num_hidden_layers", "2",
    "--num_attention_heads", "2", "--warmup_steps", "0", "--logging_steps", "1", "--eval_steps", "0",
    "--save_steps", "0", "--report_to", "none", "--max_new_tokens", "2",
    "--model_overrides", json.dumps({k: v for k, v in SMALL.items()
                                     if k not in ("hidden_size", "num_hidden_layers", "num_attention_heads")}),
]  # fmt: skip


def _local_vqa(folder: Path, n: int = 12) -> Path:
    """A JSON-lines dataset of ``n`` PNG pictures (relative paths) with questions and answers."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    with (folder / "vqa.jsonl").open("w") as f:
        for i in range(n):
            colour = ["red", "blue"][i % 2]
            pixels = np.zeros((20, 24, 3), dtype=np.uint8)  # not the model's 32 x 32: the processor resizes
            pixels[..., 0 if colour == "red" else 2] = 200 + rng.integers(0, 50)
            Image.fromarray(pixels).save(folder / f"pic{i}.png")
            row = {"file": f"pic{i}.png", "q": "What colour is it?", "a": colour, "t": "colour"}
            f.write(json.dumps(row) + "\n")
    return folder / "vqa.jsonl"


def _reset_accelerate():
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


def test_local_image_dataset_trains(tmp_path, recipe):
    data = _local_vqa(tmp_path / "data")
    out = tmp_path / "run"
    argv = [*TINY_RUN, "--output_dir", str(out), "--dataset", str(data), "--image_column", "file",
            "--question_column", "q", "--answer_column", "a", "--kind_column", "t",
            "--validation_split_percentage", "25"]  # fmt: skip
    try:
        final = recipe.main(argv)
    finally:  # accelerate keeps its state in process-wide singletons
        _reset_accelerate()
    results = json.loads((out / "results.json").read_text())
    assert results["step"] == 2 and results["n_held_out"] == 3  # 25% of 12
    assert set(results["per_question_type"]) == {"colour"}
    assert {s["answer"] for s in results["samples"]} <= {"red", "blue"}
    assert (final / "model.safetensors").exists()

    # Missing columns are named.
    with pytest.raises(ValueError, match=r"\['picture', 'query'\]"):
        try:
            recipe.main([*TINY_RUN, "--output_dir", str(tmp_path / "bad"), "--dataset", str(data),
                         "--image_column", "picture", "--question_column", "query", "--answer_column", "a"])  # fmt: skip
        finally:
            _reset_accelerate()


def test_to_array_reads_paths_records_and_pil(tmp_path, recipe):
    from PIL import Image

    pixels = np.arange(4 * 5 * 3, dtype=np.uint8).reshape(4, 5, 3)
    Image.fromarray(pixels).save(tmp_path / "a.png")
    for value in ("a.png", str(tmp_path / "a.png"), {"bytes": (tmp_path / "a.png").read_bytes(), "path": None},
                  Image.open(tmp_path / "a.png").convert("L").convert("RGB")):  # fmt: skip
        array = recipe._to_array(value, tmp_path)
        assert array.shape == (4, 5, 3) and array.dtype == np.uint8
    np.testing.assert_array_equal(recipe._to_array("a.png", tmp_path), pixels)


@pytest.mark.slow
def test_accelerate_launch_two_processes(tmp_path):
    """Two DDP processes (gloo on CPU, through ``--multi_gpu`` as in test_training_recipe.py) train on
    a local dataset for 2 steps; both report their steps and the main process writes results.json."""
    data = _local_vqa(tmp_path / "data", n=20)
    out = tmp_path / "ddp"
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]  # fmt: skip
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1", HF_DATASETS_CACHE=str(tmp_path / "cache"),
               PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))  # fmt: skip
    argv = [*TINY_RUN, "--output_dir", str(out), "--dataset", str(data), "--image_column", "file",
            "--question_column", "q", "--answer_column", "a", "--per_device_train_batch_size", "2"]  # fmt: skip
    result = subprocess.run([*launch, str(SCRIPT), *argv], env=env, cwd=ROOT, capture_output=True, text=True,
                            timeout=120)  # fmt: skip
    assert result.returncode == 0, f"{result.stdout[-3000:]}\n{result.stderr[-6000:]}"
    assert "2 process(es)" in result.stdout
    assert "process 0/2: 2 optimizer steps" in result.stdout
    assert "process 1/2: 2 optimizer steps" in result.stdout
    assert json.loads((out / "results.json").read_text())["step"] == 2
    assert (out / "final" / "model.safetensors").exists()
