"""The `model` field of a request -> the engine, adapter and prompt defaults that serve it.

A base model id routes to its engine as is. Anything else is a store reference (`name`,
`name@3`, `name@prod`): a `lora` artifact becomes an `Adapter` on its base's engine whose vLLM
`lora_int_id` is the version's catalog-wide uid, so vLLM loads each version once, keeps it
while it is used and evicts it LRU; a `model` artifact gets its own engine (see
`ModelEngines`). Resolutions are cached per store generation: a background task polls the
store's change counter and a publish or alias move invalidates the cache, so the next request
after it is routed to the new version while in-flight requests keep the adapter they started
with.

Canaries: while the store runs a canary on an alias (`tunegate store alias NAME@V prod
--canary 30`), a request for `NAME@prod` goes to the canary version for 30% of callers. Who is
a caller is the `sticky` id (the API key and the request's `user` field, see `sticky_id`):
the same id always lands in the same bucket, so a user sees one version for the whole canary.
The answering version is the target's `artifact`, which names the response header and the
accounting record, so each version's figures stay apart.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from adapters_store.profile import TrainingProfile, card_labels
from finetune.names import FT_PREFIX, store_name_for
from gateway.engine import Adapter, Engine
from gateway.errors import BadRequestError, ModelNotFoundError

if TYPE_CHECKING:
    from adapters_store.catalog import ArtifactVersion, Store
    from gateway.model_engines import ModelEngines

__all__ = ["ModelRouter", "ServedModel", "Target", "canary_bucket", "sticky_id"]

log = logging.getLogger("tunegate.gateway")

Kind = Literal["base", "lora", "model"]


@dataclass(frozen=True)
class Target:
    """Where one request goes."""

    engine: Engine
    artifact: str  # the resolved artifact, `name@version`, or the base model id
    kind: Kind
    adapter: Adapter | None = None
    system_prompt: str | None = None
    # What monitoring records per request (see adapters_store.profile): the answer's label
    # when the card has a label set, the prompt's OOV share when it has a training profile.
    # Left out of == and hash: a profile holds arrays, and the route is the same without it.
    labels: tuple[str, ...] = field(default=(), compare=False)
    profile: TrainingProfile | None = field(default=None, compare=False)


@dataclass(frozen=True)
class ServedModel:
    """One id `GET /v1/models` lists."""

    id: str
    kind: Kind
    parent: str | None  # the base model an adapter runs on
    root: str  # what the id resolves to now (`name@version` or the base id)
    created: int
    max_model_len: int | None = None


@dataclass(frozen=True)
class _Route:
    """What one `model` resolves to: a target, and a canary taking `percent` of callers."""

    stable: Target
    canary: Target | None = None
    percent: int = 0

    @property
    def cacheable(self) -> bool:
        # `model` artifacts' engines come and go; only stable routes are cached.
        return all(t is None or t.kind != "model" for t in (self.stable, self.canary))

    def pick(self, model: str, sticky: str | None) -> Target:
        if self.canary is None:
            return self.stable
        # No id to stick to: each request is its own caller (an unbiased split still).
        bucket = canary_bucket(model, sticky) if sticky else secrets.randbelow(100)
        return self.canary if bucket < self.percent else self.stable


def canary_bucket(model: str, sticky: str) -> int:
    """0..99, the same for the same caller and alias; salted by the alias so that one
    caller is not in the canary group of every artifact at once."""
    digest = hashlib.sha256(f"{model}\n{sticky}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % 100


def sticky_id(key_id: str | None, user: str | None) -> str | None:
    """Whom a canary sticks to: the request's `user` (within its key), else the key."""
    if user:
        return f"{key_id or ''}/{user}"
    return key_id


@dataclass
class _Cache:
    generation: int | None = None
    targets: dict[str, _Route] = field(default_factory=dict)
    listing: list[ServedModel] | None = None


def _created(iso: str) -> int:
    from datetime import datetime

    try:
        return int(datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp())
    except ValueError:
        return 0


def _system_prompt(card: Mapping[str, Any]) -> str | None:
    value = card.get("system_prompt")
    return value if isinstance(value, str) and value.strip() else None


class ModelRouter:
    """Resolves `model` to a `Target`; watches the store for changes."""

    def __init__(
        self,
        bases: Mapping[str, Engine],
        store: Store | None,
        *,
        poll_s: float = 0.2,
        model_engines: ModelEngines | None = None,
    ) -> None:
        self.bases = dict(bases)
        self.store = store
        self.poll_s = poll_s
        self.model_engines = model_engines
        self._cache = _Cache()
        self._started = time.time()
        self._watcher: asyncio.Task[None] | None = None

    # ------------------------------------------------------------------ the change feed

    @property
    def generation(self) -> int | None:
        """The store generation the router currently routes by."""
        return self._cache.generation

    async def refresh(self) -> bool:
        """Read the store's change counter; drop cached routes when it moved."""
        if self.store is None:
            return False
        generation = await asyncio.to_thread(self.store.generation)
        if generation == self._cache.generation:
            return False
        # A new cache object: a resolve that started before the change stores its
        # (possibly stale) answer into the old one, which nobody reads any more.
        self._cache = _Cache(generation=generation)
        log.info("store generation %s: routes refreshed", generation)
        return True

    async def watch(self) -> None:
        """Poll the store until cancelled; errors are retried, never fatal, and logged when
        they start and stop (not five times a second)."""
        failing: str | None = None
        while True:
            try:
                await self.refresh()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if repr(exc) != failing:
                    log.exception("reading the store's generation failed; retrying")
                    failing = repr(exc)
            else:
                if failing is not None:
                    log.info("reading the store works again")
                    failing = None
            await asyncio.sleep(self.poll_s)

    def start_watching(self) -> None:
        if self.store is not None and self._watcher is None:
            self._watcher = asyncio.create_task(self.watch(), name="store-watcher")

    async def stop_watching(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
            self._watcher = None

    # ------------------------------------------------------------------ resolving

    async def resolve(self, model: str, sticky: str | None = None) -> Target:
        """The target for `model`; `sticky` (see `sticky_id`) decides canary membership."""
        cache = self._cache
        route = cache.targets.get(model)
        if route is None:
            route = await self._route_uncached(model)
            if route.cacheable:
                cache.targets[model] = route
        return route.pick(model, sticky)

    async def _route_uncached(self, model: str) -> _Route:
        stable = await self._resolve_uncached(model)
        if stable.kind == "base" or "@" not in model or model.startswith(FT_PREFIX):
            return _Route(stable)
        assert self.store is not None
        found = await asyncio.to_thread(self.store.canary, model)
        # Read after the stable target: if the alias moved in between, the next
        # generation change re-reads both; never pair a canary with another stable.
        if found is None or found.stable.ref != stable.artifact:
            return _Route(stable)
        canary = await self._target_for(model, found.canary)
        return _Route(stable, canary, found.percent)

    async def _resolve_uncached(self, model: str) -> Target:
        engine = self.bases.get(model)
        if engine is not None:
            return Target(engine=engine, artifact=model, kind="base")
        if self.store is None:
            raise ModelNotFoundError(self.not_found_message(model))

        from adapters_store.catalog import InvalidReferenceError, UnknownReferenceError

        # A fine-tuning job's `ft:<base>:<org>:<suffix>:<id>` is published as `ft-<id>`,
        # whose card names the full `ft:` name (see finetune.names).
        ref = model
        if model.startswith(FT_PREFIX):
            ref = store_name_for(model) or ""
            if not ref:
                raise ModelNotFoundError(self.not_found_message(model))
        try:
            version = await asyncio.to_thread(self.store.resolve, ref)
        except InvalidReferenceError as exc:
            raise BadRequestError(
                f"model {model!r} is neither a served base model nor a valid store "
                f"reference (name, name@3 or name@alias): {exc}",
                param="model",
                code="invalid_model",
            ) from None
        except UnknownReferenceError:
            raise ModelNotFoundError(self.not_found_message(model)) from None
        if ref != model and version.card.get("fine_tuned_model") != model:
            raise ModelNotFoundError(self.not_found_message(model))
        return await self._target_for(model, version)

    async def _target_for(self, model: str, version: ArtifactVersion) -> Target:
        system_prompt = _system_prompt(version.card)
        labels = card_labels(version.card)
        profile = TrainingProfile.from_card(version.card)
        if version.kind == "lora":
            engine = self.bases.get(version.base)
            if engine is None:
                raise ModelNotFoundError(
                    f"model {model!r} is an adapter of base model {version.base!r}, which "
                    f"this gateway does not serve (it serves {', '.join(self.bases)})"
                )
            if not engine.spec.enable_lora:
                raise ModelNotFoundError(
                    f"model {model!r} is a LoRA adapter and LoRA serving is disabled "
                    "(gateway.engine.enable_lora)"
                )
            return Target(
                engine=engine,
                artifact=version.ref,
                kind="lora",
                # Name and uid are unique per version, so a new version is a new adapter
                # to vLLM, never a stale cache hit.
                adapter=Adapter(name=version.ref, uid=version.uid, path=version.path),
                system_prompt=system_prompt,
                labels=labels,
                profile=profile,
            )
        if self.model_engines is None:
            raise ModelNotFoundError(
                f"model {model!r} is a full model artifact; serving those is disabled "
                "(gateway.engine.serve_model_artifacts)"
            )
        engine = await self.model_engines.get(version)
        return Target(
            engine=engine,
            artifact=version.ref,
            kind="model",
            system_prompt=system_prompt,
            labels=labels,
            profile=profile,
        )

    def not_found_message(self, model: str) -> str:
        return (
            f"The model {model!r} does not exist or is not served here; "
            "GET /v1/models lists what is."
        )

    # ------------------------------------------------------------------ listing

    async def models(self) -> list[ServedModel]:
        cache = self._cache
        if cache.listing is None:
            cache.listing = await self._list()
        return cache.listing

    async def _list(self) -> list[ServedModel]:
        out = [
            ServedModel(
                id=base_id,
                kind="base",
                parent=None,
                root=base_id,
                created=int(self._started),
                max_model_len=engine.max_model_len,
            )
            for base_id, engine in self.bases.items()
        ]
        if self.store is None:
            return out
        versions = await asyncio.to_thread(self.store.list)
        latest: dict[str, ArtifactVersion] = {}
        for v in versions:  # oldest first, so the last one per name is the latest
            if not self._servable(v):
                continue
            latest[v.name] = v
            out.append(self._card(v.ref, v))
            out.extend(self._card(f"{v.name}@{alias}", v) for alias in v.aliases)
        out.extend(self._card(name, v) for name, v in latest.items())
        out.extend(
            self._card(v.card["fine_tuned_model"], v)
            for v in latest.values()
            if isinstance(v.card.get("fine_tuned_model"), str)
        )
        return out

    def _servable(self, v: ArtifactVersion) -> bool:
        if v.kind == "lora":
            engine = self.bases.get(v.base)
            return engine is not None and engine.spec.enable_lora
        return self.model_engines is not None

    def _card(self, model_id: str, v: ArtifactVersion) -> ServedModel:
        engine = self.bases.get(v.base)
        return ServedModel(
            id=model_id,
            kind=v.kind,
            # An adapter runs on its base; a full model artifact was derived from it.
            parent=v.base,
            root=v.ref,
            created=_created(v.created_at),
            max_model_len=engine.max_model_len if engine is not None else None,
        )
