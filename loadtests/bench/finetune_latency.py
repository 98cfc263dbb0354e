"""Time from `POST /v1/fine_tuning/jobs` to the first answer of the new model, end to end.

    .venv/bin/python loadtests/bench/finetune_latency.py [--base smollm2-135m-instruct]
        [--task telecom-routing] [--train 160] [--epochs 1] [--batch-size 8] [--out FILE]

Starts `tunegate serve` (which runs `tunegate worker`) in a throw-away home whose models/
links to the real home's base models, writes the task's demo data with `tunegate data demo`,
then drives everything with the `openai` client: upload, create the job, poll it, and ask
the `fine_tuned_model` one test prompt. Prints and writes the phases (from the job's events)
and the load average before and after: the machine is shared, so say so with the figure.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import openai

from loadtests.bench.common import free_port, prepare_home


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default="smollm2-135m-instruct")
    parser.add_argument("--task", default="telecom-routing")
    parser.add_argument("--train", type=int, default=160, help="training examples")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--out", type=Path, help="write the result as JSON here")
    args = parser.parse_args()

    home = Path(tempfile.mkdtemp(prefix="ft-latency-"))
    prepare_home(home)
    env = {
        **os.environ,
        "TUNEGATE_HOME": str(home),
        "TUNEGATE_DEFAULT_BASE": args.base,
        "TUNEGATE_GATEWAY_ENGINE_KV_CACHE_GIB": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "2"),
        "TUNEGATE_GATEWAY_ENGINE_MAX_LORA_RANK": "16",
    }
    env.pop("TUNEGATE_CONFIG", None)
    data = home / "data"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "tunegate",
            "data",
            "demo",
            args.task,
            "--out",
            str(data),
            "--train",
            str(args.train),
            "--valid",
            "8",
            "--test",
            "8",
        ],
        env=env,
        check=True,
        capture_output=True,
    )
    test = json.loads((data / "test.jsonl").read_text().splitlines()[0])["messages"]
    port = free_port()
    log = (home / "serve.log").open("wb")
    serve = subprocess.Popen(
        [sys.executable, "-m", "tunegate", "serve", "--port", str(port)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    result: dict[str, Any] = {
        "base": args.base,
        "task": args.task,
        "train": args.train,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "load_before": os.getloadavg(),
    }
    try:
        url = f"http://127.0.0.1:{port}"
        started = time.monotonic()
        while True:
            if serve.poll() is not None:
                raise RuntimeError(f"tunegate serve exited; see {home / 'serve.log'}")
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(1)
        result["gateway_start_s"] = round(time.monotonic() - started, 1)
        client = openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0, timeout=600)
        upload = client.files.create(
            file=("train.jsonl", (data / "train.jsonl").read_bytes()), purpose="fine-tune"
        )
        t0 = time.monotonic()
        job = client.fine_tuning.jobs.create(
            model=args.base,
            training_file=upload.id,
            suffix=args.task,
            hyperparameters={"n_epochs": args.epochs, "batch_size": args.batch_size},
        )
        created_at = job.created_at
        while job.status not in ("succeeded", "failed", "cancelled"):
            time.sleep(0.25)
            job = client.fine_tuning.jobs.retrieve(job.id)
        result["job_done_s"] = round(time.monotonic() - t0, 1)
        if job.status != "succeeded":
            raise RuntimeError(f"job {job.status}: {job.error}")
        reply = client.chat.completions.create(
            model=job.fine_tuned_model or "", messages=test[:-1], max_tokens=16, temperature=0
        )
        result["first_answer_s"] = round(time.monotonic() - t0, 1)
        result["answer"] = reply.choices[0].message.content
        result["expected"] = test[-1]["content"]
        result["fine_tuned_model"] = job.fine_tuned_model
        result["trained_tokens"] = job.trained_tokens
        events = list(client.fine_tuning.jobs.list_events(job.id, limit=1000))[::-1]
        steps = [e for e in events if e.type == "metrics"]
        marks = {
            "started": next(e for e in events if e.message == "Fine-tuning job started"),
            "first_step": steps[0],
            "last_step": steps[-1],
            "succeeded": events[-1],
        }
        # Event times are whole seconds since the job's creation.
        result["phases_s"] = {k: e.created_at - created_at for k, e in marks.items()}
        result["steps"] = len({e.data["step"] for e in steps})  # type: ignore[index]
    finally:
        result["load_after"] = os.getloadavg()
        serve.send_signal(signal.SIGTERM)
        try:
            serve.wait(timeout=120)
        except subprocess.TimeoutExpired:
            os.killpg(serve.pid, signal.SIGKILL)
        print(json.dumps(result, indent=2))
        if args.out:
            args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
