"""/status and /public/health/*: off means 404, shapes of the answers, rate limit, no secrets."""
import pytest
from django.utils import timezone

from healthcheck.models import HealthTarget, MonitoringSettings
from healthcheck.ratelimit import client_ip
from llmgateway.redis import sync_client

from .conftest import PROVIDER_SECRET
from .test_health_monitor import make_provider, make_route, make_run, make_target, turn_monitoring

PUBLIC_URLS = ["/status", "/public/health/summary", "/public/health/targets"]
BASE_URL = "http://10.9.8.7:4321/v1"


@pytest.fixture(autouse=True)
def fresh_rate_limits(redis_url):
    client = sync_client()
    for key in client.scan_iter("gw:health:public:*"):
        client.delete(key)


@pytest.fixture(autouse=True)
def fresh_pages(settings):
    """Every test sees its own data on the page: no rendering cached by an earlier one."""
    from django.core.cache import cache

    settings.HEALTH_STATUS_STALE_S = 0
    cache.clear()


@pytest.fixture
def observed(db):
    """Monitoring on, two models with an hour of runs: one healthy, one down."""
    turn_monitoring(True)
    provider = make_provider(BASE_URL)
    good = make_target(make_route(provider, name="gpt-4o-mini"), name="gpt-4o-mini")
    bad = make_target(make_route(provider, name="claude-haiku"), name="claude-haiku")
    for minutes in range(55, 0, -5):
        make_run(good, minutes_ago=minutes, latency_ms=120.0 + minutes)
        make_run(bad, minutes_ago=minutes, outcome="down", error_kind="upstream_5xx", latency_ms=None)
    return {"good": good, "bad": bad}


@pytest.mark.django_db
@pytest.mark.parametrize("url", PUBLIC_URLS + ["/public/health/detail?target_id=1", "/status/1"])
def test_everything_public_answers_404_while_monitoring_is_off(client, url):
    MonitoringSettings.load()
    assert client.get(url).status_code == 404


def test_the_summary_counts_targets_by_state(client, observed):
    body = client.get("/public/health/summary").json()
    assert body["state"] == "down"
    assert body["by_state"] == {"healthy": 1, "degraded": 0, "down": 1, "unknown": 0}


def test_targets_carry_state_availability_and_percentiles(client, observed):
    response = client.get("/public/health/targets")
    assert "public" in response["Cache-Control"] and "max-age=" in response["Cache-Control"]
    records = {r["name"]: r for r in response.json()["targets"]}
    assert records["gpt-4o-mini"]["state"] == "healthy"
    assert records["gpt-4o-mini"]["availability"]["1h"] == 100.0
    assert 120 <= records["gpt-4o-mini"]["p50_ms"] <= 200
    assert records["claude-haiku"]["state"] == "down"
    assert records["claude-haiku"]["errors_24h"] == {"upstream_5xx": 11}


def test_detail_lists_incidents_and_runs_are_paged(client, observed):
    bad = observed["bad"]
    detail = client.get(f"/public/health/detail?target_id={bad.pk}").json()
    assert detail["incidents"][0]["state"] == "down" and detail["incidents"][0]["ongoing"]
    page = client.get(f"/public/health/runs?target_id={bad.pk}&window=1h&page=2&page_size=5").json()
    assert (page["total"], page["pages"], page["page"], len(page["runs"])) == (11, 3, 2, 5)
    assert page["runs"][0]["error_kind"] == "upstream_5xx"


@pytest.mark.parametrize("query, status", [
    ("target_id=abc", 400), ("target_id=999999", 404), ("target_id={id}&window=2d", 400),
    ("target_id={id}&page_size=101", 400), ("target_id={id}&page=0", 400), ("target_id={id}&page=x", 400),
])
def test_bad_queries_get_clear_errors(client, observed, query, status):
    response = client.get("/public/health/runs?" + query.format(id=observed["good"].pk))
    assert response.status_code == status
    assert response.json()["error"]["message"]


def test_nothing_public_reveals_a_provider_key_a_base_url_or_a_virtual_key(client, observed):
    MonitoringSettings.load().monitoring_key  # noqa: B018 (exists)
    key_prefix = MonitoringSettings.load().monitoring_key.prefix
    bad = observed["bad"]
    pages = [client.get(url).content.decode() for url in PUBLIC_URLS + [
        f"/public/health/detail?target_id={bad.pk}", f"/public/health/runs?target_id={bad.pk}", f"/status/{bad.pk}"]]
    for page in pages:
        assert PROVIDER_SECRET not in page and "10.9.8.7" not in page and key_prefix not in page


def test_the_public_api_allows_60_requests_a_minute_per_ip_then_429_with_retry_after(client, observed, settings):
    settings.HEALTH_PUBLIC_RPM = 60
    statuses = [client.get("/public/health/summary", REMOTE_ADDR="192.0.2.10").status_code for _ in range(60)]
    assert statuses == [200] * 60
    refused = client.get("/public/health/summary", REMOTE_ADDR="192.0.2.10")
    assert refused.status_code == 429
    assert 1 <= int(refused["Retry-After"]) <= 60
    assert refused.json()["error"]["code"] == "rate_limited"
    assert client.get("/public/health/summary", REMOTE_ADDR="192.0.2.11").status_code == 200


def test_a_spoofed_forwarded_for_does_not_escape_the_limit(client, observed, settings):
    settings.HEALTH_PUBLIC_RPM = 3
    for n in range(3):
        assert client.get("/public/health/summary", REMOTE_ADDR="192.0.2.20",
                          HTTP_X_FORWARDED_FOR=f"203.0.113.{n}").status_code == 200
    assert client.get("/public/health/summary", REMOTE_ADDR="192.0.2.20",
                      HTTP_X_FORWARDED_FOR="203.0.113.99").status_code == 429


def test_the_client_ip_is_the_peer_unless_the_peer_is_a_trusted_proxy():
    trusted = ["10.0.0.0/8", "192.0.2.1"]
    assert client_ip("198.51.100.7", "203.0.113.5", trusted) == "198.51.100.7"
    assert client_ip("10.1.2.3", "203.0.113.5", trusted) == "203.0.113.5"
    assert client_ip("10.1.2.3", "1.1.1.1, 203.0.113.5, 192.0.2.1", trusted) == "203.0.113.5"
    assert client_ip("10.1.2.3", "not-an-ip", trusted) == "10.1.2.3"
    assert client_ip("10.1.2.3", None, trusted) == "10.1.2.3"


def test_the_page_shows_a_card_per_model_with_a_24_hour_strip(client, observed):
    response = client.get("/status")
    html = response.content.decode()
    assert response.status_code == 200
    assert html.count('class="card"') == 2
    assert html.count('class="strip dense"') == 2  # default interval: one bar per 5 minutes
    assert html.count('data-bars="288"') == 2
    assert 'hx-trigger="every 60s"' in html and "htmx.min.js" in html
    assert 'href="/status"' in html  # the refresh works without JavaScript too
    assert "Operational" in html and "Down" in html


def strip_of(html: str, target_id: int) -> list[tuple[str, int]]:
    """(colour, bars) of each segment of a card's strip."""
    import re

    card = html[html.index(f'data-target-id="{target_id}"'):]
    card = card[:card.index("</section>")]
    return [(state, int(bars)) for state, bars in re.findall(r'<span class="(\w+)" style="flex-grow:(\d+)"', card)]


def test_the_strip_has_one_bar_per_probe_interval_coloured_by_availability(client, observed):
    good, bad = observed["good"], observed["bad"]
    HealthTarget.objects.filter(pk=bad.pk).update(interval_s=900)
    html = client.get("/status").content.decode()
    good_strip, bad_strip = strip_of(html, good.pk), strip_of(html, bad.pk)
    assert sum(bars for _, bars in good_strip) == 288  # 5-minute probes: 5-minute bars
    assert sum(bars for _, bars in bad_strip) == 96  # 15-minute probes: 15-minute bars
    # Nothing until an hour ago (grey), then a run every 5 minutes until 5 minutes ago: green
    # for one, red for the other (and grey again for a current bar without a run yet).
    assert [state for state, _ in good_strip][:2] == ["unknown", "healthy"]
    assert 11 <= dict(good_strip)["healthy"] <= 12
    assert [state for state, _ in bad_strip][:2] == ["unknown", "down"]
    assert 4 <= dict(bad_strip)["down"] <= 5
    assert 'data-bar-minutes="15"' in html


def test_htmx_gets_only_the_cards_from_the_same_view(client, observed):
    response = client.get("/status", HTTP_HX_REQUEST="true")
    html = response.content.decode()
    assert 'class="card"' in html and "<html" not in html
    assert "HX-Request" in response["Vary"]


def test_the_page_speaks_simplified_chinese(client, observed):
    html = client.get("/status", HTTP_ACCEPT_LANGUAGE="zh-Hans").content.decode()
    assert "服务状态" in html and "正常运行" in html
    assert "服务状态" in client.get("/status?lang=zh-hans").content.decode()


def test_a_target_page_shows_its_incidents_and_runs(client, observed):
    html = client.get(f"/status/{observed['bad'].pk}").content.decode()
    assert "Incidents" in html and "Upstream error (5xx)" in html
    assert client.get("/status/999999").status_code == 404


def test_a_disabled_target_is_not_public(client, observed):
    HealthTarget.objects.filter(pk=observed["bad"].pk).update(enabled=False)
    names = [r["name"] for r in client.get("/public/health/targets").json()["targets"]]
    assert names == ["gpt-4o-mini"]


def test_a_target_with_no_run_in_the_last_hour_is_unknown(client, observed):
    HealthTarget.objects.filter(pk=observed["good"].pk).update(last_run_at=timezone.now() - timezone.timedelta(hours=2))
    records = {r["name"]: r for r in client.get("/public/health/targets").json()["targets"]}
    assert records["gpt-4o-mini"]["state"] == "unknown"


def test_the_cards_are_rendered_once_and_again_only_after_a_run_changes_them(client, observed):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    with CaptureQueriesContext(connection) as first:
        assert client.get("/status").status_code == 200
    with CaptureQueriesContext(connection) as again:
        cached = client.get("/status").content.decode()
    assert len(again) < len(first)
    assert not any("healthtarget" in q["sql"] for q in again.captured_queries)  # served from the cache
    assert 'data-state="down"' in cached

    for minutes in (4, 4, 3, 3, 2, 2, 1, 1, 0):
        make_run(observed["bad"], minutes_ago=minutes, latency_ms=90.0)  # the bad one recovers
    with CaptureQueriesContext(connection) as after_runs:
        html = client.get("/status").content.decode()
    assert any("healthtarget" in q["sql"] for q in after_runs.captured_queries)  # rebuilt
    measured = [state for state, _ in strip_of(html, observed["bad"].pk) if state != "unknown"]
    assert measured[-1] in ("healthy", "degraded")


def test_a_kept_strip_moves_on_with_the_clock_without_reading_rollups():
    from datetime import timedelta

    from healthcheck.rollups import BUCKET_S, bucket_of, bucket_start, keep_strip, strip

    now = bucket_start(bucket_of(timezone.now())) + timedelta(seconds=1)
    current = bucket_of(now)
    rows = [(current - age, 1, 1 if age == 2 else 0) for age in range(12)]  # an hour, one failure
    kept, cells = keep_strip(rows, current, per_bar=1)

    assert [(s["state"], s["bars"]) for s in strip(kept, 1, now).segments] == [
        ("unknown", 276), ("healthy", 9), ("down", 1), ("healthy", 2)]
    later = strip(kept, 1, now + timedelta(seconds=3 * BUCKET_S))  # three buckets without a run since
    assert [(s["state"], s["bars"]) for s in later.segments] == [
        ("unknown", 273), ("healthy", 9), ("down", 1), ("healthy", 2), ("unknown", 3)]
    hourly = strip(kept, 12, now, cells=lambda: cells)  # another bar size: cut again from the cells
    assert sum(s["bars"] for s in hourly.segments) == 24
    failing_hours = [s for s in hourly.segments if s["state"] in ("degraded", "down")]
    assert len(failing_hours) == 1 and failing_hours[0]["bars"] == 1  # the hour with the failure
