"""Build PEFT-format LoRA adapters without torch or training, for tests of any package.

The folder is what `PeftModel.save_pretrained` writes (`adapter_config.json` +
`adapter_model.safetensors` with `base_model.model.<module>.lora_A/B.weight`), shaped from
the base checkpoint's header, so the store accepts it and vLLM and PEFT load it. Keyword
overrides bend it into each kind of invalid adapter the store must refuse.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file

from adapters_store.bases import BaseModel

__all__ = ["LLAMA_LINEAR", "base_linear_shapes", "write_lora"]

LLAMA_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def base_linear_shapes(base: BaseModel) -> dict[str, tuple[int, int]]:
    """Module path -> [out, in] of every 2-D weight in the base's `model.safetensors`."""
    out: dict[str, tuple[int, int]] = {}
    with safe_open(str(base.path / "model.safetensors"), framework="np") as f:
        for key in f.keys():  # noqa: SIM118 - safe_open handles are not mappings
            shape = f.get_slice(key).get_shape()
            if key.endswith(".weight") and len(shape) == 2:
                out[key.removesuffix(".weight")] = (int(shape[0]), int(shape[1]))
    return out


def write_lora(
    folder: Path,
    base: BaseModel,
    r: int = 8,
    targets: Iterable[str] = LLAMA_LINEAR,
    config: dict[str, Any] | None = None,
    extra_tensors: dict[str, np.ndarray] | None = None,
    seed: int = 0,
    scale: float = 0.0,
) -> Path:
    """Write an adapter for `base` on every module whose last name part is in `targets`.

    `scale` 0 gives lora_B = 0 (the adapter changes nothing, as PEFT initialises it);
    `config` entries override adapter_config.json; `extra_tensors` are added verbatim.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    targets = tuple(targets)
    rng = np.random.default_rng(seed)
    tensors: dict[str, np.ndarray] = {}
    for module, (out_f, in_f) in sorted(base_linear_shapes(base).items()):
        if module.rsplit(".", 1)[-1] not in targets:
            continue
        prefix = f"base_model.model.{module}"
        tensors[f"{prefix}.lora_A.weight"] = rng.normal(0, 0.02, (r, in_f)).astype(np.float32)
        tensors[f"{prefix}.lora_B.weight"] = (rng.normal(0, 1, (out_f, r)) * scale).astype(
            np.float32
        )
    tensors.update(extra_tensors or {})
    save_file(tensors, str(folder / "adapter_model.safetensors"), metadata={"format": "pt"})
    adapter_config: dict[str, Any] = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": str(base.path),
        "r": r,
        "lora_alpha": 2 * r,
        "lora_dropout": 0.0,
        "target_modules": sorted(targets),
        "bias": "none",
        "use_dora": False,
        "use_rslora": False,
        "modules_to_save": None,
        "rank_pattern": {},
        "alpha_pattern": {},
        "fan_in_fan_out": False,
        "inference_mode": True,
        "init_lora_weights": True,
    }
    adapter_config.update(config or {})
    (folder / "adapter_config.json").write_text(json.dumps(adapter_config, indent=2) + "\n")
    return folder
