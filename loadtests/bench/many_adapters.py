"""Many adapters: gateway throughput with 1, 4, 16 and 64 adapters in one mixed workload,
against the base model through the same server and against the naive way (transformers +
PEFT, switching adapters per request).

    .venv/bin/python loadtests/bench/many_adapters.py [--counts 1,4,16,64] [--requests 128]
        [--concurrency 16] [--max-tokens 64] [--naive-adapters 16] [--naive-requests 16]
        [--rounds 1] [--out FILE]

Publishes max(counts) random rank-16 LoRA adapters (every linear layer) into a throw-away
tunegate home and starts `tunegate serve` once, with fewer engine slots than adapters
(`max_loras` 4) and all of them in the host cache (`max_cpu_loras` >= 64), so the larger
mixes evict adapters from the slots all the time. After a warm-up that loads every adapter
once, each configuration sends the same closed loop: `--requests` chat requests, at most
`--concurrency` in flight, request i naming adapter i mod N (or the base model) with prompt i
(all distinct, so no configuration gains from the prefix cache), greedy, exactly
`--max-tokens` output tokens (vLLM's `ignore_eos`). Rounds after the first run the
configurations in reverse order, so drift in the machine's load hits all of them alike.

Then, with the server stopped, the naive way on the same requests of the N=`--naive-adapters`
mix: one process, the base loaded once with every adapter (`PeftModel.load_adapter`), per
request `set_adapter` and a greedy `generate` of the same length, one request at a time.
It is slow, so only the first `--naive-requests` requests are run (and no more than
`--naive-budget-s`); its requests/s comes from their measured time only.

Both sides compute in the dtype the gateway picks for this machine
(`adapters_store.hardware.engine_dtype("auto")`: float32 where bf16 is emulated). Talks to
the gateway over HTTP only (httpx). Prints a Markdown table and writes JSON with every run
and the load average before and after (the machine is shared). Beside requests/s, each
configuration's CPU milliseconds per request: of the gateway's whole process tree (engine
included), or of the naive process; other work on a shared machine moves it far less than
the throughput, so it is the figure to compare code changes by.
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
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from loadtests.bench.common import (
    DEFAULT_BASE,
    MANY_PROMPTS,
    cpu_seconds,
    free_port,
    gateway_command,
    gateway_env,
    prepare_home,
    publish_random_adapters,
    serving,
)
from loadtests.stats import percentiles

__all__ = [
    "Run",
    "main",
    "parse_counts",
    "request_for",
    "speedup",
    "summarize",
    "table",
]

ADAPTER_RANK = 16
BASE = "base"  # the configuration name of the base model alone
NAIVE = "naive"
# The gateway's engine for this benchmark: its defaults, plus fewer slots than adapters.
ENGINE: dict[str, int | str] = {
    "dtype": "auto",  # resolved by main() to what the gateway would run (bf16 only if native)
    "max_model_len": 2048,
    "max_num_seqs": 64,
    "max_loras": 4,
    "max_cpu_loras": 64,  # raised by main() to the adapters published: slots evict, RAM not
    "max_lora_rank": ADAPTER_RANK,
    "seed": 0,
    "kv_cache_gib": 2,
}


@dataclass(frozen=True)
class Run:
    """One configuration's closed loop (or the naive side's measured requests)."""

    config: str  # "base", "N adapters" or "naive, N adapters"
    adapters: int  # 0: the base model
    round: int
    wall_s: float  # the naive side runs one request at a time: the sum of its latencies
    requests: int
    errors: int
    completion_tokens: int
    latency_ms: list[float]  # end to end, per successful request
    load_avg_1m: float
    first_error: str | None = None
    # CPU seconds the serving side spent on the run: the gateway's whole process tree (HTTP
    # front end, engine core, engine worker), or the naive side's own process. Unlike the
    # requests/s it barely moves with what else the machine runs.
    cpu_s: float | None = None


# ----------------------------------------------------------------------------- pure logic


def parse_counts(text: str) -> list[int]:
    """`1,4,16,64` -> [1, 4, 16, 64]: distinct positive adapter counts, in order."""
    try:
        counts = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma list of integers: {text!r}") from None
    if not counts or any(c < 1 for c in counts) or len(set(counts)) != len(counts):
        raise argparse.ArgumentTypeError(f"need distinct adapter counts >= 1, got {text!r}")
    return counts


def request_for(
    i: int, models: Sequence[str], prompts: Sequence[str]
) -> tuple[str, list[dict[str, str]]]:
    """Request i of a mix: (model, messages). Both sides send exactly these."""
    return models[i % len(models)], [{"role": "user", "content": prompts[i % len(prompts)]}]


def summarize(runs: Sequence[Run]) -> dict[str, Any]:
    """One configuration over its rounds: requests/s and output tokens/s are the medians of
    the rounds' (successful requests or tokens) / wall time; latencies are pooled."""
    if not runs or any(r.wall_s <= 0 for r in runs):
        raise ValueError("summarize needs runs with a positive wall time")
    e2e = percentiles([ms for r in runs for ms in r.latency_ms])
    ok = sum(r.requests - r.errors for r in runs)
    cpu = [
        1000 * r.cpu_s / (r.requests - r.errors) for r in runs if r.cpu_s and r.requests > r.errors
    ]
    return {
        "config": runs[0].config,
        "adapters": runs[0].adapters,
        "rounds": len(runs),
        "requests": sum(r.requests for r in runs),
        "errors": sum(r.errors for r in runs),
        "requests_per_s": statistics.median((r.requests - r.errors) / r.wall_s for r in runs),
        "output_tok_per_s": statistics.median(r.completion_tokens / r.wall_s for r in runs),
        "completion_tokens_per_request": (
            sum(r.completion_tokens for r in runs) / ok if ok else None
        ),
        "e2e_p50_ms": e2e["p50"],
        "e2e_p99_ms": e2e["p99"],
        "cpu_ms_per_request": statistics.median(cpu) if cpu else None,
        "load_avg_1m": [r.load_avg_1m for r in runs],
    }


def relative_to_base(summaries: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Each summary with `vs_base`: its requests/s over the base model's (None without one)."""
    base = summaries.get(BASE)
    base_rps = base["requests_per_s"] if base else None
    return {
        name: {**s, "vs_base": s["requests_per_s"] / base_rps if base_rps else None}
        for name, s in summaries.items()
    }


def speedup(summaries: dict[str, dict[str, Any]], adapters: int) -> float | None:
    """Gateway requests/s over the naive way's, at the naive side's adapter count (None when
    either side was not measured or the naive side served nothing)."""
    gateway = summaries.get(_config_name(adapters))
    naive = summaries.get(_naive_name(adapters))
    if gateway is None or naive is None or not naive["requests_per_s"]:
        return None
    return float(gateway["requests_per_s"] / naive["requests_per_s"])


def table(summaries: dict[str, dict[str, Any]]) -> str:
    """The summaries (with `vs_base`) as a Markdown table, in the order given."""

    def num(value: float | None, fmt: str) -> str:
        return "-" if value is None else format(value, fmt)

    lines = [
        "| configuration | requests (errors) | requests/s | output tok/s "
        "| e2e p50 ms | e2e p99 ms | vs base | CPU ms per request |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for s in summaries.values():
        lines.append(
            f"| {s['config']} | {s['requests']} ({s['errors']}) | {s['requests_per_s']:.3f} "
            f"| {s['output_tok_per_s']:.1f} | {num(s['e2e_p50_ms'], '.0f')} "
            f"| {num(s['e2e_p99_ms'], '.0f')} | {num(s['vs_base'], '.3f')} "
            f"| {num(s.get('cpu_ms_per_request'), '.1f')} |"
        )
    return "\n".join(lines)


def _config_name(adapters: int) -> str:
    return BASE if adapters == 0 else f"{adapters} adapter{'s' if adapters > 1 else ''}"


def _naive_name(adapters: int) -> str:
    return f"{NAIVE}, {_config_name(adapters)}"


# ----------------------------------------------------------------------------- gateway side


async def _closed_loop(
    url: str, models: list[str], requests: int, concurrency: int, max_tokens: int
) -> tuple[float, list[tuple[bool, int, float, str | None]]]:
    """(wall seconds, per request (ok, completion tokens, seconds, error)) of `requests`
    requests with at most `concurrency` in flight."""
    limits = httpx.Limits(max_connections=concurrency * 2, max_keepalive_connections=concurrency)
    results: list[tuple[bool, int, float, str | None]] = []
    async with httpx.AsyncClient(base_url=url, timeout=1800, limits=limits) as client:
        indices = iter(range(requests))  # shared: each worker takes the next request

        async def worker() -> None:
            for i in indices:
                model, messages = request_for(i, models, MANY_PROMPTS)
                body = {
                    "model": model,
                    "messages": messages,
                    "max_tokens": max_tokens,
                    "temperature": 0.0,
                    "ignore_eos": True,  # every answer is exactly max_tokens long
                }
                started = time.perf_counter()
                try:
                    response = await client.post("/v1/chat/completions", json=body)
                except httpx.HTTPError as exc:
                    results.append((False, 0, 0.0, f"{type(exc).__name__}: {exc}"))
                    continue
                seconds = time.perf_counter() - started
                if response.status_code != 200:
                    results.append((False, 0, seconds, f"{response.status_code} {response.text}"))
                    continue
                tokens = int(response.json()["usage"]["completion_tokens"])
                results.append((True, tokens, seconds, None))

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - start
    return wall, results


def _gateway_run(
    url: str, pid: int, models: list[str], adapters: int, r: int, args: argparse.Namespace
) -> Run:
    cpu_before = cpu_seconds(pid, descendants=True)
    wall, results = asyncio.run(
        _closed_loop(url, models, args.requests, args.concurrency, args.max_tokens)
    )
    cpu = cpu_seconds(pid, descendants=True) - cpu_before
    errors = [str(error) for ok, _, _, error in results if not ok]
    run = Run(
        config=_config_name(adapters),
        adapters=adapters,
        round=r,
        wall_s=wall,
        requests=len(results),
        errors=len(errors),
        completion_tokens=sum(tokens for ok, tokens, _, _ in results if ok),
        latency_ms=[1000 * s for ok, _, s, _ in results if ok],
        load_avg_1m=os.getloadavg()[0],
        first_error=errors[0][:500] if errors else None,
        cpu_s=cpu,
    )
    _print_run(run)
    return run


def _print_run(run: Run) -> None:
    e2e = percentiles(run.latency_ms)
    p50 = f"{e2e['p50']:.0f}" if e2e["p50"] is not None else "-"
    print(
        f"  {run.config:20} round {run.round}: {(run.requests - run.errors) / run.wall_s:6.3f} "
        f"req/s {run.completion_tokens / run.wall_s:7.1f} tok/s, e2e p50 {p50} ms "
        f"({run.requests} requests, {run.errors} errors, {run.wall_s:.1f} s, "
        f"{run.cpu_s or 0:.1f} CPU-s, load {run.load_avg_1m:.2f})",
        flush=True,
    )
    if run.first_error:
        print(f"    first error: {run.first_error}", flush=True)


def _gateway_side(home: Path, names: list[str], args: argparse.Namespace, log: Path) -> list[Run]:
    port = free_port()
    env = gateway_env(home, args.base, ENGINE)
    configs = [0, *args.counts]
    runs: list[Run] = []
    print("starting the gateway ...", flush=True)
    with serving("gateway", gateway_command(port), env, port, log) as (url, pid):
        # Warm-up: every adapter read from disk into the host cache once, and the engine's
        # first-request costs paid, before anything is timed.
        wall, results = asyncio.run(
            _closed_loop(url, [args.base, *names], len(names) + 1, args.concurrency, 2)
        )
        failed = [error for ok, _, _, error in results if not ok]
        if failed:
            raise RuntimeError(f"warm-up: {len(failed)} requests failed, first: {failed[0]}")
        print(f"  warm-up: {len(names)} adapters and the base model in {wall:.1f} s", flush=True)
        for r in range(args.rounds):
            for adapters in configs if r % 2 == 0 else reversed(configs):
                models = names[:adapters] or [args.base]
                runs.append(_gateway_run(url, pid, models, adapters, r, args))
    return runs


# ----------------------------------------------------------------------------- naive side


def _naive_side(
    base_path: Path, adapters: dict[str, Path], dtype: str, args: argparse.Namespace
) -> Run:
    """The naive server: one PEFT model, `set_adapter` + greedy `generate` per request."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    names = list(adapters)[: args.naive_adapters]
    print(f"naive: transformers + PEFT, {len(names)} adapters, {dtype} ...", flush=True)
    tokenizer = AutoTokenizer.from_pretrained(base_path)
    base = AutoModelForCausalLM.from_pretrained(base_path, dtype=getattr(torch, dtype))
    model = PeftModel.from_pretrained(base, str(adapters[names[0]]), adapter_name=names[0])
    for name in names[1:]:
        model.load_adapter(str(adapters[name]), adapter_name=name)
    model.eval()

    def generate(i: int, max_tokens: int) -> tuple[int, float]:
        name, messages = request_for(i, names, MANY_PROMPTS)
        started = time.perf_counter()
        model.set_adapter(name)
        inputs: Any = tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
        )
        with torch.inference_mode():
            out = model.generate(
                **inputs,
                max_new_tokens=max_tokens,
                min_new_tokens=max_tokens,  # as ignore_eos: exactly max_tokens tokens
                do_sample=False,
                pad_token_id=tokenizer.pad_token_id,
            )
        tokens = int(out.shape[1] - inputs["input_ids"].shape[1])
        return tokens, time.perf_counter() - started

    generate(0, 2)  # first-call costs out of the figure, as the gateway's warm-up does
    latencies, tokens = [], 0
    cpu_before = time.process_time()
    deadline = time.monotonic() + args.naive_budget_s
    for i in range(args.naive_requests):
        n, seconds = generate(i, args.max_tokens)
        latencies.append(seconds)
        tokens += n
        if time.monotonic() > deadline:
            print(f"  naive: time budget spent after {i + 1} requests", flush=True)
            break
    run = Run(
        config=_naive_name(len(names)),
        adapters=len(names),
        round=0,
        wall_s=sum(latencies),
        requests=len(latencies),
        errors=0,
        completion_tokens=tokens,
        latency_ms=[1000 * s for s in latencies],
        load_avg_1m=os.getloadavg()[0],
        cpu_s=time.process_time() - cpu_before,
    )
    _print_run(run)
    return run


# ----------------------------------------------------------------------------- main


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", default=DEFAULT_BASE, help="registered base model id")
    parser.add_argument(
        "--counts",
        type=parse_counts,
        default=[1, 4, 16, 64],
        help="comma list: adapters in each mixed workload (the base model alone always runs)",
    )
    parser.add_argument("--requests", type=int, default=128, help="requests per configuration")
    parser.add_argument("--concurrency", type=int, default=16, help="requests in flight")
    parser.add_argument("--max-tokens", type=int, default=64, help="output tokens per request")
    parser.add_argument("--rounds", type=int, default=1, help="passes over the configurations")
    parser.add_argument("--max-loras", type=int, default=4, help="engine slots for adapters")
    parser.add_argument(
        "--naive-adapters", type=int, default=16, help="adapters of the naive side's mix"
    )
    parser.add_argument(
        "--naive-requests", type=int, default=16, help="naive requests measured (0: skip it)"
    )
    parser.add_argument(
        "--naive-budget-s", type=float, default=300.0, help="stop the naive side after this"
    )
    parser.add_argument("--skip-gateway", action="store_true", help="the naive side only")
    parser.add_argument("--out", type=Path, default=Path("many_adapters.json"))
    args = parser.parse_args(argv)
    for name in ("requests", "concurrency", "max_tokens", "rounds", "max_loras", "naive_adapters"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.naive_requests < 0 or args.naive_budget_s <= 0:
        parser.error("--naive-requests must be >= 0 and --naive-budget-s > 0")
    if args.skip_gateway and not args.naive_requests:
        parser.error("--skip-gateway with --naive-requests 0 measures nothing")
    return args


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    from adapters_store.hardware import engine_dtype

    dtype = engine_dtype("auto")
    n_published = max(*args.counts, args.naive_adapters if args.naive_requests else 0)
    ENGINE.update(
        dtype=dtype, max_loras=args.max_loras, max_cpu_loras=max(64, n_published, args.max_loras)
    )
    if args.requests < 2 * max(args.counts):
        print(f"note: {args.requests} requests hit some of {max(args.counts)} adapters once only")

    runs: list[Run] = []
    load_before = os.getloadavg()
    fast_lora = None
    with tempfile.TemporaryDirectory(prefix="tunegate-bench-") as tmp:
        home = Path(tmp) / "home"
        prepare_home(home)
        names = [f"many-a{i}" for i in range(n_published)]
        base_path, adapters = publish_random_adapters(home, args.base, names, ADAPTER_RANK)
        log = Path(tmp) / "server.log"
        if not args.skip_gateway:
            try:
                runs += _gateway_side(home, names, args, log)
            finally:
                text = log.read_text(errors="replace") if log.exists() else ""
                fast_lora = "tunegate fast LoRA ops active" in text
                with contextlib.suppress(OSError):
                    args.out.with_suffix(".log").write_text(text)
        if args.naive_requests:
            runs.append(_naive_side(base_path, adapters, dtype, args))

    by_config: dict[str, list[Run]] = {}
    for run in runs:
        by_config.setdefault(run.config, []).append(run)
    summaries = relative_to_base({name: summarize(rs) for name, rs in by_config.items()})
    ratio = speedup(summaries, args.naive_adapters)
    naive = summaries.get(_naive_name(args.naive_adapters))
    result = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "base": args.base,
        "dtype": dtype,
        "adapter_rank": ADAPTER_RANK,
        "counts": args.counts,
        "requests": args.requests,
        "concurrency": args.concurrency,
        "max_tokens": args.max_tokens,
        "rounds": args.rounds,
        "engine": ENGINE,
        "fast_lora_plugin_active": fast_lora,
        "naive": {
            "adapters": args.naive_adapters,
            "requests_measured": naive["requests"] if naive else 0,
            # What the naive way would need for one configuration's full request count.
            "seconds_for_all_requests": (
                args.requests / naive["requests_per_s"] if naive else None
            ),
        },
        "speedup_vs_naive": ratio,
        "cpu_count": os.cpu_count(),
        "load_avg_before": load_before,
        "load_avg_after": os.getloadavg(),
        "summary": summaries,
        "runs": [asdict(r) for r in runs],
    }
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(table(summaries))
    if ratio is not None:
        print(
            f"gateway / naive at {args.naive_adapters} adapters: {ratio:.1f}x requests/s "
            f"(goal >= 10x; naive measured on {naive['requests'] if naive else 0} requests)"
        )
    print(f"dtype {dtype}; load average before {load_before}, after {os.getloadavg()}")
    print(f"wrote {args.out}")
    return 0 if not any(r.errors for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
