"""The embedded default model is a normal HF folder that transformers and vLLM both run."""

from __future__ import annotations

from typing import Any

import pytest

from adapters_store.bases import BaseModel

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


def test_transformers_loads_default_and_answers(default_model: BaseModel) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(default_model.path)
    model = AutoModelForCausalLM.from_pretrained(default_model.path, dtype=torch.bfloat16)
    assert tok.chat_template and "<|im_start|>" in tok.chat_template
    ids = tok.apply_chat_template(
        QUESTION, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )["input_ids"]
    out = model.generate(ids, max_new_tokens=24, do_sample=False)
    new = out[0][ids.shape[1] :]
    answer = tok.decode(new, skip_special_tokens=True)
    assert "Paris" in answer
    # The model stops by itself: the chat template's end-of-turn token is its eos.
    assert new[-1].item() == tok.convert_tokens_to_ids("<|im_end|>") == model.config.eos_token_id


def test_tiny_model_shares_the_tokenizer_and_runs(
    default_model: BaseModel, tiny_model: BaseModel
) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    assert tiny_model.verify() == []
    tok = AutoTokenizer.from_pretrained(tiny_model.path)
    assert tok.get_vocab() == AutoTokenizer.from_pretrained(default_model.path).get_vocab()
    model = AutoModelForCausalLM.from_pretrained(tiny_model.path, dtype=torch.bfloat16)
    assert sum(p.numel() for p in model.parameters()) < 10_000_000
    ids = tok.apply_chat_template(
        QUESTION, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )["input_ids"]
    out = model.generate(ids, max_new_tokens=4, do_sample=False)
    assert out.shape[1] == ids.shape[1] + 4 or out[0, -1].item() == tok.eos_token_id


@pytest.mark.engine
def test_vllm_loads_default_and_answers(vllm_engine: Any) -> None:
    from vllm import SamplingParams

    out = vllm_engine.chat(QUESTION, SamplingParams(temperature=0, max_tokens=24))
    completion = out[0].outputs[0]
    assert "Paris" in completion.text
    assert completion.finish_reason == "stop"
