"""Admission per virtual key against the real embedded Redis: RPM, TPM, budgets, reservations."""
import asyncio
import itertools
import logging
import random
import time
from decimal import Decimal

import pytest
import redis.asyncio as aioredis
from django.conf import settings

from keys import limits
from keys.auth import KeyEntry
from keys.limits import LimitsUnavailable, admit, budget_period, release, settle, usage_snapshot

_ids = itertools.count(int(time.time() * 1000) % 10**9 * 1000)


def make_key(**overrides) -> KeyEntry:
    """A KeyEntry with a fresh id (so tests never share Redis counters) and no limits."""
    fields = dict(id=next(_ids), name="k", prefix="sk-gw-x", key_hash="0" * 64, enabled=True, expires_at=None,
                  allowed_route_ids=None, rpm=None, tpm=None, budget_usd=None, budget_period="monthly",
                  log_bodies=False)
    fields.update(overrides)
    if fields["budget_usd"] is not None:
        fields["budget_usd"] = Decimal(str(fields["budget_usd"]))
    return KeyEntry(**fields)


def run(work, url=None, max_connections=50):
    """Run `work(client)` on a fresh event loop with its own Redis client (bounded pool)."""
    async def main():
        pool = aioredis.BlockingConnectionPool.from_url(url or settings.REDIS_URL, max_connections=max_connections,
                                                        socket_connect_timeout=1, socket_timeout=2)
        client = aioredis.Redis(connection_pool=pool)
        try:
            return await work(client)
        finally:
            await client.aclose()
    return asyncio.run(main())


def closed_port_url() -> str:
    from tests.conftest import free_port
    return f"redis://127.0.0.1:{free_port()}/0"


# --- RPM -------------------------------------------------------------------------------------

def test_rpm_100_admits_exactly_100_of_1000_concurrent_requests():
    key = make_key(rpm=100)

    async def work(r):
        return await asyncio.gather(*(admit(key, estimated_tokens=10, max_cost_usd=None, redis=r) for _ in range(1000)))

    results = run(work)
    allowed = [a for a in results if a.allowed]
    refused = [a for a in results if not a.allowed]
    assert len(allowed) == 100
    assert {a.reason for a in refused} == {"rpm"}
    assert all(0 < a.retry_after_s <= 60 for a in refused)
    assert min(a.rpm_remaining for a in allowed) == 0


def test_rpm_window_slides_and_the_refusal_says_when_a_place_frees():
    key = make_key(rpm=2)
    t0 = 1_800_000_000.0

    async def work(r):
        first = await admit(key, estimated_tokens=1, max_cost_usd=None, now=t0, redis=r)
        second = await admit(key, estimated_tokens=1, max_cost_usd=None, now=t0 + 20, redis=r)
        third = await admit(key, estimated_tokens=1, max_cost_usd=None, now=t0 + 30, redis=r)
        after_first_left = await admit(key, estimated_tokens=1, max_cost_usd=None, now=t0 + 60.001, redis=r)
        return first, second, third, after_first_left

    first, second, third, later = run(work)
    assert first.allowed and second.allowed
    assert not third.allowed and third.retry_after_s == pytest.approx(30.0)
    assert third.headers()["Retry-After"] == "30"
    assert third.headers()["x-ratelimit-remaining-requests"] == "0"
    assert later.allowed


def test_release_gives_back_the_rpm_place():
    key = make_key(rpm=1)

    async def work(r):
        first = await admit(key, estimated_tokens=1, max_cost_usd=None, redis=r)
        await release(first, redis=r)
        return await admit(key, estimated_tokens=1, max_cost_usd=None, redis=r)

    assert run(work).allowed


# --- TPM -------------------------------------------------------------------------------------

def test_tpm_counts_the_estimate_and_settles_to_real_usage():
    key = make_key(tpm=1000)

    async def work(r):
        a = await admit(key, estimated_tokens=900, max_cost_usd=None, redis=r)
        refused = await admit(key, estimated_tokens=200, max_cost_usd=None, redis=r)
        await settle(a, actual_tokens=300, actual_cost_usd=None, redis=r)
        fits_now = await admit(key, estimated_tokens=200, max_cost_usd=None, redis=r)
        usage = await usage_snapshot([key], redis=r)
        return a, refused, fits_now, usage[key.id]

    a, refused, fits_now, usage = run(work)
    assert a.allowed and a.tpm_remaining == 100
    assert not refused.allowed and refused.reason == "tpm" and 0 < refused.retry_after_s <= 60
    assert fits_now.allowed and fits_now.tpm_remaining == 500
    assert usage.tpm_used == 500


def test_a_request_larger_than_the_tpm_limit_is_refused_with_no_retry_time():
    key = make_key(tpm=100)
    a = run(lambda r: admit(key, estimated_tokens=101, max_cost_usd=None, redis=r))
    assert not a.allowed and a.reason == "tpm" and a.retry_after_s is None
    assert "Retry-After" not in a.headers()
    assert a.error().status == 429


def test_tpm_tokens_leave_the_window_after_60_seconds():
    key = make_key(tpm=100)
    t0 = 1_800_000_100.0

    async def work(r):
        await admit(key, estimated_tokens=80, max_cost_usd=None, now=t0, redis=r)
        refused = await admit(key, estimated_tokens=30, max_cost_usd=None, now=t0 + 10, redis=r)
        allowed = await admit(key, estimated_tokens=30, max_cost_usd=None, now=t0 + 60, redis=r)
        return refused, allowed

    refused, allowed = run(work)
    assert refused.retry_after_s == pytest.approx(50.0)
    assert allowed.allowed and allowed.tpm_remaining == 70


def test_headers_follow_openai_names_and_reset_format():
    key = make_key(rpm=10, tpm=1000)
    a = run(lambda r: admit(key, estimated_tokens=100, max_cost_usd=None, redis=r))
    headers = a.headers()
    assert headers["x-ratelimit-limit-requests"] == "10"
    assert headers["x-ratelimit-remaining-requests"] == "9"
    assert headers["x-ratelimit-limit-tokens"] == "1000"
    assert headers["x-ratelimit-remaining-tokens"] == "900"
    assert headers["x-ratelimit-reset-requests"].endswith("s")
    assert "Retry-After" not in headers


# --- budgets ---------------------------------------------------------------------------------

def test_budget_is_never_overspent_by_50_concurrent_clients():
    key = make_key(budget_usd=1.00)
    max_cost = 0.07
    spent_by_clients = []

    async def client(r):
        for _ in range(6):
            a = await admit(key, estimated_tokens=0, max_cost_usd=max_cost, redis=r)
            if not a.allowed:
                assert a.reason == "budget"
                continue
            await asyncio.sleep(random.uniform(0, 0.01))
            cost = round(random.uniform(0.03, max_cost), 6)
            await settle(a, actual_tokens=0, actual_cost_usd=cost, redis=r)
            spent_by_clients.append(cost)

    async def work(r):
        await asyncio.gather(*(client(r) for _ in range(50)))
        return (await usage_snapshot([key], redis=r))[key.id]

    usage = run(work)
    assert usage.spent_usd == pytest.approx(sum(spent_by_clients))
    assert usage.spent_usd <= 1.00  # reservations of the largest cost: not even one request over
    assert usage.spent_usd > 1.00 - 2 * max_cost  # and the budget was used, not refused early
    assert usage.reserved_usd == 0  # nothing outstanding


def test_release_gives_back_rpm_tpm_and_the_reservation():
    key = make_key(rpm=5, tpm=1000, budget_usd=1)

    async def work(r):
        a = await admit(key, estimated_tokens=400, max_cost_usd=0.5, redis=r)
        during = (await usage_snapshot([key], redis=r))[key.id]
        await release(a, redis=r)
        await release(a, redis=r)  # idempotent
        return during, (await usage_snapshot([key], redis=r))[key.id]

    during, after = run(work)
    assert (during.rpm_used, during.tpm_used, during.reserved_usd) == (1, 400, 0.5)
    assert (after.rpm_used, after.tpm_used, after.reserved_usd) == (0, 0, 0)
    assert after.remaining_usd == 1.0


def test_a_reservation_held_by_a_crashed_process_expires_after_its_ttl(settings):
    settings.GATEWAY_BUDGET_RESERVATION_TTL_S = 30
    key = make_key(budget_usd=1)
    t0 = 1_800_000_200.0

    async def work(r):
        crashed = await admit(key, estimated_tokens=0, max_cost_usd=0.6, now=t0, redis=r)
        held = await admit(key, estimated_tokens=0, max_cost_usd=0.6, now=t0 + 29, redis=r)
        expired = await admit(key, estimated_tokens=0, max_cost_usd=0.6, now=t0 + 31, redis=r)
        usage = (await usage_snapshot([key], now=t0 + 31, redis=r))[key.id]
        return crashed, held, expired, usage

    crashed, held, expired, usage = run(work)
    assert crashed.allowed
    assert not held.allowed and held.reason == "budget" and held.retry_after_s == 1.0
    assert expired.allowed
    assert usage.reserved_usd == pytest.approx(0.6)  # only the live one


def test_a_reservation_expires_on_redis_own_clock_too(settings):
    settings.GATEWAY_BUDGET_RESERVATION_TTL_S = 0.3
    key = make_key(budget_usd=1)

    async def work(r):
        await admit(key, estimated_tokens=0, max_cost_usd=0.9, redis=r)  # never settled
        held = await admit(key, estimated_tokens=0, max_cost_usd=0.9, redis=r)
        await asyncio.sleep(0.4)
        return held, await admit(key, estimated_tokens=0, max_cost_usd=0.9, redis=r)

    held, after_ttl = run(work)
    assert not held.allowed and after_ttl.allowed


def test_a_spent_budget_refuses_until_the_period_resets():
    key = make_key(budget_usd=0.1, budget_period="daily")

    async def work(r):
        a = await admit(key, estimated_tokens=0, max_cost_usd=0.1, redis=r)
        await settle(a, actual_tokens=0, actual_cost_usd=0.1, redis=r)
        return await admit(key, estimated_tokens=0, max_cost_usd=0.01, redis=r)

    refused = run(work)
    _, _, reset_at = budget_period("daily")
    assert not refused.allowed and refused.reason == "budget"
    assert refused.retry_after_s == pytest.approx(reset_at - time.time(), abs=5)
    err = refused.error()
    assert (err.status, err.code) == (429, "insufficient_quota")


def test_settle_without_a_known_cost_charges_the_whole_reservation():
    key = make_key(budget_usd=1)

    async def work(r):
        a = await admit(key, estimated_tokens=0, max_cost_usd=0.25, redis=r)
        return await settle(a, actual_tokens=0, actual_cost_usd=None, redis=r)

    assert run(work) == 0.25


def test_a_budgeted_key_refuses_a_model_without_a_price_by_default():
    key = make_key(budget_usd=1)
    # No Redis call is made: the closed port would raise LimitsUnavailable otherwise.
    a = run(lambda r: admit(key, estimated_tokens=0, max_cost_usd=None, redis=r), url=closed_port_url())
    assert not a.allowed and a.reason == "unpriced"
    assert a.error().status == 403


def test_admit_and_flag_serves_a_model_without_a_price_and_flags_it():
    key = make_key(budget_usd=1, unpriced_policy="admit_and_flag")

    async def work(r):
        a = await admit(key, estimated_tokens=0, max_cost_usd=None, redis=r)
        spent = await settle(a, actual_tokens=0, actual_cost_usd=None, redis=r)
        return a, spent

    a, spent = run(work)
    assert a.allowed and a.unpriced
    assert spent == 0


def test_a_key_without_limits_makes_no_redis_call():
    a = run(lambda r: admit(make_key(), estimated_tokens=5, max_cost_usd=1.0, redis=r), url=closed_port_url())
    assert a.allowed and not a.counted and a.headers() == {}


# --- Redis unreachable -----------------------------------------------------------------------

def test_rate_limits_fail_open_and_log_once_when_redis_is_unreachable(caplog):
    key = make_key(rpm=1, tpm=10)
    limits.outage_log.last = 0.0

    async def work(r):
        return [await admit(key, estimated_tokens=5, max_cost_usd=None, redis=r) for _ in range(3)]

    with caplog.at_level(logging.ERROR, logger="keys.limits"):
        results = run(work, url=closed_port_url())
    assert all(a.allowed and not a.counted and a.headers() == {} for a in results)
    assert len([r for r in caplog.records if "Redis unreachable" in r.getMessage()]) == 1


def test_budgets_fail_closed_when_redis_is_unreachable():
    key = make_key(budget_usd=5)
    with pytest.raises(LimitsUnavailable) as caught:
        run(lambda r: admit(key, estimated_tokens=0, max_cost_usd=0.01, redis=r), url=closed_port_url())
    assert caught.value.status == 503


def test_rate_limits_can_be_set_to_fail_closed(settings):
    settings.GATEWAY_RATE_LIMITS_FAIL_OPEN = False
    with pytest.raises(LimitsUnavailable):
        run(lambda r: admit(make_key(rpm=5), estimated_tokens=0, max_cost_usd=None, redis=r), url=closed_port_url())


# --- budget periods --------------------------------------------------------------------------

def test_budget_periods_start_at_midnight_in_the_operator_time_zone(settings):
    settings.GATEWAY_BUDGET_TIME_ZONE = "America/New_York"
    # 2026-12-01 03:00 UTC is still Monday 2026-11-30, 22:00 in New York.
    now = 1796094000.0
    assert budget_period("daily", now)[0] == "d2026-11-30"
    assert budget_period("weekly", now)[0] == "w2026-11-30"
    assert budget_period("monthly", now)[0] == "m2026-11"
    ident, start, reset = budget_period("monthly", now)
    assert reset - now == 2 * 3600  # midnight New York is 05:00 UTC
    assert budget_period("total", now) == ("total", None, None)
