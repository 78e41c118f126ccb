"""Request and answer translation between wire formats, on literal payloads."""
import json

import pytest

from providers.wire import InvalidField, codec
from providers.wire.translate import translate_answer, translate_request

PNG = "iVBORw0KGgo="


def make_chat_request(**overrides):
    body = {"model": "client-model", "messages": [{"role": "user", "content": "hello"}]}
    body.update(overrides)
    return body


def make_anthropic_request(**overrides):
    body = {"model": "client-model", "max_tokens": 1024, "messages": [{"role": "user", "content": "hello"}]}
    body.update(overrides)
    return body


CLAUDE_CODE_STYLE_CHAT = make_chat_request(messages=[
    {"role": "system", "content": "You are a coding agent."},
    {"role": "developer", "content": "Prefer small diffs."},
    {"role": "user", "content": [{"type": "text", "text": "What is in this screenshot?"},
                                 {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}}]},
    {"role": "assistant", "content": "Let me look.", "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "read_file", "arguments": "{\"path\":\"a.py\"}"}},
        {"id": "call_2", "type": "function", "function": {"name": "grep", "arguments": "{\"q\":\"x\"}"}}]},
    {"role": "tool", "tool_call_id": "call_1", "content": "print(1)"},
    {"role": "tool", "tool_call_id": "call_2", "content": [{"type": "text", "text": "no match"}]},
    {"role": "system", "content": "<system-reminder>todo list is empty</system-reminder>"},
    {"role": "user", "content": "thanks"},
], tools=[{"type": "function", "function": {"name": "read_file", "description": "Read a file",
                                            "parameters": {"type": "object", "properties": {"path": {"type": "string"}}}}},
          {"type": "function", "function": {"name": "grep", "parameters": {"type": "object"}}}],
   tool_choice={"type": "function", "function": {"name": "grep"}}, max_tokens=2000, stop="END", user="u-1",
   temperature=0.2, stream=True)


def test_a_chat_request_becomes_an_anthropic_request_with_every_system_text_in_the_system_prompt():
    body, diagnostics = translate_request(CLAUDE_CODE_STYLE_CHAT, "openai_chat", "anthropic_messages", "claude-x")
    assert body == {
        "model": "claude-x",
        "system": [{"type": "text", "text": "You are a coding agent."},
                   {"type": "text", "text": "Prefer small diffs."},
                   {"type": "text", "text": "<system-reminder>todo list is empty</system-reminder>"}],
        "messages": [
            {"role": "user", "content": [
                {"type": "text", "text": "What is in this screenshot?"},
                {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}}]},
            {"role": "assistant", "content": [
                {"type": "text", "text": "Let me look."},
                {"type": "tool_use", "id": "call_1", "name": "read_file", "input": {"path": "a.py"}},
                {"type": "tool_use", "id": "call_2", "name": "grep", "input": {"q": "x"}}]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "call_1", "content": "print(1)"},
                {"type": "tool_result", "tool_use_id": "call_2", "content": "no match"},
                {"type": "text", "text": "thanks"}]},
        ],
        "tools": [{"name": "read_file", "description": "Read a file",
                   "input_schema": {"type": "object", "properties": {"path": {"type": "string"}}}},
                  {"name": "grep", "input_schema": {"type": "object", "properties": {}}}],
        "tool_choice": {"type": "tool", "name": "grep"},
        "max_tokens": 2000, "temperature": 0.2, "stop_sequences": ["END"], "stream": True,
        "metadata": {"user_id": "u-1"},
    }
    assert diagnostics == []


def test_an_anthropic_request_becomes_a_chat_request_with_tool_results_as_tool_messages():
    anthropic = make_anthropic_request(
        system=[{"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}}],
        messages=[
            {"role": "user", "content": "Run it"},
            {"role": "assistant", "content": [
                {"type": "thinking", "thinking": "I should run it.", "signature": "sig"},
                {"type": "tool_use", "id": "toolu_1", "name": "bash", "input": {"cmd": "ls"}}]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1", "is_error": True, "content": [
                    {"type": "text", "text": "denied"},
                    {"type": "image", "source": {"type": "url", "url": "https://x.test/s.png"}}]},
                {"type": "text", "text": "why?"}]},
        ],
        tools=[{"name": "bash", "input_schema": {"type": "object", "properties": {"cmd": {"type": "string"}}}}],
        tool_choice={"type": "any", "disable_parallel_tool_use": True},
        thinking={"type": "enabled", "budget_tokens": 2048}, top_k=5)
    body, diagnostics = translate_request(anthropic, "anthropic_messages", "openai_chat", "gpt-x")
    assert body == {
        "model": "gpt-x",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Run it"},
            {"role": "assistant", "content": None, "reasoning_content": "I should run it.", "tool_calls": [
                {"id": "toolu_1", "type": "function", "function": {"name": "bash", "arguments": "{\"cmd\": \"ls\"}"}}]},
            {"role": "tool", "tool_call_id": "toolu_1", "content": "denied"},
            # chat tool messages hold no images: they follow in a user message
            {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "https://x.test/s.png"}}]},
            {"role": "user", "content": "why?"},
        ],
        "tools": [{"type": "function", "function": {
            "name": "bash", "parameters": {"type": "object", "properties": {"cmd": {"type": "string"}}}}}],
        "tool_choice": "required", "max_completion_tokens": 1024, "reasoning_effort": "low",
        "parallel_tool_calls": False,
    }
    assert dict(diagnostics) == {
        "cache_control": "prompt caching marks are Anthropic's own",
        "messages.1.reasoning": "signed or encrypted reasoning has no equivalent",
        "messages.2.is_error": "chat tool messages carry no error flag",
        "messages.2.content": "images in tool results are sent in a following user message",
        "top_k": "no equivalent in openai_chat",
    }


def test_chat_reasoning_effort_becomes_an_anthropic_thinking_budget_below_max_tokens():
    body, _ = translate_request(make_chat_request(reasoning_effort="high", max_tokens=4000, temperature=0.5),
                                "openai_chat", "anthropic_messages", "claude-x")
    assert body["thinking"] == {"type": "enabled", "budget_tokens": 3999}
    assert "temperature" not in body  # Anthropic refuses a temperature while thinking


def test_chat_reasoning_without_max_tokens_leaves_room_for_the_answer():
    body, _ = translate_request(make_chat_request(reasoning_effort="medium"), "openai_chat", "anthropic_messages", "c")
    assert body["thinking"] == {"type": "enabled", "budget_tokens": 8192}
    assert body["max_tokens"] > 8192


def test_unsigned_reasoning_is_dropped_for_anthropic_with_a_diagnostic():
    chat = make_chat_request(messages=[{"role": "user", "content": "q"},
                                       {"role": "assistant", "content": "a", "reasoning_content": "thought"},
                                       {"role": "user", "content": "q2"}])
    body, diagnostics = translate_request(chat, "openai_chat", "anthropic_messages", "claude-x")
    assert body["messages"][1] == {"role": "assistant", "content": "a"}
    assert diagnostics == [("messages[1].thinking", "Anthropic accepts only reasoning it signed")]


def test_structured_output_schema_carries_across():
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    chat = make_chat_request(response_format={"type": "json_schema", "json_schema": {"name": "num", "schema": schema}})
    body, _ = translate_request(chat, "openai_chat", "anthropic_messages", "claude-x")
    assert body["output_config"] == {"format": {"type": "json_schema", "schema": schema}}


@pytest.mark.parametrize("body, param", [
    (make_chat_request(n=2), "n"),
    (make_chat_request(messages=[{"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}]),
     "messages[0].content[0]"),
])
def test_what_cannot_be_dropped_without_changing_the_meaning_is_rejected(body, param):
    with pytest.raises(InvalidField) as raised:
        translate_request(body, "openai_chat", "anthropic_messages", "claude-x")
    assert raised.value.param == param


def test_a_custom_tool_goes_to_anthropic_as_a_function_taking_one_string():
    chat = make_chat_request(tools=[{"type": "custom", "custom": {"name": "apply_patch", "description": "Patch"}}])
    body, diagnostics = translate_request(chat, "openai_chat", "anthropic_messages", "claude-x")
    assert body["tools"] == [{"name": "apply_patch", "description": "Patch", "input_schema": {
        "type": "object", "properties": {"input": {"type": "string", "description": "The whole input, as free text."}},
        "required": ["input"]}}]
    assert diagnostics == [("tools.apply_patch", "custom tool 'apply_patch' is sent as a function taking one string `input`")]


# --- validation ---------------------------------------------------------------------------

@pytest.mark.parametrize("body, param", [
    ({"model": "m"}, "messages"),
    ({"model": "m", "messages": []}, "messages"),
    ({"model": "m", "messages": [{"role": "robot", "content": "x"}]}, "messages[0].role"),
    ({"model": "m", "messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
    ({"model": "m", "messages": [{"role": "tool", "content": "x"}]}, "messages[0].tool_call_id"),
    (make_chat_request(max_tokens=0), "max_tokens"),
    (make_chat_request(max_completion_tokens="9"), "max_completion_tokens"),
    (make_chat_request(stream="yes"), "stream"),
    (make_chat_request(model=5), "model"),
])
def test_chat_validation_names_the_bad_field(body, param):
    with pytest.raises(InvalidField) as raised:
        codec("openai_chat").validate_request(body)
    assert raised.value.param == param


@pytest.mark.parametrize("body, param", [
    ({"model": "m", "messages": [{"role": "user", "content": "x"}]}, "max_tokens"),
    (make_anthropic_request(max_tokens=-1), "max_tokens"),
    (make_anthropic_request(max_tokens=True), "max_tokens"),
    (make_anthropic_request(messages=[{"role": "robot", "content": "x"}]), "messages.0.role"),
    (make_anthropic_request(messages=[{"role": "user", "content": [{"text": "no type"}]}]), "messages.0.content.0"),
    (make_anthropic_request(system=5), "system"),
    (make_anthropic_request(stream=1), "stream"),
])
def test_anthropic_validation_names_the_bad_field(body, param):
    with pytest.raises(InvalidField) as raised:
        codec("anthropic_messages").validate_request(body)
    assert raised.value.param == param


def test_a_body_that_is_not_json_is_an_invalid_field():
    with pytest.raises(InvalidField) as raised:
        codec("openai_chat").read_request(b"{not json")
    assert raised.value.param == "body"


# --- answers ------------------------------------------------------------------------------

ANTHROPIC_ANSWER = {
    "id": "msg_1", "type": "message", "role": "assistant", "model": "claude-up",
    "content": [{"type": "thinking", "thinking": "hmm", "signature": "s1"},
                {"type": "text", "text": "Calling."},
                {"type": "tool_use", "id": "toolu_9", "name": "f", "input": {"a": [1, 2]}}],
    "stop_reason": "tool_use", "stop_sequence": None,
    "usage": {"input_tokens": 10, "cache_read_input_tokens": 90, "cache_creation_input_tokens": 5, "output_tokens": 7},
}


def test_an_anthropic_answer_becomes_a_chat_completion_with_cached_tokens_inside_prompt_tokens():
    body = translate_answer(ANTHROPIC_ANSWER, "anthropic_messages", "openai_chat", "client-model")
    assert body["id"] == "chatcmpl-msg_1" and body["object"] == "chat.completion"
    assert body["model"] == "client-model"
    assert body["choices"] == [{"index": 0, "logprobs": None, "finish_reason": "tool_calls", "message": {
        "role": "assistant", "content": "Calling.", "reasoning_content": "hmm",
        "tool_calls": [{"id": "toolu_9", "type": "function", "function": {"name": "f", "arguments": "{\"a\": [1, 2]}"}}]}}]
    assert body["usage"] == {"prompt_tokens": 105, "completion_tokens": 7, "total_tokens": 112,
                             "prompt_tokens_details": {"cached_tokens": 90}}


def test_a_chat_completion_becomes_an_anthropic_message_with_cached_tokens_taken_out_of_input():
    chat = {"id": "chatcmpl-1", "object": "chat.completion", "model": "gpt-up", "choices": [{
        "index": 0, "finish_reason": "length",
        "message": {"role": "assistant", "content": "Hello", "reasoning_content": "r"}}],
        "usage": {"prompt_tokens": 100, "completion_tokens": 50, "prompt_tokens_details": {"cached_tokens": 60},
                  "completion_tokens_details": {"reasoning_tokens": 20}}}
    body = translate_answer(chat, "openai_chat", "anthropic_messages", "client-model")
    assert body == {
        "id": "msg_chatcmpl-1", "type": "message", "role": "assistant", "model": "client-model",
        "content": [{"type": "thinking", "thinking": "r", "signature": "openai_chat@gpt-up:"},  # unsigned, marked
                    {"type": "text", "text": "Hello"}],
        "stop_reason": "max_tokens", "stop_sequence": None,
        "usage": {"input_tokens": 40, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 60,
                  "output_tokens": 50, "output_tokens_details": {"thinking_tokens": 20}},
    }


@pytest.mark.parametrize("finish, stop", [("stop", "end_turn"), ("length", "max_tokens"), ("tool_calls", "tool_use"),
                                          ("content_filter", "refusal"), ("something_new", "something_new")])
def test_chat_finish_reasons_map_exactly_to_anthropic_stop_reasons(finish, stop):
    chat = {"id": "c", "model": "m", "choices": [{"message": {"content": "x"}, "finish_reason": finish}]}
    assert translate_answer(chat, "openai_chat", "anthropic_messages", "m")["stop_reason"] == stop


@pytest.mark.parametrize("stop, finish", [("end_turn", "stop"), ("stop_sequence", "stop"), ("max_tokens", "length"),
                                          ("tool_use", "tool_calls"), ("refusal", "content_filter"),
                                          ("model_context_window_exceeded", "length"), ("pause_turn", "pause_turn")])
def test_anthropic_stop_reasons_map_exactly_to_chat_finish_reasons(stop, finish):
    answer = {**ANTHROPIC_ANSWER, "stop_reason": stop}
    assert translate_answer(answer, "anthropic_messages", "openai_chat", "m")["choices"][0]["finish_reason"] == finish


# --- errors -------------------------------------------------------------------------------

def test_error_bodies_have_each_formats_real_shape():
    assert codec("openai_chat").error_body(429, "rate_limit_exceeded", "Slow down", code="rate_limit") == {
        "error": {"message": "Slow down", "type": "rate_limit_exceeded", "param": None, "code": "rate_limit"}}
    assert codec("anthropic_messages").error_body(429, "rate_limit_exceeded", "Slow down") == {
        "type": "error", "error": {"type": "rate_limit_error", "message": "Slow down"}}
    assert codec("anthropic_messages").error_body(529, "overloaded_error", "Busy") == {
        "type": "error", "error": {"type": "overloaded_error", "message": "Busy"}}


def test_error_events_are_sse_in_each_format():
    assert codec("anthropic_messages").error_event(500, "api_error", "boom") == (
        b'event: error\ndata: {"type":"error","error":{"type":"api_error","message":"boom"}}\n\n')
    assert codec("openai_chat").error_event(500, "server_error", "boom").endswith(b"data: [DONE]\n\n")


@pytest.mark.parametrize("content, message", [
    (b'{"error": {"message": "Invalid key", "type": "invalid_request_error"}}', "Invalid key"),
    (b'{"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}', "Overloaded"),
    (b'{"error": {"code": 429, "message": "Quota exceeded", "status": "RESOURCE_EXHAUSTED"}}', "Quota exceeded"),
    (b'[{"error": {"code": 400, "message": "Bad", "status": "INVALID_ARGUMENT"}}]', "Bad"),
    (b"<html>502 Bad Gateway</html>", "<html>502 Bad Gateway</html>"),
])
def test_read_error_finds_the_message_in_any_error_body(content, message):
    assert codec("openai_chat").read_error(content) == message
    assert codec("anthropic_messages").read_error(content) == message


def test_a_translated_request_is_plain_json():
    body, _ = translate_request(CLAUDE_CODE_STYLE_CHAT, "openai_chat", "anthropic_messages", "claude-x")
    assert json.loads(json.dumps(body)) == body


# --- documents --------------------------------------------------------------------------------

PDF = "JVBERi0xLjQK"
WITH_DOCUMENTS = make_anthropic_request(messages=[{"role": "user", "content": [
    {"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": PDF}, "title": "spec.pdf"},
    {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "plain 文本"}},
    {"type": "text", "text": "Summarise both."}]}])


def test_documents_reach_chat_as_file_parts_and_come_back():
    body, _ = translate_request(WITH_DOCUMENTS, "anthropic_messages", "openai_chat", "gpt-x")
    assert body["messages"][0]["content"][:2] == [
        {"type": "file", "file": {"filename": "spec.pdf", "file_data": f"data:application/pdf;base64,{PDF}"}},
        {"type": "file", "file": {"filename": "document", "file_data": "data:text/plain;base64,cGxhaW4g5paH5pys"}}]
    back, _ = translate_request(body, "openai_chat", "anthropic_messages", "claude-x")
    assert back["messages"][0]["content"][:2] == [
        {"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": PDF}, "title": "spec.pdf"},
        {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "plain 文本"}, "title": "document"}]


def test_documents_reach_responses_and_gemini():
    body, _ = translate_request(WITH_DOCUMENTS, "anthropic_messages", "openai_responses", "gpt-x")
    assert body["input"][0]["content"][0] == {"type": "input_file", "filename": "spec.pdf",
                                              "file_data": f"data:application/pdf;base64,{PDF}"}
    body, _ = translate_request(WITH_DOCUMENTS, "anthropic_messages", "gemini", "g")
    assert body["contents"][0]["parts"][:2] == [{"inlineData": {"mimeType": "application/pdf", "data": PDF}},
                                                {"inlineData": {"mimeType": "text/plain", "data": "cGxhaW4g5paH5pys"}}]


def test_a_document_url_cannot_go_to_chat():
    anthropic = make_anthropic_request(messages=[{"role": "user", "content": [
        {"type": "document", "source": {"type": "url", "url": "https://x.test/a.pdf"}}]}])
    with pytest.raises(InvalidField):
        translate_request(anthropic, "anthropic_messages", "openai_chat", "gpt-x")
    body, _ = translate_request(anthropic, "anthropic_messages", "gemini", "g")
    assert body["contents"][0]["parts"] == [{"fileData": {"mimeType": "application/pdf", "fileUri": "https://x.test/a.pdf"}}]


@pytest.mark.parametrize("src, body", [
    ("openai_chat", make_chat_request(tools="all of them")),
    ("anthropic_messages", make_anthropic_request(metadata="me")),
    ("openai_responses", {"model": "m", "input": [{"role": "user", "content": [5]}]}),
    ("gemini", {"contents": [{"role": "user", "parts": [{"functionCall": "f"}]}]}),
])
def test_a_field_of_the_wrong_shape_is_an_invalid_field_not_a_crash(src, body):
    with pytest.raises(InvalidField):
        translate_request(body, src, "openai_chat" if src != "openai_chat" else "anthropic_messages", "m")


def test_thinking_is_turned_off_when_the_tool_loop_being_continued_has_no_signed_thinking():
    chat = make_chat_request(reasoning_effort="high", messages=[
        {"role": "user", "content": "q"},
        {"role": "assistant", "content": None, "reasoning_content": "unsigned",
         "tool_calls": [{"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "c", "content": "r"}])
    body, diagnostics = translate_request(chat, "openai_chat", "anthropic_messages", "claude-x")
    assert "thinking" not in body
    assert ("reasoning", "the tool-use turn being continued has no Anthropic thinking block, "
                         "which Anthropic requires while thinking") in diagnostics


def test_reasoning_history_can_be_left_out_for_chat_providers_that_refuse_it():
    anthropic = make_anthropic_request(messages=[
        {"role": "user", "content": "q"},
        {"role": "assistant", "content": [{"type": "thinking", "thinking": "t", "signature": "s"},
                                          {"type": "text", "text": "a"}]},
        {"role": "user", "content": "q2"}])
    body, _ = translate_request(anthropic, "anthropic_messages", "openai_chat", "gpt-x")
    assert body["messages"][1] == {"role": "assistant", "content": "a", "reasoning_content": "t"}
    stripped = codec("openai_chat").without_reasoning_history(body)
    assert stripped["messages"][1] == {"role": "assistant", "content": "a"}
    assert body["messages"][1]["reasoning_content"] == "t"  # the original is left alone


@pytest.mark.parametrize("dst, field", [("openai_chat", "reasoning_effort"), ("openai_responses", "reasoning"),
                                        ("gemini", "thinkingConfig")])
def test_thinking_turned_off_is_not_sent_where_models_may_refuse_the_field(dst, field):
    body, _ = translate_request(make_anthropic_request(thinking={"type": "disabled"}), "anthropic_messages", dst, "m")
    assert field not in body and field not in body.get("generationConfig", {})


def test_an_explicit_reasoning_effort_of_none_is_kept():
    body, _ = translate_request(make_chat_request(reasoning_effort="none"), "openai_chat", "openai_responses", "m")
    assert body["reasoning"] == {"effort": "none"}
    body, _ = translate_request(make_chat_request(reasoning_effort="none"), "openai_chat", "anthropic_messages", "m")
    assert body["thinking"] == {"type": "disabled"}


def test_a_system_message_after_user_turns_reaches_a_chat_upstream_in_place():
    """Claude Code sends its environment notes as a system-role message after the user turn."""
    body = make_anthropic_request(system="You are terse.", messages=[
        {"role": "user", "content": "list files"},
        {"role": "system", "content": "cwd: /repo"},
    ])
    chat, _ = translate_request(body, "anthropic_messages", "openai_chat", "gpt-4o-mini")
    roles = [(m["role"], m["content"] if isinstance(m["content"], str) else m["content"][0]["text"])
             for m in chat["messages"]]
    assert roles[0] == ("system", "You are terse.")
    assert roles[1:] == [("user", "list files"), ("system", "cwd: /repo")]
