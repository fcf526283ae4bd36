"""``hfpm instructgpt`` / ``make demo``: the InstructGPT pipeline end to end on the embedded tasks
(Ouyang et al. 2022, Figure 2), sized to finish in about ten minutes on two CPU cores.

0. pretrain a tiny GPT-2 on the embedded corpus (the causal-LM recipe, ``training/pretrain_lm.py``)
   with a chat tokenizer (system/user/assistant roles) — our stand-in for the paper's GPT-3;
1. SFT on labeler-written demonstrations (TRL ``SFTTrainer``, loss on assistant turns)  -> ``DIR/sft``
2. reward model, K-wise rankings, bias normalised on SFT samples                        -> ``DIR/reward``
3. PPO-ptx against the reward model, KL to SFT, pretraining mix                          -> ``DIR/ppo``

then the labeler compares PPO with SFT on held-out prompts (unseen task templates) and writes
``DIR/report.json`` and ``DIR/report.png`` (reward and KL over PPO rollouts). Each stage's folder is
complete when it exists (written elsewhere, then renamed), so a rerun with the same ``DIR`` skips the
stages already done and resumes an interrupted one from its checkpoints.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any


@dataclass
class InstructGPTArguments:
    """Every knob of the end-to-end run; the defaults are the demo's (about ten minutes on 2 CPU cores)."""

    output_dir: str = "runs/instructgpt"
    seed: int = 0
    # the model: a GPT-2 (pre-LN) small enough for a laptop CPU
    hidden_size: int = 128
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    max_position_embeddings: int = 128
    vocab_size: int = 2048
    # 0. pretraining on the embedded corpus
    pretrain_steps: int = 600
    pretrain_batch_size: int = 8  # blocks of max_position_embeddings tokens
    pretrain_learning_rate: float = 2e-3
    # 1. SFT
    sft_examples: int = 3000
    sft_epochs: float = 3.0  # the paper trains 16 epochs and picks by RM score
    sft_batch_size: int = 16
    sft_learning_rate: float = 3e-3
    # 2. reward model
    rm_prompts: int = 3000
    rm_policy_prompts: int = 600
    rm_epochs: float = 1.0
    rm_batch_size: int = 4
    rm_learning_rate: float = 5e-4
    # 3. PPO-ptx
    ppo_prompts: int = 2000
    ppo_rollouts: int = 40
    ppo_rollout_batch_size: int = 32
    ppo_mini_batch_size: int = 16
    ppo_epochs: int = 4
    ppo_learning_rate: float = 3e-5
    kl_coef: float = 0.02
    ptx_coef: float = 0.1  # the paper's 27.8 is on its own loss scale; tuned here (1.0 won less often)
    max_new_tokens: int = 24
    use_peft: bool = False
    compare_plain_ppo: bool = field(
        default=False, metadata={"help": "Also run PPO with ptx_coef=0 to measure the alignment tax."}
    )
    # evaluation
    eval_prompts: int = 400

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, (int, float)) and not isinstance(value, bool) and f.name != "seed":
                if value < 0 or (value == 0 and f.name not in ("kl_coef", "ptx_coef")):
                    raise ValueError(f"InstructGPTArguments: `{f.name}` must be > 0, got {value!r}.")


def _pretrain(args: InstructGPTArguments, out: Path, tokenizer_dir: Path) -> Path:
    final = out / "pretrain" / "final"
    if (final / "config.json").is_file():
        return final
    from .demo import load_pretrain_recipe

    recipe = load_pretrain_recipe()
    argv = [
        "--preset", "gpt2-small", "--hidden_size", str(args.hidden_size),
        "--num_hidden_layers", str(args.num_hidden_layers), "--num_attention_heads", str(args.num_attention_heads),
        "--max_position_embeddings", str(args.max_position_embeddings), "--tokenizer_path", str(tokenizer_dir),
        "--block_size", str(args.max_position_embeddings), "--output_dir", str(out / "pretrain"),
        "--max_steps", str(args.pretrain_steps), "--per_device_train_batch_size", str(args.pretrain_batch_size),
        "--learning_rate", str(args.pretrain_learning_rate), "--warmup_steps", str(max(1, args.pretrain_steps // 10)),
        "--lr_scheduler_type", "cosine", "--seed", str(args.seed), "--eval_steps", "0", "--max_eval_batches", "4", "--max_documents", "4000",
        "--save_steps", str(max(1, args.pretrain_steps // 2)), "--logging_steps", str(max(1, args.pretrain_steps // 10)),
    ]  # fmt: skip
    return recipe.main(argv)


def _plot(history: list[dict], plain: list[dict] | None, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_r, ax_kl) = plt.subplots(1, 2, figsize=(10, 4))
    for name, rows in (("PPO-ptx", history), ("PPO (ptx_coef=0)", plain or [])):
        if not rows:
            continue
        steps = [r.get("rollout", i + 1) for i, r in enumerate(rows)]
        ax_r.plot(steps, [r.get("score", float("nan")) for r in rows], label=name)
        ax_kl.plot(steps, [r.get("kl", float("nan")) for r in rows], label=name)
    ax_r.set(xlabel="PPO rollout", ylabel="mean reward-model score", title="Reward")
    ax_kl.set(xlabel="PPO rollout", ylabel="KL(π || π_SFT) per response", title="KL to the SFT policy")
    for ax in (ax_r, ax_kl):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run_instructgpt(args: InstructGPTArguments) -> dict[str, Any]:
    """Run every stage not yet done under ``args.output_dir``; return (and write) the report."""
    import trl

    from .rlhf.ppo import PPOConfig
    from .rlhf.reward import KWiseRewardConfig
    from .rlhf.stages import (
        EvaluationArguments,
        PPOStageArguments,
        RewardStageArguments,
        SFTStageArguments,
        evaluate_stage,
        ppo_stage,
        reward_stage,
        sft_stage,
    )
    from .tokenizers import chat_tokenizer

    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    seconds: dict[str, float] = {}
    clock = time.perf_counter()

    tokenizer_dir = out / "tokenizer"
    if not (tokenizer_dir / "tokenizer_config.json").is_file():
        tokenizer = chat_tokenizer(vocab_size=args.vocab_size)
        tokenizer.model_max_length = args.max_position_embeddings
        tokenizer.save_pretrained(tokenizer_dir)
    base = _pretrain(args, out, tokenizer_dir)
    seconds["pretrain"] = time.perf_counter() - clock

    # TRL's SFTConfig turns bf16 and activation checkpointing on by default: both slow a tiny CPU run down
    common = dict(report_to=[], use_cpu=True, seed=args.seed, dataloader_num_workers=0, save_total_limit=1,
                  logging_steps=10, save_strategy="steps", save_steps=50, disable_tqdm=False)  # fmt: skip
    sft_dir = out / "sft"
    if not (sft_dir / "config.json").is_file():
        clock = time.perf_counter()
        sft_config = trl.SFTConfig(
            output_dir=str(out / "checkpoints" / "sft"), num_train_epochs=args.sft_epochs,
            per_device_train_batch_size=args.sft_batch_size, learning_rate=args.sft_learning_rate,
            lr_scheduler_type="cosine", warmup_steps=10, max_length=args.max_position_embeddings,
            assistant_only_loss=True, bf16=False, activation_checkpointing=False, **common,
        )  # fmt: skip
        sft_stage(SFTStageArguments(model_path=str(base), tokenizer_path=str(tokenizer_dir),
                                    num_examples=args.sft_examples, task_seed=args.seed), sft_config, sft_dir)  # fmt: skip
        seconds["sft"] = time.perf_counter() - clock

    reward_dir = out / "reward"
    reward_details: dict[str, Any] = {}
    if not (reward_dir / "config.json").is_file():
        clock = time.perf_counter()
        reward_config = KWiseRewardConfig(
            output_dir=str(out / "checkpoints" / "reward"), num_train_epochs=args.rm_epochs,
            per_device_train_batch_size=args.rm_batch_size, per_device_eval_batch_size=args.rm_batch_size,
            learning_rate=args.rm_learning_rate, lr_scheduler_type="cosine", warmup_steps=10,
            max_length=args.max_position_embeddings, **common,
        )  # fmt: skip
        _, reward_details = reward_stage(
            RewardStageArguments(sft_path=str(sft_dir), num_prompts=args.rm_prompts,
                                 num_policy_prompts=args.rm_policy_prompts, max_new_tokens=args.max_new_tokens,
                                 task_seed=args.seed), reward_config, reward_dir,
        )  # fmt: skip
        seconds["reward"] = time.perf_counter() - clock

    def run_ppo(folder: Path, ptx_coef: float) -> list[dict]:
        config = PPOConfig(
            output_dir=str(out / "checkpoints" / folder.name), seed=args.seed, num_rollouts=args.ppo_rollouts,
            rollout_batch_size=args.ppo_rollout_batch_size, mini_batch_size=args.ppo_mini_batch_size,
            ppo_epochs=args.ppo_epochs, learning_rate=args.ppo_learning_rate, kl_coef=args.kl_coef,
            ptx_coef=ptx_coef, max_new_tokens=args.max_new_tokens, save_steps=10, report_to="tensorboard",
        )  # fmt: skip
        stage = PPOStageArguments(sft_path=str(sft_dir), reward_path=str(reward_dir), num_prompts=args.ppo_prompts,
                                  use_peft=args.use_peft, task_seed=args.seed)  # fmt: skip
        _, history = ppo_stage(stage, config, folder)
        (folder / "ppo_history.json").write_text(json.dumps(history, indent=1))
        return history

    def history_of(folder: Path) -> list[dict]:
        path = folder / "ppo_history.json"
        return json.loads(path.read_text()) if path.is_file() else []

    ppo_dir = out / "ppo"
    if not (ppo_dir / "config.json").is_file() and not (ppo_dir / "adapter_config.json").is_file():
        clock = time.perf_counter()
        run_ppo(ppo_dir, args.ptx_coef)
        seconds["ppo"] = time.perf_counter() - clock
    history = history_of(ppo_dir)

    evaluation = EvaluationArguments(num_prompts=args.eval_prompts, max_new_tokens=args.max_new_tokens)
    clock = time.perf_counter()
    report = evaluate_stage(sft_dir, ppo_dir, reward_dir, evaluation, base_path=base)
    plain: list[dict] | None = None
    if args.compare_plain_ppo:
        plain_dir = out / "ppo_no_ptx"
        if not (plain_dir / "config.json").is_file():
            run_ppo(plain_dir, 0.0)
        plain = history_of(plain_dir)
        plain_report = evaluate_stage(sft_dir, plain_dir, reward_dir, evaluation)
        report["ptx_loss_ppo_no_ptx"] = plain_report["ptx_loss_ppo"]
        report["ptx_loss_change_no_ptx"] = plain_report["ptx_loss_change"]
        report["win_rate_ppo_no_ptx_vs_sft"] = plain_report["win_rate_ppo_vs_sft"]
        report["kl_no_ptx"] = plain_report["kl"]
    seconds["evaluate"] = time.perf_counter() - clock
    report.update(
        reward_model=reward_details, seconds=seconds,
        settings={f.name: getattr(args, f.name) for f in fields(args)},
        ppo_history=history,
    )  # fmt: skip
    (out / "report.json").write_text(json.dumps(report, indent=2))
    _plot(history, plain, out / "report.png")
    return report
