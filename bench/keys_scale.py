"""Configuration at scale: 100,000 virtual keys and 1,000 routes (issue #12 item 4).

    /work/venv/bin/python bench/keys_scale.py                  # the figures in docs/performance.md
    /work/venv/bin/python bench/keys_scale.py --keys 20000 --routes 200 --json
    /work/venv/bin/python bench/keys_scale.py --old            # also time the old all-keys snapshot

In a scratch SQLite database and an embedded Redis of its own, it generates the keys (10 %
restricted to two models) and the routes (two targets and one prompt rule each), then measures:

1. the route snapshot: build time (median of 5) and the memory it holds (tracemalloc);
   with --old, the same for a snapshot that also holds every key, as before;
2. key lookups through KeyCache: a cold miss (one indexed query in a worker thread) and a
   warm hit, per lookup;
3. the event loop's lateness (a 1 ms ticker) while the snapshot is rebuilt back to back in a
   worker thread, and with no rebuild at all (the machine's noise floor);
4. two gateway processes (Daphne) on the scratch database: how long after a key is disabled
   (an ORM save, as the admin does) both refuse it, and the p50/p99 latency of authenticated
   requests (GET /v1/models/<name>: key lookup and snapshot, no upstream) with and without
   config changes forcing a rebuild every 0.5 s.
"""
import argparse
import asyncio
import gc
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def percentile(values, p):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))] if ordered else None


def setup_django(workdir: Path) -> dict:
    """Point Django at the scratch database and a fresh embedded Redis; returns their env."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GATEWAY_", "DJANGO_"))}
    env.update(DATA_DIR=str(workdir), DATABASE_URL=f"sqlite:///{workdir / 'keys.sqlite3'}",
               PYTHONDONTWRITEBYTECODE="1", DJANGO_SETTINGS_MODULE="llmgateway.settings")
    os.environ.update(env)
    import django

    from llmgateway.management.commands.serve import start_embedded_redis

    redis_url, redis_proc = start_embedded_redis(workdir / "redis")
    os.environ["REDIS_URL"] = env["REDIS_URL"] = redis_url
    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    return {"env": env, "redis": redis_proc}


def generate(keys: int, routes: int) -> list[str]:
    """The configuration, bulk-inserted (no signals: nothing runs yet). Returns some key secrets."""
    from keys.models import VirtualKey
    from keys.secrets import hash_key, visible_prefix
    from providers.models import Provider, ProviderKey
    from routing.models import PromptRule, Route, RouteTarget

    providers = []
    for i in range(2):
        provider = Provider.objects.create(name=f"p{i}", base_url=f"http://127.0.0.1:9/v{i}", timeout_s=5)
        key = ProviderKey(provider=provider, label="k")
        key.set_secret(f"sk-upstream-{i}")
        key.save()
        providers.append(provider)
    Route.objects.bulk_create([Route(name=f"model-{i}", aliases=[f"alias-{i}"]) for i in range(routes)],
                              batch_size=500)
    route_ids = list(Route.objects.values_list("pk", flat=True))
    RouteTarget.objects.bulk_create([RouteTarget(route_id=r, provider=p, upstream_model="m", priority=n)
                                     for r in route_ids for n, p in enumerate(providers, 1)], batch_size=1000)
    PromptRule.objects.bulk_create([PromptRule(route_id=r, operation="system_prepend", text="Be brief.")
                                    for r in route_ids], batch_size=1000)
    secrets, batch = [], []
    for i in range(keys):
        secret = f"sk-gw-bench-{i:06d}-{random.getrandbits(64):016x}"
        secrets.append(secret)
        batch.append(VirtualKey(name=f"key-{i}", key_hash=hash_key(secret), prefix=visible_prefix(secret),
                                all_models=i % 10 != 0, rpm=600 if i % 3 == 0 else None))
        if len(batch) == 5000:
            VirtualKey.objects.bulk_create(batch)
            batch = []
    VirtualKey.objects.bulk_create(batch)
    through = VirtualKey.allowed_routes.through
    restricted = VirtualKey.objects.filter(all_models=False).values_list("pk", flat=True)
    through.objects.bulk_create([through(virtualkey_id=k, route_id=random.choice(route_ids)) for k in restricted
                                 for _ in range(2)], batch_size=5000, ignore_conflicts=True)
    return secrets


def build_all_keys_too():
    """What the snapshot held before: every key, with its allowed models."""
    from keys.auth import key_entry
    from keys.models import VirtualKey
    from routing.snapshot import build_snapshot

    snapshot = build_snapshot("old")
    keys = {vk.key_hash: key_entry(vk, [r.pk for r in vk.allowed_routes.all()])
            for vk in VirtualKey.objects.prefetch_related("allowed_routes")}
    return snapshot, keys


def measure_build(build, runs: int) -> dict:
    times = []
    for _ in range(runs):
        gc.collect()
        started = time.perf_counter()
        build()
        times.append(time.perf_counter() - started)
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    held = build()
    gc.collect()
    size = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    del held
    return {"build_s_median": round(statistics.median(times), 3), "build_s_max": round(max(times), 3),
            "held_mb": round(size / 2**20, 1)}


async def measure_lookups(secrets: list[str], samples: int) -> dict:
    from keys.auth import authenticate_request
    from keys.lookup import KeyCache

    cache = KeyCache(size=samples * 2)
    chosen = random.sample(secrets, samples)
    cold, warm = [], []
    for secret in chosen:
        meta = {"HTTP_AUTHORIZATION": f"Bearer {secret}"}
        started = time.perf_counter()
        await authenticate_request(meta, cache)
        cold.append(time.perf_counter() - started)
    for secret in chosen:
        meta = {"HTTP_AUTHORIZATION": f"Bearer {secret}"}
        started = time.perf_counter()
        await authenticate_request(meta, cache)
        warm.append(time.perf_counter() - started)
    # What a cached key costs: a fresh cache filled under tracemalloc.
    filled = KeyCache(size=samples * 2)
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for secret in chosen:
        await authenticate_request({"HTTP_AUTHORIZATION": f"Bearer {secret}"}, filled)
    gc.collect()
    per_key = (tracemalloc.get_traced_memory()[0] - before) / samples
    tracemalloc.stop()
    us = lambda v: round(v * 1e6, 1)  # noqa: E731
    return {"cached_key_bytes": round(per_key),
            "cold_miss_us_p50": us(percentile(cold, 50)), "cold_miss_us_p99": us(percentile(cold, 99)),
            "warm_hit_us_p50": us(percentile(warm, 50)), "warm_hit_us_p99": us(percentile(warm, 99)),
            "queries": cache.loads}


async def measure_loop_lag(build, seconds: float) -> dict:
    """Lateness of a 1 ms ticker on this loop while `build` runs back to back in a worker thread
    (as SnapshotKeeper does)."""
    from asgiref.sync import sync_to_async

    lags, stop, builds = [], asyncio.Event(), 0

    async def tick():
        while not stop.is_set():
            started = time.perf_counter()
            await asyncio.sleep(0.001)
            lags.append(time.perf_counter() - started - 0.001)

    ticker = asyncio.create_task(tick())
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if build is None:  # the machine's own noise: no build at all
            await asyncio.sleep(0.1)
            continue
        await sync_to_async(build, thread_sensitive=False)()
        builds += 1
    stop.set()
    await ticker
    ms = lambda v: round(v * 1000, 2)  # noqa: E731
    return {"builds": builds, "lag_ms_p50": ms(percentile(lags, 50)), "lag_ms_p99": ms(percentile(lags, 99)),
            "lag_ms_max": ms(max(lags))}


# ---------------------------------------------------------------- two gateway processes

def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_gateways(env: dict, count: int) -> list[tuple[subprocess.Popen, str]]:
    import httpx

    gateways = []
    for _ in range(count):
        port = free_port()
        proc = subprocess.Popen([sys.executable, "-m", "daphne", "-v", "0", "-b", "127.0.0.1", "-p", str(port),
                                 "llmgateway.asgi:application"], cwd=ROOT, env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        gateways.append((proc, f"http://127.0.0.1:{port}"))
    for proc, url in gateways:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(url + "/readyz", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("a gateway did not start")
            time.sleep(0.1)
    return gateways


def stop_gateways(gateways) -> None:
    for proc, _ in gateways:
        proc.send_signal(signal.SIGTERM)
    for proc, _ in gateways:
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()


def disable_to_refused(urls: list[str], secrets: list[str], trials: int) -> dict:
    import httpx

    from keys.models import VirtualKey
    from keys.secrets import hash_key

    delays = []
    disabled = random.sample(secrets, trials)
    with httpx.Client(timeout=10) as client:
        for secret in disabled:
            headers = {"Authorization": f"Bearer {secret}"}
            statuses = [client.get(url + "/v1/models/model-0", headers=headers).status_code for url in urls * 2]
            if set(statuses) - {200, 404}:  # a restricted key may not see model-0: still authenticated
                raise RuntimeError(f"key not accepted before disabling: {statuses}")
            key = VirtualKey.objects.get(key_hash=hash_key(secret))
            key.enabled = False
            key.save()  # as the admin does: the signal publishes the change after commit
            started, waiting = time.monotonic(), set(urls)
            while waiting and time.monotonic() - started < 30:
                waiting = {url for url in waiting
                           if client.get(url + "/v1/models/model-0", headers=headers).status_code != 401}
            delays.append(time.monotonic() - started)
    for secret in disabled:  # the latency cells use the keys still enabled
        secrets.remove(secret)
    return {"trials": trials, "refused_by_all_s_max": round(max(delays), 2),
            "refused_by_all_s_median": round(statistics.median(delays), 2)}


async def request_latency(urls: list[str], secrets: list[str], seconds: float, concurrency: int,
                          bump_every_s: float | None) -> list[float]:
    """Latencies of GET /v1/models/<name> with 200 warm keys, `concurrency` at a time across the
    processes; with `bump_every_s`, the config version is bumped that often (a rebuild in every
    process at its next poll)."""
    import httpx

    from routing.snapshot import bump_config_version

    latencies, stop = [], asyncio.Event()
    active = random.sample(secrets, 200)

    async def client_task(client, n):
        while not stop.is_set():
            url = urls[n % len(urls)]
            started = time.perf_counter()
            r = await client.get(f"{url}/v1/models/model-{n % 50}",
                                 headers={"Authorization": f"Bearer {random.choice(active)}"})
            latencies.append(time.perf_counter() - started)
            if r.status_code not in (200, 404):
                raise RuntimeError(f"unexpected status {r.status_code}")

    async def bumper():
        while not stop.is_set():
            await asyncio.sleep(bump_every_s)
            await asyncio.to_thread(bump_config_version)

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=30, limits=limits) as client:
        await asyncio.gather(*(client.get(f"{url}/v1/models/model-0",  # warm the key caches
                                          headers={"Authorization": f"Bearer {s}"}) for s in active for url in urls))
        tasks = [asyncio.create_task(client_task(client, n)) for n in range(concurrency)]
        if bump_every_s:
            tasks.append(asyncio.create_task(bumper()))
        await asyncio.sleep(seconds)
        stop.set()
        await asyncio.gather(*tasks)
    return latencies


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keys", type=int, default=100_000)
    parser.add_argument("--routes", type=int, default=1000)
    parser.add_argument("--old", action="store_true", help="also measure the old snapshot that held every key")
    parser.add_argument("--seconds", type=float, default=20.0, help="per latency cell, over all rounds")
    parser.add_argument("--rounds", type=int, default=4, help="alternating rounds of the latency cells")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    random.seed(12)

    workdir = Path(tempfile.mkdtemp(prefix="keys-scale-"))
    stack = setup_django(workdir)
    results = {"keys": args.keys, "routes": args.routes}
    gateways = []
    try:
        started = time.perf_counter()
        secrets = generate(args.keys, args.routes)
        results["generate_s"] = round(time.perf_counter() - started, 1)
        from routing.snapshot import _build_in_thread

        results["snapshot"] = measure_build(lambda: _build_in_thread("bench"), runs=5)
        if args.old:
            results["old_snapshot_with_every_key"] = measure_build(build_all_keys_too, runs=2)
        results["lookups"] = asyncio.run(measure_lookups(secrets, 1000))
        results["loop_lag_idle"] = asyncio.run(measure_loop_lag(None, 5.0))
        results["loop_lag_during_rebuilds"] = asyncio.run(measure_loop_lag(lambda: _build_in_thread("bench"), 5.0))
        if args.old:
            results["old_loop_lag_during_rebuilds"] = asyncio.run(measure_loop_lag(build_all_keys_too, 15.0))

        gateways = start_gateways(stack["env"], 2)
        urls = [url for _, url in gateways]
        results["disabled_key"] = disable_to_refused(urls, secrets, trials=5)
        # Alternating rounds, so that what else runs on the machine falls on both cells alike.
        cells = {"requests_without_rebuilds": None, "requests_with_a_rebuild_every_0_5_s": 0.5}
        samples = {name: [] for name in cells}
        for _ in range(args.rounds):
            for name, bump_every_s in cells.items():
                samples[name] += asyncio.run(request_latency(urls, secrets, args.seconds / args.rounds,
                                                             args.concurrency, bump_every_s))
        ms = lambda v: round(v * 1000, 2)  # noqa: E731
        for name, latencies in samples.items():
            results[name] = {"requests": len(latencies), "p50_ms": ms(percentile(latencies, 50)),
                             "p99_ms": ms(percentile(latencies, 99)), "max_ms": ms(max(latencies))}
        import psutil

        results["gateway_rss_mb"] = [round(psutil.Process(proc.pid).memory_info().rss / 2**20) for proc, _ in gateways]
    finally:
        stop_gateways(gateways)
        stack["redis"].terminate()
        stack["redis"].wait(30)  # it saves on the way out: remove its directory only after
        import shutil

        shutil.rmtree(workdir, ignore_errors=True)
    print(json.dumps(results, indent=None if args.json else 2))


if __name__ == "__main__":
    main()
