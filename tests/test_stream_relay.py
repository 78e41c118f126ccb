"""The OpenAI stream relay: bytes out exactly as they came, usage and errors read, however
the upstream's reads cut the stream."""
import json

import pytest

from providers.wire import openai_chat
from providers.wire.openai_chat import StreamRelay
from providers.sse import EventSplitter


def event(payload) -> bytes:
    return b"data: " + (payload if isinstance(payload, bytes) else json.dumps(payload).encode()) + b"\n\n"


def content(text, usage_null=False):
    chunk = {"id": "c1", "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": text}}]}
    if usage_null:
        chunk["usage"] = None  # what OpenAI sends on every chunk when include_usage is set
    return event(chunk)


USAGE = event({"id": "c1", "object": "chat.completion.chunk", "choices": [],
               "usage": {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}})
DONE = b"data: [DONE]\n\n"
STREAM = content("Hel") + content("lo", usage_null=True) + b": keep-alive\n\n" + content(" you") + USAGE + DONE


def relay_in_pieces(stream: bytes, cuts: list[int], wants_usage: bool) -> tuple[bytes, StreamRelay]:
    relay = StreamRelay(client_wants_usage=wants_usage)
    bounds = [0, *cuts, len(stream)]
    out = b"".join(relay.feed(stream[a:b]) for a, b in zip(bounds, bounds[1:]))
    return out, relay


@pytest.mark.parametrize("cuts", [
    [],  # the whole stream in one read
    [len(content("Hel"))],  # at an event boundary
    [5, 50, 51, 120],  # inside events
    list(range(1, len(STREAM))),  # a byte at a time
    [len(STREAM) - len(DONE) - 10],  # inside the usage event
])
def test_the_stream_comes_out_as_it_went_in(cuts):
    out, relay = relay_in_pieces(STREAM, cuts, wants_usage=True)
    assert out == STREAM
    usage = openai_chat.usage_from_events(relay.events_to_log(with_text=True))
    assert (usage.input_tokens, usage.output_tokens) == (7, 3)
    assert relay.finished and relay.error is None
    assert openai_chat.text_from_events(relay.events_to_log(with_text=True)) == "Hello you"


@pytest.mark.parametrize("cuts", [[], [7], list(range(1, len(STREAM)))])
def test_the_usage_only_chunk_is_dropped_unless_asked_for(cuts):
    out, relay = relay_in_pieces(STREAM, cuts, wants_usage=False)
    assert out == STREAM.replace(USAGE, b"")
    assert openai_chat.usage_from_events(relay.events_to_log(with_text=True)).output_tokens == 3  # still counted


def test_an_error_event_is_relayed_and_recorded():
    error = event({"error": {"message": "overloaded", "type": "server_error"}})
    out, relay = relay_in_pieces(content("a") + error, [], wants_usage=True)
    assert out == content("a") + error
    assert relay.error == "overloaded" and relay.finished


def test_crlf_streams_are_relayed_with_plain_newlines():
    crlf = STREAM.replace(b"\n", b"\r\n")
    out, relay = relay_in_pieces(crlf, [len(content("Hel")) + 1], wants_usage=True)  # cut inside a CRLF pair
    assert out == STREAM
    assert relay.done


def test_a_stream_without_the_end_is_not_finished():
    out, relay = relay_in_pieces(content("a") + content("b")[:10], [], wants_usage=True)
    assert out == content("a")
    assert not relay.finished


def test_content_that_mentions_usage_or_errors_is_only_content():
    text = 'the "usage":{ "error" of [DONE]'
    out, relay = relay_in_pieces(content(text) + DONE, [], wants_usage=False)
    assert out == content(text) + DONE
    assert openai_chat.usage_from_events(relay.events_to_log(with_text=True)) is None
    assert relay.error is None and relay.done
    assert openai_chat.text_from_events(relay.events_to_log(with_text=True)) == text


def test_the_splitter_returns_whole_events_only():
    splitter = EventSplitter()
    assert splitter.feed(b"data: 1\n\ndata: 2") == [b"data: 1\n\n"]
    assert splitter.pending() == b"data: 2"
    assert splitter.feed_block(b"\n\ndata: 3\n\n") == b"data: 2\n\ndata: 3\n\n"


def test_usage_on_a_chunk_with_content_is_relayed_even_unasked():
    last = event({"choices": [{"index": 0, "delta": {"content": "!"}, "finish_reason": "stop"}],
                  "usage": {"prompt_tokens": 2, "completion_tokens": 1}})
    out, relay = relay_in_pieces(content("hi") + last + DONE, [], wants_usage=False)
    assert out == content("hi") + last + DONE
    assert openai_chat.usage_from_events(relay.events_to_log(with_text=True)).output_tokens == 1
    assert openai_chat.text_from_events(relay.events_to_log(with_text=True)) == "hi!"


def test_with_usage_only_the_usage_events_are_kept_for_the_log():
    out, relay = relay_in_pieces(STREAM, [], wants_usage=True)
    assert relay.events_to_log(with_text=False) == [USAGE]
    out, relay = relay_in_pieces(content("a") + DONE, [], wants_usage=True)  # no usage: text for an estimate
    assert openai_chat.text_from_events(relay.events_to_log(with_text=False)) == "a"


def test_an_error_event_is_relayed_with_the_provider_key_scrubbed():
    relay = StreamRelay(client_wants_usage=False, secret="sk-provider-secret")
    error = b'data: {"error":{"message":"quota of key sk-provider-secret exceeded"}}\n\n'
    out = relay.feed(content("a") + error)
    assert b"sk-provider-secret" not in out and b"key *** exceeded" in out
    assert relay.error == "quota of key *** exceeded"


def test_error_null_on_ordinary_chunks_is_no_error():
    chunk = b'data: {"choices":[{"index":0,"delta":{"content":"x"}}],"error":null}\n\n'
    relay = StreamRelay(client_wants_usage=False)
    assert relay.feed(chunk + DONE) == chunk + DONE
    assert relay.error is None and relay.finished


def test_comments_before_the_first_event_are_held_back_and_later_ones_relayed():
    relay = StreamRelay(client_wants_usage=False)
    assert relay.feed(b": OPENROUTER PROCESSING\n\n") == b""
    assert relay.feed(b": OPENROUTER PROCESSING\n\n" + content("a")) == content("a")
    assert relay.feed(b": still here\n\n") == b": still here\n\n"


def test_only_the_last_of_many_usage_events_is_kept():
    def with_usage(text, tokens):
        return (b'data: {"choices":[{"index":0,"delta":{"content":"' + text.encode() + b'"}}],'
                b'"usage":{"prompt_tokens":1,"completion_tokens":' + str(tokens).encode() + b'}}\n\n')

    relay = StreamRelay(client_wants_usage=True)
    relay.feed(b"".join(with_usage("w", n) for n in range(1, 50)) + DONE)
    kept = relay.events_to_log(with_text=False)
    assert len(kept) == 1 and openai_chat.usage_from_events(kept).output_tokens == 49
