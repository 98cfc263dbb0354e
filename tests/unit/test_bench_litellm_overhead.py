"""The LiteLLM comparison's pure logic: its proxy config, session order, arguments, table."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from loadtests.bench.gateway_overhead import Round, _summary
from loadtests.bench.litellm_overhead import _combine, litellm_config, main, sessions, table


def test_config_routes_every_model_to_the_vllm_server_with_a_price() -> None:
    config = litellm_config(["a0", "a1"], "http://127.0.0.1:8001")
    deployments = config["model_list"]
    assert [d["model_name"] for d in deployments] == ["a0", "a1"]
    params = deployments[1]["litellm_params"]
    assert params["model"] == "hosted_vllm/a1"
    assert params["api_base"] == "http://127.0.0.1:8001/v1"
    assert params["input_cost_per_token"] > 0 and params["output_cost_per_token"] > 0
    # vLLM's ignore_eos must reach vLLM, or LiteLLM's answers would be shorter.
    assert config["litellm_settings"]["drop_params"] is False


@pytest.mark.parametrize(
    ("passes", "order"),
    [(1, ["gateway", "vllm"]), (2, ["gateway", "vllm", "vllm", "gateway"])],
)
def test_sessions(passes: int, order: list[str]) -> None:
    assert sessions(passes) == order


@pytest.mark.parametrize(
    "argv",
    [
        ["--litellm", "/nonexistent/litellm"],
        ["--litellm", __file__, "--adapters", "0"],
        ["--litellm", __file__, "--concurrency", "0"],
        ["--litellm", __file__, "--modes", "xml"],
    ],
)
def test_bad_arguments_exit_before_any_work(argv: list[str], capsys: Any) -> None:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    if "/nonexistent" in argv[1]:
        assert "make bench-litellm" in capsys.readouterr().err


def _round(server: str, wall: float, cpu: float, ttft: list[float]) -> Round:
    return Round(
        server=server,
        mode="stream",
        concurrency=4,
        round=0,
        wall_s=wall,
        requests=4,
        errors=0,
        completion_tokens=256,
        requests_per_s=4 / wall,
        output_tok_per_s=256 / wall,
        frontend_cpu_s=cpu,
        load_avg_1m=3.0,
        ttft_ms=ttft,
    )


def test_each_proxy_is_compared_with_vllm_direct() -> None:
    rounds = [
        _round("vllm", 4.0, 0.08, [100.0] * 4),
        _round("litellm", 5.0, 0.40, [150.0] * 4),
        _round("gateway", 4.0, 0.06, [110.0] * 4),
    ]
    summary = _combine(
        _summary(rounds, ["stream"], [4], "gateway", "vllm"),
        _summary(rounds, ["stream"], [4], "litellm", "vllm"),
    )
    s = summary["stream c=4"]
    assert s["gateway_ratio"] == pytest.approx(1.0)
    assert s["litellm_ratio"] == pytest.approx(0.8)
    assert s["litellm_ttft_p50_diff_ms"] == pytest.approx(50.0)
    assert s["gateway_ttft_p50_diff_ms"] == pytest.approx(10.0)
    lines = table(summary).splitlines()
    assert lines[2] == (
        "| stream c=4 | 1.000 | 1.000 (1.000) | 0.800 (0.800) | 100 / 110 / 150 "
        "| 20.0 / 15.0 / 100.0 |"
    )


def test_default_litellm_path_is_the_bench_venv() -> None:
    from loadtests.bench.litellm_overhead import DEFAULT_LITELLM

    assert DEFAULT_LITELLM.parts[-3:] == (".bench-venv-litellm", "bin", "litellm")
    assert isinstance(DEFAULT_LITELLM, Path)
