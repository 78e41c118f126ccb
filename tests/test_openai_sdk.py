"""The official openai SDK, sync and async, pointed at the gateway served by Daphne."""
import asyncio

import openai
import pytest

from .conftest import FULL_KEY, PROVIDER_SECRET, wait_for_log


@pytest.fixture
def client(live):
    with openai.OpenAI(base_url=live.url + "/v1", api_key=FULL_KEY, max_retries=0) as c:
        yield c


def test_chat_completion(client, live, mock_upstream, db_access):
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "ping pong"}]
    )
    completion = raw.parse()
    assert completion.choices[0].message.content == "Hello from mock: ping pong"
    assert completion.usage.prompt_tokens > 0
    request_id = raw.headers["x-request-id"]
    assert raw.headers["x-gateway-provider"] == "mock"
    assert raw.headers["x-gateway-upstream-model"] == "gpt-4o-mini"
    assert raw.headers["x-gateway-attempts"] == "1"
    assert float(raw.headers["x-gateway-overhead-ms"]) >= 0
    # The upstream got the provider key, never the virtual key.
    assert mock_upstream.requests[-1]["api_key"] == PROVIDER_SECRET

    row = wait_for_log(request_id)
    assert (row.status, row.endpoint, row.provider, row.route) == (200, "chat", "mock", "gpt-4o-mini")
    assert row.input_tokens == completion.usage.prompt_tokens
    assert row.output_tokens == completion.usage.completion_tokens
    assert not row.tokens_estimated
    expected = (row.input_tokens * 0.15 + row.output_tokens * 0.60) / 1e6
    assert float(row.cost_usd) == pytest.approx(expected, rel=1e-6)
    assert row.virtual_key.name == "full"
    assert row.latency_ms > 0 and row.ttfb_ms > 0


def test_chat_through_an_alias(client):
    completion = client.chat.completions.create(model="mini", messages=[{"role": "user", "content": "alias"}])
    assert completion.choices[0].message.content.endswith("alias")


def test_streamed_chat_hides_usage_unless_asked(client, db_access):
    stream = client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "one two three"}], stream=True
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Hello from mock: one two three"
    assert all(c.usage is None for c in chunks)
    # The gateway asked upstream for usage anyway, so the log has real counts.
    row = wait_for_log(stream.response.headers["x-request-id"])
    assert row.stream and row.status == 200
    assert row.output_tokens == 6 and not row.tokens_estimated


def test_streamed_chat_with_include_usage(client):
    stream = client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "count"}], stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert chunks[-1].choices == []
    assert chunks[-1].usage.completion_tokens == 4


def test_legacy_completions(client):
    completion = client.completions.create(model="gpt-3.5-turbo-instruct", prompt="say hi")
    assert completion.choices[0].text
    streamed = "".join(c.choices[0].text for c in client.completions.create(
        model="gpt-3.5-turbo-instruct", prompt="say hi", stream=True) if c.choices)
    assert streamed == completion.choices[0].text


def test_embeddings(client, db_access):
    raw = client.embeddings.with_raw_response.create(model="text-embedding-3-small", input=["a", "b"])
    result = raw.parse()
    assert [d.index for d in result.data] == [0, 1]
    assert len(result.data[0].embedding) == 8
    row = wait_for_log(raw.headers["x-request-id"])
    assert row.endpoint == "embeddings" and row.input_tokens == result.usage.prompt_tokens


def test_models_list_and_retrieve(client):
    ids = {m.id for m in client.models.list()}
    assert {"gpt-4o-mini", "mini", "text-embedding-3-small"} <= ids
    assert client.models.retrieve("mini").id == "mini"
    with pytest.raises(openai.NotFoundError) as caught:
        client.models.retrieve("no-such-model")
    assert caught.value.body["code"] == "model_not_found"


def test_async_client_chat_stream_and_embeddings(live):
    async def main():
        async with openai.AsyncOpenAI(base_url=live.url + "/v1", api_key=FULL_KEY, max_retries=0) as c:
            completion = await c.chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": "async"}])
            stream = await c.chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": "async"}], stream=True,
                stream_options={"include_usage": True})
            pieces = [chunk async for chunk in stream]
            embedded = await c.embeddings.create(model="text-embedding-3-small", input="x")
            models = [m.id async for m in c.models.list()]
            return completion, pieces, embedded, models

    completion, pieces, embedded, models = asyncio.run(main())
    assert completion.choices[0].message.content == "Hello from mock: async"
    assert "".join(p.choices[0].delta.content or "" for p in pieces if p.choices) == "Hello from mock: async"
    assert pieces[-1].usage is not None
    assert len(embedded.data) == 1
    assert "gpt-4o-mini" in models


def test_concurrent_async_requests(live):
    async def main():
        async with openai.AsyncOpenAI(base_url=live.url + "/v1", api_key=FULL_KEY, max_retries=0) as c:
            return await asyncio.gather(*[
                c.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": f"n{i}"}])
                for i in range(20)
            ])

    results = asyncio.run(main())
    assert sorted(r.choices[0].message.content for r in results) == sorted(f"Hello from mock: n{i}" for i in range(20))


def test_sdk_errors_are_typed(live):
    with openai.OpenAI(base_url=live.url + "/v1", api_key="sk-gw-wrong", max_retries=0) as c:
        with pytest.raises(openai.AuthenticationError):
            c.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}])
    with openai.OpenAI(base_url=live.url + "/v1", api_key=FULL_KEY, max_retries=0) as c:
        with pytest.raises(openai.RateLimitError) as caught:
            c.chat.completions.create(model="no-retry", messages=[{"role": "user", "content": "x"}],
                                      extra_body={"mock": {"status": 429, "retry_after": 3}})
        assert caught.value.response.headers["retry-after"] == "3"
        assert PROVIDER_SECRET not in caught.value.response.text
