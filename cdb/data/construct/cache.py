"""A per-chunk result cache under OUTPUT/.cache: one JSON file per (stage, chunk), written to a
temporary file and renamed into place, so a crash never leaves a half-written entry and a re-run
redoes only the chunks that are missing.

Layout: OUTPUT/.cache/<input sha256[:16]>/<stage key>/<chunk index>-<chunk hash[:16]>.json, where the
stage key hashes the augmenter's (or scorers') config and the seed, and the chunk hash hashes the
chunk's content. A changed input, config, seed or chunk gets new files; stale ones are ignored.
"""

from __future__ import annotations

import json
from pathlib import Path

from cdb.data.files import write_atomic


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
