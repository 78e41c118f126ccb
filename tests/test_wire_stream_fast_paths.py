"""The translated stream's fast paths (bench/translate.py measures them) give exactly the
bytes and events the general paths gave: decoding with the C scanner, reading data lines
straight from a block, content_block_delta events filled into a template."""
import json

import pytest

from providers import hub
from providers.sse import EventSplitter, block_data, event_data, named_event, split_events
from providers.wire import decode_event
from providers.wire.anthropic_messages import StreamWriter
from providers.wire.translate import StreamTranslator

AWKWARD_TEXTS = ["hello ", "", 'a "quoted" \\ back\\slash', "line\nbreak\ttab\r", "\x00\x1f\x7f",
                 "中文输出", "emoji 😀 and é", "\ud83d lone surrogate", "</script>&<"]


def mock_chat_stream(words: list[str]) -> bytes:
    """A chat stream laid out the way the mock (and OpenAI) write one: role, one chunk per
    word, finish, usage, [DONE]."""
    head = ('data: {"id":"chatcmpl-mock7","object":"chat.completion.chunk","created":1700000000,'
            '"model":"gpt-4o-mini","system_fingerprint":"fp_mock","choices":')

    def chunk(delta, finish="null"):
        return head + '[{"index":0,"delta":%s,"logprobs":null,"finish_reason":%s}],"usage":null}\n\n' % (delta, finish)

    events = [chunk('{"role":"assistant","content":"","refusal":null}')]
    events += [chunk('{"content":%s}' % json.dumps(w)) for w in words]
    events += [chunk("{}", '"stop"'),
               head + '[],"usage":{"prompt_tokens":12,"completion_tokens":%d,"total_tokens":%d}}\n\n'
               % (len(words), 12 + len(words)),
               "data: [DONE]\n\n"]
    return "".join(events).encode()


def anthropic_events(data: bytes) -> list[tuple[str, dict]]:
    out = []
    for block in data.decode().split("\n\n"):
        if block.strip():
            name, _, payload = block.partition("\ndata: ")
            out.append((name.removeprefix("event: "), json.loads(payload)))
    return out


@pytest.mark.parametrize("text", AWKWARD_TEXTS)
def test_a_text_delta_is_byte_for_byte_what_named_event_writes(text):
    writer = StreamWriter("claude-bench")
    writer.write(hub.Start("up-1", "gpt-up"))
    writer.write(hub.BlockStart(0, hub.BlockKind.TEXT))
    expected = named_event("content_block_delta", {"type": "content_block_delta", "index": 0,
                                                   "delta": {"type": "text_delta", "text": text}})
    assert writer.write(hub.TextDelta(0, text)) == expected


@pytest.mark.parametrize("text", AWKWARD_TEXTS)
def test_thinking_and_tool_argument_deltas_are_byte_for_byte_what_named_event_writes(text):
    writer = StreamWriter("claude-bench")
    writer.write(hub.Start("up-1", "gpt-up"))
    writer.write(hub.BlockStart(0, hub.BlockKind.THINKING))
    thinking = writer.write(hub.ThinkingDelta(0, text))
    writer.write(hub.BlockStop(0))
    writer.write(hub.BlockStart(1, hub.BlockKind.TOOL_CALL, tool_id="toolu_1", tool_name="f"))
    arguments = writer.write(hub.ToolArgsDelta(1, text))
    assert thinking == named_event("content_block_delta", {
        "type": "content_block_delta", "index": 0, "delta": {"type": "thinking_delta", "thinking": text}})
    assert arguments == named_event("content_block_delta", {
        "type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": text}})


def test_the_stop_events_are_byte_for_byte_what_named_event_writes():
    writer = StreamWriter("claude-bench")
    writer.write(hub.Start("up-1", "gpt-up"))
    writer.write(hub.BlockStart(0, hub.BlockKind.TEXT))
    writer.write(hub.BlockStop(0))
    writer.write(hub.BlockStart(1, hub.BlockKind.TEXT))
    writer.write(hub.BlockStart(2, hub.BlockKind.TEXT))
    writer.write(hub.BlockStart(3, hub.BlockKind.TEXT))
    ending = writer.write(hub.Finish(hub.StopReason.END))
    assert ending.startswith(named_event("content_block_stop", {"type": "content_block_stop", "index": 3}))
    assert ending.endswith(named_event("message_stop", {"type": "message_stop"}))


def test_a_text_delta_for_a_stopped_or_foreign_block_still_writes_nothing():
    writer = StreamWriter("claude-bench")
    writer.write(hub.Start("up-1", "gpt-up"))
    writer.write(hub.BlockStart(0, hub.BlockKind.THINKING))
    assert writer.write(hub.TextDelta(0, "into a thinking block")) == b""
    writer.write(hub.BlockStop(0))
    assert writer.write(hub.TextDelta(0, "after its stop")) == b""


@pytest.mark.parametrize("payload", [
    b'{"a":1}', b' {"a": [1, 2.5, null, true]} ', b'{"t":"\xe4\xb8\xad"}', b'"\\ud83d"', b'{"a":1}\r\n',
    b'[DONE]', b'{"a":1} extra', b'{"a":', b'', b'\xff\xfe', b'[1, "x"]', b'{"a":1}{"b":2}',
    '{"a":1}'.encode("utf-16-le"), '{"a":1}'.encode("utf-8-sig"),
])
def test_an_event_is_decoded_exactly_as_json_loads_decodes_it(payload):
    try:
        expected = json.loads(payload)
    except ValueError:
        with pytest.raises(ValueError):
            decode_event(payload)
    else:
        assert decode_event(payload) == expected


def test_the_data_of_a_block_is_read_as_event_by_event_reading_read_it():
    block = (b": a comment\n\n"
             b"data: {\"a\":1}\n\n"
             b"event: content_block_delta\ndata: {\"b\":2}\n\n"
             b"data: {\"c\":\ndata: 3}\n\n"
             b"id: 7\n\n"
             b"data:{\"d\":4}\n\n"
             b"data: [DONE]\n\n")
    assert block_data(block) == [event_data(event) for event in split_events(block)]


def test_a_chat_stream_becomes_anthropic_events_with_every_word_in_its_own_delta():
    words = [f"word{i} " for i in range(19)] + ["中文"]
    out = StreamTranslator("openai_chat", "anthropic_messages", "claude-bench").feed(mock_chat_stream(words))
    events = anthropic_events(out)
    assert [name for name, _ in events] == (["message_start", "content_block_start"] + ["content_block_delta"] * 20
                                            + ["content_block_stop", "message_delta", "message_stop"])
    assert [payload["delta"]["text"] for name, payload in events if name == "content_block_delta"] == words
    assert events[-2][1]["delta"]["stop_reason"] == "end_turn"
    assert events[-2][1]["usage"]["output_tokens"] == 20


def test_a_chat_stream_fed_in_one_read_or_byte_by_byte_gives_the_same_client_bytes():
    stream = mock_chat_stream(["Hello ", "from ", "the ", "gateway, ", "中文 ", "😀"])
    whole = StreamTranslator("openai_chat", "anthropic_messages", "claude-bench")
    piecewise = StreamTranslator("openai_chat", "anthropic_messages", "claude-bench")
    at_once = whole.feed(stream) + whole.finish()
    one_by_one = b"".join(piecewise.feed(stream[i:i + 1]) for i in range(len(stream))) + piecewise.finish()
    # message ids are made from the upstream's id, so the two streams can be compared whole
    assert at_once == one_by_one
    assert whole.finished and piecewise.finished and whole.error is None
    assert whole.usage.output_tokens == 6


def test_a_chat_event_with_extra_data_after_its_json_ends_the_stream_with_an_error():
    stream = mock_chat_stream(["Hello "]).replace(b'"usage":null}\n\n', b'"usage":null} trailing\n\n', 1)
    translator = StreamTranslator("openai_chat", "anthropic_messages", "claude-bench")
    events = anthropic_events(translator.feed(stream) + translator.finish())
    assert events[-1][0] == "error"
    assert translator.error == "The upstream sent an event that is not JSON."


def test_the_splitter_and_block_data_agree_for_a_stream_cut_anywhere():
    stream = mock_chat_stream(["a ", "b ", "c"])
    for cut in range(1, len(stream)):
        splitter = EventSplitter()
        data = block_data(splitter.feed_block(stream[:cut])) + block_data(splitter.feed_block(stream[cut:]))
        assert data == [event_data(event) for event in split_events(stream)]
