"""What the router may read of health, without importing healthcheck: one Redis key per route
target, `gw:health:target:<route target id>` = "down" (its name is routing's:
resilience.health_down_key), set and cleared with hysteresis. The planner reads it in the same
Redis call as the circuits and tries a flagged target after every other one.

Down after HEALTH_DOWN_AFTER failed probes in a row; back only after HEALTH_UP_AFTER good
ones in a row, so one lucky probe does not send traffic back to a flapping upstream. The key
expires after a few intervals, so a stopped monitor never keeps a target out for good.
"""
import logging


from llmgateway.redis import sync_client
from routing.resilience import health_down_key

from .conf import setting

log = logging.getLogger(__name__)

TTL_INTERVALS = 3


def target_health_key(route_target_id: int) -> str:
    return health_down_key(route_target_id)


def publish(route_target_id: int, consecutive_failures: int, consecutive_successes: int, interval_s: int) -> None:
    """Mark, keep or clear the target's down flag after a probe."""
    key = target_health_key(route_target_id)
    ttl = max(int(interval_s * TTL_INTERVALS), 60)
    try:
        client = sync_client()
        if consecutive_failures >= setting("HEALTH_DOWN_AFTER"):
            client.set(key, "down", ex=ttl)
        elif consecutive_successes >= setting("HEALTH_UP_AFTER"):
            client.delete(key)
        else:
            client.expire(key, ttl)  # not enough evidence either way: keep what it is
    except Exception as exc:  # routing falls back to its own cooldowns; the run is still recorded
        log.warning("could not publish health of route target %s: %s", route_target_id, type(exc).__name__)


def is_marked_down(route_target_id: int) -> bool:
    return sync_client().get(target_health_key(route_target_id)) == b"down"
