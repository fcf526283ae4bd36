"""PPO-ptx (InstructGPT, Ouyang et al. 2022 §3.5; PPO, Schulman et al. 2017; GAE, Schulman et al. 2016).

The formulas are checked against numbers worked by hand in each test (never against the code's own
earlier output); the trainer end to end on a tiny GPT-2 policy with a programmatic reward: the reward
rises, the KL to the reference starts at exactly 0, a resumed run ends bitwise equal to an uninterrupted
one, a LoRA policy uses its adapter-free base as reference and changes only the adapter, the ptx term is
computed and logged, and two DDP processes (gloo on CPU) run and stay in sync.
"""

from __future__ import annotations

import copy
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from datasets import Dataset

from hf_paper_models import preset
from hf_paper_models.models.gpt2 import PaperGPT2ForSequenceClassification, PaperGPT2LMHeadModel
from hf_paper_models.rlhf.ppo import (
    PPOConfig,
    PPOTrainer,
    compute_gae,
    entropy_from_logits,
    kl_penalized_rewards,
    policy_loss,
    ptx_loss,
    value_loss,
    whiten,
)
from hf_paper_models.tokenizers import get_tokenizer

ROOT = Path(__file__).resolve().parents[1]
CHAT_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}"
)


@pytest.fixture(autouse=True)
def _reset_accelerate():
    yield
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)  # process-wide singletons
    GradientState._reset_state()


@pytest.fixture(scope="module")
def tok_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("ppo_tokenizers")


@pytest.fixture(scope="module")
def tokenizer(tok_cache: Path):
    tok = get_tokenizer("byte_bpe", vocab_size=1000, cache_dir=tok_cache)
    tok.chat_template = CHAT_TEMPLATE
    return tok


def tiny_config(tok, **overrides):
    return preset(
        "gpt2-small", vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=128, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id, **overrides,
    )  # fmt: skip


def make_models(tok, seed: int = 0):
    """(policy, frozen reference = a copy of it, value model)."""
    torch.manual_seed(seed)
    policy = PaperGPT2LMHeadModel(tiny_config(tok))
    value = PaperGPT2ForSequenceClassification(tiny_config(tok, num_labels=1))
    return policy, copy.deepcopy(policy), value


def chat_prompts(n: int = 32) -> Dataset:
    topics = ["cats", "rain", "bread", "music", "trains", "stars", "rivers", "paper"]
    return Dataset.from_dict(
        {"prompt": [[{"role": "user", "content": f"tell me about {topics[i % 8]} {i}"}] for i in range(n)]}
    )


def a_fraction(prompts: list, responses: list[str]) -> torch.Tensor:
    """Programmatic reward: the share of the response's characters that are the letter "a"."""
    assert len(prompts) == len(responses)
    return torch.tensor([r.count("a") / max(len(r), 1) for r in responses])


def ppo_config(tmp_path: Path, **overrides) -> PPOConfig:
    values = dict(
        output_dir=str(tmp_path), num_rollouts=4, rollout_batch_size=16, mini_batch_size=8, ppo_epochs=2,
        max_new_tokens=8, learning_rate=1e-2, value_learning_rate=1e-3, kl_coef=0.0, report_to="none",
        save_steps=0, resume_from_checkpoint="no",
    )  # fmt: skip
    values.update(overrides)
    return PPOConfig(**values)


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


# ----------------------------------------------------------------------------------------------
# Formulas, worked by hand
# ----------------------------------------------------------------------------------------------


def test_gae_hand_computed_with_padding():
    gamma, lam = 0.9, 0.8
    # Row 0: three response tokens and one pad (whose reward/value must be ignored); row 1: four.
    rewards = torch.tensor([[0.1, -0.2, 1.0, 5.0], [0.0, 0.0, 0.0, 2.0]])
    values = torch.tensor([[0.5, 0.4, 0.3, 9.0], [1.0, 1.0, 1.0, 1.0]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])
    advantages, returns = compute_gae(rewards, values, mask, gamma, lam)

    # Row 0: δ_t = r_t + γ V_{t+1} − V_t with V_3 = 0 (the episode ends at t = 2).
    d2 = 1.0 + 0.9 * 0.0 - 0.3  # 0.7
    d1 = -0.2 + 0.9 * 0.3 - 0.4  # -0.33
    d0 = 0.1 + 0.9 * 0.4 - 0.5  # -0.04
    a2 = d2  # 0.7
    a1 = d1 + 0.72 * a2  # 0.174
    a0 = d0 + 0.72 * a1  # 0.08528
    # Row 1: δ_3 = 2 − 1 = 1; δ_2 = δ_1 = δ_0 = 0 + 0.9·1 − 1 = −0.1.
    b3 = 1.0
    b2 = -0.1 + 0.72 * b3  # 0.62
    b1 = -0.1 + 0.72 * b2  # 0.3464
    b0 = -0.1 + 0.72 * b1  # 0.149408
    expected = torch.tensor([[a0, a1, a2, 0.0], [b0, b1, b2, b3]])
    assert a0 == pytest.approx(0.08528) and b0 == pytest.approx(0.149408)
    torch.testing.assert_close(advantages, expected)
    torch.testing.assert_close(returns, expected + torch.tensor([[0.5, 0.4, 0.3, 0.0], [1.0, 1.0, 1.0, 1.0]]))

    # γ = λ = 1: the advantage is the Monte-Carlo return minus the value.
    advantages, returns = compute_gae(rewards, values, mask, 1.0, 1.0)
    torch.testing.assert_close(advantages[0], torch.tensor([0.9 - 0.5, 0.8 - 0.4, 1.0 - 0.3, 0.0]))
    torch.testing.assert_close(returns[1], torch.tensor([2.0, 2.0, 2.0, 2.0]))


def test_clipped_policy_loss_hand_computed():
    eps = 0.2
    ratios = torch.tensor([[1.1, 1.5, 0.5, 0.5, 1.5, 3.0]])
    advantages = torch.tensor([[1.0, 1.0, 2.0, -1.0, -1.0, 10.0]])
    mask = torch.tensor([[1, 1, 1, 1, 1, 0]])  # the last token is padding
    old = torch.full_like(ratios, -1.0)
    loss, clipfrac, approx_kl = policy_loss(old + ratios.log(), old, advantages, mask, eps)
    # Per token max(−A·ρ, −A·clip(ρ, 0.8, 1.2)):
    #   ρ=1.1, A=+1: −1.1 vs −1.1 → −1.1 (inside)     ρ=1.5, A=+1: −1.5 vs −1.2 → −1.2 (clipped)
    #   ρ=0.5, A=+2: −1.0 vs −1.6 → −1.0 (unclipped)  ρ=0.5, A=−1: 0.5 vs 0.8 → 0.8 (clipped)
    #   ρ=1.5, A=−1: 1.5 vs 1.2 → 1.5 (unclipped)
    assert loss.item() == pytest.approx((-1.1 - 1.2 - 1.0 + 0.8 + 1.5) / 5)  # = −0.2
    assert clipfrac.item() == pytest.approx(2 / 5)
    logs = [math.log(r) for r in (1.1, 1.5, 0.5, 0.5, 1.5)]
    assert approx_kl.item() == pytest.approx(0.5 * sum(x * x for x in logs) / 5)

    # The gradient flows through ρ only where the unclipped term is used: d/dlogπ (−A·ρ) = −A·ρ / 5.
    logprobs = (old + ratios.log()).requires_grad_()
    policy_loss(logprobs, old, advantages, mask, eps)[0].backward()
    torch.testing.assert_close(
        logprobs.grad, torch.tensor([[-1.1 / 5, 0.0, -2.0 * 0.5 / 5, 0.0, 1.5 / 5, 0.0]])
    )


def test_clipped_value_loss_hand_computed():
    values = torch.tensor([[1.0, 1.5, 0.5, 1.5, 100.0]])
    old = torch.tensor([[0.9, 1.0, 1.0, 1.0, 0.0]])
    returns = torch.tensor([[2.0, 2.0, 0.0, 1.0, 0.0]])
    mask = torch.tensor([[1, 1, 1, 1, 0]])
    loss, clipfrac = value_loss(values, old, returns, mask, 0.2)
    # V_clip = V_old + clip(V − V_old, ±0.2) = 1.0, 1.2, 0.8, 1.2
    # (V−R)² = 1, .25, .25, .25 ; (V_clip−R)² = 1, .64, .64, .04 ; max = 1, .64, .64, .25
    assert loss.item() == pytest.approx(0.5 * (1 + 0.64 + 0.64 + 0.25) / 4)  # 0.31625
    assert clipfrac.item() == pytest.approx(2 / 4)


def test_kl_penalized_rewards_score_on_last_valid_token():
    logprobs = torch.tensor([[-1.0, -2.0, -0.5, 0.0], [-1.0, -1.0, -1.0, -1.0]])
    ref = torch.tensor([[-1.5, -1.0, -0.5, 7.0], [-2.0, -2.0, -2.0, -2.0]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])
    rewards = kl_penalized_rewards(torch.tensor([2.0, -1.0]), logprobs, ref, mask, kl_coef=0.1)
    # −β(logπ − logπ_SFT): row 0: −0.1·(0.5, −1, 0) = (−0.05, 0.1, 0), score 2 at t = 2; pad 0.
    # row 1: −0.1·1 = −0.1 everywhere, score −1 at t = 3.
    expected = torch.tensor([[-0.05, 0.1, 2.0, 0.0], [-0.1, -0.1, -0.1, -1.1]])
    torch.testing.assert_close(rewards, expected)


def test_whiten_over_masked_positions():
    torch.manual_seed(0)
    x = torch.randn(3, 7) * 4 + 3
    mask = torch.ones(3, 7)
    mask[0, 5:] = 0
    mask[2, 2:] = 0
    out = whiten(x, mask)
    n = mask.sum()
    assert ((out * mask).sum() / n).item() == pytest.approx(0.0, abs=1e-6)
    assert ((out**2 * mask).sum() / n).item() == pytest.approx(1.0, abs=1e-5)
    assert (out[mask == 0] == 0).all()
    x_changed = x.clone()
    x_changed[mask == 0] = 1e6  # padded values do not move the statistics
    torch.testing.assert_close(whiten(x_changed, mask), out)
    # shift_mean=False keeps the mean and scales to unit variance.
    kept = whiten(x, mask, shift_mean=False)
    mean = (x * mask).sum() / n
    assert ((kept * mask).sum() / n).item() == pytest.approx(mean.item(), rel=1e-5)
    torch.testing.assert_close(kept[mask == 1] - mean, out[mask == 1])


def test_entropy_and_ptx_loss(tokenizer):
    probs = torch.tensor([[0.5, 0.25, 0.25], [1 / 3, 1 / 3, 1 / 3]])
    entropy = entropy_from_logits(probs.log() + 7.0)  # a constant shift does not change it
    torch.testing.assert_close(entropy, torch.tensor([1.5 * math.log(2), math.log(3)]))

    policy, _, _ = make_models(tokenizer)
    policy.eval()
    ids = torch.randint(1, 1000, (2, 6))
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]])
    logits = policy(ids, attention_mask=mask).logits
    # Mean −log π(x_{t+1} | x_≤t) over the predicted tokens that are not padding: 5 + 3 of them.
    terms = [
        -torch.log_softmax(logits[b, t], -1)[ids[b, t + 1]]
        for b in range(2)
        for t in range(5)
        if mask[b, t + 1]
    ]
    expected = torch.stack(terms).mean()
    torch.testing.assert_close(ptx_loss(policy, {"input_ids": ids, "attention_mask": mask}), expected)


# ----------------------------------------------------------------------------------------------
# Configuration and arguments
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "field, value",
    [
        ("mini_batch_size", 5),  # does not divide rollout_batch_size=64
        ("learning_rate", 0.0),
        ("cliprange", -0.1),
        ("lam", 1.5),
        ("top_p", 0.0),
        ("ptx_coef", -1.0),
        ("kl_coef", float("nan")),
        ("ppo_epochs", 0),
        ("report_to", "wandb"),
        ("lr_scheduler_type", "sometimes"),
        ("missing_eos_penalty", -1.0),
    ],
)
def test_config_validation_names_the_field(field, value):
    with pytest.raises(ValueError, match=f"`{field}`"):
        PPOConfig(**{field: value})


def test_trainer_argument_errors(tmp_path, tokenizer):
    policy, ref, value = make_models(tokenizer)
    data = chat_prompts(4)
    config = ppo_config(tmp_path)
    with pytest.raises(ValueError, match="ref_policy=None needs a PEFT policy"):
        PPOTrainer(
            config, policy, None, value, processing_class=tokenizer, train_dataset=data, reward_fn=a_fraction
        )
    with pytest.raises(ValueError, match="exactly one of `reward_model`"):
        PPOTrainer(config, policy, ref, value, processing_class=tokenizer, train_dataset=data)
    with pytest.raises(ValueError, match="needs a `ptx_dataset`"):
        PPOTrainer(
            ppo_config(tmp_path, ptx_coef=1.0), policy, ref, value, processing_class=tokenizer,
            train_dataset=data, reward_fn=a_fraction,
        )  # fmt: skip
    # total_episodes sets the number of rollouts: ceil(100 / 16 prompts per rollout) = 7.
    config = ppo_config(tmp_path, total_episodes=100)
    trainer = PPOTrainer(
        config, policy, ref, value, processing_class=tokenizer, train_dataset=data, reward_fn=a_fraction
    )
    assert trainer.num_rollouts == 7 and trainer.updates_per_rollout == 2 * 16 // 8
    with pytest.raises(ValueError, match="max_position_embeddings"):
        PPOTrainer(
            ppo_config(tmp_path, max_new_tokens=126), policy, ref, value, processing_class=tokenizer,
            train_dataset=data, reward_fn=a_fraction,
        )  # fmt: skip


# ----------------------------------------------------------------------------------------------
# End to end
# ----------------------------------------------------------------------------------------------


def test_ppo_raises_the_reward_and_logs(tmp_path, tokenizer):
    policy, ref, value = make_models(tokenizer)
    config = ppo_config(tmp_path, num_rollouts=12, report_to="tensorboard", save_steps=6, logging_steps=1)
    trainer = PPOTrainer(
        config,
        policy,
        ref,
        value,
        processing_class=tokenizer,
        train_dataset=chat_prompts(),
        reward_fn=a_fraction,
    )
    history = trainer.train()

    assert [h["rollout"] for h in history] == list(range(1, 13))
    assert history[0]["kl"] == 0.0  # policy == reference at the first rollout
    assert history[-1]["kl"] > 0.1
    first, last = [sum(h["score"] for h in part) / 3 for part in (history[:3], history[-3:])]
    assert last > first + 0.1, [h["score"] for h in history]
    keys = {
        "score", "kl", "entropy", "policy_clipfrac", "value_clipfrac", "value_loss", "policy_loss",
        "approx_kl", "response_length", "tokens_per_second", "learning_rate", "skipped_updates",
    }  # fmt: skip
    assert keys <= history[0].keys() and "ptx_loss" not in history[0]
    assert 0 < history[0]["entropy"] <= math.log(1000) + 1e-4
    assert history[0]["response_length"] <= 8 and history[0]["tokens_per_second"] > 0
    assert json.loads((tmp_path / "log_history.json").read_text()) == history
    assert sorted(p.name for p in tmp_path.glob("checkpoint-*")) == ["checkpoint-12", "checkpoint-6"]
    saved = {p.name for p in (tmp_path / "checkpoint-12").iterdir()}
    assert {
        "model.safetensors",
        "optimizer.bin",
        "optimizer_1.bin",
        "scheduler.bin",
        "scheduler_1.bin",
    } <= saved
    assert "random_states_0.pkl" in saved  # policy + value, both optimisers and schedules, RNG
    state = json.loads((tmp_path / "checkpoint-12" / "trainer_state.json").read_text())
    assert state["rollout"] == 12 and state["episodes"] == 12 * 16 and state["updates"] == 12 * 4

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = next((tmp_path / "runs").rglob("events.out.tfevents.*"))
    accumulator = EventAccumulator(str(events))
    accumulator.Reload()
    assert {"score", "kl", "entropy", "value_loss", "policy_clipfrac"} <= set(accumulator.Tags()["scalars"])

    final = trainer.save_model()
    reloaded = PaperGPT2LMHeadModel.from_pretrained(final)
    for name, tensor in policy.state_dict().items():
        assert torch.equal(reloaded.state_dict()[name], tensor), name
    assert (final / "tokenizer.json").exists()


def test_rollout_eos_truncation_penalty_and_sampling_alignment(tmp_path, tokenizer):
    """Responses stop at the first EOS (kept, masked in), the missing-EOS penalty applies, and with
    top_k=1 every sampled token is the argmax of a full (uncached) forward on the left-padded batch:
    generation with the KV cache and the trainer's log-prob positions line up."""
    policy, ref, value = make_models(tokenizer)
    with torch.no_grad():  # make EOS likely: its logit is ~6 above the others from the final LayerNorm
        eos = policy.transformer.wte.weight[tokenizer.eos_token_id]
        policy.transformer.ln_f.weight.mul_(0.1)
        policy.transformer.ln_f.bias.copy_(6.0 * eos / eos.pow(2).sum())
    ref = copy.deepcopy(policy)
    config = ppo_config(tmp_path, missing_eos_penalty=0.5, max_new_tokens=10)
    trainer = PPOTrainer(
        config, policy, ref, value, processing_class=tokenizer, train_dataset=chat_prompts(),
        reward_fn=lambda p, r: torch.zeros(len(r)),
    )  # fmt: skip
    rollout = trainer._generate_rollout(0)
    response, mask = rollout.response, rollout.response_mask
    lengths = mask.sum(-1)
    assert (lengths >= 1).all() and 0 < (lengths < response.shape[1]).sum() < len(lengths)
    for row in range(response.shape[0]):
        n = int(lengths[row])
        assert mask[row, :n].all() and not mask[row, n:].any()  # a prefix
        eos_at = (response[row] == tokenizer.eos_token_id).nonzero().flatten().tolist()
        if eos_at:
            assert n == eos_at[0] + 1  # the first EOS is the last action
            assert rollout.score[row] == 0.0
        else:
            assert n == response.shape[1] and rollout.score[row] == -0.5

    config = ppo_config(tmp_path / "greedy", top_k=1)
    policy, ref, value = make_models(tokenizer, seed=3)
    trainer = PPOTrainer(
        config,
        policy,
        ref,
        value,
        processing_class=tokenizer,
        train_dataset=chat_prompts(),
        reward_fn=a_fraction,
    )
    rollout = trainer._generate_rollout(0)
    assert rollout.query[:, 0].eq(tokenizer.pad_token_id).any()  # prompts of several lengths, left-padded
    with torch.no_grad():
        ids, attn = rollout.input_ids, rollout.attention_mask
        position_ids = (attn.cumsum(-1) - 1).clamp(min=0)
        logits = policy(ids, attention_mask=attn, position_ids=position_ids).logits
    width = rollout.query.shape[1]
    argmax = logits[:, width - 1 : -1].argmax(-1)
    valid = rollout.response_mask.bool()
    assert torch.equal(rollout.response[valid], argmax[valid])
    expected = torch.log_softmax(logits[:, width - 1 : -1], -1).max(-1).values
    torch.testing.assert_close(rollout.logprobs[valid], expected[valid], atol=1e-5, rtol=1e-5)


def test_resume_is_bitwise_exact(tmp_path, tokenizer):
    """A run interrupted after rollout 3 (checkpoint at 2) and resumed ends equal to an uninterrupted
    run: prompts, sampling, shuffles and ptx batches derive from (seed, rollout)."""
    ptx = Dataset.from_dict({"text": [f"the cat sat on the mat number {i}. " * 3 for i in range(40)]})
    overrides = dict(num_rollouts=4, save_steps=2, ptx_coef=0.5, ptx_batch_size=4, ptx_block_size=16)
    overrides.update(kl_coef=0.05, lr_scheduler_type="linear", resume_from_checkpoint="auto")

    def run(out: Path, callbacks=None, seed_models: int = 0):
        policy, ref, value = make_models(tokenizer, seed=0)
        if seed_models:  # a resumed run starts from other weights: the checkpoint must restore them
            policy, _, value = make_models(tokenizer, seed=seed_models)
        trainer = PPOTrainer(
            ppo_config(out, **overrides), policy, ref, value, processing_class=tokenizer,
            train_dataset=chat_prompts(20), ptx_dataset=ptx, reward_fn=a_fraction, callbacks=callbacks,
        )  # fmt: skip
        trainer.train()
        return policy, value, trainer

    straight_policy, straight_value, straight = run(tmp_path / "straight")

    class Interrupt(Exception):
        pass

    class KillAfter:
        def on_rollout_end(self, trainer, rollout, metrics):
            if rollout == 3:
                raise Interrupt

    with pytest.raises(Interrupt):
        run(tmp_path / "killed", callbacks=[KillAfter()])
    assert sorted(p.name for p in (tmp_path / "killed").glob("checkpoint-*")) == ["checkpoint-2"]
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    policy, value, resumed = run(tmp_path / "killed", seed_models=5)

    for a, b in ((straight_policy, policy), (straight_value, value)):
        for name, tensor in a.state_dict().items():
            assert torch.equal(tensor, b.state_dict()[name]), name

    # The log carries on from the checkpoint's; everything but the timing is identical.
    def untimed(history):
        return [{k: v for k, v in h.items() if k != "tokens_per_second"} for h in history]

    assert [h["rollout"] for h in resumed.history] == [1, 2, 3, 4]
    assert untimed(resumed.history) == untimed(straight.history)
    assert all(h["ptx_loss"] > 0 for h in resumed.history)


def test_peft_policy_uses_base_as_reference_and_trains_only_the_adapter(tmp_path, tokenizer):
    from peft import LoraConfig, PeftModel, get_peft_model

    base, _, value = make_models(tokenizer)
    original = copy.deepcopy(base).eval()
    policy = get_peft_model(base, LoraConfig(target_modules="all-linear", task_type="CAUSAL_LM", r=4))
    lora_before = {k: v.detach().clone() for k, v in policy.named_parameters() if "lora_" in k}
    frozen_before = {k: v.detach().clone() for k, v in policy.named_parameters() if "lora_" not in k}
    config = ppo_config(tmp_path, num_rollouts=3, kl_coef=0.02)
    trainer = PPOTrainer(
        config,
        policy,
        None,
        value,
        processing_class=tokenizer,
        train_dataset=chat_prompts(),
        reward_fn=a_fraction,
    )
    history = trainer.train()
    assert history[0]["kl"] == 0.0 and history[-1]["kl"] != 0.0

    # The reference log-probs are the base model's (the adapter switched off), after training too.
    ids = torch.randint(1, 1000, (2, 9))
    mask = torch.ones_like(ids)
    mask[0, :3] = 0
    with torch.no_grad():
        position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
        expected = original(ids, attention_mask=mask, position_ids=position_ids).logits
        torch.testing.assert_close(trainer._ref_logits(ids, mask), expected, rtol=0, atol=1e-6)
        assert not torch.allclose(
            policy(ids, attention_mask=mask, position_ids=position_ids).logits, expected
        )

    for name, tensor in policy.named_parameters():
        if "lora_" in name:
            continue
        assert torch.equal(tensor, frozen_before[name]), name
    changed = [k for k, v in policy.named_parameters() if "lora_" in k and not torch.equal(v, lora_before[k])]
    assert len(changed) == len(lora_before)

    adapter = trainer.save_model(tmp_path / "adapter")
    assert (adapter / "adapter_model.safetensors").exists() and not (adapter / "model.safetensors").exists()
    merged_dir = trainer.save_model(tmp_path / "merged", merge_adapter=True)
    merged = PaperGPT2LMHeadModel.from_pretrained(merged_dir).eval()
    reloaded = PeftModel.from_pretrained(copy.deepcopy(original), adapter).eval()
    with torch.no_grad():
        torch.testing.assert_close(merged(ids).logits, policy(ids).logits, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(reloaded(ids).logits, policy(ids).logits, atol=1e-5, rtol=1e-5)


def test_ptx_term_reward_model_and_string_prompts(tmp_path, tokenizer):
    """ptx_coef > 0: the pretraining loss is computed on every update and logged (a causal-LM loss near
    ln |V| for an untrained model) and changes the result; ptx_coef = 0 logs none. The reward here comes
    from a reward model (a sequence-classification GPT-2) and the prompts are plain strings."""
    prompts = Dataset.from_dict({"prompt": [f"Once upon a time {i}" for i in range(16)]})
    blocks = Dataset.from_dict(
        {"input_ids": [[(7 * i + j) % 900 + 50 for j in range(12)] for i in range(10)]}
    )
    torch.manual_seed(1)
    reward_model = PaperGPT2ForSequenceClassification(tiny_config(tokenizer, num_labels=1))

    results = {}
    all_blocks = {"input_ids": torch.tensor(blocks["input_ids"])}
    for coef in (0.0, 5.0):
        policy, ref, _ = make_models(tokenizer)
        config = ppo_config(
            tmp_path / str(coef), num_rollouts=2, ptx_coef=coef, ptx_batch_size=4, kl_coef=0.02
        )
        trainer = PPOTrainer(
            config, policy, ref, None, reward_model=reward_model, processing_class=tokenizer,
            train_dataset=prompts, ptx_dataset=blocks if coef else None,
        )  # fmt: skip
        # value_model=None: initialised as a copy of the reward model (InstructGPT App. C.4).
        assert trainer.value_model is not reward_model
        assert torch.equal(trainer.value_model.score.weight, reward_model.score.weight)
        history = trainer.train()
        with torch.no_grad():
            results[coef] = (history, ptx_loss(policy.eval(), all_blocks).item())
    plain, ptx = results[0.0][0], results[5.0][0]
    assert "ptx_loss" not in plain[0]
    assert abs(ptx[0]["ptx_loss"] - math.log(1000)) < 1.0  # an untrained model: near uniform
    # The same first rollout (same seeds, same start); the ptx term then fits the pretraining blocks.
    assert plain[0]["score"] == ptx[0]["score"]
    assert results[5.0][1] < results[0.0][1] - 0.5, results


def test_nonfinite_updates_are_skipped_then_fail(tmp_path, tokenizer):
    policy, ref, value = make_models(tokenizer)
    before = trainable_state(policy)
    handle = policy.transformer.h[0].mlp.c_fc.weight.register_hook(lambda grad: grad * float("nan"))
    config = ppo_config(tmp_path, num_rollouts=3, max_nonfinite_updates=3)  # 4 updates per rollout
    trainer = PPOTrainer(
        config,
        policy,
        ref,
        value,
        processing_class=tokenizer,
        train_dataset=chat_prompts(),
        reward_fn=a_fraction,
    )
    with pytest.raises(RuntimeError, match="3 consecutive PPO updates had a non-finite"):
        trainer.train()
    handle.remove()
    assert trainer.skipped_updates == 3
    for name, tensor in policy.state_dict().items():
        assert torch.equal(tensor, before[name]), name

    bad = PPOTrainer(
        ppo_config(tmp_path / "nan"), *make_models(tokenizer), processing_class=tokenizer,
        train_dataset=chat_prompts(), reward_fn=lambda p, r: torch.full((len(r),), float("nan")),
    )  # fmt: skip
    with pytest.raises(ValueError, match="reward is not finite"):
        bad.train()


# ----------------------------------------------------------------------------------------------
# Two processes
# ----------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_two_process_ddp_run(tmp_path, tok_cache, tokenizer):
    """``accelerate launch --multi_gpu --num_processes 2`` on CPU (gloo; accelerate 1.x's ``--cpu``
    launcher starts one process without MPI): two rollouts, both processes end with the same weights."""
    env = dict(os.environ)
    env.update(
        OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1",
        PYTHONPATH=os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]),
    )  # fmt: skip
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2"]
    launch += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    script = ROOT / "tests" / "rlhf_ppo_ddp_script.py"
    result = subprocess.run(
        [*launch, str(script), str(tmp_path / "out"), str(tok_cache)],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    sums = [(tmp_path / "out" / f"checksum_rank{r}.txt").read_text() for r in (0, 1)]
    assert sums[0] == sums[1], sums
    checkpoint = tmp_path / "out" / "checkpoint-2"
    assert (checkpoint / "random_states_0.pkl").exists() and (checkpoint / "random_states_1.pkl").exists()
    history = json.loads((tmp_path / "out" / "log_history.json").read_text())
    assert [h["rollout"] for h in history] == [1, 2] and history[0]["episode"] == 2 * 8
