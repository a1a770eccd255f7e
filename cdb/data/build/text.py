"""Text helpers shared by the readers, augmenters and filters: sentences, words, word Jaccard,
typed entity spans (on top of the offline regex tagger of `cdb.data.entities`), stable hashing."""

from __future__ import annotations

import hashlib
import json
import random
import re
from dataclasses import dataclass

from cdb.data.entities import regex_spans

_MONTHS = "January|February|March|April|May|June|July|August|September|October|November|December"
_DATE_FULL = re.compile(
    rf"^(?:\d{{1,2}} (?:{_MONTHS})(?: \d{{4}})?|(?:{_MONTHS}) \d{{1,2}}(?:, \d{{4}})?|(?:{_MONTHS}) \d{{4}})$"
)
_YEAR = re.compile(r"^(?:1[5-9]\d\d|20\d\d)s?$")
_NUMBER = re.compile(r"\d")
_LINKERS = {"of", "de", "van", "von", "the", "and"}
_WORD = re.compile(r"\W+")

# Abbreviations after which a full stop does not end a sentence.
_ABBREV = {
    "mr", "mrs", "ms", "dr", "st", "jr", "sr", "prof", "gen", "col", "lt", "sgt", "rev", "inc", "co",
    "corp", "ltd", "no", "vs", "etc", "mt", "ft", "gov", "sen", "rep", "capt", "cmdr", "adm", "maj",
    "e.g", "i.e", "u.s", "u.k", "a.k.a", "approx", "dept", "univ", "vol", "ca", "c",
}


def stable_hash(*parts) -> str:
    """A sha256 hex digest of JSON-encoded parts: the same on every machine and Python run."""
    blob = json.dumps(parts, sort_keys=True, ensure_ascii=False, default=str).encode("utf-8")
    return hashlib.sha256(blob).hexdigest()


def derived_rng(*parts) -> random.Random:
    return random.Random(int(stable_hash(*parts)[:16], 16))


def derived_seed(*parts) -> int:
    return int(stable_hash(*parts)[:8], 16)


def words(text: str) -> list[str]:
    return [w for w in _WORD.split(text.lower()) if w]


def word_jaccard(a: str, b: str) -> float:
    """Word-level Jaccard similarity of the lower-cased word sets (METHOD.md's filter)."""
    wa, wb = set(words(a)), set(words(b))
    return len(wa & wb) / max(len(wa | wb), 1)


def normalise(text: str) -> str:
    return " ".join(words(text))


def clean_spaces(text: str) -> str:
    text = re.sub(r"\s+", " ", text).strip()
    text = re.sub(r"\s+([,.;:!?])", r"\1", text)
    return text


def split_sentences(text: str) -> list[str]:
    """Sentences of a paragraph. Also splits sentences glued without a space ("Code.Sen has"),
    as in BOLD's Wikipedia text, and keeps abbreviations and initials ("Dr. X", "S. R. Varadhan")."""
    text = re.sub(r"([a-z\)\]\"”]{2}[.!?])([A-Z][a-z])", r"\1 \2", text.replace("\n", " "))
    text = re.sub(r"\s+", " ", text).strip()
    out, start = [], 0
    for match in re.finditer(r"[.!?][\"”’)]?\s+(?=[\"“(]?[A-Z0-9])", text):
        before = text[start:match.start()].split()
        last = before[-1].lower().rstrip(".") if before else ""
        if last in _ABBREV or (len(last) == 1 and last.isalpha()):
            continue
        out.append(text[start:match.end()].strip())
        start = match.end()
    tail = text[start:].strip()
    if tail:
        out.append(tail)
    return out


@dataclass(frozen=True)
class Entity:
    start: int
    end: int
    text: str
    type: str
    """person | name | number | date"""


def entity_type(span_text: str) -> str:
    if _DATE_FULL.match(span_text) or _YEAR.match(span_text):
        return "date"
    if _NUMBER.search(span_text):
        return "number"
    parts = span_text.split()
    if 2 <= len(parts) <= 3 and all(p[:1].isupper() and p.replace("-", "").replace("'", "").replace(".", "").isalpha() for p in parts):
        return "person"
    return "name"


def entities(text: str) -> list[Entity]:
    """Typed entity spans of the offline regex tagger: person-like names (2-3 capitalised words),
    other names, numbers, dates (years count as dates)."""
    found = []
    for start, end in regex_spans(text):
        span = text[start:end].rstrip("'’-")
        end = start + len(span)
        if not span:
            continue
        found.append(Entity(start, end, span, entity_type(span)))
    return found


def word_index(text: str, char: int) -> int:
    """How many words of `text` start before character `char`."""
    return len(text[:char].split())


def has_early_entity(text: str, max_words: int) -> bool:
    """True when an entity span of the regex tagger starts within the first `max_words` words."""
    return any(word_index(text, e.start) < max_words for e in entities(text))


def replace_spans(text: str, replacements: list[tuple[int, int, str]]) -> str:
    for start, end, new in sorted(replacements, reverse=True):
        text = text[:start] + new + text[end:]
    return clean_spaces(text)


def capitalise(text: str) -> str:
    return text[:1].upper() + text[1:] if text else text


def lower_first(text: str) -> str:
    """Lower-case the first word when it is not a name (a sentence-opening function word)."""
    first = text.split(" ", 1)[0]
    if first in {"The", "A", "An", "It", "This", "That", "These", "Those", "Its", "Their", "His", "Her", "He",
                 "She", "They", "There", "Some", "Many", "Most", "Several", "One", "Each", "Every"}:
        return first.lower() + text[len(first):]
    return text


def ensure_period(text: str) -> str:
    text = text.rstrip()
    return text if text.endswith((".", "!", "?", '."', '!"', '?"')) else text.rstrip(",;:") + "."
