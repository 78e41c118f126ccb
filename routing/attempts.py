"""Attempt planning: which target to try next, with which provider key, for one request.

    plan = await make_plan(route, session_id=..., prompt_tokens=...)   # ONE Redis call (read_state)
    target, key = plan.first()
    ... attempt ...
    failure: step = await plan.failed(target, key, failure, headers)   # ONE Redis call (report_attempt)
             step.target/step.key next, or step.stop
    success: call = plan.succeeded(target, key, latency_ms)             # sent after the answer
    finally: plan.finish()                                              # hands back an unused probe

The order comes from the route's strategy (priority: lower first, weighted among equals;
weighted; round_robin; least_latency: lowest moving average of latency, TTFT for streams).
Then the shared state in Redis (routing/resilience.py) filters it: a target whose circuit is
open sits out (one request at a time gets the half-open probe), a provider key that cools is
skipped, a target whose every key cools sits out. A target the health monitor's probes find
down (read in the same Redis call) goes after every other usable target: it is tried only
when they all fail, or when every target is flagged down. A session bound to a target that is
neither open nor flagged down goes there first. A target whose catalog context window the
request exceeds is skipped.

Retries. A different target, or the same target with another key (after 401/403/429), is a
failover and needs nothing more than a place in route.max_attempts. Trying a target again
that already failed in this request is a retry: it waits (exponential backoff with jitter, or
the upstream's Retry-After up to GATEWAY_RETRY_AFTER_CAP_S) and needs the route's retry
budget. All within the request's one deadline, and only before the client got a byte.
"""
import asyncio
import functools
import itertools
import json
import logging
import random
import re
import time
from dataclasses import dataclass

from django.conf import settings
from redis.exceptions import RedisError

from llmgateway import runtime
from llmgateway.errors import InvalidRequest, ServiceUnavailable
from llmgateway.redis import ScriptCall, run_scripts
from providers.upstream import MAX_RETRY_AFTER_S, Failure

from . import resilience
from .resolve import order_targets
from .snapshot import ProviderEntry, ProviderKeyEntry, RouteEntry, TargetEntry

log = logging.getLogger(__name__)

BACKOFF_BASE_S = 0.1
BACKOFF_CAP_S = 2.0

# Headers that name a conversation, most specific first (lower-case; Inbound.headers).
SESSION_HEADERS = ("x-claude-code-session-id", "session-id", "x-session-id")
# Upstream words for "the prompt does not fit this model's context window" (a 400 or 413).
_CONTEXT_ERROR = re.compile(
    r"context.length|context.window|maximum context|prompt is too long|input is too long|too many tokens"
    r"|exceeds? the (?:model'?s? )?(?:maximum|context)", re.IGNORECASE)
_SESSION_IN_USER_ID = re.compile(r"_session_([0-9A-Za-z-]+)")
_RESPONSE_ID = re.compile(rb'"id"\s*:\s*"(resp_[^"]+)"')

_key_turns: dict[int, itertools.count] = {}  # provider id -> counter, for taking keys in turn


# --- the session a request belongs to ----------------------------------------------------------

def session_of(headers: dict[str, str], body: dict) -> str | None:
    """The conversation this request continues, if the client says: Claude Code's session
    header or metadata.user_id, Codex's session-id header, a documented x-session-id header,
    or the Responses API's previous_response_id."""
    for name in SESSION_HEADERS:
        value = headers.get(name)
        if value:
            return value[:200]
    previous = body.get("previous_response_id")
    if isinstance(previous, str) and previous:
        return "resp:" + previous[:200]
    metadata = body.get("metadata")
    user_id = metadata.get("user_id") if isinstance(metadata, dict) else None
    if isinstance(user_id, str) and user_id:
        # Claude Code: "user_<hash>_account_<uuid>_session_<uuid>", or since 2.1 a JSON object
        # with a session_id.
        if user_id.startswith("{"):
            try:
                session = json.loads(user_id).get("session_id")
            except (ValueError, AttributeError):
                session = None
            if isinstance(session, str) and session:
                return "claude:" + session[:200]
        match = _SESSION_IN_USER_ID.search(user_id)
        if match:
            return "claude:" + match.group(1)
    return None


def response_session(answer: bytes) -> str | None:
    """The session a Responses API answer starts: its id, which the next turn sends as
    previous_response_id. Looked for at the start of the answer only (cheap)."""
    match = _RESPONSE_ID.search(answer[:400])
    return "resp:" + match.group(1).decode() if match else None


# --- failures, as the shared state counts them ------------------------------------------------

def is_context_error(failure: Failure) -> bool:
    return failure.status in (400, 413) and bool(_CONTEXT_ERROR.search(failure.upstream_message or ""))


def outcome_of(failure: Failure) -> str | None:
    """The resilience outcome of a failure (None: says nothing of the target or key)."""
    if failure.kind == "config":
        return None
    if failure.kind == "auth":
        return "key_error"
    if failure.kind == "status":
        if failure.status == 429:
            return "rate_limited"
        if failure.status is not None and failure.status < 500 and failure.status not in (408, 409):
            return "client_error"
    return "failed"


@functools.lru_cache(maxsize=256)
def policy_for(cooldown_s: int) -> resilience.Policy:
    """The resilience knobs of a route: settings, with the route's cooldown as the circuit's open time."""
    return resilience.Policy.from_settings(open_s=float(cooldown_s) if cooldown_s else None)


# --- keys ------------------------------------------------------------------------------------------

def pick_key(provider: ProviderEntry, unavailable) -> ProviderKeyEntry | None | bool:
    """The provider's next key in turn by weight (a key of weight 3 takes three turns in a row
    of every 3 + the others'), skipping keys in `unavailable`. None: the provider needs no key.
    False: every key is unavailable."""
    if not provider.keys:
        return None
    ready = [k for k in provider.keys if k.id not in unavailable]
    if not ready:
        return False
    weights = [max(k.weight, 0) for k in ready]
    total = sum(weights)
    if total == 0:  # only weight-0 keys left: they serve, in turn, rather than nothing
        weights, total = [1] * len(ready), len(ready)
    turn = next(_key_turns.setdefault(provider.id, itertools.count())) % total
    for key, weight in zip(ready, weights):
        turn -= weight
        if turn < 0:
            return key
    return ready[-1]


# --- the plan -----------------------------------------------------------------------------------

@dataclass(slots=True)
class Step:
    target: TargetEntry | None = None
    key: ProviderKeyEntry | None = None
    retry: bool = False  # the target failed before in this request
    stop: bool = False


class Plan:
    """One request's attempts: the usable targets in order and what the request learned so far."""

    def __init__(self, route: RouteEntry, ordered: list[TargetEntry], state: resilience.RoutingState,
                 session_id: str | None, prompt_tokens: int | None, redis=None):
        self.route = route
        self.ordered = ordered
        self.state = state
        self.session_id = session_id
        self.prompt_tokens = prompt_tokens
        self.redis = redis
        self.policy = policy_for(route.cooldown_s)
        self.unavailable_keys: set[int] = set(state.key_cooldowns)  # cooling, or refused in this request
        self.excluded: set[int] = set()  # targets not worth another attempt in this request
        self.tried: set[int] = set()
        self.probes = {t.id for t in ordered if state.is_probe(t.id)}
        self.served: TargetEntry | None = None

    @property
    def bound_target(self) -> int | None:
        return self.state.affinity

    def first(self) -> Step:
        return self._next(None)

    def _next(self, previous: TargetEntry | None, rotate_on: TargetEntry | None = None) -> Step:
        if rotate_on is not None and rotate_on.id not in self.excluded:
            key = pick_key(rotate_on.provider, self.unavailable_keys)
            if key not in (None, False):
                return Step(rotate_on, key)
        fresh = [t for t in self.ordered if t.id not in self.excluded and t.id not in self.tried]
        again = [t for t in self.ordered if t.id not in self.excluded and t.id in self.tried and t is not previous]
        if previous is not None and previous.id not in self.excluded:
            again.append(previous)  # the one that just failed, only when nothing else is left
        for retry, candidates in ((False, fresh), (True, again)):
            for target in candidates:
                key = pick_key(target.provider, self.unavailable_keys)
                if key is False:
                    self.excluded.add(target.id)
                    continue
                return Step(target, key, retry=retry)
        return Step(stop=True)

    def unusable(self, target: TargetEntry) -> None:
        self.excluded.add(target.id)

    def tried_target(self, target: TargetEntry) -> None:
        self.tried.add(target.id)

    async def failed(self, target: TargetEntry, key: ProviderKeyEntry | None, failure: Failure, headers,
                     deadline: float) -> Step:
        """Learn from a failed attempt, report it (ONE Redis call) and say what comes next."""
        _quiet_states.pop(self.route.id, None)
        now = time.time()
        outcome = outcome_of(failure)
        retry_at = None
        if failure.kind == "auth":
            # A refused key will not heal by waiting a little: it sits out long, for everyone.
            retry_at = now + float(getattr(settings, "GATEWAY_KEY_REFUSED_COOLDOWN_S", 3600.0))
        elif headers is not None and (failure.status == 429 or failure.cool_until is not None):
            retry_at = resilience.parse_reset_headers(headers, now)
        if retry_at is None and failure.cool_until is not None:
            retry_at = failure.cool_until
        if retry_at is not None:
            retry_at = min(retry_at, now + MAX_RETRY_AFTER_S)
        rotate_on = None
        if key is not None and (failure.rotate_key or outcome == "rate_limited" or retry_at is not None):
            self.unavailable_keys.add(key.id)
            rotate_on = target
        elif retry_at is not None and retry_at - now > _retry_after_cap():
            self.excluded.add(target.id)  # no key to rotate, and it asks us to wait too long
        if failure.kind in ("timeout", "config") or (failure.kind == "auth" and key is None):
            # A timed-out generation is not started again there; a configuration problem and
            # a refusal without a key to rotate will be met again.
            self.excluded.add(target.id)
        if is_context_error(failure):
            self._exclude_smaller_windows(target)
            rotate_on = None
        elif not failure.retryable:
            rotate_on = None
        step = self._next(target, rotate_on)
        if not failure.retryable and not is_context_error(failure):
            step = Step(stop=True)
        if outcome is not None:
            result = await resilience.report_attempt(
                self.route.id, target.id, key.id if key is not None else None, outcome=outcome,
                probe=target.id in self.probes, retry_at=retry_at, want_retry=step.retry and not step.stop,
                policy=self.policy, redis=self.redis)
            self.probes.discard(target.id)
            if step.retry and not step.stop and not result.retry_allowed:
                log.warning("route %s: retry budget spent; not retrying %s", self.route.name, target.provider.name)
                return Step(stop=True)
        if step.retry and not step.stop and step.target is target and step.key is key:
            await _back_off(len(self.tried), failure, deadline)
        return step

    def _exclude_smaller_windows(self, target: TargetEntry) -> None:
        """After a context-length error: only targets with a larger known window are worth it."""
        window = target.context_window or (self.prompt_tokens or 0)
        for other in self.ordered:
            if other.context_window is None or other.context_window <= window:
                self.excluded.add(other.id)

    def succeeded(self, target: TargetEntry, key: ProviderKeyEntry | None, latency_ms: float,
                  session_id: str | None = None) -> ScriptCall:
        """The report of the success (latency, circuit, key streak, session binding): a Redis
        call the request record sends after the answer, with the key's settlement, in one
        round trip. The client never waits for it."""
        self.served = target
        session = session_id or self.session_id
        bind = (session, self.route.session_ttl_s) if session and self.route.session_ttl_s else None
        call = resilience.prepare_report(
            self.route.id, target.id, key.id if key is not None else None, outcome="ok",
            probe=target.id in self.probes, latency_ms=latency_ms, bind_session=bind, policy=self.policy)
        self.probes.discard(target.id)
        return call

    def session_moved(self) -> str:
        """A note for the request log when the session's bound target did not serve it."""
        bound = self.state.affinity
        if bound is None or self.served is None or self.served.id == bound:
            return ""
        return f"session moved from target {bound} to target {self.served.id}"

    def finish(self) -> None:
        """Hand back probes this request claimed but never tried, so the next request probes at once."""
        for target_id in self.probes:
            _background(resilience.release_probe(target_id, redis=self.redis))
        self.probes = set()


async def make_plan(route: RouteEntry, *, session_id: str | None, prompt_tokens: int | None,
                    wanted_output: int = 0, redis=None, rng=random) -> Plan:
    """Order the route's targets and read their shared state (ONE Redis call). Raises a 503
    (Retry-After, no upstream I/O) when every target cools, and a 400 when the request fits
    no target's context window. (The pipeline sends the read with the key's admission in one
    round trip: prepare_state, then plan_from_state.)"""
    call, target_ids, key_ids = prepare_state(route, session_id)
    try:
        replies = await run_scripts(redis or runtime.current().redis, [call])
        state = resilience.state_from_reply(replies[0], target_ids, key_ids)
    except RedisError as exc:
        state = resilience.unavailable_state(exc)
    return plan_from_state(route, state, session_id=session_id, prompt_tokens=prompt_tokens,
                           wanted_output=wanted_output, redis=redis, rng=rng)


# Per process, per route: the last state read, kept for GATEWAY_ROUTING_STATE_CACHE_S when
# it says nothing is wrong (Redis reachable, no open circuit or probe, no cooling key, no
# session; a health down flag may be in it). Requests of a key without limits then plan with
# no Redis round trip (it was a fifth of a request's CPU). Any failure this process sees drops the route's entry at once;
# another process's failures are seen within the cache time.
_quiet_states: dict[int, tuple[float, resilience.RoutingState]] = {}


def quiet_state(route: RouteEntry) -> resilience.RoutingState | None:
    hit = _quiet_states.get(route.id)
    if hit is not None and time.monotonic() - hit[0] < settings.GATEWAY_ROUTING_STATE_CACHE_S:
        return hit[1]
    return None


def remember_state(route: RouteEntry, state: resilience.RoutingState) -> None:
    # A health down flag claims nothing and changes slowly (probes come minutes apart): a
    # state carrying one is kept like a quiet one, and a flag is seen within the cache time.
    quiet = (state.available and not state.key_cooldowns and state.affinity is None
             and all(circuit == resilience.CLOSED for circuit in state.circuits.values()))
    if quiet and settings.GATEWAY_ROUTING_STATE_CACHE_S > 0:
        _quiet_states[route.id] = (time.monotonic(), state)
    else:
        _quiet_states.pop(route.id, None)


def prepare_state(route: RouteEntry, session_id: str | None):
    """(the Redis call reading the route's shared state, target ids, key ids) for state_from_reply."""
    return resilience.prepare_read_state(
        route.id, [t.id for t in route.targets], [k.id for t in route.targets for k in t.provider.keys],
        session_id=session_id if route.session_ttl_s else None, policy=policy_for(route.cooldown_s))


def plan_from_state(route: RouteEntry, state: resilience.RoutingState, *, session_id: str | None,
                    prompt_tokens: int | None, wanted_output: int = 0, redis=None, rng=random) -> Plan:
    """The plan, from the route and its shared state (no I/O)."""
    ordered = order_targets(route, rng, latency_ms=state.latency_ms)
    if prompt_tokens is not None:
        fits = [t for t in ordered if t.context_window is None or prompt_tokens + wanted_output <= t.context_window]
        if not fits:
            release_probes(state)
            largest = max(t.context_window for t in ordered)
            raise InvalidRequest(
                f"This model's maximum context length is {largest} tokens; the request needs about "
                f"{prompt_tokens + wanted_output}.", param="messages", code="context_length_exceeded")
        ordered = fits
    cooling_keys = set(state.key_cooldowns)
    usable = [t for t in ordered if state.target_usable(t.id)
              and not (t.provider.keys and all(k.id in cooling_keys for k in t.provider.keys))]
    if not usable and state.available:
        release_probes(state)
        raise _all_cooling(route, ordered, state)
    if state.health_down:
        # Health is advice, not proof: a flagged target goes last rather than away, so a route
        # whose every target probes down still serves (the probes may be what is wrong), and a
        # flagged target still takes the request when the others fail.
        usable = ([t for t in usable if t.id not in state.health_down]
                  + [t for t in usable if t.id in state.health_down])
    if state.affinity is not None and state.affinity not in state.health_down:
        bound = next((t for t in usable if t.id == state.affinity), None)
        if bound is not None:
            usable.remove(bound)
            usable.insert(0, bound)
    return Plan(route, usable or ordered, state, session_id, prompt_tokens, redis)


def release_probes(state: resilience.RoutingState, redis=None) -> None:
    """Hand back every probe the state claimed (the request goes no further)."""
    for target_id, circuit in state.circuits.items():
        if circuit == resilience.PROBE:
            _background(resilience.release_probe(target_id, redis=redis))


def _all_cooling(route: RouteEntry, targets: list[TargetEntry], state: resilience.RoutingState):
    """503 with the time until the first target can be tried again."""
    waits = []
    for t in targets:
        if not state.target_usable(t.id):
            until = state.open_until.get(t.id, 0.0)
            waits.append(until - state.now if until > state.now else policy_for(route.cooldown_s).probe_lease_s)
        elif t.provider.keys:
            waits.append(min(state.key_cooldowns.get(k.id, state.now) for k in t.provider.keys) - state.now)
    retry_after = max(int(min(waits) + 0.999), 1) if waits else 1
    return ServiceUnavailable(
        "Every upstream of this model is cooling down after failures or rate limits; try again later.",
        code="upstreams_cooling", headers={"Retry-After": str(retry_after)},
        log_message=f"route {route.name}: every target's circuit is open or its keys cool")


def _retry_after_cap() -> float:
    return float(getattr(settings, "GATEWAY_RETRY_AFTER_CAP_S", BACKOFF_CAP_S))


async def _back_off(attempt: int, failure: Failure, deadline: float) -> None:
    """Before trying the same target with the same key again: exponential backoff with jitter,
    or the upstream's Retry-After when it asks for longer (capped)."""
    delay = min(BACKOFF_BASE_S * (2 ** attempt), BACKOFF_CAP_S) * random.uniform(0.5, 1.0)
    if failure.cool_until is not None:
        delay = min(max(failure.cool_until - time.time(), delay), _retry_after_cap())
    await asyncio.sleep(max(min(delay, deadline - time.monotonic() - 0.05), 0))


_tasks: set[asyncio.Task] = set()


def _background(coro) -> None:
    """Run a Redis write after the answer, keeping a reference so it is not collected mid-way."""
    task = asyncio.get_running_loop().create_task(coro)
    _tasks.add(task)
    task.add_done_callback(_tasks.discard)
