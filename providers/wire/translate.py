"""Translation between wire formats through the hub: requests, answers and streams. Pure."""
from .. import hub
from . import codec


def translate_request(body, src: str, dst: str, model: str) -> tuple[dict, list[tuple[str, str]]]:
    """The `src` request `body` as a `dst` request for `model`, and what could not be carried
    as (field, reason) pairs. Raises InvalidField when dropping would change the meaning."""
    req = codec(src).read_request(body)
    out = codec(dst).write_request(req, model)
    return out, req.diagnostics


def translate_answer(body, src: str, dst: str, model: str) -> dict:
    """A whole (non-streamed) `src` answer as the `dst` client expects it."""
    return codec(dst).write_answer(codec(src).read_answer(body), model)


class StreamTranslator:
    """Upstream stream bytes in one format, client stream bytes in another. Pure: the relay
    feeds it what arrives and sends on what it returns, at once.

    `usage` is the last usage seen (hub.Usage), `error` the message of an upstream error or
    failure, `finished` whether the upstream finished properly."""

    def __init__(self, src: str, dst: str, model: str):
        self.reader = codec(src).StreamReader()
        self.writer = codec(dst).StreamWriter(model)
        self.usage: hub.Usage | None = None
        self.error: str | None = None
        self.finished = False

    def feed(self, data: bytes) -> bytes:
        return self._write(self.reader.feed(data))

    def finish(self) -> bytes:
        """At the end of the upstream stream: what is owed to the client. A stream that ended
        without its proper finish ends with an error event in the client's protocol."""
        out = self._write(self.reader.close())
        if not self.finished and self.error is None:
            out += self.fail("The upstream stream ended before the answer was complete.")
        return out

    def fail(self, message: str, type: str = "upstream_error") -> bytes:
        """A failure mid-stream (timeout, connection lost) in the client's protocol."""
        if self.error is None:
            self.error = message
        return self.writer.write(hub.Error(type, message))

    def _write(self, events: list) -> bytes:
        out = []
        for event in events:
            if isinstance(event, (hub.Start, hub.Finish)) and event.usage:
                self.usage = hub.merge_usage(self.usage, event.usage)
            if isinstance(event, hub.Finish):
                self.finished = True
            elif isinstance(event, hub.Error) and self.error is None:
                self.error = event.message
            out.append(self.writer.write(event))
        return b"".join(out)
