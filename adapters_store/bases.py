"""Registered base models: normal Hugging Face folders under `$TUNEGATE_HOME/models/<id>/`.

A folder is registered when it holds `tunegate-model.json` (id, source, architecture and the
sha256 of every file). The store validates adapters against these, the gateway serves them,
the tuner trains on them. Building a base (e.g. converting the shipped GGUF) is the tuner's
job; this module only records and checks what is on disk.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from filelock import FileLock

from adapters_store.hashing import hash_file, hash_tree

__all__ = [
    "MANIFEST",
    "BaseModel",
    "BaseRegistry",
    "UnknownBaseError",
    "check_id",
]

MANIFEST = "tunegate-model.json"
_ID_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")


class UnknownBaseError(LookupError):
    """No registered base model has this id."""


@dataclass(frozen=True)
class BaseModel:
    id: str
    path: Path
    source: str
    architecture: str
    files: dict[str, str]

    def hf_config(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads((self.path / "config.json").read_text())
        return data

    @property
    def size_bytes(self) -> int:
        return sum((self.path / rel).stat().st_size for rel in self.files)

    def verify(self) -> list[str]:
        """Files whose content is missing or differs from the recorded sha256."""
        problems = []
        for rel, digest in self.files.items():
            file = self.path / rel
            if not file.is_file():
                problems.append(f"{rel}: missing")
            elif hash_file(file) != digest:
                problems.append(f"{rel}: sha256 differs from the recorded one")
        return problems


def check_id(base_id: str) -> str:
    if not _ID_RE.fullmatch(base_id):
        raise ValueError(f"invalid base model id {base_id!r}: must match {_ID_RE.pattern}")
    return base_id


class BaseRegistry:
    """The base models registered under one `models/` folder."""

    def __init__(self, models_dir: Path) -> None:
        self.models_dir = Path(models_dir)

    def list(self) -> list[BaseModel]:
        if not self.models_dir.is_dir():
            return []
        out = []
        for child in sorted(self.models_dir.iterdir()):
            if (child / MANIFEST).is_file() and _ID_RE.fullmatch(child.name):
                out.append(self._load(child))
        return out

    def get(self, base_id: str) -> BaseModel:
        folder = self.models_dir / check_id(base_id)
        if not (folder / MANIFEST).is_file():
            known = ", ".join(b.id for b in self.list()) or "none"
            raise UnknownBaseError(f"unknown base model {base_id!r} (registered: {known})")
        return self._load(folder)

    def ensure(
        self, base_id: str, build: Callable[[Path], None], source: str, verify: bool = True
    ) -> BaseModel:
        """Return the registered base `base_id`, building it with `build(folder)` if absent.

        When `verify` is set, a registered folder whose files fail their checksum is rebuilt
        rather than used. Building happens in a temporary folder beside the final one and is
        moved into place only when complete, under a lock, so concurrent callers build once
        and nobody ever sees a half-written model.
        """
        check_id(base_id)
        self.models_dir.mkdir(parents=True, exist_ok=True)
        with FileLock(str(self.models_dir / f".{base_id}.lock")):
            folder = self.models_dir / base_id
            if (folder / MANIFEST).is_file():
                model = self._load(folder)
                if not verify or not model.verify():
                    return model
            tmp = Path(tempfile.mkdtemp(prefix=f".build-{base_id}-", dir=self.models_dir))
            try:
                build(tmp)
                self._write_manifest(tmp, base_id, source)
                if folder.exists():
                    trash = Path(tempfile.mkdtemp(prefix=f".old-{base_id}-", dir=self.models_dir))
                    os.replace(folder, trash / "old")
                    shutil.rmtree(trash, ignore_errors=True)
                os.replace(tmp, folder)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
            return self._load(folder)

    def _write_manifest(self, folder: Path, base_id: str, source: str) -> None:
        config = json.loads((folder / "config.json").read_text())
        manifest = {
            "id": base_id,
            "source": source,
            "architecture": (config.get("architectures") or ["unknown"])[0],
            "files": hash_tree(folder, exclude=frozenset({MANIFEST})),
        }
        (folder / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")

    def _load(self, folder: Path) -> BaseModel:
        data = json.loads((folder / MANIFEST).read_text())
        return BaseModel(
            id=data["id"],
            path=folder,
            source=data.get("source", ""),
            architecture=data.get("architecture", "unknown"),
            files=dict(data["files"]),
        )
