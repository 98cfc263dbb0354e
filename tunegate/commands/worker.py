"""`tunegate worker`: run queued fine-tuning jobs (the ones `POST /v1/fine_tuning/jobs` made)."""

from __future__ import annotations

import argparse
import signal
from types import FrameType

from tunegate.config import Settings


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = sub.add_parser(
        "worker",
        help="run queued fine-tuning jobs, one at a time (tunegate serve starts one)",
        description="Validates uploaded files, trains each queued job (LoRA on its base "
        "model), writes events and checkpoints, and publishes the result to the store, "
        "where the gateway serves it as the job's fine_tuned_model. SIGTERM stops at the "
        "next training step and queues the job again to resume from its checkpoint.",
    )
    parser.add_argument("--once", action="store_true", help="handle what is waiting now, then exit")
    parser.set_defaults(func=_worker)


def _worker(args: argparse.Namespace, settings: Settings) -> int:
    import logging

    from finetune.worker import Worker

    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    worker = Worker(settings, echo=print)

    def stop(signum: int, frame: FrameType | None) -> None:
        worker.stop_requested.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    if args.once:
        worker.recover()
        while worker.run_once() and not worker.stop_requested.is_set():
            pass
    else:
        worker.serve_forever()
    return 0
