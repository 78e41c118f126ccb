"""The monitor's domain: the monitoring key, claims, probes through the pipeline, rollups, incidents."""
import threading
from datetime import timedelta

import pytest
from django.db import connections
from django.utils import timezone

from healthcheck import routing_state
from healthcheck.dispatch import claim_due_targets
from healthcheck.models import HealthIncident, HealthRollup, HealthRun, HealthTarget, MonitoringSettings
from healthcheck.rollups import percentile, record_run, state_of, summarize
from healthcheck.tasks import probe_target, purge_old_health_data
from keys.models import VirtualKey
from providers.models import Provider, ProviderKey
from routing.models import Route, RouteTarget

from .conftest import PROVIDER_SECRET, free_port


def make_provider(base_url, name="mock", **fields):
    provider = Provider.objects.create(name=name, base_url=base_url, timeout_s=fields.pop("timeout_s", 5), **fields)
    key = ProviderKey(provider=provider, label="primary")
    key.set_secret(PROVIDER_SECRET)
    key.save()
    return provider


def make_route(provider, name="gpt-4o-mini", upstream_model="gpt-4o-mini", **fields):
    route = Route.objects.create(name=name, **fields)
    RouteTarget.objects.create(route=route, provider=provider, upstream_model=upstream_model)
    return route


def make_target(route, name=None, **fields):
    return HealthTarget.objects.create(name=name or f"probe {route.name}", route=route, **fields)


def turn_monitoring(on=True) -> MonitoringSettings:
    monitoring = MonitoringSettings.load()
    monitoring.enabled = on
    monitoring.save()
    return monitoring


def make_run(target, minutes_ago=0, outcome="healthy", latency_ms=100.0, error_kind=""):
    at = timezone.now() - timedelta(minutes=minutes_ago)
    run = HealthRun.objects.create(target=target, scheduled_for=at, started_at=at, outcome=outcome,
                                   latency_ms=latency_ms, error_kind=error_kind)
    record_run(run)
    return run


@pytest.mark.django_db
def test_turning_monitoring_on_creates_one_key_and_off_then_on_reuses_it():
    assert not VirtualKey.objects.filter(is_monitoring=True).exists()
    key = turn_monitoring(True).monitoring_key
    assert key.is_monitoring and not key.log_bodies
    assert (key.rpm, key.tpm, key.budget_usd) == (None, None, None)
    assert key.all_models
    turn_monitoring(False)
    assert turn_monitoring(True).monitoring_key_id == key.pk
    assert VirtualKey.objects.filter(is_monitoring=True).count() == 1


@pytest.mark.django_db
def test_the_monitoring_key_does_not_take_an_operators_key_name():
    VirtualKey(name="health-monitor").set_key()
    taken = VirtualKey(name="health-monitor")
    taken.set_key()
    taken.save()
    key = turn_monitoring(True).monitoring_key
    assert key.name == "health-monitor-2" and key.pk != taken.pk


@pytest.mark.django_db
def test_nothing_is_claimed_while_monitoring_is_off():
    route = make_route(make_provider("http://127.0.0.1:9/v1"))
    make_target(route)
    assert claim_due_targets() == []


@pytest.mark.django_db
def test_a_claimed_slot_is_not_claimed_again_until_the_next_interval():
    turn_monitoring(True)
    target = make_target(make_route(make_provider("http://127.0.0.1:9/v1")), interval_s=60)
    now = timezone.now()
    first = claim_due_targets(now)
    assert [c.target_id for c in first] == [target.pk]
    assert claim_due_targets(now + timedelta(seconds=59)) == []
    again = claim_due_targets(now + timedelta(seconds=61))
    assert [c.slot for c in again] == [now + timedelta(seconds=60)]


@pytest.mark.django_db(transaction=True)
def test_two_dispatchers_racing_never_claim_one_slot_twice():
    turn_monitoring(True)
    provider = make_provider("http://127.0.0.1:9/v1")
    targets = [make_target(make_route(provider, name=f"m{i}"), interval_s=30) for i in range(20)]
    start = timezone.now()
    claims: list = []
    barrier = threading.Barrier(2)

    def dispatcher():
        barrier.wait()
        try:
            for step in range(6):  # three intervals, looked at twice each
                claims.extend(claim_due_targets(start + timedelta(seconds=15 * step)))
        finally:
            connections.close_all()

    threads = [threading.Thread(target=dispatcher) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    slots = [(c.target_id, c.slot) for c in claims]
    assert len(slots) == len(set(slots))
    assert {t for t, _ in slots} == {t.pk for t in targets}
    assert len(slots) == 3 * len(targets)


@pytest.mark.django_db
def test_state_follows_the_error_share_of_the_last_hour():
    assert state_of(0, 0) == "unknown"
    assert state_of(10, 0) == "healthy"
    assert state_of(10, 1) == "degraded"
    assert state_of(10, 2) == "down"


def test_percentiles_come_from_the_merged_histogram_within_one_bin():
    from healthcheck.rollups import bin_upper_ms, latency_bin

    bins = {}
    for ms in [50] * 90 + [2000] * 10:
        bins[str(latency_bin(ms))] = bins.get(str(latency_bin(ms)), 0) + 1
    assert 50 <= percentile(bins, 0.5) <= 50 * 1.25
    assert 2000 <= percentile(bins, 0.95) <= 2000 * 1.25
    assert percentile({}, 0.5) is None
    assert bin_upper_ms(latency_bin(123.0)) >= 123.0


@pytest.mark.django_db
def test_runs_roll_up_into_availability_percentiles_errors_and_incidents():
    target = make_target(make_route(make_provider("http://127.0.0.1:9/v1")))
    for minutes in range(50, 10, -5):
        make_run(target, minutes_ago=minutes, latency_ms=200.0)
    target.refresh_from_db()
    assert target.state == "healthy"
    make_run(target, minutes_ago=8, outcome="down", error_kind="timeout", latency_ms=None)
    target.refresh_from_db()
    assert target.state == "degraded"  # 1 error in 9 runs
    make_run(target, minutes_ago=6, outcome="down", error_kind="upstream_5xx", latency_ms=None)
    make_run(target, minutes_ago=4, outcome="down", error_kind="upstream_5xx", latency_ms=None)
    target.refresh_from_db()
    assert target.state == "down"
    summary = summarize(target.pk, timezone.now())
    assert summary["availability"]["1h"] == pytest.approx(100 * 8 / 11, abs=0.01)
    assert summary["errors"] == {"upstream_5xx": 2, "timeout": 1}
    assert 200 <= summary["p50_ms"] <= 250
    incidents = list(HealthIncident.objects.filter(target=target).order_by("started_at"))
    assert [(i.state, i.ended_at is None) for i in incidents] == [("degraded", False), ("down", True)]
    assert HealthRollup.objects.filter(target=target).count() <= 12


@pytest.mark.django_db
def test_purge_deletes_old_runs_in_batches_and_keeps_rollups(settings):
    settings.HEALTH_PURGE_BATCH = 3
    target = make_target(make_route(make_provider("http://127.0.0.1:9/v1")))
    for days in (8, 9, 10, 11, 12):
        at = timezone.now() - timedelta(days=days)
        record_run(HealthRun.objects.create(target=target, scheduled_for=at, started_at=at, outcome="healthy",
                                            latency_ms=10))
    make_run(target, minutes_ago=1)
    assert purge_old_health_data()["runs"] == 5
    assert HealthRun.objects.filter(target=target).count() == 1
    assert HealthRollup.objects.filter(target=target).count() == 6


# ---------------------------------------------------------------- probes through the pipeline
# Committed data (transaction=True): the snapshot is built on another connection, as in a worker.


@pytest.fixture
def logged(monkeypatch):
    """The request-log entries the pipeline queued in this process. (The log writer process
    would write them to the test process's database settings, which in-process tests do
    not share; the end-to-end test reads the real rows.)"""
    entries = []
    monkeypatch.setattr("routing.requestlog.queue.record", entries.append)
    return entries


@pytest.fixture
def monitored(transactional_db, mock_upstream, logged):
    monitoring = turn_monitoring(True)
    mock_upstream.clear()
    return monitoring


def _probe(target):
    """Run the probe task in this process, as a worker would for a claimed slot."""
    return probe_target(target.pk, timezone.now().isoformat())


@pytest.mark.django_db(transaction=True)
def test_a_completion_probe_goes_through_the_pipeline_as_the_monitoring_key(monitored, mock_upstream, logged):
    route = make_route(make_provider(mock_upstream.base_url))
    target = make_target(route, max_tokens=3, prompt="Say OK please")
    outcome = _probe(target)
    assert outcome == "healthy", HealthRun.objects.get(target=target).error_message
    run = HealthRun.objects.get(target=target)
    assert run.status_code == 200 and run.latency_ms > 0
    [entry] = logged
    assert entry.request_id == run.request_id
    assert entry.virtual_key_id == monitored.monitoring_key_id and entry.status == 200
    sent = mock_upstream.requests[-1]
    assert sent["json"]["max_tokens"] == 3
    assert sent["json"]["messages"][-1]["content"] == "Say OK please"


@pytest.mark.django_db(transaction=True)
def test_an_unreachable_upstream_is_a_down_run_named_connection_refused_without_secrets(monitored):
    dead = make_provider(f"http://127.0.0.1:{free_port()}/v1", name="dead", timeout_s=2)
    target = make_target(make_route(dead, max_attempts=1))
    assert _probe(target) == "down"
    run = HealthRun.objects.get(target=target)
    assert run.error_kind == "connection_refused"
    assert PROVIDER_SECRET not in run.error_message and "127.0.0.1" not in run.error_message


@pytest.mark.django_db(transaction=True)
def test_upstream_errors_are_classified(monitored, mock_upstream):
    import json

    cases = {429: "rate_limited", 401: "auth", 503: "upstream_5xx", 404: "not_found"}
    for status, kind in cases.items():
        # The mock fails every request that carries this header; the provider sends it.
        faulty = make_provider(mock_upstream.base_url, name=f"faulty-{status}",
                               extra_headers={"x-mock-fault": json.dumps({"status": status})})
        target = make_target(make_route(faulty, name=f"m{status}", max_attempts=1))
        assert _probe(target) == "down"
        assert HealthRun.objects.get(target=target).error_kind == kind


@pytest.mark.django_db(transaction=True)
def test_a_slow_upstream_is_a_timeout_and_retries_are_counted(monitored, mock_upstream, logged):
    import json

    slow = make_provider(mock_upstream.base_url, name="slow", extra_headers={"x-mock-fault": json.dumps({"delay": 3})})
    target = make_target(make_route(slow, name="slow", max_attempts=1), timeout_s=0.5, retries=1)
    assert _probe(target) == "down"
    run = HealthRun.objects.get(target=target)
    assert (run.error_kind, run.attempts) == ("timeout", 2)
    assert run.latency_ms < 3000
    # Each try cut off by the timeout still ends its request record: one log row per try.
    assert [entry.status for entry in logged] == [499, 499]
    assert run.request_id == logged[-1].request_id


@pytest.mark.django_db(transaction=True)
def test_an_answer_that_is_not_a_completion_is_a_bad_response(monitored, mock_upstream):
    import json

    fault = {"status": 200, "body": "<html>maintenance</html>"}
    odd = make_provider(mock_upstream.base_url, name="odd", extra_headers={"x-mock-fault": json.dumps(fault)})
    target = make_target(make_route(odd, name="odd", max_attempts=1))
    assert _probe(target) == "down"
    assert HealthRun.objects.get(target=target).error_kind == "bad_response"


@pytest.mark.django_db(transaction=True)
def test_probe_spend_is_priced_from_the_catalog_and_added_up_per_month(monitored, mock_upstream):
    from providers.models import CatalogEntry

    provider = make_provider(mock_upstream.base_url)
    CatalogEntry.objects.create(provider=provider, model_id="gpt-4o-mini", input_price_per_m=150, output_price_per_m=600)
    target = make_target(make_route(provider))
    _probe(target)
    _probe(target)
    runs = list(HealthRun.objects.filter(target=target))
    assert all(run.cost_usd > 0 for run in runs)
    target.refresh_from_db()
    assert target.spend_month == timezone.now().strftime("%Y-%m")
    assert target.spend_month_usd == target.spend_total_usd == sum(run.cost_usd for run in runs)


def test_the_pipelines_failures_map_to_probe_error_kinds():
    from healthcheck.probes import pipeline_error_kind

    # (status, the request log's error kind and detail) as the pipeline leaves them
    assert pipeline_error_kind(502, "upstream_connect", "mock/m: host name not resolved (gaierror)") == "dns_error"
    assert pipeline_error_kind(502, "upstream_connect", "mock/m: could not connect (ConnectError)") == "connection_refused"
    assert pipeline_error_kind(504, "upstream_timeout", "mock/m: timed out") == "timeout"
    assert pipeline_error_kind(502, "upstream_auth", "") == "auth"
    assert pipeline_error_kind(502, "upstream_bad_answer", "") == "bad_response"
    assert pipeline_error_kind(429, "upstream_http", "") == "rate_limited"
    assert pipeline_error_kind(503, "upstream_http", "") == "upstream_5xx"
    assert pipeline_error_kind(404, "model_not_found", "") == "not_found"


@pytest.mark.django_db(transaction=True)
def test_a_model_list_probe_checks_the_upstream_lists_the_model(monitored, mock_upstream):
    provider = make_provider(mock_upstream.base_url)
    listed = make_target(make_route(provider), kind="model_list")
    missing = make_target(make_route(provider, name="ghost", upstream_model="no-such-model"), kind="model_list")
    assert _probe(listed) == "healthy"
    assert _probe(missing) == "down"
    assert HealthRun.objects.get(target=missing).error_kind == "not_found"
    assert mock_upstream.requests[-1]["path"].endswith("/models")


@pytest.mark.django_db(transaction=True)
def test_a_probe_pinned_to_one_upstream_does_not_fail_over(monitored, mock_upstream):
    dead = make_provider(f"http://127.0.0.1:{free_port()}/v1", name="dead", timeout_s=2)
    good = make_provider(mock_upstream.base_url, name="good")
    route = Route.objects.create(name="failover")
    dead_target = RouteTarget.objects.create(route=route, provider=dead, upstream_model="gpt-4o-mini", priority=1)
    RouteTarget.objects.create(route=route, provider=good, upstream_model="gpt-4o-mini", priority=2)
    whole = make_target(route, name="whole")
    pinned = make_target(route, name="pinned", route_target=dead_target)
    assert _probe(whole) == "healthy"  # clients fail over to the good upstream
    assert _probe(pinned) == "down"


@pytest.mark.django_db
def test_routing_sees_a_target_down_after_two_failures_and_back_after_two_successes(settings, redis_url):
    settings.HEALTH_DOWN_AFTER = settings.HEALTH_UP_AFTER = 2
    routing_state.publish(4242, 1, 0, 60)
    assert not routing_state.is_marked_down(4242)
    routing_state.publish(4242, 2, 0, 60)
    assert routing_state.is_marked_down(4242)
    routing_state.publish(4242, 0, 1, 60)
    assert routing_state.is_marked_down(4242)  # one good probe is not enough
    routing_state.publish(4242, 0, 2, 60)
    assert not routing_state.is_marked_down(4242)


@pytest.mark.django_db(transaction=True)
def test_a_target_over_its_monthly_cap_is_not_probed(monitored, mock_upstream):
    target = make_target(make_route(make_provider(mock_upstream.base_url)), monthly_cap_usd=0.01)
    HealthTarget.objects.filter(pk=target.pk).update(spend_month=timezone.now().strftime("%Y-%m"),
                                                     spend_month_usd=0.02)
    assert _probe(target) == "over_cap"
    assert not HealthRun.objects.filter(target=target).exists()


# ---------------------------------------------------------------- configuration as code


@pytest.mark.django_db
def test_monitoring_targets_round_trip_through_yaml_with_a_pinned_upstream():
    import yaml

    from llmgateway.config import apply_config, export_config, load_config

    provider = make_provider("http://127.0.0.1:9/v1", name="openai-main")
    route = make_route(provider, name="gpt-4o-mini")
    doc = {"monitoring": {"enabled": True, "default_interval_s": 60, "targets": [
        {"name": "mini-list", "model": "gpt-4o-mini", "provider": "openai-main", "upstream_model": "gpt-4o-mini",
         "kind": "model_list", "retries": 2, "monthly_cap_usd": 1.5, "interval_s": 45},
        {"name": "mini", "model": "gpt-4o-mini", "max_tokens": 3}]}}
    apply_config(load_config(yaml.safe_dump({"version": 1, **doc})))
    pinned = HealthTarget.objects.get(name="mini-list")
    assert pinned.route_target == route.targets.get() and pinned.kind == "model_list" and pinned.retries == 2
    assert float(pinned.monthly_cap_usd) == 1.5
    assert HealthTarget.objects.get(name="mini").max_tokens == 3
    exported = {t["name"]: t for t in export_config()["monitoring"]["targets"]}
    assert exported["mini-list"]["provider"] == "openai-main" and exported["mini-list"]["monthly_cap_usd"] == 1.5
    assert MonitoringSettings.load().monitoring_key.is_monitoring  # on from the file: the key exists


@pytest.mark.django_db
def test_yaml_refuses_short_intervals_and_unknown_upstreams():
    import yaml

    from llmgateway.config import ConfigError, apply_config, load_config

    make_route(make_provider("http://127.0.0.1:9/v1", name="openai-main"), name="gpt-4o-mini")
    doc = {"monitoring": {"targets": [
        {"name": "a", "model": "gpt-4o-mini", "interval_s": 5},
        {"name": "b", "model": "gpt-4o-mini", "provider": "openai-main", "upstream_model": "gpt-4o"}]}}
    with pytest.raises(ConfigError) as failure:
        apply_config(load_config(yaml.safe_dump({"version": 1, **doc})))
    text = str(failure.value)
    assert "monitoring.targets[0].interval_s" in text and "monitoring.targets[1].provider" in text


# ---------------------------------------------------------------- the admin


@pytest.fixture
def staff(client, django_user_model):
    client.force_login(django_user_model.objects.create_superuser("root", "root@example.com", "pw-for-tests"))
    return client


@pytest.mark.django_db
def test_switching_monitoring_on_in_the_admin_creates_the_key_and_shows_it(staff):
    MonitoringSettings.load()
    form = {"enabled": "on", "default_interval_s": "300", "default_prompt": "Say OK"}
    assert staff.post("/admin/healthcheck/monitoringsettings/1/change/", form).status_code == 302
    key = MonitoringSettings.load().monitoring_key
    assert key is not None and key.is_monitoring
    page = staff.get("/admin/healthcheck/monitoringsettings/1/change/").content.decode()
    assert key.name in page and "no limits" in page


@pytest.mark.django_db
def test_the_admin_refuses_a_probe_interval_under_30_seconds(staff):
    route = make_route(make_provider("http://127.0.0.1:9/v1"))
    form = {"name": "fast", "route": route.pk, "enabled": "on", "kind": "completion", "interval_s": "10",
            "max_tokens": "5", "timeout_s": "30", "retries": "0"}
    response = staff.post("/admin/healthcheck/healthtarget/add/", form)
    assert response.status_code == 200 and "at least 30 seconds" in response.content.decode()
    form["interval_s"] = "30"
    assert staff.post("/admin/healthcheck/healthtarget/add/", form).status_code == 302
    assert HealthTarget.objects.get(name="fast").interval_s == 30
