"""T5's span corruption learns, and the pre-trained model then solves text-to-text tasks (Raffel et al.
2020, §3.1.4 and §2.4), at laptop scale.

1. Pre-train a small T5 (the paper's architecture: 2 + 2 layers, 64 wide) with span corruption on the
   embedded corpus through the recipe ``training/pretrain_t5.py`` (``training/configs/t5_tiny.yaml``):
   the held-out span loss falls below what the targets' own unigram statistics give (a model that
   ignores the corrupted input), and the teacher-forced accuracy on the dropped tokens is reported
   beside the best constant guess.
2. Fine-tune it in the text-to-text format (``training/finetune_t5.py``) on an embedded CoLA-style task,
   "cola sentence: <sentence>" -> "acceptable" / "not acceptable" (is the word order English or
   shuffled? chance 50%), scoring the generated answers; and the same architecture from random weights
   for the same steps, which says what the pre-training bought. (The recipe's other embedded task,
   translation of the parallel corpus, does not get off the ground within this budget; the model card
   gives the numbers we measured.)

    python reproductions/t5_span_corruption.py             # about 5 minutes of CPU on two cores
    python reproductions/t5_span_corruption.py --smoke     # seconds: keeps the script running in the tests

Writes ``t5_span_corruption.json`` and ``t5_span_corruption.png`` to ``--output_dir``. Runs with one
intra-op thread by default (``--threads``): these models are small, and on a shared two-core machine we
measured a training step 25x slower with two spinning OpenMP threads than with one.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections import Counter
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from reproductions.common import Timer, load_script, new_figure, output_dir, save_figure, seed_everything  # noqa: E402

PRETRAIN = ROOT / "training" / "pretrain_t5.py"
FINETUNE = ROOT / "training" / "finetune_t5.py"
CONFIG = ROOT / "training" / "configs" / "t5_tiny.yaml"
FINETUNE_CONFIG = ROOT / "training" / "configs" / "t5_finetune_tiny.yaml"

# The model both runs share (t5_tiny.yaml's sizes), so that the scratch baseline is the same network.
SIZES = ["--hidden_size", "64", "--num_hidden_layers", "2", "--num_attention_heads", "4",
         "--intermediate_size", "256"]  # fmt: skip
PRETRAIN_ARGS = [
    "--max_steps",
    "400",
    "--eval_steps",
    "50",
    "--logging_steps",
    "10",
    "--max_documents",
    "2000",
]
FINETUNE_STEPS = {"cola": 300}
FINETUNE_ARGS = {"cola": ["--max_train_examples", "9600", "--learning_rate", "5e-3"]}  # one pass of 300 x 32
SMOKE = ["--hidden_size", "32", "--num_hidden_layers", "1", "--num_attention_heads", "2", "--intermediate_size", "64",
         "--vocab_size", "512", "--max_documents", "40", "--max_steps", "6", "--warmup_steps", "2",
         "--per_device_train_batch_size", "8", "--per_device_eval_batch_size", "16", "--logging_steps", "2",
         "--eval_steps", "3", "--max_eval_batches", "2", "--inputs_length", "32"]  # fmt: skip
SMOKE_SIZES = ["--hidden_size", "32", "--num_hidden_layers", "1", "--num_attention_heads", "2",
               "--intermediate_size", "64", "--vocab_size", "512"]  # fmt: skip
SMOKE_FINETUNE = ["--max_steps", "4", "--warmup_steps", "1", "--logging_steps", "2", "--eval_steps", "0",
                  "--per_device_train_batch_size", "8", "--max_eval_examples", "8", "--max_eval_batches", "1",
                  "--max_train_examples", "64", "--max_target_length", "12", "--max_corpus_pairs", "2000",
                  "--max_documents", "40"]  # fmt: skip


def no_context_baselines(
    tokenizer_path: Path, inputs_length: int, seed: int, max_documents: int
) -> dict[str, float]:
    """What a model that ignores the inputs achieves on the held-out span targets: the cross-entropy
    of the targets' unigram distribution (estimated on the training blocks, add-one smoothed) and the
    accuracy of always guessing the most frequent dropped token. Same collator as the recipe."""
    from transformers import AutoTokenizer

    from hf_paper_models.data import lm_corpus
    from hf_paper_models.data.span_corruption import DataCollatorForSpanCorruption, span_corruption_lengths

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_path)
    collator = DataCollatorForSpanCorruption(tokenizer, seed=seed)
    block = span_corruption_lengths(inputs_length)[0]

    def targets(split: str, documents: int) -> list[int]:
        ids = [t for doc in lm_corpus(documents, split=split)
               for t in tokenizer(doc, add_special_tokens=False)["input_ids"]]  # fmt: skip
        return [
            t
            for start in range(0, len(ids) - block + 1, block)
            for t in collator.corrupt(ids[start : start + block])[1]
        ]

    train, held_out = Counter(targets("train", max_documents)), targets("validation", min(max_documents, 300))
    total, vocab = sum(train.values()), len(tokenizer)
    cross_entropy = -sum(math.log((train[t] + 1) / (total + vocab)) for t in held_out) / len(held_out)
    sentinels = {i for t, i in tokenizer.get_vocab().items() if t.startswith("<extra_id_")}
    dropped = [t for t in held_out if t not in sentinels and t != tokenizer.eos_token_id]
    most_frequent = Counter(dropped).most_common(1)[0][1] / len(dropped) if dropped else 0.0
    return {"unigram_cross_entropy": cross_entropy, "constant_guess_accuracy": most_frequent}


def figure(results: dict, path: Path) -> None:
    fig, (ax_loss, ax_tasks) = new_figure(ncols=2, width=5.5)
    history = results["pretraining"]["history"]
    train = [h for h in history if "train_loss" in h]
    evals = [h for h in history if "eval_loss" in h]
    ax_loss.plot(
        [h["step"] for h in train], [h["train_loss"] for h in train], label="train (span corruption)"
    )
    ax_loss.plot([h["step"] for h in evals], [h["eval_loss"] for h in evals], "o-", label="held-out")
    ax_loss.axhline(
        results["pretraining"]["unigram_cross_entropy"],
        color="gray",
        ls="--",
        lw=1,
        label="held-out, unigram of the targets (no context)",
    )
    ax_loss.set_xlabel("optimizer step")
    ax_loss.set_ylabel("cross-entropy of the target spans (nats)")
    ax_loss.set_title("T5 pre-training: span corruption")
    ax_loss.legend()
    cola = results["finetuning"]["cola"]
    labels = ["pre-trained with\nspan corruption", "random init,\nsame steps"]
    accuracy = [100 * cola["pretrained"]["exact_match"], 100 * cola["scratch"]["exact_match"]]
    ax_tasks.bar(labels, accuracy, color=["tab:blue", "tab:orange"])
    for i, value in enumerate(accuracy):
        ax_tasks.text(i, value + 1, f"{value:.1f}%", ha="center")
    ax_tasks.axhline(50.0, color="gray", ls=":", lw=1, label="chance")
    ax_tasks.set_ylim(0, 100)
    ax_tasks.set_ylabel("accuracy of the generated answer (%)")
    ax_tasks.set_title('fine-tuning: "cola sentence: ..." -> "acceptable"')
    ax_tasks.legend()
    save_figure(fig, path)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output_dir", default="runs/reproductions/t5_span_corruption")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes and a few steps (seconds)")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    seed_everything(args.seed)
    out = output_dir(args.output_dir)
    pretrain, finetune = load_script(PRETRAIN), load_script(FINETUNE)
    common = ["--seed", str(args.seed), "--report_to", "none", "--resume_from_checkpoint", "no",
              "--tokenizer_cache_dir", str(out / "tokenizers")]  # fmt: skip
    sizes = SMOKE_SIZES if args.smoke else SIZES
    timings = {}

    with Timer() as timer:
        pre_argv = ["--config", str(CONFIG), *common, "--output_dir", str(out / "pretrain"),
                    *(SMOKE if args.smoke else [*SIZES, *PRETRAIN_ARGS])]  # fmt: skip
        final = pretrain.main(pre_argv)
    timings["pretraining"] = {"seconds": timer.seconds, "cpu_seconds": timer.cpu_seconds}
    pretraining = json.loads((out / "pretrain" / "eval_results.json").read_text())
    inputs_length = 32 if args.smoke else 64
    baselines = no_context_baselines(final, inputs_length, args.seed, 40 if args.smoke else 2000)

    finetuning: dict[str, dict] = {}
    for task, steps in FINETUNE_STEPS.items():
        finetuning[task] = {}
        for name, start in (("pretrained", ["--model_path", str(final)]), ("scratch", sizes)):
            run = out / f"finetune_{task}_{name}"
            fine_argv = ["--config", str(FINETUNE_CONFIG), *common, "--task", task, "--output_dir", str(run),
                         *start, *(SMOKE_FINETUNE if args.smoke else ["--max_steps", str(steps), *FINETUNE_ARGS[task]])]  # fmt: skip
            with Timer() as timer:
                finetune.main(fine_argv)
            timings[f"finetune_{task}_{name}"] = {"seconds": timer.seconds, "cpu_seconds": timer.cpu_seconds}
            report = json.loads((run / "eval_results.json").read_text())
            finetuning[task][name] = {k: report[k] for k in ("exact_match", "bleu", "eval_loss", "train_loss",
                                                             "num_eval_examples", "examples")}  # fmt: skip

    evals = [h for h in pretraining["history"] if "eval_loss" in h]
    results = {
        "claim": "Span corruption (15% noise, mean span 3) lowers the held-out span loss below the targets' "
        "unigram statistics; the pre-trained model is then fine-tuned on a text-to-text task (CoLA-style), "
        "compared with the same model trained from scratch for the same steps.",
        "smoke": args.smoke,
        "pretraining": {
            "first_eval_loss": evals[0]["eval_loss"] if evals else None,
            "final_eval_loss": pretraining["eval_loss"],
            "final_train_loss": pretraining["train_loss"],
            "span_token_accuracy": pretraining["span_token_accuracy"],
            **baselines,
            "steps": pretraining["step"],
            "history": pretraining["history"],
        },
        "finetuning": finetuning,
        "timings": timings,
        "seconds": {
            "total": sum(t["seconds"] for t in timings.values()),
            "cpu_total": sum(t["cpu_seconds"] for t in timings.values()),
        },  # fmt: skip
        "threads": args.threads,
    }
    (out / "t5_span_corruption.json").write_text(json.dumps(results, indent=2) + "\n")
    figure(results, out / "t5_span_corruption.png")
    cola = finetuning["cola"]
    print(
        f"span loss {results['pretraining']['first_eval_loss']:.3f} -> {pretraining['eval_loss']:.3f}, "
        f"(unigram baseline {baselines['unigram_cross_entropy']:.3f}), span token accuracy "
        f"{pretraining['span_token_accuracy']:.3f} (constant guess {baselines['constant_guess_accuracy']:.3f}); "
        f"CoLA-style accuracy {cola['pretrained']['exact_match']:.3f} pre-trained vs {cola['scratch']['exact_match']:.3f} "
        "from scratch. "
        f"{results['seconds']['total']:.0f} s ({results['seconds']['cpu_total']:.0f} s CPU). "
        f"Wrote {out / 't5_span_corruption.json'} and {out / 't5_span_corruption.png'}."
    )
    return results


if __name__ == "__main__":
    main()
