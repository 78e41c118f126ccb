"""Property tests: what a codec writes from the hub, it reads back as the same hub form."""
import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from providers import hub
from providers.wire import codec

FAST = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])

words = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=12)
names = st.from_regex(r"[a-z][a-z0-9_]{0,10}", fullmatch=True)
ids = st.from_regex(r"call_[A-Za-z0-9]{1,8}", fullmatch=True)
blobs = st.from_regex(r"[A-Za-z0-9+/]{4,16}={0,2}", fullmatch=True)
json_values = st.recursive(st.none() | st.booleans() | st.integers(-99, 99) | words,
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(names, inner, max_size=3),
                           max_leaves=6)
arguments = st.dictionaries(names, json_values, max_size=3).map(lambda d: json.dumps(d, ensure_ascii=False))


def make_image(url: bool, data: bool, detail: bool = False):
    options = []
    if url:
        options.append(st.builds(hub.Image, url=st.just("https://example.com/cat.png")))
    if data:
        options.append(st.builds(hub.Image, data=blobs, media_type=st.sampled_from(["image/png", "image/jpeg"])))
    return st.one_of(options)


def make_tool_call():
    return st.builds(hub.ToolCall, id=ids, name=names, arguments=arguments)


def make_tools():
    schema = st.builds(lambda props: {"type": "object", "properties": {k: {"type": "string"} for k in props}},
                       st.lists(names, max_size=3))
    return st.lists(st.builds(hub.Tool, name=names, description=st.none() | words, parameters=schema),
                    max_size=3, unique_by=lambda t: t.name)


@st.composite
def conversation(draw, *, system_messages: bool, assistant, tool_result, user_image):
    """Alternating turns that end with a user turn, tool results after tool calls."""
    messages = []
    if system_messages and draw(st.booleans()):
        messages.append(hub.Message(hub.Role.SYSTEM, [hub.Text(draw(words))]))
    for _ in range(draw(st.integers(1, 3))):
        user = [hub.Text(draw(words))] + draw(st.lists(user_image, max_size=1))
        messages.append(hub.Message(hub.Role.USER, user))
        if system_messages and draw(st.booleans()):
            messages.append(hub.Message(draw(st.sampled_from([hub.Role.SYSTEM, hub.Role.DEVELOPER])),
                                        [hub.Text(draw(words))]))
        parts = draw(assistant)
        messages.append(hub.Message(hub.Role.ASSISTANT, parts))
        calls = [p for p in parts if isinstance(p, hub.ToolCall)]
        if calls:
            messages += draw(tool_result(calls))
    messages.append(hub.Message(hub.Role.USER, [hub.Text(draw(words))]))
    return messages


# --- per format: the part of the hub each one carries ---------------------------------

@st.composite
def chat_assistant(draw):
    parts = []
    if draw(st.booleans()):
        parts.append(hub.Thinking(text=draw(words)))
    if draw(st.booleans()):
        parts.append(hub.Text(draw(words)))
    parts += draw(st.lists(make_tool_call(), max_size=3, unique_by=lambda c: c.id))
    return parts or [hub.Text(draw(words))]


def chat_tool_results(calls):
    return st.just([hub.Message(hub.Role.TOOL, [hub.ToolResult(c.id, [hub.Text(c.name + " done")])]) for c in calls])


@st.composite
def chat_request(draw):
    tools = draw(make_tools())
    req = hub.Request(model="m", format="openai_chat", tools=tools)
    req.messages = draw(conversation(system_messages=True, assistant=chat_assistant(), tool_result=chat_tool_results,
                                     user_image=make_image(url=True, data=True)))
    if tools:
        req.tool_choice = draw(st.sampled_from([None, hub.ToolChoice("auto"), hub.ToolChoice("tool", tools[0].name)]))
        req.parallel_tool_calls = draw(st.sampled_from([None, True, False]))
    req.max_tokens = draw(st.none() | st.integers(1, 10_000))
    req.temperature = draw(st.none() | st.floats(0, 2, allow_nan=False))
    req.stop = draw(st.lists(words, max_size=2))
    req.reasoning_effort = draw(st.sampled_from([None, "low", "medium", "high"]))
    req.user = draw(st.none() | names)
    req.response_format = draw(st.sampled_from([None, hub.ResponseFormat("json_object"),
                                                hub.ResponseFormat("json_schema", {"type": "object"}, "answer", True)]))
    req.extras = draw(st.dictionaries(st.sampled_from(["seed", "frequency_penalty", "logit_bias"]), json_values, max_size=2))
    return req


@st.composite
def anthropic_assistant(draw):
    parts = []
    if draw(st.booleans()):
        parts.append(draw(st.sampled_from([hub.Thinking(text="let me see", signature="sig-1", origin="anthropic_messages"),
                                           hub.Thinking(redacted="opaque==", origin="anthropic_messages"),
                                           hub.Thinking(text="", signature="sig-only", origin="anthropic_messages")])))
    if draw(st.booleans()):
        parts.append(hub.Text(draw(words)))
    parts += draw(st.lists(make_tool_call(), max_size=3, unique_by=lambda c: c.id))
    return parts or [hub.Text(draw(words))]


def anthropic_tool_results(calls):
    @st.composite
    def results(draw):
        out = []
        for call in calls:
            parts = draw(st.sampled_from([[hub.Text("ok")], [hub.Text("see"), hub.Image(url="https://x.test/a.png")],
                                          [hub.Image(data="QUJD", media_type="image/png")]]))
            out.append(hub.ToolResult(call.id, parts, draw(st.booleans())))
        return [hub.Message(hub.Role.TOOL, out)]
    return results()


@st.composite
def anthropic_request(draw):
    tools = draw(make_tools())
    req = hub.Request(model="m", format="anthropic_messages", tools=tools)
    req.system = draw(st.lists(words.map(hub.Text), max_size=2))
    req.messages = draw(conversation(system_messages=False, assistant=anthropic_assistant(),
                                     tool_result=anthropic_tool_results, user_image=make_image(url=True, data=True)))
    req.max_tokens = draw(st.integers(2048, 10_000))
    if draw(st.booleans()):
        req.reasoning_budget = draw(st.integers(1024, req.max_tokens - 1))
        req.tool_choice = draw(st.sampled_from([None, hub.ToolChoice("auto")]))
    else:
        req.temperature = draw(st.none() | st.floats(0, 1, allow_nan=False))
        if tools:
            req.tool_choice = draw(st.sampled_from([None, hub.ToolChoice("auto"), hub.ToolChoice("required"),
                                                    hub.ToolChoice("tool", tools[0].name)]))
    if req.tool_choice and req.tool_choice.mode != "none":
        req.parallel_tool_calls = draw(st.sampled_from([None, False]))
    req.stop = draw(st.lists(words, max_size=2))
    req.stream = draw(st.booleans())
    req.user = draw(st.none() | names)
    if draw(st.booleans()):
        req.response_format = hub.ResponseFormat("json_schema", {"type": "object", "properties": {}})
    req.extras = draw(st.dictionaries(st.sampled_from(["top_k", "service_tier"]), json_values, max_size=2))
    return req


@st.composite
def responses_assistant(draw):
    parts = []
    if draw(st.booleans()):
        parts.append(hub.Thinking(text=draw(st.sampled_from(["", "summary"])), encrypted_content=draw(blobs),
                                  id=draw(st.from_regex(r"rs_[a-z0-9]{4}", fullmatch=True)), origin="openai_responses"))
    parts += draw(st.lists(words.map(hub.Text), max_size=2))
    parts += draw(st.lists(make_tool_call(), max_size=3, unique_by=lambda c: c.id))
    return parts or [hub.Text(draw(words))]


def responses_tool_results(calls):
    @st.composite
    def results(draw):
        out = []
        for call in calls:
            parts = draw(st.sampled_from([[hub.Text("ok")], [hub.Text("see"), hub.Image(url="https://x.test/a.png")],
                                          [hub.Image(data="QUJD", media_type="image/png", detail="low")]]))
            out.append(hub.ToolResult(call.id, parts))
        return [hub.Message(hub.Role.TOOL, out)]
    return results()


@st.composite
def responses_request(draw):
    tools = draw(make_tools())
    for tool in tools:
        tool.strict = draw(st.booleans())
    req = hub.Request(model="m", format="openai_responses", tools=tools)
    req.system = draw(st.lists(words.map(hub.Text), max_size=1))
    req.messages = draw(conversation(system_messages=True, assistant=responses_assistant(),
                                     tool_result=responses_tool_results, user_image=make_image(url=True, data=True)))
    if tools:
        req.tool_choice = draw(st.sampled_from([None, hub.ToolChoice("auto"), hub.ToolChoice("required"),
                                                hub.ToolChoice("none"), hub.ToolChoice("tool", tools[0].name)]))
        req.parallel_tool_calls = draw(st.sampled_from([None, True, False]))
    req.max_tokens = draw(st.none() | st.integers(1, 10_000))
    req.temperature = draw(st.none() | st.floats(0, 2, allow_nan=False))
    req.top_p = draw(st.none() | st.floats(0, 1, allow_nan=False))
    req.stream = draw(st.booleans())
    req.reasoning_effort = draw(st.sampled_from([None, "minimal", "low", "high"]))
    req.user = draw(st.none() | names)
    req.metadata = draw(st.none() | st.dictionaries(names, words, max_size=2))
    req.response_format = draw(st.sampled_from([None, hub.ResponseFormat("json_object"),
                                                hub.ResponseFormat("json_schema", {"type": "object"}, "answer", True)]))
    req.extras = draw(st.dictionaries(st.sampled_from(["store", "truncation", "service_tier"]), json_values, max_size=2))
    return req


@st.composite
def gemini_assistant(draw):
    parts = []
    thinking = draw(st.sampled_from([None, hub.Thinking(text="hmm"),
                                     hub.Thinking(text="hmm", signature="c2ln", origin="gemini"),
                                     hub.Thinking(signature="c2lnLW9ubHk=", origin="gemini")]))
    if thinking:
        parts.append(thinking)
    if draw(st.booleans()):
        parts.append(hub.Text(draw(words)))
    parts += draw(st.lists(make_tool_call(), max_size=3, unique_by=lambda c: c.id))
    return parts or [hub.Text(draw(words))]


def gemini_tool_results(calls):
    @st.composite
    def results(draw):
        return [hub.Message(hub.Role.TOOL, [hub.ToolResult(c.id, [hub.Text(draw(words))], draw(st.booleans()), c.name)
                                            for c in calls])]
    return results()


@st.composite
def gemini_request(draw):
    tools = draw(make_tools())
    req = hub.Request(model="", format="gemini", tools=tools)  # Gemini names the model in the URL
    req.system = draw(st.lists(words.map(hub.Text), max_size=2))
    image = st.one_of(make_image(url=False, data=True),
                      st.builds(hub.Image, url=st.just("https://x.test/b.webp"), media_type=st.just("image/webp")))
    req.messages = draw(conversation(system_messages=False, assistant=gemini_assistant(),
                                     tool_result=gemini_tool_results, user_image=image))
    if tools:
        req.tool_choice = draw(st.sampled_from([None, hub.ToolChoice("auto"), hub.ToolChoice("required"),
                                                hub.ToolChoice("none"), hub.ToolChoice("tool", tools[0].name)]))
    req.max_tokens = draw(st.none() | st.integers(1, 10_000))
    req.temperature = draw(st.none() | st.floats(0, 2, allow_nan=False))
    req.top_p = draw(st.none() | st.floats(0, 1, allow_nan=False))
    req.stop = draw(st.lists(words, max_size=2))
    req.reasoning_budget = draw(st.none() | st.integers(0, 30_000))
    req.response_format = draw(st.sampled_from([None, hub.ResponseFormat("json_object"),
                                                hub.ResponseFormat("json_schema", {"type": "object"})]))
    req.extras = draw(st.fixed_dictionaries({}, optional={
        "safetySettings": st.just([{"category": "HARM_CATEGORY_HARASSMENT", "threshold": "BLOCK_NONE"}]),
        "generationConfig": st.fixed_dictionaries({"topK": st.integers(1, 40)})}))
    return req


REQUESTS = {"openai_chat": chat_request(), "anthropic_messages": anthropic_request(),
            "openai_responses": responses_request(), "gemini": gemini_request()}


def assert_same_request(got: hub.Request, want: hub.Request):
    got.diagnostics = want.diagnostics = []
    if want.format == "openai_chat" and want.stream is False:
        got.stream = False
    assert got == want


@pytest.mark.parametrize("name", sorted(REQUESTS))
def test_a_request_written_from_the_hub_reads_back_the_same(name):
    wire = codec(name)

    @FAST
    @given(REQUESTS[name])
    def check(req):
        body = json.loads(json.dumps(wire.write_request(req, req.model)))  # as if sent over the wire
        assert_same_request(wire.read_request(body), req)

    check()


# --- answers ------------------------------------------------------------------------------

def make_usage():
    return st.builds(hub.Usage, input_tokens=st.integers(0, 10**6), cached_read=st.integers(0, 10**5),
                     output_tokens=st.integers(0, 10**5))


@st.composite
def chat_answer(draw):
    parts = draw(chat_assistant())
    for part in parts:
        if isinstance(part, hub.Thinking):
            part.source_model = "m"
    stop = draw(st.sampled_from([hub.StopReason.END, hub.StopReason.MAX_TOKENS, hub.StopReason.TOOL_USE,
                                 hub.StopReason.CONTENT_FILTER]))
    usage = draw(make_usage())
    usage.reasoning_tokens = draw(st.integers(0, usage.output_tokens))
    return hub.Answer("chatcmpl-1", "m", parts, stop, usage)


@st.composite
def anthropic_answer(draw):
    parts = draw(anthropic_assistant())
    for part in parts:
        if isinstance(part, hub.Thinking):
            part.source_model = "m"
    stop = draw(st.sampled_from([s for s in hub.StopReason if s not in (hub.StopReason.OTHER, hub.StopReason.CONTENT_FILTER)]))
    usage = draw(make_usage())
    usage.cache_write = draw(st.integers(0, 1000))
    return hub.Answer("msg_1", "m", parts, stop, usage,
                      stop_sequence="END" if stop == hub.StopReason.STOP_SEQUENCE else None)


@st.composite
def responses_answer(draw):
    parts = draw(responses_assistant())
    for part in parts:
        if isinstance(part, hub.Thinking):
            part.source_model = "m"
    calls = any(isinstance(p, hub.ToolCall) for p in parts)
    stop = draw(st.sampled_from([hub.StopReason.TOOL_USE if calls else hub.StopReason.END,
                                 hub.StopReason.MAX_TOKENS, hub.StopReason.CONTENT_FILTER]))
    usage = draw(make_usage())
    usage.cache_write = draw(st.integers(0, 1000))
    usage.reasoning_tokens = draw(st.integers(0, usage.output_tokens))
    return hub.Answer("resp_1", "m", parts, stop, usage)


@st.composite
def gemini_answer(draw):
    parts = draw(gemini_assistant())
    for part in parts:
        if isinstance(part, hub.Thinking):
            part.source_model = "m"
    calls = any(isinstance(p, hub.ToolCall) for p in parts)
    stop, raw = draw(st.sampled_from([(hub.StopReason.TOOL_USE if calls else hub.StopReason.END, None),
                                      (hub.StopReason.MAX_TOKENS, None), (hub.StopReason.CONTENT_FILTER, "RECITATION"),
                                      (hub.StopReason.OTHER, "MALFORMED_FUNCTION_CALL")]))
    usage = draw(make_usage())
    usage.reasoning_tokens = draw(st.integers(0, usage.output_tokens))
    return hub.Answer("r-1", "m", parts, stop, usage, stop_raw=raw)


ANSWERS = {"openai_chat": chat_answer(), "anthropic_messages": anthropic_answer(),
           "openai_responses": responses_answer(), "gemini": gemini_answer()}


@pytest.mark.parametrize("name", sorted(ANSWERS))
def test_an_answer_written_from_the_hub_reads_back_the_same(name):
    wire = codec(name)

    @FAST
    @given(ANSWERS[name])
    def check(ans):
        body = json.loads(json.dumps(wire.write_answer(ans, ans.model)))
        assert wire.read_answer(body) == ans

    check()


# --- streams ------------------------------------------------------------------------------

def answer_events(ans: hub.Answer) -> list:
    """The stream of events a reader should produce for an answer (one block per part)."""
    events = [hub.Start(ans.id, ans.model)]
    for index, part in enumerate(ans.parts):
        if isinstance(part, hub.Text):
            events += [hub.BlockStart(index, hub.BlockKind.TEXT), hub.TextDelta(index, part.text)]
        elif isinstance(part, hub.Thinking) and part.redacted:
            events.append(hub.BlockStart(index, hub.BlockKind.REDACTED_THINKING, redacted=part.redacted))
        elif isinstance(part, hub.Thinking):
            events.append(hub.BlockStart(index, hub.BlockKind.THINKING))
            if part.text:
                events.append(hub.ThinkingDelta(index, part.text))
            if part.signature:
                events.append(hub.SignatureDelta(index, part.signature, origin=part.origin))
            if part.encrypted_content:
                events.append(hub.SignatureDelta(index, part.encrypted_content, True, part.origin))
        elif isinstance(part, hub.ToolCall):
            events += [hub.BlockStart(index, hub.BlockKind.TOOL_CALL, tool_id=part.id, tool_name=part.name),
                       hub.ToolArgsDelta(index, part.arguments)]
        events.append(hub.BlockStop(index))
    events.append(hub.Finish(ans.stop_reason, ans.usage, ans.stop_raw, ans.stop_sequence))
    return events


def comparable(events: list) -> list:
    """Events with what a format legitimately rewrites taken out (ids, Start usage)."""
    out = []
    for event in events:
        if isinstance(event, hub.Start):
            event = hub.Start("", event.model)
        if isinstance(event, hub.SignatureDelta):  # a Responses writer names its own reasoning items
            event = hub.SignatureDelta(event.index, event.signature, event.encrypted, event.origin)
        out.append(event)
    return out


@pytest.mark.parametrize("name", sorted(ANSWERS))
def test_a_stream_written_from_hub_events_reads_back_as_the_same_events(name):
    wire = codec(name)

    @FAST
    @given(ANSWERS[name], st.integers(1, 64))
    def check(ans, piece):
        events = answer_events(ans)
        writer = wire.StreamWriter(ans.model)
        data = b"".join(writer.write(e) for e in events)
        reader = wire.StreamReader()
        got = []
        for i in range(0, len(data), piece):
            got += reader.feed(data[i:i + piece])
        got += reader.close()
        assert comparable(got) == comparable(events)

    check()
