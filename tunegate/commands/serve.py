"""`tunegate serve`: the OpenAI-compatible gateway over the base model and the store."""

from __future__ import annotations

import argparse

from tunegate.config import Settings


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = sub.add_parser(
        "serve",
        help="serve the base model and every published adapter over the OpenAI API",
        description="Start the gateway: one vLLM engine per base model, adapters from the "
        "store hot-swapped per request, accounting in $TUNEGATE_HOME/accounting.sqlite3. "
        "SIGTERM drains in-flight requests and flushes accounting.",
    )
    parser.add_argument("--host", help="address to bind (default: gateway.host, 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port (default: gateway.port, 8000)")
    # Accepted after the command too (`tunegate serve --config FILE`); same as the global one.
    parser.add_argument(
        "--config", dest="serve_config", metavar="FILE", help="config file", default=None
    )
    parser.set_defaults(func=_serve)


def _serve(args: argparse.Namespace, settings: Settings) -> int:
    from gateway.server import serve

    if args.serve_config:
        from tunegate.config import load_settings

        settings = load_settings(args.serve_config)
    if args.port is not None and not 0 < args.port < 65536:
        raise ValueError(f"--port must be in 1..65535, got {args.port}")
    from finetune.supervisor import supervised_worker

    # Fine-tuning jobs run in `tunegate worker`, a child process (finetune.serve_worker).
    config_file = args.serve_config or args.config
    with supervised_worker(settings.finetune.serve_worker, config_file):
        serve(settings, host=args.host, port=args.port)
    return 0
