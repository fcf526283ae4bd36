"""Why the competitive gate of ``local_experts_jacobs.py`` hands every case to one expert: short diagnostic runs.

Not a reproduction (no claim is decided here, and the reproduction's rules are not changed): the same data
(Peterson & Barney speaker order, first 50 speakers train), the same ``competitive-4`` model and full-batch
gradient descent at the reproduction's chosen step (8), shorter (``epochs``, 1,500 by default) and varied
one factor at a time:

1. gradients: autograd against the paper's closed forms, ∂E/∂s_i = p_i − h_i for the gate's logits and
   ∂E/∂o_i = −h_i (d − o_i) for expert i's outputs (h_i = p_i e^{−½‖d−o_i‖²} / Σ_j …), on the real data;
2. the data: one logistic expert alone against two experts hand-assigned to the vowel pairs [i]/[ɪ] and
   [a]/[ʌ] (the paper's split), and whether a linear gate can make that split;
3. the dynamics: the competitive mixture on the raw formants (the reproduction's input) against the same
   formants centred on the training mean (an input change, for diagnosis only), a smaller step, a smaller
   step for the gate alone, and a narrower Gaussian (σ² = 0.25 instead of eq. 1.3's 1);
4. the conditioning of the gate's input: eigenvalues of E[(1, x)(1, x)ᵀ] (the gate's logits are linear in
   (1, F1, F2)), raw and centred, and how fast the gate's largest proportion grows in the first epochs.

    python reproductions/local_experts_jacobs_diagnosis.py   # about a minute of one CPU core
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hf_paper_models.data.vowels import make_vowel_data, split_by_speaker
from hf_paper_models.models.moe import competitive_loss
from reproductions.common import Timer, output_dir, write_json
from reproductions.local_experts_jacobs import Settings, make_model

NAME = "local_experts_jacobs_diagnosis"


def posterior(gates: torch.Tensor, outputs: torch.Tensor, target: torch.Tensor, variance: float = 1.0) -> torch.Tensor:
    h = gates * torch.exp(-0.5 * (target.unsqueeze(-2) - outputs).pow(2).sum(-1) / variance)
    return h / h.sum(-1, keepdim=True)


def gradient_check(x: torch.Tensor, y: torch.Tensor) -> dict:
    model = make_model("competitive-4", 0)
    with torch.no_grad():  # a non-uniform gate, so that p and h differ
        model.model.gate.proj.weight.normal_()
        model.model.gate.proj.bias.normal_()
    d = F.one_hot(y, 4).float()
    out = model.model(input_values=x)
    logits = model.model.gate.proj(x).detach().requires_grad_(True)
    outputs = out.expert_outputs.detach().requires_grad_(True)
    competitive_loss(outputs, d, torch.softmax(logits, -1)).backward()
    p, o = torch.softmax(logits.detach(), -1), outputs.detach()
    h = posterior(p, o, d)
    n = len(x)
    return {
        "max_abs_diff_gate_logits_vs_p_minus_h": float((logits.grad - (p - h) / n).abs().max()),
        "max_abs_diff_expert_outputs_vs_h_weighted_error": float((outputs.grad + h.unsqueeze(-1) * (d.unsqueeze(1) - o) / n).abs().max()),
    }  # fmt: skip


def fit_one_expert(x: torch.Tensor, y: torch.Tensor, seed: int, epochs: int, step: float):
    """One logistic expert (the competitive loss with one expert is ½‖d − o‖²), full-batch gradient descent."""
    model = make_model("competitive-4", seed)
    expert = model.model.experts[0]
    d = F.one_hot(y, 4).float()
    optimizer = torch.optim.SGD(expert.parameters(), lr=step)
    for _ in range(epochs):
        loss = 0.5 * (d - expert(x)).pow(2).sum(-1).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return expert


def data_check(x: torch.Tensor, y: torch.Tensor, epochs: int, long_epochs: int) -> dict:
    d = F.one_hot(y, 4).float()
    front = (y == 0) | (y == 1)  # [i], [ɪ]
    one = fit_one_expert(x, y, 0, epochs, 8.0)
    one_long = fit_one_expert(x, y, 0, long_epochs, 8.0)
    a = fit_one_expert(x[front], y[front], 0, epochs, 8.0)
    b = fit_one_expert(x[~front], y[~front], 1, epochs, 8.0)
    with torch.no_grad():
        one, one_long = one(x), one_long(x)
        pair = torch.where(front.unsqueeze(-1), a(x), b(x))
    # can the gate (linear in F1, F2) make the pair split? logistic regression front vs back
    w = torch.zeros(2, requires_grad=True)
    c = torch.zeros((), requires_grad=True)
    optimizer = torch.optim.SGD([w, c], lr=1.0)
    for _ in range(3000):
        loss = F.binary_cross_entropy_with_logits(x @ w + c, front.float())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    err = lambda o: float((d - o).pow(2).mean())  # noqa: E731  the criterion's error, per case and output
    acc = lambda o: float((o.argmax(-1) == y).float().mean())  # noqa: E731
    return {
        "epochs": epochs,
        "one_expert": {"error": err(one), "train_accuracy": acc(one)},
        f"one_expert_{long_epochs}_epochs": {"error": err(one_long), "train_accuracy": acc(one_long)},
        "two_experts_hand_assigned_to_vowel_pairs": {"error": err(pair), "train_accuracy": acc(pair)},
        "linear_gate_front_back_split_accuracy": float((((x @ w + c) > 0) == front).float().mean()),
    }


def competitive_runs(x: torch.Tensor, y: torch.Tensor, seeds: Sequence[int], epochs: int, experts: int = 4,
                     step: float = 8.0, gate_step_factor: float = 1.0, variance: float = 1.0) -> dict:  # fmt: skip
    """Competitive mixtures, full-batch gradient descent; experts used = experts that own ≥ 10% of the training
    cases (the reproduction's rule, there on the test cases); the error is the reproduction's criterion."""
    d = F.one_hot(y, 4).float()
    used, reached, final, max_p_10 = [], [], [], []
    for seed in seeds:
        model = make_model(f"competitive-{experts}", seed)
        gate = list(model.model.gate.parameters())
        rest = [p for n, p in model.named_parameters() if ".gate." not in n]
        optimizer = torch.optim.SGD([{"params": rest, "lr": step}, {"params": gate, "lr": step * gate_step_factor}])
        first = None
        for epoch in range(epochs + 1):
            out = model.model(input_values=x)
            with torch.no_grad():
                error = float((out.gate_probs * (d.unsqueeze(1) - out.expert_outputs).pow(2).sum(-1)).sum(-1).mean() / 4)
                if epoch == 10:
                    max_p_10.append(float(out.gate_probs.max(-1).values.mean()))
            if first is None and error <= 0.08:
                first = epoch
            if epoch == epochs:
                break
            scale = variance**-0.5  # E with variance σ²: −log Σ p_i exp(−‖d − o_i‖² / 2σ²)
            loss = competitive_loss(out.expert_outputs * scale, d * scale, out.gate_probs)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        share = torch.bincount(out.gate_probs.argmax(-1), minlength=experts).float() / len(x)
        used.append(int((share >= 0.10).sum()))
        reached.append(first)
        final.append(round(error, 4))
    return {
        "experts_used": used,
        "seeds_with_2_or_more_experts": sum(u >= 2 for u in used),
        "epochs_to_0.08": reached,
        "reached": sum(r is not None for r in reached),
        "median_epochs_of_reached": statistics.median([r for r in reached if r is not None]) if any(
            r is not None for r in reached) else None,
        "final_error": final,
        "mean_max_gate_probability_at_epoch_10": statistics.fmean(max_p_10),
    }  # fmt: skip


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output-dir", default=f"runs/reproductions/{NAME}")
    parser.add_argument("--epochs", type=int, default=1500)
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--long-epochs", type=int, default=Settings().max_epochs, help="the lone expert's long run")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    s = Settings()
    data = make_vowel_data(s.num_speakers, s.utterances_per_vowel, seed=s.data_seed, speaker_order=s.speaker_order)
    train, _ = split_by_speaker(data, s.num_train_speakers)
    x, y = train["input_values"], train["labels"]
    centred = x - x.mean(0)
    seeds = range(args.seeds)
    with Timer() as total:
        result: dict = {"name": NAME, "settings": {"epochs": args.epochs, "seeds": list(seeds), "long_epochs": args.long_epochs}}
        result["gradients"] = gradient_check(x, y)
        result["data"] = data_check(x, y, args.epochs, args.long_epochs)
        result["input"] = {"train_mean": x.mean(0).tolist(), "train_std": x.std(0).tolist()}
        for name, inputs in (("raw", x), ("centred", centred)):
            a = torch.cat([torch.ones(len(x), 1), inputs], 1).double()
            result["input"][f"eigenvalues_second_moment_1_f1_f2_{name}"] = torch.linalg.eigvalsh(a.T @ a / len(x)).tolist()
        variants = {
            "competitive-4, raw input, step 8 (the reproduction)": dict(inputs=x),
            "competitive-4, raw input, step 2": dict(inputs=x, step=2.0),
            "competitive-4, raw input, gate step x0.1": dict(inputs=x, gate_step_factor=0.1),
            "competitive-4, raw input, variance 0.25": dict(inputs=x, variance=0.25),
            "competitive-4, centred input": dict(inputs=centred),
            "competitive-8, centred input": dict(inputs=centred, experts=8),
        }
        result["runs"] = {}
        for name, kw in variants.items():
            inputs = kw.pop("inputs")
            result["runs"][name] = r = competitive_runs(inputs, y, seeds, args.epochs, **kw)
            print(f"  {name}: >=2 experts in {r['seeds_with_2_or_more_experts']}/{len(seeds)} seeds, reached 0.08 in "
                  f"{r['reached']} (median {r['median_epochs_of_reached']}), final error {r['final_error']}, "
                  f"max gate p at epoch 10 {r['mean_max_gate_probability_at_epoch_10']:.2f}", flush=True)  # fmt: skip
    result["seconds"] = total.seconds
    print("gradients:", result["gradients"])
    print("data:", result["data"])
    print("input:", result["input"])
    write_json(output_dir(args.output_dir) / f"{NAME}.json", result)
    return result


if __name__ == "__main__":
    main()
