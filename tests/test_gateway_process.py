"""Process-level properties: no database on the hot path, config propagation, durable logs."""
import asyncio
import json
import signal
import sqlite3
import threading
import time

import httpx
import pytest
from django.db import connection
from django.db.backends import utils as db_utils


from .conftest import FULL_KEY, wait_for_model

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello"}]}
AUTH = {"Authorization": f"Bearer {FULL_KEY}"}


def test_the_hot_path_makes_no_database_query(live, db_access, monkeypatch):
    """Drive the ASGI app in this process and count every query any thread makes: none.
    The request log is written by a writer process of its own, on the same database."""
    from llmgateway.asgi import application
    from routing import requestlog
    from routing.models import RequestLog
    from llmgateway import runtime

    queries = []
    real_execute = db_utils.CursorWrapper.execute

    def counting_execute(self, sql, params=None):
        queries.append(sql)
        return real_execute(self, sql, params)

    queue = requestlog.RequestLogQueue(max_size=1000)
    monkeypatch.setattr(requestlog, "queue", queue)
    ids = []

    async def drive():
        async with runtime.opened():
            transport = httpx.ASGITransport(app=application, client=("127.0.0.1", 5000))
            async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
                await client.get("/v1/models", headers=AUTH)  # first request builds the snapshot
                monkeypatch.setattr(db_utils.CursorWrapper, "execute", counting_execute)
                for _ in range(5):
                    answered = await client.post("/v1/chat/completions", json=CHAT, headers=AUTH)
                    assert answered.status_code == 200
                    streamed = await client.post("/v1/chat/completions", json={**CHAT, "stream": True}, headers=AUTH)
                    assert streamed.text.endswith("data: [DONE]\n\n")
                    assert (await client.get("/v1/models", headers=AUTH)).status_code == 200
                    missing = await client.post("/v1/chat/completions", json={**CHAT, "model": "nope"}, headers=AUTH)
                    assert missing.status_code == 404
                    ids.extend(r.headers["x-request-id"] for r in (answered, streamed, missing))
                await asyncio.sleep(0.8)  # let the log sender hand the rows over meanwhile

    try:
        asyncio.run(drive())
        queue.close()  # hand over and wait for the writer, as at exit
    finally:
        monkeypatch.undo()
    assert queries == []
    assert RequestLog.objects.filter(request_id__in=ids).count() == len(ids) == 15


def test_a_config_change_reaches_every_process_within_two_seconds(live, gateway_factory, db_access):
    from routing.models import Route

    second = gateway_factory()
    wait_for_model(second, "gpt-4o-mini")
    route = Route.objects.get(name="gpt-4o-mini")
    route.aliases = ["mini", "fresh-alias"]
    changed = time.monotonic()
    route.save()
    try:
        for gateway in (live, second):
            wait_for_model(gateway, "fresh-alias", timeout=2 - (time.monotonic() - changed))
    finally:
        route.aliases = ["mini"]
        route.save()


def test_sigterm_writes_every_queued_log_row(live, gateway_factory, db_access):
    from routing.models import RequestLog

    gateway = gateway_factory(GATEWAY_LOG_FLUSH_S="60")  # nothing is written until the stop
    wait_for_model(gateway, "gpt-4o-mini")
    ids = [httpx.post(gateway.url + "/v1/chat/completions", json=CHAT, headers=AUTH).headers["x-request-id"]
           for _ in range(20)]
    time.sleep(0.3)
    assert RequestLog.objects.filter(request_id__in=ids).count() == 0
    output = gateway.stop(signal.SIGTERM)
    assert gateway.proc.returncode is not None
    assert RequestLog.objects.filter(request_id__in=ids).count() == 20, output


def test_queued_rows_are_handed_over_as_a_stop_begins_and_survive_a_kill_during_the_drain(
        live, gateway_factory, db_access):
    """The rows of finished requests go to the writer when SIGTERM arrives, not after the
    requests in flight drain: a process killed mid-drain (a supervisor out of patience, a
    slow stop on a loaded machine) has lost none of them."""
    from concurrent.futures import ThreadPoolExecutor

    from routing.models import RequestLog

    gateway = gateway_factory(GATEWAY_LOG_FLUSH_S="60", GATEWAY_STOP_GRACE_S="60")
    wait_for_model(gateway, "gpt-4o-mini")
    ids = [httpx.post(gateway.url + "/v1/chat/completions", json=CHAT, headers=AUTH).headers["x-request-id"]
           for _ in range(20)]
    streaming = threading.Event()

    def long_stream():  # 60 chunks, 0.5 s apart: the drain lasts as long as the test needs
        body = {**CHAT, "model": "no-retry", "stream": True, "mock": {"chunks": 60, "chunk_delay": 0.5}}
        try:
            with httpx.stream("POST", gateway.url + "/v1/chat/completions", json=body, headers=AUTH,
                              timeout=60) as response:
                for _ in response.iter_lines():
                    streaming.set()
        except httpx.HTTPError:
            pass  # cut off by the kill below

    with ThreadPoolExecutor(1) as pool:
        pool.submit(long_stream)
        assert streaming.wait(10)
        assert RequestLog.objects.filter(request_id__in=ids).count() == 0
        gateway.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 20
        while RequestLog.objects.filter(request_id__in=ids).count() < 20 and time.monotonic() < deadline:
            time.sleep(0.1)
        still_draining = gateway.proc.poll() is None
        written = RequestLog.objects.filter(request_id__in=ids).count()
        gateway.proc.kill()
        output = gateway.stop()
    assert still_draining, output
    assert written == 20, output


def test_a_locked_database_delays_log_rows_but_loses_none(live, db_access):
    """Hold a write lock on the database while requests go through; the rows arrive afterwards."""
    from routing.models import RequestLog

    release = threading.Event()
    locked = threading.Event()

    def hold_lock():
        if connection.vendor == "sqlite":
            other = sqlite3.connect(connection.settings_dict["NAME"], timeout=5)
            other.execute("BEGIN EXCLUSIVE")
            locked.set()
            release.wait(10)
            other.rollback()
            other.close()
        else:
            import psycopg

            s = connection.settings_dict
            with psycopg.connect(dbname=s["NAME"], user=s["USER"], password=s["PASSWORD"], host=s["HOST"],
                                 port=s["PORT"] or 5432) as other:
                other.execute("LOCK TABLE routing_requestlog IN ACCESS EXCLUSIVE MODE")
                locked.set()
                release.wait(10)
                other.rollback()

    holder = threading.Thread(target=hold_lock)
    holder.start()
    assert locked.wait(5)
    try:
        ids = [httpx.post(live.url + "/v1/chat/completions", json=CHAT, headers=AUTH, timeout=10)
               .headers["x-request-id"] for _ in range(10)]
        time.sleep(1.5)
    finally:
        release.set()
        holder.join()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and RequestLog.objects.filter(request_id__in=ids).count() < 10:
        time.sleep(0.1)
    assert RequestLog.objects.filter(request_id__in=ids).count() == 10


def test_the_log_queue_counts_what_it_drops(db_access):
    from routing.models import RequestLog
    from routing.requestlog import LogEntry, RequestLogQueue

    queue = RequestLogQueue(max_size=3)
    queue._sender = threading.Thread()  # a sender that never sends: the queue fills up
    for i in range(5):
        queue.record(LogEntry(request_id=f"req_drop_{i}", started_at=time.time(), endpoint="chat", status=200))
    assert (len(queue.entries), queue.dropped) == (3, 2)
    queue._start_sender()
    queue.close()
    written = RequestLog.objects.filter(request_id__startswith="req_drop_").values_list("request_id", flat=True)
    assert sorted(written) == ["req_drop_0", "req_drop_1", "req_drop_2"]


def test_a_rolled_back_change_does_not_stop_later_bumps(db_access):
    """A config change inside a transaction that rolls back must not swallow the next bump."""
    from django.db import transaction

    from llmgateway.redis import sync_client
    from routing.models import Route
    from routing.snapshot import VERSION_KEY

    with pytest.raises(RuntimeError):
        with transaction.atomic():
            Route.objects.create(name="rolled-back")
            raise RuntimeError
    before = int(sync_client().get(VERSION_KEY) or 0)
    route = Route.objects.create(name="committed")
    route.delete()
    assert int(sync_client().get(VERSION_KEY)) >= before + 2


def test_a_provider_whose_keys_cannot_be_decrypted_is_never_called(live, gateway_factory, mock_upstream, db_access):
    """Started with the wrong ENCRYPTION_KEYS: no unauthenticated upstream call, a clear
    error for the client, and a readiness check that says why."""
    from cryptography.fernet import Fernet

    wrong = gateway_factory(ENCRYPTION_KEYS=Fernet.generate_key().decode())
    wait_for_model(wrong, "gpt-4o-mini")
    mock_upstream.clear()
    response = httpx.post(wrong.url + "/v1/chat/completions", json=CHAT, headers=AUTH, timeout=10)
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "no_usable_upstream"
    assert mock_upstream.requests == []
    ready = httpx.get(wrong.url + "/readyz")
    assert ready.status_code == 503 and "providers" in ready.json()["failing"]
    wrong.stop()


def test_a_failed_first_snapshot_is_retried_and_the_process_is_not_ready_meanwhile(live, gateway_factory, tmp_path):
    """A database that is not there yet at startup must not mean errors until a restart."""
    import subprocess
    import sys

    from .conftest import BASE_DIR

    url = f"sqlite:///{tmp_path / 'late.sqlite3'}"
    gateway = gateway_factory(DATABASE_URL=url)
    refused = httpx.get(gateway.url + "/v1/models", headers=AUTH)
    assert refused.status_code == 503 and refused.json()["error"]["code"] == "not_ready"
    assert "snapshot" in httpx.get(gateway.url + "/readyz").json()["failing"]

    env = {**gateway.env, "DATABASE_URL": url}
    subprocess.run([sys.executable, "manage.py", "migrate", "-v", "0"], cwd=BASE_DIR, env=env, check=True)
    subprocess.run([sys.executable, "manage.py", "shell", "-c",
                    "from keys.models import VirtualKey; k = VirtualKey(name='late'); "
                    f"k.set_key('{FULL_KEY}'); k.save()"], cwd=BASE_DIR, env=env, check=True)
    assert httpx.get(gateway.url + "/v1/models", headers=AUTH).status_code == 200
    assert httpx.get(gateway.url + "/readyz").status_code == 200
    gateway.stop()


def test_sigterm_ends_streams_in_flight_properly_and_writes_every_row(live, gateway_factory, db_access):
    """Streams that finish within the grace period complete; the others end with an error
    event in their protocol, never a bare EOF; every accepted request gets its row."""
    from concurrent.futures import ThreadPoolExecutor

    from routing.models import RequestLog

    gateway = gateway_factory(GATEWAY_STOP_GRACE_S="1.5")
    wait_for_model(gateway, "gpt-4o-mini")

    started = threading.Semaphore(0)

    def stream(chunk_delay):
        body = {**CHAT, "model": "no-retry", "stream": True, "mock": {"chunks": 40, "chunk_delay": chunk_delay}}
        with httpx.stream("POST", gateway.url + "/v1/chat/completions", json=body, headers=AUTH,
                          timeout=30) as response:
            data = []
            for line in response.iter_lines():
                if line.startswith("data: "):
                    data.append(line[6:])
                    if len(data) == 1:
                        started.release()
            return response.headers["x-request-id"], data

    with ThreadPoolExecutor(8) as pool:
        long = [pool.submit(stream, 0.25) for _ in range(5)]  # 10 s each
        short = [pool.submit(stream, 0.02) for _ in range(3)]  # under a second
        # Every stream under way before the stop (a fixed pause was too short on a loaded
        # machine: a stream that had not started yet had no events at all).
        assert all(started.acquire(timeout=20) for _ in range(8))
        gateway.proc.send_signal(signal.SIGTERM)
        results = [f.result() for f in long + short]
    gateway.proc.wait(20)
    for request_id, data in results[:5]:  # the error event (then [DONE], which the SDKs expect)
        assert '"code":"server_shutting_down"' in data[-2].replace(" ", ""), data[-3:]
    for request_id, data in results[5:]:
        assert data[-1] == "[DONE]"
    ids = [request_id for request_id, _ in results]
    rows = {row.request_id: row for row in RequestLog.objects.filter(request_id__in=ids)}
    assert set(rows) == set(ids)
    assert sorted(row.error_kind for row in rows.values()) == [""] * 3 + ["shutdown"] * 5


def test_a_client_that_stops_reading_is_cut_off_and_its_upstream_closed(live, gateway_factory, mock_upstream,
                                                                        db_access):
    """Reading from the upstream follows the client's pace: the gateway buffers a bounded
    amount, notices a reader that has stopped, and lets go of both sides."""
    import socket

    gateway = gateway_factory(GATEWAY_SLOW_CLIENT_TIMEOUT_S="2")
    wait_for_model(gateway, "gpt-4o-mini")
    # 64 MB: more than the sockets between mock and gateway can hold once the gateway stops
    # reading (Linux grows a receive buffer up to tcp_rmem's maximum, 32 MB here; with 16 MB the
    # whole stream sometimes fitted, the mock finished, and this test failed).
    body = json.dumps({**CHAT, "model": "no-retry", "stream": True,
                       "mock": {"chunks": 16384, "event_bytes": 4096}}).encode()
    client = socket.socket()
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 * 1024)
    client.connect(("127.0.0.1", gateway.port))
    client.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n"
                   + f"Authorization: Bearer {FULL_KEY}\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)
    assert client.recv(4096).startswith(b"HTTP/1.1 200")
    started = time.monotonic()
    time.sleep(4)  # reads nothing more
    ended = None
    while ended is None and time.monotonic() < started + 10:
        ended = next((e for e in mock_upstream.events if e["type"] == "stream_end" and e["t"] > started
                      and e.get("client_disconnected")), None)
        time.sleep(0.1)
    assert ended is not None, "the upstream was read to the end (or left open) for a client that stopped reading"
    client.settimeout(5)
    received = 0
    try:
        while chunk := client.recv(1 << 16):
            received += len(chunk)
    except OSError:
        pass
    client.close()
    assert received < 12 * 1024 * 1024  # cut off, not the whole stream


def test_past_its_limit_of_requests_in_flight_a_process_answers_503_at_once(live, gateway_factory, mock_upstream):
    """In the client's protocol, with Retry-After, while /healthz stays quick."""
    from concurrent.futures import ThreadPoolExecutor

    gateway = gateway_factory(GATEWAY_MAX_IN_FLIGHT="3")
    wait_for_model(gateway, "gpt-4o-mini")
    slow = {**CHAT, "model": "no-retry", "stream": True, "mock": {"chunks": 10, "chunk_delay": 0.3}}

    def stream():
        with httpx.stream("POST", gateway.url + "/v1/chat/completions", json=slow, headers=AUTH, timeout=20) as r:
            return r.status_code, r.read()

    with ThreadPoolExecutor(3) as pool:
        busy = [pool.submit(stream) for _ in range(3)]
        time.sleep(0.8)
        refused = httpx.post(gateway.url + "/v1/chat/completions", json=CHAT, headers=AUTH, timeout=5)
        refused_messages = httpx.post(gateway.url + "/v1/messages", timeout=5, headers={"x-api-key": FULL_KEY},
                                      json={"model": "gpt-4o-mini", "max_tokens": 5,
                                            "messages": [{"role": "user", "content": "hi"}]})
        started = time.monotonic()
        assert httpx.get(gateway.url + "/healthz", timeout=5).status_code == 200
        assert time.monotonic() - started < 0.5
        assert [f.result()[0] for f in busy] == [200, 200, 200]
    assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
    assert refused.json()["error"]["code"] == "overloaded"
    assert refused_messages.status_code == 503 and refused_messages.json()["type"] == "error"
    assert httpx.post(gateway.url + "/v1/chat/completions", json=CHAT, headers=AUTH, timeout=5).status_code == 200


def test_a_body_that_trickles_in_is_cut_off(live, gateway_factory):
    import socket

    gateway = gateway_factory(GATEWAY_BODY_TIMEOUT_S="1")
    wait_for_model(gateway, "gpt-4o-mini")
    client = socket.create_connection(("127.0.0.1", gateway.port))
    client.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n"
                   + f"Authorization: Bearer {FULL_KEY}\r\nContent-Length: 100\r\n\r\n".encode() + b'{"model":')
    client.settimeout(5)
    started = time.monotonic()
    answer = client.recv(65536)
    assert answer.startswith(b"HTTP/1.1 408")
    assert b'"request_timeout"' in answer
    assert 0.8 < time.monotonic() - started < 4
    client.close()
