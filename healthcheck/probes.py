"""One probe of one health target: a tiny completion through the gateway's pipeline, or the
upstream's model list; the answer classified into an error kind, secrets redacted.

`probe` opens the pipeline's runtime for the task's own event loop, and `call_pipeline` is
the one place that calls `routing.proxy.serve`, as the monitoring key, exactly as the /v1
views do for clients.
"""
import asyncio
import dataclasses
import json
import re
import time
from dataclasses import dataclass
from types import MappingProxyType

import httpx

from keys.auth import KeyEntry
from keys.lookup import load_key
from llmgateway import runtime
from providers.upstream import is_dns_error, is_timeout
from routing.snapshot import MAX_AGE_S, RouteEntry, Snapshot, TargetEntry

# The error kinds a run can carry; the public API and the status page name only these.
ERROR_KINDS = ("timeout", "connection_refused", "dns_error", "not_found", "auth", "rate_limited",
               "upstream_5xx", "bad_response", "exception")
MESSAGE_MAX_CHARS = 500
# Anything that looks like a credential, whatever the upstream echoed.
_CREDENTIAL = re.compile(r"(sk-[A-Za-z0-9_\-]{6,}|Bearer\s+\S+|[A-Za-z0-9_\-]{32,})")


@dataclass(frozen=True)
class ProbeSpec:
    """What to probe, read from a HealthTarget."""

    target_id: int
    kind: str  # "completion" or "model_list"
    route_name: str
    route_target_id: int | None  # pin the probe to this upstream target
    prompt: str
    max_tokens: int
    timeout_s: float
    retries: int = 0


@dataclass
class ProbeResult:
    ok: bool
    status_code: int | None = None
    latency_ms: float | None = None
    ttfb_ms: float | None = None
    error_kind: str = ""
    error_message: str = ""
    request_id: str = ""
    attempts: int = 1
    cost_usd: float | None = None


async def run_probe(spec: ProbeSpec, snapshot: Snapshot, key: KeyEntry) -> ProbeResult:
    """Probe once, and again up to `spec.retries` times while it fails. Never raises.
    Runs inside `runtime.opened()` (see `probe`)."""
    result = ProbeResult(ok=False, error_kind="exception", error_message="not run")
    for attempt in range(1, spec.retries + 2):
        result = await _probe_once(spec, snapshot, key)
        result.attempts = attempt
        if result.ok:
            break
    result.error_message = redact(result.error_message, snapshot)
    return result


async def _probe_once(spec: ProbeSpec, snapshot: Snapshot, key: KeyEntry) -> ProbeResult:
    started = time.perf_counter()
    seen: dict = {}  # the request id, known even when the probe times out
    try:
        async with asyncio.timeout(spec.timeout_s):
            if spec.kind == "model_list":
                result = await _list_models(spec, snapshot)
            else:
                result = await _tiny_completion(spec, snapshot, key, seen)
    except TimeoutError:
        result = ProbeResult(ok=False, error_kind="timeout", error_message=f"No answer within {spec.timeout_s:g} s.",
                             request_id=seen.get("request_id", ""))
    except Exception as exc:  # a probe reports every failure as a run; it must never crash the worker
        result = ProbeResult(ok=False, error_kind=_transport_kind(exc), error_message=f"{type(exc).__name__}: {exc}")
    result.latency_ms = (time.perf_counter() - started) * 1000
    return result


async def _tiny_completion(spec: ProbeSpec, snapshot: Snapshot, key: KeyEntry, seen: dict) -> ProbeResult:
    body = {"model": spec.route_name, "messages": [{"role": "user", "content": spec.prompt}],
            "max_tokens": spec.max_tokens, "stream": False}
    route = snapshot.route(spec.route_name)
    if route is None:
        return ProbeResult(ok=False, error_kind="not_found", error_message=f"The model '{spec.route_name}' is not configured.")
    if spec.route_target_id is not None:
        target = _target(route, spec.route_target_id)
        if target is None:
            return ProbeResult(ok=False, error_kind="not_found", error_message="The upstream target is disabled or gone.")
        snapshot = _pinned(snapshot, route, target)
    status, content, log = await call_pipeline(body, snapshot, key, seen)
    result = ProbeResult(ok=False, status_code=status, request_id=log.request_id, ttfb_ms=log.ttfb_ms)
    if status >= 400:
        result.error_kind = pipeline_error_kind(status, log.error_kind, log.error_message)
        result.error_message = log.error_message or _error_text(content)
        return result
    try:
        answer = json.loads(content)
        choices = answer["choices"]
        if not isinstance(choices, list) or not choices:
            raise ValueError("no choices")
    except (ValueError, KeyError, TypeError):
        result.error_kind = "bad_response"
        result.error_message = "The answer is not a chat completion: " + content[:200].decode(errors="replace")
        return result
    result.ok = True
    result.cost_usd = _cost(answer.get("usage"), log.price)
    return result


async def call_pipeline(body: dict, snapshot: Snapshot, key: KeyEntry, seen: dict | None = None):
    """Serve `body` as a chat request of `key` through the gateway's pipeline, with `snapshot`
    as the configuration: (status, answer bytes, the request's log entry).

    The one seam between the monitor and routing. The snapshot goes in as this loop's
    runtime's current one: it is the process's snapshot, or a view of it pinned to one
    upstream. (Should the runtime's poller swap in a rebuilt snapshot meanwhile, only a later
    attempt could see it, and a pinned route makes one attempt.)
    """
    from routing.endpoints import ENDPOINTS
    from routing.proxy import Inbound, serve
    from routing.record import RequestRecord

    runtime.current().keeper.pin(snapshot)
    record = RequestRecord.begin("chat")
    record.key = key
    record.log.virtual_key_id = key.id
    if seen is not None:
        seen["request_id"] = record.request_id
    inbound = Inbound(endpoint=ENDPOINTS["chat"], body=body, raw=json.dumps(body).encode(), headers={}, key=key,
                      record=record)
    try:
        outcome = await serve(inbound)
        content = outcome.body
        if outcome.stream is not None:  # not asked for; read it whole all the same
            content = b"".join([chunk async for chunk in outcome.stream])
    finally:
        # As the API handler does when it is done: close what is open and end the record
        # (a probe cut off by its timeout is logged as a request the client left).
        await record.abandon()
    return outcome.status, content, record.log


async def _list_models(spec: ProbeSpec, snapshot: Snapshot) -> ProbeResult:
    """GET the upstream's model list with the provider key: costs nothing, proves the key and the host."""
    route = snapshot.route(spec.route_name)
    targets = route.targets if route else ()
    target = _target(route, spec.route_target_id) if spec.route_target_id else (targets[0] if len(targets) == 1 else None)
    if target is None:
        return ProbeResult(ok=False, error_kind="not_found", error_message="No single upstream target to ask for its models.")
    provider = target.provider
    headers = {"accept": "application/json"}
    headers.update(provider.extra_headers)
    if provider.keys:
        headers["authorization"] = f"Bearer {provider.keys[0].secret}"
    client = runtime.current().client
    started = time.perf_counter()
    response = await client.get(provider.base_url + "/models", headers=headers, timeout=spec.timeout_s)
    result = ProbeResult(ok=False, status_code=response.status_code, ttfb_ms=(time.perf_counter() - started) * 1000)
    if response.status_code >= 400:
        result.error_kind = _status_kind(response.status_code)
        result.error_message = _error_text(response.content)
        return result
    try:
        ids = {m.get("id") for m in response.json()["data"]}
    except (ValueError, KeyError, TypeError, AttributeError):
        result.error_kind, result.error_message = "bad_response", "The answer is not a model list."
        return result
    if target.upstream_model not in ids:
        result.error_kind = "not_found"
        result.error_message = f"The upstream does not list the model '{target.upstream_model}'."
        return result
    result.ok = True
    result.cost_usd = 0.0
    return result


def _target(route: RouteEntry | None, target_id: int) -> TargetEntry | None:
    return next((t for t in route.targets if t.id == target_id), None) if route else None


def _pinned(snapshot: Snapshot, route: RouteEntry, target: TargetEntry) -> Snapshot:
    """A view of the snapshot where the route has only `target`, tried once: a probe of one
    upstream must not fail over to another and call that healthy."""
    only = dataclasses.replace(route, targets=(target,), max_attempts=1)
    return dataclasses.replace(snapshot, routes_by_name=MappingProxyType({route.name: only}), routes=(only,))


# The pipeline's error kinds (GatewayError.kind, kept in the request log) as probe error kinds.
_PIPELINE_KINDS = {
    "upstream_auth": "auth",
    "upstream_timeout": "timeout",
    "upstream_bad_answer": "bad_response",
    "stream_cut": "bad_response",
    "model_not_found": "not_found",
    "not_allowed": "auth",
    "rate_limited": "rate_limited",
    "unavailable": "exception",  # no usable upstream: the gateway's configuration
}


def pipeline_error_kind(status: int, kind: str, detail: str) -> str:
    if kind == "upstream_connect":
        # The request log's detail tells a name that did not resolve from a refused connection.
        return "dns_error" if "not resolved" in detail else "connection_refused"
    return _PIPELINE_KINDS.get(kind) or _status_kind(status)


def _status_kind(status: int) -> str:
    if status in (401, 403):
        return "auth"
    if status == 404:
        return "not_found"
    if status == 429:
        return "rate_limited"
    if status in (408, 504):
        return "timeout"
    if status == 502:
        # The pipeline answers 502 when no upstream could be reached at all.
        return "connection_refused"
    if status >= 500:
        return "upstream_5xx"
    return "bad_response"


def _transport_kind(exc: BaseException) -> str:
    if is_timeout(exc):
        return "timeout"
    if is_dns_error(exc):
        return "dns_error"
    if isinstance(exc, (httpx.ConnectError, ConnectionRefusedError)) or isinstance(exc.__cause__, ConnectionRefusedError):
        return "connection_refused"
    return "exception"


def _error_text(content: bytes) -> str:
    try:
        error = json.loads(content)["error"]
        return str(error.get("message") if isinstance(error, dict) else error)[:MESSAGE_MAX_CHARS]
    except (ValueError, KeyError, TypeError):
        return content[:MESSAGE_MAX_CHARS].decode(errors="replace")


def _cost(usage, price) -> float | None:
    if not isinstance(usage, dict) or price is None:
        return None
    try:
        return price.cost(int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0))
    except (TypeError, ValueError):
        return None


def redact(message: str, snapshot: Snapshot | None = None) -> str:
    """The message without provider keys, base URLs or anything shaped like a key."""
    if snapshot is not None:
        for route in snapshot.routes:
            for target in route.targets:
                for key in target.provider.keys:
                    message = message.replace(key.secret, "***")
                message = message.replace(target.provider.base_url, "<upstream>")
    message = _CREDENTIAL.sub("***", message)
    return message[:MESSAGE_MAX_CHARS]


# ---------------------------------------------------------------- the pipeline's context

_snapshot_cache: dict = {}  # this process's last snapshot, by the config version it was built at


async def probe(spec: ProbeSpec, key_id: int) -> ProbeResult:
    """Probe `spec` as the monitoring key (by id), in the pipeline's runtime for this loop.
    For a task's own loop (asyncio.run): everything opened here is closed on the way out."""
    from asgiref.sync import sync_to_async

    async with runtime.opened():
        snapshot = await sync_to_async(_current_snapshot, thread_sensitive=False)()
        key = await sync_to_async(load_key, thread_sensitive=False)(key_id=key_id)  # keys are not in snapshots
        if key is None:
            return ProbeResult(ok=False, error_kind="exception", error_message="The monitoring key is not configured.")
        result = await run_probe(spec, snapshot, key)
        await _let_reports_go()
        return result


async def _let_reports_go(timeout_s: float = 2.0) -> None:
    """The pipeline sends a request's routing report (a good answer closing an open circuit,
    latency averages) from a background task after the answer. A task's own loop ends when
    the probe returns: let those tasks finish first, or the report is cancelled with the loop."""
    others = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
    if others:
        await asyncio.wait(others, timeout=timeout_s)


def _current_snapshot() -> Snapshot:
    """The configuration snapshot, kept per worker process and rebuilt when the config version
    in Redis moves (or after MAX_AGE_S, as the gateway's keeper does): each task has a loop,
    and so a runtime, of its own, which would otherwise build the whole snapshot per probe."""
    import time

    from django.db import close_old_connections

    from llmgateway.redis import sync_client
    from routing.snapshot import VERSION_KEY, build_snapshot

    try:
        version = (sync_client().get(VERSION_KEY) or b"0").decode()
    except Exception:
        version = None  # no Redis: rebuild every time rather than trust an old snapshot
    cached = _snapshot_cache.get("snapshot")
    if (cached is not None and version is not None and cached.version == version
            and time.monotonic() - cached.built_at < MAX_AGE_S):
        return cached
    close_old_connections()
    try:
        snapshot = build_snapshot(version or "")
    finally:
        close_old_connections()
    _snapshot_cache["snapshot"] = snapshot
    return snapshot
