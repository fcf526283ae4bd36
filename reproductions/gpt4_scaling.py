"""GPT-4 technical report (OpenAI 2023), §3 "Predictable scaling", at laptop scale: a power law with an
irreducible term, fitted on much smaller runs, predicts a larger run's final loss before it is trained.

The report: "we predicted GPT-4's final loss ... by fitting a scaling law with an irreducible loss term
(as in Henighan et al.): L(C) = aC^b + c, from models trained using the same methodology but using at
most 10,000x less compute than GPT-4. This prediction was made shortly after the run started, without
use of any partial results. The fitted scaling law predicted GPT-4's final loss with high accuracy"
(Figure 1).

The set-up here (``hf_paper_models.scaling``):

* **Runs.** GPT-3-style decoders (``paper-gpt3``: alternating dense and banded attention) trained with
  the causal-LM recipe's data, tokenizer and loss through ``training_utils.train_loop``: the same
  peak learning rate (4e-3), schedule (warm-up, then cosine to the end of each run) and number of
  optimiser steps (750) for all, each run's batch grown with its tokens. The target is d=128 × 4
  layers on 3.07M tokens (750 steps of 64 × 64; about one epoch of the embedded corpus grown to
  20,000 documents).
* **Ladder.** Nine compute points at 1/1000 to 1/30 of the target's compute (C = 6·N·D, N the
  non-embedding parameters, Kaplan et al. 2020), two seeds each, each with N ∝ C^0.5 (Hoffmann et al.
  2022, depth ≥ 2) and the tokens that make up the rest.
* **Prediction.** ``L(C) = a·C^b + c`` fitted to the ladder's final validation losses (one fixed set of
  held-out blocks), evaluated at the target's compute and written to ``prediction.json`` before the
  target starts; then the target is trained and measured on the same blocks.

Decision rule, fixed before any run: the claim holds when |predicted − measured| / measured ≤ 3%
(``TOLERANCE``) for the target's final validation loss.

**Held-out design (set down and committed 2026-12-06 before any of its runs).** The default study
above met 3% once (1.93%) but missed it at two other targets (5.56%, 5.75%): its runs sit at ~4 tokens
per parameter, where a shape's rounding moves the loss, its rungs train on batches of 2-11 sequences
against the target's 64, and one ladder predicted one target. The held-out design:

* every run at about 20 tokens per non-embedding parameter (``tokens_per_parameter=20``, Hoffmann et
  al. 2022's compute-optimal ratio, where the loss is least sensitive to how C is split into N and D);
  main target 96 × 4 (447,552 non-embedding parameters, 8.95M tokens);
* batch and steps both ∝ sqrt(tokens) (``batch_exponent=0.5``) anchored at the target's 2,976 steps of
  47 sequences, so rungs take 529-1,251 steps of 9-20 sequences;
* three seeds per rung (``rung_seeds=3``), 256 validation blocks, the corpus grown to 80,000 documents
  (no run sees more than one epoch);
* two held-out targets, 80 × 3 and 112 × 4, at the same tokens per parameter (``holdout_targets``), at
  8× and 55× the ladder's largest compute: the one fit predicts all three, and every prediction is
  written to ``prediction.json`` before any target trains.

Its rule, fixed with it: the method predicts robustly at this scale when all three targets are within
3%; each error is reported whatever it is. Run as::

    python reproductions/gpt4_scaling.py --output-dir reproductions/results/gpt4_scaling_heldout --set \
        target_hidden=96 target_layers=4 tokens_per_parameter=20 equal_steps=3000 batch_exponent=0.5 \
        rung_seeds=3 eval_blocks=256 max_documents=80000 holdout_targets=80x3,112x4

Result (one CPU thread, 49 min, ``results/gpt4_scaling_heldout/``): fit 39.43·C^-0.0907 (c at 0);
errors 9.49% (80 × 3), 18.31% (96 × 4), 22.44% (112 × 4): it does NOT hold. The three targets lie flat
(2.995 / 2.949 / 2.938) near the embedded grammar's entropy floor, which the ladder never approaches,
so the fit cannot find the irreducible term (the model card discusses it).

**Knee design (set down and committed 2026-12-06 before any of its runs).** Read after the held-out
study (not a test): its runs' losses minus ~2.9 fall as one power law (local exponents -0.4 to -0.6)
from 2e11 to 4.4e13 FLOPs; the ladder missed because all of it lay below ~8e11, where the bend towards
the floor has not begun. Fitting that study's own runs from 1e11 or 2e11 up to 6.6e12 FLOPs puts c at
2.82 or 2.89 and predicts its 4.4e13 target (measured 2.938) at 2.868 or 2.911. So this design keeps
the held-out recipe unchanged (20 tokens per non-embedding parameter, batch and steps ∝ sqrt(tokens)
anchored at the target's 3,000 steps, head width 16, 256 validation blocks) and moves the whole study
one size up, so that its ladder reaches into the bend: target 144 × 4 (about 1.0M non-embedding
parameters, 20M tokens, about 1.2e14 FLOPs), nine rungs at 1/1000-1/30 of it (1.2e11-4.0e12 FLOPs,
widths 32-64), two seeds each, the corpus grown to 150,000 documents (no run sees an epoch), 2 CPU
threads. Rule, fixed with it: the claim holds when the target's error is at most 3%; the prediction
is written to ``prediction.json`` before the target trains. Run as::

    python reproductions/gpt4_scaling.py --output-dir reproductions/results/gpt4_scaling_knee --set \
        target_hidden=144 target_layers=4 tokens_per_parameter=20 equal_steps=3000 batch_exponent=0.5 \
        rung_seeds=2 eval_blocks=256 max_documents=150000

Result (2 CPU threads, 39 min, ``results/gpt4_scaling_knee/``): the fit finds an irreducible term at
last, 6047·C^-0.321 + 2.464, but predicts 2.6489 against a measured 2.9257: error 9.46%, it does NOT
hold. The rungs' losses step with the width (32 / 48 / 64: ~3.9 / ~3.46 / ~3.2) and the law drawn
through the steps overshoots the target's flattening (the model card discusses it).

``--ladder-only`` trains and fits a design's ladder alone (``ladder.json``; no target, no prediction):
four such ladders (``results/gpt4_scaling_ladders/``) all bend down, so their fits too put c at 0.

    python reproductions/gpt4_scaling.py            # the real study (results/gpt4_scaling/); ~10-15 min on 2 cores
    python reproductions/gpt4_scaling.py --smoke    # seconds; checks the pipeline (too short to be a power law)
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hf_paper_models.scaling import QUICK, ScalingSettings, fit_ladder, run_scaling
from reproductions.common import (
    add_set_option,
    apply_settings,
    device_name,
    output_dir,
    seed_everything,
    write_json,
)

NAME = "gpt4_scaling"
TOLERANCE = 0.03  # the decision rule: |predicted - measured| / measured <= 3%
RESULTS = Path(__file__).resolve().parent / "results" / NAME


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--output-dir", default=None, help=f"default: {RESULTS} (the real run), runs/... (smoke)"
    )
    parser.add_argument("--smoke", action="store_true", help="tiny study (seconds) that checks the pipeline")
    parser.add_argument(
        "--ladder-only", action="store_true",
        help="train and fit the ladder only (no target, no prediction): writes <output-dir>/ladder.json",
    )  # fmt: skip
    add_set_option(parser)
    args = parser.parse_args(argv)
    settings = ScalingSettings(**QUICK) if args.smoke else ScalingSettings()
    settings = apply_settings(settings, args.set)
    default_dir = f"runs/reproductions/{NAME}_smoke" if args.smoke else RESULTS
    out = output_dir(args.output_dir or default_dir)
    seed_everything(settings.seed)
    if args.ladder_only:
        result = fit_ladder(settings, out)
        result.update(device=device_name())
        write_json(out / "ladder.json", result)
        fit = result["fit"]
        for r in result["ladder"]:
            print(f"  {r['name']}: d={r['hidden_size']} L={r['num_hidden_layers']} C={r['compute']:.3g} "
                  f"loss {r['final_loss']:.4f}")  # fmt: skip
        print(f"  fit: L(C) = {fit['a']:.4g}·C^{fit['b']:.4f} + {fit['c']:.4f} (rms {fit['rmse']:.4f}); wrote {out}")
        return result

    result = run_scaling(settings, out, name=NAME)
    result.update(
        smoke=args.smoke, tolerance=TOLERANCE, claim_holds=bool(result["relative_error"] <= TOLERANCE),
        all_targets_within_tolerance=all(r["relative_error"] <= TOLERANCE for r in (result, *result["holdouts"])),
        device=device_name(),
    )  # fmt: skip
    write_json(out / f"{NAME}.json", result)
    print(f"\nGPT-4 predictable scaling ({'smoke' if args.smoke else 'default'}):")
    for r in result["ladder"]:
        print(f"  {r['name']}: d={r['hidden_size']} L={r['num_hidden_layers']} N={r['non_embedding_parameters']:,} "
              f"steps={r['steps']} C={r['compute']:.3g} ({r['fraction']:.2%}) loss {r['final_loss']:.4f}")  # fmt: skip
    fit = result["fit"]
    print(f"  fit: L(C) = {fit['a']:.4g}·C^{fit['b']:.4f} + {fit['c']:.4f}")
    print(f"  target C={result['target']['compute']:.3g}: predicted {result['predicted_loss']:.4f}, "
          f"measured {result['actual_loss']:.4f}, error {100 * result['relative_error']:.2f}%")  # fmt: skip
    for h in result["holdouts"]:
        print(f"  held-out {h['target']['name']} C={h['target']['compute']:.3g}: predicted {h['predicted_loss']:.4f}, "
              f"measured {h['actual_loss']:.4f}, error {100 * h['relative_error']:.2f}%")  # fmt: skip
    if result["holdouts"]:
        print(
            f"  every target within {100 * TOLERANCE:.0f}%: {'yes' if result['all_targets_within_tolerance'] else 'no'}"
        )
    print(f"  claim (error <= {100 * TOLERANCE:.0f}%): {'HOLDS' if result['claim_holds'] else 'does not hold'}; "
          f"{result['seconds']:.0f}s; wrote {out}")  # fmt: skip
    return result


if __name__ == "__main__":
    main()
