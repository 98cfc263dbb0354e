"""The gateway's overhead against vLLM's own OpenAI server, same engine, same adapters.

    .venv/bin/python loadtests/bench/gateway_overhead.py [--out FILE] [--rounds 3] [--passes 2]

Publishes N random LoRA adapters (rank 16, every linear layer) for the base model into a
throw-away tunegate home, then serves them twice, one server at a time (the machine is too
small for both at once): `tunegate serve` (the gateway) and
`python -m vllm.entrypoints.openai.api_server --enable-lora --lora-modules ...` (the peer),
with the same engine settings. Each round sends C concurrent chat requests (greedy, exactly
T output tokens through vLLM's `ignore_eos`, request i to adapter i mod N) and measures
requests/s and output tokens/s over the wall time of the round, and in streaming rounds each
request's time to first token. Servers run in ABBA order (`--passes 2`) so that drift in the
machine's load hits both sides alike; the ratio gateway / vLLM of the medians and the
difference of the pooled p50/p99 TTFT are the overhead figures.

Talks to both servers over HTTP only (httpx); never imports the gateway. Writes JSON with
every round, the medians, the ratios and the load average (the machine is shared).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
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
    PROMPTS,
    cpu_seconds,
    finish,
    free_port,
    gateway_command,
    gateway_env,
    prepare_home,
    publish_random_adapters,
    serving,
)
from loadtests.stats import percentiles

__all__ = ["main"]

ADAPTER_RANK = 16
# Engine settings, given to both servers (the gateway's defaults, LoRA slots for the mix).
ENGINE: dict[str, int | str] = {
    "dtype": "auto",  # resolved by main() to what the gateway would run (bf16 only if native)
    "max_model_len": 2048,
    "max_num_seqs": 64,
    "max_loras": 4,
    "max_cpu_loras": 16,
    "max_lora_rank": ADAPTER_RANK,
    "seed": 0,
    "kv_cache_gib": 2,
}
_LORA_KEYS = ("max_loras", "max_cpu_loras", "max_lora_rank")


@dataclass(frozen=True)
class Round:
    server: str
    mode: str  # "json" or "stream"
    concurrency: int
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
    ttft_ms: list[float]  # per successful streamed request; empty for non-streamed rounds


# ----------------------------------------------------------------------------- set-up


def _gateway_env(home: Path, base_id: str, lora: bool) -> dict[str, str]:
    return gateway_env(home, base_id, {**ENGINE, "enable_lora": lora})


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


# ----------------------------------------------------------------------------- load


async def _one(
    client: httpx.AsyncClient, body: dict[str, Any], stream: bool
) -> tuple[bool, int, float | None]:
    """(succeeded, completion tokens, seconds to the first content chunk) of one request."""
    if not stream:
        response = await client.post("/v1/chat/completions", json=body)
        if response.status_code != 200:
            return False, 0, None
        return True, int(response.json()["usage"]["completion_tokens"]), None
    body = {**body, "stream": True, "stream_options": {"include_usage": True}}
    tokens, ok, ttft = 0, False, None
    start = time.perf_counter()
    async with client.stream("POST", "/v1/chat/completions", json=body) as response:
        if response.status_code != 200:
            return False, 0, None
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                ok = ok or line == "data: [DONE]"
                continue
            chunk = json.loads(line[6:])
            if chunk.get("error"):
                return False, tokens, None
            choices = chunk.get("choices") or []
            if ttft is None and choices and choices[0].get("delta", {}).get("content"):
                ttft = time.perf_counter() - start
            if chunk.get("usage"):
                tokens = int(chunk["usage"]["completion_tokens"])
    return ok, tokens, ttft


async def _round(
    url: str, models: list[str], concurrency: int, max_tokens: int, stream: bool
) -> tuple[float, int, int, list[float]]:
    """(wall seconds, errors, completion tokens, TTFTs in ms) for `concurrency` requests at
    once."""
    limits = httpx.Limits(max_connections=concurrency * 2, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=1800, limits=limits) as client:
        bodies = [
            {
                "model": models[i % len(models)],
                "messages": [{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}],
                "max_tokens": max_tokens,
                "temperature": 0.0,
                # Both servers accept vLLM's extra: every answer is exactly max_tokens long,
                # so neither side wins by stopping early.
                "ignore_eos": True,
            }
            for i in range(concurrency)
        ]
        start = time.perf_counter()
        results = await asyncio.gather(*(_one(client, b, stream) for b in bodies))
        wall = time.perf_counter() - start
    errors = sum(1 for ok, _, _ in results if not ok)
    ttfts = [1000 * t for ok, _, t in results if ok and t is not None]
    return wall, errors, sum(tokens for _, tokens, _ in results), ttfts


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
    for concurrency in args.concurrency:
        for mode in modes:
            for r in range(args.rounds):
                out.append(_measure_round(server, url, pid, models, args, mode, concurrency, r))
    return out


def _measure_round(
    server: str,
    url: str,
    pid: int,
    models: list[str],
    args: argparse.Namespace,
    mode: str,
    concurrency: int,
    r: int,
) -> Round:
    cpu_before = cpu_seconds(pid)
    wall, errors, tokens, ttfts = asyncio.run(
        _round(url, models, concurrency, args.max_tokens, stream=mode == "stream")
    )
    cpu = cpu_seconds(pid) - cpu_before
    result = Round(
        server=server,
        mode=mode,
        concurrency=concurrency,
        round=r,
        wall_s=wall,
        requests=concurrency,
        errors=errors,
        completion_tokens=tokens,
        requests_per_s=(concurrency - errors) / wall,
        output_tok_per_s=tokens / wall,
        frontend_cpu_s=cpu,
        load_avg_1m=os.getloadavg()[0],
        ttft_ms=ttfts,
    )
    ttft = f", TTFT p50 {percentiles(ttfts)['p50']:.0f} ms" if ttfts else ""
    print(
        f"  {server:8} {mode:6} c={concurrency:<4} round {r}: {result.requests_per_s:6.3f} req/s "
        f"{result.output_tok_per_s:7.1f} tok/s  ({tokens} tokens, {errors} errors, "
        f"{wall:.1f} s{ttft}, server process {cpu:.1f} CPU-s, load {result.load_avg_1m:.2f})",
        flush=True,
    )
    return result


# ----------------------------------------------------------------------------- main


def _summary(
    rounds: list[Round],
    modes: list[str],
    concurrencies: list[int],
    ours: str = "gateway",
    peer: str = "vllm",
) -> dict[str, Any]:
    """Per workload, each server's medians and the ratios `ours` / `peer`."""
    summary: dict[str, Any] = {}
    for concurrency, mode in ((c, m) for c in concurrencies for m in modes):
        medians = {}
        for server in (ours, peer):
            rs = [
                r
                for r in rounds
                if r.server == server and r.mode == mode and r.concurrency == concurrency
            ]
            # TTFT percentiles over every streamed request of the server's rounds, pooled.
            ttft = percentiles([t for r in rs for t in r.ttft_ms])
            medians[server] = {
                "requests_per_s": statistics.median(r.requests_per_s for r in rs),
                "output_tok_per_s": statistics.median(r.output_tok_per_s for r in rs),
                "completion_tokens": statistics.median(r.completion_tokens for r in rs),
                "frontend_cpu_ms_per_request": statistics.median(
                    1000 * r.frontend_cpu_s / r.requests for r in rs
                ),
                "errors": sum(r.errors for r in rs),
                "rounds": len(rs),
                "ttft_p50_ms": ttft["p50"],
                "ttft_p99_ms": ttft["p99"],
            }
        g: dict[str, Any] = medians[ours]
        v: dict[str, Any] = medians[peer]
        streamed = g["ttft_p50_ms"] is not None and v["ttft_p50_ms"] is not None
        summary[f"{mode} c={concurrency}"] = {
            **medians,
            "mode": mode,
            "concurrency": concurrency,
            "ratio_requests_per_s": g["requests_per_s"] / v["requests_per_s"],
            "ratio_output_tok_per_s": g["output_tok_per_s"] / v["output_tok_per_s"],
            "ttft_p50_diff_ms": g["ttft_p50_ms"] - v["ttft_p50_ms"] if streamed else None,
            "ttft_p99_diff_ms": g["ttft_p99_ms"] - v["ttft_p99_ms"] if streamed else None,
        }
    return summary


def _table(summary: dict[str, Any]) -> str:
    """The summary as a Markdown table (what the README keeps)."""

    def ms(value: float | None, signed: bool = False) -> str:
        return "-" if value is None else (f"{value:+.0f}" if signed else f"{value:.0f}")

    lines = [
        "| workload | gateway req/s | vLLM req/s | ratio | TTFT p50 ms (gw / vLLM / diff) "
        "| TTFT p99 ms (gw / vLLM / diff) | server CPU ms/request (gw / vLLM) |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, s in summary.items():
        g, v = s["gateway"], s["vllm"]
        lines.append(
            f"| {name} | {g['requests_per_s']:.3f} | {v['requests_per_s']:.3f} "
            f"| {s['ratio_requests_per_s']:.3f} "
            f"| {ms(g['ttft_p50_ms'])} / {ms(v['ttft_p50_ms'])} / "
            f"{ms(s['ttft_p50_diff_ms'], True)} "
            f"| {ms(g['ttft_p99_ms'])} / {ms(v['ttft_p99_ms'])} / "
            f"{ms(s['ttft_p99_diff_ms'], True)} "
            f"| {g['frontend_cpu_ms_per_request']:.1f} / {v['frontend_cpu_ms_per_request']:.1f} |"
        )
    return "\n".join(lines)


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
    parser.add_argument(
        "--concurrency",
        type=lambda text: [int(c) for c in text.split(",") if c],
        default=[32, 128],
        help="comma list: requests sent at once per round (closed loop of one round each)",
    )
    parser.add_argument("--max-tokens", type=int, default=64, help="output tokens per request")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per server and mode")
    parser.add_argument("--passes", type=int, default=2, help="1: gateway, vLLM; 2: ABBA")
    parser.add_argument(
        "--modes", default="json,stream", help="comma list of json (non-streamed), stream"
    )
    parser.add_argument(
        "--dtype",
        default="auto",
        choices=("auto", "bfloat16", "float32"),
        help="weights dtype for both servers (auto: the gateway's choice for this machine)",
    )
    parser.add_argument("--out", type=Path, default=Path("gateway_overhead.json"))
    args = parser.parse_args(argv)
    from adapters_store.hardware import engine_dtype

    # Both servers get the resolved name: vLLM's own `auto` would mean the checkpoint's.
    ENGINE["dtype"] = engine_dtype(args.dtype)
    modes = [m for m in args.modes.split(",") if m]
    lora = not args.no_lora
    if not lora:
        args.adapters = 0
    if not set(modes) <= {"json", "stream"} or not modes:
        parser.error("--modes takes json and/or stream")

    with tempfile.TemporaryDirectory(prefix="tunegate-bench-") as tmp:
        home = Path(tmp) / "home"
        prepare_home(home)
        names = [f"bench-a{i}" for i in range(args.adapters)]
        model_path, adapters = publish_random_adapters(home, args.base, names, ADAPTER_RANK)
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
                port = free_port()
                if server == "gateway":
                    cmd, env = gateway_command(port), _gateway_env(home, args.base, lora)
                else:
                    cmd = _vllm_command(port, model_path, args.base, adapters, lora)
                    env = _vllm_env()
                print(f"starting {server} ...", flush=True)
                with serving(server, cmd, env, port, log) as (url, pid):
                    rounds += _measure(server, url, pid, models, args, modes)
        finally:
            fast_lora = "tunegate fast LoRA ops active" in log.read_text(errors="replace")
            with contextlib.suppress(OSError):
                (args.out.with_suffix(".log")).write_text(log.read_text(errors="replace"))

    summary = _summary(rounds, modes, args.concurrency)
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
        "load_avg_before": load_before,
        "summary": summary,
        "rounds": [asdict(r) for r in rounds],
    }
    return finish(args.out, result, _table(summary))


if __name__ == "__main__":
    sys.exit(main())
