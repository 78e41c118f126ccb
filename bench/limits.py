"""Micro-benchmark: the Redis cost of one request's admission and routing state.

    .venv/bin/python bench/limits.py                 # 2000 requests, sequential and at c=32
    .venv/bin/python bench/limits.py -n 5000 -c 64

Per request it times admit + settle (keys/limits.py) for a key with RPM, TPM and a budget, and
read_state + report_attempt (routing/resilience.py) for a route of three targets and keys.
It counts what the client writes to Redis to show that each call is ONE round trip (one EVALSHA).
Uses REDIS_URL when set, else starts an embedded redis-server on a loopback port (stopped on exit).
"""
import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from decimal import Decimal
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "llmgateway.settings")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", type=int, default=2000, help="requests per run")
    parser.add_argument("-c", type=int, default=32, help="concurrency of the concurrent run")
    args = parser.parse_args()

    import django
    django.setup()
    from django.conf import settings

    proc = None
    url = os.environ.get("REDIS_URL")
    if not url:
        from llmgateway.management.commands.serve import start_embedded_redis
        url, proc = start_embedded_redis(Path(tempfile.mkdtemp(prefix="bench-limits-")))
    settings.REDIS_URL = url
    try:
        asyncio.run(bench(url, args.n, args.c))
    finally:
        if proc:
            proc.terminate()
            proc.wait(5)


async def bench(url: str, n: int, concurrency: int):
    import redis.asyncio as aioredis

    from keys.auth import KeyEntry
    from keys.limits import admit, settle
    from routing.resilience import read_state, report_attempt

    sent = [0]

    class CountingConnection(aioredis.Connection):
        """Counts the writes to Redis: one per round trip (a pipeline would be one write too)."""

        async def send_packed_command(self, command, check_health=True):
            sent[0] += 1
            return await super().send_packed_command(command, check_health)

    pool = aioredis.BlockingConnectionPool.from_url(url, max_connections=concurrency,
                                                    connection_class=CountingConnection)
    client = aioredis.Redis(connection_pool=pool)
    await client.ping()  # connect, and load nothing yet
    key_id = int(time.time())
    key = KeyEntry(id=key_id, name="bench", prefix="sk-gw-b", key_hash="0" * 64, enabled=True, expires_at=None,
                   allowed_route_ids=None, rpm=10**9, tpm=10**12, budget_usd=Decimal("1000000"),
                   budget_period="monthly", log_bodies=False)
    targets, keys = [key_id + 1, key_id + 2, key_id + 3], [key_id + 11, key_id + 12, key_id + 13]

    async def limits_once(timings):
        t = time.perf_counter()
        a = await admit(key, estimated_tokens=1200, max_cost_usd=0.02, redis=client)
        t1 = time.perf_counter()
        await settle(a, actual_tokens=900, actual_cost_usd=0.01, redis=client)
        t2 = time.perf_counter()
        assert a.allowed
        timings["admit"].append(t1 - t)
        timings["settle"].append(t2 - t1)

    async def routing_once(timings):
        t = time.perf_counter()
        state = await read_state(7, targets, keys, session_id="bench-session", redis=client)
        t1 = time.perf_counter()
        await report_attempt(7, targets[0], keys[0], outcome="ok", latency_ms=120.0,
                             probe=state.is_probe(targets[0]), redis=client)
        t2 = time.perf_counter()
        timings["read_state"].append(t1 - t)
        timings["report_attempt"].append(t2 - t1)

    for label, once in (("admission", limits_once), ("routing state", routing_once)):
        for name, width in (("sequential", 1), (f"c={concurrency}", concurrency)):
            timings = {"admit": [], "settle": [], "read_state": [], "report_attempt": []}
            before = sent[0]
            started = time.perf_counter()
            await run_concurrently(lambda: once(timings), n, width)
            elapsed = time.perf_counter() - started
            calls = sum(len(v) for v in timings.values())
            # New connections add a handshake write or two, and each script its first load.
            print(f"{label:14} {name:10} {n / elapsed:8.0f} requests/s, "
                  f"{(sent[0] - before) / calls:.3f} round trips per call")
            for op, samples in timings.items():
                if samples:
                    print(f"    {op:15} p50 {pct(samples, 50):7.3f} ms   p95 {pct(samples, 95):7.3f} ms   "
                          f"p99 {pct(samples, 99):7.3f} ms")
    await client.aclose()


async def run_concurrently(make, n: int, width: int):
    remaining = iter(range(n))

    async def worker():
        for _ in remaining:
            await make()
    await asyncio.gather(*(worker() for _ in range(width)))


def pct(samples, p) -> float:
    return statistics.quantiles(samples, n=100)[p - 1] * 1000 if len(samples) > 1 else samples[0] * 1000


if __name__ == "__main__":
    main()
