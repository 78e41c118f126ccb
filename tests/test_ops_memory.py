"""Memory per worker: what can be asserted without a benchmark (the figures are bench/memory.py's,
docs/performance.md): the request-log writer loads neither Django's app registry nor what the
web process needs, writes the models' columns, and `serve` keeps no Django loaded while it
supervises."""
import json
import os
import subprocess
import sys
import time

import psutil
import pytest
from django.db import connection

from routing.logentries import LogEntry, RefusalCount, encode_batch
from routing.logrows import REFUSED_TRAFFIC_COLUMNS, REFUSED_TRAFFIC_TABLE, REQUEST_LOG_COLUMNS, REQUEST_LOG_TABLE

from .conftest import BASE_DIR
from .test_ops_serve import Serve

# What a web process needs and a writer does not: none of it may be imported by the writer.
NOT_IN_THE_WRITER = ("django.contrib.admin", "unfold", "twisted", "daphne", "channels", "celery", "redis",
                     "httpx", "ninja", "llmgateway.settings", "routing.models", "routing.snapshot")


def test_the_writer_writes_exactly_the_models_columns():
    from routing.models import RefusedTraffic, RequestLog

    assert REQUEST_LOG_TABLE == RequestLog._meta.db_table
    assert set(REQUEST_LOG_COLUMNS) == {f.column for f in RequestLog._meta.concrete_fields} - {"id"}
    assert REFUSED_TRAFFIC_TABLE == RefusedTraffic._meta.db_table
    assert set(REFUSED_TRAFFIC_COLUMNS) == {f.column for f in RefusedTraffic._meta.concrete_fields} - {"id"}


def test_the_writer_process_loads_no_app_registry_and_none_of_the_web_stack(db_access, tmp_path):
    from routing.models import RefusedTraffic, RequestLog
    from routing.requestlog import WRITER_SETTINGS_ENV, writer_settings

    now = time.time()
    batch = [LogEntry(request_id="req_memory_writer_1", started_at=now, endpoint="chat", status=200,
                      model_requested="gpt-4o-mini"),
             RefusalCount(int(now // 60), "192.0.2.77", "no such key", "chat", 3, now, now)]
    imports = tmp_path / "imports.txt"
    # The writer's main, then a list of every module it imported, in the same process.
    program = ("import sys, runpy\n"
               "try:\n"
               "    runpy.run_module('routing.logwriter', run_name='__main__')\n"
               "except SystemExit as exc:\n"
               f"    open({str(imports)!r}, 'w').write('\\n'.join(sorted(sys.modules)))\n"
               "    raise\n")
    env = {k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"}
    env[WRITER_SETTINGS_ENV] = writer_settings()
    env["DJANGO_SETTINGS_MODULE"] = "no.such.settings"  # proves the settings module is not read
    done = subprocess.run([sys.executable, "-c", program], input=encode_batch(batch), cwd=BASE_DIR, env=env,
                          capture_output=True, timeout=60)

    assert done.returncode == 0, done.stderr.decode()
    modules = set(imports.read_text().split())
    assert not {m for m in modules for banned in NOT_IN_THE_WRITER if m == banned or m.startswith(banned + ".")}
    assert RequestLog.objects.filter(request_id="req_memory_writer_1", model_requested="gpt-4o-mini").exists()
    assert RefusedTraffic.objects.get(client_ip="192.0.2.77").count == 3


@pytest.fixture
def served(tmp_path):
    gateway = Serve(tmp_path / "data", WEB_CONCURRENCY="1").wait_until_serving()
    yield gateway
    gateway.stop()


def test_serve_supervises_without_django_loaded(served):
    supervisor = psutil.Process(served.proc.pid)
    command = supervisor.cmdline()

    assert command[1:3] == ["-m", "llmgateway.supervise"]
    plan = json.loads(command[3])
    assert [child["name"] for child in plan["children"]] == ["web"]
    assert "SECRET" not in command[3] and "PASSWORD" not in command[3]  # the plan is on a command line
    # A Python process with Django loaded holds 100 MB and more; the supervisor about 13.
    assert supervisor.memory_info().rss < 40 * 2**20
