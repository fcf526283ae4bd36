"""The InstructGPT K-wise reward model (Ouyang et al. 2022, §3.5): loss, trainer, bias normalisation.

References are independent of the code under test: hand-computed log-sigmoids, TRL's pairwise
formula over explicitly expanded pairs, per-sequence forwards without padding, and transformers'
own GPT2ForSequenceClassification for the parameter count.
"""

from __future__ import annotations

import copy
import itertools
import math
import random

import pytest
import torch
import transformers
from datasets import Dataset
from transformers import AutoModelForSequenceClassification

import hf_paper_models  # noqa: F401  (registers the Auto classes)
from hf_paper_models import preset
from hf_paper_models.models.gpt2 import PaperGPT2ForSequenceClassification
from hf_paper_models.rlhf import (
    KWiseRewardConfig,
    KWiseRewardTrainer,
    kwise_loss,
    normalize_reward_bias,
    score_responses,
    tokenize_response,
)
from hf_paper_models.tokenizers import get_tokenizer

CHAT_TEMPLATE = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}{{ eos_token }}"


@pytest.fixture(scope="module")
def tokenizer():
    tok = copy.deepcopy(get_tokenizer("byte_bpe", vocab_size=1000))
    tok.chat_template = CHAT_TEMPLATE
    # This tokenizer's pad, EOS and BOS are one token, and the template ends every sequence with EOS:
    # the reward must still be read at the same token with or without padding.
    assert tok.pad_token_id == tok.eos_token_id
    return tok


def tiny_config(tokenizer, **kw):
    return preset(
        "gpt2-small",
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=128,
        num_labels=1,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **kw,
    )


def tiny_model(tokenizer, seed=0, **kw):
    torch.manual_seed(seed)
    return PaperGPT2ForSequenceClassification(tiny_config(tokenizer, **kw)).eval()


def log_sigmoid(x: float) -> float:
    return -math.log(1.0 + math.exp(-x))


def arithmetic_dataset(n: int, seed: int = 0) -> Dataset:
    """K = 4..9 responses per prompt; the labeler ranks the right sum first, junk last (tied)."""
    rng = random.Random(seed)
    rows = {"prompt": [], "responses": [], "scores": []}
    for _ in range(n):
        a, b = rng.randint(1, 40), rng.randint(1, 40)
        candidates = [(f"{a + b}", 3.0), (f"{a + b + 1}", 2.0), (f"{a + b + 13}", 1.0)]
        k = rng.randint(4, 9)
        candidates += [(rng.choice(["no idea", "banana", "maybe later"]), 0.0) for _ in range(k - 3)]
        rng.shuffle(candidates)
        system = [{"role": "system", "content": "Answer with a number."}] if rng.random() < 0.5 else []
        rows["prompt"].append(system + [{"role": "user", "content": f"What is {a} plus {b}?"}])
        rows["responses"].append([c for c, _ in candidates])
        rows["scores"].append([s for _, s in candidates])
    return Dataset.from_dict(rows)


def trainer_args(tmp_path, **kw) -> KWiseRewardConfig:
    base = dict(
        output_dir=str(tmp_path),
        per_device_train_batch_size=4,
        per_device_eval_batch_size=4,
        learning_rate=3e-3,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        seed=0,
        dataloader_num_workers=0,
        max_length=64,
    )
    base.update(kw)
    return KWiseRewardConfig(**base)


# ----------------------------------------------------------------------------------------------
# The loss (eq. 1)
# ----------------------------------------------------------------------------------------------


def test_kwise_loss_hand_worked_with_tie_and_padding():
    rewards = torch.tensor([[2.0, 0.0, 1.0, 0.0], [0.5, -1.0, 3.0, 99.0]])
    scores = torch.tensor([[3.0, 1.0, 2.0, 0.0], [2.0, 2.0, 1.0, 5.0]])
    mask = torch.tensor([[True, True, True, False], [True, True, True, False]])
    loss, accuracy = kwise_loss(rewards, scores, mask)
    # Prompt 1: pairs (y0 > y1), (y0 > y2), (y2 > y1): margins 2, 1, 1 — all rewarded the right way.
    first = -(log_sigmoid(2.0) + log_sigmoid(1.0) + log_sigmoid(1.0)) / 3
    # Prompt 2: y0 and y1 tie (no pair); y3 is padding; pairs (y0 > y2), (y1 > y2): margins −2.5, −4.
    second = -(log_sigmoid(-2.5) + log_sigmoid(-4.0)) / 2
    assert loss.item() == pytest.approx((first + second) / 2, rel=1e-6)  # per prompt, then over prompts
    assert accuracy.item() == pytest.approx(0.5)  # 3/3 right in prompt 1, 0/2 in prompt 2


def test_kwise_loss_equals_trl_pairwise_loss_over_expanded_pairs():
    torch.manual_seed(0)
    batch, k = 3, 6
    rewards = torch.randn(batch, k, requires_grad=True)
    scores = torch.stack([torch.randperm(k).float() for _ in range(batch)])  # distinct: C(6,2) pairs each
    loss, accuracy = kwise_loss(rewards, scores, torch.ones(batch, k, dtype=torch.bool))
    chosen, rejected = [], []
    for b in range(batch):
        for i, j in itertools.combinations(range(k), 2):
            w, lose = (i, j) if scores[b, i] > scores[b, j] else (j, i)
            chosen.append(rewards[b, w])
            rejected.append(rewards[b, lose])
    chosen, rejected = torch.stack(chosen), torch.stack(rejected)
    trl_loss = -torch.nn.functional.logsigmoid(chosen - rejected).mean()  # TRL RewardTrainer's formula
    torch.testing.assert_close(loss, trl_loss)
    assert accuracy.item() == pytest.approx((chosen > rejected).float().mean().item())
    (grad,) = torch.autograd.grad(loss, rewards)
    (trl_grad,) = torch.autograd.grad(trl_loss, rewards)
    torch.testing.assert_close(grad, trl_grad)


def test_kwise_loss_is_invariant_to_the_order_of_responses():
    torch.manual_seed(1)
    rewards = torch.randn(4, 9)
    scores = torch.randint(0, 4, (4, 9)).float()  # ties included
    mask = torch.arange(9).expand(4, 9) < torch.tensor([[4], [9], [6], [7]])
    loss, accuracy = kwise_loss(rewards, scores, mask)
    for _ in range(3):
        perm = torch.stack([torch.randperm(9) for _ in range(4)])
        loss_p, accuracy_p = kwise_loss(rewards.gather(1, perm), scores.gather(1, perm), mask.gather(1, perm))
        torch.testing.assert_close(loss_p, loss)
        torch.testing.assert_close(accuracy_p, accuracy)


def test_kwise_loss_without_pairs_is_zero_but_differentiable():
    rewards = torch.randn(2, 4, requires_grad=True)
    loss, accuracy = kwise_loss(rewards, torch.ones(2, 4), torch.ones(2, 4, dtype=torch.bool))
    assert loss.item() == 0.0 and accuracy.item() == 0.0
    loss.backward()
    assert torch.equal(rewards.grad, torch.zeros(2, 4))


# ----------------------------------------------------------------------------------------------
# The trainer
# ----------------------------------------------------------------------------------------------


def test_one_forward_collation_matches_each_response_alone(tmp_path, tokenizer):
    dataset = arithmetic_dataset(5, seed=3)
    model = tiny_model(tokenizer)
    trainer = KWiseRewardTrainer(
        model, trainer_args(tmp_path), train_dataset=dataset, processing_class=tokenizer
    )
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(5)])
    ks = [len(r) for r in dataset["responses"]]
    assert batch["input_ids"].shape[0] == sum(ks)  # every response of the batch in one forward
    assert batch["scores"].shape == (5, max(ks))
    model.eval()
    with torch.no_grad():
        loss, outputs = trainer.compute_loss(model, dict(batch), return_outputs=True)
    rewards = outputs["rewards"]
    assert rewards.shape == (5, max(ks)) and torch.isfinite(loss)
    prompts, responses = [], []
    for b, row in enumerate(dataset):
        for j, response in enumerate(row["responses"]):
            conversation = row["prompt"] + [{"role": "assistant", "content": response}]
            ids = tokenizer.apply_chat_template(conversation, tokenize=True, return_dict=True)["input_ids"]
            assert ids[-1] == tokenizer.eos_token_id  # pad == EOS ends every sequence
            with torch.no_grad():
                alone = model(input_ids=torch.tensor([ids])).logits[0, 0]
            torch.testing.assert_close(rewards[b, j], alone, atol=1e-5, rtol=1e-5)
            assert batch["scores"][b, j].item() == row["scores"][j]
            prompts.append(row["prompt"])
            responses.append(response)
        assert rewards[b, len(row["responses"]) :].abs().sum() == 0  # padding slots stay empty
    # score_responses gives the same rewards, in batches, even with a left-padding tokenizer.
    left = copy.deepcopy(tokenizer)
    left.padding_side = "left"
    scored = score_responses(model, left, prompts, responses, batch_size=7)
    expected = torch.cat([rewards[b, : len(r)] for b, r in enumerate(dataset["responses"])])
    torch.testing.assert_close(scored, expected, atol=1e-5, rtol=1e-5)


def test_trainer_learns_the_labeler_ranking(tmp_path, tokenizer):
    train, held_out = arithmetic_dataset(64, seed=0), arithmetic_dataset(12, seed=1)
    model = tiny_model(tokenizer)
    trainer = KWiseRewardTrainer(
        model,
        trainer_args(tmp_path, max_steps=32),
        train_dataset=train,
        eval_dataset=held_out,
        processing_class=tokenizer,
    )
    before = trainer.evaluate()
    trainer.train()
    after = trainer.evaluate()
    logs = [log for log in trainer.state.log_history if "loss" in log]
    losses = [log["loss"] for log in logs]
    assert len(losses) == 32 and all(math.isfinite(x) for x in losses)
    assert all(0.0 <= log["accuracy"] <= 1.0 for log in logs) and all("num_pairs" in log for log in logs)
    assert sum(losses[-8:]) / 8 < sum(losses[:8]) / 8 - 0.1
    # Held-out prompts: the ranking generalises (loss down, pairwise accuracy up).
    assert after["eval_loss"] < before["eval_loss"] - 0.1
    assert after["eval_accuracy"] > before["eval_accuracy"]


def test_trainer_rejects_malformed_datasets(tmp_path, tokenizer):
    model = tiny_model(tokenizer)
    bad = Dataset.from_dict({"prompt": ["Hi"], "chosen": ["a"], "rejected": ["b"]})
    with pytest.raises(ValueError, match="responses"):
        KWiseRewardTrainer(model, trainer_args(tmp_path), train_dataset=bad, processing_class=tokenizer)
    uneven = Dataset.from_dict({"prompt": ["Hi"], "responses": [["a", "b", "c"]], "scores": [[1.0, 0.0]]})
    with pytest.raises(ValueError, match="one score per response"):
        KWiseRewardTrainer(model, trainer_args(tmp_path), train_dataset=uneven, processing_class=tokenizer)


# ----------------------------------------------------------------------------------------------
# Bias normalisation (§3.5) and the head's default
# ----------------------------------------------------------------------------------------------


def test_normalize_reward_bias_centres_sft_samples_and_survives_reload(tmp_path, tokenizer):
    model = tiny_model(tokenizer, seed=2)
    assert model.score.bias is None
    prompts = [f"What is {i} plus {i + 2}?" for i in range(10)]
    sft = [f"{2 * i + 2}" for i in range(10)]
    other_prompts, others = ["Say hi.", "Count to three."], ["hi there", "one two three"]

    def alone(prompt, response):  # independent reference: one unpadded sequence at a time
        conversation = [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]
        ids = tokenizer.apply_chat_template(conversation, tokenize=True, return_dict=True)["input_ids"]
        with torch.no_grad():
            return model(input_ids=torch.tensor([ids])).logits[0, 0].item()

    sft_before = torch.tensor([alone(p, r) for p, r in zip(prompts, sft)], dtype=torch.float64)
    others_before = torch.tensor([alone(p, r) for p, r in zip(other_prompts, others)], dtype=torch.float64)
    columns = Dataset.from_dict({"prompt": prompts, "response": sft})  # the pipeline passes dataset columns
    shift = normalize_reward_bias(model, tokenizer, columns["prompt"], columns["response"], batch_size=4)
    assert shift == pytest.approx(-sft_before.mean().item(), abs=1e-5)
    assert abs(sft_before.mean().item()) > 1e-3  # the test would be vacuous otherwise
    assert model.config.score_bias is True and model.score.bias is not None
    sft_after = score_responses(model, tokenizer, prompts, sft, batch_size=3).double()
    assert abs(sft_after.mean().item()) < 1e-5
    torch.testing.assert_close(sft_after, sft_before + shift, atol=1e-5, rtol=0)
    others_after = torch.tensor([alone(p, r) for p, r in zip(other_prompts, others)], dtype=torch.float64)
    torch.testing.assert_close(others_after, others_before + shift, atol=1e-5, rtol=0)

    model.save_pretrained(tmp_path / "rm")
    reloaded = AutoModelForSequenceClassification.from_pretrained(tmp_path / "rm").eval()
    assert type(reloaded) is PaperGPT2ForSequenceClassification and reloaded.config.score_bias
    torch.testing.assert_close(reloaded.score.bias, model.score.bias)
    reloaded_scores = score_responses(reloaded, tokenizer, prompts + other_prompts, sft + others)
    torch.testing.assert_close(
        reloaded_scores.double(), torch.cat([sft_after, others_after]), atol=1e-5, rtol=0
    )
    # A second normalisation of a centred model moves the existing bias by (almost) nothing.
    assert normalize_reward_bias(reloaded, tokenizer, prompts, sft) == pytest.approx(0.0, abs=1e-5)


def test_normalize_reward_bias_needs_a_scalar_head(tokenizer):
    model = PaperGPT2ForSequenceClassification(
        tiny_config(tokenizer).__class__(**{**tiny_config(tokenizer).to_dict(), "num_labels": 3})
    )
    with pytest.raises(ValueError, match="scalar"):
        normalize_reward_bias(model, tokenizer, ["Hi"], ["hello"])


def test_default_head_has_transformers_parameter_count(tokenizer):
    ours = PaperGPT2ForSequenceClassification(tiny_config(tokenizer))
    theirs = transformers.GPT2ForSequenceClassification(
        transformers.GPT2Config(
            vocab_size=len(tokenizer),
            n_embd=32,
            n_layer=2,
            n_head=4,
            n_positions=128,
            num_labels=1,
            pad_token_id=tokenizer.pad_token_id,
        )
    )
    count = sum(p.numel() for p in theirs.parameters())
    assert sum(p.numel() for p in ours.parameters()) == count
    assert ours.score.bias is None and ours.config.score_bias is False
    with_bias = PaperGPT2ForSequenceClassification(tiny_config(tokenizer, score_bias=True))
    assert sum(p.numel() for p in with_bias.parameters()) == count + 1
    assert torch.equal(with_bias.score.bias, torch.zeros(1))


def test_the_reward_model_reads_rendered_and_sampled_replies_at_the_same_token():
    """The reward model is trained on rendered conversations (``tokenize_response``) and scores PPO's
    samples as prompt-with-generation-prompt + sampled ids + EOS (``ppo.score_sequences``): with the
    chat tokenizer both are the same ids, built here by hand, and give the same score."""
    from hf_paper_models.rlhf.ppo import score_sequences
    from hf_paper_models.tokenizers import chat_tokenizer

    tok = chat_tokenizer()
    prompts = [[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2 plus 3?"}],
               [{"role": "user", "content": "Reverse the word cat."}]]  # fmt: skip
    responses = ["5", "Sure! It is tac."]
    rows = []
    for prompt, response in zip(prompts, responses):
        head = tok.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True, return_dict=True)
        by_hand = list(head["input_ids"]) + tok(response, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        assert tokenize_response(tok, prompt, response) == by_hand
        rows.append(by_hand)
    torch.manual_seed(0)
    model = PaperGPT2ForSequenceClassification(preset(
        "gpt2-small", vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=64, num_labels=1, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
        bos_token_id=tok.bos_token_id,
    )).eval()  # fmt: skip
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), tok.pad_token_id)
    mask = torch.zeros_like(ids)
    for i, r in enumerate(rows):  # left padding, as PPO's rollouts are
        ids[i, width - len(r) :], mask[i, width - len(r) :] = torch.tensor(r), 1
    with torch.no_grad():
        sampled = score_sequences(model, ids, mask)
    torch.testing.assert_close(sampled, score_responses(model, tok, prompts, responses), atol=1e-5, rtol=1e-5)
