"""The Switch layer's expert dispatch against a dense FFN of the same active FLOPs and against
transformers' ``SwitchTransformersSparseMLP``, same weights, same run.

    python benchmarks/moe.py [--quick] [--device cuda] [--dtype bfloat16] [--batch 64]

For 8, 64 and 256 experts (d_model 512, d_ff 2048, 4096 tokens as 8 sequences of 512 by default), one
forward + backward (a fixed random output gradient) of:

- ours: ``moe.SwitchFeedForward`` (router, sort by expert, one grouped matmul per projection; on the CPU
  one matmul per expert into reused memory);
- theirs: transformers' ``SwitchTransformersSparseMLP`` (router, Python loop over the experts hit);
- dense: ``ReLU(x W_i) W_o`` with one d_ff FFN, the FLOPs a top-1 layer spends per token.

Every expert has room for every token (no drops), so both MoE layers do exactly the dense FLOPs plus
routing; both hold the same weights and the check records that their outputs agree. Rows (higher is
better): ours vs theirs in tokens/s, and ours vs dense in tokens/s (1 / the cost over dense).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import torch
import transformers
from torch import nn

if __package__ in (None, ""):  # run as a script: make `benchmarks` importable from the repo root
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.timing import row, throughput_row, time_interleaved  # noqa: E402
from hf_paper_models.models import moe  # noqa: E402


@dataclass(frozen=True)
class MoESizes:
    d_model: int = 512
    d_ff: int = 2048
    batch: int = 8
    seq: int = 512
    experts: tuple[int, ...] = (8, 64, 256)
    warmup: int = 2
    repeats: int = 7
    device: str = "cpu"
    dtype: str = "float32"


DEFAULT = MoESizes()
QUICK = MoESizes(d_model=64, d_ff=256, batch=4, seq=128, experts=(8, 64, 256), warmup=2, repeats=5)


def layers(s: MoESizes, num_experts: int) -> tuple[nn.Module, nn.Module, nn.Module]:
    """Ours, transformers' and the dense FFN; the MoE layers share their router and expert weights."""
    config = transformers.SwitchTransformersConfig(
        d_model=s.d_model, d_ff=s.d_ff, num_experts=num_experts, expert_capacity=s.seq, dropout_rate=0.0,
        router_jitter_noise=0.0,
    )  # fmt: skip
    generator = torch.Generator().manual_seed(num_experts)
    theirs = transformers.models.switch_transformers.modeling_switch_transformers.SwitchTransformersSparseMLP(
        config
    )
    ours = moe.SwitchFeedForward(s.d_model, s.d_ff, num_experts, nn.ReLU(), capacity=s.seq)
    with torch.no_grad():
        router = torch.randn(num_experts, s.d_model, generator=generator) * s.d_model**-0.5
        ours.router.weight.copy_(router)
        theirs.router.classifier.weight.copy_(router)
        for e in range(num_experts):
            wi = torch.randn(s.d_ff, s.d_model, generator=generator) * s.d_model**-0.5
            wo = torch.randn(s.d_model, s.d_ff, generator=generator) * s.d_ff**-0.5
            ours.experts.wi[e].copy_(wi.t())  # ours are (in, out)
            ours.experts.wo[e].copy_(wo.t())
            theirs.experts[f"expert_{e}"].wi.weight.copy_(wi)
            theirs.experts[f"expert_{e}"].wo.weight.copy_(wo)
    dense = nn.Sequential(
        nn.Linear(s.d_model, s.d_ff, bias=False), nn.ReLU(), nn.Linear(s.d_ff, s.d_model, bias=False)
    )
    dtype = getattr(torch, s.dtype)
    return tuple(layer.to(s.device, dtype).train() for layer in (ours, theirs, dense))


def forward_backward(layer: nn.Module, x: torch.Tensor, grad: torch.Tensor):
    def call() -> None:
        layer.zero_grad(set_to_none=True)
        layer(x).backward(grad)

    return call


def moe_rows(s: MoESizes, checks: dict, stage=lambda _: None) -> list[dict]:
    rows = []
    tokens = s.batch * s.seq
    for num_experts in s.experts:
        stage(f"{num_experts} experts")
        ours, theirs, dense = layers(s, num_experts)
        generator = torch.Generator().manual_seed(0)
        dtype = getattr(torch, s.dtype)
        x = torch.randn(s.batch, s.seq, s.d_model, generator=generator).to(s.device, dtype)
        grad = torch.randn(s.batch, s.seq, s.d_model, generator=generator).to(s.device, dtype)
        with torch.no_grad():
            checks[f"switch_{num_experts}e_max_abs_diff"] = (ours(x) - theirs(x)).abs().max().item()
        timings = time_interleaved(
            {name: forward_backward(layer, x, grad) for name, layer in
             (("ours", ours), ("theirs", theirs), ("dense", dense))},
            s.warmup,
            s.repeats,
        )  # fmt: skip
        over_dense = {k: timings[k].median / timings["dense"].median for k in ("ours", "theirs")}
        checks[f"switch_{num_experts}e_ours_over_dense"] = over_dense["ours"]
        checks[f"switch_{num_experts}e_theirs_over_dense"] = over_dense["theirs"]
        shape = f"d_model {s.d_model}, d_ff {s.d_ff}, {s.batch}×{s.seq} tok"
        if (s.device, s.dtype) != ("cpu", "float32"):
            shape += f", {s.device} {s.dtype}"
        rows.append(throughput_row(
            f"switch_{num_experts}e_fwd_bwd_tokens_per_s",
            f"Switch layer fwd+bwd, {num_experts} experts, ours vs SwitchTransformersSparseMLP, {shape}",
            tokens, timings,
            note=f"cost over a dense FFN: ours {over_dense['ours']:.2f}×, theirs {over_dense['theirs']:.2f}×",
        ))  # fmt: skip
        rows.append(row(
            f"switch_{num_experts}e_vs_dense_tokens_per_s",
            f"Switch layer fwd+bwd, {num_experts} experts, ours vs a dense FFN of the same active FLOPs, {shape}",
            "tokens/s", tokens / timings["ours"].median, tokens / timings["dense"].median,
            timings=(timings["ours"], timings["dense"]), note="'theirs' column: the dense FFN",
        ))  # fmt: skip
    return rows


if __name__ == "__main__":
    transformers.logging.set_verbosity_error()
    import argparse
    from dataclasses import replace

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (seconds on a CPU)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    parser.add_argument("--batch", type=int, default=None, help="sequences of 512 tokens (default 8)")
    args = parser.parse_args()
    sizes = replace(QUICK if args.quick else DEFAULT, device=args.device, dtype=args.dtype)
    if args.batch:
        sizes = replace(sizes, batch=args.batch)
    found: dict = {}
    for r in moe_rows(sizes, found, lambda stage: print(f"[bench] {stage} …", file=sys.stderr, flush=True)):
        print(
            f"{r['benchmark']}: ours {r['ours']:,.1f} theirs {r['theirs']:,.1f} {r['unit']} ({r['ratio']:.2f}×)"
        )
    print("checks:", found)
