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
(c) `causal_prefix`: what a causal LM has read at each pooled position, not only the pooled words: the
    candidate up to the end of each word inside an entity span, as a bag of words and word pairs, and a
    logistic regression telling negative from positive (and toxic negative from positive), every
    position predicted by a model fit on other sources (FOLDS folds by source). Accuracy with a 95%
    interval by a percentile bootstrap over sources (a source's positions resampled together), against
    the majority share, overall and on the toxic rows' positions. A fixed frame opening the toxic
    negatives is seen from every one of their pooled positions: the probe then finds them all.
Rows and spans are tagged as training tags them (cdb.data.entities.candidate_form).
"""

from __future__ import annotations

import hashlib
import re
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
"""Share of sources (by a hash of the record id) whose rows (b) is evaluated on."""


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
        "causal_prefix": causal_probe([(r.id, text, kind) for r, text, _, kind in rows], row_spans),
    }


FOLDS = 5
"""Folds of (c), by a hash of the record id: each source's positions are predicted by a model fit on the
sources of the other folds."""
CONFIDENCE = 0.95
RESAMPLES = 9999
"""Resamples of (c)'s bootstrap over sources."""
MAX_TOXIC_ROW_ACCURACY = 0.9
"""Target of (c): the upper end of the interval of the negative-vs-positive accuracy on the toxic rows'
pooled positions is at most this: what precedes a toxic negative's pooled positions does not give it away
at all of them (a fixed opening frame did, at every one)."""


def fold(record_id: str) -> int:
    return int(hashlib.sha256(record_id.encode()).hexdigest()[8:16], 16) % FOLDS


def pooled_prefixes(text: str, spans: Sequence[tuple[int, int]]) -> list[str]:
    """What a causal LM has read at each position the contrast pools: `text` up to the end of each word
    inside an entity span (the tokens of a word see the same words before them)."""
    return [text[:start + m.end()] for start, end in spans for m in re.finditer(r"\w+", text[start:end])]


def by_source_interval(correct: Sequence[bool], sources: Sequence[str]) -> list[float]:
    """A 95% interval of the share of `correct`, by a percentile bootstrap over sources: the positions of
    a source are resampled together, since they are not independent. Seeded, so reproducible."""
    import numpy as np
    from scipy import stats

    index = {s: i for i, s in enumerate(sorted(set(sources)))}
    hits, counts = np.zeros(len(index)), np.zeros(len(index))
    for ok, source in zip(correct, sources):
        hits[index[source]] += ok
        counts[index[source]] += 1
    rates = hits / counts
    if len(index) < 2 or np.all(rates == rates[0]):
        value = round(float(hits.sum() / counts.sum()), 4)
        return [value, value]  # nothing a resample could change
    result = stats.bootstrap((hits, counts), lambda h, n, axis=-1: h.sum(axis=axis) / n.sum(axis=axis), paired=True,
                             vectorized=True, n_resamples=RESAMPLES, confidence_level=CONFIDENCE, method="percentile",
                             random_state=np.random.default_rng(0))
    return [round(float(result.confidence_interval.low), 4), round(float(result.confidence_interval.high), 4)]


def _estimate(correct: list[bool], sources: list[str]) -> dict:
    if not correct:
        return {"value": None, "n": 0, "interval": None}
    return {"value": round(sum(correct) / len(correct), 4), "n": len(correct), "interval": by_source_interval(correct, sources)}


def _out_of_fold(texts: list[str], labels: list[int], sources: list[str]) -> list[int | None]:
    """Each text's label predicted by a logistic regression on binary bags of words and word pairs, fit on
    the other folds' sources; None where that fold's model cannot be fit (one class only)."""
    from sklearn.feature_extraction.text import CountVectorizer
    from sklearn.linear_model import LogisticRegression

    predicted: list[int | None] = [None] * len(texts)
    folds = [fold(s) for s in sources]
    for k in sorted(set(folds)):
        train = [i for i, f in enumerate(folds) if f != k]
        test = [i for i, f in enumerate(folds) if f == k]
        if len({labels[i] for i in train}) < 2:
            continue
        vectorizer = CountVectorizer(ngram_range=(1, 2), binary=True)
        model = LogisticRegression(max_iter=2000).fit(vectorizer.fit_transform([texts[i] for i in train]),
                                                      [labels[i] for i in train])
        for i, p in zip(test, model.predict(vectorizer.transform([texts[i] for i in test]))):
            predicted[i] = int(p)
    return predicted


def causal_probe(rows: Sequence[tuple[str, str, str]], spans: Sequence[Sequence[tuple[int, int]]]) -> dict:
    """(c) over `rows` (record id, candidate in its row form, "positive" or the negative type) tagged with
    `spans`: from what a causal LM has read at each pooled position, tell negative from positive rows
    (and toxic negatives from positives), out of fold by source; accuracy with a by-source interval,
    overall and on the toxic rows' positions, against the majority share (always the commoner class)."""
    positions = [(row, rid, prefix, kind) for row, ((rid, text, kind), found) in enumerate(zip(rows, spans))
                 for prefix in pooled_prefixes(text, found)]
    out: dict = {"unit": "a pooled position: the candidate up to the end of a word inside an entity span",
                 "classifier": "logistic regression on binary bags of words and word pairs",
                 "split": f"{FOLDS} folds by source (hash of the record id); every position predicted out of fold",
                 "interval": f"{CONFIDENCE:.0%} percentile bootstrap over sources ({RESAMPLES} resamples, seed 0)",
                 "target_max_toxic_rows": MAX_TOXIC_ROW_ACCURACY}
    tasks = {"negative_vs_positive": lambda kind: True, "toxic_vs_positive": lambda kind: kind in ("positive", "toxic")}
    for task, include in tasks.items():
        chosen = [p for p in positions if include(p[3])]
        labels = [int(kind != "positive") for _, _, _, kind in chosen]
        predicted = _out_of_fold([prefix for _, _, prefix, _ in chosen], labels, [rid for _, rid, _, _ in chosen])
        scored = [(p, y, pred) for p, y, pred in zip(chosen, labels, predicted) if pred is not None]
        majority = int(2 * sum(y for _, y, _ in scored) > len(scored))
        toxic = [(p, y, pred) for p, y, pred in scored if p[3] == "toxic"]
        out[task] = {
            "positions": len(scored),
            "rows": len({p[0] for p, _, _ in scored}),
            "sources": len({p[1] for p, _, _ in scored}),
            "accuracy": _estimate([pred == y for _, y, pred in scored], [p[1] for p, _, _ in scored]),
            "majority_share": _estimate([y == majority for _, y, _ in scored], [p[1] for p, _, _ in scored]),
            "accuracy_toxic_rows": _estimate([pred == y for _, y, pred in toxic], [p[1] for p, _, _ in toxic]),
        }
    return out


def probe_holds(probe: dict) -> bool:
    """Whether a build meets the three targets."""
    a, b, c = probe["spans_not_in_source"], probe["bag_of_pooled_tokens"], probe["causal_prefix"]
    if a["share"] > a["target_max_share"]:
        return False
    toxic = c["negative_vs_positive"]["accuracy_toxic_rows"]
    if toxic["interval"] is not None and toxic["interval"][1] > c["target_max_toxic_rows"]:
        return False
    if b["accuracy_pooled_tokens"] is None or b["accuracy_source_entities"] is None:
        return True
    return b["accuracy_pooled_tokens"] <= b["accuracy_source_entities"] + b["target_max_accuracy_over_source"]
