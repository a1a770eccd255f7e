"""A per-chunk result cache under OUTPUT/.cache: one JSON file per (stage, chunk), written to a
temporary file and renamed into place, so a crash never leaves a half-written entry and a re-run
redoes only the chunks that are missing.

Layout: OUTPUT/.cache/<input sha256[:16]>/<stage key>/<chunk index>-<chunk hash[:16]>.json, where the
stage key hashes the augmenter's (or scorers') config and the seed, and the chunk hash hashes the
chunk's content. A changed input, config, seed or chunk gets new files; stale ones are ignored.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path


class ChunkCache:
    def __init__(self, root: Path):
        self.root = Path(root)

    def path(self, stage: str, index: int, chunk_hash: str) -> Path:
        return self.root / stage / f"{index:05d}-{chunk_hash[:16]}.json"

    def get(self, stage: str, index: int, chunk_hash: str):
        path = self.path(stage, index, chunk_hash)
        try:
            with path.open("r", encoding="utf-8") as handle:
                return json.load(handle)
        except FileNotFoundError:
            return None
        except (OSError, ValueError):  # unreadable: recompute it
            return None

    def put(self, stage: str, index: int, chunk_hash: str, value) -> None:
        write_atomic(self.path(stage, index, chunk_hash), json.dumps(value, ensure_ascii=False))

    def count(self, stage: str) -> int:
        folder = self.root / stage
        return len(list(folder.glob("*.json"))) if folder.is_dir() else 0


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_atomic(path: Path, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files; give the usual permissions
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
