"""Runs summed into 5-minute rollups as they arrive, and everything pages show read from those:
state, availability, percentiles, error kinds, incidents, the 24-hour strip.

Latency percentiles come from a fixed log-spaced histogram (bins 25% wide), so any window
is a sum of rollups and a percentile is accurate to one bin.
"""
import math
from dataclasses import dataclass
from datetime import datetime, timedelta
from datetime import timezone as dt_timezone
from decimal import Decimal

from django.db import transaction
from django.db.models import Sum
from django.utils import timezone

from .conf import setting
from .models import HealthIncident, HealthRollup, HealthRun, HealthTarget

BUCKET_S = 300
WINDOWS = {"1h": timedelta(hours=1), "24h": timedelta(hours=24), "7d": timedelta(days=7)}
# Latency bins: bin 0 holds <= 10 ms, bin i holds (10·1.25^(i-1), 10·1.25^i] ms.
BIN_BASE_MS = 10.0
BIN_RATIO = 1.25
# Buckets the strip keeps per target: 24 h, and an hour more so the oldest of hour-long bars
# is whole.
STRIP_CELLS = 25 * 12
DEGRADED_BELOW = 0.20  # error share in the last hour under which a target is degraded, not down


def bucket_of(moment: datetime) -> int:
    return int(moment.timestamp()) // BUCKET_S


def bucket_start(bucket: int) -> datetime:
    return datetime.fromtimestamp(bucket * BUCKET_S, tz=dt_timezone.utc)


def latency_bin(ms: float) -> int:
    if ms <= BIN_BASE_MS:
        return 0
    return math.ceil(math.log(ms / BIN_BASE_MS, BIN_RATIO) - 1e-9)


def bin_upper_ms(index: int) -> float:
    return BIN_BASE_MS * BIN_RATIO ** index


def percentile(bins: dict, q: float) -> float | None:
    """The q-quantile (0..1) of a merged histogram, as its bin's upper bound."""
    total = sum(bins.values())
    if not total:
        return None
    wanted = q * total
    seen = 0
    for index in sorted(bins, key=int):
        seen += bins[index]
        if seen >= wanted:
            return round(bin_upper_ms(int(index)), 1)
    return round(bin_upper_ms(int(max(bins, key=int))), 1)


def state_of(runs: int, failures: int) -> str:
    """healthy: no errors; degraded: under 20% errors; down: more; unknown: no runs."""
    if runs == 0:
        return "unknown"
    if failures == 0:
        return "healthy"
    return "degraded" if failures / runs < DEGRADED_BELOW else "down"


def availability(runs: int, failures: int) -> float | None:
    return round(100.0 * (runs - failures) / runs, 2) if runs else None


def merge_counts(into: dict, more: dict) -> dict:
    for name, count in more.items():
        into[str(name)] = into.get(str(name), 0) + count
    return into


def record_run(run: HealthRun) -> HealthTarget:
    """Fold one new run into its rollup, the target's summary, state and incidents."""
    failed = run.outcome == HealthRun.Outcome.DOWN
    with transaction.atomic():
        target = HealthTarget.objects.select_for_update().get(pk=run.target_id)
        rollup, _ = HealthRollup.objects.select_for_update().get_or_create(target=target, bucket=bucket_of(run.started_at))
        rollup.runs += 1
        if failed:
            rollup.failures += 1
            merge_counts(rollup.errors, {run.error_kind or "exception": 1})
        elif run.latency_ms is not None:
            rollup.latency_sum_ms += run.latency_ms
            merge_counts(rollup.latency_bins, {latency_bin(run.latency_ms): 1})
        rollup.save()

        now = timezone.now()
        summary = refresh_summary(target, now)
        _record_spend(target, run, now)
        target.summary = summary
        target.last_run_at = max(run.started_at, target.last_run_at or run.started_at)
        if failed:
            target.consecutive_failures += 1
            target.consecutive_successes = 0
        else:
            target.consecutive_successes += 1
            target.consecutive_failures = 0
        change_state(target, summary["state"], run.started_at)
        target.save(update_fields=["summary", "strip_segments", "strip_cells", "last_run_at", "state", "consecutive_failures",
                                   "consecutive_successes", "spend_month", "spend_month_usd", "spend_total_usd"])
        changed_pages()
    return target


def changed_pages() -> None:
    """Cached status renderings are stale once the change is committed (saving the target
    already said so, but a page built in between would have read the old rows)."""
    from .status import bump_generation

    transaction.on_commit(bump_generation)


def summarize(target_id: int, now: datetime, strip_into: dict | None = None, per_bar: int = 1) -> dict:
    """State, availability per window, P50/P95 and error kinds over 24 h, from rollups only.
    Given `strip_into` (a dict), it gets the strip the target keeps (keep_strip: "segments"
    and "cells"), `per_bar` buckets a bar."""
    current = bucket_of(now)
    rows = list(HealthRollup.objects.filter(target_id=target_id, bucket__gt=current - STRIP_CELLS)
                .values_list("bucket", "runs", "failures", "latency_bins", "errors"))
    if strip_into is not None:
        strip_into["segments"], strip_into["cells"] = keep_strip(rows, current, per_bar)
    bins, errors = {}, {}
    totals = {"1h": [0, 0], "24h": [0, 0]}
    for bucket, runs, failures, latency_bins, error_counts in rows:
        if bucket <= current - 24 * 12:
            continue  # kept for the strip only
        merge_counts(bins, latency_bins)
        merge_counts(errors, error_counts)
        totals["24h"][0] += runs
        totals["24h"][1] += failures
        if bucket > current - 12:
            totals["1h"][0] += runs
            totals["1h"][1] += failures
    week = HealthRollup.objects.filter(target_id=target_id, bucket__gt=current - 7 * 24 * 12).aggregate(
        runs=Sum("runs"), failures=Sum("failures"))
    totals["7d"] = [week["runs"] or 0, week["failures"] or 0]
    return {
        "state": state_of(*totals["1h"]),
        "availability": {name: availability(*totals[name]) for name in WINDOWS},
        "runs": {name: totals[name][0] for name in WINDOWS},
        "p50_ms": percentile(bins, 0.50),
        "p95_ms": percentile(bins, 0.95),
        "errors": dict(sorted(errors.items(), key=lambda item: -item[1])),
    }


def refresh_summary(target: HealthTarget, now: datetime) -> dict:
    """Recompute the target's summary and kept strip (not saved); the summary."""
    from .dispatch import interval_of
    from .models import MonitoringSettings

    per_bar = bar_buckets(interval_of(target, MonitoringSettings.load()))
    kept = {}
    target.summary = summarize(target.pk, now, kept, per_bar)
    target.strip_segments, target.strip_cells = kept["segments"], kept["cells"]
    return target.summary


def _record_spend(target: HealthTarget, run: HealthRun, now: datetime) -> None:
    month = now.strftime("%Y-%m")
    if target.spend_month != month:
        target.spend_month, target.spend_month_usd = month, Decimal(0)
    if run.cost_usd:
        target.spend_month_usd += run.cost_usd
        target.spend_total_usd += run.cost_usd


def change_state(target: HealthTarget, state: str, at: datetime) -> None:
    """A change of state closes the open incident, and opens one for degraded or down."""
    if state == target.state:
        return
    HealthIncident.objects.filter(target=target, ended_at__isnull=True).update(ended_at=at)
    if state in ("degraded", "down"):
        HealthIncident.objects.create(target=target, state=state, started_at=at)
    target.state = state


def current_state(target: HealthTarget, now: datetime | None = None) -> str:
    """The stored state, or unknown when the target has had no run in the last hour."""
    now = now or timezone.now()
    if target.last_run_at is None or now - target.last_run_at > WINDOWS["1h"]:
        return "unknown"
    return target.state


def bar_buckets(interval_s: int) -> int:
    """Rollup buckets per strip bar: one bar per probe interval, rounded to the 5-minute bucket
    (at least one bucket, at most a day), unless HEALTH_STRIP_BAR_MINUTES fixes the bar size."""
    fixed = setting("HEALTH_STRIP_BAR_MINUTES")
    buckets = fixed * 60 // BUCKET_S if fixed else round(interval_s / BUCKET_S)
    return min(max(buckets, 1), 24 * 3600 // BUCKET_S)


@dataclass
class Strip:
    """One target's last 24 hours: `bars` bars of `bar_minutes` each, oldest first, drawn as
    segments of neighbouring bars that share a colour (so a page of 200 strips of 288 bars
    stays small): each segment {"bars": how many, "state": colour, "label": its time span,
    "availability": over the segment, None when it had no runs}."""

    bars: int
    bar_minutes: int
    segments: list[dict]


def bar_state(availability: float | None) -> str:
    """The colour of a strip bar."""
    if availability is None:
        return "unknown"
    if availability >= 99.9:
        return "healthy"
    return "degraded" if availability >= 80 else "down"


def keep_strip(rows, current: int, per_bar: int) -> tuple[dict, dict]:
    """What a target keeps for its strip as runs arrive, so a page of 200 strips reads no
    rollups and cuts no bars: (segments, cells).

    segments: {"per_bar": buckets a bar, "segments": [[first bar, last bar, state, runs,
    failures], ...]} over the 24 hours of bars ending at `current`; the page clips them to its
    own now (strip). cells: {"last": the newest bucket, "cells": [[runs, failures] or 0 per
    bucket, oldest first, STRIP_CELLS of them]}, to cut bars of another size from."""
    first = current - STRIP_CELLS + 1
    cells = [0] * STRIP_CELLS
    for bucket, runs, failures, *_ in rows:
        if first <= bucket <= current and runs:
            cells[bucket - first] = [runs, failures]
    kept_cells = {"last": current, "cells": cells}
    segments = _segments(kept_cells, per_bar, current // per_bar, max(24 * 12 // per_bar, 1))
    return {"per_bar": per_bar, "segments": segments}, kept_cells


def _segments(kept: dict, per_bar: int, last_bar: int, count: int) -> list[list]:
    """Runs of neighbouring bars of one colour: [first bar, last bar, state, runs, failures]."""
    first_bar = last_bar - count + 1
    runs, failures = [0] * count, [0] * count
    cells = kept.get("cells") or ()
    first_bucket = kept.get("last", 0) - len(cells) + 1
    for offset, cell in enumerate(cells):
        if cell:
            i = (first_bucket + offset) // per_bar - first_bar
            if 0 <= i < count:
                runs[i] += cell[0]
                failures[i] += cell[1]
    segments = []
    last = None
    for i in range(count):
        state = _state_of_bar(runs[i], failures[i])
        if last is not None and last[2] == state:
            last[1] = first_bar + i
            last[3] += runs[i]
            last[4] += failures[i]
        else:
            last = [first_bar + i, first_bar + i, state, runs[i], failures[i]]
            segments.append(last)
    return segments


def _state_of_bar(runs: int, failures: int) -> str:
    """bar_state(availability(runs, failures)), in integers: it runs for every bar of a page."""
    if not runs:
        return "unknown"
    if failures * 1000 <= runs:
        return "healthy"
    return "degraded" if failures * 5 <= runs else "down"


def strip(kept: dict, per_bar: int, now: datetime | None = None, hours: int = 24, cells=dict) -> Strip:
    """A target's strip of the last `hours`, `per_bar` buckets a bar, from the segments it keeps
    (keep_strip), clipped to now, grey after its newest bucket (no run since). No query; only
    when the bar size changed are bars cut again, from `cells()` (the target's strip_cells)."""
    now = now or timezone.now()
    last_bar = bucket_of(now) // per_bar
    count = max(hours * 12 // per_bar, 1)
    first_bar = last_bar - count + 1
    kept = kept or {}
    segments = kept.get("segments") if kept.get("per_bar") == per_bar else None
    if segments is None:
        segments = _segments(cells() or {}, per_bar, last_bar, count)
    out = []
    covered_to = first_bar - 1
    for first, last, state, runs, failures in segments:
        if last < first_bar or first > last_bar:
            continue
        first, last = max(first, first_bar), min(last, last_bar)
        if first > covered_to + 1:
            _add_segment(out, covered_to + 1, first - 1, "unknown", 0, 0, per_bar)
        _add_segment(out, first, last, state, runs, failures, per_bar)
        covered_to = last
    if covered_to < last_bar:
        _add_segment(out, covered_to + 1, last_bar, "unknown", 0, 0, per_bar)
    return Strip(count, per_bar * BUCKET_S // 60, out)


def _clock(bar: int, per_bar: int) -> str:
    """HH:MM (UTC) of a bar's start: arithmetic, not strftime, as it runs for every segment."""
    minutes = bar * per_bar * BUCKET_S // 60 % 1440
    return f"{minutes // 60:02d}:{minutes % 60:02d}"


def _add_segment(out: list, first: int, last: int, state: str, runs: int, failures: int, per_bar: int) -> None:
    if out and out[-1]["state"] == state:
        out[-1]["bars"] += last - first + 1
        out[-1]["label"] = out[-1]["label"][:5] + "–" + _clock(last + 1, per_bar)
        return
    out.append({"bars": last - first + 1, "state": state,
                "label": f"{_clock(first, per_bar)}–{_clock(last + 1, per_bar)}",
                # A segment clipped at the strip's start keeps the availability of its whole run.
                "availability": availability(runs, failures)})
