"""The ASGI application Daphne serves.

API paths (/v1 and the OpenAI-compatible path variants, see routing/endpoints.py) go to a trimmed Django handler
(llmgateway/apihandler.py) without the middleware stack or per-request threads: the API
uses neither sessions, CSRF nor the admin's auth. Everything else (admin, status page)
gets Django's full stack. Daphne serves this application as it is: every route here is
HTTP, so Channels' protocol router would only add a layer to every request.

WebSockets: /v1/responses speaks the Responses API over a WebSocket (Codex CLI's preferred
transport), served by routing/websocket.py through the same pipeline as HTTP. It is routed
here, by path, rather than through Channels' ProtocolTypeRouter, for the same reason as above.
Its responses count in the HTTP handler's in-flight counter (GATEWAY_MAX_IN_FLIGHT), and its
messages are held to GATEWAY_MAX_BODY_BYTES while they arrive (limit_websocket_messages).
A handshake on any other API path is answered 426 Upgrade Required, the one answer after
which Codex switches to HTTP at once instead of reconnecting five times (docs/clients.md).
"""
import atexit
import json
import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "llmgateway.settings")

from django.conf import settings  # noqa: E402
from django.core.asgi import get_asgi_application  # noqa: E402
from llmgateway import runtime  # noqa: E402
from llmgateway.apihandler import ApiHandler, settle_heap, watch_for_shutdown  # noqa: E402
from routing import requestlog  # noqa: E402
from routing.endpoints import canonical_path  # noqa: E402
from routing.websocket import serve_responses_socket  # noqa: E402

site_application = get_asgi_application()


def cut_off_slow_bodies(timeout: float) -> None:
    """Answer 408 (in the API's error format) and close a connection whose request body has
    not fully arrived `timeout` seconds after its headers. Twisted hands a request to Daphne
    only once the whole body is in, and resets its idle timer on every byte, so a client
    trickling a byte every few seconds held a connection for ever."""
    if not timeout:
        return
    from daphne.http_protocol import WebRequest

    got_length, request_received = WebRequest.gotLength, WebRequest.requestReceived

    def gotLength(self, length):
        got_length(self, length)
        from twisted.internet import reactor

        self._gateway_body_deadline = reactor.callLater(timeout, _body_too_slow, self)

    def requestReceived(self, *args):
        deadline = getattr(self, "_gateway_body_deadline", None)
        if deadline is not None and deadline.active():
            deadline.cancel()
        return request_received(self, *args)

    def _body_too_slow(request):
        transport = getattr(request.channel, "transport", None) if request.channel else None
        if transport is None:
            return
        body = json.dumps({"error": {"message": f"The request body did not arrive within {timeout:g} seconds.",
                                     "type": "invalid_request_error", "param": None,
                                     "code": "request_timeout"}}).encode()
        transport.write(b"HTTP/1.1 408 Request Timeout\r\nContent-Type: application/json\r\n"
                        b"Connection: close\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
        transport.loseConnection()

    WebRequest.gotLength, WebRequest.requestReceived = gotLength, requestReceived


def leave_bodies_unparsed() -> None:
    """Stop Twisted parsing form bodies into `request.args`: Daphne never reads them (the
    application parses its body), yet Twisted parsed every POST's Content-Type with the email
    package (5 % of the gateway's CPU under load) and would parse a multipart body in full."""
    from daphne.http_protocol import WebRequest

    init = WebRequest.__init__
    if getattr(init, "leaves_bodies_unparsed", False):
        return

    def __init__(self, *args, **kwargs):
        init(self, *args, **kwargs)
        self._parsePOSTFormSubmission = False

    __init__.leaves_bodies_unparsed = True
    WebRequest.__init__ = __init__


def allow_websocket_denial_responses():
    """Let Daphne refuse a WebSocket handshake with any status, headers and body, through the
    ASGI WebSocket Denial Response extension (websocket.http.response.start, then .body).
    Daphne 4 can refuse only with 403 (websocket.close before accept) or 500 (an exception),
    and autobahn, which writes the refusal, sends a status line and no body: the whole answer
    is written here instead, when its body is complete."""
    from http import HTTPStatus

    from autobahn.websocket.types import ConnectionDeny
    from daphne.ws_protocol import WebSocketProtocol

    handle_reply = WebSocketProtocol.handle_reply
    if getattr(handle_reply, "denies_with_status", False):
        return

    def handle_reply_with_denials(self, message):
        kind = message.get("type")
        if kind == "websocket.http.response.start" and hasattr(self, "handshake_deferred"):
            self._gateway_denial = (int(message["status"]), list(message.get("headers") or ()), [])
        elif kind == "websocket.http.response.body" and getattr(self, "_gateway_denial", None):
            status, headers, body = self._gateway_denial
            body.append(message.get("body", b""))
            if not message.get("more_body", False):
                self._gateway_denial = None
                deny(self, status, headers, b"".join(body))
        elif kind != "websocket.http.response.body":
            handle_reply(self, message)

    def deny(protocol, status, headers, body):
        phrase = HTTPStatus(status).phrase

        def send_denial(code, reason, response_headers=None):
            # autobahn's failHandshake calls this, then closes the connection (after the write).
            head = [f"HTTP/1.1 {status} {phrase}".encode(), b"Connection: close",
                    b"Content-Length: " + str(len(body)).encode()]
            head += [bytes(name) + b": " + bytes(value) for name, value in headers
                     if bytes(name).lower() not in (b"content-length", b"connection")]
            protocol.sendData(b"\r\n".join(head) + b"\r\n\r\n" + body)

        protocol.sendHttpErrorResponse = send_denial
        protocol.handshake_deferred.errback(ConnectionDeny(code=status, reason=phrase))
        del protocol.handshake_deferred
        protocol.server.protocol_disconnected(protocol)

    handle_reply_with_denials.denies_with_status = True
    WebSocketProtocol.handle_reply = handle_reply_with_denials


def limit_websocket_messages(limit: int) -> None:
    """Hold every WebSocket message a client sends to `limit` bytes (GATEWAY_MAX_BODY_BYTES)
    while it arrives: autobahn fails the connection with 1009 (message too big) as soon as a
    frame header or the frames so far say more, instead of buffering the whole message for the
    application to measure. Daphne sets its own size options (1 MiB, or its command line's) on
    its WebSocket factory when it starts serving, after this module is imported: they are
    replaced with the gateway's limit there.

    autobahn applies the message limit to what the server sends as well, but the limit is
    on requests: an answer's event (a response.completed holding the whole output) may be
    bigger, as an HTTP answer may, so it is lifted for sends."""
    from daphne.ws_protocol import WebSocketFactory, WebSocketProtocol

    set_protocol_options = WebSocketFactory.setProtocolOptions
    if getattr(set_protocol_options, "limits_messages", False):
        return

    def setProtocolOptions(self, **options):
        # failByDrop off: else autobahn fails a connection by dropping it, without the close frame
        # that tells the client why (it would see 1006, abnormal closure, instead of 1009).
        set_protocol_options(self, **{**options, "maxMessagePayloadSize": limit, "maxFramePayloadSize": limit,
                                      "failByDrop": False})

    send_message = WebSocketProtocol.sendMessage

    def sendMessage(self, *args, **kwargs):
        # Synchronous (frames go to the transport's buffer): nothing receives in between.
        received_limit, self.maxMessagePayloadSize = self.maxMessagePayloadSize, 0
        try:
            return send_message(self, *args, **kwargs)
        finally:
            self.maxMessagePayloadSize = received_limit

    setProtocolOptions.limits_messages = True
    WebSocketFactory.setProtocolOptions = setProtocolOptions
    WebSocketProtocol.sendMessage = sendMessage


async def refuse_websocket(receive, send):
    await receive()  # websocket.connect
    await send({"type": "websocket.http.response.start", "status": 426,
                "headers": [(b"content-type", b"text/plain; charset=utf-8")]})
    await send({"type": "websocket.http.response.body", "body": b"This API path speaks HTTP only (WebSockets: /v1/responses).\n"})


class Dispatcher:
    def __init__(self):
        self.api = ApiHandler(body_limit=settings.GATEWAY_MAX_BODY_BYTES, urlconf="llmgateway.api_urls",
                              max_in_flight=settings.GATEWAY_MAX_IN_FLIGHT or None)

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            path = canonical_path(scope["path"])
            if path is not None:
                if path != scope["path"]:
                    scope = {**scope, "path": path, "raw_path": path.encode()}
                return await self.api.handle(scope, receive, send)
        elif scope["type"] == "websocket":
            path = canonical_path(scope["path"])
            if path == "/v1/responses":
                return await serve_responses_socket(scope, receive, send, self.api.in_flight)
            if path is not None:
                return await refuse_websocket(receive, send)
        return await site_application(scope, receive, send)


leave_bodies_unparsed()
allow_websocket_denial_responses()
limit_websocket_messages(settings.GATEWAY_MAX_BODY_BYTES)
cut_off_slow_bodies(settings.GATEWAY_BODY_TIMEOUT_S)
application = Dispatcher()
# The request log's queued rows go to its writer as the stop begins, not after the drain:
# a process killed before it ends (a slow drain, a supervisor out of patience) loses none of them.
watch_for_shutdown(lambda: requestlog.queue.hand_over_now())
atexit.register(runtime.close_at_exit)
import llmgateway.api_urls  # noqa: E402,F401  (loaded now, so that it is part of the settled heap)

settle_heap()
