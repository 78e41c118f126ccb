"""Live traffic blended into health: clients' requests to a monitored model count in its rollups,
so /status is right between probes; folded from the request log, off the hot path."""
import json

import httpx
import pytest

from healthcheck.live import HORIZON_KEY, fold_live_traffic, live_outcome
from healthcheck.models import HealthRollup, HealthTarget, MonitoringSettings
from healthcheck.status import target_record

from .conftest import wait_for_log, wait_for_model
from .factories import make_key, make_provider, make_route
from .test_health_routing import cleanup, logged, monitoring  # noqa: F401 (fixtures)


@pytest.fixture(autouse=True)
def fold_at_once(settings):
    """These tests fold what is logged at once; the settle horizon has a test of its own."""
    settings.HEALTH_LIVE_SETTLE_S = 0


def send(gateway, secret: str, model: str, body: dict | None = None) -> httpx.Response:
    payload = body if body is not None else {"model": model, "messages": [{"role": "user", "content": "hi"}]}
    return httpx.post(f"{gateway.url}/v1/chat/completions", headers={"Authorization": f"Bearer {secret}"},
                      content=json.dumps(payload), timeout=10)


def rollup_totals(target: HealthTarget) -> dict:
    rollups = HealthRollup.objects.filter(target=target)
    totals = {"runs": 0, "live": 0, "failures": 0, "errors": {}, "latencies": 0}
    for rollup in rollups:
        totals["runs"] += rollup.runs
        totals["live"] += rollup.live
        totals["failures"] += rollup.failures
        for kind, count in rollup.errors.items():
            totals["errors"][kind] = totals["errors"].get(kind, 0) + count
        totals["latencies"] += sum(rollup.latency_bins.values())
    return totals


def test_clients_requests_count_in_the_rollups_of_the_targets_they_reached(gateway, mock_upstream, monitoring,
                                                                           cleanup):
    good = make_provider(mock_upstream.base_url, name="live-good")
    broken = make_provider(mock_upstream.base_url, name="live-broken", fault={"status": 500})
    cleanup(good), cleanup(broken)
    whole_model = make_route(good)
    two_upstreams = make_route(broken, good, max_attempts=1)
    cleanup(whole_model), cleanup(two_upstreams)
    watched = HealthTarget.objects.create(name=whole_model.name, route=whole_model)
    pinned = HealthTarget.objects.create(name=f"{two_upstreams.name} broken", route=two_upstreams,
                                         route_target=two_upstreams.targets.get(provider=broken))
    key, secret = make_key()
    cleanup(key)
    wait_for_model(gateway, two_upstreams.name, key=secret)
    fold_live_traffic()  # start from here: earlier tests' rows are not this test's

    answers = [send(gateway, secret, whole_model.name) for _ in range(3)]
    answers += [send(gateway, secret, two_upstreams.name) for _ in range(2)]
    answers.append(send(gateway, secret, whole_model.name, {"model": whole_model.name, "messages": "nope"}))
    assert [a.status_code for a in answers][:3] == [200, 200, 200]
    assert all(a.status_code >= 500 for a in answers[3:5]) and answers[5].status_code == 400
    for answer in answers:
        wait_for_log(answer.headers["x-request-id"])

    assert fold_live_traffic() == 5  # the client's own bad request says nothing of the upstream
    assert fold_live_traffic() == 0  # each row folds once

    healthy = rollup_totals(watched)
    assert (healthy["runs"], healthy["live"], healthy["failures"], healthy["latencies"]) == (3, 3, 0, 3)
    failing = rollup_totals(pinned)
    assert (failing["runs"], failing["live"], failing["failures"]) == (2, 2, 2)
    assert failing["errors"] == {"upstream_5xx": 2}

    # Between probes (there were none), the page already knows.
    watched.refresh_from_db(), pinned.refresh_from_db()
    assert watched.summary["availability"]["1h"] == 100.0 and watched.summary["p50_ms"] is not None
    assert pinned.summary["availability"]["1h"] == 0.0 and pinned.state == "down"
    assert target_record(pinned)["errors_24h"] == {"upstream_5xx": 2}


def test_the_monitors_own_requests_are_not_counted_twice(gateway, mock_upstream, monitoring, cleanup):
    from keys.models import VirtualKey

    provider = make_provider(mock_upstream.base_url, name="live-probed")
    cleanup(provider)
    route = make_route(provider)
    cleanup(route)
    target = HealthTarget.objects.create(name=route.name, route=route)
    original_key = VirtualKey.objects.get(pk=MonitoringSettings.load().monitoring_key_id)
    key, secret = make_key()
    cleanup(key)
    wait_for_model(gateway, route.name, key=secret)
    fold_live_traffic()
    # A probe's request, as the pipeline logs it: under the monitoring key (sent here over HTTP
    # with a key marked as the monitor's).
    probe_like = VirtualKey(name="probe-like", is_monitoring=True)
    probe_secret = probe_like.set_key()
    probe_like.save()
    cleanup(probe_like)
    MonitoringSettings.objects.filter(pk=1).update(monitoring_key=probe_like)
    wait_for_model(gateway, route.name, key=probe_secret)
    wait_for_log(send(gateway, probe_secret, route.name).headers["x-request-id"])
    wait_for_log(send(gateway, secret, route.name).headers["x-request-id"])
    try:
        assert fold_live_traffic() == 1
    finally:
        MonitoringSettings.objects.filter(pk=1).update(monitoring_key=original_key)
    assert rollup_totals(target)["live"] == 1


def test_only_the_upstreams_failures_count():
    assert live_outcome(200, "", "") == (False, "")
    assert live_outcome(502, "upstream_connect", "mock/m: host name not resolved") == (True, "dns_error")
    assert live_outcome(504, "upstream_timeout", "") == (True, "timeout")
    assert live_outcome(503, "upstream_http", "") == (True, "upstream_5xx")
    assert live_outcome(429, "upstream_http", "") == (True, "rate_limited")
    assert live_outcome(400, "upstream_http", "") is None  # the client's request: the upstream is up
    assert live_outcome(429, "rate_limited", "") is None  # the key's own limit, not the upstream
    assert live_outcome(499, "client_disconnected", "") is None
    assert live_outcome(400, "bad_request", "") is None


def test_saving_the_settings_from_an_older_read_does_not_move_the_cursor_back(monitoring):
    stale = MonitoringSettings.load()
    MonitoringSettings.objects.filter(pk=1).update(live_log_cursor=12345)  # a fold moved it meanwhile
    stale.default_prompt = "Say OK, please"
    stale.save()  # as the admin saves its form
    fresh = MonitoringSettings.load()
    assert (fresh.live_log_cursor, fresh.default_prompt) == (12345, "Say OK, please")


def test_a_row_committed_after_a_higher_id_was_seen_is_still_folded(monitoring, cleanup, settings):
    from django.utils import timezone

    from llmgateway.redis import sync_client
    from routing.models import RequestLog

    settings.HEALTH_LIVE_SETTLE_S = 5
    sync_client().delete(HORIZON_KEY)
    provider = make_provider("http://127.0.0.1:9/v1", name="late-rows")
    route = make_route(provider)
    cleanup(provider), cleanup(route)
    target = HealthTarget.objects.create(name=route.name, route=route)
    cleanup(target)
    fold_live_traffic(now=1000.0)  # where this test starts: earlier rows are not its own

    def log_row(pk=None):
        row = RequestLog.objects.create(pk=pk, request_id=f"req_late_{pk or 'auto'}_{RequestLog.objects.count()}",
                                        created_at=timezone.now(), endpoint="chat", route=route.name,
                                        provider=provider.name, upstream_model="gpt-4o-mini", status=200, ttfb_ms=12)
        cleanup(row)
        return row

    first = log_row()
    log_row(pk=first.pk + 2)  # another writer's row, its id handed out later, committed first
    assert fold_live_traffic(now=1006.0) == 0  # the ids above what was seen 6 s ago are not settled yet
    log_row(pk=first.pk + 1)  # the slower writer commits
    assert fold_live_traffic(now=1008.0) == 0  # what was seen at 1006 is not settled at 1008
    assert fold_live_traffic(now=1012.0) == 3  # settled: all three, the late one included
    assert rollup_totals(target)["live"] == 3
    assert fold_live_traffic(now=1020.0) == 0  # each row folds once
