"""Routing state shared by every gateway process, in Redis: provider-key cooldowns, a circuit
breaker per target, session affinity, latency averages and a retry budget per route.

The planner reads everything one request needs in ONE round trip, and each attempt reports
its outcome in ONE call:

    state = await read_state(route.id, [t.id for t in targets], [k.id for k in keys], session_id=sid)
    usable = [t for t in targets if state.target_usable(t.id)]     # a "probe" target first
    ...attempt...
    result = await report_attempt(route.id, target.id, key.id, outcome="failed", probe=state.is_probe(target.id),
                                  retry_at=parse_reset_headers(response.headers), want_retry=True)
    if result.retry_allowed: next attempt

Circuit breaker per target (provider + upstream model): `failures` consecutive failures within
`failure_window_s` open it for `open_s`. When that time is up, EXACTLY ONE reader claims the
half-open probe (state "probe", with a lease of `probe_lease_s`); everyone else still sees it
open. The probe's success closes the circuit, its failure reopens it. A claimed probe that is
never reported lapses after its lease and the next reader claims it.

Provider-key cooldowns: until the reset time the upstream gave (Retry-After, retry-after-ms,
x-ratelimit-reset-*, anthropic-ratelimit-*-reset; see parse_reset_headers), else for
base * 2^(streak-1) seconds up to a cap, the streak counting failures since the key's last
success. A new cooldown never shortens one already running.

Health advice: read_state also reads the health monitor's down flag of each target
(health_down_key, set with hysteresis by healthcheck/routing_state.py), in the same call.

Retry budget: per route and clock minute, retries may be at most GATEWAY_RETRY_BUDGET_RATIO of
the requests read_state counted, and at least GATEWAY_RETRY_BUDGET_MIN (so quiet routes retry).

Redis unreachable: everything fails open (no cooldowns, circuits closed, retries allowed) and
the outage is logged once per GATEWAY_LIMITS_OUTAGE_LOG_EVERY_S.

Settings (all optional; defaults in Policy): GATEWAY_CIRCUIT_FAILURES (5),
GATEWAY_CIRCUIT_FAILURE_WINDOW_S (60), GATEWAY_CIRCUIT_OPEN_S (30; a route's cooldown_s can
override it: Policy.from_settings(open_s=route.cooldown_s)), GATEWAY_CIRCUIT_PROBE_LEASE_S (30),
GATEWAY_KEY_COOLDOWN_BASE_S (5), GATEWAY_KEY_COOLDOWN_CAP_S (300), GATEWAY_LATENCY_EWMA_ALPHA
(0.2), GATEWAY_RETRY_BUDGET_RATIO (0.2), GATEWAY_RETRY_BUDGET_MIN (3).

The scripts name keys of several targets and provider keys at once: a single Redis or Valkey,
not a Redis Cluster.
"""
import hashlib
import logging
import math
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from email.utils import parsedate_to_datetime

from django.conf import settings
from redis.commands.core import AsyncScript
from redis.exceptions import RedisError

from llmgateway.redis import ScriptCall, async_client

log = logging.getLogger(__name__)

OUTCOMES = ("ok", "client_error", "rate_limited", "key_error", "failed")
_OUTCOME_CODE = {name: i for i, name in enumerate(OUTCOMES)}


def _setting(name, default):
    return getattr(settings, name, default)


@dataclass(frozen=True, slots=True)
class Policy:
    """The knobs, from settings unless given (a route's cooldown_s can set open_s)."""

    failures: int = 5  # consecutive failures that open a circuit
    failure_window_s: float = 60.0  # ...counted while they come within this long of each other
    open_s: float = 30.0
    probe_lease_s: float = 30.0  # how long a claimed half-open probe blocks other probes
    key_cooldown_base_s: float = 5.0
    key_cooldown_cap_s: float = 300.0
    latency_alpha: float = 0.2  # weight of the newest sample in the moving average
    retry_ratio: float = 0.2
    retry_min: int = 3  # retries per route and minute allowed whatever the ratio

    @classmethod
    def from_settings(cls, **overrides) -> "Policy":
        values = {name: _setting(setting, getattr(_DEFAULT_POLICY, name)) for name, setting in _POLICY_SETTINGS.items()}
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)


_DEFAULT_POLICY = Policy()
_POLICY_SETTINGS = {
    "failures": "GATEWAY_CIRCUIT_FAILURES",
    "failure_window_s": "GATEWAY_CIRCUIT_FAILURE_WINDOW_S",
    "open_s": "GATEWAY_CIRCUIT_OPEN_S",
    "probe_lease_s": "GATEWAY_CIRCUIT_PROBE_LEASE_S",
    "key_cooldown_base_s": "GATEWAY_KEY_COOLDOWN_BASE_S",
    "key_cooldown_cap_s": "GATEWAY_KEY_COOLDOWN_CAP_S",
    "latency_alpha": "GATEWAY_LATENCY_EWMA_ALPHA",
    "retry_ratio": "GATEWAY_RETRY_BUDGET_RATIO",
    "retry_min": "GATEWAY_RETRY_BUDGET_MIN",
}


# --- Redis keys -----------------------------------------------------------------------------

def circuit_key(target_id: int) -> str:
    return f"gw:rs:cb:{target_id}"


def cooldown_key(provider_key_id: int) -> str:
    return f"gw:rs:cool:{provider_key_id}"


def streak_key(provider_key_id: int) -> str:
    return f"gw:rs:streak:{provider_key_id}"


def affinity_key(route_id: int, session_id: str) -> str:
    # Hashed: a session id may be something the client would rather not see in Redis.
    digest = hashlib.sha256(session_id.encode()).hexdigest()[:32]
    return f"gw:rs:aff:{route_id}:{digest}"


LATENCY_KEY = "gw:rs:latency"  # hash: target id -> moving average, ms


def health_down_key(target_id: int) -> str:
    """Set to "down" by the health monitor (healthcheck/routing_state.py, with hysteresis) while
    its probes find this target down. Owned here so the monitor writes what routing reads,
    and routing imports nothing of the monitor."""
    return f"gw:health:target:{target_id}"


def retry_budget_key(route_id: int, minute: int) -> str:
    return f"gw:rs:retry:{route_id}:{minute}"


# --- Lua ------------------------------------------------------------------------------------

_NOW = """
local now = tonumber(ARGV[1])
if not now then local t = redis.call('TIME'); now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) end
"""

# KEYS: retry budget, affinity (or a placeholder), latency, cb_1..cb_n, cool_1..cool_m, health_1..health_n
# ARGV: now_ms|'', n, m, probe lease ms, claim probes (0/1), count request (0/1), has affinity (0/1),
#       target id 1..n
# -> {now, affinity target|'', {state per target: 0 closed, 1 open, 2 probe (claimed here)},
#     {open_until ms per target}, {cool-until ms per key (0: ready)}, {latency per target|''},
#     {1 when the health monitor marks the target down, else 0, per target}}
_READ_LUA = _NOW + """
local n, m, lease = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local claim, count, has_aff = ARGV[5] == '1', ARGV[6] == '1', ARGV[7] == '1'
if count then
  redis.call('HINCRBY', KEYS[1], 'req', 1)
  redis.call('EXPIRE', KEYS[1], 120)
end
local aff = ''
if has_aff then aff = redis.call('GET', KEYS[2]) or '' end
local states, open_until, cools, lat, down = {}, {}, {}, {}, {}
for i = 1, n do
  local cb = KEYS[3 + i]
  local until_ms = tonumber(redis.call('HGET', cb, 'open_until') or '0')
  local state = 0
  if until_ms > 0 then
    state = 1
    if now >= until_ms then
      local probe_until = tonumber(redis.call('HGET', cb, 'probe_until') or '0')
      if claim and probe_until <= now then
        redis.call('HSET', cb, 'probe_until', now + lease)
        state = 2
      end
    end
  end
  states[i], open_until[i] = state, until_ms
  lat[i] = redis.call('HGET', KEYS[3], ARGV[7 + i]) or ''
  if redis.call('GET', KEYS[3 + n + m + i]) == 'down' then down[i] = 1 else down[i] = 0 end
end
for j = 1, m do
  local c = tonumber(redis.call('GET', KEYS[3 + n + j]) or '0')
  if c <= now then c = 0 end
  cools[j] = c
end
return {now, aff, states, open_until, cools, lat, down}
"""

# KEYS: circuit, cooldown, streak, latency, retry budget, affinity (or placeholder)
# ARGV: now_ms|'', target id, outcome code, probe (0/1), retry_at ms (0: none), failures,
#       failure window ms, open ms, cooldown base ms, cooldown cap ms, latency ms (-1: none), alpha,
#       want retry (0/1), retry ratio, retry min, affinity target ('' none), affinity ttl ms, has key (0/1)
# -> {retry allowed (0/1), circuit state after (0 closed, 1 open), key cool-until ms (0: none)}
_REPORT_LUA = _NOW + """
local outcome, probe, retry_at = tonumber(ARGV[3]), ARGV[4] == '1', tonumber(ARGV[5])
local threshold, window, open_ms = tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8])
local base, cap, latency, alpha = tonumber(ARGV[9]), tonumber(ARGV[10]), tonumber(ARGV[11]), tonumber(ARGV[12])
local has_key = ARGV[18] == '1'
-- outcomes: 0 ok, 1 client_error (the upstream answered: it is up), 2 rate_limited, 3 key_error, 4 failed
local cb = KEYS[1]
local open_until = tonumber(redis.call('HGET', cb, 'open_until') or '0')
local circuit = 0
if outcome == 4 then
  if probe or (open_until > 0 and now >= open_until) then
    redis.call('HSET', cb, 'open_until', now + open_ms, 'probe_until', 0, 'fails', 0)
    circuit = 1
  elseif open_until > 0 then
    circuit = 1  -- already open: a request that was in flight when it opened changes nothing
  else
    local fails = redis.call('HINCRBY', cb, 'fails', 1)
    if fails >= threshold then
      redis.call('HSET', cb, 'open_until', now + open_ms, 'probe_until', 0, 'fails', 0)
      circuit = 1
    else
      redis.call('PEXPIRE', cb, window)  -- consecutive failures must come within the window
    end
  end
  -- An open circuit outlives its open time by a day; forgotten after that, it starts closed.
  if circuit == 1 then redis.call('PEXPIRE', cb, open_ms + 86400000) end
elseif outcome <= 1 then
  if probe or open_until == 0 then
    redis.call('DEL', cb)  -- only the probe closes an open circuit; otherwise reset the streak
  else
    circuit = 1
  end
elseif open_until > 0 then
  circuit = 1
end
if probe and outcome ~= 4 and outcome > 1 then
  redis.call('HSET', cb, 'probe_until', 0)  -- a key problem says nothing of the target: probe again
end

local cool_until = 0
if has_key then
  if outcome == 0 or outcome == 1 then
    redis.call('DEL', KEYS[3])
  elseif outcome == 2 or outcome == 3 or retry_at > 0 then
    local streak = redis.call('INCR', KEYS[3])
    redis.call('PEXPIRE', KEYS[3], cap * 4)
    local proposed = retry_at
    if proposed <= now then proposed = now + math.min(base * 2 ^ (streak - 1), cap) end
    local current = tonumber(redis.call('GET', KEYS[2]) or '0')
    if proposed > current then
      redis.call('SET', KEYS[2], proposed, 'PX', proposed - now)
      cool_until = proposed
    else
      cool_until = current  -- a new cooldown never shortens a longer one
    end
  end
end

if latency >= 0 and outcome <= 1 then
  local old = tonumber(redis.call('HGET', KEYS[4], ARGV[2]) or '-1')
  local avg = latency
  if old >= 0 then avg = old + alpha * (latency - old) end
  redis.call('HSET', KEYS[4], ARGV[2], string.format('%.3f', avg))
end

local retry = 0
if ARGV[13] == '1' then
  local req = tonumber(redis.call('HGET', KEYS[5], 'req') or '0')
  local used = tonumber(redis.call('HGET', KEYS[5], 'retry') or '0')
  if used < math.max(tonumber(ARGV[15]), math.floor(req * tonumber(ARGV[14]))) then
    redis.call('HINCRBY', KEYS[5], 'retry', 1)
    redis.call('EXPIRE', KEYS[5], 120)
    retry = 1
  end
end

if ARGV[16] ~= '' and outcome <= 1 then
  redis.call('SET', KEYS[6], ARGV[16], 'PX', tonumber(ARGV[17]))
end
return {retry, circuit, cool_until}
"""

_READ = AsyncScript(None, _READ_LUA.encode())
_REPORT = AsyncScript(None, _REPORT_LUA.encode())


class _OutageLog:
    def __init__(self):
        self.last = 0.0

    def report(self, what: str, exc: BaseException) -> None:
        now = time.monotonic()
        if now - self.last >= float(_setting("GATEWAY_LIMITS_OUTAGE_LOG_EVERY_S", 30.0)):
            self.last = now
            log.error("Redis unreachable for %s, routing without shared state (%s): %s",
                      what, type(exc).__name__, exc)


outage_log = _OutageLog()


def _now_arg(now: float | None) -> str:
    return "" if now is None else str(int(now * 1000))


# --- read side ------------------------------------------------------------------------------

CLOSED, OPEN, PROBE = "closed", "open", "probe"
_STATES = (CLOSED, OPEN, PROBE)


@dataclass(frozen=True, slots=True)
class RoutingState:
    """What one request's planner knows of its candidate targets and provider keys.

    circuits: target id -> closed | open | probe ("probe": this request holds the one half-open
    probe; try that target, ideally first, and report with probe=True). open_until: target id ->
    epoch s when its circuit (re)opens for probing (0: closed). key_cooldowns: provider key id
    -> epoch s until which it cools (only cooling keys). latency_ms: target id -> moving average
    (missing: no sample yet). affinity: the target id bound to the session, or None.
    health_down: target ids the health monitor's probes find down (advice: the planner tries
    them last, see attempts.plan_from_state). available: False when Redis was unreachable
    (everything then looks usable)."""

    now: float
    circuits: Mapping[int, str] = field(default_factory=dict)
    open_until: Mapping[int, float] = field(default_factory=dict)
    key_cooldowns: Mapping[int, float] = field(default_factory=dict)
    latency_ms: Mapping[int, float] = field(default_factory=dict)
    affinity: int | None = None
    health_down: frozenset[int] = frozenset()
    available: bool = True

    def target_usable(self, target_id: int) -> bool:
        return self.circuits.get(target_id, CLOSED) != OPEN

    def is_probe(self, target_id: int) -> bool:
        return self.circuits.get(target_id) == PROBE

    def key_ready(self, provider_key_id: int) -> bool:
        return provider_key_id not in self.key_cooldowns


async def read_state(route_id: int, target_ids: Sequence[int], provider_key_ids: Sequence[int] = (), *,
                     session_id: str | None = None, claim_probes: bool = True, count_request: bool = True,
                     policy: Policy | None = None, now: float | None = None, redis=None) -> RoutingState:
    """Everything the planner needs for one request, in ONE Lua call: circuit state, cooldowns,
    latency averages, the health monitor's down flags and the session's bound target. With claim_probes, a target whose open
    time is over is claimed for this request as the one half-open probe. With count_request,
    the request counts towards the route's retry budget for this minute. Never raises for a
    Redis outage: it logs and answers an empty state (available=False).

    To send it with other calls in one round trip: prepare_read_state, run_scripts, then
    state_from_reply (or unavailable_state)."""
    call, target_ids, provider_key_ids = prepare_read_state(
        route_id, target_ids, provider_key_ids, session_id=session_id, claim_probes=claim_probes,
        count_request=count_request, policy=policy, now=now)
    try:
        reply = await call.script(keys=call.keys, args=call.args, client=redis or async_client())
    except RedisError as exc:
        return unavailable_state(exc, now)
    return state_from_reply(reply, target_ids, provider_key_ids)


def prepare_read_state(route_id: int, target_ids: Sequence[int], provider_key_ids: Sequence[int] = (), *,
                       session_id: str | None = None, claim_probes: bool = True, count_request: bool = True,
                       policy: Policy | None = None, now: float | None = None):
    """(read_state's Redis call, target ids, provider key ids) for state_from_reply."""
    policy = policy or Policy.from_settings()
    target_ids, provider_key_ids = list(target_ids), list(provider_key_ids)
    wall = time.time() if now is None else now
    keys = [retry_budget_key(route_id, int(wall // 60)),
            affinity_key(route_id, session_id) if session_id else LATENCY_KEY, LATENCY_KEY,
            *(circuit_key(t) for t in target_ids), *(cooldown_key(k) for k in provider_key_ids),
            *(health_down_key(t) for t in target_ids)]
    args = [_now_arg(now), len(target_ids), len(provider_key_ids), int(policy.probe_lease_s * 1000),
            int(claim_probes), int(count_request), int(bool(session_id)), *target_ids]
    return ScriptCall(_READ, keys, args), target_ids, provider_key_ids


def unavailable_state(exc: BaseException, now: float | None = None) -> RoutingState:
    outage_log.report("reading routing state", exc)
    return RoutingState(now=time.time() if now is None else now, available=False)


def state_from_reply(reply, target_ids: Sequence[int], provider_key_ids: Sequence[int]) -> RoutingState:
    now_ms, aff, states, opens, cools, lats, down = reply
    return RoutingState(
        now=now_ms / 1000,
        circuits={t: _STATES[s] for t, s in zip(target_ids, states)},
        open_until={t: u / 1000 for t, u in zip(target_ids, opens)},
        key_cooldowns={k: c / 1000 for k, c in zip(provider_key_ids, cools) if c},
        latency_ms={t: float(v) for t, v in zip(target_ids, lats) if v},
        affinity=int(aff) if aff else None,
        health_down=frozenset(t for t, d in zip(target_ids, down) if d),
    )


# --- write side -----------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class ReportResult:
    retry_allowed: bool  # only meaningful when want_retry was asked
    circuit: str  # closed | open, after this report
    key_cooling_until: float | None  # epoch s, when this report cooled the key (or found it cooling longer)


async def report_attempt(route_id: int, target_id: int, provider_key_id: int | None, *, outcome: str,
                         probe: bool = False, retry_at: float | None = None, latency_ms: float | None = None,
                         want_retry: bool = False, bind_session: tuple[str, float] | None = None,
                         policy: Policy | None = None, now: float | None = None, redis=None) -> ReportResult:
    """Record one attempt's outcome in ONE Lua call.

    outcome: ok; client_error (the upstream answered a 4xx of the client's making: the target is
    up); rate_limited (429: cool the key); key_error (401/403: cool the key, escalating);
    failed (5xx, timeout, refused connection: counts towards the target's circuit).
    probe: this attempt was the half-open probe read_state handed out. retry_at: epoch s from
    parse_reset_headers; given, it cools the key until then whatever the outcome. latency_ms:
    time to first token for streams, whole answer otherwise; averaged on ok outcomes.
    want_retry: ask the route's retry budget for one more attempt (counted when granted).
    bind_session: (session id, ttl s) to bind to this target on success (session affinity).
    Never raises for a Redis outage: it logs and allows the retry."""
    call = prepare_report(route_id, target_id, provider_key_id, outcome=outcome, probe=probe, retry_at=retry_at,
                          latency_ms=latency_ms, want_retry=want_retry, bind_session=bind_session, policy=policy,
                          now=now)
    try:
        reply = await call.script(keys=call.keys, args=call.args, client=redis or async_client())
    except RedisError as exc:
        return report_unreachable(exc)
    return report_from_reply(reply)


def prepare_report(route_id: int, target_id: int, provider_key_id: int | None, *, outcome: str,
                   probe: bool = False, retry_at: float | None = None, latency_ms: float | None = None,
                   want_retry: bool = False, bind_session: tuple[str, float] | None = None,
                   policy: Policy | None = None, now: float | None = None, samples: int = 1) -> ScriptCall:
    """report_attempt's Redis call, to send alone or with others (run_scripts). `samples`:
    how many successes the latency averages (see fold_successes)."""
    if outcome not in _OUTCOME_CODE:
        raise ValueError(f"unknown outcome {outcome!r}; one of {OUTCOMES}")
    policy = policy or Policy.from_settings()
    wall = time.time() if now is None else now
    has_key = provider_key_id is not None
    session_id, ttl_s = bind_session or (None, 0)
    keys = [circuit_key(target_id),
            cooldown_key(provider_key_id) if has_key else circuit_key(target_id),
            streak_key(provider_key_id) if has_key else circuit_key(target_id),
            LATENCY_KEY, retry_budget_key(route_id, int(wall // 60)),
            affinity_key(route_id, session_id) if session_id else LATENCY_KEY]
    args = [_now_arg(now), target_id, _OUTCOME_CODE[outcome], int(probe),
            int(retry_at * 1000) if retry_at else 0, policy.failures, int(policy.failure_window_s * 1000),
            int(policy.open_s * 1000), int(policy.key_cooldown_base_s * 1000), int(policy.key_cooldown_cap_s * 1000),
            -1 if latency_ms is None else f"{latency_ms:.3f}",
            policy.latency_alpha if samples == 1 else 1 - (1 - policy.latency_alpha) ** samples,
            int(want_retry), policy.retry_ratio, policy.retry_min, target_id if session_id else "",
            int(ttl_s * 1000), int(has_key)]
    call = ReportCall(_REPORT, keys, args)
    if outcome == "ok" and not (probe or retry_at or want_retry or session_id or now is not None):
        call.success_of = (route_id, target_id, provider_key_id, policy)
        call.latency_ms = latency_ms
    return call


class ReportCall(ScriptCall):
    __slots__ = ("success_of", "latency_ms")

    def __init__(self, script, keys, args):
        super().__init__(script, keys, args)
        self.success_of = None  # (route, target, provider key, policy) of a plain success, which folds
        self.latency_ms = None


def fold_successes(calls: list[ScriptCall]) -> list[ScriptCall]:
    """The calls, with the plain success reports of one target and key folded into one: a busy
    route's successes otherwise cost Redis one call each although they all say the same (reset
    the failure streaks, average the latency). The folded call averages their latencies with the
    weight the moving average would have given them one by one (1 - (1 - alpha) ** n)."""
    successes: dict[tuple, list[ReportCall]] = {}
    folded = []
    for call in calls:
        of = getattr(call, "success_of", None)
        if of is None:
            folded.append(call)
        else:
            successes.setdefault(of, []).append(call)
    for (route_id, target_id, provider_key_id, policy), group in successes.items():
        if len(group) == 1:
            folded.append(group[0])
            continue
        latencies = [call.latency_ms for call in group if call.latency_ms is not None]
        folded.append(prepare_report(route_id, target_id, provider_key_id, outcome="ok", policy=policy,
                                     latency_ms=sum(latencies) / len(latencies) if latencies else None,
                                     samples=max(len(latencies), 1)))
    return folded


def report_unreachable(exc: BaseException) -> ReportResult:
    outage_log.report("reporting an attempt", exc)
    return ReportResult(retry_allowed=True, circuit=CLOSED, key_cooling_until=None)


def report_from_reply(reply) -> ReportResult:
    retry, circuit, cool_until = reply
    return ReportResult(retry_allowed=bool(retry), circuit=_STATES[circuit],
                        key_cooling_until=cool_until / 1000 if cool_until else None)


async def release_probe(target_id: int, *, redis=None) -> None:
    """Hand back a half-open probe read_state gave this request when the request will not try
    that target after all (an earlier target answered), so the next request probes at once
    instead of after the lease. ONE call; never raises for a Redis outage."""
    try:
        await (redis or async_client()).hset(circuit_key(target_id), "probe_until", 0)
    except RedisError as exc:
        outage_log.report("releasing a probe", exc)


# --- session affinity -----------------------------------------------------------------------

async def bind(route_id: int, session_id: str, target_id: int, ttl_s: float, *, redis=None) -> None:
    """Send the session's next requests on this route to `target_id` for ttl_s (renewed by each bind)."""
    try:
        await (redis or async_client()).set(affinity_key(route_id, session_id), target_id, px=int(ttl_s * 1000))
    except RedisError as exc:
        outage_log.report("binding a session", exc)


async def lookup(route_id: int, session_id: str, *, redis=None) -> int | None:
    """The target bound to the session on this route, or None (read_state returns it too)."""
    try:
        value = await (redis or async_client()).get(affinity_key(route_id, session_id))
    except RedisError as exc:
        outage_log.report("looking up a session", exc)
        return None
    return int(value) if value else None


# --- rate-limit reset headers ---------------------------------------------------------------

_FAMILIES = ("requests", "tokens", "input-tokens", "output-tokens")
_DURATION = re.compile(r"(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m(?!s))?(?:(\d+(?:\.\d+)?)s)?(?:(\d+(?:\.\d+)?)ms)?")


def parse_duration(text: str) -> float | None:
    """Seconds in OpenAI's reset format ("20ms", "1s", "6m0s", "1h2m3.5s") or a plain number."""
    text = text.strip()
    try:
        return float(text)
    except ValueError:
        pass
    match = _DURATION.fullmatch(text)
    if not match or not any(match.groups()):
        return None
    h, m, s, ms = (float(g) if g else 0.0 for g in match.groups())
    return h * 3600 + m * 60 + s + ms / 1000


def _timestamp(text: str) -> float | None:
    """Epoch seconds from an RFC 3339 time (Anthropic) or an HTTP date."""
    text = text.strip()
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        pass
    try:
        return parsedate_to_datetime(text).timestamp()
    except (TypeError, ValueError, IndexError):
        return None


def parse_reset_headers(headers: Mapping[str, str], now: float | None = None) -> float | None:
    """When (epoch s) an upstream's rate limit lets the key in again, from its answer's headers;
    None when they don't say.

    Retry-After (seconds or an HTTP date) and retry-after-ms are the upstream's explicit word
    and win. Otherwise the reset of each exhausted limit (remaining 0): OpenAI's
    x-ratelimit-reset-{requests,tokens} (durations), Anthropic's
    anthropic-ratelimit-{requests,tokens,input-tokens,output-tokens}-reset (RFC 3339), and a
    bare x-ratelimit-reset (seconds, or epoch seconds); the latest of them. When no remaining
    count is given, every reset counts."""
    now = time.time() if now is None else now
    h = {k.lower(): v for k, v in headers.items()}
    explicit = []
    if "retry-after-ms" in h:
        ms = parse_duration(h["retry-after-ms"])
        if ms is not None:
            explicit.append(now + ms / 1000)
    if "retry-after" in h:
        value = h["retry-after"].strip()
        seconds = parse_duration(value) if re.fullmatch(r"[\d.]+", value) else None
        at = now + seconds if seconds is not None else _timestamp(value)
        if at is not None:
            explicit.append(at)
    if explicit:
        return max(explicit)
    resets: list[tuple[float, bool | None]] = []  # (reset at, exhausted?)
    for family in _FAMILIES:
        for prefix, parse in (("x-ratelimit", _relative(now)), ("anthropic-ratelimit", _timestamp)):
            reset = h.get(f"{prefix}-reset-{family}") if prefix == "x-ratelimit" else h.get(f"{prefix}-{family}-reset")
            if reset is None:
                continue
            at = parse(reset)
            if at is None:
                continue
            remaining = (h.get(f"{prefix}-remaining-{family}") if prefix == "x-ratelimit"
                         else h.get(f"{prefix}-{family}-remaining"))
            resets.append((at, None if remaining is None else _is_zero(remaining)))
    if "x-ratelimit-reset" in h:
        seconds = parse_duration(h["x-ratelimit-reset"])
        if seconds is not None:
            # Some providers send a delay, some an epoch time: no delay is ~56 years.
            at = seconds if seconds > 1e9 else now + seconds
            remaining = h.get("x-ratelimit-remaining")
            resets.append((at, None if remaining is None else _is_zero(remaining)))
    exhausted = [at for at, gone in resets if gone]
    if exhausted:
        return max(exhausted)
    unknown = [at for at, gone in resets if gone is None]
    return max(unknown) if unknown else None


def _relative(now: float):
    def parse(text: str) -> float | None:
        seconds = parse_duration(text)
        return None if seconds is None else now + seconds
    return parse


def _is_zero(text: str) -> bool:
    try:
        return float(text) <= 0
    except ValueError:
        return False


def cooldown_seconds(retry_at: float | None, now: float | None = None) -> float | None:
    """Seconds from now until retry_at (None stays None); for logs and headers."""
    if retry_at is None:
        return None
    return max(math.ceil(retry_at - (time.time() if now is None else now)), 0)


# --- for the admin (synchronous; never on the hot path) -------------------------------------

def key_cooldowns_sync(provider_key_ids: Sequence[int], *, redis=None) -> dict[int, float]:
    """provider key id -> epoch s until which it cools, for the keys that cool now (ONE MGET).
    Raises RedisError when Redis is unreachable."""
    from llmgateway.redis import sync_client

    ids = list(provider_key_ids)
    if not ids:
        return {}
    values = (redis or sync_client()).mget([cooldown_key(k) for k in ids])
    now = time.time()
    return {k: int(v) / 1000 for k, v in zip(ids, values) if v is not None and int(v) / 1000 > now}


def clear_key_cooldowns_sync(provider_key_ids: Sequence[int], *, redis=None) -> int:
    """End the cooldowns (and failure streaks) of these provider keys, for every gateway
    process at once. Returns how many keys were cooling."""
    from llmgateway.redis import sync_client

    ids = list(provider_key_ids)
    if not ids:
        return 0
    client = redis or sync_client()
    cooling = client.delete(*(cooldown_key(k) for k in ids))
    client.delete(*(streak_key(k) for k in ids))
    return cooling


def forget_targets_sync(target_ids: Sequence[int], *, redis=None) -> None:
    """Drop the shared state of deleted route targets (circuit, health flag, latency): an id
    the database hands out again (SQLite reuses the highest) must start with a clean slate."""
    from llmgateway.redis import sync_client

    ids = list(target_ids)
    if not ids:
        return
    client = redis or sync_client()
    client.delete(*(circuit_key(t) for t in ids), *(health_down_key(t) for t in ids))
    client.hdel(LATENCY_KEY, *ids)
