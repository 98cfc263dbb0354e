"""tuner.train under FSDP: one forward per step, and a gathered full state dict saved once.

Both were found on an H200 (`accelerate launch --use_fsdp`, one process): the shared-prefix
pass (two forwards before one backward) broke FSDP2's resharding, and the gathered weights of
a full fine-tune re-saved the tied lm_head beside embed_tokens.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors import safe_open
from transformers import AutoModelForCausalLM, LlamaConfig

from tuner.data import IGNORE_INDEX
from tuner.recipe import Recipe
from tuner.train import _build_trainer, _save

_PAD = 0


def _tiny_llama() -> Any:
    config = LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        tie_word_embeddings=True,
        pad_token_id=_PAD,
    )
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config)


class _Tokenizer:
    """What the trainer and `_save` use of a tokenizer."""

    pad_token_id = _PAD

    def save_pretrained(self, folder: Path) -> None:
        (Path(folder) / "tokenizer.json").write_text("{}")


def _rows() -> list[dict[str, list[int]]]:
    # A 12-token shared prompt (long enough for the shared-prefix pass), then 2 label tokens.
    prompt = list(range(1, 13))
    return [
        {"input_ids": [*prompt, 20 + i, 30 + i], "labels": [IGNORE_INDEX] * 12 + [20 + i, 30 + i]}
        for i in range(2)
    ]


@pytest.mark.parametrize(("fsdp", "forwards"), [(False, 2), (True, 1)])
def test_fsdp_step_runs_one_forward(tmp_path: Path, fsdp: bool, forwards: int) -> None:
    model = _tiny_llama()
    recipe = Recipe(name="t", task="telecom-routing", method="full", precision="fp32")
    trainer, _ = _build_trainer(recipe, model, _Tokenizer(), _rows(), [], tmp_path)
    trainer.is_fsdp_enabled = fsdp  # what the Trainer sets from accelerate's FSDP plugin
    calls: list[int] = []
    model.register_forward_pre_hook(lambda _m, _a: calls.append(1))
    batch = trainer.data_collator(_rows())
    loss = trainer.compute_loss(model, batch)
    assert len(calls) == forwards
    assert torch.isfinite(loss) and loss.requires_grad


def test_gathered_state_dict_saves_tied_weights_once(tmp_path: Path) -> None:
    model = _tiny_llama()
    # Gathered weights are copies: lm_head.weight no longer shares embed_tokens' storage.
    gathered = {k: v.detach().clone() for k, v in model.state_dict().items()}
    assert "lm_head.weight" in gathered
    recipe = Recipe(name="t", task="telecom-routing", method="full")
    _save(recipe, model, _Tokenizer(), tmp_path / "model", torch, gathered)
    with safe_open(str(tmp_path / "model" / "model.safetensors"), "pt") as f:
        keys = set(f.keys())
        assert {f.get_tensor(k).dtype for k in keys} == {torch.bfloat16}
    assert "lm_head.weight" not in keys and "model.embed_tokens.weight" in keys
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "model")
    assert torch.equal(reloaded.lm_head.weight, reloaded.model.embed_tokens.weight)
