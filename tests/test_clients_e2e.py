"""Claude Code and Codex CLI, end to end and offline: CLI -> gateway -> upstream, above all a
chat-only upstream (translated both ways), and one that speaks the CLI's own format.

Each test lets the real CLI run one tool round trip through the gateway: the mock upstream
answers the prompt with a tool call whose argument is the prompt itself (a shell command),
the CLI runs it, sends the output back, and the mock's final text quotes it. The command
reads a file holding a fresh random token that appears in no prompt, so the token can only
reach the final answer through the tool. Install the CLIs with .ci/clients-deps.
The last test lets Codex use its preferred transport, a WebSocket on /v1/responses.
"""
import json
import secrets
import time

import pytest
from .clients import CLAUDE, CODEX, run_claude, run_codex
from .conftest import PROVIDER_SECRET, wait_for_model
from .factories import make_key, make_provider, make_route


def needs(binary, name):
    """Mark a test as driving the `name` CLI: e2e, and skipped when it is not installed."""
    skip = pytest.mark.skipif(binary is None, reason=f"the `{name}` CLI is not installed (.ci/clients-deps)")
    return lambda test: pytest.mark.e2e(skip(test))


needs_claude = needs(CLAUDE, "claude")
needs_codex = needs(CODEX, "codex")


# How each kind of upstream is configured, and the path the mock sees its requests on.
UPSTREAMS = {
    "chat": ({}, "/v1/chat/completions"),  # OpenAI-compatible, chat completions only
    "anthropic": ({"type": "anthropic"}, "/v1/messages"),  # Messages in, Messages out: no translation
    "responses": ({"native_responses": True}, "/v1/responses"),  # speaks Responses: no translation
}
UPSTREAM_MODEL = "gpt-4o-mini"


@pytest.fixture
def route_to(live, mock_upstream, db_access):
    """route_to(kind): a virtual model whose only target is the mock as that kind of upstream,
    and a virtual key for it: (model name, key secret)."""
    def make(kind):
        fields, _ = UPSTREAMS[kind]
        route = make_route((make_provider(mock_upstream.base_url, **fields), UPSTREAM_MODEL))
        _, secret = make_key(routes=[route])
        wait_for_model(live, route.name, key=secret)
        return route.name, secret

    return make


@pytest.fixture
def workspace(tmp_path):
    """A working directory with note.txt holding a token no prompt contains."""
    token = f"note-{secrets.token_hex(8)}"
    work = tmp_path / "work"
    work.mkdir()
    (work / "note.txt").write_text(token + "\n")
    return work, token


def upstream_requests(mock_upstream, kind):
    return [r for r in mock_upstream.requests if r["method"] == "POST" and r["path"] == UPSTREAMS[kind][1]]


def assert_one_tool_round_trip_reached_the_upstream(mock_upstream, kind, token, secret):
    calls = upstream_requests(mock_upstream, kind)
    assert len(calls) == 2, [(r["method"], r["path"]) for r in mock_upstream.requests]
    first, second = (json.dumps(c["json"]) for c in calls)
    # The token is in no prompt: only the tool's output, sent back in the second turn, holds it.
    assert calls[0]["json"]["tools"] and token not in first and token in second
    assert {c["json"]["model"] for c in calls} == {UPSTREAM_MODEL}
    # The upstream sees the provider's key, never the client's virtual key.
    assert {c["api_key"] for c in calls} == {PROVIDER_SECRET}
    assert all(secret not in str(r) for r in mock_upstream.requests)


@needs_claude
@pytest.mark.parametrize("upstream", ["chat", "anthropic"])
def test_claude_code_runs_a_bash_tool_through_messages(live, mock_upstream, route_to, upstream, workspace, tmp_path):
    model, secret = route_to(upstream)
    work, token = workspace

    run = run_claude(gateway_url=live.url, key=secret, model=model, prompt="cat note.txt",
                     cwd=work, home=tmp_path / "home")

    # Both CLIs can exit 0 having printed nothing useful: the text is what counts.
    assert f"the tool said: {token}" in run.stdout, (run.returncode, run.stdout, run.stderr[-2000:])
    assert_one_tool_round_trip_reached_the_upstream(mock_upstream, upstream, token, secret)


@needs_claude
def test_claude_code_in_its_default_mode_gets_an_answer_from_a_chat_upstream(live, mock_upstream, route_to,
                                                                             workspace, tmp_path):
    model, secret = route_to("chat")
    work, _ = workspace

    # Without --bare, Claude Code moves its environment notes into a message of role "system".
    run = run_claude(gateway_url=live.url, key=secret, model=model, prompt="Say hello", cwd=work,
                     home=tmp_path / "home", tools="", bare=False)

    assert run.stdout.startswith("Hello from mock:"), (run.returncode, run.stdout, run.stderr[-2000:])
    calls = upstream_requests(mock_upstream, "chat")
    assert calls and any(m["role"] == "system" and "You are powered by the model" in str(m["content"])
                         for m in calls[-1]["json"]["messages"])


@needs_codex
@pytest.mark.parametrize("upstream", ["chat", "responses"])
def test_codex_runs_a_shell_command_through_responses(live, mock_upstream, route_to, upstream, workspace, tmp_path):
    model, secret = route_to(upstream)
    work, token = workspace

    run = run_codex(gateway_url=live.url, key=secret, model=model, prompt="cat note.txt",
                    cwd=work, home=tmp_path / "home")

    assert "the tool said: " in run.stdout and token in run.stdout, (run.returncode, run.stdout, run.stderr[-2000:])
    assert_one_tool_round_trip_reached_the_upstream(mock_upstream, upstream, token, secret)


@needs_codex
@pytest.mark.parametrize("upstream", ["chat", "responses"])
def test_codex_runs_a_shell_command_over_a_websocket(live, mock_upstream, route_to, upstream, workspace, tmp_path,
                                                     db_access):
    from routing.models import RequestLog

    model, secret = route_to(upstream)
    work, token = workspace

    run = run_codex(gateway_url=live.url, key=secret, model=model, prompt="cat note.txt",
                    cwd=work, home=tmp_path / "home", websockets=True)

    assert token in run.stdout, (run.returncode, run.stdout, run.stderr[-2000:])
    # Codex stayed on its WebSocket: no fallback to HTTP, no reconnects.
    assert "falling back to HTTP" not in run.stderr and "Reconnecting" not in run.stderr, run.stderr[-2000:]
    # Each turn reached the upstream whole: previous_response_id was expanded by the gateway.
    assert_one_tool_round_trip_reached_the_upstream(mock_upstream, upstream, token, secret)
    rows = wait_for_rows(lambda: RequestLog.objects.filter(model_requested=model, endpoint="responses_websocket"), 2)
    # Codex's first frame is a prewarm (generate: false) the gateway answers itself; then
    # one row per turn, each a request of its own.
    served = [r for r in rows if not r.note.startswith("prewarm")]
    assert len(served) == 2 and all(r.status == 200 and r.provider for r in served), \
        [(r.status, r.note, r.error_message) for r in rows]


def wait_for_rows(query, count, timeout=10):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rows = list(query())
        if len([r for r in rows if not r.note.startswith("prewarm")]) >= count:
            return rows
        time.sleep(0.05)
    return list(query())


@needs_codex
def test_codex_with_a_wrong_key_is_told_at_once_over_the_websocket(live, mock_upstream, route_to, workspace,
                                                                  tmp_path):
    model, _ = route_to("chat")
    work, _ = workspace

    started = time.monotonic()
    run = run_codex(gateway_url=live.url, key="sk-gw-wrong-key-0000", model=model, prompt="cat note.txt",
                    cwd=work, home=tmp_path / "home", websockets=True)
    took = time.monotonic() - started

    # Codex gives up at once on a refused handshake whose status is 400, and shows its body.
    assert run.returncode != 0 and took < 10, (run.returncode, took, run.stderr[-2000:])
    assert "Incorrect API key provided." in run.stderr and "Reconnecting" not in run.stderr, run.stderr[-2000:]
    assert not upstream_requests(mock_upstream, "chat")
