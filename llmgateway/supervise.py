"""The supervisor of `manage.py serve` once setup is done: it starts the web processes, the
Celery worker and beat, restarts one that dies, and stops them all on Ctrl-C or SIGTERM.

    python -m llmgateway.supervise PLAN      (exec'd by `manage.py serve`, not run by hand)

`serve` needs Django for its setup (migrate, collectstatic, the admin user), then replaces
itself with this module (same process, same children, same listening sockets): a
supervisor that kept Django loaded would hold about 95 MB for nothing but waiting, a
quarter of a two-worker gateway's memory (docs/performance.md). It imports nothing but
the standard library. PLAN is JSON without secrets (the children's environment is this
process's own): the children to start, the embedded Redis to adopt and the record of it
to remove at the end, the listening sockets to close.
"""
import ctypes
import json
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass

log = logging.getLogger("llmgateway.supervise")

REDIS_STOP_S = 15
# A child that dies sooner than this after starting is crashing, not just unlucky:
# restart it with a growing delay instead of in a tight loop.
CRASH_WINDOW_S = 10
MAX_RESTART_DELAY_S = 30
PR_SET_PDEATHSIG = 1


class EverythingStops(Exception):
    """A child that is not restarted (the embedded Redis) died."""


def stop_with_parent():
    """In the child before exec (Linux): SIGTERM when the process that started it dies, so
    a `serve` killed with SIGKILL leaves no web process serving its port and no orphaned
    Redis behind."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass


class AdoptedProcess:
    """A child started before the exec (its Popen object is gone): the Popen calls the
    supervisor makes, on its pid."""

    def __init__(self, pid: int, args=()):
        self.pid = pid
        self.args = list(args)
        self.returncode = None

    def poll(self):
        if self.returncode is None:
            try:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:  # reaped elsewhere, or never ours
                self.returncode = -1
                return self.returncode
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def send_signal(self, sig):
        if self.poll() is None:
            os.kill(self.pid, sig)

    def kill(self):
        self.send_signal(signal.SIGKILL)

    def wait(self, timeout=None):
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(self.args, timeout)
            time.sleep(0.05)
        return self.returncode


@dataclass
class Child:
    name: str
    args: list
    popen_kwargs: dict
    stop_wait_s: float
    proc: object = None
    started_at: float = 0.0
    restart_delay_s: float = 0.0
    restart_at: float | None = None
    restartable: bool = True

    def spawn(self):
        self.proc = subprocess.Popen(self.args, preexec_fn=stop_with_parent, **self.popen_kwargs)
        self.started_at = time.monotonic()
        self.restart_at = None


class Supervisor:
    """Children that are restarted when they die, and stopped together."""

    def __init__(self, cwd):
        self.cwd = cwd
        self.children: list[Child] = []

    def start(self, name, args, *, env, pass_fds=(), stop_wait_s=REDIS_STOP_S):
        child = Child(name, args, {"env": env, "cwd": self.cwd, "pass_fds": tuple(pass_fds)}, stop_wait_s)
        child.spawn()
        self.children.append(child)
        return child

    def adopt(self, name, proc):
        """A child started elsewhere that is not restarted: when it dies, everything stops."""
        child = Child(name, proc.args, {}, REDIS_STOP_S, proc=proc, restartable=False)
        self.children.append(child)

    def run_until_signal(self):
        stopping = []

        def on_signal(signum, frame):
            stopping.append(signum)

        signal.signal(signal.SIGINT, on_signal)
        signal.signal(signal.SIGTERM, on_signal)
        while not stopping:
            self.restart_dead()
            time.sleep(0.2)

    def restart_dead(self):
        now = time.monotonic()
        for child in self.children:
            if child.proc.poll() is None:
                continue
            if not child.restartable:
                raise EverythingStops(f"{child.name} exited with {child.proc.returncode}; stopping everything")
            if child.restart_at is None:
                crashed_early = now - child.started_at < CRASH_WINDOW_S
                child.restart_delay_s = min(max(child.restart_delay_s * 2, 1.0), MAX_RESTART_DELAY_S) \
                    if crashed_early else 0.0
                child.restart_at = now + child.restart_delay_s
                log.warning("%s (pid %s) exited with %s; restarting%s", child.name, child.proc.pid,
                            child.proc.returncode,
                            f" in {child.restart_delay_s:.0f} s" if child.restart_delay_s else "")
            if now >= child.restart_at:
                child.spawn()

    def stop_all(self):
        """SIGTERM every child at once (web processes drain, then hand over their request
        logs), wait, kill what is left; Redis (adopted first) last, after its users."""
        users = [c for c in self.children if c.restartable and c.proc and c.proc.poll() is None]
        for child in users:
            child.proc.send_signal(signal.SIGTERM)
        for child in users:
            _wait_or_kill(child)
        for child in self.children:
            if not child.restartable and child.proc.poll() is None:
                child.proc.send_signal(signal.SIGTERM)
                _wait_or_kill(child)


def _wait_or_kill(child: Child):
    try:
        child.proc.wait(child.stop_wait_s)
    except subprocess.TimeoutExpired:
        log.warning("%s (pid %s) did not stop within %.0f s; killed", child.name, child.proc.pid, child.stop_wait_s)
        child.proc.kill()
        child.proc.wait()


def forget_record(path: str, pid: int) -> None:
    """Remove the embedded Redis's record (llmgateway.redis), if it is still ours."""
    try:
        with open(path) as fh:
            if json.load(fh).get("pid") == pid:
                os.unlink(path)
    except (OSError, ValueError):
        pass


LEAN_PROCESS_ENV = "GATEWAY_LEAN_PROCESS"  # see llmgateway/__init__.py


def main(argv=None) -> int:
    plan = json.loads((argv if argv is not None else sys.argv[1:])[0])
    os.environ.pop(LEAN_PROCESS_ENV, None)  # this process's own; the children get it as the plan says
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    supervisor = Supervisor(plan["cwd"])
    redis = plan.get("redis")
    code = 0
    try:
        if redis:
            supervisor.adopt("redis", AdoptedProcess(redis["pid"], redis["args"]))
        for child in plan["children"]:
            env = {**os.environ, LEAN_PROCESS_ENV: "1"} if child.get("lean") else os.environ.copy()
            supervisor.start(child["name"], child["args"], env=env, pass_fds=child["pass_fds"],
                             stop_wait_s=child["stop_wait_s"])
        supervisor.run_until_signal()
    except EverythingStops as exc:
        print(exc, file=sys.stderr)
        code = 1
    finally:
        supervisor.stop_all()
        for fd in plan.get("close_fds", []):
            try:
                os.close(fd)
            except OSError:
                pass
        if redis:
            forget_record(redis["record"], redis["pid"])
    return code


if __name__ == "__main__":
    sys.exit(main())
