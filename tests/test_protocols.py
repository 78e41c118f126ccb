"""Every client protocol against every upstream type, through the gateway, with the official
SDKs as clients: chat completions, Anthropic Messages and OpenAI Responses in; OpenAI-
compatible, Anthropic, Gemini and Azure OpenAI upstreams out (the mock speaks each natively);
streamed and not; text, a tool round trip with two parallel calls, an image, reasoning."""
import base64
import json

import anthropic
import openai
import pytest

from providers.wire.seals import unseal

from .clients import key_for_routes, official_sdks
from .factories import make_provider, make_route

UPSTREAMS = ("openai", "anthropic", "gemini", "azure_openai")
CLIENTS = ("chat", "messages", "responses")
WEATHER = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
PIXEL = base64.b64encode(bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d49444154789c6360000002000100e221bc330000000049454e44ae426082")).decode()


@pytest.fixture(scope="module")
def routes(django_db_setup, django_db_blocker, mock_upstream, gateway):
    root = mock_upstream.base_url.rsplit("/v1", 1)[0]
    base_urls = {"openai": mock_upstream.base_url, "anthropic": mock_upstream.base_url,
                 "gemini": root + "/v1beta", "azure_openai": root + "/openai"}
    with django_db_blocker.unblock():
        routes = {}
        for kind in UPSTREAMS:
            provider = make_provider(base_urls[kind], type=kind)
            routes[kind] = make_route((provider, "mock-model"), max_attempts=1)
        return key_for_routes(gateway, routes)


@pytest.fixture(scope="module")
def sdk(gateway, routes):
    return official_sdks(gateway, routes[1])


def ask(sdk, client: str, model: str, prompt: str, *, stream: bool, tools=False, image=False):
    """One turn; returns (text, tool calls as (id, name, arguments)) as the client sees them."""
    if client == "chat":
        content = [{"type": "text", "text": prompt}]
        if image:
            content.append({"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PIXEL}"}})
        extra = {"tools": [{"type": "function", "function": {"name": "get_weather", "parameters": WEATHER}}]} \
            if tools else {}
        return chat_turn(sdk["openai"], model, [{"role": "user", "content": content}], stream, extra)
    if client == "messages":
        content = [{"type": "text", "text": prompt}]
        if image:
            content.append({"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PIXEL}})
        extra = {"tools": [{"name": "get_weather", "input_schema": WEATHER}]} if tools else {}
        return messages_turn(sdk["anthropic"], model, [{"role": "user", "content": content}], stream, extra)
    content = [{"type": "input_text", "text": prompt}]
    if image:
        content.append({"type": "input_image", "image_url": f"data:image/png;base64,{PIXEL}"})
    extra = {"tools": [{"type": "function", "name": "get_weather", "parameters": WEATHER}]} if tools else {}
    return responses_turn(sdk["openai"], model, [{"role": "user", "content": content}], stream, extra)


def chat_turn(client, model, messages, stream, extra):
    if not stream:
        message = client.chat.completions.create(model=model, messages=messages, **extra).choices[0].message
        calls = [(c.id, c.function.name, c.function.arguments) for c in message.tool_calls or []]
        return message.content or "", calls
    text, calls = "", {}
    for chunk in client.chat.completions.create(model=model, messages=messages, stream=True, **extra):
        for choice in chunk.choices:
            text += choice.delta.content or ""
            for call in choice.delta.tool_calls or []:
                entry = calls.setdefault(call.index, ["", "", ""])
                entry[0] = call.id or entry[0]
                entry[1] = (call.function.name or entry[1]) if call.function else entry[1]
                entry[2] += (call.function.arguments or "") if call.function else ""
    return text, [tuple(c) for _, c in sorted(calls.items())]


def messages_turn(client, model, messages, stream, extra):
    if stream:
        with client.messages.stream(model=model, max_tokens=200, messages=messages, **extra) as events:
            message = events.get_final_message()
    else:
        message = client.messages.create(model=model, max_tokens=200, messages=messages, **extra)
    text = "".join(b.text for b in message.content if b.type == "text")
    calls = [(b.id, b.name, b.input) for b in message.content if b.type == "tool_use"]
    return text, calls


def responses_turn(client, model, items, stream, extra):
    if stream:
        with client.responses.stream(model=model, input=items, **extra) as events:
            response = events.get_final_response()
    else:
        response = client.responses.create(model=model, input=items, **extra)
    calls = [(i.call_id, i.name, i.arguments) for i in response.output if i.type == "function_call"]
    return response.output_text, calls


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize("upstream", UPSTREAMS)
@pytest.mark.parametrize("client", CLIENTS)
def test_text_reaches_every_client_from_every_upstream(sdk, routes, client, upstream, stream):
    text, calls = ask(sdk, client, routes[0][upstream], "你好, gateway 世界", stream=stream)
    assert text.startswith("Hello from mock:") and "你好" in text and "世界" in text
    assert calls == []


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize("upstream", UPSTREAMS)
@pytest.mark.parametrize("client", CLIENTS)
def test_an_image_reaches_every_upstream(sdk, routes, mock_upstream, client, upstream, stream):
    mock_upstream.clear()
    text, _ = ask(sdk, client, routes[0][upstream], "what is this", stream=stream, image=True)
    assert "what is this" in text
    assert PIXEL in str(mock_upstream.requests[-1]["json"])


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize("upstream", UPSTREAMS)
@pytest.mark.parametrize("client", CLIENTS)
def test_a_tool_round_trip_with_two_parallel_calls(sdk, routes, client, upstream, stream):
    model = routes[0][upstream]
    _, calls = ask(sdk, client, model, 'weather in Paris <mock>{"tool_calls": 2}</mock>', stream=stream, tools=True)
    assert len(calls) == 2 and len({c[0] for c in calls}) == 2  # each call keeps its own id
    assert all(name == "get_weather" for _, name, _ in calls)
    results = {call_id: f"sunny-{i}" for i, (call_id, _, _) in enumerate(calls)}
    text = second_turn(sdk, client, model, calls, results, stream)
    assert "sunny-0" in text and "sunny-1" in text


def second_turn(sdk, client, model, calls, results, stream):
    """Send the tool results back, with the history as each protocol spells it. (The mock
    fills arguments from the prompt, fault tags included: they go back as plain arguments.)"""
    prompt = "weather in Paris"
    calls = [(i, n, {"city": "Paris"} if client == "messages" else '{"city": "Paris"}') for i, n, _ in calls]
    if client == "chat":
        messages = [{"role": "user", "content": prompt},
                    {"role": "assistant", "content": None, "tool_calls": [
                        {"id": i, "type": "function", "function": {"name": n, "arguments": a}} for i, n, a in calls]},
                    *({"role": "tool", "tool_call_id": i, "content": results[i]} for i, _, _ in calls)]
        return chat_turn(sdk["openai"], model, messages, stream, {})[0]
    if client == "messages":
        messages = [{"role": "user", "content": prompt},
                    {"role": "assistant", "content": [
                        {"type": "tool_use", "id": i, "name": n, "input": a} for i, n, a in calls]},
                    {"role": "user", "content": [
                        {"type": "tool_result", "tool_use_id": i, "content": results[i]} for i, _, _ in calls]}]
        return messages_turn(sdk["anthropic"], model, messages, stream, {})[0]
    items = [{"role": "user", "content": prompt},
             *({"type": "function_call", "call_id": i, "name": n, "arguments": a} for i, n, a in calls),
             *({"type": "function_call_output", "call_id": i, "output": results[i]} for i, _, _ in calls)]
    return responses_turn(sdk["openai"], model, items, stream, {})[0]


@pytest.mark.parametrize("upstream", UPSTREAMS)
@pytest.mark.parametrize("client", CLIENTS)
def test_errors_come_back_in_the_clients_own_shape(sdk, routes, client, upstream):
    prompt = 'fail please <mock>{"status": 400, "message": "bad things"}</mock>'
    error = {"chat": openai.BadRequestError, "responses": openai.BadRequestError,
             "messages": anthropic.BadRequestError}[client]
    with pytest.raises(error) as caught:
        ask(sdk, client, routes[0][upstream], prompt, stream=False)
    assert caught.value.status_code == 400
    body = caught.value.body
    if client == "messages":
        assert caught.value.response.json()["type"] == "error"
    assert "bad things" in str(body)


def test_count_tokens_is_the_upstreams_for_anthropic_and_a_marked_estimate_otherwise(sdk, routes, mock_upstream):
    names, secret = routes
    mock_upstream.clear()
    local = sdk["anthropic"].messages.with_raw_response.count_tokens(
        model=names["openai"], messages=[{"role": "user", "content": "count these words please"}])
    assert local.headers["x-gateway-token-count"] == "estimate"
    assert local.parse().input_tokens > 3
    assert mock_upstream.requests == []  # no upstream's rate limit spent
    upstream = sdk["anthropic"].messages.with_raw_response.count_tokens(
        model=names["anthropic"], messages=[{"role": "user", "content": "count these words please"}])
    assert "x-gateway-token-count" not in upstream.headers
    assert mock_upstream.requests[-1]["path"] == "/v1/messages/count_tokens"


def test_anthropic_beta_goes_only_to_anthropic_upstreams(sdk, routes, mock_upstream):
    names, _ = routes
    for upstream in ("anthropic", "openai"):
        mock_upstream.clear()
        sdk["anthropic"].messages.create(model=names[upstream], max_tokens=50,
                                         messages=[{"role": "user", "content": "hi"}],
                                         extra_headers={"anthropic-beta": "made-up-beta-2099"})
        sent = mock_upstream.requests[-1]["headers"].get("anthropic-beta")
        assert sent == ("made-up-beta-2099" if upstream == "anthropic" else None)


def test_stored_responses_and_compaction_need_an_upstream_that_speaks_responses(sdk, routes):
    names, _ = routes
    with pytest.raises(openai.BadRequestError):
        sdk["openai"].responses.retrieve("resp_123")
    with pytest.raises(openai.APIStatusError) as caught:
        sdk["openai"].post("/responses/compact", body={"model": names["openai"], "input": "hi"}, cast_to=object)
    assert caught.value.status_code == 501
    with pytest.raises(openai.BadRequestError) as caught:
        sdk["openai"].responses.create(model=names["openai"], input="hi", previous_response_id="resp_123")
    assert "previous_response_id" in str(caught.value.body)


def test_anthropic_clients_list_models_in_anthropics_format(sdk, routes):
    names, _ = routes
    listed = sdk["anthropic"].models.list()
    assert set(names.values()) <= {model.id for model in listed.data}
    assert all(model.type == "model" and model.created_at for model in listed.data)
    one = sdk["anthropic"].models.retrieve(names["gemini"])
    assert one.id == names["gemini"] and one.display_name == names["gemini"]
    assert sdk["openai"].models.retrieve(names["gemini"]).object == "model"  # OpenAI's for OpenAI clients


# ---------------------------------------------------------------- reasoning across a tool turn
# Every upstream here thinks on every turn and, like DeepSeek, Gemini and Anthropic do, rejects
# a tool turn whose earlier reasoning does not come back with it (the mock's require_signature).
REASONING_UPSTREAMS = ("openai", "gemini", "anthropic")
THINKS = {"reasoning": True, "require_signature": True}
REASONER = "mock-reasoner"  # the upstream model of every reasoning route
OTHER_REASONER = "mock-reasoner-2"


@pytest.fixture(scope="module")
def reasoning_routes(django_db_setup, django_db_blocker, mock_upstream, gateway):
    root = mock_upstream.base_url.rsplit("/v1", 1)[0]
    base_urls = {"openai": mock_upstream.base_url, "anthropic": mock_upstream.base_url, "gemini": root + "/v1beta",
                 "responses": mock_upstream.base_url, "openai-lenient": mock_upstream.base_url,
                 "anthropic-lenient": mock_upstream.base_url, "responses-lenient": mock_upstream.base_url}
    with django_db_blocker.unblock():
        routes = {}
        for kind, url in base_urls.items():
            # *-lenient: a reasoning upstream that accepts a turn without its earlier reasoning
            lenient = kind.endswith("-lenient")
            kind = kind.removesuffix("-lenient")
            kind_fields = {"type": "openai", "native_responses": True} if kind == "responses" else {"type": kind}
            provider = make_provider(url, fault={"reasoning": True} if lenient else THINKS, **kind_fields)
            routes[kind + ("-lenient" if lenient else "")] = make_route((provider, REASONER), max_attempts=1)
            if lenient and kind in ("anthropic", "responses"):  # the same provider, another model
                routes[f"{kind}-other-model"] = make_route((provider, OTHER_REASONER), max_attempts=1)
        return key_for_routes(gateway, routes)


@pytest.fixture(scope="module")
def reasoning_sdk(gateway, reasoning_routes):
    return official_sdks(gateway, reasoning_routes[1])


MESSAGES_TOOLS = [{"name": "get_weather", "input_schema": WEATHER}]
RESPONSES_TOOLS = [{"type": "function", "name": "get_weather", "parameters": WEATHER}]
THINKING = {"type": "enabled", "budget_tokens": 1024}


def thinking_turn(client, model, messages, stream):
    """One Messages turn with thinking on; the raw answer (for its x-request-id) and the message."""
    kwargs = dict(model=model, max_tokens=2000, messages=messages, tools=MESSAGES_TOOLS, thinking=THINKING)
    if stream:
        with client.messages.with_streaming_response.create(stream=True, **kwargs) as raw:
            request_id = raw.headers["x-request-id"]
            with client.messages.stream(**kwargs) as events:  # the SDK's own accumulation
                return request_id, events.get_final_message()
    raw = client.messages.with_raw_response.create(**kwargs)
    return raw.headers["x-request-id"], raw.parse()


def reasoning_turn(client, model, items, stream):
    kwargs = dict(model=model, input=items, tools=RESPONSES_TOOLS, reasoning={"effort": "low"}, store=False,
                  include=["reasoning.encrypted_content"])
    if stream:
        with client.responses.stream(**kwargs) as events:
            return events.get_final_response()
    return client.responses.create(**kwargs)


def last_upstream_body(mock_upstream):
    return mock_upstream.requests[-1]["json"]


def answered_tool_turn(prompt: list, first) -> list:
    """The conversation after a Messages answer that called tools: its turn as the client got it,
    then a result for each call ("sunny-0", "sunny-1", ...)."""
    calls = [b for b in first.content if b.type == "tool_use"]
    return prompt + [{"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in first.content]},
                     {"role": "user", "content": [{"type": "tool_result", "tool_use_id": c.id, "content": f"sunny-{i}"}
                                                  for i, c in enumerate(calls)]}]


def signed(seals: list[str], client: str) -> list[str]:
    """The signatures behind a client's seals (unsigned reasoning is sealed empty: left out)."""
    return [bare for bare in (unseal(value, client)[0] for value in seals) if bare]


def replayed_reasoning(upstream: str, body: dict):
    """What the upstream received of the earlier turn's reasoning: chat's reasoning_content,
    Gemini's thoughtSignature on the function call, Anthropic's signed thinking block."""
    if upstream == "openai":
        return [m.get("reasoning_content") for m in body["messages"] if m["role"] == "assistant"]
    if upstream == "responses":
        return [i.get("encrypted_content") for i in body["input"] if i.get("type") == "reasoning"]
    if upstream == "gemini":
        return [p.get("thoughtSignature") for c in body["contents"] if c.get("role") == "model"
                for p in c["parts"] if p.get("thoughtSignature")]
    return [(b.get("thinking"), b.get("signature")) for m in body["messages"] if m["role"] == "assistant"
            for b in m["content"] if b.get("type") == "thinking"]


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize("upstream", REASONING_UPSTREAMS)
def test_an_anthropic_client_keeps_reasoning_across_a_tool_turn(reasoning_sdk, reasoning_routes, mock_upstream,
                                                                 upstream, stream):
    model = reasoning_routes[0][upstream]
    client = reasoning_sdk["anthropic"]
    prompt = [{"role": "user", "content": "weather in Paris"}]
    _, first = thinking_turn(client, model, prompt, stream)
    thinking = [b for b in first.content if b.type == "thinking"]
    calls = [b for b in first.content if b.type == "tool_use"]
    assert thinking and thinking[0].thinking.startswith("Thinking about") and calls
    signatures = [b.signature for b in thinking if b.signature]
    if upstream != "openai":  # (reasoning_content comes unsigned: its signature is an empty seal)
        assert signatures, "signed reasoning reaches the client with its signature"
    turn1_upstream = last_upstream_body(mock_upstream)

    history = answered_tool_turn(prompt, first)
    _, second = thinking_turn(client, model, history, stream)

    # The upstream would have answered 400 without its reasoning: the tool result made it through.
    assert "sunny-0" in "".join(b.text for b in second.content if b.type == "text")
    replayed = replayed_reasoning(upstream, last_upstream_body(mock_upstream))
    assert replayed and replayed_reasoning(upstream, turn1_upstream) == []
    if upstream == "openai":
        assert replayed == [thinking[0].thinking]
    else:  # the signature the client held, sealed with the upstream model, went back bare, byte for byte
        fmt = {"gemini": "gemini", "anthropic": "anthropic_messages"}[upstream]
        assert all(sig.startswith(f"{fmt}@{REASONER}:") for sig in signatures)
        bare = signed(signatures, "anthropic_messages")
        assert replayed == (bare if upstream == "gemini" else [(thinking[0].thinking, bare[0])])


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize("upstream", REASONING_UPSTREAMS + ("responses",))
def test_a_responses_client_keeps_reasoning_items_across_a_tool_turn(reasoning_sdk, reasoning_routes, mock_upstream,
                                                                     upstream, stream):
    model = reasoning_routes[0][upstream]
    client = reasoning_sdk["openai"]
    prompt = [{"role": "user", "content": "weather in Paris"}]
    first = reasoning_turn(client, model, prompt, stream)
    reasoning = [i for i in first.output if i.type == "reasoning"]
    calls = [i for i in first.output if i.type == "function_call"]
    assert reasoning and calls

    items = prompt + [i.model_dump(exclude_none=True) for i in first.output] + [
        {"type": "function_call_output", "call_id": c.call_id, "output": f"sunny-{i}"} for i, c in enumerate(calls)]
    second = reasoning_turn(client, model, items, stream)

    assert "sunny-0" in second.output_text
    replayed = replayed_reasoning(upstream, last_upstream_body(mock_upstream))
    assert replayed
    sealed = [r.encrypted_content for r in reasoning if r.encrypted_content]
    if upstream == "openai":
        assert replayed == ["\n\n".join(part.text for part in reasoning[0].summary)]
    else:  # encrypted_content, sealed with the upstream model, went back bare, byte for byte
        fmt = {"gemini": "gemini", "anthropic": "anthropic_messages", "responses": "openai_responses"}[upstream]
        assert sealed and all(s.startswith(f"{fmt}@{REASONER}:") for s in sealed)
        bare = signed(sealed, "openai_responses")
        assert bare == ([sig for _, sig in replayed] if upstream == "anthropic" else replayed)


@pytest.mark.parametrize("other", ["openai-lenient", "anthropic-lenient"])
def test_signed_reasoning_from_another_upstream_is_dropped_with_a_diagnostic(reasoning_sdk, reasoning_routes,
                                                                             mock_upstream, db_access, other):
    from .conftest import wait_for_log

    names, _ = reasoning_routes
    client = reasoning_sdk["anthropic"]
    prompt = [{"role": "user", "content": "weather in Paris"}]
    _, first = thinking_turn(client, names["gemini"], prompt, stream=False)
    signatures = [b.signature for b in first.content if b.type == "thinking" and b.signature]
    assert signatures
    history = answered_tool_turn(prompt, first)

    # The conversation moves to another upstream model: Gemini's signed thought is not valid there.
    request_id, second = thinking_turn(client, names[other], history, stream=False)

    assert "sunny" in "".join(b.text for b in second.content if b.type == "text")
    sent = json.dumps(last_upstream_body(mock_upstream))
    assert not any(bare in sent for bare in signed(signatures, "anthropic_messages")), sent
    row = wait_for_log(request_id)
    assert "messages.1" in row.diagnostics, row.diagnostics  # the path in the body the client sent
    assert "reasoning" in row.diagnostics, row.diagnostics


# (first route, the seal its reasoning reaches the client with, the route of the next turn, why it is dropped)
ANTHROPIC_MOVES = {
    "to-another-model": ("anthropic", f"anthropic_messages@{REASONER}:", "anthropic-other-model",
                         f"signed reasoning from {REASONER} is not valid for {OTHER_REASONER}"),
    "unsigned-chat-reasoning": ("openai", f"openai_chat@{REASONER}:", "anthropic-lenient",
                                "Anthropic accepts only reasoning it signed"),
}


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize("move", ANTHROPIC_MOVES)
def test_anthropic_gets_back_only_thinking_it_signed_for_that_model(reasoning_sdk, reasoning_routes, mock_upstream,
                                                                   db_access, move, stream):
    from .conftest import wait_for_log

    first_route, seal_prefix, next_route, reason = ANTHROPIC_MOVES[move]
    names, _ = reasoning_routes
    client = reasoning_sdk["anthropic"]
    prompt = [{"role": "user", "content": "weather in Paris"}]
    _, first = thinking_turn(client, names[first_route], prompt, stream)
    signatures = [b.signature for b in first.content if b.type == "thinking"]
    assert signatures and all(sig.startswith(seal_prefix) for sig in signatures)

    # The same conversation moves on (as a failover or an edited route would move it).
    request_id, second = thinking_turn(client, names[next_route], answered_tool_turn(prompt, first), stream)

    assert "sunny" in "".join(b.text for b in second.content if b.type == "text")
    sent = last_upstream_body(mock_upstream)
    assert not any(b.get("type") == "thinking" for m in sent["messages"] if isinstance(m["content"], list)
                   for b in m["content"]), sent
    assert "thinking" not in sent  # Anthropic refuses thinking that continues a tool turn without its own
    assert reason in wait_for_log(request_id).diagnostics


@pytest.mark.parametrize("first_upstream", ["responses", "openai"])  # (chat: unsigned reasoning, sealed empty)
def test_encrypted_reasoning_goes_back_only_to_the_responses_model_that_made_it(reasoning_sdk, reasoning_routes,
                                                                               mock_upstream, db_access,
                                                                               first_upstream):
    names, _ = reasoning_routes
    client = reasoning_sdk["openai"]
    prompt = [{"role": "user", "content": "weather in Paris"}]
    first = reasoning_turn(client, names[first_upstream], prompt, stream=True)
    assert [i for i in first.output if i.type == "reasoning" and i.encrypted_content]
    calls = [i for i in first.output if i.type == "function_call"]
    items = prompt + [i.model_dump(exclude_none=True) for i in first.output] + [
        {"type": "function_call_output", "call_id": c.call_id, "output": "sunny"} for c in calls]

    second = reasoning_turn(client, names["responses-other-model"], items, stream=True)

    assert "sunny" in second.output_text
    sent = last_upstream_body(mock_upstream)
    assert sent["model"] == OTHER_REASONER
    assert not [i for i in sent["input"] if i.get("type") == "reasoning"], sent
