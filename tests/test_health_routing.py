"""Health feeds routing: a target the probes find down is skipped by live requests until enough
good probes bring it back, an all-down model still serves, and an upstream whose circuit live
traffic opened is probed to bring it back."""
import asyncio
import time
from datetime import timedelta

import httpx
import pytest
from django.utils import timezone

from healthcheck import recovery, routing_state
from healthcheck.dispatch import claim_due_targets
from healthcheck.models import HealthRun, HealthTarget
from healthcheck.tasks import probe_open_target, probe_target
from providers.mock_upstream import MockUpstreamThread
from routing import attempts, resilience

from .conftest import free_port, wait_for_model
from .factories import make_key, make_provider, make_route
from .test_governance_planning import make_route_entry, make_target


@pytest.fixture
def logged(monkeypatch):
    """Request-log entries of in-process probes (the writer process would use other settings)."""
    entries = []
    monkeypatch.setattr("routing.requestlog.queue.record", entries.append)
    return entries


@pytest.fixture
def monitoring(logged, monitoring_on):
    """Monitoring on, the request-log entries of its in-process probes captured."""
    return monitoring_on


@pytest.fixture
def cleanup(db_access):
    """Rows a test made, deleted afterwards (these tests run outside a transaction)."""
    made = []
    yield made.append
    for row in reversed(made):
        row.delete()


def probe_now(target: HealthTarget) -> str:
    """Run the probe task in this process, as a worker does for a claimed slot."""
    return probe_target(target.pk, timezone.now().isoformat())


def ask(gateway, secret: str, model: str) -> httpx.Response:
    response = httpx.post(f"{gateway.url}/v1/chat/completions", headers={"Authorization": f"Bearer {secret}"},
                          json={"model": model, "messages": [{"role": "user", "content": "hi"}]}, timeout=10)
    assert response.status_code == 200, response.text
    return response


def test_a_target_probes_find_down_is_skipped_until_enough_good_probes_bring_it_back(
        gateway, mock_upstream, monitoring, cleanup, settings):
    settings.HEALTH_DOWN_AFTER = settings.HEALTH_UP_AFTER = 2
    port = free_port()
    flaky = make_provider(f"http://127.0.0.1:{port}/v1", name="flaky-first", timeout_s=2)
    backup = make_provider(mock_upstream.base_url, name="steady-second")
    cleanup(flaky), cleanup(backup)
    route = make_route(flaky, backup)
    cleanup(route)
    flaky_target = route.targets.get(provider=flaky)
    probe = HealthTarget.objects.create(name=route.name, route=route, route_target=flaky_target, timeout_s=3)
    key, secret = make_key()
    cleanup(key)
    wait_for_model(gateway, route.name, key=secret)

    # The first target's upstream is away: two failed probes flag it down.
    assert [probe_now(probe), probe_now(probe)] == ["down", "down"]
    assert routing_state.is_marked_down(flaky_target.pk)

    upstream = MockUpstreamThread(port=port).start()
    try:
        # It is back, but only the probes can say so: live requests go straight to the second
        # target, without trying the flagged one first.
        served = ask(gateway, secret, route.name)
        assert served.headers["x-gateway-provider"] == "steady-second"
        assert served.headers["x-gateway-attempts"] == "1"
        assert upstream.requests == []

        assert probe_now(probe) == "healthy"  # one good probe is not enough (hysteresis)
        assert ask(gateway, secret, route.name).headers["x-gateway-provider"] == "steady-second"

        assert probe_now(probe) == "healthy"
        assert not routing_state.is_marked_down(flaky_target.pk)
        assert ask(gateway, secret, route.name).headers["x-gateway-provider"] == "flaky-first"
    finally:
        upstream.stop()


def test_a_model_whose_every_target_is_flagged_down_still_serves(gateway, mock_upstream, db_access, cleanup, settings):
    settings.HEALTH_DOWN_AFTER = 1
    provider = make_provider(mock_upstream.base_url, name="only-upstream")
    cleanup(provider)
    route = make_route(provider, max_attempts=1)
    cleanup(route)
    key, secret = make_key()
    cleanup(key)
    wait_for_model(gateway, route.name, key=secret)
    only = route.targets.get()
    routing_state.publish(only.pk, consecutive_failures=1, consecutive_successes=0, interval_s=60)
    assert routing_state.is_marked_down(only.pk)

    # Health is advice: with nothing better to try, the flagged target still serves.
    assert ask(gateway, secret, route.name).headers["x-gateway-provider"] == "only-upstream"


def test_the_down_flags_come_in_the_same_read_as_the_circuits(redis_url):
    from llmgateway.redis import new_async_client, sync_client

    sync_client().set(resilience.health_down_key(90002), "down", ex=60)

    async def read():
        client = new_async_client()
        try:
            return await resilience.read_state(90001, [90001, 90002, 90003], [], redis=client)
        finally:
            await client.aclose()

    state = asyncio.run(read())
    assert state.available and state.health_down == {90002}
    assert state.target_usable(90002)  # flagged, not refused


def test_the_planner_tries_a_flagged_target_last_and_does_not_keep_a_session_on_it():
    first, second, third = make_target(priority=1), make_target(priority=2), make_target(priority=3)
    route = make_route_entry(first, second, third)
    state = resilience.RoutingState(now=time.time(), health_down=frozenset({first.id}), affinity=first.id)
    plan = attempts.plan_from_state(route, state, session_id="s", prompt_tokens=None)
    assert [t.id for t in plan.ordered] == [second.id, third.id, first.id]

    everything_down = resilience.RoutingState(now=time.time(), health_down=frozenset({first.id, second.id, third.id}))
    plan = attempts.plan_from_state(route, everything_down, session_id=None, prompt_tokens=None)
    assert [t.id for t in plan.ordered] == [first.id, second.id, third.id]


# ---------------------------------------------------------------- circuits opened by live traffic

def open_circuit(route_id: int, target_id: int, open_s: float = 0.2) -> None:
    """Fail the target as live traffic would, until its circuit opens; wait out the open time."""
    from llmgateway.redis import new_async_client

    policy = resilience.Policy(failures=2, open_s=open_s)

    async def fail_twice():
        client = new_async_client()
        try:
            results = [await resilience.report_attempt(route_id, target_id, None, outcome="failed", policy=policy,
                                                       redis=client) for _ in range(2)]
        finally:
            await client.aclose()
        return results[-1].circuit

    assert asyncio.run(fail_twice()) == resilience.OPEN
    time.sleep(open_s + 0.05)


def circuit_is_open(target_id: int) -> bool:
    from llmgateway.redis import sync_client

    return int(sync_client().hget(resilience.circuit_key(target_id), "open_until") or 0) > 0


def test_an_upstream_without_a_health_target_of_its_own_is_probed_back_when_its_circuit_opens(
        mock_upstream, monitoring, cleanup, logged):
    first = make_provider(mock_upstream.base_url, name="cooled-first")
    second = make_provider(mock_upstream.base_url, name="cooled-second")
    cleanup(first), cleanup(second)
    route = make_route(first, second)
    cleanup(route)
    HealthTarget.objects.create(name=route.name, route=route, max_tokens=2)  # the model is monitored
    cooled = route.targets.get(provider=first)
    open_circuit(route.pk, cooled.pk)

    planned = recovery.plan_recoveries()
    assert planned == [recovery.Recovery(cooled.pk, None)]
    assert recovery.plan_recoveries() == []  # locked: a second dispatcher leaves it alone

    assert probe_open_target(cooled.pk) == "healthy"
    assert not circuit_is_open(cooled.pk)  # the probe's good answer closed it
    [entry] = logged
    assert entry.virtual_key_id == monitoring.monitoring_key_id and entry.provider == "cooled-first"


def test_a_cooled_upstream_with_its_own_health_target_gets_its_next_run_now(mock_upstream, monitoring, cleanup):
    provider = make_provider(mock_upstream.base_url, name="cooled-pinned")
    other = make_provider(mock_upstream.base_url, name="cooled-other")
    cleanup(provider), cleanup(other)
    route = make_route(provider, other)
    cleanup(route)
    cooled = route.targets.get(provider=provider)
    own = HealthTarget.objects.create(name=route.name, route=route, route_target=cooled,
                                      next_run_at=timezone.now() + timedelta(minutes=4))
    open_circuit(route.pk, cooled.pk)

    assert recovery.plan_recoveries() == [recovery.Recovery(cooled.pk, own.pk)]
    [claim] = [c for c in claim_due_targets() if c.target_id == own.pk]
    assert probe_target(own.pk, claim.slot.isoformat()) == "healthy"
    assert HealthRun.objects.filter(target=own).count() == 1
    assert not circuit_is_open(cooled.pk)


def test_unmonitored_models_are_left_to_their_live_traffic(mock_upstream, monitoring, cleanup):
    provider = make_provider(mock_upstream.base_url, name="unwatched")
    cleanup(provider)
    route = make_route(provider)
    cleanup(route)
    open_circuit(route.pk, route.targets.get().pk)
    assert all(r.route_target_id != route.targets.get().pk for r in recovery.plan_recoveries())
