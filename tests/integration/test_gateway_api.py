"""The running gateway through the official `openai` client: models, chat (base and
adapters in one concurrent batch), streaming with usage, completions, error shapes."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import httpx
import openai
import pytest

if TYPE_CHECKING:
    from tests.integration.conftest import RunningGateway

pytestmark = [pytest.mark.engine, pytest.mark.slow]

TINY = "tiny-random-llama"  # the base the session's gateway serves (see conftest)
USER = [{"role": "user", "content": "Write one sentence about the sea."}]


def _client(gateway: RunningGateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.v1, api_key="unused", max_retries=0)


def test_models_lists_base_and_adapters(gateway: RunningGateway) -> None:
    models = {m.id: m.model_dump() for m in _client(gateway).models.list().data}
    assert models[TINY]["kind"] == "base" and models[TINY]["parent"] is None
    for name in ("alpha", "alpha@1", "beta", "beta@1"):
        assert models[name]["parent"] == TINY
        assert models[name]["kind"] == "lora"
    assert models["alpha"]["root"] == "alpha@1"


def test_base_and_two_adapters_in_one_concurrent_batch(gateway: RunningGateway) -> None:
    async def one(client: openai.AsyncOpenAI, model: str) -> tuple[str, str, str]:
        raw = await client.chat.completions.with_raw_response.create(
            model=model, messages=USER, max_tokens=16, temperature=0.0
        )
        parsed = raw.parse()
        return raw.headers["x-tunegate-artifact"], parsed.model, parsed.choices[0].message.content

    async def batch() -> list[tuple[str, str, str]]:
        async with openai.AsyncOpenAI(base_url=gateway.v1, api_key="x", max_retries=0) as c:
            models = [TINY, "alpha", "beta@1"] * 2
            return await asyncio.gather(*(one(c, m) for m in models))

    results = asyncio.run(batch())
    assert [r[0] for r in results] == [TINY, "alpha@1", "beta@1"] * 2
    assert [r[1] for r in results] == [TINY, "alpha@1", "beta@1"] * 2
    texts = {artifact: text for artifact, _, text in results}
    # Greedy decoding: the same model gives the same text twice in one batch, and the
    # adapters (random non-zero lora_B) change what the base model says.
    assert all(texts[a] == t for a, _, t in results)
    assert texts["alpha@1"] != texts[TINY]
    assert texts["beta@1"] != texts[TINY]


def test_stream_with_usage_matches_the_non_streamed_answer(gateway: RunningGateway) -> None:
    client = _client(gateway)
    whole = client.chat.completions.create(
        model="alpha", messages=USER, max_tokens=12, temperature=0.0
    )
    stream = client.chat.completions.create(
        model="alpha",
        messages=USER,
        max_tokens=12,
        temperature=0.0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.model_dump() == whole.usage.model_dump()
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == (
        whole.choices[0].finish_reason
    )
    assert {c.id for c in chunks} == {chunks[0].id} and chunks[0].model == "alpha@1"


def test_card_system_prompt_applies_only_without_a_system_message(
    gateway: RunningGateway,
) -> None:
    client = _client(gateway)
    user = [{"role": "user", "content": "Hi"}]

    def prompt_tokens(model: str, messages: list[dict[str, str]]) -> int:
        reply = client.chat.completions.create(model=model, messages=messages, max_tokens=1)
        return reply.usage.prompt_tokens  # type: ignore[union-attr]

    own = [{"role": "system", "content": "x"}, *user]
    # beta's card prompt replaces the template's default system prompt; alpha has none.
    assert prompt_tokens("beta", user) != prompt_tokens("alpha", user)
    assert prompt_tokens("beta", own) == prompt_tokens("alpha", own) == prompt_tokens(TINY, own)
    # The prompt is the chat template with the assistant turn opened, as vLLM's server and
    # the tuner render it: without it a tuned model answers "assistant\n<label>".
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gateway.base.path)
    text = tokenizer.apply_chat_template(own, add_generation_prompt=True, tokenize=False)
    assert text.endswith("<|im_start|>assistant\n")
    assert prompt_tokens(TINY, own) == len(tokenizer(text, add_special_tokens=False).input_ids)


def test_completions_endpoint(gateway: RunningGateway) -> None:
    client = _client(gateway)
    reply = client.completions.create(model="beta", prompt="Once upon a time", max_tokens=5)
    assert reply.model == "beta@1"
    assert reply.usage is not None and reply.usage.completion_tokens == 5
    assert reply.choices[0].finish_reason == "length"
    streamed = client.completions.create(
        model=TINY, prompt=[1, 2, 3], max_tokens=4, stream=True, temperature=0.0
    )
    assert sum(1 for _ in streamed) >= 1


def test_vllm_length_parameters(gateway: RunningGateway) -> None:
    """vLLM's `ignore_eos` and `min_tokens` (sent as OpenAI clients send extras) reach the
    sampler: the answer is exactly max_tokens long; a bad pair is a 400, not a 500."""
    client = _client(gateway)
    for endpoint in ("completions", "chat"):
        if endpoint == "completions":
            reply = client.completions.create(
                model="alpha", prompt="Hi", max_tokens=40, extra_body={"ignore_eos": True}
            )
        else:
            reply = client.chat.completions.create(  # type: ignore[assignment]
                model=TINY, messages=USER, max_tokens=40, extra_body={"min_tokens": 40}
            )
        assert reply.usage is not None and reply.usage.completion_tokens == 40, endpoint
        assert reply.choices[0].finish_reason == "length"
    with pytest.raises(openai.BadRequestError) as info:
        client.completions.create(
            model=TINY, prompt="Hi", max_tokens=4, extra_body={"min_tokens": 9}
        )
    assert "min_tokens" in info.value.message
    with pytest.raises(openai.BadRequestError):
        client.completions.create(
            model=TINY, prompt="Hi", max_tokens=4, extra_body={"min_tokens": -1}
        )


@pytest.mark.parametrize(
    ("kwargs", "status", "param"),
    [
        ({"model": "no-such-adapter"}, 404, "model"),
        ({"model": "alpha@7"}, 404, "model"),
        ({"model": "Not A Name"}, 400, "model"),
        ({"temperature": 9}, 400, "temperature"),
        ({"n": 3}, 400, "n"),
        ({"messages": [{"role": "wizard", "content": "x"}]}, 400, "messages.[0].role"),
        ({"max_tokens": 600}, 400, "max_tokens"),
        ({"messages": [{"role": "user", "content": "word " * 700}]}, 400, "messages"),
    ],
)
def test_errors_in_the_openai_shape(
    gateway: RunningGateway, kwargs: dict[str, Any], status: int, param: str
) -> None:
    args: dict[str, Any] = {"model": TINY, "messages": USER, "max_tokens": 4, **kwargs}
    with pytest.raises(openai.APIStatusError) as info:
        _client(gateway).chat.completions.create(**args)
    error = info.value
    assert error.status_code == status
    body = error.body
    assert isinstance(body, dict) and set(body) == {"message", "type", "param", "code"}
    assert body["param"] == param
    assert error.response.headers["x-request-id"]


def test_invalid_json_and_unknown_routes(gateway: RunningGateway) -> None:
    bad = httpx.post(
        gateway.v1 + "/chat/completions",
        content=b"{oops",
        headers={"content-type": "application/json"},
    )
    assert bad.status_code == 400 and set(bad.json()["error"]) == {
        "message",
        "type",
        "param",
        "code",
    }
    assert httpx.get(gateway.v1 + "/embeddings").status_code in (404, 405)
    assert "/v1/chat/completions" in httpx.get(gateway.url + "/schema/openapi.json").json()["paths"]
