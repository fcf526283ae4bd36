"""InstructGPT's headline claims at laptop scale (Ouyang et al. 2022, §4.1 and §4.2): PPO-ptx outputs
are preferred to SFT's by the labeler on held-out prompts, with a bounded KL to SFT; and the ptx term
limits the "alignment tax" on the pretraining distribution, which plain PPO (ptx_coef = 0) pays.

It runs ``hfpm instructgpt`` (``hf_paper_models.instructgpt.run_instructgpt``) with
``compare_plain_ppo``: pretraining, SFT, the K-wise reward model, PPO-ptx and PPO with ptx_coef = 0
from the same SFT and reward model, then the labeler's comparison on held-out task templates.

Decision rules, fixed before the run:
- win: the labeler prefers PPO-ptx to SFT (ties half) on at least 65% of held-out prompts, sampled at
  temperature 1 (the issue's threshold);
- KL: the KL of PPO-ptx to SFT on its own held-out samples stays below 10 nats per response;
- alignment tax (the issue's rule): PPO-ptx's held-out pretraining loss is within 5% of SFT's, and plain
  PPO's moves further from SFT's than PPO-ptx's does;
- alignment tax measured as the paper does (§4.2, against the pretrained model, GPT-3 there; this rule
  was added after tuning runs showed that our SFT itself forgets the corpus): PPO-ptx's pretraining
  loss is closer to the pretrained base model's than plain PPO's is.

    python reproductions/instructgpt_ppo_ptx.py            # the demo's settings, ~15 minutes on 2 cores
    python reproductions/instructgpt_ppo_ptx.py --smoke    # seconds: keeps the script running in the tests
    python reproductions/instructgpt_ppo_ptx.py --set ppo_rollouts=80 kl_coef=0.05

Writes ``instructgpt_ppo_ptx.json`` and ``instructgpt_ppo_ptx.png`` to ``--output_dir``.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from reproductions.common import (  # noqa: E402
    Timer,
    add_set_option,
    apply_settings,
    device_name,
    new_figure,
    output_dir,
    save_figure,
    write_json,
)

WIN_RATE = 0.65
MAX_KL = 10.0
PTX_TOLERANCE = 0.05
SMOKE = dict(
    hidden_size=32, num_hidden_layers=2, pretrain_steps=3, sft_examples=48, sft_epochs=1.0, rm_prompts=24,
    rm_policy_prompts=6, ppo_prompts=16, ppo_rollouts=2, ppo_rollout_batch_size=8, ppo_mini_batch_size=4,
    eval_prompts=8, max_new_tokens=8,
)  # fmt: skip


def verdicts(report: dict) -> dict:
    sft, ptx, plain = report["ptx_loss_sft"], report["ptx_loss_ppo"], report["ptx_loss_ppo_no_ptx"]
    return {
        "win_rate_holds": report["win_rate_ppo_vs_sft"] >= WIN_RATE,
        "kl_bounded": report["kl"] < MAX_KL,
        "ptx_within_tolerance": abs(ptx / sft - 1) <= PTX_TOLERANCE,
        "plain_ppo_drifts_further": abs(plain - sft) > abs(ptx - sft),
        "ptx_closer_to_base_than_plain": abs(ptx - report["ptx_loss_base"]) < abs(plain - report["ptx_loss_base"]),
    }


def plot(report: dict, path: Path) -> None:
    fig, (ax_score, ax_kl, ax_ptx) = new_figure(3, width=4.5)
    for name, rows in (("PPO-ptx", report["ppo_history"]), ("PPO (ptx_coef=0)", report["plain_ppo_history"])):
        steps = [r.get("rollout", i + 1) for i, r in enumerate(rows)]
        ax_score.plot(steps, [r.get("score") for r in rows], label=name)
        ax_kl.plot(steps, [r.get("kl") for r in rows], label=name)
    ax_score.set(xlabel="rollout", ylabel="reward-model score", title="Reward during RL")
    ax_kl.set(xlabel="rollout", ylabel="KL to SFT (nats / response)", title="KL during RL")
    names = ["base", "SFT", "PPO-ptx", "PPO"]
    values = [report["ptx_loss_base"], report["ptx_loss_sft"], report["ptx_loss_ppo"], report["ptx_loss_ppo_no_ptx"]]
    ax_ptx.bar(names, values, color=["black", "grey", "tab:blue", "tab:orange"])
    ax_ptx.set(ylabel="held-out pretraining loss", title="Alignment tax",
               ylim=(min(values) * 0.95, max(values) * 1.02))  # fmt: skip
    ax_ptx.text(0.5, 0.95, f"win rate PPO-ptx vs SFT: {report['win_rate_ppo_vs_sft']:.1%}", ha="center",
                transform=ax_ptx.transAxes, fontsize=8)  # fmt: skip
    for ax in (ax_score, ax_kl):
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    save_figure(fig, path)


def main(argv: list[str] | None = None) -> dict:
    from hf_paper_models.instructgpt import InstructGPTArguments, run_instructgpt

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--output_dir", default=str(ROOT / "reproductions" / "results" / "instructgpt_ppo_ptx"))
    parser.add_argument("--run_dir", default="runs/instructgpt_ppo_ptx", help="where the stages' folders go")
    parser.add_argument("--smoke", action="store_true")
    add_set_option(parser)
    args = parser.parse_args(argv)
    out = output_dir(args.output_dir)
    settings = InstructGPTArguments(output_dir=args.run_dir, compare_plain_ppo=True)
    if args.smoke:
        settings = replace(settings, **SMOKE)
    settings = apply_settings(settings, args.set)
    with Timer() as timer:
        report = run_instructgpt(settings)
    history = Path(settings.output_dir) / "ppo_no_ptx" / "ppo_history.json"
    import json

    report["plain_ppo_history"] = json.loads(history.read_text()) if history.is_file() else []
    report.update(verdicts=verdicts(report), device=device_name(), seconds_total=timer.seconds,
                  cpu_seconds_total=timer.cpu_seconds, smoke=args.smoke,
                  rules={"win_rate": WIN_RATE, "max_kl": MAX_KL, "ptx_tolerance": PTX_TOLERANCE})  # fmt: skip
    write_json(out / "instructgpt_ppo_ptx.json", report)
    plot(report, out / "instructgpt_ppo_ptx.png")
    for key in ("win_rate_ppo_vs_sft", "win_rate_ppo_no_ptx_vs_sft", "kl", "ptx_loss_base", "ptx_loss_sft",
                "ptx_loss_ppo", "ptx_loss_ppo_no_ptx"):  # fmt: skip
        print(f"{key}: {report[key]:.4f}")
    print("verdicts:", report["verdicts"])
    return report


if __name__ == "__main__":
    main()
