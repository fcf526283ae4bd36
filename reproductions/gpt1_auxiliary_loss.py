"""GPT-1 (Radford et al. 2018), §5 "Ablation studies" / Table 5 at laptop scale: does keeping the
language-modelling objective as an auxiliary loss during fine-tuning help?

§3.2: fine-tuning optimises L3(C) = L2(C) + λ·L1(C), the task loss plus λ = 0.5 times the LM loss on
the fine-tuning inputs, which "(a) improv[es] generalization of the supervised model, and (b)
accelerat[es] convergence". §5 then finds that "the trend suggests that larger datasets benefit from
the auxiliary objective but smaller datasets do not".

The set-up here:

* **Pre-training.** A tiny ``paper-gpt1`` (post-LN blocks, learned positions, tied output layer)
  trained briefly as a causal LM on the embedded corpus, with the GPT-1 tokenizer kind of
  ``hf_paper_models.tokenizers`` (lower-cased BPE with ``<s> <$> <e>``).
* **Task.** Topic classification of single sentences: the corpus grammar (``Grammar``) writes one
  sentence of a document about one of ``topics`` (farm, sea, castle, ...); the label is that topic.
  Sentences are drawn with their own seeds, apart from the pre-training text; the held-out set
  excludes every training sentence. Words drift between topics (general words, a second topic in
  30% of documents), so the task is not saturated.
* **Fine-tuning.** ``PaperGPT1ForSequenceClassification`` on ``GPT1TaskFormatter``'s
  classification transformation ``[<s>; text; e]``, from the same pre-trained weights, twice per
  seed: λ = 0.5 (``lm_labels`` given, loss = L2 + 0.5·L1) and λ = 0 (no ``lm_labels``, loss = L2),
  with the same head initialisation, data order and dropout stream. Two training-set sizes (a small
  and a larger one), several seeds; held-out accuracy is measured during fine-tuning, so both
  "generalisation" (final accuracy) and "convergence" (the curve) can be read off.

    python reproductions/gpt1_auxiliary_loss.py            # default, a few minutes on 2 CPU cores
    python reproductions/gpt1_auxiliary_loss.py --smoke    # seconds; too small to learn
"""

from __future__ import annotations

import argparse
import copy
import random
import statistics
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
from tqdm.auto import tqdm
from transformers import get_linear_schedule_with_warmup

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hf_paper_models import preset
from hf_paper_models.data.corpus import Grammar, detokenize, lm_corpus
from hf_paper_models.models.gpt1 import (
    GPT1TaskFormatter,
    PaperGPT1ForSequenceClassification,
    PaperGPT1LMHeadModel,
)
from hf_paper_models.tokenizers import get_tokenizer
from reproductions.common import Timer, new_figure, output_dir, save_figure, seed_everything, write_json

NAME = "gpt1_auxiliary_loss"


@dataclass
class Settings:
    seed: int = 0
    threads: int = 1
    # tokenizer and model
    vocab_size: int = 1024
    num_layers: int = 3
    hidden_size: int = 64
    num_heads: int = 4
    max_positions: int = 64
    # pre-training (causal LM on the embedded corpus)
    pretrain_documents: int = 800
    pretrain_steps: int = 500
    pretrain_batch_size: int = 32
    # (2e-3 with a 50-step warm-up collapses this post-LN model to a constant, unigram output)
    pretrain_learning_rate: float = 1e-3
    pretrain_warmup: int = 100
    # task
    topics: tuple[str, ...] = ("farm", "sea", "city", "forest", "kitchen", "castle")
    train_sizes: tuple[int, ...] = (60, 600)
    eval_size: int = 300
    task_seed: int = 2018
    # fine-tuning (§4.1: dropout 0.1 on the classifier and in the network, linear schedule, λ = 0.5)
    lm_coef: float = 0.5
    seeds: tuple[int, ...] = (0, 1, 2)
    finetune_steps: int = 250
    finetune_batch_size: int = 16
    finetune_learning_rate: float = 2e-3
    finetune_warmup_fraction: float = 0.1
    dropout: float = 0.1
    eval_every: int = 50
    notes: list[str] = field(default_factory=list)


SMOKE = dict(
    vocab_size=400, num_layers=1, hidden_size=32, num_heads=2, max_positions=48,
    pretrain_documents=40, pretrain_steps=10, pretrain_batch_size=8, pretrain_warmup=2,
    topics=("farm", "sea"), train_sizes=(16,), eval_size=32, seeds=(0,),
    finetune_steps=8, finetune_batch_size=8, eval_every=4,
)  # fmt: skip


# ----------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------


def topic_sentences(n: int, topics: Sequence[str], seed: int, exclude: set[str] = frozenset()) -> list:
    """``n`` (sentence, topic index) pairs, topics balanced and shuffled, no sentence in ``exclude``."""
    rng = random.Random(seed)
    grammar = Grammar(random.Random(seed + 1))
    labels = [i % len(topics) for i in range(n)]
    rng.shuffle(labels)
    out, seen = [], set(exclude)
    for label in labels:
        while True:
            grammar.new_document(topic=topics[label], focus=False)
            text = detokenize(grammar.sentence())
            if text not in seen:
                break
        seen.add(text)
        out.append((text, label))
    return out


def encode_task(pairs, tokenizer, formatter: GPT1TaskFormatter, max_positions: int) -> list:
    """(token ids ``[<s>; text; e]``, label) per example; texts longer than the context are cut."""
    out = []
    for text, label in pairs:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"][: max_positions - 2]
        out.append((formatter.transform_classification(ids), label))
    return out


def pretraining_blocks(tokenizer, s: Settings) -> torch.Tensor:
    """The corpus's first documents, tokenised, concatenated and cut into ``max_positions`` blocks."""
    # (training_utils.group_texts does the same, but importing it pulls in accelerate and peft)
    ids = [t for d in lm_corpus(s.pretrain_documents) for t in tokenizer(d, add_special_tokens=False)["input_ids"]]
    n = len(ids) // s.max_positions
    return torch.tensor(ids[: n * s.max_positions]).view(n, s.max_positions)


# ----------------------------------------------------------------------------------------------
# Models
# ----------------------------------------------------------------------------------------------


def gpt1_config(tokenizer, s: Settings, **overrides):
    return preset(
        "gpt1",
        vocab_size=len(tokenizer),
        num_hidden_layers=s.num_layers,
        hidden_size=s.hidden_size,
        num_attention_heads=s.num_heads,
        intermediate_size=4 * s.hidden_size,  # the paper's 4·d_model (the preset holds 3072)
        max_position_embeddings=s.max_positions,
        pad_token_id=tokenizer.pad_token_id,
        **overrides,
    )


def pretrain(tokenizer, s: Settings) -> tuple[dict, list[dict]]:
    """Causal-LM pre-training (L1, eq. 1); returns the weights and the loss curve."""
    torch.manual_seed(s.seed)
    config = gpt1_config(tokenizer, s, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    model = PaperGPT1LMHeadModel(config)
    blocks = pretraining_blocks(tokenizer, s)
    optimizer = torch.optim.AdamW(model.parameters(), lr=s.pretrain_learning_rate, weight_decay=0.01)
    scheduler = get_linear_schedule_with_warmup(optimizer, s.pretrain_warmup, s.pretrain_steps)
    generator = torch.Generator().manual_seed(s.seed)
    curve, window = [], []
    model.train()
    for step in tqdm(range(1, s.pretrain_steps + 1), desc="pre-train paper-gpt1", mininterval=5, file=sys.stdout):
        batch = blocks[torch.randint(len(blocks), (s.pretrain_batch_size,), generator=generator)]
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        window.append(loss.item())
        if step % max(1, s.pretrain_steps // 20) == 0 or step == s.pretrain_steps:
            curve.append({"step": step, "loss": sum(window) / len(window)})
            window = []
    return {k: v.detach().clone() for k, v in model.state_dict().items()}, curve


@torch.no_grad()
def evaluate(model, data, formatter: GPT1TaskFormatter, batch_size: int = 200) -> dict:
    """Held-out accuracy, classification loss (L2) and LM loss (L1) of the fine-tuning model."""
    model.eval()
    correct, clf, lm, n = 0, 0.0, 0.0, 0
    for i in range(0, len(data), batch_size):
        chunk = data[i : i + batch_size]
        batch = formatter.batch([x for x, _ in chunk], [y for _, y in chunk], lm_labels=True)
        out = model(**batch)
        correct += int((out.logits.argmax(-1) == batch["labels"]).sum())
        clf += out.clf_loss.item() * len(chunk)
        lm += out.lm_loss.item() * len(chunk)
        n += len(chunk)
    model.train()
    return {"accuracy": correct / n, "clf_loss": clf / n, "lm_loss": lm / n}


def finetune(pretrained, tokenizer, formatter, train_data, eval_data, lm_coef: float, seed: int, s: Settings):
    """One fine-tuning run from the pre-trained weights; λ = 0 passes no ``lm_labels`` at all."""
    config = gpt1_config(
        tokenizer, s, num_labels=len(s.topics), lm_coef=lm_coef,
        resid_pdrop=s.dropout, embd_pdrop=s.dropout, attn_pdrop=s.dropout, clf_pdrop=s.dropout,
    )  # fmt: skip
    torch.manual_seed(10_000 + seed)  # the same head initialisation for both λ
    model = PaperGPT1ForSequenceClassification(config)
    missing, unexpected = model.load_state_dict(copy.deepcopy(pretrained), strict=False)
    if unexpected or set(missing) != {"score.weight"}:
        raise RuntimeError(f"pre-trained weights do not fit: missing {missing}, unexpected {unexpected}")
    optimizer = torch.optim.AdamW(model.parameters(), lr=s.finetune_learning_rate, weight_decay=0.01)
    warmup = round(s.finetune_warmup_fraction * s.finetune_steps)
    scheduler = get_linear_schedule_with_warmup(optimizer, warmup, s.finetune_steps)
    order_rng = random.Random(seed)  # the same data order for both λ
    torch.manual_seed(20_000 + seed)  # the same dropout stream (while the weights agree)
    use_lm = lm_coef > 0
    train_curve, eval_curve = [], [{"step": 0, **evaluate(model, eval_data, formatter)}]
    order: list[int] = []
    model.train()
    for step in range(1, s.finetune_steps + 1):
        if len(order) < s.finetune_batch_size:
            epoch = list(range(len(train_data)))
            order_rng.shuffle(epoch)
            order += epoch
        idx, order = order[: s.finetune_batch_size], order[s.finetune_batch_size :]
        batch = formatter.batch([train_data[i][0] for i in idx], [train_data[i][1] for i in idx], lm_labels=True)
        if not use_lm:
            batch.pop("lm_labels")
        out = model(**batch)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        train_curve.append({"step": step, "loss": out.loss.item(), "clf_loss": out.clf_loss.item(),
                            "lm_loss": out.lm_loss.item() if use_lm else None})  # fmt: skip
        if step % s.eval_every == 0 or step == s.finetune_steps:
            eval_curve.append({"step": step, **evaluate(model, eval_data, formatter)})
    final = eval_curve[-1]
    return {"lm_coef": lm_coef, "seed": seed, "final_accuracy": final["accuracy"],
            "best_accuracy": max(e["accuracy"] for e in eval_curve),
            "final_eval_clf_loss": final["clf_loss"], "final_eval_lm_loss": final["lm_loss"],
            "train_curve": train_curve, "eval_curve": eval_curve}  # fmt: skip


def steps_to(curve: Sequence[dict], fraction: float, target: float) -> int | None:
    """First evaluated step whose accuracy reaches ``fraction`` of ``target``, else None."""
    for e in curve:
        if e["accuracy"] >= fraction * target:
            return e["step"]
    return None


def summarise(runs: list[dict], s: Settings) -> dict:
    """Mean and spread per λ, and the paired (same seed) difference λ=0.5 minus λ=0."""

    def stats(values):
        values = [v for v in values if v is not None]
        if not values:
            return {"mean": None, "std": None, "values": []}
        return {"mean": statistics.fmean(values), "std": statistics.pstdev(values), "values": values}

    by = {lam: [r for r in runs if r["lm_coef"] == lam] for lam in (s.lm_coef, 0.0)}
    with_aux, without = by[s.lm_coef], by[0.0]
    target = max(r["best_accuracy"] for r in runs)
    diff = [a["final_accuracy"] - b["final_accuracy"] for a, b in zip(with_aux, without)]
    return {
        "final_accuracy_with_aux": stats([r["final_accuracy"] for r in with_aux]),
        "final_accuracy_without_aux": stats([r["final_accuracy"] for r in without]),
        "best_accuracy_with_aux": stats([r["best_accuracy"] for r in with_aux]),
        "best_accuracy_without_aux": stats([r["best_accuracy"] for r in without]),
        "eval_lm_loss_with_aux": stats([r["final_eval_lm_loss"] for r in with_aux]),
        "eval_lm_loss_without_aux": stats([r["final_eval_lm_loss"] for r in without]),
        "paired_accuracy_gain": stats(diff),
        "aux_wins": sum(d > 0 for d in diff),
        "ties": sum(d == 0 for d in diff),
        "seeds": len(diff),
        "steps_to_90pct_of_best_with_aux": stats([steps_to(r["eval_curve"], 0.9, target) for r in with_aux]),
        "steps_to_90pct_of_best_without_aux": stats([steps_to(r["eval_curve"], 0.9, target) for r in without]),
    }


# ----------------------------------------------------------------------------------------------
# Figure and entry point
# ----------------------------------------------------------------------------------------------


def mean_curve(runs: list[dict], curve: str, key: str) -> tuple[list[int], list[float]]:
    steps = [c["step"] for c in runs[0][curve]]
    values = [statistics.fmean(r[curve][i][key] for r in runs) for i in range(len(steps))]
    return steps, values


def smooth(values: list[float], width: int) -> list[float]:
    return [statistics.fmean(values[max(0, i - width + 1) : i + 1]) for i in range(len(values))]


def plot(result: dict, s: Settings, path: Path) -> None:
    fig, (ax_acc, ax_loss, ax_bar) = new_figure(ncols=3, width=4.6)
    colours = {s.lm_coef: "tab:blue", 0.0: "tab:orange"}
    styles = ["-", "--", ":", "-."]
    bars = []
    for j, (size, block) in enumerate(result["by_train_size"].items()):
        for lam in (s.lm_coef, 0.0):
            runs = [r for r in block["runs"] if r["lm_coef"] == lam]
            label = f"n={size}, λ={lam:g}"
            steps, acc = mean_curve(runs, "eval_curve", "accuracy")
            ax_acc.plot(steps, [100 * a for a in acc], styles[j % 4], color=colours[lam], label=label)
            steps, clf = mean_curve(runs, "train_curve", "clf_loss")
            ax_loss.plot(steps, smooth(clf, 10), styles[j % 4], color=colours[lam], label=label)
            key = "final_accuracy_with_aux" if lam else "final_accuracy_without_aux"
            bars.append((f"n={size}\nλ={lam:g}", block["summary"][key], colours[lam]))
    ax_acc.axhline(100 / len(s.topics), color="red", ls=":", label="chance")
    ax_acc.set(xlabel="fine-tuning step", ylabel="held-out accuracy (%)", title="Held-out accuracy (mean of seeds)")
    ax_acc.legend(fontsize=7)
    ax_loss.set(xlabel="fine-tuning step", ylabel="training L2 (classification) loss",
                title="Fine-tuning loss (mean of seeds)")  # fmt: skip
    ax_loss.legend(fontsize=7)
    xs = range(len(bars))
    ax_bar.bar(xs, [100 * b[1]["mean"] for b in bars], yerr=[100 * b[1]["std"] for b in bars],
               color=[b[2] for b in bars], capsize=3)  # fmt: skip
    for x, b in zip(xs, bars):
        ax_bar.scatter([x] * len(b[1]["values"]), [100 * v for v in b[1]["values"]], color="k", s=8, zorder=3)
    ax_bar.set_xticks(list(xs), [b[0] for b in bars], fontsize=8)
    ax_bar.axhline(100 / len(s.topics), color="red", ls=":")
    ax_bar.set(ylabel="final held-out accuracy (%)", title="L3 = L2 + λ·L1: with vs without aux LM")
    save_figure(fig, path)


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output-dir", default=f"runs/reproductions/{NAME}")
    parser.add_argument("--smoke", action="store_true", help="tiny run (seconds) that checks the pipeline")
    parser.add_argument("--seed", type=int, default=None, help="pre-training seed")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default 1)")
    args = parser.parse_args(argv)
    s = Settings(**SMOKE) if args.smoke else Settings()
    if args.seed is not None:
        s = replace(s, seed=args.seed)
    if args.threads is not None:
        s = replace(s, threads=args.threads)
    out = output_dir(args.output_dir)
    seed_everything(s.seed)
    torch.set_num_threads(s.threads)

    with Timer() as total:
        # a long model_max_length: whole documents are tokenised before being cut into blocks
        tokenizer = get_tokenizer("bpe", vocab_size=s.vocab_size, model_max_length=1_000_000)
        formatter = GPT1TaskFormatter(
            start_id=tokenizer.bos_token_id, delimiter_id=tokenizer.sep_token_id,
            extract_id=tokenizer.cls_token_id, pad_id=tokenizer.pad_token_id, max_length=s.max_positions,
        )  # fmt: skip
        with Timer() as pretrain_time:
            pretrained, pretrain_curve = pretrain(tokenizer, s)
        train_pool = topic_sentences(max(s.train_sizes), s.topics, s.task_seed)
        eval_pairs = topic_sentences(s.eval_size, s.topics, s.task_seed + 1, exclude={t for t, _ in train_pool})
        eval_data = encode_task(eval_pairs, tokenizer, formatter, s.max_positions)
        by_size = {}
        with Timer() as finetune_time:
            jobs = [(n, seed, lam) for n in s.train_sizes for seed in s.seeds for lam in (s.lm_coef, 0.0)]
            runs: dict[int, list] = {n: [] for n in s.train_sizes}
            for n, seed, lam in tqdm(jobs, desc="fine-tune (size, seed, λ)", file=sys.stdout):
                subset = random.Random(seed).sample(train_pool, n) if n < len(train_pool) else list(train_pool)
                train_data = encode_task(subset, tokenizer, formatter, s.max_positions)
                runs[n].append(finetune(pretrained, tokenizer, formatter, train_data, eval_data, lam, seed, s))
            for n in s.train_sizes:
                by_size[n] = {"summary": summarise(runs[n], s), "runs": runs[n]}

    smallest, largest = min(s.train_sizes), max(s.train_sizes)
    result = {
        "name": NAME,
        "claim": "fine-tuning with the auxiliary LM objective (λ = 0.5) beats λ = 0 on held-out accuracy "
        "(GPT-1 §5, Table 5: larger datasets benefit, smaller ones do not)",
        "smoke": args.smoke,
        "chance": 1 / len(s.topics),
        "by_train_size": by_size,
        "aux_helps": {n: bool(by_size[n]["summary"]["paired_accuracy_gain"]["mean"] > 0) for n in s.train_sizes},
        "pretrain_curve": pretrain_curve,
        "pretrain_final_loss": pretrain_curve[-1]["loss"],
        "pretrain_tokens_seen": s.pretrain_steps * s.pretrain_batch_size * s.max_positions,
        "num_parameters": sum(v.numel() for k, v in pretrained.items() if k != "lm_head.weight"),
        "vocab_size": len(tokenizer),
        "example": {"text": eval_pairs[0][0], "topic": s.topics[eval_pairs[0][1]],
                    "input": tokenizer.decode(eval_data[0][0])},  # fmt: skip
        "seconds": {"pretrain": pretrain_time.seconds, "finetune": finetune_time.seconds, "total": total.seconds,
                    "cpu_total": total.cpu_seconds},  # fmt: skip
        "settings": asdict(s),
    }
    write_json(out / f"{NAME}.json", result)
    plot(result, s, out / f"{NAME}.png")

    print(f"\nGPT-1 auxiliary-LM reproduction ({'smoke' if args.smoke else 'default'}): "
          f"{result['num_parameters']:,} parameters, pre-training loss {result['pretrain_final_loss']:.2f} "
          f"after {s.pretrain_steps} steps; {len(s.topics)} topics (chance {100 * result['chance']:.1f}%)")  # fmt: skip
    for n in s.train_sizes:
        m = by_size[n]["summary"]
        a, b, d = m["final_accuracy_with_aux"], m["final_accuracy_without_aux"], m["paired_accuracy_gain"]
        print(f"  n_train={n:>4}: λ={s.lm_coef:g} {100 * a['mean']:.1f}±{100 * a['std']:.1f}%   "
              f"λ=0 {100 * b['mean']:.1f}±{100 * b['std']:.1f}%   paired gain {100 * d['mean']:+.1f} points "
              f"(aux wins {m['aux_wins']}/{m['seeds']} seeds)")  # fmt: skip
    verdict = ", ".join(f"n={n}: {'helps' if result['aux_helps'][n] else 'does not help'}" for n in s.train_sizes)
    print(f"  auxiliary LM objective: {verdict} (smallest n={smallest}, largest n={largest})")
    print(f"  time: pre-train {pretrain_time.seconds:.0f}s, fine-tune {finetune_time.seconds:.0f}s, "
          f"total {total.seconds:.0f}s wall ({total.cpu_seconds:.0f}s CPU); wrote {out}")  # fmt: skip
    return result


if __name__ == "__main__":
    main()
