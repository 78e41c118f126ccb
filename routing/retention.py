"""Retention of the request log and of refused traffic: which rows are old enough to go, deleted
in short batches by a Celery beat task (routing/tasks.py), and the one-line note the admin shows.

Settings (read at call time, so tests and deployments can change them):
    GATEWAY_LOG_RETENTION_DAYS              request-log rows older than this go; 0 keeps them forever (0)
    GATEWAY_REFUSED_TRAFFIC_RETENTION_DAYS  refused-traffic rows older than this go; 0 keeps them (30)

The budget rule: keys.limits.rebuild_spend_from_logs rebuilds a budgeted key's spend in its current
budget period from that period's request-log rows, so those rows are kept whatever the retention:
a row goes only when it is past the retention AND no budgeted key's current period contains it. A
key with a "total" budget has one period that never ends: its rows are kept for as long as it has it.
"""
from datetime import datetime, timedelta
from datetime import timezone as dt_timezone

from django.conf import settings
from django.db.models import Q, QuerySet
from django.utils import timezone
from django.utils.translation import gettext, ngettext

from keys.limits import budget_period
from keys.models import VirtualKey

from .models import RefusedTraffic, RequestLog

# Ids per DELETE: each batch is its own short transaction, so a big backlog never holds a long
# write lock (SQLite allows one writer; the log writer and the monitor keep writing meanwhile).
PURGE_BATCH = 5000


def log_retention_days() -> int:
    return int(getattr(settings, "GATEWAY_LOG_RETENTION_DAYS", 0))


def refused_traffic_retention_days() -> int:
    return int(getattr(settings, "GATEWAY_REFUSED_TRAFFIC_RETENTION_DAYS", 30))


def purge_expired_rows(*, now: datetime | None = None, batch: int = PURGE_BATCH) -> dict[str, int]:
    """Delete the request-log and refused-traffic rows past their retention; how many of each."""
    now = now or timezone.now()
    return {
        "request_logs": delete_in_batches(expired_request_logs(now, log_retention_days()), batch),
        "refused_traffic": delete_in_batches(expired_refused_traffic(now, refused_traffic_retention_days()), batch),
    }


def expired_request_logs(now: datetime, days: int) -> QuerySet:
    """Request-log rows older than `days` that no budgeted key's current period needs, oldest
    first (none for 0)."""
    if days <= 0:
        return RequestLog.objects.none()
    cutoff = now - timedelta(days=days)
    rows = RequestLog.objects.filter(created_at__lt=cutoff).order_by("created_at", "pk")
    needed = needed_by_budgets(now, cutoff)
    return rows.exclude(needed) if needed is not None else rows


def expired_refused_traffic(now: datetime, days: int) -> QuerySet:
    """Refused-traffic rows whose minute is older than `days`, oldest first (none for 0)."""
    if days <= 0:
        return RefusedTraffic.objects.none()
    return RefusedTraffic.objects.filter(minute__lt=now - timedelta(days=days)).order_by("minute", "pk")


def needed_by_budgets(now: datetime, cutoff: datetime) -> Q | None:
    """Request-log rows before `cutoff` that a budgeted key's current budget period contains: one
    condition per budget period in use, the keys named by a subquery (there may be 100,000).
    None when no such row can exist."""
    needed = None
    budgeted = VirtualKey.objects.filter(budget_usd__isnull=False)
    periods = budgeted.order_by().values_list("budget_period", flat=True).distinct()
    for period in sorted(periods):
        _ident, start, _reset = budget_period(period, now.timestamp())
        keys = budgeted.filter(budget_period=period).values("pk")
        if start is None:  # "total": the period began with the key
            needed = _either(needed, Q(virtual_key_id__in=keys))
            continue
        period_start = datetime.fromtimestamp(start, dt_timezone.utc)
        # A period that began after the cutoff contains no row the cutoff would delete.
        if period_start < cutoff:
            needed = _either(needed, Q(virtual_key_id__in=keys, created_at__gte=period_start))
    return needed


def _either(first: Q | None, second: Q) -> Q:
    return second if first is None else first | second


def delete_in_batches(rows: QuerySet, batch: int = PURGE_BATCH) -> int:
    """Delete `rows`, in their order, at most `batch` ids per DELETE, until none is left; the
    count. Autocommit makes each DELETE a transaction of its own."""
    model = rows.model
    deleted = 0
    while True:
        ids = list(rows.values_list("pk", flat=True)[:batch])
        if not ids:
            return deleted
        deleted += model.objects.filter(pk__in=ids).delete()[0]


def log_retention_note() -> str:
    """The request log's retention, in one translated line for the admin."""
    days = log_retention_days()
    if days <= 0:
        return gettext("Request logs are kept forever (GATEWAY_LOG_RETENTION_DAYS is 0).")
    return ngettext(
        "Request logs older than %(days)d day are deleted every hour (GATEWAY_LOG_RETENTION_DAYS), except "
        "those the current period of a budgeted key still needs.",
        "Request logs older than %(days)d days are deleted every hour (GATEWAY_LOG_RETENTION_DAYS), except "
        "those the current period of a budgeted key still needs.",
        days) % {"days": days}


def refused_traffic_retention_note() -> str:
    """Refused traffic's retention, in one translated line for the admin."""
    days = refused_traffic_retention_days()
    if days <= 0:
        return gettext("Refused traffic is kept forever (GATEWAY_REFUSED_TRAFFIC_RETENTION_DAYS is 0).")
    return ngettext(
        "Refused traffic older than %(days)d day is deleted every hour (GATEWAY_REFUSED_TRAFFIC_RETENTION_DAYS).",
        "Refused traffic older than %(days)d days is deleted every hour (GATEWAY_REFUSED_TRAFFIC_RETENTION_DAYS).",
        days) % {"days": days}
