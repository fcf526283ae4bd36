"""GPT-3 (Brown et al. 2020), Figure 1.2 at laptop scale: k-shot in-context learning beats zero-shot.

The claim: a language model trained only on next-token prediction learns, from the text alone, to
pick up a task from K demonstrations in its context window, and its accuracy climbs with K (§1,
Figure 1.2; §2.4 for the evaluation protocol).

The set-up here:

* **Task.** Every sequence has its own random mapping f from words to one of L label words
  (``cow = red``). A sequence lists "x = f(x)" pairs, one per line, for a handful of words drawn
  from the embedded corpus's nouns, each word several times; f is drawn afresh per sequence, so the
  only way to predict f(x) is to read it off an earlier line of the same sequence: the model must
  learn to learn in context. Nothing in the weights can know a held-out mapping.
* **Model.** A tiny ``paper-gpt3`` (GPT-2 blocks, alternating dense and locally banded attention,
  §2.1) trained from scratch with the plain causal-LM loss on such sequences. Demonstrations lie
  further back than the band (``sliding_window``), so retrieval has to go through the dense layers.
* **Tokenizer.** A word-level ``PreTrainedTokenizerFast`` built here with the ``tokenizers`` library
  (``build_tokenizer``): one token per noun, label word, ``=`` and newline, plus ``<|endoftext|>``.
  The corpus's BPE tokenizers would split words into several pieces and only lengthen the sequences.
* **Evaluation.** ``hf_paper_models.evaluation.evaluate_few_shot`` exactly as GPT-3 runs it (§2.4):
  for each query, K demonstrations drawn at random from the task's pool, delimited by a newline,
  then the query's context ``x =``; each of the L label words is scored by its log-likelihood and the
  best one is the answer. Held-out tasks are fresh mappings (seeded apart from training). Each task
  has ``eval_items`` words and a pool of ``eval_copies`` demonstrations per word, so the chance that
  the query's word is among K demonstrations rises with K; the figure shows that "ideal in-context
  learner" (right when its word was shown, guessing otherwise) beside the model and chance.

    python reproductions/gpt3_few_shot.py            # default, a few minutes on 2 CPU cores
    python reproductions/gpt3_few_shot.py --smoke    # seconds; too small to learn, checks the pipeline
"""

from __future__ import annotations

import argparse
import math
import random
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerFast, get_cosine_schedule_with_warmup

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hf_paper_models import preset
from hf_paper_models.data.corpus import CLASS_LEMMAS
from hf_paper_models.evaluation import MultipleChoiceExample, build_prompt, evaluate_few_shot
from hf_paper_models.models.gpt3 import PaperGPT3LMHeadModel
from reproductions.common import Timer, new_figure, output_dir, save_figure, seed_everything, write_json

NAME = "gpt3_few_shot"
EOT = "<|endoftext|>"
SEPARATORS = ("=", "")  # "cow = red" or "cow red"
DELIMITER = "\n"  # between demonstrations, as GPT-3 (§2.4: "delimited by 1 or 2 newlines")


@dataclass
class Settings:
    seed: int = 0
    # task
    num_words: int = 200  # nouns of the embedded corpus that the mappings are over
    num_labels: int = 16  # label words (adjectives of the corpus) that training maps onto
    num_options: int = 4  # candidate labels of each held-out task; chance is 1 / num_options
    train_items: tuple[int, int] = (2, 8)  # distinct words per training sequence (inclusive range)
    train_pairs: int = 24  # "x = f(x)" lines per training sequence
    separator: str = "="  # between x and f(x): "=" or "" (none)
    # model: paper-gpt3 with alternating dense / banded layers
    num_layers: int = 4
    hidden_size: int = 64
    num_heads: int = 4
    sliding_window: int = 32
    layer_types: tuple[str, ...] | None = None  # None: GPT-3's alternation, dense first
    max_positions: int = 128
    # training
    steps: int = 2000
    batch_size: int = 32
    learning_rate: float = 2e-3
    warmup_steps: int = 100
    weight_decay: float = 0.01
    loss_on: str = "all"  # "all": the plain LM loss on every token; "labels": on the f(x) tokens only
    log_every: int = 50
    # evaluation
    eval_tasks: int = 64  # held-out mappings
    eval_items: int = 4  # words per held-out mapping (each one is a query)
    eval_copies: int = 4  # demonstrations per word in the pool (pool = eval_items * eval_copies)
    ks: tuple[int, ...] = (0, 1, 2, 4, 8, 16)
    eval_seed: int = 12345
    normalization: str = "mean"
    notes: list[str] = field(default_factory=list)


SMOKE = dict(
    num_words=40, num_layers=2, hidden_size=32, num_heads=2, sliding_window=16, max_positions=64,
    train_pairs=12, steps=30, batch_size=8, warmup_steps=5, log_every=10,
    eval_tasks=4, eval_items=3, eval_copies=2, ks=(0, 1, 2, 4),
)  # fmt: skip


# ----------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------


def task_words(num_words: int, num_labels: int) -> tuple[list[str], list[str]]:
    """The first ``num_words`` nouns and ``num_labels`` adjectives of the corpus's lexicon (fixed order)."""
    nouns: list[str] = []
    for cls in ("animals", "things", "places", "people"):
        nouns += [w for w in CLASS_LEMMAS[cls] if w not in nouns]
    adjectives = [a for a in CLASS_LEMMAS["adjs"] if a not in nouns]
    if num_words > len(nouns) or num_labels > len(adjectives):
        raise ValueError(f"The corpus has {len(nouns)} nouns and {len(adjectives)} adjectives.")
    return nouns[:num_words], adjectives[:num_labels]


def build_tokenizer(words: Sequence[str], labels: Sequence[str]) -> PreTrainedTokenizerFast:
    """A word-level tokenizer: spaces separate tokens, each newline is a token of its own."""
    vocab = {EOT: 0, DELIMITER: 1, SEPARATORS[0]: 2}
    for token in [*labels, *words]:
        vocab.setdefault(token, len(vocab))
    backend = Tokenizer(models.WordLevel(vocab, unk_token=EOT))
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(r"[^\S\n]+"), behavior="removed"),  # spaces go
            pre_tokenizers.Split(DELIMITER, behavior="isolated"),  # newlines stay, one token each
        ]
    )
    backend.decoder = decoders.Metaspace(replacement=" ", prepend_scheme="never")
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token=EOT, eos_token=EOT, unk_token=EOT, pad_token=EOT,
        model_max_length=10_000,
    )  # fmt: skip


def line(word: str, label: str, separator: str) -> tuple[str, str]:
    """A demonstration's context and its completion: ``"cow ="`` (or ``"cow"``) and ``" red"``."""
    return (f"{word} {separator}" if separator else word), f" {label}"


def training_text(rng: random.Random, words: Sequence[str], labels: Sequence[str], s: Settings) -> str:
    """One training sequence: a fresh random mapping over a few words, listed as ``x = f(x)`` lines."""
    items = rng.sample(list(words), rng.randint(*s.train_items))
    mapping = {w: rng.choice(labels) for w in items}
    lines = []
    for _ in range(s.train_pairs):
        w = rng.choice(items)
        context, completion = line(w, mapping[w], s.separator)
        lines.append(context + completion)
    return DELIMITER.join(lines)


def training_batch(rng, words, labels, tokenizer, s: Settings) -> tuple[torch.Tensor, torch.Tensor]:
    """Input ids and a mask of the label positions. Sequences start right at their first line, as
    the evaluation prompts do (``completion_log_likelihoods`` adds no begin-of-text token), so the
    lines sit at the same positions in training and evaluation."""
    texts = [training_text(rng, words, labels, s) for _ in range(s.batch_size)]
    ids = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    input_ids = torch.tensor(ids)  # every sequence has the same length: 3 or 4 tokens a line
    label_ids = torch.tensor(tokenizer.convert_tokens_to_ids(list(labels)))
    return input_ids, torch.isin(input_ids, label_ids)


def held_out_tasks(words, labels, s: Settings) -> list[tuple[list[MultipleChoiceExample], list]]:
    """Fresh mappings: for each, the queries (one per word) and the pool of demonstrations."""
    rng = random.Random(s.eval_seed)
    tasks = []
    for _ in range(s.eval_tasks):
        items = rng.sample(list(words), s.eval_items)
        options = tuple(f" {label}" for label in rng.sample(list(labels), s.num_options))
        mapping = {w: rng.randrange(s.num_options) for w in items}
        examples = [MultipleChoiceExample(line(w, "", s.separator)[0], options, mapping[w]) for w in items]
        pool = [e for e in examples for _ in range(s.eval_copies)]
        rng.shuffle(pool)
        tasks.append((examples, pool))
    return tasks


def ideal_accuracy(k: int, s: Settings) -> float:
    """An ideal in-context learner: right when the query's word is among the K demonstrations
    (drawn without replacement from the pool), a uniform guess otherwise."""
    pool = s.eval_items * s.eval_copies
    others = pool - s.eval_copies
    p_absent = math.comb(others, k) / math.comb(pool, k)
    return (1 - p_absent) + p_absent / s.num_options


# ----------------------------------------------------------------------------------------------
# Training and evaluation
# ----------------------------------------------------------------------------------------------


def build_model(tokenizer, s: Settings) -> PaperGPT3LMHeadModel:
    config = preset(
        "gpt3-small",
        vocab_size=len(tokenizer),
        num_hidden_layers=s.num_layers,
        hidden_size=s.hidden_size,
        num_attention_heads=s.num_heads,
        max_position_embeddings=s.max_positions,
        sliding_window=s.sliding_window,
        layer_types=list(s.layer_types) if s.layer_types else None,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return PaperGPT3LMHeadModel(config)


def train(model, tokenizer, words, labels, s: Settings) -> list[dict]:
    """Causal-LM training on fresh random-mapping sequences; returns the logged curve."""
    rng = random.Random(s.seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=s.learning_rate, weight_decay=s.weight_decay,
                                  betas=(0.9, 0.95))
    scheduler = get_cosine_schedule_with_warmup(optimizer, s.warmup_steps, s.steps)
    model.train()
    curve, window = [], []
    progress = tqdm(range(1, s.steps + 1), desc="train paper-gpt3", mininterval=5, file=sys.stdout)
    for step in progress:
        input_ids, is_label = training_batch(rng, words, labels, tokenizer, s)
        targets = input_ids if s.loss_on == "all" else input_ids.masked_fill(~is_label, -100)
        out = model(input_ids=input_ids, labels=targets)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        with torch.no_grad():  # the label tokens alone: the part that needs in-context learning
            logits = out.logits[:, :-1][is_label[:, 1:]]
            label_targets = input_ids[:, 1:][is_label[:, 1:]]
            label_loss = torch.nn.functional.cross_entropy(logits, label_targets).item()
            label_acc = (logits.argmax(-1) == label_targets).float().mean().item()
        window.append((out.loss.item(), label_loss, label_acc))
        if step % s.log_every == 0 or step == s.steps:
            n = len(window)
            curve.append({"step": step, "loss": sum(w[0] for w in window) / n,
                          "label_loss": sum(w[1] for w in window) / n,
                          "label_accuracy": sum(w[2] for w in window) / n})  # fmt: skip
            window = []
            progress.set_postfix(label_loss=f"{curve[-1]['label_loss']:.3f}", label_acc=f"{curve[-1]['label_accuracy']:.3f}")
    model.eval()
    return curve


def evaluate(model, tokenizer, tasks, s: Settings) -> list[dict]:
    """Accuracy per K over all held-out tasks, with evaluate_few_shot's per-example random shots."""
    results = []
    for k in tqdm(s.ks, desc="evaluate k-shot", file=sys.stdout):
        correct = n = 0
        for t, (examples, pool) in enumerate(tasks):
            r = evaluate_few_shot(model, tokenizer, examples, pool, k, normalization=s.normalization,
                                  delimiter=DELIMITER, seed=s.eval_seed + 1000 * t + k)
            correct += round(r["accuracy"] * r["n"])
            n += r["n"]
        results.append({"k": k, "accuracy": correct / n, "n": n, "ideal_accuracy": ideal_accuracy(k, s)})
    return results


def plot(result: dict, path: Path) -> None:
    fig, (ax, ax2) = new_figure(ncols=2)
    ks = [r["k"] for r in result["accuracy_per_k"]]
    xs = [max(k, 0.5) for k in ks]  # k = 0 drawn at 0.5 on the log axis, labelled "0"
    ax.plot(xs, [100 * r["accuracy"] for r in result["accuracy_per_k"]], "o-", label="paper-gpt3 (tiny)")
    ax.plot(xs, [100 * r["ideal_accuracy"] for r in result["accuracy_per_k"]], "s--", color="gray",
            alpha=0.7, label="ideal in-context learner")  # fmt: skip
    ax.axhline(100 * result["chance"], color="red", ls=":", label="chance")
    ax.set_xscale("log", base=2)
    ax.set_xticks(xs, [str(k) for k in ks])
    ax.set_xlabel("number of examples in context (K)")
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 100)
    ax.set_title("In-context learning of random word→label maps")
    ax.legend(loc="lower right", fontsize=8)
    curve = result["training_curve"]
    ax2.plot([c["step"] for c in curve], [c["label_loss"] for c in curve], label="loss on label tokens")
    ax2.plot([c["step"] for c in curve], [c["loss"] for c in curve], label="LM loss (all tokens)", alpha=0.7)
    ax2.axhline(math.log(result["settings"]["num_labels"]), color="red", ls=":", label="ln(label words)")
    ax2.set_xlabel("training step")
    ax2.set_ylabel("cross-entropy (nats)")
    ax2.set_title("Training")
    ax2.legend(fontsize=8)
    save_figure(fig, path)


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output-dir", default=f"runs/reproductions/{NAME}")
    parser.add_argument("--smoke", action="store_true", help="tiny run (seconds) that checks the pipeline")
    parser.add_argument("--steps", type=int, default=None, help="override the number of training steps")
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args(argv)
    s = Settings(**SMOKE) if args.smoke else Settings()
    if args.steps is not None:
        s = replace(s, steps=args.steps)
    if args.seed is not None:
        s = replace(s, seed=args.seed)
    out = output_dir(args.output_dir)
    seed_everything(s.seed)

    with Timer() as total:
        words, labels = task_words(s.num_words, s.num_labels)
        tokenizer = build_tokenizer(words, labels)
        model = build_model(tokenizer, s)
        with Timer() as train_time:
            curve = train(model, tokenizer, words, labels, s)
        tasks = held_out_tasks(words, labels, s)
        with Timer() as eval_time:
            per_k = evaluate(model, tokenizer, tasks, s)

    zero = per_k[0]["accuracy"] if per_k[0]["k"] == 0 else float("nan")
    at8 = next((r["accuracy"] for r in per_k if r["k"] == 8), per_k[-1]["accuracy"])
    k_claim = 8 if any(r["k"] == 8 for r in per_k) else per_k[-1]["k"]
    result = {
        "name": NAME,
        "claim": "k-shot in-context accuracy is well above zero-shot (k=8 >= zero-shot + 30 points)",
        "smoke": args.smoke,
        "chance": 1 / s.num_options,
        "accuracy_per_k": per_k,
        "zero_shot_accuracy": zero,
        "claim_k": k_claim,
        "claim_gain_points": 100 * (at8 - zero),
        "claim_holds": bool(at8 >= zero + 0.30),
        "training_curve": curve,
        "num_parameters": sum(p.numel() for p in model.parameters()),
        "vocab_size": len(tokenizer),
        "layer_types": list(model.config.layer_types),
        "train_sequence_tokens": (4 if s.separator else 3) * s.train_pairs - 1,  # no final newline
        "example_prompt_k2": example_prompt(tasks, s),
        "seconds": {"train": train_time.seconds, "evaluate": eval_time.seconds, "total": total.seconds},
        "settings": asdict(s),
    }
    write_json(out / f"{NAME}.json", result)
    plot(result, out / f"{NAME}.png")

    print(f"\nGPT-3 few-shot reproduction ({'smoke' if args.smoke else 'default'}), "
          f"{result['num_parameters']:,} parameters, layers {result['layer_types']}")  # fmt: skip
    print(f"  chance {100 * result['chance']:.1f}%")
    for r in per_k:
        print(f"  k={r['k']:>2}: accuracy {100 * r['accuracy']:5.1f}%   (ideal in-context learner "
              f"{100 * r['ideal_accuracy']:5.1f}%, n={r['n']})")  # fmt: skip
    print(f"  claim (k={k_claim} >= zero-shot + 30 points): {'HOLDS' if result['claim_holds'] else 'does not hold'}"
          f" ({result['claim_gain_points']:+.1f} points)")
    print(f"  time: train {train_time.seconds:.0f}s, evaluate {eval_time.seconds:.0f}s; wrote {out}")
    return result


def example_prompt(tasks, s: Settings) -> str:
    """A k = 2 prompt of the first held-out task, as the model reads it (for the record)."""
    examples, pool = tasks[0]
    k = min(2, len(pool))
    return build_prompt(random.Random(0).sample(pool, k), examples[0], delimiter=DELIMITER)


if __name__ == "__main__":
    main()
