"""Relay isolation presets with the real Claude Code and Codex CLIs, offline: CLI -> gateway
(with the preset rules) -> mock upstream of the CLI's own format, which shows what it received."""
import json

import pytest

from .clients import CLAUDE, CODEX, run_claude, run_codex
from .conftest import wait_for_model
from .factories import make_key, make_provider, make_route

pytestmark = pytest.mark.e2e


def route_with_rules(live, mock_upstream, *rules, **provider_fields):
    """A virtual model (its only target the mock) with these (operation, text) rules, and a key for it."""
    from routing.models import PromptRule

    route = make_route((make_provider(mock_upstream.base_url, **provider_fields), "gpt-4o-mini"))
    for order, (operation, text) in enumerate(rules):
        PromptRule.objects.create(route=route, operation=operation, text=text, order=order)
    _, secret = make_key(routes=[route])
    wait_for_model(live, route.name, key=secret)
    return route.name, secret


def posts(mock_upstream, path):
    return [r["json"] for r in mock_upstream.requests if r["method"] == "POST" and r["path"] == path]


@pytest.mark.skipif(CLAUDE is None, reason="the `claude` CLI is not installed (.ci/clients-deps)")
@pytest.mark.parametrize("preset", [True, False], ids=["with-preset", "without"])
def test_claude_codes_billing_header_line_reaches_the_upstream_only_without_the_preset(
        live, mock_upstream, db_access, tmp_path, preset):
    rules = [("strip_billing_header", "")] if preset else []
    model, secret = route_with_rules(live, mock_upstream, *rules, ("system_append", "GATEWAY-SYSTEM"),
                                     type="anthropic")
    mock_upstream.clear()

    run = run_claude(gateway_url=live.url, key=secret, model=model, prompt="Say hello", cwd=tmp_path,
                     home=tmp_path / "home", tools="")

    assert run.stdout.startswith("Hello from mock:"), (run.returncode, run.stdout, run.stderr[-2000:])
    blocks = [block["text"] for block in posts(mock_upstream, "/v1/messages")[-1]["system"]]
    # Claude Code sends the line as a block of its own, first: the rest of its system prompt stays.
    assert blocks[0].startswith("x-anthropic-billing-header: cc_version=") != preset
    assert "x-anthropic-billing-header" not in json.dumps(blocks[1:])
    assert blocks[-1].endswith("\n\nGATEWAY-SYSTEM")


@pytest.mark.skipif(CODEX is None, reason="the `codex` CLI is not installed (.ci/clients-deps)")
@pytest.mark.parametrize("preset", [True, False], ids=["with-preset", "without"])
def test_codexs_instructions_and_developer_messages_reach_the_upstream_only_without_the_preset(
        live, mock_upstream, db_access, tmp_path, preset):
    rules = [("strip_instructions", "")] if preset else []
    model, secret = route_with_rules(live, mock_upstream, *rules, ("system_set", "GATEWAY-SYSTEM"),
                                     native_responses=True)
    mock_upstream.clear()

    run = run_codex(gateway_url=live.url, key=secret, model=model, prompt="echo hello", cwd=tmp_path,
                    home=tmp_path / "home")

    sent = posts(mock_upstream, "/v1/responses")
    assert sent, (run.returncode, run.stdout, run.stderr[-2000:])
    for body in sent:
        developer = [item for item in body["input"] if item.get("role") == "developer"]
        if preset:  # only the operator's prompt, and the conversation
            assert body["instructions"] == "GATEWAY-SYSTEM" and developer == []
        else:  # Codex's own prompt (this version sends it as a developer message): system_set leaves it alone
            assert developer and "Codex" in json.dumps(developer) + body.get("instructions", "")
