"""Benchmark of the fast CPU LoRA ops: vLLM's own punica ops vs tunegate's, side by side.

    .venv/bin/python loadtests/bench/fast_lora.py [--out FILE] [--rounds N] [--skip-micro]

Two parts, in one run so that both sides see the same machine load:

1. Micro-benchmarks per op at the default model's module shapes: vLLM's torch ops
   (`vllm.lora.ops.torch_ops`) against what `vllm.lora.punica_wrapper.punica_cpu` calls once
   vLLM has loaded its general plugins, i.e. through the same entry point the engine uses.
2. Offline vLLM engines on the default model, each in its own process and all of them up at
   once: the base model with LoRA disabled, then LoRA enabled with the plugin off (vLLM's
   ops) and on. Workloads: prefill-heavy (64 short chat prompts, 8 output tokens) and
   decode-heavy (32 prompts x 64 tokens), each through the base model, one adapter, and four
   adapters round-robin. The engines take turns on each workload and mix, round after round
   (their order rotating), so a ratio compares runs seconds apart; the ratios reported are
   medians of the per-round ratios. One run of one engine varies by +-15% on a shared
   2-core host; the engines idle between their turns (vLLM's workers stop spinning after 1 s).

Prints a table and writes JSON (load average included: the machine is shared).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

__all__ = ["main"]

DEFAULT_BASE = "smollm2-135m-instruct"
SWITCH = "TUNEGATE_GATEWAY_FAST_LORA"
ADAPTER_RANK = 16
# Engine settings mirror the gateway's defaults (gateway.engine.*), so the figures are what
# the gateway would see.
ENGINE_ARGS: dict[str, Any] = {
    "max_model_len": 2048,
    "max_num_seqs": 64,
    "seed": 0,
    # vLLM runs LoRA engines eagerly on the CPU (it turns compilation off); the base engine
    # runs the same way so the comparison isolates the LoRA ops (and skips minutes of
    # torch.compile at start-up on this machine).
    "enforce_eager": True,
    # Every workload repeats the same prompts; a prefix-cache hit would skip their prefill.
    "enable_prefix_caching": False,
}
LORA_ARGS: dict[str, Any] = {"max_loras": 4, "max_cpu_loras": 16, "max_lora_rank": 64}


@dataclass(frozen=True)
class Workload:
    name: str
    prompts: int
    max_tokens: int


WORKLOADS = (Workload("prefill-heavy", 64, 8), Workload("decode-heavy", 32, 64))
# (label, adapters used round-robin; 0 = the base model through the same engine)
MIXES = (("base", 0), ("1 adapter", 1), ("4 adapters", 4))
# (label, LoRA enabled, value of the plugin switch)
ENGINES = (("base model", False, "0"), ("vLLM ops", True, "0"), ("fast ops", True, "1"))


# ----------------------------------------------------------------------------- prompts


_TOPICS = (
    ("my bill", "charged twice for the same month", "billing"),
    ("the internet", "keeps dropping every evening since Tuesday", "outage"),
    ("my new phone", "will not activate the SIM card you sent", "device"),
    ("my contract", "should move to the cheaper family plan", "plan"),
    ("the router", "shows a red light and no connection", "outage"),
    ("roaming", "cost me 40 euros in Spain although I had the travel option", "billing"),
)
_OPENERS = ("Hello,", "Hi there.", "Good morning,", "Dear support,", "Hey,")
_DETAILS = (
    "I have been a customer for six years.",
    "My account number is 4471-2290.",
    "I already restarted everything twice.",
    "Nobody answered my last email.",
    "Please call me back after 5 pm.",
    "This is the third time this happens.",
)
SYSTEM = (
    "You route customer support tickets for a telecom operator. Reply with exactly one "
    "label: billing, outage, device, plan or other."
)


def chat_prompts(count: int, seed: int = 0) -> list[list[dict[str, str]]]:
    """Short, varied support tickets (about 90 tokens each with the chat template)."""
    rng = random.Random(seed)
    conversations = []
    for _ in range(count):
        subject, problem, _label = rng.choice(_TOPICS)
        details = rng.sample(_DETAILS, rng.randint(1, 3))
        text = f"{rng.choice(_OPENERS)} {subject} {problem}. {' '.join(details)}"
        conversations.append(
            [{"role": "system", "content": SYSTEM}, {"role": "user", "content": text}]
        )
    return conversations


# ----------------------------------------------------------------------------- engine side


def serve_engine(spec: dict[str, Any], commands: Any, results: Any) -> None:
    """One engine in this process, running the workload x mix runs it is sent, one JSON line
    each way: `{"workload": ..., "mix": ...}` in, the run's figures out ("ready" first)."""
    from vllm import LLM, SamplingParams
    from vllm.lora.request import LoRARequest

    lora = spec["lora"]
    llm = LLM(
        spec["model"],
        dtype=spec["dtype"],
        enable_lora=lora,
        **ENGINE_ARGS,
        **(LORA_ARGS if lora else {}),
    )
    tokenizer = llm.get_tokenizer()
    adapters = [LoRARequest(f"bench-{i}", i + 1, path) for i, path in enumerate(spec["adapters"])]
    mix_sizes = dict(MIXES)
    workloads = {w.name: w for w in WORKLOADS}

    def requests(count: int, n_adapters: int) -> list[LoRARequest] | None:
        return [adapters[i % n_adapters] for i in range(count)] if n_adapters else None

    # Load every adapter and touch every code path once before timing anything.
    warm = SamplingParams(max_tokens=4, temperature=0.0, ignore_eos=True)
    llm.generate(["Hello"] * 4, warm, lora_request=requests(4, 4 if lora else 0), use_tqdm=False)
    prompts = {
        w.name: [
            str(tokenizer.apply_chat_template(c, tokenize=False, add_generation_prompt=True))  # type: ignore[arg-type]
            for c in chat_prompts(w.prompts)
        ]
        for w in WORKLOADS
    }

    def reply(message: dict[str, Any]) -> None:
        results.write(json.dumps(message) + "\n")
        results.flush()

    reply({"ready": True})
    for line in commands:
        command = json.loads(line)
        workload, mix = workloads[command["workload"]], command["mix"]
        params = SamplingParams(max_tokens=workload.max_tokens, temperature=0.0, ignore_eos=True)
        batch = prompts[workload.name]
        started = time.perf_counter()
        outputs = llm.generate(
            batch, params, lora_request=requests(len(batch), mix_sizes[mix]), use_tqdm=False
        )
        elapsed = time.perf_counter() - started
        reply(
            {
                "workload": workload.name,
                "mix": mix,
                "seconds": elapsed,
                "prompt_tokens": sum(len(o.prompt_token_ids or ()) for o in outputs),
                "output_tokens": sum(len(o.outputs[0].token_ids) for o in outputs),
                "token_ids": [list(o.outputs[0].token_ids) for o in outputs],
                "load_avg_1m": os.getloadavg()[0],
            }
        )


# ----------------------------------------------------------------------------- micro side

# The default model's LoRA modules: (name, input width, output slices).
MODULES = (
    ("qkv_proj", 576, (576, 192, 192)),
    ("gate_up_proj", 576, (1536, 1536)),
    ("down_proj", 1536, (576,)),
)
TOKENS = (1, 8, 32, 256, 2048)
SLOTS = LORA_ARGS["max_loras"]


def _timeit(fn: Callable[[], None], budget_s: float) -> float:
    """Median seconds per call over at least 3 calls or `budget_s` of calls."""
    fn()
    times: list[float] = []
    deadline = time.perf_counter() + budget_s
    while len(times) < 3 or time.perf_counter() < deadline:
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return sorted(times)[len(times) // 2]


@dataclass
class _OpCase:
    """One module's LoRA inputs for one batch: tokens as decode (bgmv) or prefill (sgmv)."""

    prefill: bool
    x: Any
    lora_a: Any
    lora_b: list[Any]
    slices: tuple[int, ...]
    buffer: Any
    out: Any
    token_slots: Any
    meta: tuple[Any, ...]

    def shrink(self, ops: Any) -> None:
        if self.prefill:
            ops.sgmv_shrink(self.x, self.lora_a, self.buffer, *self.meta, 1.0)
        else:
            ops.bgmv_shrink(self.x, self.lora_a, self.buffer, self.token_slots, 1.0)

    def expand_slice(self, ops: Any) -> None:
        offset = 0
        for weights, size in zip(self.lora_b, self.slices, strict=True):
            if self.prefill:
                ops.sgmv_expand_slice(
                    self.buffer, weights, self.out, *self.meta, offset, size, True
                )
            else:
                ops.bgmv_expand_slice(
                    self.buffer, weights, self.out, self.token_slots, offset, size, True
                )
            offset += size


def _op_case(
    module: tuple[str, int, tuple[int, ...]],
    tokens: int,
    n_adapters: int,
    max_rank: int,
    dtype: Any,
    gen: Any,
) -> _OpCase:
    import torch

    _, width, slices = module
    # Decode batches interleave adapters token by token; prefill keeps each request's
    # tokens together (8 requests, spread over the adapters).
    prefill = tokens >= 256
    if prefill:
        token_slots = torch.arange(8).repeat_interleave(tokens // 8) % n_adapters
    else:
        token_slots = torch.arange(tokens) % n_adapters
    seg_slots, lengths = torch.unique_consecutive(token_slots, return_counts=True)
    starts = torch.cumsum(lengths, 0) - lengths
    return _OpCase(
        prefill=prefill,
        x=torch.randn(tokens, width, generator=gen).to(dtype),
        lora_a=torch.randn(SLOTS, 1, max_rank, width, generator=gen).to(dtype),
        lora_b=[torch.randn(SLOTS, 1, s, max_rank, generator=gen).to(dtype) for s in slices],
        slices=slices,
        # The engine shrinks into a float32 buffer and expands into the model's activations.
        buffer=torch.zeros(tokens, max_rank),
        out=torch.zeros(tokens, sum(slices), dtype=dtype),
        token_slots=token_slots,
        meta=(starts, lengths, seg_slots, len(lengths), int(lengths.max()), tokens),
    )


def run_micro(budget_s: float, max_rank: int, threads: int, dtype: str) -> list[dict[str, Any]]:
    """Each op at the default model's shapes, for several token counts and adapter mixes."""
    import torch
    import vllm.plugins
    from vllm.lora.ops import torch_ops as vllm_ops
    from vllm.lora.punica_wrapper import punica_cpu

    torch.set_num_threads(threads)
    vllm.plugins.load_general_plugins()
    if punica_cpu.bgmv_shrink is vllm_ops.bgmv_shrink:
        raise RuntimeError(
            f"the fast LoRA plugin did not activate (is {SWITCH}=0 set, or the package not "
            "installed with `pip install -e .`?)"
        )
    gen = torch.Generator().manual_seed(0)
    rows = []
    for tokens in TOKENS:
        for n_adapters in (1, 4):
            for module in MODULES:
                case = _op_case(module, tokens, n_adapters, max_rank, getattr(torch, dtype), gen)
                kind = "sgmv" if case.prefill else "bgmv"
                for op_name in ("shrink", "expand_slice"):
                    call: Callable[[Any], None] = getattr(case, op_name)
                    vllm_s = _timeit(functools.partial(call, vllm_ops), budget_s)
                    fast_s = _timeit(functools.partial(call, punica_cpu), budget_s)
                    row = {
                        "op": f"{kind}_{op_name}",
                        "module": module[0],
                        "tokens": tokens,
                        "adapters": n_adapters,
                        "vllm_ms": vllm_s * 1e3,
                        "fast_ms": fast_s * 1e3,
                        "speedup": vllm_s / fast_s,
                    }
                    rows.append(row)
                    print(
                        f"  {row['op']:17} {module[0]:12} {tokens:5} tok {n_adapters} ad: "
                        f"vLLM {row['vllm_ms']:9.3f} ms  fast {row['fast_ms']:8.3f} ms  "
                        f"x{row['speedup']:6.1f}",
                        file=sys.stderr,
                        flush=True,
                    )
    return rows


# ----------------------------------------------------------------------------- report


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def _runs(engine: dict[str, Any] | None, workload: str, mix: str) -> dict[int, dict[str, Any]]:
    """The engine's runs of one workload and mix, by round."""
    if engine is None:
        return {}
    return {r["round"]: r for r in engine["runs"] if r["workload"] == workload and r["mix"] == mix}


def _ratio(numerators: dict[int, dict[str, Any]], denominators: dict[int, dict[str, Any]]) -> Any:
    """Median over the rounds both ran of seconds[denominator side] / seconds[this side],
    i.e. this side's throughput relative to the other's, round by round."""
    shared = sorted(set(numerators) & set(denominators))
    return _median([denominators[r]["seconds"] / numerators[r]["seconds"] for r in shared])


def summarise(engines: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per workload x mix: median seconds and throughput per engine, and the
    medians of the per-round ratios to the base model and between the two LoRA engines."""
    rows = []
    for workload in WORKLOADS:
        base = _runs(engines.get("base model"), workload.name, "base")
        for mix, _ in MIXES:
            row: dict[str, Any] = {"workload": workload.name, "mix": mix}
            for engine, _, _ in ENGINES:
                runs = _runs(engines.get(engine), workload.name, mix)
                if not runs:
                    continue
                seconds = statistics.median(r["seconds"] for r in runs.values())
                first = runs[min(runs)]
                total = first["prompt_tokens"] + first["output_tokens"]
                row[engine] = {
                    "rounds": len(runs),
                    "seconds": seconds,
                    "seconds_each_round": [runs[r]["seconds"] for r in sorted(runs)],
                    "output_tok_s": first["output_tokens"] / seconds,
                    "total_tok_s": total / seconds,
                    "vs_base_model": _ratio(runs, base),
                }
            stock = _runs(engines.get("vLLM ops"), workload.name, mix)
            fast = _runs(engines.get("fast ops"), workload.name, mix)
            if stock and fast:
                row["fast_vs_vllm_speedup"] = _ratio(fast, stock)
                both = sorted(set(stock) & set(fast))
                if both:
                    same = stock[both[0]]["token_ids"] == fast[both[0]]["token_ids"]
                    row["same_greedy_tokens"] = same
            rows.append(row)
    return rows


def print_table(rows: list[dict[str, Any]]) -> None:
    print("median s, total tok/s, and the median of the per-round throughput ratios")
    head = f"{'workload':14} {'mix':10} " + " ".join(f"{e:>24}" for e, _, _ in ENGINES)
    print(head + f" {'fast/vLLM':>9} {'same':>5}")
    print(" " * 26 + " ".join(f"{'n   s  tok/s  x base':>24}" for _ in ENGINES))
    for row in rows:
        cells = []
        for engine, _, _ in ENGINES:
            cell = row.get(engine)
            if cell is None:
                cells.append("-")
                continue
            ratio = cell["vs_base_model"]
            ratio_text = f"{ratio:5.2f}" if ratio is not None else "    -"
            cells.append(
                f"{cell['rounds']} {cell['seconds']:6.2f} {cell['total_tok_s']:6.0f} {ratio_text}"
            )
        speedup = row.get("fast_vs_vllm_speedup")
        same = row.get("same_greedy_tokens")
        print(
            f"{row['workload']:14} {row['mix']:10} "
            + " ".join(f"{c:>24}" for c in cells)
            + (f" {speedup:9.2f} {'yes' if same else 'NO':>5}" if speedup else "")
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--out", type=Path, help="JSON file to write (default: under the home's runs/bench/)"
    )
    parser.add_argument("--base", default=DEFAULT_BASE, help="registered base model id")
    parser.add_argument("--skip-engines", action="store_true", help="micro-benchmarks only")
    parser.add_argument("--skip-micro", action="store_true", help="engine workloads only")
    parser.add_argument("--micro-budget", type=float, default=0.3, help="seconds per op timing")
    # vLLM's CPU worker computes with one torch thread per core it keeps (on 2 cores it
    # reserves one for itself and serves with 1), so the ops are timed the same way.
    parser.add_argument("--micro-threads", type=int, default=1, help="torch threads for the ops")
    parser.add_argument(
        "--engines",
        default=",".join(e for e, _, _ in ENGINES),
        help="comma-separated subset of the engines to run",
    )
    parser.add_argument(
        "--rounds", type=int, default=3, help="turns of every engine on every workload and mix"
    )
    # vLLM's own ops are several times slower (minutes a round); the question for them is
    # only whether the plugin is ever slower, which one round answers.
    parser.add_argument(
        "--stock-rounds", type=int, default=1, help="rounds that include the 'vLLM ops' engine"
    )
    parser.add_argument(
        "--dtype",
        default="auto",
        choices=("auto", "bfloat16", "float32"),
        help="model dtype (auto: the gateway's choice here, bf16 only where it is native)",
    )
    parser.add_argument("--engine-run", help=argparse.SUPPRESS)
    parser.add_argument("--result-fd", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.stock_rounds < 0:
        parser.error("--rounds must be at least 1 and --stock-rounds at least 0")

    if args.engine_run:  # child process: one engine, commands on stdin
        spec = json.loads(Path(args.engine_run).read_text())
        with os.fdopen(args.result_fd, "w") as results:
            serve_engine(spec, sys.stdin, results)
        return 0

    from adapters_store.bases import BaseRegistry
    from adapters_store.config import default_home
    from adapters_store.hardware import engine_dtype
    from adapters_store.testing import write_lora

    home = default_home()
    base = BaseRegistry(home / "models").get(args.base)
    args.dtype = engine_dtype(args.dtype)
    out_path = (
        args.out or home / "runs" / "bench" / f"fast_lora-{datetime.now(UTC):%Y%m%dT%H%M%SZ}.json"
    )
    report: dict[str, Any] = {
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "model": base.id,
        "cpus": os.cpu_count(),
        "load_avg_start": os.getloadavg(),
        "dtype": args.dtype,
        "engine_args": {**ENGINE_ARGS, **LORA_ARGS, "adapter_rank": ADAPTER_RANK},
        "workloads": [asdict(w) for w in WORKLOADS],
        "rounds": args.rounds,
        "stock_rounds": args.stock_rounds,
    }
    if not args.skip_micro:
        print(f"micro-benchmarks ({args.dtype}): vLLM's torch ops vs the plugin's", file=sys.stderr)
        report["micro_threads"] = args.micro_threads
        report["micro"] = run_micro(
            args.micro_budget, LORA_ARGS["max_lora_rank"], args.micro_threads, args.dtype
        )
    if not args.skip_engines:
        chosen = args.engines.split(",")
        unknown = set(chosen) - {e for e, _, _ in ENGINES}
        if unknown:
            parser.error(f"unknown engine(s): {', '.join(sorted(unknown))}")
        with tempfile.TemporaryDirectory(prefix="fast-lora-bench-") as tmp:
            adapters = [
                str(write_lora(Path(tmp) / f"adapter{i}", base, r=ADAPTER_RANK, seed=i, scale=0.02))
                for i in range(4)
            ]
            with contextlib.ExitStack() as stack:
                engines: dict[str, _Engine] = {}
                for label, lora, switch in ENGINES:
                    if label not in chosen:
                        continue
                    print(f"starting engine: {label}", file=sys.stderr, flush=True)
                    spec = {"model": str(base.path), "dtype": args.dtype, "lora": lora}
                    engines[label] = stack.enter_context(
                        _Engine(tmp, label, spec, switch, adapters)
                    )
                runs = _play_rounds(engines, args.rounds, args.stock_rounds)
        report["engines"] = {
            label: {"start_s": engine.start_s, "runs": runs[label]}
            for label, engine in engines.items()
        }
        report["summary"] = summarise(report["engines"])
        print_table(report["summary"])
    report["load_avg_end"] = os.getloadavg()
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(report, indent=1) + "\n")
    print(f"load average: start {report['load_avg_start']}, end {report['load_avg_end']}")
    print(f"wrote {out_path}")
    return 0


def _play_rounds(
    engines: dict[str, _Engine], rounds: int, stock_rounds: int
) -> dict[str, list[dict[str, Any]]]:
    """Every engine takes its turn on each workload and mix it can run, round after round,
    the engines' order rotating so that none is always first after the others' turns."""
    runs: dict[str, list[dict[str, Any]]] = {label: [] for label in engines}
    lora = {label for label, has_lora, _ in ENGINES if has_lora}
    for round_ in range(rounds):
        order = [e for e in engines if e != "vLLM ops" or round_ < stock_rounds]
        turn = order[round_ % len(order) :] + order[: round_ % len(order)]
        for workload in WORKLOADS:
            for mix, n_adapters in MIXES:
                for label in turn:
                    if n_adapters and label not in lora:
                        continue
                    result = engines[label].run(workload.name, mix)
                    result["round"] = round_
                    runs[label].append(result)
                    print(
                        f"  round {round_ + 1}/{rounds} {workload.name:14} {mix:10} "
                        f"{label:10} {result['seconds']:7.2f} s "
                        f"(load {result['load_avg_1m']:.1f})",
                        file=sys.stderr,
                        flush=True,
                    )
    return runs


class _Engine:
    """One engine (`serve_engine`) in a child process of its own session, with the plugin
    switch set; started on entering, stopped (with vLLM's processes) on leaving."""

    def __init__(
        self, tmp: str, label: str, spec: dict[str, Any], switch: str, adapters: list[str]
    ) -> None:
        slug = label.replace(" ", "-")
        self.label = label
        self.spec_path = Path(tmp) / f"{slug}.json"
        self.spec_path.write_text(json.dumps({**spec, "adapters": adapters}))
        self.env = {**os.environ, SWITCH: switch}
        self.env.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
        # One prefill step of vLLM's stock LoRA ops in bf16 on a busy 2-core machine can
        # take longer than vLLM's default 300 s step timeout.
        self.env.setdefault("VLLM_EXECUTE_MODEL_TIMEOUT_SECONDS", "3600")
        self.start_s = 0.0

    def __enter__(self) -> _Engine:
        started = time.perf_counter()
        read_fd, write_fd = os.pipe()
        # Its own session, so that a failure or Ctrl-C here also ends vLLM's processes.
        self.proc = subprocess.Popen(
            [
                sys.executable,
                __file__,
                "--engine-run",
                str(self.spec_path),
                "--result-fd",
                str(write_fd),
            ],
            env=self.env,
            stdin=subprocess.PIPE,
            text=True,
            pass_fds=(write_fd,),
            start_new_session=True,
        )
        os.close(write_fd)
        self.results = os.fdopen(read_fd)
        try:
            self._receive()  # "ready"
        except BaseException:
            self.__exit__(None, None, None)
            raise
        self.start_s = time.perf_counter() - started
        return self

    def run(self, workload: str, mix: str) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"workload": workload, "mix": mix}) + "\n")
        self.proc.stdin.flush()
        return self._receive()

    def _receive(self) -> dict[str, Any]:
        line = self.results.readline()
        if not line:
            status = self.proc.wait()
            raise RuntimeError(f"engine {self.label!r} ended (exit status {status})")
        return json.loads(line)  # type: ignore[no-any-return]

    def __exit__(self, *exc: object) -> None:
        with contextlib.suppress(OSError):
            if self.proc.stdin is not None:
                self.proc.stdin.close()  # the engine's loop ends, the process exits
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=30)
        _end_session(self.proc)
        self.results.close()


def _end_session(proc: subprocess.Popen[Any]) -> None:
    """Stop `proc` and whatever it spawned in its session (vLLM's engine and workers)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=10)


if __name__ == "__main__":
    sys.exit(main())
