"""Stream relays other than OpenAI chat's own fast pass-through (openai_chat.StreamRelay).

Every relay is a pure object: fed the upstream's bytes, it returns the client's bytes.
They share one interface with openai_chat.StreamRelay, which the pipeline relies on:
`feed(bytes) -> bytes`, `close() -> bytes` (at the upstream's end), `fail(message) -> bytes`
(a failure mid-stream, in the client's protocol), and `started`, `finished`, `error`,
`usage` (hub.Usage, when the relay decoded it), `events_to_log(with_text)`.
"""
from .. import hub
from ..sse import EventSplitter
from . import CODECS
from .translate import StreamTranslator


class ObservingRelay:
    """Same format on both sides (e.g. Anthropic client, Anthropic upstream): the bytes go
    through as received, whole events at a time; the format's reader watches them for the
    end, errors and usage."""

    def __init__(self, fmt: str, secret: str | None = None):
        self.codec = CODECS[fmt]
        self.reader = self.codec.StreamReader()
        self._splitter = EventSplitter()
        self._secret = secret.encode() if secret else None
        self.started = False
        self.finished = False
        self.error: str | None = None
        self.usage: hub.Usage | None = None

    def feed(self, chunk: bytes) -> bytes:
        block = self._splitter.feed_block(chunk)
        if not block:
            return b""
        if self._secret is not None and self._secret in block:
            block = block.replace(self._secret, b"***")
        for event in self.reader.feed(block):
            self._observe(event)
        if not self.started:
            if not any(line.startswith(b"data:") for line in block.split(b"\n")):
                return b""  # comments and pings before the first event: the attempt may still fail over
            self.started = True
        return block

    def _observe(self, event) -> None:
        if isinstance(event, (hub.Start, hub.Finish)) and event.usage:
            self.usage = hub.merge_usage(self.usage, event.usage)
        if isinstance(event, hub.Finish):
            self.finished = True
        elif isinstance(event, hub.Error) and self.error is None:
            self.error = event.message

    def close(self) -> bytes:
        for event in self.reader.close():
            self._observe(event)
        return b""

    def fail(self, err) -> bytes:
        return self.codec.error_event(err.status, err.type, err.message, err.code, err.param)

    def events_to_log(self, with_text: bool) -> list[bytes] | None:
        return None


class TranslatingRelay:
    """Upstream format in, client format out, through the hub (translate.StreamTranslator)."""

    def __init__(self, src: str, dst: str, model: str, secret: str | None = None):
        self.translator = StreamTranslator(src, dst, model)
        self._secret = secret.encode() if secret else None
        self.started = False

    def feed(self, chunk: bytes) -> bytes:
        if self._secret is not None and self._secret in chunk:
            chunk = chunk.replace(self._secret, b"***")  # before decoding: never reaches a client
        out = self.translator.feed(chunk)
        if out:
            self.started = True
        return out

    def close(self) -> bytes:
        return self.translator.finish()

    def fail(self, err) -> bytes:
        return self.translator.fail(err.message, err.type)

    @property
    def finished(self) -> bool:
        return self.translator.finished

    @property
    def error(self) -> str | None:
        return self.translator.error

    @property
    def usage(self) -> hub.Usage | None:
        return self.translator.usage

    def events_to_log(self, with_text: bool) -> list[bytes] | None:
        return None
