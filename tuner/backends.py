"""Greedy generation and reference scoring for evaluation: vLLM or transformers.

Both backends take whole conversations and apply the model's chat template themselves, so
the prompt the model sees is the one the gateway would build. vLLM is what serves the
artifact; transformers is the fallback where vLLM is absent and the reference it is checked
against. Perplexity always comes from transformers (teacher-forced log-likelihood).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from adapters_store.hardware import engine_dtype
from tuner.data import IGNORE_INDEX, encode_conversation, render_prompt
from tuner.hardware import resolve_precision
from tuner.prefix import greedy_generate, pad_batch, prefix_forward

__all__ = [
    "Backend",
    "ModelSpec",
    "TransformersBackend",
    "VllmBackend",
    "choose_backend",
]

Conversation = Sequence[dict[str, Any]]


@dataclass(frozen=True)
class ModelSpec:
    """What to run: a base folder, optionally with a LoRA adapter, or a full model folder."""

    path: Path  # base model folder, or the full model folder
    adapter: Path | None = None  # PEFT folder applied on top of `path`
    name: str = "model"  # for vLLM's LoRARequest and for messages
    uid: int = 1  # vLLM's lora_int_id


class Backend(Protocol):
    def generate(
        self, spec: ModelSpec, conversations: Sequence[Conversation], max_new_tokens: int
    ) -> list[str]: ...


def choose_backend(name: str) -> str:
    """`auto` is vLLM on a GPU and transformers on the CPU.

    On the CPU, vLLM's LoRA path is the slow one (DESIGN.md: 64 prompts took ~8x longer
    through an adapter than on the base), so offline eval there uses transformers.
    """
    if name != "auto":
        return name
    try:
        import torch

        if torch.cuda.is_available():
            import vllm  # noqa: F401

            return "vllm"
    except ImportError:
        pass
    return "transformers"


class TransformersBackend:
    """Batched greedy decoding and teacher-forced scoring with transformers."""

    def __init__(self, batch_size: int = 16, precision: str = "auto") -> None:
        self.batch_size = batch_size
        # bf16 where it is native (what vLLM computes in); fp32 where bf16 is emulated.
        self.precision = resolve_precision(precision)
        self._loaded: tuple[ModelSpec, Any, Any] | None = None

    def _model(self, spec: ModelSpec) -> tuple[Any, Any]:
        if self._loaded is not None and self._loaded[0] == spec:
            return self._loaded[1], self._loaded[2]
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self._loaded = None
        tokenizer = AutoTokenizer.from_pretrained(spec.path)
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float32
        model: Any = AutoModelForCausalLM.from_pretrained(spec.path, dtype=dtype)
        if spec.adapter is not None:
            from peft import PeftModel

            # Merged weights are what the served model computes, and decode runs faster.
            model = PeftModel.from_pretrained(model, spec.adapter).merge_and_unload()
        model.eval()
        self._loaded = (spec, model, tokenizer)
        return model, tokenizer

    def generate(
        self, spec: ModelSpec, conversations: Sequence[Conversation], max_new_tokens: int
    ) -> list[str]:
        model, tokenizer = self._model(spec)
        prompts = [
            tokenizer(render_prompt(tokenizer, c), add_special_tokens=False)["input_ids"]
            for c in conversations
        ]
        # Longest first keeps padding low; results go back in the caller's order.
        order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
        texts: dict[int, str] = {}
        for start in range(0, len(order), self.batch_size):
            idx = order[start : start + self.batch_size]
            generated = greedy_generate(
                model,
                [prompts[i] for i in idx],
                max_new_tokens,
                eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id or 0,
            )
            for i, row in zip(idx, generated, strict=True):
                texts[i] = tokenizer.decode(row, skip_special_tokens=True)
        return [texts[i] for i in range(len(prompts))]

    def score(
        self, spec: ModelSpec, conversations: Sequence[Conversation]
    ) -> list[tuple[float, int]]:
        """(negative log-likelihood, token count) of each conversation's trained spans."""
        import torch
        import torch.nn.functional as F

        model, tokenizer = self._model(spec)
        encoded = [encode_conversation(tokenizer, c) for c in conversations]
        order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i].input_ids))
        results: dict[int, tuple[float, int]] = {}
        pad = tokenizer.pad_token_id or 0
        for start in range(0, len(order), self.batch_size):
            idx = order[start : start + self.batch_size]
            batch = pad_batch([(encoded[i].input_ids, encoded[i].labels) for i in idx], pad)
            ids, mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
            targets = labels[:, 1:]
            keep = (targets != IGNORE_INDEX).any(dim=0).nonzero().flatten()
            with torch.inference_mode():
                logits = prefix_forward(model, ids, mask, keep)
            picked = targets[:, keep]
            nll = F.cross_entropy(
                logits.float().transpose(1, 2), picked, ignore_index=IGNORE_INDEX, reduction="none"
            )
            for row, i in enumerate(idx):
                valid = picked[row] != IGNORE_INDEX
                results[i] = (float(nll[row][valid].sum()), int(valid.sum()))
        return [results[i] for i in range(len(encoded))]


class VllmBackend:
    """Generation through one offline vLLM engine, with LoRA for adapters.

    An engine serves one base; adapters on it are LoRARequests. A full model gets an engine
    of its own (the previous one is shut down first: this machine has memory for one).
    """

    def __init__(self, llm: Any | None = None, kv_cache_gib: float = 2.0) -> None:
        self._llm = llm
        self._owned = llm is None
        self._path: Path | None = None
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(int(max(1, kv_cache_gib))))

    def _engine(self, path: Path) -> Any:
        if self._llm is not None and (not self._owned or self._path == path):
            return self._llm
        self.close()
        from vllm import LLM

        self._llm = LLM(
            str(path),
            dtype=engine_dtype("auto"),  # type: ignore[arg-type]  # what the gateway serves in here
            max_model_len=4096,
            enable_lora=True,
            max_lora_rank=64,
            max_loras=1,
            seed=0,
        )
        self._path = path
        return self._llm

    def generate(
        self, spec: ModelSpec, conversations: Sequence[Conversation], max_new_tokens: int
    ) -> list[str]:
        from vllm import SamplingParams

        llm = self._engine(spec.path)
        params = SamplingParams(temperature=0.0, max_tokens=max_new_tokens)
        lora = None
        if spec.adapter is not None:
            from vllm.lora.request import LoRARequest

            lora = LoRARequest(spec.name, spec.uid, str(spec.adapter))
        outputs = llm.chat(
            [list(c) for c in conversations], params, lora_request=lora, use_tqdm=False
        )
        return [o.outputs[0].text for o in outputs]

    def close(self) -> None:
        if self._owned and self._llm is not None:
            engine = self._llm
            self._llm = None
            del engine
            import gc

            gc.collect()
