"""BERT's pre-training tasks learn (Devlin et al. 2019, §3.1), at laptop scale — and pre-training helps
a downstream task (the paper's §1/§4 claim, here on the embedded word-order task).

1. Pre-train a small BERT (the paper's architecture, 4 layers × 128 wide) with MLM + NSP on the embedded
   corpus through the recipe ``training/pretrain_bert.py`` (``training/configs/bert_tiny.yaml``).
2. Track MLM accuracy (over the masked positions) and NSP accuracy (IsNext/NotNext) on every training
   batch before its update: with less than one pass over the pairs these are progressive-validation
   scores on pairs the model has not yet trained on; finish with a held-out evaluation on the corpus's
   validation documents. Chance levels: NSP 50%; MLM the better of a uniform guess (1/V) and always
   predicting the most frequent masked token of the training pairs.
3. Fine-tune the pre-trained encoder and the same encoder from random weights on the word-order task
   (``training/finetune_bert.py``) for the same steps, and compare held-out accuracy.

    python reproductions/bert_mlm_nsp.py                 # about half an hour on two CPU cores
    python reproductions/bert_mlm_nsp.py --smoke         # seconds: keeps the script running in the tests

Writes ``bert_mlm_nsp.json`` and ``bert_mlm_nsp.png`` to ``--output_dir``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections import Counter
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: make the repository root importable
    sys.path.insert(0, str(ROOT))

from reproductions.common import load_script  # noqa: E402

PRETRAIN = ROOT / "training" / "pretrain_bert.py"
FINETUNE = ROOT / "training" / "finetune_bert.py"
CONFIG = ROOT / "training" / "configs" / "bert_tiny.yaml"
FINETUNE_CONFIG = ROOT / "training" / "configs" / "bert_finetune_tiny.yaml"

# What the smoke mode shrinks (the defaults are bert_tiny.yaml's).
SMOKE = [
    "--hidden_size", "32", "--num_hidden_layers", "2", "--num_attention_heads", "2", "--intermediate_size", "64",
    "--vocab_size", "512", "--max_documents", "40", "--max_steps", "6", "--warmup_steps", "2",
    "--per_device_train_batch_size", "8", "--per_device_eval_batch_size", "16", "--logging_steps", "2",
    "--max_eval_batches", "2",
]  # fmt: skip
SMOKE_FINETUNE = ["--max_documents", "20", "--max_steps", "4", "--warmup_steps", "1", "--logging_steps", "2",
                  "--per_device_train_batch_size", "8"]  # fmt: skip




def chance_levels(pretrain, argv: list[str]) -> dict[str, float]:
    """Uniform and majority-token MLM accuracy and the IsNext share of the held-out pairs."""
    loop_args, model_args, data_args = pretrain.parse_args(
        [pretrain.TrainingLoopArguments, pretrain.ModelArguments, pretrain.DataArguments], argv
    )
    tokenizer = pretrain.load_tokenizer(model_args, loop_args.output_dir, data_args.max_seq_length)
    data = pretrain.build_datasets(data_args, tokenizer, loop_args.seed)
    special = set(tokenizer.all_special_ids)
    counts = Counter(t for ids in data["train"]["input_ids"] for t in ids if t not in special)
    majority = counts.most_common(1)[0][0]
    _, eval_loader = pretrain.make_loaders(data, tokenizer, loop_args, data_args)
    hits = total = 0
    for index, batch in enumerate(eval_loader):
        if loop_args.max_eval_batches is not None and index >= loop_args.max_eval_batches:
            break
        labels = batch["labels"][batch["labels"] != -100]
        hits += int((labels == majority).sum())
        total += labels.numel()
    is_next = sum(1 for label in data["validation"]["next_sentence_label"] if label == 0)
    return {
        "mlm_uniform": 1.0 / len(tokenizer),
        "mlm_majority_token": hits / max(total, 1),
        "mlm_majority_token_string": tokenizer.convert_ids_to_tokens(majority),
        "nsp_is_next_share": is_next / len(data["validation"]),
    }


def figure(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    history = [h for h in results["pretraining"]["history"] if "train_mlm_accuracy" in h]
    steps = [h["step"] for h in history]
    chance = results["chance"]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    panels = [
        ("train_mlm_accuracy", "eval_mlm_accuracy", "masked LM accuracy",
         max(chance["mlm_uniform"], chance["mlm_majority_token"]),
         f"most frequent token ({chance['mlm_majority_token_string']!r})"),
        ("train_nsp_accuracy", "eval_nsp_accuracy", "next sentence prediction accuracy", 0.5, "chance (50%)"),
    ]  # fmt: skip
    final_step = results["pretraining"]["step"]
    for ax, (key, eval_key, title, baseline, baseline_label) in zip(axes, panels):
        ax.plot(steps, [h[key] for h in history], label="training batches, before each update")
        ax.scatter([final_step], [results["pretraining"][eval_key]], color="C3", zorder=3,
                   label=f"held-out: {results['pretraining'][eval_key]:.1%}")  # fmt: skip
        ax.axhline(baseline, color="grey", linestyle="--", label=baseline_label)
        ax.set_xlabel("optimizer step")
        ax.set_title(title)
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
    fig.suptitle("BERT pre-training (MLM + NSP) on the embedded corpus")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--output_dir", default=str(ROOT / "runs" / "reproductions" / "bert_mlm_nsp"))
    parser.add_argument("--smoke", action="store_true", help="a seconds-long run that checks the script works")
    parser.add_argument("--max_steps", type=int, default=None, help="pre-training steps (default: the YAML's)")
    parser.add_argument("--finetune_steps", type=int, default=None, help="fine-tuning steps (default: the YAML's)")
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args(argv)
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()

    pretrain, finetune = load_script(PRETRAIN), load_script(FINETUNE)
    common = ["--resume_from_checkpoint", "no", "--seed", str(args.seed), "--tokenizer_cache_dir", str(out / "tokenizers")]
    pre_argv = ["--config", str(CONFIG), "--output_dir", str(out / "pretrain"), *common, "--eval_steps", "0",
                "--save_steps", "0", *(SMOKE if args.smoke else [])]  # fmt: skip
    if args.max_steps is not None:
        pre_argv += ["--max_steps", str(args.max_steps)]
    torch.manual_seed(args.seed)
    final = pretrain.main(pre_argv)
    pretraining = json.loads((out / "pretrain" / "eval_results.json").read_text())
    chance = chance_levels(pretrain, pre_argv)
    pretrain_seconds = time.perf_counter() - started

    # Fine-tuning: the pre-trained encoder against the same architecture from random weights.
    sizes = ["--hidden_size", "32", "--num_hidden_layers", "2", "--num_attention_heads", "2",
             "--intermediate_size", "64", "--vocab_size", "512"] if args.smoke else []  # fmt: skip
    fine_common = ["--config", str(FINETUNE_CONFIG), *common, "--eval_steps", "0", "--save_steps", "0",
                   *(SMOKE_FINETUNE if args.smoke else [])]  # fmt: skip
    if args.finetune_steps is not None:
        fine_common += ["--max_steps", str(args.finetune_steps)]
    finetuned = {}
    for name, model_path in (("pretrained", str(final)), ("random_init", "none")):
        finetune.main([*fine_common, *sizes, "--model_path", model_path, "--output_dir", str(out / f"finetune_{name}")])
        report = json.loads((out / f"finetune_{name}" / "eval_results.json").read_text())
        finetuned[name] = {"eval_accuracy": report["eval_accuracy"], "eval_examples": report["eval_examples"],
                           "step": report["step"]}  # fmt: skip

    history = [h for h in pretraining["history"] if "train_mlm_accuracy" in h]
    first, last = history[0], history[-1]
    results = {
        "claim": "BERT's masked LM and next sentence prediction both learn: accuracies rise well above chance; "
                 "the pre-trained encoder fine-tunes better than random initialisation",
        "smoke": args.smoke,
        "pretraining": {
            "step": pretraining["step"],
            "first_logged": {"step": first["step"], "mlm_accuracy": first["train_mlm_accuracy"],
                             "nsp_accuracy": first["train_nsp_accuracy"]},
            "last_logged": {"step": last["step"], "mlm_accuracy": last["train_mlm_accuracy"],
                            "nsp_accuracy": last["train_nsp_accuracy"]},
            **{k: v for k, v in pretraining.items() if k.startswith("eval_")},
            "history": history,
        },  # fmt: skip
        "chance": chance,
        "finetune_word_order": finetuned,
        "seconds": {"pretraining": round(pretrain_seconds, 1), "total": round(time.perf_counter() - started, 1)},
        "torch_threads": torch.get_num_threads(),
    }
    if not all(math.isfinite(v) for v in (results["pretraining"]["eval_mlm_accuracy"],
                                          results["pretraining"]["eval_nsp_accuracy"])):  # fmt: skip
        raise RuntimeError("evaluation produced no numbers")
    (out / "bert_mlm_nsp.json").write_text(json.dumps(results, indent=2) + "\n")
    figure(results, out / "bert_mlm_nsp.png")
    p = results["pretraining"]
    print(
        f"held-out MLM accuracy {p['eval_mlm_accuracy']:.1%} (chance {max(chance['mlm_uniform'], chance['mlm_majority_token']):.1%}), "
        f"NSP accuracy {p['eval_nsp_accuracy']:.1%} (chance 50%); word-order fine-tuning: pre-trained "
        f"{finetuned['pretrained']['eval_accuracy']:.1%} vs random init {finetuned['random_init']['eval_accuracy']:.1%}. "
        f"{results['seconds']['total']:.0f} s. Wrote {out / 'bert_mlm_nsp.json'} and {out / 'bert_mlm_nsp.png'}."
    )
    return results


if __name__ == "__main__":
    main()
