"""Sources to build records from: JSONL, CSV, parquet, a HF dataset (id or local folder). With no
input the build reads the offline BOLD corpus (cdb.data.bold), into the same `InputData`.

Every reader yields items in file order and reports each bad line (missing field, empty source,
non-UTF-8 bytes, bad JSON, repeated id) as a BadInput naming `file:line` (or `file[row N]`); bad lines
are skipped and counted, never fatal. Only "no valid source at all" is a DataError.
"""

from __future__ import annotations

import csv
import hashlib
import json
import re
from pathlib import Path
from typing import Iterator

from cdb.data.records import DataError, json_problem
from cdb.data.sources import BadInput, InputData, Item, lead_reference
from cdb.data.text import clean_spaces, stable_hash

# --- file readers ---------------------------------------------------------------------------------

def sha256_file(path: Path) -> str:
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def _has_bad_bytes(value: str) -> bool:
    return any("\udc80" <= ch <= "\udcff" for ch in value)


class _Fields:
    def __init__(self, source: str, reference: str, id_field: str, stem: str, max_reference_words: int):
        self.source, self.reference, self.id, self.stem = source, reference, id_field, stem
        self.max_reference_words = max_reference_words
        self.seen: dict[str, str] = {}

    def item(self, row: object, where: str, index: int) -> Item | BadInput:
        if not isinstance(row, dict):
            return BadInput(where, f"expected an object, got {type(row).__name__}")
        if self.source not in row or row[self.source] is None:
            return BadInput(where, f"field '{self.source}' is missing")
        source = row[self.source]
        if not isinstance(source, str):
            return BadInput(where, f"field '{self.source}' must be a string, got {type(source).__name__}")
        if _has_bad_bytes(source):
            return BadInput(where, "not valid UTF-8")
        source = clean_spaces(source)
        if not source:
            return BadInput(where, f"field '{self.source}' is empty")
        if self.reference:
            if self.reference not in row or row[self.reference] is None:
                return BadInput(where, f"field '{self.reference}' is missing")
            reference = row[self.reference]
            if isinstance(reference, list):  # e.g. a `positives` list: its first non-empty entry
                reference = next((r for r in reference if isinstance(r, str) and r.strip()), "")
            if not isinstance(reference, str):
                return BadInput(where, f"field '{self.reference}' must be a string, got {type(reference).__name__}")
            if _has_bad_bytes(reference):
                return BadInput(where, "not valid UTF-8")
            reference = clean_spaces(reference)
            if not reference:
                return BadInput(where, f"field '{self.reference}' is empty")
        else:
            reference = lead_reference(source, self.max_reference_words)
            if not reference:
                return BadInput(where, f"field '{self.source}': no lead sentence to use as the reference")
        raw_id = row.get(self.id) if self.id else None
        if raw_id is None or (isinstance(raw_id, str) and not raw_id.strip()):
            item_id = f"{self.stem}-{index:06d}"
        else:
            item_id = str(raw_id)
        if item_id in self.seen:
            return BadInput(where, f"field '{self.id}' repeats {item_id!r} from {self.seen[item_id]}")
        self.seen[item_id] = where
        return Item(item_id, source, reference, where)


def _jsonl_rows(path: Path) -> Iterator[tuple[str, object]]:
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            where = f"{path}:{number}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                yield where, BadInput(where, f"not valid UTF-8 (byte {exc.start})")
                continue
            if not line.strip():
                continue
            try:
                yield where, json.loads(line)
            except json.JSONDecodeError as exc:
                yield where, BadInput(where, json_problem(exc))


def _csv_rows(path: Path) -> Iterator[tuple[str, object]]:
    with path.open("r", encoding="utf-8", errors="surrogateescape", newline="") as handle:
        reader = csv.DictReader(handle)
        try:
            for row in reader:
                where = f"{path}:{reader.line_num}"
                if None in row:
                    yield where, BadInput(where, f"{len(row[None])} value(s) more than the header has")
                    continue
                if any(isinstance(v, str) and _has_bad_bytes(v) for v in row.values()):
                    yield where, BadInput(where, "not valid UTF-8")
                    continue
                yield where, row
        except csv.Error as exc:
            where = f"{path}:{reader.line_num}"
            yield where, BadInput(where, f"bad CSV: {exc}")


def _table_rows(rows, name: str) -> Iterator[tuple[str, object]]:
    for index, row in enumerate(rows):
        yield f"{name}[row {index}]", dict(row)


def _hf_dataset(location: str, split: str):
    import datasets

    path = Path(location).expanduser()
    try:
        if path.is_dir() and ((path / "dataset_info.json").exists() or (path / "dataset_dict.json").exists()):
            loaded = datasets.load_from_disk(str(path))
            if isinstance(loaded, datasets.DatasetDict):
                if split not in loaded:
                    raise DataError(f"{path}: no split '{split}' (has {', '.join(loaded)})")
                loaded = loaded[split]
            return loaded
        return datasets.load_dataset(str(path) if path.is_dir() else location, split=split)
    except DataError:
        raise
    except Exception as exc:  # datasets raises many types for a missing or unreachable dataset
        raise DataError(f"{location}: could not load as a file, directory or HF dataset id: {exc}") from None


def read_input(location: str, source_field: str = "source", reference_field: str = "reference", id_field: str = "id",
               split: str = "train", limit: int = 0, max_reference_words: int = 24) -> InputData:
    """Items of `location`, bad lines, the input's sha256 and its origin."""
    path = Path(location).expanduser()
    if path.is_file():
        suffix = path.suffix.lower()
        if suffix in (".jsonl", ".json"):
            rows = _jsonl_rows(path)
        elif suffix == ".csv":
            rows = _csv_rows(path)
        elif suffix == ".parquet":
            import pyarrow.parquet as pq

            rows = _table_rows(pq.read_table(path).to_pylist(), str(path))
        else:
            raise DataError(f"{path}: unsupported input type '{suffix}' (use .jsonl, .json, .csv, .parquet, a dataset folder or a HF id)")
        digest = sha256_file(path)
        origin = {"name": str(path.resolve()), "kind": suffix.lstrip(".")}
        location = str(path.resolve())
        stem = re.sub(r"[^A-Za-z0-9_-]+", "-", path.stem)
        stop_at_limit = False
    elif location.startswith((".", "/", "~")) and not path.exists():
        raise DataError(f"{location}: input not found")
    else:
        dataset = _hf_dataset(location, split)
        rows = _table_rows(dataset, location if not path.is_dir() else str(path.resolve()))
        digest = stable_hash("hf", location, split, getattr(dataset, "_fingerprint", None), len(dataset))
        origin = {"name": location, "kind": "hf-dataset", "split": split,
                  "fingerprint": getattr(dataset, "_fingerprint", None)}
        stem = re.sub(r"[^A-Za-z0-9_-]+", "-", path.name if path.is_dir() else location)
        stop_at_limit = True  # a hub dataset can be huge: read only what the limit needs
    fields = _Fields(source_field, reference_field, id_field, stem, max_reference_words)
    items, bad = [], []
    for index, (where, row) in enumerate(rows):
        result = row if isinstance(row, BadInput) else fields.item(row, where, index)
        if isinstance(result, BadInput):
            bad.append(result)
        else:
            items.append(result)
            if stop_at_limit and limit and len(items) >= limit:
                break
    if limit:
        items = items[:limit]
    if not items:
        raise DataError(f"{location}: no valid source ({len(bad)} bad line(s); first: {bad[0].where}: {bad[0].reason})"
                        if bad else f"{location}: no sources")
    return InputData(items, bad, digest, location, origin)
