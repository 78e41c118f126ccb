"""Django's ASGI handler, trimmed for the /v1 hot path.

Django's own handler runs every request inside a ThreadSensitiveContext and sends the
request_started / request_finished signals through sync_to_async: that starts a thread
for each request and joins it at the end, which profiling showed to be over a third of
the event loop's time per request. The API path runs no synchronous code that needs a
thread-sensitive context and never touches the database, so this handler:

- uses no middleware (each standard middleware costs two thread hops);
- does not send request_started (its receivers reset and close DB connections, and
  the event-loop thread has none);
- closes the response inline (its request_finished receivers find nothing to close).

It also guards the size of request bodies, counting the bytes actually received, so a
missing or false Content-Length cannot get around it. Past the limit the view gets an
empty body and `request.scope[TOO_LARGE]`, and answers 413 in the client's protocol.

Everything else is Django's: request objects, URL resolution, views, disconnect handling.
"""
import asyncio
import gc
import io
import logging
import sys
import threading

from django.conf import settings

from django.core.exceptions import RequestAborted
from django.core.handlers.asgi import ASGIHandler, get_script_prefix
from django.core.handlers.exception import convert_exception_to_response
from django.urls import set_script_prefix
from zope.interface import implementer

from twisted.internet.interfaces import IPushProducer

log = logging.getLogger(__name__)


TOO_LARGE = "gateway.body_too_large"
OVERLOADED = "gateway.overloaded"

# Set once the process starts a graceful stop (SIGTERM), from the reactor's shutdown
# trigger; read by the handler and by stream relays on the event loop.
stopping = threading.Event()


class BodyTooLarge(Exception):
    pass


class InFlight:
    """How many API requests this process is serving, against GATEWAY_MAX_IN_FLIGHT: HTTP
    requests and responses over a WebSocket (routing/websocket.py) count alike, on the one
    counter of the process's ApiHandler. Only the event loop's thread touches it."""

    __slots__ = ("limit", "count")

    def __init__(self, limit: int | None = None):
        self.limit = limit  # None: no limit
        self.count = 0

    def enter(self) -> bool:
        """Count one more request; False when it is past the limit. A refused request counts
        too, until it leaves (it is being answered), as the HTTP side always did."""
        self.count += 1
        return self.limit is None or self.count <= self.limit

    def leave(self) -> None:
        self.count -= 1


class ApiHandler(ASGIHandler):
    def __init__(self, body_limit: int | None = None, urlconf: str | None = None, max_in_flight: int | None = None):
        super().__init__()
        self.body_limit = body_limit
        self.urlconf = urlconf  # the API's own URLs: resolved without trying the site's first
        # Requests past this many in flight are answered at once with 503 (in the client's
        # protocol, by the view layer): the process stays responsive, /healthz fast.
        self.in_flight = InFlight(max_in_flight)

    def load_middleware(self, is_async=False):
        self._view_middleware = []
        self._template_response_middleware = []
        self._exception_middleware = []
        get_response = self._get_response_async if is_async else self._get_response
        self._middleware_chain = convert_exception_to_response(get_response)

    async def __call__(self, scope, receive, send):
        await self.handle(scope, receive, send)

    async def read_body(self, receive, size: int = 0):
        """The whole body in memory (API bodies are JSON), up to the limit."""
        limit = self.body_limit
        chunks = []
        while limit is None or size <= limit:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise RequestAborted()
            chunk = message.get("body", b"")
            size += len(chunk)
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        if limit is not None and size > limit:
            raise BodyTooLarge()
        return io.BytesIO(b"".join(chunks))

    async def listen_for_disconnect(self, receive):
        while True:  # what is left of a body past the limit arrives here first: ignored
            if (await receive())["type"] == "http.disconnect":
                raise RequestAborted()

    async def handle(self, scope, receive, send):
        in_flight = self.in_flight
        if not in_flight.enter():
            scope = {**scope, OVERLOADED: in_flight.limit}
        try:
            await self._handle(scope, receive, send)
        finally:
            in_flight.leave()

    async def _handle(self, scope, receive, send):
        try:
            body_file = await self.read_body(receive, size=self._declared_excess(scope))
        except RequestAborted:
            return
        except BodyTooLarge:
            scope = {**scope, TOO_LARGE: self.body_limit}
            body_file = io.BytesIO()
        set_script_prefix(get_script_prefix(scope))
        request, error_response = self.create_request(scope, body_file)
        if request is None:
            await self.send_response(error_response, send)
            return
        if self.urlconf:
            request.urlconf = self.urlconf

        async def process_request():
            response = await self.run_get_response(request)
            try:
                await self.send_response(response, paced_send)
            except asyncio.CancelledError:
                pass  # the client left while the response was being sent
            return response

        flow = ClientFlow(send)
        paced_send = flow.send
        # As in Django: a client disconnect cancels the view (and so the upstream call).
        listener = asyncio.create_task(self.listen_for_disconnect(receive))
        processor = asyncio.create_task(process_request())
        try:
            try:
                await asyncio.wait([listener, processor], return_when=asyncio.FIRST_COMPLETED)
            except asyncio.CancelledError:
                # The server is stopping (Daphne cancels every application): let what is in
                # flight finish within the grace period; past it, streams end with an error
                # event (routing.proxy._relay) and everything gets its request-log row.
                if not stopping.is_set():
                    raise
                await asyncio.wait([processor], timeout=settings.GATEWAY_STOP_GRACE_S)
            for task in (listener, processor):
                if task.done():
                    try:
                        task.result()
                    except (RequestAborted, asyncio.CancelledError):
                        pass
                else:
                    task.cancel()
                    try:
                        await task
                    except (asyncio.CancelledError, RequestAborted):
                        pass
            if not processor.cancelled() and processor.exception() is None:
                processor.result().close()
        finally:
            record = getattr(request, "gateway_record", None)
            if record is not None:  # the record's owner: ends it if nothing else did
                await record.abandon()
            flow.detach()

    def _declared_excess(self, scope) -> int:
        """Past the limit already if Content-Length says so (or is not a number)."""
        if self.body_limit is not None:
            for name, value in scope["headers"]:
                if name == b"content-length" and (not value.isdigit() or int(value) > self.body_limit):
                    return self.body_limit + 1
        return 0


@implementer(IPushProducer)
class ClientFlow:
    """Paces a streamed response to the client's reading speed (Daphne only).

    Daphne hands every body chunk to Twisted's write buffer at once, so a slow reader made
    the gateway buffer a whole stream while reading the upstream at full speed. Registered
    as the request's streaming producer while a response streams, this learns when
    Twisted's buffer is full (pauseProducing) and holds the next send until it drains: the
    relay stops reading the upstream, and TCP slows the upstream down in turn. A client
    that reads nothing for GATEWAY_SLOW_CLIENT_TIMEOUT_S is disconnected (which cancels its
    upstream request). Answers sent in one piece never register (nothing to pace), and the
    producer is unregistered before the last piece (Twisted complains, expensively, about
    a producer left registered when a response finishes).
    """

    def __init__(self, send):
        self._send = send
        protocol = getattr(send, "args", (None,))[0]  # Daphne's send: partial(handle_reply, protocol)
        self.protocol = protocol if hasattr(protocol, "registerProducer") else None
        self.attached = False
        self.writable = asyncio.Event()
        self.writable.set()

    async def send(self, message) -> None:
        if message["type"] != "http.response.body" or self.protocol is None:
            return await self._send(message)
        if not message.get("more_body", False):
            self.detach()
            return await self._send(message)
        if not self.attached:
            self.attach()
        await self._send(message)
        if not self.writable.is_set():
            try:
                async with asyncio.timeout(settings.GATEWAY_SLOW_CLIENT_TIMEOUT_S):
                    await self.writable.wait()
            except TimeoutError:
                log.warning("client stopped reading for %ss; disconnected", settings.GATEWAY_SLOW_CLIENT_TIMEOUT_S)
                transport = getattr(self.protocol, "transport", None)
                if transport is not None:
                    transport.abortConnection()
                raise RequestAborted() from None

    def attach(self) -> None:
        if self.protocol.producer is None and self.protocol.channel is not None:
            self.protocol.registerProducer(self, True)
            self.attached = True

    def detach(self) -> None:
        # After a lost connection Twisted has already let go of the request's channel.
        if self.attached and self.protocol.producer is self and self.protocol.channel is not None:
            self.protocol.unregisterProducer()
        self.attached = False

    # IPushProducer, called by Twisted on the event loop's thread
    def pauseProducing(self):
        self.writable.clear()

    def resumeProducing(self):
        self.writable.set()

    def stopProducing(self):
        self.writable.set()


def watch_for_shutdown(*also) -> None:
    """Under Daphne, mark the process as stopping as soon as Twisted starts to shut down,
    before Daphne cancels the applications in flight; then call each of `also` (quick calls)."""
    reactor_module = sys.modules.get("twisted.internet.reactor")
    if reactor_module is not None:
        reactor_module.addSystemEventTrigger("before", "shutdown", stopping.set)
        for call in also:
            reactor_module.addSystemEventTrigger("before", "shutdown", call)


# Young-generation threshold: Python's default (700 allocations) collects every couple
# of requests, promoting whatever is in flight at that moment.
GC_YOUNG_THRESHOLD = 7000


def settle_heap() -> None:
    """Keep the garbage collector off what a server loads once at startup.

    Measured under load (bench/run.py), collections took 15-20% of the process's CPU,
    most of it full collections walking the 120-170 thousand objects that Django, Twisted
    and the app create at import and keep for the process's life. Freezing them leaves
    the collector only what requests create; a higher young threshold lets most of that
    die before a collection sees it. Both together cut p99 latency at c=32 by about half.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, 10, 10)

