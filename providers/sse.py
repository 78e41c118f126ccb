"""Server-sent events: splitting a byte stream into whole events, reading and writing them."""
import json


class EventSplitter:
    """Cuts arriving bytes into complete SSE events, each returned with its closing blank line."""

    __slots__ = ("_buffer",)

    def __init__(self):
        self._buffer = b""

    def feed(self, chunk: bytes) -> list[bytes]:
        """The events completed by `chunk`."""
        return split_events(self.feed_block(chunk))

    def feed_block(self, chunk: bytes) -> bytes:
        """The events completed by `chunk`, as one block of bytes (b"" if none)."""
        buffer = self._buffer + chunk if self._buffer else chunk
        if b"\r" in buffer:  # CRLF streams; a pair split across chunks meets again here
            buffer = buffer.replace(b"\r\n", b"\n")
        end = buffer.rfind(b"\n\n")
        if end < 0:
            self._buffer = buffer
            return b""
        self._buffer = buffer[end + 2:]
        return buffer[:end + 2]

    def pending(self) -> bytes:
        """Bytes of an event that has not been closed yet."""
        return self._buffer


def split_events(block: bytes) -> list[bytes]:
    """The events of a block of whole events, each with its closing blank line."""
    return [event + b"\n\n" for event in block.split(b"\n\n") if event.strip()]


def block_data(block: bytes) -> list[bytes | None]:
    """The data of each event of a block of whole events (None for a comment or data-less
    event), without copying each event first: a translating relay reads every event."""
    out = []
    for event in block.split(b"\n\n"):
        if event.startswith(b"data: ") and b"\n" not in event:  # the common single-line case
            out.append(event[6:])
        elif event.strip():
            out.append(event_data(event + b"\n\n"))
    return out


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
