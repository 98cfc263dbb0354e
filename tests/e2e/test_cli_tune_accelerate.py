"""`accelerate launch -m tunegate tune RECIPE`: two processes train one run (DDP on the CPU).

~55 s on the 2-core host (a single-process run of the same recipe: ~20 s): two interpreters
import torch and transformers side by side. Evaluation and publishing are left out here:
they run in the main process only, through the same code as a single-process run.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from adapters_store.bases import BaseModel

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_two_processes_train_one_run(home: Path, tiny_model: BaseModel) -> None:
    # CPU processes even where a GPU is visible: one GPU cannot host two DDP ranks.
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    launch = [
        str(Path(sys.executable).parent / "accelerate"),
        "launch",
        "--multi_gpu",  # torchrun's launcher: on the CPU `--cpu` would start one process
        "--num_processes=2",
        f"--main_process_port={_free_port()}",
        "-m",
        "tunegate",
    ]
    res = subprocess.run(
        [
            *launch,
            "tune",
            "recipes/telecom-routing/lora.yaml",
            "base=tiny-random-llama",
            "n_train=16",
            "n_valid=4",
            "n_test=4",
            "batch_size=4",
            "evaluate=false",
            "publish=false",
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=600,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    # One console: the main process speaks, the other one is quiet.
    assert res.stdout.count("run folder: ") == 1 and res.stdout.count("tokens/s") == 1
    runs = list((home / "runs").glob("telecom-*"))
    assert len(runs) == 1, runs  # one run folder, made by the main process only
    run = json.loads((runs[0] / "run.json").read_text())
    # 16 examples, 4 per process per step, 2 processes: one epoch is 2 steps (4 alone).
    assert (run["examples"], run["steps"]) == (16, 2)
    assert (runs[0] / "adapter" / "adapter_model.safetensors").is_file()
    logged = [json.loads(line) for line in (runs[0] / "metrics.jsonl").read_text().splitlines()]
    losses = [row["step"] for row in logged if "loss" in row]
    assert losses and len(losses) == len(set(losses))  # each step logged once
