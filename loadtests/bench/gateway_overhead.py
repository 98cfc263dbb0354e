"""The gateway's overhead against vLLM's own OpenAI server, same engine, same adapters.

    .venv/bin/python loadtests/bench/gateway_overhead.py [--out FILE] [--rounds 3] [--passes 2]

Publishes N random LoRA adapters (rank 16, every linear layer) for the base model into a
throw-away tunegate home, then serves them twice, one server at a time (the machine is too
small for both at once): `tunegate serve` (the gateway) and
`python -m vllm.entrypoints.openai.api_server --enable-lora --lora-modules ...` (the peer),
with the same engine settings. Each round sends C concurrent chat requests (greedy, max_tokens
T, request i to adapter i mod N) and measures requests/s and output tokens/s over the wall
time of the round. Servers run in ABBA order (`--passes 2`) so that drift in the machine's
load hits both sides alike; the ratio gateway / vLLM of the medians is the overhead figure.

Talks to both servers over HTTP only (httpx); never imports the gateway. Writes JSON with
every round, the medians, the ratios and the load average (the machine is shared).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

__all__ = ["main"]

DEFAULT_BASE = "smollm2-135m-instruct"
ADAPTER_RANK = 16
# Engine settings, given to both servers (the gateway's defaults, LoRA slots for the mix).
ENGINE: dict[str, int | str] = {
    "dtype": "bfloat16",
    "max_model_len": 2048,
    "max_num_seqs": 64,
    "max_loras": 4,
    "max_cpu_loras": 16,
    "max_lora_rank": ADAPTER_RANK,
    "seed": 0,
    "kv_cache_gib": 2,
}
_LORA_KEYS = ("max_loras", "max_cpu_loras", "max_lora_rank")
START_TIMEOUT_S = 900.0

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
_ASKS = (
    "Explain {} to a curious child, in detail.",
    "Write a short essay about {}.",
    "Describe, step by step, {}.",
    "Give a thorough explanation of {} with an example.",
)
PROMPTS = [a.format(s) for s in _SUBJECTS for a in _ASKS]


@dataclass(frozen=True)
class Round:
    server: str
    mode: str  # "json" or "stream"
    round: int
    wall_s: float
    requests: int
    errors: int
    completion_tokens: int
    requests_per_s: float
    output_tok_per_s: float
    # CPU time of the server's own process (HTTP, routing, rendering, detokenizing,
    # accounting), not of its engine processes: on a shared machine this is the overhead
    # figure that the other sessions' load does not blur.
    frontend_cpu_s: float
    load_avg_1m: float


# ----------------------------------------------------------------------------- set-up


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _prepare_home(home: Path, base_id: str, n_adapters: int) -> tuple[Path, dict[str, Path]]:
    """Link the registered base models into `home` and publish the adapters there."""
    from adapters_store import BaseRegistry, Store
    from adapters_store.bases import MANIFEST
    from adapters_store.config import default_home
    from adapters_store.testing import write_lora

    source_models = default_home() / "models"
    (home / "models").mkdir(parents=True)
    for child in source_models.iterdir():
        if (child / MANIFEST).is_file():
            (home / "models" / child.name).symlink_to(child.resolve(), target_is_directory=True)
    registry = BaseRegistry(home / "models")
    base = registry.get(base_id)
    store = Store(home / "store", registry)
    adapters: dict[str, Path] = {}
    for i in range(n_adapters):
        # Random, non-zero lora_B: the adapter really changes every layer's output.
        folder = write_lora(home / "src" / f"a{i}", base, r=ADAPTER_RANK, seed=i, scale=0.01)
        version = store.publish(folder, f"bench-a{i}", card={"method": "lora"})
        adapters[f"bench-a{i}"] = version.path
    store.close()
    return base.path, adapters


def _gateway_command(port: int) -> list[str]:
    return [sys.executable, "-m", "tunegate", "serve", "--port", str(port)]


def _gateway_env(home: Path, base_id: str, lora: bool) -> dict[str, str]:
    env = {**os.environ, "TUNEGATE_HOME": str(home), "TUNEGATE_DEFAULT_BASE": base_id}
    env.pop("TUNEGATE_CONFIG", None)
    for key, value in ENGINE.items():
        env[f"TUNEGATE_GATEWAY_ENGINE_{key.upper()}"] = str(value)
    env["TUNEGATE_GATEWAY_ENGINE_ENABLE_LORA"] = str(lora).lower()
    return env


def _vllm_command(
    port: int, model: Path, base_id: str, adapters: dict[str, Path], lora: bool
) -> list[str]:
    cmd = [
        sys.executable,
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        str(model),
        "--served-model-name",
        base_id,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    if lora:
        cmd.append("--enable-lora")
    if adapters:
        cmd += ["--lora-modules", *(f"{name}={path}" for name, path in adapters.items())]
    for key, value in ENGINE.items():
        if key in _LORA_KEYS and not lora:
            continue
        if key == "kv_cache_gib":
            cmd += ["--kv-cache-memory-bytes", str(int(value) * 2**30)]
        else:
            cmd += [f"--{key.replace('_', '-')}", str(value)]
    return cmd


def _vllm_env() -> dict[str, str]:
    env = dict(os.environ)
    # The size is passed as --kv-cache-memory-bytes; on the CPU this variable would win.
    env.pop("VLLM_CPU_KVCACHE_SPACE", None)
    return env


@contextlib.contextmanager
def _serving(name: str, cmd: list[str], env: dict[str, str], port: int, log: Path) -> Any:
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
                if httpx.get(url + "/health", timeout=2).status_code == 200:
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


# ----------------------------------------------------------------------------- load


async def _one(client: httpx.AsyncClient, body: dict[str, Any], stream: bool) -> tuple[bool, int]:
    """(succeeded, completion tokens) of one chat request."""
    if not stream:
        response = await client.post("/v1/chat/completions", json=body)
        if response.status_code != 200:
            return False, 0
        return True, int(response.json()["usage"]["completion_tokens"])
    body = {**body, "stream": True, "stream_options": {"include_usage": True}}
    tokens, ok = 0, False
    async with client.stream("POST", "/v1/chat/completions", json=body) as response:
        if response.status_code != 200:
            return False, 0
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                ok = ok or line == "data: [DONE]"
                continue
            chunk = json.loads(line[6:])
            if chunk.get("error"):
                return False, tokens
            if chunk.get("usage"):
                tokens = int(chunk["usage"]["completion_tokens"])
    return ok, tokens


async def _round(
    url: str, models: list[str], concurrency: int, max_tokens: int, stream: bool
) -> tuple[float, int, int]:
    """(wall seconds, errors, completion tokens) for `concurrency` requests at once."""
    limits = httpx.Limits(max_connections=concurrency * 2, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=1800, limits=limits) as client:
        bodies = [
            {
                "model": models[i % len(models)],
                "messages": [{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}],
                "max_tokens": max_tokens,
                "temperature": 0.0,
            }
            for i in range(concurrency)
        ]
        start = time.perf_counter()
        results = await asyncio.gather(*(_one(client, b, stream) for b in bodies))
        wall = time.perf_counter() - start
    errors = sum(1 for ok, _ in results if not ok)
    return wall, errors, sum(tokens for _, tokens in results)


def _cpu_s(pid: int) -> float:
    import psutil  # a dependency of vLLM

    times = psutil.Process(pid).cpu_times()
    return float(times.user + times.system)


def _measure(
    server: str,
    url: str,
    pid: int,
    models: list[str],
    args: argparse.Namespace,
    modes: list[str],
) -> list[Round]:
    # Warm-up: every adapter loaded once, first-request compilation out of the way.
    asyncio.run(_round(url, models, len(models), 8, stream=False))
    out = []
    for mode in modes:
        for r in range(args.rounds):
            cpu_before = _cpu_s(pid)
            wall, errors, tokens = asyncio.run(
                _round(url, models, args.concurrency, args.max_tokens, stream=mode == "stream")
            )
            cpu = _cpu_s(pid) - cpu_before
            result = Round(
                server=server,
                mode=mode,
                round=r,
                wall_s=wall,
                requests=args.concurrency,
                errors=errors,
                completion_tokens=tokens,
                requests_per_s=(args.concurrency - errors) / wall,
                output_tok_per_s=tokens / wall,
                frontend_cpu_s=cpu,
                load_avg_1m=os.getloadavg()[0],
            )
            print(
                f"  {server:8} {mode:6} round {r}: {result.requests_per_s:6.3f} req/s "
                f"{result.output_tok_per_s:7.1f} tok/s  ({tokens} tokens, {errors} errors, "
                f"{wall:.1f} s, server process {cpu:.1f} CPU-s, load {result.load_avg_1m:.2f})",
                flush=True,
            )
            out.append(result)
    return out


# ----------------------------------------------------------------------------- main


def _summary(rounds: list[Round], modes: list[str]) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    for mode in modes:
        medians = {}
        for server in ("gateway", "vllm"):
            rs = [r for r in rounds if r.server == server and r.mode == mode]
            medians[server] = {
                "requests_per_s": statistics.median(r.requests_per_s for r in rs),
                "output_tok_per_s": statistics.median(r.output_tok_per_s for r in rs),
                "completion_tokens": statistics.median(r.completion_tokens for r in rs),
                "frontend_cpu_ms_per_request": statistics.median(
                    1000 * r.frontend_cpu_s / r.requests for r in rs
                ),
                "errors": sum(r.errors for r in rs),
                "rounds": len(rs),
            }
        g, v = medians["gateway"], medians["vllm"]
        summary[mode] = {
            **medians,
            "ratio_requests_per_s": g["requests_per_s"] / v["requests_per_s"],
            "ratio_output_tok_per_s": g["output_tok_per_s"] / v["output_tok_per_s"],
        }
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", default=DEFAULT_BASE, help="registered base model id")
    parser.add_argument(
        "--adapters", type=int, default=4, help="adapters in the mix (0: the base model only)"
    )
    parser.add_argument(
        "--no-lora",
        action="store_true",
        help="both engines without LoRA (implies --adapters 0): the cost of enabling it",
    )
    parser.add_argument("--concurrency", type=int, default=32, help="requests per round")
    parser.add_argument("--max-tokens", type=int, default=64, help="output tokens per request")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per server and mode")
    parser.add_argument("--passes", type=int, default=2, help="1: gateway, vLLM; 2: ABBA")
    parser.add_argument(
        "--modes", default="json,stream", help="comma list of json (non-streamed), stream"
    )
    parser.add_argument("--out", type=Path, default=Path("gateway_overhead.json"))
    args = parser.parse_args(argv)
    modes = [m for m in args.modes.split(",") if m]
    lora = not args.no_lora
    if not lora:
        args.adapters = 0
    if not set(modes) <= {"json", "stream"} or not modes:
        parser.error("--modes takes json and/or stream")

    with tempfile.TemporaryDirectory(prefix="tunegate-bench-") as tmp:
        home = Path(tmp) / "home"
        model_path, adapters = _prepare_home(home, args.base, args.adapters)
        # Without adapters every request goes to the base model (LoRA stays enabled on
        # both servers, as the gateway runs by default).
        models = list(adapters) or [args.base]
        log = Path(tmp) / "servers.log"
        order = ["gateway", "vllm"]
        if args.passes >= 2:
            order += ["vllm", "gateway"]
        rounds: list[Round] = []
        load_before = os.getloadavg()
        try:
            for server in order:
                port = _free_port()
                if server == "gateway":
                    cmd, env = _gateway_command(port), _gateway_env(home, args.base, lora)
                else:
                    cmd = _vllm_command(port, model_path, args.base, adapters, lora)
                    env = _vllm_env()
                print(f"starting {server} ...", flush=True)
                with _serving(server, cmd, env, port, log) as (url, pid):
                    rounds += _measure(server, url, pid, models, args, modes)
        finally:
            fast_lora = "tunegate fast LoRA ops active" in log.read_text(errors="replace")
            with contextlib.suppress(OSError):
                (args.out.with_suffix(".log")).write_text(log.read_text(errors="replace"))

    summary = _summary(rounds, modes)
    result = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "base": args.base,
        "adapters": args.adapters,
        "lora_enabled": lora,
        "adapter_rank": ADAPTER_RANK,
        "concurrency": args.concurrency,
        "max_tokens": args.max_tokens,
        "engine": ENGINE,
        "order": order,
        "fast_lora_plugin_active": fast_lora,
        "cpu_count": os.cpu_count(),
        "load_avg_before": load_before,
        "load_avg_after": os.getloadavg(),
        "summary": summary,
        "rounds": [asdict(r) for r in rounds],
    }
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    for mode, s in summary.items():
        g, v = s["gateway"], s["vllm"]
        print(
            f"{mode:6}: gateway {g['requests_per_s']:.3f} req/s {g['output_tok_per_s']:.1f} tok/s"
            f" | vLLM {v['requests_per_s']:.3f} req/s {v['output_tok_per_s']:.1f} tok/s"
            f" | ratio {s['ratio_requests_per_s']:.3f} (req/s) "
            f"{s['ratio_output_tok_per_s']:.3f} (tok/s)"
            f" | server-process CPU per request: gateway {g['frontend_cpu_ms_per_request']:.1f}"
            f" ms, vLLM {v['frontend_cpu_ms_per_request']:.1f} ms"
        )
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
