"""Adapters written by PEFT's own `save_pretrained`: accepted unchanged when vLLM can serve
them, refused with the offending field when it cannot."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from adapters_store import BaseModel, BaseRegistry, PublishRefusedError, Store, StoreConfig
from adapters_store.testing import LLAMA_LINEAR


@pytest.fixture
def store(home: Path, store_config: StoreConfig) -> Iterator[Store]:
    """A fresh store, its catalog in SQLite and then in PostgreSQL (tests/unit/conftest.py)."""
    store = Store(home / "store", BaseRegistry(home / "models"), store_config)
    yield store
    store.close()


def peft_adapter(base: BaseModel, dest: Path, **lora: Any) -> Path:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(base.path, dtype=torch.bfloat16)
    peft_model = get_peft_model(model, LoraConfig(task_type="CAUSAL_LM", **lora))
    peft_model.save_pretrained(dest)
    return dest


@pytest.fixture(scope="module")
def default_adapter(tmp_path_factory: pytest.TempPathFactory, default_model: BaseModel) -> Path:
    dest = tmp_path_factory.mktemp("peft") / "default-all-linear"
    return peft_adapter(default_model, dest, r=8, lora_alpha=16, target_modules="all-linear")


def test_peft_adapter_for_default_base_publishes_and_lists(
    store: Store, default_adapter: Path, default_model: BaseModel
) -> None:
    before = {p.name: p.read_bytes() for p in default_adapter.iterdir()}
    published = store.publish(
        default_adapter,
        "telecom",
        card={"method": "lora", "recipe": "recipes/telecom/lora.yaml", "metrics": {"acc": 0.77}},
    )
    # Accepted unchanged: the stored files are byte for byte what PEFT wrote.
    assert {p.name: p.read_bytes() for p in published.path.iterdir()} == before
    assert published.base == default_model.id
    listed = store.list()
    assert [v.ref for v in listed] == ["telecom@1"]
    card = listed[0].card
    assert card["base"] == default_model.id
    assert card["kind"] == "lora"
    assert card["rank"] == 8
    assert card["lora_alpha"] == 16
    assert card["target_modules"] == sorted(LLAMA_LINEAR)
    assert card["lora_modules"] == 7 * default_model.hf_config()["num_hidden_layers"]
    assert card["dtype"] == "F32"  # PEFT keeps adapter weights in float32 by default
    assert card["metrics"] == {"acc": 0.77}
    assert set(card["files"]) >= {"adapter_config.json", "adapter_model.safetensors"}
    assert card["created_at"].endswith("Z")


@pytest.mark.parametrize(
    ("lora", "expected"),
    [
        pytest.param({"r": 8, "target_modules": "all-linear"}, None, id="all-linear"),
        pytest.param(
            {"r": 4, "target_modules": ["q_proj", "v_proj"], "rank_pattern": {"v_proj": 2}},
            None,
            id="rank-pattern",
        ),
        pytest.param(
            {"r": 8, "target_modules": ["q_proj"], "use_dora": True}, "use_dora", id="dora"
        ),
        pytest.param(
            {"r": 8, "target_modules": ["q_proj"], "modules_to_save": ["lm_head"]},
            "modules_to_save",
            id="modules-to-save",
        ),
        pytest.param(
            {"r": 8, "target_modules": ["q_proj", "embed_tokens"]},
            "embedding layer 'embed_tokens'",
            id="embed-tokens",
        ),
        pytest.param(
            {"r": 8, "target_modules": ["q_proj"], "bias": "lora_only"}, "bias", id="bias"
        ),
    ],
)
def test_peft_written_tiny_adapters(
    store: Store,
    tmp_path: Path,
    tiny_model: BaseModel,
    lora: dict[str, Any],
    expected: str | None,
) -> None:
    folder = peft_adapter(tiny_model, tmp_path / "adapter", **lora)
    if expected is None:
        published = store.publish(folder, "tiny")
        assert published.base == tiny_model.id
        assert published.card["rank"] == lora["r"]
        assert store.verify() == []
    else:
        with pytest.raises(PublishRefusedError, match=expected):
            store.publish(folder, "tiny")
        assert store.list() == []
