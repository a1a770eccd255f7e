"""Entity tagging of candidate texts, aligned to the LM's tokens through offset mappings.

The contrastive representation of a row pools the contrast head over its entity tokens
(docs/METHOD.md, "Pooling", "Entity tagging"). Taggers return character spans; `entity_token_mask`
turns spans into a per-token mask. Default: an offline regex tagger (names, numbers, dates);
`spacy:MODEL` or `hf:MODEL_ID_OR_DIR` use a NER model the user has.
"""

from __future__ import annotations

import re
from typing import Callable, Sequence

Span = tuple[int, int]
Tagger = Callable[[Sequence[str]], list[list[Span]]]

_MONTHS = "January|February|March|April|May|June|July|August|September|October|November|December"
_DATE = rf"\b(?:\d{{1,2}} (?:{_MONTHS})(?: \d{{4}})?|(?:{_MONTHS}) \d{{1,2}}(?:, \d{{4}})?|(?:{_MONTHS}) \d{{4}})\b"
_NUMBER = r"[$£€]?\b\d(?:[\d,]*\d)?(?:\.\d+)?(?:%| percent\b)?"
_NAME = r"\b[A-Z][\w'’-]*(?:\s+(?:of|de|van|von|the|and)?\s*[A-Z][\w'’-]*)*"
_PATTERN = re.compile(f"{_DATE}|{_NUMBER}|{_NAME}")
# Capitalised only because they open a sentence or are pronouns, not names.
_NOT_NAMES = {
    "The", "A", "An", "In", "On", "At", "It", "He", "She", "They", "We", "I", "You", "This", "That", "These",
    "Those", "His", "Her", "Their", "Its", "Our", "My", "Your", "After", "Before", "During", "When", "While",
    "But", "And", "Or", "So", "If", "As", "For", "With", "By", "From", "To", "Of", "According", "Officials",
    "Some", "Many", "Most", "Several", "There", "Here", "What", "Who", "Why", "How", "Yes", "No", "Not",
    "Last", "Next", "Today", "Yesterday", "Tomorrow", "Also", "However", "Meanwhile", "Although", "Despite",
}


def regex_spans(text: str) -> list[Span]:
    spans = []
    for match in _PATTERN.finditer(text):
        start, end = match.span()
        words = match.group().split()
        # Drop a leading sentence-opening word ("The Council" -> "Council").
        while words and words[0] in _NOT_NAMES:
            start = text.index(words[0], start) + len(words[0])
            start += len(text[start:]) - len(text[start:].lstrip())
            words = words[1:]
        if words and start < end:
            spans.append((start, end))
    return spans


def regex_tagger(texts: Sequence[str]) -> list[list[Span]]:
    return [regex_spans(t) for t in texts]


def spacy_tagger(model: str) -> Tagger:
    import spacy  # optional: only when the user names a spaCy pipeline

    nlp = spacy.load(model)
    return lambda texts: [[(e.start_char, e.end_char) for e in doc.ents] for doc in nlp.pipe(texts)]


def hf_tagger(model: str) -> Tagger:
    from transformers import pipeline

    ner = pipeline("token-classification", model=model, aggregation_strategy="simple", device=-1)

    def tag(texts: Sequence[str]) -> list[list[Span]]:
        if not texts:
            return []
        results = ner(list(texts))
        return [[(int(e["start"]), int(e["end"])) for e in ents if e.get("entity_group", "O") != "O"] for ents in results]

    return tag


def make_tagger(spec: str) -> Tagger:
    """`regex`, `spacy:MODEL` or `hf:MODEL_ID_OR_DIR`."""
    if spec == "regex":
        return regex_tagger
    kind, _, name = spec.partition(":")
    if kind == "spacy" and name:
        return spacy_tagger(name)
    if kind == "hf" and name:
        return hf_tagger(name)
    raise ValueError(f"data.entity_tagger: {spec!r} is not 'regex', 'spacy:MODEL' or 'hf:MODEL'")


def entity_token_mask(offsets: Sequence[tuple[int, int]], spans: Sequence[Span]) -> list[bool]:
    """True for each token whose character span overlaps an entity span (and is not empty)."""
    return [end > start and any(start < s_end and end > s_start for s_start, s_end in spans) for start, end in offsets]
