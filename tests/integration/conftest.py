"""A real gateway for the integration tests: `tunegate serve` as a subprocess, started ONCE
per session on the tiny model (a real vLLM engine, ~40-60 s to start on the CPU), with its
own tunegate home and store holding adapters made by PEFT.

Tests drive it through its public door (the `openai` client, httpx) and may publish into
its store while it runs. At the end it gets SIGTERM and must drain, flush and exit 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from adapters_store.bases import MANIFEST, BaseModel

TINY = "tiny-random-llama"
# Adapters published before the gateway starts (name -> card extras).
ADAPTERS: dict[str, dict[str, Any]] = {
    "alpha": {"method": "lora"},
    "beta": {"method": "lora", "system_prompt": "You are Beta. Answer in one word."},
}
START_TIMEOUT_S = 600.0
# (destination folder, seed) -> a PEFT adapter folder for the tiny base.
AdapterMaker = Callable[..., Path]


def make_peft_adapter(
    base: BaseModel, dest: Path, seed: int, r: int = 8, scale: float = 0.5
) -> Path:
    """A PEFT LoRA on every linear layer of `base`, with random non-zero lora_B (std `scale`)
    so that it really changes the output (PEFT initialises B to zero, which would change
    nothing)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base.path, dtype=torch.float32)
    config = LoraConfig(
        task_type="CAUSAL_LM",
        r=r,
        lora_alpha=2 * r,
        target_modules=[
            "q_proj",
            "k_proj",
            "v_proj",
            "o_proj",
            "gate_proj",
            "up_proj",
            "down_proj",
        ],
    )
    peft_model = get_peft_model(model, config)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(0.0, scale)
    peft_model.save_pretrained(dest)
    return dest


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class EndedBeforeSeen(Exception):
    """The requests a test wanted inside the engine were answered in full between two polls
    (a fast machine, or a slow poll): the test may try again; never a failure by itself."""


@dataclass
class RunningGateway:
    url: str  # http://127.0.0.1:PORT
    home: Path
    process: subprocess.Popen[bytes]
    log: Path
    base: BaseModel
    # What the process must exit with once stopped (a test that kills its engine expects
    # a non-zero status).
    expected_exit: int = 0

    @property
    def v1(self) -> str:
        return self.url + "/v1"

    def store(self) -> Any:
        """The gateway's store, opened from this process (publishing is safe concurrently)."""
        from adapters_store import BaseRegistry, Store

        return Store(self.home / "store", BaseRegistry(self.home / "models"))

    def health(self) -> dict[str, Any]:
        return httpx.get(self.url + "/health", timeout=10).json()  # type: ignore[no-any-return]

    def wait_for_store_generation(self, generation: int, timeout_s: float = 30.0) -> None:
        """Until the gateway's watcher has read `generation` (not a latency assertion)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            seen = self.health()["store_generation"]
            if seen is not None and seen >= generation:
                return
            time.sleep(0.05)
        raise AssertionError(f"the gateway never saw store generation {generation}")

    def running(self) -> int:
        return int(self.health()["engines"][TINY]["running"])

    async def until_in_engine(
        self,
        tasks: Sequence[asyncio.Task[Any]],
        at_least: int,
        timeout_s: float = 120.0,
    ) -> None:
        """Until the engine holds `at_least` requests of `tasks` (started by the caller).

        Polled with an async client on the caller's loop: a blocking call would starve the
        tasks that are to send the requests. A task that failed (an exception, or a
        response other than 200) fails at once with what it got and the gateway's log; if
        so many tasks ended well that `at_least` can no longer be in the engine together,
        `EndedBeforeSeen` lets the caller try again; a timeout says what /health showed."""
        started = time.monotonic()
        polls: list[tuple[float, int, float]] = []  # (at, running, /health took)
        async with httpx.AsyncClient(timeout=30) as client:
            while True:
                asked = time.monotonic()
                running = int(
                    (await client.get(self.url + "/health")).json()["engines"][TINY]["running"]
                )
                polls.append(
                    (round(asked - started, 2), running, round(time.monotonic() - asked, 3))
                )
                if running >= at_least:
                    return
                ended = [t for t in tasks if t.done()]
                for task in ended:
                    outcome = task.exception() or task.result()
                    if isinstance(outcome, BaseException) or (
                        isinstance(outcome, httpx.Response) and outcome.status_code != 200
                    ):
                        text = outcome.text[:500] if isinstance(outcome, httpx.Response) else ""
                        raise AssertionError(
                            f"a request failed before {at_least} were in the engine: "
                            f"{outcome!r} {text}\npolls (s, running, /health s): {polls[-20:]}"
                            f"\n{self.log_tail()}"
                        )
                if len(tasks) - len(ended) < at_least:
                    raise EndedBeforeSeen(
                        f"{len(ended)} of {len(tasks)} requests ended after "
                        f"{time.monotonic() - started:.2f} s before {at_least} were seen "
                        f"together in the engine; polls: {polls[-5:]}"
                    )
                if time.monotonic() - started > timeout_s:
                    raise AssertionError(
                        f"{at_least} requests were not in the engine after {timeout_s:.0f} s "
                        f"({len(ended)} of {len(tasks)} ended); polls (s, running, /health s): "
                        f"{polls[-20:]}\n{self.log_tail()}"
                    )
                await asyncio.sleep(0.01)

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


@pytest.fixture(scope="session")
def make_adapter(tiny_model: BaseModel) -> AdapterMaker:
    def make(dest: Path, seed: int, r: int = 8) -> Path:
        return make_peft_adapter(tiny_model, dest, seed, r)

    return make


def link_models(home: Path, shared_models_dir: Path) -> Path:
    """Make `home` a tunegate home whose models/ links to the shared, built base models."""
    (home / "models").mkdir(parents=True)
    for child in shared_models_dir.iterdir():
        if (child / MANIFEST).is_file():
            (home / "models" / child.name).symlink_to(child, target_is_directory=True)
    return home


def gateway_home(home: Path, shared_models_dir: Path, tiny_model: BaseModel) -> Path:
    """A fresh tunegate home with the shared base models and ADAPTERS (made by PEFT)."""
    link_models(home, shared_models_dir)

    from adapters_store import BaseRegistry, Store

    store = Store(home / "store", BaseRegistry(home / "models"))
    work = home / "adapter-sources"
    for seed, (name, card) in enumerate(ADAPTERS.items(), start=1):
        store.publish(make_peft_adapter(tiny_model, work / name, seed), name, card=card)
    store.close()
    return home


@contextlib.contextmanager
def launch_gateway(
    home: Path, tiny_model: BaseModel, env: dict[str, str] | None = None
) -> Iterator[RunningGateway]:
    """`tunegate serve` on the tiny model over `home`, with `env` on top of the defaults;
    on exit SIGTERM, which must drain, flush and exit 0 (unless the test ended it)."""
    port = _free_port()
    full_env = {
        **os.environ,
        "TUNEGATE_HOME": str(home),
        "TUNEGATE_DEFAULT_BASE": TINY,
        "TUNEGATE_GATEWAY_ENGINE_MAX_MODEL_LEN": "512",
        "TUNEGATE_GATEWAY_ENGINE_MAX_NUM_SEQS": "16",
        "TUNEGATE_GATEWAY_ENGINE_KV_CACHE_GIB": "1",
        "TUNEGATE_GATEWAY_ENGINE_MAX_LORAS": "2",
        "TUNEGATE_GATEWAY_ENGINE_MAX_CPU_LORAS": "4",
        "TUNEGATE_GATEWAY_ENGINE_MAX_LORA_RANK": "16",
        "TUNEGATE_GATEWAY_DRAIN_TIMEOUT_S": "20",
        **(env or {}),
    }
    full_env.pop("TUNEGATE_CONFIG", None)
    log = home / "gateway.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "tunegate", "serve", "--port", str(port)],
            env=full_env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its engine processes can be cleaned up as a group
        )
    running = RunningGateway(f"http://127.0.0.1:{port}", home, process, log, tiny_model)
    try:
        _wait_ready(running)
        yield running
    finally:
        _stop(running)


@pytest.fixture(scope="session")
def gateway(
    tmp_path_factory: pytest.TempPathFactory, shared_models_dir: Path, tiny_model: BaseModel
) -> Iterator[RunningGateway]:
    home = gateway_home(tmp_path_factory.mktemp("gateway-home"), shared_models_dir, tiny_model)
    with launch_gateway(home, tiny_model) as running:
        yield running


def _wait_ready(gw: RunningGateway) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if gw.process.poll() is not None:
            raise RuntimeError(f"the gateway exited during start-up:\n{gw.log_tail()}")
        try:
            if httpx.get(gw.url + "/health", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(1.0)
    raise RuntimeError(f"the gateway was not ready after {START_TIMEOUT_S} s:\n{gw.log_tail()}")


def _stop(gw: RunningGateway) -> None:
    """SIGTERM: the gateway must drain, flush accounting and exit 0 on its own."""
    if gw.process.poll() is None:
        gw.process.send_signal(signal.SIGTERM)
        try:
            gw.process.wait(timeout=120)
        except subprocess.TimeoutExpired:
            os.killpg(gw.process.pid, signal.SIGKILL)
            gw.process.wait()
            raise AssertionError(f"the gateway ignored SIGTERM:\n{gw.log_tail()}") from None
    # Anything its engine left behind goes with its process group.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(gw.process.pid, signal.SIGKILL)
    if gw.process.returncode != gw.expected_exit:
        raise AssertionError(
            f"the gateway exited with {gw.process.returncode} after SIGTERM:\n{gw.log_tail()}"
        )
