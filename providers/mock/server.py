"""The mock's aiohttp application and the ways to run it: on a loop, in a thread, in the foreground."""

from __future__ import annotations

import asyncio
import threading

from aiohttp import web

from . import openai_chat
from .core import CLIENT_MAX_SIZE, DIALECTS, OPENAI, STATE, State, endpoint, guard, json_response


def _by_dialect(openai_handler, anthropic_handler):
    """One path, two formats (GET /v1/models): Anthropic clients always send anthropic-version."""

    async def handler(request):
        if "anthropic-version" in request.headers and anthropic_handler is not None:
            return await anthropic_handler(request)
        return await openai_handler(request)

    return handler


def build_app(keys=None, models=None):
    """Create the aiohttp application. `keys`: accepted credentials (None = any); `models`: ids listed."""
    from . import anthropic, gemini, responses

    app = web.Application(middlewares=[guard], client_max_size=CLIENT_MAX_SIZE)
    app[STATE] = State(keys, models)
    app[DIALECTS] = [("/v1/messages", anthropic.ANTHROPIC), ("/v1beta", gemini.GEMINI), ("/v1", OPENAI)]
    add = app.router
    add.add_post("/v1/chat/completions", endpoint(openai_chat.chat_completions))
    add.add_post("/v1/completions", endpoint(openai_chat.completions))
    add.add_post("/v1/embeddings", endpoint(openai_chat.embeddings))
    add.add_get("/v1/models", _by_dialect(endpoint(openai_chat.list_models, has_body=False),
                                          endpoint(anthropic.list_models, anthropic.ANTHROPIC, has_body=False)))
    add.add_get("/v1/models/{model_id:.+}", _by_dialect(endpoint(openai_chat.get_model, has_body=False),
                                                        endpoint(anthropic.get_model, anthropic.ANTHROPIC, has_body=False)))
    anthropic.add_routes(app)
    responses.add_routes(app)
    gemini.add_routes(app)
    add.add_get("/mock/generations/{request_id}", _generations)
    return app


async def _generations(request):
    """How many generations were started for a request_id (for tests in another process)."""
    request_id = request.match_info["request_id"]
    return json_response({"request_id": request_id, "generations": request.app[STATE].generations[request_id]})


class MockUpstream:
    """A running mock server on the current event loop (see `start`)."""

    def __init__(self, runner, app, host, port):
        self._runner = runner
        self._state = app[STATE]
        self.host = host
        self.port = port
        self.origin = f"http://{host}:{port}"
        self.base_url = f"{self.origin}/v1"

    @property
    def events(self):
        """Observability events: request / request_cancelled / stream_end dicts."""
        return self._state.events

    @property
    def requests(self):
        """Received requests: dicts with method, path, query, headers (lower-case, credentials
        redacted), json, api_key (the credential received) and auth_scheme."""
        return self._state.requests

    def generations(self, request_id):
        """How many generations were started with this mock.request_id (or x-mock-request-id)."""
        return self._state.generations[str(request_id)]

    def clear(self):
        """Forget recorded events, requests, generation counts and stored responses (in place)."""
        self._state.events.clear()
        self._state.requests.clear()
        self._state.generations.clear()
        self._state.responses.clear()

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
    def origin(self):
        """http://host:port, for clients that add their own prefix (Anthropic, Gemini SDKs)."""
        return self._server.origin

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
        """Forget recorded events, requests, generation counts and stored responses."""
        self._server.clear()


def serve(host="127.0.0.1", port=8001, *, keys=None, models=None):
    """Run the mock in the foreground until interrupted."""
    web.run_app(build_app(keys=keys, models=models), host=host, port=port,
                handler_cancellation=True, access_log=None, shutdown_timeout=0.5)
