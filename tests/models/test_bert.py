"""BERT against transformers' own implementation, the paper's sizes and its pre-training data."""

from __future__ import annotations

import pytest
import torch
import transformers
from transformers import AutoConfig, DataCollatorForLanguageModeling, pipeline

from hf_paper_models import convert_from_transformers, convert_to_transformers, preset
from hf_paper_models.data.corpus import lm_corpus
from hf_paper_models.data.nsp import (
    IS_NEXT,
    NOT_NEXT,
    DataCollatorForMLMAndNSP,
    build_nsp_pairs,
    nsp_dataset,
    split_sentences,
    tokenize_pairs,
    word_order_task,
)
from hf_paper_models.models.bert import (
    PAPER_PARAMETERS,
    PRESETS,
    PaperBertConfig,
    PaperBertForMaskedLM,
    PaperBertForMultipleChoice,
    PaperBertForNextSentencePrediction,
    PaperBertForPreTraining,
    PaperBertForQuestionAnswering,
    PaperBertForSequenceClassification,
    PaperBertForTokenClassification,
    PaperBertModel,
)
from hf_paper_models.tokenizers import get_tokenizer

VOCAB = 101
TINY = dict(
    vocab_size=VOCAB,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=64,
    max_position_embeddings=48,
    pad_token_id=0,
)


def count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())  # tied tensors counted once


def tiny(**overrides) -> PaperBertConfig:
    return preset("bert-base", **{**TINY, **overrides})


def pair_inputs(batch: int = 3, length: int = 17, seed: int = 0) -> dict[str, torch.Tensor]:
    """[CLS]-like first token, segments A then B, the first row right-padded by 4."""
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(5, VOCAB, (batch, length), generator=generator)
    token_type_ids = torch.zeros_like(input_ids)
    token_type_ids[:, length // 2 :] = 1
    attention_mask = torch.ones_like(input_ids)
    input_ids[0, -4:], token_type_ids[0, -4:], attention_mask[0, -4:] = 0, 0, 0
    return {"input_ids": input_ids, "token_type_ids": token_type_ids, "attention_mask": attention_mask}


# Per head: transformers' class, ours, the outputs compared, and labels for the loss.
def _labels(name: str, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(3)
    ids = inputs["input_ids"]
    b, n = ids.shape[0], ids.shape[-1]
    mlm = torch.full((b, n), -100)
    picked = torch.rand(b, n, generator=generator) < 0.3
    mlm[picked] = ids.reshape(b, -1, n)[:, 0][picked]
    return {
        "BertModel": {},
        "BertForPreTraining": {"labels": mlm, "next_sentence_label": torch.tensor([0, 1, 1])},
        "BertForMaskedLM": {"labels": mlm},
        "BertForNextSentencePrediction": {"labels": torch.tensor([1, 0, 1])},
        "BertForSequenceClassification": {"labels": torch.tensor([2, 0, 1])},
        "BertForTokenClassification": {"labels": torch.randint(0, 3, (b, n), generator=generator)},
        "BertForQuestionAnswering": {
            "start_positions": torch.tensor([1, 5, 9]),
            "end_positions": torch.tensor([3, 5, 16]),
        },
        "BertForMultipleChoice": {"labels": torch.tensor([1, 0, 1])},
    }[name]


HEADS = [
    ("BertModel", PaperBertModel, ["last_hidden_state", "pooler_output"]),
    ("BertForPreTraining", PaperBertForPreTraining, ["prediction_logits", "seq_relationship_logits", "loss"]),
    ("BertForMaskedLM", PaperBertForMaskedLM, ["logits", "loss"]),
    ("BertForNextSentencePrediction", PaperBertForNextSentencePrediction, ["logits", "loss"]),
    ("BertForSequenceClassification", PaperBertForSequenceClassification, ["logits", "loss"]),
    ("BertForTokenClassification", PaperBertForTokenClassification, ["logits", "loss"]),
    ("BertForQuestionAnswering", PaperBertForQuestionAnswering, ["start_logits", "end_logits", "loss"]),
    ("BertForMultipleChoice", PaperBertForMultipleChoice, ["logits", "loss"]),
]


def their_tiny(name: str, **kw) -> transformers.PreTrainedModel:
    torch.manual_seed(0)
    num_labels = 2 if name == "BertForQuestionAnswering" else 3
    config = transformers.BertConfig(**{**TINY, "num_labels": num_labels, **kw})
    return getattr(transformers, name)(config).eval()


@pytest.mark.parametrize("their_name, our_class, keys", HEADS, ids=[h[0] for h in HEADS])
def test_conversion_both_ways_keeps_outputs_and_losses(their_name, our_class, keys):
    theirs = their_tiny(their_name)
    ours = convert_from_transformers(theirs)
    assert type(ours) is our_class and ours.config.model_type == "paper-bert"
    inputs = pair_inputs()
    if their_name == "BertForMultipleChoice":  # (batch, choices, sequence)
        inputs = {k: torch.stack([v, v.flip(-1)], dim=1) for k, v in inputs.items()}
    inputs.update(_labels(their_name, inputs))
    back = convert_to_transformers(ours)
    assert type(back) is type(theirs)
    with torch.no_grad():
        expected, got, again = theirs(**inputs), ours(**inputs), back(**inputs)
    for key in keys:
        assert expected[key] is not None, key
        torch.testing.assert_close(got[key], expected[key], atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(again[key], expected[key], atol=1e-4, rtol=1e-4)


def test_attention_parameters_are_renamed_and_nothing_else():
    theirs = their_tiny("BertForPreTraining")
    ours = convert_from_transformers(theirs)
    their_keys, our_keys = set(theirs.state_dict()), set(ours.state_dict())
    assert "bert.encoder.layer.1.attention.self.q_proj.weight" in our_keys
    assert "bert.encoder.layer.1.attention.self.out_proj.bias" in our_keys
    renamed = {k for k in their_keys if ".attention.self." in k or ".attention.output.dense." in k}
    assert len(renamed) == 2 * 8  # (q, k, v, out) × (weight, bias) × 2 layers
    assert their_keys - renamed == our_keys - {k for k in our_keys if "_proj." in k}


def test_conversion_from_a_saved_folder(tmp_path):
    theirs = their_tiny("BertForMaskedLM")
    theirs.save_pretrained(tmp_path)
    ours = convert_from_transformers(tmp_path)
    inputs = pair_inputs()
    labels = _labels("BertForMaskedLM", inputs)["labels"]
    with torch.no_grad():
        torch.testing.assert_close(ours(**inputs, labels=labels).loss, theirs(**inputs, labels=labels).loss)
    with pytest.raises(ValueError, match="convert"):
        PaperBertForMaskedLM.from_pretrained(tmp_path)  # a native checkpoint needs the converter


def test_mlm_decoder_is_tied_to_the_token_embedding():
    model = PaperBertForPreTraining(tiny())
    predictions = model.cls.predictions
    assert predictions.decoder.weight is model.bert.embeddings.word_embeddings.weight
    assert predictions.decoder.bias is predictions.bias
    assert torch.count_nonzero(predictions.bias) == 0


@pytest.mark.parametrize("name", list(PRESETS))
def test_preset_parameter_counts(name):
    config = preset(name)
    their_config = transformers.BertConfig(
        hidden_size=config.hidden_size,
        num_hidden_layers=config.num_hidden_layers,
        num_attention_heads=config.num_attention_heads,
        intermediate_size=config.intermediate_size,
    )
    with torch.device("meta"):
        encoder, theirs = PaperBertModel(config), transformers.BertModel(their_config)
        pretraining, their_pretraining = (
            PaperBertForPreTraining(config),
            transformers.BertForPreTraining(their_config),
        )
    assert count(encoder) == count(theirs)
    assert count(pretraining) == count(their_pretraining)
    # The paper's 110M / 340M count the encoder (embeddings, layers, pooler) without the MLM/NSP heads:
    # 109.5M (0.5% under 110M) and 335.1M (1.4% under 340M).
    assert abs(count(encoder) - PAPER_PARAMETERS[name]) / PAPER_PARAMETERS[name] < 0.02
    assert count(encoder) == {"bert-base": 109_482_240, "bert-large": 335_141_888}[name]


def test_post_layer_norm_structure_by_hand():
    """Embeddings = LN(token + segment + position); layer: h = LN1(x + Attn(x)), out = LN2(h + FFN(h))."""
    model = PaperBertModel(tiny(num_hidden_layers=1)).eval()
    inputs = pair_inputs()
    ids, types = inputs["input_ids"][1:2], inputs["token_type_ids"][1:2]
    emb, layer = model.embeddings, model.encoder.layer[0]
    with torch.no_grad():
        x = (
            emb.word_embeddings(ids)
            + emb.token_type_embeddings(types)
            + emb.position_embeddings.weight[: ids.shape[1]]
        )
        x = emb.LayerNorm(x)
        attention = layer.attention.self
        q, k, v = (
            proj(x).view(1, -1, 4, 8).transpose(1, 2)
            for proj in (attention.q_proj, attention.k_proj, attention.v_proj)
        )
        weights = torch.softmax(q @ k.transpose(-1, -2) / 8**0.5, dim=-1)  # bidirectional: no causal mask
        attn = attention.out_proj((weights @ v).transpose(1, 2).reshape(1, -1, 32))
        h = layer.attention.output.LayerNorm(x + attn)
        ffn = layer.output.dense(torch.nn.functional.gelu(layer.intermediate.dense(h)))
        expected = layer.output.LayerNorm(h + ffn)
        out = model(ids, token_type_ids=types)
    torch.testing.assert_close(out.last_hidden_state, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.pooler_output, torch.tanh(model.pooler.dense(expected[:, 0])))


def test_eager_attentions_hidden_states_and_padding():
    config = tiny(attn_implementation="eager")
    model = PaperBertModel(config).eval()
    inputs = pair_inputs()
    with torch.no_grad():
        out = model(**inputs, output_attentions=True, output_hidden_states=True)
    assert (
        len(out.hidden_states) == config.num_hidden_layers + 1
        and len(out.attentions) == config.num_hidden_layers
    )
    assert out.attentions[0].shape == (3, 4, 17, 17)
    assert out.attentions[0][0, :, :, -4:].abs().max() == 0  # padded keys get no weight
    torch.testing.assert_close(out.attentions[0].sum(-1), torch.ones(3, 4, 17))
    # padding changes nothing for the real tokens
    with torch.no_grad():
        alone = model(inputs["input_ids"][:1, :-4], token_type_ids=inputs["token_type_ids"][:1, :-4])
    torch.testing.assert_close(
        out.last_hidden_state[0, :-4], alone.last_hidden_state[0], atol=1e-5, rtol=1e-5
    )
    sdpa = PaperBertModel(tiny()).eval()
    assert sdpa.config._attn_implementation == "sdpa"
    with pytest.raises(ValueError, match="eager"):
        sdpa(**inputs, output_attentions=True)


def test_bad_inputs_raise_value_errors():
    model = PaperBertForMultipleChoice(tiny()).eval()
    base = PaperBertModel(tiny()).eval()
    inputs = pair_inputs()
    with pytest.raises(ValueError, match="token_type_ids"):
        base(**{**inputs, "token_type_ids": inputs["token_type_ids"] * 2})  # segment 2 of 2
    with pytest.raises(ValueError, match="position_ids"):
        base(inputs["input_ids"], position_ids=torch.arange(17).unsqueeze(0) + 40)
    with pytest.raises(ValueError, match="token_type_ids"):
        base(inputs["input_ids"], token_type_ids=inputs["token_type_ids"][:, :-1])
    with pytest.raises(ValueError, match="choices"):
        model(**inputs)  # 2-D input to the multiple-choice head
    stacked = {k: torch.stack([v, v], dim=1) for k, v in inputs.items()}
    with pytest.raises(ValueError, match="attention_mask"):
        model(**{**stacked, "attention_mask": inputs["attention_mask"]})


@pytest.mark.parametrize(
    "field, value, match",
    [
        ("num_attention_heads", 5, "divisible"),
        ("hidden_act", "swishy", "hidden_act"),
        ("hidden_dropout_prob", 1.0, "hidden_dropout_prob"),
        ("attn_pdrop", 1.5, "attn_pdrop"),
        ("classifier_dropout", -0.1, "classifier_dropout"),
        ("type_vocab_size", 0, "type_vocab_size"),
        ("pad_token_id", 500, "pad_token_id"),
        ("layer_norm_eps", 0.0, "layer_norm_eps"),
        ("max_position_embeddings", 0, "max_position_embeddings"),
    ],
)
def test_config_rejects_impossible_values(field, value, match):
    with pytest.raises(ValueError, match=match) as error:
        tiny(**{field: value})
    assert repr(value) in str(error.value) or str(value) in str(error.value)


def test_config_defaults_are_bert_base_with_transformers_names():
    ours, theirs = AutoConfig.for_model("paper-bert"), transformers.BertConfig()
    assert type(ours) is PaperBertConfig
    for name in (
        "vocab_size",
        "hidden_size",
        "num_hidden_layers",
        "num_attention_heads",
        "intermediate_size",
        "hidden_act",
        "hidden_dropout_prob",
        "attention_probs_dropout_prob",
        "max_position_embeddings",
        "type_vocab_size",
        "initializer_range",
        "layer_norm_eps",
        "pad_token_id",
        "classifier_dropout",
    ):
        assert getattr(ours, name) == getattr(theirs, name), name
    assert PaperBertConfig(d_model=64, n_head=4, attn_pdrop=0.2).attention_probs_dropout_prob == 0.2


def test_pretraining_loss_is_mlm_plus_nsp():
    model = PaperBertForPreTraining(tiny()).eval()
    inputs = pair_inputs()
    labels = _labels("BertForPreTraining", inputs)
    with torch.no_grad():
        both = model(**inputs, **labels)
        mlm = model(**inputs, labels=labels["labels"]).loss
        nsp = model(**inputs, next_sentence_label=labels["next_sentence_label"]).loss
        logits = both.prediction_logits[labels["labels"] != -100]
    expected_mlm = torch.nn.functional.cross_entropy(logits, labels["labels"][labels["labels"] != -100])
    torch.testing.assert_close(mlm, expected_mlm)
    torch.testing.assert_close(both.loss, mlm + nsp)


def test_gradient_checkpointing_gives_the_same_gradients():
    grads = []
    inputs = pair_inputs()
    labels = _labels("BertForPreTraining", inputs)
    for checkpointing in (False, True):
        torch.manual_seed(0)
        model = PaperBertForPreTraining(
            tiny(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
        ).train()
        if checkpointing:
            model.gradient_checkpointing_enable()
        model(**inputs, **labels).loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], atol=1e-6, rtol=1e-5)


def test_lora_adapter_trains_and_reloads(tmp_path):
    from peft import LoraConfig, PeftModel, get_peft_model

    torch.manual_seed(0)
    config = tiny()
    model = get_peft_model(
        PaperBertForMaskedLM(config), LoraConfig(target_modules="all-linear", r=4, lora_alpha=8)
    )
    inputs = pair_inputs()
    labels = _labels("BertForMaskedLM", inputs)["labels"]
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for _ in range(6):
        loss = model(**inputs, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    model.eval().save_pretrained(tmp_path)
    with torch.no_grad():
        expected = model(**inputs).logits
    torch.manual_seed(0)
    reloaded = PeftModel.from_pretrained(PaperBertForMaskedLM(config), tmp_path).eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**inputs).logits, expected)


# ---------------------------------------------------------------------------------------------
# Tokenizer, fill-mask pipeline and the pre-training data
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def wordpiece():
    return get_tokenizer("wordpiece", vocab_size=1000)


def test_fill_mask_pipeline_returns_the_models_top_k(tmp_path, wordpiece):
    torch.manual_seed(0)
    config = tiny(vocab_size=len(wordpiece), pad_token_id=wordpiece.pad_token_id, max_position_embeddings=64)
    model = PaperBertForMaskedLM(config).eval()
    model.save_pretrained(tmp_path)
    wordpiece.save_pretrained(tmp_path)
    fill = pipeline("fill-mask", model=str(tmp_path), tokenizer=str(tmp_path))
    assert type(fill.model) is PaperBertForMaskedLM
    text = f"The farmer {wordpiece.mask_token} the cow."
    results = fill(text, top_k=4)
    assert len(results) == 4 and all({"score", "token", "token_str", "sequence"} <= set(r) for r in results)
    encoded = wordpiece(text, return_tensors="pt")
    position = (encoded["input_ids"][0] == wordpiece.mask_token_id).nonzero().item()
    with torch.no_grad():
        probs = model(**encoded).logits[0, position].softmax(-1)
    top = probs.topk(4)
    assert [r["token"] for r in results] == top.indices.tolist()
    torch.testing.assert_close(torch.tensor([r["score"] for r in results]), top.values, atol=1e-5, rtol=1e-4)


def test_split_sentences_keeps_order_and_text():
    document = lm_corpus(1, split="test")[0]
    sentences = split_sentences(document)
    assert len(sentences) > 3 and all(s.endswith(".") for s in sentences)
    assert " ".join(sentences) == " ".join(document.split())


@pytest.mark.parametrize("target_length", [None, 40])
def test_nsp_pairs_are_half_is_next_and_is_next_pairs_are_consecutive(target_length):
    """Sentences (None) or spans of whole sentences filling ``target_length`` words (the released code)."""
    documents = lm_corpus(300 if target_length is None else 900, split="validation")
    pairs = build_nsp_pairs(documents, seed=1, target_length=target_length)
    assert len(pairs) > 2500
    is_next = [p for p in pairs if p.next_sentence_label == IS_NEXT]
    rate = len(is_next) / len(pairs)
    assert abs(rate - 0.5) < 0.03, rate  # binomial sd at n > 2500 is < 0.01
    for p in pairs:
        sentences_a, sentences_b = split_sentences(documents[p.document_a]), split_sentences(documents[p.document_b])
        assert p.text_a.startswith(sentences_a[p.sentence_a]) and p.text_b.startswith(sentences_b[p.sentence_b])
        assert p.text_a in " ".join(documents[p.document_a].split())
        assert p.text_b in " ".join(documents[p.document_b].split())
        if p.next_sentence_label == IS_NEXT:  # B really follows A in A's document
            assert p.document_b == p.document_a
            assert f"{p.text_a} {p.text_b}" in " ".join(documents[p.document_a].split())
            if target_length is None:
                assert p.sentence_b == p.sentence_a + 1 and p.text_b == sentences_a[p.sentence_b]
        else:  # a random sentence (span) of another document
            assert p.next_sentence_label == NOT_NEXT and p.document_b != p.document_a
    if target_length is not None:  # spans fill the budget unless the document runs out
        lengths = sorted(len(f"{p.text_a} {p.text_b}".split()) for p in pairs)
        assert lengths[len(lengths) // 2] >= target_length
        assert max(len(split_sentences(p.text_a)) for p in pairs) > 1
    assert build_nsp_pairs(documents[:20], seed=1) == build_nsp_pairs(documents[:20], seed=1)
    assert build_nsp_pairs(documents[:20], seed=1) != build_nsp_pairs(documents[:20], seed=2)
    with pytest.raises(ValueError, match="two documents"):
        build_nsp_pairs(documents[:1])


def test_mlm_nsp_collator_masks_15_percent_with_80_10_10(wordpiece):
    data = nsp_dataset(lm_corpus(200, split="validation"), seed=0)
    data = data.map(
        tokenize_pairs(wordpiece, max_length=64), batched=True, remove_columns=["text_a", "text_b"]
    )
    example = data[0]
    sep = example["input_ids"].index(wordpiece.sep_token_id)
    assert (
        example["input_ids"][0] == wordpiece.cls_token_id
        and example["input_ids"][-1] == wordpiece.sep_token_id
    )
    assert set(example["token_type_ids"][: sep + 1]) == {0} and set(example["token_type_ids"][sep + 1 :]) == {
        1
    }
    collator = DataCollatorForMLMAndNSP(wordpiece, seed=0)
    assert isinstance(collator, DataCollatorForLanguageModeling)
    assert (collator.mlm_probability, collator.mask_replace_prob, collator.random_replace_prob) == (
        0.15,
        0.8,
        0.1,
    )
    features = [data[i] for i in range(len(data))]
    batch = collator(features)
    assert set(batch) == {"input_ids", "token_type_ids", "attention_mask", "next_sentence_label", "labels"}
    assert batch["next_sentence_label"].tolist() == data["next_sentence_label"]
    original = wordpiece.pad([{"input_ids": f["input_ids"]} for f in features], return_tensors="pt")[
        "input_ids"
    ]
    special = torch.isin(original, torch.tensor(wordpiece.all_special_ids))
    selected = batch["labels"] != -100
    assert not (selected & special).any()  # [CLS], [SEP] and padding are never selected
    assert torch.equal(batch["labels"][selected], original[selected])
    assert torch.equal(batch["input_ids"][~selected], original[~selected])
    rate = selected.sum() / (~special).sum()
    masked = (batch["input_ids"][selected] == wordpiece.mask_token_id).float().mean()
    unchanged = (batch["input_ids"][selected] == original[selected]).float().mean()
    assert abs(rate - 0.15) < 0.01 and abs(masked - 0.8) < 0.03 and abs(unchanged - 0.1) < 0.03
    # the same batch is masked the same way (exact resume); another seed masks differently
    assert torch.equal(collator(features[:8])["labels"], collator(features[:8])["labels"])
    other = DataCollatorForMLMAndNSP(wordpiece, seed=1)
    assert not torch.equal(other(features[:8])["labels"], collator(features[:8])["labels"])


def test_word_order_task_is_balanced_and_only_shuffles():
    task = word_order_task(lm_corpus(50, split="validation"), seed=0)
    labels = task["label"]
    assert abs(sum(labels) / len(labels) - 0.5) < 0.05
    written = {
        s.lower().replace(",", "") for d in lm_corpus(50, split="validation") for s in split_sentences(d)
    }
    kept = [text.lower() in written for text, label in zip(task["text"], labels) if label]
    shuffled = [text.lower() in written for text, label in zip(task["text"], labels) if not label]
    assert all(kept) and sum(shuffled) < 0.01 * len(shuffled)
    for text in task["text"]:
        assert not text[0].islower() and text.endswith(".") and "," not in text
