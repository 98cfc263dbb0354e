"""Loss masks: assistant content + <|im_end|> only, never the template's trailing newline."""

from __future__ import annotations

from typing import Any

import pytest
from transformers import AutoTokenizer

from adapters_store.bases import BaseModel
from tuner.data import IGNORE_INDEX, encode_conversation


@pytest.fixture(scope="module")
def tokenizer(tiny_model: BaseModel) -> Any:
    return AutoTokenizer.from_pretrained(tiny_model.path)


def _trained_text(tokenizer: Any, messages: list[dict[str, Any]]) -> list[str]:
    enc = encode_conversation(tokenizer, messages)
    assert len(enc.input_ids) == len(enc.labels)
    spans: list[list[int]] = []
    prev = False
    for tok, lab in zip(enc.input_ids, enc.labels, strict=True):
        on = lab != IGNORE_INDEX
        if on:
            assert lab == tok
            if not prev:
                spans.append([])
            spans[-1].append(tok)
        prev = on
    return [tokenizer.decode(s) for s in spans]


def test_single_turn_trains_label_and_end_of_turn(tokenizer: Any) -> None:
    msgs = [
        {"role": "system", "content": "Classify."},
        {"role": "user", "content": "no signal downtown"},
        {"role": "assistant", "content": "network_outage"},
    ]
    assert _trained_text(tokenizer, msgs) == ["network_outage<|im_end|>"]
    enc = encode_conversation(tokenizer, msgs)
    # eos == pad == <|im_end|>: the end-of-turn token is trained although it is the pad id,
    # and the "\n" after it is not.
    assert tokenizer.eos_token_id == tokenizer.pad_token_id
    assert enc.labels[-2] == tokenizer.eos_token_id
    assert enc.labels[-1] == IGNORE_INDEX
    assert tokenizer.decode([enc.input_ids[-1]]) == "\n"
    assert enc.trained_tokens == len(tokenizer("network_outage")["input_ids"]) + 1


def test_multi_turn_and_weight_zero(tokenizer: Any) -> None:
    msgs = [
        {"role": "user", "content": "first"},
        {"role": "assistant", "content": "one", "weight": 0},
        {"role": "user", "content": "second"},
        {"role": "assistant", "content": "two"},
        {"role": "user", "content": "third"},
        {"role": "assistant", "content": "three", "weight": 1},
    ]
    assert _trained_text(tokenizer, msgs) == ["two<|im_end|>", "three<|im_end|>"]


def test_input_ids_are_the_chat_template(tokenizer: Any) -> None:
    msgs = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    enc = encode_conversation(tokenizer, msgs)
    rendered = tokenizer.apply_chat_template(msgs, tokenize=False)
    assert tokenizer.decode(enc.input_ids) == rendered
    # No system message: the template adds its default one, and nothing of it is trained.
    assert "SmolLM" in rendered
    assert _trained_text(tokenizer, msgs) == ["hello<|im_end|>"]
