"""Contrastive records: the schema, its validation, and loading from JSONL, parquet or HF datasets.

One record per source:
    {"id": str, "source": str, "positives": [str, ...], "negatives": [{"text": str, "type": str}, ...]}
A bad record is a DataError naming the file, the line (or row) and the field, or, with
`on_bad_record="skip"`, a Rejected entry that the trainer counts and writes to rejected.jsonl.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Iterable, Iterator

NEGATIVE_TYPES = ("toxic", "swap_ent", "mask_ent", "mask_rel", "regen_ent", "regen_rel", "sys_lowcon", "other")
MIN_POSITIVES = 2
MIN_NEGATIVES = 1
MAX_RECORD_BYTES = 1 << 20
"""A longer line is almost surely not one record (a binary file, a missing newline)."""


class DataError(ValueError):
    """A data problem the user can fix; the message names the file, line and field."""


@dataclass(frozen=True)
class Negative:
    text: str
    type: str


@dataclass(frozen=True)
class Record:
    id: str
    source: str
    positives: tuple[str, ...]
    negatives: tuple[Negative, ...]

    def to_json(self) -> dict:
        return {
            "id": self.id,
            "source": self.source,
            "positives": list(self.positives),
            "negatives": [{"text": n.text, "type": n.type} for n in self.negatives],
        }


@dataclass(frozen=True)
class Rejected:
    where: str
    """`file:line` (or `dataset[row]`)."""
    reason: str
    raw: str



def json_problem(exc: json.JSONDecodeError) -> str:
    """"bad JSON at column N: what", without json's dangling "at", with the likely cause of the commonest one."""
    what = exc.msg.removesuffix(" at")
    if what == "Invalid control character":
        what += " (a raw tab or line break inside a string: unterminated, or not escaped)"
    return f"bad JSON at column {exc.colno}: {what}"

def embedded_dataset_path() -> Path:
    return Path(str(resources.files("cdb") / "assets" / "contrastive" / "records.jsonl"))


def validate(obj, where: str) -> Record:
    """A Record from one parsed JSON object, or a DataError whose message starts with `where`."""
    if not isinstance(obj, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    for key in ("id", "source", "positives", "negatives"):
        if key not in obj:
            raise DataError(f"{where}: field '{key}' is missing")
    unknown = sorted(set(obj) - {"id", "source", "positives", "negatives"})
    if unknown:
        raise DataError(f"{where}: unknown field '{unknown[0]}'")
    record_id = obj["id"]
    if isinstance(record_id, int) and not isinstance(record_id, bool):
        record_id = str(record_id)
    if not isinstance(record_id, str) or not record_id.strip():
        raise DataError(f"{where}: field 'id' must be a non-empty string")
    if not isinstance(obj["source"], str) or not obj["source"].strip():
        raise DataError(f"{where}: field 'source' must be a non-empty string")

    positives = obj["positives"]
    if not isinstance(positives, list):
        raise DataError(f"{where}: field 'positives' must be a list of strings")
    for i, text in enumerate(positives):
        if not isinstance(text, str):
            raise DataError(f"{where}: field 'positives[{i}]' must be a string, got {type(text).__name__}")
    kept = tuple(t for t in positives if t.strip())
    if len(kept) < MIN_POSITIVES:
        raise DataError(f"{where}: field 'positives' needs at least {MIN_POSITIVES} non-empty strings, has {len(kept)}")

    negatives = obj["negatives"]
    if not isinstance(negatives, list):
        raise DataError(f"{where}: field 'negatives' must be a list of {{text, type}} objects")
    parsed = []
    for i, neg in enumerate(negatives):
        name = f"negatives[{i}]"
        if not isinstance(neg, dict) or set(neg) != {"text", "type"}:
            raise DataError(f"{where}: field '{name}' must be an object with exactly 'text' and 'type'")
        if not isinstance(neg["text"], str) or not neg["text"].strip():
            raise DataError(f"{where}: field '{name}.text' must be a non-empty string")
        if neg["type"] not in NEGATIVE_TYPES:
            raise DataError(f"{where}: field '{name}.type' is {neg['type']!r}, not one of {', '.join(NEGATIVE_TYPES)}")
        parsed.append(Negative(neg["text"], neg["type"]))
    if len(parsed) < MIN_NEGATIVES:
        raise DataError(f"{where}: field 'negatives' needs at least {MIN_NEGATIVES} entry")
    return Record(record_id, obj["source"], kept, tuple(parsed))


def _jsonl_objects(path: Path) -> Iterator[tuple[str, str, object]]:
    """(where, raw line, parsed object or DataError) per non-blank line."""
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            where = f"{path}:{number}"
            if len(raw) > MAX_RECORD_BYTES:
                yield where, raw[:200].decode("utf-8", "replace"), DataError(
                    f"{where}: record is {len(raw):,} bytes, over the {MAX_RECORD_BYTES:,}-byte limit for one record")
                continue
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                yield where, raw.decode("utf-8", "replace"), DataError(f"{where}: not valid UTF-8 (byte {exc.start})")
                continue
            if not line.strip():
                continue
            try:
                yield where, line.rstrip("\n"), json.loads(line)
            except json.JSONDecodeError as exc:
                yield where, line.rstrip("\n"), DataError(f"{where}: {json_problem(exc)}")


def _table_objects(rows: Iterable[dict], name: str) -> Iterator[tuple[str, str, object]]:
    for index, row in enumerate(rows):
        row = dict(row)
        # Arrow stores a list of structs; bring it back to plain Python for validation.
        yield f"{name}[row {index}]", json.dumps(row, default=str, ensure_ascii=False), row


def _source_objects(location: str, split: str) -> Iterator[tuple[str, str, object]]:
    path = Path(location).expanduser()
    if path.is_file():
        if path.suffix in (".jsonl", ".json"):
            return _jsonl_objects(path)
        if path.suffix == ".parquet":
            import pyarrow.parquet as pq

            return _table_objects(pq.read_table(path).to_pylist(), str(path))
        raise DataError(f"{path}: unsupported data file type '{path.suffix}' (use .jsonl, .json or .parquet)")
    if path.is_dir():
        import datasets

        if (path / "dataset_info.json").exists() or (path / "dataset_dict.json").exists():
            loaded = datasets.load_from_disk(str(path))
            if isinstance(loaded, datasets.DatasetDict):
                if split not in loaded:
                    raise DataError(f"{path}: no split '{split}' (has {', '.join(loaded)})")
                loaded = loaded[split]
            return _table_objects(loaded, str(path))
        return _table_objects(datasets.load_dataset(str(path), split=split), str(path))
    if location.startswith((".", "/", "~")) or location.endswith((".jsonl", ".json", ".parquet")):
        raise DataError(f"{location}: data file not found")
    import datasets  # a hub id: only reachable with network access, or from the HF cache

    try:
        return _table_objects(datasets.load_dataset(location, split=split), location)
    except Exception as exc:  # datasets raises many types for a missing or unreachable dataset
        raise DataError(f"{location}: could not load as a file, directory or HF dataset id: {exc}") from None


def load_records(location: str = "", split: str = "train", on_bad_record: str = "error") -> tuple[list[Record], list[Rejected]]:
    """All valid records of `location` (empty = the embedded dataset) and the rejected ones.

    With on_bad_record="error" the first bad record raises DataError; with "skip" it is returned
    in the second list. A dataset without any valid record is always an error.
    """
    name = location or str(embedded_dataset_path())
    records: list[Record] = []
    rejected: list[Rejected] = []
    seen: dict[str, str] = {}
    for where, raw, obj in _source_objects(name, split):
        try:
            if isinstance(obj, DataError):
                raise obj
            record = validate(obj, where)
            if record.id in seen:
                raise DataError(f"{where}: field 'id' repeats {record.id!r} from {seen[record.id]}")
        except DataError as exc:
            if on_bad_record != "skip":
                raise
            rejected.append(Rejected(where, str(exc), raw))
            continue
        seen[record.id] = where
        records.append(record)
    if not records:
        if rejected:
            raise DataError(f"{name}: no valid records ({len(rejected)} rejected, first: {rejected[0].reason})")
        raise DataError(f"{name}: the dataset is empty")
    return records, rejected


def validation_count(n_records: int, share: float) -> int:
    """How many of `n_records` sources `split_validation` holds out: round(share x n), at least 2 but
    at most half of them; 0 when share is 0."""
    if share <= 0:
        return 0
    return min(max(2, round(share * n_records)), n_records // 2)


def split_validation(records: list[Record], share: float) -> tuple[list[Record], list[Record]]:
    """(training records, validation records): the `validation_count` records whose id has the smallest
    SHA-256 are held out, so the split depends on the records alone (not their order or the run);
    the training records keep their order."""
    ranked = sorted(records, key=lambda r: hashlib.sha256(r.id.encode()).hexdigest())
    held = {id(r) for r in ranked[:validation_count(len(records), share)]}
    return [r for r in records if id(r) not in held], [r for r in records if id(r) in held]


def write_rejected(rejected: list[Rejected], path: Path) -> None:
    with path.open("w", encoding="utf-8") as handle:
        for item in rejected:
            handle.write(json.dumps({"where": item.where, "reason": item.reason, "raw": item.raw}, ensure_ascii=False) + "\n")
