"""Publish-time validation, one table row per refusal: each names the file and the field,
and leaves the store exactly as it was."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from safetensors.numpy import save_file

from adapters_store import BaseModel, BaseRegistry, PublishRefusedError, Store, StoreConfig
from adapters_store.testing import LLAMA_LINEAR, write_lora

Mutate = Callable[[Path, BaseModel, BaseModel], dict[str, Any]]


@pytest.fixture
def store(home: Path, store_config: StoreConfig) -> Iterator[Store]:
    """A fresh store, its catalog in SQLite and then in PostgreSQL (tests/unit/conftest.py)."""
    store = Store(home / "store", BaseRegistry(home / "models"), store_config)
    yield store
    store.close()


def assert_untouched(store: Store, generation: int) -> None:
    assert store.list() == []
    assert store.generation() == generation
    for area in ("blobs", "tmp"):
        folder = store.root / area
        assert not folder.exists() or not any(folder.iterdir()), f"{area}/ not empty"


def _config(**changes: Any) -> Mutate:
    def mutate(folder: Path, tiny: BaseModel, default: BaseModel) -> dict[str, Any]:
        path = folder / "adapter_config.json"
        data = json.loads(path.read_text())
        data.update(changes)
        path.write_text(json.dumps(data))
        return {}

    return mutate


def _write(rel: str, content: bytes) -> Mutate:
    def mutate(folder: Path, tiny: BaseModel, default: BaseModel) -> dict[str, Any]:
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_bytes(content)
        return {}

    return mutate


def _delete(rel: str) -> Mutate:
    def mutate(folder: Path, tiny: BaseModel, default: BaseModel) -> dict[str, Any]:
        (folder / rel).unlink()
        return {}

    return mutate


def _truncate(folder: Path, tiny: BaseModel, default: BaseModel) -> dict[str, Any]:
    weights = folder / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    return {}


def _tensors(change: Callable[[dict[str, np.ndarray]], None]) -> Mutate:
    def mutate(folder: Path, tiny: BaseModel, default: BaseModel) -> dict[str, Any]:
        from safetensors.numpy import load_file

        weights = folder / "adapter_model.safetensors"
        tensors = load_file(str(weights))
        change(tensors)
        save_file(tensors, str(weights), metadata={"format": "pt"})
        return {}

    return mutate


def _rewrite(**kwargs: Any) -> Mutate:
    """Replace the adapter with one written with other settings."""

    def mutate(folder: Path, tiny: BaseModel, default: BaseModel) -> dict[str, Any]:
        shutil.rmtree(folder)
        write_lora(folder, tiny, **kwargs)
        return {}

    return mutate


def _fifo(folder: Path, tiny: BaseModel, default: BaseModel) -> dict[str, Any]:
    os.mkfifo(folder / "pipe")
    return {}


def _q_proj_rank(rank: int) -> Callable[[dict[str, np.ndarray]], None]:
    def change(t: dict[str, np.ndarray]) -> None:
        for key in [k for k in t if ".q_proj." in k]:
            if ".lora_A." in key:
                t[key] = t[key][:rank]
            else:
                t[key] = t[key][:, :rank]

    return change


Q0 = "base_model.model.model.layers.0.self_attn.q_proj"

REFUSALS: list[tuple[str, Mutate, dict[str, Any], tuple[str, ...]]] = [
    # (id, mutation, publish kwargs, substrings the message must contain)
    ("pickle-bin", _write("adapter_model.bin", b"\x80\x04."), {}, ("adapter_model.bin", "pickle")),
    ("pickle-pt", _write("optimizer.pt", b"x"), {}, ("optimizer.pt", "pickle")),
    ("pickle-nested", _write("ckpt/state.pkl", b"x"), {}, ("ckpt/state.pkl", "pickle")),
    ("pickle-name", _write("weights.pickle", b"x"), {}, ("weights.pickle", "pickle")),
    ("fifo", _fifo, {}, ("pipe", "file type")),
    ("no-config", _delete("adapter_config.json"), {}, ("adapter_config.json", "missing")),
    ("config-not-json", _write("adapter_config.json", b"{r: 8"), {}, ("adapter_config.json",)),
    ("config-not-object", _write("adapter_config.json", b"[1]"), {}, ("adapter_config.json",)),
    ("peft-type", _config(peft_type="PREFIX_TUNING"), {}, ("adapter_config.json", "peft_type")),
    ("rank-too-big", _config(r=128), {}, ("adapter_config.json", "r:", "max_lora_rank")),
    ("rank-zero", _config(r=0), {}, ("adapter_config.json", "r:")),
    ("rank-string", _config(r="8"), {}, ("adapter_config.json", "r:")),
    (
        "rank-pattern-too-big",
        _config(rank_pattern={"q_proj": 128}),
        {},
        ("adapter_config.json", "rank_pattern.q_proj", "max_lora_rank"),
    ),
    ("dora", _config(use_dora=True), {}, ("adapter_config.json", "use_dora", "DoRA")),
    (
        "modules-to-save",
        _config(modules_to_save=["lm_head"]),
        {},
        ("adapter_config.json", "modules_to_save"),
    ),
    ("bias-all", _config(bias="all"), {}, ("adapter_config.json", "bias")),
    ("bias-lora-only", _config(bias="lora_only"), {}, ("adapter_config.json", "bias")),
    ("lora-bias", _config(lora_bias=True), {}, ("adapter_config.json", "lora_bias")),
    (
        "layer-replication",
        _config(layer_replication=[[0, 1], [0, 1]]),
        {},
        ("adapter_config.json", "layer_replication"),
    ),
    ("pissa", _config(init_lora_weights="pissa"), {}, ("adapter_config.json", "init_lora_weights")),
    (
        "target-lm-head",
        _config(target_modules=["q_proj", "lm_head"]),
        {},
        ("adapter_config.json", "target_modules", "embedding layer 'lm_head'"),
    ),
    (
        "target-embed-tokens",
        _config(target_modules=["embed_tokens"]),
        {},
        ("adapter_config.json", "target_modules", "embedding layer 'embed_tokens'"),
    ),
    (
        "target-norm",
        _config(target_modules=["q_proj", "input_layernorm"]),
        {},
        ("adapter_config.json", "target_modules", "'input_layernorm' cannot be served"),
    ),
    (
        "target-pattern-embedding",
        _config(target_modules=r".*embed_tokens"),
        {},
        ("adapter_config.json", "target_modules", "embed_tokens"),
    ),
    (
        "unregistered-base",
        _config(base_model_name_or_path="HuggingFaceTB/SmolLM2-1.7B"),
        {},
        ("adapter_config.json", "base_model_name_or_path", "not a registered base"),
    ),
    ("unknown-base-flag", lambda f, t, d: {}, {"base": "no-such-base"}, ("--base", "no-such-base")),
    ("invalid-base-flag", lambda f, t, d: {}, {"base": "../models"}, ("--base",)),
    (
        "base-flag-contradicts-config",
        lambda f, t, d: {},
        {"base": "smollm2-135m-instruct"},
        ("base_model_name_or_path", "tiny-random-llama"),
    ),
    (
        "shapes-of-another-base",
        _config(base_model_name_or_path="smollm2-135m-instruct"),
        {},
        ("adapter_model.safetensors", "lora_A.weight", "shape", "smollm2-135m-instruct"),
    ),
    (
        "no-weights",
        _delete("adapter_model.safetensors"),
        {},
        ("adapter_model.safetensors", "missing"),
    ),
    ("truncated-weights", _truncate, {}, ("adapter_model.safetensors", "not a readable")),
    (
        "garbage-weights",
        _write("adapter_model.safetensors", b"\x08\x00\x00\x00\x00\x00\x00\x00{bad json"),
        {},
        ("adapter_model.safetensors", "not a readable"),
    ),
    ("empty-weights", _tensors(lambda t: t.clear()), {}, ("adapter_model.safetensors", "no LoRA")),
    (
        "full-weight-tensor",
        _rewrite(extra_tensors={"base_model.model.lm_head.weight": np.zeros((4, 4), np.float32)}),
        {},
        ("base_model.model.lm_head.weight", "unexpected tensor"),
    ),
    (
        "embedding-lora-tensor",
        _rewrite(
            extra_tensors={
                "base_model.model.model.embed_tokens.lora_embedding_A": np.zeros((8, 4), "f4")
            }
        ),
        {},
        ("lora_embedding_A", "embedding layer 'embed_tokens'"),
    ),
    (
        "module-not-in-base",
        _rewrite(
            extra_tensors={
                "base_model.model.model.layers.7.self_attn.q_proj.lora_A.weight": np.zeros(
                    (8, 128), "f4"
                )
            }
        ),
        {},
        ("layers.7.self_attn.q_proj", "has no module"),
    ),
    (
        "lora-b-missing",
        _tensors(lambda t: t.pop(f"{Q0}.lora_B.weight")),
        {},
        (f"{Q0}.lora_B.weight", "missing"),
    ),
    (
        "integer-dtype",
        _tensors(lambda t: t.update({f"{Q0}.lora_A.weight": np.zeros((8, 128), np.int32)})),
        {},
        (f"{Q0}.lora_A.weight", "dtype I32"),
    ),
    (
        "rank-pattern-not-honoured",
        _config(rank_pattern={"q_proj": 4}),
        {},
        ("q_proj.lora_A.weight", "shape [8, 128]", "expected [4, 128]"),
    ),
    (
        "wrong-rank-in-tensors",
        _tensors(_q_proj_rank(4)),
        {},
        ("q_proj.lora_A.weight", "shape [4, 128]", "expected [8, 128]"),
    ),
    ("bad-kind", lambda f, t, d: {}, {"kind": "gguf"}, ("kind",)),
]


@pytest.mark.parametrize(
    ("mutate", "kwargs", "expected"),
    [pytest.param(m, k, e, id=i) for i, m, k, e in REFUSALS],
)
def test_lora_refusals(
    store: Store,
    tmp_path: Path,
    tiny_model: BaseModel,
    default_model: BaseModel,
    mutate: Mutate,
    kwargs: dict[str, Any],
    expected: tuple[str, ...],
) -> None:
    folder = write_lora(tmp_path / "adapter", tiny_model, r=8)
    mutate(folder, tiny_model, default_model)
    generation = store.generation()
    with pytest.raises(PublishRefusedError) as info:
        store.publish(folder, "telecom", **kwargs)
    message = str(info.value)
    assert "\n" not in message
    for part in expected:
        assert part in message, f"{part!r} not in {message!r}"
    assert_untouched(store, generation)


def test_rank_limit_follows_config(
    home: Path, tmp_path: Path, tiny_model: BaseModel, store_config: StoreConfig
) -> None:
    config = dataclasses.replace(store_config, max_lora_rank=4)
    store = Store(home / "store", BaseRegistry(home / "models"), config)
    with pytest.raises(PublishRefusedError, match=r"rank 8 exceeds store\.max_lora_rank = 4"):
        store.publish(write_lora(tmp_path / "r8", tiny_model, r=8), "telecom")
    assert store.publish(write_lora(tmp_path / "r4", tiny_model, r=4), "telecom").version == 1
    store.close()


ACCEPTED: list[tuple[str, dict[str, Any], dict[str, Any], dict[str, Any]]] = [
    # (id, write_lora kwargs, publish kwargs, expected card fields)
    ("all-linear", {}, {}, {"rank": 8, "target_modules": sorted(LLAMA_LINEAR)}),
    (
        "attention-only",
        {"targets": ("q_proj", "v_proj")},
        {},
        {"target_modules": ["q_proj", "v_proj"], "lora_modules": 4},
    ),
    (
        "hub-name-with-explicit-base",
        {"config": {"base_model_name_or_path": "HuggingFaceTB/SmolLM2-135M-Instruct"}},
        {"base": "tiny-random-llama"},
        {"base": "tiny-random-llama"},
    ),
    (
        "base-folder-elsewhere",
        {"config": {"base_model_name_or_path": "/other/home/models/tiny-random-llama"}},
        {},
        {"base": "tiny-random-llama"},
    ),
    (
        "regex-targets",
        {"targets": ("q_proj", "v_proj"), "config": {"target_modules": r".*\.(q_proj|v_proj)"}},
        {},
        {"target_modules": ["q_proj", "v_proj"]},
    ),
    ("rank-64", {"r": 64}, {}, {"rank": 64}),
    ("rslora", {"config": {"use_rslora": True}}, {}, {"use_rslora": True}),
    ("gaussian-init", {"config": {"init_lora_weights": "gaussian"}}, {}, {"rank": 8}),
]


@pytest.mark.parametrize(
    ("write_kwargs", "publish_kwargs", "card"),
    [pytest.param(w, p, c, id=i) for i, w, p, c in ACCEPTED],
)
def test_lora_accepted(
    store: Store,
    tmp_path: Path,
    tiny_model: BaseModel,
    write_kwargs: dict[str, Any],
    publish_kwargs: dict[str, Any],
    card: dict[str, Any],
) -> None:
    folder = write_lora(tmp_path / "adapter", tiny_model, **write_kwargs)
    published = store.publish(folder, "telecom", **publish_kwargs)
    for key, value in card.items():
        assert published.card[key] == value, key
    assert published.base == "tiny-random-llama"
    assert store.verify() == []


def test_rank_pattern_accepted(store: Store, tmp_path: Path, tiny_model: BaseModel) -> None:
    folder = write_lora(
        tmp_path / "adapter", tiny_model, r=8, config={"rank_pattern": {"q_proj": 4}}
    )
    _tensors(_q_proj_rank(4))(folder, tiny_model, tiny_model)
    published = store.publish(folder, "telecom")
    assert published.card["rank"] == 8


def test_servable_modules_come_from_vllm(store: Store, tiny_model: BaseModel) -> None:
    """The rule read from vLLM's LlamaForCausalLM: its packed q/k/v and gate/up members,
    o_proj and down_proj; embeddings are what the class lists as embedding_modules."""
    support = store._arch(tiny_model.architecture)
    assert support.supports_lora
    assert set(support.embedding_modules) == {"embed_tokens", "lm_head"}
    packed = {m for members in support.packed_modules.values() for m in members}
    assert packed == {"q_proj", "k_proj", "v_proj", "gate_proj", "up_proj"}
    cache = list(store.root.glob("vllm-*-lora-support.json"))
    assert len(cache) == 1
    assert "LlamaForCausalLM" in json.loads(cache[0].read_text())


# -- full models ------------------------------------------------------------------------


def _model_copy(tmp_path: Path, base: BaseModel) -> Path:
    folder = tmp_path / "model"
    shutil.copytree(base.path, folder, ignore=shutil.ignore_patterns("tunegate-model.json"))
    return folder


def _edit_json(folder: Path, rel: str, change: Callable[[dict[str, Any]], None]) -> None:
    data = json.loads((folder / rel).read_text())
    change(data)
    (folder / rel).write_text(json.dumps(data))


def _other_tokenizer(folder: Path) -> None:
    def change(data: dict[str, Any]) -> None:
        vocab = data["model"]["vocab"]
        token = next(iter(vocab))
        vocab[token + "x"] = vocab.pop(token)

    _edit_json(folder, "tokenizer.json", change)


MODEL_REFUSALS: list[tuple[str, Callable[[Path], None], dict[str, Any], tuple[str, ...]]] = [
    ("no-config", lambda f: (f / "config.json").unlink(), {}, ("config.json", "missing")),
    (
        "no-architectures",
        lambda f: _edit_json(f, "config.json", lambda d: d.pop("architectures")),
        {},
        ("config.json", "architectures"),
    ),
    (
        "unknown-architecture",
        lambda f: _edit_json(f, "config.json", lambda d: d.update(architectures=["NopeForLM"])),
        {},
        ("config.json", "architectures", "NopeForLM"),
    ),
    ("no-weights", lambda f: (f / "model.safetensors").unlink(), {}, ("model.safetensors",)),
    (
        "pickle-weights",
        lambda f: (f / "pytorch_model.bin").write_bytes(b"\x80"),
        {},
        ("pytorch_model.bin", "pickle"),
    ),
    (
        "truncated-weights",
        lambda f: os.truncate(f / "model.safetensors", 4096),
        {},
        ("model.safetensors", "not a readable"),
    ),
    (
        "layers-not-renumbered",
        lambda f: _edit_json(f, "config.json", lambda d: d.update(num_hidden_layers=3)),
        {},
        ("config.json", "num_hidden_layers", "renumbered"),
    ),
    (
        "no-tokenizer",
        lambda f: (f / "tokenizer.json").unlink(),
        {},
        ("tokenizer.json", "missing"),
    ),
    (
        "no-tokenizer-config",
        lambda f: (f / "tokenizer_config.json").unlink(),
        {},
        ("tokenizer_config.json", "missing"),
    ),
    ("foreign-tokenizer", _other_tokenizer, {}, ("tokenizer.json", "no registered base")),
    (
        "foreign-tokenizer-with-base",
        _other_tokenizer,
        {"base": "tiny-random-llama"},
        ("tokenizer.json", "differs from base 'tiny-random-llama'"),
    ),
    (
        "ambiguous-base",
        lambda f: _edit_json(f, "config.json", lambda d: d.update(hidden_size=64)),
        {},
        ("tokenizer.json", "several registered bases", "smollm2-135m-instruct"),
    ),
]


@pytest.mark.parametrize(
    ("mutate", "kwargs", "expected"),
    [pytest.param(m, k, e, id=i) for i, m, k, e in MODEL_REFUSALS],
)
def test_model_refusals(
    store: Store,
    tmp_path: Path,
    tiny_model: BaseModel,
    mutate: Callable[[Path], None],
    kwargs: dict[str, Any],
    expected: tuple[str, ...],
) -> None:
    folder = _model_copy(tmp_path, tiny_model)
    mutate(folder)
    generation = store.generation()
    with pytest.raises(PublishRefusedError) as info:
        store.publish(folder, "student", kind="model", **kwargs)
    for part in expected:
        assert part in str(info.value), f"{part!r} not in {info.value}"
    assert_untouched(store, generation)


def test_model_accepted_and_base_found_by_tokenizer(
    store: Store, tmp_path: Path, tiny_model: BaseModel
) -> None:
    folder = _model_copy(tmp_path, tiny_model)
    published = store.publish(
        folder,
        "student",
        kind="model",
        card={"method": "distill", "parent": "smollm2-135m-instruct"},
    )
    assert published.kind == "model"
    # The default and the tiny model share the tokenizer; the width tells them apart.
    assert published.base == "tiny-random-llama"
    assert published.card["architecture"] == "LlamaForCausalLM"
    assert published.card["num_hidden_layers"] == 2
    assert published.card["parameters"] > 6_000_000
    assert published.card["parent"] == "smollm2-135m-instruct"
    assert "model.safetensors" in published.files
    assert store.verify() == []
    # A name holds one kind of artifact.
    with pytest.raises(PublishRefusedError, match="holds model artifacts"):
        store.publish(write_lora(tmp_path / "a", tiny_model), "student")


def test_damaged_vllm_cache_is_derived_again(
    store: Store, tmp_path: Path, tiny_model: BaseModel
) -> None:
    from adapters_store import vllm_support

    store._arch(tiny_model.architecture)
    (cache,) = store.root.glob("vllm-*-lora-support.json")
    cache.write_text('{"LlamaForCausalLM": {"known": true}')  # cut short
    vllm_support._cached.cache_clear()
    assert store.publish(write_lora(tmp_path / "a", tiny_model), "telecom").version == 1
    assert json.loads(cache.read_text())["LlamaForCausalLM"]["supports_lora"] is True


def test_without_vllm_publish_fails_clearly(
    store: Store, tmp_path: Path, tiny_model: BaseModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    from adapters_store import vllm_support

    monkeypatch.setattr(vllm_support, "vllm_version", lambda: None)
    generation = store.generation()
    with pytest.raises(RuntimeError, match="vLLM is not installed"):
        store.publish(write_lora(tmp_path / "a", tiny_model), "telecom")
    assert_untouched(store, generation)
