"""The encoders and encoder-decoders against transformers' own, same config, same weights, same run.

    python benchmarks/encoders.py [--quick]        (``benchmarks/run.py`` includes these rows too)

Rows (ratio ours/theirs, higher is better):

1. train step (forward + backward + AdamW, fp32, dropout as configured) of
   ``paper-transformer`` vs ``MarianMTModel`` (post-LN, sinusoidal positions, ReLU, the paper's
   architecture), ``paper-bert`` vs ``BertForPreTraining`` (MLM + NSP) and ``paper-t5`` vs
   ``T5ForConditionalGeneration``;
2. cached greedy decoding with ``generate`` for the two encoder-decoders.

Ours is always ``convert_from_transformers(theirs)``, so both sides hold the same weights; the
checks record that their first losses and their generated tokens agree.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import transformers
from torch import nn

if __package__ in (None, ""):  # run as a script: make `benchmarks` importable from the repo root
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.timing import throughput_row, time_interleaved, train_step_fn  # noqa: E402
from hf_paper_models.convert import convert_from_transformers  # noqa: E402


@dataclass(frozen=True)
class EncoderSizes:
    """transformer-base's width at six layers a side, a vocabulary the size of our trained ones."""

    layers: int = 6
    hidden: int = 512
    heads: int = 8
    ffn: int = 2048
    vocab: int = 8000
    batch: int = 8
    source: int = 128
    target: int = 128
    train_warmup: int = 1
    train_repeats: int = 5
    decode_batch: int = 8
    prompt: int = 32
    new_tokens: int = 64
    decode_repeats: int = 3


DEFAULT = EncoderSizes()
QUICK = EncoderSizes(
    layers=2, hidden=128, heads=4, ffn=512, vocab=1024, batch=2, source=32, target=32,
    train_repeats=2, decode_batch=2, prompt=8, new_tokens=8, decode_repeats=2,
)  # fmt: skip

PAD, EOS, START = 0, 1, 0


def marian(s: EncoderSizes) -> transformers.MarianMTModel:
    """transformers' Marian configured as the 2017 Transformer: post-LN, sinusoids, ReLU, √d scaling."""
    return transformers.MarianMTModel(
        transformers.MarianConfig(
            vocab_size=s.vocab, d_model=s.hidden, encoder_layers=s.layers, decoder_layers=s.layers,
            encoder_attention_heads=s.heads, decoder_attention_heads=s.heads, encoder_ffn_dim=s.ffn,
            decoder_ffn_dim=s.ffn, max_position_embeddings=max(512, s.source, s.target),
            activation_function="relu", scale_embedding=True, dropout=0.1, attention_dropout=0.0,
            activation_dropout=0.0, pad_token_id=PAD, eos_token_id=EOS, decoder_start_token_id=START,
            bos_token_id=None, forced_eos_token_id=None,
        )
    )  # fmt: skip


def bert(s: EncoderSizes) -> transformers.BertForPreTraining:
    return transformers.BertForPreTraining(
        transformers.BertConfig(
            vocab_size=s.vocab, hidden_size=s.hidden, num_hidden_layers=s.layers, num_attention_heads=s.heads,
            intermediate_size=s.ffn, max_position_embeddings=max(512, s.source), pad_token_id=PAD,
        )
    )  # fmt: skip


def t5(s: EncoderSizes) -> transformers.T5ForConditionalGeneration:
    """T5 v1.0 (ReLU FFN, tied embeddings) as ``paper-t5`` converts it."""
    return transformers.T5ForConditionalGeneration(
        transformers.T5Config(
            vocab_size=s.vocab, d_model=s.hidden, d_kv=s.hidden // s.heads, d_ff=s.ffn, num_layers=s.layers,
            num_heads=s.heads, dropout_rate=0.1, feed_forward_proj="relu", tie_word_embeddings=True,
            pad_token_id=PAD, eos_token_id=EOS, decoder_start_token_id=START,
        )
    )  # fmt: skip


def seq2seq_batch(s: EncoderSizes, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Source and target ids (no special ids inside), the last two rows of the source padded by a quarter."""
    input_ids = torch.randint(3, s.vocab, (s.batch, s.source), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[-2:, -s.source // 4 :] = 0
    input_ids = input_ids.masked_fill(attention_mask == 0, PAD)
    labels = torch.randint(3, s.vocab, (s.batch, s.target), generator=generator)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def pretraining_batch(s: EncoderSizes, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Sentence pairs (segments A then B) with 15% of the positions as MLM targets and an NSP label."""
    input_ids = torch.randint(3, s.vocab, (s.batch, s.source), generator=generator)
    token_type_ids = torch.zeros_like(input_ids)
    token_type_ids[:, s.source // 2 :] = 1
    targets = torch.rand(input_ids.shape, generator=generator) < 0.15
    labels = input_ids.masked_fill(~targets, -100)
    return {
        "input_ids": input_ids,
        "token_type_ids": token_type_ids,
        "attention_mask": torch.ones_like(input_ids),
        "labels": labels,
        "next_sentence_label": torch.randint(0, 2, (s.batch,), generator=generator),
    }


MODELS: dict[str, tuple[str, Callable[[EncoderSizes], nn.Module], Callable]] = {
    "transformer": ("paper-transformer vs MarianMTModel", marian, seq2seq_batch),
    "bert": ("paper-bert vs BertForPreTraining (MLM+NSP)", bert, pretraining_batch),
    "t5": ("paper-t5 vs T5ForConditionalGeneration", t5, seq2seq_batch),
}


def pair(name: str, s: EncoderSizes) -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(0)
    theirs = MODELS[name][1](s)
    return convert_from_transformers(theirs), theirs


def bench_train(name: str, s: EncoderSizes, checks: dict) -> dict:
    label, _, make_batch = MODELS[name]
    ours, theirs = pair(name, s)
    batch = make_batch(s, torch.Generator().manual_seed(1))
    for model in (ours, theirs):
        model.eval()
    with torch.no_grad():
        losses = [model(**batch).loss.item() for model in (ours, theirs)]
    checks[f"{name}_initial_loss_abs_diff"] = abs(losses[0] - losses[1])
    for model in (ours, theirs):
        model.train()
    timings = time_interleaved(
        {"ours": train_step_fn(ours, batch), "theirs": train_step_fn(theirs, batch)},
        s.train_warmup,
        s.train_repeats,
    )
    tokens = batch["input_ids"].numel() + (batch["labels"].numel() if name != "bert" else 0)
    shape = f"{s.layers}×{s.hidden}" + (" a side" if name != "bert" else "")
    sequence = f"{s.batch}×{s.source}" + (f"+{s.target}" if name != "bert" else "")
    return throughput_row(
        f"{name}_train_tokens_per_s",
        f"train step fwd+bwd+AdamW, {label}, {shape}, {sequence} tok",
        tokens,
        timings,
        note="tokens = source + target" if name != "bert" else "",
    )


def bench_decode(name: str, s: EncoderSizes, checks: dict) -> dict:
    label = MODELS[name][0]
    ours, theirs = pair(name, s)
    for model in (ours, theirs):
        model.eval()
    generator = torch.Generator().manual_seed(2)
    input_ids = torch.randint(3, s.vocab, (s.decode_batch, s.prompt), generator=generator)
    kwargs = dict(
        input_ids=input_ids,
        attention_mask=torch.ones_like(input_ids),
        max_new_tokens=s.new_tokens,
        min_new_tokens=s.new_tokens,  # random weights: no early EOS, every row decodes the same length
        do_sample=False,
        num_beams=1,
    )
    outputs: dict[str, torch.Tensor] = {}

    def generate(who: str, model: nn.Module) -> Callable[[], None]:
        def call() -> None:
            with torch.inference_mode():
                outputs[who] = model.generate(**kwargs)

        return call

    timings = time_interleaved(
        {"ours": generate("ours", ours), "theirs": generate("theirs", theirs)}, 1, s.decode_repeats
    )
    checks[f"{name}_decode_same_tokens"] = bool(torch.equal(outputs["ours"], outputs["theirs"]))
    return throughput_row(
        f"{name}_decode_tokens_per_s",
        f"greedy generate, {label}, batch {s.decode_batch}, {s.prompt} source + {s.new_tokens} new tok",
        s.decode_batch * s.new_tokens,
        timings,
    )


def encoder_rows(s: EncoderSizes, checks: dict, stage: Callable[[str], None] = lambda _: None) -> list[dict]:
    rows = []
    for name in MODELS:
        stage(f"{name} train step")
        rows.append(bench_train(name, s, checks))
    for name in ("transformer", "t5"):
        stage(f"{name} decode")
        rows.append(bench_decode(name, s, checks))
    return rows


if __name__ == "__main__":
    transformers.logging.set_verbosity_error()
    sizes = QUICK if "--quick" in sys.argv[1:] else DEFAULT
    found: dict = {}
    for r in encoder_rows(sizes, found, lambda stage: print(f"[bench] {stage} …", file=sys.stderr, flush=True)):
        print(f"{r['benchmark']}: ours {r['ours']:,.1f} theirs {r['theirs']:,.1f} {r['unit']} ({r['ratio']:.2f}×)")
    print("checks:", found)
