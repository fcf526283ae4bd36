"""TRL trains our GPT-2: SFTTrainer on the LM head, RewardTrainer on the sequence-classification head."""

from __future__ import annotations

import pytest
import torch
from datasets import Dataset

from hf_paper_models import preset
from hf_paper_models.models.gpt2 import PaperGPT2ForSequenceClassification, PaperGPT2LMHeadModel
from hf_paper_models.tokenizers import get_tokenizer

trl = pytest.importorskip("trl")


@pytest.fixture(scope="module")
def tokenizer():
    tok = get_tokenizer("byte_bpe", vocab_size=1000)
    return tok


def tiny(tokenizer, **kw):
    return preset(
        "gpt2-small", vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=128, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, **kw,
    )


def common_args(tmp_path) -> dict:
    return dict(
        output_dir=str(tmp_path), max_steps=6, per_device_train_batch_size=4, learning_rate=3e-3,
        logging_steps=1, save_strategy="no", report_to=[], use_cpu=True, seed=0, dataloader_num_workers=0,
    )


def test_sft_trainer_trains_paper_gpt2(tmp_path, tokenizer):
    texts = [f"The number {i} comes before {i + 1}." for i in range(64)]
    dataset = Dataset.from_dict({"text": texts})
    torch.manual_seed(0)
    model = PaperGPT2LMHeadModel(tiny(tokenizer))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainer = trl.SFTTrainer(
        model=model,
        args=trl.SFTConfig(**common_args(tmp_path), max_length=64),
        train_dataset=dataset,
        processing_class=tokenizer,
    )
    result = trainer.train()
    losses = [log["loss"] for log in trainer.state.log_history if "loss" in log]
    assert len(losses) == 6 and all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < losses[0]
    assert result.global_step == 6
    assert any(not torch.equal(before[n], p) for n, p in model.named_parameters())


def test_reward_trainer_trains_the_sequence_classification_head(tmp_path, tokenizer):
    pairs = {
        "chosen": [f"Question: {i} plus one? Answer: {i + 1}." for i in range(48)],
        "rejected": [f"Question: {i} plus one? Answer: {i + 7}." for i in range(48)],
    }
    dataset = Dataset.from_dict(pairs)
    torch.manual_seed(0)
    model = PaperGPT2ForSequenceClassification(tiny(tokenizer, num_labels=1))
    trainer = trl.RewardTrainer(
        model=model,
        args=trl.RewardConfig(**common_args(tmp_path), max_length=64),
        train_dataset=dataset,
        processing_class=tokenizer,
    )
    trainer.train()
    losses = [log["loss"] for log in trainer.state.log_history if "loss" in log]
    assert len(losses) == 6 and all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < losses[0]
    batch = tokenizer(pairs["chosen"][:2], return_tensors="pt", padding=True)
    with torch.no_grad():
        assert model(**batch).logits.shape == (2, 1)
