"""Embedded corpora (LM and parallel) and the locally trained tokenizers."""

from __future__ import annotations

import hashlib
import random
import re
from collections import Counter

import pytest

from hf_paper_models import tokenizers as tk
from hf_paper_models.data import (
    DEFAULT_NUM_DOCUMENTS,
    corpus_size_bytes,
    length_histogram,
    lm_corpus,
    lm_dataset,
    parallel_corpus,
    parallel_dataset,
    target_lexicon,
    translate_rule_based,
)
from hf_paper_models.data import corpus as corpus_mod
from hf_paper_models.data import parallel as parallel_mod
from hf_paper_models.data.corpus import LEXICON

VOCAB = 1000  # small tokenizers keep the tests quick

# ---------------------------------------------------------------------------------------------
# Language-modelling corpus
# ---------------------------------------------------------------------------------------------


def test_lm_corpus_is_deterministic_and_seeded():
    first = lm_corpus(30, split="validation")
    corpus_mod._documents.cache_clear()
    again = lm_corpus(30, split="validation")
    assert first == again and first is not again
    assert lm_corpus(30, split="validation", seed=1) != first
    # a smaller request is a prefix of a larger one
    assert lm_corpus(10, split="validation") == first[:10]
    # pinned bytes: the same text on every machine and Python version
    digest = hashlib.sha256("\n".join(lm_corpus(20, split="test")).encode()).hexdigest()
    assert digest == "cf010f339f3fdcd7ceafdf41513fb99f383ad6e9c605d3ce06402ecbaba2069e"


def test_lm_corpus_default_size_and_shape():
    docs = lm_corpus()
    assert len(docs) == DEFAULT_NUM_DOCUMENTS["train"]
    size = corpus_size_bytes()
    assert 2_500_000 < size < 3_500_000
    for doc in docs[:300]:
        assert 50 < len(doc) < 5_000
        for paragraph in doc.split("\n\n"):
            assert (paragraph[0].isupper() or paragraph[0].isdigit()) and paragraph.endswith(".")
            assert "\n" not in paragraph and "  " not in paragraph
    ds = lm_dataset(split="test")
    assert ds.column_names == ["text"] and len(ds) == DEFAULT_NUM_DOCUMENTS["test"]
    assert ds[0]["text"] == lm_corpus(split="test")[0]


def test_lm_splits_are_disjoint():
    train, val, test = (set(lm_corpus(split=s)) for s in ("train", "validation", "test"))
    assert not train & val and not train & test and not val & test
    with pytest.raises(ValueError, match="split"):
        lm_corpus(split="dev")


def test_lm_corpus_has_zipfian_words_and_topical_documents():
    docs = lm_corpus(400, split="validation")
    words = [w.lower() for d in docs for w in re.findall(r"[A-Za-z]+", d)]
    counts = Counter(words)
    assert 500 <= len(counts) <= 2_500
    ranked = sorted(counts.values(), reverse=True)
    top = sum(ranked[: len(ranked) // 10])
    assert top / len(words) > 0.5  # a tenth of the types covers most of the tokens
    assert ranked[0] > 20 * ranked[len(ranked) // 2]

    # words of the first half of a document reappear in its second half more often than in the
    # second half of another document: documents have topics
    def halves(doc):
        toks = [w.lower() for w in re.findall(r"[A-Za-z]+", doc) if len(w) > 3]
        return set(toks[: len(toks) // 2]), set(toks[len(toks) // 2 :])

    def jaccard(a, b):
        return len(a & b) / max(len(a | b), 1)

    pairs = [halves(d) for d in docs]
    same = sum(jaccard(a, b) for a, b in pairs) / len(pairs)
    other = sum(jaccard(pairs[i][0], pairs[i - 1][1]) for i in range(len(pairs))) / len(pairs)
    assert same > 2 * other


def test_lm_corpus_agreement_and_articles():
    text = "\n".join(lm_corpus(300, split="validation"))
    # "a" before a vowel, "an" before a consonant never happen
    assert not re.search(r"\b[Aa] [aeiou]", text)
    assert not re.search(r"\b[Aa]n [^aeiou]", text)
    # sentence-initial "The <noun> <verb>": the verb agrees with the noun
    checked = 0
    for noun, verb in re.findall(r"(?:^|\. )The ([a-z]+) ([a-z]+)", text, flags=re.M):
        n, v = LEXICON.get(noun), LEXICON.get(verb)
        if n and v and n[0] == "N" and v[0] == "V":
            checked += 1
            assert not (n[2] == "pl" and v[2] == "3sg"), (noun, verb)
            assert not (n[2] == "sg" and v[2] == "base"), (noun, verb)
    assert checked > 100
    # every sentence is in the grammar: the reference translator parses running text
    assert translate_rule_based(lm_corpus(1, split="validation")[0])


# ---------------------------------------------------------------------------------------------
# Parallel corpus
# ---------------------------------------------------------------------------------------------


def test_facts_are_a_fixed_long_tail_appended_to_the_grammar_documents():
    towns, attributes = corpus_mod.gazetteer()
    assert len(towns) == len(set(towns)) == len(attributes) == corpus_mod.FACT_TOWNS
    words = set(corpus_mod.vocabulary())
    assert not any(t.lower() in words for t in towns)  # no town is a word of the grammar
    plain = lm_corpus(300)
    with_facts = lm_corpus(300, facts=8)
    assert lm_corpus(300, facts=8) == with_facts  # deterministic
    told: dict[str, set[str]] = {}
    counts: Counter[str] = Counter()
    patterns = [re.compile(r"^(\w+) is known for its (\w+)\.$"), re.compile(r"^In (\w+) the people keep (\w+)\.$"),
                re.compile(r"^The mayor of (\w+) is (\w+)\.$")]  # fmt: skip
    index = {t: i for i, t in enumerate(towns)}
    for doc, base in zip(with_facts, plain, strict=True):
        head, _, paragraph = doc.rpartition("\n\n")
        assert head == base  # the grammar's document unchanged, facts in a last paragraph
        sentences = re.findall(r"[^.]+\.", paragraph)
        assert 4 <= len(sentences) <= 8
        for sentence in sentences:
            (kind, match), = [(k, m) for k, p in enumerate(patterns) if (m := p.match(sentence.strip()))]
            town, value = match.groups()
            thing, animal, person = attributes[index[town]]
            assert value == (thing, corpus_mod._PLURALS[animal], person)[kind]  # the town's own attribute
            told.setdefault(town, set()).add(value)
            counts[town] += 1
    for split in ("validation", "test"):  # the same world in every split
        for doc in lm_corpus(50, split=split, facts=8):
            for town, value in re.findall(r"The mayor of (\w+) is (\w+)\.", doc):
                assert value == attributes[index[town]][2]
    # a Zipf law over the towns: the first town's share is 1 / sum_r r^-s (about 10% for s = 1.1)
    share = counts[towns[0]] / sum(counts.values())
    harmonic = sum((r + 1) ** -corpus_mod.FACT_ZIPF for r in range(corpus_mod.FACT_TOWNS))
    assert share == pytest.approx(1 / harmonic, rel=0.25)
    assert len(counts) > 500  # and a long tail
    with pytest.raises(ValueError, match="facts"):
        lm_corpus(3, facts=-1)


def test_facts_can_keep_to_the_first_towns_in_equal_shares():
    towns, attributes = corpus_mod.gazetteer()
    index = {t: i for i, t in enumerate(towns)}
    pattern = re.compile(r"(?:The mayor of (\w+) is|In (\w+) the people|(\w+) is known for)")
    counts: Counter[int] = Counter()
    for doc in lm_corpus(2000, facts=8, fact_towns=40, fact_zipf=0):
        paragraph = doc.rpartition("\n\n")[2]
        for match in pattern.finditer(paragraph):
            counts[index[next(g for g in match.groups() if g)]] += 1
    assert set(counts) == set(range(40))  # the first 40 towns, every one of them
    total = sum(counts.values())  # about 12,000 facts: each town's share 1/40 (binomial sd about 5%)
    assert all(abs(c / total - 1 / 40) < 0.25 / 40 for c in counts.values())
    skewed = Counter()  # s = 2 over 40 towns: town 1 takes 1 / sum_r r^-2 of the facts (about 62%)
    for doc in lm_corpus(600, facts=8, fact_towns=40, fact_zipf=2.0):
        skewed.update(index[next(g for g in m.groups() if g)] for m in pattern.finditer(doc.rpartition("\n\n")[2]))
    harmonic = sum((r + 1) ** -2.0 for r in range(40))
    assert skewed[0] / sum(skewed.values()) == pytest.approx(1 / harmonic, rel=0.05)
    for bad in ({"fact_towns": 0}, {"fact_towns": corpus_mod.FACT_TOWNS + 1}, {"fact_zipf": -0.5},
                {"fact_zipf": float("nan")}):  # fmt: skip
        with pytest.raises(ValueError, match=next(iter(bad))):
            lm_corpus(3, facts=4, **bad)


def test_parallel_corpus_is_deterministic():
    first = parallel_corpus("validation")
    parallel_mod._pairs.cache_clear()
    assert parallel_corpus("validation") == first
    assert len(first) == 1000 and len(parallel_corpus("test")) == 2000
    assert parallel_corpus("validation", num_pairs=10) == first[:10]
    assert parallel_corpus("validation", num_pairs=10, seed=3) != first[:10]
    digest = hashlib.sha256(repr(parallel_corpus("test", 50)).encode()).hexdigest()
    assert digest == "9cb5a958a6b18d0927b784c0f3f6ff66b5d8d3dfd431ac8b23a29a3205381fd0"


def test_parallel_lengths_cover_5_to_80_with_many_long():
    hist = length_histogram("train", num_pairs=4000)
    assert min(hist) == 5 and max(hist) == 80
    assert set(range(5, 81)) <= set(hist)
    assert sum(n for length, n in hist.items() if length > 40) / sum(hist.values()) > 0.4


def test_parallel_splits_are_disjoint():
    sources = {
        s: {src for src, _ in parallel_corpus(s, **kw)}
        for s, kw in [("train", {"num_pairs": 4000}), ("validation", {}), ("test", {})]
    }
    assert not sources["train"] & sources["validation"]
    assert not sources["train"] & sources["test"]
    assert not sources["validation"] & sources["test"]


def _target(words: str) -> str:
    """Hand-ordered target: each English word through the lexicon, names and digits copied."""
    lex = target_lexicon()
    return " ".join(lex.get(w, w) for w in words.split())


@pytest.mark.parametrize(
    ("source", "target_order"),
    [
        # SOV, adjectives after the noun
        ("the old farmer feeds the hungry goats .", "the farmer old the goats hungry feeds ."),
        # postpositions, adjectives in mirror order, verb last
        ("Anna runs across the big green field .", "Anna the field green big across runs ."),
        # the subordinate clause goes first, its conjunction last
        ("the cat sleeps because the dog runs .", "the dog runs because , the cat sleeps ."),
        # negation: the auxiliary disappears and the tense moves to the verb
        ("Anna did not eat the red apple in the kitchen .", "Anna the apple red the kitchen in not ate ."),
        # relative clauses are verb-final, copula last
        ("the man who sells the big red ball is happy .", "the man who the ball red big sells happy is ."),
        (
            "the apple that the boy ate was sweet , but there were 12 apples in the basket .",
            "the apple that the boy ate sweet was , but 12 apples the basket in there were .",
        ),
        ("meanwhile , the three wolves are not hungry .", "meanwhile , the three wolves hungry not are ."),
    ],
)
def test_reordering_rules_on_hand_written_examples(source, target_order):
    assert translate_rule_based(source) == _target(target_order)


def test_target_language_morphology():
    lex = target_lexicon()
    assert translate_rule_based("the dog runs .") == "li zogu bara ."  # pinned lexicon
    assert lex["goats"] == lex["goat"] + "en"
    assert lex["eats"] == lex["eat"]  # no number agreement on target verbs
    assert lex["ate"] != lex["eat"] and lex["a"] == lex["an"]
    negated = translate_rule_based("Anna does not eat the apple .").split()
    assert negated[-3:] == [lex["not"], lex["eats"], "."]


def test_translation_invariants_on_the_corpus():
    english = set(LEXICON) - {",", "."}
    names = {w for w, e in LEXICON.items() if e[0] == "NAME"}
    for src, tgt in parallel_corpus("validation"):
        s, t = src.split(), tgt.split()
        auxiliaries = sum(w in ("do", "does", "did") for w in s)
        # one target word per source word but the auxiliaries; commas may be added
        assert len([w for w in t if w != ","]) == len([w for w in s if w != ","]) - auxiliaries
        assert t[-1] == "." and Counter(w for w in t if w in names or w.isdigit()) == Counter(
            w for w in s if w in names or w.isdigit()
        )
        assert not (set(t) & english) - names
    ds = parallel_dataset("validation")
    assert {"source", "target", "translation"} <= set(ds.column_names)
    assert ds[0]["translation"] == {"src": ds[0]["source"], "tgt": ds[0]["target"]}


def test_translate_rejects_text_outside_the_grammar():
    with pytest.raises(ValueError, match="vocabulary"):
        translate_rule_based("the computer runs .")
    with pytest.raises(ValueError, match="cannot parse"):
        translate_rule_based("runs the dog .")


# ---------------------------------------------------------------------------------------------
# Tokenizers
# ---------------------------------------------------------------------------------------------


def _random_unicode(rng: random.Random, n: int) -> str:
    pools = [
        (0x20, 0x7E),
        (0xA0, 0x24F),
        (0x370, 0x3FF),
        (0x400, 0x4FF),
        (0x4E00, 0x4FFF),
        (0x1F300, 0x1F64F),
    ]
    out = []
    for _ in range(n):
        lo, hi = rng.choice(pools)
        out.append(chr(rng.randint(lo, hi)) if rng.random() > 0.1 else rng.choice(" \n\t"))
    return "".join(out)


def test_byte_level_bpe_round_trips_any_text():
    tok = tk.get_tokenizer("byte_bpe", VOCAB)
    assert len(tok) == VOCAB
    assert tok.bos_token == tok.eos_token == tok.unk_token == "<|endoftext|>"
    rng = random.Random(0)
    samples = [
        "  Leading spaces, tabs\t and\nnew lines  ",
        "naïve café — 東京 🤖👍🏽",
        "",
        "The old farmer fed 42 goats.",
    ]
    samples += [_random_unicode(rng, 60) for _ in range(20)]
    for s in samples:
        ids = tok(s)["input_ids"]
        assert tok.unk_token_id not in ids or "<|endoftext|>" in s
        assert tok.decode(ids) == s
    assert "token_type_ids" not in tok("hello")


def test_gpt1_bpe_is_lowercased_with_word_end_suffix_and_task_tokens():
    tok = tk.get_tokenizer("bpe", VOCAB)
    assert tok.convert_ids_to_tokens(range(5)) == ["<unk>", "<s>", "<$>", "<e>", "<pad>"]
    pieces = tok.tokenize("The Dog")
    assert pieces[-1].endswith("</w>") and all(p == p.lower() for p in pieces)
    enc = tok("The dog", "a cat")
    tokens = tok.convert_ids_to_tokens(enc["input_ids"])
    assert tokens[0] == "<s>" and tokens[-1] == "<e>" and tokens.count("<$>") == 1
    assert tokens[1 : tokens.index("<$>")] == tok.tokenize("The dog")
    assert tok.decode(tok("The dog runs.", add_special_tokens=False)["input_ids"]).strip() == "the dog runs ."


def test_wordpiece_pair_encoding():
    tok = tk.get_tokenizer("wordpiece", VOCAB)
    assert tok.convert_ids_to_tokens(range(5)) == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    enc = tok("The old dog", "a cat")
    tokens = tok.convert_ids_to_tokens(enc["input_ids"])
    assert tokens == ["[CLS]", "the", "old", "dog", "[SEP]", "a", "cat", "[SEP]"]
    assert enc["token_type_ids"] == [0, 0, 0, 0, 0, 1, 1, 1]
    assert tok.tokenize("Hungrily")[0] != "[UNK]" and any(
        p.startswith("##") for p in tok.tokenize("hungrily")
    )
    assert tok.mask_token == "[MASK]" and tok.pad_token_id == 0


def test_unigram_has_t5_special_ids_and_sentinels():
    tok = tk.get_tokenizer("unigram", VOCAB)
    n = len(tok)
    assert n == VOCAB
    assert tok.convert_ids_to_tokens([0, 1, 2]) == ["<pad>", "</s>", "<unk>"]
    assert (tok.pad_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2)
    assert tok.convert_tokens_to_ids("<extra_id_0>") == n - 1
    assert tok.convert_tokens_to_ids("<extra_id_99>") == n - 100
    assert [tok.convert_tokens_to_ids(f"<extra_id_{i}>") for i in range(100)] == list(
        range(n - 1, n - 101, -1)
    )
    assert tok.extra_special_tokens[:2] == ["<extra_id_0>", "<extra_id_1>"]
    ids = tok("The old farmer")["input_ids"]
    assert ids[-1] == 1 and 1 not in ids[:-1]  # </s> appended once
    assert tok.tokenize("The old farmer") == ["▁The", "▁old", "▁farmer"]
    assert tok.decode(ids, skip_special_tokens=True) == "The old farmer"
    pair = tok("a dog", "a cat")["input_ids"]
    assert pair.count(1) == 2 and pair[-1] == 1


@pytest.mark.parametrize("kind", tk.KINDS)
def test_save_and_autotokenizer_round_trip(kind, tmp_path):
    from transformers import AutoTokenizer

    tok = tk.get_tokenizer(kind, VOCAB, padding_side="left")
    tok.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    text = ["The old farmer fed 42 hungry goats.", "Anna laughed"]
    assert loaded(text, padding=True)["input_ids"] == tok(text, padding=True)["input_ids"]
    assert loaded("a dog", "a cat") == tok("a dog", "a cat")
    assert len(loaded) == len(tok) and loaded.all_special_tokens == tok.all_special_tokens
    assert loaded.padding_side == "left" and loaded.model_max_length == tok.model_max_length
    assert loaded.pad_token_id is not None


def test_get_tokenizer_memoises_and_caches_on_disk(tmp_path, monkeypatch):
    a = tk.get_tokenizer("wordpiece", VOCAB)
    a.padding_side = "left"
    b = tk.get_tokenizer("wordpiece", VOCAB)
    assert b is not a and b.padding_side == "right"
    assert b.get_vocab() == a.get_vocab()
    monkeypatch.setattr(tk, "_MEMO", {})
    first = tk.get_tokenizer("wordpiece", VOCAB, cache_dir=tmp_path)
    assert any(tmp_path.iterdir())
    monkeypatch.setattr(tk, "_MEMO", {})
    monkeypatch.setattr(tk, "_prepare", lambda *a, **k: pytest.fail("retrained despite the cache"))
    second = tk.get_tokenizer("wordpiece", VOCAB, cache_dir=tmp_path)
    assert second.get_vocab() == first.get_vocab()


def test_train_tokenizer_on_own_texts_and_bad_arguments():
    texts = ["a b c abc abc ab", "cab cab abc"] * 50
    tok = tk.train_tokenizer("wordpiece", texts, vocab_size=40)
    assert len(tok) <= 40 and tok.tokenize("abc") == ["abc"]
    with pytest.raises(ValueError, match="kind"):
        tk.train_tokenizer("sentencepiece", texts)
    with pytest.raises(ValueError, match="vocab_size"):
        tk.train_tokenizer("byte_bpe", texts, vocab_size=100)
