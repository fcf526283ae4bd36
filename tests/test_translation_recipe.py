"""The translation recipe (``training/train_translation.py``) and the Transformer reproduction.

End-to-end checks run the script as a user would (a subprocess, a tiny model through command-line
overrides of ``training/configs/transformer_tiny.yaml``): it trains, averages checkpoints, translates
the test split and scores it with BLEU; a run killed after a checkpoint and resumed ends with the same
weights as an uninterrupted one. The reproduction's smoke mode writes its JSON and PNG.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from reproductions.common import load_script

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "training" / "train_translation.py"
CONFIG = ROOT / "training" / "configs" / "transformer_tiny.yaml"
REPRODUCTION = ROOT / "reproductions" / "transformer_translation.py"

TINY = [
    "--config", str(CONFIG),
    "--hidden_size", "32", "--num_hidden_layers", "1", "--num_attention_heads", "2", "--intermediate_size", "64",
    "--vocab_size", "1024", "--max_train_pairs", "200", "--max_eval_pairs", "16", "--max_test_pairs", "6",
    "--max_tokens_per_batch", "600", "--warmup_steps", "2", "--logging_steps", "2", "--eval_steps", "0",
    "--max_eval_batches", "2", "--max_new_tokens", "5", "--generation_batch_size", "6",
]  # fmt: skip


def load_recipe():
    return load_script(SCRIPT)


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tokenizer and datasets cache shared by this module's runs (the tokenizer is trained once)."""
    return tmp_path_factory.mktemp("translation_cache")


def _env(shared: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
        HF_DATASETS_CACHE=str(shared / "datasets"), OMP_NUM_THREADS="1",
        PYTHONPATH=os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]),
    )  # fmt: skip
    return env


def _run(shared: Path, command: list[str], check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(command, env=_env(shared), cwd=ROOT, capture_output=True, text=True, timeout=400)
    if check and result.returncode != 0:
        raise AssertionError(f"exit {result.returncode}\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}")
    return result


def _train(shared: Path, output_dir: Path, *extra: str, check: bool = True) -> subprocess.CompletedProcess:
    command = [sys.executable, str(SCRIPT), *TINY, "--tokenizer_cache_dir", str(shared / "tokenizers"),
               "--output_dir", str(output_dir), *extra]  # fmt: skip
    return _run(shared, command, check)


# ----------------------------------------------------------------------------------------------
# Pieces
# ----------------------------------------------------------------------------------------------


def test_length_batches_pack_by_length_within_the_budget():
    recipe = load_recipe()
    g = torch.Generator().manual_seed(0)
    sources = torch.randint(3, 60, (300,), generator=g).tolist()
    targets = [max(2, s + d) for s, d in zip(sources, torch.randint(-5, 6, (300,), generator=g).tolist())]
    batches = recipe.length_batches(sources, targets, max_tokens=400)
    assert sorted(i for b in batches for i in b) == list(range(300))  # every pair exactly once
    for batch in batches:
        padded = len(batch) * (max(sources[i] for i in batch) + max(targets[i] for i in batch))
        assert padded <= 400 or len(batch) == 1
    # sorted by length: consecutive batches hold ever longer sources
    assert all(max(sources[i] for i in a) <= min(sources[i] for i in b) for a, b in zip(batches, batches[1:]))
    assert batches == recipe.length_batches(sources, targets, max_tokens=400)


def test_loss_is_label_smoothed_in_training_and_plain_in_evaluation():
    from hf_paper_models import preset
    from hf_paper_models.models.transformer import PaperTransformerForConditionalGeneration

    recipe = load_recipe()
    torch.manual_seed(0)
    config = preset("transformer-base", vocab_size=50, hidden_size=16, num_hidden_layers=1,
                    num_attention_heads=2, intermediate_size=32, max_position_embeddings=32, dropout=0.0)  # fmt: skip
    model = PaperTransformerForConditionalGeneration(config)
    labels = torch.tensor([[5, 6, 7, 2], [8, 2, -100, -100]])
    batch = {"input_ids": torch.tensor([[4, 5, 6, 2], [7, 2, 0, 0]]), "attention_mask": torch.tensor([[1] * 4, [1, 1, 0, 0]]),
             "labels": labels, "decoder_input_ids": model.prepare_decoder_input_ids_from_labels(labels)}  # fmt: skip
    loss_fn = recipe.make_loss_fn(0.1)
    model.train()
    smoothed = loss_fn(model, batch)
    model.eval()
    plain = loss_fn(model, batch)
    logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
    log_p = logits.log_softmax(-1)
    keep = labels != -100
    nll = -log_p[keep].gather(-1, labels[keep][:, None]).squeeze(-1)
    uniform = -log_p[keep].mean(-1)
    torch.testing.assert_close(plain, nll.mean())
    torch.testing.assert_close(smoothed, (0.9 * nll + 0.1 * uniform).mean())  # (1-ε)·NLL + ε·mean_k(-log p_k)


def test_a_local_file_in_the_wmt_schema(tmp_path):
    """A ``datasets`` translation corpus ({"translation": {lang: text}}) as a local file: train, validation
    and a held-out test share, disjoint."""
    recipe = load_recipe()
    rows = [{"translation": {"en": f"sentence {i} .", "de": f"Satz {i} ."}} for i in range(40)]
    data_file = tmp_path / "pairs.jsonl"
    data_file.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    args = recipe.DataArguments(dataset=str(data_file), translation_column="translation", source_lang="en",
                                target_lang="de", validation_split_percentage=25, max_eval_pairs=None,
                                max_test_pairs=None)  # fmt: skip
    pairs = recipe.load_pairs(args, seed=0)
    sources = {split: list(pairs[split]["source"]) for split in recipe.SPLITS}
    assert sorted(len(v) for v in sources.values()) == [8, 10, 22]
    assert sum(sources.values(), []) and len(set(sum(sources.values(), []))) == 40
    assert all(
        t == s.replace("sentence", "Satz") for s, t in zip(pairs["test"]["source"], pairs["test"]["target"])
    )


def test_bad_arguments_fail_before_any_work(tmp_path):
    recipe = load_recipe()
    with pytest.raises(ValueError, match="not a sequence-to-sequence"):
        recipe.main(["--config", str(CONFIG), "--preset", "gpt2-small", "--output_dir", str(tmp_path)])
    with pytest.raises(ValueError, match="save_total_limit"):
        recipe.main(
            ["--config", str(CONFIG), "--average_last_checkpoints", "9", "--output_dir", str(tmp_path)]
        )
    with pytest.raises(ValueError, match="divisible"):
        recipe.main(["--config", str(CONFIG), "--num_attention_heads", "5", "--output_dir", str(tmp_path)])
    assert not any(tmp_path.iterdir())


# ----------------------------------------------------------------------------------------------
# End to end
# ----------------------------------------------------------------------------------------------


def test_recipe_trains_averages_translates_and_scores(shared, tmp_path):
    out = tmp_path / "run"
    _train(shared, out, "--max_steps", "6", "--save_steps", "2", "--save_total_limit", "3",
           "--average_last_checkpoints", "3")  # fmt: skip
    summary = json.loads((out / "bleu.json").read_text())
    assert summary["model_type"] == "paper-transformer" and summary["step"] == 6
    assert (
        summary["label_smoothing"] == 0.1 and summary["num_beams"] == 4 and summary["length_penalty"] == 0.6
    )
    assert summary["averaged_checkpoints"] == ["checkpoint-2", "checkpoint-4", "checkpoint-6"]
    for key in ("final", "averaged"):
        report = summary[key]
        assert report["count"] == 6 and 0.0 <= report["bleu"] <= 100.0
        assert sum(b["count"] for b in report["by_length"]) == 6
    # The averaged model is the mean of the three checkpoints' weights.
    states = [load_file(out / f"checkpoint-{s}" / "model.safetensors") for s in (2, 4, 6)]
    averaged = load_file(out / "averaged" / "model.safetensors")
    key = "model.encoder.layers.0.fc1.weight"
    torch.testing.assert_close(averaged[key], (states[0][key] + states[1][key] + states[2][key]) / 3)
    # The saved models load with the Auto classes; the TensorBoard run has the losses and BLEU.
    from transformers import AutoModelForSeq2SeqLM

    import hf_paper_models  # noqa: F401

    model = AutoModelForSeq2SeqLM.from_pretrained(out / "final")
    assert model.generation_config.num_beams == 4
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tags = set()
    for events in (out / "runs").rglob("events.out.tfevents.*"):
        accumulator = EventAccumulator(str(events))
        accumulator.Reload()
        tags |= set(accumulator.Tags()["scalars"])
    assert {"train_loss", "learning_rate", "eval_loss", "test_bleu_final", "test_bleu_averaged"} <= tags


def test_recipe_resumes_to_the_same_weights(shared, tmp_path):
    common = ("--max_steps", "4", "--save_steps", "2", "--skip_bleu", "true", "--report_to", "none")
    _train(shared, tmp_path / "straight", *common)
    killed = _train(shared, tmp_path / "resumed", *common, "--interrupt_at_step", "2", check=False)
    assert killed.returncode != 0 and (tmp_path / "resumed" / "checkpoint-2").is_dir()
    resumed = _train(shared, tmp_path / "resumed", *common)
    assert "Resumed from" in resumed.stdout + resumed.stderr
    left = load_file(tmp_path / "straight" / "final" / "model.safetensors")
    right = load_file(tmp_path / "resumed" / "final" / "model.safetensors")
    assert left.keys() == right.keys()
    assert all(torch.equal(left[k], right[k]) for k in left)


def test_reproduction_smoke(shared, tmp_path):
    _run(
        shared,
        [sys.executable, str(REPRODUCTION), "--smoke", "--threads", "1", "--output-dir", str(tmp_path)],
    )
    result = json.loads((tmp_path / "transformer_translation.json").read_text())
    assert result["smoke"] and result["steps"] == 8
    assert {"averaged", "final", "greedy"} <= result.keys() and 0.0 <= result["bleu"] <= 100.0
    assert (tmp_path / "transformer_translation.png").stat().st_size > 10_000
