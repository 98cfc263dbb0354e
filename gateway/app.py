"""The litestar application: engines, router, accounting and telemetry wired together.

Start-up builds one engine per base model (tens of seconds; the server does not accept
connections before it is ready), reads the store, and starts the store watcher. Shutdown
refuses new requests, lets the admitted ones finish (up to `drain_timeout_s`), stops the
engines and writes every pending accounting record.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING
from unittest.mock import patch  # the standard library's "set these keys, then restore"

from litestar import Litestar
from litestar.openapi import OpenAPIConfig

from gateway.accounting import BatchWriter, PriceBook, open_sink
from gateway.auth import Auth, auth_middleware
from gateway.capture import Capturer, CaptureStore, captures_path
from gateway.capture.router import CAPTURE_ROUTES
from gateway.chat import ChatServing, create_chat_completion
from gateway.completions import CompletionServing, create_completion
from gateway.config import EngineConfig
from gateway.engine import Engine, EngineSpec
from gateway.errors import exception_handlers
from gateway.feedback import FeedbackStore, post_feedback
from gateway.finetune import FINETUNE_ROUTES, FinetuneAPI
from gateway.model_engines import ModelEngines
from gateway.models import list_models, retrieve_model
from gateway.monitoring.watch import DriftWatch, store_profiles
from gateway.replicas.metrics import observe_remote_engines
from gateway.replicas.remote_engine import remote_engine
from gateway.routing import ModelRouter
from gateway.serving import Admission, Services
from gateway.system import health, metrics
from gateway.telemetry import Telemetry
from gateway.usage import get_usage
from gateway.watchdog import EngineWatchdog

if TYPE_CHECKING:
    from adapters_store.catalog import Store
    from tunegate.config import Settings

__all__ = ["EngineFactory", "accounting_path", "create_app"]

log = logging.getLogger("tunegate.gateway")

# The one seam for tests: how an engine is made from what it serves.
EngineFactory = Callable[[EngineSpec, EngineConfig], Engine]


def accounting_path(settings: Settings) -> Path:
    return settings.gateway.accounting.path or settings.home / "accounting.sqlite3"


def _open_store(settings: Settings) -> Store:
    from adapters_store.catalog import Store

    return Store.open(settings)


def create_app(
    settings: Settings,
    *,
    engine_factory: EngineFactory = Engine,
    store: Store | None = None,
    use_store: bool = True,
) -> Litestar:
    """The gateway for `settings`. `store` defaults to the catalog under the home."""
    from adapters_store.bases import BaseRegistry

    config = settings.gateway
    registry = BaseRegistry(settings.models_dir)
    base_ids = config.engine.bases or [settings.default_base]
    bases = {}
    for base_id in base_ids:
        base = registry.get(base_id)  # UnknownBaseError names the registered ones
        spec = EngineSpec(model_id=base.id, path=base.path, enable_lora=config.engine.enable_lora)
        bases[base.id] = (
            remote_engine(spec, config)
            if config.replicas.urls
            else engine_factory(spec, config.engine)
        )
    if store is None and use_store:
        store = _open_store(settings)
    model_engines = (
        ModelEngines(config.engine, engine_factory) if config.engine.serve_model_artifacts else None
    )
    router = ModelRouter(bases, store, poll_s=config.store_poll_s, model_engines=model_engines)
    sink = open_sink(accounting_path(settings), config.accounting.url)
    if config.accounting.url is not None:
        log.warning(
            "gateway.accounting.url: records go to PostgreSQL; feedback still reads the "
            "SQLite file %s and drift monitoring is off (neither is ported to PostgreSQL yet)",
            accounting_path(settings),
        )
    capturer = Capturer(
        config.capture,
        CaptureStore(captures_path(settings)),
        flush_interval_s=config.accounting.flush_interval_s,
    )
    services = Services(
        config=config,
        router=router,
        telemetry=Telemetry(),
        sink=sink,
        writer=BatchWriter(
            sink,
            interval_s=config.accounting.flush_interval_s,
            batch_size=config.accounting.batch_size,
        ),
        prices=PriceBook(config.accounting),
        admission=Admission(config.max_pending, config.max_pending_tokens),
        auth=Auth(config.auth, settings.home),
        capture=capturer,
    )
    watchdog = EngineWatchdog(bases, services.admission)
    drift = DriftWatch(accounting_path(settings), store_profiles(store), config.monitor)
    services.telemetry.observe_drift(lambda: drift.snapshot)
    observe_remote_engines(services.telemetry, bases)

    @asynccontextmanager
    async def plugin_environment(app: Litestar) -> AsyncIterator[None]:
        # The plugins in the engines' processes (started by `lifespan`, and later by
        # model_engines) read their settings from the environment those processes inherit;
        # litestar leaves this manager last, so it is put back after everything stopped.
        with patch.dict(os.environ, config.plugin_env()):
            yield

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        purges: asyncio.Task[None] | None = None
        try:
            for engine in bases.values():
                await engine.start()
            if store is not None:
                try:
                    await router.refresh()
                except Exception:
                    log.exception("the store could not be read; adapters are unavailable")
                router.start_watching()
            watchdog.start()
            if config.accounting.url is None:  # it reads the SQLite records only (see above)
                drift.start()
            # Expired captures go at start-up, then every capture.purge_interval_s.
            purges = asyncio.create_task(capturer.purge_forever())
            log.info("gateway ready: serving %s", ", ".join(bases))
            yield
        finally:
            if purges is not None:
                purges.cancel()
            await watchdog.close()
            drift.close()
            await _shutdown(services, bases, model_engines)

    app = Litestar(
        route_handlers=[
            create_chat_completion,
            create_completion,
            list_models,
            retrieve_model,
            get_usage,
            post_feedback,
            health,
            metrics,
            *FINETUNE_ROUTES,
            *CAPTURE_ROUTES,
        ],
        exception_handlers=exception_handlers,
        middleware=[auth_middleware()],
        request_max_body_size=config.max_body_bytes,
        lifespan=[plugin_environment, lifespan],
        openapi_config=OpenAPIConfig(
            title="tunegate gateway",
            version="1",
            description="OpenAI-compatible serving of a base model and its adapters.",
            path="/schema",
        ),
        debug=False,
    )
    app.state.services = services
    app.state.capturer = capturer
    app.state.feedback = FeedbackStore(accounting_path(settings))
    app.state.watchdog = watchdog
    app.state.drift = drift
    app.state.chat = ChatServing(services)
    app.state.completions = CompletionServing(services)
    app.state.finetune = FinetuneAPI(settings, list(bases))
    return app


async def _shutdown(
    services: Services, bases: dict[str, Engine], model_engines: ModelEngines | None
) -> None:
    drained = await services.admission.drain(services.config.drain_timeout_s)
    if not drained:
        log.warning(
            "%d request(s) still running after %.0f s; aborting them",
            services.admission.in_flight,
            services.config.drain_timeout_s,
        )
    await services.router.stop_watching()
    for engine in bases.values():
        engine.shutdown()
    if model_engines is not None:
        model_engines.shutdown()
    services.writer.close()
    services.sink.close()
    if services.capture is not None:
        services.capture.close()
    services.telemetry.shutdown()
