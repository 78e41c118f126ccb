"""Request-log rows and refusal counts, written with plain SQL through Django's database
layer: no models and no app registry, so the writer process (routing/logwriter.py) loads
a fraction of Django. The columns are RequestLog's and RefusedTraffic's
(tests/test_ops_memory.py checks they match the models)."""
import json
from datetime import datetime, timezone
from decimal import Decimal

from django.conf import settings
from django.db import connection, transaction

from providers import tokens
from providers.adapters.base import Usage
from providers.wire import CODECS

from .logentries import LogEntry, RefusalCount, _refusal_values

REQUEST_LOG_TABLE = "routing_requestlog"
REFUSED_TRAFFIC_TABLE = "routing_refusedtraffic"
REQUEST_LOG_COLUMNS = (
    "request_id", "created_at", "endpoint", "virtual_key_id", "model_requested", "route", "provider",
    "upstream_model", "stream", "status", "latency_ms", "ttfb_ms", "overhead_ms", "attempts", "input_tokens",
    "output_tokens", "cached_tokens", "tokens_estimated", "cost_usd", "client_ip", "error_kind", "error_message",
    "request_body", "response_body", "sanitized", "diagnostics", "note",
)
REFUSED_TRAFFIC_COLUMNS = ("minute", "client_ip", "reason", "endpoint", "count", "first_seen", "last_seen")


def write_rows(batch: list) -> None:
    """Write a batch of LogEntry (a row each; one already written is skipped, by request id)
    and RefusalCount (added to its minute's row), in one transaction: a batch that fails is
    written again whole, and only request-log rows are idempotent."""
    entries = [e for e in batch if type(e) is LogEntry]
    refusals = [e for e in batch if type(e) is RefusalCount]
    with transaction.atomic():
        if entries:
            _insert_request_logs([_row(e) for e in entries])
        if refusals:
            add_refusals(refusals)


def write_minimal_row(e: LogEntry) -> None:
    """The row of an entry whose full row cannot be stored: what happened, without bodies."""
    _insert_request_logs([_values(
        request_id=e.request_id, created_at=_at(e.started_at), endpoint=_clean(e.endpoint)[0][:40],
        status=e.status, attempts=e.attempts, stream=e.stream, virtual_key_id=e.virtual_key_id,
        error_kind=_clean(e.error_kind)[0][:40], sanitized=True,
        error_message="This row could not be stored in full; its bodies and details were dropped.",
    )])


_DEFAULTS = {"virtual_key_id": None, "model_requested": "", "route": "", "provider": "", "upstream_model": "",
             "stream": False, "latency_ms": None, "ttfb_ms": None, "overhead_ms": None, "attempts": 0,
             "input_tokens": 0, "output_tokens": 0, "cached_tokens": 0, "tokens_estimated": False,
             "cost_usd": None, "client_ip": None, "error_kind": "", "error_message": "", "request_body": "",
             "response_body": "", "sanitized": False, "diagnostics": "", "note": ""}


def _values(**row) -> tuple:
    """A request-log row as the database takes it, in REQUEST_LOG_COLUMNS order."""
    row = {**_DEFAULTS, **row}
    ops = connection.ops
    row["created_at"] = ops.adapt_datetimefield_value(row["created_at"])
    row["cost_usd"] = ops.adapt_decimalfield_value(row["cost_usd"], 14, 8)
    row["client_ip"] = ops.adapt_ipaddressfield_value(row["client_ip"])
    return tuple(row[column] for column in REQUEST_LOG_COLUMNS)


def _insert_request_logs(rows: list[tuple]) -> None:
    quote = connection.ops.quote_name
    sql = (f"INSERT INTO {quote(REQUEST_LOG_TABLE)} ({', '.join(quote(c) for c in REQUEST_LOG_COLUMNS)})"
           f" VALUES ({', '.join(['%s'] * len(REQUEST_LOG_COLUMNS))}) ON CONFLICT (request_id) DO NOTHING")
    with connection.cursor() as cursor:
        cursor.executemany(sql, rows)


def add_refusals(refusals: list[RefusalCount]) -> None:
    """Add the counts to their RefusedTraffic rows (one per minute, IP, reason and endpoint),
    in one upsert per distinct row: several writers (one per web process) may add to the
    same row at once, and the database does the adding."""
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
    quote = connection.ops.quote_name
    table = quote(REFUSED_TRAFFIC_TABLE)
    sql = (
        f"INSERT INTO {table} ({', '.join(quote(c) for c in REFUSED_TRAFFIC_COLUMNS)})"
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


def _row(e: LogEntry) -> tuple:
    usage, estimated = _resolve_usage(e)
    texts = [_clean(value) for value in (
        *_logged_bodies(e), e.error_message[:2000], e.model_requested[:200], e.route, e.provider, e.upstream_model)]
    request_body, response_body, error_message, model_requested, route, provider, upstream_model = (
        text for text, _ in texts)
    cost = None
    if e.price is not None and usage is not None:
        cost = Decimal(repr(round(e.price.cost(usage.input_tokens, usage.output_tokens, usage.cached_tokens), 8)))
    return _values(
        request_id=e.request_id,
        created_at=_at(e.started_at),
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
