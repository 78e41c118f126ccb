"""The planner's pure parts: sessions, keys in turn by weight, strategies, failure outcomes, estimates."""
import json
import random
from collections import Counter

from providers.upstream import Failure, classify_status
from routing import attempts
from routing.admission import Demand
from routing.endpoints import ENDPOINTS
from routing.resolve import order_targets
from routing.snapshot import Price, ProviderEntry, ProviderKeyEntry, RouteEntry, TargetEntry

_ids = iter(range(10_000, 20_000))


def make_provider_entry(*key_weights, name="p"):
    keys = tuple(ProviderKeyEntry(id=next(_ids), label=f"k{i}", secret="s", weight=w) for i, w in enumerate(key_weights))
    return ProviderEntry(id=next(_ids), name=name, type="openai", base_url="http://x", timeout_s=5, weight=1,
                         extra_headers=(), keys=keys)


def make_target(priority=1, weight=1, **fields):
    return TargetEntry(id=next(_ids), provider=make_provider_entry(1), upstream_model="gpt-4o-mini",
                       priority=priority, weight=weight, **{"price": None, **fields})


def make_route_entry(*targets, strategy="priority"):
    return RouteEntry(id=next(_ids), name="m", aliases=(), strategy=strategy, max_attempts=3,
                      retry_on_status=frozenset(), cooldown_s=30, targets=tuple(targets), rules=(), created=0)


def test_the_session_comes_from_claude_codes_header_before_anything_else():
    headers = {"x-claude-code-session-id": "cc-1", "session-id": "codex-1", "x-session-id": "ours"}
    assert attempts.session_of(headers, {"previous_response_id": "resp_1"}) == "cc-1"
    assert attempts.session_of({"session-id": "codex-1"}, {}) == "codex-1"
    assert attempts.session_of({"x-session-id": "ours"}, {}) == "ours"


def test_the_session_comes_from_previous_response_id_or_claude_codes_metadata():
    assert attempts.session_of({}, {"previous_response_id": "resp_9"}) == "resp:resp_9"
    legacy = {"metadata": {"user_id": "user_ab12_account_cd34_session_5f0e-77aa"}}
    assert attempts.session_of({}, legacy) == "claude:5f0e-77aa"
    modern = {"metadata": {"user_id": json.dumps({"device_id": "d", "session_id": "54c1eb09"})}}
    assert attempts.session_of({}, modern) == "claude:54c1eb09"
    assert attempts.session_of({}, {"metadata": {"user_id": "just-a-user"}}) is None
    assert attempts.session_of({}, {}) is None


def test_a_responses_answer_names_the_session_of_the_next_turn():
    assert attempts.response_session(b'{"id": "resp_abc", "object": "response"}') == "resp:resp_abc"
    assert attempts.response_session(b'{"id": "chatcmpl-1"}') is None


def test_keys_are_taken_in_turn_by_weight_skipping_unavailable_ones():
    provider = make_provider_entry(3, 1)
    heavy, light = provider.keys
    picks = Counter(attempts.pick_key(provider, set()).id for _ in range(400))
    assert picks == {heavy.id: 300, light.id: 100}
    assert {attempts.pick_key(provider, {heavy.id}).id for _ in range(5)} == {light.id}
    assert attempts.pick_key(provider, {heavy.id, light.id}) is False
    assert attempts.pick_key(make_provider_entry(), set()) is None


def test_priority_goes_lower_first_and_least_latency_fastest_first_unmeasured_before_all():
    first, second = make_target(priority=1), make_target(priority=2)
    assert order_targets(make_route_entry(second, first)) == [first, second]
    fast, slow, new = make_target(), make_target(), make_target()
    route = make_route_entry(slow, fast, new, strategy="least_latency")
    assert order_targets(route, latency_ms={slow.id: 900.0, fast.id: 120.0}) == [new, fast, slow]


def test_weighted_order_puts_a_heavier_target_first_in_proportion():
    heavy, light = make_target(weight=3), make_target(weight=1)
    route = make_route_entry(heavy, light, strategy="weighted")
    rng = random.Random(7)
    firsts = Counter(order_targets(route, rng)[0].id for _ in range(4000))
    assert 2850 <= firsts[heavy.id] <= 3150


def test_failures_map_to_the_outcomes_the_shared_state_counts():
    assert attempts.outcome_of(classify_status(401, {})) == "key_error"
    assert attempts.outcome_of(classify_status(429, {})) == "rate_limited"
    assert attempts.outcome_of(classify_status(503, {})) == "failed"
    assert attempts.outcome_of(classify_status(400, {})) == "client_error"
    assert attempts.outcome_of(Failure("timeout", retryable=True)) == "failed"
    assert attempts.outcome_of(Failure("config", retryable=True)) is None


def test_a_context_length_error_is_told_from_other_400s():
    too_long = classify_status(400, {}, "This model's maximum context length is 8192 tokens.")
    anthropic = classify_status(400, {}, "prompt is too long: 210000 tokens > 200000 maximum")
    assert attempts.is_context_error(too_long) and attempts.is_context_error(anthropic)
    assert not attempts.is_context_error(classify_status(400, {}, "bad tool schema"))


def test_the_largest_cost_uses_max_tokens_else_the_catalogs_max_output_at_the_dearest_price():
    cheap = make_target(price=Price(1.0, 2.0, 1.0), max_output_tokens=1000)
    dear = make_target(price=Price(10.0, 20.0, 10.0), max_output_tokens=500)
    route = make_route_entry(cheap, dear)
    body = {"model": "m", "messages": [{"role": "user", "content": "hello there"}]}
    demand = Demand.of(ENDPOINTS["chat"], body, "m", route, raw_size=len(json.dumps(body)))
    prompt = demand.prompt_tokens
    assert prompt == -(-len(json.dumps(body)) // 3)  # from the size: no tokenizer on the hot path
    assert prompt >= demand.counted_prompt_tokens()  # and not below tiktoken's count
    assert demand.max_cost_usd(route.targets) == max(
        (prompt * 1.0 + 1000 * 2.0) / 1e6, (prompt * 10.0 + 500 * 20.0) / 1e6)
    capped = Demand.of(ENDPOINTS["chat"], {**body, "max_tokens": 10}, "m", route, raw_size=len(json.dumps(body)))
    assert capped.max_cost_usd(route.targets) == (prompt * 10.0 + 10 * 20.0) / 1e6


def test_prompt_tokens_are_counted_only_when_a_known_window_might_not_hold_the_prompt():
    body = {"model": "m", "messages": [{"role": "user", "content": "hi " * 50}]}
    size = len(json.dumps(body))
    unknown = Demand.of(ENDPOINTS["chat"], body, "m", make_route_entry(make_target()), raw_size=size)
    assert unknown.prompt_tokens_if_windows() is None
    roomy = Demand.of(ENDPOINTS["chat"], body, "m", make_route_entry(make_target(context_window=8000)), raw_size=size)
    assert roomy.prompt_tokens_if_windows() is None  # its bytes bound its tokens: surely fits
    tight = Demand.of(ENDPOINTS["chat"], body, "m", make_route_entry(make_target(context_window=40)), raw_size=size)
    assert 50 <= tight.prompt_tokens_if_windows() < size


def test_several_script_calls_go_in_one_round_trip_and_survive_a_redis_that_forgot_its_scripts():
    import asyncio

    from keys import limits
    from keys.auth import KeyEntry
    from llmgateway.redis import new_async_client, run_scripts, sync_client
    from routing import resilience

    key = KeyEntry(id=next(_ids), name="k", prefix="p", key_hash="h", enabled=True, expires_at=None,
                   allowed_route_ids=None, rpm=2, tpm=None, budget_usd=None, budget_period="monthly", log_bodies=False)

    async def admit_with_state():
        client = new_async_client()
        try:
            read, targets, keys = resilience.prepare_read_state(next(_ids), [1, 2], [3])
            admission, call = limits.prepare_admit(key, estimated_tokens=0, max_cost_usd=None)
            state_reply, admit_reply = await run_scripts(client, [read, call])
            return resilience.state_from_reply(state_reply, targets, keys), limits.admission_from_reply(
                admission, admit_reply)
        finally:
            await client.aclose()

    sync_client().script_flush()
    first_state, first = asyncio.run(admit_with_state())
    _, second = asyncio.run(admit_with_state())
    _, third = asyncio.run(admit_with_state())
    assert first_state.available and first_state.circuits == {1: "closed", 2: "closed"}
    assert (first.allowed, second.allowed, third.allowed) == (True, True, False)
    assert third.reason == "rpm"


def test_a_request_after_a_quick_redis_restart_is_counted_not_served_on_a_dead_connection(tmp_path, settings):
    """A Redis that restarts before the event loop has noticed its pooled connections close:
    the pool hands one of them out. The admission must still be counted on the new server,
    not fail open (served uncounted) on the dead connection."""
    import asyncio

    from keys import limits
    from keys.auth import KeyEntry
    from llmgateway.redis import new_async_client, run_scripts

    from .conftest import free_port
    from .test_governance import start_redis_on

    port = free_port()
    servers = [start_redis_on(port, tmp_path)]
    settings.REDIS_URL = f"redis://127.0.0.1:{port}/0"
    key = KeyEntry(id=next(_ids), name="k", prefix="p", key_hash="h", enabled=True, expires_at=None,
                   allowed_route_ids=None, rpm=2, tpm=None, budget_usd=None, budget_period="monthly", log_bodies=False)

    async def admit_across_a_restart():
        client = new_async_client()
        try:
            await asyncio.gather(*(client.ping() for _ in range(3)))  # a few pooled connections
            servers[0].terminate()
            servers[0].wait(5)
            servers.append(start_redis_on(port, tmp_path))  # back, and this loop has not run meanwhile
            admission, call = limits.prepare_admit(key, estimated_tokens=0, max_cost_usd=None)
            (reply,) = await run_scripts(client, [call])
            return limits.admission_from_reply(admission, reply)
        finally:
            await client.aclose()

    try:
        admitted = asyncio.run(admit_across_a_restart())
    finally:
        servers[-1].terminate()
        servers[-1].wait(5)
    assert admitted.allowed and admitted.counted and admitted.rpm_remaining == 1


def test_concurrent_requests_of_a_quiet_route_share_one_read_of_its_state(settings, admission_round_trips):
    import asyncio

    from keys.auth import KeyEntry
    from llmgateway.redis import new_async_client
    from routing import admission

    settings.GATEWAY_ROUTING_STATE_CACHE_S = 5
    route = make_route_entry(make_target(), make_target())
    key = KeyEntry(id=next(_ids), name="k", prefix="p", key_hash="h", enabled=True, expires_at=None,
                   allowed_route_ids=None, rpm=None, tpm=None, budget_usd=None, budget_period="monthly",
                   log_bodies=False)
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}

    async def twenty_requests():
        client = new_async_client()
        try:
            demand = Demand.of(ENDPOINTS["chat"], body, "m", route)
            return await asyncio.gather(*(admission.admit_and_plan(key, route, demand, None, client)
                                          for _ in range(20)))
        finally:
            await client.aclose()

    plans = asyncio.run(twenty_requests())

    assert [len(calls) for calls in admission_round_trips] == [1]  # one round trip, one read in it
    assert all({t.id for t in plan.ordered} == {t.id for t in route.targets} for _, plan in plans)
