"""`tunegate demo`: the whole story on the default model, from nothing to a cost report.

Data → LoRA adapter (trained, evaluated, published, aliased `prod`) → the gateway serving
the base model and the adapter from one engine → a load test of the base model with a long
few-shot prompt against the adapter with a short prompt → report. Re-running reuses what is
already built: the adapter is retrained only when the recipe or its data changed.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import yaml

from tunegate.config import Settings

__all__ = ["DemoOptions", "run_demo"]

Printer = Callable[[str], None]
REPO = Path(__file__).resolve().parents[1]


class DemoOptions:
    """What the demo runs; every value has a default that fits ≤ 20 minutes on 2 CPU cores."""

    def __init__(
        self,
        task: str = "telecom-routing",
        out: Path | None = None,
        requests: int = 48,
        concurrency: int = 8,
        few_shot_k: int = 16,
        overrides: list[str] | None = None,
    ) -> None:
        self.task = task
        self.out = out
        self.requests = requests
        self.concurrency = concurrency
        self.few_shot_k = few_shot_k
        self.overrides = overrides or []


def run_demo(settings: Settings, options: DemoOptions, echo: Printer = print) -> Path:
    """Run every step; returns the report folder."""
    t0 = time.monotonic()
    out = options.out or settings.home / "demo" / options.task
    out.mkdir(parents=True, exist_ok=True)

    echo(f"[1/4] base model {settings.default_base}")
    from tuner.train import ensure_base

    base = ensure_base(settings.models_dir, settings.default_base)

    echo(f"[2/4] LoRA adapter for {options.task}")
    adapter, data = _adapter(settings, options, echo)
    echo(f"      serving {adapter} as {adapter.split('@')[0]}@prod")

    echo("[3/4] gateway (one vLLM engine: base model + adapters)")
    scenario = _write_scenario(out, options, base.id, adapter.split("@")[0] + "@prod", data)
    with _gateway(settings, out / "gateway.log", echo) as url:
        echo(f"[4/4] load test against {url}")
        from loadtests.report import headline
        from loadtests.run import run_loadtest
        from loadtests.scenario import load_scenario

        results = run_loadtest(load_scenario(scenario), url, out, progress=sys.stderr.isatty())

    echo("")
    echo(f"report: {out / 'report.html'} (also report.md, results.json)")
    for line in headline(results):
        echo("  " + line)
    echo(f"demo finished in {time.monotonic() - t0:.0f} s")
    return out


def _adapter(settings: Settings, options: DemoOptions, echo: Printer) -> tuple[str, Any]:
    """The published adapter for the task's LoRA recipe, trained only if none matches."""
    from adapters_store.catalog import Store
    from tuner.data import dataset_sha256
    from tuner.pipeline import tune
    from tuner.recipe import load_recipe
    from tuner.train import prepare_data

    recipe_path = REPO / "recipes" / options.task / "lora.yaml"
    if not recipe_path.is_file():
        raise FileNotFoundError(f"no LoRA recipe for task {options.task!r}: {recipe_path}")
    recipe = load_recipe(recipe_path, options.overrides)
    data = prepare_data(recipe, settings.home, echo=echo)
    store = Store.open(settings)
    wanted = {"recipe": recipe.to_dict(), "dataset_sha256": dataset_sha256(data.train)}
    reuse = [
        v
        for v in store.list()
        if v.name == recipe.name
        and v.card.get("recipe") == wanted["recipe"]
        and v.card.get("dataset_sha256") == wanted["dataset_sha256"]
    ]
    if reuse:
        ref = reuse[-1].ref
        echo(f"      reusing {ref}: same recipe and data")
    else:
        outcome = tune(recipe, settings.home, settings.tuner, settings.store, echo=echo)
        if outcome.reference is None:
            raise RuntimeError(f"{recipe_path}: the recipe does not publish (publish: false)")
        ref = outcome.reference
    store.set_alias(ref, "prod")
    return ref, data


def _write_scenario(out: Path, options: DemoOptions, base_id: str, adapter: str, data: Any) -> Path:
    scenario = {
        "name": f"{options.task} demo",
        "data": {"test": str(data.test), "fewshot_pool": str(data.train)},
        "requests": options.requests,
        "warmup": 4,
        "max_tokens": 16,
        "temperature": 0.0,
        "shape": {"kind": "closed", "concurrency": options.concurrency},
        "hosted_baseline": "base-few-shot",
        "strategies": [
            {
                "name": "base-few-shot",
                "model": base_id,
                "prompt": "few_shot",
                "k": options.few_shot_k,
            },
            {"name": "base-short", "model": base_id, "prompt": "short"},
            {"name": "adapter-short", "model": adapter, "prompt": "short"},
        ],
    }
    path = out / "scenario.yaml"
    path.write_text(
        f"# Written by `tunegate demo`; re-run with:\n"
        f"# tunegate loadtest {path} --url URL --out DIR\n" + yaml.safe_dump(scenario)
    )
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def _gateway(settings: Settings, log: Path, echo: Printer) -> Iterator[str]:
    """`tunegate serve` as a child process, up until the block ends (then SIGTERM)."""
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "TUNEGATE_HOME": str(settings.home)}
    with log.open("wb") as sink:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tunegate", "serve", "--host", "127.0.0.1", "--port", str(port)],
            stdout=sink,
            stderr=subprocess.STDOUT,
            env=env,
        )
        try:
            _wait_healthy(url, proc, log, timeout_s=600)
            echo(f"      gateway up at {url} (log: {log})")
            yield url
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _wait_healthy(url: str, proc: subprocess.Popen[bytes], log: Path, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"the gateway exited with code {proc.returncode}:\n{tail}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise RuntimeError(f"the gateway was not healthy after {timeout_s:.0f} s (log: {log})")
