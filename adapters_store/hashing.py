"""Content hashes of files and folders (sha256), shared by the model registry and the store."""

from __future__ import annotations

import hashlib
from pathlib import Path

__all__ = ["hash_file", "hash_tree"]

_CHUNK = 1 << 20


def hash_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def hash_tree(root: Path, exclude: frozenset[str] = frozenset()) -> dict[str, str]:
    """sha256 of every regular file under `root`, keyed by its POSIX path relative to root."""
    out: dict[str, str] = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if path.is_file() and rel not in exclude:
            out[rel] = hash_file(path)
    return out
