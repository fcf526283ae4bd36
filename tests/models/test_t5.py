"""T5 (v1.0) against transformers' own implementation, the paper's formulas and sizes, and Figure 2."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import transformers

from hf_paper_models import convert_from_transformers, convert_to_transformers, preset
from hf_paper_models.data.span_corruption import (
    DataCollatorForSpanCorruption,
    random_spans_noise_mask,
    sentinel_ids,
    span_corrupt,
    span_corruption_lengths,
    stsb_target,
    text_to_text,
    translation_prefix,
)
from hf_paper_models.models.t5 import (
    PAPER_PARAMETERS,
    PRESETS,
    PaperT5Config,
    PaperT5EncoderModel,
    PaperT5ForConditionalGeneration,
    PaperT5LayerNorm,
    PaperT5Model,
    relative_position_bucket,
)

THEIR_TINY = dict(
    vocab_size=101,
    d_model=32,
    d_kv=8,
    d_ff=64,
    num_layers=2,
    num_decoder_layers=3,
    num_heads=4,
    relative_attention_num_buckets=8,
    relative_attention_max_distance=20,
    dropout_rate=0.0,
    decoder_start_token_id=0,
)
OUR_TINY = dict(
    vocab_size=101,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=64,
    relative_attention_num_buckets=8,
    relative_attention_max_distance=20,
    max_position_embeddings=64,
)


def count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())  # tied tensors counted once


def their_tiny(cls, **kw):
    torch.manual_seed(0)
    return cls(
        transformers.T5Config(**{**THEIR_TINY, **kw})
    ).eval()  # a fresh config: T5EncoderModel edits it


def ours_tiny(**kw) -> PaperT5ForConditionalGeneration:
    torch.manual_seed(0)
    return PaperT5ForConditionalGeneration(preset("t5-small", **{**OUR_TINY, **kw})).eval()


def ids(batch=3, length=17, vocab=101, seed=0):
    return torch.randint(2, vocab, (batch, length), generator=torch.Generator().manual_seed(seed))


def padded(batch=3, length=17, seed=0):
    input_ids = ids(batch, length, seed=seed)
    mask = torch.ones_like(input_ids)
    input_ids[0, :4], mask[0, :4] = 0, 0  # left padding
    input_ids[1, -5:], mask[1, -5:] = 0, 0  # right padding
    return input_ids, mask


# ---------------------------------------------------------------------------------------------
# Against transformers' T5
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "their_class, our_class",
    [
        (transformers.T5ForConditionalGeneration, PaperT5ForConditionalGeneration),
        (transformers.T5Model, PaperT5Model),
        (transformers.T5EncoderModel, PaperT5EncoderModel),
    ],
)
def test_conversion_both_ways_keeps_outputs(their_class, our_class):
    theirs = their_tiny(their_class)
    ours = convert_from_transformers(theirs)
    assert type(ours) is our_class
    assert any(n.endswith("SelfAttention.q_proj.weight") for n, _ in ours.named_parameters())
    input_ids, mask = padded()
    kwargs = dict(input_ids=input_ids, attention_mask=mask)
    key = "last_hidden_state"
    if their_class is transformers.T5Model:
        kwargs["decoder_input_ids"] = ids(length=11, seed=1)
    if their_class is transformers.T5ForConditionalGeneration:
        kwargs["labels"], key = ids(length=11, seed=1), "logits"
    with torch.no_grad():
        a, b = theirs(**kwargs), ours(**kwargs)
    torch.testing.assert_close(b[key], a[key], atol=1e-4, rtol=1e-4)
    if "labels" in kwargs:
        torch.testing.assert_close(b.loss, a.loss, atol=1e-5, rtol=1e-5)
    back = convert_to_transformers(ours)
    assert type(back) is their_class
    with torch.no_grad():
        torch.testing.assert_close(back(**kwargs)[key], a[key], atol=1e-4, rtol=1e-4)


def test_conversion_from_a_saved_folder_and_losses_match(tmp_path):
    theirs = their_tiny(transformers.T5ForConditionalGeneration)
    theirs.save_pretrained(tmp_path)
    ours = convert_from_transformers(tmp_path)
    input_ids, mask = padded()
    labels = ids(length=9, seed=2)
    labels[0, -3:] = -100
    with torch.no_grad():
        a = theirs(input_ids=input_ids, attention_mask=mask, labels=labels)
        b = ours(input_ids=input_ids, attention_mask=mask, labels=labels)
    torch.testing.assert_close(b.loss, a.loss, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(b.logits, a.logits, atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="convert"):
        PaperT5ForConditionalGeneration.from_pretrained(tmp_path)  # a native checkpoint needs the converter


@pytest.mark.parametrize(
    "change, match",
    [(dict(feed_forward_proj="gated-gelu"), "v1.1"), (dict(tie_word_embeddings=False), "v1.1")],
)
def test_conversion_refuses_t5_v1_1(change, match):
    theirs = their_tiny(transformers.T5ForConditionalGeneration, **change)
    with pytest.raises(ValueError, match=match):
        convert_from_transformers(theirs)


@pytest.mark.parametrize("beams", [1, 3])
def test_generation_matches_transformers(beams):
    # initializer_factor 10 makes a random T5 emit varied tokens (at 1 it repeats the start token).
    theirs = their_tiny(
        transformers.T5ForConditionalGeneration, num_decoder_layers=2, initializer_factor=10.0
    )
    ours = convert_from_transformers(theirs)
    input_ids, mask = padded(length=9)
    kwargs = dict(attention_mask=mask, max_new_tokens=10, min_new_tokens=10, do_sample=False, num_beams=beams)
    expected = theirs.generate(input_ids, **kwargs)
    assert len(expected[:, 1:].unique()) > 3  # a test that can fail
    torch.testing.assert_close(ours.generate(input_ids, **kwargs), expected, rtol=0, atol=0)


@pytest.mark.parametrize("mode", ["greedy", "beam", "sample"])
def test_cache_equals_no_cache_with_varied_output(mode):
    model = ours_tiny(initializer_factor=10.0, num_decoder_layers=3)  # decoder deeper than encoder
    input_ids, mask = padded(length=9)
    kwargs = dict(attention_mask=mask, max_new_tokens=10, min_new_tokens=10)
    kwargs.update(
        {
            "greedy": dict(do_sample=False),
            "beam": dict(do_sample=False, num_beams=3),
            "sample": dict(do_sample=True, top_k=10),
        }[mode]
    )
    outs = []
    for use_cache in (True, False):
        torch.manual_seed(3)
        outs.append(model.generate(input_ids, use_cache=use_cache, **kwargs))
    assert len(outs[0][:, 1:].unique()) > 3
    torch.testing.assert_close(outs[0], outs[1], rtol=0, atol=0)


# ---------------------------------------------------------------------------------------------
# The paper's architecture, checked directly
# ---------------------------------------------------------------------------------------------


def bucket_formula(offset: int, bidirectional: bool, num_buckets: int, max_distance: int) -> int:
    """§2.1 / Mesh TF, written out for one key-minus-query offset."""
    first = 0
    if bidirectional:
        num_buckets //= 2
        first = num_buckets if offset > 0 else 0
        distance = abs(offset)
    else:
        distance = max(-offset, 0)  # keys after the query share bucket 0
    exact = num_buckets // 2
    if distance < exact:
        return first + distance
    log_bucket = exact + int(
        math.log(distance / exact) / math.log(max_distance / exact) * (num_buckets - exact)
    )
    return first + min(log_bucket, num_buckets - 1)


@pytest.mark.parametrize("bidirectional", [True, False])
@pytest.mark.parametrize("num_buckets, max_distance", [(32, 128), (8, 20), (12, 50)])
def test_relative_position_buckets_follow_the_formula(bidirectional, num_buckets, max_distance):
    offsets = torch.arange(-300, 301)
    got = relative_position_bucket(offsets, bidirectional, num_buckets, max_distance).tolist()
    expected = [bucket_formula(o, bidirectional, num_buckets, max_distance) for o in offsets.tolist()]
    assert got == expected


def test_relative_position_buckets_hand_computed():
    """32 buckets, max distance 128 (the paper's): exact below 8, logarithmic to 128, then shared."""
    offsets = torch.tensor([0, -1, -7, -8, -16, -127, -128, -1000, 1, 7, 16, 1000])
    bidirectional = relative_position_bucket(offsets, True, 32, 128).tolist()
    assert bidirectional == [0, 1, 7, 8, 10, 15, 15, 15, 17, 23, 26, 31]
    causal = relative_position_bucket(offsets, False, 32, 128).tolist()
    # causal: 16 exact buckets, log(16/16)->16, log(127/16)/log(8)*16 -> 31; future keys -> 0
    assert causal == [0, 1, 7, 8, 16, 31, 31, 31, 0, 0, 0, 0]


def test_position_bias_is_computed_once_per_stack_and_shared():
    model = ours_tiny()
    tables = [n for n, _ in model.named_parameters() if "relative_attention_bias" in n]
    assert tables == [
        "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
        "decoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
    ]
    attention = model.encoder.block[0].layer[0].SelfAttention
    bias = attention.compute_bias(5, 7)
    table = attention.relative_attention_bias.weight
    for q, k in [(0, 0), (0, 6), (4, 1), (3, 3)]:
        bucket = bucket_formula(k - q, True, 8, 20)
        torch.testing.assert_close(bias[0, :, q, k], table[bucket])
    # The decoder's table is causal, and a cached query at position 6 sees offsets -6 ... 0.
    decoder_attention = model.decoder.block[0].layer[0].SelfAttention
    row = decoder_attention.compute_bias(1, 7, past_length=6)[0, :, 0]
    for k in range(7):
        torch.testing.assert_close(
            row[:, k], decoder_attention.relative_attention_bias.weight[bucket_formula(k - 6, False, 8, 20)]
        )
    # Every layer sees the bias: zeroing the table changes the last layer's output.
    input_ids, mask = padded()
    with torch.no_grad():
        before = model.encoder(input_ids, mask).last_hidden_state
        model.encoder.block[0].layer[0].SelfAttention.relative_attention_bias.weight.zero_()
        after = model.encoder(input_ids, mask).last_hidden_state
    assert not torch.allclose(before, after)


def test_rms_layer_norm_formula():
    norm = PaperT5LayerNorm(6, eps=1e-6)
    with torch.no_grad():
        norm.weight.copy_(torch.tensor([1.0, 2.0, 0.5, -1.0, 3.0, 1.5]))
    x = torch.randn(4, 6) + 3.0  # a large mean: a LayerNorm would subtract it
    expected = norm.weight * x / torch.sqrt((x**2).mean(-1, keepdim=True) + 1e-6)
    torch.testing.assert_close(norm(x), expected)
    assert [n for n, _ in norm.named_parameters()] == ["weight"]  # no bias
    assert not torch.allclose(norm(x), torch.nn.functional.layer_norm(x, (6,), norm.weight, eps=1e-6))


def test_no_biases_tied_head_and_rescaled_output():
    model = ours_tiny()
    assert all(m.bias is None for m in model.modules() if isinstance(m, torch.nn.Linear))
    assert model.lm_head.weight is model.shared.weight is model.encoder.embed_tokens.weight
    assert model.decoder.embed_tokens.weight is model.shared.weight
    input_ids, mask = padded()
    decoder_input_ids = ids(length=6, seed=4)
    with torch.no_grad():
        logits = model(input_ids=input_ids, attention_mask=mask, decoder_input_ids=decoder_input_ids).logits
        memory = model.encoder(input_ids, mask).last_hidden_state
        hidden = model.decoder(decoder_input_ids, encoder_hidden_states=memory, encoder_attention_mask=mask)[
            0
        ]
    torch.testing.assert_close(logits, (hidden * 32**-0.5) @ model.shared.weight.T)


def test_pre_layer_norm_residual_sublayers():
    model = ours_tiny()
    block = model.decoder.block[1]
    x, memory = torch.randn(2, 5, 32), torch.randn(2, 7, 32)
    self_attn, cross, ff = block.layer
    with torch.no_grad():
        causal = torch.full((5, 5), torch.finfo(torch.float32).min).triu(1)
        h = x + self_attn.SelfAttention(self_attn.layer_norm(x), attention_mask=causal)[0]
        h = h + cross.EncDecAttention(cross.layer_norm(h), key_value_states=memory)[0]
        expected = h + ff.DenseReluDense.wo(torch.relu(ff.DenseReluDense.wi(ff.layer_norm(h))))
        got = block(x, causal, memory, None)[0]
    torch.testing.assert_close(got, expected)


def test_t5_initialisation():
    config = preset(
        "t5-small", hidden_size=256, num_hidden_layers=2, num_attention_heads=4, intermediate_size=1024
    )
    torch.manual_seed(0)
    model = PaperT5ForConditionalGeneration(config)
    attention = model.encoder.block[1].layer[0].SelfAttention
    ff = model.encoder.block[1].layer[-1].DenseReluDense
    d, d_kv, d_ff = 256, 64, 1024
    expected = {
        "shared": (model.shared.weight, 1.0),
        "q": (attention.q_proj.weight, (d * d_kv) ** -0.5),  # absorbs the missing 1/sqrt(d_kv)
        "k": (attention.k_proj.weight, d**-0.5),
        "v": (attention.v_proj.weight, d**-0.5),
        "o": (attention.out_proj.weight, (4 * d_kv) ** -0.5),
        "wi": (ff.wi.weight, d**-0.5),
        "wo": (ff.wo.weight, d_ff**-0.5),
        "bias": (model.encoder.block[0].layer[0].SelfAttention.relative_attention_bias.weight, d**-0.5),
    }
    for name, (weight, std) in expected.items():
        assert abs(weight.std().item() - std) / std < 0.25, name
    assert torch.all(model.encoder.final_layer_norm.weight == 1.0)
    assert attention.scaling == 1.0


@pytest.mark.parametrize("name", list(PRESETS))
def test_preset_parameter_counts(name):
    config = preset(name)
    their_config = transformers.T5Config(
        vocab_size=config.vocab_size,
        d_model=config.d_model,
        d_kv=config.d_kv,
        d_ff=config.d_ff,
        num_layers=config.num_layers,
        num_heads=config.num_heads,
    )
    with torch.device("meta"):
        ours, theirs = (
            PaperT5ForConditionalGeneration(config),
            transformers.T5ForConditionalGeneration(their_config),
        )
    assert count(ours) == count(theirs)
    # §3.7's rounded figures; "770 million" for T5-Large is 4.2% above its own architecture (737.7M).
    assert abs(count(ours) - PAPER_PARAMETERS[name]) / PAPER_PARAMETERS[name] < (
        0.05 if name == "t5-large" else 0.03
    )


def test_preset_sizes_are_the_papers():
    assert (preset("t5-3b").d_kv, preset("t5-3b").num_heads, preset("t5-3b").d_ff) == (128, 32, 16384)
    assert (preset("t5-11b").d_kv, preset("t5-11b").num_heads, preset("t5-11b").d_ff) == (128, 128, 65536)
    base = preset("t5-base")
    assert (base.d_model, base.num_layers, base.num_decoder_layers, base.num_heads, base.d_kv) == (
        768,
        12,
        12,
        12,
        64,
    )


# ---------------------------------------------------------------------------------------------
# Config and input validation
# ---------------------------------------------------------------------------------------------


def test_config_defaults_and_aliases():
    config = PaperT5Config()
    assert (config.d_model, config.d_kv, config.d_ff, config.num_layers, config.num_decoder_layers) == (
        512,
        64,
        2048,
        6,
        6,
    )
    assert (config.hidden_size, config.intermediate_size, config.head_dim, config.num_hidden_layers) == (
        512,
        2048,
        64,
        6,
    )
    assert (config.pad_token_id, config.eos_token_id, config.decoder_start_token_id) == (0, 1, 0)
    assert config.is_encoder_decoder and config.tie_word_embeddings and config.feed_forward_proj == "relu"
    assert PaperT5Config(d_model=1024, num_heads=32, d_kv=128).d_kv == 128  # decoupled heads (T5-3B)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(num_hidden_layers=0), "num_hidden_layers"),
        (dict(num_layers=0), "num_layers"),
        (dict(num_decoder_layers=0), "num_decoder_layers"),
        (dict(hidden_size=30, num_attention_heads=4), "divisible"),
        (dict(intermediate_size=0), "intermediate_size"),
        (dict(dropout_rate=1.0), "dropout_rate"),
        (dict(attn_pdrop=-0.1), "attn_pdrop"),
        (dict(relative_attention_num_buckets=2), "relative_attention_num_buckets"),
        (dict(relative_attention_num_buckets=32, relative_attention_max_distance=16), "max_distance"),
        (dict(layer_norm_epsilon=0), "layer_norm_epsilon"),
        (dict(feed_forward_proj="gated-gelu"), "v1.1"),
        (dict(feed_forward_proj="swishy"), "feed_forward_proj"),
        (dict(tie_word_embeddings=False), "tie_word_embeddings"),
        (dict(vocab_size=10, eos_token_id=12), "eos_token_id"),
        (dict(max_position_embeddings=0), "max_position_embeddings"),
    ],
)
def test_config_rejects_impossible_values(kwargs, match):
    with pytest.raises(ValueError, match=match):
        PaperT5Config(**kwargs)


def test_input_checks_and_length_limit():
    model = ours_tiny()
    input_ids, mask = padded(length=10)
    labels = ids(length=5)
    with pytest.raises(ValueError, match="positions"):
        model(input_ids=ids(length=65), labels=labels)
    with pytest.raises(ValueError, match="positions"):
        model(input_ids=input_ids, decoder_input_ids=ids(length=65))
    with pytest.raises(ValueError, match="vocabulary"):
        model(input_ids=input_ids, decoder_input_ids=labels.clone().fill_(101))
    with pytest.raises(ValueError, match="vocabulary"):
        model(input_ids=input_ids, labels=labels.clone().fill_(500))
    with pytest.raises(ValueError, match="attention_mask"):
        model(input_ids=input_ids, attention_mask=mask[:, :-2], labels=labels)
    unlimited = ours_tiny(max_position_embeddings=None)  # T5 itself has no hard limit
    with torch.no_grad():
        assert unlimited(input_ids=ids(length=80), labels=labels).logits.shape == (3, 5, 101)


# ---------------------------------------------------------------------------------------------
# Span corruption (§3.1.4, Figure 2) and the text-to-text format (§2.4)
# ---------------------------------------------------------------------------------------------

FIGURE_2 = "Thank you for inviting me to your party last week .".split()


def test_span_corruption_reproduces_figure_2():
    vocab = {w: i + 3 for i, w in enumerate(FIGURE_2)}
    top = 99  # <extra_id_0>
    names = {**{i: w for w, i in vocab.items()}, top: "<X>", top - 1: "<Y>", top - 2: "<Z>"}
    tokens = [vocab[w] for w in FIGURE_2]
    noise = [w in ("for", "inviting", "last") for w in FIGURE_2]
    inputs, targets = span_corrupt(tokens, noise, top)
    assert " ".join(names[t] for t in inputs) == "Thank you <X> me to your party <Y> week ."
    assert " ".join(names[t] for t in targets) == "<X> for inviting <Y> last <Z>"
    inputs, targets = span_corrupt(tokens, noise, top, eos_token_id=1)
    assert inputs[-1] == targets[-1] == 1
    # A mask that starts with noise still puts each span after its own sentinel.
    noise = [w in ("Thank", "party") for w in FIGURE_2]
    inputs, targets = span_corrupt(tokens, noise, top)
    assert " ".join(names[t] for t in inputs) == "<X> you for inviting me to your <Y> last week ."
    assert " ".join(names[t] for t in targets) == "<X> Thank <Y> party <Z>"


def test_random_span_mask_statistics():
    rng = np.random.default_rng(0)
    noise_tokens = total = spans = 0
    first_is_noise = last_is_noise = 0
    position_rate = np.zeros(50)
    for _ in range(3000):
        length = int(rng.integers(50, 400))
        mask = random_spans_noise_mask(length, 0.15, 3.0, rng)
        assert mask.shape == (length,) and mask.dtype == bool
        noise_tokens += mask.sum()
        total += length
        spans += (mask & ~np.concatenate([[False], mask[:-1]])).sum()
        first_is_noise += mask[0]
        last_is_noise += mask[-1]
        position_rate += mask[:50]
    assert abs(noise_tokens / total - 0.15) < 0.005  # §3.1.4: 15% of the tokens
    assert abs(noise_tokens / spans - 3.0) < 0.1  # §3.3.4: mean span length 3
    assert first_is_noise == 0 and last_is_noise == 3000  # kept, noise, ..., noise (as T5's code)
    assert abs(position_rate[10:].mean() / 3000 - 0.15) < 0.02  # spread along the sequence
    with pytest.raises(ValueError, match="noise_density"):
        random_spans_noise_mask(10, noise_density=0.0)


def test_span_corruption_lengths_match_t5_pretraining():
    assert span_corruption_lengths(512) == (568, 114)  # T5's 512-token inputs from 568 raw tokens
    collator = DataCollatorForSpanCorruption(sentinel_start_id=99, eos_token_id=1, pad_token_id=0)
    batch = collator([list(range(3, 3 + 568)), list(range(10, 10 + 568))])
    assert batch["input_ids"].shape == (2, 512) and batch["labels"].shape == (2, 114)
    with pytest.raises(ValueError, match="sentinels"):
        collator([list(range(3000))])  # 150 spans, 100 sentinels


@pytest.fixture(scope="module")
def unigram():
    from hf_paper_models.tokenizers import get_tokenizer

    return get_tokenizer("unigram", vocab_size=1000)


def test_collator_with_the_unigram_tokenizer_round_trips(unigram):
    top = sentinel_ids(unigram, 3)
    assert top == [len(unigram) - 1, len(unigram) - 2, len(unigram) - 3]  # descending from the top
    texts = [
        "the dog eats the bread in the park because it is hungry and the sun is warm today",
        "a small red ball rolls under the table while the children sing a song",
    ]
    blocks = [unigram(t, add_special_tokens=False)["input_ids"] for t in texts]
    collator = DataCollatorForSpanCorruption(unigram, seed=1)
    batch = collator([{"input_ids": b} for b in blocks])
    assert set(batch) == {"input_ids", "attention_mask", "labels"}
    again = collator([{"input_ids": b} for b in reversed(blocks)])  # a pure function of each example
    torch.testing.assert_close(
        again["input_ids"][0, : batch["attention_mask"][1].sum()],
        batch["input_ids"][1, : batch["attention_mask"][1].sum()],
    )
    for row, block in enumerate(blocks):
        inputs = batch["input_ids"][row][batch["attention_mask"][row].bool()].tolist()
        labels = [t for t in batch["labels"][row].tolist() if t != -100]
        assert inputs[-1] == labels[-1] == unigram.eos_token_id
        # Put the spans back where their sentinels stand: the original block.
        spans, current = {}, None
        for t in labels[:-1]:
            if t >= len(unigram) - 100:  # a sentinel
                current = t
                spans[current] = []
            else:
                spans[current].append(t)
        restored = [x for t in inputs[:-1] for x in (spans[t] if t in spans else [t])]
        assert restored == block
        noise = sum(len(s) for s in spans.values())
        assert noise == round(0.15 * len(block))
    text = unigram.decode(batch["input_ids"][0])
    assert "<extra_id_0>" in text


def test_text_to_text_prefixes():
    assert (
        text_to_text("translate_en_de", text="That is good.") == "translate English to German: That is good."
    )
    assert (
        text_to_text("cola", sentence="The course is jumping well.")
        == "cola sentence: The course is jumping well."
    )
    assert text_to_text(
        "stsb", sentence1="The rhino grazed on the grass.", sentence2="A rhino is grazing in a field."
    ) == ("stsb sentence1: The rhino grazed on the grass. sentence2: A rhino is grazing in a field.")
    assert text_to_text("summarize", text="state authorities dispatched ...").startswith("summarize: ")
    assert translation_prefix("English", "Target") == "translate English to Target: "
    assert (stsb_target(3.82), stsb_target(3.9), stsb_target(1)) == ("3.8", "4.0", "1.0")
    with pytest.raises(ValueError, match="sentence2"):
        text_to_text("rte", sentence1="a")
