"""Shared fixtures: Redis, the mock upstream, and the gateway served by Daphne on loopback."""
import os
import signal
import socket
import subprocess
import sys
import time
from contextlib import ExitStack
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest
from django.conf import settings

from providers.mock_upstream import MockUpstreamThread

BASE_DIR = Path(__file__).resolve().parent.parent

FULL_KEY = "sk-gw-test-full-access-key"
LIMITED_KEY = "sk-gw-test-limited-key"
DISABLED_KEY = "sk-gw-test-disabled-key"
EXPIRED_KEY = "sk-gw-test-expired-key"
LOGGING_KEY = "sk-gw-test-logs-bodies-key"
PROVIDER_SECRET = "sk-upstream-provider-secret-9f3a"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def django_db_setup(django_test_environment, django_db_blocker, django_db_modify_db_settings):
    """Always create the test database: tests that drive gateway processes need it even
    though they carry no django_db mark (they must not hold a transaction open)."""
    from django.test.utils import setup_databases, teardown_databases

    with django_db_blocker.unblock():
        config = setup_databases(verbosity=0, interactive=False, aliases={"default"})
    yield
    with django_db_blocker.unblock():
        _disconnect_others()
        teardown_databases(config, verbosity=0)


def _disconnect_others():
    """PostgreSQL won't drop a database in use: end what worker threads of in-process tests
    and stopped gateways may have left connected."""
    from django.db import connection

    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                           "WHERE datname = current_database() AND pid <> pg_backend_pid()")


@pytest.fixture(scope="session", autouse=True)
def redis_url(tmp_path_factory):
    """REDIS_URL from the environment (CI), else an embedded redis-server for this session."""
    from llmgateway.redis import sync_client

    url = os.environ.get("REDIS_URL")
    proc = None
    if not url:
        from llmgateway.management.commands.serve import start_embedded_redis

        url, proc = start_embedded_redis(tmp_path_factory.mktemp("redis"))
    settings.REDIS_URL = url
    sync_client.cache_clear()
    yield url
    if proc:
        proc.terminate()
        proc.wait(5)


@pytest.fixture(autouse=True)
def fresh_routing_state(redis_url):
    """Each test starts with no circuits, cooldowns, health flags or latencies in Redis. They
    are keyed by row id, and test databases hand ids out again (a rolled-back transaction, a
    flushed live-server test, the next session's new test database on the same REDIS_URL):
    a target would inherit an open circuit from an earlier test. Cleared before each test
    (what an earlier session, or a test killed mid-way, left) and after it."""
    clear_routing_state()
    yield
    clear_routing_state()


def clear_routing_state() -> None:
    from llmgateway.redis import sync_client

    client = sync_client()
    stale = [*client.scan_iter("gw:rs:*", count=1000), *client.scan_iter("gw:health:target:*", count=1000)]
    if stale:
        client.delete(*stale)


@pytest.fixture(scope="session")
def mock_upstream():
    server = MockUpstreamThread().start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def mock():
    """A mock upstream of the test module's own, for the tests of the mock itself: what it
    records is never mixed with the gateway's traffic to the session's mock_upstream."""
    with MockUpstreamThread() as server:
        yield server


@pytest.fixture
def mock_http(mock):
    """Opens httpx clients on the module's mock (nothing recorded yet), closed after the test:
    mock_http(headers) talks to its /v1, mock_http(headers, path="") to its origin."""
    mock.clear()
    with ExitStack() as opened:
        def open_client(headers: dict, path: str = "/v1") -> httpx.Client:
            return opened.enter_context(httpx.Client(base_url=mock.origin + path, headers=headers, timeout=10))
        yield open_client


def database_url() -> str:
    """The URL of the test database, for gateway processes started by the tests."""
    from django.db import connection

    s = connection.settings_dict
    if s["ENGINE"].endswith("sqlite3"):
        return f"sqlite:///{s['NAME']}"
    auth = f"{quote(s['USER'])}:{quote(s['PASSWORD'] or '')}@" if s["USER"] else ""
    return f"postgres://{auth}{s['HOST'] or 'localhost'}:{s['PORT'] or 5432}/{s['NAME']}"


class Gateway:
    """A Daphne process serving the gateway on a loopback port."""

    def __init__(self, redis_url, **env):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {
            **os.environ,
            "DATABASE_URL": database_url(),
            "REDIS_URL": redis_url,
            "DATA_DIR": str(settings.DATA_DIR),
            "GATEWAY_SNAPSHOT_POLL_S": "0.1",
            "GATEWAY_EXPOSE_ROUTING_HEADERS": "1",
            "GATEWAY_MAX_BODY_BYTES": str(1024 * 1024),
            "GATEWAY_STREAM_IDLE_TIMEOUT_S": "2",
            # Cross-process tests watch state the moment another process changes it.
            "GATEWAY_ROUTING_STATE_CACHE_S": "0",
            # Many tests send wrong keys from this one loopback address: no slow-down for
            # them (tests/test_ops_junk.py turns it on).
            "GATEWAY_AUTH_FAILURES_PER_IP": "0",
            **env,
        }
        self.proc = None

    def start(self) -> "Gateway":
        self.proc = subprocess.Popen(
            # The backlog `manage.py serve` listens with (Twisted's default of 50 overflows when a
            # test opens hundreds of connections at once on a loaded machine: the client sees resets).
            [sys.executable, "-m", "daphne", "-v", "0", "-e", f"tcp:port={self.port}:interface=127.0.0.1:backlog=1024",
             "llmgateway.asgi:application"],
            cwd=BASE_DIR, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("gateway exited: " + self.proc.stdout.read().decode())
            try:
                if httpx.get(self.url + "/healthz", timeout=0.5).status_code == 200:
                    return self
            except httpx.HTTPError:
                time.sleep(0.1)
        raise RuntimeError("gateway did not start")

    def stop(self, sig=signal.SIGTERM, timeout=15) -> str:
        """Stop the process and return what it printed."""
        killed = ""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                killed = f"\n[the gateway did not stop within {timeout} s and was killed]"
        return self.proc.stdout.read().decode(errors="replace") + killed


@pytest.fixture(scope="session")
def gateway_factory(django_db_setup, redis_url):
    started = []

    def start(**env) -> Gateway:
        gateway = Gateway(redis_url, **env).start()
        started.append(gateway)
        return gateway

    yield start
    for gateway in started:
        gateway.stop()


@pytest.fixture(scope="session")
def gateway(gateway_factory):
    return gateway_factory()


def build_live_config(mock_base_url: str) -> None:
    """The configuration the over-the-wire tests run against (idempotent)."""
    from datetime import timedelta

    from django.utils import timezone

    from keys.models import VirtualKey
    from providers.models import CatalogEntry, Provider, ProviderKey
    from routing.models import Route, RouteTarget

    mock = Provider.objects.create(name="mock", base_url=mock_base_url, timeout_s=5)
    dead = Provider.objects.create(name="dead", base_url=f"http://127.0.0.1:{free_port()}/v1", timeout_s=2)
    slow = Provider.objects.create(name="slow", base_url=mock_base_url, timeout_s=0.5)
    pair = Provider.objects.create(name="mock-pair", base_url=mock_base_url, timeout_s=5)
    for provider in (mock, dead, slow, pair):
        key = ProviderKey(provider=provider, label="primary")
        key.set_secret(PROVIDER_SECRET)
        key.save()
    for label in ("second", "disabled"):
        key = ProviderKey(provider=pair, label=label, enabled=label != "disabled")
        key.set_secret(f"{PROVIDER_SECRET}-{label}")
        key.save()
    for model, price in [("gpt-4o-mini", (0.15, 0.60, 0.075)), ("text-embedding-3-small", (0.02, 0, None))]:
        CatalogEntry.objects.create(provider=mock, model_id=model, input_price_per_m=price[0],
                                    output_price_per_m=price[1], cached_input_price_per_m=price[2])

    def route(name, *targets, **fields):
        r = Route.objects.create(name=name, **fields)
        for priority, (provider, upstream_model) in enumerate(targets, start=1):
            RouteTarget.objects.create(route=r, provider=provider, upstream_model=upstream_model, priority=priority)
        return r

    mini = route("gpt-4o-mini", (mock, "gpt-4o-mini"), aliases=["mini"])
    route("gpt-3.5-turbo-instruct", (mock, "gpt-3.5-turbo-instruct"))
    route("text-embedding-3-small", (mock, "text-embedding-3-small"))
    route("unreachable", (dead, "gpt-4o-mini"), max_attempts=1)
    route("failover", (dead, "gpt-4o-mini"), (mock, "gpt-4o-mini"))
    route("slow", (slow, "gpt-4o-mini"), max_attempts=1)
    route("no-retry", (mock, "gpt-4o-mini"), max_attempts=1)
    route("two-keys", (pair, "gpt-4o-mini"))

    def virtual_key(name, secret, **fields):
        vk = VirtualKey(name=name, **fields)
        vk.set_key(secret)
        vk.save()
        return vk

    virtual_key("full", FULL_KEY)
    virtual_key("limited", LIMITED_KEY, all_models=False).allowed_routes.set([mini])
    virtual_key("disabled", DISABLED_KEY, enabled=False)
    virtual_key("expired", EXPIRED_KEY, expires_at=timezone.now() - timedelta(minutes=1))
    virtual_key("logs-bodies", LOGGING_KEY, log_bodies=True)


@pytest.fixture
def live(gateway, mock_upstream, django_db_blocker):
    """The gateway, serving the live configuration (rebuilt if another test flushed it)."""
    from keys.models import VirtualKey

    with django_db_blocker.unblock():
        if not VirtualKey.objects.filter(name="full").exists():
            from providers.models import Provider
            from routing.models import Route

            Route.objects.all().delete()
            Provider.objects.all().delete()
            VirtualKey.objects.all().delete()
            build_live_config(mock_upstream.base_url)
    wait_for_model(gateway, "two-keys")
    mock_upstream.clear()
    return gateway


def wait_for_model(gateway, model: str, key: str = FULL_KEY, present: bool = True, timeout: float = 10):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = httpx.get(f"{gateway.url}/v1/models/{model}", headers={"Authorization": f"Bearer {key}"})
        if (r.status_code == 200) == present:
            return
        time.sleep(0.05)
    raise AssertionError(f"gateway never {'saw' if present else 'dropped'} model {model}")


@pytest.fixture
def db_access(django_db_setup, django_db_blocker):
    """Read what gateway processes wrote, from a test that is not in a transaction."""
    with django_db_blocker.unblock():
        yield


@pytest.fixture
def monitoring_on(db_access):
    """Health monitoring turned on (the settings row), for tests outside a transaction; afterwards
    the row, its monitoring key and that key's request-log rows are gone."""
    from healthcheck.models import MonitoringSettings
    from keys.models import VirtualKey
    from routing.models import RequestLog

    settings_row = MonitoringSettings.load()
    settings_row.enabled = True
    settings_row.save()
    yield settings_row
    key_id = settings_row.monitoring_key_id
    MonitoringSettings.objects.filter(pk=1).delete()
    RequestLog.objects.filter(virtual_key_id=key_id).delete()
    VirtualKey.objects.filter(pk=key_id).delete()


@pytest.fixture
def admission_round_trips(monkeypatch):
    """The script calls of each Redis round trip routing/admission.py sends (run_scripts), in order."""
    from routing import admission

    round_trips = []
    real_run_scripts = admission.run_scripts

    async def recorded_run_scripts(client, calls):
        round_trips.append(list(calls))
        return await real_run_scripts(client, calls)

    monkeypatch.setattr(admission, "run_scripts", recorded_run_scripts)
    return round_trips


def wait_for_log(request_id: str, timeout: float = 10):
    from routing.models import RequestLog

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        row = RequestLog.objects.filter(request_id=request_id).first()
        if row:
            return row
        time.sleep(0.05)
    raise AssertionError(f"no request log row for {request_id}")


# Slow end-to-end modules: real browsers, real CLIs, real Celery beat. CI runs them once.
E2E_MODULES = ("test_admin_browser", "test_health_live", "test_clients_e2e")


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.module.__name__.rsplit(".", 1)[-1] in E2E_MODULES:
            item.add_marker(pytest.mark.e2e)


@pytest.fixture
def screenshot_dir(tmp_path):
    """Where browser tests save their screenshots: docs/screenshots/ (the README's) with
    UPDATE_SCREENSHOTS=1, else a temporary directory, so a test run leaves the tree clean."""
    if os.environ.get("UPDATE_SCREENSHOTS") == "1":
        shots = BASE_DIR / "docs" / "screenshots"
        shots.mkdir(parents=True, exist_ok=True)
        return shots
    return tmp_path
