"""The immutable in-memory configuration the hot path reads, rebuilt when the config version changes.

A save in the admin or a `gateway_config apply` bumps a version counter in Redis (see
signals.py). Each gateway process polls that counter in the background and, when it
moves, rebuilds the snapshot from the database in a worker thread and swaps it in
with one assignment. Requests never wait for the database, except the very first one
in a process.

Virtual keys are not in the snapshot: 100,000 of them made it slow to build, large, and
rebuilt whole for any key's change. They are looked up on demand through the keeper's
KeyCache (keys/lookup.py), which the same poller keeps in step with key changes.
"""
import asyncio
import gc
import logging
import re
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from types import MappingProxyType

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import close_old_connections

from keys.lookup import KeyCache
from llmgateway.redis import async_client, sync_client, warn_unreachable
from providers.adapters import ADAPTERS

from .logentries import Price  # noqa: F401  (defined there: the log writer reads prices without this module)

log = logging.getLogger(__name__)

VERSION_KEY = "gw:config_version"
UNDECRYPTABLE = "its provider keys cannot be decrypted with the configured ENCRYPTION_KEYS"
UNDECRYPTABLE_HEADERS = "its secret headers cannot be decrypted with the configured ENCRYPTION_KEYS"
# Rebuild at least this often even if the counter did not move (a lost bump, a
# Redis outage): correctness must not hang on one INCR.
MAX_AGE_S = 60.0
# How long stopping a keeper waits for its poller (a pass is a Redis read and perhaps a build).
STOP_WAIT_S = 5.0


@dataclass(frozen=True, slots=True)
class ProviderKeyEntry:
    id: int
    label: str
    secret: str = field(repr=False)
    weight: int


@dataclass(frozen=True, slots=True)
class ProviderEntry:
    id: int
    name: str
    type: str
    base_url: str
    timeout_s: float
    weight: int
    extra_headers: tuple[tuple[str, str], ...]
    keys: tuple[ProviderKeyEntry, ...]
    unusable: str = ""  # why the provider must not be called (e.g. its keys cannot be decrypted)
    native_responses: bool = False  # an OpenAI-compatible upstream that also serves /responses


@dataclass(frozen=True, slots=True)
class TargetEntry:
    id: int
    provider: ProviderEntry
    upstream_model: str
    priority: int
    weight: int
    price: Price | None
    context_window: int | None = None  # tokens, from the catalog (None: unknown)
    max_output_tokens: int | None = None  # from the catalog (None: unknown)


@dataclass(frozen=True, slots=True)
class RuleEntry:
    operation: str
    pattern: re.Pattern | None
    text: str


@dataclass(frozen=True, slots=True)
class RouteEntry:
    id: int
    name: str
    aliases: tuple[str, ...]
    strategy: str
    max_attempts: int
    retry_on_status: frozenset[int]
    cooldown_s: int
    targets: tuple[TargetEntry, ...]
    rules: tuple[RuleEntry, ...]
    created: int
    session_ttl_s: int = 3600  # session affinity; 0: off


@dataclass(frozen=True, slots=True)
class Snapshot:
    version: str
    built_at: float
    routes_by_name: MappingProxyType  # name or alias -> RouteEntry
    routes: tuple[RouteEntry, ...]
    unusable_providers: tuple[str, ...] = ()  # names of providers that must not be called

    def route(self, model: str) -> RouteEntry | None:
        return self.routes_by_name.get(model)


def _price(entry) -> Price | None:
    if entry is None or (entry.input_price_per_m is None and entry.output_price_per_m is None):
        return None
    input_price = float(entry.input_price_per_m or 0)
    cached = entry.cached_input_price_per_m
    return Price(
        input=input_price,
        output=float(entry.output_price_per_m or 0),
        cached_input=float(cached) if cached is not None else input_price,
    )


def _catalog_fields(entry) -> dict:
    if entry is None:
        return {"price": None}
    price, context_window, max_output = entry
    return {"price": price, "context_window": context_window or None, "max_output_tokens": max_output or None}


def build_snapshot(version: str = "") -> Snapshot:
    """Read the whole configuration from the database (synchronous: call it in a thread)."""
    from providers.models import CatalogEntry, Provider

    from .models import PromptRule, Route, RouteTarget

    # Routes are read first, then providers, then targets (separate statements, each seeing what
    # was committed when it ran): a route in this snapshot then comes with every target that
    # was committed with it or before it, and their providers. Read last, a route saved with its
    # targets just after the targets were read would be served without any until the next build.
    route_rows = list(Route.objects.filter(enabled=True).order_by("name").values(
        "id", "name", "aliases", "strategy", "max_attempts", "retry_on_status", "cooldown_s", "created_at",
        "session_ttl_s"))
    providers = {}
    for p in Provider.objects.filter(enabled=True).prefetch_related("keys"):
        keys, undecryptable = [], 0
        for k in p.keys.all():
            if not k.enabled:
                continue
            try:
                keys.append(ProviderKeyEntry(id=k.pk, label=k.label, secret=k.get_secret(), weight=k.weight))
            except ValueError:
                undecryptable += 1
                log.error("provider key %s of provider %s cannot be decrypted with ENCRYPTION_KEYS; "
                          "the key is not used", k.pk, p.name)
        # A provider whose every key is unreadable must never be called without one.
        unusable = UNDECRYPTABLE if undecryptable and not keys else ""
        try:
            headers = p.header_values()  # secret extra headers decrypted
        except ValueError:
            headers = p.extra_headers or {}
            unusable = UNDECRYPTABLE_HEADERS
            log.error("the secret headers of provider %s cannot be decrypted with ENCRYPTION_KEYS; "
                      "the provider is not used", p.name)
        providers[p.pk] = ProviderEntry(
            id=p.pk, name=p.name, type=p.type, base_url=p.base_url.rstrip("/"), timeout_s=p.timeout_s,
            weight=p.weight, extra_headers=tuple((str(k), str(v)) for k, v in headers.items()),
            keys=tuple(keys), unusable=unusable,
            # Honoured only for provider types that can speak Responses at all.
            native_responses=p.native_responses and getattr(ADAPTERS.get(p.type), "speaks_responses", False),
        )
    catalog = {(c.provider_id, c.model_id): (_price(c), c.context_window, c.max_output_tokens)
               for c in CatalogEntry.objects.all()}

    # Flat queries grouped here: prefetch_related spent most of a 1,000-route build compiling
    # IN lists and making model instances.
    targets_of, rules_of = {}, {}
    for t in (RouteTarget.objects.filter(enabled=True, route__enabled=True, provider_id__in=list(providers))
              .order_by("route_id", "priority", "id")
              .values_list("id", "route_id", "provider_id", "upstream_model", "priority", "weight")):
        pk, route_id, provider_id, upstream_model, priority, weight = t
        targets_of.setdefault(route_id, []).append(
            TargetEntry(id=pk, provider=providers[provider_id], upstream_model=upstream_model, priority=priority,
                        weight=weight, **_catalog_fields(catalog.get((provider_id, upstream_model)))))
    for pk, route_id, operation, pattern, text in (
            PromptRule.objects.filter(enabled=True, route__enabled=True).order_by("route_id", "order", "id")
            .values_list("id", "route_id", "operation", "pattern", "text")):
        if entry := _rule_entry(pk, operation, pattern, text):
            rules_of.setdefault(route_id, []).append(entry)

    routes, by_name = [], {}
    for r in route_rows:
        entry = RouteEntry(
            id=r["id"], name=r["name"], aliases=tuple(r["aliases"] or ()), strategy=r["strategy"],
            max_attempts=r["max_attempts"], retry_on_status=frozenset(r["retry_on_status"] or ()),
            cooldown_s=r["cooldown_s"], targets=tuple(targets_of.get(r["id"], ())),
            rules=tuple(rules_of.get(r["id"], ())), created=int(r["created_at"].timestamp()),
            session_ttl_s=r["session_ttl_s"],
        )
        routes.append(entry)
        for name in (*entry.aliases, entry.name):  # a route's own name wins over another's alias
            by_name[name] = entry

    return Snapshot(version=version, built_at=time.monotonic(),
                    routes_by_name=MappingProxyType(by_name), routes=tuple(routes),
                    unusable_providers=tuple(p.name for p in providers.values() if p.unusable))


def _rule_entry(pk: int, operation: str, pattern: str, text: str) -> RuleEntry | None:
    """The rule, or None (logged) when its pattern does not compile."""
    compiled = None
    if pattern:
        try:
            compiled = re.compile(pattern)
        except re.error:
            log.error("prompt rule %s: pattern %r does not compile; rule skipped", pk, pattern)
            return None
    return RuleEntry(operation=operation, pattern=compiled, text=text)


def bump_config_version() -> None:
    """Tell every gateway process to rebuild its snapshot. Called after config commits."""
    try:
        sync_client().incr(VERSION_KEY)
    except Exception as exc:  # a Redis outage must not fail an admin save
        warn_unreachable(exc, f"running gateways pick the change up within {MAX_AGE_S:.0f} s")


class SnapshotKeeper:
    """Holds the current snapshot and the key cache of one event loop's runtime, and keeps
    both fresh."""

    def __init__(self):
        self.current: Snapshot | None = None
        self.keys = KeyCache()
        self.builds = 0  # snapshots built by this keeper (for tests and the bench)
        self._poller: asyncio.Task | None = None
        self._first_load: asyncio.Future | None = None
        self._pinned = False
        self._stopping = False

    async def get(self) -> Snapshot:
        snapshot = self.current
        if snapshot is None:
            snapshot = await self._load_first()
        if self._poller is None and not self._pinned:
            self._poller = asyncio.create_task(self._poll(), name="snapshot-poller")
        return snapshot

    def pin(self, snapshot: Snapshot) -> None:
        """Serve `snapshot` and never poll (a short-lived loop that brings its own snapshot, like
        a health probe: a rebuild in a thread could outlive the loop and hold up its shutdown)."""
        self.current = snapshot
        self._pinned = True

    async def _load_first(self) -> Snapshot:
        # Concurrent first requests share one build. A failed build is not kept: the next
        # request tries again (a database that was down at startup must not mean an error
        # until the process is restarted).
        if self._first_load is None:
            self._first_load = asyncio.ensure_future(self._rebuild(await self._read_version()))
        load = self._first_load
        try:
            return await asyncio.shield(load)
        except Exception:
            if self._first_load is load:
                self._first_load = None
            raise

    async def stop(self) -> None:
        """Stop polling (within about one poll interval, or STOP_WAIT_S at most)."""
        self._stopping = True
        poller, self._poller = self._poller, None
        if poller is not None:
            poller.cancel()
            # Not `await poller`: a cancellation can be lost inside a Redis call (seen: the
            # poller returned from follow_changes still "cancelling" and polled on forever,
            # hanging a graceful stop at exit). The flag ends the loop at its next turn.
            await asyncio.wait([poller], timeout=STOP_WAIT_S)
            if not poller.done():
                log.warning("the snapshot poller did not stop within %.0f s; left behind", STOP_WAIT_S)
            elif not poller.cancelled() and poller.exception() is not None:
                log.warning("the snapshot poller ended with %r", poller.exception())

    async def _read_version(self) -> str:
        try:
            value = await async_client().get(VERSION_KEY)
        except Exception as exc:
            log.warning("cannot read the config version from Redis: %s", type(exc).__name__)
            return ""
        return value.decode() if value else "0"

    async def _rebuild(self, version: str) -> Snapshot:
        self.builds += 1
        snapshot = await sync_to_async(_build_in_thread, thread_sensitive=False)(version)
        self.current = snapshot
        return snapshot

    async def _poll(self):
        while not self._stopping:
            await asyncio.sleep(settings.GATEWAY_SNAPSHOT_POLL_S)
            if self._stopping:
                return
            try:
                await self.keys.follow_changes(async_client())
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # cached keys stay until Redis answers (or their TTL ends)
                warn_unreachable(exc, "virtual key changes reach this process when it answers again")
            try:
                version = await self._read_version()
                current = self.current
                if current is None:
                    continue
                stale = time.monotonic() - current.built_at > MAX_AGE_S
                if version != current.version or stale:
                    await self._rebuild(version)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("snapshot refresh failed; keeping the previous snapshot")


def _build_in_thread(version: str) -> Snapshot:
    close_old_connections()
    # No garbage collection while building: a build allocates thousands of objects, enough to
    # set off a full collection, which then runs in this thread holding the GIL over every
    # object of the process and stalls the event loop (see bench/keys_scale.py). What the build
    # drops is freed by refcounting.
    collecting = gc.isenabled()
    gc.disable()
    try:
        with _short_gil_turns():
            return build_snapshot(version)
    finally:
        if collecting:
            gc.enable()
        close_old_connections()


# While a build holds the GIL, the event loop waits up to the switch interval (5 ms by default)
# each time it wants the GIL back, after every socket call: a request could wait that long
# several times over. Shorter turns while a build runs bound each wait to BUILD_SWITCH_INTERVAL_S.
BUILD_SWITCH_INTERVAL_S = 0.0005
_builds_running = 0
_builds_lock = threading.Lock()
_normal_switch_interval = sys.getswitchinterval()


@contextmanager
def _short_gil_turns():
    global _builds_running, _normal_switch_interval
    with _builds_lock:
        if _builds_running == 0:
            _normal_switch_interval = sys.getswitchinterval()
            sys.setswitchinterval(BUILD_SWITCH_INTERVAL_S)
        _builds_running += 1
    try:
        yield
    finally:
        with _builds_lock:
            _builds_running -= 1
            if _builds_running == 0:
                sys.setswitchinterval(_normal_switch_interval)

