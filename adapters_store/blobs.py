"""The store's files: `blobs/<name>/<version>/` folders and the `tmp/` staging area.

A publish copies into a fresh folder under `tmp/` (same filesystem as `blobs/`, so the final
`os.replace` is atomic), while holding a shared `flock` on `tmp.lock`. A sweep empties `tmp/`
only when it can take that lock exclusively, i.e. when no publisher anywhere is staging:
whatever it then finds there was left by a killed process. Blob folders are swept by the
store under the catalog's write lock, which publishers hold from the move until the commit.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["BlobArea", "copy_tree"]


class BlobArea:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.blobs = self.root / "blobs"
        self.tmp = self.root / "tmp"
        self._lock_file = self.root / "tmp.lock"

    def folder(self, name: str, version: int) -> Path:
        """Callers pass names already checked against NAME_RE."""
        return self.blobs / name / str(version)

    @contextmanager
    def staging(self) -> Iterator[Path]:
        """A fresh, empty work folder under `tmp/`, removed on exit if still there."""
        self.tmp.mkdir(parents=True, exist_ok=True)
        with self._flock(fcntl.LOCK_SH):
            work = Path(tempfile.mkdtemp(prefix="publish-", dir=self.tmp))
            try:
                yield work
            finally:
                shutil.rmtree(work, ignore_errors=True)

    def install(self, staged: Path, name: str, version: int) -> Path:
        """Move a staged folder into place; the caller holds the catalog's write lock."""
        dest = self.folder(name, version)
        dest.parent.mkdir(parents=True, exist_ok=True)
        if dest.exists():
            # Left by a publisher killed between this move and its commit; version numbers
            # are never reused, so nothing in the catalog can refer to it.
            self.discard(name, version)
        os.replace(staged, dest)
        _fsync_dir(dest.parent)
        return dest

    def discard(self, name: str, version: int) -> None:
        """Remove a version's folder: renamed away first so no one sees it half-deleted."""
        dest = self.folder(name, version)
        if not dest.exists():
            return
        self.tmp.mkdir(parents=True, exist_ok=True)
        with self._flock(fcntl.LOCK_SH):
            trash = Path(tempfile.mkdtemp(prefix="trash-", dir=self.tmp))
            # Another process's sweep may have removed it first: the outcome is the same.
            with contextlib.suppress(FileNotFoundError):
                os.replace(dest, trash / "old")
            shutil.rmtree(trash, ignore_errors=True)

    def prune_empty(self) -> None:
        """Drop name folders left empty; only under the catalog's write lock, because a
        publisher creates the name folder just before its move."""
        if not self.blobs.is_dir():
            return
        for name_dir in self.blobs.iterdir():
            if name_dir.is_dir() and not any(name_dir.iterdir()):
                name_dir.rmdir()

    def installed(self) -> set[tuple[str, int]]:
        """(name, version) of every blob folder on disk."""
        out: set[tuple[str, int]] = set()
        if not self.blobs.is_dir():
            return out
        for name_dir in self.blobs.iterdir():
            if not name_dir.is_dir():
                continue
            for version_dir in name_dir.iterdir():
                if version_dir.name.isdigit():
                    out.add((name_dir.name, int(version_dir.name)))
        return out

    def sweep_staging(self) -> list[Path]:
        """Remove what killed publishers left in `tmp/`; a no-op while anyone is staging."""
        if not self.tmp.is_dir():
            return []
        try:
            with self._flock(fcntl.LOCK_EX | fcntl.LOCK_NB):
                removed = list(self.tmp.iterdir())
                for entry in removed:
                    if entry.is_dir() and not entry.is_symlink():
                        shutil.rmtree(entry, ignore_errors=True)
                    else:
                        entry.unlink(missing_ok=True)
                return removed
        except BlockingIOError:
            return []

    @contextmanager
    def _flock(self, mode: int) -> Iterator[None]:
        self.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self._lock_file, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, mode)
            yield
        finally:
            os.close(fd)  # closing releases the lock, as a killed process's exit does


def copy_tree(src: Path, dest: Path) -> None:
    """Copy regular files (symlinks followed) and fsync them, so a crash after the commit
    cannot leave a catalogued folder with missing data."""
    shutil.copytree(src, dest, symlinks=False)
    for path in dest.rglob("*"):
        if path.is_file():
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
    for path in [dest, *(p for p in dest.rglob("*") if p.is_dir())]:
        _fsync_dir(path)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
