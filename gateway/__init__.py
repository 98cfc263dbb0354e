"""OpenAI-compatible server: the base model and many adapters on one vLLM engine.

`create_app(settings)` builds the litestar app, `serve(settings)` runs it under uvicorn
(`tunegate serve`). Both are imported on first use: `tunegate.config` imports this package
for its config section, which must stay cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from gateway.config import AccountingConfig, EngineConfig, GatewayConfig, Price

if TYPE_CHECKING:
    from gateway.app import create_app
    from gateway.server import serve

__all__ = [
    "AccountingConfig",
    "EngineConfig",
    "GatewayConfig",
    "Price",
    "create_app",
    "serve",
]


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from gateway.app import create_app

        return create_app
    if name == "serve":
        from gateway.server import serve

        return serve
    raise AttributeError(f"module 'gateway' has no attribute {name!r}")
