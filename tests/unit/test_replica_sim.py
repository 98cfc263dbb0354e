"""The routing simulation (loadtests/sim): runs small, compares policies, writes its outputs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from loadtests.sim import POLICIES, SimConfig, simulate, zipf_weights
from loadtests.sim.__main__ import main

SMALL = SimConfig(replicas=4, adapters=50, requests=2000, max_loras=2, max_cpu_loras=8)


def test_zipf_weights_sum_to_one_and_fall_with_rank() -> None:
    weights = zipf_weights(100, 1.1)
    assert weights.sum() == pytest.approx(1.0)
    assert (np.diff(weights) < 0).all()
    assert zipf_weights(10, 0.0) == pytest.approx([0.1] * 10)  # s = 0 is uniform


def test_affinity_loads_fewer_adapters_than_blind_policies() -> None:
    results = {policy: simulate(SMALL, policy) for policy in POLICIES}
    affinity = results["affinity"]
    for blind in ("round-robin", "random"):
        assert affinity.loads_per_1k < 0.75 * results[blind].loads_per_1k
        assert affinity.slot_hit_ratio > results[blind].slot_hit_ratio
        assert affinity.replicas_per_adapter < results[blind].replicas_per_adapter
    # Every measured request is counted once, and the ratios are ratios.
    for result in results.values():
        assert result.requests == 1600
        assert 0 <= result.slot_hit_ratio <= result.held_hit_ratio <= 1
        assert result.imbalance >= 1 and result.inflight_imbalance >= 1
    assert results["round-robin"].spilled_ratio == 0


def test_same_seed_same_result_other_seed_other_workload() -> None:
    assert simulate(SMALL, "affinity") == simulate(SMALL, "affinity")
    other = SimConfig(**{**vars(SMALL), "seed": 1})
    assert simulate(other, "random") != simulate(SMALL, "random")


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"replicas": 0}, "replicas"),
        ({"max_cpu_loras": 1}, "max_cpu_loras"),
        ({"warmup": 1.0}, "warmup"),
        ({"concurrency": 0.0}, "concurrency"),
    ],
)
def test_bad_config_is_refused(changes: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SimConfig(**{**vars(SMALL), **changes})


def test_unknown_policy_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown policy"):
        simulate(SMALL, "least-magic")


def test_cli_prints_the_table_and_writes_json_and_plots(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--out", str(tmp_path), "--replicas", "2", "4", "--adapters", "30"]
    assert main([*argv, "--requests", "500", "--max-loras", "2", "--max-cpu-loras", "4"]) == 0
    printed = capsys.readouterr().out
    assert "loads/1k" in printed and "round-robin" in printed
    data = json.loads((tmp_path / "sim.json").read_text())
    assert [(r["replicas"], r["policy"]) for r in data["results"]] == [
        (n, p) for n in (2, 4) for p in POLICIES
    ]
    assert data["config"]["adapters"] == 30
    assert (tmp_path / "loads_per_1k.png").read_bytes()[:4] == b"\x89PNG"


def test_cli_reports_bad_settings_as_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--out", str(tmp_path), "--max-loras", "8", "--max-cpu-loras", "4"]) == 2
    assert "max_cpu_loras" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())  # nothing written
