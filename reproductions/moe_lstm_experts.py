"""More experts, lower perplexity at the same compute per token (Shazeer et al. 2017, Figure 2-left / Table 1).

The paper's 1 Billion Word models: LSTM → MoE → LSTM with k = 4 of n experts per token, so every model
spends the same ~8M ops per timestep, and perplexity falls as n grows from 4 to 4096 while the dense
computationally matched baseline (4xLSTM-512: "we replace the MoE layer with two additional 512-unit
LSTM layers", Appendix C) stays above them. Here, at laptop scale on the embedded corpus, the same
family is trained through the causal-LM recipe (``training/pretrain_lm.py`` with
``training/configs/moe_lstm_tiny.yaml``, the recipe users run):

- the dense baseline: the ``lstm-baseline`` preset (4 LSTM layers, no MoE) at the same width d;
- flat MoE-LSTMs (``moe-lstm-4`` preset: LSTM → MoE → LSTM, noisy top-k gating, importance and load
  losses with w = 0.1 added to the training loss) with n = 4, 16, 64 experts, all with the same width d,
  expert hidden size h and k, so only the number of experts (the parameter count) grows.

With the paper's ratios (h = 2d, k = 4) the active experts cost k · 2dh = 16d² multiply-adds per token,
exactly the two extra LSTM layers of the baseline (2 · 8d²): the compute match of the paper, at any d.
The gates' W_g and W_noise (2dn) grow with n, as in the paper; they are reported apart. Every model
sees the same tokens in the same order (same seed, same batch size and number of steps) and is scored
on the whole validation split (cross-entropy alone, no auxiliary loss; perplexity = exp of it).

The claim is decided by a rule fixed here before any run (``CLAIM``): validation perplexity falls
strictly with the number of experts (4 > 16 > 64), and the largest MoE beats the dense baseline.

    python reproductions/moe_lstm_experts.py                     # default: 4 models × 500 steps, CPU
    python reproductions/moe_lstm_experts.py --set experts=4,16,64,256 max_steps=2000
    python reproductions/moe_lstm_experts.py --smoke             # seconds; too small to learn

Also reported from the recipe's logged metrics: the auxiliary losses (the weighted ``aux_loss`` and
its unweighted parts CV(Importance)² and CV(Load)²) and the spread of the expert load (the least and
most loaded expert's share of the tokens, ideal k/n); and, from the saved model, each expert's share
of the validation tokens (no gate noise at evaluation).

The recorded default run (one CPU thread on a shared two-core machine, 568 s for the four models; each
model 500 steps of 16 × 64 tokens, 512,000 training tokens, validation 30,144 tokens): the claim does NOT
hold at this scale. Validation perplexity: dense 4xLSTM 67.9, MoE-4 73.6, MoE-16 73.7, MoE-64 75.6, with
the same 396,288 active parameters per MoE model and 0.40M / 0.59M / 1.39M in total. Untested guesses at
why: less than one epoch of a small corpus is far from the paper's regime (billions of words, where
capacity limits the model), each of n experts is trained on only k/n of the tokens, and the baseline's
two extra layers are recurrent.

**Capacity-limited design (set down and committed 2026-12-06 before its run).** The paper's models see
about a thousand training tokens per non-embedding parameter of the dense baseline (4xLSTM-512, ~8M
parameters, 10 epochs of ~0.8B words); the 8,000-step run above saw 62 (8.2M tokens, 133k parameters),
where a dense model is far from the capacity limit that experts lift. The same rule, at the paper's
ratio: width d = 32, expert hidden h = 64 (2d, k = 4 of 4 / 16 / 64 experts), 8,000 steps of 64 × 64
tokens (32.8M tokens, ~970 per non-embedding parameter of the dense 4xLSTM, 33,792), the corpus grown to 80,000
documents (~2.7 epochs), 480 validation blocks. To fit the session's CPU time it runs as two
processes on one vocabulary (decided before any MoE result): the dense baseline and MoE-64 (the decisive
pair), then MoE-4 and MoE-16 with the first run's tokenizer cache copied in::

    python reproductions/moe_lstm_experts.py --output-dir reproductions/results/moe_lstm_experts_capacity \
        --set experts=64 hidden_size=32 expert_hidden_size=64 batch_size=64 max_steps=8000 \
              max_documents=80000 validation_blocks=480 eval_steps=500
    # then, with .../moe_lstm_experts_capacity/tokenizer-cache copied into the new folder:
    python reproductions/moe_lstm_experts.py --output-dir reproductions/results/moe_lstm_experts_capacity_4_16 \
        --set experts=4,16 baseline=false hidden_size=32 ...  # the same settings

Result (one CPU thread, 37 + 35 min): validation perplexity dense 32.11, MoE-4 36.29, MoE-16 33.77,
MoE-64 36.04: the claim does NOT hold in this regime either (not monotone; the dense model best).

**Knowledge design (set down and committed 2026-12-06 before its runs).** The paper's gains come
from parameters that hold what a dense model of the same compute cannot; the embedded grammar has a
lexicon of a few hundred words and little else to memorise. With ``facts=30`` every document ends with
15-30 sentences from the embedded gazetteer (20,000 towns, Zipf 1.1, each with a fixed thing, animal and
mayor: about 60% of the tokens), knowledge in a long tail that only parameters can hold. An
exploratory probe before this design (a prototype of the same gazetteer with another seed; dense and
MoE-64 only, d = 64, 16,000 steps of 16 × 64 tokens) gave dense 6.645 against MoE-64 6.727, the
dense model ahead throughout. The design is that probe's settings, the whole family, the rule
unchanged; two processes on one vocabulary (dense + MoE-4, then MoE-16 + MoE-64)::

    python reproductions/moe_lstm_experts.py --output-dir reproductions/results/moe_lstm_experts_facts \
        --set experts=4 facts=30 max_steps=16000 max_documents=80000 validation_blocks=256 eval_steps=2000
    python reproductions/moe_lstm_experts.py --output-dir reproductions/results/moe_lstm_experts_facts_16_64 \
        --set experts=16,64 baseline=false facts=30 max_steps=16000 max_documents=80000 \
              validation_blocks=256 eval_steps=2000

Result (one CPU thread each, 22 + 24 min): validation perplexity dense 6.743, MoE-4 6.920, MoE-16 6.912,
MoE-64 6.830: monotone in experts, the dense model still best: the claim does NOT hold.

**Probes with towns in equal shares (exploratory, 2026-12-06; not designs).** Under the Zipf law most
towns are seen too rarely for any model to learn their facts and the common ones fit in any model, so
the facts may never have filled the dense model. ``fact_towns`` / ``fact_zipf=0`` give the first N towns
equal shares. Dense and MoE-64 only, one vocabulary per probe, one CPU thread each:

- d = 64, ``facts=30``, 8,000 steps, 80,000 documents: 10,000 towns, perplexity dense 9.531 / MoE-64
  9.610; 5,000 towns, 9.408 / 9.498 (``results/moe_lstm_experts_uniform_probe_*``);
- d = 32 (h = 64), ``facts=100`` (about three quarters of the tokens are facts), 16,000 steps of 16 × 64,
  40,000 documents: 3,000 towns, dense 6.421 / MoE-64 6.465; 6,000 towns, 6.535 / 6.593
  (``results/moe_lstm_experts_d32_probe_*``). With 3,000 towns the MoE-64's gap shrinks throughout
  (0.031 nats at step 2,000, 0.016 at 4,000, 0.0094 at 8,000, 0.0068 at 16,000) but does not close.

**The 256-expert design (set down and committed 2026-12-06 before its runs).** The paper's flat family
goes on to 256 experts (``moe-lstm-256``, Table 7), its perplexity still falling there; here 4 → 64
experts gained 0.013 nats in the knowledge design. The closest probe above (d = 32, 3,000 towns in equal
shares, ``facts=100``) with the whole flat family and 256 experts added; the rule over the family:
perplexity falls strictly (4 > 16 > 64 > 256 experts) and MoE-256 beats the dense 4xLSTM. Two processes
on one vocabulary (the byte-level BPE trains identically in separate processes), one CPU thread each::

    python reproductions/moe_lstm_experts.py --output-dir reproductions/results/moe_lstm_experts_256 \
        --set experts=256 hidden_size=32 expert_hidden_size=64 facts=100 fact_towns=3000 fact_zipf=0 \
              max_steps=16000 max_documents=40000 validation_blocks=256 eval_steps=2000
    python reproductions/moe_lstm_experts.py --output-dir reproductions/results/moe_lstm_experts_256_4_16_64 \
        --set experts=4,16,64 baseline=false hidden_size=32 ...  # the same settings

Result (one CPU thread each, 26 + 30 min): validation perplexity dense 6.421, MoE-4 6.480, MoE-16 6.424,
MoE-64 6.465, MoE-256 6.443 (losses 1.8595, 1.8688, 1.8600, 1.8663, 1.8631): not monotone and the dense
model best, so the claim does NOT hold. MoE-16 comes within 0.0005 nats of the dense model; the dense
model and MoE-64 repeat the probe's numbers to the last digit (deterministic on one thread).

**Single-token towns (an exploratory probe after that result; not a design).** The guess: the paper's
word-level vocabulary hands every word's identity to the MoE layer, while here a town is two or three
byte-level BPE pieces the first LSTM layer must compose. ``fact_town_tokens=true`` makes each of the
3,000 towns one whole-word token (vocabulary 5,048); the d = 32 settings above at 8,000 steps, two
processes (dense + MoE-16, 22 min; MoE-64, 12 min; ``results/moe_lstm_experts_town_tokens_probe*``):
perplexity dense 6.529, MoE-16 6.732, MoE-64 6.639. The MoEs fall further behind (MoE-64 0.017 nats
at step 8,000, against 0.009 with BPE towns): the guess is not supported.

Writes ``moe_lstm_experts.json`` and ``moe_lstm_experts.png`` (validation perplexity against the number
of experts with the baseline as a line; validation loss curves) into ``--output-dir``.
"""

from __future__ import annotations

import argparse
import math
import shutil
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hf_paper_models.data.corpus import FACT_TOWNS, FACT_ZIPF  # noqa: E402
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

NAME = "moe_lstm_experts"
ROOT = Path(__file__).resolve().parent.parent
RECIPE = ROOT / "training" / "pretrain_lm.py"
CONFIG = ROOT / "training" / "configs" / "moe_lstm_tiny.yaml"
BASELINE = "lstm-baseline"
CLAIM = (
    "at equal active compute per token (same width, expert size and k), validation perplexity falls "
    "strictly with the number of experts, and the MoE with the most experts has a lower validation "
    "perplexity than the computationally matched dense 4xLSTM baseline"
)
# Logged by the recipe (causal_lm_loss): the train loss, the auxiliary losses, the expert-load spread.
TAGS = (
    "train_loss", "eval_loss", "train_aux_loss", "train_importance_loss", "train_load_loss",
    "train_expert_load_min", "train_expert_load_max", "tokens_per_second",
)  # fmt: skip


@dataclass
class Settings:
    seed: int = 42
    threads: int = 1
    # models: the same d, h and k for every MoE; only the number of experts grows
    experts: str = "4,16,64"  # comma-separated expert counts of the flat MoE-LSTMs
    baseline: bool = True  # also train the dense 4xLSTM baseline (the claim needs it)
    hidden_size: int = 64  # d: embedding, LSTM and MoE width
    expert_hidden_size: int = 128  # h: each expert's ReLU hidden layer (the paper: 2d)
    top_k: int = 4  # k experts per token (the paper's flat models)
    dropout: float = 0.1  # DropProb (Table 7, models up to 256 experts)
    vocab_size: int = 2048  # byte-level BPE trained on the embedded corpus
    # data and training (the recipe's YAML otherwise: Adam, inverse-sqrt schedule, clip 1.0)
    block_size: int = 64
    batch_size: int = 16
    max_steps: int = 500
    learning_rate: float = 2e-3
    warmup_steps: int = 30
    max_documents: int = 0  # 0: the whole embedded corpus
    # > 0: each document ends with up to this many facts from the embedded gazetteer (a long tail of towns
    # with fixed attributes: knowledge to hold in parameters, which the grammar alone barely has)
    facts: int = 0
    fact_towns: int = FACT_TOWNS  # the facts name the gazetteer's first N towns
    fact_zipf: float = FACT_ZIPF  # a town's share ∝ rank^-fact_zipf (0: equal shares)
    fact_town_tokens: bool = False  # each town one token of its own (a word-level vocabulary's view)
    eval_steps: int = 100
    logging_steps: int = 10
    eval_batch_size: int = 32
    # the validation set: its first blocks (0: the whole split; a corpus grown with max_documents grows
    # its validation split too, which every evaluation would then read)
    validation_blocks: int = 0
    keep_runs: bool = False  # keep the recipe's run folders (checkpoints, TensorBoard logs)


SMOKE = dict(
    experts="4,8", hidden_size=16, expert_hidden_size=32, top_k=2, vocab_size=512, block_size=32, batch_size=8,
    max_steps=6, warmup_steps=2, max_documents=60, eval_steps=3, logging_steps=2,
)  # fmt: skip


def load_recipe():
    """``training/pretrain_lm.py`` as a module (it is a script, not part of the package)."""
    return load_script(RECIPE)


def expert_counts(s: Settings) -> list[int]:
    counts = [int(x) for x in s.experts.replace(" ", "").split(",") if x]
    if not counts or counts != sorted(set(counts)) or any(n < s.top_k for n in counts):
        raise ValueError(f"experts={s.experts!r}: increasing counts, each >= top_k={s.top_k}")
    return counts


def model_specs(s: Settings) -> list[dict]:
    """(label, preset, overrides) of each model, the dense baseline first."""
    specs = []
    if s.baseline:
        specs.append(dict(label="4xLSTM (dense)", key="baseline", experts=None, preset=BASELINE,
                          overrides={"dropout": s.dropout}))  # fmt: skip
    for n in expert_counts(s):
        overrides = {
            "num_experts": n,
            "num_experts_per_tok": s.top_k,
            "num_expert_groups": None,
            "dropout": s.dropout,
        }
        specs.append(
            dict(label=f"MoE-{n}", key=f"moe-{n}", experts=n, preset="moe-lstm-4", overrides=overrides)
        )
    return specs


def recipe_argv(spec: dict, s: Settings, run_dir: Path, cache: Path) -> list[str]:
    import json

    if s.validation_blocks % s.eval_batch_size:  # the recipe evaluates whole batches
        raise ValueError(
            f"validation_blocks={s.validation_blocks} must be a multiple of eval_batch_size={s.eval_batch_size}, "
            "so that the recipe's evaluation and the expert-load count read the same blocks."
        )
    argv = [
        "--config", str(CONFIG), "--output_dir", str(run_dir), "--resume_from_checkpoint", "no",
        "--report_to", "tensorboard", "--seed", str(s.seed), "--tokenizer_cache_dir", str(cache),
        "--preset", spec["preset"], "--model_overrides", json.dumps(spec["overrides"]),
        "--hidden_size", str(s.hidden_size), "--intermediate_size", str(s.expert_hidden_size),
        "--max_position_embeddings", str(max(s.block_size, 64)), "--vocab_size", str(s.vocab_size),
        "--block_size", str(s.block_size), "--per_device_train_batch_size", str(s.batch_size),
        "--per_device_eval_batch_size", str(s.eval_batch_size), "--learning_rate", str(s.learning_rate),
        "--warmup_steps", str(s.warmup_steps), "--max_steps", str(s.max_steps),
        "--eval_steps", str(s.eval_steps), "--logging_steps", str(s.logging_steps),
        "--max_eval_batches", str(s.validation_blocks // s.eval_batch_size if s.validation_blocks else 1_000_000),
        "--save_steps", "0", "--save_total_limit", "1",
    ]  # fmt: skip
    if s.max_documents > 0:
        argv += ["--max_documents", str(s.max_documents)]
    if s.facts > 0:
        argv += ["--embedded_facts", str(s.facts), "--embedded_fact_towns", str(s.fact_towns),
                 "--embedded_fact_zipf", str(s.fact_zipf), "--embedded_fact_town_tokens", str(s.fact_town_tokens)]  # fmt: skip
    return argv


def logged_curves(run_dir: Path) -> dict[str, list[list[float]]]:
    """The recipe's logged scalars (``TAGS``) by step from its TensorBoard logs."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    curves: dict[str, dict[int, float]] = {tag: {} for tag in TAGS}
    for events in sorted((run_dir / "runs").rglob("events.out.tfevents.*"), key=lambda p: p.stat().st_mtime):
        accumulator = EventAccumulator(str(events))
        accumulator.Reload()
        for tag in TAGS:
            if tag in accumulator.Tags()["scalars"]:
                curves[tag].update({e.step: e.value for e in accumulator.Scalars(tag)})
    return {tag: [[step, value] for step, value in sorted(v.items())] for tag, v in curves.items() if v}


def parameter_counts(model, config) -> dict:
    """Total, per-part and active-per-token parameter counts, and multiply-adds per timestep outside the
    embedding and softmax (the paper's "ops/timestep"; the router's 2dn included)."""
    total = model.num_parameters()
    d, vocab = config.hidden_size, config.vocab_size
    embedding_softmax = 2 * vocab * d + vocab  # embedding, softmax matrix and bias
    lstm = sum(p.numel() for block in model.model.layers for p in block.lstm.parameters())
    moes = model.model.moe_layers()
    experts = sum(p.numel() for moe in moes for p in moe.experts.parameters())
    router = sum(p.numel() for moe in moes for n, p in moe.named_parameters() if not n.startswith("experts."))
    n = config.num_experts if moes else 0
    per_expert = experts // (n * len(moes)) if moes else 0
    k = config.num_experts_per_tok if moes else 0
    inactive = (n - k) * per_expert * len(moes)
    lstm_ops = sum(p.numel() for block in model.model.layers for name, p in block.lstm.named_parameters()
                   if "bias" not in name)  # fmt: skip
    return {
        "total_parameters": total,
        "parameters_excluding_embedding_softmax": total - embedding_softmax,
        "embedding_softmax_parameters": embedding_softmax,
        "lstm_parameters": lstm,
        "expert_parameters": experts,
        "parameters_per_expert": per_expert,
        "router_parameters": router,
        "active_parameters_per_token": total - inactive - router,
        "active_parameters_per_token_with_router": total - inactive,
        "ops_per_timestep": lstm_ops + router + k * per_expert * len(moes),
    }


@torch.no_grad()
def validation_expert_load(model, blocks, batch_size: int) -> list[float] | None:
    """Each expert's share of the validation tokens (eval mode: the clean gate, no noise), the first MoE
    layer; shares sum to k."""
    if not model.model.moe_layers():
        return None
    model.eval()
    loads, tokens = 0.0, 0
    for start in range(0, len(blocks), batch_size):
        ids = blocks[start : start + batch_size]["input_ids"]
        out = model(input_ids=ids)
        loads = loads + out.expert_load[0].double() * ids.numel()
        tokens += ids.numel()
    return (loads / tokens).tolist()


def summarize_load(load: list[float] | None, k: int) -> dict | None:
    if load is None:
        return None
    t = torch.tensor(load, dtype=torch.float64)
    return {"min": t.min().item(), "max": t.max().item(), "ideal": k / len(load),
            "cv": (t.std(unbiased=False) / t.mean()).item(), "per_expert": load}  # fmt: skip


def last(curve: list[list[float]] | None) -> float | None:
    return curve[-1][1] if curve else None


def train_one(recipe, spec: dict, s: Settings, runs: Path, cache: Path) -> dict:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import hf_paper_models  # noqa: F401  (registers paper-moe-lstm)

    run_dir = runs / spec["key"]
    shutil.rmtree(run_dir, ignore_errors=True)
    seed_everything(s.seed)
    print(f"\n=== {spec['label']}: {s.max_steps} steps ===", flush=True)
    with Timer() as wall:
        final = recipe.main(recipe_argv(spec, s, run_dir, cache))
    curves = logged_curves(run_dir)
    model = AutoModelForCausalLM.from_pretrained(final)
    config = model.config
    tokenizer = AutoTokenizer.from_pretrained(final)
    data_args = recipe.DataArguments(block_size=s.block_size, max_documents=s.max_documents or None,
                                     embedded_facts=s.facts, embedded_fact_towns=s.fact_towns,
                                     embedded_fact_zipf=s.fact_zipf,
                                     embedded_fact_town_tokens=s.fact_town_tokens)  # fmt: skip
    blocks = recipe.build_datasets(data_args, tokenizer, s.seed)["validation"]
    if s.validation_blocks:
        blocks = blocks.select(range(min(s.validation_blocks, len(blocks))))
    load = validation_expert_load(model, blocks, s.eval_batch_size)
    eval_loss = last(curves.get("eval_loss"))
    moe = bool(model.model.moe_layers())
    k = config.num_experts_per_tok if moe else None
    tokens_per_second = [v for _, v in curves.get("tokens_per_second", [])]
    return {
        "label": spec["label"],
        "experts": spec["experts"],
        "k": k,
        "preset": spec["preset"],
        "model_overrides": spec["overrides"],
        "config": {name: getattr(config, name) for name in (
            "hidden_size", "intermediate_size", "num_hidden_layers", "moe_layers", "num_experts",
            "num_experts_per_tok", "num_expert_groups", "vocab_size", "dropout", "w_importance", "w_load")},
        **parameter_counts(model, config),
        "steps": int(curves["train_loss"][-1][0]),
        "train_tokens": int(curves["train_loss"][-1][0]) * s.batch_size * s.block_size,
        "validation_tokens": len(blocks) * s.block_size,
        "validation_loss": eval_loss,
        "validation_perplexity": math.exp(eval_loss) if eval_loss is not None else None,
        "final_train_loss": last(curves.get("train_loss")),  # training mode: cross-entropy + aux loss
        "aux_loss_final": last(curves.get("train_aux_loss")),
        "importance_loss_final": last(curves.get("train_importance_loss")),
        "load_loss_final": last(curves.get("train_load_loss")),
        "expert_load_logged_final": {
            "min": last(curves.get("train_expert_load_min")), "max": last(curves.get("train_expert_load_max")),
            "ideal": k / config.num_experts,
        } if moe else None,
        "validation_expert_load": summarize_load(load, k) if moe else None,
        "train_tokens_per_second": sum(tokens_per_second) / len(tokens_per_second) if tokens_per_second else None,
        "recipe_wall_seconds": wall.seconds,
        "recipe_cpu_seconds": wall.cpu_seconds,
        "curves": curves,
    }  # fmt: skip


def decide(models: list[dict]) -> dict:
    """``CLAIM``'s rule, fixed before the runs."""
    moes = [m for m in models if m["experts"] is not None]
    base = next((m for m in models if m["experts"] is None), None)
    ppl = [m["validation_perplexity"] for m in moes]
    monotone = len(ppl) >= 2 and all(a > b for a, b in zip(ppl, ppl[1:]))
    beats = base is not None and bool(moes) and ppl[-1] < base["validation_perplexity"]
    return {
        "perplexity_falls_monotonically": monotone,
        "largest_moe_beats_baseline": beats,
        "holds": monotone and beats,
        "largest_moe_vs_baseline_perplexity_ratio": ppl[-1] / base["validation_perplexity"]
        if base is not None and moes
        else None,
    }


def plot(result: dict, path: Path) -> None:
    fig, (ax_ppl, ax_loss) = new_figure(ncols=2, width=5.5)
    moes = [m for m in result["models"] if m["experts"] is not None]
    base = next((m for m in result["models"] if m["experts"] is None), None)
    ax_ppl.plot([m["experts"] for m in moes], [m["validation_perplexity"] for m in moes], "o-",
                label=f"MoE-LSTM (flat, k={moes[0]['k']})" if moes else None)  # fmt: skip
    for m in moes:
        ax_ppl.annotate(f"{m['total_parameters'] / 1e6:.2f}M", (m["experts"], m["validation_perplexity"]),
                        textcoords="offset points", xytext=(4, 6), fontsize=7)  # fmt: skip
    if base is not None:
        ax_ppl.axhline(base["validation_perplexity"], color="gray", linestyle="--",
                       label=f"dense 4xLSTM ({base['total_parameters'] / 1e6:.2f}M)")  # fmt: skip
    ax_ppl.set_xscale("log", base=2)
    ax_ppl.margins(x=0.15)
    ax_ppl.set(xlabel="number of experts (log scale)", ylabel="validation perplexity",
               title=f"equal compute per token, {result['models'][0]['steps']} steps")  # fmt: skip
    ax_ppl.legend(fontsize=8)
    for m in result["models"]:
        curve = m["curves"].get("eval_loss", [])
        if curve:
            style = "--" if m["experts"] is None else "-"
            ax_loss.plot(*zip(*curve), style, marker="o", markersize=3, label=m["label"])
    ax_loss.set(xlabel="step", ylabel="validation loss (nats/token)", title="validation loss")
    ax_loss.legend(fontsize=8)
    save_figure(fig, path)


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output-dir", default=f"runs/reproductions/{NAME}")
    parser.add_argument("--smoke", action="store_true", help="tiny run that checks the pipeline")
    add_set_option(parser)
    args = parser.parse_args(argv)
    s = Settings(**SMOKE) if args.smoke else Settings()
    try:
        s = apply_settings(s, args.set)
        specs = model_specs(s)
    except ValueError as error:
        parser.error(str(error))
    out = output_dir(args.output_dir)
    runs, cache = out / "runs", out / "tokenizer-cache"
    torch.set_num_threads(s.threads)
    recipe = load_recipe()

    with Timer() as total:
        models = [train_one(recipe, spec, s, runs, cache) for spec in specs]
    result = {
        "name": NAME,
        "paper": "Shazeer et al. 2017, Outrageously large neural networks (Figure 2-left, Table 1)",
        "claim": CLAIM,
        **decide(models),
        "smoke": args.smoke,
        "models": models,
        "seconds": {"total": total.seconds, "cpu_total": total.cpu_seconds},
        "settings": asdict(s),
        "device": device_name(),
    }
    write_json(out / f"{NAME}.json", result)
    plot(result, out / f"{NAME}.png")
    if not s.keep_runs:
        shutil.rmtree(runs, ignore_errors=True)
        shutil.rmtree(cache, ignore_errors=True)
    print(f"\nMoE-LSTM experts ({'smoke' if args.smoke else 'default'}), {s.max_steps} steps each:")
    for m in models:
        spread = m["expert_load_logged_final"]
        extra = (f", aux {m['aux_loss_final']:.4f} (importance CV² {m['importance_loss_final']:.4f}, load CV² "
                 f"{m['load_loss_final']:.4f}), load min/max {spread['min']:.3f}/{spread['max']:.3f} "
                 f"(ideal {spread['ideal']:.3f})") if spread else ""  # fmt: skip
        print(f"  {m['label']:>15}: ppl {m['validation_perplexity']:.3f}, {m['total_parameters']:,} params, "
              f"{m['active_parameters_per_token']:,} active/token{extra}")  # fmt: skip
    print(f"  claim holds: {result['holds']} (monotone {result['perplexity_falls_monotonically']}, beats baseline "
          f"{result['largest_moe_beats_baseline']}); {total.seconds:.0f}s wall; wrote {out}")  # fmt: skip
    return result


if __name__ == "__main__":
    main()
