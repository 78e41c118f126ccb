"""Per-key admission in Redis: RPM, TPM and budget reservation in one Lua call; settle or release after.

The life of one request's admission:

    a = await admit(key, estimated_tokens=..., max_cost_usd=...)   # one round trip (none without limits)
    if not a.allowed: raise a.error()                               # 429 with Retry-After and x-ratelimit-*
    ... serve ...
    await settle(a, actual_tokens=..., actual_cost_usd=...)         # one round trip; or
    await release(a)                                                # failure, rejection, client gone

Windows. RPM is an exact sliding 60 s window (a sorted set of admitted requests, so "100 per
minute" means at most 100 admissions in any 60 s). TPM is a sliding 60 s window in 1 s steps
(a hash of per-second token sums): tokens are counted as estimated at admission and corrected
to real usage at settlement.

Money is counted in integer micro-dollars (µ$) so that reservations add and subtract exactly.
A budget is checked as spent + reserved (by requests in flight) + this request's largest
possible cost <= budget, so concurrent requests cannot overspend it together. A reservation
has a TTL: one held by a process that crashed is dropped by the next admission after it.

Time: `now` (epoch seconds) is for tests; by default the Lua scripts read Redis' own clock,
so every gateway host agrees on window edges. Budget periods (daily, weekly from Monday,
monthly, total) start at midnight in settings.GATEWAY_BUDGET_TIME_ZONE (default TIME_ZONE).

Redis unreachable: rate limits fail open by default (serve, count nothing, log once per
GATEWAY_LIMITS_OUTAGE_LOG_EVERY_S); budgets fail closed by default (LimitsUnavailable, a 503).

Settings (read with defaults, so none is required):
    GATEWAY_BUDGET_TIME_ZONE            where budget periods start at midnight (default TIME_ZONE)
    GATEWAY_BUDGET_RESERVATION_TTL_S    life of an unsettled reservation (GATEWAY_TOTAL_TIMEOUT_S + 60)
    GATEWAY_RATE_LIMITS_FAIL_OPEN       serve uncounted when Redis is unreachable (True)
    GATEWAY_BUDGETS_FAIL_OPEN           serve budgeted keys when Redis is unreachable (False)
    GATEWAY_LIMITS_OUTAGE_LOG_EVERY_S   at most one "Redis unreachable" error per process per … (30)

Redis keys: gw:lim:{<key id>}:rpm|tpm|resv|resv_exp|reserved|spend:<period> (one hash tag per
key) and the set gw:lim:dirty_spend that settle adds to (so on a Redis Cluster, settle would
need that set moved under the key's tag; the gateway targets a single Redis or Valkey).
"""
import logging
import math
import os
import time
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from decimal import Decimal
from functools import cache
from zoneinfo import ZoneInfo

from django.conf import settings
from redis.commands.core import AsyncScript, Script
from redis.exceptions import RedisError

from llmgateway.errors import GatewayError, PermissionDenied, RateLimited
from llmgateway.redis import ScriptCall, async_client, sync_client

log = logging.getLogger(__name__)

WINDOW_S = 60
MICRO = 1_000_000  # µ$ per dollar
# Set members "<key id>:<period>" whose spend changed since persist_spend last ran.
DIRTY_SPEND_KEY = "gw:lim:dirty_spend"
# Spend of a finished period stays readable this long after it ends (for persist_spend).
SPEND_KEPT_AFTER_PERIOD_S = 7 * 86400


class LimitsUnavailable(GatewayError):
    """Redis is unreachable and the key's limits must not be skipped (a budget, by default)."""

    status, type, code, kind = 503, "api_error", "limits_unavailable", "limits_unavailable"


# --- settings (read at call time so tests and deployments can change them) ---------------

def _setting(name, default):
    return getattr(settings, name, default)


def reservation_ttl_s() -> float:
    """How long a budget reservation lives without settle/release: past the longest request."""
    return float(_setting("GATEWAY_BUDGET_RESERVATION_TTL_S", _setting("GATEWAY_TOTAL_TIMEOUT_S", 900.0) + 60))


@cache
def _zone(name: str) -> ZoneInfo:
    return ZoneInfo(name)


def budget_time_zone() -> ZoneInfo:
    return _zone(_setting("GATEWAY_BUDGET_TIME_ZONE", None) or settings.TIME_ZONE)


# --- budget periods -----------------------------------------------------------------------

def budget_period(period: str, now: float | None = None, tz: ZoneInfo | None = None) -> tuple[str, float | None, float | None]:
    """(period id, start epoch, reset epoch) of the budget period containing `now`.
    The ids name the period's first day: d2026-12-01, w2026-11-30 (a Monday), m2026-12, total."""
    if period == "total":
        return "total", None, None
    tz = tz or budget_time_zone()
    today = datetime.fromtimestamp(now if now is not None else time.time(), tz).date()
    if period == "daily":
        start, end, ident = today, today + timedelta(days=1), f"d{today.isoformat()}"
    elif period == "weekly":
        start = today - timedelta(days=today.weekday())
        end, ident = start + timedelta(days=7), f"w{start.isoformat()}"
    elif period == "monthly":
        start = today.replace(day=1)
        end = date(start.year + (start.month == 12), start.month % 12 + 1, 1)
        ident = f"m{start:%Y-%m}"
    else:
        raise ValueError(f"unknown budget period {period!r}")
    # Midnight in the operator's zone; zoneinfo gives the right offset on DST days.
    return ident, _midnight(start, tz), _midnight(end, tz)


def _midnight(day: date, tz: ZoneInfo) -> float:
    return datetime(day.year, day.month, day.day, tzinfo=tz).timestamp()


# --- Redis keys (one hash tag per virtual key, so a cluster keeps them on one node) ------

def _keys(key_id: int) -> dict[str, str]:
    p = f"gw:lim:{{{key_id}}}:"
    return {"rpm": p + "rpm", "tpm": p + "tpm", "resv": p + "resv", "resv_exp": p + "resv_exp",
            "reserved": p + "reserved"}


def spend_key(key_id: int, period_id: str) -> str:
    return f"gw:lim:{{{key_id}}}:spend:{period_id}"


# --- Lua -----------------------------------------------------------------------------------

_NOW = """
local now = tonumber(ARGV[1])
if not now then local t = redis.call('TIME'); now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) end
"""

# The expired reservations of a key go back before anything reads the reserved total.
_PURGE_RESERVATIONS = """
local function purge_reservations(resv, resv_exp, reserved, now)
  local expired = redis.call('ZRANGEBYSCORE', resv_exp, '-inf', now, 'LIMIT', 0, 500)
  for _, r in ipairs(expired) do
    local amount = tonumber(redis.call('HGET', resv, r) or '0')
    if amount > 0 then redis.call('DECRBY', reserved, amount) end
    redis.call('HDEL', resv, r)
    redis.call('ZREM', resv_exp, r)
  end
  local total = tonumber(redis.call('GET', reserved) or '0')
  if total < 0 then redis.call('SET', reserved, 0); total = 0 end
  return total
end
"""

# The TPM hash: field = epoch second, value = tokens; fields older than the window are dropped.
_TPM_WINDOW = """
local function tpm_window(tpm, sec)
  local flat = redis.call('HGETALL', tpm)
  local used, buckets, stale = 0, {}, {}
  for i = 1, #flat, 2 do
    local s, v = tonumber(flat[i]), tonumber(flat[i + 1])
    if s <= sec - 60 then stale[#stale + 1] = flat[i] else used = used + v; buckets[#buckets + 1] = {s, v} end
  end
  if #stale > 0 then redis.call('HDEL', tpm, unpack(stale)) end
  table.sort(buckets, function(a, b) return a[1] < b[1] end)
  return used, buckets
end
"""

# KEYS: rpm, tpm, resv, resv_exp, reserved, spend
# ARGV: now_ms|'', rid, rpm_limit (0: none), tpm_limit (0: none), estimated tokens,
#       budget µ$ (-1: none), reserve µ$, reservation ttl ms
# -> {allowed, reason, retry_ms (-1: never), rpm_used, rpm_reset_ms, tpm_used, tpm_reset_ms,
#     spent, reserved, now_ms, spend_known}
_ADMIT_LUA = _NOW + _PURGE_RESERVATIONS + _TPM_WINDOW + """
local rid = ARGV[2]
local rpm_limit, tpm_limit, est = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local budget, reserve, ttl = tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8])
local WINDOW = 60000
local sec = math.floor(now / 1000)
local reason, retry = '', 0

local rpm_used, rpm_reset = 0, 0
if rpm_limit > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - WINDOW)
  rpm_used = redis.call('ZCARD', KEYS[1])
  if rpm_used >= rpm_limit then
    -- A place frees when the oldest admissions beyond the limit leave the window.
    local freeing = redis.call('ZRANGE', KEYS[1], rpm_used - rpm_limit, rpm_used - rpm_limit, 'WITHSCORES')
    reason, retry = 'rpm', tonumber(freeing[2]) + WINDOW - now
  end
end

local tpm_used, tpm_reset, buckets = 0, 0, {}
if tpm_limit > 0 then
  tpm_used, buckets = tpm_window(KEYS[2], sec)
  if reason == '' and tpm_used + est > tpm_limit then
    reason = 'tpm'
    if est > tpm_limit then retry = -1 else
      local left = tpm_used
      for _, b in ipairs(buckets) do
        left = left - b[2]
        if left + est <= tpm_limit then retry = (b[1] + 60) * 1000 - now; break end
      end
    end
  end
end

local spent, reserved, spend_known = 0, 0, 1
if budget >= 0 then
  reserved = purge_reservations(KEYS[3], KEYS[4], KEYS[5], now)
  local s = redis.call('GET', KEYS[6])
  if s then spent = tonumber(s) else spend_known = 0 end
  if reason == '' and (spent >= budget or spent + reserved + reserve > budget) then
    reason = 'budget'
    -- Spend alone leaves no room: wait for the period to end (computed by the caller).
    -- Otherwise requests in flight hold the room and may give it back soon.
    if spent + reserve > budget then retry = -2 else retry = 1000 end
  end
end

local allowed = 0
if reason == '' then
  allowed = 1
  if rpm_limit > 0 then
    redis.call('ZADD', KEYS[1], now, rid)
    redis.call('PEXPIRE', KEYS[1], WINDOW + 1000)
    rpm_used = rpm_used + 1
  end
  if tpm_limit > 0 and est > 0 then
    redis.call('HINCRBY', KEYS[2], sec, est)
    redis.call('PEXPIRE', KEYS[2], WINDOW + 2000)
    tpm_used = tpm_used + est
    if #buckets == 0 then buckets[1] = {sec, est} end
  end
  if budget >= 0 and reserve > 0 then
    redis.call('HSET', KEYS[3], rid, reserve)
    redis.call('ZADD', KEYS[4], now + ttl, rid)
    reserved = redis.call('INCRBY', KEYS[5], reserve)
    -- Keys outlive their longest reservation (no EXPIRE ... GT on Redis 6.2).
    for i = 3, 5 do if redis.call('PTTL', KEYS[i]) < ttl + 1000 then redis.call('PEXPIRE', KEYS[i], ttl + 1000) end end
  end
end
if rpm_limit > 0 and rpm_used > 0 then
  local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  if oldest[2] then rpm_reset = tonumber(oldest[2]) + WINDOW - now end
end
if buckets[1] then tpm_reset = (buckets[1][1] + 60) * 1000 - now end
return {allowed, reason, retry, rpm_used, rpm_reset, tpm_used, tpm_reset, spent, reserved, now, spend_known}
"""

# KEYS: tpm, resv, resv_exp, reserved, spend, dirty set
# ARGV: now_ms|'', rid, admitted second, estimated tokens, actual tokens (-1: no TPM),
#       actual µ$ (-1: unknown), spend expire-at epoch s (0: never), dirty member
# -> spend after settlement (-1 when no budget is tracked)
_SETTLE_LUA = _NOW + """
local rid, admitted, est, actual = ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local cost, expire_at = tonumber(ARGV[6]), tonumber(ARGV[7])
local sec = math.floor(now / 1000)
if actual >= 0 then
  -- Correct the estimate where it was counted, while that second is still in the window;
  -- after that the estimate has left the window and the real usage counts now.
  if admitted > sec - 60 then
    if actual ~= est then redis.call('HINCRBY', KEYS[1], admitted, actual - est) end
  elseif actual > 0 then
    redis.call('HINCRBY', KEYS[1], sec, actual)
  end
  redis.call('PEXPIRE', KEYS[1], 62000)
end
local held = tonumber(redis.call('HGET', KEYS[2], rid) or '0')
if held > 0 then
  redis.call('DECRBY', KEYS[4], held)
  redis.call('HDEL', KEYS[2], rid)
  redis.call('ZREM', KEYS[3], rid)
end
if ARGV[8] == '' then return -1 end
-- An unknown actual cost charges the reservation: it was the largest the request could cost.
if cost < 0 then cost = held end
local spent = redis.call('INCRBY', KEYS[5], cost)
if expire_at > 0 then redis.call('EXPIREAT', KEYS[5], expire_at) end
redis.call('SADD', KEYS[6], ARGV[8])
return spent
"""

# KEYS: rpm, tpm, resv, resv_exp, reserved
# ARGV: now_ms|'', rid, admitted second, estimated tokens
_RELEASE_LUA = _NOW + """
local rid, admitted, est = ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
redis.call('ZREM', KEYS[1], rid)
if est > 0 and admitted > math.floor(now / 1000) - 60 then
  local left = redis.call('HINCRBY', KEYS[2], admitted, -est)
  if left <= 0 then redis.call('HDEL', KEYS[2], admitted) end
end
local held = tonumber(redis.call('HGET', KEYS[3], rid) or '0')
if held > 0 then
  redis.call('DECRBY', KEYS[5], held)
  redis.call('HDEL', KEYS[3], rid)
  redis.call('ZREM', KEYS[4], rid)
end
return held
"""

# KEYS: rpm, tpm, resv, resv_exp, reserved, spend   ARGV: now_ms|''
# -> {rpm_used, tpm_used, reserved, spent (-1: no key), now_ms, rpm_reset_ms, tpm_reset_ms}
_USAGE_LUA = _NOW + _PURGE_RESERVATIONS + _TPM_WINDOW + """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - 60000)
local rpm_used, rpm_reset = redis.call('ZCARD', KEYS[1]), 0
local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
if oldest[2] then rpm_reset = tonumber(oldest[2]) + 60000 - now end
local tpm_used, buckets = tpm_window(KEYS[2], math.floor(now / 1000))
local tpm_reset = 0
if buckets[1] then tpm_reset = (buckets[1][1] + 60) * 1000 - now end
local reserved = purge_reservations(KEYS[3], KEYS[4], KEYS[5], now)
local spent = tonumber(redis.call('GET', KEYS[6]) or '-1')
return {rpm_used, tpm_used, reserved, spent, now, rpm_reset, tpm_reset}
"""

# Script objects that carry no client: each call names the client (one per event loop),
# and bytes need no client encoder to hash. EVALSHA, with SCRIPT LOAD on NOSCRIPT.
_ADMIT = AsyncScript(None, _ADMIT_LUA.encode())
_SETTLE = AsyncScript(None, _SETTLE_LUA.encode())
_RELEASE = AsyncScript(None, _RELEASE_LUA.encode())
_USAGE_ASYNC = AsyncScript(None, _USAGE_LUA.encode())
_USAGE_SYNC = Script(None, _USAGE_LUA.encode())


# --- Admission -----------------------------------------------------------------------------

@dataclass(slots=True)
class Admission:
    """The answer of `admit`, and the ticket that `settle` or `release` takes back.

    allowed; reason (rpm | tpm | budget | unpriced, or "" when allowed); retry_after_s (None: retrying
    cannot help, e.g. a request larger than the TPM limit or a budget spent for good);
    message (for the client); counted (False when nothing was counted: no limits, or
    Redis unreachable and rate limits failed open); unpriced (a budgeted key served a model
    without a price under admit_and_flag: flag it in the request log)."""

    key_id: int
    allowed: bool
    reason: str = ""
    retry_after_s: float | None = None
    message: str = ""
    counted: bool = False
    unpriced: bool = False
    reservation_id: str = ""
    estimated_tokens: int = 0
    admitted_s: int = 0  # the TPM second the estimate was counted in
    reserved_micro: int = 0
    track_rpm: bool = False
    track_tpm: bool = False
    track_budget: bool = False
    spend_period: str = ""
    spend_expire_at: int = 0
    spend_known: bool = True  # False: no spend counted yet this period (new period, or Redis lost it)
    reset_at: float | None = None  # when the budget period ends (epoch s)
    prompt_estimate: int = 0  # the caller's estimate of the prompt, for a settlement without usage
    rpm_limit: int | None = None
    rpm_remaining: int | None = None
    rpm_reset_s: float = 0.0
    tpm_limit: int | None = None
    tpm_remaining: int | None = None
    tpm_reset_s: float = 0.0
    budget_usd: float | None = None
    spent_usd: float = 0.0
    finished: bool = field(default=False, repr=False)
    _key: object = field(default=None, repr=False)  # the KeyEntry, while the admission is being decided

    def headers(self) -> dict[str, str]:
        """x-ratelimit-* in OpenAI's form, for the limits this key has (and Retry-After when refused);
        none when nothing was counted (no limits, or Redis unreachable and failing open)."""
        out = {}
        if self.allowed and not self.counted:
            return out
        if self.rpm_limit is not None:
            out["x-ratelimit-limit-requests"] = str(self.rpm_limit)
            out["x-ratelimit-remaining-requests"] = str(max(self.rpm_remaining or 0, 0))
            out["x-ratelimit-reset-requests"] = format_duration(self.rpm_reset_s)
        if self.tpm_limit is not None:
            out["x-ratelimit-limit-tokens"] = str(self.tpm_limit)
            out["x-ratelimit-remaining-tokens"] = str(max(self.tpm_remaining or 0, 0))
            out["x-ratelimit-reset-tokens"] = format_duration(self.tpm_reset_s)
        if not self.allowed and self.retry_after_s is not None:
            out["Retry-After"] = str(max(math.ceil(self.retry_after_s), 1))
        return out

    def error(self) -> GatewayError:
        """The error a refused admission answers with: 429, or 403 for a model without a price."""
        if self.reason == "unpriced":
            return PermissionDenied(self.message, code="model_not_priced", kind="unpriced")
        if self.reason == "budget":
            return RateLimited(self.message, type="insufficient_quota", code="insufficient_quota",
                               kind="budget_exceeded", headers=self.headers())
        return RateLimited(self.message, headers=self.headers())


def format_duration(seconds: float) -> str:
    """OpenAI's reset format: 20ms, 1s, 6m0s, 1h2m3.5s."""
    if seconds < 1:
        return f"{max(int(round(seconds * 1000)), 0)}ms"
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    secs_text = f"{secs:.3f}".rstrip("0").rstrip(".")
    text = f"{secs_text}s"
    if hours or minutes:
        text = f"{int(minutes)}m" + text
    if hours:
        text = f"{int(hours)}h" + text
    return text


class _OutageLog:
    """Logs 'Redis unreachable' loudly, at most once per interval per process."""

    def __init__(self):
        self.last = 0.0

    def report(self, what: str, exc: BaseException) -> None:
        every = float(_setting("GATEWAY_LIMITS_OUTAGE_LOG_EVERY_S", 30.0))
        now = time.monotonic()
        if now - self.last >= every:
            self.last = now
            log.error("Redis unreachable for %s (%s): %s", what, type(exc).__name__, exc)


outage_log = _OutageLog()


def _micro(usd) -> int:
    return int(Decimal(str(usd)) * MICRO)


def _now_arg(now: float | None) -> str:
    return "" if now is None else str(int(now * 1000))


async def admit(key, *, estimated_tokens: int, max_cost_usd: float | None, now: float | None = None,
                redis=None) -> "Admission":
    """Check and count one request of `key` (a KeyEntry) in ONE Redis call.

    estimated_tokens: what the request will count against TPM before its real usage is known
    (prompt tokens plus max output). max_cost_usd: the largest the request can cost (None: the
    model has no price). Allowed admissions count one request in the RPM window, the estimate
    in the TPM window and reserve max_cost_usd against the key's budget period; refused ones
    count nothing. A key without rpm, tpm or budget makes no Redis call.

    Raises LimitsUnavailable when Redis is unreachable and the key has a budget (unless
    GATEWAY_BUDGETS_FAIL_OPEN), or only rate limits and GATEWAY_RATE_LIMITS_FAIL_OPEN is off.
    Every allowed admission must end in `settle` or `release` (both idempotent).

    To send the call together with others in one round trip: prepare_admit, then
    llmgateway.redis.run_scripts, then admission_from_reply (or admission_unreachable)."""
    admission, call = prepare_admit(key, estimated_tokens=estimated_tokens, max_cost_usd=max_cost_usd, now=now)
    if call is None:
        return admission
    try:
        reply = await call.script(keys=call.keys, args=call.args, client=redis or async_client())
    except RedisError as exc:
        return admission_unreachable(admission, exc)
    return admission_from_reply(admission, reply)


def prepare_admit(key, *, estimated_tokens: int, max_cost_usd: float | None,
                  now: float | None = None) -> "tuple[Admission, ScriptCall | None]":
    """The admission so far and the Redis call that decides it (None: nothing to ask, the
    admission is final: no limits, or a budgeted key refusing an unpriced model)."""
    has_budget = key.budget_usd is not None
    admission = Admission(key_id=key.id, allowed=True, rpm_limit=key.rpm, tpm_limit=key.tpm,
                          budget_usd=float(key.budget_usd) if has_budget else None)
    if key.rpm is None and key.tpm is None and not has_budget:
        return admission, None
    reserve = 0
    if has_budget:
        if max_cost_usd is None:
            if key.unpriced_policy != "admit_and_flag":
                admission.allowed, admission.reason = False, "unpriced"
                admission.message = ("This API key has a budget, and the model has no price to reserve it "
                                     "against. Ask the operator to set the model's price.")
                return admission, None
            admission.unpriced = True
        else:
            reserve = math.ceil(max(max_cost_usd, 0.0) * MICRO)
    wall = now if now is not None else time.time()
    period, _, reset_at = budget_period(key.budget_period, wall) if has_budget else ("", None, None)
    keys = _keys(key.id)
    rid = os.urandom(8).hex()
    ttl_ms = int(reservation_ttl_s() * 1000)
    admission.reservation_id = rid
    admission.track_rpm = key.rpm is not None
    admission.track_tpm = key.tpm is not None
    admission.track_budget = has_budget
    admission.spend_period = period
    admission.reserved_micro = reserve if has_budget else 0
    admission.estimated_tokens = max(int(estimated_tokens), 0) if key.tpm is not None else 0
    admission.reset_at = reset_at
    admission._key = key
    call = ScriptCall(
        _ADMIT,
        [keys["rpm"], keys["tpm"], keys["resv"], keys["resv_exp"], keys["reserved"],
         spend_key(key.id, period) if has_budget else keys["reserved"]],
        [_now_arg(now), rid, key.rpm or 0, key.tpm or 0, max(int(estimated_tokens), 0),
         _micro(key.budget_usd) if has_budget else -1, reserve, ttl_ms])
    return admission, call


def admission_unreachable(admission: "Admission", exc: RedisError) -> "Admission":
    """What a prepared admission becomes when Redis is unreachable (or raises LimitsUnavailable)."""
    return _unreachable(admission, admission.track_budget, exc)


def admission_from_reply(admission: "Admission", reply) -> "Admission":
    """Finish a prepared admission with the reply of its Redis call."""
    key = admission._key
    allowed, reason, retry_ms, rpm_used, rpm_reset, tpm_used, tpm_reset, spent, reserved, now_ms, known = reply
    reason = reason.decode() if isinstance(reason, bytes) else reason
    admission.allowed = bool(allowed)
    admission.reason = reason
    admission.spent_usd = spent / MICRO
    admission.spend_known = bool(known)
    if key.rpm is not None:
        admission.rpm_remaining = key.rpm - rpm_used
        admission.rpm_reset_s = rpm_reset / 1000
    if key.tpm is not None:
        admission.tpm_remaining = key.tpm - tpm_used
        admission.tpm_reset_s = tpm_reset / 1000
    reset_at = admission.reset_at
    if not admission.allowed:
        if retry_ms == -2:  # the budget is spent until the period ends
            admission.retry_after_s = None if reset_at is None else max(reset_at - now_ms / 1000, 0.0)
        elif retry_ms >= 0:
            admission.retry_after_s = retry_ms / 1000
        admission.message = _refusal_message(key, reason, admission.retry_after_s)
        admission.reservation_id = ""
        return admission
    admission.counted = True
    admission.admitted_s = now_ms // 1000
    admission.spend_expire_at = int(reset_at + SPEND_KEPT_AFTER_PERIOD_S) if reset_at else 0
    return admission


def _unreachable(admission: Admission, has_budget: bool, exc: RedisError) -> Admission:
    if has_budget and not _setting("GATEWAY_BUDGETS_FAIL_OPEN", False):
        outage_log.report("budgets (refusing budgeted keys)", exc)
        raise LimitsUnavailable("The gateway cannot check this key's budget right now. Try again shortly.")
    if not has_budget and not _setting("GATEWAY_RATE_LIMITS_FAIL_OPEN", True):
        outage_log.report("rate limits (refusing)", exc)
        raise LimitsUnavailable("The gateway cannot check this key's rate limits right now. Try again shortly.")
    outage_log.report("rate limits (serving without counting)", exc)
    return admission  # allowed, counted=False: settle and release do nothing


def _refusal_message(key, reason: str, retry_after_s: float | None) -> str:
    when = f" Try again in {math.ceil(retry_after_s)} s." if retry_after_s is not None else ""
    if reason == "rpm":
        return f"Rate limit reached: {key.rpm} requests per minute for this API key.{when}"
    if reason == "tpm":
        if retry_after_s is None:
            return f"This request needs more tokens than this API key may use per minute ({key.tpm})."
        return f"Rate limit reached: {key.tpm} tokens per minute for this API key.{when}"
    period = "" if key.budget_period == "total" else f" {key.budget_period}"
    if retry_after_s is None:
        return f"This API key has used its{period} budget of ${key.budget_usd}."
    return f"This API key's{period} budget of ${key.budget_usd} is used or held by requests in flight.{when}"


async def settle(admission: Admission, *, actual_tokens: int, actual_cost_usd: float | None,
                 now: float | None = None, redis=None) -> float | None:
    """Finish an allowed admission with the request's real usage, in ONE Redis call: the TPM
    estimate becomes actual_tokens and the budget reservation becomes actual_cost_usd (None:
    unknown, the reservation is charged in full, or nothing under admit_and_flag). Returns
    the key's spend in the period afterwards (None when no budget is tracked). Idempotent;
    never raises for a Redis outage (it logs, the reservation expires by its TTL and
    rebuild_spend_from_logs recovers the spend). prepare_settle gives the call to send with others."""
    call = prepare_settle(admission, actual_tokens=actual_tokens, actual_cost_usd=actual_cost_usd, now=now)
    if call is None:
        return None
    try:
        spent = await call.script(keys=call.keys, args=call.args, client=redis or async_client())
    except RedisError as exc:
        outage_log.report("settling usage", exc)
        return None
    return spent / MICRO if spent >= 0 else None


def prepare_settle(admission: Admission, *, actual_tokens: int, actual_cost_usd: float | None,
                   now: float | None = None) -> "ScriptCall | None":
    """settle's Redis call (None: nothing to settle); marks the admission finished."""
    if admission.finished or not admission.counted:
        return None
    admission.finished = True
    if not admission.track_tpm and not admission.track_budget:
        return None  # an RPM place stays counted as it is: nothing to correct
    keys = _keys(admission.key_id)
    track = admission.track_budget
    if actual_cost_usd is not None:
        cost = max(round(actual_cost_usd * MICRO), 0)
    else:
        cost = 0 if admission.unpriced else -1
    return ScriptCall(
        _SETTLE,
        [keys["tpm"], keys["resv"], keys["resv_exp"], keys["reserved"],
         spend_key(admission.key_id, admission.spend_period) if track else keys["reserved"], DIRTY_SPEND_KEY],
        [_now_arg(now), admission.reservation_id, admission.admitted_s, admission.estimated_tokens,
         max(int(actual_tokens), 0) if admission.track_tpm else -1, cost, admission.spend_expire_at,
         f"{admission.key_id}:{admission.spend_period}" if track else ""])


async def release(admission: Admission, *, now: float | None = None, redis=None) -> None:
    """Give back everything an allowed admission counted: its RPM place, its TPM estimate and
    its budget reservation (the request failed, was rejected, or the client left before any
    cost). ONE Redis call; idempotent; a Redis outage is logged, the reservation then expires
    by its TTL."""
    if admission.finished or not admission.counted:
        return
    admission.finished = True
    keys = _keys(admission.key_id)
    try:
        await _RELEASE(keys=[keys["rpm"], keys["tpm"], keys["resv"], keys["resv_exp"], keys["reserved"]],
                       args=[_now_arg(now), admission.reservation_id, admission.admitted_s,
                             admission.estimated_tokens],
                       client=redis or async_client())
    except RedisError as exc:
        outage_log.report("releasing a reservation", exc)


# --- usage, for the admin ------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class KeyUsage:
    rpm_used: int
    tpm_used: int
    spent_usd: float | None  # in the current budget period; None: nothing counted yet
    reserved_usd: float  # held by requests in flight
    budget_usd: float | None
    remaining_usd: float | None
    period: str
    resets_at: float | None  # epoch seconds; None for a total budget
    rpm_reset_s: float
    tpm_reset_s: float


def _usage_call(key, now: float | None):
    has_budget = key.budget_usd is not None
    period, _, reset_at = budget_period(key.budget_period, now)
    k = _keys(key.id)
    return ([k["rpm"], k["tpm"], k["resv"], k["resv_exp"], k["reserved"], spend_key(key.id, period)],
            [_now_arg(now)], (has_budget, period, reset_at))


def _usage(key, reply, meta) -> KeyUsage:
    rpm_used, tpm_used, reserved, spent, _now_ms, rpm_reset, tpm_reset = reply
    has_budget, period, reset_at = meta
    budget = float(key.budget_usd) if has_budget else None
    spent_usd = spent / MICRO if spent >= 0 else None
    remaining = None
    if budget is not None:
        remaining = max(budget - (spent_usd or 0.0) - reserved / MICRO, 0.0)
    return KeyUsage(rpm_used=rpm_used, tpm_used=tpm_used, spent_usd=spent_usd, reserved_usd=reserved / MICRO,
                    budget_usd=budget, remaining_usd=remaining, period=period, resets_at=reset_at,
                    rpm_reset_s=rpm_reset / 1000, tpm_reset_s=tpm_reset / 1000)


async def usage_snapshot(keys, *, now: float | None = None, redis=None) -> dict[int, KeyUsage]:
    """Current use of each key (KeyEntry or VirtualKey: id, budget_usd, budget_period) in ONE
    pipeline: requests and tokens in the last 60 s, spend and reservations in the
    current budget period, remaining budget, reset time. Raises RedisError when unreachable."""
    keys = list(keys)
    if not keys:
        return {}
    client = redis or async_client()
    pipe = client.pipeline(transaction=False)
    metas = []
    for key in keys:
        rkeys, args, meta = _usage_call(key, now)
        await _USAGE_ASYNC(keys=rkeys, args=args, client=pipe)
        metas.append(meta)
    replies = await pipe.execute()
    return {key.id: _usage(key, reply, meta) for key, reply, meta in zip(keys, replies, metas)}


def usage_snapshot_sync(keys, *, now: float | None = None, redis=None) -> dict[int, KeyUsage]:
    """usage_snapshot for synchronous callers (the admin)."""
    keys = list(keys)
    if not keys:
        return {}
    pipe = (redis or sync_client()).pipeline(transaction=False)
    metas = []
    for key in keys:
        rkeys, args, meta = _usage_call(key, now)
        _USAGE_SYNC(keys=rkeys, args=args, client=pipe)
        metas.append(meta)
    replies = pipe.execute()
    return {key.id: _usage(key, reply, meta) for key, reply, meta in zip(keys, replies, metas)}


# --- spend in the database (Celery beat, admin actions; never on the hot path) -------------

def persist_spend(*, now: float | None = None, redis=None) -> int:
    """Copy the spend that changed since the last run from Redis into KeySpend rows, then
    rebuild from the request log the current-period spend of budgeted keys that Redis has lost
    (a restart without persistence). Returns how many KeySpend rows were written. For a
    Celery beat task, every minute or so."""
    from .models import KeySpend, VirtualKey

    client = redis or sync_client()
    members = client.spop(DIRTY_SPEND_KEY, 10_000) or []
    written = 0
    if members:
        pairs = []
        for member in members:
            key_id, _, period = member.decode().partition(":")
            pairs.append((int(key_id), period))
        values = client.mget([spend_key(key_id, period) for key_id, period in pairs])
        known = set(VirtualKey.objects.filter(pk__in={k for k, _ in pairs}).values_list("pk", flat=True))
        for (key_id, period), value in zip(pairs, values):
            if value is None or key_id not in known:
                continue
            KeySpend.objects.update_or_create(virtual_key_id=key_id, period=period,
                                              defaults={"spent_usd": Decimal(int(value)) / MICRO})
            written += 1
    budgeted = list(VirtualKey.objects.filter(budget_usd__isnull=False).values_list("pk", "budget_period"))
    if budgeted:
        pipe = client.pipeline(transaction=False)
        for key_id, period in budgeted:
            pipe.exists(spend_key(key_id, budget_period(period, now)[0]))
        for (key_id, _), exists in zip(budgeted, pipe.execute()):
            if not exists:
                rebuild_spend_from_logs(key_id, now=now, redis=client)
    return written


def rebuild_spend_from_logs(key_id: int, *, now: float | None = None, redis=None) -> Decimal:
    """Set the key's current-period spend in Redis from the database when Redis lacks it or
    holds less: the larger of the request log's cost_usd sum for the period and the last
    persisted KeySpend. Returns the spend now in Redis. Spend settled into a fresh Redis key
    after a restart is kept (the larger value wins), so calling this twice is harmless."""
    from django.db.models import Sum

    from routing.models import RequestLog

    from .models import KeySpend, VirtualKey

    vk = VirtualKey.objects.get(pk=key_id)
    period, start, reset_at = budget_period(vk.budget_period, now)
    logs = RequestLog.objects.filter(virtual_key_id=key_id)
    if start is not None:
        logs = logs.filter(created_at__gte=datetime.fromtimestamp(start, budget_time_zone()))
    from_logs = logs.aggregate(total=Sum("cost_usd"))["total"] or Decimal(0)
    persisted = KeySpend.objects.filter(virtual_key_id=key_id, period=period).values_list("spent_usd", flat=True)
    best = max([from_logs, *persisted])
    client = redis or sync_client()
    target = spend_key(key_id, period)
    micro = int(best * MICRO)
    # Raise, never lower: Lua keeps the check and the write atomic against concurrent settles.
    spent = client.eval("""
        local cur = tonumber(redis.call('GET', KEYS[1]) or '-1')
        if cur < tonumber(ARGV[1]) then redis.call('SET', KEYS[1], ARGV[1]); cur = tonumber(ARGV[1]) end
        if tonumber(ARGV[2]) > 0 then redis.call('EXPIREAT', KEYS[1], ARGV[2]) end
        return cur""", 1, target, micro, int(reset_at + SPEND_KEPT_AFTER_PERIOD_S) if reset_at else 0)
    return Decimal(int(spent)) / MICRO
