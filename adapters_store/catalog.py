"""The catalog's public API: publish, resolve, list, aliases, removal, cards, verification.

Signatures and dataclasses here are the contract the gateway and the tuner code against;
change them only together with their callers.

Layout under the store root (`$TUNEGATE_HOME/store/`): `catalog.sqlite3` (every SQL
statement lives in `catalog_sql.py`; with `store.catalog_url` the same tables live in
PostgreSQL instead, see `postgres_catalog.py`), `blobs/<name>/<version>/` (immutable
folders) and `tmp/` (publishes in progress). A publish copies into `tmp/`, validates and
hashes the copy, then in ONE catalog write transaction allocates the version number, moves
the folder into `blobs/` with `os.replace` and records it. Readers only ever find committed
versions, and their folders are complete. Opening a store sweeps what a killed publisher
left behind.

Change feed (for the gateway and any other long-running reader)::

    store = Store.open(settings)
    seen = store.generation()
    while serving:                      # e.g. every 200 ms
        now = store.generation()        # one indexed read (SQLite: microseconds)
        if now != seen:
            seen = now
            ...re-resolve the references you serve (store.list() / store.resolve(ref))

`generation()` grows in the same transaction as every publish, alias move, removal and card
update, so a reader that sees the new number also sees the change. `ArtifactVersion.uid` is
unique across the catalog and never reused: use it as vLLM's `lora_int_id`.
"""

from __future__ import annotations

import builtins
import getpass
import json
import os
import re
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, Protocol

from adapters_store.bases import BaseRegistry
from adapters_store.blobs import BlobArea, copy_tree
from adapters_store.config import StoreConfig
from adapters_store.errors import (
    ChangeRefusedError,
    InvalidReferenceError,
    PublishRefusedError,
    StoreError,
    UnknownReferenceError,
)
from adapters_store.hashing import hash_file
from adapters_store.sqlite_catalog import (
    AliasEvent,
    AuditEntry,
    CatalogTx,
    SqliteCatalog,
    VersionRow,
)
from adapters_store.validation import inspect_lora, inspect_model, refuse_unsafe_files
from adapters_store.vllm_support import ArchSupport, arch_support

__all__ = [
    "CARD_FIELDS",
    "NAME_RE",
    "AliasEvent",
    "ArtifactVersion",
    "AuditEntry",
    "Canary",
    "ChangeRefusedError",
    "InvalidReferenceError",
    "PublishRefusedError",
    "Reference",
    "Store",
    "StoreError",
    "UnknownReferenceError",
    "check_alias",
    "check_name",
    "parse_reference",
]

Kind = Literal["lora", "model"]
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
# `name@latest` is the same as `name`; it cannot be taken by an alias.
LATEST = "latest"
# Keys every card has (None until the caller fills them), as DESIGN.md lists them.
CARD_FIELDS = ("method", "recipe", "dataset_sha256", "metrics", "parent", "system_prompt")
# Keys the store derives from the files; a caller may repeat them but not contradict them.
_DERIVED = frozenset(
    {
        "base", "kind", "files", "created_at", "rank", "lora_alpha", "use_rslora",
        "target_modules", "lora_modules", "dtype", "architecture", "num_hidden_layers",
        "hidden_size", "vocab_size", "parameters",
    }
)  # fmt: skip


@dataclass(frozen=True)
class Reference:
    """`name` (latest), `name@3` (version) or `name@prod` (alias)."""

    name: str
    version: int | None = None
    alias: str | None = None

    def __str__(self) -> str:
        if self.version is not None:
            return f"{self.name}@{self.version}"
        if self.alias is not None:
            return f"{self.name}@{self.alias}"
        return self.name


def check_name(name: str, what: str = "name") -> str:
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise InvalidReferenceError(f"invalid {what} {name!r}: must match {NAME_RE.pattern}")
    return name


def check_alias(alias: str) -> str:
    check_name(alias, "alias")
    if alias.isdigit():
        raise InvalidReferenceError(f"invalid alias {alias!r}: it would read as a version number")
    if alias == LATEST:
        raise InvalidReferenceError(f"invalid alias {alias!r}: `name@latest` means the newest")
    return alias


def parse_reference(text: str) -> Reference:
    """Parse a reference; raises InvalidReferenceError before any path is built from it."""
    if not isinstance(text, str):
        raise InvalidReferenceError(f"a reference must be a string, got {type(text).__name__}")
    name, sep, suffix = text.partition("@")
    check_name(name)
    if not sep:
        return Reference(name)
    if suffix.isdigit():
        if suffix.startswith("0"):
            raise InvalidReferenceError(
                f"invalid reference {text!r}: versions are numbered from 1, without leading zeros"
            )
        return Reference(name, version=int(suffix))
    if suffix == LATEST:
        return Reference(name)
    try:
        return Reference(name, alias=check_alias(suffix))
    except InvalidReferenceError as exc:
        raise InvalidReferenceError(f"invalid reference {text!r}: {exc}") from None


def _as_reference(ref: str | Reference) -> Reference:
    if isinstance(ref, Reference):
        check_name(ref.name)
        if ref.version is not None and ref.alias is not None:
            raise InvalidReferenceError(f"reference {ref!r} has both a version and an alias")
        if ref.version is not None and (not isinstance(ref.version, int) or ref.version < 1):
            raise InvalidReferenceError(f"invalid version {ref.version!r} in {ref!r}")
        if ref.alias is not None:
            check_alias(ref.alias)
        return ref
    return parse_reference(ref)


@dataclass(frozen=True)
class ArtifactVersion:
    """One published, immutable version of an artifact."""

    name: str
    version: int
    kind: Kind
    base: str  # registered base model id
    path: Path  # the blob folder: a PEFT adapter folder (lora) or a HF model folder (model)
    created_at: str  # ISO 8601, UTC
    # Unique across the whole catalog and never reused: the gateway's stable lora_int_id.
    uid: int
    files: dict[str, str] = field(default_factory=dict)  # relative path -> sha256
    # base, method, recipe, dataset_sha256, metrics, parent, system_prompt, rank,
    # target_modules, ... (see DESIGN.md); free-form beyond those keys.
    card: dict[str, Any] = field(default_factory=dict)
    aliases: tuple[str, ...] = ()

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"


@dataclass(frozen=True)
class Canary:
    """`percent` of the callers of `name@alias` get `canary`, the others `stable`."""

    name: str
    alias: str
    stable: ArtifactVersion
    canary: ArtifactVersion
    percent: int  # 1..100

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.alias}"


def default_actor() -> str:
    """Who changes the store when no API key does: the OS user."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no passwd entry and no LOGNAME/USER (some containers)
        return f"uid:{os.getuid()}"


class _SettingsLike(Protocol):
    """What `Store.open` needs of `tunegate.config.Settings` (no import of the CLI here)."""

    @property
    def store_dir(self) -> Path: ...
    @property
    def models_dir(self) -> Path: ...

    store: StoreConfig


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _merge(into: dict[str, Any], updates: dict[str, Any]) -> dict[str, Any]:
    """Nested dicts merge key by key (metrics accumulate); anything else replaces."""
    out = dict(into)
    for key, value in updates.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _alias_ref(ref: str | Reference) -> Reference:
    """An alias reference; a bare `name` means `name@prod` (promotion, rollback)."""
    r = _as_reference(ref)
    if r.version is not None:
        raise InvalidReferenceError(f"{r}: needs an alias reference, e.g. {r.name}@prod")
    return r if r.alias is not None else Reference(r.name, alias="prod")


def _alias_state(tx: CatalogTx, name: str, alias: str) -> dict[str, Any] | None:
    """What an alias serves now, as the audit trail records it."""
    version = tx.alias_target(name, alias)
    if version is None:
        return None
    state: dict[str, Any] = {"version": version}
    canary = tx.canary(name, alias)
    if canary is not None:
        state.update(canary=canary.version, percent=canary.percent)
    return state


class _Catalog(Protocol):
    """A catalog backend: `SqliteCatalog`, or `PostgresCatalog` with `store.catalog_url`."""

    def read(self) -> AbstractContextManager[CatalogTx]: ...
    def write(self) -> AbstractContextManager[CatalogTx]: ...
    def generation(self) -> int: ...
    def close(self) -> None: ...


class Store:
    """The catalog (`catalog.sqlite3` under the folder, or PostgreSQL with
    `store.catalog_url`) and the folder's `blobs/<name>/<version>/`."""

    def __init__(self, root: Path, bases: BaseRegistry, config: StoreConfig | None = None) -> None:
        self.root = Path(root)
        self.bases = bases
        self.config = config or StoreConfig()
        self._db: _Catalog
        if self.config.catalog_url is not None:
            from adapters_store.postgres_catalog import PostgresCatalog

            # Opened before any folder is made: a bad URL or a down server leaves nothing.
            self._db = PostgresCatalog(self.config.catalog_url)
            self.root.mkdir(parents=True, exist_ok=True)
        else:
            self.root.mkdir(parents=True, exist_ok=True)
            self._db = SqliteCatalog(self.root / "catalog.sqlite3")
        self._blobs = BlobArea(self.root)
        self.sweep()

    @classmethod
    def open(cls, settings: _SettingsLike) -> Store:
        """The store of a tunegate home (`Settings.store_dir`, its base models and config)."""
        return cls(settings.store_dir, BaseRegistry(settings.models_dir), settings.store)

    def close(self) -> None:
        self._db.close()

    # -- publishing -----------------------------------------------------------------------
    def publish(
        self,
        path: Path,
        name: str,
        kind: Kind = "lora",
        base: str | None = None,
        card: dict[str, Any] | None = None,
        *,
        actor: str | None = None,
    ) -> ArtifactVersion:
        """Validate, copy, hash and register `path` as the next version of `name`, atomically.

        `actor` (an API key name; default the OS user) is recorded in the audit trail."""
        check_name(name)
        if kind not in ("lora", "model"):
            raise PublishRefusedError(f"kind: {kind!r}: must be 'lora' or 'model'")
        if any(b.id == name for b in self.bases.list()):
            raise PublishRefusedError(
                f"name: {name!r} is a registered base model id; requests for it would be ambiguous"
            )
        src = Path(path)
        if not src.is_dir():
            raise PublishRefusedError(f"{src}: not a folder")
        caller = self._caller_card(card)
        # Checked on the source too, so a folder full of pickles is refused before any copy.
        refuse_unsafe_files(src)

        with self._blobs.staging() as work:
            staged = work / "artifact"
            copy_tree(src, staged)
            # Validate the copy, not the source: what is checked is what gets installed.
            if kind == "lora":
                found = inspect_lora(
                    staged, self.bases, base, self.config.max_lora_rank, self._arch
                )
            else:
                found = inspect_model(staged, self.bases, base, self._arch)
            files = {
                p.relative_to(staged).as_posix(): (hash_file(p), p.stat().st_size)
                for p in sorted(staged.rglob("*"))
                if p.is_file()
            }
            created_at = _now()
            derived = {
                "base": found.base,
                "kind": kind,
                **found.derived,
                "files": {rel: sha for rel, (sha, _) in files.items()},
                "created_at": created_at,
            }
            for key in sorted(set(caller) & set(derived)):
                if caller[key] != derived[key]:
                    raise PublishRefusedError(
                        f"card: {key}: {caller[key]!r} contradicts {derived[key]!r} "
                        "found in the files"
                    )
            full_card = {**dict.fromkeys(CARD_FIELDS), "metrics": {}, **caller, **derived}

            with self._db.write() as tx:
                existing = tx.kind_of(name)
                if existing is not None and existing != kind:
                    raise PublishRefusedError(
                        f"name: {name!r} holds {existing} artifacts; cannot publish a {kind}"
                    )
                if isinstance(full_card.get("parent"), str):
                    full_card["parent"] = self._pin_parent(tx, full_card["parent"])
                version = tx.allocate_version(name, kind, created_at)
                self._blobs.install(staged, name, version)
                try:
                    tx.insert_version(name, version, found.base, created_at, full_card, files)
                    tx.audit(
                        created_at,
                        actor or default_actor(),
                        "publish",
                        f"{name}@{version}",
                        None,
                        {"version": version, "kind": kind, "base": found.base},
                    )
                except BaseException:
                    # Still under the write lock: nobody can have been given this version.
                    self._blobs.discard(name, version)
                    raise
        return self.resolve(Reference(name, version=version))

    def _caller_card(self, card: dict[str, Any] | None) -> dict[str, Any]:
        if card is None:
            return {}
        if not isinstance(card, dict):
            raise PublishRefusedError("card: must be a mapping")
        try:
            # A round trip: what is stored is exactly what later reads return.
            out: dict[str, Any] = json.loads(json.dumps(card))
        except (TypeError, ValueError) as exc:
            raise PublishRefusedError(f"card: not JSON-serialisable ({exc})") from exc
        return out

    def _pin_parent(self, tx: CatalogTx, parent: str) -> str:
        """Lineage points at a fixed version: `teacher` or `teacher@prod` becomes
        `teacher@3`. Anything else (a base model id, an outside name) is kept as given."""
        try:
            row = self._lookup(tx, parse_reference(parent))
        except StoreError:
            return parent
        return parent if row is None else f"{row.name}@{row.version}"

    def _arch(self, architecture: str) -> ArchSupport:
        return arch_support(architecture, cache_dir=self.root)

    # -- reading --------------------------------------------------------------------------
    def resolve(self, ref: str | Reference) -> ArtifactVersion:
        r = _as_reference(ref)
        with self._db.read() as tx:
            row = self._lookup(tx, r)
            if row is None:
                raise self._unknown(tx, r)
        return self._artifact(row)

    def list(self, name: str | None = None) -> list[ArtifactVersion]:
        """Every version (of `name`, or of all artifacts), oldest first."""
        if name is not None:
            check_name(name)
        with self._db.read() as tx:
            rows = tx.list_versions(name)
        return [self._artifact(r) for r in rows]

    def names(self) -> builtins.list[str]:
        """Every artifact name ever published (including ones whose versions were removed)."""
        with self._db.read() as tx:
            return tx.names()

    def generation(self) -> int:
        """A counter that grows on every publish, alias move and removal: the change feed.

        Cheap enough to poll several times a second; when it changes, re-resolve.
        """
        return self._db.generation()

    # -- aliases --------------------------------------------------------------------------
    def set_alias(
        self, ref: str | Reference, alias: str, *, actor: str | None = None
    ) -> ArtifactVersion | None:
        """Point `name@alias` at `ref`; returns the previous target (kept for rollback).
        A canary running on the alias ends: the move says which version serves."""
        check_alias(alias)
        r = _as_reference(ref)
        with self._db.write() as tx:
            target = self._lookup(tx, r)
            if target is None:
                raise self._unknown(tx, r)
            at = _now()
            state = _alias_state(tx, target.name, alias)
            if tx.canary(target.name, alias) is not None:
                tx.drop_canary(target.name, alias)
            previous = tx.set_alias(target.name, alias, target.version, at)
            tx.audit(
                at,
                actor or default_actor(),
                "alias",
                f"{target.name}@{alias}",
                state,
                {"version": target.version},
            )
            before = None if previous is None else tx.get(target.name, previous)
        return None if before is None else self._artifact(before)

    def set_canary(
        self, ref: str | Reference, alias: str, percent: int, *, actor: str | None = None
    ) -> Canary:
        """Send `percent` of `name@alias`'s callers to `ref`; the alias keeps its target."""
        check_alias(alias)
        if isinstance(percent, bool) or not isinstance(percent, int) or not 1 <= percent <= 100:
            raise ChangeRefusedError(f"canary percent must be an integer 1..100, got {percent!r}")
        r = _as_reference(ref)
        with self._db.write() as tx:
            target = self._lookup(tx, r)
            if target is None:
                raise self._unknown(tx, r)
            stable = tx.alias_target(target.name, alias)
            if stable is None:
                raise ChangeRefusedError(
                    f"{target.name}@{alias} does not exist yet: point it at a stable version "
                    "first, then add a canary"
                )
            if stable == target.version:
                raise ChangeRefusedError(
                    f"{target.name}@{target.version} is already the target of {target.name}@{alias}"
                )
            at = _now()
            state = _alias_state(tx, target.name, alias)
            tx.set_canary(target.name, alias, target.version, percent, at)
            tx.audit(
                at,
                actor or default_actor(),
                "canary",
                f"{target.name}@{alias}",
                state,
                {"version": stable, "canary": target.version, "percent": percent},
            )
        found = self.canary(Reference(target.name, alias=alias))
        assert found is not None
        return found

    def canary(self, ref: str | Reference) -> Canary | None:
        """The canary running on an alias reference, or None (also for non-alias refs)."""
        r = _as_reference(ref)
        if r.alias is None:
            return None
        with self._db.read() as tx:
            row = tx.canary(r.name, r.alias)
            stable = tx.alias_target(r.name, r.alias)
            if row is None or stable is None:
                return None
            stable_row, canary_row = tx.get(r.name, stable), tx.get(r.name, row.version)
        if stable_row is None or canary_row is None:
            return None
        return Canary(
            r.name, r.alias, self._artifact(stable_row), self._artifact(canary_row), row.percent
        )

    def promote(self, ref: str | Reference, *, actor: str | None = None) -> ArtifactVersion:
        """Make the canary of `name@alias` (`name` alone means `name@prod`) its target; a
        later rollback returns the alias to the version it had before."""
        r = _alias_ref(ref)
        assert r.alias is not None
        with self._db.write() as tx:
            row = tx.canary(r.name, r.alias)
            if row is None:
                raise UnknownReferenceError(f"{r}: no canary to promote")
            at = _now()
            state = _alias_state(tx, r.name, r.alias)
            tx.drop_canary(r.name, r.alias)
            tx.set_alias(r.name, r.alias, row.version, at)
            tx.audit(
                at, actor or default_actor(), "promote", str(r), state, {"version": row.version}
            )
        return self.resolve(Reference(r.name, version=row.version))

    def rollback_alias(self, ref: str | Reference, *, actor: str | None = None) -> ArtifactVersion:
        """Point `name@alias` (`name` alone means `name@prod`) back at the version it named
        before its last move. While a canary runs, rolling back ends the canary instead:
        every caller gets the alias's target again, the version that served before."""
        r = _alias_ref(ref)
        assert r.alias is not None
        with self._db.write() as tx:
            at = _now()
            who = actor or default_actor()
            state = _alias_state(tx, r.name, r.alias)
            if tx.canary(r.name, r.alias) is not None and state is not None:
                tx.drop_canary(r.name, r.alias)
                tx.audit(at, who, "rollback", str(r), state, {"version": state["version"]})
                row = tx.get(r.name, state["version"])
                assert row is not None
                return self._artifact(row)
            history = [e for e in tx.alias_history(r.name, r.alias) if e.version is not None]
            if not history or history[-1].previous is None:
                raise UnknownReferenceError(f"{r}: no earlier target to roll back to")
            row = tx.get(r.name, history[-1].previous)
            if row is None:
                raise UnknownReferenceError(
                    f"{r}: the earlier target {r.name}@{history[-1].previous} was removed"
                )
            tx.set_alias(r.name, r.alias, row.version, at)
            tx.audit(at, who, "rollback", str(r), state, {"version": row.version})
        return self.resolve(Reference(r.name, version=row.version))

    def alias_history(self, name: str, alias: str | None = None) -> builtins.list[AliasEvent]:
        """Every move of `name`'s aliases (or of one), oldest first."""
        check_name(name)
        if alias is not None:
            check_alias(alias)
        with self._db.read() as tx:
            return tx.alias_history(name, alias)

    # -- audit trail ----------------------------------------------------------------------
    def audit(self, name: str | None = None) -> builtins.list[AuditEntry]:
        """Every recorded change (about artifact `name` only, if given), oldest first."""
        if name is not None:
            check_name(name)
        with self._db.read() as tx:
            return tx.audit_entries(name)

    def record(
        self,
        action: str,
        subject: str,
        before: Any = None,
        after: Any = None,
        *,
        actor: str | None = None,
    ) -> None:
        """Add an entry for a change made outside the catalog (e.g. `key.create`), whose
        `before`/`after` are JSON values. Entries are never changed or removed."""
        if not action or not subject:
            raise ValueError("an audit entry needs an action and a subject")
        with self._db.write() as tx:
            tx.audit(_now(), actor or default_actor(), action, subject, before, after)

    # -- changing -------------------------------------------------------------------------
    def remove(
        self, ref: str | Reference, force: bool = False, *, actor: str | None = None
    ) -> ArtifactVersion:
        """Remove one version; refused while an alias points at it unless `force`, which
        drops those aliases too. Its version number and uid are never handed out again."""
        r = _as_reference(ref)
        with self._db.write() as tx:
            row = self._lookup(tx, r)
            if row is None:
                raise self._unknown(tx, r)
            aliases = tx.aliases_to(row.name, row.version)
            canaries = [c.alias for c in tx.canaries_to(row.name, row.version)]
            if (aliases or canaries) and not force:
                names = ", ".join(f"{row.name}@{a}" for a in aliases)
                names += ", ".join(f"the canary of {row.name}@{a}" for a in canaries)
                raise ChangeRefusedError(
                    f"{row.name}@{row.version} is the target of {names}; "
                    "move the alias first or force the removal"
                )
            at = _now()
            for alias in sorted({*aliases, *canaries}):
                # A canary without its alias, or pointing at a removed version, is void.
                if tx.canary(row.name, alias) is not None:
                    tx.drop_canary(row.name, alias)
            for alias in aliases:
                tx.drop_alias(row.name, alias, at)
            tx.delete_version(row.name, row.version)
            tx.audit(
                at,
                actor or default_actor(),
                "remove",
                f"{row.name}@{row.version}",
                {"version": row.version, "aliases": aliases, "canary_of": canaries},
                None,
            )
        # After the commit: a crash here leaves an uncatalogued folder that the next sweep
        # removes, never a catalogued version without its files.
        self._blobs.discard(row.name, row.version)
        return self._artifact(row)

    def update_card(self, ref: str | Reference, updates: dict[str, Any]) -> ArtifactVersion:
        """Merge `updates` into a version's card (e.g. evaluation metrics written later)."""
        r = _as_reference(ref)
        clean = self._caller_card(updates)
        with self._db.write() as tx:
            row = self._lookup(tx, r)
            if row is None:
                raise self._unknown(tx, r)
            for key in sorted(set(clean) & _DERIVED):
                if clean[key] != row.card.get(key):
                    raise ChangeRefusedError(
                        f"card: {key}: derived from the files of {row.name}@{row.version}; "
                        "it cannot be changed (publish a new version instead)"
                    )
            tx.set_card(row.name, row.version, _merge(row.card, clean))
        return self.resolve(Reference(row.name, version=row.version))

    def verify(self, ref: str | Reference | None = None) -> builtins.list[str]:
        """Re-hash files; one line per file whose content changed or is missing."""
        versions = self.list() if ref is None else [self.resolve(ref)]
        problems: builtins.list[str] = []
        for v in versions:
            if not v.path.is_dir():
                problems.append(f"{v.ref}: folder {v.path} is missing")
                continue
            for rel, digest in sorted(v.files.items()):
                file = v.path / rel
                if not file.is_file():
                    problems.append(f"{v.ref}: {rel}: missing")
                elif hash_file(file) != digest:
                    problems.append(f"{v.ref}: {rel}: sha256 differs from the published one")
            for file in sorted(v.path.rglob("*")):
                rel = file.relative_to(v.path).as_posix()
                if file.is_file() and rel not in v.files:
                    problems.append(f"{v.ref}: {rel}: not part of the published version")
        return problems

    def sweep(self) -> None:
        """Remove what killed publishers and removals left: staging folders and blob
        folders the catalog does not know. Safe while other processes publish."""
        self._blobs.sweep_staging()
        with self._db.write() as tx:
            # Publishers move their folder into blobs/ only while holding this lock, so a
            # folder without a row now can only be left over from a crash.
            for name, version in self._blobs.installed() - tx.versions_present():
                self._blobs.discard(name, version)
            self._blobs.prune_empty()

    # -- helpers --------------------------------------------------------------------------
    def _lookup(self, tx: CatalogTx, r: Reference) -> VersionRow | None:
        if r.version is not None:
            return tx.get(r.name, r.version)
        if r.alias is not None:
            target = tx.alias_target(r.name, r.alias)
            return None if target is None else tx.get(r.name, target)
        return tx.latest(r.name)

    def _unknown(self, tx: CatalogTx, r: Reference) -> UnknownReferenceError:
        versions = [row.version for row in tx.list_versions(r.name)]
        if not versions:
            return UnknownReferenceError(f"{r}: no artifact named {r.name!r} in the store")
        if r.alias is not None:
            return UnknownReferenceError(f"{r}: {r.name!r} has no alias {r.alias!r}")
        return UnknownReferenceError(
            f"{r}: no such version (versions of {r.name}: {', '.join(map(str, versions))})"
        )

    def _artifact(self, row: VersionRow) -> ArtifactVersion:
        kind: Kind = "model" if row.kind == "model" else "lora"
        return ArtifactVersion(
            name=row.name,
            version=row.version,
            kind=kind,
            base=row.base,
            path=self._blobs.folder(row.name, row.version),
            created_at=row.created_at,
            uid=row.uid,
            files=dict(row.files),
            card=dict(row.card),
            aliases=row.aliases,
        )
