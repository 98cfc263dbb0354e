"""Engine settings reach vLLM's `AsyncEngineArgs` unchanged, under vLLM's own names, so
one gateway drives a multi-GPU or multi-node engine exactly as vLLM documents it.

The arguments are built from the layered settings (file and environment) and given to
vLLM's own `AsyncEngineArgs`; no engine is started.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from gateway.config import EngineConfig
from gateway.engine import Engine, EngineSpec
from tunegate.config import load_settings

SPEC = EngineSpec(model_id="base", path=Path("/models/base"), enable_lora=True)
PARALLEL = {
    "tensor_parallel_size": 4,
    "pipeline_parallel_size": 2,
    "distributed_executor_backend": "ray",
    "gpu_memory_utilization": 0.85,
}


def _vllm_args(config: EngineConfig) -> Any:
    from vllm.engine.arg_utils import AsyncEngineArgs

    return AsyncEngineArgs(**Engine(SPEC, config).engine_args())


@pytest.mark.parametrize("source", ["file", "env"])
def test_parallel_settings_reach_vllm_as_documented(
    source: str, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if source == "file":
        (home / "config.yaml").write_text(
            "gateway:\n  engine:\n    max_num_seqs: 128\n"
            "    extra_args: {tensor_parallel_size: 4, pipeline_parallel_size: 2,\n"
            "                 distributed_executor_backend: ray, gpu_memory_utilization: 0.85}\n"
        )
    else:
        monkeypatch.setenv("TUNEGATE_GATEWAY_ENGINE_MAX_NUM_SEQS", "128")
        monkeypatch.setenv(
            "TUNEGATE_GATEWAY_ENGINE_EXTRA_ARGS",
            '{"tensor_parallel_size": 4, "pipeline_parallel_size": 2, '
            '"distributed_executor_backend": "ray", "gpu_memory_utilization": 0.85}',
        )
    args = _vllm_args(load_settings().gateway.engine)
    for name, value in PARALLEL.items():
        assert getattr(args, name) == value, name
    assert args.max_num_seqs == 128 and args.model == "/models/base" and args.enable_lora
    # vLLM ignores gpu_memory_utilization when kv_cache_memory_bytes is set: it is left
    # out so that the GPU memory share the user asked for is what sizes the KV cache.
    assert args.kv_cache_memory_bytes is None


def test_a_configured_kv_cache_size_still_wins_and_extra_args_override_fields() -> None:
    config = EngineConfig(
        kv_cache_gib=3.0, max_num_seqs=8, extra_args={**PARALLEL, "max_num_seqs": 256}
    )
    args = _vllm_args(config)
    assert args.kv_cache_memory_bytes == 3 * 2**30
    assert args.max_num_seqs == 256 and args.tensor_parallel_size == 4


def test_without_gpu_memory_utilization_the_cpu_kv_cache_size_is_kept(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("VLLM_CPU_KVCACHE_SPACE", raising=False)
    args = _vllm_args(EngineConfig(extra_args={"tensor_parallel_size": 2}))
    assert args.kv_cache_memory_bytes == 2 * 2**30 and args.tensor_parallel_size == 2


def test_an_argument_vllm_does_not_know_is_a_clear_error_before_any_engine_starts() -> None:
    engine = Engine(SPEC, EngineConfig(extra_args={"tensor_paralel_size": 2}))
    with pytest.raises(ValueError, match=r"gateway\.engine\.extra_args: .*tensor_paralel_size"):
        asyncio.run(engine.start())
    assert not engine.healthy
