"""Live traffic blended into health: the upstream outcomes and latencies of clients' requests to
a monitored model fold into its 5-minute rollups, so /status is right between probes.

Off the hot path: a Celery task (queued by the dispatcher at most every
HEALTH_LIVE_FOLD_EVERY_S) reads the request log rows written since its cursor, in batches, and
folds them in. A gateway process does nothing more per request than it did before.

Which rows count, and for which health target:
- a health target pinned to one upstream: rows of its model served (or failed) by that
  upstream (same provider and upstream model);
- a health target of a whole model: every row of the model, as its clients saw it;
- only rows where an upstream was asked (a model listing or a refused request says nothing),
  and not the monitoring key's own rows (the probes are runs already);
- a success (2xx) counts its time to first byte as latency (comparable with a probe's tiny
  completion; a long answer's total time says nothing of the upstream's health);
- a failure only when the upstream failed: refused or unresolved connection, timeout, a bad
  or cut answer, a refused provider key, 429 or 5xx from the upstream. Failures of the
  client's making (a bad request, its key's limits, a disconnect) are not counted at all.

A request that failed over from one upstream to another is logged once, by the upstream that
answered last: the failed attempt before it is seen by circuits, not here.

The cursor (MonitoringSettings.live_log_cursor) moves by a conditional update, so of two
workers folding at once exactly one folds a given batch (the claims of dispatch.py).

Ids are handed out when rows are inserted, but several log writers commit in any order: a row
may become visible after a higher id has been folded, and a cursor past it would never see it.
So a fold reads only up to a horizon: the newest id seen at least HEALTH_LIVE_SETTLE_S ago (kept
in Redis), by when every row with a lower id has been committed (a writer's batch commits in
milliseconds). Live traffic reaches the rollups one fold later for it.
"""
import time
from collections import defaultdict
from datetime import timedelta

from django.db import transaction
from django.db.models import Max
from django.utils import timezone
from redis.exceptions import RedisError

from llmgateway.redis import sync_client
from routing.models import RequestLog

from .conf import setting
from .models import HealthRollup, HealthTarget, MonitoringSettings
from .probes import pipeline_error_kind
from .rollups import bucket_of, changed_pages, latency_bin, merge_counts, refresh_summary, change_state

BATCH = 5000
HORIZON_KEY = "gw:health:live:horizon"  # "<newest request-log id>:<when it was seen, epoch s>"
FIRST_LOOK_BACK = timedelta(hours=1)  # where a new cursor starts: not the whole history
# Request-log error kinds that are the upstream's failure (the rest are the client's doing).
UPSTREAM_FAILURES = {"upstream_connect", "upstream_timeout", "upstream_bad_answer", "stream_cut",
                     "upstream_stream_error", "upstream_auth", "upstream_http", "upstream_error"}


def live_outcome(status: int, error_kind: str, error_message: str) -> tuple[bool, str] | None:
    """(failed, probe error kind) of one logged request, or None when it says nothing of the upstream."""
    if not error_kind and 200 <= status < 300:
        return False, ""
    if error_kind not in UPSTREAM_FAILURES:
        return None
    if error_kind in ("upstream_http", "upstream_error") and status < 500 and status != 429:
        return None  # the upstream answered a 4xx of the client's making: it is up
    return True, pipeline_error_kind(status, error_kind, error_message or "")


def fold_live_traffic(max_batches: int = 10, now: float | None = None) -> int:
    """Fold request-log rows written since the cursor, up to the settled horizon, into the
    rollups of the targets they concern. Returns how many rows counted."""
    if not MonitoringSettings.load().enabled:
        return 0
    horizon = settled_horizon(time.time() if now is None else now)
    counted = 0
    for _ in range(max_batches):
        folded, more = _fold_batch(horizon)
        counted += folded
        if not more:
            break
    return counted


def settled_horizon(now: float) -> int:
    """The highest request-log id every row below which has surely been committed: the newest
    id seen at least HEALTH_LIVE_SETTLE_S ago (0 before there is one). Seeing the newest id now
    is remembered for a later fold. With a settle time of 0, the newest id now."""
    newest = RequestLog.objects.aggregate(newest=Max("pk"))["newest"] or 0
    settle = float(setting("HEALTH_LIVE_SETTLE_S"))
    if settle <= 0:
        return newest
    redis = sync_client()
    try:
        seen = redis.get(HORIZON_KEY)
        seen_id, _, seen_at = (seen.decode() if isinstance(seen, bytes) else seen or "").partition(":")
        settled = bool(seen_at) and now - float(seen_at) >= settle
        if settled or not seen_at:
            redis.set(HORIZON_KEY, f"{newest}:{now}")
    except RedisError:
        return 0  # no horizon to go by: fold nothing now, the next fold tries again
    return int(seen_id) if settled else 0  # not settled yet: what lies below the cursor is folded


def _fold_batch(horizon: int) -> tuple[int, bool]:
    monitoring = MonitoringSettings.load()
    if not monitoring.enabled:
        return 0, False
    cursor = monitoring.live_log_cursor
    if horizon <= cursor:
        return 0, False
    rows = RequestLog.objects.filter(pk__gt=cursor, pk__lte=horizon).order_by("pk")
    if cursor == 0:
        rows = rows.filter(created_at__gte=timezone.now() - FIRST_LOOK_BACK)
    batch = list(rows.values_list("pk", "created_at", "virtual_key_id", "route", "provider", "upstream_model",
                                  "status", "ttfb_ms", "latency_ms", "error_kind", "error_message")[:BATCH])
    if not batch:
        return 0, False
    targets = _targets_by_route({row[3] for row in batch})
    sums = defaultdict(lambda: {"runs": 0, "failures": 0, "latency_sum_ms": 0.0, "bins": {}, "errors": {}})
    counted = 0
    for _pk, created_at, key_id, route, provider, upstream_model, status, ttfb, latency, kind, message in batch:
        if not provider or (key_id is not None and key_id == monitoring.monitoring_key_id):
            continue  # no upstream was asked (a model listing, a refusal), or a probe: a run already
        outcome = live_outcome(status, kind, message)
        if outcome is None:
            continue
        failed, error_kind = outcome
        for target_id, pinned in targets.get(route, ()):
            if pinned is not None and pinned != (provider, upstream_model):
                continue
            counted += 1
            total = sums[(target_id, bucket_of(created_at))]
            total["runs"] += 1
            if failed:
                total["failures"] += 1
                merge_counts(total["errors"], {error_kind or "exception": 1})
            else:
                ms = ttfb if ttfb is not None else latency
                if ms is not None:
                    total["latency_sum_ms"] += ms
                    merge_counts(total["bins"], {latency_bin(ms): 1})
    with transaction.atomic():
        # The claim: only the worker that moves the cursor from where it read it folds this batch.
        won = MonitoringSettings.objects.filter(pk=1, live_log_cursor=cursor).update(live_log_cursor=batch[-1][0])
        if won != 1:
            return 0, False
        _add_to_rollups(sums)
    return counted, len(batch) == BATCH


def _targets_by_route(route_names: set[str]) -> dict[str, list[tuple[int, tuple[str, str] | None]]]:
    """model name -> [(health target id, (provider, upstream model) it is pinned to, or None)]."""
    out = defaultdict(list)
    targets = (HealthTarget.objects.filter(enabled=True, route__name__in=route_names)
               .values_list("pk", "route__name", "route_target__provider__name", "route_target__upstream_model"))
    for pk, route, provider, upstream_model in targets:
        out[route].append((pk, (provider, upstream_model) if provider is not None else None))
    return out


def _add_to_rollups(sums: dict) -> None:
    """Add the batch's sums to the rollups, then refresh each touched target's summary and state."""
    if not sums:
        return
    now = timezone.now()
    for (target_id, bucket), total in sums.items():
        rollup, _ = HealthRollup.objects.select_for_update().get_or_create(target_id=target_id, bucket=bucket)
        rollup.runs += total["runs"]
        rollup.live += total["runs"]
        rollup.failures += total["failures"]
        rollup.latency_sum_ms += total["latency_sum_ms"]
        merge_counts(rollup.latency_bins, total["bins"])
        merge_counts(rollup.errors, total["errors"])
        rollup.save()
    for target in HealthTarget.objects.select_for_update().filter(pk__in={t for t, _ in sums}):
        refresh_summary(target, now)
        change_state(target, target.summary["state"], now)
        target.save(update_fields=["summary", "strip_segments", "strip_cells", "state"])
    changed_pages()
