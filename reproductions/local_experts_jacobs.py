"""Adaptive mixtures of local experts (Jacobs, Jordan, Nowlan & Hinton 1991) on the vowel task, at laptop
scale: does the competitive loss make the experts specialise, and does it learn faster than the
cooperative one?

The paper's §1 contrasts two objectives for a mixture of experts whose gate gives p_i(x):

* the **cooperative** loss (eq. 1.1), ``‖d − Σ_i p_i o_i‖²``: every expert corrects the residual error of
  the blend, so the experts stay coupled and "many experts are used for each case";
* the **competitive** loss (eq. 1.3), ``−log Σ_i p_i exp(−½‖d − o_i‖²)``: each expert is pulled towards
  the whole target in proportion to its posterior responsibility, so the experts compete and the gate
  gives each region of the input space to one expert.

§4 trains such mixtures on Peterson & Barney's vowels [i], [ɪ], [a], [ʌ] (two formants in, four classes
out; the figure shows one expert taking [i]/[ɪ] and another [a]/[ʌ]) and reports that the mixture reaches
its error criterion in about half as many epochs as a backpropagation network with hidden units.

The set-up here: the synthetic multi-speaker vowels of ``hf_paper_models.data.vowels`` and the
recipe's data, model and split (``training/train_local_experts.py`` with
``training/configs/local_experts_vowel.yaml``: 75 speakers, 50 for training and 25 for testing, 2
utterances per vowel, full batch, Adam at 0.05). For each seed one initialisation of the
``local-experts-vowel`` model (4 single-layer experts, softmax gate) is trained twice, once per loss;
test accuracy and the gate are measured at every step. As a reference (the paper's own comparison in
§4, not part of either claim) the same loop trains a one-hidden-layer backpropagation network (the same
model class with one expert of ``reference_hidden`` hidden units: with one expert the competitive loss
is ½‖d − o‖², plain squared error). A second optimiser, plain full-batch gradient descent (the paper's
kind of training), is run as a variant with the same rules.

The two claims are decided by rules fixed in this file before any run (``RULES``, written into the
JSON), on the primary optimiser (the recipe's Adam):

1. **Specialisation.** Over the test cases, each case's owner is the gate's argmax expert. Per model:
   ``purity`` = the mean over classes of the share of the class's test cases owned by the class's
   majority expert; ``experts_used`` = the experts owning at least ``min_owner_share`` of the test
   cases; ``selected_expert_accuracy`` = Σ_i p_i(x)·[argmax o_i(x) = y] averaged over the test cases
   (the accuracy of the paper's stochastic reading: one expert drawn from the gate answers alone).
   Holds if, in the mean over seeds, the competitive mixture has purity ≥ 0.9, a median
   ``experts_used`` ≥ 2 (the gate divides the space rather than handing it all to one expert) and a
   selected-expert accuracy within 5 points of its mixture accuracy (the owner solves its cases
   alone), and the cooperative mixture's selected-expert accuracy is at least 5 points below the
   competitive one's (its experts do not each solve their cases).
2. **Convergence.** Steps to reach ``target_accuracy`` test accuracy (first step at or above it; a run
   that never reaches it counts as never). Holds if the competitive loss's median over seeds is lower
   than the cooperative one's and, paired by seed (same initialisation), the competitive run is
   strictly faster in more than half of the seeds.

    python reproductions/local_experts_jacobs.py            # default: about 3 minutes of one CPU core
    python reproductions/local_experts_jacobs.py --smoke    # seconds; checks the pipeline
    python reproductions/local_experts_jacobs.py --set num_seeds=20 adam_steps=1000

The recorded default run (``reproductions/results/local_experts_jacobs``): neither claim holds on this
task. Both losses give every vowel's test cases to one expert with near-hard gates, the competitive gate
gives everything to a single expert in half the seeds, and the cooperative loss reaches 90% in a median of
80 Adam steps against the competitive loss's 207.5 (with gradient descent: 112.5 against 905).

Writes ``local_experts_jacobs.json`` and ``local_experts_jacobs.png`` (test accuracy against step per
loss, and the formant plane coloured by the expert the gate gives each point) into ``--output-dir``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hf_paper_models import preset
from hf_paper_models.models.local_experts import PaperLocalExpertsForSequenceClassification
from reproductions.common import (
    Timer,
    add_set_option,
    apply_settings,
    device_name,
    load_script,
    new_figure,
    output_dir,
    save_figure,
    seed_everything,
    write_json,
)

NAME = "local_experts_jacobs"
ROOT = Path(__file__).resolve().parent.parent
RECIPE = ROOT / "training" / "train_local_experts.py"
LOSSES = ("competitive", "cooperative")
REFERENCE = "backprop"  # the one-expert, hidden-layer network of the paper's §4 comparison

# The decision rules, fixed before any run (see the module docstring); written into the JSON as is.
RULES = {
    "specialisation": {
        "owner": "argmax_i p_i(x) on the test cases",
        "purity": "mean over classes of the share of the class's test cases owned by its majority expert",
        "experts_used": "experts owning at least min_owner_share of the test cases",
        "selected_expert_accuracy": "mean over test cases of sum_i p_i(x) * [argmax o_i(x) == y]",
        "min_owner_share": 0.10,
        "competitive_min_purity": 0.90,
        "competitive_min_median_experts_used": 2,
        "competitive_max_selected_gap_to_mixture": 0.05,
        "cooperative_min_selected_gap_below_competitive": 0.05,
        "holds_if": "means over seeds: competitive purity >= 0.90 and median experts_used >= 2 and "
        "selected_expert_accuracy >= mixture accuracy - 0.05; and cooperative selected_expert_accuracy "
        "<= competitive selected_expert_accuracy - 0.05",
    },
    "convergence": {
        "steps_to_target": "first evaluated training step (every eval_every steps) at which the test "
        "accuracy is >= target_accuracy; never reached = infinity",
        "holds_if": "median steps_to_target(competitive) < median steps_to_target(cooperative) and, "
        "paired by seed, competitive strictly faster in more than half of the seeds",
    },
    "decided_on": "the primary optimiser (the recipe's Adam); the gradient-descent variant is reported "
    "under the same rules",
}


@dataclass
class Settings:
    # data: the recipe's (local_experts_vowel.yaml)
    num_speakers: int = 75
    num_train_speakers: int = 50
    utterances_per_vowel: int = 2
    data_seed: int = 0
    # model: the local-experts-vowel preset (4 single-layer experts)
    num_experts: int = 4
    reference_hidden: int = 6  # the paper's smaller backpropagation network (6 hidden units)
    # training: full batch, seeds first_seed .. first_seed + num_seeds - 1
    first_seed: int = 0
    num_seeds: int = 10
    adam_learning_rate: float = 0.05  # the recipe's
    adam_steps: int = 500
    run_gradient_descent: bool = True
    # (a pre-check of 3 seeds at lr 1.0: the competitive mixture did not reach 90% within 1,500 steps)
    sgd_learning_rate: float = 3.0
    sgd_steps: int = 1500
    eval_every: int = 5
    target_accuracy: float = 0.90
    threads: int = 1


SMOKE = dict(num_speakers=12, num_train_speakers=8, num_seeds=2, adam_steps=12, sgd_steps=12, eval_every=3)


def load_recipe():
    """``training/train_local_experts.py`` as a module (it is a script, not part of the package)."""
    return load_script(RECIPE)


# ----------------------------------------------------------------------------------------------
# Measurements
# ----------------------------------------------------------------------------------------------


def specialisation_metrics(
    gate_probs: torch.Tensor,
    expert_outputs: torch.Tensor,
    labels: torch.Tensor,
    min_owner_share: float = 0.10,
) -> dict:
    """How the gate divides the cases between the experts (see ``RULES``).

    ``gate_probs`` (cases, experts), ``expert_outputs`` (cases, experts, classes), ``labels`` (cases,).
    Returns ``purity``, ``majority_expert`` per class (``None`` for a class without cases),
    ``experts_used``, ``owner_share`` (the share of all cases each expert owns), ``gate_max`` (the mean
    of max_i p_i), ``owner_accuracy`` (the argmax expert alone answers) and ``selected_expert_accuracy``.
    """
    num_experts, num_classes = gate_probs.shape[-1], expert_outputs.shape[-1]
    owner = gate_probs.argmax(-1)
    purities, majority = [], []
    for c in range(num_classes):
        counts = torch.bincount(owner[labels == c], minlength=num_experts)
        if counts.sum() == 0:
            majority.append(None)
            continue
        majority.append(int(counts.argmax()))
        purities.append(float(counts.max()) / float(counts.sum()))
    owner_share = torch.bincount(owner, minlength=num_experts).double() / max(len(labels), 1)
    correct = (expert_outputs.argmax(-1) == labels.unsqueeze(-1)).to(gate_probs.dtype)  # (cases, experts)
    return {
        "purity": statistics.fmean(purities) if purities else float("nan"),
        "majority_expert": majority,
        "experts_used": int((owner_share >= min_owner_share).sum()),
        "owner_share": owner_share.tolist(),
        "gate_max": float(gate_probs.max(-1).values.mean()),
        "owner_accuracy": float(correct.gather(-1, owner.unsqueeze(-1)).mean()),
        "selected_expert_accuracy": float((gate_probs * correct).sum(-1).mean()),
    }


def steps_to_target(curve: Sequence[dict], target: float) -> int | None:
    """First step whose test accuracy is at least ``target``; ``None`` if none is."""
    return next((c["step"] for c in curve if c["accuracy"] >= target), None)


# ----------------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------------


def make_model(kind: str, seed: int, s: Settings) -> PaperLocalExpertsForSequenceClassification:
    """A mixture with ``kind``'s loss, or the backpropagation reference; the same seed gives the two
    mixtures the same initial weights."""
    if kind == REFERENCE:
        config = preset("local-experts-vowel", num_experts=1, hidden_size=s.reference_hidden)
    else:
        config = preset("local-experts-vowel", num_experts=s.num_experts, moe_loss=kind)
    torch.manual_seed(seed)
    return PaperLocalExpertsForSequenceClassification(config)


def train_run(kind: str, optimiser: str, seed: int, train: dict, test: dict, recipe, s: Settings) -> dict:
    """Full-batch training, with the test accuracy measured every ``eval_every`` steps."""
    model = make_model(kind, seed, s)
    if optimiser == "adam":
        optimizer = torch.optim.Adam(model.parameters(), lr=s.adam_learning_rate)
        steps = s.adam_steps
    else:
        optimizer = torch.optim.SGD(model.parameters(), lr=s.sgd_learning_rate)
        steps = s.sgd_steps
    x, y = train["input_values"], train["labels"]
    test_x, test_y = test["input_values"], test["labels"]

    @torch.no_grad()
    def accuracy() -> float:
        return float((model(input_values=test_x).logits.argmax(-1) == test_y).float().mean())

    curve = [{"step": 0, "accuracy": accuracy()}]
    losses = []
    model.train()
    for step in range(1, steps + 1):
        loss = model(input_values=x, labels=y).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        if step % s.eval_every == 0 or step == steps:
            curve.append({"step": step, "accuracy": accuracy()})
    model.eval()
    with torch.no_grad():
        out = model(input_values=test_x)
        train_accuracy = float((model(input_values=x).logits.argmax(-1) == y).float().mean())
    recipe_view = recipe.specialisation(model, test)  # the recipe's test accuracy and per-vowel shares
    return {
        "kind": kind,
        "optimiser": optimiser,
        "seed": seed,
        "final_accuracy": curve[-1]["accuracy"],
        "final_train_accuracy": train_accuracy,
        "final_train_loss": losses[-1],
        "steps_to_target": steps_to_target(curve, s.target_accuracy),
        "specialisation": specialisation_metrics(
            out.gate_probs, out.expert_outputs, test_y, RULES["specialisation"]["min_owner_share"]
        ),
        "expert_share": recipe_view["expert_share"],
        "curve": curve,
        "_model": model,
    }


# ----------------------------------------------------------------------------------------------
# Decisions
# ----------------------------------------------------------------------------------------------


def stats(values: Sequence[float]) -> dict:
    values = list(values)
    return {
        "mean": statistics.fmean(values) if values else None,
        "std": statistics.pstdev(values) if values else None,
        "values": values,
    }


def step_stats(runs: list[dict]) -> dict:
    """Median (never reached = infinity, written as null), mean over the runs that reach the target."""
    steps = [r["steps_to_target"] for r in runs]
    reached = [v for v in steps if v is not None]
    ordered = sorted(float("inf") if v is None else float(v) for v in steps)
    median = statistics.median(ordered) if ordered else float("inf")
    return {
        "values": steps,
        "reached": len(reached),
        "runs": len(steps),
        "median": median,
        "mean_of_reached": statistics.fmean(reached) if reached else None,
    }


def decide(runs: dict[str, list[dict]]) -> dict:
    """Both claims for one optimiser, by ``RULES``."""
    rule = RULES["specialisation"]
    comp, coop = runs["competitive"], runs["cooperative"]

    def spec(group: list[dict], key: str) -> dict:
        return stats([r["specialisation"][key] for r in group])

    measured = {
        kind: {
            "mixture_accuracy": stats([r["final_accuracy"] for r in group]),
            **{
                k: spec(group, k)
                for k in ("purity", "experts_used", "gate_max", "owner_accuracy", "selected_expert_accuracy")
            },  # fmt: skip
            "median_experts_used": statistics.median(r["specialisation"]["experts_used"] for r in group),
        }
        for kind, group in (("competitive", comp), ("cooperative", coop))
    }
    c, k = measured["competitive"], measured["cooperative"]
    checks = {
        "competitive_purity": c["purity"]["mean"] >= rule["competitive_min_purity"],
        "competitive_experts_used": c["median_experts_used"] >= rule["competitive_min_median_experts_used"],
        "competitive_owner_solves_alone": c["selected_expert_accuracy"]["mean"]
        >= c["mixture_accuracy"]["mean"] - rule["competitive_max_selected_gap_to_mixture"],
        "cooperative_does_not_specialise": k["selected_expert_accuracy"]["mean"]
        <= c["selected_expert_accuracy"]["mean"] - rule["cooperative_min_selected_gap_below_competitive"],
    }
    specialisation = {"measured": measured, "checks": checks, "holds": all(checks.values())}

    steps = {kind: step_stats(runs[kind]) for kind in runs}
    inf = float("inf")
    paired = [
        (inf if a["steps_to_target"] is None else a["steps_to_target"])
        < (inf if b["steps_to_target"] is None else b["steps_to_target"])
        for a, b in zip(comp, coop)
    ]
    ratio = (
        steps["competitive"]["median"] / steps["cooperative"]["median"]
        if steps["cooperative"]["median"]
        else None
    )
    convergence = {
        "steps_to_target": steps,
        "competitive_faster_in_seeds": sum(paired),
        "seeds": len(paired),
        "median_ratio_competitive_to_cooperative": ratio,
        "final_accuracy": {kind: stats([r["final_accuracy"] for r in runs[kind]]) for kind in runs},
        "holds": bool(
            steps["competitive"]["median"] < steps["cooperative"]["median"] and 2 * sum(paired) > len(paired)
        ),
    }
    if REFERENCE in runs:
        ref = steps[REFERENCE]["median"]
        convergence["reference_median_ratio_competitive_to_backprop"] = (
            steps["competitive"]["median"] / ref if ref else None
        )
    return {"specialisation": specialisation, "convergence": convergence}


# ----------------------------------------------------------------------------------------------
# Figure and entry point
# ----------------------------------------------------------------------------------------------

COLOURS = {"competitive": "tab:blue", "cooperative": "tab:orange", REFERENCE: "tab:gray"}
MARKERS = ("o", "s", "^", "D")


def mean_curve(group: list[dict]) -> tuple[list[int], list[float]]:
    steps = [c["step"] for c in group[0]["curve"]]
    return steps, [
        100 * statistics.fmean(r["curve"][i]["accuracy"] for r in group) for i in range(len(steps))
    ]


def plot_curves(ax, runs: dict[str, list[dict]], s: Settings, title: str) -> None:
    for kind, group in runs.items():
        steps, acc = mean_curve(group)
        label = (
            f"{kind} (mean of {len(group)} seeds)"
            if kind != REFERENCE
            else f"backprop, {s.reference_hidden} hidden"
        )
        ax.plot(steps, acc, "--" if kind == REFERENCE else "-", color=COLOURS[kind], label=label, lw=1.5)
    ax.axhline(
        100 * s.target_accuracy, color="red", ls=":", lw=1, label=f"target {100 * s.target_accuracy:g}%"
    )
    ax.set(xlabel="training step (full batch)", ylabel="test accuracy (%)", title=title, ylim=(0, 100))
    ax.legend(fontsize=7, loc="lower right")


def plot_owners(ax, run: dict, test: dict, vowels: Sequence[str]) -> None:
    """The formant plane coloured by the gate's argmax expert, with the test cases and the vowels."""
    model = run["_model"]
    x = test["input_values"]
    lo, hi = x.min(0).values - 0.1, x.max(0).values + 0.1
    f1, f2 = torch.meshgrid(
        torch.linspace(lo[0], hi[0], 200), torch.linspace(lo[1], hi[1], 200), indexing="ij"
    )
    with torch.no_grad():
        owner = model(input_values=torch.stack([f1.flatten(), f2.flatten()], -1)).gate_probs.argmax(-1)
    num_experts = model.config.num_experts
    import matplotlib.colors as mcolors

    cmap = mcolors.ListedColormap([f"C{e + 4}" for e in range(num_experts)])
    ax.pcolormesh(f1.numpy(), f2.numpy(), owner.view(f1.shape).numpy(), cmap=cmap, vmin=-0.5,
                  vmax=num_experts - 0.5, alpha=0.35, shading="auto")  # fmt: skip
    labels = test["labels"]
    for v, vowel in enumerate(vowels):
        pts = x[labels == v]
        ax.scatter(
            pts[:, 0], pts[:, 1], s=10, marker=MARKERS[v % 4], facecolors="none", edgecolors="k", lw=0.6
        )
        centre = pts.mean(0)
        ax.text(float(centre[0]), float(centre[1]), f"[{vowel}]", fontsize=12, ha="center", va="center",
                bbox=dict(boxstyle="round", fc="white", alpha=0.8))  # fmt: skip
    handles = [
        __import__("matplotlib.patches", fromlist=["Patch"]).Patch(
            color=f"C{e + 4}", alpha=0.35, label=f"expert {e}"
        )
        for e in range(num_experts)
    ]
    ax.legend(handles=handles, fontsize=7, loc="upper right")
    m = run["specialisation"]
    ax.set(xlabel="F1 (kHz)", ylabel="F2 (kHz)",
           title=f"{run['kind']} (seed {run['seed']}): owner = gate argmax\n"
           f"purity {m['purity']:.2f}, experts used {m['experts_used']}, "
           f"selected-expert acc {100 * m['selected_expert_accuracy']:.0f}%")  # fmt: skip


def plot(by_optimiser: dict, test: dict, vowels: Sequence[str], s: Settings, path: Path) -> None:
    optimisers = list(by_optimiser)
    fig, axes = new_figure(ncols=len(optimisers) + 2, width=4.8, height=4.4)
    for ax, opt in zip(axes, optimisers):
        name = (
            f"Adam lr {s.adam_learning_rate:g}"
            if opt == "adam"
            else f"gradient descent lr {s.sgd_learning_rate:g}"
        )
        plot_curves(ax, by_optimiser[opt]["runs"], s, f"Test accuracy, {name}")
    primary = by_optimiser[optimisers[0]]["runs"]
    for ax, kind in zip(axes[len(optimisers) :], LOSSES):
        plot_owners(ax, primary[kind][0], test, vowels)
    save_figure(fig, path)


def strip(run: dict) -> dict:
    """A run for the JSON: without the model, its accuracy curve as two compact lists."""
    out = {k: v for k, v in run.items() if not k.startswith("_") and k != "curve"}
    out["curve_steps"] = [c["step"] for c in run["curve"]]
    out["curve_accuracy"] = [round(c["accuracy"], 4) for c in run["curve"]]
    return out


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output-dir", default=f"runs/reproductions/{NAME}")
    parser.add_argument("--smoke", action="store_true", help="tiny run (seconds) that checks the pipeline")
    add_set_option(parser)
    args = parser.parse_args(argv)
    s = Settings(**SMOKE) if args.smoke else Settings()
    try:
        s = apply_settings(s, args.set)
    except ValueError as error:
        parser.error(str(error))
    out = output_dir(args.output_dir)
    seed_everything(s.first_seed)
    torch.set_num_threads(s.threads)
    recipe = load_recipe()

    with Timer() as total:
        data = recipe.make_vowel_data(s.num_speakers, s.utterances_per_vowel, seed=s.data_seed)
        train, test = recipe.split_by_speaker(data, s.num_train_speakers)
        seeds = range(s.first_seed, s.first_seed + s.num_seeds)
        optimisers = ("adam", "sgd") if s.run_gradient_descent else ("adam",)
        by_optimiser = {}
        for opt in optimisers:
            with Timer() as opt_time:
                runs = {kind: [train_run(kind, opt, seed, train, test, recipe, s) for seed in seeds]
                        for kind in (*LOSSES, REFERENCE)}  # fmt: skip
            by_optimiser[opt] = {"runs": runs, "decision": decide(runs), "seconds": opt_time.seconds}

    primary = by_optimiser["adam"]["decision"]
    result = {
        "name": NAME,
        "paper": "Jacobs, Jordan, Nowlan & Hinton (1991), Adaptive mixtures of local experts",
        "claims": {
            "specialisation": "with the competitive loss the gate divides the input space so that each vowel "
            "class is owned by one expert, which answers for it alone; with the cooperative loss the experts "
            "do not specialise",
            "convergence": f"the competitive loss reaches {100 * s.target_accuracy:g}% test accuracy in fewer "
            "steps than the cooperative loss (the paper: about half as many epochs as backpropagation networks)",
        },
        "rules": RULES,
        "smoke": args.smoke,
        "device": device_name(),
        "data": {
            "train_cases": len(train["labels"]),
            "test_cases": len(test["labels"]),
            "vowels": list(recipe.VOWELS),
        },  # fmt: skip
        "num_parameters": {kind: make_model(kind, 0, s).num_parameters() for kind in (*LOSSES, REFERENCE)},
        "specialisation_holds": primary["specialisation"]["holds"],
        "convergence_holds": primary["convergence"]["holds"],
        "by_optimiser": {
            opt: {
                "decision": block["decision"],
                "seconds": block["seconds"],
                "runs": {kind: [strip(r) for r in group] for kind, group in block["runs"].items()},
            }
            for opt, block in by_optimiser.items()
        },  # fmt: skip
        "notes": [
            "The paper's Table 1 compares mixtures with backpropagation networks (6 and 12 hidden units), not "
            "with the cooperative mixture; the backprop reference here (one expert with a hidden layer, "
            "squared error) is reported beside the two losses but is not part of either rule.",
            "The library's cooperative loss is ‖d − Σ p_i o_i‖² (no ½), as eq. 1.1 of the paper; the factor "
            "is a constant scale of the gradient (Adam is invariant to it).",
            "Data fixed (data_seed); seeds vary the initialisation, shared by the two losses.",
            "Training settings were chosen for both losses alike and before the rules were applied: Adam as in "
            "the recipe (lr 0.05, full batch); gradient descent at lr 3.0 after a 3-seed pre-check at lr 1.0 in "
            "which the competitive mixture did not reach the target within 1,500 steps. The rules were not "
            "changed after any run.",
        ],
        "seconds": {"total": total.seconds, "cpu_total": total.cpu_seconds},
        "settings": asdict(s),
    }
    write_json(out / f"{NAME}.json", result)
    plot(by_optimiser, test, recipe.VOWELS, s, out / f"{NAME}.png")

    print(f"\nLocal-experts reproduction ({'smoke' if args.smoke else 'default'}), {result['device']}: "
          f"{result['data']['train_cases']} train / {result['data']['test_cases']} test cases, {s.num_seeds} seeds")  # fmt: skip
    for opt, block in by_optimiser.items():
        d = block["decision"]
        print(f"  [{opt}]")
        for kind in LOSSES:
            m = d["specialisation"]["measured"][kind]
            print(f"    {kind:>11}: test acc {100 * m['mixture_accuracy']['mean']:.1f}%, purity "
                  f"{m['purity']['mean']:.2f}, experts used (median) {m['median_experts_used']:g}, gate max "
                  f"{m['gate_max']['mean']:.2f}, selected-expert acc {100 * m['selected_expert_accuracy']['mean']:.1f}%")  # fmt: skip
        for kind, st in d["convergence"]["steps_to_target"].items():
            print(f"    {kind:>11}: steps to {100 * s.target_accuracy:g}%: median {st['median']:g}, reached "
                  f"{st['reached']}/{st['runs']}, values {st['values']}")  # fmt: skip
        print(f"    specialisation holds: {d['specialisation']['holds']} {d['specialisation']['checks']}")
        print(f"    convergence holds: {d['convergence']['holds']} (competitive faster in "
              f"{d['convergence']['competitive_faster_in_seeds']}/{d['convergence']['seeds']} seeds)")  # fmt: skip
    print(f"  time: {total.seconds:.0f}s wall ({total.cpu_seconds:.0f}s CPU); wrote {out}")
    return result


if __name__ == "__main__":
    main()
