"""Bringing back upstream targets that live traffic cooled down: the monitor, not a client's
request, is the half-open probe of an open circuit breaker.

Which targets: every enabled upstream target of a MONITORED model (a route with an enabled
health target), whether or not it has a health target of its own. Unmonitored models are left
to their live traffic (their next request after the open time is the probe), so turning
monitoring on never makes the gateway spend on models nobody asked it to watch.

When: each dispatch (every HEALTH_DISPATCH_EVERY_S) reads those targets' circuits in one Redis
round trip. A circuit whose open time is over and whose half-open probe nobody holds is
probed once (a Redis lock, held for the probe lease, keeps two dispatchers from both doing it):

- a target that has a health target of its own (pinned to it, or its model's when the model
  has this one upstream) gets that health target's next probe now: a regular, recorded run;
- any other gets an unrecorded pinned completion probe (probe_open_target), with the model's
  health target's prompt and limits, logged in the request log as the monitoring key's.

How a good probe closes the circuit: a completion probe goes through the pipeline, whose read
of the routing state claims the half-open probe and whose report of a good answer closes the
circuit (a bad one reopens it). A model-list probe does not go through the pipeline: its good
answer closes the circuit directly (close_circuit_after).
"""
import logging
from dataclasses import dataclass

from django.conf import settings
from django.db.models import Count, Q
from django.utils import timezone

from llmgateway.redis import sync_client
from routing import resilience
from routing.models import RouteTarget

from .models import HealthTarget

log = logging.getLogger(__name__)

LOCK_KEY = "gw:health:recover:{}"


@dataclass(frozen=True)
class Recovery:
    route_target_id: int
    health_target_id: int | None  # its own health target, probed now; None: an unrecorded pinned probe


def monitored_route_targets() -> list[RouteTarget]:
    """Enabled upstream targets of models with an enabled health target (one query)."""
    return list(RouteTarget.objects.filter(enabled=True, route__enabled=True, route__health_targets__enabled=True)
                .distinct().only("pk", "route_id"))


def probe_ready_circuits(route_target_ids: list[int], now_ms: int | None = None, redis=None) -> list[int]:
    """The targets whose circuit is open, its open time over, and its half-open probe free: ONE
    round trip (HMGET per circuit, pipelined)."""
    if not route_target_ids:
        return []
    client = redis or sync_client()
    pipe = client.pipeline(transaction=False)
    pipe.time()  # Redis's clock, which the circuit's scripts use
    for target_id in route_target_ids:
        pipe.hmget(resilience.circuit_key(target_id), "open_until", "probe_until")
    (seconds, micros), *replies = pipe.execute()
    if now_ms is None:
        now_ms = seconds * 1000 + micros // 1000
    ready = []
    for target_id, (open_until, probe_until) in zip(route_target_ids, replies):
        open_until, probe_until = int(open_until or 0), int(probe_until or 0)
        if 0 < open_until <= now_ms and probe_until <= now_ms:
            ready.append(target_id)
    return ready


def plan_recoveries(redis=None) -> list[Recovery]:
    """Probe-ready open circuits of monitored models, each locked for this dispatcher. A target
    with its own health target has that target's next run moved to now (the dispatcher's claim
    then probes it and records the run); the others are returned for probe_open_target."""
    targets = monitored_route_targets()
    ready = set(probe_ready_circuits([t.pk for t in targets], redis=redis))
    if not ready:
        return []
    client = redis or sync_client()
    lease_s = max(int(getattr(settings, "GATEWAY_CIRCUIT_PROBE_LEASE_S", 30)), 5)
    own = covering_health_targets(ready)
    now = timezone.now()
    recoveries = []
    for target_id in sorted(ready):
        if not client.set(LOCK_KEY.format(target_id), 1, nx=True, ex=lease_s):
            continue  # another dispatcher is bringing it back
        health_target_id = own.get(target_id)
        if health_target_id is not None:
            HealthTarget.objects.filter(pk=health_target_id, next_run_at__gt=now).update(next_run_at=now)
        recoveries.append(Recovery(target_id, health_target_id))
        log.info("route target %s: circuit open and its open time over; probing it to bring it back", target_id)
    return recoveries


def covering_health_targets(route_target_ids) -> dict[int, int]:
    """route target id -> the enabled health target that probes exactly that upstream: one
    pinned to it, else its model's when the model has only this upstream."""
    own = {}
    pinned = HealthTarget.objects.filter(enabled=True, route_target_id__in=route_target_ids)
    for health_target_id, route_target_id in pinned.values_list("pk", "route_target_id").order_by("pk"):
        own.setdefault(route_target_id, health_target_id)
    single = (RouteTarget.objects.filter(pk__in=set(route_target_ids) - set(own))
              .annotate(siblings=Count("route__targets", filter=Q(route__targets__enabled=True), distinct=True)).filter(siblings=1)
              .values_list("pk", "route_id"))
    by_route = dict((route_id, pk) for pk, route_id in single)
    whole = HealthTarget.objects.filter(enabled=True, route_target__isnull=True, route_id__in=by_route)
    for health_target_id, route_id in whole.values_list("pk", "route_id").order_by("pk"):
        own.setdefault(by_route[route_id], health_target_id)
    return own


def route_health_target(route_target: RouteTarget) -> HealthTarget | None:
    """The model's health target whose prompt and limits an unrecorded recovery probe borrows."""
    return HealthTarget.objects.filter(enabled=True, route_id=route_target.route_id).order_by("pk").first()


def close_circuit_after(route_target_id: int) -> None:
    """A good probe that did not go through the pipeline (a model list) closes the circuit."""
    try:
        sync_client().delete(resilience.circuit_key(route_target_id))
    except Exception as exc:  # the circuit then closes on live traffic's own half-open probe
        log.warning("could not close the circuit of route target %s: %s", route_target_id, type(exc).__name__)
