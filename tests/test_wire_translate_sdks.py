"""The official SDKs accept what the stream writers produce: translated streams are handed to
the `openai` and `anthropic` clients through httpx.MockTransport (no sockets: the bytes are
what matters here; the gateway's socket tests drive the same SDKs end to end)."""
import json

import anthropic
import httpx
import httpx2
import openai
import pytest

from providers.wire.translate import StreamTranslator, translate_answer

from .test_wire_translate_gemini import GEMINI_ANSWER, GEMINI_STREAM
from .test_wire_translate_responses import RESPONSES_STREAM
from .test_wire_translate_streams import ANTHROPIC_THINKING_AND_TOOLS, CHAT_REASONING_AND_TWO_TOOLS

UPSTREAMS = {"openai_chat": CHAT_REASONING_AND_TWO_TOOLS, "anthropic_messages": ANTHROPIC_THINKING_AND_TOOLS,
             "openai_responses": RESPONSES_STREAM, "gemini": GEMINI_STREAM}
CALLS = {"openai_chat": 2, "anthropic_messages": 2, "openai_responses": 1, "gemini": 2}  # tool calls in each


def translated(src: str, dst: str, cut: bool = False) -> bytes:
    translator = StreamTranslator(src, dst, "client-model")
    data = UPSTREAMS[src]
    if cut:  # the upstream dies halfway
        return translator.feed(data[:len(data) // 2]) + translator.finish()
    return translator.feed(data) + translator.finish()


def serving(body: bytes, content_type="text/event-stream", http=httpx):
    def handler(request):
        return http.Response(200, content=body, headers={"content-type": content_type})
    return http.Client(transport=http.MockTransport(handler))


def make_anthropic(body: bytes, **kwargs) -> anthropic.Anthropic:
    # this anthropic release runs on httpx2 (the httpx successor), the openai one on httpx
    return anthropic.Anthropic(api_key="k", base_url="http://gateway.test",
                               http_client=serving(body, http=httpx2, **kwargs), max_retries=0)


def make_openai(body: bytes, **kwargs) -> openai.OpenAI:
    return openai.OpenAI(api_key="k", base_url="http://gateway.test/v1", http_client=serving(body, **kwargs),
                         max_retries=0)


@pytest.mark.parametrize("src", sorted(UPSTREAMS))
def test_the_anthropic_sdk_assembles_a_translated_stream(src):
    client = make_anthropic(translated(src, "anthropic_messages"))
    with client.messages.stream(model="client-model", max_tokens=100, messages=[{"role": "user", "content": "hi"}]) as stream:
        message = stream.get_final_message()
    assert message.stop_reason == "tool_use"
    tool_uses = [block for block in message.content if block.type == "tool_use"]
    assert len(tool_uses) == CALLS[src] and all(isinstance(block.input, dict) for block in tool_uses)
    assert [block.type for block in message.content if block.type == "thinking"] == ["thinking"] * (
        2 if src == "gemini" else 1)
    assert message.usage.output_tokens > 0


@pytest.mark.parametrize("src", sorted(UPSTREAMS))
def test_the_anthropic_sdk_raises_when_a_translated_stream_breaks_off(src):
    client = make_anthropic(translated(src, "anthropic_messages", cut=True))
    with pytest.raises(anthropic.APIStatusError, match="ended before the answer was complete"):
        with client.messages.stream(model="client-model", max_tokens=100, messages=[{"role": "user", "content": "hi"}]) as stream:
            stream.get_final_message()


@pytest.mark.parametrize("src", sorted(UPSTREAMS))
def test_the_openai_sdk_assembles_a_translated_chat_stream(src):
    client = make_openai(translated(src, "openai_chat"))
    with client.chat.completions.stream(model="client-model", messages=[{"role": "user", "content": "hi"}]) as stream:
        completion = stream.get_final_completion()
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    calls = choice.message.tool_calls
    assert len(calls) == len({c.id for c in calls}) == CALLS[src]
    assert all(isinstance(json.loads(c.function.arguments), dict) for c in calls)
    assert completion.usage.total_tokens == completion.usage.prompt_tokens + completion.usage.completion_tokens > 0


@pytest.mark.parametrize("src", sorted(UPSTREAMS))
def test_the_openai_sdk_raises_when_a_translated_chat_stream_breaks_off(src):
    client = make_openai(translated(src, "openai_chat", cut=True))
    with pytest.raises(openai.APIError, match="ended before the answer was complete"):
        for _ in client.chat.completions.create(model="client-model", messages=[{"role": "user", "content": "hi"}],
                                                stream=True):
            pass


@pytest.mark.parametrize("src", sorted(UPSTREAMS))
def test_the_openai_sdk_assembles_a_translated_responses_stream(src):
    client = make_openai(translated(src, "openai_responses"))
    with client.responses.stream(model="client-model", input="hi") as stream:
        response = stream.get_final_response()
    assert response.status == "completed"
    calls = [item for item in response.output if item.type == "function_call"]
    assert len(calls) == CALLS[src] and all(isinstance(json.loads(c.arguments), dict) for c in calls)
    assert response.usage.total_tokens > 0


@pytest.mark.parametrize("src", sorted(UPSTREAMS))
def test_a_translated_responses_stream_that_breaks_off_ends_failed(src):
    client = make_openai(translated(src, "openai_responses", cut=True))
    events = list(client.responses.create(model="client-model", input="hi", stream=True))
    assert events[-1].type == "response.failed"
    assert events[-2].type == "error" and "ended before the answer was complete" in events[-2].message


def test_the_sdks_parse_translated_answers():
    body = translate_answer(GEMINI_ANSWER, "gemini", "anthropic_messages", "client-model")
    message = make_anthropic(json.dumps(body).encode(), content_type="application/json").messages.create(
        model="client-model", max_tokens=10, messages=[{"role": "user", "content": "hi"}])
    assert message.content[-1].type == "tool_use" and message.content[-1].input == {"a": 1}
    body = translate_answer(GEMINI_ANSWER, "gemini", "openai_responses", "client-model")
    response = make_openai(json.dumps(body).encode(), content_type="application/json").responses.create(
        model="client-model", input="hi")
    assert response.output_text == "Checking."
