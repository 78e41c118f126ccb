"""The Responses API over a WebSocket on /v1/responses, through a real gateway process, with the
`websockets` package as client: each response.create frame is one request through the same
pipeline as HTTP, each SSE event of its answer one text frame."""
import json

import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from .conftest import PROVIDER_SECRET, wait_for_model
from .factories import make_key, make_provider, make_route

WEATHER_TOOL = {"type": "function", "name": "get_weather",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}


@pytest.fixture
def route_to(live, mock_upstream, db_access):
    """route_to(**provider fields): a model served by the mock and a key for it (name, key row, secret)."""
    def make(**fields):
        route = make_route((make_provider(mock_upstream.base_url, **fields), "gpt-4o-mini"))
        key, secret = make_key(routes=[route])
        wait_for_model(live, route.name, key=secret)
        return route.name, key, secret

    return make


def open_socket(gateway, secret):
    return connect(gateway.url.replace("http://", "ws://") + "/v1/responses", open_timeout=5,
                   additional_headers={"Authorization": f"Bearer {secret}"})


def make_create(model, text="hello", **fields):
    return {"type": "response.create", "model": model, "input": [{"role": "user", "content": text}], **fields}


def one_turn(socket, frame) -> list[dict]:
    """Send one response.create; the frames that answer it, up to the terminal event or an error."""
    socket.send(json.dumps(frame))
    events = []
    while True:
        event = json.loads(socket.recv(timeout=10))
        events.append(event)
        if event["type"] in ("response.completed", "response.failed", "response.incomplete", "error"):
            return events


def output_text(events) -> str:
    return "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta")


def websocket_rows(key, count, timeout=10):
    """The key's request-log rows for responses served over the socket, oldest first."""
    import time

    from routing.models import RequestLog

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rows = list(RequestLog.objects.filter(virtual_key_id=key.pk, endpoint="responses_websocket")
                    .order_by("created_at"))
        if len(rows) >= count:
            return rows
        time.sleep(0.05)
    raise AssertionError(f"expected {count} websocket rows for {key.name}")


def test_text_streams_back_as_one_frame_per_event_from_a_chat_upstream(live, route_to, mock_upstream):
    model, key, secret = route_to()
    with open_socket(live, secret) as socket:
        events = one_turn(socket, make_create(model, "你好 over a socket"))

    types = [e["type"] for e in events]
    assert types[0] == "response.created" and types[-1] == "response.completed", events
    assert output_text(events) == "Hello from mock: 你好 over a socket"
    assert events[-1]["response"]["output"][0]["content"][0]["text"] == output_text(events)
    sent = [r for r in mock_upstream.requests if r["path"] == "/v1/chat/completions"]
    assert len(sent) == 1 and sent[0]["json"]["stream"] is True and sent[0]["api_key"] == PROVIDER_SECRET
    (row,) = websocket_rows(key, 1)
    assert row.status == 200 and row.stream and row.model_requested == model and row.provider


def test_a_function_call_round_trip_chained_by_previous_response_id(live, route_to, mock_upstream):
    model, key, secret = route_to()
    with open_socket(live, secret) as socket:
        first = one_turn(socket, make_create(model, "weather in Riga", tools=[WEATHER_TOOL]))
        calls = [i for i in first[-1]["response"]["output"] if i["type"] == "function_call"]
        assert [c["name"] for c in calls] == ["get_weather"]
        # As Codex does: only the new items, chained to the last response on this socket.
        second = one_turn(socket, make_create(model, tools=[WEATHER_TOOL],
                                              previous_response_id=first[-1]["response"]["id"],
                                              input=[{"type": "function_call_output", "call_id": calls[0]["call_id"],
                                                      "output": "sunny-ws-42"}]))

    assert "sunny-ws-42" in output_text(second)
    turn2 = [r for r in mock_upstream.requests if r["path"] == "/v1/chat/completions"][-1]["json"]
    # The chat upstream got the whole history the id stood for: prompt, call, result.
    roles = [m["role"] for m in turn2["messages"]]
    assert roles == ["user", "assistant", "tool"]
    assert turn2["messages"][1]["tool_calls"][0]["id"] == calls[0]["call_id"]
    assert len(websocket_rows(key, 2)) == 2


def test_an_upstream_error_is_an_error_frame_and_the_socket_stays_open(live, route_to):
    model, key, secret = route_to()
    with open_socket(live, secret) as socket:
        failed = one_turn(socket, make_create(model, 'x <mock>{"status": 400, "message": "bad things"}</mock>'))
        after = one_turn(socket, make_create(model, "still there?"))

    assert failed == [{"type": "error", "status": 400, "error": failed[0]["error"]}]
    assert "bad things" in failed[0]["error"]["message"]
    assert output_text(after) == "Hello from mock: still there?", after
    rows = websocket_rows(key, 2)
    assert [r.status for r in rows] == [400, 200]


def test_an_upstream_failure_mid_stream_ends_that_response_with_a_failure_event(live, route_to):
    model, key, secret = route_to()
    with open_socket(live, secret) as socket:
        cut = one_turn(socket, make_create(model, 'one two three four <mock>{"error_after": 2}</mock>'))

    assert cut[0]["type"] == "response.created" and output_text(cut)
    assert cut[-1]["type"] in ("response.failed", "error"), cut[-1]
    (row,) = websocket_rows(key, 1)
    assert row.status >= 500 and row.error_kind


def test_a_bad_frame_and_an_unknown_model_get_error_frames_in_the_responses_shape(live, route_to):
    model, key, secret = route_to()
    with open_socket(live, secret) as socket:
        socket.send("not json")
        bad = json.loads(socket.recv(timeout=10))
        unknown = one_turn(socket, make_create("no-such-model"))
        good = one_turn(socket, make_create(model, "ok"))

    assert bad["type"] == "error" and bad["status"] == 400 and bad["error"]["code"] == "invalid_event"
    assert unknown[0]["status"] == 404 and unknown[0]["error"]["code"] == "model_not_found"
    assert output_text(good) == "Hello from mock: ok"


def test_a_bad_key_is_refused_at_the_handshake_with_the_auth_error(live, db_access):
    from routing.models import RequestLog

    before = RequestLog.objects.filter(endpoint="responses_websocket", status=401).count()
    with pytest.raises(InvalidStatus) as refused:
        open_socket(live, "sk-gw-not-a-real-key")
    # 400, not 401: the one refusal Codex reports at once (routing.websocket.handshake_status).
    assert refused.value.response.status_code == 400
    error = json.loads(refused.value.response.body)["error"]
    assert error["code"] == "invalid_api_key" and error["message"] == "Incorrect API key provided."
    import time

    deadline = time.monotonic() + 10
    while RequestLog.objects.filter(endpoint="responses_websocket", status=401).count() == before:
        assert time.monotonic() < deadline, "no log row for the refused handshake"
        time.sleep(0.05)


def test_two_responses_on_one_socket_are_two_requests_each_with_its_log_row(live, route_to, mock_upstream):
    model, key, secret = route_to()
    with open_socket(live, secret) as socket:
        first = one_turn(socket, make_create(model, "one"))
        second = one_turn(socket, make_create(model, "two"))

    assert (output_text(first), output_text(second)) == ("Hello from mock: one", "Hello from mock: two")
    assert first[-1]["response"]["id"] != second[-1]["response"]["id"]
    rows = websocket_rows(key, 2)
    assert len({r.request_id for r in rows}) == 2 and all(r.status == 200 for r in rows)
    assert all(r.input_tokens > 0 and r.output_tokens > 0 for r in rows)


def test_a_prewarm_without_generation_calls_no_upstream_and_the_next_turn_chains_on_it(live, route_to, mock_upstream):
    model, key, secret = route_to()
    with open_socket(live, secret) as socket:
        warm = one_turn(socket, make_create(model, "the prompt", generate=False))
        turn = one_turn(socket, make_create(model, "and more", previous_response_id=warm[-1]["response"]["id"]))

    assert [e["type"] for e in warm] == ["response.created", "response.completed"]
    assert warm[-1]["response"]["output"] == []
    sent = [r for r in mock_upstream.requests if r["path"] == "/v1/chat/completions"]
    assert len(sent) == 1  # the prewarm reached no upstream
    assert [m["content"] for m in sent[0]["json"]["messages"]] == ["the prompt", "and more"]
    assert output_text(turn).startswith("Hello from mock:")


def test_a_native_responses_upstream_gets_the_request_as_sent(live, route_to, mock_upstream):
    model, key, secret = route_to(native_responses=True)
    with open_socket(live, secret) as socket:
        events = one_turn(socket, make_create(model, "native", store=False, include=["reasoning.encrypted_content"]))

    assert output_text(events) == "Hello from mock: native"
    sent = [r for r in mock_upstream.requests if r["path"] == "/v1/responses"][-1]
    assert sent["json"]["stream"] is True and sent["json"]["include"] == ["reasoning.encrypted_content"]
    assert "type" not in sent["json"] and "generate" not in sent["json"]


def test_other_api_paths_still_refuse_websockets_with_426(live, route_to):
    _, _, secret = route_to()
    with pytest.raises(InvalidStatus) as refused:
        connect(live.url.replace("http://", "ws://") + "/v1/chat/completions", open_timeout=5,
                additional_headers={"Authorization": f"Bearer {secret}"})
    assert refused.value.response.status_code == 426
    assert b"HTTP only" in refused.value.response.body


def test_a_client_that_closes_the_socket_mid_answer_cancels_the_upstream_request(live, route_to, mock_upstream,
                                                                                 db_access):
    import time

    model, key, secret = route_to(fault={"chunk_delay": 0.3, "chunks": 20})
    started = time.monotonic()
    with open_socket(live, secret) as socket:
        socket.send(json.dumps(make_create(model, "a long answer please")))
        while json.loads(socket.recv(timeout=10))["type"] != "response.output_text.delta":
            pass
    ended = None
    while ended is None and time.monotonic() < started + 5:
        ended = next((e for e in mock_upstream.events if e["type"] == "stream_end" and e["t"] > started
                      and e.get("client_disconnected")), None)
        time.sleep(0.05)
    assert ended is not None, "the upstream response was left open after the client left"
    (row,) = websocket_rows(key, 1)
    assert (row.status, row.error_kind) == (499, "client_disconnected")


def test_a_conversation_expands_only_the_id_of_its_last_response():
    from routing.websocket import Conversation

    conversation = Conversation()
    first = {"model": "m", "input": "hi"}
    call = {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"}
    conversation.remember(first, {"id": "resp_1", "output": [call]})
    result = {"type": "function_call_output", "call_id": "c1", "output": "ok"}

    expanded = conversation.expand({"model": "m", "previous_response_id": "resp_1", "input": [result]})
    other = conversation.expand({"model": "m", "previous_response_id": "resp_0", "input": [result]})

    assert expanded == {"model": "m", "input": [{"role": "user", "content": "hi"}, call, result]}
    assert other["previous_response_id"] == "resp_0" and other["input"] == [result]  # not ours: as sent
    conversation.remember(expanded, {"id": "resp_2", "output": []})
    assert conversation.expand({"previous_response_id": "resp_2"})["input"] == expanded["input"]
