"""The OpenAI Responses codec: requests, answers and streams to and from the other formats."""
import json

import pytest

from providers import hub
from providers.wire import InvalidField, codec
from providers.wire.translate import custom_tool_names, translate_answer, translate_request

from .test_wire_translate_streams import (
    ANTHROPIC_THINKING_AND_TOOLS, CHAT_REASONING_AND_TWO_TOOLS, make_translator, parse_sse, sse,
)


def make_responses_request(**overrides):
    body = {"model": "client-model", "input": "hello"}
    body.update(overrides)
    return body


CODEX_STYLE = make_responses_request(
    instructions="You are Codex.",
    input=[
        {"type": "message", "role": "developer", "content": [{"type": "input_text", "text": "Sandbox: read-only"}]},
        {"type": "message", "role": "user", "content": [
            {"type": "input_text", "text": "Fix the bug"},
            {"type": "input_image", "image_url": "https://x.test/shot.png", "detail": "high"}]},
        {"type": "reasoning", "id": "rs_1", "summary": [{"type": "summary_text", "text": "Look first."}],
         "encrypted_content": "gAAAA-opaque+/="},
        {"type": "function_call", "call_id": "call_1", "name": "shell", "arguments": "{\"cmd\":[\"ls\"]}"},
        {"type": "function_call_output", "call_id": "call_1", "output": "a.py"},
        {"role": "user", "content": "go on"},
    ],
    tools=[{"type": "function", "name": "shell", "description": "Run", "strict": False,
            "parameters": {"type": "object", "properties": {"cmd": {"type": "array"}}}},
           {"type": "web_search"}],
    tool_choice="auto", reasoning={"effort": "medium", "summary": "auto"}, max_output_tokens=5000,
    parallel_tool_calls=False, stream=True, store=False, include=["reasoning.encrypted_content"],
)


def test_a_responses_request_becomes_a_chat_request():
    body, diagnostics = translate_request(CODEX_STYLE, "openai_responses", "openai_chat", "gpt-x")
    assert body == {
        "model": "gpt-x",
        "messages": [
            {"role": "system", "content": "You are Codex."},
            {"role": "developer", "content": "Sandbox: read-only"},
            {"role": "user", "content": [{"type": "text", "text": "Fix the bug"},
                                         {"type": "image_url", "image_url": {"url": "https://x.test/shot.png",
                                                                             "detail": "high"}}]},
            {"role": "assistant", "content": None, "reasoning_content": "Look first.", "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "shell", "arguments": "{\"cmd\":[\"ls\"]}"}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": "a.py"},
            {"role": "user", "content": "go on"},
        ],
        "tools": [{"type": "function", "function": {"name": "shell", "description": "Run", "parameters": {
            "type": "object", "properties": {"cmd": {"type": "array"}}}, "strict": False}}],
        "tool_choice": "auto", "max_completion_tokens": 5000, "stream": True,
        "stream_options": {"include_usage": True}, "reasoning_effort": "medium", "parallel_tool_calls": False,
    }
    assert dict(diagnostics) == {
        "tools[1]": "built-in tool 'web_search' has no equivalent",
        "input[2].reasoning": "signed or encrypted reasoning has no equivalent",
        "store": "no equivalent in openai_chat",
        "include": "no equivalent in openai_chat",
    }


def test_a_responses_request_becomes_an_anthropic_request():
    body, diagnostics = translate_request(CODEX_STYLE, "openai_responses", "anthropic_messages", "claude-x")
    assert body["system"] == [{"type": "text", "text": "You are Codex."}, {"type": "text", "text": "Sandbox: read-only"}]
    assert body["messages"][1] == {"role": "assistant", "content": [
        {"type": "tool_use", "id": "call_1", "name": "shell", "input": {"cmd": ["ls"]}}]}
    assert body["tool_choice"] == {"type": "auto", "disable_parallel_tool_use": True}
    # OpenAI's reasoning cannot go to Claude, and Claude will not think on in a tool loop without its own
    assert "thinking" not in body
    assert ("input[2].thinking", "reasoning sealed by a openai_responses provider is only valid there") in diagnostics


def test_responses_reasoning_effort_becomes_a_thinking_budget_below_max_output_tokens():
    body, _ = translate_request(make_responses_request(reasoning={"effort": "medium"}, max_output_tokens=5000),
                                "openai_responses", "anthropic_messages", "claude-x")
    assert body["thinking"] == {"type": "enabled", "budget_tokens": 4999}


def test_encrypted_reasoning_goes_back_to_openai_byte_for_byte():
    chat_turn = translate_request(CODEX_STYLE, "openai_responses", "openai_responses", "gpt-x")[0]
    reasoning = [item for item in chat_turn["input"] if item["type"] == "reasoning"]
    assert reasoning == [{"type": "reasoning", "id": "rs_1", "summary": [{"type": "summary_text", "text": "Look first."}],
                          "encrypted_content": "gAAAA-opaque+/="}]


def test_encrypted_reasoning_from_another_model_is_dropped_with_a_diagnostic():
    req = hub.Request(model="m", messages=[
        hub.Message(hub.Role.USER, [hub.Text("q")]),
        hub.Message(hub.Role.ASSISTANT, [hub.Thinking("t", encrypted_content="E", id="rs_9", source_model="o3"),
                                         hub.Text("a")])])
    body = codec("openai_responses").write_request(req, "gpt-5")
    assert [item["type"] for item in body["input"]] == ["message", "message"]
    assert req.diagnostics == [("input[1].reasoning", "encrypted reasoning from o3 is not valid for gpt-5")]


def test_a_chat_request_becomes_a_stateless_responses_request():
    chat = {"model": "m", "messages": [{"role": "system", "content": "S"}, {"role": "user", "content": "Q"}],
            "reasoning_effort": "high", "stop": ["x"], "max_tokens": 100,
            "response_format": {"type": "json_schema", "json_schema": {"name": "r", "schema": {"type": "object"},
                                                                       "strict": True}}}
    body, diagnostics = translate_request(chat, "openai_chat", "openai_responses", "gpt-x")
    assert body == {
        "model": "gpt-x",
        "input": [{"type": "message", "role": "system", "content": [{"type": "input_text", "text": "S"}]},
                  {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Q"}]}],
        "max_output_tokens": 100,
        "text": {"format": {"type": "json_schema", "name": "r", "schema": {"type": "object"}, "strict": True}},
        "reasoning": {"effort": "high", "summary": "auto"}, "store": False,
        "include": ["reasoning.encrypted_content"],
    }
    assert diagnostics == [("stop", "the Responses API has no stop sequences")]


@pytest.mark.parametrize("field", ["previous_response_id", "conversation"])
def test_server_side_state_cannot_be_translated(field):
    with pytest.raises(InvalidField) as raised:
        translate_request(make_responses_request(**{field: "resp_1"}), "openai_responses", "openai_chat", "m")
    assert raised.value.param == field


@pytest.mark.parametrize("body, param", [
    ({"model": "m"}, "input"),
    (make_responses_request(input=[]), "input"),
    (make_responses_request(input=[{"role": "tool", "content": "x"}]), "input[0].role"),
    (make_responses_request(input=[{"type": "function_call_output", "output": "x"}]), "input[0].call_id"),
    (make_responses_request(max_output_tokens=0), "max_output_tokens"),
    (make_responses_request(stream="true"), "stream"),
    (make_responses_request(instructions=["x"]), "instructions"),
])
def test_responses_validation_names_the_bad_field(body, param):
    with pytest.raises(InvalidField) as raised:
        codec("openai_responses").validate_request(body)
    assert raised.value.param == param


# --- answers ------------------------------------------------------------------------------

RESPONSE = {
    "id": "resp_abc", "object": "response", "status": "completed", "model": "gpt-up",
    "output": [
        {"type": "reasoning", "id": "rs_1", "summary": [{"type": "summary_text", "text": "Plan"}], "encrypted_content": "E=="},
        {"type": "message", "id": "msg_1", "role": "assistant", "status": "completed",
         "content": [{"type": "output_text", "text": "Calling", "annotations": []}]},
        {"type": "function_call", "id": "fc_1", "call_id": "call_1", "name": "f", "arguments": "{}", "status": "completed"},
    ],
    "usage": {"input_tokens": 300, "input_tokens_details": {"cached_tokens": 200}, "output_tokens": 40,
              "output_tokens_details": {"reasoning_tokens": 30}, "total_tokens": 340},
}


def test_a_response_with_a_function_call_becomes_an_anthropic_tool_use_answer():
    body = translate_answer(RESPONSE, "openai_responses", "anthropic_messages", "client-model")
    assert body["content"] == [{"type": "thinking", "thinking": "Plan", "signature": "openai_responses@gpt-up:rs_1:E=="},
                               {"type": "text", "text": "Calling"},
                               {"type": "tool_use", "id": "call_1", "name": "f", "input": {}}]
    assert body["stop_reason"] == "tool_use"
    assert body["usage"] == {"input_tokens": 100, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 200,
                             "output_tokens": 40, "output_tokens_details": {"thinking_tokens": 30}}


def test_an_incomplete_response_is_never_a_normal_stop():
    incomplete = {**RESPONSE, "status": "incomplete", "incomplete_details": {"reason": "max_output_tokens"}}
    assert translate_answer(incomplete, "openai_responses", "openai_chat", "m")["choices"][0]["finish_reason"] == "length"
    odd = {**RESPONSE, "status": "incomplete", "incomplete_details": {"reason": "max_messages"}}
    assert translate_answer(odd, "openai_responses", "anthropic_messages", "m")["stop_reason"] == "max_messages"


def test_a_chat_answer_becomes_a_response_with_usage_split_the_responses_way():
    chat = {"id": "chatcmpl-1", "model": "up", "choices": [{"finish_reason": "length", "message": {"content": "Hi"}}],
            "usage": {"prompt_tokens": 10, "completion_tokens": 2, "prompt_tokens_details": {"cached_tokens": 4}}}
    body = codec("openai_responses").write_answer(codec("openai_chat").read_answer(chat), "client-model", created=5)
    assert body == {
        "id": "resp_chatcmpl-1", "object": "response", "created_at": 5, "status": "incomplete", "error": None,
        "incomplete_details": {"reason": "max_output_tokens"}, "model": "client-model",
        "output": [{"type": "message", "id": "msg_resp_chatcmpl-1_0", "status": "completed", "role": "assistant",
                    "content": [{"type": "output_text", "text": "Hi", "annotations": []}]}],
        "parallel_tool_calls": True, "tool_choice": "auto", "tools": [],
        "usage": {"input_tokens": 10, "input_tokens_details": {"cached_tokens": 4}, "output_tokens": 2,
                  "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": 12},
    }


# --- streams ------------------------------------------------------------------------------

def test_a_chat_stream_becomes_responses_events_with_matching_ids_and_indices():
    translator = make_translator("openai_chat", "openai_responses")
    events = parse_sse(translator.feed(CHAT_REASONING_AND_TWO_TOOLS) + translator.finish())
    names = [name for name, _ in events]
    assert names == [
        "response.created", "response.in_progress",
        "response.output_item.added", "response.reasoning_summary_part.added",
        "response.reasoning_summary_text.delta", "response.reasoning_summary_text.delta",
        "response.reasoning_summary_text.done", "response.reasoning_summary_part.done", "response.output_item.done",
        "response.output_item.added", "response.content_part.added", "response.output_text.delta",
        "response.output_text.done", "response.content_part.done", "response.output_item.done",
        "response.output_item.added", "response.function_call_arguments.delta",
        "response.function_call_arguments.delta", "response.function_call_arguments.done", "response.output_item.done",
        "response.output_item.added", "response.function_call_arguments.delta",
        "response.function_call_arguments.done", "response.output_item.done",
        "response.completed",
    ]
    payloads = [p for _, p in events]
    assert [p["sequence_number"] for p in payloads] == list(range(len(payloads)))
    assert all(p["type"] == name for name, p in events)
    for p in payloads[2:-1]:  # every event of an item names the same item and place
        item_id = p.get("item_id") or p["item"]["id"]
        assert item_id == payloads[-1]["response"]["output"][p["output_index"]]["id"]
    completed = payloads[-1]["response"]
    assert completed["id"] == payloads[0]["response"]["id"] == "resp_chatcmpl-9"
    assert completed["status"] == "completed"
    assert completed["output"] == [
        {"id": "rs_chatcmpl-9_0", "type": "reasoning", "summary": [{"type": "summary_text", "text": "先想一想"}],
         "encrypted_content": "openai_chat:"},  # unsigned reasoning, marked with its origin
        {"id": "msg_chatcmpl-9_1", "type": "message", "status": "completed", "role": "assistant",
         "content": [{"type": "output_text", "text": "I'll check both.", "annotations": []}]},
        {"id": "fc_call_a", "type": "function_call", "status": "completed", "arguments": "{\"city\":\"Paris\"}",
         "call_id": "call_a", "name": "weather"},
        {"id": "fc_call_b", "type": "function_call", "status": "completed", "arguments": "{\"tz\":\"CET\"}",
         "call_id": "call_b", "name": "time"},
    ]
    assert completed["usage"] == {"input_tokens": 100, "input_tokens_details": {"cached_tokens": 64},
                                  "output_tokens": 20, "output_tokens_details": {"reasoning_tokens": 8},
                                  "total_tokens": 120}


RESPONSES_STREAM = sse(
    {"type": "response.created", "sequence_number": 0, "response": {"id": "resp_9", "model": "gpt-up", "status": "in_progress", "output": []}},
    {"type": "response.in_progress", "sequence_number": 1, "response": {"id": "resp_9", "status": "in_progress"}},
    {"type": "response.output_item.added", "output_index": 0, "item": {"type": "reasoning", "id": "rs_9", "summary": []}},
    {"type": "response.reasoning_summary_part.added", "output_index": 0, "item_id": "rs_9", "summary_index": 0,
     "part": {"type": "summary_text", "text": ""}},
    {"type": "response.reasoning_summary_text.delta", "output_index": 0, "item_id": "rs_9", "summary_index": 0, "delta": "思考"},
    {"type": "response.reasoning_summary_part.added", "output_index": 0, "item_id": "rs_9", "summary_index": 1,
     "part": {"type": "summary_text", "text": ""}},
    {"type": "response.reasoning_summary_text.delta", "output_index": 0, "item_id": "rs_9", "summary_index": 1, "delta": "更多"},
    {"type": "response.output_item.done", "output_index": 0, "item": {"type": "reasoning", "id": "rs_9",
                                                                       "encrypted_content": "ENC+/=="}},
    {"type": "response.output_item.added", "output_index": 1, "item": {"type": "message", "id": "msg_9", "role": "assistant", "content": []}},
    {"type": "response.content_part.added", "output_index": 1, "item_id": "msg_9", "content_index": 0,
     "part": {"type": "output_text", "text": ""}},
    {"type": "response.output_text.delta", "output_index": 1, "item_id": "msg_9", "content_index": 0, "delta": "答案"},
    {"type": "response.output_text.done", "output_index": 1, "item_id": "msg_9", "content_index": 0, "text": "答案"},
    {"type": "response.content_part.done", "output_index": 1, "item_id": "msg_9", "content_index": 0},
    {"type": "response.output_item.done", "output_index": 1, "item": {"type": "message", "id": "msg_9"}},
    {"type": "response.output_item.added", "output_index": 2, "item": {"type": "function_call", "id": "fc_9",
                                                                        "call_id": "call_9", "name": "f", "arguments": ""}},
    {"type": "response.function_call_arguments.delta", "output_index": 2, "item_id": "fc_9", "delta": "{\"q\":"},
    {"type": "response.function_call_arguments.delta", "output_index": 2, "item_id": "fc_9", "delta": "1}"},
    {"type": "response.function_call_arguments.done", "output_index": 2, "item_id": "fc_9", "arguments": "{\"q\":1}"},
    {"type": "response.output_item.done", "output_index": 2, "item": {"type": "function_call", "id": "fc_9",
                                                                       "call_id": "call_9", "arguments": "{\"q\":1}"}},
    {"type": "response.completed", "response": {"id": "resp_9", "status": "completed", "usage": {
        "input_tokens": 50, "input_tokens_details": {"cached_tokens": 10}, "output_tokens": 9,
        "output_tokens_details": {"reasoning_tokens": 4}, "total_tokens": 59}}},
    named=True,
)


def test_a_responses_stream_reads_into_hub_events():
    reader = codec("openai_responses").StreamReader()
    events = reader.feed(RESPONSES_STREAM) + reader.close()
    assert events == [
        hub.Start("resp_9", "gpt-up"),
        hub.BlockStart(0, hub.BlockKind.THINKING),
        hub.ThinkingDelta(0, "思考"), hub.ThinkingDelta(0, "\n\n"), hub.ThinkingDelta(0, "更多"),
        hub.SignatureDelta(0, "ENC+/==", True, "openai_responses", "rs_9"),
        hub.BlockStop(0),
        hub.BlockStart(1, hub.BlockKind.TEXT), hub.TextDelta(1, "答案"), hub.BlockStop(1),
        hub.BlockStart(2, hub.BlockKind.TOOL_CALL, tool_id="call_9", tool_name="f"),
        hub.ToolArgsDelta(2, "{\"q\":"), hub.ToolArgsDelta(2, "1}"), hub.BlockStop(2),
        hub.Finish(hub.StopReason.TOOL_USE, hub.Usage(input_tokens=40, cached_read=10, output_tokens=9,
                                                      reasoning_tokens=4)),
    ]


def test_a_responses_stream_split_at_every_byte_gives_the_same_chat_bytes():
    whole = make_translator("openai_responses", "openai_chat")
    want = whole.feed(RESPONSES_STREAM) + whole.finish()
    assert "答案".encode() in want
    for cut in range(1, len(RESPONSES_STREAM), 7):
        translator = make_translator("openai_responses", "openai_chat")
        got = translator.feed(RESPONSES_STREAM[:cut]) + translator.feed(RESPONSES_STREAM[cut:]) + translator.finish()
        assert got == want, cut


def test_a_responses_stream_becomes_anthropic_with_openais_encrypted_reasoning_sealed():
    translator = make_translator("openai_responses", "anthropic_messages")
    events = parse_sse(translator.feed(RESPONSES_STREAM) + translator.finish())
    deltas = [p["delta"] for name, p in events if name == "content_block_delta"]
    assert {"type": "thinking_delta", "thinking": "思考"} in deltas
    assert [d for d in deltas if d["type"] == "signature_delta"] == [
        {"type": "signature_delta", "signature": "openai_responses:rs_9:ENC+/=="}]
    assert events[-2][1]["delta"]["stop_reason"] == "tool_use"
    assert translator.usage == hub.Usage(input_tokens=40, cached_read=10, output_tokens=9, reasoning_tokens=4)


def test_an_anthropic_stream_ending_early_ends_the_responses_stream_failed():
    translator = make_translator("anthropic_messages", "openai_responses")
    cut = ANTHROPIC_THINKING_AND_TOOLS.index(b"event: message_delta")
    events = parse_sse(translator.feed(ANTHROPIC_THINKING_AND_TOOLS[:cut]) + translator.finish())
    assert [name for name, _ in events[-2:]] == ["error", "response.failed"]
    assert events[-2][1]["message"] == "The upstream stream ended before the answer was complete."
    failed = events[-1][1]["response"]
    assert failed["status"] == "failed" and failed["id"] == "resp_msg_7"
    assert failed["error"] == {"code": "upstream_error", "message": "The upstream stream ended before the answer was complete."}


def test_a_failed_upstream_response_becomes_an_anthropic_error_event():
    data = sse({"type": "response.created", "response": {"id": "resp_1", "model": "g"}},
               {"type": "response.failed", "response": {"id": "resp_1", "status": "failed",
                                                        "error": {"code": "server_error", "message": "Oops"}}}, named=True)
    translator = make_translator("openai_responses", "anthropic_messages")
    events = parse_sse(translator.feed(data) + translator.finish())
    assert events[-1] == ("error", {"type": "error", "error": {"type": "api_error", "message": "Oops"}})
    assert translator.error == "Oops"


def test_responses_errors_have_the_openai_shape():
    assert codec("openai_responses").error_body(400, "invalid_request_error", "Bad", param="input") == {
        "error": {"message": "Bad", "type": "invalid_request_error", "param": "input", "code": None}}
    assert parse_sse(codec("openai_responses").error_event(500, "server_error", "Boom")) == [
        ("error", {"type": "error", "code": "server_error", "message": "Boom", "param": None, "sequence_number": 0})]


def test_openai_reasoning_goes_through_an_anthropic_client_and_back_byte_for_byte():
    answer = translate_answer(RESPONSE, "openai_responses", "anthropic_messages", "client-model")
    history = {"model": "client-model", "max_tokens": 100, "messages": [
        {"role": "user", "content": "go"},
        {"role": "assistant", "content": answer["content"]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "call_1", "content": "done"}]}]}
    body, diagnostics = translate_request(history, "anthropic_messages", "openai_responses", "gpt-up")
    assert body["input"][1:4] == [
        {"type": "reasoning", "id": "rs_1", "summary": [{"type": "summary_text", "text": "Plan"}], "encrypted_content": "E=="},
        {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Calling"}]},
        {"type": "function_call", "call_id": "call_1", "name": "f", "arguments": "{}"}]
    assert diagnostics == []
    to_claude, diagnostics = translate_request(history, "anthropic_messages", "anthropic_messages", "claude-x")
    assert [b["type"] for b in to_claude["messages"][1]["content"]] == ["text", "tool_use"]
    assert ("messages.1.thinking", "reasoning sealed by a openai_responses provider is only valid there") in diagnostics


def test_a_claude_signature_goes_through_a_responses_client_and_back_to_anthropic_unchanged():
    translator = make_translator("anthropic_messages", "openai_responses")
    events = parse_sse(translator.feed(ANTHROPIC_THINKING_AND_TOOLS) + translator.finish())
    output = events[-1][1]["response"]["output"]
    assert output[0]["encrypted_content"] == "anthropic_messages:EqQBCgIYAh"
    history = make_responses_request(input=[{"role": "user", "content": "go"}, *output,
                                            {"type": "function_call_output", "call_id": "toolu_1", "output": "1"},
                                            {"type": "function_call_output", "call_id": "toolu_2", "output": "2"}])
    body, diagnostics = translate_request(history, "openai_responses", "anthropic_messages", "claude-x")
    assert body["messages"][1]["content"][0] == {"type": "thinking", "thinking": "Two calls.", "signature": "EqQBCgIYAh"}
    assert diagnostics == []


# --- custom (free-form) tools, as Codex's apply_patch --------------------------------------

PATCH = "*** Begin Patch\n*** Update File: a.py\n-x\n+y\n*** End Patch"
CODEX_CUSTOM = make_responses_request(
    input=[{"role": "user", "content": "fix"},
           {"type": "custom_tool_call", "call_id": "call_p", "name": "apply_patch", "input": PATCH},
           {"type": "custom_tool_call_output", "call_id": "call_p", "output": "Done"},
           {"role": "user", "content": "again"}],
    tools=[{"type": "custom", "name": "apply_patch", "description": "Apply a patch",
            "format": {"type": "grammar", "syntax": "lark", "definition": "start: /.+/"}}])


def test_custom_tool_calls_travel_to_anthropic_and_gemini_as_one_string_argument():
    body, diagnostics = translate_request(CODEX_CUSTOM, "openai_responses", "anthropic_messages", "claude-x")
    assert body["messages"][1] == {"role": "assistant", "content": [
        {"type": "tool_use", "id": "call_p", "name": "apply_patch", "input": {"input": PATCH}}]}
    assert body["messages"][2]["content"][0] == {"type": "tool_result", "tool_use_id": "call_p", "content": "Done"}
    assert body["tools"][0]["input_schema"]["required"] == ["input"]
    assert [name for name, _ in diagnostics] == ["tools.apply_patch"]
    body, _ = translate_request(CODEX_CUSTOM, "openai_responses", "gemini", "gemini-x")
    assert body["contents"][1]["parts"] == [{"functionCall": {"name": "apply_patch", "args": {"input": PATCH}, "id": "call_p"}}]


def test_custom_tool_names_are_found_in_both_openai_formats():
    assert custom_tool_names(CODEX_CUSTOM, "openai_responses") == {"apply_patch"}
    chat = {"tools": [{"type": "custom", "custom": {"name": "grammar_tool"}}, {"type": "function", "function": {"name": "f"}}]}
    assert custom_tool_names(chat, "openai_chat") == {"grammar_tool"}
    assert custom_tool_names({"tools": "nonsense"}, "openai_chat") == frozenset()


ANTHROPIC_PATCH_STREAM = sse(
    {"type": "message_start", "message": {"id": "msg_p", "model": "claude-up", "usage": {"input_tokens": 3}}},
    {"type": "content_block_start", "index": 0, "content_block": {"type": "tool_use", "id": "toolu_p", "name": "apply_patch", "input": {}}},
    *[{"type": "content_block_delta", "index": 0, "delta": {"type": "input_json_delta", "partial_json": piece}}
      for piece in ["{\"inp", "ut\": ", json.dumps(PATCH)[:20], json.dumps(PATCH)[20:], "}"]],
    {"type": "content_block_stop", "index": 0},
    {"type": "message_delta", "delta": {"stop_reason": "tool_use"}, "usage": {"output_tokens": 12}},
    {"type": "message_stop"},
    named=True,
)


def test_a_custom_call_streamed_back_as_a_function_becomes_a_custom_tool_call_again():
    translator = make_translator("anthropic_messages", "openai_responses")
    translator.custom_tools = custom_tool_names(CODEX_CUSTOM, "openai_responses")
    events = parse_sse(translator.feed(ANTHROPIC_PATCH_STREAM) + translator.finish())
    names = [name for name, _ in events]
    assert names[2:] == ["response.output_item.added", "response.custom_tool_call_input.delta",
                         "response.custom_tool_call_input.done", "response.output_item.done", "response.completed"]
    assert events[3][1]["delta"] == PATCH
    assert events[-1][1]["response"]["output"] == [
        {"id": "ctc_toolu_p", "type": "custom_tool_call", "status": "completed", "input": PATCH,
         "call_id": "toolu_p", "name": "apply_patch"}]


def test_a_custom_call_in_a_whole_answer_becomes_a_custom_tool_call_again():
    answer = {"id": "msg_1", "model": "c", "stop_reason": "tool_use", "content": [
        {"type": "tool_use", "id": "toolu_p", "name": "apply_patch", "input": {"input": PATCH}}]}
    body = translate_answer(answer, "anthropic_messages", "openai_responses", "m", custom_tool_names(CODEX_CUSTOM, "openai_responses"))
    assert body["output"] == [{"type": "custom_tool_call", "id": "ctc_toolu_p", "call_id": "toolu_p",
                               "name": "apply_patch", "input": PATCH, "status": "completed"}]
    chat = translate_answer(answer, "anthropic_messages", "openai_chat", "m", frozenset({"apply_patch"}))
    assert chat["choices"][0]["message"]["tool_calls"] == [
        {"id": "toolu_p", "type": "custom", "custom": {"name": "apply_patch", "input": PATCH}}]
