"""Admission of one request against its key's limits: what the request may cost, then ONE
Redis call (keys.limits.admit), and afterwards the settlement of its real usage.

    demand = Demand.of(endpoint, body, model, route)                        # estimates, pure
    admission, plan = await admit_and_plan(key, route, demand, session, redis)   # ONE round trip
    ... serve; the record settles or releases the admission when it ends (record.end),
        with the attempt's success report, in ONE round trip ...

A request's largest cost is its estimated prompt (from its size: see Demand) plus its largest output (the
request's max_tokens, else the catalog's max output, else GATEWAY_DEFAULT_MAX_OUTPUT_TOKENS)
at the dearest price among the targets it may be served by. A budgeted key under the
"refuse" unpriced policy is served only by priced targets. The monitoring key is never
limited.
"""
import asyncio
import dataclasses
import logging

from django.conf import settings
from redis.exceptions import RedisError

from keys import limits
from keys.auth import KeyEntry
from llmgateway.redis import run_scripts
from providers import tokens
from providers.wire import CODECS

from . import attempts, resilience
from .snapshot import RouteEntry

log = logging.getLogger(__name__)

_OUTPUT_FIELDS = ("max_completion_tokens", "max_tokens", "max_output_tokens")


# Bytes of request JSON per token, for the cheap estimate: English text runs ~4 characters a
# token and JSON adds its syntax, so this overestimates most prompts (a safe reservation);
# CJK text and code come close to it. The real usage corrects it at settlement.
BYTES_PER_TOKEN = 3


class Demand:
    """What a request may take: its prompt tokens (estimated cheaply from its size) and output.

    The gateway process does not load tiktoken for this: its encodings cost ~75 MB of memory
    per process. tiktoken counts only a prompt that might not fit a target's catalog context
    window: one larger in bytes than the smallest window in tokens (a token is at least a
    byte), so ordinary prompts are never counted."""

    __slots__ = ("body", "model", "route", "requested_output", "no_output", "size", "_counted")

    def __init__(self, body: dict, model: str, route: RouteEntry, requested_output: int, no_output: bool,
                 size: int = 0):
        self.body = body
        self.model = model
        self.route = route
        self.requested_output = requested_output  # the request's max_tokens (0: not given)
        self.no_output = no_output  # embeddings: input only
        self.size = size  # bytes of the request as it goes upstream (an upper bound of its tokens)
        self._counted: int | None = None

    @classmethod
    def of(cls, endpoint, body: dict, model: str, route: RouteEntry, raw_size: int = 0) -> "Demand":
        requested = 0
        for name in _OUTPUT_FIELDS:
            value = body.get(name)
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                requested = value
                break
        # Prompt rules may add text: count theirs too, so the size stays an upper bound.
        size = raw_size + sum(len(rule.text.encode()) for rule in route.rules)
        return cls(body, model, route, requested, no_output=endpoint.name == "embeddings", size=size)

    @property
    def prompt_tokens(self) -> int:
        """The cheap estimate, for TPM and budget reservations."""
        return -(-self.size // BYTES_PER_TOKEN)

    def counted_prompt_tokens(self) -> int:
        """tiktoken's count (providers/tokens.py), once."""
        if self._counted is None:
            target = self.route.targets[0] if self.route.targets else None
            self._counted = tokens.count_prompt_tokens(self.body, target.upstream_model if target else self.model)
        return self._counted

    def prompt_tokens_if_windows(self) -> int | None:
        """The prompt's tokens when a target's known context window might not hold it; None
        when every known window surely does (or none is known): then nothing is counted."""
        windows = [t.context_window for t in self.route.targets if t.context_window]
        if not windows or self.size + self.requested_output <= min(windows):
            return None
        return self.counted_prompt_tokens()

    def output_tokens(self, target=None) -> int:
        if self.no_output:
            return 0
        if self.requested_output:
            return self.requested_output
        if target is not None and target.max_output_tokens:
            return target.max_output_tokens
        catalog = [t.max_output_tokens for t in self.route.targets if t.max_output_tokens]
        return max(catalog) if catalog else int(getattr(settings, "GATEWAY_DEFAULT_MAX_OUTPUT_TOKENS", 4096))

    def max_cost_usd(self, targets) -> float | None:
        """The dearest the request can be among `targets` (None: none has a price)."""
        costs = [t.price.cost(self.prompt_tokens, self.output_tokens(t)) for t in targets if t.price is not None]
        return max(costs) if costs else None


def has_limits(key: KeyEntry) -> bool:
    return not key.is_monitoring and (key.rpm is not None or key.tpm is not None or key.budget_usd is not None)


def prepare_admission(key: KeyEntry, route: RouteEntry, demand: Demand):
    """(admission or None when the key has no limits, its Redis call or None, the route to
    plan with). Raises the refusals that need no Redis: 403 for a model without a price."""
    if not has_limits(key):
        return None, None, route
    budgeted = key.budget_usd is not None
    if budgeted and key.unpriced_policy != "admit_and_flag":
        priced = tuple(t for t in route.targets if t.price is not None)
        if priced and len(priced) < len(route.targets):
            route = dataclasses.replace(route, targets=priced)
    estimated = 0
    if key.tpm is not None:
        estimated = demand.prompt_tokens + demand.output_tokens()
    max_cost = demand.max_cost_usd(route.targets) if budgeted else None
    admission, call = limits.prepare_admit(key, estimated_tokens=estimated, max_cost_usd=max_cost)
    admission.prompt_estimate = demand.prompt_tokens
    if call is None and not admission.allowed:
        raise admission.error()
    return admission, call, route


class ReadsInFlight:
    """The routing-state reads under way, one per (event loop, route id), for the requests that
    come meanwhile to wait for instead of sending their own: after the quiet-state cache
    expires, a busy process would otherwise send one read per request until the first answer
    is back. A read's result is the route's quiet state, or None (not quiet: each reads its own)."""

    __slots__ = ("_futures",)

    def __init__(self):
        self._futures: dict[tuple, asyncio.Future] = {}

    def running(self, in_flight: tuple) -> asyncio.Future | None:
        """The read of (loop, route id) under way, to wait for; None when there is none."""
        return self._futures.get(in_flight)

    def lead(self, in_flight: tuple) -> bool:
        """Make the calling request the one whose read the others wait for (False: one already is)."""
        if in_flight in self._futures:
            return False
        self._futures[in_flight] = in_flight[0].create_future()
        return True

    def end(self, in_flight: tuple, quiet_state) -> None:
        """Hand the waiting requests what the lead's read found."""
        self._futures.pop(in_flight).set_result(quiet_state)


_reads_in_flight = ReadsInFlight()


async def _read_state(route: RouteEntry, session_id: str | None, admission, admit_call, redis):
    """(the route's routing state, the key's admission) in ONE Redis round trip."""
    read_call, target_ids, key_ids = attempts.prepare_state(route, session_id)
    calls = [read_call] if admit_call is None else [read_call, admit_call]
    try:
        replies = await run_scripts(redis, calls)
    except RedisError as exc:
        if admit_call is not None:
            admission = limits.admission_unreachable(admission, exc)  # raises for a budget, by default
        return resilience.unavailable_state(exc), admission
    if admit_call is not None:
        admission = limits.admission_from_reply(admission, replies[1])
    return resilience.state_from_reply(replies[0], target_ids, key_ids), admission


async def admit_and_plan(key: KeyEntry, route: RouteEntry, demand: Demand, session_id: str | None, redis):
    """(admission or None, plan): the key's admission and the route's shared state in ONE
    Redis round trip. Raises the refusal (429, 403, or 503 when Redis is unreachable and the
    key's budget must not be skipped), the 503 of a route whose every target cools, the 400
    of a prompt no target's window fits. A refused request counts nothing and reaches no upstream."""
    admission, admit_call, route = prepare_admission(key, route, demand)
    sessionless = session_id is None or not route.session_ttl_s
    shared = admit_call is None and sessionless  # a read whose quiet result any request may use
    state = attempts.quiet_state(route) if shared else None
    leads = False
    if state is None and shared:
        in_flight = (asyncio.get_running_loop(), route.id)
        running = _reads_in_flight.running(in_flight)
        if running is not None:
            state = await asyncio.shield(running)  # None: that read found the route not quiet
        if state is None:
            leads = _reads_in_flight.lead(in_flight)
    if state is None:
        try:
            state, admission = await _read_state(route, session_id, admission, admit_call, redis)
            if sessionless:
                attempts.remember_state(route, state)
        finally:
            if leads:
                _reads_in_flight.end(in_flight, attempts.quiet_state(route))
    if admission is not None and not admission.allowed:
        attempts.release_probes(state, redis)
        raise admission.error()
    try:
        plan = attempts.plan_from_state(route, state, session_id=session_id,
                                        prompt_tokens=demand.prompt_tokens_if_windows(),
                                        wanted_output=demand.requested_output, redis=redis)
    except Exception:
        if admission is not None:
            await limits.release(admission, redis=redis)
        raise
    return admission, plan


# --- after the answer ---------------------------------------------------------------------------

def delivered_usage(entry, prompt_estimate: int = 0) -> tuple[int, float | None, bool]:
    """(tokens, cost in dollars or None when the model has no price, estimated?) of what the
    request delivered: the upstream's reported usage, else an estimate (a stream cut short):
    the prompt's admission estimate and the delivered text at BYTES_PER_TOKEN (no tiktoken
    in the gateway process; the request log's writer makes its own tiktoken estimate)."""
    codec = CODECS.get(entry.wire)
    usage = entry.usage
    if usage is None and codec is not None:
        if entry.response is not None:
            usage = codec.usage_from_answer(entry.response)
        elif entry.stream_events:
            usage = codec.usage_from_events(entry.stream_events)
    estimated = False
    if usage is None:
        estimated = True
        if codec is None:
            text = ""
        elif entry.response is not None:
            text = codec.text_from_answer(entry.response)
        else:
            text = codec.text_from_events(entry.stream_events or [])
        input_tokens, cached = prompt_estimate, 0
        output_tokens = -(-len(text.encode()) // BYTES_PER_TOKEN)
    else:
        input_tokens, output_tokens, cached = usage.input_tokens, usage.output_tokens, usage.cached_tokens
    cost = entry.price.cost(input_tokens, output_tokens, cached) if entry.price is not None else None
    return input_tokens + output_tokens, cost, estimated


# Reports and settlements of requests that end close together go to Redis in one round trip:
# they wait up to GATEWAY_REPORT_BATCH_S (the client never waits for them).
_batches: dict = {}  # redis client -> [(calls, future)]


async def _send_together(redis, calls: list) -> None:
    done = asyncio.get_running_loop().create_future()
    send_later(redis, calls, done)
    await done


def send_later(redis, calls: list, done=None) -> None:
    """Queue calls for the next shared round trip (`done`, if given, learns how it went)."""
    batch = _batches.get(redis)
    if batch is None:
        batch = _batches[redis] = []
        asyncio.get_running_loop().create_task(_flush(redis, batch))
    batch.append((calls, done))


async def _flush(redis, batch: list) -> None:
    await asyncio.sleep(settings.GATEWAY_REPORT_BATCH_S)
    _batches.pop(redis, None)
    try:
        await run_scripts(redis, resilience.fold_successes([call for calls, _ in batch for call in calls]))
    except Exception as exc:
        waiting = [done for _, done in batch if done is not None]
        for done in waiting:
            done.set_exception(exc)
        if len(waiting) < len(batch):  # reports nobody waits for: said once, here
            if isinstance(exc, RedisError):
                limits.outage_log.report("sending routing reports", exc)
            else:
                log.error("sending routing reports failed: %s", exc)
    else:
        for _, done in batch:
            if done is not None:
                done.set_result(None)


async def finish(admission, reports: list, entry, delivered: bool, redis) -> None:
    """After the request: settle the admission to what was delivered (with the success
    reports of the attempt, in ONE round trip), or release it when nothing was."""
    try:
        calls = list(reports)
        if admission is not None and not delivered:
            await limits.release(admission, redis=redis)
        elif admission is not None:
            used, cost, _ = delivered_usage(entry, admission.prompt_estimate)
            if cost is None and admission.track_budget:
                cost = 0.0  # served by an unpriced target (admit_and_flag): flagged in the log
            settle = limits.prepare_settle(admission, actual_tokens=used, actual_cost_usd=cost)
            if settle is not None:
                calls.append(settle)
        if calls:
            await _send_together(redis, calls)
    except RedisError as exc:  # the reservation expires by its TTL; the spend is rebuilt from the log
        limits.outage_log.report("settling usage", exc)
    except Exception:  # never let accounting break the request's end
        log.exception("settling request %s failed", entry.request_id)
