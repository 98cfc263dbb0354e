"""vLLM and transformers generate the same greedy answers on the default model, with and
without a LoRA adapter.

Both run bf16 here, as served; a near-tie between two tokens can still flip between kernels,
so agreement is required on nearly every prompt rather than on all of them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from adapters_store.bases import BaseModel
from tuner.backends import ModelSpec, TransformersBackend, VllmBackend
from tuner.tasks import get_task

pytestmark = pytest.mark.engine


def _prompts(n: int) -> list[list[dict[str, Any]]]:
    task = get_task("telecom-routing")
    return [task.messages(e.text) for e in task.generate("test", n, seed=5)]


def _agreement(a: list[str], b: list[str]) -> float:
    return sum(x.strip() == y.strip() for x, y in zip(a, b, strict=True)) / len(a)


def test_base_model_greedy_answers_agree(vllm_engine: Any, default_model: BaseModel) -> None:
    prompts = _prompts(12)
    spec = ModelSpec(path=default_model.path, name="base")
    via_vllm = VllmBackend(llm=vllm_engine).generate(spec, prompts, 6)
    via_hf = TransformersBackend(batch_size=6, precision="bf16").generate(spec, prompts, 6)
    assert _agreement(via_vllm, via_hf) >= 9 / 12, list(zip(via_vllm, via_hf, strict=True))


def test_adapter_greedy_answers_agree(
    vllm_engine: Any, default_model: BaseModel, tmp_path: Path
) -> None:
    from tests.integration.conftest import make_peft_adapter

    # Small random lora_B: the answers move away from the base model's but stay text, so
    # this compares vLLM's LoRA path (punica ops, the fast CPU plugin) with PEFT's merge.
    adapter = make_peft_adapter(default_model, tmp_path / "adapter", seed=3, r=16, scale=0.08)
    prompts = _prompts(12)
    base = ModelSpec(path=default_model.path, name="base")
    tuned = ModelSpec(path=default_model.path, adapter=adapter, name="agree", uid=901)
    hf = TransformersBackend(batch_size=6, precision="bf16")
    via_vllm = VllmBackend(llm=vllm_engine).generate(tuned, prompts, 6)
    via_hf = hf.generate(tuned, prompts, 6)
    assert _agreement(via_vllm, via_hf) >= 9 / 12, list(zip(via_vllm, via_hf, strict=True))
    base_answers = VllmBackend(llm=vllm_engine).generate(base, prompts, 6)
    assert _agreement(via_vllm, base_answers) <= 6 / 12, "the adapter changed nothing"
