"""Request logs: recorded on the hot path, written to the database by a separate process.

The gateway process only appends each request's LogEntry to a bounded in-memory queue.
A sender thread hands the queue over, in pickled batches, to a writer process of its own
(routing/logwriter.py, started on first use). The writer works out usage, token estimates,
costs and logged bodies and writes the rows in batches. None of that runs in the gateway
process, so none of it competes with the event loop for the GIL (in the same process it
cost a fifth of the throughput).

Nothing is lost on a graceful stop: at exit the sender hands over everything queued and
the writer, once its input ends, writes it all before exiting. A slow or locked database
delays rows: the writer keeps them and retries; if it falls far behind it stops reading,
the pipe fills, and the gateway's own queue holds the rest up to GATEWAY_LOG_QUEUE_MAX.
Past that, new rows are dropped, counted and reported.
"""
import atexit
import json
import logging
import operator
import os
import pickle
import select
import struct
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass
from datetime import datetime, timezone
from decimal import Decimal

from django.conf import settings
from django.db import connections

from providers import tokens
from providers.adapters.base import Usage
from providers.wire import CODECS

from .snapshot import Price

log = logging.getLogger(__name__)

BATCH_SIZE = 500
WRITER_EXIT_WAIT_S = 60  # at exit, how long the gateway waits for its writer to finish
_FRAME_HEADER = struct.Struct(">I")


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


class RequestLogQueue:
    """The gateway side: a bounded queue, and a thread that feeds the writer process."""

    def __init__(self, max_size: int):
        self.entries: deque[LogEntry] = deque()
        self.max_size = max_size
        self.dropped = 0
        self._last_drop_report = 0.0
        self._sender: threading.Thread | None = None
        self._wake = threading.Event()
        self._stopping = False
        self._writer: subprocess.Popen | None = None
        # Handed to the writer but not yet reported written: sent again to a new writer if
        # this one dies before writing them.
        self.unacked: deque[LogEntry] = deque()
        self._acks = b""
        # Refusals counted since the last hand-over, by (minute, ip, reason, endpoint). They
        # share the queue's bound: a spray from many addresses cannot grow it without end.
        self.refusals: dict[tuple, RefusalCount] = {}
        self._refusals_lock = threading.Lock()  # taken on the event loop and by the sender

    def record(self, entry: LogEntry) -> None:
        if len(self.entries) >= self.max_size:
            self.dropped += 1
            now = time.monotonic()
            if now - self._last_drop_report > 10:
                self._last_drop_report = now
                log.error("request log queue full (%d rows): %d rows dropped so far", self.max_size, self.dropped)
            return
        self.entries.append(entry)
        if self._sender is None:
            self._start_sender()

    def count_refusal(self, client_ip: str, reason: str, endpoint: str, at: float) -> None:
        """Count a request refused before its key was known (see RequestRecord.refuse)."""
        minute = int(at // 60)
        key = (minute, client_ip, reason, endpoint)
        with self._refusals_lock:
            counted = self.refusals.get(key)
            if counted is not None:
                counted.count += 1
                counted.last_seen = at
                return
            if len(self.refusals) + len(self.entries) >= self.max_size:
                self.dropped += 1
                return
            self.refusals[key] = RefusalCount(minute, client_ip, reason, endpoint, 1, at, at)
        if self._sender is None:
            self._start_sender()

    def _take_refusals(self) -> None:
        """Move what was counted in this flush window into the queue, one item per key."""
        if self.refusals:
            with self._refusals_lock:
                counted, self.refusals = self.refusals, {}
            self.entries.extend(counted.values())

    def _start_sender(self) -> None:
        self._sender = threading.Thread(target=self._send_forever, name="requestlog-sender", daemon=True)
        self._sender.start()

    def _send_forever(self) -> None:
        backoff = 0.0
        while True:
            self._wake.wait(max(settings.GATEWAY_LOG_FLUSH_S, backoff))
            stopping = self._stopping
            try:
                self._hand_over()
                backoff = 0.0
            except OSError as exc:  # the writer died: the next round starts another
                backoff = min(max(backoff * 2, 0.5), 10.0)
                log.warning("request log writer unavailable (%s); %d rows kept, retrying in %.1fs",
                            type(exc).__name__, len(self.entries), backoff)
            if stopping:
                return

    def _hand_over(self) -> None:
        """Send everything queued to the writer (blocks while the writer is behind)."""
        self._read_acks()
        self._take_refusals()
        while self.entries:
            batch = [self.entries.popleft() for _ in range(min(BATCH_SIZE, len(self.entries)))]
            try:
                pipe = self._writer_pipe()
                pipe.write(encode_batch(batch))
                pipe.flush()
            except OSError:
                self.entries.extendleft(reversed(batch))
                self._writer_died()
                raise
            self.unacked.extend(batch)
            self._read_acks()

    def _read_acks(self) -> None:
        """Forget the entries the writer reports written (it acknowledges counts, in order)."""
        writer = self._writer
        if writer is None:
            return
        fd = writer.stdout.fileno()
        while select.select([fd], [], [], 0)[0]:
            data = os.read(fd, 4096)
            if not data:
                break
            self._acks += data
        while len(self._acks) >= _FRAME_HEADER.size:
            (count,) = _FRAME_HEADER.unpack(self._acks[:_FRAME_HEADER.size])
            self._acks = self._acks[_FRAME_HEADER.size:]
            for _ in range(min(count, len(self.unacked))):
                self.unacked.popleft()
        if writer.poll() is not None:
            self._writer_died()

    def _writer_died(self) -> None:
        """What the dead writer had not written goes back to the front of the queue."""
        if self.unacked:
            log.error("request log writer died; handing %d unwritten rows to a new one", len(self.unacked))
            self.entries.extendleft(reversed(self.unacked))
            self.unacked.clear()
        self._acks = b""
        self._writer = None

    def _writer_pipe(self):
        if self._writer is None or self._writer.poll() is not None:
            # Its own session: a Ctrl-C or a signal to the gateway's process group must not
            # stop it before it has written what the gateway hands over on the way out.
            self._writer = subprocess.Popen(
                [sys.executable, "-m", "routing.logwriter", "--ack",
                 "--database-name", str(connections["default"].settings_dict["NAME"])],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=settings.BASE_DIR, start_new_session=True,
                env={**os.environ, "DJANGO_SETTINGS_MODULE": os.environ.get("DJANGO_SETTINGS_MODULE",
                                                                              "llmgateway.settings")},
            )
        return self._writer.stdin

    def close(self) -> None:
        """Hand everything over and wait for the writer to write it (at exit)."""
        if self._sender is None:
            return
        self._stopping = True
        self._wake.set()
        self._sender.join(WRITER_EXIT_WAIT_S)
        if self.entries:
            log.error("request log: %d rows could not be handed to the writer at exit", len(self.entries))
        writer = self._writer
        if writer is None:
            return
        try:
            writer.stdin.close()
        except OSError:
            pass
        try:
            writer.wait(WRITER_EXIT_WAIT_S)
        except subprocess.TimeoutExpired:
            log.error("request log writer still busy after %d s; leaving it to finish", WRITER_EXIT_WAIT_S)


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


def write_rows(batch: list) -> None:
    """Write a batch of LogEntry (a row each) and RefusalCount (added to its minute's row),
    all or nothing: a batch that fails is written again, and only request-log rows are
    idempotent (by request id)."""
    from django.db import transaction

    from .models import RequestLog

    entries = [e for e in batch if type(e) is LogEntry]
    refusals = [e for e in batch if type(e) is RefusalCount]
    if not refusals:
        RequestLog.objects.bulk_create([_row(e) for e in entries], ignore_conflicts=True)
        return
    with transaction.atomic():
        if entries:
            RequestLog.objects.bulk_create([_row(e) for e in entries], ignore_conflicts=True)
        add_refusals(refusals)


def add_refusals(refusals: list[RefusalCount]) -> None:
    """Add the counts to their RefusedTraffic rows (one per minute, IP, reason and endpoint),
    in one upsert per distinct row: several writers (one per web process) may add to the
    same row at once, and the database does the adding."""
    from django.db import connection

    from .models import RefusedTraffic

    merged: dict[tuple, RefusalCount] = {}
    for r in refusals:
        key = (r.minute, r.client_ip, r.reason, r.endpoint)
        known = merged.get(key)
        if known is None:
            merged[key] = RefusalCount(*_refusal_values(r))
        else:
            known.count += r.count
            known.first_seen = min(known.first_seen, r.first_seen)
            known.last_seen = max(known.last_seen, r.last_seen)
    table = connection.ops.quote_name(RefusedTraffic._meta.db_table)
    sql = (
        f"INSERT INTO {table} (minute, client_ip, reason, endpoint, count, first_seen, last_seen)"
        " VALUES (%s, %s, %s, %s, %s, %s, %s)"
        " ON CONFLICT (minute, client_ip, reason, endpoint) DO UPDATE SET"
        f" count = {table}.count + excluded.count,"
        f" first_seen = CASE WHEN excluded.first_seen < {table}.first_seen"
        f" THEN excluded.first_seen ELSE {table}.first_seen END,"
        f" last_seen = CASE WHEN excluded.last_seen > {table}.last_seen"
        f" THEN excluded.last_seen ELSE {table}.last_seen END"
    )
    adapt = connection.ops.adapt_datetimefield_value
    with connection.cursor() as cursor:
        cursor.executemany(sql, [
            (adapt(_at(r.minute * 60)), _clean(r.client_ip)[0][:64], _clean(r.reason)[0][:60],
             _clean(r.endpoint)[0][:40], r.count, adapt(_at(r.first_seen)), adapt(_at(r.last_seen)))
            for r in merged.values()])


def _at(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, tz=timezone.utc)


def write_minimal_row(e: LogEntry) -> None:
    """The row of an entry whose full row cannot be stored: what happened, without bodies."""
    from .models import RequestLog

    RequestLog.objects.bulk_create([RequestLog(
        request_id=e.request_id, created_at=datetime.fromtimestamp(e.started_at, tz=timezone.utc),
        endpoint=_clean(e.endpoint)[0][:40], status=e.status, attempts=e.attempts, stream=e.stream,
        virtual_key_id=e.virtual_key_id, error_kind=_clean(e.error_kind)[0][:40], sanitized=True,
        error_message="This row could not be stored in full; its bodies and details were dropped.",
    )], ignore_conflicts=True)


def _clean(text: str) -> tuple[str, bool]:
    """Text any database can store: no lone surrogates (an escaped "\\ud800" in a client's
    JSON), no NUL characters (PostgreSQL refuses them). Returns the text and whether it changed."""
    changed = False
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            text = text.encode("utf-8", "replace").decode("utf-8")
            changed = True
    if "\x00" in text:
        text = text.replace("\x00", "\ufffd")
        changed = True
    return text, changed


def _row(e: LogEntry):
    from .models import RequestLog

    usage, estimated = _resolve_usage(e)
    texts = [_clean(value) for value in (
        *_logged_bodies(e), e.error_message[:2000], e.model_requested[:200], e.route, e.provider, e.upstream_model)]
    request_body, response_body, error_message, model_requested, route, provider, upstream_model = (
        text for text, _ in texts)
    cost = None
    if e.price is not None and usage is not None:
        cost = Decimal(repr(round(e.price.cost(usage.input_tokens, usage.output_tokens, usage.cached_tokens), 8)))
    return RequestLog(
        request_id=e.request_id,
        created_at=datetime.fromtimestamp(e.started_at, tz=timezone.utc),
        endpoint=e.endpoint,
        virtual_key_id=e.virtual_key_id,
        model_requested=model_requested,
        route=route,
        provider=provider,
        upstream_model=upstream_model,
        stream=e.stream,
        status=e.status,
        latency_ms=_round(e.latency_ms),
        ttfb_ms=_round(e.ttfb_ms),
        overhead_ms=_round(e.overhead_ms),
        attempts=e.attempts,
        input_tokens=usage.input_tokens if usage else 0,
        output_tokens=usage.output_tokens if usage else 0,
        cached_tokens=usage.cached_tokens if usage else 0,
        tokens_estimated=estimated,
        cost_usd=cost,
        client_ip=e.client_ip,
        error_kind=e.error_kind,
        error_message=error_message,
        request_body=request_body,
        response_body=response_body,
        sanitized=any(changed for _, changed in texts),
        diagnostics=_clean("\n".join(e.diagnostics))[0][:4000] if e.diagnostics else "",
        note=e.note[:200],
    )


def _resolve_usage(e: LogEntry) -> tuple[Usage | None, bool]:
    """The upstream's usage, else a tiktoken estimate (flagged), else None."""
    if e.usage is not None:
        return e.usage, False
    codec = CODECS.get(e.wire)
    if codec is None:
        return None, False
    if e.response is not None:
        usage = codec.usage_from_answer(e.response)
    elif e.stream_events is not None:
        usage = codec.usage_from_events(e.stream_events)
    else:
        usage = None
    if usage is not None:
        return usage, False
    if e.body is None or (e.response is None and e.stream_events is None):
        return None, False
    model = e.upstream_model or e.model_requested
    return Usage(
        input_tokens=tokens.count_prompt_tokens(e.body, model),
        output_tokens=tokens.count_completion_tokens(_output_text(e, codec), model),
    ), True


def _output_text(e: LogEntry, codec) -> str:
    if e.response is not None:
        return codec.text_from_answer(e.response)
    return codec.text_from_events(e.stream_events or [])


def _logged_bodies(e: LogEntry) -> tuple[str, str]:
    if not e.log_bodies:
        return "", ""
    limit = settings.GATEWAY_LOG_BODY_MAX_CHARS
    request = truncated_json(e.body, limit) if e.body is not None else ""
    if e.stream_events is not None and e.wire in CODECS:
        response = truncated_json(CODECS[e.wire].text_from_events(e.stream_events), limit)
    elif e.response is not None:
        response = truncated_json(e.response.decode("utf-8", "replace"), limit)
    else:
        response = ""
    return request, response


def _round(value):
    return round(value, 2) if value is not None else None


def truncated_json(value, limit: int) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= limit else text[:limit] + "…[truncated]"


queue = RequestLogQueue(settings.GATEWAY_LOG_QUEUE_MAX)
atexit.register(queue.close)
