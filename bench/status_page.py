"""Benchmark: /status with 200 monitored models and 7 days of runs each (one every 5 minutes).

    /work/venv/bin/python bench/status_page.py                 # 200 targets, 7 days, 30 timed requests
    /work/venv/bin/python bench/status_page.py --targets 50 --requests 100

It uses a fresh SQLite database in a temporary DATA_DIR and an embedded Redis (the rate
limit counts every request), writes runs and their 5-minute rollups in bulk (as the monitor
would have written them, one rollup per run at a 5-minute interval), computes each target's
summary the way a new run does, then times GET /status, the htmx fragment and
/public/health/targets through Django's full request stack in this process. /status is timed
twice: "cold", with the cached cards invalidated before every request (as if a run had just
landed: the cards are rebuilt from the rollups), and as served from that cache. The target:
the page's median under 200 ms, cold. Everything it starts is stopped on exit.
"""
import argparse
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(BASE_DIR))
TARGET_MS = 200.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", type=int, default=200)
    parser.add_argument("--days", type=int, default=7)
    parser.add_argument("--requests", type=int, default=30)
    parser.add_argument("--keep", metavar="DIR", help="keep the generated data in DIR and reuse it next time")
    args = parser.parse_args()

    data_dir = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="status-bench-"))
    data_dir.mkdir(parents=True, exist_ok=True)
    populated = data_dir / "populated"
    os.environ["DATA_DIR"] = str(data_dir)
    os.environ.pop("DATABASE_URL", None)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "llmgateway.settings")
    os.environ["HEALTH_PUBLIC_RPM"] = "1000000"
    os.environ["HEALTH_STATUS_STALE_S"] = "0"  # a cold request really rebuilds
    redis_proc = None
    try:
        from llmgateway.management.commands.serve import start_embedded_redis

        redis_url, redis_proc = start_embedded_redis(data_dir / "redis")
        os.environ["REDIS_URL"] = redis_url
        import django

        django.setup()
        from django.core.management import call_command

        call_command("migrate", verbosity=0)
        if populated.exists():
            print(f"reusing the data in {data_dir}")
        else:
            started = time.perf_counter()
            runs = populate(args.targets, args.days)
            populated.touch()
            print(f"populated {args.targets} targets, {runs} runs and rollups in {time.perf_counter() - started:.1f} s")
        results = {
            "/status (cold)": time_get("/status", args.requests, cold=True),
            "/status (htmx fragment, cold)": time_get("/status", args.requests, cold=True, HTTP_HX_REQUEST="true"),
            "/status": time_get("/status", args.requests),
            "/status (htmx fragment)": time_get("/status", args.requests, HTTP_HX_REQUEST="true"),
            "/public/health/targets": time_get("/public/health/targets", args.requests),
        }
    finally:
        if redis_proc is not None:
            redis_proc.terminate()
            redis_proc.wait(5)
        if not args.keep:
            shutil.rmtree(data_dir, ignore_errors=True)

    print(f"{'path':32} {'median':>9} {'p95':>9} {'max':>9}")
    for path, times in results.items():
        times.sort()
        p95 = times[min(len(times) - 1, int(len(times) * 0.95))]
        print(f"{path:32} {statistics.median(times):8.1f}ms {p95:8.1f}ms {times[-1]:8.1f}ms")
    median = statistics.median(results["/status (cold)"])
    verdict = "met" if median < TARGET_MS else "MISSED"
    print(f"target: /status (cold) median under {TARGET_MS:.0f} ms: {verdict}")
    return 0 if median < TARGET_MS else 1


def populate(n_targets: int, days: int) -> int:
    """Targets with `days` of runs every 5 minutes (a few failures), their rollups and summaries."""
    from django.db import transaction
    from django.utils import timezone

    from healthcheck.models import HealthRollup, HealthRun, HealthTarget, MonitoringSettings
    from healthcheck.rollups import BUCKET_S, bucket_of, latency_bin, record_run, summarize
    from providers.models import Provider
    from routing.models import Route, RouteTarget

    rng = random.Random(7)
    monitoring = MonitoringSettings.load()
    monitoring.enabled = True
    monitoring.save()
    provider = Provider.objects.create(name="bench", base_url="http://127.0.0.1:9/v1")
    now = timezone.now()
    slots = days * 24 * 3600 // BUCKET_S
    total = 0
    for i in range(n_targets):
        route = Route.objects.create(name=f"model-{i:03d}")
        RouteTarget.objects.create(route=route, provider=provider, upstream_model=route.name)
        target = HealthTarget.objects.create(name=route.name, route=route)
        failure_rate = rng.choice([0.0, 0.0, 0.01, 0.05, 0.3])
        runs, rollups = [], []
        for slot in range(slots, 0, -1):
            at = now - timedelta(seconds=slot * BUCKET_S)
            failed = rng.random() < failure_rate
            latency = None if failed else rng.lognormvariate(6, 0.4)
            runs.append(HealthRun(target=target, scheduled_for=at, started_at=at, outcome="down" if failed else "healthy",
                                  latency_ms=latency, error_kind="timeout" if failed else "", request_id=f"req_{i}_{slot}"))
            rollups.append(HealthRollup(
                target=target, bucket=bucket_of(at), runs=1, failures=int(failed), latency_sum_ms=latency or 0,
                latency_bins={} if failed else {str(latency_bin(latency)): 1},
                errors={"timeout": 1} if failed else {}))
        with transaction.atomic():
            HealthRun.objects.bulk_create(runs, batch_size=2000)
            HealthRollup.objects.bulk_create(rollups, batch_size=2000)
        total += len(runs)
        # The last run goes through the real path: summary, state and incidents as a worker keeps them.
        last = HealthRun.objects.create(target=target, scheduled_for=now, started_at=now, outcome="healthy",
                                        latency_ms=300.0, request_id=f"req_{i}_now")
        record_run(last)
        assert summarize(target.pk, now)["runs"]["7d"] >= slots
    return total


def time_get(path: str, n: int, cold: bool = False, **headers) -> list[float]:
    from django.test import Client

    from healthcheck.status import bump_generation

    client = Client(HTTP_HOST="localhost")
    assert client.get(path, **headers).status_code == 200  # warm up
    times = []
    for _ in range(n):
        if cold:
            bump_generation()  # what a new run does: the next request rebuilds the cards
        started = time.perf_counter()
        response = client.get(path, **headers)
        times.append((time.perf_counter() - started) * 1000)
        assert response.status_code == 200, response.status_code
    return times


if __name__ == "__main__":
    sys.exit(main())
