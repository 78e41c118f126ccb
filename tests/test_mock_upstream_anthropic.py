"""The mock speaks Anthropic Messages natively: checked with httpx and the official anthropic SDK."""

import json

import anthropic
import httpx
import pytest

from providers.mock_upstream import MockUpstreamThread

KEY = "sk-ant-test-0123456789"
HEADERS = {"x-api-key": KEY, "anthropic-version": "2023-06-01"}
WEATHER_TOOL = {"name": "get_weather", "description": "Weather in a city",
                "input_schema": {"type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
                                 "required": ["city", "days"]}}
TIME_TOOL = {"name": "get_time", "input_schema": {"type": "object", "properties": {"zone": {"type": "string"}}}}


def make_message_request(text="ping pong", **overrides):
    return {"model": "claude-sonnet-4-6", "max_tokens": 256, "messages": [{"role": "user", "content": text}],
            **overrides}


@pytest.fixture
def client(mock_http):
    return mock_http(HEADERS, path="")


@pytest.fixture
def sdk(mock):
    mock.clear()
    return anthropic.Anthropic(base_url=mock.origin, api_key=KEY, max_retries=0)


def sse_events(client, body, **kwargs):
    """[(event name, payload)] of a streamed answer."""
    with client.stream("POST", "/v1/messages", json={**body, "stream": True}, **kwargs) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        text = r.read().decode()
    events = []
    for block in text.strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.split("\n"))
        events.append((lines["event"], json.loads(lines["data"])))
    return events


def test_a_message_answers_in_anthropics_shape_and_is_recorded(client, mock):
    r = client.post("/v1/messages", json=make_message_request(system="be brief"))
    assert r.status_code == 200 and r.headers["request-id"].startswith("req_")
    body = r.json()
    assert body["id"].startswith("msg_") and body["type"] == "message" and body["role"] == "assistant"
    assert body["content"] == [{"type": "text", "text": "Hello from mock: ping pong"}]
    assert body["stop_reason"] == "end_turn" and body["stop_sequence"] is None
    assert body["usage"]["input_tokens"] == 4 + 3 and body["usage"]["output_tokens"] == 5
    assert body["usage"]["cache_read_input_tokens"] == 0 and body["usage"]["cache_creation_input_tokens"] == 0
    recorded = mock.requests[-1]
    assert recorded["api_key"] == KEY and recorded["auth_scheme"] == "x-api-key"
    assert recorded["headers"]["x-api-key"] == "[redacted]" and recorded["headers"]["anthropic-version"] == "2023-06-01"


def test_the_sdk_reads_a_message_with_cache_usage(sdk):
    message = sdk.messages.create(**make_message_request("one two three four five six"),
                                  extra_body={"mock": {"cached_tokens": 4, "cache_creation_tokens": 2}})
    assert message.content[0].text == "Hello from mock: one two three four five six"
    assert message.usage.cache_read_input_tokens == 4 and message.usage.cache_creation_input_tokens == 2
    assert message.usage.input_tokens == 6 + 3 - 4 - 2


def test_a_stream_has_every_event_in_order(client):
    events = sse_events(client, make_message_request())
    names = [name for name, _ in events]
    assert names == ["message_start", "content_block_start", "ping"] + ["content_block_delta"] * 5 + \
        ["content_block_stop", "message_delta", "message_stop"]
    assert all(payload["type"] == name for name, payload in events)
    assert events[0][1]["message"]["usage"]["input_tokens"] == 2 + 3
    assert "".join(p["delta"]["text"] for n, p in events if n == "content_block_delta") == "Hello from mock: ping pong"
    delta = events[-2][1]
    assert delta["delta"] == {"stop_reason": "end_turn", "stop_sequence": None}
    assert delta["usage"]["output_tokens"] == 5


def test_the_sdk_accumulates_a_streamed_message(sdk):
    with sdk.messages.stream(**make_message_request("stream me")) as s:
        text = "".join(s.text_stream)
        final = s.get_final_message()
    assert text == "Hello from mock: stream me" and final.usage.output_tokens == 5


def test_offered_tools_get_parallel_tool_calls_with_json_deltas(client, sdk):
    body = make_message_request("Paris weather", tools=[WEATHER_TOOL, TIME_TOOL], mock={"tool_calls": 2})
    message = sdk.messages.create(**{k: v for k, v in body.items() if k != "mock"}, extra_body={"mock": body["mock"]})
    assert message.stop_reason == "tool_use"
    calls = [b for b in message.content if b.type == "tool_use"]
    assert [(c.name, c.input) for c in calls] == [("get_weather", {"city": "Paris weather", "days": 1}),
                                                  ("get_time", {"zone": "Paris weather"})]
    assert calls[0].id != calls[1].id and calls[0].id.startswith("toolu_")
    events = sse_events(client, body)
    starts = [p["content_block"] for n, p in events if n == "content_block_start"]
    assert [s["type"] for s in starts] == ["tool_use", "tool_use"] and starts[0]["input"] == {}
    partial = "".join(p["delta"]["partial_json"] for n, p in events if n == "content_block_delta" and p["index"] == 0)
    assert json.loads(partial) == {"city": "Paris weather", "days": 1}
    assert events[-2][1]["delta"]["stop_reason"] == "tool_use"


def test_a_tool_round_trip_with_signed_thinking(sdk):
    thinking = {"type": "enabled", "budget_tokens": 1024}
    first = [{"role": "user", "content": "Weather in Oslo?"}]
    with sdk.messages.stream(model="claude-sonnet-4-6", max_tokens=1024, thinking=thinking, tools=[WEATHER_TOOL],
                             messages=first) as s:
        turn = s.get_final_message()
    assert [b.type for b in turn.content] == ["thinking", "tool_use"]
    assert turn.content[0].thinking == "Thinking about Weather in Oslo?" and turn.content[0].signature
    call = turn.content[1]
    result = {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id, "content": "12 degrees and rain"}]}
    follow = sdk.messages.create(model="claude-sonnet-4-6", max_tokens=1024, thinking=thinking, tools=[WEATHER_TOOL],
                                 messages=[*first, {"role": "assistant", "content": turn.content}, result],
                                 extra_body={"mock": {"require_signature": True}})
    assert follow.stop_reason == "end_turn"
    assert "12 degrees and rain" in follow.content[-1].text


def test_a_missing_or_forged_thinking_block_is_refused_when_signatures_are_required(sdk):
    call = {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Oslo", "days": 1}}
    result = {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "sunny"}]}
    base = {"model": "claude-sonnet-4-6", "max_tokens": 64, "tools": [WEATHER_TOOL],
            "extra_body": {"mock": {"require_signature": True}}}
    with pytest.raises(anthropic.BadRequestError) as missing:
        sdk.messages.create(**base, messages=[{"role": "user", "content": "Oslo?"},
                                              {"role": "assistant", "content": [call]}, result])
    assert "Expected `thinking` or `redacted_thinking`, but found `tool_use`" in missing.value.message
    forged = {"type": "thinking", "thinking": "Thinking about Oslo?", "signature": "Zm9yZ2Vk"}
    with pytest.raises(anthropic.BadRequestError) as bad:
        sdk.messages.create(**base, messages=[{"role": "user", "content": "Oslo?"},
                                              {"role": "assistant", "content": [forged, call]}, result])
    assert "Invalid `signature` in `thinking` block" in bad.value.message
    assert bad.value.body["error"]["type"] == "invalid_request_error"


def test_max_tokens_cuts_the_answer(sdk):
    message = sdk.messages.create(**make_message_request("a b c d e f", max_tokens=3))
    assert message.content[0].text == "Hello from mock:" and message.stop_reason == "max_tokens"


def test_images_are_accepted_and_bad_sources_refused(client):
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}}
    content = [image, {"type": "text", "text": "what is this"}]
    r = client.post("/v1/messages", json=make_message_request(content))
    assert r.status_code == 200 and r.json()["content"][0]["text"] == "Hello from mock: what is this"
    broken = [{"type": "image", "source": {"type": "base64"}}]
    r = client.post("/v1/messages", json=make_message_request(broken))
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"


@pytest.mark.parametrize("status, err_type, sdk_error", [
    (400, "invalid_request_error", anthropic.BadRequestError),
    (401, "authentication_error", anthropic.AuthenticationError),
    (403, "permission_error", anthropic.PermissionDeniedError),
    (404, "not_found_error", anthropic.NotFoundError),
    (429, "rate_limit_error", anthropic.RateLimitError),
    (500, "api_error", anthropic.InternalServerError),
    (529, "overloaded_error", anthropic.InternalServerError),
])
def test_injected_errors_use_anthropics_error_shape(sdk, status, err_type, sdk_error):
    with pytest.raises(sdk_error) as raised:
        sdk.messages.create(**make_message_request(), extra_body={"mock": {"status": status, "retry_after": 7}})
    assert raised.value.status_code == status
    assert raised.value.body["type"] == "error" and raised.value.body["error"]["type"] == err_type
    assert set(raised.value.body["error"]) == {"type", "message"} and raised.value.body["request_id"]
    assert raised.value.response.headers["retry-after"] == "7"


def test_auth_and_version_are_checked(mock):
    url = mock.origin + "/v1/messages"
    r = httpx.post(url, json=make_message_request(), headers={"anthropic-version": "2023-06-01"})
    assert r.status_code == 401
    assert r.json()["error"] == {"type": "authentication_error", "message": "x-api-key header is required"}
    r = httpx.post(url, json=make_message_request(), headers={"x-api-key": KEY})
    assert r.status_code == 400 and "anthropic-version" in r.json()["error"]["message"]
    r = httpx.post(url, json={"model": "m", "messages": []}, headers=HEADERS)
    assert r.status_code == 400 and r.json()["error"]["message"] == "max_tokens: Field required"
    with MockUpstreamThread(keys={"sk-ant-good"}) as strict:
        r = httpx.post(strict.origin + "/v1/messages", json=make_message_request(), headers=HEADERS)
        assert r.status_code == 401 and r.json()["error"]["message"] == "invalid x-api-key"


def test_a_stream_can_fail_with_an_error_event(client):
    events = sse_events(client, make_message_request(mock={"error_after": 2, "error_status": 529}))
    assert [n for n, _ in events][-3:] == ["content_block_delta", "content_block_delta", "error"]
    assert events[-1][1] == {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}


def test_the_sdk_raises_on_a_mid_stream_error(sdk):
    with pytest.raises(anthropic.APIStatusError) as raised:
        with sdk.messages.stream(**make_message_request(), extra_body={"mock": {"error_after": 1, "error_status": 529}}) as s:
            for _ in s.text_stream:
                pass
    assert "Overloaded" in str(raised.value)


def test_a_malformed_event_keeps_its_event_name(client):
    with client.stream("POST", "/v1/messages", json={**make_message_request(mock={"malformed_at": 2}), "stream": True}) as r:
        text = r.read().decode()
    assert 'event: content_block_delta\ndata: {"broken": \n\n' in text


def test_count_tokens_counts_system_and_messages(client, sdk):
    counted = sdk.messages.count_tokens(model="claude-sonnet-4-6", system="be brief",
                                        messages=[{"role": "user", "content": "one two three"}])
    assert counted.input_tokens == 2 + 3 + 3


def test_models_are_listed_in_anthropics_shape(client, sdk):
    page = sdk.models.list(limit=3)
    assert [m.type for m in page.data] == ["model"] * 3 and page.has_more is True
    assert len(list(sdk.models.list())) == len(client.get("/v1/models?limit=100").json()["data"])
    assert sdk.models.retrieve("claude-sonnet-4-6").id == "claude-sonnet-4-6"
    with pytest.raises(anthropic.NotFoundError):
        sdk.models.retrieve("claude-nope")
    openai_shape = httpx.get(client.base_url.join("/v1/models"), headers={"Authorization": "Bearer x"}).json()
    assert openai_shape["object"] == "list"


def test_options_in_the_prompt_text_survive_translation(client):
    r = client.post("/v1/messages", json=make_message_request('hi <mock>{"status": 529}</mock>'))
    assert r.status_code == 529 and r.json()["error"]["type"] == "overloaded_error"
