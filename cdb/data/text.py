"""Text helpers shared by the readers, augmenters and filters: words, word Jaccard, typed entity
spans (on top of the offline regex tagger of `cdb.data.entities`), stable hashing. Sentences are
split by `cdb.sentences.split_sentences`, the one splitter of the project."""

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
    """Word-level Jaccard similarity of the lower-cased word sets (docs/METHOD.md, "Labelling rule and filters")."""
    wa, wb = set(words(a)), set(words(b))
    return len(wa & wb) / max(len(wa | wb), 1)


def normalise(text: str) -> str:
    return " ".join(words(text))


def clean_spaces(text: str) -> str:
    text = re.sub(r"\s+", " ", text).strip()
    text = re.sub(r"\s+([,.;:!?])", r"\1", text)
    return text


# Verbs that link entities in encyclopaedic text (mask_rel / regen_rel spans, finite-verb check).
VERBS = frozenset("""is was are were has had have became becomes become won wins wrote writes founded served serves played
plays joined received studied worked works died lived lives made makes led leads created creates directed directs
produced produces starred stars appeared appears began begins started starts released releases published publishes
taught teaches designed developed built invented discovered married moved grew attended graduated signed elected
appointed named called known considered described regarded used uses involves involve includes include included
combines combine supports support refers refer consists consist emphasizes emphasize originated originates means
seeks seek holds hold advocates advocate rejects reject believes believe practices practice focuses focus
performs performed sings sang composed fought owned owns ran runs remained remains comprises comprise""".split())
_AUX = {"is", "was", "are", "were", "has", "had", "have", "became", "becomes", "won", "wrote", "led", "made", "began",
        "grew", "ran", "fought", "sang", "taught", "built", "held", "holds", "did", "does", "can", "could", "will",
        "would", "may", "might", "must", "should"}
_NOT_FINITE_BEFORE = {"also", "sometimes", "often", "commonly", "widely", "be", "been", "being", "is", "was", "are",
                      "were", "generally", "usually", "formerly", "originally", "the", "a", "an"}


def has_finite_verb(text: str) -> bool:
    """A rough check that a sentence has a finite verb (so is a sentence, not a title or a list)."""
    tokens = words(text)
    for i, w in enumerate(tokens):
        prev = tokens[i - 1] if i else ""
        if w in _AUX:
            return True
        if w in VERBS and w.endswith("s") and prev not in ("the", "a", "an", "its", "their", "his", "her"):
            return True
        if (w in VERBS or (w.endswith("ed") and len(w) > 4)) and i > 0 and prev not in _NOT_FINITE_BEFORE:
            return True
    return False


# Capitalised words that open sentences but are not names: never entities.
_STARTERS = frozenset("""Since Other Although Because Unlike Like Within Among Between Under Over Through Throughout Until
Upon Following Today Later Early Modern Many Both Each Every Such Another Along Around Without Instead Further Thus
Therefore Hence Then Now Once Even Only Just Still Yet Though Whether Where Which Whose Whom Due Prior Born Based
Known Called Some Most Several There Here Following Beginning Starting Outside Inside Unlike Apart Aside Whereas
Whilst Upon Afterwards Eventually Additionally Furthermore Moreover Nevertheless Nonetheless Overall Indeed Also
Note See For""".split())


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
        if " " not in span and (span in _STARTERS or (span.endswith("ly") and span[:1].isupper()
                                                      and (start == 0 or text[:start].rstrip().endswith((".", "!", "?"))))):
            continue
        found.append(Entity(start, end, span, entity_type(span)))
    return found


def word_index(text: str, char: int) -> int:
    """How many words of `text` start before character `char`."""
    return len(text[:char].split())


def has_early_entity(text: str, spans, max_words: int) -> bool:
    """True when one of the entity `spans` (character spans of `text`, from the build's tagger)
    starts within the first `max_words` words."""
    return any(word_index(text, start) < max_words for start, _ in spans)


def replace_spans(text: str, replacements: list[tuple[int, int, str]]) -> str:
    """Replace character spans (right to left), fixing an indefinite article before each new text."""
    for start, end, new in sorted(replacements, reverse=True):
        before = text[:start]
        m = re.search(r"\b([Aa]n?) $", before)
        if m and new:
            article = "an" if new[:1].lower() in "aeiou" else "a"
            if m.group(1)[0].isupper():
                article = article.capitalize()
            before = before[:m.start(1)] + article + " "
        text = before + new + text[end:]
    return clean_spaces(text)


def capitalise(text: str) -> str:
    return text[:1].upper() + text[1:] if text else text


def lower_first(text: str) -> str:
    """Lower-case the first word when it is not a name (a sentence-opening function word)."""
    from cdb.data.entities import _NOT_NAMES

    first = text.split(" ", 1)[0]
    if first in _NOT_NAMES or first in _STARTERS or first in {"One", "Each", "Every", "Its"}:
        return first.lower() + text[len(first):]
    return text


def ensure_period(text: str) -> str:
    text = text.rstrip()
    return text if text.endswith((".", "!", "?", '."', '!"', '?"')) else text.rstrip(",;:") + "."
