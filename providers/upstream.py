"""The shared upstream HTTP client (one pooled httpx.AsyncClient per event loop), and the
classification of upstream failures: every way an upstream call can fail becomes one
`Failure` value, in one place, that the attempt loop acts on."""
import email.utils
import logging
import socket
import time
from dataclasses import dataclass

import aiohttp
import httpcore
import httpx

from .urlsafety import GuardedNetworkBackend, guarded_socket_factory

log = logging.getLogger(__name__)

# Generous pool: a gateway process holds one connection per in-flight upstream request.
LIMITS = httpx.Limits(max_connections=1000, max_keepalive_connections=200, keepalive_expiry=30.0)


class _NoCookies(httpx.Cookies):
    def extract_cookies(self, response) -> None:
        pass

    def set_cookie_header(self, request) -> None:
        pass


class UpstreamClient(httpx.AsyncClient):
    """An AsyncClient that keeps no cookies. One client serves every tenant of the gateway:
    a cookie one upstream answer set would ride along on everybody's next request. (Reading
    each answer's Set-Cookie also cost about 4 % of the gateway's CPU.)"""

    @property
    def cookies(self) -> httpx.Cookies:
        return _NO_COOKIES

    @cookies.setter
    def cookies(self, cookies) -> None:
        pass


_NO_COOKIES = _NoCookies()


def make_client(transport: str = "aiohttp", connect_timeout: float = 10.0) -> httpx.AsyncClient:
    """An AsyncClient on the chosen transport: "aiohttp" (httpx-aiohttp) or "httpx" (httpcore).

    Neither follows redirects (httpx's default; httpx-aiohttp passes allow_redirects=False):
    a redirect would reach an address nobody checked. Every address either transport
    dials passes providers.urlsafety's check first (after DNS)."""
    timeout = httpx.Timeout(connect=connect_timeout, read=60.0, write=60.0, pool=connect_timeout)
    if transport == "aiohttp":
        from httpx_aiohttp import AiohttpTransport

        def guarded_session() -> aiohttp.ClientSession:
            # Called by the transport on first use, inside the running event loop.
            connector = aiohttp.TCPConnector(limit=LIMITS.max_connections, keepalive_timeout=LIMITS.keepalive_expiry,
                                             ssl=httpx.create_ssl_context(),
                                             socket_factory=guarded_socket_factory)
            return aiohttp.ClientSession(connector=connector, cookie_jar=aiohttp.DummyCookieJar())

        return UpstreamClient(transport=AiohttpTransport(limits=LIMITS, client=guarded_session),
                                 timeout=timeout, trust_env=False, follow_redirects=False)
    transport = httpx.AsyncHTTPTransport(limits=LIMITS, trust_env=False)
    # httpx has no parameter for httpcore's network backend: give the transport a pool
    # with the same settings whose backend checks every address it dials.
    transport._pool = httpcore.AsyncConnectionPool(
        ssl_context=httpx.create_ssl_context(trust_env=False), max_connections=LIMITS.max_connections,
        max_keepalive_connections=LIMITS.max_keepalive_connections, keepalive_expiry=LIMITS.keepalive_expiry,
        network_backend=GuardedNetworkBackend())
    return UpstreamClient(transport=transport, timeout=timeout, trust_env=False, follow_redirects=False)


def is_dns_error(exc: BaseException) -> bool:
    cause = exc
    while cause is not None:
        if isinstance(cause, (socket.gaierror, aiohttp.ClientConnectorDNSError)):
            return True
        cause = cause.__cause__ or cause.__context__
    return False


def is_timeout(exc: BaseException) -> bool:
    """Whether a transport error was a timeout. httpx-aiohttp maps any aiohttp connection
    error (a reset, a refused connect) to httpx.ConnectTimeout, so look at the cause."""
    if isinstance(exc, TimeoutError):
        return True
    cause = exc.__cause__
    if isinstance(cause, aiohttp.ClientError):
        return isinstance(cause, TimeoutError)
    return isinstance(exc, httpx.TimeoutException)


# Statuses worth trying again elsewhere when the route does not say otherwise.
RETRYABLE_STATUS = frozenset({408, 409, 429, 500, 502, 503, 504, 529})
AUTH_STATUS = frozenset({401, 403})


@dataclass(frozen=True, slots=True)
class Failure:
    """One classified upstream failure.

    kind: connect, dns, timeout, status, redirect, auth, bad_answer, protocol.
    retryable: another attempt (elsewhere) may succeed.
    rotate_key: the provider key was refused: try another key, cool this one.
    cool_until: epoch seconds the upstream asked us to wait until (Retry-After), if any.
    detail: what happened, for the request log only (it may name the provider).
    """

    kind: str
    retryable: bool
    status: int | None = None
    rotate_key: bool = False
    cool_until: float | None = None
    detail: str = ""
    upstream_message: str = ""  # the upstream's own error message (provider key scrubbed)
    param: str | None = None  # the request field at fault, when the gateway refused it itself


def classify_status(status: int, headers, upstream_message: str = "", retry_on=frozenset(),
                    now: float | None = None) -> Failure:
    """A failure for an upstream answer with a status outside 2xx."""
    cool_until = retry_after(headers, now)
    detail = f"upstream answered {status}"
    if 300 <= status < 400:  # redirects are never followed: the upstream is misconfigured
        return Failure("redirect", retryable=True, status=status, detail=detail + " (a redirect, not followed)")
    if status in AUTH_STATUS:
        return Failure("auth", retryable=True, status=status, rotate_key=True, cool_until=cool_until,
                       detail=detail + " (provider key refused)", upstream_message=upstream_message)
    retryable = status in (retry_on or RETRYABLE_STATUS) or (not retry_on and status >= 500)
    return Failure("status", retryable=retryable, status=status, cool_until=cool_until,
                   detail=f"{detail}: {upstream_message}" if upstream_message else detail,
                   upstream_message=upstream_message)


def classify_exception(exc: BaseException) -> Failure:
    """A failure for an exception raised while sending or reading (either transport)."""
    name = type(exc).__name__
    if is_timeout(exc):
        return Failure("timeout", retryable=True, detail=f"timed out ({name})")
    if is_dns_error(exc):
        return Failure("dns", retryable=True, detail=f"host name not resolved ({name})")
    connect_errors = (httpx.ConnectError, httpx.ConnectTimeout, aiohttp.ClientConnectorError, ConnectionRefusedError)
    if isinstance(exc, connect_errors) or isinstance(exc.__cause__, connect_errors):
        return Failure("connect", retryable=True, detail=f"could not connect ({name})")
    if isinstance(exc, (ValueError, aiohttp.ClientResponseError, httpx.DecodingError)):
        return Failure("bad_answer", retryable=True, detail=f"malformed answer ({name})")
    return Failure("protocol", retryable=True, detail=f"connection failed ({name}: {exc})"[:300])


MAX_RETRY_AFTER_S = 3600.0


def retry_after(headers, now: float | None = None) -> float | None:
    """Epoch seconds from a Retry-After header (seconds or an HTTP date), capped."""
    value = headers.get("retry-after") if headers is not None else None
    if not value:
        return None
    now = time.time() if now is None else now
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = email.utils.parsedate_to_datetime(value).timestamp() - now
        except (TypeError, ValueError):
            return None
    return now + min(max(seconds, 0.0), MAX_RETRY_AFTER_S)
