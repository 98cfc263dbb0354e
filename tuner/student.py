"""Students for distillation: a model cut from a deeper one by keeping a subset of its layers.

A decoder's layers are a `ModuleList`; keeping some of them gives a shallower model of the
same width that starts from trained weights, with the same tokenizer, embeddings and LM head.
Two things must follow the cut or the model is silently wrong:
- each kept attention layer's `layer_idx` is its slot in the KV cache: a kept layer still
  saying `layer_idx=27` in a 10-layer model reads and writes the wrong cache entry (or fails
  when there is none), so every kept layer is renumbered 0..n-1;
- `config.num_hidden_layers` (and per-layer lists such as `layer_types`) must describe the
  kept layers, or transformers and vLLM build a different model from the saved config.

Layer specs (the recipe's `student_layers`), for a teacher with n layers:
  `all`          every layer (a student from another, smaller registered base)
  `every:K`      layers 0, K, 2K, ... and always the last one (DistilBERT's "every other")
  `ends:K`       the first K and the last K layers
  `spread:N`     N layers evenly spaced from the first to the last
  `0,3,6,29`     exactly these layers
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "StudentError",
    "decoder_layers",
    "drop_layers",
    "save_model",
    "select_layers",
    "tokenizer_fingerprint",
]


class StudentError(ValueError):
    """A layer spec or a student model that cannot be built; the message says why."""


def select_layers(spec: str, n_layers: int) -> list[int]:
    """The sorted layer indices `spec` keeps out of `n_layers` (see the module docstring)."""
    if n_layers < 1:
        raise StudentError(f"a model with {n_layers} layers has none to keep")
    text = spec.strip().lower()
    kind, sep, arg = text.partition(":")
    if text == "all":
        keep = list(range(n_layers))
    elif sep and kind in ("every", "ends", "spread"):
        try:
            k = int(arg)
        except ValueError:
            raise StudentError(f"student_layers {spec!r}: {arg!r} is not an integer") from None
        if k < 1:
            raise StudentError(f"student_layers {spec!r}: the number must be >= 1")
        if kind == "every":
            keep = sorted({*range(0, n_layers, k), n_layers - 1})
        elif kind == "ends":
            if 2 * k > n_layers:
                raise StudentError(
                    f"student_layers {spec!r}: {2 * k} layers asked, the model has {n_layers}"
                )
            keep = [*range(k), *range(n_layers - k, n_layers)]
        else:
            if k > n_layers:
                raise StudentError(
                    f"student_layers {spec!r}: {k} layers asked, the model has {n_layers}"
                )
            # round(i * (n-1) / (N-1)) hits the first and the last layer and spaces the rest;
            # N distinct values because the step is >= 1 whenever N <= n.
            keep = [0] if k == 1 else [round(i * (n_layers - 1) / (k - 1)) for i in range(k)]
    else:
        try:
            keep = sorted({int(x) for x in text.split(",") if x.strip()})
        except ValueError:
            raise StudentError(
                f"student_layers {spec!r}: expected all, every:K, ends:K, spread:N "
                "or a comma-separated list of layer indices"
            ) from None
        if not keep:
            raise StudentError(f"student_layers {spec!r}: no layer listed")
        bad = [i for i in keep if not 0 <= i < n_layers]
        if bad:
            raise StudentError(
                f"student_layers {spec!r}: layers {bad} do not exist (0..{n_layers - 1})"
            )
    return keep


def decoder_layers(model: Any) -> Any:
    """The decoder's `ModuleList` of layers (Llama-style `model.model.layers`)."""
    inner = getattr(model, "model", None)
    layers = getattr(inner, "layers", None)
    if layers is None:
        raise StudentError(
            f"{type(model).__name__}: no `model.layers` list; layer dropping supports "
            "Llama-style decoders only"
        )
    return layers


def drop_layers(model: Any, keep: Sequence[int]) -> Any:
    """Keep only layers `keep` of `model`, in place; renumber them and fix the config."""
    import torch

    layers = decoder_layers(model)
    n = len(layers)
    keep = list(keep)
    if not keep or sorted(set(keep)) != keep or keep[0] < 0 or keep[-1] >= n:
        raise StudentError(f"layers to keep must be sorted, distinct and in 0..{n - 1}: {keep}")
    kept = [layers[i] for i in keep]
    for new_idx, layer in enumerate(kept):
        # Attention modules (and on some architectures the layer itself) carry the index of
        # their KV-cache slot.
        for module in layer.modules():
            if isinstance(getattr(module, "layer_idx", None), int):
                module.layer_idx = new_idx
    model.model.layers = torch.nn.ModuleList(kept)
    config = model.config
    # Per-layer lists (e.g. `layer_types` for sliding-window layers) must shrink with them.
    for key, value in list(vars(config).items()):
        if isinstance(value, list) and len(value) == n and key != "architectures":
            setattr(config, key, [value[i] for i in keep])
    config.num_hidden_layers = len(keep)
    return model


def tokenizer_fingerprint(folder: Path) -> str:
    """A hash of what makes two tokenizers interchangeable: vocabulary, specials, template."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    identity = {
        "vocab": sorted(tok.get_vocab().items()),
        "special": {k: str(v) for k, v in tok.special_tokens_map.items()},
        "chat_template": tok.chat_template,
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()


def save_model(model: Any, tokenizer: Any, dest: Path) -> None:
    """A plain HF folder in bf16 (safetensors + tokenizer): what the store and vLLM take."""
    import torch

    model.to(torch.bfloat16)
    model.config.dtype = torch.bfloat16
    model.save_pretrained(dest)
    tokenizer.save_pretrained(dest)
