"""Client IPs that keep failing authentication are refused for a while, across processes.

Only the failure path talks to Redis: one script call counts the failure in the IP's
window and, at GATEWAY_AUTH_FAILURES_PER_IP, blocks the IP for GATEWAY_AUTH_BLOCK_S.
Each process also remembers the blocks it has learned of, so that a blocked IP is refused
even with a valid key (else a key guesser would simply read 200 among the 429s) without a
Redis call on the success path: a dict lookup, and only while some IP is blocked. A
process that has not yet seen the IP fail learns of the block at its first failure there.

Unknown, wrong, disabled and expired keys all count the same (their answers are the same,
keys.auth.WRONG_KEY), and the 429 that follows is the same for all of them too.
"""
import logging
import math
import time

from django.conf import settings

from llmgateway.errors import RateLimited

log = logging.getLogger(__name__)

# KEYS: the IP's failure counter, its block. ARGV: limit, window, block seconds.
# Returns {state, seconds}: 0 counted; 1 this failure starts a block; 2 already blocked.
_COUNT_FAILURE = """
local blocked = redis.call('TTL', KEYS[2])
if blocked > 0 then return {2, blocked} end
local failures = redis.call('INCR', KEYS[1])
if failures == 1 then redis.call('EXPIRE', KEYS[1], ARGV[2]) end
if failures >= tonumber(ARGV[1]) then
  redis.call('SET', KEYS[2], 1, 'EX', ARGV[3])
  redis.call('DEL', KEYS[1])
  return {1, tonumber(ARGV[3])}
end
return {0, 0}
"""

COUNTED, BLOCKS_NOW, BLOCKED = 0, 1, 2
BLOCKED_REASON = "too many failed authentications"  # what the refusal counts say

# ip -> epoch second its block ends, as far as this process knows
_blocked_until: dict[str, float] = {}
_last_outage_log = 0.0


def blocked_for(ip: str, now: float | None = None) -> int | None:
    """Seconds left of the IP's block as this process knows it, None if not blocked.
    On the hot path: free while no IP is blocked."""
    if not _blocked_until:
        return None
    until = _blocked_until.get(ip)
    if until is None:
        return None
    now = time.time() if now is None else now
    if until <= now:
        del _blocked_until[ip]
        return None
    return max(math.ceil(until - now), 1)


async def count_failure(redis, ip: str, now: float | None = None) -> int | None:
    """Count one failed authentication of `ip`. Returns the seconds to refuse it for when
    it was already blocked (answer 429), else None (answer as the failure itself says)."""
    limit = settings.GATEWAY_AUTH_FAILURES_PER_IP
    if not limit or not ip:
        return None
    now = time.time() if now is None else now
    tag = "{" + ip + "}"  # both keys in one hash slot (Redis Cluster)
    try:
        state, seconds = await redis.eval(
            _COUNT_FAILURE, 2, f"gw:authfail:{tag}", f"gw:authblock:{tag}",
            limit, max(int(settings.GATEWAY_AUTH_FAILURE_WINDOW_S), 1), max(int(settings.GATEWAY_AUTH_BLOCK_S), 1))
    except Exception as exc:  # a Redis outage must not turn a 401 into a 500: no slow-down meanwhile
        _log_outage(exc)
        return None
    if state == COUNTED:
        return None
    if len(_blocked_until) > 100_000:  # a spray of addresses: forget the oldest knowledge
        _blocked_until.clear()
    _blocked_until[ip] = now + int(seconds)
    if state == BLOCKS_NOW:
        log.warning("client %s failed authentication %d times; refused for %d s", ip, limit, seconds)
        return None
    return max(int(seconds), 1)


def blocked_error(seconds: int) -> RateLimited:
    return RateLimited(
        f"Too many failed authentication attempts from this address; try again in {seconds} seconds.",
        code="too_many_auth_failures", kind="auth_blocked", headers={"Retry-After": str(seconds)},
        log_message=BLOCKED_REASON)


def _log_outage(exc: Exception) -> None:
    global _last_outage_log
    now = time.monotonic()
    if now - _last_outage_log > 30:
        _last_outage_log = now
        log.warning("authentication failures cannot be counted (Redis: %s); no slow-down meanwhile",
                    type(exc).__name__)
