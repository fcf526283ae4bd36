"""An English-like corpus from a seeded probabilistic grammar, built offline and deterministically.

Each document has a topic (farm, sea, castle, ...), a small cast of named characters, a few focus
nouns and a narrative tense, so words inside a document are correlated; sentences follow a grammar
with subject/verb agreement, articles, adjectives, prepositional phrases, relative clauses,
negation, subordinate and coordinated clauses, and numbers. Word choice within each class follows a
Zipf-like law. Only ``random.Random`` is used, so the text is byte-identical on every machine.

The same grammar produces the source side of the parallel corpus (``parallel.py``), whose parser
relies on every surface form having exactly one part of speech (checked when this module loads).
"""

from __future__ import annotations

import functools
import itertools
import math
import random
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import datasets

__all__ = [
    "DEFAULT_NUM_DOCUMENTS",
    "LEXICON",
    "SPLITS",
    "Grammar",
    "corpus_size_bytes",
    "detokenize",
    "lm_corpus",
    "lm_dataset",
    "vocabulary",
]

SPLITS = ("train", "validation", "test")
DEFAULT_NUM_DOCUMENTS = {"train": 4300, "validation": 200, "test": 200}

# --------------------------------------------------------------------------------------------
# Lexicon. Within each list, earlier words are more frequent (Zipf rank = position).
# --------------------------------------------------------------------------------------------

_CLASSES = ("people", "animals", "things", "places", "tverbs", "iverbs", "adjs")

_TOPICS: dict[str, dict[str, str]] = {
    "farm": {
        "people": "farmer shepherd gardener herdsman",
        "animals": "cow goat hen horse pig goose lamb duck donkey rooster",
        "things": "apple egg bucket fence tractor seed basket carrot potato cart plough pumpkin",
        "places": "barn field meadow orchard stable pond farm yard",
        "tverbs": "feed milk harvest carry chase count load pull dig gather",
        "iverbs": "graze wander work rest",
        "adjs": "muddy hungry brown fat lazy fresh ripe golden dusty",
    },
    "sea": {
        "people": "sailor fisherman captain diver pirate",
        "animals": "whale dolphin shark crab seagull octopus seal turtle",
        "things": "boat net anchor rope shell wave map compass barrel oar lantern",
        "places": "harbor beach island ship shore bay lighthouse cove",
        "tverbs": "catch steer row tie drag lift throw repair paint",
        "iverbs": "sail swim dive float drift",
        "adjs": "salty wet blue stormy calm deep brave sandy",
    },
    "city": {
        "people": "driver policeman mayor builder artist tourist clerk banker waiter",
        "animals": "pigeon rat cat dog",
        "things": "car bus bicycle lamp ticket newspaper umbrella window coin letter key sign",
        "places": "street station square park tower bridge hotel office library",
        "tverbs": "drive build visit open lock deliver paint watch",
        "iverbs": "hurry wait shout arrive",
        "adjs": "busy noisy tall crowded modern grey bright narrow",
    },
    "forest": {
        "people": "hunter woodcutter ranger hermit",
        "animals": "fox wolf bear owl rabbit squirrel badger hedgehog boar",
        "things": "tree branch leaf mushroom acorn axe log nest berry stick stone feather",
        "places": "forest cave clearing valley path stream glade den",
        "tverbs": "hunt follow hide collect break climb chop smell",
        "iverbs": "howl listen whisper sleep",
        "adjs": "dark wild green thick ancient silent cold",
    },
    "school": {
        "people": "teacher student pupil headmaster librarian",
        "animals": "hamster parrot",
        "things": "book pencil desk lesson question answer notebook ruler bag picture poem story",
        "places": "classroom school garden hall library playground",
        "tverbs": "write teach learn explain draw study borrow copy finish",
        "iverbs": "laugh think nod listen",
        "adjs": "clever young curious difficult new long short",
    },
    "kitchen": {
        "people": "chef baker butler grandmother",
        "animals": "mouse cat beetle",
        "things": "loaf cake pot pan spoon knife plate cup bowl onion pie kettle oven recipe cherry lemon",
        "places": "kitchen pantry cellar bakery",
        "tverbs": "bake cook chop stir wash taste boil fry mix eat",
        "iverbs": "hum smile sit wait",
        "adjs": "hot sweet sour delicious warm spicy empty full",
    },
    "castle": {
        "people": "king queen knight prince princess guard soldier servant wizard",
        "animals": "dragon horse raven falcon",
        "things": "sword shield crown flag door gate letter treasure ring cloak banner jewel",
        "places": "castle hall tower dungeon courtyard kingdom palace",
        "tverbs": "defend attack rule protect capture command serve betray ride",
        "iverbs": "fight march bow kneel",
        "adjs": "royal proud noble golden ancient loyal mighty cruel",
    },
    "market": {
        "people": "merchant customer trader butcher tailor",
        "animals": "donkey camel parrot",
        "things": "coin basket orange banana cheese carpet shirt hat scarf tomato melon jar spice sack box",
        "places": "market shop stall street village square",
        "tverbs": "buy sell pay weigh wrap offer choose pack want",
        "iverbs": "bargain shout wait complain",
        "adjs": "cheap expensive rich poor colorful heavy small",
    },
    "music": {
        "people": "singer drummer musician dancer composer violinist",
        "animals": "nightingale cricket",
        "things": "song drum piano violin guitar flute trumpet melody note ticket",
        "places": "theater stage hall church studio",
        "tverbs": "play sing hear practice compose tune admire",
        "iverbs": "dance clap listen cheer whistle",
        "adjs": "loud soft beautiful sad merry gentle famous slow",
    },
    "mountain": {
        "people": "climber guide traveler monk",
        "animals": "goat eagle yak marmot",
        "things": "rope tent boot map blanket flag lamp rock cloud storm snowflake",
        "places": "mountain peak cliff hut glacier village",
        "tverbs": "climb reach carry cross pitch cover",
        "iverbs": "shiver rest freeze",
        "adjs": "steep snowy icy windy high cold white tired",
    },
    "river": {
        "people": "ferryman miller boatman washerwoman",
        "animals": "frog heron otter beaver trout",
        "things": "raft paddle bucket reed pebble wheel bridge basket lily",
        "places": "river bank mill island marsh ford",
        "tverbs": "cross fill push splash grind",
        "iverbs": "flow wade croak",
        "adjs": "muddy shallow wide clear cool lazy",
    },
    "workshop": {
        "people": "carpenter blacksmith inventor apprentice potter",
        "animals": "cat spider",
        "things": "hammer nail plank chair wheel clock machine tool bottle candle brush",
        "places": "workshop shed forge cellar attic",
        "tverbs": "fix build sharpen polish measure invent mend shape",
        "iverbs": "work whistle",
        "adjs": "broken sharp heavy wooden rusty shiny handy",
    },
}

_GENERAL: dict[str, str] = {
    "people": "man woman child boy girl friend neighbor stranger doctor person family baby",
    "animals": "dog cat bird horse mouse bee frog",
    "things": "box ball bag hat gift flower tree chair candle clock bottle photo letter key "
    "door window book stone",
    "places": "house garden room road town hill river kitchen park village",
    "tverbs": "see take make like love help find bring hold keep want need show lose meet "
    "remember forget notice call touch push open drop greet thank warn give",
    "iverbs": "run walk sleep smile laugh wait sit stand cry jump fall stay return shout disappear arrive go",
    "adjs": "old young big small little happy sad good bad new red white black quiet strange "
    "beautiful tired friendly angry gentle warm funny lucky kind",
}

_NAMES_F = "Anna Clara Emma Grace Ida Mia Nora Rosa Una Wanda Yara Zoe Alice Chloe Elsa Greta Iris Lena Nina Ruth Tara Vera"
_NAMES_M = "Ben David Felix Hugo Jonas Leo Oscar Paul Sam Tom Victor Xavier Bruno Daniel Frank Henry Jack Max Otto Peter Simon Walter"
NAMES_FEMALE = tuple(_NAMES_F.split())
NAMES_MALE = tuple(_NAMES_M.split())

ADVERBS = tuple(
    "often always never quickly slowly quietly carefully happily rarely usually sometimes also "
    "still gladly loudly softly".split()
)
MARKERS = tuple("then later however meanwhile suddenly finally afterwards luckily soon".split())
SUBORDINATORS = tuple("when because while although after before until".split())
CONJUNCTIONS = tuple("and but so or".split())
# prepositions of place (static), of motion, and those that link two things
PREP_PLACE = tuple("in near behind beside under on at by inside above below beyond".split())
PREP_MOTION = tuple("to into across through toward along around over from".split())
PREP_LINK = tuple("of with for".split())
NUMBER_WORDS = tuple(
    "two three four five six seven eight nine ten eleven twelve twenty thirty forty fifty".split()
)
DETS_SG = ("the", "a", "this", "every", "each")
DETS_PL = ("the", "some", "many", "these")
PRONOUNS = {
    # form: (plural, role)
    "he": (False, "subj"),
    "she": (False, "subj"),
    "it": (False, "both"),
    "they": (True, "subj"),
    "we": (True, "subj"),
    "him": (False, "obj"),
    "her": (False, "obj"),
    "them": (True, "obj"),
    "us": (True, "obj"),
}
_GENDERED = {
    "man": "m", "boy": "m", "king": "m", "prince": "m", "herdsman": "m", "fisherman": "m",
    "policeman": "m", "ferryman": "m", "boatman": "m", "butler": "m", "monk": "m", "miller": "m",
    "woman": "f", "girl": "f", "queen": "f", "princess": "f", "grandmother": "f",
    "washerwoman": "f",
}  # fmt: skip

_IRREGULAR_PLURAL = {
    "child": "children", "person": "people", "mouse": "mice", "goose": "geese",
    "wolf": "wolves", "leaf": "leaves", "knife": "knives", "loaf": "loaves", "scarf": "scarves",
    "potato": "potatoes", "tomato": "tomatoes",
}  # fmt: skip
_IRREGULAR_PAST = {
    "see": "saw", "take": "took", "give": "gave", "make": "made", "find": "found",
    "bring": "brought", "hold": "held", "keep": "kept", "leave": "left", "lose": "lost",
    "meet": "met", "forget": "forgot", "run": "ran", "sleep": "slept", "sit": "sat",
    "stand": "stood", "fall": "fell", "catch": "caught", "throw": "threw", "swim": "swam",
    "drive": "drove", "build": "built", "hide": "hid", "break": "broke", "write": "wrote",
    "teach": "taught", "draw": "drew", "think": "thought", "eat": "ate", "fight": "fought",
    "kneel": "knelt", "buy": "bought", "sell": "sold", "pay": "paid", "choose": "chose",
    "sing": "sang", "hear": "heard", "freeze": "froze", "ride": "rode", "dig": "dug",
    "feed": "fed", "go": "went", "grind": "ground", "fly": "flew",
}  # fmt: skip
_DOUBLE_FINAL = frozenset("chop drop wrap nod hum stir clap drag dig".split())


def _plural(noun: str) -> str:
    if noun in _IRREGULAR_PLURAL:
        return _IRREGULAR_PLURAL[noun]
    if noun.endswith("man"):
        return noun[:-3] + "men"
    if noun.endswith(("s", "x", "z", "ch", "sh")):
        return noun + "es"
    if noun.endswith("y") and noun[-2] not in "aeiou":
        return noun[:-1] + "ies"
    return noun + "s"


def _third_singular(verb: str) -> str:
    if verb in ("go", "do"):
        return verb + "es"
    if verb.endswith(("s", "x", "z", "ch", "sh")):
        return verb + "es"
    if verb.endswith("y") and verb[-2] not in "aeiou":
        return verb[:-1] + "ies"
    return verb + "s"


def _past(verb: str) -> str:
    if verb in _IRREGULAR_PAST:
        return _IRREGULAR_PAST[verb]
    if verb.endswith("e"):
        return verb + "d"
    if verb.endswith("y") and verb[-2] not in "aeiou":
        return verb[:-1] + "ied"
    if verb in _DOUBLE_FINAL:
        return verb + verb[-1] + "ed"
    return verb + "ed"


def _unique(words: Sequence[str]) -> tuple[str, ...]:
    seen: dict[str, None] = {}
    for w in words:
        seen.setdefault(w, None)
    return tuple(seen)


def _class_lists() -> dict[str, tuple[str, ...]]:
    """Every lemma of each open class, in rank order (general words first)."""
    out = {}
    for cls in _CLASSES:
        words = _GENERAL[cls].split()
        for topic in _TOPICS.values():
            words += topic[cls].split()
        out[cls] = _unique(words)
    return out


CLASS_LEMMAS = _class_lists()
NOUN_KIND = {}
for _kind in ("people", "animals", "things", "places"):
    for _w in CLASS_LEMMAS[_kind]:
        NOUN_KIND.setdefault(_w, _kind)
TRANSITIVE = frozenset(CLASS_LEMMAS["tverbs"])


def _build_lexicon() -> dict[str, tuple[Any, ...]]:
    """Map every surface form to ``(tag, lemma, feature)``; raise if a form is ambiguous."""
    lex: dict[str, tuple[Any, ...]] = {}

    def add(form: str, entry: tuple[Any, ...]) -> None:
        if form in lex and lex[form] != entry:
            raise AssertionError(f"ambiguous surface form {form!r}: {lex[form]} vs {entry}")
        lex[form] = entry

    for cls in ("people", "animals", "things", "places"):
        for n in CLASS_LEMMAS[cls]:
            add(n, ("N", n, "sg"))
            add(_plural(n), ("N", n, "pl"))
    for cls in ("tverbs", "iverbs"):
        for v in CLASS_LEMMAS[cls]:
            add(v, ("V", v, "base"))
            add(_third_singular(v), ("V", v, "3sg"))
            add(_past(v), ("V", v, "past"))
    for a in CLASS_LEMMAS["adjs"]:
        add(a, ("ADJ", a, None))
    for n in NAMES_FEMALE + NAMES_MALE:
        add(n, ("NAME", n, None))
    for w in ADVERBS:
        add(w, ("ADV", w, None))
    for w in MARKERS:
        add(w, ("MARK", w, None))
    for w in SUBORDINATORS:
        add(w, ("SUB", w, None))
    for w in CONJUNCTIONS:
        add(w, ("CONJ", w, None))
    for w in PREP_PLACE + PREP_MOTION + PREP_LINK:
        add(w, ("P", w, None))
    add("one", ("NUM", "one", "sg"))
    for w in NUMBER_WORDS:
        add(w, ("NUM", w, "pl"))
    for w in ("the", "a", "this", "every", "each", "some", "many", "these"):
        add(w, ("DET", w, None))
    add("an", ("DET", "a", None))
    for w, (pl, _) in PRONOUNS.items():
        add(w, ("PRON", w, "pl" if pl else "sg"))
    for w, tense in (("is", "present"), ("are", "present"), ("was", "past"), ("were", "past")):
        add(w, ("COP", "be", tense))
    for w, tense in (("does", "present"), ("do", "present"), ("did", "past")):
        add(w, ("AUX", "do", tense))
    add("not", ("NOT", "not", None))
    add("who", ("REL_S", "who", None))
    add("which", ("REL_S", "which", None))
    add("that", ("REL_O", "that", None))
    add("there", ("THERE", "there", None))
    add(",", ("PUNCT", ",", None))
    add(".", ("PUNCT", ".", None))
    return lex


LEXICON: dict[str, tuple[Any, ...]] = _build_lexicon()


def vocabulary() -> list[str]:
    """Every word form the grammar can produce (digits 13..99 aside), in a fixed order."""
    return list(LEXICON)


# --------------------------------------------------------------------------------------------
# Sampling helpers
# --------------------------------------------------------------------------------------------


class _Zipf:
    """Draw from ``items`` with probability proportional to ``1 / rank**s``.

    Sampling indexes a precomputed table of ``size`` slots (each item keeps at least one), which
    is several times faster than bisecting cumulative weights.
    """

    __slots__ = ("table", "n")

    def __init__(self, items: Sequence[str], s: float = 1.0, size: int = 4096):
        weights = [1.0 / (r + 1) ** s for r in range(len(items))]
        total = sum(weights)
        table: list[str] = []
        for item, w in zip(items, weights):
            table += [item] * max(1, round(w / total * size))
        self.table, self.n = tuple(table), len(table)

    def __call__(self, rng: random.Random) -> str:
        return self.table[int(rng.random() * self.n)]


def _zipf_table(source: dict[str, str]) -> dict[str, _Zipf | None]:
    return {cls: (_Zipf(source[cls].split()) if source[cls].split() else None) for cls in _CLASSES}


_TOPIC_NAMES = tuple(_TOPICS)
_TOPIC_Z = {t: _zipf_table(_TOPICS[t]) for t in _TOPIC_NAMES}
_GENERAL_Z = _zipf_table(_GENERAL)
_ADV_Z = _Zipf(ADVERBS)
_MARK_Z = _Zipf(MARKERS)
_SUB_Z = _Zipf(SUBORDINATORS)
_CONJ_Z = _Zipf(CONJUNCTIONS, s=1.5)
_PLACE_Z = _Zipf(PREP_PLACE)
_MOTION_Z = _Zipf(PREP_MOTION)
_NUM_Z = _Zipf(NUMBER_WORDS, s=0.8)
_NAME_Z = _Zipf(NAMES_FEMALE + NAMES_MALE, s=0.5)
_OBJ_PRONOUNS = ("it", "them", "him", "her", "us")
_NP_CLASSES = {  # noun-class mixtures in twentieths
    "pan": ("people",) * 12 + ("animals",) * 8,
    "pat": ("people",) * 7 + ("animals",) * 4 + ("things",) * 9,
    "all": ("people",) * 6 + ("animals",) * 4 + ("things",) * 7 + ("places",) * 3,
}
_ADJ_COUNT = (0,) * 55 + (1,) * 30 + (2,) * 12 + (3,) * 3  # adjectives per noun, in percent
_DETS_SG = ("the",) * 58 + ("a",) * 25 + ("this",) * 7 + ("every",) * 4 + ("each",) * 3 + ("one",) * 3
_DETS_PL = (
    ("the",) * 45 + ("",) * 15 + ("some",) * 10 + ("many",) * 7 + ("these",) * 6
    + ("the+number",) * 5 + ("number",) * 8 + ("digits",) * 4
)  # fmt: skip
_FORMS = {
    lemma: (lemma, _third_singular(lemma), _past(lemma))
    for lemma in CLASS_LEMMAS["tverbs"] + CLASS_LEMMAS["iverbs"]
}
_PLURALS = {n: _plural(n) for cls in ("people", "animals", "things", "places") for n in CLASS_LEMMAS[cls]}


class Grammar:
    """Sentence generator. ``new_document`` draws a topic, cast and tense; ``sentence`` emits tokens.

    Tokens are lower-case words (names capitalised) and the punctuation marks ``,`` and ``.``;
    join them with :func:`detokenize` for running text or with spaces for the parallel corpus.
    """

    def __init__(
        self,
        rng: random.Random,
        *,
        p_rel: float = 0.07,
        p_np_pp: float = 0.1,
        p_pronoun: float = 0.25,
        max_depth: int = 2,
    ):
        self.rng = rng
        self.p_rel = p_rel
        self.p_np_pp = p_np_pp
        self.p_pronoun = p_pronoun
        self.max_depth = max_depth
        self.new_document()

    # ---- document context -----------------------------------------------------------------
    def new_document(self, topic: str | None = None, *, focus: bool = True) -> None:
        """Draw a topic (and maybe a second one), a tense, two focus words per noun class and a
        cast of names; ``focus=False`` (single sentences) skips the focus words."""
        rng = self.rng
        self.topic = topic or rng.choice(_TOPIC_NAMES)
        self.second = rng.choice(_TOPIC_NAMES) if rng.random() < 0.3 else None
        self.tense = "past" if rng.random() < 0.6 else "present"
        tz = _TOPIC_Z[self.topic]
        self.focus = {
            cls: [tz[cls](rng), tz[cls](rng)]  # type: ignore[misc]
            for cls in ("people", "animals", "things", "places")
            if focus and tz[cls]
        }
        self.cast = [_NAME_Z(rng) for _ in range(rng.randint(1, 3))]
        self.prev_subject: tuple[bool, str | None] | None = None

    def _word(self, cls: str) -> str:
        """A word of class ``cls``: a focus word of the document (25%), a word of its topic (50%,
        a third of that from the second topic if any), a general word (20%), any topic (5%)."""
        rng = self.rng
        r = rng.random()
        if r < 0.25:
            focus = self.focus.get(cls)
            if focus:
                return focus[int(r * 8)]
        if r < 0.75:
            topic = self.second if (self.second and r > 0.6) else self.topic
            z = _TOPIC_Z[topic][cls]
        elif r < 0.95:
            z = _GENERAL_Z[cls]
        else:
            z = _TOPIC_Z[_TOPIC_NAMES[int((r - 0.95) * 20 * len(_TOPIC_NAMES))]][cls]
        return (z or _GENERAL_Z[cls])(rng)  # type: ignore[operator]

    # ---- noun phrases ---------------------------------------------------------------------
    def np(
        self, out: list[str], kinds: str, depth: int = 0, *, names: bool = False, pronoun: bool = False
    ) -> tuple[bool, str | None, str]:
        """Append a noun phrase; return (plural, gender or None, kind).

        ``kinds``: "pan" people/animals, "pat" people/animals/things, "all", or one class name.
        """
        rng = self.rng
        rand = rng.random
        r = rand()
        if pronoun and r < 0.04:
            w = _OBJ_PRONOUNS[int(r * 125)]
            out.append(w)
            return PRONOUNS[w][0], None, "pronoun"
        if names and r < 0.2:
            name = self.cast[int(r * 5 * len(self.cast))] if rand() < 0.8 else _NAME_Z(rng)
            out.append(name)
            return False, ("f" if name in NAMES_FEMALE else "m"), "name"
        table = _NP_CLASSES.get(kinds)
        cls = table[int(rand() * 20)] if table else kinds
        lemma = self._word(cls)
        plural = rand() < (0.12 if cls == "places" else 0.35)
        words = [_PLURALS[lemma] if plural else lemma]
        for _ in range(_ADJ_COUNT[int(rand() * 100)]):
            a = self._word("adjs")
            if a not in words:
                words.insert(0, a)
        det = (_DETS_PL if plural else _DETS_SG)[int(rand() * 100)]
        if det == "a":
            out.append("an" if words[0][0] in "aeiou" else "a")
        elif det == "the+number":
            out += ("the", _NUM_Z(rng))
        elif det == "number":
            out.append(_NUM_Z(rng))
        elif det == "digits":
            out.append(str(13 + int(rand() * 87)))
        elif det:
            out.append(det)
        out += words
        self._np_tail(out, cls, depth, plural=plural)
        return plural, _GENDERED.get(lemma), cls

    def _np_tail(self, out: list[str], cls: str, depth: int, *, plural: bool) -> None:
        """Optional prepositional phrase and relative clause after a noun."""
        rng = self.rng
        if depth >= self.max_depth:
            return
        if rng.random() < self.p_np_pp:
            r = rng.random()
            if r < 0.35:
                out.append("of")
                self.np(out, "all", depth + 1)
            elif r < 0.55:
                out.append("with")
                self.np(out, "things", depth + 1)
            else:
                out.append(_PLACE_Z(rng))
                self.np(out, "places", depth + 1)
        if rng.random() < self.p_rel:
            self.relative(out, cls, plural, depth + 1)

    def relative(self, out: list[str], cls: str, plural: bool, depth: int) -> None:
        rng = self.rng
        r = rng.random()
        if r < 0.15 or (r < 0.7 and cls in ("people", "animals")):  # subject gap
            out.append("who" if cls == "people" else "which")
            if cls in ("people", "animals"):  # "who sells the fish"
                self.vp(out, plural, depth, allow_copula=True)
            else:  # "which is muddy"
                self.copula(out, plural)
                out.append(self._word("adjs"))
        else:  # object gap: "that the farmer feeds"
            out.append("that")
            pl, _, _ = self.np(out, "pan", depth, names=True)
            self.verb_group(out, self._word("tverbs"), pl)
            if rng.random() < 0.15:
                self.pp(out, depth)

    def pp(self, out: list[str], depth: int) -> None:
        rng = self.rng
        out.append(_MOTION_Z(rng) if rng.random() < 0.5 else _PLACE_Z(rng))
        self.np(out, "places", depth + 1)

    # ---- verbs and clauses ----------------------------------------------------------------
    def verb_group(self, out: list[str], lemma: str, plural: bool) -> None:
        """An adverb or a negation, and the verb, agreeing with the subject in number and tense
        (the document's tense 92% of the time)."""
        rng = self.rng
        past = self.tense == "past" if rng.random() < 0.92 else self.tense != "past"
        if rng.random() < 0.06:
            out += ["did" if past else ("do" if plural else "does"), "not", lemma]
            return
        if rng.random() < 0.1:
            out.append(_ADV_Z(rng))
        forms = _FORMS[lemma]
        out.append(forms[2] if past else (forms[0] if plural else forms[1]))

    def copula(self, out: list[str], plural: bool) -> None:
        rng = self.rng
        past = self.tense == "past" if rng.random() < 0.92 else self.tense != "past"
        out.append(("were" if plural else "was") if past else ("are" if plural else "is"))
        r = rng.random()
        if r < 0.06:
            out.append("not")
        elif r < 0.14:
            out.append(_ADV_Z(rng))

    def vp(self, out: list[str], plural: bool, depth: int, *, allow_copula: bool = False) -> None:
        rng = self.rng
        r = rng.random()
        if allow_copula and r < 0.15:
            self.copula(out, plural)
            if rng.random() < 0.8:
                out.append(self._word("adjs"))
            else:
                out.append(_PLACE_Z(rng))
                self.np(out, "places", depth + 1)
        elif r < 0.7:
            self.verb_group(out, self._word("tverbs"), plural)
            self.np(out, "pat", depth, names=True, pronoun=True)
        else:
            self.verb_group(out, self._word("iverbs"), plural)
            if rng.random() < 0.6:
                self.pp(out, depth)

    def clause(self, out: list[str], *, main: bool = False) -> None:
        rng = self.rng
        r = rng.random()
        if r < 0.05:  # existential: "there were three boats in the bay"
            verb_at = len(out) + 1
            out += ["there", ""]
            plural, _, _ = self.np(out, "pat", 1)
            past = self.tense == "past"
            out[verb_at] = ("were" if plural else "was") if past else ("are" if plural else "is")
            if rng.random() < 0.7:
                out.append(_PLACE_Z(rng))
                self.np(out, "places", 1)
            return
        prev = self.prev_subject
        if main and prev is not None and rng.random() < self.p_pronoun:
            plural, gender = prev
            out.append("they" if plural else {"m": "he", "f": "she"}.get(gender or "", "it"))
            kind = "pronoun"
        else:
            if rng.random() < 0.03:
                out.append("we")
                plural, gender, kind = True, None, "pronoun"
            else:
                plural, gender, kind = self.np(out, "all" if r < 0.25 else "pan", names=True)
        if main and kind != "pronoun":
            self.prev_subject = (
                (plural, gender) if (plural or gender or kind in ("animals", "things")) else None
            )
        if r < 0.25:  # copula: "the bread is fresh" / "the dog is in the garden"
            self.copula(out, plural)
            if rng.random() < 0.75:
                out.append(self._word("adjs"))
            else:
                out.append(_PLACE_Z(rng))
                self.np(out, "places", 1)
        else:
            self.vp(out, plural, 0)

    def part(self, out: list[str]) -> None:
        r = self.rng.random()
        if r < 0.1:
            out.append(_SUB_Z(self.rng))
            self.clause(out)
            out.append(",")
            self.clause(out, main=True)
        elif r < 0.2:
            self.clause(out, main=True)
            out.append(_SUB_Z(self.rng))
            self.clause(out)
        else:
            self.clause(out, main=True)

    def sentence(self, out: list[str] | None = None, parts: int | None = None) -> list[str]:
        """Append one sentence (ending with ``.``) to ``out`` and return it."""
        rng = self.rng
        out = [] if out is None else out
        if rng.random() < 0.1:
            out += [_MARK_Z(rng), ","]
        if parts is None:
            r = rng.random()
            parts = 1 if r < 0.72 else (2 if r < 0.94 else 3)
        for k in range(parts):
            if k:
                out += [",", _CONJ_Z(rng)]
            self.part(out)
        out.append(".")
        return out


def detokenize(tokens: Sequence[str]) -> str:
    """Join grammar tokens into running text: sentence-initial capitals, attached punctuation."""
    pieces: list[str] = []
    cap = True
    for tok in tokens:
        if tok in (",", "."):
            pieces.append(tok)
            cap = tok == "."
            continue
        if cap:
            tok = tok[0].upper() + tok[1:]
            cap = False
        pieces.append(" " + tok if pieces else tok)
    return "".join(pieces)


def _document(g: Grammar) -> str:
    rng = g.rng
    g.new_document()
    paragraphs = []
    for _ in range(rng.choice((1, 1, 2, 2, 2, 3, 3, 4))):
        toks: list[str] = []
        for _ in range(rng.randint(3, 7)):
            g.sentence(toks)
        paragraphs.append(detokenize(toks))
    return "\n\n".join(paragraphs)


def _split_seed(seed: int, split: str) -> int:
    """A different random stream for each (seed, split)."""
    return (seed * 1_000_003 + (SPLITS.index(split) + 1) * 7_919) & 0xFFFFFFFF


@functools.lru_cache(maxsize=16)
def _documents(split: str, seed: int, n: int) -> tuple[str, ...]:
    # validation excludes test documents and train excludes both, so splits are disjoint by
    # construction (the derived seeds already make a collision astronomically unlikely).
    exclude: set[str] = set()
    for other in SPLITS[SPLITS.index(split) + 1 :]:
        exclude.update(_documents(other, seed, DEFAULT_NUM_DOCUMENTS[other]))
    g = Grammar(random.Random(_split_seed(seed, split)))
    docs: list[str] = []
    while len(docs) < n:
        doc = _document(g)
        if doc not in exclude:
            docs.append(doc)
    return tuple(docs)


# --------------------------------------------------------------------------------------------
# Facts: a long tail of towns, each with attributes fixed across the whole corpus (optional)
# --------------------------------------------------------------------------------------------

FACT_TOWNS = 20_000  # towns of the gazetteer
FACT_ZIPF = 1.1  # a town's share of the facts ∝ 1 / rank^FACT_ZIPF
_SYLLABLES = tuple("ba be bo da de di do fa fe ga go ka ke ko la le li lo ma me mi mo na ne ni no pa pe po ra "
                   "re ri ro sa se so ta te to va ve vi".split())  # fmt: skip


@functools.lru_cache(maxsize=1)
def gazetteer() -> tuple[tuple[str, ...], tuple[tuple[str, str, str], ...]]:
    """The towns (two or three syllables, none a word of the grammar) and each one's attributes: the thing
    it is known for, the animal its people keep and its mayor. Seeded, the same on every machine."""
    rng = random.Random(1991)
    words = set(vocabulary())
    towns: list[str] = []
    seen: set[str] = set()
    while len(towns) < FACT_TOWNS:
        name = "".join(rng.choice(_SYLLABLES) for _ in range(rng.choice((2, 3))))
        if name not in seen and name not in words:
            seen.add(name)
            towns.append(name.capitalize())
    things, animals, people = CLASS_LEMMAS["things"], CLASS_LEMMAS["animals"], NAMES_FEMALE + NAMES_MALE
    attributes = tuple((rng.choice(things), rng.choice(animals), rng.choice(people)) for _ in towns)
    return tuple(towns), attributes


@functools.lru_cache(maxsize=4)
def _town_cumulative(num_towns: int, zipf: float) -> tuple[float, ...]:
    return tuple(itertools.accumulate(1.0 / (rank + 1) ** zipf for rank in range(num_towns)))


def fact(rng: random.Random, towns: int = FACT_TOWNS, zipf: float = FACT_ZIPF) -> str:
    """One sentence about one of the gazetteer's first ``towns`` towns, drawn by its Zipf share
    (∝ rank^-zipf; 0: uniform): a third each "X is known for its T.", "In X the people keep As.",
    "The mayor of X is N." (the attribute fixed per town)."""
    names, attributes = gazetteer()
    (i,) = rng.choices(range(towns), cum_weights=_town_cumulative(towns, zipf))
    town, (thing, animal, person) = names[i], attributes[i]
    kind = int(rng.random() * 3)
    if kind == 0:
        return f"{town} is known for its {thing}."
    if kind == 1:
        return f"In {town} the people keep {_PLURALS[animal]}."
    return f"The mayor of {town} is {person}."


@functools.lru_cache(maxsize=16)
def _documents_with_facts(split: str, seed: int, n: int, facts: int, towns: int, zipf: float) -> tuple[str, ...]:
    rng = random.Random(_split_seed(seed, split) ^ 0x5EED)
    return tuple(
        f"{doc}\n\n{' '.join(fact(rng, towns, zipf) for _ in range(rng.randint((facts + 1) // 2, facts)))}"
        for doc in _documents(split, seed, n)
    )


def lm_corpus(
    num_documents: int | None = None,
    *,
    seed: int = 0,
    split: str = "train",
    facts: int = 0,
    fact_towns: int = FACT_TOWNS,
    fact_zipf: float = FACT_ZIPF,
) -> list[str]:
    """Documents of the embedded language-modelling corpus (about 3 MB for the default train split).

    A smaller ``num_documents`` gives a prefix of the larger corpus with the same seed. ``facts > 0``
    ends each document with a paragraph of ``ceil(facts / 2)`` to ``facts`` sentences from the
    ``gazetteer``: knowledge in a long tail (a few towns common, most rare), the same in every split,
    which a model can only hold in its parameters. The grammar's own text carries little to memorise.
    ``fact_towns`` keeps the facts to the gazetteer's first N towns (at most ``FACT_TOWNS``) and
    ``fact_zipf`` sets their law, a town's share ∝ rank^-fact_zipf (0: every town equally often).
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    n = DEFAULT_NUM_DOCUMENTS[split] if num_documents is None else int(num_documents)
    if n < 0:
        raise ValueError(f"num_documents must be >= 0, got {num_documents}")
    if facts < 0:
        raise ValueError(f"facts must be >= 0, got {facts}")
    if not 1 <= int(fact_towns) <= FACT_TOWNS or int(fact_towns) != fact_towns:
        raise ValueError(f"fact_towns must be an integer from 1 to {FACT_TOWNS}, got {fact_towns}")
    if not (fact_zipf >= 0 and math.isfinite(fact_zipf)):
        raise ValueError(f"fact_zipf must be a finite number >= 0, got {fact_zipf}")
    if not facts:
        return list(_documents(split, seed, n))
    return list(_documents_with_facts(split, seed, n, facts, int(fact_towns), float(fact_zipf)))


def corpus_size_bytes(split: str = "train", num_documents: int | None = None, *, seed: int = 0) -> int:
    """UTF-8 size of a split, documents joined by one newline."""
    docs = lm_corpus(num_documents, seed=seed, split=split)
    return sum(len(d.encode("utf-8")) for d in docs) + max(len(docs) - 1, 0)


def lm_dataset(split: str = "train", **kw: Any) -> datasets.Dataset:
    """The corpus as a ``datasets.Dataset`` with one ``text`` column (one row per document)."""
    import datasets

    return datasets.Dataset.from_dict({"text": lm_corpus(split=split, **kw)})
