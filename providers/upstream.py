"""The shared upstream HTTP client: one pooled httpx.AsyncClient per process and event loop."""
import asyncio
import atexit
import logging

import aiohttp
import httpx

from .urlsafety import guarded_socket_factory

log = logging.getLogger(__name__)

_clients: dict[int, httpx.AsyncClient] = {}
_loops: dict[int, asyncio.AbstractEventLoop] = {}

# Generous pool: a gateway process holds one connection per in-flight upstream request.
LIMITS = httpx.Limits(max_connections=1000, max_keepalive_connections=200, keepalive_expiry=30.0)


def make_client(transport: str = "aiohttp", connect_timeout: float = 10.0) -> httpx.AsyncClient:
    """An AsyncClient on the chosen transport: "aiohttp" (httpx-aiohttp) or "httpx" (httpcore).

    Neither follows redirects (httpx's default; httpx-aiohttp passes allow_redirects=False):
    a redirect would reach an address nobody checked. With "aiohttp" every address dialled
    passes urlsafety's check (after DNS); with "httpx" the caller checks with
    urlsafety.check_destination before sending."""
    timeout = httpx.Timeout(connect=connect_timeout, read=60.0, write=60.0, pool=connect_timeout)
    if transport == "aiohttp":
        from httpx_aiohttp import AiohttpTransport

        def guarded_session() -> aiohttp.ClientSession:
            # Called by the transport on first use, inside the running event loop.
            connector = aiohttp.TCPConnector(limit=LIMITS.max_connections, keepalive_timeout=LIMITS.keepalive_expiry,
                                             ssl=httpx.create_ssl_context(),
                                             socket_factory=guarded_socket_factory)
            return aiohttp.ClientSession(connector=connector)

        return httpx.AsyncClient(transport=AiohttpTransport(limits=LIMITS, client=guarded_session),
                                 timeout=timeout, trust_env=False, follow_redirects=False)
    return httpx.AsyncClient(limits=LIMITS, timeout=timeout, trust_env=False, follow_redirects=False)


def shared_client(transport: str = "aiohttp", connect_timeout: float = 10.0) -> httpx.AsyncClient:
    """The process's client for the running event loop, created on first use."""
    loop_id = id(asyncio.get_running_loop())
    client = _clients.get(loop_id)
    if client is None:
        client = _clients[loop_id] = make_client(transport, connect_timeout)
        _loops[loop_id] = asyncio.get_running_loop()
    return client


async def close_shared_client() -> None:
    """Close the running loop's client (for loops that end: tests, scripts)."""
    loop_id = id(asyncio.get_running_loop())
    _loops.pop(loop_id, None)
    client = _clients.pop(loop_id, None)
    if client is not None:
        await client.aclose()


@atexit.register
def _close_at_exit():
    """Close pooled connections on a graceful stop, rather than leave them to the
    garbage collector (which logs every unclosed aiohttp session as an error)."""
    for loop_id, client in list(_clients.items()):
        loop = _loops.pop(loop_id)
        if not loop.is_closed() and not loop.is_running():
            try:
                loop.run_until_complete(client.aclose())
            except Exception:  # exiting anyway
                pass
        del _clients[loop_id]


def is_timeout(exc: BaseException) -> bool:
    """Whether a transport error was a timeout. httpx-aiohttp maps any aiohttp connection
    error (a reset, a refused connect) to httpx.ConnectTimeout, so look at the cause."""
    if isinstance(exc, TimeoutError):
        return True
    cause = exc.__cause__
    if isinstance(cause, aiohttp.ClientError):
        return isinstance(cause, TimeoutError)
    return isinstance(exc, httpx.TimeoutException)
