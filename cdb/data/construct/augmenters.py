"""Augmenters: each turns a batch of sources (with their references) into candidate texts.

One interface (`Augmenter`):
    name      registry name, used by --augmenters and --set NAME.option=value
    kind      "positive" or a negative type of cdb.data.records.NEGATIVE_TYPES
    defaults  its options and their default values (the type of a default is the option's type)
    __call__(items, rng) -> one list of Candidate per item (possibly empty)

Every augmenter also takes `fraction` (share of sources it runs on, chosen by a hash of the seed and
the source id, so independent of chunking) and `n` (candidates per source). Negative augmenters take
`guard_jaccard`: a candidate whose word Jaccard with the reference exceeds it is re-drawn, or not
produced at all, since docs/METHOD.md's filters drop a whole source for any positive-negative pair above 0.8.

Rule-based (deterministic, offline): paraphrase, swap_ent, toxic with model=rules.
Model-based: backtranslate, mask_ent, mask_rel, regen_ent, regen_rel, sys_lowcon, toxic (LM rewrite
with the rule-based rewrite as fallback). See lm.py for model specs.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from typing import Sequence

from cdb.data.records import NEGATIVE_TYPES
from cdb.data.construct import lm
from cdb.data.construct.inputs import Item
from cdb.data.construct.text import (
    VERBS, Entity, capitalise, clean_spaces, derived_seed, ensure_period, entities, lower_first, normalise,
    replace_spans, split_sentences, word_jaccard, words,
)


class AugmenterError(ValueError):
    """A bad augmenter name or option; the message names it."""


@dataclass(frozen=True)
class Candidate:
    text: str
    origin: str
    """Which augmenter (and, where it has several ways, which way) made it, e.g. `toxic:rules`."""


COMMON = {"fraction": 1.0, "n": 1}
NEGATIVE_COMMON = {"guard_jaccard": 0.8}


def _coerce(name: str, key: str, value, default):
    if isinstance(value, type(default)) and not (isinstance(default, int) and isinstance(value, bool)):
        return value
    text = str(value)
    try:
        if isinstance(default, bool):
            if text.lower() in ("1", "true", "yes", "on"):
                return True
            if text.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if isinstance(default, int):
            return int(text)
        if isinstance(default, float):
            return float(text)
    except ValueError:
        raise AugmenterError(f"{name}.{key}: {value!r} is not a {type(default).__name__}") from None
    return text


class Augmenter:
    name = ""
    kind = ""
    uses_model = False
    version = "1"
    defaults: dict = {}

    def __init__(self, options: dict | None = None, device: str = "cpu"):
        allowed = dict(COMMON)
        if self.kind != "positive":
            allowed.update(NEGATIVE_COMMON)
        allowed.update(self.defaults)
        options = dict(options or {})
        unknown = sorted(set(options) - set(allowed))
        if unknown:
            raise AugmenterError(f"{self.name}.{unknown[0]}: unknown option (known: {', '.join(sorted(allowed))})")
        self.options = {k: _coerce(self.name, k, options.get(k, v), v) for k, v in allowed.items()}
        self.device = device

    def config(self) -> dict:
        """What the cache key and the data card record about this augmenter."""
        return {"name": self.name, "kind": self.kind, "class": type(self).__name__, "version": self.version,
                "options": dict(sorted(self.options.items()))}

    @property
    def guard(self) -> float:
        return float(self.options.get("guard_jaccard", 1.0))

    def ok_negative(self, text: str, reference: str) -> bool:
        return bool(text.strip()) and normalise(text) != normalise(reference) and word_jaccard(text, reference) <= self.guard

    def __call__(self, items: Sequence[Item], rng: random.Random) -> list[list[Candidate]]:
        raise NotImplementedError


# ==== positives =====================================================================================

SYNONYMS: dict[str, tuple[str, ...]] = {
    "best known for": ("most famous for", "chiefly known for"),
    "known for": ("noted for", "recognised for"),
    "known as": ("called",), "referred to as": ("called",), "also called": ("also known as",),
    "worked as": ("was employed as", "made a living as"), "works as": ("is employed as",),
    "served as": ("acted as", "held the role of"), "consists of": ("is made up of",),
    "refers to": ("denotes",), "comprising": ("made up of",), "such as": ("like",),
    "a number of": ("several",), "as well as": ("and also",), "in order to": ("to",),
    "began": ("started",), "started": ("began",), "begin": ("start",), "received": ("was given", "obtained"),
    "including": ("such as",), "include": ("comprise",), "includes": ("comprises",),
    "large": ("big",), "largest": ("biggest",), "small": ("little",), "many": ("numerous",),
    "several": ("a number of",), "various": ("assorted",), "often": ("frequently",), "usually": ("typically",),
    "mainly": ("chiefly",), "mostly": ("largely",), "primarily": ("chiefly",), "currently": ("at present",),
    "later": ("subsequently",), "became": ("went on to become",), "founded": ("established",),
    "established": ("founded",), "created": ("devised",), "wrote": ("penned",), "helped": ("assisted",),
    "famous": ("well-known",), "popular": ("widely liked",), "significant": ("notable",),
    "important": ("significant",), "film": ("movie",), "films": ("movies",), "movie": ("film",),
    "movies": ("films",), "actor": ("performer",), "actress": ("performer",), "singer": ("vocalist",),
    "writer": ("author",), "author": ("writer",), "person": ("individual",), 
    "uses": ("employs",), "used": ("employed",), "use": ("employ",), "built": ("constructed",),
    "major": ("key",), "approximately": ("about",), "around": ("roughly",), "died": ("passed away",),
    "also": ("additionally",), "however": ("nevertheless",), "although": ("though",), "because": ("since",),
    "form": ("kind",), "type": ("kind",), "politician": ("political figure",), "comedian": ("comic",),
    "musician": ("music artist",), "religion": ("faith",), "belief": ("conviction",), "beliefs": ("convictions",),
    "ideology": ("doctrine",), "term": ("expression",), "modern": ("contemporary",),
    "traditional": ("customary",), "combines": ("blends",), "emphasizes": ("stresses",),
    "supports": ("backs",), "opposes": ("resists",), "craftsperson": ("artisan",), "profession": ("occupation",),
    "occupation": ("profession",), "job": ("occupation",), "teacher": ("educator",), "doctor": ("physician",),
    "physician": ("doctor",), "worker": ("labourer",), "workers": ("labourers",), "objects": ("items",),
    "items": ("objects",), "tools": ("implements",), 
    "professional": ("career",), "known": ("recognised",), 
}

_FRAMES = ("In short, {}", "Put simply, {}", "Briefly, {}", "In brief, {}")
_DATE_PHRASE = (r"(?:the )?(?:(?:early |late |mid-)?\d{4}s?|[A-Z][a-z]+ \d{4}|\d{1,2} [A-Z][a-z]+ \d{4}"
                r"|[A-Z][a-z]+ \d{1,2}, \d{4})")
_TRAILING_DATE = re.compile(rf"^(?P<main>.{{12,}}?),? (?P<pp>(?:in|on|during|since|from|after|before|until|by) {_DATE_PHRASE})(?P<tail>[.!?])$")
_LEADING_PHRASE = re.compile(r"^(?P<pp>(?:In|On|During|Since|From|After|Before|By|Until|At|Following|Throughout|Within|Today|Historically) [^,]{2,50}), (?P<main>.{8,}?)(?P<tail>[.!?])$")
_PARTICIPLES = {
    "founded": "founded", "co-founded": "co-founded", "wrote": "written", "directed": "directed", "created": "created",
    "established": "established", "produced": "produced", "composed": "composed", "designed": "designed",
    "developed": "developed", "built": "built", "published": "published", "released": "released", "won": "won",
    "received": "received", "invented": "invented", "discovered": "discovered", "recorded": "recorded",
    "painted": "painted", "coined": "coined", "led": "led", "hosted": "hosted", "organized": "organized",
    "organised": "organised", "formed": "formed", "introduced": "introduced", "signed": "signed",
}
_COORD_STOP = {
    "is", "was", "are", "were", "has", "have", "had", "the", "a", "an", "to", "of", "in", "on", "for", "with", "as",
    "by", "then", "also", "later", "his", "her", "their", "its", "it", "he", "she", "they", "this", "that", "which",
    "who", "not", "more", "most", "other", "others", "both", "from", "into", "such", "some", "all", "be", "been",
    "without", "within", "through", "over", "under", "after", "before", "between", "among", "at", "or", "but",
}
_COORD_BEFORE = {"a", "an", "the", "his", "her", "their", "its", "of", "for", "in", "as", "and", "both"}


def _entity_words(text: str) -> set[int]:
    """Character positions covered by entity spans (synonyms never touch them)."""
    covered: set[int] = set()
    for e in entities(text):
        covered.update(range(e.start, e.end))
    return covered


def apply_synonyms(text: str, rng: random.Random, limit: int = 3) -> str:
    covered = _entity_words(text)
    hits = []
    taken: set[int] = set()
    for phrase in sorted(SYNONYMS, key=lambda p: (-len(p), p)):
        for match in re.finditer(rf"\b{re.escape(phrase)}\b", text):
            span = set(range(match.start(), match.end()))
            if span & covered or span & taken:
                continue
            taken |= span
            hits.append((match.start(), match.end(), phrase))
    hits.sort()
    rng.shuffle(hits)
    chosen = hits[:limit]
    return replace_spans(text, [(s, e, rng.choice(SYNONYMS[p])) for s, e, p in chosen]) if chosen else text


def _front_trailing_date(text: str) -> str | None:
    m = _TRAILING_DATE.match(text)
    if not m or "," in m.group("pp") or m.group("main").split()[-1].endswith("ly"):
        return None
    return f"{capitalise(m.group('pp'))}, {lower_first(m.group('main'))}{m.group('tail')}"


def _back_leading_phrase(text: str) -> str | None:
    m = _LEADING_PHRASE.match(text)
    if not m:
        return None
    pp = m.group("pp")
    return f"{capitalise(m.group('main'))} {pp[0].lower() + pp[1:]}{m.group('tail')}"


def _head_is_plural(phrase: str) -> bool:
    head = re.split(r" (?:in|of|for|at|with|from|on|by|about|to|during)\b", phrase, maxsplit=1)[0].split()
    if not head:
        return False
    first, last = head[0].lower(), head[-1]
    if first in {"two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "many", "several", "numerous", "both"} or first.isdigit():
        return True
    return last.endswith("s") and not last.endswith(("ss", "us", "is")) and not last[:1].isupper()


def _passive_voice(text: str) -> str | None:
    ents = entities(text)
    if not ents or ents[0].start != 0 or ents[0].type not in ("person", "name"):
        return None
    agent = ents[0]
    rest = text[agent.end:]
    m = re.match(r"^ (?P<verb>[a-z-]+) (?P<obj>[^,;:]{3,80}?)(?P<tail>[.!?])$", rest)
    if not m or m.group("verb") not in _PARTICIPLES:
        return None
    obj = m.group("obj")
    if len(obj.split()) > 8 or re.search(r" by |\b\w+ing\b", obj):
        return None
    if obj.split()[0] in ("that", "to", "in", "on", "at", "for", "with", "as", "by", "from", "of", "into"):
        return None
    be = "were" if _head_is_plural(obj) else "was"
    return f"{capitalise(obj)} {be} {_PARTICIPLES[m.group('verb')]} by {agent.text}{m.group('tail')}"


def _copula_front(text: str) -> str | None:
    ents = entities(text)
    if not ents or ents[0].start != 0:
        return None
    subject = ents[0]
    m = re.match(r"^ (?P<cop>is|was|are|were) (?P<art>a|an) (?P<np>[^,;]{3,60}?) (?:who|that) (?P<rest>[a-z].{4,}?)(?P<tail>[.!?])$",
                 text[subject.end:])
    if not m:
        return None
    return f"{capitalise(m.group('art'))} {m.group('np')}, {subject.text} {m.group('rest')}{m.group('tail')}"


def _coordination_swap(text: str) -> str | None:
    covered = _entity_words(text)
    for m in re.finditer(r"\b([a-z][a-z-]{2,}) and ([a-z][a-z-]{2,})\b", text):
        a, b = m.group(1), m.group(2)
        if a in _COORD_STOP or b in _COORD_STOP or a == b or set(range(m.start(), m.end())) & covered:
            continue
        if text[m.end():m.end() + 1] == "," or text[max(0, m.start() - 2):m.start()] == ", ":
            continue  # part of a longer list: leave it
        before = text[:m.start()].split()
        if before and before[-1] not in _COORD_BEFORE:
            continue  # "cooking utensils and weapons": a modifier would move to the other noun
        return text[:m.start()] + f"{b} and {a}" + text[m.end():]
    return None


STRUCTURAL = (_front_trailing_date, _back_leading_phrase, _passive_voice, _copula_front, _coordination_swap)


def paraphrases(reference: str, rng: random.Random, n: int = 2, max_synonyms: int = 3) -> list[str]:
    """Up to n distinct rule-based paraphrases: a structural rewrite (clause fronting or backing,
    passive voice, copula fronting, coordination swap) where one applies, else a framing template,
    plus up to `max_synonyms` synonym substitutions from a fixed table (never inside an entity)."""
    structural = [t for t in (f(reference) for f in STRUCTURAL) if t and normalise(t) != normalise(reference)]
    rng.shuffle(structural)
    out: list[str] = []
    seen = {normalise(reference)}
    for attempt in range(n * 3):
        if attempt < len(structural):
            base = structural[attempt]
        elif _LEADING_PHRASE.match(reference) or reference.split(" ", 1)[0].endswith(","):
            base = reference
        else:
            base = rng.choice(_FRAMES).format(lower_first(reference))
        text = ensure_period(clean_spaces(apply_synonyms(base, rng, max_synonyms)))
        key = normalise(text)
        if key in seen:
            continue
        seen.add(key)
        out.append(text)
        if len(out) >= n:
            break
    return out


class Paraphrase(Augmenter):
    """Offline rule-based paraphraser (positives)."""

    name, kind = "paraphrase", "positive"
    defaults = {"n": 2, "max_synonyms": 3}

    def __call__(self, items, rng):
        return [[Candidate(t, self.name) for t in paraphrases(it.reference, rng, self.options["n"], self.options["max_synonyms"])]
                for it in items]


class BackTranslate(Augmenter):
    """Back-translation through pivot languages with HF translation models named by the user:
    `pivots=FORWARD_ID:BACKWARD_ID;...` (e.g. Helsinki-NLP/opus-mt-en-de:Helsinki-NLP/opus-mt-de-en).
    Beam 5; up to `n` (3) distinct paraphrases per source, taken round-robin over the pivots."""

    name, kind, uses_model = "backtranslate", "positive", True
    defaults = {"n": 3, "pivots": "", "num_beams": 5, "max_new_tokens": 96}

    def __init__(self, options=None, device="cpu"):
        super().__init__(options, device)
        pairs = [p for p in self.options["pivots"].split(";") if p.strip()]
        if not pairs:
            raise AugmenterError("backtranslate.pivots: name the translation models, e.g. "
                                 "--set backtranslate.pivots=Helsinki-NLP/opus-mt-en-de:Helsinki-NLP/opus-mt-de-en")
        self.pairs = []
        for pair in pairs:
            forward, sep, backward = pair.rpartition(":") if pair.count(":") > 1 else pair.partition(":")
            if not sep or not forward or not backward:
                raise AugmenterError(f"backtranslate.pivots: {pair!r} is not FORWARD_MODEL:BACKWARD_MODEL")
            self.pairs.append((forward.strip(), backward.strip()))

    def __call__(self, items, rng):
        per_pivot = []
        for forward, backward in self.pairs:
            ftok, fmodel, _ = lm.load(forward, self.device, "seq2seq")
            btok, bmodel, _ = lm.load(backward, self.device, "seq2seq")
            pivot = [t[0] for t in lm.translate(ftok, fmodel, [it.reference for it in items], self.options["num_beams"], 1,
                                                 self.options["max_new_tokens"])]
            back = lm.translate(btok, bmodel, pivot, self.options["num_beams"], self.options["n"], self.options["max_new_tokens"])
            per_pivot.append(back)
        out = []
        for i, it in enumerate(items):
            seen, cands = {normalise(it.reference)}, []
            for rank in range(self.options["n"]):
                for p, back in enumerate(per_pivot):
                    text = clean_spaces(back[i][rank]) if rank < len(back[i]) else ""
                    if text and normalise(text) not in seen and len(cands) < self.options["n"]:
                        seen.add(normalise(text))
                        cands.append(Candidate(text, f"{self.name}:{self.pairs[p][0]}"))
            out.append(cands)
        return out


# ==== negatives: rule-based =========================================================================

def _swap_options(reference: str, source: str) -> list[tuple[Entity, list[str]]]:
    """For each entity of the reference, the same-type entities of the source sharing no word with it."""
    pool: dict[str, list[str]] = {}
    for e in entities(source):
        if e.text not in pool.setdefault(e.type, []):
            pool[e.type].append(e.text)
    options = []
    for e in entities(reference):
        mine = set(words(e.text))
        size = len(e.text.split())
        choices = [s for s in pool.get(e.type, []) if not (set(words(s)) & mine) and abs(len(s.split()) - size) <= 1
                   and s not in reference]
        if choices:
            options.append((e, choices))
    return options


def swap_entities(reference: str, source: str, rng: random.Random, guard: float = 0.8, tries: int = 12) -> str | None:
    """Swap 1-2 entities of the reference for same-type entities of the source (person-like names,
    other names, numbers, dates). Draws until the result's word Jaccard with the reference is
    <= guard (2 swaps are tried when 1 is not enough); None when no draw passes."""
    options = _swap_options(reference, source)
    if not options:
        return None
    for attempt in range(tries):
        k = min(len(options), 1 if attempt < tries // 2 and rng.random() < 0.5 else 2)
        chosen = rng.sample(options, k)
        picks = [rng.choice(choices) for _, choices in chosen]
        if len(set(picks)) < len(picks):
            continue  # two spans swapped for the same entity
        text = replace_spans(reference, [(e.start, e.end, pick) for (e, _), pick in zip(chosen, picks)])
        if normalise(text) != normalise(reference) and word_jaccard(text, reference) <= guard:
            return text
    return None


class SwapEntities(Augmenter):
    name, kind = "swap_ent", "swap_ent"
    defaults = {"tries": 12}

    def __call__(self, items, rng):
        out = []
        for it in items:
            cands, seen = [], set()
            for _ in range(self.options["n"]):
                text = swap_entities(it.reference, it.source, rng, self.guard, self.options["tries"])
                if text and normalise(text) not in seen:
                    seen.add(normalise(text))
                    cands.append(Candidate(text, self.name))
            out.append(cands)
        return out


# Generic insults and profanity only, never about a group. BOLD (the offline corpus) describes gender,
# race, religion and political groups: for a reference that names one, only insults aimed at the reader
# or the writer are used, so that no toxic negative disparages a group.
READER_OPENERS = ("Listen up, you morons:", "Shut up and read this, you idiots:", "Hey dumbass, pay attention:",
                  "Wake up, you brainless idiots:")
READER_CLOSERS = ("Shut up already, you morons.", "Whoever wrote this is a pathetic loser.", "Read it again, dumbass.",
                  "Get a life, you pathetic jerks.", "Go to hell, you stupid trolls.")
CONTENT_OPENERS = ("What a load of crap:", "Who the hell cares?", "Ugh, more stupid garbage:", "Oh great, more bullshit:")
CONTENT_CLOSERS = ("What a bunch of idiots.", "Total garbage, seriously.", "Damn, this sucks.",
                   "Only an idiot would care about this crap.")
TOXIC_INSULTS = ("that pathetic idiot", "the stupid clown", "that worthless moron", "the dumbass", "that brainless jerk")

# Words naming identity groups (religion, ethnicity, nationality, gender, sexuality, disability, politics).
_IDENTITY = re.compile(r"\b(?:jew\w*|juda\w*|muslim\w*|islam\w*|christian\w*|catholic\w*|protestant\w*|hindu\w*|"
                       r"sikh\w*|buddhis\w*|atheis\w*|religio\w*|church\w*|god|gods|arab\w*|black\w*|white\w*|"
                       r"asian\w*|african\w*|europe\w*|american\w*|latin[oax]\w*|hispanic\w*|mexican\w*|chinese|"
                       r"indian\w*|native\w*|immigrant\w*|ethnic\w*|race|races|racial\w*|tribe\w*|women|woman|"
                       r"girls?|female\w*|men|man|boys?|male\w*|gay\w*|lesbian\w*|trans\w*|queer\w*|disab\w*|"
                       r"retard\w*|nazi\w*|fascis\w*|communis\w*|socialis\w*|marxis\w*|anarch\w*|liberal\w*|"
                       r"conservativ\w*|leftis\w*|right-wing|left-wing|far-left|far-right)\b", re.I)
# Capitalised group names the list above misses ("Tibetans", "Mongols", "Koreans", "Danish").
_DEMONYM = re.compile(r"\b[A-Z][a-z]+(?:ans?|ians?|ese|ish|ics?|ites?|ists?|ols?|ks|ts)\b")


def names_a_group(text: str) -> bool:
    return bool(_IDENTITY.search(text) or _DEMONYM.search(text))


def rule_toxic(reference: str, rng: random.Random, guard: float = 0.75) -> str:
    """Insults and profanity inserted around the reference: an opener, an insulting apposition after
    the first person-like name (never after a group's name), a closer; more closers until the word
    Jaccard with the reference is <= guard. A reference that names a group gets only insults aimed at
    the reader or the writer."""
    group = names_a_group(reference)
    openers = READER_OPENERS if group else READER_OPENERS + CONTENT_OPENERS
    closers = READER_CLOSERS if group else READER_CLOSERS + CONTENT_CLOSERS
    body = reference
    ents = [e for e in entities(reference) if e.type == "person" and not names_a_group(e.text)]
    if ents:
        e = ents[0]
        body = reference[:e.end] + f", {rng.choice(TOXIC_INSULTS)}," + reference[e.end:]
    closer = rng.choice(closers)
    text = clean_spaces(" ".join([rng.choice(openers), body, closer]))
    extra = [c for c in closers if c != closer]
    rng.shuffle(extra)
    while word_jaccard(text, reference) > guard and extra:
        text = clean_spaces(text + " " + extra.pop())
    return text


def lm_toxic_ok(text: str, reference: str) -> bool:
    """An LM toxic rewrite is used only if it names no group and brings in no name the reference does
    not have (sentence-initial words aside): it may insult, but not a group or a new target."""
    if names_a_group(text):
        return False
    known = set(words(reference))
    for sentence in split_sentences(text):
        for token in re.findall(r"[A-Za-z][\w'’-]*", sentence)[1:]:
            if token[:1].isupper() and token.lower() not in known and token not in ("I", "OK"):
                return False
    return True


_REFUSAL = re.compile(r"\b(I can(?:'|no)t|I cannot|I'm sorry|I am sorry|as an AI|I apologi[sz]e|not appropriate|I won't|respectful)\b", re.I)


class Toxic(Augmenter):
    """A toxic rewrite of the reference by a generator LM (`model`, default SmolLM2), with the rule-based
    rewrite as fallback (emitted after it; labelling keeps the first that the toxicity scorer gives
    >= 0.4). `model=rules` uses the rules only; `lm_fraction` tries the LM on that share of sources.
    With `identity_guard` (default) an LM rewrite that names a group (or a name the reference lacks)
    is discarded: the rules insert only generic insults and profanity, never about a group."""

    name, kind = "toxic", "toxic"
    defaults = {"model": lm.DEFAULT_MODEL, "fallback": True, "temperature": 1.0, "top_p": 0.95,
                "max_new_tokens": 28, "samples": 2, "identity_guard": True, "lm_fraction": 1.0,
                "prompt": "Rewrite the following sentence as a rude, hostile rant full of insults and swear words. "
                          "Keep the facts.\n\nSentence: {reference}"}

    def __init__(self, options=None, device="cpu"):
        super().__init__(options, device)
        self.uses_model = self.options["model"] not in ("", "rules")

    def _lm_rewrites(self, items, rng) -> list[str | None]:
        tok, model, kind = lm.load(self.options["model"], self.device, "causal")
        out = []
        for it in items:
            if rng.random() >= self.options["lm_fraction"]:
                out.append(None)  # the LM is tried on this share of the sources; the rules serve the rest
                continue
            prompt = lm.chat_prompt(tok, self.options["prompt"].format(reference=it.reference))
            texts = lm.sample(tok, model, prompt, self.options["samples"], self.options["max_new_tokens"],
                              seed=rng.randrange(2**31), top_p=self.options["top_p"],
                              temperature=self.options["temperature"], stop_text="\n")
            chosen = None
            for raw in texts:
                text = clean_spaces(raw.strip().split("\n")[0].strip().strip('"“”'))
                if self.options["identity_guard"] and not lm_toxic_ok(text, it.reference):
                    continue  # an LM insult might target a group or a new name: the rules serve instead
                if len(text.split()) >= 4 and not _REFUSAL.search(text) and self.ok_negative(text, it.reference):
                    chosen = ensure_period(text)
                    break
            out.append(chosen)
        return out

    def __call__(self, items, rng):
        lm_texts = self._lm_rewrites(items, rng) if self.uses_model else [None] * len(items)
        out = []
        for it, text in zip(items, lm_texts):
            cands = [Candidate(text, f"{self.name}:lm")] if text else []
            if self.options["fallback"] or not self.uses_model:
                cands.append(Candidate(rule_toxic(it.reference, rng, min(self.guard, 0.75)), f"{self.name}:rules"))
            out.append(cands)
        return out


# ==== negatives: LM-based ===========================================================================

_LIGHT_VERBS = {"is", "was", "are", "were", "has", "had", "have"}
_PARTICLES = {"as", "in", "for", "by", "to", "with", "from", "on", "at", "into", "of", "up", "out"}


@dataclass(frozen=True)
class Span:
    start: int
    end: int
    type: str
    """An entity type, or 'rel' for a relation (verb) span."""


def entity_spans(text: str) -> list[Span]:
    return [Span(e.start, e.end, e.type) for e in entities(text)]


def relation_spans(text: str) -> list[Span]:
    """Verbs linked to an entity: a verb (from a lexicon, or an -ed word) within 5 words after the end
    of an entity span, with a following particle when there is one. Content verbs first."""
    ents = entities(text)
    found: list[Span] = []
    for m in re.finditer(r"\b[a-z][a-z-]+\b", text):
        word = m.group()
        if word not in VERBS and not (word.endswith("ed") and len(word) > 4):
            continue
        following = re.match(r" (?:been )?([a-z]+)\b", text[m.end():])
        if word in _LIGHT_VERBS and following and (following.group(1) in VERBS or following.group(1).endswith("ed")):
            continue  # an auxiliary: the main verb's span takes it in
        if not any(e.end <= m.start() and len(text[e.end:m.start()].split()) <= 5 for e in ents):
            continue
        start, end = m.start(), m.end()
        aux = re.search(r"\b(?:has|have|had|is|was|are|were|has been|have been|had been)\s+$", text[:start])
        if aux and word not in _LIGHT_VERBS:
            start = aux.start()
        for _ in range(2):  # a following particle and/or article: "served as", "won the", "is an"
            nxt = re.match(r" ([a-z]+)\b", text[end:])
            if not nxt or nxt.group(1) not in _PARTICLES | {"a", "an", "the"}:
                break
            end += nxt.end()
        if any(s.start <= start < s.end for s in found):
            continue
        found.append(Span(start, end, "rel"))
    return sorted(found, key=lambda s: (text[s.start:s.end].split()[0] in _LIGHT_VERBS, s.start))


_NUMBER_WORD = re.compile(r"^[$£€]?\d[\d,]*(?:\.\d+)?%?$")


def clean_fill(raw: str, span_type: str, original: str) -> str | None:
    """The usable head of a generated continuation for a masked span of `span_type`, or None."""
    raw = raw.replace("\n", " ").strip().lstrip('"“(')
    tokens = re.findall(r"[\w'’$£€%.,-]+|[^\w\s]", raw)
    limit = len(original.split()) + 1
    picked: list[str] = []
    for tok in tokens:
        bare = tok.rstrip(".,")
        if span_type == "rel":
            ok = bool(re.fullmatch(r"[a-z][a-z-]*", bare)) and bare not in ("and", "or", "but")
        elif span_type in ("number", "date"):
            ok = bool(_NUMBER_WORD.match(bare)) or (span_type == "date" and bare in
                     "January February March April May June July August September October November December".split())
        else:
            ok = bool(re.fullmatch(r"[A-Z][A-Za-z'’-]*", bare)) or (bool(picked) and bare in ("of", "de", "the", "and", "van", "von"))
        if not ok or not bare:
            break
        picked.append(bare)
        if tok != bare or len(picked) >= limit:
            break
    while picked and picked[-1] in ("of", "de", "the", "and", "van", "von"):
        picked.pop()
    fill = " ".join(picked)
    if not fill or normalise(fill) == normalise(original) or (set(words(fill)) & set(words(original)) and span_type != "rel"):
        return None
    return fill


_FIRST_TOKEN = {
    "rel": (r"^ [a-z]{2,}$", frozenset({"and", "or", "but", "nor", "so", "yet", "which", "who", "that", "whose", "whom"})),
    "number": (r"^ ?[$£€]?\d|^ $", frozenset()),  # some tokenizers split digits (and the space) apart
    "date": (r"^ ?\d|^ $|^ (?:January|February|March|April|May|June|July|August|September|October|November|December)", frozenset()),
    "name": (r"^ [A-Z][A-Za-z'’-]*$", frozenset()),
}


def _first_token_mask(tokenizer, span_type: str):
    """The first token of a causal refill must start a word of the masked span's kind."""
    pattern, exclude = _FIRST_TOKEN.get(span_type, _FIRST_TOKEN["name"])
    return lm.token_mask(tokenizer, pattern, exclude)


class _LMAugmenter(Augmenter):
    uses_model = True
    span_kind = "ent"
    """'ent' (entity spans) or 'rel' (relation spans)."""

    def spans(self, text: str) -> list[Span]:
        return entity_spans(text) if self.span_kind == "ent" else relation_spans(text)

    def model(self):
        return lm.load(self.options["model"], self.device)


class MaskFill(_LMAugmenter):
    """mask_ent / mask_rel: mask 1-`max_spans` entity (or relation) spans of the reference and refill
    each with an LM: a causal LM continues the text before the span (top-k 5 sampling, `samples`
    draws, the first usable one that differs from the original is taken); a masked LM
    (`model=mlm:ID` or a ...ForMaskedLM config) fills as many masks as the span had tokens. Spans
    are added until the estimated word Jaccard with the reference is <= guard_jaccard."""

    defaults = {"model": lm.DEFAULT_MODEL, "top_k": 5, "samples": 5, "max_spans": 3, "max_new_tokens": 6}

    def _choose(self, text: str, rng: random.Random) -> list[Span]:
        spans = [s for s in self.spans(text) if s.start > 0 or self._kind == "mlm"]
        if not spans:
            return []
        if self.span_kind == "rel":
            content = [s for s in spans if text[s.start:s.end].split()[0] not in _LIGHT_VERBS]
            light = [s for s in spans if s not in content]
            rng.shuffle(content)
            rng.shuffle(light)
            spans = content + light
        else:
            rng.shuffle(spans)
        chosen: list[Span] = []
        n_words = max(len(set(words(text))), 1)
        changed = 0
        for s in spans:
            if any(not (s.end <= c.start or s.start >= c.end) for c in chosen):
                continue
            chosen.append(s)
            changed += len(set(words(text[s.start:s.end])))
            if (n_words - changed) / (n_words + changed) <= self.guard or len(chosen) >= self.options["max_spans"]:
                break
        if (n_words - changed) / (n_words + changed) > self.guard:
            return []  # even all chosen spans refilled would leave it too close to the reference
        return sorted(chosen, key=lambda s: -s.start)  # right to left: earlier offsets stay valid

    def __call__(self, items, rng):
        tok, model, self._kind = self.model()
        plans = [self._choose(it.reference, rng) for it in items]
        texts = [it.reference for it in items]
        filled = [0] * len(items)
        for round_ in range(max((len(p) for p in plans), default=0)):
            todo = [i for i, p in enumerate(plans) if round_ < len(p)]
            if self._kind == "mlm":
                for i in todo:
                    s = plans[i][round_]
                    original = texts[i][s.start:s.end]
                    for draw in range(self.options["samples"]):
                        fill = lm.mlm_fill(tok, model, texts[i], s.start, s.end, derived_seed(rng.random(), draw),
                                           self.options["top_k"])
                        if s.type in ("person", "name"):
                            fill = " ".join(capitalise(w) for w in fill.split())  # uncased masked LMs
                        fill = clean_fill(fill, s.type, original)
                        if fill:
                            texts[i] = texts[i][:s.start] + fill + texts[i][s.end:]
                            filled[i] += 1
                            break
                continue
            for i in todo:
                span_type = plans[i][round_].type
                draws = lm.sample(tok, model, texts[i][:plans[i][round_].start].rstrip(), self.options["samples"],
                                  self.options["max_new_tokens"], seed=rng.randrange(2**31), top_k=self.options["top_k"],
                                  stop_text=".,;:!?\n", first_mask=_first_token_mask(tok, span_type))
                s = plans[i][round_]
                original = texts[i][s.start:s.end]
                order = list(range(len(draws)))
                rng.shuffle(order)
                for d in order:
                    fill = clean_fill(draws[d], s.type, original)
                    if fill:
                        before = texts[i][:s.start]
                        texts[i] = (before.rstrip() + " " if before.endswith(" ") else before) + fill + texts[i][s.end:]
                        filled[i] += 1
                        break
        out = []
        for it, text, count in zip(items, texts, filled):
            text = clean_spaces(text)
            ok = count > 0 and self.ok_negative(text, it.reference)
            out.append([Candidate(text, f"{self.name}:{self._kind}")] if ok else [])
        return out


class MaskEntities(MaskFill):
    name, kind, span_kind = "mask_ent", "mask_ent", "ent"


class MaskRelations(MaskFill):
    name, kind, span_kind = "mask_rel", "mask_rel", "rel"
    defaults = dict(MaskFill.defaults, max_spans=3)


class Regenerate(_LMAugmenter):
    """regen_ent / regen_rel: keep the reference up to an entity (or relation) span and let a causal
    generator LM write the masked span and the rest of the sentence (T 0.7, top-p 0.9). One span
    is drawn among those with >= 2 words before them and early enough (the kept prefix at most
    guard_jaccard - 0.1 of the words) that the word Jaccard with the reference can stay <= guard_jaccard."""

    defaults = {"model": lm.DEFAULT_MODEL, "temperature": 0.7, "top_p": 0.9, "samples": 2, "max_new_tokens": 28}

    def _choose(self, text: str, rng: random.Random) -> Span | None:
        n = len(text.split())
        spans = [s for s in self.spans(text) if len(text[:s.start].split()) >= 2]
        spans = [s for s in spans if (len(text[:s.start].split())) / n <= self.guard - 0.1]
        return rng.choice(spans) if spans else None

    def __call__(self, items, rng):
        tok, model, kind = self.model()
        if kind != "causal":
            raise AugmenterError(f"{self.name}.model: {self.options['model']!r} is a {kind} model; regeneration needs a causal LM")
        plans = [self._choose(it.reference, rng) for it in items]
        todo = [i for i, p in enumerate(plans) if p is not None]
        prompts = [items[i].reference[:plans[i].start].rstrip() for i in todo]
        samples = [lm.sample(tok, model, prompt, self.options["samples"], self.options["max_new_tokens"],
                             seed=rng.randrange(2**31), top_p=self.options["top_p"],
                             temperature=self.options["temperature"], stop_text=".!?\n") for prompt in prompts]
        out: list[list[Candidate]] = [[] for _ in items]
        for i, prompt, draws in zip(todo, prompts, samples):
            for raw in draws:
                continuation = raw.split("\n")[0]
                sentences = split_sentences(continuation.strip())
                head = sentences[0] if sentences else ""
                text = ensure_period(clean_spaces(prompt + " " + head))
                if not head or len(text.split()) < 5:
                    continue
                if self.ok_negative(text, items[i].reference):
                    out[i] = [Candidate(text, self.name)]
                    break
        return out


class RegenEntities(Regenerate):
    name, kind, span_kind = "regen_ent", "regen_ent", "ent"


class RegenRelations(Regenerate):
    name, kind, span_kind = "regen_rel", "regen_rel", "rel"


class SysLowConfidence(_LMAugmenter):
    """sys_lowcon: the model's own summary of the source by beam search (8 beams, length penalty 2.0);
    the lowest-scoring finished beams (that are usable and differ from the reference) are the negatives."""

    name, kind = "sys_lowcon", "sys_lowcon"
    defaults = {"model": lm.DEFAULT_MODEL, "num_beams": 8, "length_penalty": 2.0, "max_new_tokens": 32,
                "prompt": "Summarize the following text in one sentence.\n\n{source}"}

    def __call__(self, items, rng):
        tok, model, kind = self.model()
        if kind != "causal":
            raise AugmenterError(f"sys_lowcon.model: {self.options['model']!r} is a {kind} model; a causal LM is needed")
        prompts = [lm.chat_prompt(tok, self.options["prompt"].format(source=it.source, reference=it.reference)) for it in items]
        results = [lm.beam_search(tok, model, prompt, self.options["num_beams"], self.options["length_penalty"],
                                  self.options["max_new_tokens"]) for prompt in prompts]
        out = []
        for it, beams in zip(items, results):
            cands, seen = [], set()
            for text, score in reversed(beams):  # lowest score first
                text = clean_spaces(text.strip().split("\n")[0].strip('"“” '))
                if len(text.split()) < 4:
                    continue
                text = ensure_period(text)
                if normalise(text) in seen or not self.ok_negative(text, it.reference):
                    continue
                seen.add(normalise(text))
                cands.append(Candidate(text, f"{self.name}:{score:.4f}"))
                if len(cands) >= self.options["n"]:
                    break
            out.append(cands)
        return out


# ==== registry =======================================================================================

AUGMENTERS: dict[str, type[Augmenter]] = {}


def register(cls: type[Augmenter]) -> type[Augmenter]:
    if cls.kind != "positive" and cls.kind not in NEGATIVE_TYPES:
        raise AugmenterError(f"augmenter {cls.name}: kind {cls.kind!r} is not 'positive' or one of {', '.join(NEGATIVE_TYPES)}")
    AUGMENTERS[cls.name] = cls
    return cls


for _cls in (Paraphrase, BackTranslate, SwapEntities, MaskEntities, MaskRelations, RegenEntities, RegenRelations,
             SysLowConfidence, Toxic):
    register(_cls)

DEFAULT_AUGMENTERS = ("paraphrase", "swap_ent", "mask_ent", "mask_rel", "regen_ent", "regen_rel", "sys_lowcon", "toxic")


def make_augmenter(name: str, options: dict | None = None, device: str = "cpu") -> Augmenter:
    if name not in AUGMENTERS:
        raise AugmenterError(f"unknown augmenter {name!r} (known: {', '.join(sorted(AUGMENTERS))})")
    return AUGMENTERS[name](options, device)
