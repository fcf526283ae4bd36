"""The InstructGPT pipeline end to end (``hfpm instructgpt``) at toy sizes, and its evaluation helpers
checked against hand-worked cases."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

from hf_paper_models import preset
from hf_paper_models.cli import main
from hf_paper_models.evaluation.win_rate import generate_responses, win_rate
from hf_paper_models.models.gpt2 import PaperGPT2LMHeadModel
from hf_paper_models.tokenizers import chat_tokenizer


def test_win_rate_counts_ties_as_half():
    # judge: the shorter response wins; equal lengths tie
    def shorter(task, a, b):
        return (len(a) < len(b)) - (len(a) > len(b))

    result = win_rate([0, 1, 2, 3], ["a", "bb", "cc", "dddd"], ["bb", "a", "cc", "ee"], shorter)
    # wins: task 0 (1 < 2); losses: task 1 and task 3; tie: task 2  -> (1 + 0.5) / 4
    assert result == {"win_rate": 0.375, "wins": 1, "ties": 1, "losses": 2, "n": 4}
    with pytest.raises(ValueError, match="as many responses as tasks"):
        win_rate([0], ["a", "b"], ["c"], shorter)
    with pytest.raises(ValueError, match="compare must return"):
        win_rate([0], ["a"], ["b"], lambda t, a, b: 2)


@pytest.fixture(scope="module")
def tiny_chat_model():
    tok = chat_tokenizer()
    torch.manual_seed(0)
    config = preset(
        "gpt2-small", vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=96, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )  # fmt: skip
    return PaperGPT2LMHeadModel(config).eval(), tok


def test_greedy_responses_equal_an_argmax_loop_over_full_forwards(tiny_chat_model, greedy_chat_reply):
    """Batched, left-padded, cached generation gives each prompt what a plain loop of full forwards
    (no padding, no cache) gives it alone, cut at the first end-of-turn token."""
    model, tok = tiny_chat_model
    prompts = [
        [{"role": "user", "content": "What is 2 plus 3?"}],
        [{"role": "system", "content": "Answer in capitals."}, {"role": "user", "content": "Reverse the word cat."}],
    ]
    got = generate_responses(model, tok, prompts, max_new_tokens=12, do_sample=False)
    for prompt, response in zip(prompts, got):
        assert response == greedy_chat_reply(model, tok, prompt, 12)


def test_generation_refuses_prompts_beyond_the_context(tiny_chat_model):
    model, tok = tiny_chat_model
    with pytest.raises(ValueError, match="exceeds the model's 96 positions"):
        generate_responses(model, tok, [[{"role": "user", "content": "word " * 80}]], max_new_tokens=8)


TOY = [
    "--hidden_size", "32", "--num_hidden_layers", "2", "--max_position_embeddings", "128", "--pretrain_steps", "3",
    "--sft_examples", "48", "--rm_prompts", "24", "--rm_policy_prompts", "6", "--ppo_prompts", "16",
    "--ppo_rollouts", "2", "--ppo_rollout_batch_size", "8", "--ppo_mini_batch_size", "4", "--eval_prompts", "8",
    "--max_new_tokens", "8",
]  # fmt: skip


@pytest.mark.slow
def test_hfpm_instructgpt_end_to_end_at_toy_size(tmp_path, capsys):
    out = tmp_path / "ig"
    assert main(["instructgpt", "--output-dir", str(out), *TOY]) == 0
    report = json.loads((out / "report.json").read_text())
    for key in ("win_rate_ppo_vs_sft", "reward_sft", "reward_ppo", "kl", "ptx_loss_sft", "ptx_loss_ppo",
                "win_rate_ppo_vs_sft_greedy"):  # fmt: skip
        assert isinstance(report[key], float), key
    assert 0.0 <= report["win_rate_ppo_vs_sft"] <= 1.0
    detail = report["win_rate_detail"]
    assert detail["wins"] + detail["ties"] + detail["losses"] == detail["n"] == 8
    assert len(report["ppo_history"]) == 2 and (out / "report.png").stat().st_size > 0
    for stage, auto in (("sft", AutoModelForCausalLM), ("reward", AutoModelForSequenceClassification),
                        ("ppo", AutoModelForCausalLM)):  # fmt: skip
        folder = out / stage
        model = auto.from_pretrained(folder)
        tokenizer = AutoTokenizer.from_pretrained(folder)
        assert tokenizer.chat_template and "InstructGPT" in (folder / "README.md").read_text()
        assert model.config.model_type == "paper-gpt2"
    # the reward model was shifted so that SFT samples score 0 on average (paper §3.5)
    assert report["reward_model"]["bias_shift"] != 0.0
    assert "[instructgpt] win_rate_ppo_vs_sft" in capsys.readouterr().out

    # A second run over the same folder reuses every finished stage and only evaluates again.
    stamps = {s: (out / s / "model.safetensors").stat().st_mtime_ns for s in ("sft", "reward", "ppo")}
    assert main(["instructgpt", "--output-dir", str(out), *TOY]) == 0
    assert stamps == {s: (out / s / "model.safetensors").stat().st_mtime_ns for s in ("sft", "reward", "ppo")}
    assert set(json.loads((out / "report.json").read_text())["seconds"]) == {"pretrain", "evaluate"}


def test_hfpm_instructgpt_rejects_a_bad_setting(tmp_path, capsys):
    assert main(["instructgpt", "--output-dir", str(tmp_path), "--ppo_rollouts", "0"]) == 2
    assert "ppo_rollouts" in capsys.readouterr().err
