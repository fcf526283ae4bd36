"""Model cards (ZOO.md §6) and the `hfpm` command line."""

from __future__ import annotations

import json
import re

import pytest
import torch
import transformers
import yaml

import hf_paper_models
from hf_paper_models.cards import CARDS_DIR
from hf_paper_models.cli import main


@pytest.mark.parametrize("model_type", [*hf_paper_models.REGISTRY, "instructgpt"])
def test_every_model_type_has_a_card_whose_snippet_runs(model_type):
    """Every model type's card, and the InstructGPT pipeline's (its stage folders carry it)."""
    text = (CARDS_DIR / f"{model_type}.md").read_text()
    header = yaml.safe_load(text.split("---")[1])
    assert header["library_name"] == "transformers" and header["license"] and header["pipeline_tag"]
    assert model_type in header["tags"]
    assert "bibtex" in text and "## Presets" in text and "## What differs" in text
    snippets = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert snippets, "the card needs a usage snippet"
    exec(compile(snippets[0], f"{model_type}.md", "exec"), {})


def test_hfpm_list_prints_every_preset(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for name in hf_paper_models.PRESETS:
        assert f"| {name} " in out or f" {name} " in out
    assert "124,439,808" in out  # gpt2-small, transformers' own count


def test_hfpm_card_and_unknown_card(capsys):
    assert main(["card", "paper-gpt2"]) == 0
    assert "Radford" in capsys.readouterr().out
    assert main(["card", "paper-nothing"]) == 2
    assert "No model card" in capsys.readouterr().err


def test_hfpm_convert_round_trip(tmp_path):
    torch.manual_seed(0)
    theirs = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_embd=32, n_layer=1, n_head=4, vocab_size=64,
                                                                  n_positions=32)).eval()
    theirs.save_pretrained(tmp_path / "src")
    assert main(["convert", str(tmp_path / "src"), str(tmp_path / "dst")]) == 0
    ours = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "dst").eval()
    assert ours.config.model_type == "paper-gpt2"
    assert (tmp_path / "dst" / "README.md").exists()
    ids = torch.randint(0, 64, (1, 9))
    with torch.no_grad():
        torch.testing.assert_close(ours(ids).logits, theirs(ids).logits, atol=1e-4, rtol=1e-4)
    assert main(["convert", str(tmp_path / "missing"), str(tmp_path / "x")]) == 2


def test_hfpm_average_checkpoints(tmp_path, capsys):
    """Three saved models average into a loadable folder whose weights are their mean, computed here."""
    config = hf_paper_models.preset("transformer-base", vocab_size=40, hidden_size=16, num_hidden_layers=1,
                                    num_attention_heads=2, intermediate_size=32, max_position_embeddings=16)  # fmt: skip
    states = []
    for step in (1, 2, 3):
        torch.manual_seed(step)
        model = transformers.AutoModelForSeq2SeqLM.from_config(config)
        run = tmp_path / "run" / f"checkpoint-{step}"
        model.save_pretrained(run)
        (run / "trainer_state.json").write_text("{}")  # marks a complete recipe checkpoint
        states.append({k: v.clone() for k, v in model.state_dict().items()})
    folders = [str(tmp_path / "run" / f"checkpoint-{s}") for s in (1, 2, 3)]
    assert main(["average-checkpoints", *folders, "-o", str(tmp_path / "avg")]) == 0
    averaged = transformers.AutoModelForSeq2SeqLM.from_pretrained(tmp_path / "avg")
    assert averaged.config.model_type == "paper-transformer"
    for key, value in averaged.state_dict().items():
        torch.testing.assert_close(value, (states[0][key] + states[1][key] + states[2][key]) / 3, msg=key)

    # --last N of a run folder picks the newest N; bad requests are clear errors.
    assert main(["average-checkpoints", str(tmp_path / "run"), "--last", "2", "-o", str(tmp_path / "last2")]) == 0
    assert "checkpoint-2, checkpoint-3" in capsys.readouterr().out
    assert main(["average-checkpoints", str(tmp_path / "run"), "--last", "5", "-o", str(tmp_path / "x")]) == 2
    assert "holds 3 complete checkpoint" in capsys.readouterr().err
    assert main(["average-checkpoints", str(tmp_path / "nowhere"), "-o", str(tmp_path / "y")]) == 2


def test_hfpm_demo_leaves_a_hub_ready_folder(tmp_path, capsys):
    """`make demo` end to end at a few steps: report, sample, and a folder that loads on its own."""
    assert main(["demo", "--output-dir", str(tmp_path), "--steps", "3"]) == 0
    report = json.loads((tmp_path / "demo.json").read_text())
    assert report["steps"] == 3 and report["sample"]
    assert report["validation_loss_final"] > 0 and report["validation_loss_after_20_steps"] > 0
    final = tmp_path / "final"
    for name in ("model.safetensors", "config.json", "tokenizer.json", "README.md"):
        assert (final / name).is_file(), name
    model = transformers.AutoModelForCausalLM.from_pretrained(final)
    assert model.config.model_type == "paper-gpt2"
    assert "[demo] sample:" in capsys.readouterr().out
