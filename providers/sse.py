"""Server-sent events: splitting a byte stream into whole events, reading and writing them."""
import json


class EventSplitter:
    """Cuts arriving bytes into complete SSE events, each returned with its closing blank line."""

    __slots__ = ("_buffer",)

    def __init__(self):
        self._buffer = b""

    def feed(self, chunk: bytes) -> list[bytes]:
        buffer = self._buffer + chunk if self._buffer else chunk
        if b"\r" in buffer:  # CRLF streams; a pair split across chunks meets again here
            buffer = buffer.replace(b"\r\n", b"\n")
        if b"\n\n" not in buffer:
            self._buffer = buffer
            return []
        *events, self._buffer = buffer.split(b"\n\n")
        return [event + b"\n\n" for event in events if event.strip()]

    def pending(self) -> bytes:
        """Bytes of an event that has not been closed yet."""
        return self._buffer


def event_data(event: bytes) -> bytes | None:
    """The event's data (its `data:` lines joined), or None for a comment or data-less event."""
    if event.startswith(b"data: ") and event.count(b"\n") == 2:  # the common single-line case
        return event[6:-2]
    lines = [line[5:].removeprefix(b" ") for line in event.split(b"\n") if line.startswith(b"data:")]
    return b"\n".join(lines) if lines else None


def data_event(payload: dict) -> bytes:
    return b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"


def named_event(name: str, payload: dict) -> bytes:
    return f"event: {name}\n".encode() + data_event(payload)
