"""The shortcut probe of a build: could the contrastive objective tell positives from negatives by the
entity tokens it pools over, without learning faithfulness or toxicity? (card.json `shortcut_probe`,
docs/METHOD.md "Shortcut probe"; asserted on the shipped data in tests/test_assets.py.)

(a) `spans_not_in_source`: of the entity spans tagged in positives and toxic negatives (the rows whose
    pooled tokens should be the source's facts), the share whose text the source does not contain
    (case-insensitive). A template word tagged as an entity ("Shut", "Briefly") counts here.
(b) `bag_of_pooled_tokens`: a logistic regression on the bag of words inside each row's entity spans
    (what the row is pooled over), predicting positive vs negative, with its accuracy on held-out
    sources; beside it the same probe on the words of the source's entities only (the same bag for
    every row of a source, so it can learn little beyond the class balance), and the majority share.
    Pooled accuracy well above the source-only accuracy means the pooled tokens carry a shortcut.
Rows and spans are tagged as training tags them (cdb.data.entities.candidate_form).
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Sequence

from cdb.data.entities import Tagger, candidate_form
from cdb.data.records import Record
from cdb.data.text import words

MAX_SPANS_NOT_IN_SOURCE = 0.05
"""Target of (a): at most this share of tagged spans in positives and toxic negatives is not in the source."""
MAX_ACCURACY_OVER_SOURCE = 0.05
"""Target of (b): the pooled-token probe's held-out accuracy exceeds the source-only probe's by at most this."""
HELD_OUT_SHARE = 0.3
"""Share of sources (by a hash of the record id) whose rows the probes are evaluated on."""


def held_out(record_id: str) -> bool:
    return int(hashlib.sha256(record_id.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF < HELD_OUT_SHARE


def _accuracy(train: list[tuple[list[str], int]], test: list[tuple[list[str], int]]) -> float | None:
    """Held-out accuracy of a logistic regression on binary bags of words; None when it cannot be fit."""
    if not test or len({y for _, y in train}) < 2 or not any(bag for bag, _ in train):
        return None
    from sklearn.feature_extraction.text import CountVectorizer
    from sklearn.linear_model import LogisticRegression

    vectorizer = CountVectorizer(analyzer=lambda bag: bag, binary=True)
    x_train = vectorizer.fit_transform([bag for bag, _ in train])
    model = LogisticRegression(max_iter=2000).fit(x_train, [y for _, y in train])
    predicted = model.predict(vectorizer.transform([bag for bag, _ in test]))
    return round(sum(int(p == y) for p, (_, y) in zip(predicted, test)) / len(test), 4)


def shortcut_probe(records: Sequence[Record], tagger: Tagger) -> dict:
    rows = [(r, candidate_form(t), 1, "positive") for r in records for t in r.positives]
    rows += [(r, candidate_form(n.text), 0, n.type) for r in records for n in r.negatives]
    row_spans = tagger([text for _, text, _, _ in rows])
    source_spans = tagger([r.source for r in records])
    source_bag = {r.id: [w for a, b in spans for w in words(r.source[a:b])] for r, spans in zip(records, source_spans)}

    spans = missing = 0
    missing_words: Counter = Counter()
    for (record, text, _, kind), found in zip(rows, row_spans):
        if kind not in ("positive", "toxic"):
            continue
        for a, b in found:
            spans += 1
            if text[a:b].strip().lower() not in record.source.lower():
                missing += 1
                missing_words[text[a:b].strip()] += 1

    pooled = {True: [], False: []}
    from_source = {True: [], False: []}
    for (record, text, label, _), found in zip(rows, row_spans):
        side = held_out(record.id)
        pooled[side].append(([w for a, b in found for w in words(text[a:b])], label))
        from_source[side].append((source_bag[record.id], label))
    test_labels = [y for _, y in pooled[True]]
    majority = round(max(test_labels.count(0), test_labels.count(1)) / len(test_labels), 4) if test_labels else None
    return {
        "spans_not_in_source": {
            "rows": "positives and toxic negatives",
            "spans": spans,
            "not_in_source": missing,
            "share": round(missing / spans, 4) if spans else 0.0,
            "target_max_share": MAX_SPANS_NOT_IN_SOURCE,
            "most_common": [[text, n] for text, n in sorted(missing_words.items(), key=lambda kv: (-kv[1], kv[0]))[:10]],
        },
        "bag_of_pooled_tokens": {
            "task": "positive vs negative row, logistic regression on binary bags of words",
            "train_rows": len(pooled[False]),
            "held_out_rows": len(pooled[True]),
            "held_out_sources": sum(1 for r in records if held_out(r.id)),
            "accuracy_pooled_tokens": _accuracy(pooled[False], pooled[True]),
            "accuracy_source_entities": _accuracy(from_source[False], from_source[True]),
            "majority_share": majority,
            "target_max_accuracy_over_source": MAX_ACCURACY_OVER_SOURCE,
        },
    }


def probe_holds(probe: dict) -> bool:
    """Whether a build meets both targets."""
    a, b = probe["spans_not_in_source"], probe["bag_of_pooled_tokens"]
    if a["share"] > a["target_max_share"]:
        return False
    if b["accuracy_pooled_tokens"] is None or b["accuracy_source_entities"] is None:
        return True
    return b["accuracy_pooled_tokens"] <= b["accuracy_source_entities"] + b["target_max_accuracy_over_source"]
