"""Model cards (ZOO.md §6) and the `hfpm` command line."""

from __future__ import annotations

import re

import pytest
import torch
import transformers
import yaml

import hf_paper_models
from hf_paper_models.cards import CARDS_DIR
from hf_paper_models.cli import main


@pytest.mark.parametrize("model_type", list(hf_paper_models.REGISTRY))
def test_every_model_type_has_a_card_whose_snippet_runs(model_type):
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
