"""Every pair of formats: what a client or upstream said in one survives into the other."""
import itertools
import json

import pytest

from providers import hub
from providers.wire import FORMATS, codec
from providers.wire.translate import StreamTranslator, translate_answer, translate_request

from .test_wire_translate_gemini import GEMINI_STREAM
from .test_wire_translate_responses import RESPONSES_STREAM
from .test_wire_translate_streams import ANTHROPIC_THINKING_AND_TOOLS, CHAT_REASONING_AND_TWO_TOOLS

PAIRS = list(itertools.product(FORMATS, FORMATS))
PNG = "iVBORw0KGgo="
PDF = "JVBERi0xLjQK"
SCHEMA = {"type": "object", "properties": {"path": {"type": "string"}}}


def make_conversation() -> hub.Request:
    """One conversation with what every format can carry, written in each format below."""
    return hub.Request(
        model="m", system=[hub.Text("You are terse.")], max_tokens=500, temperature=0.5,
        messages=[
            hub.Message(hub.Role.USER, [hub.Text("读一下这两个文件"), hub.Image(data=PNG, media_type="image/png"),
                                        hub.File(data=PDF, media_type="application/pdf")]),
            hub.Message(hub.Role.ASSISTANT, [hub.Text("Reading both."),
                                             hub.ToolCall("call_1", "read", "{\"path\": \"a.py\"}"),
                                             hub.ToolCall("call_2", "read", "{\"path\": \"b.py\"}")]),
            hub.Message(hub.Role.TOOL, [hub.ToolResult("call_1", [hub.Text("A")], name="read"),
                                        hub.ToolResult("call_2", [hub.Text("B")], name="read")]),
            hub.Message(hub.Role.USER, [hub.Text("谢谢")]),
        ],
        tools=[hub.Tool("read", "Read a file", SCHEMA)], tool_choice=hub.ToolChoice("auto"))


SAMPLE_REQUESTS = {name: codec(name).write_request(make_conversation(), "m") for name in FORMATS}


def request_summary(req: hub.Request) -> dict:
    """What must survive, independent of how a format arranges it."""
    system = [t.text for t in req.system] + [p.text for m in req.messages if m.role in (hub.Role.SYSTEM, hub.Role.DEVELOPER)
                                             for p in m.parts]
    parts = [p for m in req.messages for p in m.parts]
    return {
        "system": "\n\n".join(system),
        "user": [p.text for m in req.messages if m.role == hub.Role.USER for p in m.parts if isinstance(p, hub.Text)],
        "assistant": [p.text for m in req.messages if m.role == hub.Role.ASSISTANT for p in m.parts
                      if isinstance(p, hub.Text)],
        "images": [(p.data, p.media_type) for p in parts if isinstance(p, hub.Image)],
        "files": [(p.data, p.media_type) for p in parts if isinstance(p, hub.File)],
        "calls": [(p.id, p.name, json.loads(p.arguments)) for p in parts if isinstance(p, hub.ToolCall)],
        "results": [(p.call_id, [t.text for t in p.parts]) for p in parts if isinstance(p, hub.ToolResult)],
        "tools": [(t.name, t.description, t.parameters) for t in req.tools],
        "tool_choice": req.tool_choice, "max_tokens": req.max_tokens, "temperature": req.temperature,
    }


@pytest.mark.parametrize("src, dst", PAIRS)
def test_a_request_keeps_its_conversation_in_every_format(src, dst):
    body, diagnostics = translate_request(SAMPLE_REQUESTS[src], src, dst, "m")
    codec(dst).validate_request(body)
    assert request_summary(codec(dst).read_request(body)) == request_summary(codec(src).read_request(SAMPLE_REQUESTS[src]))
    # a Responses request written for another client is stateless: store=false means nothing elsewhere
    assert {name for name, _ in diagnostics} <= {"store", "include"}


def make_answer() -> hub.Answer:
    return hub.Answer("ans-1", "m", [hub.Thinking("Two files."), hub.Text("Reading."),
                                     hub.ToolCall("call_1", "read", "{\"path\": \"a.py\"}"),
                                     hub.ToolCall("call_2", "read", "{\"path\": \"b.py\"}")],
                      hub.StopReason.TOOL_USE,
                      hub.Usage(input_tokens=30, cached_read=70, output_tokens=25, reasoning_tokens=5))


SAMPLE_ANSWERS = {name: codec(name).write_answer(make_answer(), "m") for name in FORMATS}


def answer_summary(ans: hub.Answer) -> dict:
    return {
        "text": "".join(p.text for p in ans.parts if isinstance(p, hub.Text)),
        "thinking": "".join(p.text for p in ans.parts if isinstance(p, hub.Thinking)),
        "calls": [(p.name, json.loads(p.arguments)) for p in ans.parts if isinstance(p, hub.ToolCall)],
        "stop": ans.stop_reason, "usage": ans.usage,
    }


@pytest.mark.parametrize("src, dst", PAIRS)
def test_an_answer_keeps_text_reasoning_calls_stop_and_usage_in_every_format(src, dst):
    body = translate_answer(SAMPLE_ANSWERS[src], src, dst, "client-model")
    assert answer_summary(codec(dst).read_answer(body)) == answer_summary(make_answer())


SAMPLE_STREAMS = {"openai_chat": CHAT_REASONING_AND_TWO_TOOLS, "anthropic_messages": ANTHROPIC_THINKING_AND_TOOLS,
                  "openai_responses": RESPONSES_STREAM, "gemini": GEMINI_STREAM}


def stream_summary(events: list) -> dict:
    kinds, calls = {}, {}
    summary = {"text": "", "thinking": "", "finish": None, "errors": []}
    for event in events:
        if isinstance(event, hub.BlockStart):
            kinds[event.index] = event.kind
            if event.kind == hub.BlockKind.TOOL_CALL:
                calls[event.index] = [event.tool_id, event.tool_name, ""]
        elif isinstance(event, hub.TextDelta):
            summary["text"] += event.text
        elif isinstance(event, hub.ThinkingDelta):
            summary["thinking"] += event.text
        elif isinstance(event, hub.ToolArgsDelta):
            calls[event.index][2] += event.json
        elif isinstance(event, hub.Finish):
            summary["finish"] = (event.stop_reason, event.usage)
        elif isinstance(event, hub.Error):
            summary["errors"].append(event)
    summary["calls"] = [(i, n, json.loads(a)) for i, n, a in calls.values()]
    return summary


def read_stream(name: str, data: bytes) -> list:
    reader = codec(name).StreamReader()
    return reader.feed(data) + reader.close()


@pytest.mark.parametrize("src, dst", PAIRS)
def test_a_stream_keeps_text_reasoning_calls_stop_and_usage_in_every_format(src, dst):
    upstream = SAMPLE_STREAMS[src]
    translator = StreamTranslator(src, dst, "client-model")
    client_bytes = translator.feed(upstream) + translator.finish()
    assert translator.finished and translator.error is None
    want = stream_summary(read_stream(src, upstream))
    assert stream_summary(read_stream(dst, client_bytes)) == want
    assert want["finish"][1] == translator.usage


@pytest.mark.parametrize("src, dst", PAIRS)
def test_a_stream_fed_in_small_pieces_gives_the_same_client_bytes(src, dst):
    upstream = SAMPLE_STREAMS[src]
    whole = StreamTranslator(src, dst, "client-model")
    pieces = StreamTranslator(src, dst, "client-model")
    for translator in (whole, pieces):
        if hasattr(translator.writer, "created"):
            translator.writer.created = 1
    want = whole.feed(upstream) + whole.finish()
    got = b"".join(pieces.feed(upstream[i:i + 5]) for i in range(0, len(upstream), 5)) + pieces.finish()
    assert got == want


def test_a_same_format_request_is_known_to_carry_reasoning_another_provider_or_model_sealed():
    from providers.wire.seals import same_format_plan

    gemini_sealed = b'{"messages":[{"role":"assistant","content":[{"type":"thinking","signature": "gemini:c2ln"}]}]}'
    own = b'{"messages":[{"role":"assistant","content":[{"type":"thinking","signature":"ErUBCkYI"}]}]}'
    responses_sealed = b'{"input":[{"type":"reasoning","encrypted_content":"openai_responses:rs_1:gAAA"}]}'
    by_opus = b'{"messages":[{"role":"assistant","content":[{"type":"thinking","signature":"anthropic_messages@claude-opus:ErUB"}]}]}'

    assert same_format_plan(gemini_sealed, "anthropic_messages", "claude-opus") == "hub"
    assert same_format_plan(own, "anthropic_messages", "claude-opus") is None
    assert same_format_plan(responses_sealed, "openai_responses", "gpt-5") == "unseal"
    assert same_format_plan(responses_sealed, "gemini", "gemini-2.5-pro") == "hub"
    assert same_format_plan(by_opus, "anthropic_messages", "claude-opus") == "unseal"
    assert same_format_plan(by_opus, "anthropic_messages", "claude-sonnet") == "hub"
    assert same_format_plan(b'{"messages":[{"role":"user","content":"signature: gemini:x"}]}',
                            "anthropic_messages", "claude-opus") is None
