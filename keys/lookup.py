"""Virtual keys looked up on demand: a bounded per-process cache, filled from the database on a
miss and told by Redis which keys changed.

Why not in the configuration snapshot: with 100,000 keys, building them into every process's
snapshot took 6-9 s and ~330 MB, and any key's save rebuilt the whole snapshot everywhere.
Now the snapshot holds routes and providers only, and:

- a presented key is found in an LRU of known keys (`GATEWAY_KEY_CACHE_SIZE`), a dict lookup
  with no I/O; a hash that is not there is read with ONE indexed query in a worker thread
  (concurrent misses for one hash share it), and the answer is kept;
- a hash that matches no key is remembered too, for `GATEWAY_KEY_NEGATIVE_TTL_S`, in a bounded
  LRU of its own (`GATEWAY_KEY_NEGATIVE_CACHE_SIZE`), so junk keys cost at most one query per
  distinct hash per TTL;
- a key save or delete publishes the changed hashes (old and new) after commit: one Redis
  counter (`gw:keys_version`) and a short list of the hashes behind each increment. Each
  process's snapshot poller reads what it has not seen and evicts just those entries, so a
  disabled key is refused within one poll (1 s by default). When it cannot be sure (a gap
  longer than the list, Redis restarted, Redis was unreachable) it clears the whole key
  cache, which is cheap, instead of rebuilding routes;
- entries also expire after `GATEWAY_KEY_CACHE_TTL_S`: a backstop for a change that could not
  be published at all (Redis down while the admin saved).
"""
import asyncio
import logging
import threading
import time
from collections import OrderedDict

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import close_old_connections

from .auth import KeyEntry

log = logging.getLogger(__name__)

KEYS_VERSION_KEY = "gw:keys_version"
KEY_CHANGES_KEY = "gw:key_changes"
# Increments kept in the list; a process further behind clears its cache instead.
KEY_CHANGES_KEPT = 1000
# More hashes than this in one commit (a bulk YAML apply): publish "clear everything" instead.
MAX_HASHES_PER_CHANGE = 500
CLEAR_ALL = "*"

_FIELDS = ("id", "name", "prefix", "key_hash", "enabled", "expires_at", "all_models", "rpm", "tpm",
           "budget_usd", "budget_period", "log_bodies", "unpriced_policy", "is_monitoring")

# INCR and RPUSH together, so the counter and the list always agree.
_PUBLISH = """
local seq = redis.call('INCR', KEYS[1])
redis.call('RPUSH', KEYS[2], ARGV[1])
redis.call('LTRIM', KEYS[2], -tonumber(ARGV[2]), -1)
return seq
"""
# The counter and the changes after `last`, read atomically; '*' when they were trimmed away.
_READ = """
local seq = tonumber(redis.call('GET', KEYS[1]) or '0')
local last = tonumber(ARGV[1])
if last < 0 or seq <= last then return {seq} end
local n = seq - last
if n > redis.call('LLEN', KEYS[2]) then return {seq, '*'} end
local out = redis.call('LRANGE', KEYS[2], -n, -1)
table.insert(out, 1, seq)
return out
"""


# ---------------------------------------------------------------- reading keys from the database

def entry_from_row(row: dict, route_ids) -> KeyEntry:
    expires_at = row["expires_at"]
    return KeyEntry(
        id=row["id"], name=row["name"], prefix=row["prefix"], key_hash=row["key_hash"], enabled=row["enabled"],
        expires_at=expires_at.timestamp() if expires_at else None,
        # A restricted key with no model left stays restricted (to nothing).
        allowed_route_ids=None if row["all_models"] else frozenset(r for r in route_ids if r is not None),
        rpm=row["rpm"], tpm=row["tpm"], budget_usd=row["budget_usd"], budget_period=row["budget_period"],
        log_bodies=row["log_bodies"], unpriced_policy=row["unpriced_policy"], is_monitoring=row["is_monitoring"],
    )


def load_key(key_hash: str = None, *, key_id: int = None) -> KeyEntry | None:
    """The key with this hash (or id), or None: ONE indexed query, its allowed routes joined in.
    Synchronous: call it in a thread."""
    from .models import VirtualKey

    where = {"key_hash": key_hash} if key_id is None else {"pk": key_id}
    rows = list(VirtualKey.objects.filter(**where).values(*_FIELDS, "allowed_routes"))
    if not rows:
        return None
    return entry_from_row(rows[0], [row["allowed_routes"] for row in rows])


def _load_key_in_thread(key_hash: str) -> KeyEntry | None:
    close_old_connections()  # a connection past CONN_MAX_AGE or broken is replaced, not reused
    return load_key(key_hash)


# ---------------------------------------------------------------- the per-process cache

_MISS = object()


class KeyCache:
    """Known and unknown key hashes of one event loop's runtime (see the module docstring)."""

    def __init__(self, size: int = None, negative_size: int = None, ttl_s: float = None,
                 negative_ttl_s: float = None, load=None):
        self.size = size or settings.GATEWAY_KEY_CACHE_SIZE
        self.negative_size = negative_size or settings.GATEWAY_KEY_NEGATIVE_CACHE_SIZE
        self.ttl_s = ttl_s or settings.GATEWAY_KEY_CACHE_TTL_S
        self.negative_ttl_s = negative_ttl_s or settings.GATEWAY_KEY_NEGATIVE_TTL_S
        self._load = load or sync_to_async(_load_key_in_thread, thread_sensitive=False)
        self._known: OrderedDict[str, tuple[KeyEntry, float]] = OrderedDict()  # hash -> (entry, expires)
        self._unknown: OrderedDict[str, float] = OrderedDict()  # hash -> expires
        self._loading: dict[str, asyncio.Future] = {}
        # Bumped by every eviction: a load that began before one may have read the old row
        # and must not be kept.
        self._epoch = 0
        self.seq: int | None = None  # the last change seen in Redis; None: not in step
        self.loads = 0  # database lookups made (for tests and the bench)

    def __len__(self):
        return len(self._known) + len(self._unknown)

    def cached(self, key_hash: str, now: float):
        """The cached answer (an entry, or None for a known-unknown hash), else _MISS."""
        hit = self._known.get(key_hash)
        if hit is not None:
            if hit[1] > now:
                self._known.move_to_end(key_hash)
                return hit[0]
            del self._known[key_hash]
        expires = self._unknown.get(key_hash)
        if expires is not None:
            if expires > now:
                return None
            del self._unknown[key_hash]
        return _MISS

    async def get(self, key_hash: str) -> KeyEntry | None:
        """The key with this hash, or None. A hit does no I/O."""
        found = self.cached(key_hash, time.monotonic())
        if found is not _MISS:
            return found
        loading = self._loading.get(key_hash)
        if loading is None:
            loading = self._loading[key_hash] = asyncio.ensure_future(self._fetch(key_hash))
        # Shielded: a client that leaves must not cancel the lookup others wait for.
        return await asyncio.shield(loading)

    async def _fetch(self, key_hash: str) -> KeyEntry | None:
        epoch = self._epoch
        try:
            self.loads += 1
            entry = await self._load(key_hash)
        finally:
            self._loading.pop(key_hash, None)
        if epoch == self._epoch:
            self._store(key_hash, entry)
        return entry

    def _store(self, key_hash: str, entry: KeyEntry | None) -> None:
        now = time.monotonic()
        if entry is None:
            self._unknown[key_hash] = now + self.negative_ttl_s
            self._unknown.move_to_end(key_hash)
            while len(self._unknown) > self.negative_size:
                self._unknown.popitem(last=False)
        else:
            self._known[key_hash] = (entry, now + self.ttl_s)
            self._known.move_to_end(key_hash)
            while len(self._known) > self.size:
                self._known.popitem(last=False)

    def evict(self, hashes) -> None:
        self._epoch += 1
        for key_hash in hashes:
            self._known.pop(key_hash, None)
            self._unknown.pop(key_hash, None)

    def clear(self) -> None:
        self._epoch += 1
        self._known.clear()
        self._unknown.clear()

    async def follow_changes(self, redis) -> None:
        """Evict what changed since the last call, as published by publish_key_changes.
        Clears everything when not sure what changed. Raises when Redis cannot be read
        (the cache then clears itself once Redis answers again)."""
        try:
            reply = await redis.eval(_READ, 2, KEYS_VERSION_KEY, KEY_CHANGES_KEY, -1 if self.seq is None else self.seq)
        except Exception:
            self.seq = None  # changes published meanwhile may be lost for us
            raise
        seq, changes = int(reply[0]), [c.decode() if isinstance(c, bytes) else c for c in reply[1:]]
        if self.seq is None or seq < self.seq or CLEAR_ALL in changes:
            # First sync (entries may predate it), Redis restarted or flushed, or a gap.
            if self.seq is not None or len(self):
                log.info("virtual key cache cleared (%s)", "gap in key changes" if changes else "out of step")
            self.clear()
        elif changes:
            self.evict(h for change in changes for h in change.split())
        self.seq = seq


# ---------------------------------------------------------------- publishing changes

def publish_key_changes(hashes) -> None:
    """Tell every gateway process to forget these key hashes. Called after commit; a Redis
    outage is logged, not raised (the cache TTL then bounds how long the change takes)."""
    from llmgateway.redis import sync_client, warn_unreachable

    hashes = sorted({h for h in hashes if h})
    if not hashes:
        return
    change = CLEAR_ALL if len(hashes) > MAX_HASHES_PER_CHANGE else " ".join(hashes)
    try:
        sync_client().eval(_PUBLISH, 2, KEYS_VERSION_KEY, KEY_CHANGES_KEY, change, KEY_CHANGES_KEPT)
    except Exception as exc:
        warn_unreachable(exc, f"running gateways pick key changes up within {settings.GATEWAY_KEY_CACHE_TTL_S:.0f} s")


_pending = threading.local()


def key_changed_after_commit(*hashes) -> None:
    """Publish `hashes` once the current transaction commits (at once outside one). All the
    changes of one transaction go out in one publish."""
    from django.db import transaction

    pending = getattr(_pending, "hashes", None)
    if pending is None:
        pending = _pending.hashes = set()
    pending.update(h for h in hashes if h)
    # Registered every time (a rolled-back transaction drops its callbacks); the first to run
    # publishes all that is pending and the rest find nothing to do. Hashes of a rolled-back
    # change go out with the next one: an eviction too many is harmless.
    transaction.on_commit(_publish_pending)


def _publish_pending() -> None:
    hashes = getattr(_pending, "hashes", None)
    if hashes:
        _pending.hashes = set()
        publish_key_changes(hashes)
