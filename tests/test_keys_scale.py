"""Virtual keys at scale: looked up on demand through a bounded cache, kept in step by published
key changes (keys/lookup.py), never by rebuilding the route snapshot. Real database, real
Redis; the cross-process properties over two gateway processes (Daphne) on loopback."""
import asyncio
import time

import httpx
import pytest
from django.test.utils import CaptureQueriesContext

from keys.auth import authenticate_request
from keys.lookup import (KEY_CHANGES_KEY, KEY_CHANGES_KEPT, KEYS_VERSION_KEY, KeyCache, _load_key_in_thread,
                         load_key, publish_key_changes)
from keys.secrets import hash_key
from llmgateway.errors import AuthenticationFailed

from .factories import make_key, make_route

JUNK = [f"sk-gw-junk-{i}" for i in range(5)]


def redis():
    from llmgateway.redis import sync_client
    return sync_client()


def bearer(secret):
    return {"HTTP_AUTHORIZATION": f"Bearer {secret}"}


class CountingLoad:
    """The real database lookup, counted."""

    def __init__(self):
        self.calls = []

    async def __call__(self, key_hash):
        from asgiref.sync import sync_to_async

        self.calls.append(key_hash)
        return await sync_to_async(_load_key_in_thread, thread_sensitive=False)(key_hash)


def new_async_redis():
    from llmgateway.redis import new_async_client
    return new_async_client()


# --- the lookup and the cache, in this process ----------------------------------------------------

def test_a_key_is_read_with_one_query_and_keeps_its_allowed_models(db_access):
    from django.db import connection

    first, second = make_route(), make_route()
    key, secret = make_key(routes=[first, second], rpm=7)
    with CaptureQueriesContext(connection) as queries:
        entry = load_key(hash_key(secret))
    assert len(queries) == 1
    assert (entry.id, entry.rpm, entry.allowed_route_ids) == (key.pk, 7, frozenset({first.pk, second.pk}))
    assert load_key(hash_key("sk-gw-never-issued")) is None


def test_a_restricted_key_whose_only_model_is_deleted_stays_restricted(db_access):
    route = make_route()
    key, secret = make_key(routes=[route])
    route.delete()
    entry = load_key(hash_key(secret))
    assert entry.allowed_route_ids == frozenset() and not entry.may_use(route.pk)


def test_a_cached_key_is_answered_without_another_query(db_access):
    key, secret = make_key()
    load = CountingLoad()

    async def main():
        cache = KeyCache(load=load)
        return [(await authenticate_request(bearer(secret), cache)).id for _ in range(50)]

    assert asyncio.run(main()) == [key.pk] * 50
    assert len(load.calls) == 1


def test_concurrent_misses_for_one_key_share_one_query(db_access):
    key, secret = make_key()
    load = CountingLoad()

    async def main():
        cache = KeyCache(load=load)
        return await asyncio.gather(*(authenticate_request(bearer(secret), cache) for _ in range(100)))

    assert {entry.id for entry in asyncio.run(main())} == {key.pk}
    assert len(load.calls) == 1


def test_unknown_key_spam_costs_one_query_per_distinct_hash_per_negative_ttl(db_access):
    load = CountingLoad()

    async def spam(cache, rounds):
        refused = 0
        for _ in range(rounds):
            for outcome in await asyncio.gather(*(authenticate_request(bearer(junk), cache) for junk in JUNK * 20),
                                                return_exceptions=True):
                refused += isinstance(outcome, AuthenticationFailed)
        return refused

    async def main():
        cache = KeyCache(negative_ttl_s=0.5, load=load)
        refused = await spam(cache, 5)
        queries_in_one_ttl = len(load.calls)
        await asyncio.sleep(0.6)
        refused += await spam(cache, 1)
        return refused, queries_in_one_ttl

    refused, queries_in_one_ttl = asyncio.run(main())
    assert refused == 6 * len(JUNK) * 20
    assert queries_in_one_ttl == len(JUNK)
    assert sorted(load.calls) == sorted(hash_key(junk) for junk in JUNK * 2)  # once more after the TTL


def test_the_caches_stay_within_their_bounds(db_access):
    secrets = [make_key()[1] for _ in range(5)]

    async def main():
        cache = KeyCache(size=3, negative_size=2, load=CountingLoad())
        for secret in secrets + JUNK:
            try:
                await authenticate_request(bearer(secret), cache)
            except AuthenticationFailed:
                pass
        return len(cache._known), len(cache._unknown), cache.cached(hash_key(secrets[-1]), time.monotonic())

    known, unknown, newest = asyncio.run(main())
    assert (known, unknown) == (3, 2) and newest.key_hash == hash_key(secrets[-1])


def test_a_lookup_that_began_before_a_change_is_not_kept(db_access):
    """It may have read the row as it was before the change: the answer serves the requests
    that waited for it, and the next request reads the key again."""
    key, secret = make_key()
    load = CountingLoad()
    release = asyncio.Event()

    async def slow_load(key_hash):
        await release.wait()
        return await load(key_hash)

    async def main():
        cache = KeyCache(load=slow_load)
        waiting = asyncio.ensure_future(authenticate_request(bearer(secret), cache))
        await asyncio.sleep(0.05)
        cache.evict([hash_key(secret)])  # the poller saw the key change meanwhile
        release.set()
        await waiting
        await authenticate_request(bearer(secret), cache)
        return len(load.calls)

    assert asyncio.run(main()) == 2


# --- publishing key changes -----------------------------------------------------------------------

def test_a_key_change_publishes_its_hash_and_leaves_the_config_version_alone(db_access):
    from routing.snapshot import VERSION_KEY

    config_before = redis().get(VERSION_KEY)
    seq_before = int(redis().get(KEYS_VERSION_KEY) or 0)
    key, old_secret = make_key()
    new_secret = key.set_key()
    key.save()
    key.delete()
    assert redis().get(VERSION_KEY) == config_before
    seq = int(redis().get(KEYS_VERSION_KEY))
    published = [entry.decode() for entry in redis().lrange(KEY_CHANGES_KEY, -(seq - seq_before), -1)]
    # Created; secret replaced (the old hash goes too, or the old secret would keep working); deleted.
    assert published == [hash_key(old_secret), " ".join(sorted([hash_key(old_secret), hash_key(new_secret)])),
                         hash_key(new_secret)]


def test_a_process_evicts_just_the_changed_keys_and_clears_all_on_a_gap(db_access):
    (key_a, secret_a), (_, secret_b) = make_key(), make_key()

    async def main():
        client = new_async_redis()
        cache = KeyCache(load=CountingLoad())
        await cache.follow_changes(client)  # in step from here on
        for secret in (secret_a, secret_b):
            await authenticate_request(bearer(secret), cache)
        key_a.enabled = False
        await asyncio.to_thread(key_a.save)
        await cache.follow_changes(client)
        after_one_change = (hash_key(secret_a) in cache._known, hash_key(secret_b) in cache._known)
        await asyncio.to_thread(lambda: [publish_key_changes([f"{i:064x}"]) for i in range(KEY_CHANGES_KEPT + 1)])
        await cache.follow_changes(client)  # further behind than the list reaches
        after_a_gap = len(cache)
        with pytest.raises(AuthenticationFailed):
            await authenticate_request(bearer(secret_a), cache)
        await client.aclose()
        return after_one_change, after_a_gap

    assert asyncio.run(main()) == ((False, True), 0)


def test_a_key_change_does_not_rebuild_the_route_snapshot(db_access, settings):
    """One process's keeper, polling every 0.1 s: key saves evict keys; only a route change
    builds a snapshot."""
    from llmgateway import runtime

    settings.GATEWAY_SNAPSHOT_POLL_S = 0.1
    key, secret = make_key()

    async def main():
        async with runtime.opened() as gateway:
            keeper = gateway.keeper
            await keeper.get()
            await authenticate_request(bearer(secret), keeper.keys)
            await asyncio.sleep(0.3)  # the poller's first pass: in step with key changes
            await authenticate_request(bearer(secret), keeper.keys)
            builds, loads = keeper.builds, keeper.keys.loads
            for rpm in range(1, 6):
                key.rpm = rpm
                await asyncio.to_thread(key.save)
                await asyncio.sleep(0.3)
                assert (await authenticate_request(bearer(secret), keeper.keys)).rpm == rpm
            after_key_changes = (keeper.builds - builds, keeper.keys.loads - loads)
            await asyncio.to_thread(make_route)
            await asyncio.sleep(0.5)
            return after_key_changes, keeper.builds - builds

    (key_builds, key_loads), builds_after_route_change = asyncio.run(main())
    assert (key_builds, key_loads) == (0, 5)  # no rebuild; one lookup per change
    assert builds_after_route_change == 1


def test_a_keeper_stops_even_when_its_pollers_cancellation_is_lost(db_access, settings):
    """A cancellation can be lost inside a Redis call (the poller came back from it still
    "cancelling" and polled on): stopping must not wait for it forever (it hung a graceful
    stop at exit, and this module's tests under load)."""
    from llmgateway import runtime

    settings.GATEWAY_SNAPSHOT_POLL_S = 0.05

    async def main():
        async with runtime.opened() as gateway:
            keeper = gateway.keeper
            await keeper.get()
            follow_changes = keeper.keys.follow_changes
            calls = 0

            async def loses_cancellations(client):
                nonlocal calls
                calls += 1
                try:
                    await asyncio.sleep(0.2)
                except asyncio.CancelledError:
                    pass  # what the library did: carry on as if nothing happened
                await follow_changes(client)

            keeper.keys.follow_changes = loses_cancellations
            while not calls:
                await asyncio.sleep(0.01)
            started = time.monotonic()
            await asyncio.wait_for(keeper.stop(), 3)
            return time.monotonic() - started, keeper._poller

    took, poller = asyncio.run(main())
    assert took < 1 and poller is None


# --- two gateway processes ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def pair(gateway_factory):
    """Two gateway processes polling at the default interval (1 s)."""
    return gateway_factory(GATEWAY_SNAPSHOT_POLL_S="1.0"), gateway_factory(GATEWAY_SNAPSHOT_POLL_S="1.0")


def status(gateway, secret):
    return httpx.get(gateway.url + "/v1/models", headers={"Authorization": f"Bearer {secret}"}, timeout=10).status_code


def seconds_until_refused(pair, secret, timeout=10.0):
    """How long until every process answers 401 for `secret`."""
    start = time.monotonic()
    waiting = set(pair)
    while waiting and time.monotonic() - start < timeout:
        waiting = {g for g in waiting if status(g, secret) != 401}
        time.sleep(0.02)
    assert not waiting, "a process still accepts the key"
    return time.monotonic() - start


def test_a_key_created_after_start_works_at_once_in_every_process(pair, live, db_access):
    for gateway in pair:
        assert status(gateway, "sk-gw-warm-up") == 401  # both processes serving
    key, secret = make_key()
    assert [status(gateway, secret) for gateway in pair] == [200, 200]


def test_a_key_disabled_in_the_database_is_refused_by_every_process_within_2_s(pair, live, db_access):
    key, secret = make_key()
    assert [status(gateway, secret) for gateway in pair * 2] == [200] * 4  # cached in both
    key.enabled = False
    key.save()
    assert seconds_until_refused(pair, secret) < 2.0


def test_a_deleted_key_is_refused_by_every_process_within_2_s(pair, live, db_access):
    key, secret = make_key()
    assert [status(gateway, secret) for gateway in pair * 2] == [200] * 4
    key.delete()
    assert seconds_until_refused(pair, secret) < 2.0


def test_a_replaced_secret_stops_working_and_the_new_one_works(pair, live, db_access):
    key, old_secret = make_key()
    assert [status(gateway, old_secret) for gateway in pair] == [200, 200]
    new_secret = key.set_key()
    key.save()
    assert [status(gateway, new_secret) for gateway in pair] == [200, 200]
    assert seconds_until_refused(pair, old_secret) < 2.0


def test_a_key_restricted_to_a_new_model_gets_it_within_2_s(pair, live, db_access):
    route = make_route()
    key, secret = make_key(routes=[make_route()])

    def model_status(gateway):
        return httpx.get(f"{gateway.url}/v1/models/{route.name}", headers={"Authorization": f"Bearer {secret}"},
                         timeout=10).status_code

    assert [model_status(gateway) for gateway in pair] == [404, 404]  # not allowed: not listed
    key.allowed_routes.add(route)
    start = time.monotonic()
    while {model_status(gateway) for gateway in pair} != {200} and time.monotonic() - start < 10:
        time.sleep(0.05)
    assert time.monotonic() - start < 2.0
