"""Pure functions of routing: prompt rules and target ordering."""
import datetime
import random
import re
from collections import Counter

from routing.resolve import order_targets
from routing.rules import OPERATIONS, apply_rules
from routing.snapshot import ProviderEntry, RouteEntry, RuleEntry, TargetEntry

BODY = {"model": "m", "messages": [
    {"role": "system", "content": "Be helpful."},
    {"role": "user", "content": "first"},
    {"role": "assistant", "content": "ok"},
    {"role": "user", "content": [{"type": "text", "text": "second SECRET"}, {"type": "image_url"}]},
]}


def rule(operation, text="", pattern=None):
    return RuleEntry(operation=operation, pattern=re.compile(pattern) if pattern else None, text=text)


def test_system_rules_prepend_append_and_replace():
    out = apply_rules(BODY, (rule("system_prepend", "Rules."), rule("system_append", "Bye.")))
    assert out["messages"][0]["content"] == "Rules.\n\nBe helpful.\n\nBye."
    assert apply_rules(BODY, (rule("system_replace", "New."),))["messages"][0]["content"] == "New."


def test_a_system_rule_adds_a_system_message_when_there_is_none():
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    assert apply_rules(body, (rule("system_prepend", "Rules."),))["messages"][0] == {"role": "system", "content": "Rules."}


def test_user_rules_touch_the_last_user_message_text_parts_included():
    out = apply_rules(BODY, (rule("user_prepend", "Note:"), rule("user_append", "Thanks.")))
    assert out["messages"][1]["content"] == "first"
    assert out["messages"][3]["content"][0]["text"] == "Note:\n\nsecond SECRET\n\nThanks."
    assert out["messages"][3]["content"][1] == {"type": "image_url"}


def test_replace_and_remove_use_patterns_literally_in_the_replacement():
    out = apply_rules(BODY, (rule("replace", r"\1 not a group", "SECRET"),))
    assert out["messages"][3]["content"][0]["text"] == r"second \1 not a group"
    assert apply_rules(BODY, (rule("remove", pattern=r"\s*SECRET"),))["messages"][3]["content"][0]["text"] == "second"


def test_rules_leave_the_input_unchanged_and_pass_other_fields():
    before = repr(BODY)
    out = apply_rules({**BODY, "temperature": 0}, (rule("system_replace", "x"), rule("user_append", "y")))
    assert repr(BODY) == before and out["temperature"] == 0


def test_bodies_without_messages_are_untouched():
    body = {"model": "m", "input": "x"}
    assert apply_rules(body, (rule("system_prepend", "x"),)) is body



# The same rules on each wire format's literal bodies.

TODAY = datetime.date(2026, 12, 1)
IMAGE = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBOR"}}
CLAUDE_CODE = {"model": "claude", "max_tokens": 64, "system": [
    {"type": "text", "text": "x-anthropic-billing-header: cc_version=2.1.38.713; cc_entrypoint=cli; cch=90d92;"},
    {"type": "text", "text": "You are Claude Code.", "cache_control": {"type": "ephemeral"}},
], "messages": [
    {"role": "user", "content": [{"type": "text", "text": "look"}, IMAGE]},
    {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "ls", "input": {}}]},
    {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "a.txt"}]},
]}
CODEX = {"model": "gpt", "instructions": "You are Codex.", "input": [
    {"type": "message", "role": "developer", "content": [{"type": "input_text", "text": "sandbox: on"}]},
    {"type": "message", "role": "user", "content": [
        {"type": "input_text", "text": "fix it"}, {"type": "input_image", "image_url": "data:image/png;base64,AA"}]},
], "store": False}


def apply(body, wire, *rules):
    return apply_rules(body, rules, wire, today=TODAY)


def test_anthropic_system_blocks_keep_their_cache_marks_when_a_rule_appends():
    out = apply(CLAUDE_CODE, "anthropic_messages", rule("system_append", "Be brief."))
    assert out["system"][1] == {"type": "text", "text": "You are Claude Code.\n\nBe brief.",
                                "cache_control": {"type": "ephemeral"}}
    assert out["system"][0] == CLAUDE_CODE["system"][0]


def test_anthropic_system_string_is_prepended_and_a_missing_one_is_created():
    body = {"model": "c", "system": "Old.", "messages": [{"role": "user", "content": "hi"}]}
    assert apply(body, "anthropic_messages", rule("system_prepend", "New."))["system"] == "New.\n\nOld."
    bare = {"model": "c", "messages": [{"role": "user", "content": "hi"}]}
    out = apply(bare, "anthropic_messages", rule("system_prepend", "New."))
    assert out == {**bare, "system": "New."}


def test_system_set_fills_only_an_empty_system_prompt():
    assert apply(CLAUDE_CODE, "anthropic_messages", rule("system_set", "Default.")) == CLAUDE_CODE
    chat = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    assert apply(chat, "openai_chat", rule("system_set", "Default."))["messages"][0] == {
        "role": "system", "content": "Default."}


def test_system_replace_keeps_the_first_text_block_and_drops_the_other_text():
    out = apply(CLAUDE_CODE, "anthropic_messages", rule("system_replace", "Only this."))
    assert out["system"] == [{"type": "text", "text": "Only this."}]


def test_responses_instructions_are_the_system_prompt():
    out = apply(CODEX, "openai_responses", rule("system_prepend", "Gateway."), rule("system_append", "End."))
    assert out["instructions"] == "Gateway.\n\nYou are Codex.\n\nEnd."
    assert out["input"] == CODEX["input"] and out["store"] is False


def test_responses_without_instructions_use_their_developer_message():
    body = {"model": "gpt", "input": CODEX["input"]}
    out = apply(body, "openai_responses", rule("system_append", "End."))
    assert out["input"][0]["content"] == [{"type": "input_text", "text": "sandbox: on\n\nEnd."}]
    assert "instructions" not in out


def test_responses_user_text_is_edited_and_the_image_part_kept():
    out = apply(CODEX, "openai_responses", rule("user_prepend", "Note:"), rule("user_append", "Thanks."))
    assert out["input"][1]["content"] == [{"type": "input_text", "text": "Note:\n\nfix it\n\nThanks."},
                                          CODEX["input"][1]["content"][1]]


def test_a_responses_input_string_stays_a_string():
    body = {"model": "gpt", "input": "hello"}
    assert apply(body, "openai_responses", rule("user_append", "Bye."))["input"] == "hello\n\nBye."


def test_user_rules_skip_a_turn_that_only_carries_tool_results():
    out = apply(CLAUDE_CODE, "anthropic_messages", rule("user_append", "(via gateway)"))
    assert out["messages"][0]["content"] == [{"type": "text", "text": "look\n\n(via gateway)"}, IMAGE]
    assert out["messages"][2] == CLAUDE_CODE["messages"][2]


def test_a_user_rule_adds_a_text_part_to_an_image_only_message():
    body = {"model": "m", "messages": [{"role": "user", "content": [IMAGE, {"type": "text", "text": ""}]}]}
    out = apply(body, "anthropic_messages", rule("user_append", "Describe."))
    assert out["messages"][0]["content"] == [IMAGE, {"type": "text", "text": "Describe."}]


def test_the_template_fills_the_user_prompt_the_date_and_the_model():
    template = "[{{date}} on {{ model }}] {{user_prompt}}"
    chat = apply(BODY, "openai_chat", rule("user_template", template))
    assert chat["messages"][3]["content"] == [{"type": "text", "text": "[2026-12-01 on m] second SECRET"},
                                              {"type": "image_url"}]
    responses = apply({"model": "gpt", "input": "hi"}, "openai_responses", rule("user_template", template))
    assert responses["input"] == "[2026-12-01 on gpt] hi"


def test_inject_once_changes_only_the_first_turn_of_a_conversation():
    first = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    out = apply(first, "anthropic_messages", rule("inject_once", "Context."))
    assert out["messages"][0]["content"] == "Context.\n\nhi"
    assert apply(CLAUDE_CODE, "anthropic_messages", rule("inject_once", "Context.")) == CLAUDE_CODE
    assert apply(BODY, "openai_chat", rule("inject_once", "Context.")) == BODY
    assert apply(CODEX, "openai_responses", rule("inject_once", "Context."))["input"][1]["content"][0]["text"] \
        == "Context.\n\nfix it"
    follow_up = {"model": "gpt", "previous_response_id": "resp_1", "input": "and now?"}
    assert apply(follow_up, "openai_responses", rule("inject_once", "Context.")) == follow_up


def test_patterns_reach_the_system_prompt_and_every_message_of_each_format():
    out = apply(CLAUDE_CODE, "anthropic_messages", rule("replace", "Agent", r"Claude Code"))
    assert out["system"][1]["text"] == "You are Agent." and out["messages"][2] == CLAUDE_CODE["messages"][2]
    out = apply(CODEX, "openai_responses", rule("remove", pattern=r"\s*Codex\.?"), rule("remove", pattern="it$"))
    assert out["instructions"] == "You are" and out["input"][1]["content"][0]["text"] == "fix "


def test_strip_billing_header_removes_only_claude_codes_per_request_line():
    out = apply(CLAUDE_CODE, "anthropic_messages", rule("strip_billing_header"))
    assert out["system"] == [CLAUDE_CODE["system"][1]]
    as_string = {**CLAUDE_CODE, "system": CLAUDE_CODE["system"][0]["text"] + "\nYou are Claude Code."}
    assert apply(as_string, "anthropic_messages", rule("strip_billing_header"))["system"] == "You are Claude Code."
    plain = {**CLAUDE_CODE, "system": "Say x-anthropic-billing-header: no."}
    assert apply(plain, "anthropic_messages", rule("strip_billing_header")) == plain


def test_strip_system_removes_claude_codes_system_blocks_and_every_system_turn():
    out = apply(CLAUDE_CODE, "anthropic_messages", rule("strip_system"))
    assert "system" not in out and out["messages"] == CLAUDE_CODE["messages"]
    out = apply(BODY, "openai_chat", rule("strip_system"))
    assert [m["role"] for m in out["messages"]] == ["user", "assistant", "user"]


def test_strip_instructions_removes_codexs_instructions_and_developer_messages():
    out = apply(CODEX, "openai_responses", rule("strip_instructions"))
    assert "instructions" not in out and out["input"] == [CODEX["input"][1]]
    chat = {"model": "m", "messages": [{"role": "system", "content": "S"}, {"role": "developer", "content": "D"},
                                       {"role": "user", "content": "u"}]}
    assert [m["role"] for m in apply(chat, "openai_chat", rule("strip_instructions"))["messages"]] == ["system", "user"]
    assert apply(CLAUDE_CODE, "anthropic_messages", rule("strip_instructions")) == CLAUDE_CODE


def test_rules_never_modify_the_bodies_they_are_given():
    before = repr((CLAUDE_CODE, CODEX))
    for operation in OPERATIONS:
        r = rule(operation, "T {{user_prompt}}", pattern="o" if operation in ("replace", "remove") else None)
        apply(CLAUDE_CODE, "anthropic_messages", r)
        apply(CODEX, "openai_responses", r)
    assert repr((CLAUDE_CODE, CODEX)) == before


def test_every_operation_the_admin_offers_has_a_rewrite():
    from routing.models import PromptRule
    assert set(PromptRule.Operation.values) == set(OPERATIONS)

def route(strategy, *targets):
    provider = ProviderEntry(id=1, name="p", type="openai", base_url="http://x", timeout_s=1, weight=1,
                             extra_headers=(), keys=())
    entries = tuple(TargetEntry(id=i, provider=provider, upstream_model=f"m{i}", priority=priority, weight=weight,
                                price=None) for i, (priority, weight) in enumerate(targets))
    return RouteEntry(id=hash(strategy) % 1000, name="r", aliases=(), strategy=strategy, max_attempts=3,
                      retry_on_status=frozenset(), cooldown_s=0, targets=entries, rules=(), created=0)


def test_priority_puts_lower_priority_numbers_first():
    r = route("priority", (2, 1), (1, 1), (3, 1))
    assert [t.upstream_model for t in order_targets(r)] == ["m1", "m0", "m2"]


def test_weighted_order_follows_the_weights():
    r = route("weighted", (1, 9), (1, 1))
    rng = random.Random(7)
    firsts = Counter(order_targets(r, rng)[0].upstream_model for _ in range(2000))
    assert 0.85 < firsts["m0"] / 2000 < 0.95


def test_round_robin_rotates_the_first_target():
    r = route("round_robin", (1, 1), (1, 1), (1, 1))
    firsts = [order_targets(r)[0].upstream_model for _ in range(6)]
    assert sorted(firsts) == ["m0", "m0", "m1", "m1", "m2", "m2"]


def test_the_snapshot_carries_routes_aliases_rules_and_prices_and_keys_load_by_hash(db):
    from keys.lookup import load_key
    from keys.models import VirtualKey
    from keys.secrets import hash_key
    from providers.models import CatalogEntry, Provider, ProviderKey
    from routing.models import PromptRule, Route, RouteTarget
    from routing.snapshot import build_snapshot

    provider = Provider.objects.create(name="p", base_url="http://127.0.0.1:1/v1")
    key = ProviderKey(provider=provider)
    key.set_secret("sk-upstream")
    key.save()
    CatalogEntry.objects.create(provider=provider, model_id="up", input_price_per_m=1, output_price_per_m=2)
    r = Route.objects.create(name="model", aliases=["alias"])
    RouteTarget.objects.create(route=r, provider=provider, upstream_model="up")
    PromptRule.objects.create(route=r, operation="remove", pattern=r"\d+", order=2)
    PromptRule.objects.create(route=r, operation="system_prepend", text="Hi", order=1)
    PromptRule.objects.create(route=r, operation="remove", pattern="(", order=3)  # invalid: skipped
    vk = VirtualKey(name="k")
    secret = vk.set_key()
    vk.save()

    snapshot = build_snapshot("7")
    entry = snapshot.route("alias")
    assert entry is snapshot.route("model") and entry.targets[0].provider.keys[0].secret == "sk-upstream"
    assert [rule.operation for rule in entry.rules] == ["system_prepend", "remove"]
    assert entry.targets[0].price.cost(1_000_000, 1_000_000) == 3.0
    assert load_key(hash_key(secret)).name == "k"  # keys are looked up on demand, not snapshotted
    assert "sk-upstream" not in repr(entry)
