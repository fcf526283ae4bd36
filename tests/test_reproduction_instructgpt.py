"""The InstructGPT reproduction at smoke size: it runs PPO-ptx and plain PPO from one SFT and reward model
and writes its JSON and figure. The smoke sizes are far too small to learn, so the claims are printed,
not asserted; the rules are checked on a hand-made report."""

from __future__ import annotations

import json

import pytest

from reproductions import instructgpt_ppo_ptx as repro


def test_verdicts_follow_the_rules_written_in_the_script():
    report = {"win_rate_ppo_vs_sft": 0.70, "kl": 3.0, "ptx_loss_base": 3.9, "ptx_loss_sft": 4.00,
              "ptx_loss_ppo": 4.12, "ptx_loss_ppo_no_ptx": 4.50}  # fmt: skip
    assert repro.verdicts(report) == {
        "win_rate_holds": True, "kl_bounded": True, "ptx_within_tolerance": True, "plain_ppo_drifts_further": True,
        "ptx_closer_to_base_than_plain": True,
    }  # fmt: skip
    report.update(win_rate_ppo_vs_sft=0.6, ptx_loss_ppo=4.3, ptx_loss_ppo_no_ptx=4.1, kl=12.0)
    assert not any(repro.verdicts(report).values())


@pytest.mark.slow
def test_instructgpt_reproduction_smoke(tmp_path):
    report = repro.main(["--smoke", "--output_dir", str(tmp_path / "out"), "--run_dir", str(tmp_path / "run")])
    saved = json.loads((tmp_path / "out" / "instructgpt_ppo_ptx.json").read_text())
    assert saved["smoke"] is True and set(saved["verdicts"]) == set(report["verdicts"])
    assert len(saved["ppo_history"]) == len(saved["plain_ppo_history"]) == 2
    assert (tmp_path / "out" / "instructgpt_ppo_ptx.png").stat().st_size > 0
    print("InstructGPT smoke (too small to learn):", saved["verdicts"])
