"""The Gemini codec: generateContent requests, answers and alt=sse streams to and from the others."""
import json

import pytest

from providers import hub
from providers.wire import InvalidField, codec
from providers.wire.translate import translate_answer, translate_request

from .test_wire_translate_streams import make_translator, parse_sse


def gemini_sse(*chunks) -> bytes:
    """Gemini's alt=sse framing: data lines ended by CRLF pairs."""
    return b"".join(b"data: " + json.dumps(c, ensure_ascii=False).encode() + b"\r\n\r\n" for c in chunks)


def make_gemini_request(**overrides):
    body = {"contents": [{"role": "user", "parts": [{"text": "hello"}]}]}
    body.update(overrides)
    return body


GEMINI_HISTORY = make_gemini_request(
    systemInstruction={"parts": [{"text": "Be exact."}]},
    contents=[
        {"role": "user", "parts": [{"text": "Weather in Paris and Rome?"},
                                   {"inlineData": {"mimeType": "image/jpeg", "data": "/9j/4A=="}}]},
        {"role": "model", "parts": [
            {"functionCall": {"name": "weather", "args": {"city": "Paris"}}, "thoughtSignature": "R2VtU2ln"},
            {"functionCall": {"name": "weather", "args": {"city": "Rome"}}}]},
        {"role": "user", "parts": [
            {"functionResponse": {"name": "weather", "response": {"result": "sunny"}}},
            {"functionResponse": {"name": "weather", "response": {"temp": 31}}}]},
    ],
    tools=[{"functionDeclarations": [{"name": "weather", "parameters": {"type": "OBJECT", "properties": {
        "city": {"type": "STRING"}}}}]}, {"googleSearch": {}}],
    toolConfig={"functionCallingConfig": {"mode": "ANY"}},
    generationConfig={"maxOutputTokens": 3000, "temperature": 0.3, "stopSequences": ["##"], "topK": 20,
                      "thinkingConfig": {"thinkingBudget": 2048, "includeThoughts": True}},
)


def test_gemini_calls_without_ids_are_matched_to_their_responses_by_name_and_order():
    req = codec("gemini").read_request(GEMINI_HISTORY)
    calls = [p for p in req.messages[1].parts if isinstance(p, hub.ToolCall)]
    results = req.messages[2].parts
    assert [c.id for c in calls] == [r.call_id for r in results] == ["gemini_call_0", "gemini_call_1"]
    assert [r.parts for r in results] == [[hub.Text("sunny")], [hub.Text("{\"temp\": 31}")]]
    assert req.messages[1].parts[0] == hub.Thinking(signature="R2VtU2ln", origin="gemini")


def test_a_gemini_request_becomes_an_anthropic_request():
    body, diagnostics = translate_request(GEMINI_HISTORY, "gemini", "anthropic_messages", "claude-x")
    assert body == {
        "model": "claude-x",
        "system": "Be exact.",
        "messages": [
            {"role": "user", "content": [
                {"type": "text", "text": "Weather in Paris and Rome?"},
                {"type": "image", "source": {"type": "base64", "media_type": "image/jpeg", "data": "/9j/4A=="}}]},
            # Gemini's thought signature means nothing to Anthropic: it is left out
            {"role": "assistant", "content": [
                {"type": "tool_use", "id": "gemini_call_0", "name": "weather", "input": {"city": "Paris"}},
                {"type": "tool_use", "id": "gemini_call_1", "name": "weather", "input": {"city": "Rome"}}]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "gemini_call_0", "content": "sunny"},
                {"type": "tool_result", "tool_use_id": "gemini_call_1", "content": "{\"temp\": 31}"}]},
        ],
        # Gemini's OpenAPI-style upper-case types become JSON Schema's
        "tools": [{"name": "weather", "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}}],
        "tool_choice": {"type": "any"},
        "max_tokens": 3000, "temperature": 0.3, "stop_sequences": ["##"],
    }
    assert dict(diagnostics) == {
        "tools[1]": "built-in tool googleSearch has no equivalent",
        "contents[1].thinking": "reasoning sealed by a gemini provider is only valid there",
        "reasoning": "Anthropic cannot think while a tool use is forced",
        "generationConfig": "no equivalent in anthropic_messages",
    }


def test_a_chat_request_becomes_a_gemini_request_with_function_names_on_responses():
    chat = {"model": "m", "messages": [
        {"role": "system", "content": "S"},
        {"role": "user", "content": [{"type": "text", "text": "see"},
                                     {"type": "image_url", "image_url": {"url": "https://x.test/p.png"}}]},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_7", "type": "function", "function": {"name": "lookup", "arguments": "{\"q\":\"a\"}"}}]},
        {"role": "tool", "tool_call_id": "call_7", "content": "found"},
    ], "tools": [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}],
        "tool_choice": {"type": "function", "function": {"name": "lookup"}}, "reasoning_effort": "low",
        "response_format": {"type": "json_object"}, "max_tokens": 9000}
    body, diagnostics = translate_request(chat, "openai_chat", "gemini", "gemini-2.5-flash")
    assert body == {
        "systemInstruction": {"parts": [{"text": "S"}]},
        "contents": [
            {"role": "user", "parts": [{"text": "see"}, {"fileData": {"mimeType": "image/png", "fileUri": "https://x.test/p.png"}}]},
            {"role": "model", "parts": [{"functionCall": {"name": "lookup", "args": {"q": "a"}, "id": "call_7"}}]},
            {"role": "user", "parts": [{"functionResponse": {"name": "lookup", "response": {"result": "found"}, "id": "call_7"}}]},
        ],
        "tools": [{"functionDeclarations": [{"name": "lookup", "parametersJsonSchema": {"type": "object", "properties": {}}}]}],
        "toolConfig": {"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["lookup"]}},
        "generationConfig": {"maxOutputTokens": 9000, "responseMimeType": "application/json",
                             "thinkingConfig": {"thinkingBudget": 2048, "includeThoughts": True}},
    }
    assert diagnostics == []


def test_a_tool_result_with_an_image_keeps_the_image_beside_the_function_response():
    anthropic = {"model": "m", "max_tokens": 10, "messages": [
        {"role": "user", "content": "shot"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "screenshot", "input": {}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": [
            {"type": "text", "text": "here"},
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "QUJD"}}]}]}]}
    body, _ = translate_request(anthropic, "anthropic_messages", "gemini", "g")
    assert body["contents"][2] == {"role": "user", "parts": [
        {"functionResponse": {"name": "screenshot", "response": {"result": "here"}, "id": "t1"}},
        {"inlineData": {"mimeType": "image/png", "data": "QUJD"}}]}


@pytest.mark.parametrize("body, param", [
    ({}, "contents"),
    (make_gemini_request(contents=[{"role": "system", "parts": []}]), "contents[0].role"),
    (make_gemini_request(contents=[{"role": "user", "parts": "x"}]), "contents[0].parts"),
    (make_gemini_request(generationConfig={"maxOutputTokens": -5}), "maxOutputTokens"),
    (make_gemini_request(generationConfig={"candidateCount": 3}), "generationConfig.candidateCount"),
])
def test_gemini_validation_names_the_bad_field(body, param):
    with pytest.raises(InvalidField) as raised:
        codec("gemini").validate_request(body)
    assert raised.value.param == param


def test_cached_content_cannot_be_translated():
    with pytest.raises(InvalidField):
        translate_request(make_gemini_request(cachedContent="cachedContents/1"), "gemini", "openai_chat", "m")


# --- answers ------------------------------------------------------------------------------

GEMINI_ANSWER = {
    "candidates": [{"content": {"role": "model", "parts": [
        {"text": "Thinking about it", "thought": True},
        {"text": "Checking.", "thoughtSignature": "U2lnMQ=="},
        {"functionCall": {"name": "f", "args": {"a": 1}}}]}, "finishReason": "STOP", "index": 0}],
    "usageMetadata": {"promptTokenCount": 120, "cachedContentTokenCount": 100, "candidatesTokenCount": 10,
                      "thoughtsTokenCount": 25, "totalTokenCount": 155},
    "modelVersion": "gemini-2.5-pro", "responseId": "abc",
}


def test_a_gemini_answer_becomes_a_chat_completion_with_thoughts_counted_as_completion_tokens():
    body = translate_answer(GEMINI_ANSWER, "gemini", "openai_chat", "client-model")
    assert body["choices"][0]["message"] == {
        "role": "assistant", "content": "Checking.", "reasoning_content": "Thinking about it",
        "tool_calls": [{"id": "gemini_call_0", "type": "function", "function": {"name": "f", "arguments": "{\"a\": 1}"}}]}
    assert body["choices"][0]["finish_reason"] == "tool_calls"
    assert body["usage"] == {"prompt_tokens": 120, "completion_tokens": 35, "total_tokens": 155,
                             "prompt_tokens_details": {"cached_tokens": 100},
                             "completion_tokens_details": {"reasoning_tokens": 25}}


def test_a_gemini_answer_hands_its_signature_to_an_anthropic_client_sealed_with_its_origin():
    body = translate_answer(GEMINI_ANSWER, "gemini", "anthropic_messages", "client-model")
    assert body["content"] == [
        {"type": "thinking", "thinking": "Thinking about it", "signature": "gemini@gemini-2.5-pro:"},  # unsigned, marked
        {"type": "thinking", "thinking": "", "signature": "gemini@gemini-2.5-pro:U2lnMQ=="},
        {"type": "text", "text": "Checking."},
        {"type": "tool_use", "id": "gemini_call_0", "name": "f", "input": {"a": 1}}]
    assert body["usage"]["cache_read_input_tokens"] == 100 and body["usage"]["input_tokens"] == 20


@pytest.mark.parametrize("finish, stop", [("STOP", "end_turn"), ("MAX_TOKENS", "max_tokens"), ("SAFETY", "refusal"),
                                          ("RECITATION", "refusal"), ("MALFORMED_FUNCTION_CALL", "MALFORMED_FUNCTION_CALL")])
def test_gemini_finish_reasons_map_exactly(finish, stop):
    answer = {"candidates": [{"content": {"parts": [{"text": "x"}]}, "finishReason": finish}], "modelVersion": "g"}
    assert translate_answer(answer, "gemini", "anthropic_messages", "m")["stop_reason"] == stop


def test_a_blocked_prompt_is_a_content_filter_stop():
    answer = {"promptFeedback": {"blockReason": "PROHIBITED_CONTENT"}, "modelVersion": "g"}
    assert translate_answer(answer, "gemini", "openai_chat", "m")["choices"][0]["finish_reason"] == "content_filter"
    back = translate_answer(translate_answer(answer, "gemini", "gemini", "m"), "gemini", "gemini", "m")
    assert back["candidates"][0]["finishReason"] == "PROHIBITED_CONTENT"


def test_gemini_errors_have_googles_shape():
    assert codec("gemini").error_body(429, "rate_limit", "Quota") == {
        "error": {"code": 429, "message": "Quota", "status": "RESOURCE_EXHAUSTED"}}
    assert codec("gemini").read_error(b'{"error": {"code": 400, "message": "Bad key", "status": "INVALID_ARGUMENT"}}') == "Bad key"


# --- streams ------------------------------------------------------------------------------

GEMINI_STREAM = gemini_sse(
    {"candidates": [{"content": {"role": "model", "parts": [{"text": "先", "thought": True}]}}],
     "modelVersion": "gemini-2.5-flash", "responseId": "r9"},
    {"candidates": [{"content": {"role": "model", "parts": [{"text": "想", "thought": True}]}}], "modelVersion": "gemini-2.5-flash"},
    {"candidates": [{"content": {"role": "model", "parts": [{"text": "中文"}]}}], "modelVersion": "gemini-2.5-flash"},
    {"candidates": [{"content": {"role": "model", "parts": [{"text": "回答"}]}}], "modelVersion": "gemini-2.5-flash"},
    {"candidates": [{"content": {"role": "model", "parts": [
        {"functionCall": {"name": "f", "args": {"x": "é"}}, "thoughtSignature": "U0lH"},
        {"functionCall": {"id": "given", "name": "g", "args": {}}}]}, "finishReason": "STOP"}],
     "usageMetadata": {"promptTokenCount": 9, "candidatesTokenCount": 6, "thoughtsTokenCount": 3, "totalTokenCount": 18},
     "modelVersion": "gemini-2.5-flash"},
)


def test_a_gemini_stream_reads_into_hub_events():
    reader = codec("gemini").StreamReader()
    assert reader.feed(GEMINI_STREAM) + reader.close() == [
        hub.Start("r9", "gemini-2.5-flash"),
        hub.BlockStart(0, hub.BlockKind.THINKING), hub.ThinkingDelta(0, "先"), hub.ThinkingDelta(0, "想"),
        hub.BlockStop(0),
        hub.BlockStart(1, hub.BlockKind.TEXT), hub.TextDelta(1, "中文"), hub.TextDelta(1, "回答"), hub.BlockStop(1),
        hub.BlockStart(2, hub.BlockKind.THINKING), hub.SignatureDelta(2, "U0lH", origin="gemini"), hub.BlockStop(2),
        hub.BlockStart(3, hub.BlockKind.TOOL_CALL, tool_id="gemini_call_0", tool_name="f"),
        hub.ToolArgsDelta(3, "{\"x\": \"é\"}"), hub.BlockStop(3),
        hub.BlockStart(4, hub.BlockKind.TOOL_CALL, tool_id="given", tool_name="g"),
        hub.ToolArgsDelta(4, "{}"), hub.BlockStop(4),
        hub.Finish(hub.StopReason.TOOL_USE, hub.Usage(input_tokens=9, output_tokens=9, reasoning_tokens=3)),
    ]


def test_a_gemini_stream_becomes_chat_chunks():
    translator = make_translator("gemini", "openai_chat")
    chunks = [p for _, p in parse_sse(translator.feed(GEMINI_STREAM) + translator.finish())]
    deltas = [c["choices"][0]["delta"] for c in chunks[:-1]]
    assert deltas == [
        {"role": "assistant", "content": ""},
        {"reasoning_content": "先"}, {"reasoning_content": "想"}, {"content": "中文"}, {"content": "回答"},
        {"tool_calls": [{"index": 0, "id": "gemini_call_0", "type": "function", "function": {"name": "f", "arguments": ""}}]},
        {"tool_calls": [{"index": 0, "function": {"arguments": "{\"x\": \"é\"}"}}]},
        {"tool_calls": [{"index": 1, "id": "given", "type": "function", "function": {"name": "g", "arguments": ""}}]},
        {"tool_calls": [{"index": 1, "function": {"arguments": "{}"}}]},
        {},
    ]
    assert chunks[-2]["choices"][0]["finish_reason"] == "tool_calls"
    assert chunks[-2]["usage"] == {"prompt_tokens": 9, "completion_tokens": 9, "total_tokens": 18,
                                   "completion_tokens_details": {"reasoning_tokens": 3}}


def test_a_gemini_stream_split_at_every_byte_gives_the_same_anthropic_bytes():
    whole = make_translator("gemini", "anthropic_messages")
    want = whole.feed(GEMINI_STREAM) + whole.finish()
    for cut in range(1, len(GEMINI_STREAM)):
        translator = make_translator("gemini", "anthropic_messages")
        got = translator.feed(GEMINI_STREAM[:cut]) + translator.feed(GEMINI_STREAM[cut:]) + translator.finish()
        assert got == want, cut


def test_a_gemini_stream_without_a_finish_reason_ends_with_the_clients_error():
    translator = make_translator("gemini", "openai_responses")
    cut = GEMINI_STREAM.index(b'data: {"candidates": [{"content": {"role": "model", "parts": [{"functionCall"')
    events = parse_sse(translator.feed(GEMINI_STREAM[:cut]) + translator.finish())
    assert [name for name, _ in events[-2:]] == ["error", "response.failed"]
    assert not translator.finished


def test_a_chat_stream_becomes_gemini_chunks_with_whole_function_calls_and_a_final_finish():
    data = (b'data: {"id":"c1","model":"up","choices":[{"index":0,"delta":{"content":"Hi"}}]}\n\n'
            b'data: {"id":"c1","model":"up","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"id":"call_1",'
            b'"function":{"name":"f","arguments":"{\\"a\\""}}]}}]}\n\n'
            b'data: {"id":"c1","model":"up","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,'
            b'"function":{"arguments":":2}"}}]}}]}\n\n'
            b'data: {"id":"c1","model":"up","choices":[{"index":0,"delta":{},"finish_reason":"tool_calls"}],'
            b'"usage":{"prompt_tokens":4,"completion_tokens":3}}\n\n'
            b'data: [DONE]\n\n')
    translator = make_translator("openai_chat", "gemini", "client-model")
    chunks = [p for _, p in parse_sse((translator.feed(data) + translator.finish()).replace(b"\r\n", b"\n"))]
    assert [c["candidates"][0]["content"]["parts"] for c in chunks] == [
        [{"text": "Hi"}], [{"functionCall": {"name": "f", "args": {"a": 2}, "id": "call_1"}}], [{"text": ""}]]
    assert chunks[-1]["candidates"][0]["finishReason"] == "STOP"
    assert chunks[-1]["usageMetadata"] == {"promptTokenCount": 4, "candidatesTokenCount": 3, "totalTokenCount": 7}
    assert {c["responseId"] for c in chunks} == {"c1"} and {c["modelVersion"] for c in chunks} == {"client-model"}


def test_a_gemini_error_chunk_becomes_the_clients_error():
    data = gemini_sse({"error": {"code": 503, "message": "The model is overloaded.", "status": "UNAVAILABLE"}})
    translator = make_translator("gemini", "anthropic_messages")
    assert parse_sse(translator.feed(data) + translator.finish()) == [
        ("error", {"type": "error", "error": {"type": "api_error", "message": "The model is overloaded."}})]


def test_a_gemini_signature_goes_through_an_anthropic_client_and_back_to_gemini_unchanged():
    answer = translate_answer(GEMINI_ANSWER, "gemini", "anthropic_messages", "client-model")
    history = {"model": "client-model", "max_tokens": 100, "messages": [
        {"role": "user", "content": "go"},
        {"role": "assistant", "content": answer["content"]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "gemini_call_0", "content": "1"}]}]}
    to_gemini, diagnostics = translate_request(history, "anthropic_messages", "gemini", "gemini-2.5-pro")
    assert to_gemini["contents"][1]["parts"] == [
        {"text": "Thinking about it", "thought": True},
        {"text": "Checking.", "thoughtSignature": "U2lnMQ=="},  # back on the part it came on
        {"functionCall": {"name": "f", "args": {"a": 1}}}]
    assert to_gemini["contents"][2]["parts"] == [{"functionResponse": {"name": "f", "response": {"result": "1"}}}]
    assert diagnostics == []
    to_claude, diagnostics = translate_request(history, "anthropic_messages", "anthropic_messages", "claude-x")
    assert to_claude["messages"][1]["content"] == [
        {"type": "text", "text": "Checking."},
        {"type": "tool_use", "id": "gemini_call_0", "name": "f", "input": {"a": 1}}]
    assert ("messages.1.thinking", "reasoning sealed by a gemini provider is only valid there") in diagnostics
