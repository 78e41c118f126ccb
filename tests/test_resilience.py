"""Shared routing state against the real embedded Redis: cooldowns, circuit breakers, affinity,
latency, retry budget; and the rate-limit reset header parser."""
import asyncio
import itertools
import logging
import time

import pytest

from routing import resilience
from routing.resilience import (
    Policy, bind, lookup, parse_duration, parse_reset_headers, read_state, release_probe, report_attempt,
)
from llmgateway.redis import run_scripts
from tests.test_limits import closed_port_url, run

_ids = itertools.count(int(time.time() * 1000) % 10**9 * 1000)
T0 = 1_800_000_000.0


def new_id() -> int:
    """Fresh ids, so tests never share Redis state."""
    return next(_ids)


def make_policy(**overrides) -> Policy:
    fields = dict(failures=3, failure_window_s=60, open_s=30, probe_lease_s=10, key_cooldown_base_s=5,
                  key_cooldown_cap_s=40, latency_alpha=0.5, retry_ratio=0.2, retry_min=1)
    fields.update(overrides)
    return Policy(**fields)


# --- provider-key cooldowns --------------------------------------------------------------------

def test_a_429_retry_after_cools_the_key_exactly_that_long_even_when_a_shorter_one_follows():
    route, target, key = new_id(), new_id(), new_id()
    policy = make_policy()

    async def work(r):
        first = await report_attempt(route, target, key, outcome="rate_limited", policy=policy, now=T0, redis=r,
                                     retry_at=parse_reset_headers({"Retry-After": "7"}, now=T0))
        shorter = await report_attempt(route, target, key, outcome="rate_limited", policy=policy, now=T0 + 1,
                                       redis=r, retry_at=parse_reset_headers({"retry-after": "2"}, now=T0 + 1))
        just_before = await read_state(route, [target], [key], policy=policy, now=T0 + 6.99, redis=r)
        at_the_end = await read_state(route, [target], [key], policy=policy, now=T0 + 7, redis=r)
        return first, shorter, just_before, at_the_end

    first, shorter, just_before, at_the_end = run(work)
    assert first.key_cooling_until == T0 + 7
    assert shorter.key_cooling_until == T0 + 7
    assert not just_before.key_ready(key) and just_before.key_cooldowns[key] == T0 + 7
    assert at_the_end.key_ready(key)


def test_key_cooldowns_escalate_on_repeated_failures_up_to_a_cap_and_a_success_resets_them():
    route, target, key = new_id(), new_id(), new_id()
    policy = make_policy(key_cooldown_base_s=5, key_cooldown_cap_s=40)

    async def work(r):
        spans = []
        for i in range(6):
            at = T0 + i * 100  # each after the previous cooldown ended
            res = await report_attempt(route, target, key, outcome="key_error", policy=policy, now=at, redis=r)
            spans.append(res.key_cooling_until - at)
        await report_attempt(route, target, key, outcome="ok", policy=policy, now=T0 + 1000, redis=r)
        again = await report_attempt(route, target, key, outcome="rate_limited", policy=policy, now=T0 + 1100,
                                     redis=r)
        return spans, again.key_cooling_until - (T0 + 1100)

    spans, after_success = run(work)
    assert spans == [5, 10, 20, 40, 40, 40]
    assert after_success == 5


def test_a_failure_of_the_target_does_not_cool_the_key():
    route, target, key = new_id(), new_id(), new_id()
    res = run(lambda r: report_attempt(route, target, key, outcome="failed", policy=make_policy(), now=T0, redis=r))
    assert res.key_cooling_until is None


# --- circuit breaker ---------------------------------------------------------------------------

def open_circuit(r, route, target, policy, at):
    async def fail_n():
        for i in range(policy.failures):
            res = await report_attempt(route, target, None, outcome="failed", policy=policy, now=at + i * 0.1, redis=r)
        return res
    return fail_n()


def test_the_circuit_opens_after_n_consecutive_failures_and_a_success_resets_the_count():
    route, target = new_id(), new_id()
    policy = make_policy(failures=3)

    async def work(r):
        await report_attempt(route, target, None, outcome="failed", policy=policy, now=T0, redis=r)
        await report_attempt(route, target, None, outcome="failed", policy=policy, now=T0, redis=r)
        await report_attempt(route, target, None, outcome="ok", policy=policy, now=T0, redis=r)
        await report_attempt(route, target, None, outcome="failed", policy=policy, now=T0, redis=r)
        still_closed = await read_state(route, [target], policy=policy, now=T0 + 1, redis=r)
        await report_attempt(route, target, None, outcome="failed", policy=policy, now=T0 + 1, redis=r)
        third = await report_attempt(route, target, None, outcome="failed", policy=policy, now=T0 + 2, redis=r)
        opened = await read_state(route, [target], policy=policy, now=T0 + 3, redis=r)
        return still_closed, third, opened

    still_closed, third, opened = run(work)
    assert still_closed.circuits[target] == "closed"
    assert third.circuit == "open"
    assert opened.circuits[target] == "open" and not opened.target_usable(target)
    assert opened.open_until[target] == T0 + 2 + policy.open_s


def test_exactly_one_request_probes_a_half_open_circuit_under_concurrency():
    route, target = new_id(), new_id()
    policy = make_policy(open_s=30, probe_lease_s=10)

    async def work(r):
        await open_circuit(r, route, target, policy, T0)
        after = T0 + 31
        states = await asyncio.gather(*(read_state(route, [target], policy=policy, now=after, redis=r)
                                        for _ in range(200)))
        return [s.circuits[target] for s in states]

    seen = run(work)
    assert seen.count("probe") == 1
    assert seen.count("open") == 199


def test_the_probe_s_success_closes_the_circuit_and_its_failure_reopens_it():
    route, good, bad = new_id(), new_id(), new_id()
    policy = make_policy(open_s=30)

    async def work(r):
        for target in (good, bad):
            await open_circuit(r, route, target, policy, T0)
        probing = await read_state(route, [good, bad], policy=policy, now=T0 + 31, redis=r)
        await report_attempt(route, good, None, outcome="ok", probe=probing.is_probe(good), policy=policy,
                             now=T0 + 32, redis=r)
        await report_attempt(route, bad, None, outcome="failed", probe=probing.is_probe(bad), policy=policy,
                             now=T0 + 32, redis=r)
        return probing, await read_state(route, [good, bad], policy=policy, now=T0 + 33, redis=r)

    probing, after = run(work)
    assert probing.circuits == {good: "probe", bad: "probe"}
    assert after.circuits == {good: "closed", bad: "open"}
    assert after.open_until[bad] == T0 + 32 + 30


def test_a_success_that_is_not_the_probe_does_not_close_an_open_circuit():
    route, target = new_id(), new_id()
    policy = make_policy()

    async def work(r):
        await open_circuit(r, route, target, policy, T0)
        await report_attempt(route, target, None, outcome="ok", policy=policy, now=T0 + 1, redis=r)
        return await read_state(route, [target], policy=policy, now=T0 + 2, redis=r)

    assert run(work).circuits[target] == "open"


def test_a_probe_never_reported_lapses_after_its_lease():
    route, target = new_id(), new_id()
    policy = make_policy(open_s=30, probe_lease_s=10)

    async def work(r):
        await open_circuit(r, route, target, policy, T0)
        first = await read_state(route, [target], policy=policy, now=T0 + 31, redis=r)
        during = await read_state(route, [target], policy=policy, now=T0 + 40, redis=r)
        after = await read_state(route, [target], policy=policy, now=T0 + 41.5, redis=r)
        return first, during, after

    first, during, after = run(work)
    assert (first.circuits[target], during.circuits[target], after.circuits[target]) == ("probe", "open", "probe")


def test_a_released_probe_goes_to_the_next_request_at_once():
    route, target = new_id(), new_id()
    policy = make_policy(open_s=30, probe_lease_s=10)

    async def work(r):
        await open_circuit(r, route, target, policy, T0)
        first = await read_state(route, [target], policy=policy, now=T0 + 31, redis=r)
        await release_probe(target, redis=r)
        second = await read_state(route, [target], policy=policy, now=T0 + 32, redis=r)
        return first.circuits[target], second.circuits[target]

    assert run(work) == ("probe", "probe")


# --- affinity, latency, retry budget -----------------------------------------------------------

def test_a_session_stays_bound_to_its_target_until_the_binding_expires():
    route, target, other_route = new_id(), new_id(), new_id()

    async def work(r):
        await bind(route, "conversation-42", target, ttl_s=0.3, redis=r)
        found = await lookup(route, "conversation-42", redis=r)
        in_state = await read_state(route, [target], session_id="conversation-42", redis=r)
        elsewhere = await lookup(other_route, "conversation-42", redis=r)
        await asyncio.sleep(0.4)
        return found, in_state.affinity, elsewhere, await lookup(route, "conversation-42", redis=r)

    found, in_state, elsewhere, expired = run(work)
    assert found == in_state == target
    assert elsewhere is None and expired is None


def test_a_successful_attempt_binds_the_session_in_the_same_call():
    route, target = new_id(), new_id()

    async def work(r):
        await report_attempt(route, target, None, outcome="ok", bind_session=("s-1", 60), redis=r)
        return await lookup(route, "s-1", redis=r)

    assert run(work) == target


def test_latency_is_a_moving_average_of_successful_attempts():
    route, fast, slow = new_id(), new_id(), new_id()
    policy = make_policy(latency_alpha=0.5)

    async def work(r):
        for ms in (100, 200):
            await report_attempt(route, fast, None, outcome="ok", latency_ms=ms, policy=policy, redis=r)
        await report_attempt(route, slow, None, outcome="ok", latency_ms=900, policy=policy, redis=r)
        await report_attempt(route, slow, None, outcome="failed", latency_ms=5, policy=policy, redis=r)
        return await read_state(route, [fast, slow, new_id()], policy=policy, redis=r)

    state = run(work)
    assert state.latency_ms == {fast: 150.0, slow: 900.0}


def test_successes_of_one_target_sent_together_fold_into_one_call_with_the_same_moving_average():
    route, target, other = new_id(), new_id(), new_id()
    policy = make_policy(latency_alpha=0.5)
    successes = [resilience.prepare_report(route, target, None, outcome="ok", latency_ms=ms, policy=policy)
                 for ms in (100, 100, 100)]
    failure = resilience.prepare_report(route, other, None, outcome="failed", policy=policy)

    folded = resilience.fold_successes([*successes, failure])

    assert len(folded) == 2 and failure in folded

    async def work(r):
        await report_attempt(route, target, None, outcome="ok", latency_ms=500, policy=policy, redis=r)
        await run_scripts(r, folded)
        return await read_state(route, [target], policy=policy, redis=r)

    # One by one: 500 -> 300 -> 200 -> 150; folded, three samples of 100 weigh 1 - 0.5 ** 3.
    assert run(work).latency_ms == {target: 150.0}


def test_a_probe_a_session_binding_or_a_failure_never_folds():
    route, target = new_id(), new_id()
    policy = make_policy()
    calls = [resilience.prepare_report(route, target, None, outcome="ok", probe=True, policy=policy),
             resilience.prepare_report(route, target, None, outcome="ok", bind_session=("s", 60), policy=policy),
             resilience.prepare_report(route, target, None, outcome="failed", policy=policy),
             resilience.prepare_report(route, target, None, outcome="failed", policy=policy)]

    assert resilience.fold_successes(calls) == calls


def test_reports_ending_within_one_batch_window_go_in_one_round_trip_with_successes_folded_and_failures_not(
        settings, admission_round_trips):
    from routing import admission

    settings.GATEWAY_REPORT_BATCH_S = 0.05
    route, steady, failing = new_id(), new_id(), new_id()
    policy = make_policy(failures=2, latency_alpha=0.5)

    def success(ms):
        return resilience.prepare_report(route, steady, None, outcome="ok", latency_ms=ms, policy=policy)

    failures = [resilience.prepare_report(route, failing, None, outcome="failed", policy=policy) for _ in range(2)]

    async def work(r):
        loop = asyncio.get_running_loop()
        sent = [loop.create_future() for _ in range(4)]
        # Four requests end within one window: three successes of one target, two failures of another.
        admission.send_later(r, [success(100)], sent[0])
        admission.send_later(r, [success(200), failures[0]], sent[1])
        admission.send_later(r, [success(300)], sent[2])
        admission.send_later(r, [failures[1]], sent[3])
        await asyncio.gather(*sent)
        after_one_window = await read_state(route, [steady, failing], policy=policy, redis=r)
        later = loop.create_future()
        admission.send_later(r, [success(100)], later)  # the next window: a round trip of its own
        await later
        return after_one_window

    state = run(work)

    first, second = admission_round_trips
    assert len(first) == 3 and failures[0] in first and failures[1] in first  # 3 successes folded into 1
    assert len(second) == 1
    # Both failures counted: two of them open the circuit (folded into one, they would not).
    assert state.circuits[failing] == "open"
    assert state.latency_ms == {steady: 200.0}  # the folded report carries their mean


def test_retries_are_at_most_a_share_of_the_route_s_requests():
    route, target = new_id(), new_id()
    policy = make_policy(retry_ratio=0.2, retry_min=1)

    async def work(r):
        for _ in range(20):
            await read_state(route, [target], policy=policy, now=T0, redis=r)
        granted = 0
        for _ in range(10):
            res = await report_attempt(route, target, None, outcome="failed", want_retry=True, policy=policy,
                                       now=T0, redis=r)
            granted += res.retry_allowed
        quiet_route = new_id()
        quiet = [(await report_attempt(quiet_route, target, None, outcome="failed", want_retry=True, policy=policy,
                                       now=T0, redis=r)).retry_allowed for _ in range(3)]
        return granted, quiet

    granted, quiet = run(work)
    assert granted == 4  # 20 % of 20 requests
    assert quiet == [True, False, False]  # the minimum, on a route with no counted requests


# --- Redis unreachable ---------------------------------------------------------------------------

def test_routing_state_fails_open_when_redis_is_unreachable(caplog):
    resilience.outage_log.last = 0.0

    async def work(r):
        state = await read_state(1, [1, 2], [3], session_id="s", redis=r)
        res = await report_attempt(1, 1, 3, outcome="failed", want_retry=True, redis=r)
        return state, res

    with caplog.at_level(logging.ERROR, logger="routing.resilience"):
        state, res = run(work, url=closed_port_url())
    assert not state.available and state.target_usable(1) and state.key_ready(3) and state.affinity is None
    assert res.retry_allowed
    assert len([r for r in caplog.records if "Redis unreachable" in r.getMessage()]) == 1


# --- reset headers ---------------------------------------------------------------------------

def test_retry_after_in_seconds_or_as_an_http_date_or_in_ms():
    assert parse_reset_headers({"Retry-After": "7"}, now=T0) == T0 + 7
    assert parse_reset_headers({"retry-after": "Wed, 21 Oct 2026 07:28:00 GMT"}, now=T0) == 1792567680.0
    assert parse_reset_headers({"retry-after-ms": "1500"}, now=T0) == T0 + 1.5


def test_openai_resets_count_only_for_the_exhausted_limit():
    headers = {"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "6m0s",
               "x-ratelimit-remaining-tokens": "9000", "x-ratelimit-reset-tokens": "20ms"}
    assert parse_reset_headers(headers, now=T0) == T0 + 360
    assert parse_reset_headers({"x-ratelimit-reset-tokens": "1m30.5s"}, now=T0) == T0 + 90.5


def test_anthropic_resets_are_rfc3339_times():
    headers = {"anthropic-ratelimit-tokens-remaining": "0",
               "anthropic-ratelimit-tokens-reset": "2027-01-15T08:00:30Z",
               "anthropic-ratelimit-requests-remaining": "40",
               "anthropic-ratelimit-requests-reset": "2027-01-15T08:00:01Z"}
    assert parse_reset_headers(headers, now=T0) == T0 + 30  # T0 is 2027-01-15T08:00:00Z


def test_a_bare_reset_is_a_delay_or_an_epoch_time_and_no_headers_say_nothing():
    assert parse_reset_headers({"x-ratelimit-reset": "12"}, now=T0) == T0 + 12
    assert parse_reset_headers({"x-ratelimit-reset": "1800000100"}, now=T0) == 1800000100
    assert parse_reset_headers({"content-type": "application/json"}, now=T0) is None
    assert parse_reset_headers({"retry-after": "soon"}, now=T0) is None


@pytest.mark.parametrize("text, seconds", [("20ms", 0.02), ("1s", 1), ("6m0s", 360), ("1h2m3.5s", 3723.5),
                                           ("2.5", 2.5), ("", None), ("5x", None)])
def test_durations_in_openai_form(text, seconds):
    assert parse_duration(text) == seconds


def test_a_deleted_target_and_provider_key_leave_no_routing_state_for_an_id_used_again(db_access):
    from llmgateway.redis import sync_client
    from tests.factories import make_provider, make_route

    provider = make_provider("http://127.0.0.1:9/v1")
    route = make_route(provider)
    target, key = route.targets.get(), provider.keys.get()
    redis = sync_client()
    redis.hset(resilience.circuit_key(target.pk), "open_until", int(time.time() * 1000) + 60_000)
    redis.set(resilience.health_down_key(target.pk), "down")
    redis.set(resilience.cooldown_key(key.pk), int(time.time() * 1000) + 60_000)
    target_id, key_id = target.pk, key.pk

    target.delete()
    key.delete()
    route.delete()
    provider.delete()

    assert not redis.exists(resilience.circuit_key(target_id), resilience.health_down_key(target_id),
                            resilience.cooldown_key(key_id))
