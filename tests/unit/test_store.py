"""The catalog's public API: references, publish/resolve/list, aliases, removal, cards."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from adapters_store import (
    BaseModel,
    BaseRegistry,
    ChangeRefusedError,
    InvalidReferenceError,
    PublishRefusedError,
    Reference,
    Store,
    StoreConfig,
    UnknownReferenceError,
    parse_reference,
)
from adapters_store.testing import write_lora


@pytest.fixture
def store(home: Path, store_config: StoreConfig) -> Iterator[Store]:
    """A fresh store, its catalog in SQLite and then in PostgreSQL (tests/unit/conftest.py)."""
    store = Store(home / "store", BaseRegistry(home / "models"), store_config)
    yield store
    store.close()


@pytest.fixture
def adapter(tmp_path: Path, tiny_model: BaseModel) -> Path:
    return write_lora(tmp_path / "adapter", tiny_model, r=4)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("telecom", Reference("telecom")),
        ("telecom@3", Reference("telecom", version=3)),
        ("telecom@prod", Reference("telecom", alias="prod")),
        ("telecom@latest", Reference("telecom")),
        ("a", Reference("a")),
        ("0abc.v2_x-y@rc-1", Reference("0abc.v2_x-y", alias="rc-1")),
        ("n" * 64, Reference("n" * 64)),
        ("x@v2", Reference("x", alias="v2")),
        ("x@12345", Reference("x", version=12345)),
    ],
)
def test_parse_reference_accepts(text: str, expected: Reference) -> None:
    assert parse_reference(text) == expected
    if text.endswith("@latest"):
        assert str(parse_reference(text)) == text.removesuffix("@latest")
    else:
        assert str(parse_reference(text)) == text


@pytest.mark.parametrize(
    "text",
    [
        "",
        "Telecom",  # upper case
        "-telecom",  # must start with a letter or digit
        ".hidden",
        "../etc",
        "a/b",
        "a\\b",
        "n" * 65,  # too long
        "telecom@",  # empty suffix
        "telecom@0",  # versions start at 1
        "telecom@007",  # no leading zeros
        "telecom@-1",
        "telecom@Prod",
        "telecom@prod@1",
        "tele com",
        "telecom\n",
        "@prod",
        "é",
    ],
)
def test_parse_reference_refuses(text: str) -> None:
    with pytest.raises(InvalidReferenceError):
        parse_reference(text)


def test_publish_resolve_list(store: Store, adapter: Path, tiny_model: BaseModel) -> None:
    g0 = store.generation()
    v1 = store.publish(adapter, "telecom", card={"method": "lora", "metrics": {"acc": 0.5}})
    assert v1.ref == "telecom@1"
    assert v1.kind == "lora"
    assert v1.base == tiny_model.id  # from adapter_config's base_model_name_or_path
    assert v1.uid > 0
    assert v1.path == store.root / "blobs" / "telecom" / "1"
    assert set(v1.files) == {"adapter_config.json", "adapter_model.safetensors"}
    assert (v1.path / "adapter_model.safetensors").read_bytes() == (
        adapter / "adapter_model.safetensors"
    ).read_bytes()
    assert v1.card["rank"] == 4
    assert v1.card["target_modules"] == sorted(
        ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )
    assert v1.card["method"] == "lora"
    assert v1.card["metrics"] == {"acc": 0.5}
    assert v1.card["files"] == v1.files
    assert v1.card["base"] == tiny_model.id
    assert v1.card["created_at"] == v1.created_at
    assert store.generation() > g0

    v2 = store.publish(adapter, "telecom")
    other = store.publish(adapter, "retail")
    assert (v2.version, other.version) == (2, 1)
    assert len({v1.uid, v2.uid, other.uid}) == 3
    assert store.resolve("telecom").ref == "telecom@2"
    assert store.resolve("telecom@1") == v1
    assert store.resolve(Reference("telecom", version=1)) == v1
    assert [v.ref for v in store.list()] == ["telecom@1", "telecom@2", "retail@1"]
    assert [v.ref for v in store.list("telecom")] == ["telecom@1", "telecom@2"]

    # A second Store on the same folder (another process, e.g. the gateway) sees the same.
    again = Store(store.root, store.bases, store.config)
    assert again.list() == store.list()
    assert again.generation() == store.generation()


def test_unknown_references(store: Store, adapter: Path) -> None:
    with pytest.raises(UnknownReferenceError, match="no artifact named 'nope'"):
        store.resolve("nope")
    store.publish(adapter, "telecom")
    with pytest.raises(UnknownReferenceError, match="versions of telecom: 1"):
        store.resolve("telecom@2")
    with pytest.raises(UnknownReferenceError, match="no alias 'prod'"):
        store.resolve("telecom@prod")
    with pytest.raises(InvalidReferenceError):
        store.resolve("../telecom")
    with pytest.raises(InvalidReferenceError):
        store.list("Bad/Name")


def test_alias_moves_and_rollback(store: Store, adapter: Path) -> None:
    v1 = store.publish(adapter, "telecom")
    v2 = store.publish(adapter, "telecom")
    g = store.generation()
    assert store.set_alias("telecom@1", "prod") is None
    assert store.generation() > g
    assert store.resolve("telecom@prod") == store.resolve("telecom@1")
    assert store.resolve("telecom@1").aliases == ("prod",)

    previous = store.set_alias("telecom@2", "prod")
    assert previous is not None and previous.ref == v1.ref
    assert store.resolve("telecom@prod").version == v2.version
    assert store.resolve("telecom@1").aliases == ()

    back = store.rollback_alias("telecom@prod")
    assert back.version == 1
    assert store.resolve("telecom@prod").version == 1
    history = store.alias_history("telecom", "prod")
    assert [(e.version, e.previous) for e in history] == [(1, None), (2, 1), (1, 2)]

    # Aliases are per name; an alias of one name does not leak into another.
    with pytest.raises(UnknownReferenceError):
        store.resolve("retail@prod")


@pytest.mark.parametrize("alias", ["3", "latest", "Prod", "-x", "a@b", "x" * 65])
def test_bad_alias_refused(store: Store, adapter: Path, alias: str) -> None:
    store.publish(adapter, "telecom")
    g = store.generation()
    with pytest.raises(InvalidReferenceError):
        store.set_alias("telecom@1", alias)
    assert store.generation() == g


def test_rollback_without_history_refused(store: Store, adapter: Path) -> None:
    store.publish(adapter, "telecom")
    store.set_alias("telecom@1", "prod")
    with pytest.raises(UnknownReferenceError, match="no earlier target"):
        store.rollback_alias("telecom@prod")


def test_remove_refused_while_aliased_unless_forced(store: Store, adapter: Path) -> None:
    v1 = store.publish(adapter, "telecom")
    v2 = store.publish(adapter, "telecom")
    store.set_alias("telecom@1", "prod")
    with pytest.raises(ChangeRefusedError, match="telecom@prod"):
        store.remove("telecom@1")
    assert store.resolve("telecom@1").aliases == ("prod",)
    assert v1.path.is_dir()

    removed = store.remove("telecom@1", force=True)
    assert removed.ref == "telecom@1"
    assert not v1.path.exists()
    with pytest.raises(UnknownReferenceError):
        store.resolve("telecom@prod")
    assert [e.version for e in store.alias_history("telecom", "prod")] == [1, None]

    # Version numbers and uids are never handed out again.
    store.remove("telecom")  # the latest, telecom@2
    assert not v2.path.exists()
    v3 = store.publish(adapter, "telecom")
    assert v3.version == 3
    assert v3.uid > v2.uid
    assert store.verify() == []


def test_update_card_merges_and_protects_derived_fields(store: Store, adapter: Path) -> None:
    v1 = store.publish(adapter, "telecom", card={"metrics": {"base": {"acc": 0.2}}})
    g = store.generation()
    updated = store.update_card("telecom@1", {"metrics": {"tuned": {"acc": 0.8}}, "recipe": "x"})
    assert updated.card["metrics"] == {"base": {"acc": 0.2}, "tuned": {"acc": 0.8}}
    assert updated.card["recipe"] == "x"
    assert store.generation() > g
    with pytest.raises(ChangeRefusedError, match="rank"):
        store.update_card("telecom@1", {"rank": 64})
    with pytest.raises(PublishRefusedError, match="JSON"):
        store.update_card("telecom@1", {"metrics": {"bad": object()}})
    assert store.resolve("telecom@1").card == updated.card
    assert store.resolve("telecom@1").files == v1.files


def test_card_fields_and_parent_pinning(store: Store, adapter: Path, tiny_model: BaseModel) -> None:
    store.publish(adapter, "teacher")
    store.set_alias("teacher@1", "prod")
    card = {
        "method": "lora",
        "recipe": "recipes/telecom/lora.yaml",
        "dataset_sha256": "ab" * 32,
        "metrics": {"accuracy": 0.77},
        "parent": "teacher@prod",
        "system_prompt": "Route the ticket.",
        "base": tiny_model.id,  # repeating a derived value is fine
    }
    v = store.publish(adapter, "student", card=card)
    assert v.card["parent"] == "teacher@1"
    for key in ("method", "recipe", "dataset_sha256", "metrics", "system_prompt"):
        assert v.card[key] == card[key]
    with pytest.raises(PublishRefusedError, match="card: rank"):
        store.publish(adapter, "student", card={"rank": 99})
    with pytest.raises(PublishRefusedError, match="JSON"):
        store.publish(adapter, "student", card={"when": object()})
    assert [x.ref for x in store.list("student")] == ["student@1"]


def test_name_rules(store: Store, adapter: Path, tiny_model: BaseModel) -> None:
    with pytest.raises(InvalidReferenceError):
        store.publish(adapter, "../escape")
    with pytest.raises(PublishRefusedError, match="registered base model id"):
        store.publish(adapter, tiny_model.id)
    assert store.list() == []
    assert not (store.root / "blobs").exists() or not any((store.root / "blobs").iterdir())


def test_verify_names_each_changed_missing_or_added_file(store: Store, adapter: Path) -> None:
    v1 = store.publish(adapter, "telecom")
    v2 = store.publish(adapter, "telecom")
    assert store.verify() == []

    weights = v1.path / "adapter_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF  # one flipped bit in the last tensor: same size, still loadable
    weights.write_bytes(bytes(data))
    (v1.path / "adapter_config.json").unlink()
    (v1.path / "extra.bin").write_bytes(b"\x80\x04.")
    assert store.verify() == [
        "telecom@1: adapter_config.json: missing",
        "telecom@1: adapter_model.safetensors: sha256 differs from the published one",
        "telecom@1: extra.bin: not part of the published version",
    ]
    assert store.verify("telecom@2") == []
    assert len(store.verify("telecom@1")) == 3

    shutil.rmtree(v2.path)
    assert store.verify("telecom") == [f"telecom@2: folder {v2.path} is missing"]
