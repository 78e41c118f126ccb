"""The request record: one client request as it passes through the gateway, and its one owner.

Every /v1 request gets a record when it arrives. Exactly one terminal state is written for
it (`end`), whatever happens: an answer, an error, a client that leaves, an exception of any
type. The API handler calls `abandon` when it is done with a request, which ends a record
nobody ended (the client left) and closes an upstream response nobody closed. This is also
the place where a budget reservation is settled or released (see `end`).
"""
import asyncio
import logging
import os
import time

from keys.auth import KeyEntry
from llmgateway.errors import GatewayError

from . import requestlog
from .requestlog import LogEntry

log = logging.getLogger(__name__)


class RequestRecord:
    __slots__ = ("log", "started", "key", "upstream_s", "upstream", "ended", "admission", "reports", "_finisher",
                 "__weakref__")

    def __init__(self, entry: LogEntry, started: float):
        self.log = entry
        self.started = started  # perf_counter
        self.key: KeyEntry | None = None
        self.upstream_s = 0.0  # time spent waiting on upstreams
        self.upstream = None  # the open upstream response, closed by whoever ends the record
        self.ended = False
        self.admission = None  # keys.limits.Admission of a key with limits: settled or released in end()
        self.reports = []  # Redis calls reporting the attempt's success, sent with the settlement
        self._finisher = None

    @classmethod
    def begin(cls, endpoint: str, client_ip: str | None = None) -> "RequestRecord":
        entry = LogEntry(request_id=f"req_{os.urandom(16).hex()}", started_at=time.time(), endpoint=endpoint,
                         client_ip=client_ip or None)
        return cls(entry, time.perf_counter())

    @property
    def request_id(self) -> str:
        return self.log.request_id

    def elapsed_ms(self) -> float:
        return (time.perf_counter() - self.started) * 1000

    def overhead_ms(self) -> float:
        return max(self.elapsed_ms() - self.upstream_s * 1000, 0.0)

    def end(self, status: int | None = None, error: GatewayError | None = None) -> None:
        """Write the request's terminal state, once. A second call is a bug: logged, ignored."""
        if self.ended:
            log.debug("request %s ended twice; the second end ignored", self.request_id)
            return
        self.ended = True
        entry = self.log
        if error is not None:
            entry.status = error.status
            entry.error_kind = error.kind
            entry.error_message = error.log_message or error.message
        elif status is not None:
            entry.status = status
        entry.latency_ms = self.elapsed_ms()
        if entry.overhead_ms is None:
            entry.overhead_ms = self.overhead_ms()
        entry.log_bodies = self.key is not None and self.key.log_bodies
        if self.admission is not None or self.reports:
            self._finish_admission(entry)
        requestlog.queue.record(entry)

    def _finish_admission(self, entry: LogEntry) -> None:
        """Settle the key's reservation to what was delivered (an answer, or a stream even if cut
        short: billed for what the client got), or release it (nothing delivered: a failure,
        a rejection, a client gone before the first byte); with the attempt's success reports,
        in one round trip. Off the hot path: a background task."""
        from .admission import finish

        admission, self.admission = self.admission, None
        delivered = entry.ttfb_ms is not None and (entry.stream or 200 <= (entry.status or 0) < 300)
        if (admission is not None and delivered and entry.price is None and admission.track_budget
                and "unpriced" not in entry.note):
            entry.note = f"{entry.note}; unpriced model" if entry.note else "unpriced model"
        # The task reads self.reports when it starts: a report added in the same step as a
        # non-streamed answer ends the record (right after end()) still goes with it.
        self._finisher = _spawn(finish, admission, self.reports, entry, delivered, self.request_id)

    def add_report(self, call) -> None:
        """A Redis call to send when the request is over (the attempt's success report)."""
        self.reports.append(call)
        if self.ended and self._finisher is None:
            # Nothing to settle (the record ended without an admission): the report joins the
            # next shared round trip, without a task of its own.
            from llmgateway import runtime

            from .admission import send_later

            try:
                send_later(runtime.current().redis, self.reports)
                self._finisher = True
            except RuntimeError:  # no running loop: the report is lost, nothing else is
                log.warning("request %s ended outside an event loop; its routing report is dropped",
                            self.request_id)

    def fail(self, error: GatewayError) -> None:
        self.end(error=error)

    def refuse(self, error: GatewayError) -> None:
        """End a request refused before its key was known: counted per client IP, reason,
        endpoint and minute (a RefusedTraffic row), never a request-log row of its own, so
        that junk traffic at any rate adds a handful of rows a minute."""
        if self.ended:
            return
        self.ended = True
        entry = self.log
        requestlog.queue.count_refusal(entry.client_ip or "", (error.log_message or error.kind)[:60], entry.endpoint,
                                       entry.started_at)

    async def abandon(self) -> None:
        """The handler is done with the request: close what is open, end what is not ended."""
        upstream, self.upstream = self.upstream, None
        if upstream is not None:
            await close_quietly(upstream)
        if not self.ended:
            self.end(error=GatewayError("Client closed the connection before the answer was complete.",
                                        status=499, kind="client_disconnected"))


_pending: set = set()  # settlements running after their request ended


def _spawn(finish, admission, reports, entry, delivered, request_id):
    from llmgateway import runtime

    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:  # no loop (a synchronous caller): a reservation expires by its TTL
        log.warning("request %s ended outside an event loop; its reservation expires by its TTL", request_id)
        return False
    task = loop.create_task(finish(admission, reports, entry, delivered, runtime.current().redis))
    _pending.add(task)
    task.add_done_callback(_pending.discard)
    return task


async def close_quietly(response) -> None:
    try:
        await response.aclose()
    except Exception:  # closing a broken connection may fail again; nothing to add
        pass
