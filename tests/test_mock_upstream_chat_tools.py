"""Chat completions beyond plain text: tool calls, reasoning_content, cached tokens, images (openai SDK and httpx)."""

import json

import httpx
import openai
import pytest


KEY = "sk-test-chat-0123456789"
WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["c", "f"]}},
    "required": ["city", "unit"]}}}
CLOCK = {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}}}


@pytest.fixture
def sdk(mock):
    mock.clear()
    return openai.OpenAI(base_url=mock.base_url, api_key=KEY, max_retries=0)


def user(text):
    return {"role": "user", "content": text}


def test_offered_tools_get_a_tool_call(sdk):
    completion = sdk.chat.completions.create(model="gpt-4o-mini", messages=[user("Weather in Nice")], tools=[WEATHER])
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    call = choice.message.tool_calls[0]
    assert call.type == "function" and call.id.startswith("call_") and call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Weather in Nice", "unit": "c"}


def test_two_parallel_calls_stream_with_their_index_id_and_argument_deltas(sdk, mock):
    stream = sdk.chat.completions.create(model="gpt-4o-mini", messages=[user("Nice")], tools=[WEATHER, CLOCK],
                                         stream=True, stream_options={"include_usage": True},
                                         extra_body={"mock": {"tool_calls": 2}})
    chunks = list(stream)
    deltas = [d for c in chunks if c.choices for d in (c.choices[0].delta.tool_calls or [])]
    openings = [d for d in deltas if d.id]
    assert [(d.index, d.function.name) for d in openings] == [(0, "get_weather"), (1, "get_time")]
    assert openings[0].id != openings[1].id
    arguments = {i: "".join(d.function.arguments or "" for d in deltas if d.index == i) for i in (0, 1)}
    assert json.loads(arguments[0]) == {"city": "Nice", "unit": "c"} and json.loads(arguments[1]) == {}
    assert len([d for d in deltas if d.index == 0]) >= 3
    assert chunks[-2].choices[0].finish_reason == "tool_calls"
    assert chunks[-1].usage.completion_tokens > 0


def test_the_sdk_stream_helper_assembles_parallel_calls(sdk):
    with sdk.chat.completions.stream(model="gpt-4o-mini", messages=[user("Nice")], tools=[WEATHER, CLOCK],
                                     extra_body={"mock": {"tool_calls": 2}}) as s:
        final = s.get_final_completion()
    calls = final.choices[0].message.tool_calls
    assert [c.function.name for c in calls] == ["get_weather", "get_time"]


def test_a_tool_result_comes_back_in_the_answer(sdk):
    first = sdk.chat.completions.create(model="gpt-4o-mini", messages=[user("Nice")], tools=[WEATHER])
    call = first.choices[0].message.tool_calls[0]
    messages = [user("Nice"), first.choices[0].message.model_dump(exclude_none=True),
                {"role": "tool", "tool_call_id": call.id, "content": "31 degrees"}]
    answer = sdk.chat.completions.create(model="gpt-4o-mini", messages=messages, tools=[WEATHER])
    assert answer.choices[0].finish_reason == "stop"
    assert "31 degrees" in answer.choices[0].message.content


def test_tool_choice_none_and_tool_calls_zero_answer_with_text(sdk):
    none = sdk.chat.completions.create(model="gpt-4o-mini", messages=[user("hi")], tools=[WEATHER], tool_choice="none")
    assert none.choices[0].message.content == "Hello from mock: hi"
    zero = sdk.chat.completions.create(model="gpt-4o-mini", messages=[user("hi")], tools=[WEATHER],
                                       extra_body={"mock": {"tool_calls": 0}})
    assert zero.choices[0].message.tool_calls is None


def test_reasoning_content_streams_before_the_answer_deepseek_style(mock):
    body = {"model": "deepseek-reasoner", "messages": [user("why")], "stream": True,
            "stream_options": {"include_usage": True}}
    with httpx.stream("POST", mock.base_url + "/chat/completions", json=body,
                      headers={"Authorization": f"Bearer {KEY}"}) as r:
        payloads = [line[6:] for line in r.iter_lines() if line.startswith("data: ")]
    chunks = [json.loads(p) for p in payloads[:-1]]
    deltas = [c["choices"][0]["delta"] for c in chunks if c["choices"]]
    reasoning = "".join(d.get("reasoning_content") or "" for d in deltas)
    content = "".join(d.get("content") or "" for d in deltas)
    assert reasoning == "Thinking about why" and content == "Hello from mock: why"
    first_content = next(i for i, d in enumerate(deltas) if d.get("content"))
    assert all(d.get("reasoning_content") is None for d in deltas[first_content:])
    assert chunks[-1]["usage"]["completion_tokens_details"]["reasoning_tokens"] == 3


def test_reasoning_content_must_come_back_when_required(sdk):
    first = sdk.chat.completions.create(model="gpt-4o-mini", messages=[user("Nice")], tools=[WEATHER],
                                        extra_body={"mock": {"reasoning": True}})
    message = first.choices[0].message.model_dump(exclude_none=True)
    assert message["reasoning_content"] == "Thinking about Nice"
    result = {"role": "tool", "tool_call_id": message["tool_calls"][0]["id"], "content": "warm"}
    require = {"mock": {"require_signature": True}}
    ok = sdk.chat.completions.create(model="gpt-4o-mini", messages=[user("Nice"), message, result], extra_body=require)
    assert "warm" in ok.choices[0].message.content
    stripped = {k: v for k, v in message.items() if k != "reasoning_content"}
    with pytest.raises(openai.BadRequestError) as raised:
        sdk.chat.completions.create(model="gpt-4o-mini", messages=[user("Nice"), stripped, result], extra_body=require)
    assert "Missing `reasoning_content` field in the assistant message at message index 1" in raised.value.message


def test_cached_tokens_are_reported(sdk):
    usage = sdk.chat.completions.create(model="gpt-4o-mini", messages=[user("a b c d e")],
                                        extra_body={"mock": {"cached_tokens": 4}}).usage
    assert usage.prompt_tokens == 8 and usage.prompt_tokens_details.cached_tokens == 4


def test_image_parts_are_accepted_and_bad_urls_refused(sdk):
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}
    completion = sdk.chat.completions.create(model="gpt-4o-mini", messages=[
        {"role": "user", "content": [{"type": "text", "text": "what is it"}, image]}])
    assert completion.choices[0].message.content == "Hello from mock: what is it"
    assert completion.usage.prompt_tokens == 3 + 3 + 85
    with pytest.raises(openai.BadRequestError):
        sdk.chat.completions.create(model="gpt-4o-mini", messages=[
            {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "file:///etc/passwd"}}]}])
