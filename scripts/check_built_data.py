#!/usr/bin/env python3
"""Check a built dataset by re-scoring its records from scratch (not trusting scores.jsonl).

    python scripts/check_built_data.py [DIR]        (default cdb/assets/contrastive)

Prints: record count, negatives per type, mean toxicity (alt-profanity-check) of the toxic negatives
and of the positives, mean faithfulness (cosine of all-MiniLM-L6-v2 embeddings, source vs candidate)
of the positives and of each negative type. Exits 1 when a check fails: the records do not load with
cdb.data.records.load_records, fewer than 200 records, a negative type of the build missing, toxic
mean < 0.4, positive toxicity mean > 0.2, positives not more faithful than swap_ent negatives.
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from cdb.data.records import NEGATIVE_TYPES, load_records  # noqa: E402
from cdb.scoring import make_faithfulness_scorer, make_toxicity_scorer  # noqa: E402

REQUIRED = ("toxic", "swap_ent", "mask_ent", "mask_rel", "regen_ent", "regen_rel", "sys_lowcon")


def mean(values):
    return sum(values) / len(values) if values else float("nan")


def main(folder: str) -> int:
    folder = Path(folder)
    records, rejected = load_records(str(folder / "records.jsonl"))
    tox = make_toxicity_scorer("profanity-check")
    faith = make_faithfulness_scorer("embedding")
    positives = [(r.source, p) for r in records for p in r.positives]
    negatives = [(r.source, n.text, n.type) for r in records for n in r.negatives]
    types = Counter(t for _, _, t in negatives)
    pos_tox = tox.score([p for _, p in positives])
    neg_tox = tox.score([t for _, t, _ in negatives])
    pos_faith = faith.score([s for s, _ in positives], [p for _, p in positives])
    neg_faith = faith.score([s for s, _, _ in negatives], [t for _, t, _ in negatives])
    by_type = {t: {"n": types[t],
                   "toxicity": round(mean([v for v, (_, _, k) in zip(neg_tox, negatives) if k == t]), 4),
                   "faithfulness": round(mean([v for v, (_, _, k) in zip(neg_faith, negatives) if k == t]), 4)}
               for t in NEGATIVE_TYPES if types[t]}
    report = {
        "records": len(records), "rejected_when_loading": len(rejected),
        "positives": {"n": len(positives), "toxicity": round(mean(pos_tox), 4), "faithfulness": round(mean(pos_faith), 4)},
        "negatives": by_type,
    }
    print(json.dumps(report, indent=2))
    card = folder / "card.json"
    expected = REQUIRED
    if card.exists():
        kinds = {a["kind"] for a in json.loads(card.read_text())["augmenters"]}
        expected = tuple(t for t in REQUIRED if t in kinds)
    failures = []
    if len(records) < 200:
        failures.append(f"{len(records)} records < 200")
    failures += [f"no {t} negative" for t in expected if not types[t]]
    if "toxic" in by_type and by_type["toxic"]["toxicity"] < 0.4:
        failures.append(f"toxic negatives' mean toxicity {by_type['toxic']['toxicity']} < 0.4")
    if report["positives"]["toxicity"] > 0.2:
        failures.append(f"positives' mean toxicity {report['positives']['toxicity']} > 0.2")
    if "swap_ent" in by_type and report["positives"]["faithfulness"] <= by_type["swap_ent"]["faithfulness"]:
        failures.append("positives are not more faithful than swap_ent negatives")
    for failure in failures:
        print(f"FAIL: {failure}", file=sys.stderr)
    if not failures:
        print("all checks passed", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else str(REPO / "cdb" / "assets" / "contrastive")))
