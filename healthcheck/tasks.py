"""Celery tasks of the health monitor: the dispatcher (beat), one probe per claimed slot, a
probe of an upstream whose circuit live traffic opened (recovery.py), the fold of live
traffic into rollups (beat, live.py), and the purge of old runs (beat)."""
import asyncio
import logging
from datetime import datetime, timedelta
from decimal import Decimal

from celery import shared_task
from django.db import IntegrityError
from django.utils import timezone

from llmgateway.redis import sync_client

from . import recovery, routing_state
from .conf import setting
from .dispatch import claim_due_targets, interval_of
from .models import HealthIncident, HealthRollup, HealthRun, HealthTarget, MonitoringSettings
from .probes import ProbeResult, ProbeSpec, probe
from .rollups import BUCKET_S, record_run

log = logging.getLogger(__name__)


@shared_task(ignore_result=True)
def dispatch_probes() -> int:
    """Bring forward the probes of upstreams live traffic cooled down (recovery.py), claim the
    due targets and queue one probe for each claimed slot, and now and then a fold of live
    traffic into the rollups (live.py)."""
    recoveries = None  # None: monitoring is off
    if MonitoringSettings.objects.filter(pk=1, enabled=True).exists():
        recoveries = []
        try:
            recoveries = recovery.plan_recoveries()
        except Exception as exc:  # Redis away: the regular probes still run
            log.warning("could not read circuits to bring cooled upstreams back: %s", type(exc).__name__)
    claims = claim_due_targets()
    for claim in claims:
        probe_target.delay(claim.target_id, claim.slot.isoformat())
    for planned in recoveries or ():
        if planned.health_target_id is None:
            probe_open_target.delay(planned.route_target_id)
    if recoveries is not None and _fold_is_due():
        fold_live_traffic.delay()
    return len(claims)


def _fold_is_due() -> bool:
    """At most one fold of live traffic per HEALTH_LIVE_FOLD_EVERY_S, however many beats run."""
    every = max(int(setting("HEALTH_LIVE_FOLD_EVERY_S")), 1)
    try:
        return bool(sync_client().set("gw:health:live:fold", 1, nx=True, ex=every))
    except Exception:  # no Redis, no Celery either: nothing to queue
        return False


@shared_task(ignore_result=True)
def fold_live_traffic() -> int:
    """Fold clients' requests logged since the last fold into the rollups (live.py)."""
    from .live import fold_live_traffic as fold

    return fold()


@shared_task(ignore_result=True)
def probe_target(target_id: int, slot: str) -> str:
    """Probe one target for the slot its dispatcher claimed, and record the run."""
    monitoring = MonitoringSettings.load()
    target = HealthTarget.objects.select_related("route").filter(pk=target_id).first()
    if not monitoring.enabled or target is None or not target.enabled or monitoring.monitoring_key_id is None:
        return "skipped"
    now = timezone.now()
    if _over_cap(target, now):
        log.info("health target %s is over its monthly probe budget; not probed", target.name)
        return "over_cap"
    spec = ProbeSpec(
        target_id=target.pk, kind=target.kind, route_name=target.route.name, route_target_id=target.route_target_id,
        prompt=target.prompt or monitoring.default_prompt, max_tokens=target.max_tokens,
        timeout_s=target.timeout_s, retries=target.retries,
    )
    result = asyncio.run(probe(spec, monitoring.monitoring_key_id))
    run = save_run(target, datetime.fromisoformat(slot), now, result)
    if run is None:
        return "duplicate"
    target = record_run(run)
    route_target_id = _publish_routing_state(target, interval_of(target, monitoring))
    if result.ok and spec.kind == HealthTarget.Kind.MODEL_LIST and route_target_id is not None:
        recovery.close_circuit_after(route_target_id)  # a completion probe's pipeline does this itself
    return run.outcome


@shared_task(ignore_result=True)
def probe_open_target(route_target_id: int) -> str:
    """Probe one upstream target whose circuit is open, pinned to it, with its model's health
    target's prompt and limits; a good answer closes the circuit (the pipeline's report). Not a
    recorded run: the upstream has no health target of its own. Its request is logged."""
    from routing.models import RouteTarget

    monitoring = MonitoringSettings.load()
    route_target = RouteTarget.objects.select_related("route").filter(pk=route_target_id).first()
    model_target = recovery.route_health_target(route_target) if route_target is not None else None
    if not monitoring.enabled or model_target is None or monitoring.monitoring_key_id is None:
        return "skipped"
    if _over_cap(model_target, timezone.now()):
        return "over_cap"
    spec = ProbeSpec(
        target_id=model_target.pk, kind=HealthTarget.Kind.COMPLETION, route_name=route_target.route.name,
        route_target_id=route_target.pk, prompt=model_target.prompt or monitoring.default_prompt,
        max_tokens=model_target.max_tokens, timeout_s=model_target.timeout_s, retries=0,
    )
    result = asyncio.run(probe(spec, monitoring.monitoring_key_id))
    return "healthy" if result.ok else "down"


def save_run(target: HealthTarget, slot: datetime, started_at: datetime, result: ProbeResult) -> HealthRun | None:
    """Store the run; None when this slot already has one (a second claim cannot happen,
    but the unique constraint is what makes that certain)."""
    if result.ok:
        outcome = HealthRun.Outcome.HEALTHY if result.attempts == 1 else HealthRun.Outcome.DEGRADED
    else:
        outcome = HealthRun.Outcome.DOWN
    run = HealthRun(
        target=target, scheduled_for=slot, started_at=started_at, outcome=outcome, status_code=result.status_code,
        latency_ms=result.latency_ms, ttfb_ms=result.ttfb_ms, error_kind="" if result.ok else result.error_kind,
        error_message="" if result.ok else result.error_message, attempts=result.attempts,
        request_id=result.request_id, cost_usd=Decimal(str(result.cost_usd)) if result.cost_usd is not None else None,
    )
    try:
        run.save()
    except IntegrityError:
        log.warning("health target %s already has a run for %s; dropped", target.pk, slot)
        return None
    return run


def _over_cap(target: HealthTarget, now: datetime) -> bool:
    cap = target.monthly_cap_usd
    return cap is not None and target.spend_month == now.strftime("%Y-%m") and target.spend_month_usd >= cap


def _publish_routing_state(target: HealthTarget, interval_s: int) -> int | None:
    """Publish the down flag of the upstream this target probes; that upstream's id, or None."""
    route_target_id = target.route_target_id
    if route_target_id is None:
        only = list(target.route.targets.values_list("pk", flat=True)[:2])
        route_target_id = only[0] if len(only) == 1 else None  # a model with one upstream is that upstream
    if route_target_id is not None:
        routing_state.publish(route_target_id, target.consecutive_failures, target.consecutive_successes, interval_s)
    return route_target_id


@shared_task(ignore_result=True)
def purge_old_health_data() -> dict:
    """Delete runs past their retention in batches (short transactions: the monitor keeps
    writing meanwhile), and rollups and closed incidents past theirs."""
    now = timezone.now()
    batch = setting("HEALTH_PURGE_BATCH")
    runs_before = now - timedelta(days=setting("HEALTH_RUN_RETENTION_DAYS"))
    rollups_before = now - timedelta(days=setting("HEALTH_ROLLUP_RETENTION_DAYS"))
    deleted = {"runs": 0, "rollups": 0, "incidents": 0}
    while True:
        ids = list(HealthRun.objects.filter(started_at__lt=runs_before).values_list("pk", flat=True)[:batch])
        if not ids:
            break
        deleted["runs"] += HealthRun.objects.filter(pk__in=ids).delete()[0]
    oldest_bucket = int(rollups_before.timestamp()) // BUCKET_S
    deleted["rollups"] = HealthRollup.objects.filter(bucket__lt=oldest_bucket).delete()[0]
    deleted["incidents"] = HealthIncident.objects.filter(ended_at__lt=rollups_before).delete()[0]
    return deleted
