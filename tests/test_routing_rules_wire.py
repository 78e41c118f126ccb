"""Prompt rules over real sockets: each client protocol, through the gateway, with the official
SDKs, to an upstream of the same protocol (sent as is but for the rules) and of another
(translated after the rules); the mock upstream shows what the upstream received."""
import pytest

from .clients import key_for_routes, official_sdks
from .factories import make_provider, make_route

BILLING = "x-anthropic-billing-header: cc_version=2.1.38.713; cc_entrypoint=cli; cch=90d92;"
UPSTREAMS = ("openai", "anthropic")


@pytest.fixture(scope="module")
def routes(django_db_setup, django_db_blocker, mock_upstream, gateway):
    from routing.models import PromptRule

    with django_db_blocker.unblock():
        routes = {}
        for kind in UPSTREAMS:
            for native_responses in (False, True) if kind == "openai" else (False,):
                provider = make_provider(mock_upstream.base_url, type=kind, native_responses=native_responses)
                route = make_route((provider, "mock-model"), max_attempts=1)
                for order, (operation, text) in enumerate([("strip_billing_header", ""),
                                                           ("strip_instructions", ""),
                                                           ("system_append", "GATEWAY-SYSTEM"),
                                                           ("user_template", "{{user_prompt}} [GATEWAY-USER]")]):
                    PromptRule.objects.create(route=route, operation=operation, text=text, order=order)
                routes[kind + ("-responses" if native_responses else "")] = route
        return key_for_routes(gateway, routes)


@pytest.fixture(scope="module")
def sdk(gateway, routes):
    return official_sdks(gateway, routes[1])


def received(mock_upstream) -> tuple[str, str]:
    """(system prompt, last user text) of the last request the upstream received, whatever its format."""
    body = mock_upstream.requests[-1]["json"]
    if "system" in body or mock_upstream.requests[-1]["path"].endswith("/messages"):
        system, turns = body.get("system", ""), body["messages"]
    else:
        system = "\n".join(m["content"] if isinstance(m["content"], str) else m["content"][0]["text"]
                           for m in body["messages"] if m["role"] in ("system", "developer"))
        turns = body["messages"]
    if isinstance(system, list):
        system = "\n".join(block["text"] for block in system)
    user = [t for t in turns if t.get("role") == "user"][-1]["content"]
    if isinstance(user, list):
        user = "".join(part.get("text", "") for part in user)
    return system, user


@pytest.mark.parametrize("upstream", UPSTREAMS)
@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_claude_code_style_requests_lose_the_billing_line_and_gain_the_rules(sdk, routes, mock_upstream,
                                                                            upstream, stream):
    mock_upstream.clear()
    request = dict(model=routes[0][upstream], max_tokens=50, system=[
        {"type": "text", "text": BILLING}, {"type": "text", "text": "You are Claude Code.",
                                            "cache_control": {"type": "ephemeral"}}],
        messages=[{"role": "user", "content": "list files"}])
    if stream:
        with sdk["anthropic"].messages.stream(**request) as events:
            text = events.get_final_text()
    else:
        text = sdk["anthropic"].messages.create(**request).content[0].text
    system, user = received(mock_upstream)
    assert "x-anthropic-billing-header" not in system
    assert system.startswith("You are Claude Code.") and system.endswith("GATEWAY-SYSTEM")
    assert user == "list files [GATEWAY-USER]" and "GATEWAY-USER" in text
    if upstream == "anthropic":  # same protocol: the client's blocks go out as sent, cache marks and all
        assert mock_upstream.requests[-1]["json"]["system"] == [
            {"type": "text", "text": "You are Claude Code.\n\nGATEWAY-SYSTEM", "cache_control": {"type": "ephemeral"}}]


@pytest.mark.parametrize("upstream", UPSTREAMS)
@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_chat_requests_get_the_same_rules(sdk, routes, mock_upstream, upstream, stream):
    mock_upstream.clear()
    messages = [{"role": "system", "content": "Be kind."}, {"role": "developer", "content": "Injected by a tool."},
                {"role": "user", "content": [{"type": "text", "text": "hello"}]}]
    completion = sdk["openai"].chat.completions.create(model=routes[0][upstream], messages=messages, stream=stream)
    text = "".join(c.choices[0].delta.content or "" for c in completion if c.choices) if stream \
        else completion.choices[0].message.content
    system, user = received(mock_upstream)
    assert system == "Be kind.\n\nGATEWAY-SYSTEM" and "Injected" not in str(mock_upstream.requests[-1]["json"])
    assert user == "hello [GATEWAY-USER]" and "GATEWAY-USER" in text


@pytest.mark.parametrize("upstream", ["openai", "openai-responses", "anthropic"])
@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_codex_style_responses_lose_instructions_and_developer_messages(sdk, routes, mock_upstream, upstream, stream):
    mock_upstream.clear()
    request = dict(model=routes[0][upstream], instructions="You are Codex, a coding agent.", input=[
        {"type": "message", "role": "developer", "content": [{"type": "input_text", "text": "sandbox: read-only"}]},
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "fix it"}]}])
    if stream:
        with sdk["openai"].responses.stream(**request) as events:
            text = events.get_final_response().output_text
    else:
        text = sdk["openai"].responses.create(**request).output_text
    sent = mock_upstream.requests[-1]
    assert "Codex" not in str(sent["json"]) and "sandbox" not in str(sent["json"])
    if upstream == "openai-responses":  # same protocol, sent as is: the system prompt is now the instructions
        assert sent["path"].endswith("/responses") and sent["json"]["instructions"] == "GATEWAY-SYSTEM"
        assert sent["json"]["input"][-1]["content"] == [{"type": "input_text", "text": "fix it [GATEWAY-USER]"}]
    else:
        assert received(mock_upstream) == ("GATEWAY-SYSTEM", "fix it [GATEWAY-USER]")
    assert "GATEWAY-USER" in text
