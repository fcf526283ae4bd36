"""PPO-ptx (InstructGPT §3.5): rollout and update speed by response length, and the memory a LoRA
policy saves, against transformers' own GPT-2 in the same run.

    python benchmarks/ppo.py [--quick] [--large] [--threads N] [--no-memory] [--out benchmarks/ppo_results.json]

The policy is a GPT-2 of the InstructGPT pipeline's size (hidden 128, 4 layers, 4 heads, 256 positions,
the chat tokenizer's 2053 ids; ``--large``: hidden 512, 8 layers, 8 heads), the value and reward models
GPT-2 sequence classifiers of the same size, the prompts the embedded instruction prompts (at most
``prompt`` tokens, left-padded), the ptx term on (random-token pretraining blocks). "Ours" runs
``PPOTrainer`` on the zoo's models; "theirs" runs the same ``PPOTrainer`` on transformers'
``GPT2LMHeadModel`` / ``GPT2ForSequenceClassification`` holding the same weights
(``convert_to_transformers``). Every response is forced to the full length (``min_new_tokens`` =
``max_new_tokens``) so that each length is timed as stated. Rows, at response lengths 16, 32, 64, 128:

1. rollout generation, tokens/s (new tokens): ``policy.generate`` with the KV cache, sampling at
   temperature 1, exactly as ``PPOTrainer._generate_rollout`` calls it, ours and theirs interleaved;
2. PPO update, milliseconds per sample: ``PPOTrainer._ppo_update`` — one PPO epoch over one rollout of
   ``batch`` episodes in mini-batches of ``mini_batch``: policy + value forward/backward, the clipped
   losses, the ptx loss on ``ptx_batch`` × ``ptx_block`` tokens per mini-batch, both AdamW steps;
3. memory of a short PPO-ptx run (one rollout + one update) at ``memory_*`` sizes, "ours" = a LoRA
   policy with ``ref_policy=None`` (the reference is the adapter switched off), "theirs" = a full
   policy with a full frozen copy as reference (both with value + reward model): peak RSS added after
   the imports, each in a fresh subprocess (``timing.peak_rss_delta_bytes``: the kernel's RSS
   high-water mark, i.e. ``ru_maxrss``, reset after the imports); the bytes of the models held
   (parameters + buffers, shared storage counted once); and the training state (trainable parameters'
   gradients + AdamW's two moments), by count.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import transformers
from torch import nn

if __package__ in (None, ""):  # run as a script: make `benchmarks` importable from the repo root
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.timing import (  # noqa: E402
    machine_info,
    machine_lines,
    peak_rss_delta_bytes,
    ratio_table,
    row,
    throughput_row,
    time_interleaved,
)
from hf_paper_models import convert_to_transformers, preset  # noqa: E402
from hf_paper_models.models.gpt2 import (  # noqa: E402
    PaperGPT2ForSequenceClassification,
    PaperGPT2LMHeadModel,
)
from hf_paper_models.rlhf.ppo import PPOConfig, PPOTrainer  # noqa: E402

MIB = 2**20


@dataclass(frozen=True)
class PPOSizes:
    """Everything the run's cost depends on. ``DEFAULT`` takes a few minutes on 2 shared cores."""

    hidden: int = 128  # the InstructGPT pipeline's policy (hf_paper_models/instructgpt.py)
    layers: int = 4
    heads: int = 4
    positions: int = 256
    vocab: int = 2048  # BPE merges target; the chat tokenizer adds 5 special ids (2053)
    prompt: int = 32  # max_prompt_length
    batch: int = 16  # rollout_batch_size
    mini_batch: int = 8
    ptx_batch: int = 8  # PPOConfig's defaults
    ptx_block: int = 128
    lengths: tuple[int, ...] = (16, 32, 64, 128)
    warmup: int = 1
    repeats: int = 3
    measure_memory: bool = True
    memory_hidden: int = 512
    memory_layers: int = 8
    memory_heads: int = 8
    memory_new_tokens: int = 32
    lora_r: int = 16


DEFAULT = PPOSizes()
LARGE = dataclasses.replace(DEFAULT, hidden=512, layers=8, heads=8)
QUICK = PPOSizes(
    hidden=32,
    layers=2,
    heads=2,
    positions=64,
    vocab=300,
    prompt=8,
    batch=4,
    mini_batch=2,
    ptx_batch=2,
    ptx_block=16,
    lengths=(4, 8),
    warmup=1,
    repeats=1,
    memory_hidden=64,
    memory_layers=2,
    memory_heads=2,
    memory_new_tokens=4,
    lora_r=4,
)


# ------------------------------------------------------------------------------------------------
# Models, data, trainers
# ------------------------------------------------------------------------------------------------


def save_tokenizer(s: PPOSizes, folder: Path) -> Path:
    """The pipeline's chat tokenizer (byte-level BPE with role, end and pad tokens), saved for the
    memory subprocesses."""
    from hf_paper_models.tokenizers import chat_tokenizer

    chat_tokenizer(vocab_size=s.vocab, cache_dir=folder / "cache").save_pretrained(folder / "tokenizer")
    return folder / "tokenizer"


def load_tokenizer(path: str | Path) -> Any:
    return transformers.AutoTokenizer.from_pretrained(str(path))


def gpt2_config(tok: Any, s: PPOSizes, hidden: int, layers: int, heads: int, **extra) -> Any:
    return preset(
        "gpt2-small", vocab_size=len(tok), hidden_size=hidden, num_hidden_layers=layers,
        num_attention_heads=heads, max_position_embeddings=s.positions, bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, **extra,
    )  # fmt: skip


def our_models(
    tok: Any, s: PPOSizes, hidden: int, layers: int, heads: int, seed: int = 0, reference: bool = True
) -> dict[str, nn.Module | None]:
    """Policy, its frozen reference copy (``None`` without ``reference``), value model and reward model
    (the value model starts as a copy of the reward model, InstructGPT App. C.4)."""
    torch.manual_seed(seed)
    policy = PaperGPT2LMHeadModel(gpt2_config(tok, s, hidden, layers, heads))
    reward = PaperGPT2ForSequenceClassification(gpt2_config(tok, s, hidden, layers, heads, num_labels=1))
    ref = copy.deepcopy(policy) if reference else None
    return {"policy": policy, "ref": ref, "value": copy.deepcopy(reward), "reward": reward}


def data(tok: Any, s: PPOSizes) -> tuple[Any, Any]:
    """(prompts, ptx blocks): the embedded instruction prompts and random-token pretraining blocks."""
    from datasets import Dataset

    from hf_paper_models.data.instructions import prompt_dataset

    prompts = prompt_dataset(max(64, s.batch), "train", seed=5).select_columns(["prompt"])
    generator = torch.Generator().manual_seed(3)
    blocks = torch.randint(0, len(tok), (max(64, 2 * s.ptx_batch), s.ptx_block), generator=generator)
    return prompts, Dataset.from_dict({"input_ids": blocks.tolist()})


def make_trainer(
    s: PPOSizes, tok: Any, models: dict[str, nn.Module | None], new_tokens: int, out: str | Path
) -> PPOTrainer:
    """A PPO-ptx trainer whose every response is exactly ``new_tokens`` long (EOS suppressed until then)."""
    prompts, ptx = data(tok, s)
    config = PPOConfig(
        output_dir=str(out), seed=0, num_rollouts=1, rollout_batch_size=s.batch, mini_batch_size=s.mini_batch,
        ppo_epochs=1, max_new_tokens=new_tokens, max_prompt_length=s.prompt, kl_coef=0.02, ptx_coef=1.0,
        ptx_batch_size=s.ptx_batch, ptx_block_size=s.ptx_block, report_to="none", save_steps=0,
        resume_from_checkpoint="no",
    )  # fmt: skip
    trainer = PPOTrainer(
        config, models["policy"], models["ref"], models["value"], reward_model=models["reward"],
        processing_class=tok, train_dataset=prompts, ptx_dataset=ptx,
    )  # fmt: skip
    trainer.generation_config.min_new_tokens = new_tokens
    return trainer


def generate_fn(trainer: PPOTrainer, outputs: dict, name: str) -> Callable[[], None]:
    """One rollout's generation, as ``PPOTrainer._generate_rollout`` calls it (same prompts each time)."""
    query, mask = trainer._pad(
        [trainer.prompt_ids[i] for i in range(trainer.config.rollout_batch_size)], left=True
    )

    def call() -> None:
        torch.manual_seed(0)
        with torch.no_grad(), trainer.accelerator.autocast():
            outputs[name] = trainer.policy.generate(
                input_ids=query, attention_mask=mask, generation_config=trainer.generation_config
            )[:, query.shape[1] :]

    return call


# ------------------------------------------------------------------------------------------------
# Rows: speed by response length
# ------------------------------------------------------------------------------------------------


def length_rows(s: PPOSizes, tok: Any, checks: dict, out: Path, stage: Callable[[str], None]) -> list[dict]:
    ours_models = our_models(tok, s, s.hidden, s.layers, s.heads)
    shape = f"{s.layers}×{s.hidden}, batch {s.batch}, prompt ≤{s.prompt} tok"
    rows = []
    for length in s.lengths:
        stage(f"PPO, response length {length}")
        mine = {k: copy.deepcopy(m) for k, m in ours_models.items()}
        theirs = {k: convert_to_transformers(m) for k, m in mine.items()}
        trainers = {
            "ours": make_trainer(s, tok, mine, length, out / f"ours{length}"),
            "theirs": make_trainer(s, tok, theirs, length, out / f"theirs{length}"),
        }
        outputs: dict[str, torch.Tensor] = {}
        timings = time_interleaved(
            {name: generate_fn(t, outputs, name) for name, t in trainers.items()}, s.warmup, s.repeats
        )
        assert outputs["ours"].shape == (s.batch, length), outputs["ours"].shape
        checks[f"ppo_generate_L{length}_same_tokens"] = bool(torch.equal(outputs["ours"], outputs["theirs"]))
        rows.append(
            throughput_row(
                f"ppo_rollout_L{length}_tokens_per_s",
                f"PPO rollout generate (KV cache, sampled), {shape}, {length} new tok",
                s.batch * length,
                timings,
            )
        )
        rollouts = {name: t._generate_rollout(0) for name, t in trainers.items()}
        checks[f"ppo_rollout_L{length}_logprob_max_abs_diff"] = (
            (rollouts["ours"].logprobs - rollouts["theirs"].logprobs).abs().max().item()
        )
        timings = time_interleaved(
            {name: (lambda t=t, r=rollouts[name]: t._ppo_update(0, r)) for name, t in trainers.items()},
            s.warmup,
            s.repeats,
        )
        rows.append(
            row(
                f"ppo_update_L{length}_ms_per_sample",
                f"PPO-ptx update (1 epoch, mini-batch {s.mini_batch}, ptx {s.ptx_batch}×{s.ptx_block}), "
                f"{shape}, {length} response tok",
                "ms/sample",
                1e3 * timings["ours"].median / s.batch,
                1e3 * timings["theirs"].median / s.batch,
                better="lower",
                timings=(timings["ours"], timings["theirs"]),
            )
        )
        del trainers, rollouts, mine, theirs
    return rows


def scaling(rows: list[dict], lengths: tuple[int, ...]) -> dict[str, dict[str, float]]:
    """Per length: tokens/s of generation and seconds/sample of the update, each also relative to the shortest."""
    by_key = {r["key"]: r for r in rows}
    table = {}
    for length in lengths:
        gen, upd = (
            by_key[f"ppo_rollout_L{length}_tokens_per_s"],
            by_key[f"ppo_update_L{length}_ms_per_sample"],
        )
        base_gen = by_key[f"ppo_rollout_L{lengths[0]}_tokens_per_s"]
        base_upd = by_key[f"ppo_update_L{lengths[0]}_ms_per_sample"]
        table[str(length)] = {
            "rollout_tokens_per_s_ours": gen["ours"],
            "rollout_tokens_per_s_theirs": gen["theirs"],
            "rollout_seconds_per_sample_ours": length / gen["ours"],
            "update_seconds_per_sample_ours": upd["ours"] / 1e3,
            "update_seconds_per_sample_theirs": upd["theirs"] / 1e3,
            "update_vs_shortest_ours": upd["ours"] / base_upd["ours"],
            "rollout_tokens_per_s_vs_shortest_ours": gen["ours"] / base_gen["ours"],
        }
    return table


# ------------------------------------------------------------------------------------------------
# Rows: memory, LoRA (reference = adapter off) vs a full frozen copy
# ------------------------------------------------------------------------------------------------


def memory_models(tok: Any, s: PPOSizes, kind: str) -> dict[str, nn.Module | None]:
    """The models a run holds: ``full`` = policy + reference copy + value + reward; ``lora`` = a LoRA
    policy (its base frozen, shared with the reference) + value + reward."""
    models = our_models(tok, s, s.memory_hidden, s.memory_layers, s.memory_heads, reference=kind == "full")
    if kind == "lora":
        from peft import LoraConfig, get_peft_model

        lora = LoraConfig(r=s.lora_r, target_modules="all-linear", task_type="CAUSAL_LM")
        models["policy"] = get_peft_model(models["policy"], lora)
    return models


def held_bytes(models: dict[str, nn.Module | None]) -> dict[str, int]:
    """Parameters + buffers of the models (each storage once) and the training state: gradients and
    AdamW's two moments of every trainable parameter of the policy and the value model (the trainer
    freezes the reference and the reward model; a PEFT policy trains only its adapter)."""
    seen: set[int] = set()
    held = count = 0
    for model in models.values():
        if model is None:
            continue
        for tensor in [*model.parameters(), *model.buffers()]:
            if tensor.data_ptr() not in seen:
                seen.add(tensor.data_ptr())
                held += tensor.numel() * tensor.element_size()
                count += tensor.numel()
    trainable = sum(
        p.numel() * p.element_size()
        for name in ("policy", "value")
        for p in models[name].parameters()
        if p.requires_grad
    )
    return {"model_bytes": held, "model_elements": count, "training_state_bytes": 3 * trainable}


def memory_run(sizes: dict, kind: str, tokenizer_path: str, out: str) -> None:
    """Child-process body: build the models and a trainer, run one rollout and one PPO-ptx update."""
    s = PPOSizes(**{k: tuple(v) if isinstance(v, list) else v for k, v in sizes.items()})
    tok = load_tokenizer(tokenizer_path)
    models = memory_models(tok, s, kind)
    trainer = make_trainer(s, tok, models, s.memory_new_tokens, out)
    trainer._ppo_update(0, trainer._generate_rollout(0))


def memory_script(s: PPOSizes, kind: str, tokenizer_path: Path, out: Path) -> str:
    """Imports (and the lazily imported modules a run touches), then ``reset_peak()``, then the run."""
    return (
        "import peft, accelerate, datasets\n"
        "from benchmarks.ppo import memory_run\n"
        "import transformers.models.gpt2.modeling_gpt2\n"
        "reset_peak()\n"
        f"memory_run(json.loads({json.dumps(asdict(s))!r}), {kind!r}, {str(tokenizer_path)!r}, {str(out)!r})\n"
    )


def memory_rows(s: PPOSizes, tok: Any, tokenizer_path: Path, out: Path, checks: dict) -> list[dict]:
    counted = {kind: held_bytes(memory_models(tok, s, kind)) for kind in ("lora", "full")}
    shape = f"{s.memory_layers}×{s.memory_hidden}, batch {s.batch}, {s.memory_new_tokens} new tok"
    who = "ours = LoRA policy, ref_policy=None (adapter off); theirs = full policy + full frozen copy"
    rows = []
    if s.measure_memory:
        peak = {
            kind: peak_rss_delta_bytes(memory_script(s, kind, tokenizer_path, out / f"memory_{kind}")) / MIB
            for kind in ("lora", "full")
        }
        rows.append(
            row(
                "ppo_memory_peak_rss_mib",
                f"PPO-ptx run peak RSS after imports (subprocess), {shape}",
                "MiB",
                peak["lora"],
                peak["full"],
                better="lower",
                note=f"{who}; both with value + reward model; 1 rollout + 1 update",
            )
        )
    rows.append(
        row(
            "ppo_memory_models_mib",
            f"model parameters + buffers held, {shape}",
            "MiB",
            counted["lora"]["model_bytes"] / MIB,
            counted["full"]["model_bytes"] / MIB,
            better="lower",
            note=f"{who}; elements {counted['lora']['model_elements']:,} vs {counted['full']['model_elements']:,}",
        )
    )
    rows.append(
        row(
            "ppo_memory_training_state_mib",
            f"gradients + AdamW moments of the trainable parameters, {shape}",
            "MiB",
            counted["lora"]["training_state_bytes"] / MIB,
            counted["full"]["training_state_bytes"] / MIB,
            better="lower",
            note="3 × trainable bytes (policy + value model); the value model is trained in full in both",
        )
    )
    for entry in rows:
        entry.update(lora=counted["lora"], full=counted["full"])
    return rows


# ------------------------------------------------------------------------------------------------
# Report
# ------------------------------------------------------------------------------------------------


def ppo_rows(
    s: PPOSizes, checks: dict, stage: Callable[[str], None] = lambda _: None
) -> tuple[list[dict], dict]:
    """Every row at ``s``, and the scaling table by response length."""
    transformers.logging.set_verbosity_error()
    with tempfile.TemporaryDirectory(prefix="bench_ppo_") as tmp:
        tmp = Path(tmp)
        tokenizer_path = save_tokenizer(s, tmp)
        tok = load_tokenizer(tokenizer_path)
        checks["ppo_vocab_size"] = len(tok)
        rows = length_rows(s, tok, checks, tmp, stage)
        stage("PPO memory, LoRA vs full copy")
        rows.extend(memory_rows(s, tok, tokenizer_path, tmp, checks))
    return rows, scaling(rows, s.lengths)


def format_value(value: float, unit: str) -> str:
    if value < 10:
        return f"{value:,.2f}"
    return f"{value:,.1f}" if value < 1000 else f"{value:,.0f}"


def markdown(results: dict) -> str:
    lines = [
        f"# PPO-ptx benchmark ({results['run']} run)",
        "",
        *machine_lines(results),
        f"- checks: {json.dumps(results['checks'])}",
        *([results["note"]] if results.get("note") else []),
        f"- wall time {results['elapsed_s']:.0f} s",
        "",
        *ratio_table(results["rows"], format_value),
    ]
    lines += [
        "",
        "Scaling with response length (ours; theirs in brackets):",
        "",
        "| response tok | rollout tok/s | rollout ms/sample | update ms/sample | update vs shortest |",
        "|---:|---:|---:|---:|---:|",
    ]
    for length, v in results["scaling"].items():
        lines.append(
            f"| {length} | {v['rollout_tokens_per_s_ours']:,.0f} ({v['rollout_tokens_per_s_theirs']:,.0f}) | "
            f"{v['rollout_seconds_per_sample_ours'] * 1e3:,.1f} | "
            f"{v['update_seconds_per_sample_ours'] * 1e3:,.1f} ({v['update_seconds_per_sample_theirs'] * 1e3:,.1f}) | "
            f"{v['update_vs_shortest_ours']:.2f}× |"
        )
    return "\n".join(lines)


def busy_note(machine: dict) -> str:
    """A warning for the header when other processes competed for the CPUs."""
    cpus = machine["logical_cpus"] or 1
    load = max(machine["load_average_at_start"][0], os.getloadavg()[0])
    if load <= 1.5 * cpus:
        return ""
    return (
        f"- **machine busy** (load average up to {load:.1f} on {cpus} CPUs, other jobs running): "
        "absolute timings are inflated and noisy; ours and theirs were interleaved, so compare ratios"
    )


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes; a few seconds")
    parser.add_argument(
        "--large", action="store_true", help="a hidden-512, 8-layer policy for the speed rows"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch intra-op threads (0: torch's default); 1 is steadier on busy cores",
    )
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-RSS subprocesses")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "ppo_results.json")
    args = parser.parse_args(argv)
    sizes, label = (
        (QUICK, "quick") if args.quick else (LARGE, "large") if args.large else (DEFAULT, "default")
    )
    if args.no_memory:
        sizes = dataclasses.replace(sizes, measure_memory=False)
    if args.threads:
        torch.set_num_threads(args.threads)
    start = time.perf_counter()
    checks: dict = {}
    machine = machine_info()
    rows, table = ppo_rows(
        sizes, checks, lambda stage: print(f"[bench] {stage} …", file=sys.stderr, flush=True)
    )
    results = {
        "run": label,
        "machine": machine,
        "sizes": asdict(sizes),
        "checks": checks,
        "rows": rows,
        "scaling": table,
        "elapsed_s": time.perf_counter() - start,
        "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
        "note": busy_note(machine),
        "median_spread": statistics.median(
            (max(r[k]) - min(r[k])) / statistics.median(r[k])
            for r in rows
            for k in ("ours_seconds", "theirs_seconds")
            if k in r
        ),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(markdown(results))
    print(f"\nwrote {args.out}")
    return results


if __name__ == "__main__":
    main()
