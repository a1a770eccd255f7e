"""What evaluation knows of the training data: the embedded dataset (cdb/assets/contrastive), its
data card and the BOLD pages its records came from.

    trained_pages() -> ids of the BOLD pages the embedded dataset's records came from
    labelled_with(kind, scorer) -> whether `scorer` is the one the card says labelled the data

Evaluation leaves those pages out (held-out summaries, toxicity prompts), so that a model tuned on
the embedded dataset is scored on text it has not seen, and marks every number scored by the
labeller: a model tuned on the labels can score well there by learning what the labeller likes.
"""

from __future__ import annotations

import json
from functools import lru_cache

from cdb.data.records import embedded_dataset_path


@lru_cache(maxsize=1)
def card() -> dict:
    return json.loads((embedded_dataset_path().parent / "card.json").read_text(encoding="utf-8"))


@lru_cache(maxsize=1)
def trained_pages() -> frozenset[str]:
    with embedded_dataset_path().open(encoding="utf-8") as f:
        return frozenset(json.loads(line)["id"] for line in f if line.strip())


def labelled_with(kind: str, scorer) -> bool:
    """Whether `scorer` (a cdb.scoring scorer) is the card's `scorers.<kind>` (toxicity or faithfulness)."""
    return card().get("scorers", {}).get(kind, {}).get("name") == scorer.name
