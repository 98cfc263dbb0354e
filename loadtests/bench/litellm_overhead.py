"""tunegate against LiteLLM's proxy in front of vLLM's own OpenAI server, same workload.

    make bench-litellm      (creates .bench-venv-litellm with litellm[proxy], then runs this)
    .venv/bin/python loadtests/bench/litellm_overhead.py --litellm .bench-venv-litellm/bin/litellm

The workload, the servers' engine settings and the driver are `gateway_overhead.py`'s: N random
rank-16 adapters, C concurrent streamed chat requests with exactly T output tokens, request i
to adapter i mod N. Three targets, one server set at a time (the machine is too small for two
engines):

- `vllm`: `python -m vllm.entrypoints.openai.api_server` with the adapters (the baseline);
- `litellm`: LiteLLM's proxy (`litellm --config`, its own virtual environment, so its pins
  never touch tunegate's) with one `hosted_vllm/<adapter>` deployment per adapter pointing
  at that same vLLM server, a per-token price on each so it computes every request's cost;
- `gateway`: `tunegate serve` (accounting on, as it always is).

`vllm` and `litellm` rounds alternate inside one vLLM server's life (A/B/A/B), so the proxy's
cost is measured against the same engine at the same moment; `gateway` runs in its own
session, before (and with `--passes 2` also after) it. Each proxy's loss is its ratio to
`vllm`. LiteLLM's spend *logs* (per-request rows, budgets) need its Prisma client and
PostgreSQL; Prisma downloads its query engine from binaries.prisma.sh at first use, which
this machine cannot reach, so the proxy runs without a database: it still prices every
request (`x-litellm-response-cost`) but writes no spend row. The JSON says so. Neither
side checks API keys (tunegate's auth is off by default; LiteLLM is started with its
`dangerously_permit_weak_or_unset_master_key`, as it has no key database either).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from loadtests.bench.common import (
    DEFAULT_BASE,
    finish,
    free_port,
    gateway_command,
    prepare_home,
    publish_random_adapters,
    serving,
)
from loadtests.bench.gateway_overhead import (
    ADAPTER_RANK,
    ENGINE,
    Round,
    _gateway_env,
    _measure_round,
    _round,
    _summary,
    _vllm_command,
    _vllm_env,
)

__all__ = ["litellm_config", "main", "sessions", "table"]

REPO = Path(__file__).resolve().parents[2]
DEFAULT_LITELLM = REPO / ".bench-venv-litellm" / "bin" / "litellm"
# $ per token LiteLLM is told, so that its cost calculation runs for every request (the
# figure itself does not matter here).
PRICE_PER_TOKEN = 1e-7
SPEND_TRACKING = (
    "off: LiteLLM's spend logs need Prisma + PostgreSQL and Prisma's query engine must be "
    "downloaded from binaries.prisma.sh, unreachable here; the proxy prices each request "
    "in memory only"
)


def litellm_config(models: list[str], vllm_url: str) -> dict[str, Any]:
    """LiteLLM proxy config: one OpenAI-compatible vLLM deployment per served model name."""
    return {
        "model_list": [
            {
                "model_name": name,
                "litellm_params": {
                    "model": f"hosted_vllm/{name}",
                    "api_base": f"{vllm_url}/v1",
                    "api_key": "none",
                    "input_cost_per_token": PRICE_PER_TOKEN,
                    "output_cost_per_token": PRICE_PER_TOKEN,
                },
            }
            for name in models
        ],
        # Unknown request fields (vLLM's `ignore_eos`) go through to vLLM as extra_body.
        "litellm_settings": {"drop_params": False},
        # Without a master key LiteLLM refuses to start unless told so; tunegate runs with
        # auth off too, so neither side checks keys.
        "general_settings": {"dangerously_permit_weak_or_unset_master_key": True},
    }


def sessions(passes: int) -> list[str]:
    """Server sessions in order: `gateway` alone, or vLLM with LiteLLM in front (`vllm`);
    with 2 passes A/B/B/A so that drift in the machine's load hits both alike."""
    order = ["gateway", "vllm"]
    return order + order[::-1] if passes >= 2 else order


def table(summaries: dict[str, dict[str, Any]]) -> str:
    """Markdown: per workload, vLLM direct, each proxy and its ratio to vLLM."""
    lines = [
        "| workload | vLLM req/s | tunegate req/s (ratio) | LiteLLM req/s (ratio) "
        "| TTFT p50 ms (vLLM / tunegate / LiteLLM) | server CPU ms/request "
        "(vLLM / tunegate / LiteLLM) |",
        "|---|---|---|---|---|---|",
    ]
    for name, s in summaries.items():
        v, g, lt = s["vllm"], s["gateway"], s["litellm"]

        def ttft(x: dict[str, Any]) -> str:
            return "-" if x["ttft_p50_ms"] is None else f"{x['ttft_p50_ms']:.0f}"

        lines.append(
            f"| {name} | {v['requests_per_s']:.3f} "
            f"| {g['requests_per_s']:.3f} ({s['gateway_ratio']:.3f}) "
            f"| {lt['requests_per_s']:.3f} ({s['litellm_ratio']:.3f}) "
            f"| {ttft(v)} / {ttft(g)} / {ttft(lt)} "
            f"| {v['frontend_cpu_ms_per_request']:.1f} / {g['frontend_cpu_ms_per_request']:.1f} "
            f"/ {lt['frontend_cpu_ms_per_request']:.1f} |"
        )
    return "\n".join(lines)


def _combine(gw: dict[str, Any], ll: dict[str, Any]) -> dict[str, dict[str, Any]]:
    out = {}
    for name in gw:
        out[name] = {
            "vllm": ll[name]["vllm"],
            "gateway": gw[name]["gateway"],
            "litellm": ll[name]["litellm"],
            "gateway_ratio": gw[name]["ratio_requests_per_s"],
            "litellm_ratio": ll[name]["ratio_requests_per_s"],
            "gateway_ttft_p50_diff_ms": gw[name]["ttft_p50_diff_ms"],
            "litellm_ttft_p50_diff_ms": ll[name]["ttft_p50_diff_ms"],
        }
    return out


def _vllm_and_litellm(
    tmp: Path,
    model_path: Path,
    adapters: dict[str, Path],
    models: list[str],
    args: argparse.Namespace,
    log: Path,
) -> list[Round]:
    port = free_port()
    cmd = _vllm_command(port, model_path, args.base, adapters, lora=True)
    print("starting vllm ...", flush=True)
    with serving("vllm", cmd, _vllm_env(), port, log) as (vllm_url, vllm_pid):
        config = tmp / "litellm.yaml"
        config.write_text(yaml.safe_dump(litellm_config(models, vllm_url)))
        lport = free_port()
        lcmd = [str(args.litellm), "--config", str(config), "--host", "127.0.0.1"]
        lcmd += ["--port", str(lport), "--num_workers", "1"]
        # No network: LiteLLM must not try to fetch its model price map.
        env = {"PATH": os.environ.get("PATH", ""), "HOME": str(tmp)}
        env["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"
        print("starting litellm ...", flush=True)
        # /health would call every model; liveliness is LiteLLM's cheap probe.
        with serving("litellm", lcmd, env, lport, log, health="/health/liveliness") as (
            lurl,
            lpid,
        ):
            # Warm-up through the proxy also warms the engine (every adapter loaded once).
            asyncio.run(_round(lurl, models, len(models), 8, stream=False))
            asyncio.run(_round(vllm_url, models, len(models), 8, stream=False))
            rounds = []
            for concurrency in args.concurrency:
                for mode in args.modes:
                    for r in range(args.rounds):
                        for name, url, pid in (
                            ("vllm", vllm_url, vllm_pid),
                            ("litellm", lurl, lpid),
                        ):
                            rounds.append(
                                _measure_round(name, url, pid, models, args, mode, concurrency, r)
                            )
    return rounds


def _gateway(home: Path, models: list[str], args: argparse.Namespace, log: Path) -> list[Round]:
    port = free_port()
    print("starting gateway ...", flush=True)
    env = _gateway_env(home, args.base, lora=True)
    with serving("gateway", gateway_command(port), env, port, log) as (url, pid):
        asyncio.run(_round(url, models, len(models), 8, stream=False))
        return [
            _measure_round("gateway", url, pid, models, args, mode, concurrency, r)
            for concurrency in args.concurrency
            for mode in args.modes
            for r in range(args.rounds)
        ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--litellm", type=Path, default=DEFAULT_LITELLM, help="litellm CLI")
    parser.add_argument("--base", default=DEFAULT_BASE, help="registered base model id")
    parser.add_argument("--adapters", type=int, default=4, help="adapters in the mix (>= 1)")
    parser.add_argument(
        "--concurrency",
        type=lambda text: [int(c) for c in text.split(",") if c],
        default=[32],
        help="comma list: requests sent at once per round",
    )
    parser.add_argument("--max-tokens", type=int, default=64, help="output tokens per request")
    parser.add_argument("--rounds", type=int, default=2, help="rounds per target and session")
    parser.add_argument("--passes", type=int, default=1, help="2: gateway, vLLM, vLLM, gateway")
    parser.add_argument(
        "--modes",
        type=lambda text: [m for m in text.split(",") if m],
        default=["stream"],
        help="comma list of json (non-streamed), stream",
    )
    parser.add_argument("--out", type=Path, default=Path("litellm_overhead.json"))
    args = parser.parse_args(argv)
    if not args.litellm.is_file():
        parser.error(f"{args.litellm} not found: `make bench-litellm` creates it")
    if args.adapters < 1 or args.rounds < 1 or not args.concurrency or min(args.concurrency) < 1:
        parser.error("--adapters, --rounds and every --concurrency must be >= 1")
    if not args.modes or not set(args.modes) <= {"json", "stream"}:
        parser.error("--modes takes json and/or stream")
    from adapters_store.hardware import engine_dtype

    ENGINE["dtype"] = engine_dtype("auto")
    load_before = os.getloadavg()
    rounds: list[Round] = []
    with tempfile.TemporaryDirectory(prefix="tunegate-bench-litellm-") as name:
        tmp = Path(name)
        home = tmp / "home"
        prepare_home(home)
        names = [f"bench-a{i}" for i in range(args.adapters)]
        model_path, adapters = publish_random_adapters(home, args.base, names, ADAPTER_RANK)
        models = list(adapters)
        log = tmp / "servers.log"
        try:
            for session in sessions(args.passes):
                if session == "gateway":
                    rounds += _gateway(home, models, args, log)
                else:
                    rounds += _vllm_and_litellm(tmp, model_path, adapters, models, args, log)
        finally:
            if log.exists():
                args.out.with_suffix(".log").write_text(log.read_text(errors="replace"))

    from dataclasses import asdict

    summary = _combine(
        _summary(rounds, args.modes, args.concurrency, "gateway", "vllm"),
        _summary(rounds, args.modes, args.concurrency, "litellm", "vllm"),
    )
    result = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "base": args.base,
        "adapters": args.adapters,
        "adapter_rank": ADAPTER_RANK,
        "concurrency": args.concurrency,
        "max_tokens": args.max_tokens,
        "engine": ENGINE,
        "sessions": sessions(args.passes),
        "litellm_spend_tracking": SPEND_TRACKING,
        "load_avg_before": load_before,
        "summary": summary,
        "rounds": [asdict(r) for r in rounds],
    }
    return finish(args.out, result, table(summary))


if __name__ == "__main__":
    sys.exit(main())
