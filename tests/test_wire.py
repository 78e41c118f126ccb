"""The /v1 hot path over raw HTTP: auth, bad input, path variants, upstream faults, streaming."""
import json
import socket
import time

import httpx
import pytest

from .conftest import (
    DISABLED_KEY, EXPIRED_KEY, FULL_KEY, LIMITED_KEY, LOGGING_KEY, PROVIDER_SECRET, wait_for_log,
)

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello"}]}


def post(gateway, body=None, *, key=FULL_KEY, path="/v1/chat/completions", headers=None, **kwargs):
    all_headers = {"Authorization": f"Bearer {key}"} if key else {}
    all_headers.update(headers or {})
    if body is not None and "content" not in kwargs:
        kwargs["json"] = body
    return httpx.post(gateway.url + path, headers=all_headers, timeout=20, **kwargs)


def assert_openai_error(response, status, code=None):
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"]
    if code:
        assert error["code"] == code
    assert response.headers["x-request-id"].startswith("req_")
    return error


# --- authentication and access -------------------------------------------------

@pytest.mark.parametrize("key", [None, "sk-gw-unknown", DISABLED_KEY, EXPIRED_KEY])
def test_it_rejects_missing_unknown_disabled_and_expired_keys(live, key):
    assert_openai_error(post(live, CHAT, key=key), 401)


def test_it_accepts_the_api_key_header(live):
    response = post(live, CHAT, key=None, headers={"api-key": FULL_KEY})
    assert response.status_code == 200


def test_a_key_limited_to_some_models_gets_403_for_others(live):
    assert post(live, CHAT, key=LIMITED_KEY).status_code == 200
    assert post(live, {**CHAT, "model": "mini"}, key=LIMITED_KEY).status_code == 200
    assert_openai_error(post(live, {**CHAT, "model": "failover"}, key=LIMITED_KEY), 403)
    models = httpx.get(live.url + "/v1/models", headers={"Authorization": f"Bearer {LIMITED_KEY}"}).json()
    assert {m["id"] for m in models["data"]} == {"gpt-4o-mini", "mini"}


def test_an_unknown_model_is_404_model_not_found(live, db_access):
    response = post(live, {**CHAT, "model": "gpt-99"})
    assert_openai_error(response, 404, "model_not_found")
    row = wait_for_log(response.headers["x-request-id"])
    assert (row.status, row.error_kind, row.model_requested) == (404, "model_not_found", "gpt-99")


def test_unknown_and_wrong_keys_take_the_same_path(live):
    """Both are hashed and looked up once; their answers are identical but for the request id."""
    unknown = post(live, CHAT, key="sk-gw-" + "x" * 43)
    wrong = post(live, CHAT, key=FULL_KEY[:-1] + "X")
    assert unknown.status_code == wrong.status_code == 401
    assert unknown.json() == wrong.json()


# --- bad input -------------------------------------------------------------------

@pytest.mark.parametrize("content, code", [
    (b"{not json", None),
    (b"[1, 2]", None),
    (b'"just a string"', None),
    (json.dumps({"messages": []}).encode(), "missing_model"),
    (json.dumps({"model": "gpt-4o-mini"}).encode(), "missing_required_parameter"),
    (json.dumps({**CHAT, "stream": "yes"}).encode(), None),
    (b"\xff\xfe\x00garbage", None),
])
def test_malformed_bodies_get_400(live, content, code):
    response = post(live, content=content, headers={"content-type": "application/json"})
    assert_openai_error(response, 400, code)


def test_missing_input_for_embeddings_and_prompt_for_completions(live):
    assert_openai_error(post(live, {"model": "text-embedding-3-small"}, path="/v1/embeddings"), 400)
    assert_openai_error(post(live, {"model": "gpt-3.5-turbo-instruct"}, path="/v1/completions"), 400)


def test_a_wrong_content_type_gets_415(live):
    response = post(live, content=json.dumps(CHAT).encode(), headers={"content-type": "text/plain"})
    assert_openai_error(response, 415)


def test_a_body_over_the_limit_gets_413(live):
    big = {**CHAT, "padding": "x" * (1024 * 1024 + 10)}
    assert_openai_error(post(live, big), 413)


def test_the_limit_holds_without_content_length(live):
    def chunks():
        yield json.dumps(CHAT)[:-1].encode() + b', "padding": "'
        for _ in range(40):
            yield b"x" * 32768
        yield b'"}'

    response = post(live, content=chunks(), headers={"content-type": "application/json"})
    assert "content-length" not in response.request.headers
    assert_openai_error(response, 413)


def test_a_false_content_length_cannot_sneak_a_body_past(live):
    """A lying Content-Length is caught by counting the bytes actually received."""
    body = json.dumps({**CHAT, "padding": "x" * (1024 * 1024 + 10)}).encode()
    with socket.create_connection(("127.0.0.1", live.port), timeout=10) as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Authorization: Bearer " + FULL_KEY.encode() + b"\r\nTransfer-Encoding: chunked\r\n\r\n")
        sock.sendall(f"{len(body):x}\r\n".encode() + body + b"\r\n0\r\n\r\n")
        reply = sock.recv(4096)
    assert reply.startswith(b"HTTP/1.1 413")


def test_unknown_paths_under_v1_get_an_openai_404(live):
    assert_openai_error(httpx.get(live.url + "/v1/nothing/here"), 404, "unknown_url")


# --- transparency ------------------------------------------------------------------

def test_the_body_goes_upstream_as_sent_except_the_model(live, mock_upstream):
    body = {"messages": [{"role": "user", "content": "x"}], "temperature": 0.3, "custom_field": {"a": [1, 2]},
            "model": "mini", "seed": 7}
    assert post(live, body).status_code == 200
    sent = mock_upstream.requests[-1]["json"]
    assert sent == {**body, "model": "gpt-4o-mini"}


def test_streams_ask_upstream_for_usage_but_keep_client_options(live, mock_upstream):
    body = {**CHAT, "stream": True, "stream_options": {"include_obfuscation": False}}
    with httpx.stream("POST", live.url + "/v1/chat/completions", json=body,
                      headers={"Authorization": f"Bearer {FULL_KEY}"}) as response:
        events = [line for line in response.iter_lines() if line.startswith("data: ")]
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.headers["cache-control"] == "no-cache"
    assert response.headers["x-accel-buffering"] == "no"
    assert mock_upstream.requests[-1]["json"]["stream_options"] == {"include_obfuscation": False, "include_usage": True}
    assert events[-1] == "data: [DONE]"
    assert not any('"usage":{' in e for e in events)


@pytest.mark.parametrize("path", [
    "/v1beta/openai/chat/completions", "/api/v1/chat/completions", "/v2/chat/completions",
    "/v3/anything/chat/completions", "/chat/completions",
])
def test_chat_path_variants(live, path):
    response = post(live, CHAT, path=path)
    assert response.status_code == 200
    assert response.json()["object"] == "chat.completion"


@pytest.mark.parametrize("path, body, kind", [
    ("/api/v1/embeddings", {"model": "text-embedding-3-small", "input": "x"}, "list"),
    ("/openai/v1/completions", {"model": "gpt-3.5-turbo-instruct", "prompt": "x"}, "text_completion"),
])
def test_other_path_variants(live, path, body, kind):
    response = post(live, body, path=path)
    assert response.status_code == 200 and response.json()["object"] == kind


def test_models_path_variants(live):
    headers = {"Authorization": f"Bearer {FULL_KEY}"}
    assert httpx.get(live.url + "/openai/v1/models", headers=headers).json()["object"] == "list"
    assert httpx.get(live.url + "/v1beta/openai/models/mini", headers=headers).json()["id"] == "mini"


# --- upstream faults ---------------------------------------------------------------------

def test_an_unreachable_upstream_is_502(live, db_access):
    response = post(live, {**CHAT, "model": "unreachable"})
    assert_openai_error(response, 502, "upstream_unreachable")
    row = wait_for_log(response.headers["x-request-id"])
    assert (row.status, row.error_kind, row.provider) == (502, "upstream_connect", "dead")


def test_a_slow_upstream_is_504(live):
    started = time.monotonic()
    response = post(live, {**CHAT, "model": "slow", "mock": {"delay": 3}})
    assert_openai_error(response, 504, "upstream_timeout")
    assert time.monotonic() - started < 2.5  # the provider's 0.5 s timeout, not the mock's delay


def test_an_upstream_error_keeps_its_status_and_message(live):
    response = post(live, {**CHAT, "model": "no-retry", "mock": {"status": 400, "message": "bad temperature"}})
    error = assert_openai_error(response, 400)
    assert "bad temperature" in error["message"]


def test_a_non_json_upstream_error_page_becomes_openai_json(live):
    response = post(live, {**CHAT, "model": "no-retry", "mock": {"status": 502, "body": "<html>Bad gateway</html>"}})
    error = assert_openai_error(response, 502)
    assert "Bad gateway" in error["message"]


def test_it_fails_over_to_the_next_target_before_the_first_byte(live, db_access):
    response = post(live, {**CHAT, "model": "failover"})
    assert response.status_code == 200
    assert response.headers["x-gateway-attempts"] == "2"
    assert response.headers["x-gateway-provider"] == "mock"
    assert wait_for_log(response.headers["x-request-id"]).attempts == 2


def test_provider_keys_are_taken_in_turn_skipping_disabled_ones(live, mock_upstream):
    for _ in range(4):
        assert post(live, {**CHAT, "model": "two-keys"}).status_code == 200
    used = [r["api_key"] for r in mock_upstream.requests[-4:]]
    assert set(used) == {PROVIDER_SECRET, PROVIDER_SECRET + "-second"}
    assert used[0] != used[1] and used[0] == used[2] and used[1] == used[3]


def test_the_provider_key_never_reaches_the_client(live, mock_upstream):
    response = post(live, {**CHAT, "model": "no-retry", "mock": {
        "status": 400, "message": f"Bad request for key {PROVIDER_SECRET}"}})
    assert response.status_code == 400
    assert PROVIDER_SECRET not in response.text
    assert mock_upstream.requests[-1]["api_key"] == PROVIDER_SECRET


def stream_events(gateway, body, key=FULL_KEY):
    with httpx.stream("POST", gateway.url + "/v1/chat/completions", json={**body, "stream": True},
                      headers={"Authorization": f"Bearer {key}"}, timeout=20) as response:
        return response, [line[6:] for line in response.iter_lines() if line.startswith("data: ")]


@pytest.mark.parametrize("fault, kind", [
    ({"chunks_then_drop": 3}, "stream_cut"),
    ({"stall_after": 3}, "stream_cut"),
])
def test_a_failure_after_the_first_byte_ends_the_stream_with_an_error_event(live, db_access, mock_upstream, fault, kind):
    started = time.monotonic()
    body = {**CHAT, "model": "no-retry", "mock": {"chunks": 10, "chunk_delay": 0.02, **fault}}
    response, events = stream_events(live, body)
    assert response.status_code == 200
    assert len(events) >= 3  # content reached the client first
    assert events[-1] == "[DONE]"  # after the error event: the SDKs stop at [DONE]
    error = json.loads(events[-2])["error"]
    assert error["message"] and error["code"] == "stream_interrupted"
    assert time.monotonic() - started < 10  # a stall ends by the idle timeout (2 s here)
    row = wait_for_log(response.headers["x-request-id"])
    assert (row.status, row.error_kind, row.attempts) == (502, kind, 1)
    assert len([r for r in mock_upstream.requests if r["path"] == "/v1/chat/completions"]) == 1  # no retry


def test_a_malformed_event_is_relayed_untouched(live, db_access):
    """Same protocol in and out: the gateway passes content events on unparsed."""
    response, events = stream_events(live, {**CHAT, "model": "no-retry", "mock": {"chunks": 5, "malformed_at": 3}})
    assert any(e.startswith('{"broken"') for e in events)
    assert events[-1] == "[DONE]"
    assert wait_for_log(response.headers["x-request-id"]).status == 200


def test_a_client_that_disconnects_cancels_the_upstream(live, mock_upstream, db_access):
    body = {**CHAT, "model": "no-retry", "stream": True, "mock": {"chunks": 50, "chunk_delay": 0.2}}
    started = time.monotonic()
    with httpx.stream("POST", live.url + "/v1/chat/completions", json=body,
                      headers={"Authorization": f"Bearer {FULL_KEY}"}) as response:
        received = []
        for line in response.iter_lines():
            if line.startswith("data: "):
                received.append(line)
            if len(received) == 3:
                break
        request_id = response.headers["x-request-id"]
    closed_at = time.monotonic()
    deadline = closed_at + 1.0
    ended = None
    while time.monotonic() < deadline and ended is None:
        ended = next((e for e in mock_upstream.events
                      if e["type"] == "stream_end" and e["t"] > started and e.get("client_disconnected")), None)
        time.sleep(0.02)
    assert ended is not None, "upstream connection still open 1 s after the client left"
    assert ended["t"] - closed_at < 1.0
    row = wait_for_log(request_id)
    assert (row.status, row.error_kind) == (499, "client_disconnected")


def test_streams_are_relayed_as_they_arrive(live):
    """The first event reaches the client long before the upstream finishes."""
    body = {**CHAT, "model": "no-retry", "stream": True, "mock": {"chunks": 6, "chunk_delay": 0.3}}
    arrivals = []
    started = time.monotonic()
    with httpx.stream("POST", live.url + "/v1/chat/completions", json=body,
                      headers={"Authorization": f"Bearer {FULL_KEY}"}) as response:
        for line in response.iter_lines():
            if line.startswith("data: "):
                arrivals.append(time.monotonic() - started)
    assert arrivals[0] < 0.5 and arrivals[-1] > 1.5


# --- accounting --------------------------------------------------------------------------

def test_tokens_are_estimated_when_upstream_reports_none(live, db_access):
    response = post(live, {**CHAT, "mock": {"no_usage": True}})
    row = wait_for_log(response.headers["x-request-id"])
    assert row.tokens_estimated and row.input_tokens > 0 and row.output_tokens > 0
    _, events = stream_events(live, {**CHAT, "mock": {"no_usage": True}})
    assert events[-1] == "[DONE]"


def test_streamed_tokens_are_estimated_when_upstream_reports_none(live, db_access):
    response, _ = stream_events(live, {**CHAT, "mock": {"no_usage": True}})
    row = wait_for_log(response.headers["x-request-id"])
    assert row.tokens_estimated and row.output_tokens > 0 and row.cost_usd > 0


def test_bodies_are_logged_only_for_keys_that_ask(live, db_access):
    plain = wait_for_log(post(live, CHAT).headers["x-request-id"])
    assert plain.request_body == plain.response_body == ""
    logged = wait_for_log(post(live, CHAT, key=LOGGING_KEY).headers["x-request-id"])
    assert json.loads(logged.request_body)["messages"][0]["content"] == "hello"
    assert "Hello from mock" in logged.response_body
    assert LOGGING_KEY not in logged.request_body and PROVIDER_SECRET not in logged.request_body


def test_unknown_disabled_and_expired_keys_look_the_same_to_the_client(live, db_access):
    answers = [post(live, CHAT, key=key) for key in ("sk-gw-unknown-key-123", DISABLED_KEY, EXPIRED_KEY)]
    bodies = {json.dumps(r.json()) for r in answers}
    assert len(bodies) == 1 and {r.status_code for r in answers} == {401}
    assert len({tuple(sorted(k for k in r.headers if k not in ("x-request-id", "date", "content-length")))
                for r in answers}) == 1
    # The operator sees the real reasons: a known key's refusal in the request log, an
    # unknown key's in the refusal counts of the client's address (tests/test_ops_junk.py).
    reasons = [wait_for_log(r.headers["x-request-id"]).error_message for r in answers[1:]]
    assert reasons == ["the key is disabled", "the key has expired"]
