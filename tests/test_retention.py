"""Retention: request-log and refused-traffic rows past their retention are deleted in short
batches, newer ones and those a budget period still needs stay, and 0 keeps everything."""
import itertools
import os
import re
import subprocess
import sys
from datetime import datetime, timedelta
from datetime import timezone as dt_timezone
from decimal import Decimal
from pathlib import Path

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from keys.limits import budget_period, rebuild_spend_from_logs, spend_key
from llmgateway.redis import sync_client
from routing import retention
from routing.models import RefusedTraffic, RequestLog
from tests.factories import make_key

BASE_DIR = Path(__file__).resolve().parent.parent
# A Sunday: its week began on Monday the 14th, its month on the 1st.
NOW = datetime(2026, 12, 20, 12, 0, tzinfo=dt_timezone.utc)
_ids = itertools.count()


def make_request_log(*, days_ago: float = 0, now: datetime = NOW, **fields) -> RequestLog:
    fields.setdefault("request_id", f"req_retention_{next(_ids)}")
    fields.setdefault("created_at", now - timedelta(days=days_ago))
    fields.setdefault("endpoint", "chat")
    fields.setdefault("status", 200)
    return RequestLog.objects.create(**fields)


def make_refused_traffic(*, days_ago: float = 0, now: datetime = NOW, **fields) -> RefusedTraffic:
    minute = (now - timedelta(days=days_ago)).replace(second=0, microsecond=0)
    fields.setdefault("client_ip", f"203.0.113.{next(_ids) % 250}")
    fields.setdefault("reason", "unknown_key")
    fields.setdefault("endpoint", "chat")
    fields.setdefault("count", 3)
    return RefusedTraffic.objects.create(minute=minute, first_seen=minute, last_seen=minute, **fields)


def surviving_logs() -> set[str]:
    return set(RequestLog.objects.values_list("request_id", flat=True))


@pytest.fixture
def retention_days(settings):
    """Set both retentions for one test; budget periods start at midnight UTC."""
    settings.GATEWAY_BUDGET_TIME_ZONE = "UTC"

    def set_days(logs: int, refused: int = 30):
        settings.GATEWAY_LOG_RETENTION_DAYS = logs
        settings.GATEWAY_REFUSED_TRAFFIC_RETENTION_DAYS = refused

    return set_days


@pytest.mark.django_db
def test_request_logs_older_than_the_retention_go_and_newer_ones_stay(retention_days):
    retention_days(logs=7)
    key, _secret = make_key()
    old = [make_request_log(days_ago=8, virtual_key=key), make_request_log(days_ago=400)]
    new = [make_request_log(days_ago=6.9, virtual_key=key), make_request_log(days_ago=0)]

    deleted = retention.purge_expired_rows(now=NOW)

    assert deleted["request_logs"] == len(old)
    assert surviving_logs() == {row.request_id for row in new}


@pytest.mark.django_db
def test_refused_traffic_older_than_its_retention_goes_and_newer_stays(retention_days):
    retention_days(logs=0, refused=30)
    make_refused_traffic(days_ago=31)
    make_refused_traffic(days_ago=90)
    recent = make_refused_traffic(days_ago=29)

    deleted = retention.purge_expired_rows(now=NOW)

    assert deleted == {"request_logs": 0, "refused_traffic": 2}
    assert list(RefusedTraffic.objects.values_list("pk", flat=True)) == [recent.pk]


@pytest.mark.django_db
def test_zero_keeps_every_row_however_old(retention_days):
    retention_days(logs=0, refused=0)
    make_request_log(days_ago=3000)
    make_refused_traffic(days_ago=3000)

    assert retention.purge_expired_rows(now=NOW) == {"request_logs": 0, "refused_traffic": 0}
    assert RequestLog.objects.count() == 1 and RefusedTraffic.objects.count() == 1


@pytest.mark.django_db
def test_batches_loop_until_every_expired_row_is_gone(retention_days):
    retention_days(logs=1, refused=1)
    for days_ago in range(2, 9):
        make_request_log(days_ago=days_ago)
        make_refused_traffic(days_ago=days_ago)
    kept = make_request_log(days_ago=0)

    with CaptureQueriesContext(connection) as queries:
        deleted = retention.purge_expired_rows(now=NOW, batch=3)

    assert deleted == {"request_logs": 7, "refused_traffic": 7}
    deletes = [q["sql"] for q in queries.captured_queries if q["sql"].startswith("DELETE")]
    ids_per_delete = [len(re.search(r" IN \(([^)]*)\)", sql).group(1).split(",")) for sql in deletes]
    # 7 rows, 3 ids a statement: 3 + 3 + 1 for each table.
    assert ids_per_delete == [3, 3, 1, 3, 3, 1]
    assert surviving_logs() == {kept.request_id} and not RefusedTraffic.objects.exists()


@pytest.mark.django_db
def test_a_big_backlog_goes_5000_ids_a_statement(retention_days):
    retention_days(logs=1)
    old = NOW - timedelta(days=2)
    RequestLog.objects.bulk_create(
        [RequestLog(request_id=f"req_backlog_{i}", created_at=old, endpoint="chat", status=200) for i in range(5001)],
        batch_size=500)

    with CaptureQueriesContext(connection) as queries:
        assert retention.purge_expired_rows(now=NOW)["request_logs"] == 5001

    deletes = [q["sql"] for q in queries.captured_queries if q["sql"].startswith("DELETE")]
    assert [sql.count(",") + 1 for sql in deletes] == [retention.PURGE_BATCH, 1]
    assert not RequestLog.objects.exists()


@pytest.mark.django_db
def test_rows_a_current_budget_period_needs_stay_past_the_retention(retention_days):
    retention_days(logs=7)  # cutoff: the 13th
    monthly, _ = make_key(budget_usd=Decimal("10"), budget_period="monthly")
    weekly, _ = make_key(budget_usd=Decimal("10"), budget_period="weekly")
    total, _ = make_key(budget_usd=Decimal("10"), budget_period="total")
    unbudgeted, _ = make_key(budget_period="monthly")

    needed = [
        make_request_log(days_ago=15, virtual_key=monthly, cost_usd=Decimal("1.5")),  # the 5th: this month
        make_request_log(days_ago=2000, virtual_key=total, cost_usd=Decimal("4")),  # a total budget never resets
    ]
    expired = [
        make_request_log(days_ago=25, virtual_key=monthly, cost_usd=Decimal("9")),  # last month
        make_request_log(days_ago=10, virtual_key=weekly, cost_usd=Decimal("2")),  # the 10th: last week
        make_request_log(days_ago=15, virtual_key=unbudgeted),
        make_request_log(days_ago=15),  # no key (a deleted one)
    ]

    assert retention.purge_expired_rows(now=NOW)["request_logs"] == len(expired)
    assert surviving_logs() == {row.request_id for row in needed}


@pytest.mark.django_db
def test_a_budget_rebuilt_after_the_purge_counts_what_it_counted_before(retention_days):
    retention_days(logs=3)
    monthly, _ = make_key(budget_usd=Decimal("10"), budget_period="monthly")
    for days_ago, cost in [(1, "0.25"), (5, "0.50"), (12, "1.00"), (19, "2.00"), (21, "8.00")]:
        make_request_log(days_ago=days_ago, virtual_key=monthly, cost_usd=Decimal(cost))

    def rebuilt_spend() -> Decimal:
        # Redis forgot the spend (a restart): the rebuild reads the request log alone.
        sync_client().delete(spend_key(monthly.pk, budget_period("monthly", NOW.timestamp())[0]))
        return rebuild_spend_from_logs(monthly.pk, now=NOW.timestamp())

    before = rebuilt_spend()
    assert retention.purge_expired_rows(now=NOW)["request_logs"] == 1  # the 21 days old row: November
    assert rebuilt_spend() == before == Decimal("3.75")


@pytest.mark.django_db
def test_the_beat_task_purges_with_the_settings_in_force(retention_days):
    from llmgateway.celery import app
    from routing.tasks import purge_expired_traffic

    retention_days(logs=2, refused=2)
    now = timezone.now()
    make_request_log(days_ago=3, now=now)
    kept = make_request_log(days_ago=1, now=now)
    make_refused_traffic(days_ago=3, now=now)

    app.loader.import_default_modules()  # the worker's autodiscovery: beat's task name must exist there
    scheduled = app.conf.beat_schedule["purge-expired-traffic"]
    assert scheduled == {"task": "routing.tasks.purge_expired_traffic", "schedule": 3600.0}
    assert app.tasks[scheduled["task"]].name == purge_expired_traffic.name
    assert purge_expired_traffic() == {"request_logs": 1, "refused_traffic": 1}
    assert surviving_logs() == {kept.request_id}


@pytest.fixture
def staff(client, django_user_model):
    client.force_login(django_user_model.objects.create_superuser("ops", "ops@example.com", "pw-for-tests-only"))
    return client


@pytest.mark.django_db
def test_the_admin_lists_say_how_long_rows_are_kept(staff, retention_days):
    retention_days(logs=14, refused=0)
    logs = staff.get(reverse("admin:routing_requestlog_changelist")).content.decode()
    refused = staff.get(reverse("admin:routing_refusedtraffic_changelist")).content.decode()
    assert "Request logs older than 14 days are deleted every hour" in logs
    assert "Refused traffic is kept forever (GATEWAY_REFUSED_TRAFFIC_RETENTION_DAYS is 0)." in refused


@pytest.mark.django_db
def test_the_admin_notes_are_in_chinese_for_a_chinese_browser(staff, retention_days):
    retention_days(logs=0, refused=30)
    logs = staff.get(reverse("admin:routing_requestlog_changelist"), HTTP_ACCEPT_LANGUAGE="zh-hans").content.decode()
    refused = staff.get(reverse("admin:routing_refusedtraffic_changelist"),
                        HTTP_ACCEPT_LANGUAGE="zh-hans").content.decode()
    assert "请求日志永久保留" in logs
    assert "超过 30 天的被拒绝流量每小时删除一次" in refused


def settings_loaded_with(**environ) -> subprocess.CompletedProcess:
    code = ("import django; django.setup(); from django.conf import settings as s; "
            "print(s.GATEWAY_LOG_RETENTION_DAYS, s.GATEWAY_REFUSED_TRAFFIC_RETENTION_DAYS)")
    env = {k: v for k, v in os.environ.items() if not k.endswith("_RETENTION_DAYS")}
    env.update(environ, DJANGO_SETTINGS_MODULE="llmgateway.settings")
    return subprocess.run([sys.executable, "-c", code], cwd=BASE_DIR, env=env, capture_output=True, text=True,
                          timeout=60)


def test_by_default_request_logs_are_kept_forever_and_refused_traffic_30_days():
    loaded = settings_loaded_with()
    assert loaded.returncode == 0, loaded.stderr
    assert loaded.stdout.split() == ["0", "30"]


@pytest.mark.parametrize("value", ["-1", "seven", "1.5"])
def test_a_retention_that_is_no_whole_number_of_days_stops_startup(value):
    loaded = settings_loaded_with(GATEWAY_LOG_RETENTION_DAYS=value)
    assert loaded.returncode != 0
    assert f"GATEWAY_LOG_RETENTION_DAYS must be a whole number of days, 0 to keep rows forever; got '{value}'" \
        in loaded.stderr
