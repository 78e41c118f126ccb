"""`manage.py serve` as an operator runs it: real processes, a real embedded Redis, real sockets."""
import json
import os
import signal
import socket
import subprocess
import threading
import sys
import time
from pathlib import Path

import httpx
import psutil
import pytest

from llmgateway.redis import EMBEDDED_REDIS_FILE, embedded_redis_url, record_embedded_redis

from .conftest import BASE_DIR, free_port

APP_KEY = "sk-gw-ops-test-key-0123456789abcdefghijklmnop"


def project_env(data_dir: Path, **extra) -> dict:
    """The environment of a command typed in a fresh terminal in the project folder:
    no REDIS_URL, no DATABASE_URL (SQLite in DATA_DIR)."""
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "DATABASE_URL")}
    return {**env, "DATA_DIR": str(data_dir), "ADMIN_PASSWORD": "not-shown-in-tests", **extra}


def manage(data_dir: Path, *args, **env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "manage.py", *args], cwd=BASE_DIR, env=project_env(data_dir, **env),
                          capture_output=True, text=True, timeout=60)


class Serve:
    """`manage.py serve --no-worker` in a subprocess of its own."""

    def __init__(self, data_dir: Path, **env):
        self.data_dir = data_dir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [sys.executable, "manage.py", "serve", "--no-worker", "--port", str(self.port)],
            cwd=BASE_DIR, env=project_env(data_dir, **env),
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )

    def wait_until_serving(self, timeout=60) -> "Serve":
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.proc.stdout.read()
            try:
                if httpx.get(self.url + "/healthz", timeout=0.5).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise AssertionError("serve did not start")

    def web_pids(self) -> set[int]:
        """The web server processes, from the process table (nothing on the request path)."""
        pids = set()
        for child in psutil.Process(self.proc.pid).children():
            try:
                if "llmgateway.webworker" in " ".join(child.cmdline()):
                    pids.add(child.pid)
            except psutil.Error:  # just killed: gone, or a zombie until serve reaps it
                pass
        return pids

    def pid_serving_a_new_connection(self) -> int | None:
        """Which web process accepted a fresh connection: the one holding its other end."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=30) as conn:
            conn.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            assert conn.recv(1024).startswith(b"HTTP/1.1 200")
            client_port = conn.getsockname()[1]
            for pid in self.web_pids():
                for c in psutil.Process(pid).net_connections(kind="tcp"):
                    if c.raddr and c.raddr.port == client_port and c.laddr.port == self.port:
                        return pid
        return None

    def stop(self) -> str:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.stdout.read()


@pytest.fixture
def serve(tmp_path):
    started = []

    def start(**env) -> Serve:
        process = Serve(tmp_path / "data", **env)
        started.append(process)
        return process.wait_until_serving()

    yield start
    for process in started:
        process.stop()


def config_yaml(upstream_base_url: str) -> str:
    return f"""
providers:
  mock:
    base_url: {upstream_base_url}
    keys:
      - value: sk-upstream-ops-test
models:
  ops-model:
    targets:
      - provider: mock
        model: gpt-4o-mini
virtual_keys:
  ops-app:
    key: {APP_KEY}
"""


def model_status(url: str) -> int:
    return httpx.get(f"{url}/v1/models/ops-model", headers={"Authorization": f"Bearer {APP_KEY}"}).status_code


def test_a_config_applied_from_another_terminal_reaches_the_running_gateway_within_2_s(serve, mock_upstream, tmp_path):
    gateway = serve(WEB_CONCURRENCY="1")
    assert model_status(gateway.url) == 401  # the gateway has loaded its (empty) snapshot
    config = tmp_path / "gateway.yaml"
    config.write_text(config_yaml(mock_upstream.base_url))

    applied = manage(gateway.data_dir, "gateway_config", "apply", str(config))
    applied_at = time.monotonic()

    assert applied.returncode == 0, applied.stderr
    assert "Redis" not in applied.stderr
    while model_status(gateway.url) != 200:
        assert time.monotonic() - applied_at < 2.0, "the gateway did not pick the config up within 2 s"
        time.sleep(0.05)


def test_commands_use_the_embedded_redis_that_serve_recorded_and_forget_it_when_it_stops(serve, tmp_path):
    gateway = serve(WEB_CONCURRENCY="1")
    record = json.loads((gateway.data_dir / EMBEDDED_REDIS_FILE).read_text())

    seen = manage(gateway.data_dir, "shell", "-c", "from django.conf import settings; print(settings.REDIS_URL)")

    assert seen.stdout.strip().splitlines()[-1] == record["url"]
    gateway.stop()
    assert not (gateway.data_dir / EMBEDDED_REDIS_FILE).exists()


def test_a_record_whose_redis_is_gone_is_ignored(tmp_path):
    finished = subprocess.Popen(["true"])
    finished.wait()  # its pid no longer runs
    record_embedded_redis(tmp_path, f"redis://127.0.0.1:{free_port()}/0", finished.pid)
    assert embedded_redis_url(tmp_path) is None


def test_a_record_whose_pid_was_reused_but_whose_port_is_closed_is_ignored(tmp_path):
    record_embedded_redis(tmp_path, f"redis://127.0.0.1:{free_port()}/0", os.getpid())
    assert embedded_redis_url(tmp_path) is None


def test_a_record_of_a_live_redis_is_used(tmp_path, redis_url):
    record_embedded_redis(tmp_path, redis_url, os.getpid())  # our pid: alive
    assert embedded_redis_url(tmp_path) == redis_url


def test_without_redis_apply_says_once_what_to_do(tmp_path, mock_upstream):
    data_dir = tmp_path / "data"
    config = tmp_path / "gateway.yaml"
    config.write_text(config_yaml(mock_upstream.base_url))
    assert manage(data_dir, "migrate", "-v", "0").returncode == 0

    applied = manage(data_dir, "gateway_config", "apply", str(config),
                     REDIS_URL=f"redis://:hunter2-secret@127.0.0.1:{free_port()}/0")

    assert applied.returncode == 0
    redis_lines = [line for line in applied.stderr.splitlines() if "Redis" in line]
    assert len(redis_lines) == 1, applied.stderr
    assert "check that REDIS_URL points to a running Redis" in redis_lines[0]
    assert "hunter2-secret" not in applied.stderr


def pids_serving(gateway: Serve, expected: set[int], attempts=200) -> set[int]:
    seen = set()
    for _ in range(attempts):
        seen.add(gateway.pid_serving_a_new_connection())
        if expected <= seen:
            break
    return seen


def test_two_web_processes_behind_one_port_both_serve(serve):
    gateway = serve(WEB_CONCURRENCY="2")
    web = gateway.web_pids()

    assert len(web) == 2
    assert pids_serving(gateway, web) == web


def test_a_killed_web_process_is_started_again_and_serves(serve):
    gateway = serve(WEB_CONCURRENCY="2")
    killed, survivor = sorted(gateway.web_pids())

    os.kill(killed, signal.SIGKILL)
    deadline = time.monotonic() + 20
    while len(gateway.web_pids() - {killed}) < 2:
        assert time.monotonic() < deadline, "the killed web process was not replaced"
        time.sleep(0.1)
    replacement = (gateway.web_pids() - {killed, survivor}).pop()

    deadline = time.monotonic() + 20
    while replacement not in pids_serving(gateway, {replacement}, attempts=20):
        assert time.monotonic() < deadline, "the replacement never accepted a connection"
    assert gateway.proc.poll() is None


def test_sigterm_lets_the_request_in_flight_finish_then_stops_everything(serve, mock_upstream, tmp_path):
    gateway = serve(WEB_CONCURRENCY="2")
    config = tmp_path / "gateway.yaml"
    config.write_text(config_yaml(mock_upstream.base_url))
    assert manage(gateway.data_dir, "gateway_config", "apply", str(config)).returncode == 0
    while model_status(gateway.url) != 200:
        time.sleep(0.05)
    children = psutil.Process(gateway.proc.pid).children()
    answer = {}

    def slow_request():
        answer["response"] = httpx.post(
            f"{gateway.url}/v1/chat/completions", headers={"Authorization": f"Bearer {APP_KEY}"}, timeout=30,
            json={"model": "ops-model", "messages": [{"role": "user", "content": "hi"}], "mock": {"delay": 2}})

    client = threading.Thread(target=slow_request)
    client.start()
    time.sleep(0.7)  # the request is in flight at the upstream
    gateway.proc.send_signal(signal.SIGTERM)
    client.join(30)
    gateway.proc.wait(30)

    assert answer["response"].status_code == 200
    assert answer["response"].json()["choices"][0]["message"]["content"]
    assert not [child for child in children if child.is_running() and child.status() != psutil.STATUS_ZOMBIE]
    assert not (gateway.data_dir / EMBEDDED_REDIS_FILE).exists()


def test_a_second_serve_on_the_same_port_refuses_to_start(serve, tmp_path):
    first = serve(WEB_CONCURRENCY="1")

    second = subprocess.run([sys.executable, "manage.py", "serve", "--no-worker", "--port", str(first.port)],
                            cwd=BASE_DIR, env=project_env(tmp_path / "other", REDIS_URL=first_redis_url(first)),
                            capture_output=True, text=True, timeout=60)

    assert second.returncode != 0
    assert f"cannot listen on 127.0.0.1:{first.port}" in second.stderr


def first_redis_url(gateway: Serve) -> str:
    return json.loads((gateway.data_dir / EMBEDDED_REDIS_FILE).read_text())["url"]


def test_a_killed_serve_takes_its_children_along_and_its_redis_record_goes_stale(serve):
    gateway = serve(WEB_CONCURRENCY="2")
    children = psutil.Process(gateway.proc.pid).children()
    assert embedded_redis_url(gateway.data_dir) is not None

    gateway.proc.kill()  # no clean-up at all: the record stays behind
    gateway.proc.wait()
    psutil.wait_procs(children, timeout=30)

    assert not [child for child in children if child.is_running() and child.status() != psutil.STATUS_ZOMBIE]
    assert (gateway.data_dir / EMBEDDED_REDIS_FILE).exists()
    assert embedded_redis_url(gateway.data_dir) is None
    with pytest.raises(httpx.ConnectError):
        httpx.get(gateway.url + "/healthz", timeout=2)
