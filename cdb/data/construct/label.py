"""The labelling rule and the filters (docs/METHOD.md, "Labelling rule and filters"), with
the thresholds of the build's `label` settings section (LabelConfig):

- A positive candidate (the reference, paraphrases, back-translations) is a positive iff
  toxicity <= max_positive_toxicity (0.5) AND faithfulness >= faithfulness_threshold (0.4).
- A `toxic` negative is kept only if toxicity >= min_toxic (0.4).
- At most `max_per_type` negatives per type and `max_positives` positives (first ones win);
  duplicates (same words) are dropped.
- A source is rejected, with one reason, when: it keeps < 2 positives (`too_few_positives`), it has
  no negative (`no_negatives`), its first positive has no entity (of the build's `entity_tagger`, the
  tagger training pools over) within the first `early_entity_words` words (`no_early_entity`), or any positive-negative pair has word Jaccard
  > max_jaccard (`jaccard`; with on_jaccard="drop_negative" the offending negatives are dropped
  instead and counted as `jaccard_negative`).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from collections.abc import Callable, Sequence
from typing import Literal

from cdb.data.entities import Span
from cdb.data.records import NEGATIVE_TYPES, Negative, Record
from cdb.data.text import has_early_entity, normalise, word_jaccard

POSITIVE_KINDS = ("reference", "positive")
REJECTION_REASONS = ("too_few_positives", "no_negatives", "no_early_entity", "jaccard")


@dataclass(frozen=True)
class Scored:
    text: str
    kind: str
    """'reference', 'positive' or a negative type."""
    origin: str
    toxicity: float
    faithfulness: float


@dataclass(frozen=True)
class LabelConfig:
    """The `label` section of the build settings."""

    max_positive_toxicity: float = 0.5
    """A positive candidate needs toxicity <= this."""
    faithfulness_threshold: float = 0.4
    """A positive candidate needs faithfulness (to the source) >= this."""
    min_toxic: float = 0.4
    """A `toxic` negative needs toxicity >= this."""
    max_jaccard: float = 0.8
    """Word Jaccard above this between any positive and negative of a source triggers `on_jaccard`."""
    early_entity_words: int = 10
    """The first positive needs an entity within its first this many words."""
    min_positives: int = 2
    """A source with fewer positives is rejected."""
    max_positives: int = 4
    """Positives kept per source (the first ones)."""
    max_per_type: int = 1
    """Negatives kept per type and source (the first ones)."""
    on_jaccard: Literal["drop_source", "drop_negative"] = "drop_source"
    """What a Jaccard violation costs: the whole source, or only the offending negatives."""


@dataclass
class Outcome:
    record: Record | None
    reason: str | None
    positives: list[Scored] = field(default_factory=list)
    negatives: list[Scored] = field(default_factory=list)
    dropped: Counter = field(default_factory=Counter)
    """Candidate-level drops by reason."""


def is_positive(toxicity: float, faithfulness: float, config: LabelConfig) -> bool:
    return toxicity <= config.max_positive_toxicity and faithfulness >= config.faithfulness_threshold


def jaccard_violations(positives: list[Scored], negatives: list[Scored], limit: float) -> list[int]:
    """Indices of negatives with word Jaccard > limit against any positive."""
    return [j for j, neg in enumerate(negatives) if any(word_jaccard(p.text, neg.text) > limit for p in positives)]


def label_source(record_id: str, source: str, candidates: list[Scored], config: LabelConfig,
                 entity_spans: Callable[[str], Sequence[Span]]) -> Outcome:
    """The record of one source, or the reason it is rejected; `entity_spans(text)` gives the
    entity spans of a positive candidate (the build tags them all in one batch first)."""
    dropped: Counter = Counter()
    positives: list[Scored] = []
    seen: set[str] = set()
    for cand in (c for c in candidates if c.kind in POSITIVE_KINDS):
        key = normalise(cand.text)
        if not key:
            dropped["empty"] += 1
        elif cand.toxicity > config.max_positive_toxicity:
            dropped["positive_toxic"] += 1
        elif cand.faithfulness < config.faithfulness_threshold:
            dropped["positive_unfaithful"] += 1
        elif key in seen:
            dropped["duplicate"] += 1
        elif len(positives) >= config.max_positives:
            dropped["over_positive_cap"] += 1
        else:
            seen.add(key)
            positives.append(cand)

    negatives: list[Scored] = []
    per_type: Counter = Counter()
    for cand in (c for c in candidates if c.kind not in POSITIVE_KINDS):
        if cand.kind not in NEGATIVE_TYPES:
            raise ValueError(f"candidate of unknown kind {cand.kind!r}")
        key = normalise(cand.text)
        if not key:
            dropped["empty"] += 1
        elif key in seen:
            dropped["duplicate"] += 1
        elif cand.kind == "toxic" and cand.toxicity < config.min_toxic:
            dropped["toxic_below_threshold"] += 1
        elif per_type[cand.kind] >= config.max_per_type:
            dropped["over_type_cap"] += 1
        else:
            seen.add(key)
            per_type[cand.kind] += 1
            negatives.append(cand)

    def reject(reason: str) -> Outcome:
        return Outcome(None, reason, positives, negatives, dropped)

    if len(positives) < config.min_positives:
        return reject("too_few_positives")
    if not negatives:
        return reject("no_negatives")
    if not has_early_entity(positives[0].text, entity_spans(positives[0].text), config.early_entity_words):
        return reject("no_early_entity")
    bad = jaccard_violations(positives, negatives, config.max_jaccard)
    if bad:
        if config.on_jaccard == "drop_source":
            return reject("jaccard")
        dropped["jaccard_negative"] += len(bad)
        negatives = [n for j, n in enumerate(negatives) if j not in set(bad)]
        if not negatives:
            return reject("no_negatives")
    negatives.sort(key=lambda n: NEGATIVE_TYPES.index(n.kind))  # stable: generation order within a type
    record = Record(record_id, source, tuple(p.text for p in positives),
                    tuple(Negative(n.text, n.kind) for n in negatives))
    return Outcome(record, None, positives, negatives, dropped)
