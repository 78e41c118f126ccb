"""What the request log hands from a gateway process to its writer: the entries and how
they travel down the pipe. Django-free, so that the writer process need not load Django's
app registry to read them (routing/logwriter.py)."""
from __future__ import annotations

import operator
import pickle
import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from providers.adapters.base import Usage

BATCH_SIZE = 500
_FRAME_HEADER = struct.Struct(">I")


@dataclass(frozen=True, slots=True)
class Price:
    """Dollars per million tokens."""

    input: float
    output: float
    cached_input: float

    def cost(self, input_tokens: int, output_tokens: int, cached_tokens: int = 0) -> float:
        uncached = max(input_tokens - cached_tokens, 0)
        return (uncached * self.input + cached_tokens * self.cached_input + output_tokens * self.output) / 1e6


@dataclass(slots=True)
class LogEntry:
    """One request as the hot path saw it; the writer process turns it into a RequestLog row."""

    request_id: str
    started_at: float  # epoch seconds
    endpoint: str
    client_ip: str | None = None
    virtual_key_id: int | None = None
    model_requested: str = ""
    route: str = ""
    provider: str = ""
    upstream_model: str = ""
    stream: bool = False
    status: int = 0
    latency_ms: float | None = None
    ttfb_ms: float | None = None
    overhead_ms: float | None = None
    attempts: int = 0
    price: Price | None = None
    error_kind: str = ""
    error_message: str = ""
    # What the writer works usage and logged bodies out from, in its own process:
    usage: Usage | None = None  # when already known (else read from the answer by the writer)
    wire: str = ""  # the wire format (providers.wire.CODECS key) of `response` and `stream_events`
    response: bytes | None = None  # a non-streamed answer, as the upstream sent it
    stream_events: list[bytes] | None = None  # a stream's content events (raw SSE)
    body: dict | None = None  # the request as it went upstream, for estimates and logged bodies
    log_bodies: bool = False  # the key's setting: store request and response text
    diagnostics: list[str] | None = None  # what translation dropped (field: reason)
    note: str = ""  # what routing or accounting decided worth knowing (a session moved, an unpriced model)

    def __reduce__(self):
        # Pickled as a plain tuple: the dataclass default looks its fields up for every entry.
        return LogEntry, _entry_values(self)


_entry_values = operator.attrgetter(*LogEntry.__slots__)


@dataclass(slots=True)
class RefusalCount:
    """Requests refused before their key was known, of one client IP, reason and endpoint in
    one minute, as one process counted them in one flush window. The writer adds it to the
    minute's RefusedTraffic row."""

    minute: int  # epoch minute
    client_ip: str
    reason: str
    endpoint: str
    count: int
    first_seen: float  # epoch seconds
    last_seen: float

    def __reduce__(self):
        return RefusalCount, _refusal_values(self)


_refusal_values = operator.attrgetter(*RefusalCount.__slots__)


def encode_batch(batch: list[LogEntry]) -> bytes:
    """A batch as it goes down the pipe: its length, then the pickled entries."""
    payload = pickle.dumps(batch, protocol=pickle.HIGHEST_PROTOCOL)
    return _FRAME_HEADER.pack(len(payload)) + payload


def read_batch(stream) -> list[LogEntry] | None:
    """The next batch handed over on `stream` (an unbuffered binary file), None at its end."""
    header = _read_exactly(stream, _FRAME_HEADER.size)
    if header is None:
        return None
    (size,) = _FRAME_HEADER.unpack(header)
    payload = _read_exactly(stream, size)
    if payload is None:
        raise EOFError("request log batch cut short")
    return pickle.loads(payload)


def _read_exactly(stream, size: int) -> bytes | None:
    chunks, missing = [], size
    while missing:
        chunk = stream.read(missing)
        if not chunk:
            if missing == size:
                return None
            raise EOFError("request log batch cut short")
        chunks.append(chunk)
        missing -= len(chunk)
    return b"".join(chunks)
