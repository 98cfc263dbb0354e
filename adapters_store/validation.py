"""Publish-time checks: is this folder something the gateway's vLLM engine can serve?

Each check raises `PublishRefusedError("<file>: <field>: <why>")`, so the user learns which
file and which field to fix. Only headers are read (`safe_open` metadata, JSON configs):
checking a LoRA adapter never loads a tensor, and checking a full model never loads torch.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from safetensors import SafetensorError, safe_open

from adapters_store.bases import BaseModel, BaseRegistry, UnknownBaseError
from adapters_store.errors import PublishRefusedError
from adapters_store.vllm_support import ArchSupport

__all__ = ["Inspection", "inspect_lora", "inspect_model", "refuse_unsafe_files"]

# Formats that unpickle (run code) when loaded: never accepted, whatever else is present.
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".joblib", ".npy", ".npz")
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
_FLOAT_DTYPES = {"F16", "BF16", "F32"}
# PEFT keys: base_model.model.<module>.lora_A.weight (adapter name dropped on save).
_LORA_KEY = re.compile(r"^base_model\.model\.(?P<module>.+)\.lora_(?P<ab>[AB])\.weight$")
_LORA_EMBEDDING_KEY = re.compile(r"^base_model\.model\.(?P<module>.+)\.lora_embedding_[AB]$")
_LAYER_INDEX = re.compile(r"\.layers\.(\d+)\.")
# PEFT initialisations that rewrite the base weights (vLLM refuses them too; see
# vllm/lora/peft_helper.py: _init_is_supported).
_BASE_MODIFYING_INITS = ("pissa", "olora", "loftq", "corda")

ArchLookup = Callable[[str], ArchSupport]


@dataclass(frozen=True)
class Inspection:
    """What validation learned: the base it belongs to and the card fields derived from it."""

    base: str
    derived: dict[str, Any]


def _refuse(file: str, field: str, why: str) -> PublishRefusedError:
    return PublishRefusedError(f"{file}: {field}: {why}")


def refuse_unsafe_files(folder: Path) -> None:
    """Pickle-based files and anything that is not a regular file or folder."""
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder).as_posix()
        if path.is_dir():
            continue
        if not path.is_file():
            raise _refuse(rel, "file type", "only regular files can be published")
        if path.name.lower().endswith(PICKLE_SUFFIXES) or "pickle" in path.name.lower():
            raise _refuse(
                rel,
                "format",
                "pickle-based weights are refused (they run code when loaded); "
                "save with safetensors (save_pretrained(..., safe_serialization=True))",
            )


def _read_json(folder: Path, rel: str) -> dict[str, Any]:
    path = folder / rel
    if not path.is_file():
        raise _refuse(rel, "file", "missing")
    try:
        data = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _refuse(rel, "content", f"not valid JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise _refuse(rel, "content", "expected a JSON object")
    return data


def _tensor_headers(folder: Path, rel: str) -> dict[str, tuple[str, tuple[int, ...]]]:
    """name -> (dtype, shape) of every tensor, from the header; refuses a damaged file."""
    path = folder / rel
    if not path.is_file():
        raise _refuse(rel, "file", "missing")
    try:
        with safe_open(str(path), framework="np") as f:
            out = {}
            for key in f.keys():  # noqa: SIM118 - safe_open handles are not mappings
                sl = f.get_slice(key)
                out[key] = (str(sl.get_dtype()), tuple(int(d) for d in sl.get_shape()))
            return out
    except (SafetensorError, OSError, ValueError) as exc:
        raise _refuse(rel, "content", f"not a readable safetensors file ({exc})") from exc


def _weight_files(folder: Path) -> list[str]:
    """The safetensors files of a HF folder: the shards of its index, else every file."""
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        data = _read_json(folder, index.name)
        weight_map = data.get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise _refuse(index.name, "weight_map", "missing or empty")
        return sorted(set(map(str, weight_map.values())))
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*.safetensors"))


def _linear_shapes(base: BaseModel) -> dict[str, tuple[int, ...]]:
    """Module path -> weight shape [out, in] for every 2-D weight of the base checkpoint."""
    shapes: dict[str, tuple[int, ...]] = {}
    for rel in _weight_files(base.path):
        for key, (_, shape) in _tensor_headers(base.path, rel).items():
            if key.endswith(".weight") and len(shape) == 2:
                shapes[key.removesuffix(".weight")] = shape
    return shapes


# -- LoRA -------------------------------------------------------------------------------


def _lora_base(config: dict[str, Any], bases: BaseRegistry, base: str | None) -> BaseModel:
    """The registered base: the one given, else the adapter's `base_model_name_or_path`."""
    named = config.get("base_model_name_or_path")
    matched = _match_base(str(named), bases) if isinstance(named, str) and named else None
    if base is not None:
        try:
            chosen = bases.get(base)
        except (UnknownBaseError, ValueError) as exc:
            raise PublishRefusedError(f"--base: {exc}") from exc
        if matched is not None and matched.id != chosen.id:
            raise _refuse(
                ADAPTER_CONFIG,
                "base_model_name_or_path",
                f"{named!r} is the registered base {matched.id!r}, not {chosen.id!r}",
            )
        return chosen
    if matched is None:
        known = ", ".join(b.id for b in bases.list()) or "none"
        raise _refuse(
            ADAPTER_CONFIG,
            "base_model_name_or_path",
            f"{named!r} is not a registered base model (registered: {known}); "
            "pass the base id explicitly",
        )
    return matched


def _match_base(named: str, bases: BaseRegistry) -> BaseModel | None:
    """A registered base by id, by folder, or by a folder's last component (an adapter
    trained on the same base under another home)."""
    registered = bases.list()
    for b in registered:
        if named == b.id:
            return b
    try:
        target = Path(named).expanduser().resolve()
    except (OSError, RuntimeError):
        target = None
    for b in registered:
        if target is not None and target == b.path.resolve():
            return b
    tail = named.rstrip("/").rsplit("/", 1)[-1]
    for b in registered:
        if tail == b.id:
            return b
    return None


def _check_lora_config(config: dict[str, Any], max_rank: int) -> None:
    if config.get("peft_type") != "LORA":
        raise _refuse(
            ADAPTER_CONFIG,
            "peft_type",
            f"{config.get('peft_type')!r}: only LORA adapters can be served by vLLM",
        )
    r = config.get("r")
    if not isinstance(r, int) or isinstance(r, bool) or r <= 0:
        raise _refuse(ADAPTER_CONFIG, "r", f"{r!r}: must be a positive integer")
    if r > max_rank:
        raise _refuse(ADAPTER_CONFIG, "r", f"rank {r} exceeds store.max_lora_rank = {max_rank}")
    pattern = config.get("rank_pattern") or {}
    if not isinstance(pattern, dict):
        raise _refuse(ADAPTER_CONFIG, "rank_pattern", "must be a mapping of module -> rank")
    for key, value in pattern.items():
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise _refuse(ADAPTER_CONFIG, f"rank_pattern.{key}", "must be a positive integer")
        if value > max_rank:
            raise _refuse(
                ADAPTER_CONFIG,
                f"rank_pattern.{key}",
                f"rank {value} exceeds store.max_lora_rank = {max_rank}",
            )
    if config.get("use_dora"):
        raise _refuse(
            ADAPTER_CONFIG, "use_dora", "DoRA adapters are refused: vLLM cannot serve them"
        )
    if config.get("modules_to_save"):
        raise _refuse(
            ADAPTER_CONFIG,
            "modules_to_save",
            f"{config['modules_to_save']!r}: fully trained modules are refused; "
            "vLLM serves LoRA weights only",
        )
    if config.get("bias", "none") != "none":
        raise _refuse(ADAPTER_CONFIG, "bias", f"{config.get('bias')!r}: must be 'none'")
    unsupported = {
        "lora_bias": "LoRA bias",
        "layer_replication": "layer_replication",
        "alora_invocation_tokens": "activated LoRA (aLoRA)",
        "use_qalora": "QALoRA",
        "use_bdlora": "block-diagonal LoRA",
        "trainable_token_indices": "trainable tokens",
        "target_parameters": "LoRA on parameters (target_parameters)",
    }
    for key, what in unsupported.items():
        if config.get(key):
            raise _refuse(ADAPTER_CONFIG, key, f"{what} is refused: vLLM cannot serve it")
    init = config.get("init_lora_weights", True)
    if isinstance(init, str) and init.lower().startswith(_BASE_MODIFYING_INITS):
        raise _refuse(
            ADAPTER_CONFIG,
            "init_lora_weights",
            f"{init!r} changes the base weights; convert it to a plain LoRA adapter first",
        )


def _rank_for(config: dict[str, Any], module: str) -> int:
    """PEFT's rule (`get_pattern_key`): the first `rank_pattern` key matching a dotted suffix."""
    for key, value in (config.get("rank_pattern") or {}).items():
        if re.match(rf"(.*\.)?({key})$", module):
            return int(value)
    return int(config["r"])


def _check_target_modules(
    config: dict[str, Any],
    linear: dict[str, tuple[int, ...]],
    servable: set[str],
    embeddings: set[str],
    arch: str,
) -> None:
    """The declared targets; the tensors are checked too, since PEFT records targets that
    matched nothing and vLLM goes by the tensors."""
    targets = config.get("target_modules")
    if targets is None or targets == "all-linear":
        return
    if isinstance(targets, str):
        try:
            suffixes = {m.rsplit(".", 1)[-1] for m in linear if re.fullmatch(targets, m)}
        except re.error as exc:
            raise _refuse(ADAPTER_CONFIG, "target_modules", f"invalid pattern ({exc})") from exc
    elif isinstance(targets, list) and all(isinstance(t, str) for t in targets):
        suffixes = {t.rsplit(".", 1)[-1] for t in targets}
    else:
        raise _refuse(ADAPTER_CONFIG, "target_modules", "must be a list of names or a pattern")
    for suffix in sorted(suffixes - servable):
        raise _refuse(
            ADAPTER_CONFIG, "target_modules", _unservable(suffix, servable, embeddings, arch)
        )


def _unservable(suffix: str, servable: set[str], embeddings: set[str], arch: str) -> str:
    if suffix in embeddings:
        return (
            f"LoRA on the embedding layer {suffix!r} is refused; "
            f"target the linear layers ({', '.join(sorted(servable))})"
        )
    return f"{suffix!r} cannot be served by vLLM for {arch} (servable: {sorted(servable)})"


def inspect_lora(
    folder: Path, bases: BaseRegistry, base: str | None, max_rank: int, arch: ArchLookup
) -> Inspection:
    refuse_unsafe_files(folder)
    config = _read_json(folder, ADAPTER_CONFIG)
    _check_lora_config(config, max_rank)
    chosen = _lora_base(config, bases, base)

    support = arch(chosen.architecture)
    if not support.supports_lora:
        raise PublishRefusedError(
            f"base {chosen.id!r}: architecture {chosen.architecture} "
            f"{'has no LoRA support' if support.known else 'is unknown'} in vLLM"
        )
    linear = _linear_shapes(chosen)
    embeddings = set(support.embedding_modules)
    servable = {m.rsplit(".", 1)[-1] for m in linear} - embeddings
    _check_target_modules(config, linear, servable, embeddings, chosen.architecture)

    tensors = _tensor_headers(folder, ADAPTER_WEIGHTS)
    if not tensors:
        raise _refuse(ADAPTER_WEIGHTS, "tensors", "no LoRA tensors in the file")
    pairs: dict[str, dict[str, tuple[int, ...]]] = {}
    dtypes: set[str] = set()
    arch_name = chosen.architecture
    for key, (dtype, shape) in sorted(tensors.items()):
        emb = _LORA_EMBEDDING_KEY.match(key)
        if emb is not None:
            suffix = emb["module"].rsplit(".", 1)[-1]
            why = _unservable(suffix, servable, embeddings | {suffix}, arch_name)
            raise _refuse(ADAPTER_WEIGHTS, key, why)
        m = _LORA_KEY.match(key)
        if m is None:
            raise _refuse(ADAPTER_WEIGHTS, key, "not a LoRA A/B weight (unexpected tensor)")
        module, ab = m["module"], m["ab"]
        suffix = module.rsplit(".", 1)[-1]
        if suffix not in servable:
            raise _refuse(
                ADAPTER_WEIGHTS, key, _unservable(suffix, servable, embeddings, arch_name)
            )
        if module not in linear:
            raise _refuse(ADAPTER_WEIGHTS, key, f"base {chosen.id!r} has no module {module!r}")
        if dtype not in _FLOAT_DTYPES:
            raise _refuse(ADAPTER_WEIGHTS, key, f"dtype {dtype} (expected F16, BF16 or F32)")
        dtypes.add(dtype)
        pairs.setdefault(module, {})[ab] = shape

    ranks: dict[str, int] = {}
    for module, ab in sorted(pairs.items()):
        if set(ab) != {"A", "B"}:
            missing = ({"A", "B"} - set(ab)).pop()
            raise _refuse(
                ADAPTER_WEIGHTS, f"base_model.model.{module}.lora_{missing}.weight", "missing"
            )
        out_features, in_features = linear[module]
        rank = _rank_for(config, module)
        expected = {"A": (rank, in_features), "B": (out_features, rank)}
        for side in ("A", "B"):
            if ab[side] != expected[side]:
                raise _refuse(
                    ADAPTER_WEIGHTS,
                    f"base_model.model.{module}.lora_{side}.weight",
                    f"shape {list(ab[side])} does not match base {chosen.id!r} "
                    f"(expected {list(expected[side])} for rank {rank})",
                )
        ranks[module] = rank

    return Inspection(
        base=chosen.id,
        derived={
            "rank": max(ranks.values()),
            "lora_alpha": config.get("lora_alpha"),
            "use_rslora": bool(config.get("use_rslora", False)),
            "target_modules": sorted({m.rsplit(".", 1)[-1] for m in ranks}),
            "lora_modules": len(ranks),
            "dtype": "/".join(sorted(dtypes)),
            "architecture": chosen.architecture,
        },
    )


# -- full models ------------------------------------------------------------------------


def _tokenizer_identity(folder: Path) -> Any:
    """What makes two tokenizers interchangeable: the vocabulary and its special tokens."""
    path = folder / "tokenizer.json"
    if path.is_file():
        try:
            data = json.loads(path.read_text())
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise _refuse("tokenizer.json", "content", f"not valid JSON ({exc})") from exc
        added = [
            (t.get("id"), t.get("content"), t.get("special")) for t in data.get("added_tokens", [])
        ]
        return ("json", json.dumps(data.get("model"), sort_keys=True), added)
    path = folder / "tokenizer.model"
    if path.is_file():
        return ("sentencepiece", path.read_bytes())
    return None


def inspect_model(
    folder: Path, bases: BaseRegistry, base: str | None, arch: ArchLookup
) -> Inspection:
    refuse_unsafe_files(folder)
    config = _read_json(folder, "config.json")
    architectures = config.get("architectures")
    if not isinstance(architectures, list) or not architectures:
        raise _refuse("config.json", "architectures", "missing: cannot tell how to load it")
    architecture = str(architectures[0])
    if not arch(architecture).known:
        raise _refuse("config.json", "architectures", f"{architecture} is not a vLLM model class")

    shards = _weight_files(folder)
    if not shards:
        raise _refuse("model.safetensors", "file", "missing: no safetensors weights")
    parameters = 0
    layers: set[int] = set()
    for rel in shards:
        for key, (_, shape) in _tensor_headers(folder, rel).items():
            count = 1
            for d in shape:
                count *= d
            parameters += count
            if found := _LAYER_INDEX.search(key):
                layers.add(int(found.group(1)))
    n_layers = config.get("num_hidden_layers")
    if layers and isinstance(n_layers, int) and layers != set(range(n_layers)):
        raise _refuse(
            "config.json",
            "num_hidden_layers",
            f"{n_layers}, but the weights hold layers {sorted(layers)} "
            "(kept layers must be renumbered 0..n-1)",
        )

    if not (folder / "tokenizer_config.json").is_file():
        raise _refuse("tokenizer_config.json", "file", "missing: the tokenizer must ship with it")
    identity = _tokenizer_identity(folder)
    if identity is None:
        raise _refuse("tokenizer.json", "file", "missing: the tokenizer must ship with it")

    candidates = [b for b in bases.list() if _tokenizer_identity(b.path) == identity]
    if base is not None:
        try:
            chosen = bases.get(base)
        except (UnknownBaseError, ValueError) as exc:
            raise PublishRefusedError(f"--base: {exc}") from exc
        if chosen not in candidates:
            raise _refuse("tokenizer.json", "model", f"differs from base {chosen.id!r}'s tokenizer")
    else:
        if not candidates:
            raise _refuse("tokenizer.json", "model", "no registered base model shares it")
        if len(candidates) > 1:
            # Same tokenizer, several bases (the tiny test model shares the default's): the
            # one with the same width is the family it was cut from.
            same = [
                b
                for b in candidates
                if b.hf_config().get("hidden_size") == config.get("hidden_size")
            ]
            if len(same) != 1:
                ids = ", ".join(b.id for b in candidates)
                raise PublishRefusedError(
                    f"tokenizer.json: model: shared by several registered bases ({ids}); "
                    "pass the base id explicitly"
                )
            candidates = same
        chosen = candidates[0]

    return Inspection(
        base=chosen.id,
        derived={
            "architecture": architecture,
            "num_hidden_layers": n_layers,
            "hidden_size": config.get("hidden_size"),
            "vocab_size": config.get("vocab_size"),
            "parameters": parameters,
            "dtype": config.get("dtype") or config.get("torch_dtype"),
        },
    )
