"""Stream translation as playbooks: feed these upstream bytes, expect these client bytes."""
import json

import pytest

from providers import hub
from providers.wire.translate import StreamTranslator


def sse(*payloads, named=False) -> bytes:
    """SSE bytes for payloads; `named` adds Anthropic/Responses-style `event:` lines."""
    out = b""
    for payload in payloads:
        if payload == "[DONE]":
            out += b"data: [DONE]\n\n"
            continue
        if named:
            out += f"event: {payload['type']}\n".encode()
        out += b"data: " + json.dumps(payload, ensure_ascii=False).encode() + b"\n\n"
    return out


def parse_sse(data: bytes) -> list:
    """The client stream as (event name, payload) pairs, for readable assertions."""
    events = []
    for block in data.decode().split("\n\n"):
        if not block.strip():
            continue
        name, payload = None, None
        for line in block.split("\n"):
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: "):
                payload = line[6:] if line[6:] == "[DONE]" else json.loads(line[6:])
        events.append((name, payload))
    return events


def make_translator(src, dst, model="client-model") -> StreamTranslator:
    translator = StreamTranslator(src, dst, model)
    if hasattr(translator.writer, "created"):
        translator.writer.created = 1700000000  # fixed, so whole chunks can be compared
    return translator


def chat_chunk(delta=None, finish=None, usage=None, id="chatcmpl-9", model="gpt-up"):
    chunk = {"id": id, "object": "chat.completion.chunk", "created": 1, "model": model,
             "choices": [{"index": 0, "delta": delta or {}, "finish_reason": finish}]}
    if usage is not None:
        chunk["usage"] = usage
        if delta is None and finish is None:
            chunk["choices"] = []
    return chunk


CHINESE_ANTHROPIC = sse(
    {"type": "message_start", "message": {"id": "msg_01", "type": "message", "role": "assistant",
                                          "model": "claude-up", "content": [], "stop_reason": None,
                                          "usage": {"input_tokens": 12, "cache_read_input_tokens": 30,
                                                    "cache_creation_input_tokens": 0, "output_tokens": 1}}},
    {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
    {"type": "ping"},
    {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "你好，世界"}},
    {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "！🙂"}},
    {"type": "content_block_stop", "index": 0},
    {"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None},
     "usage": {"output_tokens": 7}},
    {"type": "message_stop"},
    named=True,
)


def expected_chat_chunks(delta_texts):
    base = {"id": "chatcmpl-msg_01", "object": "chat.completion.chunk", "created": 1700000000,
            "model": "client-model"}
    chunks = [{**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""},
                                    "logprobs": None, "finish_reason": None}]}]
    for text in delta_texts:
        chunks.append({**base, "choices": [{"index": 0, "delta": {"content": text}, "logprobs": None,
                                            "finish_reason": None}]})
    chunks.append({**base, "choices": [{"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}],
                   "usage": {"prompt_tokens": 42, "completion_tokens": 7, "total_tokens": 49,
                             "prompt_tokens_details": {"cached_tokens": 30}}})
    return [(None, c) for c in chunks] + [(None, "[DONE]")]


def test_an_anthropic_stream_becomes_chat_chunks_with_role_first_usage_last_and_done():
    translator = make_translator("anthropic_messages", "openai_chat")
    out = translator.feed(CHINESE_ANTHROPIC) + translator.finish()
    assert parse_sse(out) == expected_chat_chunks(["你好，世界", "！🙂"])
    assert translator.finished and translator.error is None
    assert translator.usage == hub.Usage(input_tokens=12, cached_read=30, output_tokens=7)


def test_a_chinese_stream_split_at_every_byte_is_never_damaged():
    whole = make_translator("anthropic_messages", "openai_chat")
    want = whole.feed(CHINESE_ANTHROPIC) + whole.finish()
    for cut in range(1, len(CHINESE_ANTHROPIC)):
        translator = make_translator("anthropic_messages", "openai_chat")
        got = translator.feed(CHINESE_ANTHROPIC[:cut]) + translator.feed(CHINESE_ANTHROPIC[cut:]) + translator.finish()
        assert got == want, cut


def test_a_chinese_stream_fed_one_byte_at_a_time_is_never_damaged():
    translator = make_translator("anthropic_messages", "openai_chat")
    out = b"".join(translator.feed(CHINESE_ANTHROPIC[i:i + 1]) for i in range(len(CHINESE_ANTHROPIC)))
    out += translator.finish()
    texts = [p["choices"][0]["delta"].get("content") for _, p in parse_sse(out)[1:-2]]
    assert texts == ["你好，世界", "！🙂"]


def test_a_chat_stream_with_crlf_lines_is_read_too():
    data = sse(chat_chunk({"role": "assistant", "content": "好"}), chat_chunk(finish="stop"), "[DONE]")
    translator = make_translator("openai_chat", "anthropic_messages")
    out = translator.feed(data.replace(b"\n", b"\r\n")) + translator.finish()
    names = [name for name, _ in parse_sse(out)]
    assert names == ["message_start", "content_block_start", "content_block_delta", "content_block_stop",
                     "message_delta", "message_stop"]
    assert translator.finished


CHAT_REASONING_AND_TWO_TOOLS = sse(
    chat_chunk({"role": "assistant", "content": None, "reasoning_content": "先想"}),
    chat_chunk({"reasoning_content": "一想"}),
    chat_chunk({"content": "I'll check both."}),
    chat_chunk({"tool_calls": [{"index": 0, "id": "call_a", "type": "function",
                                "function": {"name": "weather", "arguments": ""}}]}),
    chat_chunk({"tool_calls": [{"index": 0, "function": {"arguments": "{\"city\":"}}]}),
    chat_chunk({"tool_calls": [{"index": 0, "function": {"arguments": "\"Paris\"}"}}]}),
    chat_chunk({"tool_calls": [{"index": 1, "id": "call_b", "type": "function",
                                "function": {"name": "time", "arguments": "{\"tz\":\"CET\"}"}}]}),
    chat_chunk(finish="tool_calls"),
    chat_chunk(usage={"prompt_tokens": 100, "completion_tokens": 20, "total_tokens": 120,
                      "prompt_tokens_details": {"cached_tokens": 64},
                      "completion_tokens_details": {"reasoning_tokens": 8}}),
    "[DONE]",
)


def test_chat_reasoning_and_two_tool_calls_become_anthropic_blocks_in_order():
    translator = make_translator("openai_chat", "anthropic_messages")
    out = parse_sse(translator.feed(CHAT_REASONING_AND_TWO_TOOLS) + translator.finish())
    assert out == [
        ("message_start", {"type": "message_start", "message": {
            "id": "msg_chatcmpl-9", "type": "message", "role": "assistant", "model": "client-model",
            "content": [], "stop_reason": None, "stop_sequence": None,
            "usage": {"input_tokens": 0, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0,
                      "output_tokens": 0}}}),
        ("content_block_start", {"type": "content_block_start", "index": 0,
                                 "content_block": {"type": "thinking", "thinking": "", "signature": ""}}),
        ("content_block_delta", {"type": "content_block_delta", "index": 0,
                                 "delta": {"type": "thinking_delta", "thinking": "先想"}}),
        ("content_block_delta", {"type": "content_block_delta", "index": 0,
                                 "delta": {"type": "thinking_delta", "thinking": "一想"}}),
        ("content_block_delta", {"type": "content_block_delta", "index": 0,  # unsigned, marked with its origin
                                 "delta": {"type": "signature_delta", "signature": "openai_chat:"}}),
        ("content_block_stop", {"type": "content_block_stop", "index": 0}),
        ("content_block_start", {"type": "content_block_start", "index": 1,
                                 "content_block": {"type": "text", "text": ""}}),
        ("content_block_delta", {"type": "content_block_delta", "index": 1,
                                 "delta": {"type": "text_delta", "text": "I'll check both."}}),
        ("content_block_stop", {"type": "content_block_stop", "index": 1}),
        ("content_block_start", {"type": "content_block_start", "index": 2, "content_block": {
            "type": "tool_use", "id": "call_a", "name": "weather", "input": {}}}),
        ("content_block_delta", {"type": "content_block_delta", "index": 2,
                                 "delta": {"type": "input_json_delta", "partial_json": "{\"city\":"}}),
        ("content_block_delta", {"type": "content_block_delta", "index": 2,
                                 "delta": {"type": "input_json_delta", "partial_json": "\"Paris\"}"}}),
        ("content_block_stop", {"type": "content_block_stop", "index": 2}),
        ("content_block_start", {"type": "content_block_start", "index": 3, "content_block": {
            "type": "tool_use", "id": "call_b", "name": "time", "input": {}}}),
        ("content_block_delta", {"type": "content_block_delta", "index": 3,
                                 "delta": {"type": "input_json_delta", "partial_json": "{\"tz\":\"CET\"}"}}),
        ("content_block_stop", {"type": "content_block_stop", "index": 3}),
        ("message_delta", {"type": "message_delta", "delta": {"stop_reason": "tool_use", "stop_sequence": None},
                           "usage": {"input_tokens": 36, "cache_creation_input_tokens": 0,
                                     "cache_read_input_tokens": 64, "output_tokens": 20,
                                     "output_tokens_details": {"thinking_tokens": 8}}}),
        ("message_stop", {"type": "message_stop"}),
    ]
    assert translator.usage == hub.Usage(input_tokens=36, cached_read=64, output_tokens=20, reasoning_tokens=8)


ANTHROPIC_THINKING_AND_TOOLS = sse(
    {"type": "message_start", "message": {"id": "msg_7", "model": "claude-up", "usage": {"input_tokens": 5, "output_tokens": 1}}},
    {"type": "content_block_start", "index": 0, "content_block": {"type": "thinking", "thinking": ""}},
    {"type": "content_block_delta", "index": 0, "delta": {"type": "thinking_delta", "thinking": "Two calls."}},
    {"type": "content_block_delta", "index": 0, "delta": {"type": "signature_delta", "signature": "EqQBCgIYAh"}},
    {"type": "content_block_stop", "index": 0},
    {"type": "content_block_start", "index": 1, "content_block": {"type": "tool_use", "id": "toolu_1", "name": "a", "input": {}}},
    {"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": "{\"x\": 1}"}},
    {"type": "content_block_stop", "index": 1},
    {"type": "content_block_start", "index": 2, "content_block": {"type": "tool_use", "id": "toolu_2", "name": "b", "input": {}}},
    {"type": "content_block_delta", "index": 2, "delta": {"type": "input_json_delta", "partial_json": ""}},
    {"type": "content_block_delta", "index": 2, "delta": {"type": "input_json_delta", "partial_json": "{}"}},
    {"type": "content_block_stop", "index": 2},
    {"type": "message_delta", "delta": {"stop_reason": "tool_use"}, "usage": {"output_tokens": 30}},
    {"type": "message_stop"},
    named=True,
)


def test_anthropic_thinking_and_two_tool_calls_become_chat_reasoning_and_indexed_tool_calls():
    translator = make_translator("anthropic_messages", "openai_chat")
    chunks = [p for _, p in parse_sse(translator.feed(ANTHROPIC_THINKING_AND_TOOLS) + translator.finish())]
    deltas = [c["choices"][0]["delta"] for c in chunks[:-1]]
    assert deltas == [
        {"role": "assistant", "content": ""},
        {"reasoning_content": "Two calls."},
        {"tool_calls": [{"index": 0, "id": "toolu_1", "type": "function", "function": {"name": "a", "arguments": ""}}]},
        {"tool_calls": [{"index": 0, "function": {"arguments": "{\"x\": 1}"}}]},
        {"tool_calls": [{"index": 1, "id": "toolu_2", "type": "function", "function": {"name": "b", "arguments": ""}}]},
        {"tool_calls": [{"index": 1, "function": {"arguments": "{}"}}]},
        {},
    ]
    assert chunks[-2]["choices"][0]["finish_reason"] == "tool_calls"
    assert chunks[-2]["usage"] == {"prompt_tokens": 5, "completion_tokens": 30, "total_tokens": 35}
    assert chunks[-1] == "[DONE]"


def test_a_thinking_signature_survives_anthropic_to_anthropic_through_the_hub():
    translator = make_translator("anthropic_messages", "anthropic_messages")
    out = parse_sse(translator.feed(ANTHROPIC_THINKING_AND_TOOLS) + translator.finish())
    signature = [p["delta"] for n, p in out if n == "content_block_delta" and p["delta"]["type"] == "signature_delta"]
    assert signature == [{"type": "signature_delta", "signature": "EqQBCgIYAh"}]
    assert out[-2][1]["delta"]["stop_reason"] == "tool_use"


def test_an_unknown_stop_reason_is_kept_and_never_becomes_a_normal_stop():
    data = sse(chat_chunk({"content": "x"}), chat_chunk(finish="eos_weird"), "[DONE]")
    translator = make_translator("openai_chat", "anthropic_messages")
    out = parse_sse(translator.feed(data) + translator.finish())
    assert out[-2][1]["delta"]["stop_reason"] == "eos_weird"


@pytest.mark.parametrize("src, data", [
    ("openai_chat", sse(chat_chunk({"content": "partial"}))),
    ("anthropic_messages", CHINESE_ANTHROPIC[:CHINESE_ANTHROPIC.index(b"event: content_block_stop")]),
])
def test_an_upstream_that_stops_mid_answer_ends_the_anthropic_stream_with_an_error_event(src, data):
    translator = make_translator(src, "anthropic_messages")
    out = parse_sse(translator.feed(data) + translator.finish())
    assert out[-2] == ("content_block_stop", {"type": "content_block_stop", "index": 0})
    assert out[-1] == ("error", {"type": "error", "error": {
        "type": "api_error", "message": "The upstream stream ended before the answer was complete."}})
    assert not translator.finished
    assert translator.error == "The upstream stream ended before the answer was complete."


def test_an_upstream_that_stops_mid_answer_ends_the_chat_stream_with_an_error_chunk_and_done():
    translator = make_translator("anthropic_messages", "openai_chat")
    data = CHINESE_ANTHROPIC[:CHINESE_ANTHROPIC.index(b"event: content_block_stop")]
    out = parse_sse(translator.feed(data) + translator.finish())
    assert out[-2] == (None, {"error": {"message": "The upstream stream ended before the answer was complete.",
                                        "type": "upstream_error", "param": None, "code": None}})
    assert out[-1] == (None, "[DONE]")


def test_an_upstream_error_event_is_relayed_once_in_the_clients_protocol():
    data = sse({"type": "message_start", "message": {"id": "msg_1", "model": "c"}},
               {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}, named=True)
    translator = make_translator("anthropic_messages", "openai_chat")
    out = parse_sse(translator.feed(data) + translator.finish())
    assert out[1:] == [(None, {"error": {"message": "Overloaded", "type": "overloaded_error", "param": None,
                                         "code": None}}), (None, "[DONE]")]
    assert translator.error == "Overloaded" and not translator.finished


def test_fail_renders_a_mid_stream_failure_and_nothing_follows_it():
    translator = make_translator("openai_chat", "anthropic_messages")
    translator.feed(sse(chat_chunk({"content": "hi"})))
    failed = parse_sse(translator.fail("upstream timed out"))
    assert failed == [("content_block_stop", {"type": "content_block_stop", "index": 0}),
                      ("error", {"type": "error", "error": {"type": "api_error", "message": "upstream timed out"}})]
    assert translator.finish() == b""
    assert translator.error == "upstream timed out"


def test_deltas_before_any_start_still_give_the_client_a_well_formed_stream():
    translator = make_translator("anthropic_messages", "anthropic_messages")
    data = sse({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "orphan"}},
               {"type": "message_stop"}, named=True)
    out = [name for name, _ in parse_sse(translator.feed(data) + translator.finish())]
    assert out == ["message_start", "message_delta", "message_stop"]  # no block was ever opened upstream


@pytest.mark.parametrize("src, data", [
    ("anthropic_messages", b'data: {"type": "content_block_start", "index": 0, "content_block": {"type": "text"}}\n\n'
                           b'data: {"type": "content_block_delta", "index": 0, "delta": "x"}\n\n'),
    ("openai_chat", b'data: {"id": "c", "choices": [{"delta": {"tool_calls": "bad"}}]}\n\n'),
    ("openai_chat", b"data: [1, 2]\n\n"),
    ("openai_responses", b'data: {"type": "response.output_item.added", "item": "bad"}\n\n'),
    ("gemini", b'data: {"candidates": [{"content": {"parts": ["bad"]}}]}\n\n'),
])
def test_an_upstream_event_of_the_wrong_shape_ends_the_stream_with_an_error(src, data):
    translator = make_translator(src, "anthropic_messages")
    out = parse_sse(translator.feed(data) + translator.finish())
    assert out[-1][0] == "error"
    assert translator.error in ("The upstream sent an event the gateway cannot read.",
                                "The upstream sent an event that is not a JSON object.")
