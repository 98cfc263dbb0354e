"""What the benchmark scripts share: a throw-away tunegate home, random adapters published
into it, and servers started as process groups that are always cleaned up.

The benchmarks talk to the servers they measure over HTTP only; they import
`adapters_store` (the catalog, a library) to prepare homes, never the gateway.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import httpx

__all__ = [
    "DEFAULT_BASE",
    "MANY_PROMPTS",
    "PROMPTS",
    "cpu_seconds",
    "finish",
    "free_port",
    "gateway_command",
    "gateway_env",
    "prepare_home",
    "publish_random_adapters",
    "serving",
]

DEFAULT_BASE = "smollm2-135m-instruct"
START_TIMEOUT_S = 900.0

# Short chat prompts the benchmarks send (a few dozen tokens with the chat template).
_SUBJECTS = (
    "how tides work",
    "why the sky is blue",
    "how a bicycle stays upright",
    "what a router does in a home network",
    "how bread rises",
    "why leaves change colour in autumn",
    "how a refrigerator keeps food cold",
    "what causes thunder",
)
_MORE_SUBJECTS = (
    "how a compass finds north",
    "why ice floats on water",
    "how vaccines train the immune system",
    "what makes a rainbow",
    "how a solar panel makes electricity",
    "why cats purr",
    "how an airplane wing lifts",
    "what a black hole is",
    "how coffee is decaffeinated",
    "why the moon has phases",
    "how a zipper works",
    "what makes soap clean",
    "how bees make honey",
    "why onions make you cry",
    "how a microwave oven heats food",
    "what causes earthquakes",
    "how glass is made",
    "why we dream",
    "how a lock and key work",
    "what makes popcorn pop",
    "how a battery stores energy",
    "why the ocean is salty",
    "how a camera takes a photo",
    "what a volcano is",
)
_ASKS = (
    "Explain {} to a curious child, in detail.",
    "Write a short essay about {}.",
    "Describe, step by step, {}.",
    "Give a thorough explanation of {} with an example.",
)
PROMPTS = [a.format(s) for s in _SUBJECTS for a in _ASKS]
# 128 distinct prompts (PROMPTS first): a workload of up to 128 requests repeats none, so no
# mix gains from the prefix cache more than another.
MANY_PROMPTS = PROMPTS + [a.format(s) for s in _MORE_SUBJECTS for a in _ASKS]


def finish(out: Path, result: dict[str, object], table: str) -> int:
    """Write a benchmark's JSON (with the machine's size and the load average at the end:
    figures from a shared machine mean little without it), print its table; exit code 0."""
    result = {**result, "cpu_count": os.cpu_count(), "load_avg_after": os.getloadavg()}
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(table)
    print(f"wrote {out}")
    return 0


def cpu_seconds(pid: int, *, descendants: bool = False) -> float:
    """CPU seconds (user + system) process `pid` has used so far; with `descendants`, those
    of its live child processes too, recursively (a server's engine core and workers). A
    child that exits in between is left out, so take differences over the server's life."""
    import psutil  # a dependency of vLLM

    root = psutil.Process(pid)
    total = 0.0
    for proc in (root, *(root.children(recursive=True) if descendants else ())):
        with contextlib.suppress(psutil.NoSuchProcess):
            times = proc.cpu_times()
            total += times.user + times.system
    return total


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def prepare_home(home: Path) -> Path:
    """A fresh home whose models/ links to the user's built base models; returns models/."""
    from adapters_store.bases import MANIFEST
    from adapters_store.config import default_home

    models = home / "models"
    models.mkdir(parents=True)
    for child in (default_home() / "models").iterdir():
        if (child / MANIFEST).is_file():  # built base models only (not their lock files)
            (models / child.name).symlink_to(child.resolve(), target_is_directory=True)
    return models


def publish_random_adapters(
    home: Path, base_id: str, names: list[str], rank: int, first_seed: int = 0
) -> tuple[Path, dict[str, Path]]:
    """Publish one random rank-`rank` adapter per name into `home`'s store; returns the base
    model's folder and each adapter's published folder."""
    from adapters_store import BaseRegistry, Store
    from adapters_store.testing import write_lora

    registry = BaseRegistry(home / "models")
    base = registry.get(base_id)
    store = Store(home / "store", registry)
    adapters: dict[str, Path] = {}
    try:
        for i, name in enumerate(names):
            # Random, non-zero lora_B: the adapter really changes every layer's output.
            folder = write_lora(home / "src" / name, base, r=rank, seed=first_seed + i, scale=0.01)
            adapters[name] = store.publish(folder, name, card={"method": "lora"}).path
    finally:
        store.close()
    return base.path, adapters


def gateway_command(port: int) -> list[str]:
    return [sys.executable, "-m", "tunegate", "serve", "--port", str(port)]


def gateway_env(home: Path, base_id: str, engine: Mapping[str, object]) -> dict[str, str]:
    """`tunegate serve`'s environment: this home, this base, these engine settings."""
    env = {**os.environ, "TUNEGATE_HOME": str(home), "TUNEGATE_DEFAULT_BASE": base_id}
    env.pop("TUNEGATE_CONFIG", None)
    for key, value in engine.items():
        text = str(value).lower() if isinstance(value, bool) else str(value)
        env[f"TUNEGATE_GATEWAY_ENGINE_{key.upper()}"] = text
    return env


@contextlib.contextmanager
def serving(
    name: str,
    cmd: list[str],
    env: dict[str, str],
    port: int,
    log: Path,
    health: str = "/health",
) -> Iterator[tuple[str, int]]:
    """Start a server in its own process group, wait for `health` to answer 200, yield
    (url, pid); on exit SIGTERM, then SIGKILL to the whole group (its engine processes too)."""
    with log.open("ab") as out:
        out.write(f"\n===== {name}: {' '.join(cmd)}\n".encode())
        out.flush()
        proc = subprocess.Popen(
            cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited during start-up; see {log}")
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(url + health, timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name} not ready after {START_TIMEOUT_S} s; see {log}")
            time.sleep(1.0)
        yield url, proc.pid
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=120)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
