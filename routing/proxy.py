"""The proxy pipeline: one client request, in one direction, from parsed body to relayed answer.

    body ─▶ route ─▶ ordered targets ─▶ prompt rules ─▶ adapter request ─▶ upstream
    failure before the client got a byte ─▶ next target; afterwards ─▶ error event.
"""
import asyncio
import itertools
import json
import os
import time
from dataclasses import dataclass

import httpx
from django.conf import settings
from django.http import HttpResponse, StreamingHttpResponse

from keys.auth import KeyEntry
from llmgateway.errors import (
    GatewayError, InvalidRequest, UnsupportedMediaType, UpstreamError, UpstreamStreamError,
    UpstreamTimeout, UpstreamUnavailable,
)
from providers.adapters import ADAPTERS
from providers.upstream import is_timeout, shared_client

from . import requestlog
from .requestlog import LogEntry
from .resolve import find_route, order_targets
from .rules import apply_rules
from .snapshot import ProviderEntry, RouteEntry, Snapshot, TargetEntry

# The field each endpoint cannot do without.
REQUIRED_FIELD = {"chat": "messages", "completions": "prompt", "embeddings": "input"}
STREAMING = frozenset({"chat", "completions"})
RETRY_STATUS = frozenset({408, 409, 429, 500, 502, 503, 504, 529})
ERROR_BODY_LIMIT = 64 * 1024
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}

_key_turns: dict[int, itertools.count] = {}  # provider id -> counter, for taking keys in turn


@dataclass(slots=True)
class Call:
    """One client request as it passes through the gateway; becomes its request-log row."""

    log: LogEntry
    started: float  # perf_counter
    key: KeyEntry | None = None
    upstream_s: float = 0.0  # time spent waiting on upstreams

    @classmethod
    def begin(cls, request, endpoint: str) -> "Call":
        meta = request.META
        entry = LogEntry(request_id=f"req_{os.urandom(16).hex()}", started_at=time.time(), endpoint=endpoint,
                         client_ip=meta.get("REMOTE_ADDR") or None)
        return cls(log=entry, started=time.perf_counter())

    @property
    def request_id(self) -> str:
        return self.log.request_id

    def elapsed_ms(self) -> float:
        return (time.perf_counter() - self.started) * 1000

    def overhead_ms(self) -> float:
        return max(self.elapsed_ms() - self.upstream_s * 1000, 0.0)

    def fail(self, err: GatewayError) -> None:
        """Record the request as failed with `err`."""
        self.log.status = err.status
        self.log.error_kind = err.kind
        self.log.error_message = err.message
        self.finish()

    def finish(self) -> None:
        self.log.latency_ms = self.elapsed_ms()
        if self.log.overhead_ms is None:
            self.log.overhead_ms = self.overhead_ms()
        self.log.log_bodies = self.key is not None and self.key.log_bodies
        requestlog.queue.record(self.log)


def parse_body(request, endpoint: str) -> dict:
    """The request's JSON object, checked for what the endpoint needs."""
    content_type = request.content_type
    if content_type and content_type != "application/json" and not content_type.endswith("+json"):
        raise UnsupportedMediaType(f"Content-Type must be application/json, not '{content_type}'.")
    try:
        body = json.loads(request.body)
    except (ValueError, UnicodeDecodeError):
        raise InvalidRequest("The request body is not valid JSON.") from None
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object.")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidRequest("You must provide a model parameter.", param="model", code="missing_model")
    field = REQUIRED_FIELD[endpoint]
    if body.get(field) is None:
        raise InvalidRequest(f"Missing required parameter: '{field}'.", param=field, code="missing_required_parameter")
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise InvalidRequest("'stream' must be a boolean.", param="stream")
    return body


async def handle(request, snapshot: Snapshot, call: Call, endpoint: str):
    """Serve one /v1 request that has already been authenticated."""
    body = parse_body(request, endpoint)
    call.log.body = body
    model = body["model"]
    call.log.model_requested = model
    route = find_route(snapshot, model, call.key)
    call.log.route = route.name
    body = call.log.body = apply_rules(body, route.rules)  # logged as it goes upstream
    stream = body.get("stream") is True and endpoint in STREAMING
    call.log.stream = stream
    targets = order_targets(route)
    if not targets:
        raise UpstreamUnavailable(f"The model '{model}' has no enabled upstream target.", code="no_targets")

    last_error: GatewayError | None = None
    for attempt in range(route.max_attempts):
        target = targets[attempt % len(targets)]
        call.log.attempts = attempt + 1
        call.log.provider = target.provider.name
        call.log.upstream_model = target.upstream_model
        call.log.price = target.price
        try:
            return await _attempt(call, endpoint, body, route, target, stream)
        except GatewayError as err:
            last_error = err
            if not _worth_retrying(err, route):
                raise
    raise last_error


def _worth_retrying(err: GatewayError, route: RouteEntry) -> bool:
    if isinstance(err, (UpstreamUnavailable, UpstreamTimeout)):
        return True
    if isinstance(err, UpstreamError):
        return err.status in (route.retry_on_status or RETRY_STATUS)
    return False


def _next_key(provider: ProviderEntry) -> str | None:
    if not provider.keys:
        return None
    turn = next(_key_turns.setdefault(provider.id, itertools.count()))
    return provider.keys[turn % len(provider.keys)].secret


def _scrub(text: str, secret: str | None) -> str:
    """Never let a provider key reach a client or a log, even if an upstream echoes it."""
    return text.replace(secret, "***") if secret and secret in text else text


async def _attempt(call: Call, endpoint: str, body: dict, route: RouteEntry, target: TargetEntry, stream: bool):
    provider = target.provider
    adapter = ADAPTERS.get(provider.type)
    if adapter is None:
        raise UpstreamUnavailable(f"Provider type '{provider.type}' is not supported yet.", code="unsupported_provider")
    api_key = _next_key(provider)
    upstream = adapter.build_request(endpoint, body, upstream_model=target.upstream_model,
                                     base_url=provider.base_url, api_key=api_key,
                                     extra_headers=provider.extra_headers)
    client = shared_client(settings.GATEWAY_UPSTREAM_TRANSPORT, settings.GATEWAY_CONNECT_TIMEOUT_S)
    read_timeout = settings.GATEWAY_STREAM_IDLE_TIMEOUT_S if stream else provider.timeout_s
    request = client.build_request(
        upstream.method, upstream.url, headers=upstream.headers, content=upstream.content,
        timeout=httpx.Timeout(settings.GATEWAY_CONNECT_TIMEOUT_S, read=read_timeout),
    )
    sent = time.perf_counter()
    response = None
    try:
        # The provider's timeout bounds the wait for the first byte: the whole answer
        # when not streaming, the first event when streaming.
        async with asyncio.timeout(provider.timeout_s):
            response = await client.send(request, stream=True)
            if response.status_code >= 400:
                content = await _read_limited(response)
                message = _scrub(adapter.error_message(content), api_key)
                raise UpstreamError(
                    f"Upstream provider '{provider.name}' answered {response.status_code}: {message}",
                    status=response.status_code, code=f"upstream_{response.status_code}",
                    headers=_retry_after(response),
                )
            if stream:
                chunks = response.aiter_raw()
                relay = adapter.stream_relay(_client_wants_usage(body))
                first = await _first_event(chunks, relay)
            else:
                content = await response.aread()
    except GatewayError:
        await _close(response)
        raise
    except (httpx.HTTPError, TimeoutError, OSError) as exc:
        await _close(response)
        raise _transport_error(exc, provider) from None
    finally:
        call.upstream_s += time.perf_counter() - sent

    # The log writer reads usage (or estimates it) from the answer, in its own process.
    call.log.adapter = provider.type
    if not stream:
        await response.aclose()
        call.log.status = response.status_code
        call.log.response = content
        call.log.ttfb_ms = call.elapsed_ms()
        call.log.overhead_ms = call.overhead_ms()
        out = HttpResponse(content, status=response.status_code, content_type="application/json")
        _set_headers(out, call, target)
        call.finish()
        return out

    call.log.status = response.status_code
    call.log.ttfb_ms = call.elapsed_ms()
    call.log.overhead_ms = call.overhead_ms()
    out = StreamingHttpResponse(_relay(call, response, chunks, relay, first, adapter, api_key),
                                content_type="text/event-stream", headers=SSE_HEADERS)
    _set_headers(out, call, target)
    return out


async def _first_event(chunks, relay) -> bytes:
    """Read up to the first event the client should see: until then a failure can still be retried."""
    async for chunk in chunks:
        relayed = relay.feed(chunk)
        if relayed:
            return relayed
    raise httpx.RemoteProtocolError("upstream closed the stream before sending an event")


async def _relay(call: Call, response, chunks, relay, first, adapter, api_key):
    """Pass upstream events to the client as they arrive; end with an error event on failure.

    Events that arrived together go out together: one write to the client per upstream
    read, rather than one per event, which is most of the cost of a relay.
    """
    deadline = time.monotonic() + settings.GATEWAY_TOTAL_TIMEOUT_S
    error: GatewayError | None = None
    try:
        yield first
        async for chunk in chunks:
            relayed = relay.feed(chunk)
            if relayed:
                yield relayed
            if time.monotonic() > deadline:
                raise TimeoutError("stream exceeded the total time limit")
        if not relay.finished:
            raise httpx.RemoteProtocolError("upstream ended the stream without finishing it")
        if relay.error:
            error = UpstreamStreamError(_scrub(relay.error, api_key), kind="upstream_stream_error")
    except (httpx.HTTPError, TimeoutError, OSError) as exc:
        error = UpstreamStreamError(_stream_failure(exc))
        yield adapter.error_event(error.message, error.type, error.code)
    except (asyncio.CancelledError, GeneratorExit):
        # The client left: closing the upstream response below cancels the upstream request.
        error = GatewayError("Client closed the connection before the stream ended.", status=499,
                             kind="client_disconnected")
        raise
    finally:
        await chunks.aclose()
        await _close(response)
        call.log.stream_events = relay.events_to_log(with_text=call.key.log_bodies)
        if error is not None:
            call.fail(error)
        else:
            call.finish()


def _stream_failure(exc: BaseException) -> str:
    if is_timeout(exc):
        return "The upstream stream stalled and timed out."
    return "The upstream connection was lost mid-stream."


def _client_wants_usage(body: dict) -> bool:
    options = body.get("stream_options")
    return isinstance(options, dict) and options.get("include_usage") is True


def _transport_error(exc: BaseException, provider: ProviderEntry) -> GatewayError:
    if is_timeout(exc):
        return UpstreamTimeout(f"Upstream provider '{provider.name}' did not answer in time.")
    return UpstreamUnavailable(f"Upstream provider '{provider.name}' could not be reached.")


async def _read_limited(response) -> bytes:
    content = b""
    async for chunk in response.aiter_raw():
        content += chunk
        if len(content) >= ERROR_BODY_LIMIT:
            break
    return content


async def _close(response) -> None:
    if response is not None:
        try:
            await response.aclose()
        except Exception:  # closing a broken connection may fail again; nothing to add
            pass


def _retry_after(response) -> dict:
    value = response.headers.get("retry-after")
    return {"Retry-After": value} if value else {}


def _set_headers(out, call: Call, target: TargetEntry) -> None:
    out["x-request-id"] = call.request_id
    if settings.GATEWAY_EXPOSE_ROUTING_HEADERS:
        out["x-gateway-provider"] = target.provider.name
        out["x-gateway-upstream-model"] = target.upstream_model
        out["x-gateway-attempts"] = str(call.log.attempts)
        out["x-gateway-overhead-ms"] = f"{call.log.overhead_ms:.2f}"
