"""Speed and memory of the zoo's GPT-2/GPT-3 against transformers' own GPT-2, in one run.

    python benchmarks/run.py [--quick] [--out benchmarks/results.json]

Every row is measured in this process, ours and the reference interleaved, and reported as a ratio
ours/theirs (higher is better for throughput and MFU, lower for memory). MFU is relative to an fp32
matmul measured in the same run, not to a datasheet peak. Rows:

1. train step (forward + backward + AdamW, fp32, dropout 0): PaperGPT2LMHeadModel vs GPT2LMHeadModel
2. cached greedy decoding with ``generate`` at batch 1 and 8
3. model FLOP utilisation of the train step
4. GPT-3's banded attention kernel vs dense causal SDPA (one op, forward + backward), its memory,
   and whole-model GPT-3 (alternating dense/banded) vs GPT-2 (all dense) forward at long context
5. the Transformer, BERT and T5 against Marian, BERT and T5 (``benchmarks/encoders.py``): train
   step and greedy decoding
6. the Switch layer (forward + backward) at 8, 64 and 256 experts against transformers'
   ``SwitchTransformersSparseMLP`` and against a dense FFN of the same active FLOPs
   (``benchmarks/moe.py``)
7. PPO-ptx (``benchmarks/ppo.py``): rollout generation tokens/s and PPO update ms/sample at response
   lengths 16-128 (``PPOTrainer`` on our GPT-2 vs on transformers' with the same weights), and the memory
   of a LoRA policy with the adapter-off reference against a full frozen copy
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
import transformers
from torch import nn

if __package__ in (None, ""):  # run as a script: make `benchmarks` importable from the repo root
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import encoders  # noqa: E402
from benchmarks import moe as moe_bench  # noqa: E402
from benchmarks import ppo as ppo_bench  # noqa: E402
from benchmarks.attention_ops import attention_inputs, banded_op, dense_op  # noqa: E402
from benchmarks.timing import (  # noqa: E402
    Timing,
    machine_info,
    machine_lines,
    matmul_workload,
    peak_rss_delta_bytes,
    ratio_table,
    row,
    throughput_row,
    time_interleaved,
    train_step_fn,
)
from hf_paper_models.convert import convert_from_transformers  # noqa: E402
from hf_paper_models.models.gpt2 import PaperGPT2Config  # noqa: E402
from hf_paper_models.models.gpt3 import PaperGPT3Config, PaperGPT3Model  # noqa: E402

MIB = 2**20
FLOPS_FORMULA = (
    "train FLOPs/token = 6·(N + V·d) + 12·L·d·T, with N = non-embedding parameters (Kaplan et al. "
    "2020), V·d = the tied output projection (a matmul every token pays), 12·L·d·T = attention "
    "scores and weighted sum, forward + backward, no causal halving (PaLM, App. B)"
)


@dataclass(frozen=True)
class Sizes:
    """Everything the run's cost depends on. ``DEFAULT`` takes ~5 min on 2 idle cores, ``QUICK`` < 60 s."""

    layers: int = 6
    hidden: int = 512
    heads: int = 8
    vocab: int = 50257
    batch: int = 8
    seq: int = 256
    train_warmup: int = 1
    train_repeats: int = 5
    prompt: int = 32
    new_tokens: int = 128
    decode_batches: tuple[int, ...] = (1, 8)
    decode_repeats: int = 3
    matmul_size: int = 2048
    matmul_count: int = 4
    attention_tokens: int = 4096
    window: int = 256
    attention_repeats: int = 5
    model_layers: int = 4
    model_tokens: int = 2048
    model_repeats: int = 3
    measure_memory: bool = True
    encoders: encoders.EncoderSizes = encoders.DEFAULT  # the Transformer, BERT and T5 rows
    moe: moe_bench.MoESizes = moe_bench.DEFAULT  # the Switch layer rows
    ppo: ppo_bench.PPOSizes = ppo_bench.DEFAULT  # the PPO-ptx rows


DEFAULT = Sizes()
QUICK = Sizes(
    layers=2,
    hidden=128,
    heads=4,
    vocab=2048,
    batch=2,
    seq=64,
    train_repeats=2,
    prompt=8,
    new_tokens=16,
    decode_repeats=2,
    matmul_size=512,
    matmul_count=4,
    attention_tokens=1024,
    window=128,
    attention_repeats=2,
    model_layers=2,
    model_tokens=512,
    model_repeats=2,
    encoders=encoders.QUICK,
    moe=moe_bench.QUICK,
    ppo=ppo_bench.QUICK,
)


# ------------------------------------------------------------------------------------------------
# Models: transformers' GPT-2 and ours with the same weights
# ------------------------------------------------------------------------------------------------


def their_config(sizes: Sizes, layers: int, positions: int) -> transformers.GPT2Config:
    """transformers' GPT-2 at ``sizes`` with every dropout off (so ours and theirs compute the same)."""
    eos = sizes.vocab - 1
    return transformers.GPT2Config(
        vocab_size=sizes.vocab,
        n_positions=positions,
        n_embd=sizes.hidden,
        n_layer=layers,
        n_head=sizes.heads,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=eos,
        eos_token_id=eos,
        pad_token_id=eos,
    )


def our_config(
    theirs: transformers.GPT2Config, config_class: type = PaperGPT2Config, **extra
) -> PaperGPT2Config:
    """Our config with the same sizes as ``theirs`` (used when ``convert_from_transformers`` is unavailable)."""
    return config_class(
        vocab_size=theirs.vocab_size,
        max_position_embeddings=theirs.n_positions,
        hidden_size=theirs.n_embd,
        num_hidden_layers=theirs.n_layer,
        num_attention_heads=theirs.n_head,
        intermediate_size=4 * theirs.n_embd,
        activation_function=theirs.activation_function,
        layer_norm_epsilon=theirs.layer_norm_epsilon,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=theirs.bos_token_id,
        eos_token_id=theirs.eos_token_id,
        pad_token_id=theirs.pad_token_id,
        **extra,
    )


def copy_weights(theirs: nn.Module, ours: nn.Module) -> None:
    """Load transformers' GPT-2 weights into ours by name; ``Conv1D`` (in, out) becomes ``Linear`` (out, in)."""
    from transformers.pytorch_utils import Conv1D

    transposed = {f"{name}.weight" for name, module in theirs.named_modules() if isinstance(module, Conv1D)}
    expected = set(ours.state_dict())
    state = {k: (v.t() if k in transposed else v) for k, v in theirs.state_dict().items() if k in expected}
    ours.load_state_dict(state, strict=True)


def gpt2_pair(sizes: Sizes, layers: int, positions: int, lm_head: bool) -> tuple[nn.Module, nn.Module]:
    """(ours, theirs) GPT-2 with identical weights, ours converted with ``convert_from_transformers``."""
    torch.manual_seed(0)
    config = their_config(sizes, layers, positions)
    theirs = (transformers.GPT2LMHeadModel if lm_head else transformers.GPT2Model)(config)
    return convert_from_transformers(theirs), theirs


def gpt3_like(sizes: Sizes, theirs: nn.Module) -> PaperGPT3Model:
    """GPT-3 (alternating dense / banded, window ``sizes.window``) carrying transformers' GPT-2 weights."""
    config = our_config(theirs.config, PaperGPT3Config, sliding_window=sizes.window)
    ours = PaperGPT3Model(config)
    copy_weights(theirs, ours)
    return ours


# ------------------------------------------------------------------------------------------------
# Rows
# ------------------------------------------------------------------------------------------------


def bench_train(sizes: Sizes, checks: dict) -> tuple[dict, dict[str, Timing], nn.Module, float]:
    """Train-step throughput, ours vs theirs, with a matmul workload (FLOPs returned) timed between steps."""
    ours, theirs = gpt2_pair(sizes, sizes.layers, max(1024, sizes.seq), lm_head=True)
    ours.train()
    theirs.train()
    input_ids = torch.randint(
        0, sizes.vocab, (sizes.batch, sizes.seq), generator=torch.Generator().manual_seed(1)
    )
    with torch.no_grad():
        first = (
            ours(input_ids=input_ids, labels=input_ids).loss,
            theirs(input_ids=input_ids, labels=input_ids).loss,
        )
    checks["train_initial_loss_abs_diff"] = abs(first[0].item() - first[1].item())
    matmul, matmul_flops = matmul_workload(sizes.matmul_size, sizes.matmul_count)
    fns = {
        "ours": train_step_fn(ours, {"input_ids": input_ids, "labels": input_ids}),
        "theirs": train_step_fn(theirs, {"input_ids": input_ids, "labels": input_ids}),
        "matmul": matmul,
    }
    timings = time_interleaved(fns, sizes.train_warmup, sizes.train_repeats)
    tokens = sizes.batch * sizes.seq
    entry = throughput_row(
        "train_tokens_per_s",
        f"train step fwd+bwd+AdamW, {sizes.layers}×{sizes.hidden}, {sizes.batch}×{sizes.seq} tok",
        tokens,
        timings,
    )
    return entry, timings, ours, matmul_flops


def train_flops_per_token(model: nn.Module, sizes: Sizes) -> dict[str, float]:
    transformer = model.transformer
    embedding = transformer.wte.weight.numel() + transformer.wpe.weight.numel()
    non_embedding = sum(p.numel() for p in transformer.parameters()) - embedding
    attention = 12 * sizes.layers * sizes.hidden * sizes.seq
    head = sizes.vocab * sizes.hidden
    return {
        "non_embedding_params": non_embedding,
        "head_params": head,
        "flops_per_token": 6 * (non_embedding + head) + attention,
        "flops_per_token_kaplan": 6 * non_embedding + attention,
    }


def mfu_row(sizes: Sizes, model: nn.Module, timings: dict[str, Timing], matmul_flops: float) -> dict:
    """Achieved train FLOP/s over the matmul's FLOP/s, both medians of the same interleaved rounds."""
    flops = train_flops_per_token(model, sizes)
    tokens = sizes.batch * sizes.seq
    peak = matmul_flops / timings["matmul"].median
    best_peak = matmul_flops / min(timings["matmul"].samples)
    median = {
        who: flops["flops_per_token"] * tokens / timings[who].median / peak for who in ("ours", "theirs")
    }
    best = {who: flops["flops_per_token"] * tokens / min(timings[who].samples) / best_peak for who in median}
    kaplan = {who: median[who] * flops["flops_per_token_kaplan"] / flops["flops_per_token"] for who in median}
    entry = row(
        "train_mfu",
        "train MFU vs fp32 matmul timed between the steps",
        "fraction",
        median["ours"],
        median["theirs"],
        note=f"{flops['flops_per_token'] / 1e6:.1f} MFLOP/token; best-of: {best['ours']:.1%} / {best['theirs']:.1%}; "
        f"6N+12LdT alone: {kaplan['ours']:.1%} / {kaplan['theirs']:.1%}",
    )
    entry.update(
        flops,
        peak_flops_per_second=peak,
        matmul_seconds=timings["matmul"].samples,
        mfu_best_ours=best["ours"],
        mfu_best_theirs=best["theirs"],
        mfu_kaplan_ours=kaplan["ours"],
        mfu_kaplan_theirs=kaplan["theirs"],
    )
    return entry


def bench_decode(sizes: Sizes, batch: int, checks: dict) -> dict:
    ours, theirs = gpt2_pair(sizes, sizes.layers, 1024, lm_head=True)
    ours.eval()
    theirs.eval()
    prompt = torch.randint(
        0, sizes.vocab - 1, (batch, sizes.prompt), generator=torch.Generator().manual_seed(2)
    )
    kwargs = dict(
        attention_mask=torch.ones_like(prompt),
        max_new_tokens=sizes.new_tokens,
        min_new_tokens=sizes.new_tokens,
        do_sample=False,
        use_cache=True,
        pad_token_id=sizes.vocab - 1,
    )
    outputs = {}

    def generate(name: str, model: nn.Module) -> Callable[[], None]:
        def call() -> None:
            outputs[name] = model.generate(prompt, **kwargs)

        return call

    timings = time_interleaved(
        {"ours": generate("ours", ours), "theirs": generate("theirs", theirs)}, 1, sizes.decode_repeats
    )
    checks[f"decode_b{batch}_same_tokens"] = bool(torch.equal(outputs["ours"], outputs["theirs"]))
    assert outputs["ours"].shape[1] == sizes.prompt + sizes.new_tokens
    return throughput_row(
        f"decode_b{batch}_tokens_per_s",
        f"greedy generate, batch {batch}, {sizes.prompt} prompt + {sizes.new_tokens} new tok",
        batch * sizes.new_tokens,
        timings,
    )


# ------------------------------------------------------------------------------------------------
# GPT-3: banded vs dense attention
# ------------------------------------------------------------------------------------------------


def bench_attention_op(sizes: Sizes) -> dict:
    q, k, v, grad = attention_inputs(sizes.heads, sizes.attention_tokens, sizes.hidden // sizes.heads)
    fns = {"ours": lambda: banded_op(q, k, v, grad, sizes.window), "theirs": lambda: dense_op(q, k, v, grad)}
    timings = time_interleaved(fns, 1, sizes.attention_repeats)
    return throughput_row(
        "attention_op_tokens_per_s",
        f"attention op fwd+bwd, {sizes.attention_tokens} tok, window {sizes.window}, {sizes.heads} heads: "
        "banded (ours) vs dense causal SDPA",
        sizes.attention_tokens,
        timings,
        note="ratio = dense time / banded time",
    )


def memory_script(sizes: Sizes, kind: str) -> str:
    """Child-process code: build inputs, run the op once to warm up, reset the peak, run it again."""
    call = f"banded_op(q, k, v, grad, {sizes.window})" if kind == "banded" else "dense_op(q, k, v, grad)"
    return (
        "from benchmarks.attention_ops import attention_inputs, banded_op, dense_op\n"
        f"q, k, v, grad = attention_inputs({sizes.heads}, {sizes.attention_tokens}, "
        f"{sizes.hidden // sizes.heads})\n"
        f"{call}\n"
        "reset_peak()\n"
        f"{call}\n"
    )


def attention_memory_rows(sizes: Sizes) -> list[dict]:
    b, h, n, w = 1, sizes.heads, sizes.attention_tokens, sizes.window
    analytic = row(
        "attention_scores_mib",
        "attention score matrix, analytical (fp32)",
        "MiB",
        b * h * n * (w + max(1, w // 2)) * 4 / MIB,
        b * h * n * n * 4 / MIB,
        better="lower",
        note="banded b·h·n·(w + w/2) (query blocks of w/2) vs dense b·h·n²; flash SDPA never "
        "materialises either",
    )
    rows = [analytic]
    if sizes.measure_memory:
        banded, dense = (
            peak_rss_delta_bytes(memory_script(sizes, kind)) / MIB for kind in ("banded", "dense")
        )
        rows.insert(
            0,
            row(
                "attention_op_peak_rss_mib",
                "attention op fwd+bwd peak RSS delta (subprocess)",
                "MiB",
                banded,
                dense,
                better="lower",
                note="Linux VmHWM after clear_refs, inputs excluded",
            ),
        )
    return rows


def bench_long_forward(sizes: Sizes) -> list[dict]:
    dense_ours, theirs = gpt2_pair(sizes, sizes.model_layers, sizes.model_tokens, lm_head=False)
    banded_ours = gpt3_like(sizes, theirs)
    for model in (dense_ours, theirs, banded_ours):
        model.eval()
    input_ids = torch.randint(
        0, sizes.vocab, (1, sizes.model_tokens), generator=torch.Generator().manual_seed(4)
    )

    def forward(model: nn.Module) -> Callable[[], None]:
        def call() -> None:
            with torch.inference_mode():
                model(input_ids=input_ids, use_cache=False)

        return call

    timings = time_interleaved(
        {"gpt3": forward(banded_ours), "gpt2": forward(dense_ours), "theirs": forward(theirs)},
        1,
        sizes.model_repeats,
    )
    shape = f"{sizes.model_layers}×{sizes.hidden}, 1×{sizes.model_tokens} tok"
    return [
        throughput_row(
            "gpt3_forward_tokens_per_s",
            f"forward {shape}: GPT-3 alternating (ours) vs transformers GPT-2 dense",
            sizes.model_tokens,
            {"ours": timings["gpt3"], "theirs": timings["theirs"]},
            note=f"window {sizes.window}",
        ),
        throughput_row(
            "gpt2_forward_tokens_per_s",
            f"forward {shape}: GPT-2 (ours) vs transformers GPT-2",
            sizes.model_tokens,
            {"ours": timings["gpt2"], "theirs": timings["theirs"]},
        ),
    ]


# ------------------------------------------------------------------------------------------------
# Report
# ------------------------------------------------------------------------------------------------


def format_value(value: float, unit: str) -> str:
    if unit == "fraction":
        return f"{value:.1%}"
    return f"{value:,.1f}" if value < 1000 else f"{value:,.0f}"


def markdown(results: dict) -> str:
    lines = [
        f"# hf_paper_models benchmarks ({results['run']} run)",
        "",
        *machine_lines(results),
        f"- fp32 matmul {results['sizes']['matmul_size']}³: {results['matmul_flops_per_second'] / 1e9:.1f} GFLOP/s "
        "(median, timed between the train steps; the MFU denominator)",
        *busy_warning(results),
        f"- {results['flops_formula']}",
        f"- checks: {results['checks']}",
        f"- wall time {results['elapsed_s']:.0f} s",
        "",
        *ratio_table(results["rows"], format_value),
    ]
    return "\n".join(lines)


def busy_warning(results: dict) -> list[str]:
    """A line for the header when other processes competed for the CPUs during the run."""
    cpus = results["machine"]["logical_cpus"] or 1
    load = max(results["machine"]["load_average_at_start"][0], results["load_average_at_end"][0])
    if load <= 1.5 * cpus:
        return []
    return [
        f"- **machine busy** (load average up to {load:.1f} on {cpus} CPUs): timings are inflated and "
        "noisy; compare ratios, preferably the best-of-runs column, not absolute numbers"
    ]


def run_all(sizes: Sizes, label: str = "custom", progress: Callable[[str], None] = lambda _: None) -> dict:
    """Every benchmark at ``sizes``; returns the JSON-ready results."""
    start = time.perf_counter()

    def stage(name: str) -> None:
        progress(f"{name} (at {time.perf_counter() - start:.0f} s)")

    transformers.logging.set_verbosity_error()
    machine = machine_info()
    checks: dict = {}
    stage("train step, interleaved with the matmul peak")
    train, train_timings, model, matmul_flops = bench_train(sizes, checks)
    mfu = mfu_row(sizes, model, train_timings, matmul_flops)
    rows = [train, mfu]
    del model
    for batch in sizes.decode_batches:
        stage(f"decode batch {batch}")
        rows.append(bench_decode(sizes, batch, checks))
    stage("attention op")
    rows.append(bench_attention_op(sizes))
    stage("attention memory")
    rows.extend(attention_memory_rows(sizes))
    stage("long-context forward")
    rows.extend(bench_long_forward(sizes))
    rows.extend(encoders.encoder_rows(sizes.encoders, checks, stage))
    rows.extend(moe_bench.moe_rows(sizes.moe, checks, lambda name: stage(f"Switch layer, {name}")))
    ppo_sizes = replace(sizes.ppo, measure_memory=sizes.measure_memory and sizes.ppo.measure_memory)
    ppo_rows, ppo_scaling = ppo_bench.ppo_rows(ppo_sizes, checks, lambda name: stage(f"PPO-ptx, {name}"))
    rows.extend(ppo_rows)
    return {
        "run": label,
        "machine": machine,
        "sizes": asdict(sizes),
        "matmul_flops_per_second": mfu["peak_flops_per_second"],
        "flops_formula": FLOPS_FORMULA,
        "checks": checks,
        "rows": rows,
        "ppo_scaling": ppo_scaling,
        "elapsed_s": time.perf_counter() - start,
        "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes; the whole run takes < 60 s")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results.json")
    args = parser.parse_args(argv)
    sizes, label = (QUICK, "quick") if args.quick else (DEFAULT, "default")
    results = run_all(sizes, label, lambda stage: print(f"[bench] {stage} …", file=sys.stderr, flush=True))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(markdown(results))
    print(f"\nwrote {args.out}")
    return results


if __name__ == "__main__":
    main()
