"""The Responses API WebSocket mode on /v1/responses (Codex CLI's transport), over a real socket with aiohttp."""

import asyncio
import json

import aiohttp
import pytest


KEY = "sk-test-ws-0123456789"
AUTH = {"Authorization": f"Bearer {KEY}", "OpenAI-Beta": "responses_websockets=2026-02-06"}
WEATHER_TOOL = {"type": "function", "name": "get_weather",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}


def make_create(text="ping pong", **overrides):
    return {"type": "response.create", "model": "gpt-4o-mini", "input": [{"role": "user", "content": text}], **overrides}


def run(scenario):
    return asyncio.run(asyncio.wait_for(scenario(), 10))


def ws_url(mock):
    return mock.base_url.replace("http://", "ws://") + "/responses"


async def receive_turn(ws):
    """Frames until the turn ends: response.completed, or an error frame."""
    events = []
    while True:
        message = await ws.receive()
        if message.type != aiohttp.WSMsgType.TEXT:
            events.append(message.type)
            return events
        event = json.loads(message.data)
        events.append(event)
        if event["type"] in ("response.completed", "error"):
            return events


def test_one_connection_serves_several_turns_chained_by_previous_response_id(mock):
    mock.clear()

    async def scenario():
        async with aiohttp.ClientSession(headers=AUTH) as session:
            async with session.ws_connect(ws_url(mock)) as ws:
                await ws.send_str(json.dumps(make_create("first turn")))
                first = await receive_turn(ws)
                rid = first[-1]["response"]["id"]
                await ws.send_str(json.dumps(make_create("second turn", previous_response_id=rid)))
                second = await receive_turn(ws)
        return first, second

    first, second = run(scenario)
    assert [e["type"] for e in first][:2] == ["response.created", "response.in_progress"]
    assert [e["sequence_number"] for e in first] == list(range(len(first)))
    text = "".join(e["delta"] for e in first if e["type"] == "response.output_text.delta")
    assert text == "Hello from mock: first turn" == first[-1]["response"]["output"][0]["content"][0]["text"]
    assert second[-1]["response"]["previous_response_id"] == first[-1]["response"]["id"]
    assert second[-1]["response"]["usage"]["input_tokens"] > first[-1]["response"]["usage"]["input_tokens"]
    sent = [r for r in mock.requests if r.get("transport") == "websocket"]
    assert len(sent) == 2 and sent[0]["api_key"] == KEY and sent[0]["json"]["input"][0]["content"] == "first turn"
    assert "type" not in sent[0]["json"] and sent[0]["headers"]["authorization"] == "[redacted]"


def test_a_tool_round_trip_over_the_socket(mock):
    async def scenario():
        async with aiohttp.ClientSession(headers=AUTH) as session:
            async with session.ws_connect(ws_url(mock)) as ws:
                ask = {"tools": [WEATHER_TOOL], "store": False, "reasoning": {"effort": "low"},
                       "include": ["reasoning.encrypted_content"]}
                await ws.send_str(json.dumps(make_create("Riga?", **ask)))
                first = await receive_turn(ws)
                output = first[-1]["response"]["output"]
                call = next(item for item in output if item["type"] == "function_call")
                history = [{"role": "user", "content": "Riga?"}, *output,
                           {"type": "function_call_output", "call_id": call["call_id"], "output": "snow"}]
                await ws.send_str(json.dumps({"type": "response.create", "model": "gpt-4o-mini", "input": history,
                                              "mock": {"require_signature": True}, **ask}))
                return first, await receive_turn(ws)

    first, second = run(scenario)
    assert [e["type"] for e in first if e["type"] == "response.function_call_arguments.delta"]
    assert "snow" in second[-1]["response"]["output"][-1]["content"][0]["text"]


def test_faults_answer_with_an_error_frame_and_the_connection_stays_open(mock):
    async def scenario():
        async with aiohttp.ClientSession(headers=AUTH) as session:
            async with session.ws_connect(ws_url(mock)) as ws:
                await ws.send_str(json.dumps(make_create(mock={"status": 429})))
                limited = await receive_turn(ws)
                await ws.send_str(json.dumps(make_create(previous_response_id="resp_gone")))
                missing = await receive_turn(ws)
                await ws.send_str("not json")
                garbage = await receive_turn(ws)
                await ws.send_str(json.dumps(make_create("still here")))
                return limited, missing, garbage, await receive_turn(ws)

    limited, missing, garbage, fine = run(scenario)
    assert limited == [{"type": "error", "status": 429, "error": {"type": "requests", "code": "rate_limit_exceeded",
                                                                   "message": "Rate limit reached for requests (mock).",
                                                                   "param": None}}]
    assert missing[0]["status"] == 400 and missing[0]["error"]["code"] == "previous_response_not_found"
    assert garbage[0]["status"] == 400
    assert fine[-1]["type"] == "response.completed"


def test_a_turn_cut_mid_stream_drops_the_connection(mock):
    mock.clear()

    async def scenario():
        async with aiohttp.ClientSession(headers=AUTH) as session:
            async with session.ws_connect(ws_url(mock)) as ws:
                await ws.send_str(json.dumps(make_create(mock={"chunks_then_drop": 2})))
                return await receive_turn(ws)

    events = run(scenario)
    assert events[-1] in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.ERROR)
    deltas = [e for e in events[:-1] if e["type"] == "response.output_text.delta"]
    assert len(deltas) == 2 and not any(e["type"] == "response.completed" for e in events[:-1])


def test_a_turn_can_fail_mid_stream_with_an_error_frame(mock):
    async def scenario():
        async with aiohttp.ClientSession(headers=AUTH) as session:
            async with session.ws_connect(ws_url(mock)) as ws:
                await ws.send_str(json.dumps(make_create(mock={"error_after": 1, "error_status": 503})))
                return await receive_turn(ws)

    events = run(scenario)
    assert events[-1]["type"] == "error" and events[-1]["status"] == 503
    assert [e["type"] for e in events].count("response.output_text.delta") == 1


def test_the_handshake_needs_a_key(mock):
    async def scenario():
        async with aiohttp.ClientSession() as session:
            with pytest.raises(aiohttp.WSServerHandshakeError) as raised:
                await session.ws_connect(ws_url(mock))
            return raised.value.status

    assert run(scenario) == 401


def test_the_openai_sdk_websocket_client_reads_a_turn(mock):
    import openai

    client = openai.OpenAI(base_url=mock.base_url, api_key=KEY, max_retries=0)
    with client.responses.connect() as connection:
        connection.response.create(model="gpt-4o-mini", input=[{"role": "user", "content": "over the socket"}])
        for event in connection:
            if event.type == "response.completed":
                break
    assert event.response.output_text == "Hello from mock: over the socket"
    assert mock.requests[-1]["transport"] == "websocket"
