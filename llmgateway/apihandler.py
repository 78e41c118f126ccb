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

Everything else is Django's: request objects, URL resolution, views, disconnect handling.
"""
import asyncio
import io

from django.core.exceptions import RequestAborted
from django.core.handlers.asgi import ASGIHandler, get_script_prefix
from django.core.handlers.exception import convert_exception_to_response
from django.urls import set_script_prefix


class ApiHandler(ASGIHandler):
    def load_middleware(self, is_async=False):
        self._view_middleware = []
        self._template_response_middleware = []
        self._exception_middleware = []
        get_response = self._get_response_async if is_async else self._get_response
        self._middleware_chain = convert_exception_to_response(get_response)

    async def __call__(self, scope, receive, send):
        await self.handle(scope, receive, send)

    async def read_body(self, receive):
        # llmgateway.bodylimit.BodyLimit has already gathered the body into one message.
        message = await receive()
        if message["type"] == "http.disconnect":
            raise RequestAborted()
        return io.BytesIO(message.get("body", b""))

    async def handle(self, scope, receive, send):
        try:
            body_file = await self.read_body(receive)
        except RequestAborted:
            return
        set_script_prefix(get_script_prefix(scope))
        request, error_response = self.create_request(scope, body_file)
        if request is None:
            await self.send_response(error_response, send)
            return

        async def process_request():
            response = await self.run_get_response(request)
            try:
                await self.send_response(response, send)
            except asyncio.CancelledError:
                pass  # the client left while the response was being sent
            return response

        # As in Django: a client disconnect cancels the view (and so the upstream call).
        listener = asyncio.create_task(self.listen_for_disconnect(receive))
        processor = asyncio.create_task(process_request())
        await asyncio.wait([listener, processor], return_when=asyncio.FIRST_COMPLETED)
        for task in (listener, processor):
            if task.done():
                try:
                    task.result()
                except RequestAborted:
                    pass
            else:
                task.cancel()
                try:
                    await task
                except asyncio.CancelledError:
                    pass
        if not processor.cancelled() and processor.exception() is None:
            processor.result().close()
