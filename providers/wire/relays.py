"""Stream relays other than OpenAI chat's own fast pass-through (openai_chat.StreamRelay).

Every relay is a pure object: fed the upstream's bytes, it returns the client's bytes.
They share one interface with openai_chat.StreamRelay, which the pipeline relies on:
`feed(bytes) -> bytes`, `close() -> bytes` (at the upstream's end), `fail(message) -> bytes`
(a failure mid-stream, in the client's protocol), and `started`, `finished`, `error`,
`usage` (hub.Usage, when the relay decoded it), `events_to_log(with_text)`.
"""
import json
import re

from .. import hub
from ..sse import EventSplitter
from . import CODECS, dumps
from .seals import seal_native
from .translate import StreamTranslator


# What shows that a stream event of a format may carry opaque reasoning (one C search a block).
_SEAL_MARKS = {"anthropic_messages": re.compile(rb'"signature|"redacted_thinking"'),
               "openai_responses": re.compile(rb'"encrypted_content"')}


class ObservingRelay:
    """Same format on both sides (e.g. Anthropic client, Anthropic upstream): the bytes go
    through as received, whole events at a time; the format's reader watches them for the
    end, errors and usage. Opaque reasoning is the exception: sealed with `sealed_by`, the
    upstream model, so that it only ever goes back to that model."""

    def __init__(self, fmt: str, secret: str | None = None, sealed_by: str | None = None):
        self.fmt = fmt
        self.sealed_by = sealed_by
        self._seal_marks = _SEAL_MARKS.get(fmt) if sealed_by else None
        self._seals_seen = False
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
        if self._seals_seen and self._seal_marks is not None and self._seal_marks.search(block):
            block = self._seal(block)
        if not self.started:
            if not any(line.startswith(b"data:") for line in block.split(b"\n")):
                return b""  # comments and pings before the first event: the attempt may still fail over
            self.started = True
        return block

    def _seal(self, block: bytes) -> bytes:
        """The block with the opaque reasoning of its events sealed with the upstream model
        (seals.py); the events without any go through as received."""
        events = []
        for event in block.split(b"\n\n"):
            if self._seal_marks.search(event):
                lines = event.split(b"\n")
                for n, line in enumerate(lines):
                    if line.startswith(b"data:"):
                        try:
                            payload = json.loads(line[5:])
                        except ValueError:
                            continue
                        if isinstance(payload, dict) and seal_native(payload, self.fmt, self.sealed_by):
                            lines[n] = b"data: " + dumps(payload).encode()
                event = b"\n".join(lines)
            events.append(event)
        return b"\n\n".join(events)

    def _observe(self, event) -> None:
        kind = type(event)
        if kind is hub.TextDelta:
            return
        if (kind is hub.Start or kind is hub.Finish) and event.usage:
            self.usage = hub.merge_usage(self.usage, event.usage)
        if kind is hub.Finish:
            self.finished = True
        elif kind is hub.Error and self.error is None:
            self.error = event.message
        elif kind is hub.SignatureDelta or (kind is hub.BlockStart and event.redacted):
            # the reader saw opaque reasoning: from now on blocks are searched for it (a text-only
            # stream never is; a later event, e.g. response.completed, may repeat it)
            self._seals_seen = True

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

    def __init__(self, src: str, dst: str, model: str, secret: str | None = None, custom_tools=frozenset(),
                 sealed_by: str | None = None):
        self.translator = StreamTranslator(src, dst, model, custom_tools=custom_tools, sealed_by=sealed_by)
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
