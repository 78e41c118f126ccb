"""Request logs: recorded on the hot path, written to the database by a separate process.

The gateway process only appends each request's LogEntry to a bounded in-memory queue.
A sender thread hands the queue over, in pickled batches, to a writer process of its own
(routing/logwriter.py, started on first use). The writer works out usage, token estimates,
costs and logged bodies and writes the rows in batches. None of that runs in the gateway
process, so none of it competes with the event loop for the GIL (in the same process it
cost a fifth of the throughput).

Nothing is lost on a graceful stop: as the stop begins (before requests in flight drain)
the sender hands over everything queued, and at exit what ended meanwhile; the writer, once
its input ends, writes it all before exiting. The writer ignores SIGTERM and has a session of
its own, so a gateway killed after the hand-over (a slow drain, a supervisor out of
patience) loses none of the rows already handed over. A slow or locked database
delays rows: the writer keeps them and retries; if it falls far behind it stops reading,
the pipe fills, and the gateway's own queue holds the rest up to GATEWAY_LOG_QUEUE_MAX.
Past that, new rows are dropped, counted and reported.
"""
import atexit
import logging
import os
import select
import subprocess
import sys
import threading
import time
from collections import deque

from django.conf import settings
from django.db import connections

# The entries and their framing live in a Django-free module, the row writing in a
# model-free one, both for the writer process; importable from here as before.
from .logentries import (BATCH_SIZE, _FRAME_HEADER, LogEntry, Price, RefusalCount,  # noqa: F401
                         encode_batch, read_batch)
from .logrows import add_refusals, truncated_json, write_minimal_row, write_rows  # noqa: F401

log = logging.getLogger(__name__)

# At exit, how long the gateway waits for the last hand-over and its writer to finish, in all
# (docker-compose.yml's stop_grace_period and `serve` allow for GATEWAY_STOP_GRACE_S + this).
WRITER_EXIT_WAIT_S = 60


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
        # The writer starts with the first row rather than with the first hand-over: a stop is
        # then a write to a pipe, not an interpreter start and a database connection (seconds
        # on a loaded machine) before anything is safe.
        try:
            self._writer_pipe()
        except OSError:
            pass  # the first hand-over tries again
        backoff = 0.0
        while True:
            self._wake.wait(max(settings.GATEWAY_LOG_FLUSH_S, backoff))
            self._wake.clear()
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
                                                                              "llmgateway.settings"),
                     WRITER_SETTINGS_ENV: writer_settings()},
            )
        return self._writer.stdin

    def hand_over_now(self) -> None:
        """Hand what is queued to the writer now, without waiting for the next flush (a
        graceful stop begins: the rows are safe before requests in flight drain). Returns at once."""
        if self._sender is not None:
            self._wake.set()

    def close(self) -> None:
        """Hand everything over and wait for the writer to write it (at exit), WRITER_EXIT_WAIT_S
        at most in all."""
        if self._sender is None:
            return
        deadline = time.monotonic() + WRITER_EXIT_WAIT_S
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
            writer.wait(max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            log.error("request log writer still busy after %d s; leaving it to finish", WRITER_EXIT_WAIT_S)


# The settings the writer needs, handed down so that it need not import the settings module
# (and with it the Redis client and more: about 15 MB of the writer's 40; docs/performance.md).
WRITER_SETTINGS_ENV = "GATEWAY_LOG_WRITER_SETTINGS"


def writer_settings() -> str:
    import json

    return json.dumps({
        "DATABASES": {"default": connections["default"].settings_dict},
        "USE_TZ": settings.USE_TZ, "TIME_ZONE": settings.TIME_ZONE,
        "GATEWAY_LOG_QUEUE_MAX": settings.GATEWAY_LOG_QUEUE_MAX,
        "GATEWAY_LOG_BODY_MAX_CHARS": settings.GATEWAY_LOG_BODY_MAX_CHARS,
    }, default=str)


queue = RequestLogQueue(settings.GATEWAY_LOG_QUEUE_MAX)
atexit.register(queue.close)
