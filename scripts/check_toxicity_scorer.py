#!/usr/bin/env python3
"""The held-out check of a toxicity instrument: does it rank toxic text without profanity above benign
text with profanity or charged words?

    python scripts/check_toxicity_scorer.py [SPEC ...]     (default: tox-block profanity-check)

Data: tests/fixtures/toxicity/held_out.jsonl, 40 toxic sentences without profanity (insults,
dehumanisation, threats, identity attacks, 10 each) and 40 benign ones (20 with mild profanity, 20
with charged words: violence, identity terms, in neutral use), written for this check. Prints, per
scorer spec (cdb.scoring): its pairwise accuracy (AUC: the share of (toxic, benign) pairs it ranks
right, ties half) with a 95% BCa bootstrap interval resampling each class apart, the AUC of each toxic
kind against all benign sentences and of all toxic ones against each benign kind; then, for the first
two specs, the paired difference of their AUCs on the same resampled sentences, with its interval.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
from scipy import stats

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from cdb.scoring import make_toxicity_scorer  # noqa: E402

HELD_OUT = REPO / "tests" / "fixtures" / "toxicity" / "held_out.jsonl"
RESAMPLES = 10_000


def auc(toxic: np.ndarray, benign: np.ndarray) -> float:
    """Share of (toxic, benign) pairs with the toxic one scored higher, ties counted half."""
    higher = toxic[:, None] > benign[None, :]
    tied = toxic[:, None] == benign[None, :]
    return float(np.mean(higher + 0.5 * tied))


def interval(statistic, toxic_index: np.ndarray, benign_index: np.ndarray) -> tuple[float, float]:
    """95% BCa interval, the toxic and the benign sentences resampled apart (a stratified bootstrap)."""
    result = stats.bootstrap((toxic_index, benign_index), lambda t, b: statistic(t.astype(int), b.astype(int)),
                             vectorized=False, n_resamples=RESAMPLES, method="BCa", random_state=0)
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


def main(specs: list[str]) -> int:
    rows = [json.loads(line) for line in HELD_OUT.read_text(encoding="utf-8").splitlines() if line.strip()]
    texts = [r["text"] for r in rows]
    kinds = np.array([r["kind"] for r in rows])
    toxic = np.array([bool(r["toxic"]) for r in rows])
    toxic_index, benign_index = np.flatnonzero(toxic), np.flatnonzero(~toxic)
    print(f"{HELD_OUT.relative_to(REPO)}: {toxic.sum()} toxic, {(~toxic).sum()} benign sentences "
          f"({toxic.sum() * (~toxic).sum()} pairs)")
    scores = {}
    for spec in specs:
        scorer = make_toxicity_scorer(spec)
        s = scores[spec] = np.array(scorer.score(texts))
        low, high = interval(lambda t, b, s=s: auc(s[t], s[b]), toxic_index, benign_index)
        print(f"{scorer.name}@{scorer.version}: AUC {auc(s[toxic], s[~toxic]):.3f} [{low:.3f}, {high:.3f}]")
        for kind in dict.fromkeys(kinds[toxic]):
            print(f"  {kind:>16} vs all benign: {auc(s[kinds == kind], s[~toxic]):.3f}")
        for kind in dict.fromkeys(kinds[~toxic]):
            print(f"  all toxic vs {kind:>14}: {auc(s[toxic], s[kinds == kind]):.3f}")
    if len(specs) >= 2:
        first, second = scores[specs[0]], scores[specs[1]]

        def difference(t: np.ndarray, b: np.ndarray) -> float:
            return auc(first[t], first[b]) - auc(second[t], second[b])

        low, high = interval(difference, toxic_index, benign_index)
        print(f"{specs[0]} - {specs[1]}: {difference(toxic_index, benign_index):+.3f} [{low:+.3f}, {high:+.3f}] (paired)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:] or ["tox-block", "profanity-check"]))
