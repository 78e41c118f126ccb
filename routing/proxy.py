"""The proxy pipeline: one client request, in one direction, from parsed body to relayed answer.

    inbound ─▶ validate ─▶ route ─▶ ordered targets ─▶ prompt rules ─▶ adapter request ─▶ upstream
    failure before the client got a byte ─▶ classified ─▶ next attempt; afterwards ─▶ error event.

`serve(inbound) -> Outcome` knows nothing of Django requests or responses: a view adapts an
HTTP request to it, a Celery task can call it directly (inside `runtime.opened()`).
"""
import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import httpx
from django.conf import settings

from keys.auth import KeyEntry
from llmgateway import runtime
from llmgateway.apihandler import stopping
from llmgateway.errors import (
    GatewayError, InvalidRequest, ServiceUnavailable, UpstreamCredentialsRejected, UpstreamError,
    UpstreamStreamError, UpstreamTimeout, UpstreamUnavailable,
)
from providers import hub
from providers.adapters import ADAPTERS
from providers.adapters.base import Usage
from providers.upstream import Failure, classify_exception, classify_status
from providers.wire import CODECS, InvalidField, require_bool, require_positive_int
from providers.wire.relays import ObservingRelay, TranslatingRelay
from providers.wire.seals import SEALED_FIELDS, same_format_plan, seal_native, unseal_native
from providers.wire.translate import custom_tool_names, translate_answer, translate_request

from . import admission as admission_
from .attempts import Plan, response_session, session_of
from .endpoints import Endpoint
from .record import RequestRecord, close_quietly
from .resolve import find_route
from .rules import apply_rules
from .snapshot import ProviderKeyEntry, TargetEntry

log = logging.getLogger(__name__)

ERROR_BODY_LIMIT = 64 * 1024
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
# Operations whose answers are messages (read for usage, translated); others pass as they are.
# (The log writer reads OpenAI chat answers itself.)
ANSWERED_AS_MESSAGES = frozenset({"chat", "responses"})


@dataclass(slots=True)
class Inbound:
    """A client request, as the pipeline needs it."""

    endpoint: Endpoint
    body: dict
    raw: bytes
    headers: dict[str, str]  # lower-case names: only those the pipeline reads
    key: KeyEntry
    record: RequestRecord


@dataclass(slots=True)
class Outcome:
    """What the client gets: a complete JSON answer, or a stream of SSE bytes."""

    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    stream: AsyncIterator[bytes] | None = None


class AttemptFailed(Exception):
    def __init__(self, failure: Failure, headers=None):
        self.failure = failure
        self.headers = headers  # the upstream's answer headers (rate-limit resets), when it answered


async def serve(inbound: Inbound) -> Outcome:
    """Serve one authenticated request. Never raises for the client's or an upstream's
    faults: those become an Outcome in the client's protocol, and end the record."""
    codec = CODECS[inbound.endpoint.wire]
    try:
        return await _serve(inbound, codec)
    except GatewayError as err:
        return error_outcome(inbound.record, codec, err)
    except Exception:
        log.exception("unexpected error serving %s", inbound.record.request_id)
        return error_outcome(inbound.record, codec,
                             GatewayError("The gateway hit an internal error.", code="internal_error"))


def error_outcome(record: RequestRecord, codec, err: GatewayError) -> Outcome:
    """The error in the client's protocol; the record ends with it."""
    record.fail(err)
    return Outcome(err.status, {"x-request-id": record.request_id, **err.headers}, error_json(codec, err))


def error_json(codec, err: GatewayError) -> bytes:
    """An error body in the codec's format."""
    return json.dumps(codec.error_body(err.status, err.type, err.message, err.code, err.param)).encode()



async def _serve(inbound: Inbound, codec) -> Outcome:
    endpoint, record = inbound.endpoint, inbound.record
    body = inbound.body
    record.log.body = body
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidRequest("You must provide a model parameter.", param="model", code="missing_model")
    record.log.model_requested = model
    if endpoint.required and body.get(endpoint.required) is None:
        raise InvalidRequest(f"Missing required parameter: '{endpoint.required}'.", param=endpoint.required,
                             code="missing_required_parameter")
    try:
        _validate(codec, endpoint, body)
    except InvalidField as exc:
        raise InvalidRequest(exc.message, param=exc.param) from None

    snapshot = await runtime.current().snapshot()
    route = find_route(snapshot, model, inbound.key)
    record.log.route = route.name
    # In the client's format, before any translation (bodies without a prompt pass unchanged);
    # logged as it goes upstream.
    body = record.log.body = apply_rules(body, route.rules, endpoint.wire)
    stream = endpoint.streams and body.get("stream") is True
    record.log.stream = stream
    if not route.targets:
        raise ServiceUnavailable(f"The model '{model}' has no upstream available right now; try again later.",
                                 code="no_targets", headers={"Retry-After": "30"},
                                 log_message=f"route {route.name}: every target is disabled")
    demand = admission_.Demand.of(endpoint, body, model, route, len(inbound.raw))
    admission, plan = await admission_.admit_and_plan(inbound.key, route, demand, session_of(inbound.headers, body),
                                                      runtime.current().redis)
    record.admission = admission
    if admission is not None and admission.unpriced:
        record.log.note = "unpriced model: its cost counts against no budget"
    try:
        outcome = await _attempts(inbound, codec, body, plan, stream)
    finally:
        plan.finish()
        note = plan.session_moved()
        if note:
            record.log.note = f"{record.log.note}; {note}" if record.log.note else note
    if admission is not None:
        outcome.headers.update(admission.headers())
    return outcome


def _validate(codec, endpoint: Endpoint, body: dict) -> None:
    """The client's codec checks what the gateway reads; OpenAI's completions and
    embeddings share chat's format but not its messages."""
    if endpoint.required == "messages" or endpoint.wire != "openai_chat":
        codec.validate_request(body)
    else:
        for name in ("max_tokens", "max_completion_tokens"):
            require_positive_int(body, name)
        require_bool(body, "stream")


async def _attempts(inbound: Inbound, codec, body: dict, plan: Plan, stream: bool) -> Outcome:
    """Try the planned targets, within the request's one deadline, until one answers."""
    record = inbound.record
    route = plan.route
    deadline = time.monotonic() + settings.GATEWAY_TOTAL_TIMEOUT_S - (record.elapsed_ms() / 1000)
    failures: list[tuple[TargetEntry, Failure]] = []
    attempts = 0
    step = plan.first()
    while attempts < route.max_attempts and not step.stop:
        target, key = step.target, step.key
        provider = target.provider
        if provider.unusable:  # e.g. its keys cannot be decrypted: never call it without them
            failures.append((target, Failure("config", retryable=True, detail=provider.unusable)))
            plan.unusable(target)
            step = plan.first()
            continue
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        attempts += 1
        plan.tried_target(target)
        record.log.attempts = attempts
        record.log.provider = provider.name
        record.log.upstream_model = target.upstream_model
        record.log.price = target.price
        started = time.perf_counter()
        try:
            outcome = await _attempt(inbound, body, target, key, stream, min(provider.timeout_s, remaining),
                                     deadline, route.retry_on_status)
        except AttemptFailed as exc:
            failure = exc.failure
            failures.append((target, failure))
            step = await plan.failed(target, key, failure, exc.headers, deadline)
            if not failure.retryable and step.stop:
                raise _client_error(failures) from None
            continue
        # Latency to the first token of a stream, to the whole answer otherwise. Reported
        # when the record ends (record.py), with the key's settlement.
        record.add_report(plan.succeeded(
            target, key, (time.perf_counter() - started) * 1000,
            session_id=response_session(outcome.body) if outcome.body and not stream else None))
        return outcome
    if not failures:
        raise ServiceUnavailable("The request's time limit ran out before an upstream could be tried.",
                                 code="deadline_exceeded")
    raise _client_error(failures)


def _client_error(failures: list[tuple[TargetEntry, Failure]]) -> GatewayError:
    """What the client hears after the last failure: nothing that names a provider, a base
    URL or a key; the request log keeps the details (found by the request id)."""
    log_message = "; ".join(f"{t.provider.name}/{t.upstream_model}: {f.detail}" for t, f in failures)[:2000]
    last = failures[-1][1]
    if all(f.kind == "auth" for _, f in failures):
        return UpstreamCredentialsRejected(
            "The upstream provider rejected the gateway's credentials. This is not a problem with your API key; "
            "the gateway's operator must fix the provider key.", log_message=log_message)
    if all(f.kind == "config" for _, f in failures):
        return ServiceUnavailable("No upstream of this model is usable right now (a configuration problem "
                                  "the gateway's operator must fix).", code="no_usable_upstream",
                                  log_message=log_message)
    if last.kind == "unsupported":
        return InvalidRequest(last.upstream_message, param=last.param, log_message=log_message)
    if last.kind == "status":
        headers = {}
        if last.cool_until is not None:
            headers["Retry-After"] = str(max(int(last.cool_until - time.time() + 0.999), 0))
        return UpstreamError(last.upstream_message or f"The upstream answered with status {last.status}.",
                             status=last.status, code=f"upstream_{last.status}", headers=headers,
                             log_message=log_message)
    if last.kind == "timeout":
        return UpstreamTimeout("The upstream did not answer in time.", log_message=log_message)
    if last.kind in ("connect", "dns"):
        return UpstreamUnavailable("The upstream could not be reached.", log_message=log_message)
    if last.kind in ("auth", "config"):
        return UpstreamUnavailable("No upstream could serve the request.", code="upstream_failed",
                                   log_message=log_message)
    return UpstreamUnavailable("The upstream's answer was not valid.", code="upstream_bad_answer",
                               kind="upstream_bad_answer", log_message=log_message)


def _scrub(text: str, secret: str | None) -> str:
    """Never let a provider key reach a client or a log, even if an upstream echoes it."""
    return text.replace(secret, "***") if secret and secret in text else text


async def _attempt(inbound: Inbound, body: dict, target: TargetEntry, key: ProviderKeyEntry | None,
                   stream: bool, first_byte_timeout: float, deadline: float, retry_on: frozenset[int]) -> Outcome:
    record = inbound.record
    provider = target.provider
    adapter = ADAPTERS.get(provider.type)
    if adapter is None:
        raise AttemptFailed(Failure("config", retryable=True, detail=f"provider type {provider.type} not supported"))
    client_wire = inbound.endpoint.wire
    operation = inbound.endpoint.upstream_operation
    # Same format on both sides: the request goes out as sent (but the model), the answer
    # comes back as received. Otherwise through the hub, both ways.
    native = client_wire == adapter.wire
    if client_wire == "openai_responses" and provider.native_responses:
        native = True
        if operation == "chat":
            operation = "responses"
    upstream_wire = client_wire if native else adapter.wire
    # Through the hub across formats, and in the same format when the request carries
    # reasoning another provider or model sealed (the upstream would reject it: the hub
    # drops it); this model's own sealed reasoning goes back bare.
    seals = same_format_plan(inbound.raw, upstream_wire, target.upstream_model) if native else "hub"
    if seals == "unseal":
        body = unseal_native(body, upstream_wire)
    elif seals == "hub":
        try:
            body, diagnostics = translate_request(body, client_wire, upstream_wire, target.upstream_model)
        except InvalidField as exc:  # dropping it would change the meaning: the client must know
            raise AttemptFailed(Failure("unsupported", retryable=False, status=400, detail=exc.message,
                                        upstream_message=exc.message, param=exc.param)) from None
        record.log.diagnostics = [f"{field}: {reason}" for field, reason in diagnostics]
    secret = key.secret if key is not None else None
    upstream = adapter.build_request(operation, body, upstream_model=target.upstream_model,
                                     base_url=provider.base_url, api_key=secret,
                                     extra_headers=provider.extra_headers, client_headers=inbound.headers,
                                     stream=stream)
    client = runtime.current().client
    # No read timeout of the transport's own: the first byte has its timeout, the gaps
    # between stream events theirs (see _relay), each enforced here.
    request = client.build_request(
        upstream.method, upstream.url, headers=upstream.headers, content=upstream.content,
        timeout=httpx.Timeout(settings.GATEWAY_CONNECT_TIMEOUT_S, read=None),
    )
    sent = time.perf_counter()
    response = relay = chunks = first = None
    try:
        try:
            async with asyncio.timeout(first_byte_timeout):
                response = record.upstream = await client.send(request, stream=True)
                if not 200 <= response.status_code < 300:
                    content = await _read_limited(response)
                    message = _scrub(CODECS[upstream_wire].read_error(content), secret)
                    raise AttemptFailed(classify_status(response.status_code, response.headers, message,
                                                        retry_on=retry_on), response.headers)
                if stream:
                    relay = _stream_relay(client_wire, upstream_wire, inbound.body, secret, target.upstream_model)
                    chunks = response.aiter_raw()
                    first = await _first_event(chunks, relay)
            if not stream:
                async with asyncio.timeout(max(deadline - time.monotonic(), 0.001)):
                    content = await response.aread()
                if not _looks_whole(content):
                    raise AttemptFailed(Failure("bad_answer", retryable=True,
                                                detail="malformed answer (not a whole JSON object)"))
                if operation in ANSWERED_AS_MESSAGES and not client_wire == upstream_wire == "openai_chat":
                    content = _answer_for_client(record, content, upstream_wire, client_wire, inbound.body,
                                                 target.upstream_model)
        except AttemptFailed:
            raise
        except Exception as exc:
            raise AttemptFailed(classify_exception(exc)) from None
    except AttemptFailed:
        record.upstream = None
        await _close(response)
        raise
    finally:
        record.upstream_s += time.perf_counter() - sent

    log = record.log
    if upstream_wire == client_wire == "openai_chat":
        log.wire = client_wire  # the log writer reads usage (or estimates it) from the answer, in its own process
    log.status = response.status_code
    log.ttfb_ms = record.elapsed_ms()
    log.overhead_ms = record.overhead_ms()
    headers = _headers(record, target)
    if not stream:
        record.upstream = None
        await _close(response)
        log.response = content
        record.end()
        return Outcome(response.status_code, headers, content)
    headers.update(SSE_HEADERS)
    headers["Content-Type"] = "text/event-stream"
    return Outcome(response.status_code, headers,
                   stream=_relay(record, response, chunks, relay, first, deadline))


async def _first_event(chunks, relay) -> bytes:
    """Read up to the first event the client should see: until then a failure can still be retried."""
    async for chunk in chunks:
        relayed = relay.feed(chunk)
        if relayed:
            return relayed
    raise httpx.RemoteProtocolError("upstream closed the stream before sending an event")


async def _relay(record: RequestRecord, response, chunks, relay, first: bytes, deadline: float):
    """Pass upstream events to the client as they arrive; end with an error event on failure.

    Events that arrived together go out together: one write to the client per upstream
    read, rather than one per event, which is most of the cost of a relay. Each read must
    come within the idle timeout, and the whole stream within the request's deadline.
    """
    idle = settings.GATEWAY_STREAM_IDLE_TIMEOUT_S
    error: GatewayError | None = None
    read = chunks.__anext__
    try:
        yield first
        while True:
            async with asyncio.timeout(min(idle, max(deadline - time.monotonic(), 0.001))):
                try:
                    chunk = await read()
                except StopAsyncIteration:
                    break
            relayed = relay.feed(chunk)
            if relayed:
                yield relayed
        tail = relay.close()  # a translating relay owes the client its closing events
        if tail:
            yield tail
        if relay.error:
            error = UpstreamStreamError(relay.error, kind="upstream_stream_error")
        elif not relay.finished:
            raise httpx.RemoteProtocolError("upstream ended the stream without finishing it")
    except asyncio.CancelledError:
        if not stopping.is_set():
            # A client that leaves once the stream's last event is out (an SDK closes right
            # after [DONE]) got everything: the request succeeded.
            error = None if relay.finished else _client_left()
            raise
        # The server is stopping and the grace period is over: end the stream properly.
        error = GatewayError("The gateway is shutting down; the stream was cut short.", status=503,
                             code="server_shutting_down", kind="shutdown")
        yield relay.fail(error)
    except GeneratorExit:
        # The client left: closing the upstream response below cancels the upstream request.
        error = None if relay.finished else _client_left()
        raise
    except Exception as exc:
        failure = classify_exception(exc)
        message = ("The upstream stream stalled and timed out." if failure.kind == "timeout"
                   else "The upstream connection was lost mid-stream.")
        error = UpstreamStreamError(message, log_message=failure.detail)
        yield relay.fail(error)
    finally:
        record.upstream = None
        await chunks.aclose()
        await _close(response)
        record.log.stream_events = relay.events_to_log(with_text=record.key is not None and record.key.log_bodies)
        if relay.usage is not None:
            record.log.usage = log_usage(relay.usage)
        if error is not None:
            record.fail(error)
        else:
            record.end()


def _client_left() -> GatewayError:
    return GatewayError("Client closed the connection before the stream ended.", status=499,
                        kind="client_disconnected")


def _stream_relay(client_wire: str, upstream_wire: str, client_body: dict, secret: str | None, upstream_model: str):
    if client_wire == upstream_wire == "openai_chat":  # the fast path: bytes through, barely read
        return CODECS["openai_chat"].StreamRelay(_client_wants_usage(client_body), secret)
    if client_wire == upstream_wire:
        return ObservingRelay(client_wire, secret, sealed_by=upstream_model)
    return TranslatingRelay(upstream_wire, client_wire, client_body.get("model", ""), secret,
                            custom_tools=custom_tool_names(client_body, client_wire), sealed_by=upstream_model)


def _answer_for_client(record: RequestRecord, content: bytes, upstream_wire: str, client_wire: str,
                       client_body: dict, upstream_model: str) -> bytes:
    """A whole answer in the client's format (as received when the formats match, but its
    opaque reasoning sealed with the upstream model), its usage decoded here for the log."""
    try:
        payload = json.loads(content)  # once: read here, and sealed below when it goes out as received
        answer = CODECS[upstream_wire].read_answer(payload)
        if client_wire != upstream_wire:
            translated = translate_answer(answer, upstream_wire, client_wire, client_body.get("model", ""),
                                          custom_tool_names(client_body, client_wire), sealed_by=upstream_model)
            content = json.dumps(translated, ensure_ascii=False).encode()
        elif (client_wire in SEALED_FIELDS and any(isinstance(p, hub.Thinking) for p in answer.parts)
              and seal_native(payload, client_wire, upstream_model)):
            content = json.dumps(payload, ensure_ascii=False).encode()
    except (InvalidField, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise AttemptFailed(Failure("bad_answer", retryable=True, detail=f"answer not readable ({exc})"[:300]))
    record.log.usage = log_usage(answer.usage)
    return content


def log_usage(usage: hub.Usage | None) -> Usage | None:
    """Hub usage as the request log counts it (OpenAI's convention: prompt tokens include
    cached ones)."""
    if usage is None:
        return None
    return Usage(input_tokens=usage.prompt_tokens, output_tokens=usage.output_tokens, cached_tokens=usage.cached_read)


def _looks_whole(content: bytes) -> bool:
    """Whether an answer looks like one whole JSON object. A cheap check of both ends (a full
    parse would cost the hot path in proportion to the answer's size) that catches the
    usual breakage: a cut answer, an HTML page with a 200."""
    stripped = content.strip()
    return stripped[:1] == b"{" and stripped[-1:] == b"}"


def _client_wants_usage(body: dict) -> bool:
    options = body.get("stream_options")
    return isinstance(options, dict) and options.get("include_usage") is True


async def _read_limited(response) -> bytes:
    content = b""
    async for chunk in response.aiter_raw():
        content += chunk
        if len(content) >= ERROR_BODY_LIMIT:
            break
    return content


async def _close(response) -> None:
    if response is not None:
        await close_quietly(response)


def _headers(record: RequestRecord, target: TargetEntry) -> dict[str, str]:
    headers = {"x-request-id": record.request_id}
    if settings.GATEWAY_EXPOSE_ROUTING_HEADERS:
        headers["x-gateway-provider"] = target.provider.name
        headers["x-gateway-upstream-model"] = target.upstream_model
        headers["x-gateway-attempts"] = str(record.log.attempts)
        headers["x-gateway-overhead-ms"] = f"{record.log.overhead_ms:.2f}"
    return headers
