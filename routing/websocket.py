"""OpenAI Responses over WebSocket on /v1/responses (Codex CLI's preferred transport).

A plain ASGI WebSocket application, routed by llmgateway/asgi.py. The handshake carries the
virtual key (Authorization: Bearer); an unknown, disabled or expired key is refused before
the socket opens, with the auth error as the body (see handshake_status). Each client frame `{"type": "response.create", ...}` holds a
Responses request body: it goes through the same pipeline as a streamed POST /v1/responses
(proxy.serve, with its own request record and log row), and every SSE event of the answer
goes back as one text frame holding the event's JSON data. An error is one frame
`{"type": "error", "status": ..., "error": {...}}` and the socket stays open, as OpenAI's does.

Limits are the HTTP side's: each frame being answered counts as one request in flight against
GATEWAY_MAX_IN_FLIGHT (the process's one counter, shared with HTTP; past it the frame gets the
503 `overloaded` error frame), and a message larger than GATEWAY_MAX_BODY_BYTES is refused by
Daphne while it arrives, closing the socket with 1009 (llmgateway/asgi.py limit_websocket_messages).

Turns are chained as Codex chains them: `previous_response_id` naming the last response on
this socket is expanded here into that response's input and output followed by the new
input (OpenAI keeps the same connection-local state), so chaining works whatever the
upstream speaks, and across a failover. Any other previous_response_id goes on as sent.
"""
import asyncio
import json
import logging
import os
import time

from django.conf import settings

from keys.auth import authenticate_request
from llmgateway import runtime
from llmgateway.apihandler import InFlight, stopping
from llmgateway.errors import GatewayError, InvalidRequest, PayloadTooLarge, ServiceUnavailable, overloaded_error
from providers.sse import EventSplitter, event_data

from . import proxy
from .api import READ_HEADERS
from .endpoints import ENDPOINTS
from .record import RequestRecord
from .resolve import find_route

log = logging.getLogger(__name__)

ENDPOINT = ENDPOINTS["responses"]
LOG_ENDPOINT = "responses_websocket"  # the request log's name for a response served over the socket
TERMINAL_EVENTS = frozenset({"response.completed", "response.failed", "response.incomplete"})


def handshake_meta(scope) -> dict[str, str]:
    """The handshake's headers as Django's META spells them (what keys.auth reads)."""
    meta = {}
    for name, value in scope.get("headers", ()):
        meta["HTTP_" + name.decode("latin-1").upper().replace("-", "_")] = value.decode("latin-1")
    return meta


def error_event(err: GatewayError) -> dict:
    """An error frame in the Responses WebSocket shape (the status says whether to retry)."""
    return {"type": "error", "status": err.status,
            "error": {"type": err.type, "code": err.code, "message": err.message, "param": err.param}}


def error_frame_of(outcome: proxy.Outcome) -> dict:
    """The error frame for a pipeline outcome that is an error answer (Responses' error JSON)."""
    try:
        error = json.loads(outcome.body)["error"]
    except (ValueError, KeyError, TypeError):
        error = {"type": "server_error", "code": None, "message": "The gateway hit an internal error.",
                 "param": None}
    return {"type": "error", "status": outcome.status, "error": error}


def handshake_status(err: GatewayError) -> int:
    """The status a refused handshake gets. A key that is not good is refused with 400 (the
    body says 401's invalid_api_key): Codex 0.171 reports a 400 at once, with the body, but
    reconnects five times with backoff (~13 s) on a 401 before saying anything. A temporary
    refusal (503) stays one: Codex is right to try again."""
    return 400 if err.status == 401 else err.status


class Conversation:
    """The last response on one socket: its whole input and its output, for chaining."""

    __slots__ = ("response_id", "items")

    def __init__(self):
        self.response_id: str | None = None
        self.items: list = []

    def expand(self, body: dict) -> dict:
        """The body with `previous_response_id` replaced by the history it names, if it names
        this socket's last response."""
        previous = body.get("previous_response_id")
        if previous is None or previous != self.response_id:
            return body
        body = {k: v for k, v in body.items() if k != "previous_response_id"}
        body["input"] = self.items + input_items(body.get("input"))
        return body

    def remember(self, body: dict, response: dict) -> None:
        output = response.get("output")
        self.response_id = response.get("id")
        self.items = input_items(body.get("input")) + (output if isinstance(output, list) else [])


def input_items(value) -> list:
    if value is None:
        return []
    if isinstance(value, str):
        return [{"role": "user", "content": value}]
    return list(value) if isinstance(value, list) else [value]


class ResponsesSocket:
    """One WebSocket connection: authenticated once at the handshake, then one response per
    response.create frame, answered in order."""

    def __init__(self, scope, receive, send, in_flight: InFlight | None = None):
        self.scope, self.receive, self.send = scope, receive, send
        self.in_flight = in_flight if in_flight is not None else InFlight()
        self.meta = handshake_meta(scope)
        self.headers = {name: self.meta[key] for name, key in READ_HEADERS.items() if key in self.meta}
        client = scope.get("client")
        self.client_ip = client[0] if client else None
        self.conversation = Conversation()
        self.key = None

    async def run(self) -> None:
        if (await self.receive())["type"] != "websocket.connect":
            return
        if not await self.admit():
            return
        await self.send({"type": "websocket.accept"})
        frames: asyncio.Queue = asyncio.Queue()
        reader = asyncio.create_task(self.read_frames(frames))
        try:
            while True:
                text = await frames.get()
                if text is None:
                    return
                answering = asyncio.create_task(self.answer(text))
                # A client that leaves mid-answer cancels it (and so its upstream request).
                try:
                    await asyncio.wait([answering, reader], return_when=asyncio.FIRST_COMPLETED)
                except asyncio.CancelledError:
                    # The server is stopping: the answer in flight gets the grace period to finish.
                    if stopping.is_set():
                        await asyncio.wait([answering], timeout=settings.GATEWAY_STOP_GRACE_S)
                    answering.cancel()
                    raise
                if not answering.done():
                    answering.cancel()
                    try:
                        await answering
                    except asyncio.CancelledError:
                        pass
                    return
                try:
                    keep_open = answering.result()
                except Exception:  # its record is ended (answer's finally); the socket cannot go on
                    log.exception("unexpected error answering on a WebSocket")
                    await self.send({"type": "websocket.close", "code": 1011})
                    return
                if not keep_open:  # the key stopped being valid
                    await self.send({"type": "websocket.close", "code": 1008})
                    return
        finally:
            reader.cancel()

    async def read_frames(self, frames: asyncio.Queue) -> None:
        while True:
            message = await self.receive()
            if message["type"] == "websocket.disconnect":
                await frames.put(None)
                return
            if message["type"] == "websocket.receive":
                text = message.get("text")
                if text is None and message.get("bytes") is not None:
                    text = message["bytes"].decode("utf-8", errors="replace")
                await frames.put(text)

    async def admit(self) -> bool:
        """Authenticate the handshake; refuse it (before the socket opens) if the key is not good."""
        try:
            self.key = await self.authenticate()
            return True
        except GatewayError as err:
            record = RequestRecord.begin(LOG_ENDPOINT, self.client_ip)
            record.fail(err)
            body = json.dumps({"error": error_event(err)["error"]}).encode()
            await self.send({"type": "websocket.http.response.start", "status": handshake_status(err),
                             "headers": [(b"content-type", b"application/json"),
                                         (b"x-request-id", record.request_id.encode())]})
            await self.send({"type": "websocket.http.response.body", "body": body})
            return False

    async def authenticate(self):
        if stopping.is_set():
            raise ServiceUnavailable("The gateway is restarting; try again in a moment.",
                                     code="server_shutting_down")
        gateway = runtime.current()
        try:
            await gateway.snapshot()
        except Exception as exc:
            log.error("cannot load the configuration snapshot: %s", type(exc).__name__)
            raise ServiceUnavailable("The gateway is not ready to serve yet; try again in a moment.",
                                     code="not_ready") from None
        return await authenticate_request(self.meta, gateway.keeper.keys)

    async def answer(self, text: str) -> bool:
        """Answer one client frame; False when the socket must close (the key is no longer valid)."""
        record = RequestRecord.begin(LOG_ENDPOINT, self.client_ip)
        admitted = self.in_flight.enter()
        try:
            try:
                if not admitted:  # as on HTTP: refused before the key is looked at again
                    record.log.virtual_key_id = self.key.id
                    raise overloaded_error(self.in_flight.limit)
                # The key is checked again for every response: it may have been disabled since.
                key = record.key = await self.authenticate()
            except GatewayError as err:
                record.fail(err)
                await self.send_json(error_event(err))
                return err.status != 401
            record.log.virtual_key_id = key.id
            try:
                body = self.read_frame(text)
            except GatewayError as err:
                record.fail(err)
                await self.send_json(error_event(err))
                return True
            if body.get("generate") is False:
                await self.prewarm(record, body)
                return True
            await self.serve(record, key, body)
            return True
        finally:
            self.in_flight.leave()
            await record.abandon()

    def read_frame(self, text: str) -> dict:
        # A second line: under Daphne a bigger message never gets here (closed with 1009 while it
        # arrived), but a binary frame decoded above can grow, and another server may not limit.
        if len(text.encode()) > settings.GATEWAY_MAX_BODY_BYTES:
            raise PayloadTooLarge(f"The message is larger than the limit of {settings.GATEWAY_MAX_BODY_BYTES} bytes.")
        try:
            frame = json.loads(text)
        except ValueError:
            frame = None
        if not isinstance(frame, dict) or frame.get("type") != "response.create":
            raise InvalidRequest("Expected a JSON text message with type 'response.create'.", code="invalid_event")
        body = {k: v for k, v in frame.items() if k != "type"}
        if not isinstance(body.get("input", []), (list, str)):
            raise InvalidRequest("'input' must be a string or a list of items.", param="input")
        return body

    async def serve(self, record: RequestRecord, key, body: dict) -> None:
        body = self.conversation.expand(body)
        body.pop("generate", None)
        body["stream"] = True
        raw = json.dumps(body, ensure_ascii=False).encode()
        inbound = proxy.Inbound(endpoint=ENDPOINT, body=body, raw=raw, headers=self.headers, key=key, record=record)
        outcome = await proxy.serve(inbound)
        if outcome.stream is None:
            if outcome.status >= 400:
                await self.send_json(error_frame_of(outcome))
            else:  # not expected (the request asks for a stream): the whole answer as the closing event
                response = json.loads(outcome.body)
                self.conversation.remember(body, response)
                await self.send_json({"type": "response.completed", "response": response})
            return
        splitter = EventSplitter()
        stream = outcome.stream
        try:
            async for chunk in stream:
                for event in splitter.feed(chunk):
                    data = event_data(event)
                    if data is None or data == b"[DONE]":
                        continue
                    if b'"response.' in data[:64]:
                        self.watch(body, data)
                    await self.send({"type": "websocket.send", "text": data.decode("utf-8", errors="replace")})
        finally:
            await stream.aclose()

    def watch(self, body: dict, data: bytes) -> None:
        """Remember a finished response, for the next turn's previous_response_id."""
        try:
            event = json.loads(data)
        except ValueError:
            return
        if event.get("type") in TERMINAL_EVENTS and isinstance(event.get("response"), dict):
            self.conversation.remember(body, event["response"])

    async def prewarm(self, record: RequestRecord, body: dict) -> None:
        """`generate: false` (Codex's first frame) asks for no output: a response the gateway
        answers itself, with no upstream call, that the next turn can chain on."""
        record.log.body = body
        model = body.get("model")
        try:
            if not isinstance(model, str) or not model:
                raise InvalidRequest("You must provide a model parameter.", param="model", code="missing_model")
            record.log.model_requested = model
            route = find_route(await runtime.current().snapshot(), model, record.key)
            record.log.route = route.name
        except GatewayError as err:
            record.fail(err)
            await self.send_json(error_event(err))
            return
        body = self.conversation.expand(body)
        response = {"id": f"resp_{os.urandom(16).hex()}", "object": "response", "created_at": int(time.time()),
                    "status": "completed", "model": model, "output": [], "previous_response_id": None,
                    "usage": {"input_tokens": 0, "input_tokens_details": {"cached_tokens": 0}, "output_tokens": 0,
                              "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": 0}}
        self.conversation.remember(body, response)
        record.log.stream = True
        record.log.note = "prewarm (generate: false): answered by the gateway, no upstream call"
        record.log.ttfb_ms = record.elapsed_ms()
        in_progress = {**response, "status": "in_progress"}
        await self.send_json({"type": "response.created", "sequence_number": 0, "response": in_progress})
        await self.send_json({"type": "response.completed", "sequence_number": 1, "response": response})
        record.end(200)

    async def send_json(self, payload: dict) -> None:
        await self.send({"type": "websocket.send", "text": json.dumps(payload, ensure_ascii=False)})


async def serve_responses_socket(scope, receive, send, in_flight: InFlight | None = None) -> None:
    """The ASGI application for a WebSocket on /v1/responses; `in_flight` is the process's
    counter of API requests (the HTTP handler's), which each response counts in."""
    await ResponsesSocket(scope, receive, send, in_flight).run()
