"""Students cut from deeper models: layer specs, renumbering, config, saving, tokenizers."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from adapters_store.bases import BaseModel
from tuner.student import (
    StudentError,
    decoder_layers,
    drop_layers,
    save_model,
    select_layers,
    tokenizer_fingerprint,
)


@pytest.mark.parametrize(
    ("spec", "n", "expected"),
    [
        ("all", 4, [0, 1, 2, 3]),
        ("every:3", 30, [0, 3, 6, 9, 12, 15, 18, 21, 24, 27, 29]),
        ("every:1", 3, [0, 1, 2]),
        ("every:5", 3, [0, 2]),
        (" Every:2 ", 4, [0, 2, 3]),
        ("ends:2", 6, [0, 1, 4, 5]),
        ("ends:1", 2, [0, 1]),
        ("spread:3", 5, [0, 2, 4]),
        ("spread:1", 2, [0]),
        ("spread:4", 4, [0, 1, 2, 3]),
        ("3,0,3", 5, [0, 3]),
        ("1", 2, [1]),
    ],
)
def test_layer_specs(spec: str, n: int, expected: list[int]) -> None:
    assert select_layers(spec, n) == expected


@pytest.mark.parametrize(
    ("spec", "n", "message"),
    [
        ("every:0", 4, "must be >= 1"),
        ("every:x", 4, "'x' is not an integer"),
        ("every:", 4, "is not an integer"),
        ("ends:3", 5, "6 layers asked, the model has 5"),
        ("spread:6", 5, "6 layers asked, the model has 5"),
        ("7", 5, r"layers \[7\] do not exist \(0..4\)"),
        ("1,-1", 5, r"layers \[-1\] do not exist"),
        ("", 5, "no layer listed"),
        ("half", 5, "expected all, every:K, ends:K, spread:N"),
        ("all", 0, "has none to keep"),
    ],
)
def test_bad_layer_specs_are_refused(spec: str, n: int, message: str) -> None:
    with pytest.raises(StudentError, match=message):
        select_layers(spec, n)


def test_spread_is_distinct_and_spans_the_model() -> None:
    for n in range(1, 41):
        for k in range(1, n + 1):
            keep = select_layers(f"spread:{k}", n)
            assert len(set(keep)) == k and keep == sorted(keep)
            assert keep[0] == 0 and (k == 1 or keep[-1] == n - 1)


def _llama(layers: int = 4, **extra: Any) -> Any:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        **extra,
    )
    return LlamaForCausalLM(config).eval()


def test_drop_layers_keeps_those_layers_renumbered_and_fixes_the_config() -> None:
    model = _llama(4)
    original = list(decoder_layers(model))
    model.config.layer_types = ["full_attention"] * 4
    student = drop_layers(model, [1, 3])
    layers = decoder_layers(student)
    assert [id(x) for x in layers] == [id(original[1]), id(original[3])]
    assert [layer.self_attn.layer_idx for layer in layers] == [0, 1]
    assert student.config.num_hidden_layers == 2
    assert student.config.layer_types == ["full_attention"] * 2


def test_a_cut_model_decodes_with_its_kv_cache_as_without() -> None:
    # Each kept layer writes its own cache slot: incremental decoding must give the logits a
    # full forward gives. A stale layer_idx would read another layer's keys or fail.
    student = drop_layers(_llama(4), [0, 2, 3])
    ids = torch.tensor([[5, 9, 12, 33, 7, 2]])
    with torch.no_grad():
        full = student(input_ids=ids).logits
        out = student(input_ids=ids[:, :3], use_cache=True)
        cache = out.past_key_values
        steps = [out.logits[:, -1]]
        for i in range(3, ids.size(1)):
            out = student(input_ids=ids[:, i : i + 1], past_key_values=cache, use_cache=True)
            steps.append(out.logits[:, -1])
    assert len(cache) == 3
    torch.testing.assert_close(torch.stack(steps, 1), full[:, 2:], rtol=1e-4, atol=1e-4)


def test_keeping_every_layer_changes_nothing() -> None:
    model = _llama(3)
    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        before = model(input_ids=ids).logits
        after = drop_layers(model, select_layers("all", 3))(input_ids=ids).logits
    torch.testing.assert_close(after, before)


@pytest.mark.parametrize("keep", [[], [2, 1], [1, 1], [0, 4], [-1, 0]])
def test_drop_layers_refuses_bad_indices(keep: list[int]) -> None:
    model = _llama(4)
    with pytest.raises(StudentError, match=r"sorted, distinct and in 0\.\.3"):
        drop_layers(model, keep)
    assert len(decoder_layers(model)) == 4  # nothing was changed


def test_non_llama_models_are_refused() -> None:
    with pytest.raises(StudentError, match="Llama-style decoders only"):
        decoder_layers(torch.nn.Linear(2, 2))


def test_saved_student_reloads_as_the_cut_model(tiny_model: BaseModel, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_model.path, dtype=torch.float32)
    student = drop_layers(model, [1])
    save_model(student, AutoTokenizer.from_pretrained(tiny_model.path), tmp_path / "s")
    config = json.loads((tmp_path / "s" / "config.json").read_text())
    assert config["num_hidden_layers"] == 1 and config["dtype"] == "bfloat16"
    assert (tmp_path / "s" / "model.safetensors").is_file()
    assert (tmp_path / "s" / "tokenizer.json").is_file()
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "s", dtype=torch.bfloat16)
    ids = torch.tensor([[1, 200, 300, 400]])
    with torch.no_grad():
        # Both bf16 now (save_model converts in place); kernels may round differently.
        torch.testing.assert_close(
            reloaded(input_ids=ids).logits, student(input_ids=ids).logits, rtol=0.02, atol=0.02
        )


def test_tokenizer_fingerprint(
    tiny_model: BaseModel, default_model: BaseModel, tmp_path: Path
) -> None:
    from transformers import AutoTokenizer

    # The tiny model was built with the default model's tokenizer: interchangeable.
    assert tokenizer_fingerprint(tiny_model.path) == tokenizer_fingerprint(default_model.path)
    tok = AutoTokenizer.from_pretrained(tiny_model.path)
    tok.add_tokens(["<|new_token|>"])
    tok.save_pretrained(tmp_path / "more")
    assert tokenizer_fingerprint(tmp_path / "more") != tokenizer_fingerprint(tiny_model.path)
    tok = AutoTokenizer.from_pretrained(tiny_model.path)
    tok.chat_template = "{{ messages[0]['content'] }}"
    tok.save_pretrained(tmp_path / "template")
    assert tokenizer_fingerprint(tmp_path / "template") != tokenizer_fingerprint(tiny_model.path)
