"""What identifies a training data set in MLflow's dataset inputs: a name, a digest and a profile.

    dataset_identity(location, split, records) -> DatasetIdentity

Data with its data card beside it (card.json next to the file: the embedded data and every
`python -m cdb.data build` output) is named and identified by the card: digest = SHA-256 of
card.json, profile = the card's counts. Other data: digest = SHA-256 of the file (of the records,
for a dataset folder or hub id), profile = the same counts over `records`. A card that counts
another number of records than `records` describes other data and is not used. Digests keep the
first DIGEST_HEX hex digits (MLflow stores at most 36).
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from cdb.data.records import NEGATIVE_TYPES, Record, embedded_dataset_path

DIGEST_HEX = 32
CARD_FILE = "card.json"


@dataclass(frozen=True)
class DatasetIdentity:
    """The fields of an MLflow dataset input (mlflow.entities.Dataset)."""

    name: str
    digest: str
    source_type: str
    """"local" or "hugging_face"."""
    source: str
    """JSON: where the data lies (and its card)."""
    profile: str
    """JSON: the counts of data_profile."""


def data_profile(records: Sequence[Record]) -> dict[str, Any]:
    """The counts a data card keeps (counts.records, positives, negatives, negatives_by_type)."""
    by_type = Counter(n.type for r in records for n in r.negatives)
    return {"records": len(records), "positives": sum(len(r.positives) for r in records),
            "negatives": sum(by_type.values()), "negatives_by_type": {t: by_type[t] for t in NEGATIVE_TYPES if by_type[t]}}


def _sha256_file(path: Path) -> str:
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def _records_sha256(records: Sequence[Record]) -> str:
    return hashlib.sha256("".join(json.dumps(r.to_json(), sort_keys=True) + "\n" for r in records).encode()).hexdigest()


def dataset_identity(location: str, split: str, records: Sequence[Record]) -> DatasetIdentity:
    """`location` and `split` as in data.path and data.split (empty location: the embedded data);
    `records`: all valid records loaded from it."""
    path = Path(location).expanduser() if location else embedded_dataset_path()
    if not path.exists():  # a hub dataset id
        return DatasetIdentity(location, _records_sha256(records)[:DIGEST_HEX], "hugging_face",
                               json.dumps({"path": location, "split": split}), json.dumps(data_profile(records)))
    source = {"uri": path.resolve().as_uri()}
    card_path = (path if path.is_dir() else path.parent) / CARD_FILE
    card = json.loads(card_path.read_text(encoding="utf-8")) if card_path.is_file() else {}
    counts = card.get("counts", {})
    if counts.get("records") == len(records):
        source["card"] = card_path.resolve().as_uri()
        profile = {k: counts.get(k) for k in ("records", "positives", "negatives", "negatives_by_type")}
        return DatasetIdentity(card.get("dataset") or path.name, _sha256_file(card_path)[:DIGEST_HEX], "local",
                               json.dumps(source), json.dumps(profile))
    digest = _sha256_file(path) if path.is_file() else _records_sha256(records)  # a folder: save_to_disk's arrow files
    return DatasetIdentity(path.name, digest[:DIGEST_HEX], "local", json.dumps(source), json.dumps(data_profile(records)))
