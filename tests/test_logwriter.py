"""The request-log writer process, fed by hand the way a gateway process feeds it."""
import os
import subprocess
import sys
import time

from django.conf import settings
from django.db import connection

from providers.adapters.base import Usage
from routing.requestlog import LogEntry, encode_batch
from routing.snapshot import Price


def start_writer() -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "routing.logwriter", "--database-name", str(connection.settings_dict["NAME"])],
        stdin=subprocess.PIPE, stderr=subprocess.PIPE, cwd=settings.BASE_DIR,
        env={**os.environ, "DJANGO_SETTINGS_MODULE": "llmgateway.settings"},
    )


def entry(request_id, **fields) -> LogEntry:
    return LogEntry(request_id=request_id, started_at=time.time(), endpoint="chat", status=200, **fields)


def logged(prefix):
    from routing.models import RequestLog

    return {row.request_id: row for row in RequestLog.objects.filter(request_id__startswith=prefix)}


def test_it_writes_what_it_is_handed_and_exits_when_its_input_ends(db_access):
    streamed = (b'data: {"choices":[{"index":0,"delta":{"content":"Hi there"}}]}\n\n'
                b'data: {"choices":[],"usage":{"prompt_tokens":9,"completion_tokens":2}}\n\n')
    writer = start_writer()
    writer.stdin.write(encode_batch([
        entry("req_lw_json", wire="openai_chat", price=Price(1.0, 2.0, 0.5),
              response=b'{"choices":[],"usage":{"prompt_tokens":1000,"completion_tokens":500}}'),
        entry("req_lw_stream", wire="openai_chat", stream=True, stream_events=[streamed]),
    ]))
    writer.stdin.write(encode_batch([entry("req_lw_known", usage=Usage(3, 4, 0), error_kind="x")]))
    writer.stdin.close()
    assert writer.wait(30) == 0, writer.stderr.read().decode()
    rows = logged("req_lw_")
    assert (rows["req_lw_json"].input_tokens, rows["req_lw_json"].output_tokens) == (1000, 500)
    assert float(rows["req_lw_json"].cost_usd) == 0.002  # 1000 × $1/M + 500 × $2/M
    assert (rows["req_lw_stream"].input_tokens, rows["req_lw_stream"].tokens_estimated) == (9, False)
    assert rows["req_lw_known"].output_tokens == 4


def test_without_usage_tokens_are_estimated_and_flagged(db_access):
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Count these words please"}]}
    writer = start_writer()
    writer.stdin.write(encode_batch([entry("req_lw_est", wire="openai_chat", upstream_model="gpt-4o-mini", body=body,
                                    response=b'{"choices":[{"message":{"content":"One two three"}}]}')]))
    writer.stdin.close()
    assert writer.wait(30) == 0
    row = logged("req_lw_est")["req_lw_est"]
    assert row.tokens_estimated and row.input_tokens > 4 and row.output_tokens == 3


def test_a_row_the_database_refuses_is_skipped_alone(db_access):
    refused = LogEntry(request_id="req_lw_bad", started_at=time.time(), endpoint="chat", status=-1)  # CHECK >= 0
    writer = start_writer()
    writer.stdin.write(encode_batch([entry("req_lw_ok_1"), refused, entry("req_lw_ok_2")]))
    writer.stdin.close()
    writer.wait(30)
    assert set(logged("req_lw_")) >= {"req_lw_ok_1", "req_lw_ok_2"}
    assert "req_lw_bad" not in logged("req_lw_")
    if connection.vendor == "postgresql":  # SQLite's INSERT OR IGNORE drops it without a word
        assert b"req_lw_bad could not be written" in writer.stderr.read()


def test_a_batch_cut_short_by_a_dying_gateway_loses_only_itself(db_access):
    writer = start_writer()
    writer.stdin.write(encode_batch([entry("req_lw_whole")]))
    writer.stdin.write(encode_batch([entry("req_lw_cut")])[:20])
    writer.stdin.close()
    writer.wait(30)
    assert set(logged("req_lw_whole")) == {"req_lw_whole"}
    assert b"cut short" in writer.stderr.read()


def test_text_the_database_cannot_store_is_sanitised_and_flagged_not_lost(db_access):
    """A lone surrogate (an escaped "\\ud800" in a client's JSON) or a NUL once crashed the
    writer and lost every later row."""
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "bad \ud800 text \x00 here"}]}
    writer = start_writer()
    writer.stdin.write(encode_batch([
        entry("req_lw_surrogate", wire="openai_chat", body=body, log_bodies=True,
              error_message="echoed \udfff", response=b'{"choices":[]}'),
        entry("req_lw_after"),
    ]))
    writer.stdin.write(encode_batch([entry("req_lw_later")]))
    writer.stdin.close()
    assert writer.wait(30) == 0, writer.stderr.read().decode()
    rows = logged("req_lw_")
    assert {"req_lw_surrogate", "req_lw_after", "req_lw_later"} <= set(rows)
    row = rows["req_lw_surrogate"]
    assert row.sanitized and "bad" in row.request_body and "\x00" not in row.request_body
    assert not rows["req_lw_after"].sanitized


def test_rows_handed_to_a_writer_that_dies_reach_the_next_writer(db_access):
    """The gateway keeps what it handed over until the writer reports it written."""
    import signal

    from routing.requestlog import RequestLogQueue

    queue = RequestLogQueue(max_size=1000)
    queue._sender = object()  # hand over by hand below, not from a thread
    for i in range(5):
        queue.record(entry(f"req_lw_dies_{i}"))
    queue._writer_pipe()  # start a writer, then stop it before it can write anything
    os.kill(queue._writer.pid, signal.SIGSTOP)
    queue._hand_over()
    assert len(queue.unacked) == 5
    os.kill(queue._writer.pid, signal.SIGKILL)
    queue._writer.wait(5)
    queue._read_acks()  # notices the dead writer: the five go back in the queue
    assert len(queue.entries) == 5 and not queue.unacked
    queue._hand_over()  # to a new writer
    queue._sender = None
    queue._start_sender()
    queue.close()
    assert set(logged("req_lw_dies_")) == {f"req_lw_dies_{i}" for i in range(5)}
