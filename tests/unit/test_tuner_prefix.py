"""Shared-prefix computation gives the same logits, gradients and greedy tokens as plain runs."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from adapters_store.bases import BaseModel
from tuner.prefix import common_prefix_len, greedy_generate, pad_batch, prefix_forward


@pytest.fixture(scope="module")
def model(tiny_model: BaseModel) -> Any:
    from transformers import AutoModelForCausalLM

    m = AutoModelForCausalLM.from_pretrained(tiny_model.path, dtype=torch.float32)
    m.eval()
    return m


def _rows(prefix: int, tails: list[int]) -> list[list[int]]:
    g = torch.Generator().manual_seed(0)
    head = torch.randint(5, 40000, (prefix,), generator=g).tolist()
    return [head + torch.randint(5, 40000, (n,), generator=g).tolist() for n in tails]


def test_common_prefix_len() -> None:
    batch = pad_batch([([1, 2, 3, 4], [0] * 4), ([1, 2, 9], [0] * 3)], pad_id=0)
    assert common_prefix_len(batch["input_ids"], batch["attention_mask"]) == 2
    same = pad_batch([([1, 2, 3], [0] * 3), ([1, 2, 3], [0] * 3)], pad_id=0)
    # Each row keeps at least one token of its own.
    assert common_prefix_len(same["input_ids"], same["attention_mask"]) == 2
    one = pad_batch([([1, 2, 3], [0] * 3)], pad_id=0)
    assert common_prefix_len(one["input_ids"], one["attention_mask"]) == 0


def test_prefix_forward_matches_plain_forward_and_gradients(model: Any) -> None:
    rows = _rows(24, [5, 9, 3])
    batch = pad_batch([(r, r) for r in rows], pad_id=2)
    ids, mask = batch["input_ids"], batch["attention_mask"]
    keep = torch.arange(24, ids.size(1))
    valid = mask[:, 24:].bool()

    weight = model.model.layers[0].self_attn.q_proj.weight
    plain = model(input_ids=ids, attention_mask=mask, logits_to_keep=keep).logits
    (plain[valid].sum()).backward()
    grad_plain = weight.grad.clone()
    model.zero_grad()
    shared = prefix_forward(model, ids, mask, keep)
    (shared[valid].sum()).backward()
    grad_shared = weight.grad.clone()
    model.zero_grad()

    assert torch.allclose(plain[valid], shared[valid], atol=1e-4)
    # The prefix's gradient flows through the shared cache: exact, not an approximation.
    assert torch.allclose(grad_plain, grad_shared, atol=1e-3, rtol=1e-3)


def test_greedy_generate_matches_transformers_generate(model: Any) -> None:
    rows = _rows(16, [4, 7, 2, 7])
    ours = greedy_generate(model, rows, 5, eos_token_id=2, pad_token_id=2)
    for row, got in zip(rows, ours, strict=True):
        ref = model.generate(
            input_ids=torch.tensor([row]),
            max_new_tokens=5,
            do_sample=False,
            eos_token_id=2,
            pad_token_id=2,
        )[0, len(row) :].tolist()
        assert got == ref
