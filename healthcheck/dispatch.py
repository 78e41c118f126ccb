"""Claiming due health targets, safely across any number of beats and workers.

Each claim is a conditional UPDATE of the target's next_run_at, checked by its row count
(the pattern of healthchecks' sendalerts): of two dispatchers that saw the same due slot,
exactly one moves next_run_at on and gets a row count of 1; the other gets 0 and skips it.
"""
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.utils import timezone

from .conf import setting
from .models import HealthTarget, MonitoringSettings

CLAIM_LIMIT = 500  # targets one dispatch looks at; the next dispatch takes the rest


@dataclass(frozen=True)
class Claim:
    target_id: int
    slot: datetime  # the time this probe was due: unique per target


def interval_of(target: HealthTarget, monitoring: MonitoringSettings) -> int:
    return max(target.interval_s or monitoring.default_interval_s, setting("HEALTH_MIN_INTERVAL_S"))


def claim_due_targets(now: datetime | None = None) -> list[Claim]:
    """The due slots this caller won. Nothing when monitoring is off."""
    monitoring = MonitoringSettings.load()
    if not monitoring.enabled:
        return []
    now = now or timezone.now()
    due = (HealthTarget.objects.filter(enabled=True, route__enabled=True)
           .exclude(next_run_at__gt=now).only("pk", "interval_s", "next_run_at").order_by("next_run_at")[:CLAIM_LIMIT])
    claims = []
    for target in due:
        interval = timedelta(seconds=interval_of(target, monitoring))
        slot = target.next_run_at or now
        following = slot + interval
        if following <= now:  # the monitor was stopped for a while: don't replay missed slots
            following = now + interval
        if target.next_run_at is None:
            won = HealthTarget.objects.filter(pk=target.pk, next_run_at__isnull=True).update(next_run_at=following)
        else:
            won = HealthTarget.objects.filter(pk=target.pk, next_run_at=target.next_run_at).update(next_run_at=following)
        if won == 1:
            claims.append(Claim(target.pk, slot))
    return claims
