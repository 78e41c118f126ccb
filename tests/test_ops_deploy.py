"""Production settings: `check --deploy` passes with the documented ones; a stop waits long enough."""
import re
import secrets
import subprocess
import sys

import yaml

from .conftest import BASE_DIR
from .test_ops_serve import project_env

PRODUCTION = {"HTTPS_ONLY": "1", "BEHIND_TLS_PROXY": "1", "ALLOWED_HOSTS": "gateway.example.com,127.0.0.1",
              "CSRF_TRUSTED_ORIGINS": "https://gateway.example.com", "DEBUG": "0"}


def manage(tmp_path, *args, **env):
    return subprocess.run([sys.executable, "manage.py", *args], cwd=BASE_DIR, capture_output=True, text=True,
                          env=project_env(tmp_path, **env), timeout=60)


def test_check_deploy_passes_with_the_documented_production_settings(tmp_path):
    checked = manage(tmp_path, "check", "--deploy", "--fail-level", "WARNING",
                     SECRET_KEY=secrets.token_urlsafe(50), **PRODUCTION)

    assert checked.returncode == 0, checked.stderr
    assert "no issues" in checked.stdout


def test_check_deploy_fails_without_https_only(tmp_path):
    checked = manage(tmp_path, "check", "--deploy", "--fail-level", "WARNING",
                     SECRET_KEY=secrets.token_urlsafe(50), **{**PRODUCTION, "HTTPS_ONLY": "0"})

    assert checked.returncode != 0
    assert "SESSION_COOKIE_SECURE" in checked.stderr


PROBE = """
from django.test import Client
c = Client(HTTP_HOST="gateway.example.com")
print(c.get("/healthz").status_code, c.get("/admin/").status_code,
      c.get("/admin/", HTTP_X_FORWARDED_PROTO="https").status_code, c.get("/admin/").headers.get("Location"))
"""


def test_https_only_redirects_plain_http_except_the_probes_and_trusts_the_proxy_header(tmp_path):
    probed = manage(tmp_path, "shell", "-c", PROBE, SECRET_KEY=secrets.token_urlsafe(50), **PRODUCTION)

    healthz, admin_plain, admin_via_proxy, location = probed.stdout.split()[-4:]
    assert (healthz, admin_plain, location) == ("200", "301", "https://gateway.example.com/admin/")
    assert admin_via_proxy == "302"  # to the login page: served, not redirected to https


def test_compose_gives_a_stopping_gateway_time_to_drain_and_hand_over_its_logs():
    from django.conf import settings

    from routing.requestlog import WRITER_EXIT_WAIT_S

    compose = yaml.safe_load((BASE_DIR / "docker-compose.yml").read_text())
    grace = compose["x-gateway"]["stop_grace_period"]
    seconds = int(re.fullmatch(r"(\d+)s", grace).group(1))

    assert seconds >= settings.GATEWAY_STOP_GRACE_S + WRITER_EXIT_WAIT_S
    assert compose["x-gateway"]["init"] is True
    for service in ("web", "worker", "beat"):
        assert compose["services"][service]["stop_grace_period"] == grace
