"""Request logs: recorded on the hot path into a bounded in-memory queue, written in batches.

`record()` only appends to a deque. A background task writes batches from a worker
thread; token estimates, usage parsing and costs are computed there too, off the
request path. On a database error the batch goes back to the queue and is retried. At
exit (a graceful SIGTERM included) everything still queued is written. Past the bound
new rows are dropped, counted, and reported in the log.
"""
import asyncio
import atexit
import json
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass
from datetime import datetime, timezone
from decimal import Decimal

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import close_old_connections

from providers import tokens
from providers.adapters.base import Usage

from .snapshot import Price

log = logging.getLogger(__name__)

BATCH_SIZE = 500


@dataclass(slots=True)
class LogEntry:
    """One request as the hot path saw it; turned into a RequestLog row by the writer."""

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
    usage: Usage | None = None
    # Filled instead of `usage` when it must be worked out later, off the hot path:
    usage_from: tuple | None = None  # (adapter, response bytes)
    estimate_from: tuple | None = None  # (request body, function returning the output text)
    price: Price | None = None
    error_kind: str = ""
    error_message: str = ""
    request_body: str = ""
    response_body: str = ""


class RequestLogQueue:
    def __init__(self, max_size: int):
        self.entries: deque[LogEntry] = deque()
        self.max_size = max_size
        self.dropped = 0
        self._last_drop_report = 0.0
        self._writer: asyncio.Task | None = None
        self._lock = threading.Lock()  # one writer at a time: the task, or the exit flush

    def record(self, entry: LogEntry) -> None:
        if len(self.entries) >= self.max_size:
            self.dropped += 1
            now = time.monotonic()
            if now - self._last_drop_report > 10:
                self._last_drop_report = now
                log.error("request log queue full (%d rows): %d rows dropped so far", self.max_size, self.dropped)
            return
        self.entries.append(entry)
        if self._writer is None:
            try:
                self._writer = asyncio.get_running_loop().create_task(self._write_forever(), name="requestlog-writer")
            except RuntimeError:  # no loop (a management command): write on the spot
                self.flush()

    async def _write_forever(self):
        every = settings.GATEWAY_LOG_FLUSH_S
        backoff = every
        while True:
            await asyncio.sleep(backoff)
            if not self.entries:
                continue
            try:
                await sync_to_async(self._flush_in_thread, thread_sensitive=False)()
                backoff = every
            except Exception as exc:
                backoff = min(backoff * 2, 10.0)
                log.warning("request log write failed (%s); %d rows kept, retrying in %.1fs",
                            type(exc).__name__, len(self.entries), backoff)

    def _flush_in_thread(self):
        close_old_connections()
        self.flush()

    def flush(self) -> int:
        """Write everything queued now; raises (keeping the rows) if the database fails."""
        written = 0
        with self._lock:
            while self.entries:
                batch = [self.entries.popleft() for _ in range(min(BATCH_SIZE, len(self.entries)))]
                try:
                    _write(batch)
                except Exception:
                    self.entries.extendleft(reversed(batch))
                    raise
                written += len(batch)
        return written


def _write(batch: list[LogEntry]) -> None:
    from .models import RequestLog

    RequestLog.objects.bulk_create([_row(e) for e in batch], ignore_conflicts=True)


def _row(e: LogEntry):
    from .models import RequestLog

    usage, estimated = _resolve_usage(e)
    cost = None
    if e.price is not None and usage is not None:
        cost = Decimal(repr(round(e.price.cost(usage.input_tokens, usage.output_tokens, usage.cached_tokens), 8)))
    return RequestLog(
        request_id=e.request_id,
        created_at=datetime.fromtimestamp(e.started_at, tz=timezone.utc),
        endpoint=e.endpoint,
        virtual_key_id=e.virtual_key_id,
        model_requested=e.model_requested[:200],
        route=e.route,
        provider=e.provider,
        upstream_model=e.upstream_model,
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
        error_message=e.error_message[:2000],
        request_body=e.request_body,
        response_body=e.response_body,
    )


def _resolve_usage(e: LogEntry) -> tuple[Usage | None, bool]:
    usage = e.usage
    if usage is None and e.usage_from is not None:
        adapter, content = e.usage_from
        usage = adapter.usage_from_response(content)
    if usage is None and e.estimate_from is not None:
        body, output_text = e.estimate_from
        model = e.upstream_model or e.model_requested
        return Usage(
            input_tokens=tokens.count_prompt_tokens(body, model),
            output_tokens=tokens.count_completion_tokens(output_text(), model),
        ), True
    return usage, False


def _round(value):
    return round(value, 2) if value is not None else None


def truncated_json(value, limit: int) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= limit else text[:limit] + "…[truncated]"


queue = RequestLogQueue(settings.GATEWAY_LOG_QUEUE_MAX)


@atexit.register
def _flush_at_exit():
    if not queue.entries:
        return
    try:
        count = queue.flush()
        log.info("request log: wrote %d queued rows at exit", count)
    except Exception:
        log.exception("request log: %d rows could not be written at exit", len(queue.entries))
