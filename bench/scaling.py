"""Scaling on one machine: the gateway as `manage.py serve` runs it, with 1 and then 2 web
processes on one port, non-stream and stream, at one concurrency.

    /work/venv/bin/python bench/scaling.py                   # 10 s per cell, c=32
    /work/venv/bin/python bench/scaling.py --repeat 3          # alternating rounds, medians
    /work/venv/bin/python bench/scaling.py --workers 1,2,4 --duration 20 --json

It reuses bench/run.py's setup (an embedded Redis, the mock upstream in its own process,
migrate + the bench configuration in a fresh SQLite) and bench/loadgen.py as the client.
The mock upstream and the load generator share the machine with the gateway, so on a
small machine they cap what extra processes can show: the report gives the CPU each part
used, to tell a saturated machine from a gateway that does not scale. Results go to
docs/performance.md.
"""
import argparse
import json
import subprocess
import sys
import time

import psutil

from run import (BENCH, HOST, PYTHON, VIRTUAL_KEY, Processes, Stack, _die_with_parent, free_port,
                 nonstream_body, run_bench, stream_body, wait_until_answers)


def start_gateway(procs: Processes, stack: Stack, workers: int) -> tuple[subprocess.Popen, int]:
    """The gateway as `manage.py serve` runs it (supervisor, `workers` web processes, their
    log writers), answering on a port of its own."""
    port = free_port()
    proc = procs.start(f"serve-{workers}", [PYTHON, "manage.py", "serve", "--no-worker", "--no-setup",
                                            "--host", HOST, "--port", str(port), "--workers", str(workers)],
                       env=stack.gateway_env("aiohttp"))
    url = f"http://{HOST}:{port}/v1/chat/completions"
    wait_until_answers(procs, f"serve-{workers}", proc, url, Stack.headers["gateway"])
    return proc, port


def tree_cpu_seconds(pid: int) -> float:
    """CPU time of a process and all its children, living ones (the web processes)."""
    total = 0.0
    for p in [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.NoSuchProcess:
            pass
    return total


def load(url: str, body: dict, args) -> dict:
    argv = [PYTHON, str(BENCH / "loadgen.py"), "--url", url, "--concurrency", str(args.concurrency),
            "--duration", str(args.duration), "--warmup", str(args.warmup), "--body", json.dumps(body),
            "--header", f"Authorization: Bearer {VIRTUAL_KEY}"]
    done = subprocess.run(argv, cwd=BENCH, capture_output=True, text=True, preexec_fn=_die_with_parent,
                          timeout=args.warmup + args.duration + 120)
    if done.returncode:
        raise RuntimeError(f"load generator failed: {done.stderr[-2000:]}")
    return json.loads(done.stdout)


def measure(procs: Processes, stack: Stack, workers: int, args) -> list[dict]:
    proc, port = start_gateway(procs, stack, workers)
    url = f"http://{HOST}:{port}/v1/chat/completions"
    cells = []
    try:
        for mode, body in (("non-stream", nonstream_body()), ("stream", stream_body(args.chunks, 0.0))):
            cpu_before = {"gateway": tree_cpu_seconds(proc.pid), "mock": tree_cpu_seconds(stack.mock.pid)}
            started = time.monotonic()
            result = load(url, body, args)
            wall = time.monotonic() - started
            gateway_cpu_s = tree_cpu_seconds(proc.pid) - cpu_before["gateway"]
            cells.append({
                "workers": workers, "mode": mode, "rps": result["rps"], "p50_ms": result["p50_ms"],
                # CPU per request: unlike req/s it barely moves when the machine is saturated.
                "gateway_cpu_ms_per_req": round(1000 * gateway_cpu_s / result["sent"], 2) if result["sent"] else None,
                "p99_ms": result["p99_ms"], "errors": result["errors"],
                "cpu_pct": {"gateway": round(100 * gateway_cpu_s / wall),
                            "mock": round(100 * (tree_cpu_seconds(stack.mock.pid) - cpu_before["mock"]) / wall),
                            "loadgen": result["loadgen_cpu_pct"]},
            })
    finally:
        procs.stop(proc)
    return cells


def median_cell(cells: list[dict]) -> dict:
    """The cell with the median req/s (its other numbers come with it)."""
    return sorted(cells, key=lambda c: c["rps"])[len(cells) // 2]


def print_report(report: dict) -> None:
    print(f"{report['machine']}  revision {report['revision']}  c={report['args']['concurrency']}, "
          f"{report['args']['duration']:.0f} s per cell, median of {report['args']['repeat']}")
    print(f"{'processes':>9} {'mode':<10} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'errors':>6}  "
          f"cpu ms/req  cpu% gateway / mock / loadgen")
    for c in report["cells"]:
        cpu = c["cpu_pct"]
        print(f"{c['workers']:>9} {c['mode']:<10} {c['rps']:>8.1f} {c['p50_ms'] or 0:>8.1f} {c['p99_ms'] or 0:>8.1f} "
              f"{c['errors']:>6}  {c['gateway_cpu_ms_per_req'] or 0:>10.2f}  {cpu['gateway']} / {cpu['mock']} / {cpu['loadgen']}")
    for mode, ratio in report["ratios"].items():
        print(f"{mode}: {ratio['workers']} processes = {ratio['ratio']:.2f}x one (target >= 1.6x)")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=lambda v: [int(x) for x in v.split(",")], default=[1, 2])
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--chunks", type=int, default=20, help="content chunks per streamed answer")
    parser.add_argument("--repeat", type=int, default=1, help="rounds over the process counts; medians reported")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)

    def run(procs, workdir, report):
        report["cells"], report["ratios"] = [], {}
        stack = Stack(procs, workdir)
        stack.start_shared()
        stack.prepare_data("aiohttp")
        samples = []
        for rep in range(args.repeat):  # alternate the process counts: noise hits them alike
            for workers in args.workers:
                print(f"round {rep + 1}/{args.repeat}: {workers} web process(es)", file=sys.stderr, flush=True)
                samples += measure(procs, stack, workers, args)
        report["samples"] = samples
        report["cells"] = [median_cell([c for c in samples if (c["workers"], c["mode"]) == key])
                           for key in dict.fromkeys((c["workers"], c["mode"]) for c in samples)]
        base = {c["mode"]: c["rps"] for c in report["cells"] if c["workers"] == args.workers[0]}
        top = {c["mode"]: c["rps"] for c in report["cells"] if c["workers"] == args.workers[-1]}
        report["ratios"] = {mode: {"workers": args.workers[-1], "ratio": round(top[mode] / base[mode], 2)}
                            for mode in base if base[mode]}

    return run_bench("scaling", args, run, print_report, "cells")


if __name__ == "__main__":
    sys.exit(main())
