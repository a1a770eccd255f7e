"""What the scorers share: the versions recorded beside every score."""

from __future__ import annotations

import importlib.metadata


def package_version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def model_version(model) -> str:
    commit = getattr(model.config, "_commit_hash", None)
    return commit[:12] if commit else "local"
