"""How often each entity precision-source variant flags a candidate (scores it below 1) against its
record's source, for the embedded dataset's positives and each negative type, with Wilson 95%
intervals: the figures docs/METHOD.md quotes under "Faithfulness instruments".

    python scripts/entity_flags_on_negatives.py
"""

from __future__ import annotations

import json
import math
from collections import defaultdict

from cdb.data.records import embedded_dataset_path
from cdb.eval.intervals import share_interval
from cdb.scoring.entities import EntityConsistency


def main() -> None:
    with embedded_dataset_path().open(encoding="utf-8") as f:
        records = [json.loads(line) for line in f if line.strip()]
    rows = [(r["source"], text, "positive") for r in records for text in r["positives"]]
    rows += [(r["source"], n["text"], n["type"]) for r in records for n in r.get("negatives", [])]
    sources, texts, kinds = zip(*rows)
    scores = EntityConsistency().measure(sources, texts, sources)
    print(f"{len(records)} records of {embedded_dataset_path()}; flagged = precision < 1 (candidates naming no entity left out)")
    for metric in ("entity_precision_all", "entity_precision_nan2021"):
        flagged: dict[str, list[bool]] = defaultdict(list)
        for kind, value in zip(kinds, scores[metric]):
            if not math.isnan(value):
                flagged[kind].append(value < 1.0)
        print(metric)
        for kind, hits in flagged.items():
            interval = share_interval(sum(hits), len(hits))
            print(f"  {kind:<10} {sum(hits):>3}/{len(hits):<3} {sum(hits) / len(hits):.3f} "
                  f"[{interval.low:.3f}, {interval.high:.3f}]")


if __name__ == "__main__":
    main()
