"""Training throughput of `tunegate tune` against the plain ways to train the same LoRA.

    .venv/bin/python loadtests/bench/tuning_throughput.py [--out FILE] [--steps 30] [--passes 2]

Three trainers, each in a fresh process, on the same data with the same settings (the
telecom-routing LoRA recipe: rank, alpha, targets, batch size, max length, learning rate and
schedule, precision, seed, steps, CPU threads):

- `tunegate`: `tunegate tune recipes/telecom-routing/lora.yaml` with evaluation and publishing
  off; its figures come from the run's `run.json`.
- `plain`: transformers' `Trainer` + PEFT `get_peft_model`, the model's own loss (labels),
  `DataCollatorForSeq2Seq`: what the transformers/PEFT docs show.
- `trl`: TRL's `SFTTrainer` with a PEFT `LoraConfig` (when TRL is installed).

The data is one `tunegate data demo telecom-routing` file, encoded once by the tuner's own
encoder (chat template, loss on the assistant's label and `<|im_end|>` only), so every trainer
sees the same token ids and the same labels. Tokens/s counts the same thing for each: the real
(non-padding) tokens of every training batch, over the seconds of `trainer.train()`. Trainers
run in turn, `--passes` times (A/B/C/A/B/C), so drift in the shared machine's load hits all
alike; the medians and the ratios tunegate / peer are the figures. Writes JSON with every run
and the load average.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from loadtests.bench.common import DEFAULT_BASE, finish, prepare_home

__all__ = [
    "SYSTEMS",
    "Run",
    "main",
    "parse_systems",
    "recipe_overrides",
    "run_from_record",
    "schedule",
    "summarize",
    "table",
]

REPO = Path(__file__).resolve().parents[2]
RECIPE = REPO / "recipes" / "telecom-routing" / "lora.yaml"
SYSTEMS = ("tunegate", "plain", "trl")
RESULT_PREFIX = "TUNING_RESULT "  # a worker's one result line on stdout


@dataclass(frozen=True)
class Run:
    system: str
    run: int  # pass index
    steps: int
    train_tokens: int  # real (non-padding) tokens of the training batches
    train_seconds: float  # trainer.train()
    process_seconds: float  # the whole process: imports, model load, data, training
    final_loss: float | None
    threads: int
    load_avg_1m: float

    @property
    def tokens_per_s(self) -> float:
        return self.train_tokens / self.train_seconds


# ----------------------------------------------------------------------------- pure parts


def parse_systems(text: str) -> list[str]:
    names = [s.strip() for s in text.split(",") if s.strip()]
    unknown = [s for s in names if s not in SYSTEMS]
    if not names or unknown or len(set(names)) != len(names):
        raise argparse.ArgumentTypeError(
            f"want distinct names from {', '.join(SYSTEMS)}, got {text!r}"
        )
    return names


def schedule(systems: list[str], passes: int) -> list[tuple[int, str]]:
    """(pass, system) in the order they run: every system once per pass, A/B/C/A/B/C."""
    return [(p, s) for p in range(passes) for s in systems]


def recipe_overrides(train_file: Path, steps: int, precision: str) -> list[str]:
    """`key=value` overrides that turn the shipped recipe into a pure training run of `steps`
    steps on `train_file` (no validation, no checkpoint, no evaluation, no publish)."""
    return [
        f"train_file={train_file}",
        f"max_steps={steps}",
        f"precision={precision}",
        f"save_steps={steps + 1}",
        "eval_valid=false",
        "evaluate=false",
        "publish=false",
    ]


def run_from_record(system: str, run: int, record: dict[str, Any], load: float) -> Run:
    """A `Run` from a worker's result line or tunegate's `run.json`; refuses a record that
    did not train."""
    steps, tokens, seconds = (
        int(record["steps"]),
        int(record["train_tokens"]),
        float(record["train_seconds"]),
    )
    if steps < 1 or tokens < 1 or seconds <= 0:
        raise ValueError(f"{system} run {run} did not train: {record}")
    loss = record.get("train_loss")
    return Run(
        system=system,
        run=run,
        steps=steps,
        train_tokens=tokens,
        train_seconds=seconds,
        process_seconds=float(record.get("process_seconds", 0.0)),
        final_loss=float(loss) if loss is not None else None,
        threads=int(record["threads"]),
        load_avg_1m=load,
    )


def summarize(runs: list[Run]) -> dict[str, Any]:
    """Per system, medians over its runs; ratios tunegate / system where tunegate ran."""
    out: dict[str, Any] = {}
    for system in dict.fromkeys(r.system for r in runs):
        rs = [r for r in runs if r.system == system]
        out[system] = {
            "runs": len(rs),
            "tokens_per_s": statistics.median(r.tokens_per_s for r in rs),
            "seconds_per_step": statistics.median(r.train_seconds / r.steps for r in rs),
            "tokens_per_step": statistics.median(r.train_tokens / r.steps for r in rs),
            "process_seconds": statistics.median(r.process_seconds for r in rs),
            "final_loss": [r.final_loss for r in rs],
            "load_avg_1m": [r.load_avg_1m for r in rs],
        }
    if "tunegate" in out:
        ours = out["tunegate"]["tokens_per_s"]
        for s in out.values():
            s["tunegate_speedup"] = ours / s["tokens_per_s"]
    return out


def table(summary: dict[str, Any]) -> str:
    """The summary as a Markdown table (what the README keeps)."""
    lines = [
        "| trainer | tokens/s | s/step | tokens/step | tunegate ÷ this | load avg (1 min) |",
        "|---|---|---|---|---|---|",
    ]
    for system, s in summary.items():
        ratio = s.get("tunegate_speedup")
        loads = ", ".join(f"{v:.1f}" for v in s["load_avg_1m"])
        lines.append(
            f"| {system} | {s['tokens_per_s']:.0f} | {s['seconds_per_step']:.2f} "
            f"| {s['tokens_per_step']:.0f} | {'-' if ratio is None else f'{ratio:.2f}'} "
            f"| {loads} |"
        )
    return "\n".join(lines)


# ----------------------------------------------------------------------------- workers


def _worker(system: str, spec: dict[str, Any]) -> dict[str, Any]:
    """Train `system` ("plain" or "trl") as spec says; the record `run_from_record` reads."""
    started = time.perf_counter()
    import torch

    torch.set_num_threads(int(spec["threads"]))
    from adapters_store.bases import BaseRegistry
    from tuner.recipe import load_recipe
    from tuner.train import DataFiles, load_datasets

    recipe = load_recipe(Path(spec["recipe"]), spec["overrides"])
    base = BaseRegistry(Path(spec["models"])).get(recipe.base)
    # The tuner's encoder: the same token ids and labels as `tunegate tune` trains on.
    data = DataFiles(train=Path(recipe.train_file or ""), valid=None, test=None)
    tokenizer, rows, _ = load_datasets(recipe, base, data)

    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, TrainingArguments

    dtype = torch.bfloat16 if recipe.precision == "bf16" else torch.float32
    model = AutoModelForCausalLM.from_pretrained(base.path, dtype=dtype)
    lora = LoraConfig(
        r=recipe.lora_rank,
        lora_alpha=recipe.lora_alpha,
        lora_dropout=recipe.lora_dropout,
        target_modules=recipe.target_modules,
        bias="none",
        task_type="CAUSAL_LM",
    )
    common: dict[str, Any] = {
        "output_dir": spec["output_dir"],
        "per_device_train_batch_size": recipe.batch_size,
        "gradient_accumulation_steps": recipe.grad_accum,
        "learning_rate": recipe.lr,
        "lr_scheduler_type": recipe.lr_scheduler,
        "warmup_steps": recipe.warmup,
        "weight_decay": recipe.weight_decay,
        "max_steps": recipe.max_steps,
        "bf16": recipe.precision == "bf16",
        "use_cpu": not torch.cuda.is_available(),
        "seed": recipe.seed,
        "logging_steps": recipe.logging_steps,
        "save_strategy": "no",
        "dataloader_num_workers": 0,
        "report_to": "none",
    }
    if system == "plain":
        from peft import get_peft_model
        from transformers import DataCollatorForSeq2Seq, Trainer

        trainer = Trainer(
            model=get_peft_model(model, lora),
            args=TrainingArguments(**common, remove_unused_columns=False),
            train_dataset=rows,
            data_collator=DataCollatorForSeq2Seq(tokenizer, padding=True),
        )
    elif system == "trl":
        from datasets import Dataset
        from trl import SFTConfig, SFTTrainer

        trainer = SFTTrainer(
            model=model,
            # TRL turns gradient checkpointing on by default (memory for compute); the other
            # trainers keep activations, so this one does too.
            args=SFTConfig(**common, max_length=recipe.max_length, gradient_checkpointing=False),
            # Pre-tokenized with labels: TRL uses them as they are (no re-templating).
            train_dataset=Dataset.from_list(rows),
            processing_class=tokenizer,
            peft_config=lora,
        )
    else:
        raise ValueError(f"unknown worker system {system!r}")
    counter = _CountingCollator(trainer.data_collator)
    trainer.data_collator = counter
    t0 = time.perf_counter()
    output = trainer.train()
    seconds = time.perf_counter() - t0
    return {
        "steps": output.global_step,
        "train_tokens": counter.tokens,
        "train_seconds": seconds,
        "train_loss": output.training_loss,
        "threads": torch.get_num_threads(),
        "process_seconds": time.perf_counter() - started,
    }


class _CountingCollator:
    """Wraps a collator; counts the real tokens (attention mask) of every batch it makes,
    the same count tunegate's trainer keeps."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.tokens = 0

    def __call__(self, features: list[dict[str, Any]]) -> Any:
        batch = self.inner(features)
        self.tokens += int(batch["attention_mask"].sum())
        return batch


# ----------------------------------------------------------------------------- driver


def _run_tunegate(
    home: Path, overrides: list[str], threads: int, log: Path
) -> tuple[dict[str, Any], float]:
    env = {**os.environ, "TUNEGATE_HOME": str(home), "TUNEGATE_TUNER_THREADS": str(threads)}
    env.pop("TUNEGATE_CONFIG", None)
    before = set((home / "runs").glob("telecom-*"))
    started = time.perf_counter()
    cmd = [sys.executable, "-m", "tunegate", "tune", str(RECIPE), *overrides]
    _run_logged(cmd, env, log)
    seconds = time.perf_counter() - started
    (run_dir,) = set((home / "runs").glob("telecom-*")) - before
    record = json.loads((run_dir / "run.json").read_text())
    return {**record, "threads": threads, "process_seconds": seconds}, seconds


def _run_worker(system: str, spec: dict[str, Any], log: Path) -> tuple[dict[str, Any], float]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", system, "--spec"]
    started = time.perf_counter()
    out = _run_logged([*cmd, json.dumps(spec)], {**os.environ, "PYTHONPATH": str(REPO)}, log)
    line = next(x for x in reversed(out.splitlines()) if x.startswith(RESULT_PREFIX))
    return json.loads(line[len(RESULT_PREFIX) :]), time.perf_counter() - started


def _run_logged(cmd: list[str], env: dict[str, str], log: Path) -> str:
    proc = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, check=False)
    with log.open("a") as fh:
        fh.write(f"\n===== {' '.join(cmd)[:300]}\n{proc.stdout}\n{proc.stderr}\n")
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd[2:5]} failed ({proc.returncode}); see {log}")
    return proc.stdout


def _make_data(home: Path, log: Path) -> Path:
    """The training file, made the way a user makes it: `tunegate data demo`."""
    out = home / "demo-data"
    env = {**os.environ, "TUNEGATE_HOME": str(home)}
    _run_logged(
        [sys.executable, "-m", "tunegate", "data", "demo", "telecom-routing", "--out", str(out)],
        env,
        log,
    )
    return out / "train.jsonl"


def _trl_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("trl") is not None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=30, help="training steps per run")
    parser.add_argument("--passes", type=int, default=2, help="runs per trainer, alternated")
    parser.add_argument(
        "--systems",
        type=parse_systems,
        default=list(SYSTEMS),
        help=f"comma list of {', '.join(SYSTEMS)} (trl is skipped when not installed)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch CPU threads for every trainer (0: the idle cores when the bench starts)",
    )
    parser.add_argument(
        "--precision", default="auto", choices=("auto", "bf16", "fp32"), help="for every trainer"
    )
    parser.add_argument("--out", type=Path, default=Path("tuning_throughput.json"))
    parser.add_argument("--worker", choices=("plain", "trl"), help=argparse.SUPPRESS)
    parser.add_argument("--spec", type=json.loads, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(RESULT_PREFIX + json.dumps(_worker(args.worker, args.spec)), flush=True)
        return 0
    if args.steps < 1 or args.passes < 1 or args.threads < 0:
        parser.error("--steps and --passes must be >= 1, --threads >= 0")

    systems = list(args.systems)
    if "trl" in systems and not _trl_available():
        print("trl is not installed: skipping SFTTrainer", flush=True)
        systems.remove("trl")
    from tuner.hardware import auto_threads, resolve_precision

    precision = resolve_precision(args.precision)
    # One thread count for all, fixed at the start: tunegate would otherwise pick its own
    # per run from the load average, and a trainer with more threads is not a fair peer.
    threads = args.threads or auto_threads(os.cpu_count() or 1, os.getloadavg()[0])
    load_before = os.getloadavg()
    out_log = args.out.with_suffix(".log")
    out_log.unlink(missing_ok=True)
    runs: list[Run] = []
    with tempfile.TemporaryDirectory(prefix="tunegate-bench-tune-") as tmp:
        home = Path(tmp) / "home"
        models = prepare_home(home)
        train_file = _make_data(home, out_log)
        overrides = recipe_overrides(train_file, args.steps, precision)
        print(
            f"{args.steps} steps per run, {precision}, {threads} thread(s), order "
            f"{' '.join(s for _, s in schedule(systems, args.passes))}",
            flush=True,
        )
        for p, system in schedule(systems, args.passes):
            load = os.getloadavg()[0]
            if system == "tunegate":
                record, wall = _run_tunegate(home, overrides, threads, out_log)
            else:
                spec = {
                    "recipe": str(RECIPE),
                    "overrides": overrides,
                    "models": str(models),
                    "threads": threads,
                    "output_dir": str(Path(tmp) / f"{system}-{p}"),
                }
                record, wall = _run_worker(system, spec, out_log)
            run = run_from_record(system, p, record, max(load, os.getloadavg()[0]))
            runs.append(run)
            print(
                f"  {system:8} pass {p}: {run.tokens_per_s:6.1f} tok/s ({run.train_tokens} "
                f"tokens, {run.steps} steps in {run.train_seconds:.1f} s; process {wall:.0f} s; "
                f"loss {run.final_loss}; load {run.load_avg_1m:.2f})",
                flush=True,
            )
            # Each run takes minutes: keep what is measured if the bench is stopped.
            partial = {"complete": False, "runs": [asdict(r) for r in runs]}
            args.out.write_text(json.dumps(partial, indent=2) + "\n")

    summary = summarize(runs)
    result = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "complete": True,
        "base": DEFAULT_BASE,
        "recipe": str(RECIPE.relative_to(REPO)),
        "overrides": [o for o in overrides if not o.startswith("train_file=")],
        "precision": precision,
        "threads": threads,
        "steps": args.steps,
        "order": [s for _, s in schedule(systems, args.passes)],
        "load_avg_before": load_before,
        "summary": summary,
        "runs": [{**asdict(r), "tokens_per_s": r.tokens_per_s} for r in runs],
    }
    return finish(args.out, result, table(summary))


if __name__ == "__main__":
    sys.exit(main())
