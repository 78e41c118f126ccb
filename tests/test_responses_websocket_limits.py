"""The Responses WebSocket on /v1/responses obeys the gateway's limits, through a real gateway
process: each response counts as a request in flight (GATEWAY_MAX_IN_FLIGHT, one counter with
HTTP), and a message past GATEWAY_MAX_BODY_BYTES is refused while it arrives (close code 1009)."""
import base64
import json
import os
import socket
import struct
import threading
import time

import httpx
import pytest
from websockets.exceptions import ConnectionClosed

from .conftest import wait_for_model
from .factories import make_key, make_provider, make_route
from .test_responses_websocket import make_create, one_turn, open_socket, output_text, websocket_rows

BODY_LIMIT = 8192
SLOW = '<mock>{"chunk_delay": 0.3, "chunks": 8}</mock>'  # an answer that takes ~2 s to stream


@pytest.fixture(scope="module")
def limited(gateway_factory):
    """A gateway that serves one request at a time and takes messages of up to 8 KiB."""
    return gateway_factory(GATEWAY_MAX_IN_FLIGHT="1", GATEWAY_MAX_BODY_BYTES=str(BODY_LIMIT))


@pytest.fixture
def model_on(limited, mock_upstream, db_access):
    """A model served by the mock on the limited gateway, and a key for it (name, key row, secret)."""
    route = make_route((make_provider(mock_upstream.base_url), "gpt-4o-mini"))
    key, secret = make_key(routes=[route])
    wait_for_model(limited, route.name, key=secret)
    return route.name, key, secret


def first_delta(socket) -> None:
    """Wait until the answer to the frame just sent is streaming (so it is in flight)."""
    while json.loads(socket.recv(timeout=10))["type"] != "response.output_text.delta":
        pass


def turn_once_free(ws, frame, timeout=5) -> tuple[list[dict], int]:
    """One turn, sent again while it is refused for want of a place in flight (the answer before
    leaves its place a moment after its last event has gone out); and how many were refused."""
    deadline, refused = time.monotonic() + timeout, 0
    while True:
        events = one_turn(ws, frame)
        if events[0].get("error", {}).get("code") != "overloaded" or time.monotonic() > deadline:
            return events, refused
        refused += 1
        time.sleep(0.05)


def post_response(gateway, secret, model, text="over http"):
    return httpx.post(gateway.url + "/v1/responses", headers={"Authorization": f"Bearer {secret}"}, timeout=10,
                      json={"model": model, "input": text})


def test_a_response_streaming_on_a_socket_holds_the_one_place_in_flight(limited, model_on, db_access):
    model, key, secret = model_on
    with open_socket(limited, secret) as busy, open_socket(limited, secret) as other:
        busy.send(json.dumps(make_create(model, "take the place " + SLOW)))
        first_delta(busy)
        refused_frame = one_turn(other, make_create(model, "no room on the socket"))
        refused_http = post_response(limited, secret, model)
        rest = []
        while not rest or rest[-1]["type"] != "response.completed":
            rest.append(json.loads(busy.recv(timeout=10)))
        # The place is free again: the refused socket stayed open and is answered now.
        after, refused_again = turn_once_free(other, make_create(model, "room now"))

    assert refused_frame == [{"type": "error", "status": 503, "error": refused_frame[0]["error"]}]
    assert refused_frame[0]["error"]["code"] == "overloaded"
    # The same error as HTTP gives past the limit (HTTP adds Retry-After: 1).
    assert refused_http.status_code == 503 and refused_http.headers["retry-after"] == "1"
    assert refused_frame[0]["error"] == refused_http.json()["error"]
    assert output_text(after) == "Hello from mock: room now"
    rows = websocket_rows(key, 3 + refused_again)
    assert sorted(r.status for r in rows) == [200, 200] + [503] * (1 + refused_again)
    refused_row = next(r for r in rows if r.status == 503)
    assert refused_row.error_kind == "unavailable" and "in flight" in refused_row.error_message


def test_an_http_request_in_flight_leaves_no_place_for_a_socket_response(limited, model_on):
    model, key, secret = model_on
    streaming, answered = threading.Event(), []

    def stream_over_http():
        body = {"model": model, "input": "hold it " + SLOW, "stream": True}
        with httpx.stream("POST", limited.url + "/v1/responses", json=body, timeout=20,
                          headers={"Authorization": f"Bearer {secret}"}) as r:
            for line in r.iter_lines():
                if "output_text.delta" in line:
                    streaming.set()
            answered.append(r.status_code)

    http = threading.Thread(target=stream_over_http)
    http.start()
    try:
        assert streaming.wait(10), "the HTTP stream never started"
        with open_socket(limited, secret) as ws:
            refused = one_turn(ws, make_create(model, "no room"))
    finally:
        http.join(20)

    assert answered == [200]
    assert refused[0]["type"] == "error" and refused[0]["status"] == 503
    assert refused[0]["error"]["code"] == "overloaded"


def close_code_after_sending(ws, message) -> int | None:
    """Send a message; the code of the close frame the gateway answers it with."""
    try:
        ws.send(message)
        answer = ws.recv(timeout=10)
    except ConnectionClosed as closed:
        return closed.rcvd.code if closed.rcvd else None
    raise AssertionError(f"the message was answered, not refused: {answer[:200]}")


def reached_the_upstream(mock_upstream, marker: str) -> bool:
    return any(marker in json.dumps(r.get("json")) for r in mock_upstream.requests)


@pytest.mark.parametrize("split", [False, True], ids=["one frame", "in small fragments"])
def test_a_message_past_the_body_limit_closes_the_socket_with_1009(limited, model_on, mock_upstream, split):
    model, key, secret = model_on
    marker = f"too-big-{os.urandom(4).hex()}"
    message = json.dumps(make_create(model, marker + " " + "x" * (4 * BODY_LIMIT)))
    with open_socket(limited, secret) as ws:
        # Fragments of 1 KiB each pass the frame limit: the message's running size does not.
        sent = [message[i:i + 1024] for i in range(0, len(message), 1024)] if split else message
        code = close_code_after_sending(ws, sent)
    with open_socket(limited, secret) as ws:  # the gateway goes on serving
        after = one_turn(ws, make_create(model, "small"))

    assert code == 1009
    assert output_text(after) == "Hello from mock: small"
    assert not reached_the_upstream(mock_upstream, marker)
    assert [r.status for r in websocket_rows(key, 1)] == [200]  # the refused message is no request


def test_a_frame_is_refused_from_its_header_before_its_payload_arrives(limited, model_on):
    """A raw client announces a 10 MB text frame and sends 100 bytes of it: the close comes at once."""
    model, key, secret = model_on
    raw = socket.create_connection(("127.0.0.1", limited.port), timeout=10)
    try:
        nonce = base64.b64encode(os.urandom(16)).decode()
        raw.sendall((f"GET /v1/responses HTTP/1.1\r\nHost: 127.0.0.1:{limited.port}\r\nUpgrade: websocket\r\n"
                     f"Connection: Upgrade\r\nSec-WebSocket-Key: {nonce}\r\nSec-WebSocket-Version: 13\r\n"
                     f"Authorization: Bearer {secret}\r\n\r\n").encode())
        head = b""
        while b"\r\n\r\n" not in head:
            head += raw.recv(4096)
        assert head.startswith(b"HTTP/1.1 101"), head[:200]
        announced = 10 * 1024 * 1024
        raw.sendall(bytes([0x81, 0x80 | 127]) + struct.pack("!Q", announced) + os.urandom(4) + b"x" * 100)
        started = time.monotonic()
        close = raw.recv(2 + 125)
    finally:
        raw.close()

    assert time.monotonic() - started < 5
    assert close[0] == 0x88, close  # FIN + close frame
    assert struct.unpack("!H", close[2:4])[0] == 1009


def test_a_message_under_the_limit_gets_an_answer_bigger_than_the_limit(limited, model_on):
    """The limit is on what clients send: a long answer's events pass, as an HTTP answer would."""
    model, key, secret = model_on
    with open_socket(limited, secret) as ws:
        events = one_turn(ws, make_create(model, 'long <mock>{"chunks": 3000}</mock>'))

    assert events[-1]["type"] == "response.completed", events[-1]
    assert len(json.dumps(events[-1])) > BODY_LIMIT
    assert len(output_text(events).split()) == 3000


def test_a_binary_message_that_grows_past_the_limit_as_text_gets_a_413_frame(limited, model_on, mock_upstream):
    """The in-app check stays as a second line: 3,000 bytes that are not UTF-8 decode to 9,000."""
    model, key, secret = model_on
    with open_socket(limited, secret) as ws:
        ws.send(b"\xff" * 3000)
        refused = json.loads(ws.recv(timeout=10))
        after = one_turn(ws, make_create(model, "still open"))

    assert refused["type"] == "error" and refused["status"] == 413
    assert refused["error"]["code"] == "request_too_large"
    assert output_text(after) == "Hello from mock: still open"


def test_a_request_past_the_in_flight_limit_is_refused_and_counted_until_it_leaves():
    from llmgateway.apihandler import InFlight

    in_flight = InFlight(limit=1)
    assert in_flight.enter() is True
    assert in_flight.enter() is False  # the second is refused, and is being answered meanwhile
    in_flight.leave()
    assert in_flight.enter() is False  # the first is still there
    in_flight.leave()
    in_flight.leave()
    assert (in_flight.enter(), in_flight.count) == (True, 1)
    unlimited = InFlight()
    assert all(unlimited.enter() for _ in range(3))
