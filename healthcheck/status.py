"""What the public sees of health: cards for /status and the records of /public/health/*.

Read from each target's stored summary and from rollups, never from raw runs (except a
target's own run history, one page at a time). Nothing here names a provider, a base URL
or a key: only the target's name, the model name clients send, and measurements.
"""
import logging
import time
from dataclasses import dataclass
from datetime import datetime

from django.core.cache import cache
from django.core.paginator import Paginator
from django.utils import timezone

from llmgateway.redis import sync_client

from .conf import setting
from .dispatch import interval_of
from .models import HealthIncident, HealthRun, HealthTarget, MonitoringSettings
from .rollups import BUCKET_S, WINDOWS, Strip, bar_buckets, current_state, strip

log = logging.getLogger(__name__)

MAX_PAGE_SIZE = 100
INCIDENTS_SHOWN = 20


class BadQuery(ValueError):
    """A query parameter the public API cannot answer; becomes a 400."""


def public_targets(fields=None):
    """Enabled targets: with only `fields`, or all but what only the page's strips read."""
    targets = HealthTarget.objects.filter(enabled=True).select_related("route").order_by("route__name", "name")
    return targets.only(*fields) if fields else targets.defer("strip_segments", "strip_cells")


def target_record(target: HealthTarget, now: datetime | None = None) -> dict:
    """One target as the public API and the page show it."""
    summary = target.summary or {}
    availability = summary.get("availability") or {}
    return {
        "id": target.pk,
        "name": target.name,
        "model": target.route.name,
        "state": current_state(target, now),
        "availability": {name: availability.get(name) for name in WINDOWS},
        "p50_ms": summary.get("p50_ms"),
        "p95_ms": summary.get("p95_ms"),
        "errors_24h": summary.get("errors") or {},
        "last_run_at": _iso(target.last_run_at),
    }


# What a card reads of a target (loading whole rows, routes and all, was a third of the page).
CARD_FIELDS = ("pk", "name", "route__name", "summary", "strip_segments", "last_run_at", "state", "interval_s")


@dataclass
class Card:
    record: dict
    strip: Strip


def cards(now: datetime | None = None) -> list[Card]:
    """One card per target, with its 24-hour strip (one bar per probe interval): a few queries,
    whatever the number of targets."""
    now = now or timezone.now()
    monitoring = MonitoringSettings.load()
    # The cells only when a target's bar size changed since its last run (a query for it alone).
    return [Card(target_record(t, now), strip(t.strip_segments, bar_buckets(interval_of(t, monitoring)), now,
                                              cells=lambda t=t: t.strip_cells))
            for t in public_targets(CARD_FIELDS)]


# --- a short-lived cache of what pages show -------------------------------------------------

GENERATION_KEY = "gw:health:generation"


def bump_generation() -> None:
    """Say that what the pages show changed (a run or live traffic folded into rollups, a
    target edited): cached renderings built before are not served again (after a grace of
    HEALTH_STATUS_STALE_S)."""
    try:
        sync_client().incr(GENERATION_KEY)
    except Exception as exc:  # pages then rebuild once their grace is over
        log.warning("could not bump the status generation: %s", type(exc).__name__)


def generation() -> int | None:
    try:
        return int(sync_client().get(GENERATION_KEY) or 0)
    except Exception:
        return None


def cached(name: str, build):
    """build(), or what it returned before in this process when nothing the pages show has
    changed since (the generation in Redis; within HEALTH_STATUS_STALE_S of building, a change
    may wait). Keyed by the 5-minute bucket too: states and strips move on with the clock."""
    now = time.time()
    current = generation()
    key = f"health:{name}:{int(now) // BUCKET_S}"
    hit = cache.get(key)
    if hit is not None and current is not None and (
            hit["generation"] == current or now - hit["built"] < setting("HEALTH_STATUS_STALE_S")):
        return hit["value"]
    value = build()
    cache.set(key, {"generation": current, "built": now, "value": value}, timeout=BUCKET_S)
    return value


def overall_state(records: list[dict]) -> str:
    states = {r["state"] for r in records}
    for state in ("down", "degraded", "healthy"):
        if state in states:
            return state
    return "unknown"


def summary(now: datetime | None = None) -> dict:
    records = [target_record(t, now) for t in public_targets()]
    counts = {state: 0 for state in ("healthy", "degraded", "down", "unknown")}
    for record in records:
        counts[record["state"]] += 1
    return {"state": overall_state(records), "targets": len(records), "by_state": counts,
            "generated_at": _iso(now or timezone.now())}


def find_target(raw_id) -> HealthTarget:
    try:
        target_id = int(raw_id)
    except (TypeError, ValueError):
        raise BadQuery("target_id must be an integer.") from None
    target = public_targets().filter(pk=target_id).first()
    if target is None:
        raise LookupError(target_id)
    return target


def incidents(target: HealthTarget, limit: int = INCIDENTS_SHOWN) -> list[dict]:
    now = timezone.now()
    out = []
    for incident in HealthIncident.objects.filter(target=target)[:limit]:
        end = incident.ended_at or now
        out.append({"state": incident.state, "started_at": _iso(incident.started_at), "ended_at": _iso(incident.ended_at),
                    "duration_s": int((end - incident.started_at).total_seconds()), "ongoing": incident.ended_at is None})
    return out


def detail(target: HealthTarget) -> dict:
    return {**target_record(target), "incidents": incidents(target)}


def parse_window(raw: str | None) -> str:
    window = raw or "24h"
    if window not in WINDOWS:
        raise BadQuery(f"window must be one of: {', '.join(WINDOWS)}.")
    return window


def parse_page(raw_page, raw_size) -> tuple[int, int]:
    try:
        page = int(raw_page or 1)
        size = int(raw_size or 50)
    except ValueError:
        raise BadQuery("page and page_size must be integers.") from None
    if page < 1 or not 1 <= size <= MAX_PAGE_SIZE:
        raise BadQuery(f"page must be >= 1 and page_size between 1 and {MAX_PAGE_SIZE}.")
    return page, size


def run_record(run: HealthRun) -> dict:
    # No error message: upstream text is not for the public. The kind says what failed.
    return {"started_at": _iso(run.started_at), "outcome": run.outcome, "status_code": run.status_code,
            "latency_ms": _round(run.latency_ms), "ttfb_ms": _round(run.ttfb_ms), "error_kind": run.error_kind or None}


def runs_page(target: HealthTarget, window: str, page: int, page_size: int) -> dict:
    since = timezone.now() - WINDOWS[window]
    runs = HealthRun.objects.filter(target=target, started_at__gte=since).order_by("-started_at")
    paginator = Paginator(runs, page_size)
    items = list(runs[(page - 1) * page_size: page * page_size])
    return {"target_id": target.pk, "window": window, "page": page, "page_size": page_size,
            "total": paginator.count, "pages": paginator.num_pages, "runs": [run_record(r) for r in items]}


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat().replace("+00:00", "Z") if moment else None


def _round(value: float | None) -> float | None:
    return round(value, 1) if value is not None else None
