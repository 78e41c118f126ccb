"""Mock OpenAI-compatible upstream HTTP server with per-request fault injection, for tests and benchmarks.

Fault options come from a ``"mock"`` object in the JSON body and/or the ``x-mock-fault`` header
(a JSON object; header keys win). Durations are in seconds (floats allowed).

Answer faults (no generation is produced):
  status: int            answer this status. 4xx/5xx get OpenAI's error body for that status
                         (401 invalid_api_key and 403 unsupported_country_region_territory are
                         OpenAI's real bodies; 429 rate_limit_exceeded; 5xx/529 server_error).
                         3xx answers a redirect with a Location header (see location).
  message, error_type, code   override the error body's fields.
  body, content_type     send this raw body instead (e.g. an HTML 502 page).
  retry_after: number|str     Retry-After header (seconds, or any string such as an HTTP date).
  retry_after_ms: number      retry-after-ms header (what the OpenAI SDKs read first).
  location: str          Location of a 3xx answer (default: the same path on this server).
  redirect: str          shorthand for {"status": 302, "location": <redirect>}.
  fail_times: int        apply status/redirect only to the first N generations of request_id
                         (e.g. {"status": 529, "fail_times": 2, "request_id": "r1"}: fail twice, then answer).

Timing:
  delay / first_byte_delay: seconds before anything, headers included, is sent.
  first_event_delay:     headers at once, then wait before the first event (stream) or the body.
  chunk_delay:           seconds between stream events.
  keepalive_every, keepalive_for: before the first event, send an SSE comment line every
                         keepalive_every seconds for keepalive_for seconds ("thinking" keep-alives).
  keepalive_comment:     its text (default "OPENROUTER PROCESSING", sent as ": OPENROUTER PROCESSING").

Answer shape:
  chunks: int            exactly this many content words / stream content events.
  event_bytes: int       pad every stream content event to this many bytes on the wire (with
                         chunks: a stream of N events of a given size, e.g. 1024 x 4096 = 4 MB).
  no_usage: bool         leave usage out.
  usage_every_chunk: bool  every stream chunk carries a (cumulative) usage object.
  error_null: bool       every stream chunk carries "error": null (OpenRouter does this).
  malformed: true|"truncated"|"not_json"   a 200 non-stream answer whose body is cut JSON
                         (default) or not JSON at all.
  malformed_at: int      the n-th stream content event is not valid JSON.

Stream cuts:
  chunks_then_drop: int  after N content events the connection is closed (no [DONE]).
  drop_mid_event: bool   with chunks_then_drop, first send half of the next event.
  stall_after: int       after N content events the stream goes silent (until the client leaves).

Counting:
  request_id: str        (or the x-mock-request-id header) counts generations per id (every
                         authenticated request with that id, failed ones included):
                         MockUpstream.generations(id), or GET /mock/generations/{id} (no auth).
"""

from __future__ import annotations

import asyncio
import base64
import collections
import hashlib
import itertools
import json
import math
import struct
import threading
import time

from aiohttp import web

DEFAULT_MODELS = (
    "gpt-4o-mini",
    "gpt-4o",
    "gpt-3.5-turbo-instruct",
    "text-embedding-3-small",
    "mock-model",
)
REPLY_PREFIX = "Hello from mock: "
MAX_ECHO_CHARS = 200
EMBED_DIMS = 8
MAX_EMBED_DIMS = 4096
STALL_SECONDS = 300.0
SYSTEM_FINGERPRINT = "fp_mock"
MODELS_CREATED = 1700000000
# Oldest half of .events/.requests is dropped past this size so long benchmarks don't grow memory.
MAX_RECORDS = 20000
CLIENT_MAX_SIZE = 32 * 1024 * 1024

_DONE = "data: [DONE]\n\n"
_MALFORMED = 'data: {"broken": \n\n'
DEFAULT_KEEPALIVE_COMMENT = "OPENROUTER PROCESSING"
_SSE_HEADERS = {"Content-Type": "text/event-stream; charset=utf-8", "Cache-Control": "no-cache"}
_NO_AUTH_MESSAGE = (
    "You didn't provide an API key. You need to provide your API key in an Authorization header "
    "using Bearer auth (i.e. Authorization: Bearer YOUR_KEY)."
)
_BAD_JSON_MESSAGE = (
    "We could not parse the JSON body of your request. (HINT: This likely means you aren't using "
    "your HTTP library correctly. The OpenAI API expects a JSON payload.)"
)
_BAD_JSON = object()


class _BadRequest(Exception):
    """Raised inside handlers to answer 400 with an OpenAI error body."""

    def __init__(self, message, param=None):
        super().__init__(message)
        self.param = param


class _State:
    """Per-app mutable state shared with the test harness."""

    def __init__(self, keys=None, models=None):
        self.events = []
        self.requests = []
        self.keys = frozenset(keys) if keys else None
        self.ids = itertools.count(1)
        self.generations = collections.Counter()
        self.models = {m: {"id": m, "object": "model", "created": MODELS_CREATED, "owned_by": "mock"}
                       for m in (models or DEFAULT_MODELS)}
        self.models_body = _dumps({"object": "list", "data": list(self.models.values())}).encode()

    def event(self, event):
        _append(self.events, event)


STATE = web.AppKey("mock_upstream_state", _State)
_STREAM_STARTED = web.RequestKey("mock_upstream_stream_started", bool)


def _append(records, item):
    records.append(item)
    if len(records) > MAX_RECORDS:
        del records[: MAX_RECORDS // 2]


def _dumps(obj):
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


def _json_response(obj, status=200, headers=None):
    return web.Response(body=_dumps(obj).encode(), status=status,
                        content_type="application/json", headers=headers)


def error_response(status, message, err_type="invalid_request_error", code=None, param=None, headers=None):
    """Build an OpenAI-shaped error response."""
    body = {"error": {"message": message, "type": err_type, "param": param, "code": code}}
    return _json_response(body, status=status, headers=headers)


# ---------------------------------------------------------------- request plumbing


@web.middleware
async def _guard(request, handler):
    """Turn routing errors and unexpected exceptions into OpenAI error JSON."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        message = f"Invalid URL ({request.method} {request.path})" if exc.status in (404, 405) else exc.reason
        return error_response(exc.status, message)
    except _BadRequest as exc:
        return error_response(400, str(exc), param=exc.param)
    except (asyncio.CancelledError, ConnectionError):
        raise
    except Exception as exc:  # noqa: BLE001 - the mock must always answer in OpenAI shape
        if request.get(_STREAM_STARTED):
            raise
        return error_response(500, f"Mock upstream internal error: {exc!r}", "server_error")


def _endpoint(impl, has_body=True):
    """Wrap an endpoint with recording, auth, JSON parsing and the generic fault modes."""

    async def handler(request):
        state = request.app[STATE]
        state.event({"type": "request", "path": request.path, "t": time.monotonic()})
        body = await _read_json(request) if has_body else None
        token = _bearer(request)
        _append(state.requests, {
            "method": request.method,
            "path": request.path,
            "headers": {k.lower(): v for k, v in request.headers.items()},
            "json": None if body is _BAD_JSON else body,
            "api_key": token,
        })
        denied = _check_auth(token, state)
        if denied is not None:
            return denied
        if body is _BAD_JSON or (has_body and not isinstance(body, dict)):
            return error_response(400, _BAD_JSON_MESSAGE)
        fault = _fault_options(request, body)
        generation = _count_generation(request, state, fault)
        try:
            delay = fault.get("first_byte_delay", fault.get("delay"))
            if delay:
                await asyncio.sleep(float(delay))
        except asyncio.CancelledError:
            state.event({"type": "request_cancelled", "path": request.path, "t": time.monotonic()})
            raise
        if fault.get("redirect") is not None:
            fault = {**fault, "status": fault.get("status") or 302, "location": fault["redirect"]}
        fail_times = _int_option(fault, "fail_times")
        if fault.get("status") is not None and (fail_times is None or generation <= fail_times):
            return _fault_response(request, fault, token)
        return await impl(request, body, fault)

    return handler


async def _read_json(request):
    raw = await request.read()
    try:
        return json.loads(raw)
    except ValueError:
        return _BAD_JSON


def _bearer(request):
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


def _check_auth(token, state):
    if token is None:
        return error_response(401, _NO_AUTH_MESSAGE, code="invalid_api_key")
    if state.keys is not None and token not in state.keys:
        return error_response(401, f"Incorrect API key provided: {token[:8]}****.", code="invalid_api_key")
    return None


def _fault_options(request, body):
    """Merge fault options from the body's "mock" object and the x-mock-fault header (header wins)."""
    options = {}
    from_body = body.get("mock") if body else None
    if from_body is not None:
        if not isinstance(from_body, dict):
            raise _BadRequest("'mock' must be an object", param="mock")
        options.update(from_body)
    header = request.headers.get("x-mock-fault")
    if header:
        try:
            from_header = json.loads(header)
        except ValueError:
            from_header = None
        if not isinstance(from_header, dict):
            raise _BadRequest("x-mock-fault header must be a JSON object")
        options.update(from_header)
    return options


def _count_generation(request, state, fault):
    """Count this request under its request_id (body option or x-mock-request-id); 0 without one."""
    request_id = fault.get("request_id") or request.headers.get("x-mock-request-id")
    if request_id is None:
        return 0
    state.generations[str(request_id)] += 1
    return state.generations[str(request_id)]


def _masked(token):
    """A key as OpenAI echoes it in errors: a few leading and the last four characters."""
    token = token or ""
    return token[:3] + "*" * max(len(token) - 7, 4) + token[-4:] if len(token) > 8 else "****"


def _error_kind(status, token=None):
    """Default (type, code, message) for an injected error status, as OpenAI reports them."""
    if status == 429:
        return "requests", "rate_limit_exceeded", "Rate limit reached for requests (mock)."
    if status >= 500:
        return "server_error", None, "The server had an error while processing your request. (mock)"
    if status == 401:
        return ("invalid_request_error", "invalid_api_key",
                f"Incorrect API key provided: {_masked(token)}. You can find your API key at "
                "https://platform.openai.com/account/api-keys.")
    if status == 403:
        return "request_forbidden", "unsupported_country_region_territory", "Country, region, or territory not supported"
    return "invalid_request_error", None, f"Mock error {status}."


def _retry_headers(fault):
    headers = {}
    if fault.get("retry_after") is not None:
        retry = fault["retry_after"]
        if isinstance(retry, (int, float)):
            retry = str(int(retry)) if float(retry).is_integer() else str(retry)
        headers["Retry-After"] = str(retry)
    if fault.get("retry_after_ms") is not None:
        headers["retry-after-ms"] = str(fault["retry_after_ms"])
    return headers


def _fault_response(request, fault, token=None):
    status = _int_option(fault, "status")
    headers = _retry_headers(fault)
    if 300 <= status < 400:
        headers["Location"] = str(fault.get("location") or request.path)
        return web.Response(status=status, headers=headers)
    if fault.get("body") is not None:
        return web.Response(status=status, text=str(fault["body"]), headers=headers,
                            content_type=fault.get("content_type", "text/html"))
    err_type, code, message = _error_kind(status, token)
    return error_response(status, fault.get("message") or message, fault.get("error_type") or err_type,
                          fault.get("code", code), headers=headers)


def _int_option(fault, name, default=None):
    value = fault.get(name, default)
    if value is None:
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        raise _BadRequest(f"mock.{name} must be an integer", param=f"mock.{name}") from None


# ---------------------------------------------------------------- text helpers


def _text_of(content):
    """Plain text of a message content (string or list of content parts)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(p.get("text", "") for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    return ""


def _reply_words(prompt_text, chunks):
    """Reply words; with `chunks` set, the reply is cycled/truncated to exactly that many words."""
    words = (REPLY_PREFIX + prompt_text[:MAX_ECHO_CHARS]).split()
    if chunks is None:
        return words
    if chunks < 0:
        raise _BadRequest("mock.chunks must be >= 0", param="mock.chunks")
    return [words[i % len(words)] for i in range(chunks)]


def _pieces(words):
    """Stream deltas whose concatenation equals " ".join(words)."""
    last = len(words) - 1
    return [w if i == last else w + " " for i, w in enumerate(words)]


def _chat_usage(prompt_tokens, completion_tokens):
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0,
                                      "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0},
    }


def _wants_usage(body, fault):
    options = body.get("stream_options")
    return isinstance(options, dict) and bool(options.get("include_usage")) and not fault.get("no_usage")


def _require_model(body):
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise _BadRequest("you must provide a model parameter", param="model")
    return model


# ---------------------------------------------------------------- endpoints


async def _chat_completions(request, body, fault):
    model = _require_model(body)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _BadRequest("'messages' must be a non-empty array", param="messages")
    messages = [m for m in messages if isinstance(m, dict)]
    last_user = next((_text_of(m.get("content")) for m in reversed(messages) if m.get("role") == "user"), "")
    words = _reply_words(last_user, _int_option(fault, "chunks"))
    prompt_tokens = sum(len(_text_of(m.get("content")).split()) for m in messages) + 3
    usage = _chat_usage(prompt_tokens, len(words))
    rid = f"chatcmpl-mock{next(request.app[STATE].ids):012d}"
    created = int(time.time())
    if body.get("stream"):
        include = _wants_usage(body, fault)
        head, content, tail = _chat_events(rid, created, model, words, usage, include, fault)
        return await _stream(request, fault, head, content, tail)
    reply = {
        "id": rid, "object": "chat.completion", "created": created, "model": model,
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": " ".join(words), "refusal": None, "annotations": []},
            "logprobs": None, "finish_reason": "stop",
        }],
        "usage": usage, "service_tier": "default", "system_fingerprint": SYSTEM_FINGERPRINT,
    }
    if fault.get("no_usage"):
        del reply["usage"]
    return await _answer(request, fault, reply)


def _chat_events(rid, created, model, words, usage, include_usage, fault):
    """SSE events (head, content, tail) for a chat stream, built by string templating for speed."""
    pre = ('data: {"id":"%s","object":"chat.completion.chunk","created":%d,"model":%s,'
           '"system_fingerprint":"%s","choices":' % (rid, created, _dumps(model), SYSTEM_FINGERPRINT))
    end = _chunk_end(usage, include_usage, fault)

    def choice(delta, finish="null", done=0):
        return pre + '[{"index":0,"delta":%s,"logprobs":null,"finish_reason":%s}]' % (delta, finish) + end(done)

    def content_event(piece, done):
        return choice('{"content":%s}' % _dumps(piece), done=done)

    head = [choice('{"role":"assistant","content":"","refusal":null}')]
    content = _content_events(content_event, _pieces(words), fault)
    tail = [choice("{}", '"stop"', len(words))]
    if include_usage and usage is not None:
        tail.append(pre + '[],"usage":' + _dumps(usage) + _chunk_extra(fault) + "}\n\n")
    tail.append(_DONE)
    return head, content, tail


def _chunk_extra(fault):
    # OpenRouter sends "error": null on healthy chunks; a relay must not read it as an error.
    return ',"error":null' if fault.get("error_null") else ""


def _chunk_end(usage, include_usage, fault):
    """The end of a chunk after its choices, given how many completion tokens are done so far."""
    extra = _chunk_extra(fault)
    if fault.get("usage_every_chunk") and usage is not None and not fault.get("no_usage"):
        def end(done):
            running = dict(usage, completion_tokens=done, total_tokens=usage["prompt_tokens"] + done)
            return ',"usage":' + _dumps(running) + extra + "}\n\n"
        return end
    fixed = (',"usage":null' if include_usage else "") + extra + "}\n\n"
    return lambda done: fixed


def _content_events(make_event, pieces, fault):
    """One event per piece; with event_bytes, each is padded with dots to exactly that many bytes."""
    size = _int_option(fault, "event_bytes")
    if size is None:
        return [make_event(piece, i + 1) for i, piece in enumerate(pieces)]
    events = []
    for i, piece in enumerate(pieces):
        room = size - len(make_event("", i + 1).encode())
        pad = max(room - len(piece.encode()), 0)
        events.append(make_event(piece + "." * pad, i + 1))
    return events


def _prompt_texts(prompt):
    """Normalise a legacy/embeddings input (string, strings, token ids, token-id lists) to texts."""
    if isinstance(prompt, str):
        return [prompt]
    if isinstance(prompt, list) and prompt:
        if all(isinstance(p, int) for p in prompt):
            return [" ".join(map(str, prompt))]
        if all(isinstance(p, str) for p in prompt):
            return list(prompt)
        if all(isinstance(p, list) and all(isinstance(t, int) for t in p) for p in prompt):
            return [" ".join(map(str, p)) for p in prompt]
    return None


async def _completions(request, body, fault):
    model = _require_model(body)
    texts = _prompt_texts(body.get("prompt"))
    if texts is None:
        raise _BadRequest("'prompt' must be a string or an array of strings or tokens", param="prompt")
    words = _reply_words(texts[-1], _int_option(fault, "chunks"))
    prompt_tokens = sum(len(t.split()) for t in texts)
    usage = {"prompt_tokens": prompt_tokens, "completion_tokens": len(words),
             "total_tokens": prompt_tokens + len(words)}
    rid = f"cmpl-mock{next(request.app[STATE].ids):012d}"
    created = int(time.time())
    if body.get("stream"):
        include = _wants_usage(body, fault)
        head, content, tail = _completion_events(rid, created, model, words, usage, include, fault)
        return await _stream(request, fault, head, content, tail)
    reply = {
        "id": rid, "object": "text_completion", "created": created, "model": model,
        "choices": [{"text": " ".join(words), "index": 0, "logprobs": None, "finish_reason": "stop"}],
        "usage": usage, "system_fingerprint": SYSTEM_FINGERPRINT,
    }
    if fault.get("no_usage"):
        del reply["usage"]
    return await _answer(request, fault, reply)


def _completion_events(rid, created, model, words, usage, include_usage, fault):
    """SSE events (head, content, tail) for a legacy completions stream (no role chunk)."""
    pre = ('data: {"id":"%s","object":"text_completion","created":%d,"model":%s,'
           '"system_fingerprint":"%s","choices":' % (rid, created, _dumps(model), SYSTEM_FINGERPRINT))
    end = _chunk_end(usage, include_usage, fault)

    def choice(text, finish="null", done=0):
        return pre + '[{"text":%s,"index":0,"logprobs":null,"finish_reason":%s}]' % (_dumps(text), finish) + end(done)

    content = _content_events(lambda piece, done: choice(piece, done=done), _pieces(words), fault)
    tail = [choice("", '"stop"', len(words))]
    if include_usage and usage is not None:
        tail.append(pre + '[],"usage":' + _dumps(usage) + _chunk_extra(fault) + "}\n\n")
    tail.append(_DONE)
    return [], content, tail


def _embedding(text, dims):
    """Deterministic unit vector for `text` as little-endian float32 bytes."""
    raw = hashlib.shake_256(text.encode()).digest(2 * dims)
    values = [int.from_bytes(raw[i:i + 2], "little") / 32767.5 - 1.0 for i in range(0, 2 * dims, 2)]
    norm = math.sqrt(sum(v * v for v in values)) or 1.0
    return struct.pack(f"<{dims}f", *(v / norm for v in values))


async def _embeddings(request, body, fault):
    model = _require_model(body)
    texts = _prompt_texts(body.get("input"))
    if texts is None:
        raise _BadRequest("'input' must be a non-empty string or array", param="input")
    dims = body.get("dimensions") or EMBED_DIMS
    if not isinstance(dims, int) or not 1 <= dims <= MAX_EMBED_DIMS:
        raise _BadRequest(f"'dimensions' must be an integer in 1..{MAX_EMBED_DIMS}", param="dimensions")
    as_base64 = body.get("encoding_format") == "base64"
    data = []
    for index, text in enumerate(texts):
        packed = _embedding(text, dims)
        vector = base64.b64encode(packed).decode() if as_base64 else list(struct.unpack(f"<{dims}f", packed))
        data.append({"object": "embedding", "index": index, "embedding": vector})
    tokens = sum(max(1, len(t.split())) for t in texts)
    reply = {"object": "list", "data": data, "model": model,
             "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}
    if fault.get("no_usage"):
        del reply["usage"]
    return await _answer(request, fault, reply)


async def _list_models(request, body, fault):
    return web.Response(body=request.app[STATE].models_body, content_type="application/json")


async def _get_model(request, body, fault):
    model_id = request.match_info["model_id"]
    model = request.app[STATE].models.get(model_id)
    if model is None:
        return error_response(404, f"The model '{model_id}' does not exist", code="model_not_found", param="model")
    return _json_response(model)


# ---------------------------------------------------------------- answering


async def _answer(request, fault, reply, status=200):
    """Send a JSON answer, applying the non-stream fault modes (malformed, first_event_delay)."""
    body = _dumps(reply).encode()
    malformed = fault.get("malformed")
    if malformed:
        # A 200 that is not the JSON it claims to be: cut in half, or an HTML page.
        body = b"<html><body>upstream exploded</body></html>" if malformed == "not_json" else body[: len(body) // 2]
    first_event_delay = float(fault.get("first_event_delay") or 0)
    if not first_event_delay:
        return web.Response(body=body, status=status, content_type="application/json")
    resp = web.StreamResponse(status=status, headers={"Content-Type": "application/json"})
    resp.content_length = len(body)
    await resp.prepare(request)  # StreamResponse sends the headers now; the body follows later.
    await asyncio.sleep(first_event_delay)
    await resp.write(body)
    await resp.write_eof()
    return resp


# ---------------------------------------------------------------- streaming


async def _stream(request, fault, head, content, tail):
    """Send SSE events, applying the stream fault modes, and record a stream_end event."""
    content = list(content)
    malformed_at = _int_option(fault, "malformed_at")
    if malformed_at is not None and 1 <= malformed_at <= len(content):
        content[malformed_at - 1] = _MALFORMED
    drop_after = _int_option(fault, "chunks_then_drop")
    stall_after = _int_option(fault, "stall_after")
    cut = drop_after if drop_after is not None else stall_after
    events = head + (content[:max(cut, 0)] if cut is not None else content + tail)
    if drop_after is not None and fault.get("drop_mid_event"):
        following = (content + tail)[max(drop_after, 0):]
        if following:
            events.append(following[0][: len(following[0]) // 2])
    chunk_delay = float(fault.get("chunk_delay") or 0)

    state = request.app[STATE]
    outcome = {"type": "stream_end", "path": request.path, "completed": False}
    resp = web.StreamResponse(headers=_SSE_HEADERS)
    request[_STREAM_STARTED] = True
    try:
        await resp.prepare(request)
        await _before_first_event(resp, fault)
        await _write_events(resp, events, chunk_delay, one_write=fault.get("event_bytes") is None)
        if drop_after is not None:
            # close() flushes what was written, then FINs without the terminating chunk.
            request.transport.close()
            outcome["dropped"] = True
        elif stall_after is not None:
            await asyncio.sleep(STALL_SECONDS)
            outcome["stall_timeout"] = True
        else:
            outcome["completed"] = True
    except asyncio.CancelledError:
        _record_disconnect(state, outcome)
        raise
    except ConnectionError:
        # Returning (not raising) lets aiohttp treat it as a quiet premature disconnect.
        _record_disconnect(state, outcome)
        return resp
    outcome["t"] = time.monotonic()
    state.event(outcome)
    return resp


async def _before_first_event(resp, fault):
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


def _record_disconnect(state, outcome):
    outcome["client_disconnected"] = True
    outcome["t"] = time.monotonic()
    state.event(outcome)


async def _write_events(resp, events, chunk_delay, one_write=True):
    if not chunk_delay and one_write:
        # One write for the whole stream: fewest syscalls, which is what benchmarks want.
        await resp.write("".join(events).encode())
        return
    for i, event in enumerate(events):
        if i and chunk_delay:
            await asyncio.sleep(chunk_delay)
        # Each write waits for the socket to drain, so a slow reader holds the stream back.
        await resp.write(event.encode())


# ---------------------------------------------------------------- app and runners


def build_app(keys=None, models=None):
    """Create the aiohttp application. `keys`: accepted bearer tokens (None = any); `models`: ids listed."""
    app = web.Application(middlewares=[_guard], client_max_size=CLIENT_MAX_SIZE)
    app[STATE] = _State(keys, models)
    app.router.add_post("/v1/chat/completions", _endpoint(_chat_completions))
    app.router.add_post("/v1/completions", _endpoint(_completions))
    app.router.add_post("/v1/embeddings", _endpoint(_embeddings))
    app.router.add_get("/v1/models", _endpoint(_list_models, has_body=False))
    app.router.add_get("/v1/models/{model_id:.+}", _endpoint(_get_model, has_body=False))
    app.router.add_get("/mock/generations/{request_id}", _generations)
    return app


async def _generations(request):
    """How many generations were started for a request_id (for tests in another process)."""
    request_id = request.match_info["request_id"]
    return _json_response({"request_id": request_id, "generations": request.app[STATE].generations[request_id]})


class MockUpstream:
    """A running mock server on the current event loop (see `start`)."""

    def __init__(self, runner, app, host, port):
        self._runner = runner
        self._state = app[STATE]
        self.host = host
        self.port = port
        self.base_url = f"http://{host}:{port}/v1"

    @property
    def events(self):
        """Observability events: request / request_cancelled / stream_end dicts."""
        return self._state.events

    @property
    def requests(self):
        """Received requests: dicts with method, path, headers (lower-case), json, api_key."""
        return self._state.requests

    def generations(self, request_id):
        """How many generations were started with this mock.request_id (or x-mock-request-id)."""
        return self._state.generations[str(request_id)]

    def clear(self):
        """Forget recorded events, requests and generation counts (in place)."""
        self._state.events.clear()
        self._state.requests.clear()
        self._state.generations.clear()

    async def stop(self):
        """Stop listening; in-flight handlers (e.g. stalled streams) are cancelled."""
        await self._runner.cleanup()


async def start(host="127.0.0.1", port=0, *, keys=None, models=None):
    """Start the mock on the running loop and return a MockUpstream once it is listening."""
    app = build_app(keys=keys, models=models)
    # handler_cancellation: a client disconnect cancels the handler at once, so it is noticed promptly.
    runner = web.AppRunner(app, handler_cancellation=True, access_log=None, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    return MockUpstream(runner, app, host, runner.addresses[0][1])


class MockUpstreamThread:
    """The mock running in a background thread with its own event loop, for sync tests."""

    def __init__(self, host="127.0.0.1", port=0, *, keys=None, models=None):
        self._args = (host, port)
        self._kwargs = {"keys": keys, "models": models}
        self._loop = None
        self._thread = None
        self._server = None
        self._error = None

    def start(self):
        """Start the thread and block until the server is listening."""
        ready = threading.Event()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, args=(ready,), name="mock-upstream", daemon=True)
        self._thread.start()
        ready.wait(10)
        if self._error is not None:
            raise self._error
        if self._server is None:
            raise RuntimeError("mock upstream did not start")
        return self

    def _run(self, ready):
        asyncio.set_event_loop(self._loop)
        try:
            self._server = self._loop.run_until_complete(start(*self._args, **self._kwargs))
        except BaseException as exc:  # noqa: BLE001 - reported to the starting thread
            self._error = exc
            ready.set()
            return
        ready.set()
        try:
            self._loop.run_forever()
            self._loop.run_until_complete(self._server.stop())
        finally:
            self._loop.close()

    def stop(self):
        """Stop the server and join the thread."""
        if self._thread is None:
            return
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._thread = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc_info):
        self.stop()

    @property
    def port(self):
        return self._server.port

    @property
    def base_url(self):
        return self._server.base_url

    @property
    def events(self):
        return self._server.events

    @property
    def requests(self):
        return self._server.requests

    def generations(self, request_id):
        """How many generations were started with this mock.request_id (or x-mock-request-id)."""
        return self._server.generations(request_id)

    def clear(self):
        """Forget recorded events, requests and generation counts."""
        self._server.clear()


def serve(host="127.0.0.1", port=8001, *, keys=None, models=None):
    """Run the mock in the foreground until interrupted."""
    web.run_app(build_app(keys=keys, models=models), host=host, port=port,
                handler_cancellation=True, access_log=None, shutdown_timeout=0.5)
