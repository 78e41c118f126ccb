"""Memory per web worker: the gateway as `manage.py serve` runs it, measured after load.

    /work/venv/bin/python bench/memory.py                        # 2 workers, 20 s of load
    /work/venv/bin/python bench/memory.py --workers 1 --soak 600  # and a 10-minute soak
    /work/venv/bin/python bench/memory.py --json

It starts the stack of bench/run.py (an embedded Redis, the mock upstream, a fresh SQLite
with the bench configuration), then `manage.py serve --no-worker --workers N`, drives it
with bench/loadgen.py (non-stream and stream requests alternating, c=32), and reads the
PSS (proportional set size: shared pages split between the processes that share them) of
every process of the gateway from /proc/<pid>/smaps_rollup: the supervisor, the web
processes and their request-log writers. PSS per worker = total / N: what one more worker
costs, everything it needs for request logging included. With --soak S it keeps the load
on for S seconds, sampling every --every seconds, and reports the growth after the first
minute (a leak shows as a steady slope). Results go to docs/performance.md.
"""
import argparse
import json
import subprocess
import sys
import time

import psutil

from run import (BENCH, HOST, PYTHON, VIRTUAL_KEY, Processes, Stack, _die_with_parent, _slope_per_min,
                 nonstream_body, run_bench, stream_body)
from scaling import start_gateway

BUDGET_MB = 150.0


def pss_mb(pid: int) -> float | None:
    """The process's PSS in MB (smaps_rollup: one read, no per-mapping walk)."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as fh:
            for line in fh:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) / 1024
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    return None


def role(proc: psutil.Process) -> str:
    try:
        cmdline = " ".join(proc.cmdline())
    except psutil.Error:
        return "gone"
    if "manage.py serve" in cmdline or "llmgateway.supervise" in cmdline:
        return "supervisor"
    if "routing.logwriter" in cmdline:
        return "log writer"
    if "llmgateway.webworker" in cmdline:
        return "web"
    return "other"


def gateway_memory(root_pid: int, workers: int) -> dict:
    """PSS of every process of the gateway, by role, and per worker."""
    root = psutil.Process(root_pid)
    processes = []
    for proc in [root, *root.children(recursive=True)]:
        pss = pss_mb(proc.pid)
        if pss is not None:
            processes.append({"pid": proc.pid, "role": role(proc), "pss_mb": round(pss, 1),
                              "rss_mb": round(proc.memory_info().rss / 2**20, 1)})
    total = sum(p["pss_mb"] for p in processes)
    by_role = {}
    for p in processes:
        by_role[p["role"]] = round(by_role.get(p["role"], 0.0) + p["pss_mb"], 1)
    return {"processes": processes, "by_role": by_role, "total_pss_mb": round(total, 1),
            "pss_per_worker_mb": round(total / workers, 1)}


def loadgen(url: str, args, duration: float) -> subprocess.Popen:
    argv = [PYTHON, str(BENCH / "loadgen.py"), "--url", url, "--concurrency", str(args.concurrency),
            "--duration", str(duration), "--warmup", "0", "--body", json.dumps(nonstream_body()),
            "--body", json.dumps(stream_body(args.chunks, 0.0)), "--header", f"Authorization: Bearer {VIRTUAL_KEY}"]
    return subprocess.Popen(argv, cwd=BENCH, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=_die_with_parent)


def finish(load: subprocess.Popen, timeout: float) -> dict:
    out, err = load.communicate(timeout=timeout)
    if load.returncode:
        raise RuntimeError(f"load generator failed: {err[-2000:]}")
    return json.loads(out)


def measure(procs: Processes, stack: Stack, args) -> dict:
    proc, port = start_gateway(procs, stack, args.workers)
    url = f"http://{HOST}:{port}/v1/chat/completions"
    try:
        time.sleep(1.0)
        idle = gateway_memory(proc.pid, args.workers)
        result = finish(loadgen(url, args, args.duration), args.duration + 120)
        time.sleep(2.0)  # the writers flush what the load left
        after = gateway_memory(proc.pid, args.workers)
        report = {"idle": idle, "after_load": after, "load": {k: result.get(k) for k in ("rps", "sent", "errors")}}
        if args.soak:
            report["soak"] = soak(proc.pid, url, args)
    finally:
        procs.stop(proc)
    return report


def soak(root_pid: int, url: str, args) -> dict:
    load = loadgen(url, args, args.soak)
    started = time.monotonic()
    samples = []
    while True:
        elapsed = time.monotonic() - started
        memory = gateway_memory(root_pid, args.workers)
        samples.append({"t_s": round(elapsed), "pss_per_worker_mb": memory["pss_per_worker_mb"],
                        "total_pss_mb": memory["total_pss_mb"]})
        if not args.json:
            print(f"  soak t={elapsed:5.0f}s  PSS per worker {memory['pss_per_worker_mb']} MB", file=sys.stderr,
                  flush=True)
        if load.poll() is not None or elapsed >= args.soak:
            break
        time.sleep(args.every)
    result = finish(load, 120)
    warm_from = min(60.0, args.soak / 3)  # the first minute (or third) fills caches and pools
    later = [(s["t_s"], s["pss_per_worker_mb"]) for s in samples if s["t_s"] >= warm_from]
    values = [s["pss_per_worker_mb"] for s in samples]
    return {"duration_s": args.soak, "rps": result.get("rps"), "errors": result.get("errors"), "samples": samples,
            "max_pss_per_worker_mb": max(values),
            "growth_after_warmup_mb": round(later[-1][1] - later[0][1], 1) if later else None,
            "slope_after_warmup_mb_per_min": _slope_per_min(later)}


def print_report(report: dict) -> None:
    args = report["args"]
    print(f"{report['machine']}  revision {report['revision']}  {args['workers']} web process(es), "
          f"c={args['concurrency']}, {args['duration']:.0f} s of load")
    for label in ("idle", "after_load"):
        m = report[label]
        roles = ", ".join(f"{name} {mb}" for name, mb in m["by_role"].items())
        print(f"{label:>10}: total PSS {m['total_pss_mb']} MB ({roles}); per worker {m['pss_per_worker_mb']} MB")
    per_worker = report["after_load"]["pss_per_worker_mb"]
    print(f"load: {report['load']['rps']} req/s, {report['load']['errors']} errors")
    print(f"PSS per worker after load: {per_worker} MB (budget {BUDGET_MB:.0f} MB: "
          f"{'ok' if per_worker <= BUDGET_MB else 'OVER'})")
    if "soak" in report:
        s = report["soak"]
        print(f"soak {s['duration_s']:.0f} s: max {s['max_pss_per_worker_mb']} MB per worker, growth after warm-up "
              f"{s['growth_after_warmup_mb']} MB, slope {s['slope_after_warmup_mb_per_min']} MB/min, "
              f"{s['rps']} req/s, {s['errors']} errors")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--duration", type=float, default=20.0, help="seconds of load before measuring")
    parser.add_argument("--chunks", type=int, default=20, help="content chunks per streamed answer")
    parser.add_argument("--soak", type=float, default=0.0, help="then this many seconds of load, sampling PSS")
    parser.add_argument("--every", type=float, default=10.0, help="seconds between soak samples")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)

    def run(procs, workdir, report):
        stack = Stack(procs, workdir)
        stack.start_shared()
        stack.prepare_data("aiohttp")
        report.update(measure(procs, stack, args))

    return run_bench("memory", args, run, print_report, "after_load")


if __name__ == "__main__":
    sys.exit(main())
