"""Tests of the mock OpenAI upstream itself, over real loopback sockets."""

import asyncio
import base64
import json
import struct
import time

import httpx
import pytest
from aiohttp.test_utils import TestServer

from providers import mock_upstream
from providers.mock_upstream import MockUpstreamThread

AUTH = {"Authorization": "Bearer sk-test-123"}
CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "system", "content": "be nice"},
                                             {"role": "user", "content": "ping pong"}]}


@pytest.fixture
def client(mock_http):
    return mock_http(AUTH)


def sse_data(lines):
    """The payloads of `data:` lines."""
    return [line[len("data: "):] for line in lines if line.startswith("data: ")]


def stream_payloads(client, body, **kwargs):
    with client.stream("POST", "/chat/completions", json=body, **kwargs) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        return sse_data(r.iter_lines())


def wait_for_event(mock, predicate, timeout=2.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [e for e in list(mock.events) if predicate(e)]
        if found:
            return found[0]
        time.sleep(0.01)
    return None


def assert_openai_error(response, status, err_type=None, code=None):
    assert response.status_code == status
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    if err_type:
        assert error["type"] == err_type
    if code:
        assert error["code"] == code
    return error


def test_chat_non_stream_shape_and_recording(client, mock):
    r = client.post("/chat/completions", json=CHAT)
    assert r.status_code == 200
    body = r.json()
    assert body["id"].startswith("chatcmpl-")
    assert body["object"] == "chat.completion"
    assert body["model"] == "gpt-4o-mini"
    choice = body["choices"][0]
    assert choice["message"] == {"role": "assistant", "content": "Hello from mock: ping pong",
                                 "refusal": None, "annotations": []}
    assert choice["finish_reason"] == "stop" and choice["logprobs"] is None
    usage = body["usage"]
    assert usage["prompt_tokens"] == 4 + 3
    assert usage["completion_tokens"] == 5
    assert usage["total_tokens"] == 12
    assert usage["prompt_tokens_details"]["cached_tokens"] == 0
    assert usage["completion_tokens_details"]["reasoning_tokens"] == 0
    recorded = mock.requests[-1]
    assert recorded["method"] == "POST" and recorded["path"] == "/v1/chat/completions"
    assert recorded["headers"]["authorization"] == "[redacted]" and recorded["auth_scheme"] == "bearer"
    assert recorded["api_key"] == "sk-test-123"
    assert recorded["json"] == CHAT
    assert any(e["type"] == "request" for e in mock.events)


def test_chat_content_parts_and_chunks_option(client):
    body = {"model": "m", "messages": [{"role": "user", "content": [{"type": "text", "text": "a b"}]}],
            "mock": {"chunks": 7}}
    content = client.post("/chat/completions", json=body).json()["choices"][0]["message"]["content"]
    assert content == "Hello from mock: a b Hello from"


def test_chat_stream_with_usage(client, mock):
    body = dict(CHAT, stream=True, stream_options={"include_usage": True})
    payloads = stream_payloads(client, body)
    assert payloads[-1] == "[DONE]"
    chunks = [json.loads(p) for p in payloads[:-1]]
    assert all(c["object"] == "chat.completion.chunk" and c["model"] == "gpt-4o-mini" for c in chunks)
    assert len({c["id"] for c in chunks}) == 1
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert all("usage" in c and c["usage"] is None for c in chunks[:-1])
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks[:-1])
    assert text == "Hello from mock: ping pong"
    assert len(chunks) == 1 + 5 + 1 + 1
    assert chunks[-2]["choices"][0] == {"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"]["total_tokens"] == 12
    end = wait_for_event(mock, lambda e: e["type"] == "stream_end")
    assert end["completed"] is True and "client_disconnected" not in end


def test_chat_stream_without_usage_and_chunk_count(client):
    payloads = stream_payloads(client, dict(CHAT, stream=True, mock={"chunks": 20}))
    chunks = [json.loads(p) for p in payloads[:-1]]
    assert all("usage" not in c for c in chunks)
    assert len(chunks) == 1 + 20 + 1


def test_no_usage(client):
    assert "usage" not in client.post("/chat/completions", json=dict(CHAT, mock={"no_usage": True})).json()
    body = dict(CHAT, stream=True, stream_options={"include_usage": True}, mock={"no_usage": True})
    chunks = [json.loads(p) for p in stream_payloads(client, body)[:-1]]
    assert all(c.get("usage") is None for c in chunks) and chunks[-1]["choices"]


def test_legacy_completions(client):
    r = client.post("/completions", json={"model": "gpt-3.5-turbo-instruct", "prompt": "say hi"})
    body = r.json()
    assert body["object"] == "text_completion"
    assert body["choices"][0]["text"] == "Hello from mock: say hi"
    assert body["usage"] == {"prompt_tokens": 2, "completion_tokens": 5, "total_tokens": 7}
    with client.stream("POST", "/completions", json={"model": "x", "prompt": "say hi", "stream": True,
                                                      "stream_options": {"include_usage": True}}) as r:
        payloads = sse_data(r.iter_lines())
    chunks = [json.loads(p) for p in payloads[:-1]]
    assert "".join(c["choices"][0]["text"] for c in chunks[:-1]) == "Hello from mock: say hi"
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 5


def test_embeddings_float_and_base64(client):
    floats = client.post("/embeddings", json={"model": "text-embedding-3-small", "input": ["a", "b"]}).json()
    assert floats["object"] == "list" and floats["model"] == "text-embedding-3-small"
    assert [d["index"] for d in floats["data"]] == [0, 1]
    vec = floats["data"][0]["embedding"]
    assert len(vec) == 8 and abs(sum(v * v for v in vec) - 1) < 1e-5
    assert floats["data"][1]["embedding"] != vec
    assert floats["usage"] == {"prompt_tokens": 2, "total_tokens": 2}
    b64 = client.post("/embeddings", json={"model": "m", "input": "a", "encoding_format": "base64"}).json()
    decoded = list(struct.unpack("<8f", base64.b64decode(b64["data"][0]["embedding"])))
    assert decoded == vec


def test_models(client):
    listing = client.get("/models").json()
    assert listing["object"] == "list"
    assert {"id": "gpt-4o-mini", "object": "model", "created": 1700000000, "owned_by": "mock"} in listing["data"]
    assert client.get("/models/gpt-4o").json()["id"] == "gpt-4o"
    assert_openai_error(client.get("/models/nope"), 404, code="model_not_found")


def test_auth_and_bad_requests(mock):
    url = mock.base_url + "/chat/completions"
    assert_openai_error(httpx.post(url, json=CHAT), 401, "invalid_request_error", "invalid_api_key")
    assert_openai_error(httpx.post(url, content=b"{nope", headers=AUTH), 400, "invalid_request_error")
    assert_openai_error(httpx.post(mock.base_url + "/nowhere", json=CHAT, headers=AUTH), 404)
    assert_openai_error(httpx.post(url, json={"messages": []}, headers=AUTH), 400)


def test_restricted_keys():
    with MockUpstreamThread(keys={"sk-good"}) as server:
        url = server.base_url + "/models"
        assert_openai_error(httpx.get(url, headers={"Authorization": "Bearer sk-bad"}), 401, code="invalid_api_key")
        assert httpx.get(url, headers={"Authorization": "Bearer sk-good"}).status_code == 200
        assert [r["api_key"] for r in server.requests] == ["sk-bad", "sk-good"]


def test_fault_status_in_body_and_header(client):
    r = client.post("/chat/completions", json=dict(CHAT, mock={"status": 429, "retry_after": 2}))
    assert_openai_error(r, 429, code="rate_limit_exceeded")
    assert r.headers["retry-after"] == "2"
    r = client.post("/chat/completions", json=CHAT, headers={"x-mock-fault": '{"status": 503, "message": "down"}'})
    assert assert_openai_error(r, 503, "server_error")["message"] == "down"
    r = client.post("/embeddings", json={"model": "m", "input": "x", "mock": {"status": 502, "body": "<html>bad</html>"}})
    assert r.status_code == 502 and r.text == "<html>bad</html>"


def test_delay(client):
    started = time.monotonic()
    assert client.post("/chat/completions", json=dict(CHAT, mock={"delay": 0.2})).status_code == 200
    assert time.monotonic() - started >= 0.2


def test_chunks_then_drop(client, mock):
    lines = []
    with pytest.raises(httpx.RemoteProtocolError):
        with client.stream("POST", "/chat/completions",
                           json=dict(CHAT, stream=True, mock={"chunks_then_drop": 2})) as r:
            for line in r.iter_lines():
                lines.append(line)
    payloads = sse_data(lines)
    assert len(payloads) == 1 + 2 and "[DONE]" not in payloads
    end = wait_for_event(mock, lambda e: e["type"] == "stream_end")
    assert end["dropped"] is True and end["completed"] is False


def test_malformed_at(client):
    payloads = stream_payloads(client, dict(CHAT, stream=True, mock={"malformed_at": 2}))
    with pytest.raises(json.JSONDecodeError):
        json.loads(payloads[2])
    assert payloads[-1] == "[DONE]"


def test_stall_after_then_client_disconnect(client, mock):
    body = dict(CHAT, stream=True, mock={"stall_after": 1})
    with client.stream("POST", "/chat/completions", json=body, timeout=httpx.Timeout(5, read=0.3)) as r:
        lines = []
        with pytest.raises(httpx.ReadTimeout):
            for line in r.iter_lines():
                lines.append(line)
    assert len(sse_data(lines)) == 2
    end = wait_for_event(mock, lambda e: e["type"] == "stream_end", timeout=1.0)
    assert end is not None and end["client_disconnected"] is True


def test_client_disconnect_is_noticed_promptly(client, mock):
    body = dict(CHAT, stream=True, mock={"chunks": 50, "chunk_delay": 0.2})
    with client.stream("POST", "/chat/completions", json=body) as r:
        received = 0
        for line in r.iter_lines():
            received += line.startswith("data: ")
            if received == 2:
                break
    closed_at = time.monotonic()
    end = wait_for_event(mock, lambda e: e["type"] == "stream_end", timeout=1.0)
    assert end is not None, "mock did not notice the disconnect within 1 s"
    assert end["client_disconnected"] is True and end["completed"] is False
    assert end["t"] - closed_at < 1.0


def test_async_start_and_internal_error():
    async def scenario():
        server = await mock_upstream.start()
        try:
            async with httpx.AsyncClient(base_url=server.base_url, headers=AUTH) as c:
                assert (await c.get("/models")).status_code == 200
            assert server.requests[-1]["path"] == "/v1/models"
        finally:
            await server.stop()

        async def boom(request):
            raise RuntimeError("kaboom")

        app = mock_upstream.build_app()
        app.router.add_get("/boom", boom)
        async with TestServer(app) as test_server:
            async with httpx.AsyncClient() as c:
                return await c.get(str(test_server.make_url("/boom")))

    r = asyncio.run(scenario())
    assert_openai_error(r, 500, "server_error")
