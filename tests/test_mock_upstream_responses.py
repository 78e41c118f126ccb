"""The mock speaks the OpenAI Responses API natively: checked with httpx and the official openai SDK."""

import json

import openai
import pytest


KEY = "sk-test-responses-0123456789"
AUTH = {"Authorization": f"Bearer {KEY}"}
WEATHER_TOOL = {"type": "function", "name": "get_weather", "description": "Weather in a city",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}
TIME_TOOL = {"type": "function", "name": "get_time",
             "parameters": {"type": "object", "properties": {"zone": {"type": "string"}}}}


def make_response_request(text="ping pong", **overrides):
    return {"model": "gpt-4o-mini", "input": text, **overrides}


@pytest.fixture
def client(mock_http):
    return mock_http(AUTH)


@pytest.fixture
def sdk(mock):
    mock.clear()
    return openai.OpenAI(base_url=mock.base_url, api_key=KEY, max_retries=0)


def sse_events(client, body):
    with client.stream("POST", "/responses", json={**body, "stream": True}) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        text = r.read().decode()
    events = []
    for block in text.strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.split("\n"))
        payload = json.loads(lines["data"])
        assert payload["type"] == lines["event"]
        events.append(payload)
    return events


def test_a_response_has_the_real_shape_and_usage(sdk, mock):
    response = sdk.responses.create(model="gpt-4o-mini", instructions="be brief", input="ping pong",
                                    extra_body={"mock": {"cached_tokens": 3}})
    assert response.id.startswith("resp_") and response.object == "response" and response.status == "completed"
    assert response.output_text == "Hello from mock: ping pong"
    assert response.output[0].type == "message" and response.output[0].role == "assistant"
    assert response.usage.input_tokens == 2 + 2 + 3 and response.usage.output_tokens == 5
    assert response.usage.input_tokens_details.cached_tokens == 3
    assert response.usage.total_tokens == 12
    assert mock.requests[-1]["path"] == "/v1/responses" and mock.requests[-1]["api_key"] == KEY


def test_a_stored_response_can_be_fetched_and_continued(sdk):
    first = sdk.responses.create(model="gpt-4o-mini", input="first question")
    assert sdk.responses.retrieve(first.id).output_text == first.output_text
    follow = sdk.responses.create(model="gpt-4o-mini", input="second question", previous_response_id=first.id)
    assert follow.output_text == "Hello from mock: second question"
    assert follow.usage.input_tokens > first.usage.input_tokens + 2
    with pytest.raises(openai.NotFoundError):
        sdk.responses.retrieve("resp_missing")
    with pytest.raises(openai.BadRequestError) as raised:
        sdk.responses.create(model="gpt-4o-mini", input="x", previous_response_id="resp_missing")
    assert raised.value.code == "previous_response_not_found"


def test_a_stream_has_the_full_event_sequence(client):
    events = sse_events(client, make_response_request())
    types = [e["type"] for e in events]
    assert types == ["response.created", "response.in_progress", "response.output_item.added",
                     "response.content_part.added"] + ["response.output_text.delta"] * 5 + \
        ["response.output_text.done", "response.content_part.done", "response.output_item.done", "response.completed"]
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    assert events[0]["response"]["status"] == "in_progress"
    assert "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta") == "Hello from mock: ping pong"
    assert events[-1]["response"]["usage"]["output_tokens"] == 5


def test_the_sdk_reads_a_streamed_response(sdk):
    with sdk.responses.stream(model="gpt-4o-mini", input="stream me") as s:
        text = "".join(e.delta for e in s if e.type == "response.output_text.delta")
        final = s.get_final_response()
    assert text == "Hello from mock: stream me" == final.output_text


def test_offered_tools_get_function_calls_streamed_with_argument_deltas(client, sdk):
    response = sdk.responses.create(model="gpt-4o-mini", input="Lyon", tools=[WEATHER_TOOL, TIME_TOOL],
                                    extra_body={"mock": {"tool_calls": 2}})
    calls = [item for item in response.output if item.type == "function_call"]
    assert [(c.name, json.loads(c.arguments)) for c in calls] == [("get_weather", {"city": "Lyon"}),
                                                                  ("get_time", {"zone": "Lyon"})]
    assert calls[0].call_id != calls[1].call_id and calls[0].id.startswith("fc_")
    events = sse_events(client, make_response_request("Lyon", tools=[WEATHER_TOOL]))
    deltas = "".join(e["delta"] for e in events if e["type"] == "response.function_call_arguments.delta")
    assert json.loads(deltas) == {"city": "Lyon"}
    done = next(e for e in events if e["type"] == "response.function_call_arguments.done")
    assert done["arguments"] == deltas and done["name"] == "get_weather"


def test_reasoning_items_carry_encrypted_content_and_are_checked_when_they_come_back(sdk):
    ask = {"model": "gpt-4o-mini", "tools": [WEATHER_TOOL], "reasoning": {"effort": "low", "summary": "auto"},
           "include": ["reasoning.encrypted_content"], "store": False}
    first = sdk.responses.create(input=[{"role": "user", "content": "Weather in Rome?"}], **ask)
    assert [item.type for item in first.output] == ["reasoning", "function_call"]
    reasoning, call = first.output
    assert reasoning.encrypted_content and reasoning.summary[0].text == "Thinking about Weather in Rome?"
    assert first.usage.output_tokens_details.reasoning_tokens == 5
    history = [{"role": "user", "content": "Weather in Rome?"}, *[item.model_dump(exclude_none=True) for item in first.output],
               {"type": "function_call_output", "call_id": call.call_id, "output": "25 degrees, clear"}]
    require = {"mock": {"require_signature": True}}
    follow = sdk.responses.create(input=history, extra_body=require, **ask)
    assert "25 degrees, clear" in follow.output_text
    with pytest.raises(openai.BadRequestError) as missing:
        sdk.responses.create(input=[history[0], history[2], history[3]], extra_body=require, **ask)
    assert "without its required 'reasoning' item" in missing.value.message
    forged = dict(history[1], encrypted_content="bm90IG1pbmU=")
    with pytest.raises(openai.BadRequestError) as bad:
        sdk.responses.create(input=[history[0], forged, *history[2:]], extra_body=require, **ask)
    assert bad.value.code == "invalid_encrypted_content"


def test_compact_keeps_user_messages_and_seals_the_rest(sdk):
    compacted = sdk.responses.compact(model="gpt-4o-mini", input=[
        {"role": "user", "content": "first"}, {"role": "assistant", "content": "an answer"},
        {"role": "user", "content": "second"}])
    assert compacted.object == "response.compaction"
    assert [item.type for item in compacted.output] == ["message", "message", "compaction"]
    assert compacted.output[-1].encrypted_content and compacted.usage.total_tokens > 0
    kept = [item.model_dump(exclude_none=True, warnings=False) for item in compacted.output]
    follow = sdk.responses.create(model="gpt-4o-mini", input=[*kept, {"role": "user", "content": "third"}],
                                  extra_body={"mock": {"require_signature": True}})
    assert follow.output_text == "Hello from mock: third"


def test_a_stream_can_fail_with_an_error_event(client):
    events = sse_events(client, make_response_request(mock={"error_after": 2, "error_status": 500}))
    assert [e["type"] for e in events][-3:] == ["response.output_text.delta", "response.output_text.delta", "error"]
    assert events[-1]["code"] == "server_error" and events[-1]["sequence_number"] == len(events) - 1


def test_faults_and_errors_use_openais_error_shape(sdk):
    with pytest.raises(openai.RateLimitError) as raised:
        sdk.responses.create(model="gpt-4o-mini", input="x", extra_body={"mock": {"status": 429, "retry_after": 1}})
    assert raised.value.code == "rate_limit_exceeded"
    with pytest.raises(openai.BadRequestError):
        sdk.responses.create(model="gpt-4o-mini", input=[{"role": "user", "content": [{"type": "input_image"}]}])
    image = {"role": "user", "content": [{"type": "input_text", "text": "what"},
                                         {"type": "input_image", "image_url": "data:image/png;base64,AAAA"}]}
    assert sdk.responses.create(model="gpt-4o-mini", input=[image]).usage.input_tokens == 1 + 3 + 85
