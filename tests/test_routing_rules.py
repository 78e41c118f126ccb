"""Pure functions of routing: prompt rules and target ordering."""
import random
import re
from collections import Counter

from routing.resolve import order_targets
from routing.rules import apply_rules
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
