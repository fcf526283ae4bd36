"""Two-process PPO run for tests/test_rlhf_ppo.py (``accelerate launch --multi_gpu --num_processes 2``).

Usage: ``rlhf_ppo_ddp_script.py OUTPUT_DIR TOKENIZER_CACHE``. Each process writes the checksums of
its policy and value weights at the end to ``OUTPUT_DIR/checksum_rank{r}.txt`` (equal when DDP keeps
the processes in sync); a file each, since two processes printing to one pipe can interleave lines.
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import torch
from datasets import Dataset

from hf_paper_models import preset
from hf_paper_models.models.gpt2 import PaperGPT2ForSequenceClassification, PaperGPT2LMHeadModel
from hf_paper_models.rlhf.ppo import PPOConfig, PPOTrainer
from hf_paper_models.tokenizers import get_tokenizer


def main(output_dir: str, tokenizer_cache: str) -> None:
    tok = get_tokenizer("byte_bpe", vocab_size=1000, cache_dir=tokenizer_cache)
    tok.chat_template = (
        "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}assistant:{% endif %}"
    )
    sizes = dict(
        vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=128, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )  # fmt: skip
    torch.manual_seed(0)  # the same initial weights on every process
    policy = PaperGPT2LMHeadModel(preset("gpt2-small", **sizes))
    value = PaperGPT2ForSequenceClassification(preset("gpt2-small", num_labels=1, **sizes))
    prompts = Dataset.from_dict(
        {"prompt": [[{"role": "user", "content": f"question {i}"}] for i in range(24)]}
    )
    ptx = Dataset.from_dict({"text": [f"a plain pretraining sentence number {i}." for i in range(30)]})
    config = PPOConfig(
        output_dir=output_dir, num_rollouts=2, rollout_batch_size=8, mini_batch_size=4, ppo_epochs=2,
        max_new_tokens=6, learning_rate=1e-3, value_learning_rate=1e-3, ptx_coef=1.0, ptx_batch_size=2,
        ptx_block_size=16, save_steps=2, report_to="none", resume_from_checkpoint="no",
    )  # fmt: skip
    trainer = PPOTrainer(
        config, policy, copy.deepcopy(policy), value, processing_class=tok, train_dataset=prompts,
        ptx_dataset=ptx, reward_fn=lambda p, r: torch.tensor([x.count("a") / max(len(x), 1) for x in r]),
    )  # fmt: skip
    trainer.train()
    trainer.save_model()
    accelerator = trainer.accelerator
    checksum = [float(sum(p.double().sum() for p in m.parameters())) for m in (policy, value)]
    Path(output_dir, f"checksum_rank{accelerator.process_index}.txt").write_text(
        f"{checksum[0]:.12e} {checksum[1]:.12e}\n"
    )
    print(f"{accelerator.num_processes} process(es)", flush=True)
    accelerator.end_training()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
