"""Rule-based augmenters (deterministic, offline): `swap_ent` (negatives), and the rule-based paraphrases
that the `paraphrase` augmenter (lm_based.py) falls back on."""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

from cdb.data.construct.augmenters.base import Augmenter, Candidate, NegativeOptions
from cdb.data.text import (
    Entity, capitalise, clean_spaces, ensure_period, entities, lower_first, normalise, replace_spans, word_jaccard, words,
)

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
    """Up to n distinct rule-based paraphrases: each structural rewrite that applies (clause fronting
    or backing, passive voice, copula fronting, coordination swap), else the reference itself, with up
    to `max_synonyms` synonym substitutions from a fixed table (never inside an entity). No framing
    phrase is added: a frame shared by many positives is a token the contrast could separate them by."""
    structural = [t for t in (f(reference) for f in STRUCTURAL) if t and normalise(t) != normalise(reference)]
    rng.shuffle(structural)
    out: list[str] = []
    seen = {normalise(reference)}
    for attempt in range(n * 3):
        base = structural[attempt] if attempt < len(structural) else reference
        text = ensure_period(clean_spaces(apply_synonyms(base, rng, max_synonyms)))
        key = normalise(text)
        if key in seen:
            continue
        seen.add(key)
        out.append(text)
        if len(out) >= n:
            break
    return out


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


@dataclass(frozen=True)
class SwapOptions(NegativeOptions):
    tries: int = 12
    """Draws of 1-2 swaps per candidate before giving up on the source."""


class SwapEntities(Augmenter):
    """Entities of the reference swapped for same-type entities of the source (negatives)."""

    name, kind, Options = "swap_ent", "swap_ent", SwapOptions

    def __call__(self, items, rng):
        out = []
        for it in items:
            cands, seen = [], set()
            for _ in range(self.options.n):
                text = swap_entities(it.reference, it.source, rng, self.guard, self.options.tries)
                if text and normalise(text) not in seen:
                    seen.add(normalise(text))
                    cands.append(Candidate(text, self.name))
            out.append(cands)
        return out


# Generic insults and profanity only, never about a group. BOLD (the offline corpus) describes gender,
