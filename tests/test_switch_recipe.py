"""The Switch Transformer through the span-corruption recipe (``training/pretrain_t5.py`` with
``training/configs/switch_tiny.yaml``) and its reproduction (``reproductions/switch_vs_t5.py``), in-process
at a tiny size.

The claim itself (Switch reaches the dense T5's loss in fewer steps) is measured by the default run of
the reproduction and recorded in the model card; here the recipe must train a ``paper-switch`` model
with its auxiliary loss counted once, log the routing statistics (TensorBoard and history), resume
exactly, and refuse bad configurations before doing any work; the reproduction must run and write sane
JSON and a PNG.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from hf_paper_models.models.t5 import PaperT5Config, PaperT5ForConditionalGeneration
from reproductions.common import load_script

ROOT = Path(__file__).resolve().parents[1]
PRETRAIN = ROOT / "training" / "pretrain_t5.py"
CONFIG = ROOT / "training" / "configs" / "switch_tiny.yaml"
ROUTING = ("aux_loss", "load_balancing_loss", "expert_load_min", "expert_load_max", "dropped_fraction")

# Two layers per stack: the second FFN of each stack is a Switch layer (sparse step 2).
TINY = [
    "--config", str(CONFIG), "--hidden_size", "32", "--num_hidden_layers", "2", "--num_attention_heads", "2",
    "--intermediate_size", "64", "--vocab_size", "512", "--max_documents", "40", "--inputs_length", "32",
    "--per_device_train_batch_size", "4", "--per_device_eval_batch_size", "8", "--logging_steps", "1",
    "--eval_steps", "0", "--max_eval_batches", "1", "--warmup_steps", "0", "--report_to", "none",
    # dropout on and the router's jitter at its default: resuming must restore their randomness too
    "--model_overrides", '{"dropout_rate": 0.1, "num_experts": 4, "capacity_factor": 1.0}',
]  # fmt: skip


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("switch_tokenizers")


def _scalars(output_dir: Path) -> set[str]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tags = set()
    for events in (output_dir / "runs").rglob("events.out.tfevents.*"):
        accumulator = EventAccumulator(str(events))
        accumulator.Reload()
        tags.update(accumulator.Tags()["scalars"])
    return tags


def test_switch_trains_resumes_exactly_and_logs_its_routing(tmp_path, tokenizers):
    """A run stopped at a checkpoint and resumed ends with bitwise the weights of an uninterrupted one
    (dropout and router jitter included); the history and TensorBoard carry the routing statistics."""
    pretrain = load_script(PRETRAIN)
    common = [*TINY, "--tokenizer_cache_dir", str(tokenizers), "--lr_scheduler_type", "constant"]
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    pretrain.main([*common, "--max_steps", "4", "--save_steps", "2", "--output_dir", str(whole),
                   "--report_to", "tensorboard"])  # fmt: skip
    pretrain.main([*common, "--max_steps", "2", "--save_steps", "2", "--output_dir", str(parts)])
    pretrain.main([*common, "--max_steps", "4", "--save_steps", "2", "--output_dir", str(parts)])
    a = load_file(whole / "final" / "model.safetensors")
    b = load_file(parts / "final" / "model.safetensors")
    assert a.keys() == b.keys() and any(".mlp.experts." in name for name in a)
    for name in a:
        assert torch.equal(a[name], b[name]), name
    config = json.loads((whole / "final" / "config.json").read_text())
    assert config["model_type"] == "paper-switch" and config["num_experts"] == 4

    report = json.loads((whole / "eval_results.json").read_text())
    trains = [h for h in report["history"] if "train_loss" in h]
    assert [h["step"] for h in trains] == [1, 2, 3, 4]
    for h in trains:
        assert {f"train_{k}" for k in ROUTING} <= h.keys()
        assert h["train_aux_loss"] == pytest.approx(0.01 * h["train_load_balancing_loss"], rel=1e-5)
        assert 0.0 <= h["train_expert_load_min"] <= 0.25 <= h["train_expert_load_max"] <= 1.0
        assert 0.0 <= h["train_dropped_fraction"] < 1.0
    for key in ROUTING:
        assert math.isfinite(report[f"eval_{key}"])
    assert report["eval_dropped_fraction"] == 0.0  # no capacity limit in evaluation (the default)
    assert {"train_loss", "eval_loss", *(f"train_{k}" for k in ROUTING)} <= _scalars(whole)


def test_the_auxiliary_loss_is_counted_once(tmp_path):
    """The model's training loss already holds its aux loss; the recipe's loss is that loss, not more.
    With room for every token and no jitter, training and evaluation route alike, so the training loss
    is exactly the evaluation cross-entropy plus the aux loss."""
    from transformers import AutoModelForSeq2SeqLM

    import hf_paper_models

    pretrain = load_script(PRETRAIN)
    config = hf_paper_models.preset(
        "switch-base-8", vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, num_experts=4, capacity_factor=4.0, router_jitter_noise=0.0, dropout_rate=0.0,
    )  # fmt: skip
    model = AutoModelForSeq2SeqLM.from_config(config)
    torch.manual_seed(0)
    batch = {"input_ids": torch.randint(2, 64, (3, 12)), "attention_mask": torch.ones(3, 12, dtype=torch.long),
             "labels": torch.randint(2, 64, (3, 5))}  # fmt: skip
    model.train()
    loss, metrics = pretrain.span_corruption_loss(model, batch)
    model.eval()
    with torch.no_grad():
        cross_entropy, eval_metrics = pretrain.span_corruption_loss(model, batch)
    assert metrics.keys() == eval_metrics.keys() == set(ROUTING)
    assert metrics["aux_loss"] > 0 and metrics["dropped_fraction"] == 0.0
    assert loss.item() == pytest.approx(cross_entropy.item() + metrics["aux_loss"].item(), abs=1e-5)

    dense = AutoModelForSeq2SeqLM.from_config(
        hf_paper_models.preset(
            "t5-small",
            vocab_size=64,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
        )  # fmt: skip
    )
    assert isinstance(pretrain.span_corruption_loss(dense, batch), torch.Tensor)  # no routing to log


def test_routing_metrics_average_each_layers_extremes():
    from types import SimpleNamespace

    from hf_paper_models.training_utils import routing_metrics

    out = SimpleNamespace(
        aux_loss=torch.tensor(0.03), encoder_aux_loss=torch.tensor(1.0), decoder_aux_loss=torch.tensor(2.0),
        expert_load=torch.tensor([[0.1, 0.2, 0.7], [0.3, 0.3, 0.4]]), dropped_fraction=torch.tensor([0.1, 0.3]),
    )  # fmt: skip
    metrics = {k: v.item() for k, v in routing_metrics(out).items()}
    assert metrics == pytest.approx(
        {
            "aux_loss": 0.03,
            "load_balancing_loss": 3.0,
            "expert_load_min": 0.2,
            "expert_load_max": 0.55,
            "dropped_fraction": 0.2,
        }  # fmt: skip
    )
    assert routing_metrics(SimpleNamespace(loss=torch.tensor(1.0))) == {}
    # The MoE-LSTM's output: its unweighted importance and load losses, one MoE layer's load.
    lstm = SimpleNamespace(aux_loss=torch.tensor(0.5), importance_loss=torch.tensor(2.0), load_loss=torch.tensor(3.0),
                           expert_load=torch.tensor([[0.5, 0.25, 0.25]]))  # fmt: skip
    assert {k: v.item() for k, v in routing_metrics(lstm).items()} == {
        "aux_loss": 0.5, "importance_loss": 2.0, "load_loss": 3.0, "expert_load_min": 0.25, "expert_load_max": 0.5,
    }  # fmt: skip


@pytest.mark.parametrize(
    "argv, match",
    [
        (["--model_overrides", '{"capacity_factor": 0}'], "capacity_factor"),
        (["--model_overrides", '{"num_experts": 0}'], "num_experts"),
        (["--model_overrides", '{"router_aux_loss_coef": -1}'], "router_aux_loss_coef"),
        (["--model_overrides", '{"num_expert": 8}'], r"\['num_expert'\] are not fields of paper-switch"),
        (["--preset", "t5-small", "--model_overrides", '{"num_experts": 8}'], "not fields of paper-t5"),
        (["--preset", "switch-base-9"], "Unknown preset"),
        (["--preset", "gpt3-small"], "encoder-decoder"),
        (["--hidden_size", "30", "--num_attention_heads", "4"], "divisible"),
    ],
)
def test_bad_switch_configurations_fail_before_any_work(tmp_path, argv, match):
    pretrain = load_script(PRETRAIN)
    with pytest.raises(ValueError, match=match):
        pretrain.main([*TINY, *argv, "--output_dir", str(tmp_path / "run")])
    assert not (tmp_path / "run" / "tokenizer").exists()


# ----------------------------------------------------------------------------------------------
# The reproduction
# ----------------------------------------------------------------------------------------------


def test_steps_to_reach_interpolates_between_evaluations():
    from reproductions.switch_vs_t5 import steps_to_reach

    curve = [[10, 5.0], [20, 4.0], [30, 3.0], [40, 3.5]]
    assert steps_to_reach(curve, 3.5) == pytest.approx(25.0)
    assert steps_to_reach(curve, 3.0) == pytest.approx(30.0)
    assert steps_to_reach(curve, 6.0) == 10.0  # already there at the first evaluation
    assert steps_to_reach(curve, 2.0) is None


def test_the_rule_over_seeds_takes_the_median_speed_up():
    from reproductions.switch_vs_t5 import over_seeds

    # the seed-42..44 speed-ups measured at 8 experts: median 1.12 < 1.25
    r = over_seeds(42, {"speedup": 1.11, "holds": False}, [{"seed": 43, "speedup": 1.54}, {"seed": 44, "speedup": 1.12}])
    assert r["seeds"] == [42, 43, 44] and r["median_speedup"] == pytest.approx(1.12) and r["holds"] is False
    # a Switch model that never reached the dense loss counts as 0, not as a missing value
    r = over_seeds(42, {"speedup": None, "holds": False}, [{"seed": 43, "speedup": 1.66}, {"seed": 44, "speedup": 1.44}])
    assert r["speedups"] == [0.0, 1.66, 1.44] and r["median_speedup"] == pytest.approx(1.44) and r["holds"] is True
    assert r["holds_first_seed"] is False
    # one seed: the single-run rule (speed-up >= 1 / 0.8)
    assert over_seeds(42, {"speedup": 1.25, "holds": True}, [])["holds"] is True


def test_reproduction_smoke(tmp_path):
    from reproductions import switch_vs_t5

    result = switch_vs_t5.main(["--smoke", "--output-dir", str(tmp_path)])
    assert (tmp_path / "switch_vs_t5.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    saved = json.loads((tmp_path / "switch_vs_t5.json").read_text())
    assert saved["smoke"] is True and isinstance(saved["holds"], bool) and saved["holds"] == result["holds"]
    # the smoke run's one replicate pair: its own seed, on the first pair's vocabulary
    assert saved["seeds"] == [42, 43] and [r["seed"] for r in saved["replicates"]] == [43]
    assert (tmp_path / "runs" / "seed43" / "switch" / "final" / "config.json").is_file()
    same_vocabulary = [
        json.loads((tmp_path / "runs" / d / "final" / "tokenizer.json").read_text())["model"]["vocab"]
        for d in ("dense", "seed43/dense")
    ]
    assert same_vocabulary[0] == same_vocabulary[1]
    assert saved["max_step_ratio"] == 0.8 and "0.8" in saved["rule"] and saved["device"]
    dense, switch = saved["models"]["dense"], saved["models"]["switch"]
    # One recipe for both: the dense model is it with no Switch layer, the Switch model has one per stack
    # (layer 1 of 2), and both start from the same (the paper's reduced) initialisation scale.
    assert dense["model_type"] == switch["model_type"] == "paper-switch"
    assert dense["switch_layers"] == 0 and switch["switch_layers"] == 2
    assert dense["initializer_scale"] == switch["initializer_scale"] == saved["settings"]["initializer_scale"] == 0.1
    # ... and exactly paper-t5's parameters at the dense run's sizes
    sizes = json.loads((tmp_path / "runs" / "dense" / "final" / "config.json").read_text())
    t5 = PaperT5Config(**{k: sizes[k] for k in ("vocab_size", "d_model", "d_kv", "d_ff", "num_layers",
                                                 "num_decoder_layers", "num_heads")})  # fmt: skip
    with torch.device("meta"):
        assert dense["parameters"] == PaperT5ForConditionalGeneration(t5).num_parameters()
    assert dense["steps"] == switch["steps"] == 6
    assert [s for s, _ in dense["eval_curve"]] == [s for s, _ in switch["eval_curve"]] == [2, 4, 6]
    assert switch["parameters"] > dense["parameters"]
    assert saved["target_loss"] == dense["eval_curve"][-1][1] and saved["dense_steps_to_target"] <= 6
    end = switch["routing_at_end"]
    assert end["balanced_load"] == 0.25 and end["train"]["aux_loss"] > 0
    assert 0.0 <= end["train"]["expert_load_min"] <= 0.25 <= end["train"]["expert_load_max"] <= 1.0
    with pytest.raises(SystemExit):
        switch_vs_t5.main(["--smoke", "--output-dir", str(tmp_path), "--set", "no_such_setting=1"])
