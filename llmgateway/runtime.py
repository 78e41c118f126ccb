"""What the gateway holds per event loop: the snapshot keeper and its poller, the pooled
upstream client, the async Redis client.

Each of these is bound to the loop that made it. Daphne runs one loop per process and uses
`current()`, which opens the runtime on first use. A caller with a loop of its own (a
Celery task using asyncio.run, a test) wraps its work in `async with opened():`, which
closes everything on the way out, so nothing leaks or goes stale when loops change.
"""
import asyncio
import weakref
from contextlib import asynccontextmanager

from django.conf import settings


class Runtime:
    def __init__(self, loop: asyncio.AbstractEventLoop):
        from routing.snapshot import SnapshotKeeper

        self.loop = loop
        self.keeper = SnapshotKeeper()
        self._client = None
        self._redis = None

    @property
    def client(self):
        """The pooled upstream httpx.AsyncClient."""
        if self._client is None:
            from providers.upstream import make_client

            self._client = make_client(settings.GATEWAY_UPSTREAM_TRANSPORT, settings.GATEWAY_CONNECT_TIMEOUT_S)
        return self._client

    @property
    def redis(self):
        """The async Redis client."""
        if self._redis is None:
            from .redis import new_async_client

            self._redis = new_async_client()
        return self._redis

    async def snapshot(self):
        return await self.keeper.get()

    async def close(self) -> None:
        await self.keeper.stop()
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()
        redis, self._redis = self._redis, None
        if redis is not None:
            await redis.aclose()


# Keyed by the loop itself, weakly: a new loop never inherits a dead loop's runtime by
# reusing its id().
_runtimes: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Runtime]" = weakref.WeakKeyDictionary()


_last: Runtime | None = None  # the runtime current() found last: a process serves from one loop


def current() -> Runtime:
    """The running loop's runtime, opened on first use."""
    global _last
    loop = asyncio.get_running_loop()
    runtime = _last
    if runtime is not None and runtime.loop is loop:
        return runtime
    runtime = _runtimes.get(loop)
    if runtime is None:
        runtime = _runtimes[loop] = Runtime(loop)
    _last = runtime
    return runtime


def _forget(runtime: Runtime) -> None:
    global _last
    _runtimes.pop(runtime.loop, None)
    if _last is runtime:
        _last = None


@asynccontextmanager
async def opened():
    """Open the running loop's runtime for a block of work, and close it after."""
    runtime = current()
    try:
        yield runtime
    finally:
        _forget(runtime)
        await runtime.close()


# At exit, how long closing a runtime may take: the process must go on to exit (and hand over
# its request log) whatever a connection or a library does meanwhile.
CLOSE_AT_EXIT_S = 10.0


def close_at_exit() -> None:
    """Close what runtimes of loops that are not running hold (a graceful stop): pooled
    connections left to the garbage collector are logged as errors by aiohttp."""
    global _last
    for loop, runtime in list(_runtimes.items()):
        if not loop.is_closed() and not loop.is_running():
            try:
                loop.run_until_complete(asyncio.wait_for(runtime.close(), CLOSE_AT_EXIT_S))
            except Exception:  # exiting anyway (a TimeoutError included)
                pass
    _runtimes.clear()
    _last = None
