"""Few-shot scoring (GPT-3 §2.4) and perplexity, against direct computations in the test."""

from __future__ import annotations

import math

import pytest
import torch

from hf_paper_models import preset
from hf_paper_models.evaluation import (
    MultipleChoiceExample,
    build_prompt,
    completion_log_likelihoods,
    evaluate_few_shot,
    perplexity,
    score_options,
    zero_shot_prompt,
)
from hf_paper_models.models.gpt3 import PaperGPT3LMHeadModel
from hf_paper_models.tokenizers import get_tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    return get_tokenizer("byte_bpe", vocab_size=1000)


@pytest.fixture(scope="module")
def model(tokenizer):
    torch.manual_seed(0)
    config = preset("gpt3-small", vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2,
                    num_attention_heads=4, max_position_embeddings=64, sliding_window=8,
                    eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.bos_token_id)
    return PaperGPT3LMHeadModel(config).eval()


def test_prompt_layout():
    shots = [MultipleChoiceExample("2+2=", (" 4", " 5"), 0), MultipleChoiceExample("3+3=", (" 5", " 6"), 1)]
    query = MultipleChoiceExample("1+1=", (" 2", " 3"), 0)
    assert build_prompt(shots, query) == "2+2= 4\n\n3+3= 6\n\n1+1="
    assert build_prompt([], query, instruction="Add.", delimiter="\n") == "Add.\n1+1="
    with pytest.raises(ValueError):
        MultipleChoiceExample("x", (" a",), 2)


def direct_log_likelihood(model, tokenizer, prompt: str, completion: str) -> float:
    context = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    target = tokenizer(completion, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([context + target])
    with torch.no_grad():
        log_probs = torch.log_softmax(model(ids).logits[0], -1)
    return sum(log_probs[len(context) + i - 1, t].item() for i, t in enumerate(target))


def test_option_log_likelihoods_match_a_direct_computation(model, tokenizer):
    prompt, options = "The cat sat on the", [" mat", " very long sentence indeed", " dog"]
    scored = completion_log_likelihoods(model, tokenizer, prompt, options)
    for (total, length), option in zip(scored.tolist(), options):
        assert math.isclose(total, direct_log_likelihood(model, tokenizer, prompt, option), rel_tol=1e-4)
        assert length == len(tokenizer(option, add_special_tokens=False)["input_ids"])
    mean = score_options(model, tokenizer, prompt, options, "mean")
    torch.testing.assert_close(mean, scored[:, 0] / scored[:, 1])
    unconditional = score_options(model, tokenizer, prompt, options, "unconditional", answer_context="Answer:")
    expected = [direct_log_likelihood(model, tokenizer, prompt, o) - direct_log_likelihood(model, tokenizer, "Answer:", o)
                for o in options]
    torch.testing.assert_close(unconditional, torch.tensor(expected), atol=1e-3, rtol=1e-4)
    with pytest.raises(ValueError, match="normalization"):
        score_options(model, tokenizer, prompt, options, "max")


def test_evaluate_few_shot_counts_correct_answers(model, tokenizer):
    examples = [MultipleChoiceExample(f"{i} then", (" yes", " no"), i % 2) for i in range(6)]
    result = evaluate_few_shot(model, tokenizer, examples, examples, k=2, seed=3)
    # Recompute by hand with the same demonstrations the evaluator draws.
    import random

    rng = random.Random(3)
    correct = 0
    for ex in examples:
        prompt = build_prompt(rng.sample(examples, 2), ex)
        scores = [direct_log_likelihood(model, tokenizer, prompt, o) / len(tokenizer(o)["input_ids"]) for o in ex.options]
        correct += int(max(range(2), key=scores.__getitem__) == ex.label)
    assert result["accuracy"] == correct / 6 and result["k"] == 2 and result["n"] == 6
    with pytest.raises(ValueError, match="k="):
        evaluate_few_shot(model, tokenizer, examples, examples[:2], k=3)


def test_gpt2_zero_shot_prompts():
    assert zero_shot_prompt("summarization", text="A long article.") == "A long article.\nTL;DR:"
    with pytest.raises(ValueError, match="field"):
        zero_shot_prompt("summarization")


def test_perplexity_is_exp_of_the_mean_token_loss(model, tokenizer):
    texts = ["the quick brown fox jumps over the lazy dog"] * 3
    ids = []
    for t in texts:
        ids += tokenizer(t, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    ids = torch.tensor([ids[:64]])
    with torch.no_grad():
        loss = model(ids, labels=ids).loss.item()
    assert math.isclose(perplexity(model, tokenizer, texts, block_size=64), math.exp(loss), rel_tol=1e-4)
