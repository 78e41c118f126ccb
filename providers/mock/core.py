"""What every wire format of the mock shares: state, recording, auth, fault options, answering and streaming."""

from __future__ import annotations

import asyncio
import base64
import binascii
import collections
import hashlib
import hmac
import itertools
import json
import re
import time

from aiohttp import web

DEFAULT_MODELS = (
    "gpt-4o-mini",
    "gpt-4o",
    "gpt-3.5-turbo-instruct",
    "text-embedding-3-small",
    "mock-model",
    "claude-sonnet-4-6",
    "claude-haiku-4-5",
    "gemini-2.5-flash",
    "gemini-2.5-pro",
)
REPLY_PREFIX = "Hello from mock: "
MAX_ECHO_CHARS = 200
STALL_SECONDS = 300.0
MODELS_CREATED = 1700000000
# Oldest half of .events/.requests is dropped past this size so long benchmarks don't grow memory.
MAX_RECORDS = 20000
CLIENT_MAX_SIZE = 32 * 1024 * 1024
DEFAULT_KEEPALIVE_COMMENT = "OPENROUTER PROCESSING"
SSE_HEADERS = {"Content-Type": "text/event-stream; charset=utf-8", "Cache-Control": "no-cache"}
# Headers whose values are credentials: recorded as "[redacted]" (the credential itself is in "api_key").
SECRET_HEADERS = frozenset({"authorization", "x-api-key", "x-goog-api-key", "api-key", "proxy-authorization"})
# Signatures of thinking blocks are HMACs under this key, so the mock can tell its own from forged ones.
SIGNING_KEY = b"llm-gateway-mock-upstream"
# Options may also ride inside the prompt text, so they survive a gateway translating between formats.
_TEXT_OPTIONS = re.compile(r"<mock>(.*?)</mock>", re.S)

_BAD_JSON = object()


class BadRequest(Exception):
    """Raised inside handlers to answer 400 in the endpoint's own error shape."""

    def __init__(self, message, param=None):
        super().__init__(message)
        self.param = param


class State:
    """Per-app mutable state shared with the test harness."""

    def __init__(self, keys=None, models=None):
        self.events = []
        self.requests = []
        self.keys = frozenset(keys) if keys else None
        self.ids = itertools.count(1)
        self.generations = collections.Counter()
        self.model_ids = tuple(models or DEFAULT_MODELS)
        self.responses = {}  # stored Responses API objects by id, for GET /v1/responses/{id}

    def event(self, event):
        append_bounded(self.events, event)

    def next_id(self):
        return f"{next(self.ids):012d}"


STATE = web.AppKey("mock_upstream_state", State)
# (path prefix, dialect) pairs, most specific first: which error shape a path's failures take.
DIALECTS = web.AppKey("mock_upstream_dialects", list)
STREAM_STARTED = web.RequestKey("mock_upstream_stream_started", bool)


def append_bounded(records, item):
    records.append(item)
    if len(records) > MAX_RECORDS:
        del records[: MAX_RECORDS // 2]


def dumps(obj):
    text = json.dumps(obj, separators=(",", ":"), ensure_ascii=False)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate echoed from a request: escape, as real servers do
        return json.dumps(obj, separators=(",", ":"))
    return text


def json_response(obj, status=200, headers=None):
    return web.Response(body=dumps(obj).encode(), status=status, content_type="application/json", headers=headers)


def int_option(fault, name, default=None):
    value = fault.get(name, default)
    if value is None:
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        raise BadRequest(f"mock.{name} must be an integer", param=f"mock.{name}") from None


def masked(token):
    """A key as OpenAI echoes it in errors: a few leading and the last four characters."""
    token = token or ""
    return token[:3] + "*" * max(len(token) - 7, 4) + token[-4:] if len(token) > 8 else "****"


def sign(text):
    """The signature the mock gives a thinking text (checked when the text comes back)."""
    return base64.b64encode(hmac.new(SIGNING_KEY, text.encode(), hashlib.sha256).digest()).decode()


def signature_is_valid(text, signature):
    return isinstance(text, str) and isinstance(signature, str) and hmac.compare_digest(sign(text), signature)


def seal(text):
    """Opaque encrypted_content the mock can verify later: the text and its signature, base64."""
    return base64.b64encode(dumps({"text": text, "signature": sign(text)}).encode()).decode()


def decode_sealed(content):
    try:
        sealed = json.loads(base64.b64decode(content, validate=True))
    except (ValueError, TypeError, binascii.Error):
        return None
    if not isinstance(sealed, dict) or not signature_is_valid(sealed.get("text"), sealed.get("signature")):
        return None
    return sealed["text"]


# ---------------------------------------------------------------- dialects


class Dialect:
    """How one wire format reads credentials and reports errors. This base speaks OpenAI."""

    name = "openai"
    no_auth_message = (
        "You didn't provide an API key. You need to provide your API key in an Authorization header "
        "using Bearer auth (i.e. Authorization: Bearer YOUR_KEY)."
    )
    bad_json_message = (
        "We could not parse the JSON body of your request. (HINT: This likely means you aren't using "
        "your HTTP library correctly. The OpenAI API expects a JSON payload.)"
    )
    malformed_event = 'data: {"broken": \n\n'

    def credential(self, request):
        """(credential, scheme) the request authenticates with, or (None, None)."""
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        token = token.strip()
        return (token, "bearer") if scheme.lower() == "bearer" and token else (None, None)

    def auth_error(self, token, state):
        if token is None:
            return self.error(401, self.no_auth_message, code="invalid_api_key")
        if state.keys is not None and token not in state.keys:
            return self.error(401, f"Incorrect API key provided: {masked(token)}. You can find your API key at "
                                   "https://platform.openai.com/account/api-keys.", code="invalid_api_key")
        return None

    def error_kind(self, status, token=None):
        """Default (type, code, message) for an error status, as OpenAI reports them."""
        if status == 429:
            return "requests", "rate_limit_exceeded", "Rate limit reached for requests (mock)."
        if status >= 500:
            return "server_error", None, "The server had an error while processing your request. (mock)"
        if status == 401:
            return ("invalid_request_error", "invalid_api_key",
                    f"Incorrect API key provided: {masked(token)}. You can find your API key at "
                    "https://platform.openai.com/account/api-keys.")
        if status == 403:
            return ("request_forbidden", "unsupported_country_region_territory",
                    "Country, region, or territory not supported")
        if status == 404:
            return "invalid_request_error", "not_found", "Not found (mock)."
        return "invalid_request_error", None, f"Mock error {status}."

    def error_body(self, status, message, err_type=None, code=None, param=None):
        return {"error": {"message": message, "type": err_type or self.error_kind(status)[0],
                          "param": param, "code": code}}

    def error(self, status, message, err_type=None, code=None, param=None, headers=None):
        return json_response(self.error_body(status, message, err_type, code, param), status=status, headers=headers)

    def fault_error(self, status, fault, token, headers):
        err_type, code, message = self.error_kind(status, token)
        return self.error(status, fault.get("message") or message, fault.get("error_type") or err_type,
                          fault.get("code", code), headers=headers)

    def stream_error_event(self, status, message, sent=()):
        """The event a stream ends with when it fails after it started (`sent`: the events before it)."""
        err_type, code, _ = self.error_kind(status)
        return "data: " + dumps(self.error_body(status, message, err_type, code)) + "\n\n"


OPENAI = Dialect()


# ---------------------------------------------------------------- request plumbing


@web.middleware
async def guard(request, handler):
    """Turn routing errors and unexpected exceptions into error JSON of the path's dialect."""
    dialect = next((d for prefix, d in request.app.get(DIALECTS, ()) if request.path.startswith(prefix)), OPENAI)
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        message = f"Invalid URL ({request.method} {request.path})" if exc.status in (404, 405) else exc.reason
        return dialect.error(exc.status, message)
    except BadRequest as exc:
        return dialect.error(400, str(exc), param=exc.param)
    except (asyncio.CancelledError, ConnectionError):
        raise
    except Exception as exc:  # noqa: BLE001 - the mock must always answer in its protocol's shape
        if request.get(STREAM_STARTED):
            raise
        return dialect.error(500, f"Mock upstream internal error: {exc!r}")


def endpoint(impl, dialect=OPENAI, has_body=True):
    """Wrap an endpoint with recording, auth, JSON parsing and the generic fault modes."""

    async def handler(request):
        state = request.app[STATE]
        state.event({"type": "request", "path": request.path, "t": time.monotonic()})
        raw = await request.read() if has_body else b""
        body = parse_json(raw) if has_body else None
        token, scheme = dialect.credential(request)
        record_request(state, request, None if body is _BAD_JSON else body, token, scheme)
        denied = dialect.auth_error(token, state)
        if denied is not None:
            return denied
        if body is _BAD_JSON or (has_body and not isinstance(body, dict)):
            return dialect.error(400, dialect.bad_json_message)
        try:
            fault = fault_options(request, body, raw)
            return await answer_faults(request, dialect, fault, token) or await impl(request, body, fault)
        except BadRequest as exc:
            return dialect.error(400, str(exc), param=exc.param)

    return handler


def parse_json(raw):
    try:
        return json.loads(raw)
    except ValueError:
        return _BAD_JSON


def record_request(state, request, body, token, scheme, **extra):
    headers = {k.lower(): v for k, v in request.headers.items()}
    for name in SECRET_HEADERS & headers.keys():
        headers[name] = "[redacted]"
    query = {k: ("[redacted]" if k == "key" else v) for k, v in request.query.items()}
    append_bounded(state.requests, {
        "method": request.method,
        "path": request.path,
        "query": query,
        "headers": headers,
        "json": body,
        "api_key": token,
        "auth_scheme": scheme,
        **extra,
    })


def fault_options(request, body, raw=b""):
    """Merge fault options: <mock>{...}</mock> in the prompt text, then the body's "mock" object,
    then the x-mock-fault header (later sources win)."""
    options = {}
    if raw and b"<mock>" in raw:
        for found in _TEXT_OPTIONS.finditer(raw.decode("utf-8", "replace")):
            options.update(_text_options(found.group(1)))
    from_body = body.get("mock") if isinstance(body, dict) else None
    if from_body is not None:
        if not isinstance(from_body, dict):
            raise BadRequest("'mock' must be an object", param="mock")
        options.update(from_body)
    header = request.headers.get("x-mock-fault")
    if header:
        try:
            from_header = json.loads(header)
        except ValueError:
            from_header = None
        if not isinstance(from_header, dict):
            raise BadRequest("x-mock-fault header must be a JSON object")
        options.update(from_header)
    return options


def _text_options(found):
    # The options sit inside a JSON string in the raw body, so their quotes arrive escaped.
    for candidate in (found, _unescape(found)):
        try:
            parsed = json.loads(candidate)
        except ValueError:
            continue
        if isinstance(parsed, dict):
            return parsed
    raise BadRequest("<mock>...</mock> in the prompt must hold a JSON object")


def _unescape(text):
    try:
        return json.loads(f'"{text}"')
    except ValueError:
        return text


async def answer_faults(request, dialect, fault, token):
    """Apply the generation counter, first-byte delay and injected statuses; a response or None."""
    state = request.app[STATE]
    generation = count_generation(request, state, fault)
    try:
        delay = fault.get("first_byte_delay", fault.get("delay"))
        if delay:
            await asyncio.sleep(float(delay))
    except asyncio.CancelledError:
        state.event({"type": "request_cancelled", "path": request.path, "t": time.monotonic()})
        raise
    if fault.get("redirect") is not None:
        fault = {**fault, "status": fault.get("status") or 302, "location": fault["redirect"]}
    fail_times = int_option(fault, "fail_times")
    if fault.get("status") is not None and (fail_times is None or generation <= fail_times):
        return fault_response(request, dialect, fault, token)
    return None


def count_generation(request, state, fault):
    """Count this request under its request_id (option or x-mock-request-id); 0 without one."""
    request_id = fault.get("request_id") or request.headers.get("x-mock-request-id")
    if request_id is None:
        return 0
    state.generations[str(request_id)] += 1
    return state.generations[str(request_id)]


def retry_headers(fault):
    headers = {}
    if fault.get("retry_after") is not None:
        retry = fault["retry_after"]
        if isinstance(retry, (int, float)):
            retry = str(int(retry)) if float(retry).is_integer() else str(retry)
        headers["Retry-After"] = str(retry)
    if fault.get("retry_after_ms") is not None:
        headers["retry-after-ms"] = str(fault["retry_after_ms"])
    return headers


def fault_response(request, dialect, fault, token=None):
    status = int_option(fault, "status")
    headers = retry_headers(fault)
    if 300 <= status < 400:
        headers["Location"] = str(fault.get("location") or request.path)
        return web.Response(status=status, headers=headers)
    if fault.get("body") is not None:
        return web.Response(status=status, text=str(fault["body"]), headers=headers,
                            content_type=fault.get("content_type", "text/html"))
    return dialect.fault_error(status, fault, token, headers)


def require_model(body):
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise BadRequest("you must provide a model parameter", param="model")
    return model


# ---------------------------------------------------------------- answering


async def answer(request, fault, reply, status=200, headers=None):
    """Send a JSON answer, applying the non-stream fault modes (malformed, first_event_delay)."""
    body = dumps(reply).encode()
    malformed = fault.get("malformed")
    if malformed:
        # A 200 that is not the JSON it claims to be: cut in half, or an HTML page.
        body = b"<html><body>upstream exploded</body></html>" if malformed == "not_json" else body[: len(body) // 2]
    first_event_delay = float(fault.get("first_event_delay") or 0)
    if not first_event_delay:
        return web.Response(body=body, status=status, content_type="application/json", headers=headers)
    resp = web.StreamResponse(status=status, headers={"Content-Type": "application/json", **(headers or {})})
    resp.content_length = len(body)
    await resp.prepare(request)  # StreamResponse sends the headers now; the body follows later.
    await asyncio.sleep(first_event_delay)
    await resp.write(body)
    await resp.write_eof()
    return resp


# ---------------------------------------------------------------- streaming


async def stream(request, fault, head, content, tail, dialect=OPENAI, headers=None):
    """Send SSE events, applying the stream fault modes, and record a stream_end event.

    `content` items are event strings or (prefix, event) pairs: the prefix (say, a block start)
    goes out with its event, but only the event counts for chunks_then_drop / malformed_at.
    """
    content = [item if isinstance(item, tuple) else ("", item) for item in content]
    malformed_at = int_option(fault, "malformed_at")
    if malformed_at is not None and 1 <= malformed_at <= len(content):
        content[malformed_at - 1] = (content[malformed_at - 1][0], dialect.malformed_event)
    content = [prefix + event for prefix, event in content]
    drop_after = int_option(fault, "chunks_then_drop")
    stall_after = int_option(fault, "stall_after")
    error_after = int_option(fault, "error_after")
    cut = next((n for n in (drop_after, stall_after, error_after) if n is not None), None)
    events = head + (content[:max(cut, 0)] if cut is not None else content + tail)
    if error_after is not None and drop_after is None and stall_after is None:
        status = int_option(fault, "error_status", 500)
        events.append(dialect.stream_error_event(status, fault.get("message") or dialect.error_kind(status)[2], events))
    if drop_after is not None and fault.get("drop_mid_event"):
        following = (content + tail)[max(drop_after, 0):]
        if following:
            events.append(following[0][: len(following[0]) // 2])
    chunk_delay = float(fault.get("chunk_delay") or 0)

    state = request.app[STATE]
    outcome = {"type": "stream_end", "path": request.path, "completed": False}
    resp = web.StreamResponse(headers={**SSE_HEADERS, **(headers or {})})
    request[STREAM_STARTED] = True
    try:
        await resp.prepare(request)
        await before_first_event(resp, fault)
        await write_events(resp, events, chunk_delay, one_write=fault.get("event_bytes") is None)
        if drop_after is not None:
            # close() flushes what was written, then FINs without the terminating chunk.
            request.transport.close()
            outcome["dropped"] = True
        elif stall_after is not None:
            await asyncio.sleep(STALL_SECONDS)
            outcome["stall_timeout"] = True
        elif error_after is not None:
            outcome["errored"] = True
        else:
            outcome["completed"] = True
    except asyncio.CancelledError:
        record_disconnect(state, outcome)
        raise
    except ConnectionError:
        # Returning (not raising) lets aiohttp treat it as a quiet premature disconnect.
        record_disconnect(state, outcome)
        return resp
    outcome["t"] = time.monotonic()
    state.event(outcome)
    return resp


async def before_first_event(resp, fault):
    """Headers are out; send keep-alive comments for a while, then wait first_event_delay."""
    every = float(fault.get("keepalive_every") or 0)
    if every > 0:
        comment = f": {fault.get('keepalive_comment') or DEFAULT_KEEPALIVE_COMMENT}\n\n".encode()
        until = time.monotonic() + float(fault.get("keepalive_for") or 0)
        while True:
            await resp.write(comment)
            if time.monotonic() + every > until:
                break
            await asyncio.sleep(every)
        await asyncio.sleep(max(until - time.monotonic(), 0))
    if fault.get("first_event_delay"):
        await asyncio.sleep(float(fault["first_event_delay"]))


def record_disconnect(state, outcome):
    outcome["client_disconnected"] = True
    outcome["t"] = time.monotonic()
    state.event(outcome)


async def write_events(resp, events, chunk_delay, one_write=True):
    if not chunk_delay and one_write:
        # One write for the whole stream: fewest syscalls, which is what benchmarks want.
        await resp.write("".join(events).encode())
        return
    for i, event in enumerate(events):
        if i and chunk_delay:
            await asyncio.sleep(chunk_delay)
        # Each write waits for the socket to drain, so a slow reader holds the stream back.
        await resp.write(event.encode())


def split_events(flat):
    """(head, content, tail) for `stream` from [(event, counts_as_content)]: each content event
    carries the structural events before it (block starts and stops) as its prefix."""
    positions = [i for i, (_, is_content) in enumerate(flat) if is_content]
    if not positions:
        return [e for e, _ in flat], [], []
    head = [e for e, _ in flat[: positions[0]]]
    content, previous = [], positions[0]
    for position in positions:
        content.append(("".join(e for e, _ in flat[previous + 1 if content else previous: position]), flat[position][0]))
        previous = position
    tail = [e for e, _ in flat[positions[-1] + 1:]]
    return head, content, tail


def sse(event_type, payload):
    """One named SSE event (Anthropic, Responses)."""
    return f"event: {event_type}\ndata: {dumps(payload)}\n\n"
