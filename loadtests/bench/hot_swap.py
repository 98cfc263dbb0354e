"""Hot swap: time from `tunegate store publish` returning to the first token of a request
that names the new adapter, while other requests keep running.

    .venv/bin/python loadtests/bench/hot_swap.py [--swaps 20] [--background 4] [--out FILE]

Starts `tunegate serve` on the default model in a throw-away home with one adapter
(`steady`) published, and keeps `--background` streamed requests in flight on it and on the
base model the whole time (a closed loop). Then, `--swaps` times: `tunegate store publish`
(the CLI, as a user runs it) a new random adapter under a new name; as soon as the command
returns, a streamed request naming it is sent, and sent again after 404 (the gateway has not
seen the catalog change yet) until its first token arrives. Reports the median, p90 and
maximum of publish-returned -> first token, how often the name was still unknown, and every
failed background request (the goal: none). Talks to the gateway over HTTP only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from loadtests.bench.common import (
    DEFAULT_BASE,
    free_port,
    gateway_command,
    gateway_env,
    prepare_home,
    publish_random_adapters,
    serving,
)

__all__ = ["main"]

ADAPTER_RANK = 16
PROMPT = [{"role": "user", "content": "Write a short story about a lighthouse keeper."}]
ENGINE = {"max_loras": 4, "max_cpu_loras": 32, "max_lora_rank": ADAPTER_RANK}


@dataclass(frozen=True)
class Swap:
    name: str
    publish_s: float  # how long the CLI took (not part of the figure)
    first_token_s: float  # publish returned -> first token of a request naming it
    not_found: int  # requests answered 404 before the gateway knew the name


async def _first_token(client: httpx.AsyncClient, model: str) -> tuple[bool, int]:
    """(served, status) of one streamed request; True once its first content chunk came."""
    body = {"model": model, "messages": PROMPT, "max_tokens": 2, "stream": True}
    async with client.stream("POST", "/v1/chat/completions", json=body) as response:
        if response.status_code != 200:
            await response.aread()
            return False, response.status_code
        async for line in response.aiter_lines():
            if line.startswith("data: {") and '"content":' in line:
                chunk = json.loads(line[6:])
                if chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
                    return True, 200
    raise RuntimeError(f"{model} answered without any content")


async def _background(
    client: httpx.AsyncClient, model: str, stop: asyncio.Event, failures: list[str]
) -> int:
    """Closed loop of streamed requests on `model` until `stop`; returns how many ran."""
    done = 0
    while not stop.is_set():
        body = {"model": model, "messages": PROMPT, "max_tokens": 24, "stream": True}
        try:
            async with client.stream("POST", "/v1/chat/completions", json=body) as response:
                text = await response.aread()
                if response.status_code != 200 or b"data: [DONE]" not in text:
                    failures.append(f"{model}: {response.status_code} {text[-200:]!r}")
                elif b'"error"' in text:
                    failures.append(f"{model}: error event in the stream")
        except httpx.HTTPError as exc:
            failures.append(f"{model}: {type(exc).__name__}: {exc}")
        done += 1
    return done


async def _publish(home: Path, folder: Path, name: str) -> float:
    env = {**os.environ, "TUNEGATE_HOME": str(home)}
    env.pop("TUNEGATE_CONFIG", None)
    started = time.perf_counter()
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tunegate",
        "store",
        "publish",
        str(folder),
        "--name",
        name,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _out, err = await proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"publish {name} failed: {err.decode().strip()}")
    return time.perf_counter() - started


async def _run(url: str, home: Path, folders: dict[str, Path], background: int) -> dict[str, Any]:
    limits = httpx.Limits(max_connections=background + 8)
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as client:
        served, _ = await _first_token(client, "steady")  # loads it before the clock runs
        assert served
        stop, failures = asyncio.Event(), list[str]()
        loops = [
            asyncio.create_task(
                _background(client, "steady" if i % 2 == 0 else DEFAULT_BASE, stop, failures)
            )
            for i in range(background)
        ]
        swaps = []
        try:
            for name, folder in folders.items():
                publish_s = await _publish(home, folder, name)
                t0 = time.perf_counter()
                not_found = 0
                while True:
                    served, status = await _first_token(client, name)
                    if served:
                        break
                    if status != 404:
                        raise RuntimeError(f"{name}: HTTP {status}")
                    not_found += 1
                    await asyncio.sleep(0.01)
                swap = Swap(name, publish_s, time.perf_counter() - t0, not_found)
                print(
                    f"  {name}: first token {1000 * swap.first_token_s:7.1f} ms after publish "
                    f"returned ({not_found} x 404; publish took {publish_s:.1f} s)",
                    flush=True,
                )
                swaps.append(swap)
        finally:
            stop.set()
            background_done = sum(await asyncio.gather(*loops))
    return {"swaps": swaps, "background_requests": background_done, "failures": failures}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", default=DEFAULT_BASE, help="registered base model id")
    parser.add_argument("--swaps", type=int, default=20, help="adapters published one by one")
    parser.add_argument("--background", type=int, default=4, help="requests kept in flight")
    parser.add_argument("--out", type=Path, default=Path("hot_swap.json"))
    args = parser.parse_args(argv)

    from adapters_store import BaseRegistry
    from adapters_store.testing import write_lora

    with tempfile.TemporaryDirectory(prefix="tunegate-bench-") as tmp:
        home = Path(tmp) / "home"
        prepare_home(home)
        publish_random_adapters(home, args.base, ["steady"], ADAPTER_RANK)
        base = BaseRegistry(home / "models").get(args.base)
        # Written before the server starts: only the publish itself is in the figure.
        folders = {
            f"swap-{i}": write_lora(
                Path(tmp) / f"swap-{i}", base, r=ADAPTER_RANK, seed=100 + i, scale=0.01
            )
            for i in range(args.swaps)
        }
        port = free_port()
        log = Path(tmp) / "server.log"
        env = gateway_env(home, args.base, ENGINE)
        load_before = os.getloadavg()
        try:
            with serving("gateway", gateway_command(port), env, port, log) as (url, _pid):
                outcome = asyncio.run(_run(url, home, folders, args.background))
        finally:
            args.out.with_suffix(".log").write_text(log.read_text(errors="replace"))

    times = [s.first_token_s * 1000 for s in outcome["swaps"]]
    times_sorted = sorted(times)
    summary = {
        "first_token_ms_median": statistics.median(times),
        "first_token_ms_p90": times_sorted[max(0, int(0.9 * len(times)) - 1)],
        "first_token_ms_max": max(times),
        "swaps_with_404": sum(1 for s in outcome["swaps"] if s.not_found),
        "background_requests": outcome["background_requests"],
        "background_failures": len(outcome["failures"]),
    }
    result = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "base": args.base,
        "swaps": [asdict(s) for s in outcome["swaps"]],
        "background_in_flight": args.background,
        "engine": ENGINE,
        "cpu_count": os.cpu_count(),
        "load_avg_before": load_before,
        "load_avg_after": os.getloadavg(),
        "summary": summary,
        "failures": outcome["failures"],
    }
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(
        "| swaps | publish -> first token ms (median / p90 / max) | swaps that saw 404 "
        "| background requests (failed) |\n|---|---|---|---|\n"
        f"| {len(times)} | {summary['first_token_ms_median']:.0f} / "
        f"{summary['first_token_ms_p90']:.0f} / {summary['first_token_ms_max']:.0f} "
        f"| {summary['swaps_with_404']} | {summary['background_requests']} "
        f"({summary['background_failures']}) |"
    )
    print(f"wrote {args.out}")
    return 0 if not outcome["failures"] else 1


if __name__ == "__main__":
    sys.exit(main())
