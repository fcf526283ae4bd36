"""A parallel corpus: English-like sentences and their rule-based translation into an invented
head-final language.

The target language differs from the source in ways a translation model has to learn:

* word by word, through a fixed invented lexicon (``target_lexicon()``); names and digits are
  copied; nouns mark the plural with ``-en``; verbs mark tense (``-a`` present, ``-i`` past) but not
  number, so "do/does/did not eat" becomes a negation particle plus one verb form;
* clauses are subject-object-verb, with prepositional phrases before the verb: "the dog eats the
  bread in the park" -> "the dog the bread the park in eats";
* prepositions become postpositions ("in the park" -> "the park in");
* adjectives follow the noun, in mirror order ("the big red ball" -> "the ball red big");
* relative clauses keep their place after the noun but are verb-final;
* subordinate clauses come first and their conjunction goes to their end
  ("A because B" -> "B because , A"), so long sentences need long-range alignment.

Sentences run from 5 to 80 source tokens (punctuation counts as a token), about uniformly, built
from coordinated clauses, relative clauses and nested phrases.
"""

from __future__ import annotations

import functools
import random
import re
from collections import Counter
from typing import TYPE_CHECKING, Any

from .corpus import LEXICON, MARKERS, SPLITS, TRANSITIVE, Grammar, _Zipf

if TYPE_CHECKING:
    import datasets

__all__ = [
    "DEFAULT_NUM_PAIRS",
    "MAX_LEN",
    "MIN_LEN",
    "length_histogram",
    "parallel_corpus",
    "parallel_dataset",
    "target_lexicon",
    "translate_rule_based",
]

MIN_LEN, MAX_LEN = 5, 80
DEFAULT_NUM_PAIRS = {"train": 40_000, "validation": 1_000, "test": 2_000}

# --------------------------------------------------------------------------------------------
# The invented lexicon
# --------------------------------------------------------------------------------------------

_ONSETS = "b d f g k l m n p r s t v z sh th".split()
_VOWELS = "a e i o u".split()
_CODAS = "n r l s k m".split()
_PLURAL, _PRESENT, _PAST = "en", "a", "i"


def _build_target_lexicon() -> tuple[dict[str, str], dict[tuple[str, str], str]]:
    """English surface form -> target form, and (verb lemma, tense) -> target form."""
    rng = random.Random(1_729)  # fixed: the language never changes
    english = set(LEXICON)
    used: set[str] = set()

    def fresh(syllables: int, suffixes: tuple[str, ...] = ("",), end_consonant: bool = False) -> str:
        while True:
            w = "".join(
                rng.choice(_ONSETS)
                + rng.choice(_VOWELS)
                + (rng.choice(_CODAS) if rng.random() < 0.25 else "")
                for _ in range(syllables)
            )
            if end_consonant and w[-1] in "aeiou":
                w += rng.choice(_CODAS)
            forms = [w + s for s in suffixes]
            if not any(f in used or f in english for f in forms):
                used.update(forms)
                return w

    lex: dict[str, str] = {}
    verbs: dict[tuple[str, str], str] = {}
    lemma_stem: dict[tuple[str, str], str] = {}
    for form, (tag, lemma, feat) in LEXICON.items():
        if tag in ("NAME", "PUNCT", "AUX"):
            continue
        key = (tag, lemma)
        if key not in lemma_stem:
            if tag == "N":
                lemma_stem[key] = fresh(rng.choice((2, 2, 3)), ("", _PLURAL))
            elif tag in ("V", "COP"):
                stem = fresh(
                    1 if tag == "COP" else rng.choice((1, 2, 2)), (_PRESENT, _PAST), end_consonant=True
                )
                lemma_stem[key] = stem
                verbs[(lemma, "present")] = stem + _PRESENT
                verbs[(lemma, "past")] = stem + _PAST
            elif tag in ("ADJ", "ADV", "NUM"):
                lemma_stem[key] = fresh(2)
            else:  # closed classes: one syllable where possible
                lemma_stem[key] = fresh(1)
        stem = lemma_stem[key]
        if tag == "N":
            lex[form] = stem + (_PLURAL if feat == "pl" else "")
        elif tag == "V":
            lex[form] = stem + (_PAST if feat == "past" else _PRESENT)
        elif tag == "COP":
            lex[form] = stem + (_PAST if feat == "past" else _PRESENT)
        else:
            lex[form] = stem
    for p in (",", "."):
        lex[p] = p
    return lex, verbs


_TARGET, _VERB_TENSE = _build_target_lexicon()


def target_lexicon() -> dict[str, str]:
    """Word-level mapping of every source form (auxiliaries and names aside) to its target form."""
    return dict(_TARGET)


# --------------------------------------------------------------------------------------------
# Syntax-directed translation: a recursive-descent parser of the grammar that returns, for each
# constituent, its target tokens in target order.
# --------------------------------------------------------------------------------------------


_DIGIT_ENTRY = ("NUM", None, "pl")


class _Translator:
    """Parses one tokenised sentence; each method consumes a constituent and returns its
    translation, already in target order."""

    __slots__ = ("toks", "tags", "info", "i")

    def __init__(self, tokens: list[str]):
        self.toks = tokens
        self.info = [_DIGIT_ENTRY if t.isdigit() else LEXICON[t] for t in tokens]
        self.tags = [e[0] for e in self.info] + ["END"]
        self.i = 0

    def fail(self, wanted: str) -> ValueError:
        got = self.toks[self.i] if self.i < len(self.toks) else "<end>"
        sent = " ".join(self.toks)
        return ValueError(f"cannot parse token {self.i} ({got!r}), expected {wanted}: {sent!r}")

    def word(self) -> str:
        tok = self.toks[self.i]
        self.i += 1
        return _TARGET.get(tok, tok)  # names and digits are copied

    def expect(self, tag: str) -> str:
        if self.tags[self.i] != tag:
            raise self.fail(tag)
        return self.word()

    def punct(self, mark: str) -> str:
        if self.toks[self.i : self.i + 1] != [mark]:
            raise self.fail(repr(mark))
        return self.word()

    def np(self) -> list[str]:
        """Det Num Noun Adj* (adjectives mirrored), then its PP, then its relative clause."""
        tags = self.tags
        if tags[self.i] in ("NAME", "PRON"):
            out = [self.word()]
        else:
            out = [self.word()] if tags[self.i] == "DET" else []
            if tags[self.i] == "NUM":
                out.append(self.word())
            adjs = []
            while tags[self.i] == "ADJ":
                adjs.append(self.word())
            out.append(self.expect("N"))
            out += adjs[::-1]
        if tags[self.i] == "P":
            out += self.pp()
        if tags[self.i] == "REL_S":  # "who sells the fish" -> "who the fish sells"
            out.append(self.word())
            out += self.vp()
        elif tags[self.i] == "REL_O":  # "that the farmer feeds" -> "that the farmer feeds"
            out.append(self.word())
            out += self.np()
            out += self.vp(gap=True)
        return out

    def pp(self) -> list[str]:
        """Preposition -> postposition."""
        prep = self.expect("P")
        return self.np() + [prep]

    def pps(self) -> list[str]:
        out: list[str] = []
        while self.tags[self.i] == "P":
            out += self.pp()
        return out

    def vp(self, gap: bool = False) -> list[str]:
        """Verb phrase after its subject, verb last; ``gap``: object relative, no object."""
        tags = self.tags
        adv = [self.word()] if tags[self.i] == "ADV" else []
        if tags[self.i] == "COP" and not gap:
            cop = self.word()
            neg = [self.word()] if tags[self.i] == "NOT" else []
            if tags[self.i] == "ADV":
                adv.append(self.word())
            if tags[self.i] == "ADJ":
                pred = [self.word()]
            elif tags[self.i] == "P":
                pred = self.pp()
            else:
                raise self.fail("an adjective or a prepositional phrase after the copula")
            return pred + adv + neg + [cop]
        neg = []
        if tags[self.i] == "AUX":  # "did not eat": the tense moves to the verb
            tense = self.info[self.i][2]
            self.i += 1
            neg.append(self.expect("NOT"))
            if tags[self.i] != "V" or self.info[self.i][2] != "base":
                raise self.fail("a bare verb after the auxiliary")
            lemma = self.info[self.i][1]
            self.i += 1
            verb = _VERB_TENSE[(lemma, tense)]
        elif tags[self.i] == "V":
            lemma = self.info[self.i][1]
            verb = self.word()
        else:
            raise self.fail("a verb")
        obj = self.np() if (lemma in TRANSITIVE and not gap) else []
        return obj + self.pps() + adv + neg + [verb]

    def clause(self) -> list[str]:
        if self.tags[self.i] == "THERE":  # "there are boats in the bay" -> "boats the bay in there are"
            there = self.word()
            cop = self.expect("COP")
            neg = [self.word()] if self.tags[self.i] == "NOT" else []
            return self.np() + self.pps() + neg + [there, cop]
        subj = self.np()
        return subj + self.vp()

    def part(self) -> list[str]:
        """A clause with an optional subordinate clause, which goes first, conjunction last."""
        if self.tags[self.i] == "SUB":
            sub = self.word()
            first = self.clause()
            self.punct(",")
            return first + [sub, ","] + self.clause()
        main = self.clause()
        if self.tags[self.i] == "SUB":
            sub = self.word()
            return self.clause() + [sub, ","] + main
        return main

    def sentence(self) -> list[str]:
        out: list[str] = []
        if self.tags[self.i] == "MARK":
            out += [self.word(), self.punct(",")]
        out += self.part()
        while self.toks[self.i : self.i + 1] == [","]:
            out += [self.word(), self.expect("CONJ")]
            out += self.part()
        out.append(self.punct("."))
        if self.i != len(self.toks):
            raise self.fail("the end of the sentence")
        return out


_TOKEN_RE = re.compile(r"[^\W_]+|[,.]")


def _tokenize(text: str) -> list[str]:
    tokens = []
    for tok in _TOKEN_RE.findall(text):
        if tok not in LEXICON and not tok.isdigit() and tok.lower() in LEXICON:
            tok = tok.lower()
        if tok not in LEXICON and not tok.isdigit():
            raise ValueError(f"word {tok!r} is not in the grammar's vocabulary")
        tokens.append(tok)
    return tokens


def translate_rule_based(sentence: str) -> str:
    """Reference translation of grammar sentences (space-separated tokens or running text).

    Several sentences are translated one by one. Raises ``ValueError`` on words or structures
    outside the grammar.
    """
    tokens = _tokenize(sentence)
    out: list[str] = []
    start = 0
    for j, tok in enumerate(tokens):
        if tok == ".":
            out += _Translator(tokens[start : j + 1]).sentence()
            start = j + 1
    if start != len(tokens):
        raise ValueError(f"sentence must end with '.': {sentence!r}")
    return " ".join(out)


# --------------------------------------------------------------------------------------------
# The corpus
# --------------------------------------------------------------------------------------------

_CONJ = _Zipf(("and", "but", "so", "or"), s=1.5)
_MARK = _Zipf(MARKERS)


def _source_sentence(g: Grammar, rng: random.Random) -> list[str]:
    """One source sentence aimed at a length drawn uniformly from MIN_LEN..MAX_LEN."""
    goal = rng.randint(MIN_LEN, MAX_LEN)
    long = goal > 25
    g.p_rel = 0.2 if long else 0.05
    g.p_np_pp = 0.2 if long else 0.08
    while True:
        g.new_document(focus=False)
        out: list[str] = []
        if rng.random() < 0.08:
            out += [_MARK(rng), ","]
        g.part(out)
        tries = 0
        while len(out) + 4 <= goal and tries < 4:
            trial = out + [",", _CONJ(rng)]
            g.part(trial)
            if len(trial) + 1 <= MAX_LEN:
                out = trial
            else:
                tries += 1
        out.append(".")
        if MIN_LEN <= len(out) <= MAX_LEN:
            return out


@functools.lru_cache(maxsize=16)
def _pairs(split: str, seed: int, n: int) -> tuple[tuple[str, str], ...]:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    # validation excludes test sources and train excludes both: the splits are disjoint
    seen: set[str] = set()
    for other in SPLITS[SPLITS.index(split) + 1 :]:
        seen.update(src for src, _ in _pairs(other, seed, DEFAULT_NUM_PAIRS[other]))
    rng = random.Random((seed * 1_000_003 + (SPLITS.index(split) + 1) * 15_485_863 + 17) & 0xFFFFFFFF)
    g = Grammar(rng, p_pronoun=0.0)
    pairs: list[tuple[str, str]] = []
    while len(pairs) < n:
        toks = _source_sentence(g, rng)
        src = " ".join(toks)
        if src in seen:
            continue
        seen.add(src)
        pairs.append((src, " ".join(_Translator(toks).sentence())))
    return tuple(pairs)


def parallel_corpus(
    split: str = "train", num_pairs: int | None = None, seed: int = 0
) -> list[tuple[str, str]]:
    """``(source, target)`` pairs; a smaller ``num_pairs`` gives a prefix of the larger corpus."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    n = DEFAULT_NUM_PAIRS[split] if num_pairs is None else int(num_pairs)
    if n < 0:
        raise ValueError(f"num_pairs must be >= 0, got {num_pairs}")
    return list(_pairs(split, seed, n))


def parallel_dataset(split: str = "train", **kw: Any) -> datasets.Dataset:
    """``datasets.Dataset`` with columns ``source``, ``target`` and ``translation`` ({"src", "tgt"})."""
    import datasets

    pairs = parallel_corpus(split, **kw)
    return datasets.Dataset.from_dict(
        {
            "source": [s for s, _ in pairs],
            "target": [t for _, t in pairs],
            "translation": [{"src": s, "tgt": t} for s, t in pairs],
        }
    )


def length_histogram(
    split: str = "train", *, side: str = "source", num_pairs: int | None = None, seed: int = 0
) -> dict[int, int]:
    """Number of pairs per sentence length in whitespace tokens, sorted by length."""
    if side not in ("source", "target"):
        raise ValueError(f"side must be 'source' or 'target', got {side!r}")
    k = 0 if side == "source" else 1
    counts = Counter(len(p[k].split()) for p in parallel_corpus(split, num_pairs, seed))
    return dict(sorted(counts.items()))
