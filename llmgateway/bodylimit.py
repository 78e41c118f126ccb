"""An ASGI guard on the size of API request bodies, counting the bytes actually received."""

TOO_LARGE = "gateway.body_too_large"


class BodyLimit:
    """Reads the whole request body up to `limit` bytes. Past it, the app gets an empty body
    and `scope[TOO_LARGE]`, and answers 413 in the client's protocol (see llmgateway/api.py)."""

    def __init__(self, app, limit):
        self.app = app
        self.limit = limit

    async def __call__(self, scope, receive, send):
        chunks, size = [], 0
        for name, value in scope["headers"]:
            if name == b"content-length" and (not value.isdigit() or int(value) > self.limit):
                size = self.limit + 1
        while size <= self.limit:
            message = await receive()
            if message["type"] != "http.request":  # disconnected before sending it all
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        if size > self.limit:
            scope = {**scope, TOO_LARGE: self.limit}
            chunks = []
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            # Afterwards the app listens for the client's disconnect.
            return await receive()

        await self.app(scope, replay, send)
