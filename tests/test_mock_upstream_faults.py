"""The mock upstream's fault modes for gateway regression tests, over real loopback sockets."""

import json
import socket
import time

import httpx
import pytest


AUTH = {"Authorization": "Bearer sk-test-1234567890abcdef"}
CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "ping pong"}]}


@pytest.fixture
def client(mock_http):
    return mock_http(AUTH)


def chat(client, **fault):
    return client.post("/chat/completions", json={**CHAT, "mock": fault})


def stream_lines(client, body):
    with client.stream("POST", "/chat/completions", json=body) as r:
        assert r.status_code == 200
        return list(r.iter_lines())


def chunks_of(lines):
    return [json.loads(line[6:]) for line in lines if line.startswith("data: ") and line != "data: [DONE]"]


def raw_exchange(mock, body, read_until=b"[DONE]"):
    """Send one request over a plain socket; return [(seconds since sent, bytes)] as they arrive."""
    payload = json.dumps(body).encode()
    request = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: {AUTH['Authorization']}\r\n"
               f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n").encode() + payload
    arrivals = []
    with socket.create_connection(("127.0.0.1", mock.port), timeout=5) as sock:
        sent = time.monotonic()
        sock.sendall(request)
        while True:
            data = sock.recv(65536)
            if not data:
                break
            arrivals.append((time.monotonic() - sent, data))
            if read_until in data:
                break
    return arrivals


def test_a_redirect_answers_302_with_a_location(client):
    r = chat(client, redirect="http://169.254.169.254/latest/meta-data/")
    assert r.status_code == 302
    assert r.headers["location"] == "http://169.254.169.254/latest/meta-data/"
    r = chat(client, status=307)
    assert r.status_code == 307 and r.headers["location"] == "/v1/chat/completions"


def test_401_and_403_carry_openais_real_error_bodies(client):
    error = chat(client, status=401).json()["error"]
    assert error["code"] == "invalid_api_key" and error["type"] == "invalid_request_error"
    assert error["message"].startswith("Incorrect API key provided: sk-*")
    assert "1234567890abcdef" not in error["message"]
    assert error["message"].endswith("cdef. You can find your API key at https://platform.openai.com/account/api-keys.")
    r = chat(client, status=403)
    assert r.status_code == 403
    assert r.json() == {"error": {"message": "Country, region, or territory not supported", "type": "request_forbidden",
                                  "param": None, "code": "unsupported_country_region_territory"}}
    assert chat(client, status=403, code="invalid_api_key").json()["error"]["code"] == "invalid_api_key"


@pytest.mark.parametrize("status", [429, 503, 529])
def test_overload_statuses_carry_retry_after(client, status):
    r = chat(client, status=status, retry_after=3, retry_after_ms=2500)
    assert r.status_code == status
    assert r.headers["retry-after"] == "3" and r.headers["retry-after-ms"] == "2500"
    assert r.json()["error"]["type"] in ("requests", "server_error")


def test_retry_after_may_be_an_http_date(client):
    r = chat(client, status=503, retry_after="Wed, 21 Oct 2015 07:28:00 GMT")
    assert r.headers["retry-after"] == "Wed, 21 Oct 2015 07:28:00 GMT"


def test_a_stream_chunk_may_carry_error_null(client):
    chunks = chunks_of(stream_lines(client, {**CHAT, "stream": True, "mock": {"error_null": True}}))
    assert all("error" in c and c["error"] is None for c in chunks)
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == "Hello from mock: ping pong"


def test_keepalive_comments_come_before_the_first_event(client):
    started = time.monotonic()
    body = {**CHAT, "stream": True, "mock": {"keepalive_every": 0.05, "keepalive_for": 0.3}}
    lines = stream_lines(client, body)
    assert time.monotonic() - started >= 0.3
    comments = [line for line in lines if line.startswith(":")]
    assert 5 <= len(comments) <= 8
    assert set(comments) == {": OPENROUTER PROCESSING"}
    first_data = next(i for i, line in enumerate(lines) if line.startswith("data: "))
    assert all(line.startswith(":") or line == "" for line in lines[:first_data])
    assert [line for line in lines if line][-1] == "data: [DONE]"


def test_keepalive_comments_are_sent_while_the_model_thinks(mock):
    body = {**CHAT, "stream": True, "mock": {"keepalive_every": 0.1, "keepalive_for": 0.4, "keepalive_comment": "ping"}}
    arrivals = raw_exchange(mock, body)
    comment_times = [t for t, data in arrivals if b": ping" in data]
    assert comment_times[0] < 0.2 and len(comment_times) >= 3
    assert next(t for t, data in arrivals if b"data: " in data) >= 0.4


def test_slow_first_byte_holds_back_the_headers(mock):
    arrivals = raw_exchange(mock, {**CHAT, "stream": True, "mock": {"first_byte_delay": 0.3}})
    assert arrivals[0][0] >= 0.3 and arrivals[0][1].startswith(b"HTTP/1.1 200")


def test_slow_first_event_sends_the_headers_at_once(mock):
    arrivals = raw_exchange(mock, {**CHAT, "stream": True, "mock": {"first_event_delay": 0.4}})
    assert arrivals[0][0] < 0.2 and arrivals[0][1].startswith(b"HTTP/1.1 200") and b"data: " not in arrivals[0][1]
    assert next(t for t, data in arrivals if b"data: " in data) >= 0.4


def test_slow_first_event_delays_a_non_stream_body(mock):
    arrivals = raw_exchange(mock, {**CHAT, "mock": {"first_event_delay": 0.4}}, read_until=b"}}")
    assert arrivals[0][0] < 0.2 and b"chat.completion" not in arrivals[0][1]
    assert next(t for t, data in arrivals if b"chat.completion" in data) >= 0.4


def test_a_stream_cut_mid_event_ends_without_done(client):
    received = []
    with pytest.raises(httpx.RemoteProtocolError):
        with client.stream("POST", "/chat/completions",
                           json={**CHAT, "stream": True, "mock": {"chunks_then_drop": 2, "drop_mid_event": True}}) as r:
            for data in r.iter_raw():
                received.append(data)
    events = b"".join(received).split(b"\n\n")
    assert len(events) == 4 and b"[DONE]" not in b"".join(received)
    json.loads(events[2][6:])
    assert events[3].startswith(b'data: {"id":"chatcmpl-')
    with pytest.raises(json.JSONDecodeError):
        json.loads(events[3][6:])


@pytest.mark.parametrize("kind", [True, "truncated", "not_json"])
def test_a_malformed_non_stream_answer_is_a_200_that_is_not_json(client, kind):
    r = chat(client, malformed=kind)
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/json")
    with pytest.raises(json.JSONDecodeError):
        json.loads(r.text)
    if kind != "not_json":
        assert r.text.startswith('{"id":"chatcmpl-')


def test_usage_rides_on_every_chunk_when_asked(client):
    body = {**CHAT, "stream": True, "stream_options": {"include_usage": True}, "mock": {"usage_every_chunk": True}}
    chunks = chunks_of(stream_lines(client, body))
    assert all(isinstance(c["usage"], dict) for c in chunks)
    completion = [c["usage"]["completion_tokens"] for c in chunks]
    assert completion == [0, 1, 2, 3, 4, 5, 5, 5]
    assert chunks[-1]["usage"]["total_tokens"] == chunks[-1]["usage"]["prompt_tokens"] + 5


def test_a_stream_of_n_events_of_a_given_size(client):
    size, count = 4096, 1024
    body = {**CHAT, "stream": True, "mock": {"chunks": count, "event_bytes": size}}
    with client.stream("POST", "/chat/completions", json=body) as r:
        raw = b"".join(r.iter_raw())
    events = raw.split(b"\n\n")
    content = [e + b"\n\n" for e in events[1:1 + count]]
    assert len(content) == count and {len(e) for e in content} == {size}
    assert len(raw) > 4 * 1024 * 1024
    assert events[-2] == b"data: [DONE]"


def test_generations_are_counted_per_request_id(client, mock):
    for _ in range(3):
        assert chat(client, request_id="gen-1").status_code == 200
    client.post("/chat/completions", json=CHAT, headers={"x-mock-request-id": "gen-2"})
    assert mock.generations("gen-1") == 3 and mock.generations("gen-2") == 1 and mock.generations("other") == 0
    counted = httpx.get(f"http://127.0.0.1:{mock.port}/mock/generations/gen-1").json()
    assert counted == {"request_id": "gen-1", "generations": 3}


def test_fail_times_fails_the_first_generations_then_answers(client, mock):
    fault = {"status": 529, "retry_after": 1, "fail_times": 2, "request_id": "flaky"}
    statuses = [chat(client, **fault).status_code for _ in range(3)]
    assert statuses == [529, 529, 200]
    assert mock.generations("flaky") == 3
