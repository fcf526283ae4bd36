"""RNNsearch holds its BLEU on long sentences where RNNencdec falls (Bahdanau, Cho & Bengio 2015, Figure 2);
with ``--transformer``, also the Transformer against RNNsearch at equal training time (ZOO.md §7).

RNNsearch (bidirectional GRU encoder, additive alignment model) and RNNencdec (the same recipe with
``use_attention=False``: one forward GRU whose last state is the fixed context) are trained through the
translation recipe (``training/train_translation.py`` with ``rnnsearch_tiny.yaml`` / ``rnnencdec_tiny.yaml``)
on the embedded parallel corpus — English-like sources, an invented head-final target language, 5 to 80
words, where long sentences need long-range reordering — each for the same training time, then translate
the same held-out test sentences with beam 4; sacrebleu BLEU is reported overall and by source length
(5-9, 10-19, 20-29, 30-39, 40-59, 60-80 words), as in the paper's Figure 2.

Equal time, not equal steps: the paper trained each model for about five days, and RNNsearch costs more
per update (two encoder GRUs and the alignment model at every target word), so at equal steps it would get
more compute than RNNencdec. Time is measured on this process's CPU clock (``--train_clock process`` of the
recipe, evaluation and checkpoints excluded), which other jobs on a shared machine do not inflate the way
they inflate the wall clock; both models see the same training pairs in the same order (same seed).

``--transformer`` trains the recipe's tiny Transformer (``transformer_tiny.yaml``: the sizes and recipe of
``reproductions/transformer_translation.py``, checkpoint averaging, beam 4 with α = 0.6) for the same time
on the same corpus and shared tokenizer, and scores it on the same test sentences as the RNNsearch run.

    python reproductions/rnnsearch_length.py                  # Figure 2, 2 × 200 s of training + decoding
    python reproductions/rnnsearch_length.py --transformer    # + the Transformer, 3 × 200 s
    python reproductions/rnnsearch_length.py --smoke --transformer   # seconds; too small to learn

At the CPU default (200 s, RNN hidden size 64) no model translates yet. ``--gpu`` sets the sizes and budget
of the recorded result: hidden 256 (embedding 128, alignment 256, maxout 128), 100,000 training pairs (the
RNNs keep those of at most 50 words, as RNNsearch-50), 280 s on the wall clock each. The recorded run
trained the three models at the same time on one GPU, one process each, then combined them:

    for m in rnnsearch rnnencdec transformer; do
      python reproductions/rnnsearch_length.py --gpu --models $m --output-dir runs/r_$m &
    done; wait
    mkdir -p runs/r/models && cp runs/r_*/models/*.json runs/r/models/
    python reproductions/rnnsearch_length.py --gpu --transformer --reuse --output-dir runs/r

Writes ``rnnsearch_length.json`` and ``.png`` (and ``rnnsearch_vs_transformer.json`` and ``.png``) into
``--output-dir``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from reproductions.common import (
    Timer,
    add_set_option,
    apply_settings,
    device_name,
    new_figure,
    output_dir,
    save_figure,
    seed_everything,
    write_json,
)
from reproductions.transformer_translation import load_recipe

NAME = "rnnsearch_length"
VS_NAME = "rnnsearch_vs_transformer"
ROOT = Path(__file__).resolve().parent.parent
CONFIGS = ROOT / "training" / "configs"
# Source-length buckets in words: [5, 10), [10, 20), [20, 30), [30, 40), [40, 60), [60, 80].
EDGES = (5, 10, 20, 30, 40, 60, 81)
SHORT, LONG = (5, 20), (30, 81)  # pooled ranges [lo, hi) for the claim: short 5-19 words, long 30-80
LABELS = {"rnnsearch": "RNNsearch-50", "rnnencdec": "RNNencdec-50", "transformer": "Transformer"}


@dataclass
class Settings:
    seed: int = 42
    threads: int = 1
    train_seconds: float = 200.0  # per model, on the clock below (evaluation and checkpoints excluded)
    clock: str = "process"
    max_steps: int = 100_000  # a cap only: the time budget ends the runs
    # RNNsearch / RNNencdec (rnnsearch_tiny.yaml's sizes: n = 64, m = 48, n' = 64, l = 32; 80 pairs a batch)
    rnn_hidden: int = 64
    rnn_embedding: int = 48
    rnn_alignment: int = 64
    rnn_maxout: int = 32
    rnn_batch: int = 80
    rnn_learning_rate: float = 2e-3
    # Transformer (transformer_tiny.yaml / reproductions/transformer_translation.py)
    tf_hidden: int = 128
    tf_layers: int = 3
    tf_heads: int = 4
    tf_ffn: int = 512
    tf_tokens_per_batch: int = 3000
    tf_warmup: int = 200
    tf_lr_scale: float = 0.5
    tf_average_last: int = 5
    # data, shared vocabulary, decoding
    vocab_size: int = 4096
    train_pairs: int = 20000
    eval_pairs: int = 300
    test_pairs: int = 500
    save_steps: int = 50
    eval_steps: int = 100
    max_eval_batches: int = 10
    num_beams: int = 4
    max_new_tokens: int | None = None  # None: each model's default (RNNsearch 2·source + 10, Transformer +50)
    generation_batch_size: int = 50


SMOKE = dict(
    train_seconds=30.0, max_steps=3, rnn_hidden=16, rnn_embedding=12, rnn_alignment=16, rnn_maxout=8,
    rnn_batch=8, tf_hidden=32, tf_layers=1, tf_heads=2, tf_ffn=64, tf_tokens_per_batch=600, tf_warmup=2,
    tf_average_last=2, vocab_size=512, train_pairs=150, eval_pairs=8, test_pairs=12, save_steps=1, eval_steps=0,
    max_eval_batches=1, max_new_tokens=6, generation_batch_size=12,
)  # fmt: skip


GPU = dict(
    clock="wall", train_seconds=280.0, train_pairs=100_000, save_steps=250, eval_steps=250, rnn_hidden=256,
    rnn_embedding=128, rnn_alignment=256, rnn_maxout=128,
)  # fmt: skip


def recipe_argv(model: str, s: Settings, run_dir: Path, cache: Path) -> list[str]:
    """The recipe's command line for one model: its tiny config with this reproduction's sizes and budget;
    the recipe trains and saves, the test translation is done here (``--skip_bleu``)."""
    argv = [
        "--config", str(CONFIGS / f"{model}_tiny.yaml"), "--output_dir", str(run_dir),
        "--resume_from_checkpoint", "no", "--tokenizer_cache_dir", str(cache), "--report_to", "none",
        "--seed", str(s.seed), "--vocab_size", str(s.vocab_size), "--max_train_pairs", str(s.train_pairs),
        "--max_eval_pairs", str(s.eval_pairs), "--max_test_pairs", str(s.test_pairs),
        "--max_steps", str(s.max_steps), "--max_train_seconds", str(s.train_seconds), "--train_clock", s.clock,
        "--save_steps", str(s.save_steps), "--eval_steps", str(s.eval_steps),
        "--max_eval_batches", str(s.max_eval_batches), "--logging_steps", "10", "--skip_bleu", "true",
    ]  # fmt: skip
    if model == "transformer":
        argv += [
            "--hidden_size", str(s.tf_hidden), "--num_hidden_layers", str(s.tf_layers),
            "--num_attention_heads", str(s.tf_heads), "--intermediate_size", str(s.tf_ffn),
            "--max_tokens_per_batch", str(s.tf_tokens_per_batch), "--warmup_steps", str(s.tf_warmup),
            "--lr_scale", str(s.tf_lr_scale), "--save_total_limit", str(max(s.tf_average_last, 1)),
            "--average_last_checkpoints", str(s.tf_average_last),
        ]  # fmt: skip
    else:
        overrides = {"embedding_size": s.rnn_embedding, "alignment_size": s.rnn_alignment}
        argv += [
            "--hidden_size", str(s.rnn_hidden), "--intermediate_size", str(s.rnn_maxout),
            "--model_overrides", json.dumps(overrides), "--per_device_train_batch_size", str(s.rnn_batch),
            "--learning_rate", str(s.rnn_learning_rate), "--save_total_limit", "1",
        ]  # fmt: skip
    return argv


def pooled_bleu(sources, hypotheses, references, span: tuple[int, int]) -> tuple[float | None, int]:
    """Corpus BLEU of the sentences whose source has ``span[0] <= words < span[1]``, and their count."""
    from hf_paper_models.evaluation.bleu import corpus_bleu

    keep = [i for i, src in enumerate(sources) if span[0] <= len(src.split()) < span[1]]
    if not keep:
        return None, 0
    return corpus_bleu([hypotheses[i] for i in keep], [references[i] for i in keep]), len(keep)


def test_bleu(recipe, run_dir: Path, s: Settings, length_penalty: float) -> dict:
    """Translate the test split with the run's model (the averaged checkpoints when there are some) and
    score it: corpus BLEU, BLEU by source-length bucket, and pooled over short and long sentences."""
    import transformers

    import hf_paper_models  # noqa: F401  (registers the paper models)
    from hf_paper_models.data import parallel_corpus
    from hf_paper_models.evaluation.bleu import bleu_report

    folder = run_dir / ("averaged" if (run_dir / "averaged").is_dir() else "final")
    model = transformers.AutoModelForSeq2SeqLM.from_pretrained(folder).eval()
    model.to("cuda" if torch.cuda.is_available() else "cpu")
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    pairs = parallel_corpus("test", s.test_pairs)
    sources, references = [a for a, _ in pairs], [b for _, b in pairs]
    with Timer() as decode:
        hypotheses = recipe.translate(
            model, tokenizer, sources, num_beams=s.num_beams, length_penalty=length_penalty,
            max_new_tokens=s.max_new_tokens, batch_size=s.generation_batch_size,
            max_source_tokens=model.config.max_position_embeddings, progress=False,
        )  # fmt: skip
    report = bleu_report(sources, hypotheses, references, edges=EDGES)
    for key, span in (("short", SHORT), ("long", LONG)):
        report[f"{key}_bleu"], report[f"{key}_count"] = pooled_bleu(sources, hypotheses, references, span)
    report.update(
        weights=folder.name, num_beams=s.num_beams, length_penalty=length_penalty,
        decode_seconds=decode.seconds, sentences_per_second=len(sources) / max(decode.seconds, 1e-9),
        examples=[{"source": a, "reference": b, "hypothesis": h}
                  for a, b, h in list(zip(sources, references, hypotheses))[-3:]],
    )  # fmt: skip
    return report


def train_and_score(recipe, model: str, s: Settings, out: Path, cache: Path) -> dict:
    run_dir = out / "runs" / model
    shutil.rmtree(run_dir, ignore_errors=True)
    seed_everything(s.seed)
    print(f"\n=== {LABELS[model]}: training for {s.train_seconds:g} s ({s.clock} clock) ===", flush=True)
    with Timer() as wall:
        summary = recipe.main(recipe_argv(model, s, run_dir, cache))
    length_penalty = 0.6 if model == "transformer" else 1.0  # each paper's decoding (the RNN recipe's: 1.0)
    report = test_bleu(recipe, run_dir, s, length_penalty)
    history = summary["history"]
    tokens_per_second = [h["tokens_per_second"] for h in history if "tokens_per_second" in h]
    return {
        "parameters": summary["parameters"],
        "steps": summary["step"],
        "train_seconds": summary["train_seconds"],
        "train_clock": summary["train_clock"],
        "recipe_wall_seconds": wall.seconds,
        "train_tokens_per_second": sum(tokens_per_second) / len(tokens_per_second)
        if tokens_per_second
        else None,
        "train_loss": summary["train_loss"],
        "eval_loss": summary["eval_loss"],
        "eval_perplexity": summary["eval_perplexity"],
        "eval_curve": [[h["step"], h["eval_loss"]] for h in history if "eval_loss" in h],
        "train_curve": [[h["step"], h["train_loss"]] for h in history if "train_loss" in h],
        "test": report,
    }


def retention(result: dict) -> float | None:
    short, long = result["test"]["short_bleu"], result["test"]["long_bleu"]
    return long / short if short and long is not None else None


def length_claim(search: dict, encdec: dict) -> dict:
    """Figure 2's claim, decided by a rule fixed before the runs: RNNsearch's BLEU on long sentences
    (30-80 words, pooled) is above RNNencdec's, and RNNsearch keeps a larger share of its short-sentence
    (5-19 words) BLEU on them than RNNencdec does."""
    long_s, long_e = search["test"]["long_bleu"], encdec["test"]["long_bleu"]
    keep_s, keep_e = retention(search), retention(encdec)
    higher = long_s is not None and long_e is not None and long_s > long_e
    holds_better = keep_s is not None and (keep_e is None or keep_s > keep_e)
    return {
        "claim": "RNNsearch holds its BLEU on long sentences where RNNencdec falls (Figure 2)",
        "rule": "long (30-80 words) BLEU of RNNsearch > RNNencdec's, and long/short (5-19 words) BLEU ratio "
        "of RNNsearch > RNNencdec's",
        "long_bleu": {"rnnsearch": long_s, "rnnencdec": long_e},
        "short_bleu": {"rnnsearch": search["test"]["short_bleu"], "rnnencdec": encdec["test"]["short_bleu"]},
        "long_over_short": {"rnnsearch": keep_s, "rnnencdec": keep_e},
        "rnnsearch_higher_on_long": higher,
        "rnnsearch_keeps_more": holds_better,
        "holds": bool(higher and holds_better),
    }


def transformer_claim(search: dict, transformer: dict) -> dict:
    bleu_s, bleu_t = search["test"]["bleu"], transformer["test"]["bleu"]
    return {
        "claim": "the Transformer beats RNNsearch at equal training time (ZOO.md §7)",
        "rule": "test corpus BLEU of the Transformer > RNNsearch's, same test sentences, same training time",
        "bleu": {"rnnsearch": bleu_s, "transformer": bleu_t},
        "long_bleu": {
            "rnnsearch": search["test"]["long_bleu"],
            "transformer": transformer["test"]["long_bleu"],
        },
        "holds": bleu_t > bleu_s,
    }


def plot(models: dict[str, dict], path: Path, title: str) -> None:
    fig, (ax_len, ax_loss) = new_figure(ncols=2, width=5.5)
    styles = {"rnnsearch": "o-", "rnnencdec": "s--", "transformer": "^:"}
    for name, result in models.items():
        buckets = [b for b in result["test"]["by_length"] if b["bleu"] is not None]
        xs = [(b["min_length"] + b["max_length"]) / 2 for b in buckets]
        label = f"{LABELS[name]} ({result['steps']} steps): {result['test']['bleu']:.1f}"
        ax_len.plot(xs, [b["bleu"] for b in buckets], styles[name], label=label)
        if result["eval_curve"]:
            ax_loss.plot(*zip(*result["eval_curve"]), styles[name], label=LABELS[name])
    seconds = next(iter(models.values()))["train_seconds"]
    ax_len.set(xlabel="source sentence length (words)", ylabel="BLEU (beam 4)",
               title=f"{title}: test BLEU by length")  # fmt: skip
    ax_len.legend(fontsize=7, title=f"≈{seconds:.0f} s of training each", title_fontsize=7)
    ax_loss.set(xlabel="step", ylabel="validation loss (nats/token)", title="validation loss")
    ax_loss.legend(fontsize=7)
    save_figure(fig, path)


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output-dir", default=f"runs/reproductions/{NAME}")
    parser.add_argument("--smoke", action="store_true", help="tiny run that checks the pipeline")
    parser.add_argument("--gpu", action="store_true", help="the recorded result's sizes and budget (see above)")
    parser.add_argument("--transformer", action="store_true", help="also the Transformer at equal time")
    parser.add_argument(
        "--models",
        default=None,
        help="comma-separated subset to train now (default: rnnsearch,rnnencdec[,transformer]); each trained "
        "model's result is also kept in OUTPUT_DIR/models/NAME.json",
    )
    parser.add_argument(
        "--reuse",
        action="store_true",
        help="take a model's result from OUTPUT_DIR/models/NAME.json when it is there instead of training it "
        "(to combine runs made one model at a time, e.g. concurrently on one GPU)",
    )
    parser.add_argument("--seconds", type=float, default=None, help="training time per model")
    parser.add_argument("--test-pairs", type=int, default=None)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default 1)")
    add_set_option(parser)
    args = parser.parse_args(argv)
    s = Settings(**SMOKE) if args.smoke else Settings(**GPU) if args.gpu else Settings()
    for name, field_name in (("seconds", "train_seconds"), ("test_pairs", "test_pairs"), ("seed", "seed"),
                             ("threads", "threads")):  # fmt: skip
        if getattr(args, name) is not None:
            s = replace(s, **{field_name: getattr(args, name)})
    try:
        s = apply_settings(s, args.set)
    except ValueError as error:
        parser.error(str(error))
    out = output_dir(args.output_dir)
    cache = out / "tokenizer-cache"
    torch.set_num_threads(s.threads)
    recipe = load_recipe()

    names = ("rnnsearch", "rnnencdec", "transformer") if args.transformer else ("rnnsearch", "rnnencdec")
    if args.models:
        chosen = tuple(m.strip() for m in args.models.split(",") if m.strip())
        unknown = [m for m in chosen if m not in LABELS]
        if unknown or not chosen:
            parser.error(f"--models: unknown {unknown}; choose from {', '.join(LABELS)}")
        names = chosen
    saved = out / "models"
    saved.mkdir(exist_ok=True)
    with Timer() as total:
        models, trained = {}, []
        for name in names:
            if args.reuse and (saved / f"{name}.json").is_file():
                models[name] = json.loads((saved / f"{name}.json").read_text(encoding="utf-8"))
                print(f"=== {LABELS[name]}: result taken from {saved / f'{name}.json'}")
            else:
                models[name] = {**train_and_score(recipe, name, s, out, cache), "device": device_name()}
                trained.append(name)
                write_json(saved / f"{name}.json", models[name])
    if not {"rnnsearch", "rnnencdec"} <= models.keys():
        print(f"trained {', '.join(models)}; combine with --reuse once RNNsearch and RNNencdec are both there")
        return {"models": models}
    reused = [name for name in models if name not in trained]
    common = {"smoke": args.smoke, "settings": asdict(s), "device": device_name(), "edges": list(EDGES),
              "reused": reused,  # results read back with --reuse: their time is not in seconds_total
              "seconds_total": total.seconds, "cpu_seconds_total": total.cpu_seconds}  # fmt: skip
    result = {"name": NAME, **length_claim(models["rnnsearch"], models["rnnencdec"]),
              "models": {k: models[k] for k in ("rnnsearch", "rnnencdec")}, **common}  # fmt: skip
    write_json(out / f"{NAME}.json", result)
    plot(result["models"], out / f"{NAME}.png", "RNNsearch vs RNNencdec")
    report = {NAME: result}
    if "transformer" in models:
        versus = {"name": VS_NAME, **transformer_claim(models["rnnsearch"], models["transformer"]),
                  "models": {k: models[k] for k in ("rnnsearch", "transformer")}, **common}  # fmt: skip
        write_json(out / f"{VS_NAME}.json", versus)
        plot(versus["models"], out / f"{VS_NAME}.png", "RNNsearch vs Transformer")
        report[VS_NAME] = versus

    print(f"\n{'model':<14} {'params':>9} {'steps':>6} {'train s':>8} {'BLEU':>6}  by length "
          f"({', '.join(f'{a}-{b - 1}' for a, b in zip(EDGES, EDGES[1:]))})")  # fmt: skip
    for name, m in models.items():
        buckets = " ".join(
            f"{b['bleu']:5.1f}" if b["bleu"] is not None else "    -" for b in m["test"]["by_length"]
        )
        print(f"{LABELS[name]:<14} {m['parameters']:>9,} {m['steps']:>6} {m['train_seconds']:>8.0f} "
              f"{m['test']['bleu']:>6.2f}  {buckets}")  # fmt: skip
    print(
        f"Figure 2 claim holds: {result['holds']}"
        + (f"; Transformer beats RNNsearch: {report[VS_NAME]['holds']}" if VS_NAME in report else "")
    )
    print(f"time: {total.seconds:.0f}s wall ({total.cpu_seconds:.0f}s CPU); wrote {out}")
    return report


if __name__ == "__main__":
    main()
