"""RNNsearch's speed, and where its time goes.

    python benchmarks/rnnsearch.py [--quick] [--out benchmarks/rnnsearch_results.json]

There is no transformers implementation of RNNsearch, so there is no ours/theirs ratio for the model.
What is measured, at the size of ``Sizes`` (stated in the JSON and the table):

1. training throughput: forward + backward + AdamW on a fixed batch, tokens/s (source + target tokens);
2. decoding throughput: ``generate()`` with greedy search and with beam 4, sentences/s, every sentence
   forced to the same number of new tokens (``min_new_tokens`` = ``max_new_tokens``);
3. where the time goes: forward hooks time each part of the model inside a training forward pass and
   inside greedy and beam decoding — the encoder (embeddings + both GRUs), the alignment model (U_a h_j
   once per sentence, then W_a s_{i-1}, the energies, softmax and context at every target word), the
   decoder GRU (the gates, W E y_{i-1} precomputed for all positions included, and the sums and max of
   the maxout, which run in the same step), the deep output's matrices (U_o, V_o, C_o) and the output
   layer W_o; "rest" is everything not inside those modules
   (the loss/softmax, the Python loop, generation's logits processing and beam bookkeeping). The
   backward pass and the optimizer are timed as wholes;
4. a reference for the one fused kernel: the model's GRU path (``torch.gru`` called with ``nn.GRU``'s
   parameters, so that it compiles) against ``nn.GRU`` itself, same weights, forward + backward,
   interleaved; the JSON records that both give the same states.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

if __package__ in (None, ""):  # run as a script: make `benchmarks` importable from the repo root
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.timing import machine_info, row, time_interleaved, train_step_fn  # noqa: E402
from hf_paper_models import preset  # noqa: E402
from hf_paper_models.models.rnnsearch import (  # noqa: E402
    PaperRNNSearchForConditionalGeneration,
    PaperRNNSearchGRU,
)


@dataclass(frozen=True)
class Sizes:
    """A mid-sized RNNsearch (a quarter of the paper's n = 1000, m = 620, l = 500) on sentence-length
    inputs; the embedded corpus's sentences are 5-80 words."""

    hidden: int = 256  # n (and n')
    embedding: int = 160  # m
    maxout: int = 128  # l
    vocab: int = 8000
    batch: int = 32
    source: int = 32
    target: int = 32
    train_warmup: int = 1
    train_repeats: int = 5
    decode_batch: int = 16
    new_tokens: int = 32
    num_beams: int = 4
    decode_repeats: int = 3
    profile_repeats: int = 3


DEFAULT = Sizes()
QUICK = Sizes(
    hidden=64, embedding=48, maxout=32, vocab=1024, batch=8, source=16, target=16, train_repeats=2,
    decode_batch=4, new_tokens=8, decode_repeats=2, profile_repeats=1,
)  # fmt: skip

PAD, BOS, EOS = 0, 1, 2
PARTS = ("encoder", "alignment", "decoder GRU", "deep output", "output layer W_o", "rest")


def build_model(s: Sizes) -> PaperRNNSearchForConditionalGeneration:
    torch.manual_seed(0)
    config = preset(
        "rnnsearch-50", vocab_size=s.vocab, hidden_size=s.hidden, embedding_size=s.embedding,
        alignment_size=s.hidden, maxout_size=s.maxout, max_position_embeddings=max(512, 4 * s.source),
        pad_token_id=PAD, bos_token_id=BOS, eos_token_id=EOS,
    )  # fmt: skip
    return PaperRNNSearchForConditionalGeneration(config)


def make_batch(s: Sizes, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Random ids (no special ids inside), the last quarter of the rows' sources padded by a quarter."""
    input_ids = torch.randint(3, s.vocab, (s.batch, s.source), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[-max(1, s.batch // 4) :, -s.source // 4 :] = 0
    return {
        "input_ids": input_ids.masked_fill(attention_mask == 0, PAD),
        "attention_mask": attention_mask,
        "labels": torch.randint(3, s.vocab, (s.batch, s.target), generator=generator),
    }


class PartTimer:
    """Forward hooks that add up the wall-clock time spent inside chosen sub-modules (a module in two
    groups is timed for each)."""

    def __init__(self, model: PaperRNNSearchForConditionalGeneration):
        step = model.model.decoder.step
        groups: dict[str, list[nn.Module]] = {
            "encoder": [model.model.encoder],
            "alignment": [step.alignment, step.alignment.U_a],  # U_a h_j runs once, outside alignment()
            "U_a": [step.alignment.U_a],
            "step": [step],  # one decoder position; minus its alignment and deep output = the GRU
            "step_deep": [step.U_o, step.C_o],  # the deep output inside the step
            "word_gates": [model.model.decoder.word_gates],  # W E y_{i-1} + b, all positions at once
            "deep output": [step.U_o, step.C_o, model.model.decoder.V_o],
            "output layer W_o": [model.lm_head],
        }
        self.seconds: dict[str, float] = defaultdict(float)
        self.started: dict[tuple[int, str], float] = {}
        self.handles = []
        for name, modules in groups.items():
            for module in modules:
                self.handles.append(module.register_forward_pre_hook(self._start(name)))
                self.handles.append(module.register_forward_hook(self._stop(name)))

    def _start(self, name):
        def hook(module, args):
            self.started[id(module), name] = time.perf_counter()

        return hook

    def _stop(self, name):
        def hook(module, args, output):
            self.seconds[name] += time.perf_counter() - self.started.pop((id(module), name))

        return hook

    def reset(self) -> None:
        self.seconds.clear()

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()

    def parts(self, total: float) -> dict[str, float]:
        """Seconds by part of ``total``."""
        t = self.seconds
        inside_step = (t["alignment"] - t["U_a"]) + t["step_deep"]
        parts = {
            "encoder": t["encoder"],
            "alignment": t["alignment"],
            "decoder GRU": t["step"] - inside_step + t["word_gates"],
            "deep output": t["deep output"],
            "output layer W_o": t["output layer W_o"],
        }
        parts["rest"] = total - sum(parts.values())
        return parts


def profile(fn, timer: PartTimer, repeats: int) -> tuple[float, dict[str, float]]:
    """Median total seconds of ``fn`` and the parts of the median call."""
    runs = []
    for _ in range(repeats):
        timer.reset()
        start = time.perf_counter()
        fn()
        total = time.perf_counter() - start
        runs.append((total, timer.parts(total)))
    runs.sort(key=lambda r: r[0])
    return runs[len(runs) // 2]


def bench(s: Sizes) -> dict:
    results: dict = {"sizes": asdict(s), "rows": [], "breakdown": {}, "checks": {}}
    model = build_model(s)
    results["parameters"] = model.num_parameters()
    batch = make_batch(s, torch.Generator().manual_seed(1))
    tokens = int(batch["attention_mask"].sum()) + batch["labels"].numel()

    # 1. training throughput
    model.train()
    step = train_step_fn(model, batch)
    timing = time_interleaved({"train": step}, s.train_warmup, s.train_repeats)["train"]
    train = {"tokens_per_second": tokens / timing.median, "step_seconds": timing.samples, "tokens": tokens}
    results["train"] = train

    # 3a. where a training step's time goes: forward parts, then backward and AdamW as wholes
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    timer = PartTimer(model)
    forward_runs, backward, update = [], [], []
    for _ in range(s.profile_repeats):
        timer.reset()
        start = time.perf_counter()
        loss = model(**batch).loss
        middle = time.perf_counter()
        forward_runs.append((middle - start, timer.parts(middle - start)))
        loss.backward()
        after = time.perf_counter()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        backward.append(after - middle)
        update.append(time.perf_counter() - after)
    forward_runs.sort(key=lambda r: r[0])
    forward_total, forward_parts = forward_runs[len(forward_runs) // 2]
    results["breakdown"]["train_step"] = {
        "forward": forward_total,
        "forward_parts": forward_parts,
        "backward": sorted(backward)[len(backward) // 2],
        "optimizer": sorted(update)[len(update) // 2],
    }

    # 2. decoding throughput, and 3b. where decoding's time goes
    model.eval()
    source = {k: batch[k][: s.decode_batch] for k in ("input_ids", "attention_mask")}
    decode = {}
    for name, beams in (("greedy", 1), (f"beam{s.num_beams}", s.num_beams)):
        kwargs = dict(**source, max_new_tokens=s.new_tokens, min_new_tokens=s.new_tokens, num_beams=beams,
                      do_sample=False, length_penalty=1.0)  # fmt: skip

        def call(kwargs=kwargs):
            with torch.inference_mode():
                return model.generate(**kwargs)

        timer.remove()
        timing = time_interleaved({name: call}, 1, s.decode_repeats)[name]
        timer = PartTimer(model)
        total, parts = profile(call, timer, s.profile_repeats)
        decode[name] = {
            "sentences_per_second": s.decode_batch / timing.median,
            "tokens_per_second": s.decode_batch * s.new_tokens / timing.median,
            "seconds": timing.samples,
            "profiled_seconds": total,
            "parts": parts,
        }
    timer.remove()
    results["decode"] = decode

    # 4. the functional GRU path against nn.GRU, same weights
    ours = PaperRNNSearchGRU(s.embedding, s.hidden)
    theirs = nn.GRU(s.embedding, s.hidden, batch_first=True)
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(s.batch, s.source, s.embedding, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        results["checks"]["gru_max_abs_diff"] = float((ours(x) - theirs(x)[0]).abs().max())

    def fwd_bwd(module, pick):
        def call():
            pick(module(x)).sum().backward()

        return call

    gru = time_interleaved(
        {"ours": fwd_bwd(ours, lambda y: y), "theirs": fwd_bwd(theirs, lambda y: y[0])},
        1,
        3 * s.train_repeats,
    )
    gru_tokens = s.batch * s.source
    results["rows"].append(row(
        "gru_fwd_bwd_tokens_per_s", f"GRU layer fwd+bwd, torch.gru path vs nn.GRU, {s.embedding}->{s.hidden}, "
        f"{s.batch}×{s.source}", "tokens/s", gru_tokens / gru["ours"].median, gru_tokens / gru["theirs"].median,
        timings=(gru["ours"], gru["theirs"]),
    ))  # fmt: skip
    return results


def table(results: dict) -> str:
    s = results["sizes"]
    lines = [
        f"RNNsearch n = {s['hidden']}, m = {s['embedding']}, n' = {s['hidden']}, l = {s['maxout']}, vocabulary "
        f"{s['vocab']} ({results['parameters'] / 1e6:.2f}M parameters); training batch {s['batch']} × "
        f"({s['source']} + {s['target']}) tokens; decoding {s['decode_batch']} sentences × {s['new_tokens']} new "
        f"tokens; {results['machine']['torch_threads']} thread(s)",
        "",
        "| measure | value |",
        "|---|---|",
        f"| training, fwd + bwd + AdamW | {results['train']['tokens_per_second']:,.0f} tokens/s |",
    ]
    for name, d in results["decode"].items():
        lines.append(f"| decoding, {name} | {d['sentences_per_second']:,.1f} sentences/s "
                     f"({d['tokens_per_second']:,.0f} tokens/s) |")  # fmt: skip
    r = results["rows"][0]
    lines.append(
        f"| {r['benchmark']} | {r['ours']:,.0f} vs {r['theirs']:,.0f} tokens/s ({r['ratio']:.2f}×) |"
    )
    step = results["breakdown"]["train_step"]
    whole = step["forward"] + step["backward"] + step["optimizer"]
    header = ["part", "train forward", "greedy decode", f"beam{s['num_beams']} decode"]
    lines += ["", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    columns = [(step["forward"], step["forward_parts"])] + [
        (d["profiled_seconds"], d["parts"]) for d in results["decode"].values()
    ]
    for part in PARTS:
        cells = [
            f"{parts[part] * 1e3:,.1f} ms ({100 * parts[part] / total:.0f}%)" for total, parts in columns
        ]
        lines.append(f"| {part} | " + " | ".join(cells) + " |")
    lines.append("| total | " + " | ".join(f"{total * 1e3:,.1f} ms" for total, _ in columns) + " |")
    lines.append("")
    lines.append(f"training step: forward {step['forward'] * 1e3:,.1f} ms ({100 * step['forward'] / whole:.0f}%), "
                 f"backward {step['backward'] * 1e3:,.1f} ms ({100 * step['backward'] / whole:.0f}%), AdamW "
                 f"{step['optimizer'] * 1e3:,.1f} ms ({100 * step['optimizer'] / whole:.0f}%)")  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, a few seconds")
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "rnnsearch_results.json"))
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else DEFAULT
    machine = machine_info()
    results = bench(sizes)
    results.update(run="quick" if args.quick else "default", machine=machine)
    print(table(results))
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    return results


if __name__ == "__main__":
    main()
