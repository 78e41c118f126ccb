"""Mock OpenAI-compatible upstream HTTP server with per-request fault injection, for tests and benchmarks."""

from __future__ import annotations

import asyncio
import base64
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
        try:
            if fault.get("delay"):
                await asyncio.sleep(float(fault["delay"]))
        except asyncio.CancelledError:
            state.event({"type": "request_cancelled", "path": request.path, "t": time.monotonic()})
            raise
        if fault.get("status") is not None:
            return _fault_response(fault)
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


def _error_kind(status):
    """Default (type, code, message) for an injected error status, as OpenAI reports them."""
    if status == 429:
        return "requests", "rate_limit_exceeded", "Rate limit reached for requests (mock)."
    if status >= 500:
        return "server_error", None, "The server had an error while processing your request. (mock)"
    if status == 401:
        return "invalid_request_error", "invalid_api_key", "Incorrect API key provided (mock)."
    return "invalid_request_error", None, f"Mock error {status}."


def _fault_response(fault):
    status = _int_option(fault, "status")
    headers = {}
    if fault.get("retry_after") is not None:
        retry = float(fault["retry_after"])
        headers["Retry-After"] = str(int(retry)) if retry.is_integer() else str(retry)
    if fault.get("body") is not None:
        return web.Response(status=status, text=str(fault["body"]), headers=headers,
                            content_type=fault.get("content_type", "text/html"))
    err_type, code, message = _error_kind(status)
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
        head, content, tail = _chat_events(rid, created, model, words, usage if include else None, include)
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
    return _json_response(reply)


def _chat_events(rid, created, model, words, usage, include_usage):
    """SSE events (head, content, tail) for a chat stream, built by string templating for speed."""
    pre = ('data: {"id":"%s","object":"chat.completion.chunk","created":%d,"model":%s,'
           '"system_fingerprint":"%s","choices":' % (rid, created, _dumps(model), SYSTEM_FINGERPRINT))
    end = (',"usage":null' if include_usage else "") + "}\n\n"

    def choice(delta, finish="null"):
        return pre + '[{"index":0,"delta":%s,"logprobs":null,"finish_reason":%s}]' % (delta, finish) + end

    head = [choice('{"role":"assistant","content":"","refusal":null}')]
    content = [choice('{"content":%s}' % _dumps(piece)) for piece in _pieces(words)]
    tail = [choice("{}", '"stop"')]
    if usage is not None:
        tail.append(pre + '[],"usage":' + _dumps(usage) + "}\n\n")
    tail.append(_DONE)
    return head, content, tail


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
        head, content, tail = _completion_events(rid, created, model, words, usage if include else None, include)
        return await _stream(request, fault, head, content, tail)
    reply = {
        "id": rid, "object": "text_completion", "created": created, "model": model,
        "choices": [{"text": " ".join(words), "index": 0, "logprobs": None, "finish_reason": "stop"}],
        "usage": usage, "system_fingerprint": SYSTEM_FINGERPRINT,
    }
    if fault.get("no_usage"):
        del reply["usage"]
    return _json_response(reply)


def _completion_events(rid, created, model, words, usage, include_usage):
    """SSE events (head, content, tail) for a legacy completions stream (no role chunk)."""
    pre = ('data: {"id":"%s","object":"text_completion","created":%d,"model":%s,'
           '"system_fingerprint":"%s","choices":' % (rid, created, _dumps(model), SYSTEM_FINGERPRINT))
    end = (',"usage":null' if include_usage else "") + "}\n\n"

    def choice(text, finish="null"):
        return pre + '[{"text":%s,"index":0,"logprobs":null,"finish_reason":%s}]' % (_dumps(text), finish) + end

    content = [choice(piece) for piece in _pieces(words)]
    tail = [choice("", '"stop"')]
    if usage is not None:
        tail.append(pre + '[],"usage":' + _dumps(usage) + "}\n\n")
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
    return _json_response(reply)


async def _list_models(request, body, fault):
    return web.Response(body=request.app[STATE].models_body, content_type="application/json")


async def _get_model(request, body, fault):
    model_id = request.match_info["model_id"]
    model = request.app[STATE].models.get(model_id)
    if model is None:
        return error_response(404, f"The model '{model_id}' does not exist", code="model_not_found", param="model")
    return _json_response(model)


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
    chunk_delay = float(fault.get("chunk_delay") or 0)

    state = request.app[STATE]
    outcome = {"type": "stream_end", "path": request.path, "completed": False}
    resp = web.StreamResponse(headers=_SSE_HEADERS)
    request[_STREAM_STARTED] = True
    try:
        await resp.prepare(request)
        await _write_events(resp, events, chunk_delay)
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


def _record_disconnect(state, outcome):
    outcome["client_disconnected"] = True
    outcome["t"] = time.monotonic()
    state.event(outcome)


async def _write_events(resp, events, chunk_delay):
    if not chunk_delay:
        # One write for the whole stream: fewest syscalls, which is what benchmarks want.
        await resp.write("".join(events).encode())
        return
    for i, event in enumerate(events):
        if i:
            await asyncio.sleep(chunk_delay)
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
    return app


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

    def clear(self):
        """Forget recorded events and requests (in place)."""
        self._state.events.clear()
        self._state.requests.clear()

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

    def clear(self):
        """Forget recorded events and requests."""
        self._server.clear()


def serve(host="127.0.0.1", port=8001, *, keys=None, models=None):
    """Run the mock in the foreground until interrupted."""
    web.run_app(build_app(keys=keys, models=models), host=host, port=port,
                handler_cancellation=True, access_log=None, shutdown_timeout=0.5)
