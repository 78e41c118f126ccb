"""Which upstream addresses the gateway may contact: http(s) base URLs without user info,
never link-local or cloud metadata addresses, loopback and private ranges only when
GATEWAY_ALLOW_PRIVATE_UPSTREAMS is on.

Checked twice: when a base URL is saved (`check_base_url`: the admin form, the config
file), and when a connection is made, on the address actually dialled
(`guarded_socket_factory` for the aiohttp transport, `GuardedNetworkBackend` for the
plain httpx one: both see every address, whether the URL held a literal or a name that
DNS resolved). A name that resolves to a refused address is never contacted.
`check_destination` checks a URL ahead of time, resolving it.
"""
import asyncio
import ipaddress
import socket
from urllib.parse import urlsplit

import httpcore

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# Link-local ranges hold the cloud metadata services (AWS, GCP, Azure: 169.254.169.254);
# the others are metadata addresses outside them.
ALWAYS_REFUSED_NETWORKS = tuple(ipaddress.ip_network(n) for n in (
    "169.254.0.0/16",        # IPv4 link-local, cloud metadata
    "fe80::/10",             # IPv6 link-local
    "fd00:ec2::254/128",     # AWS metadata over IPv6
    "100.100.100.200/32",    # Alibaba Cloud metadata
    "0.0.0.0/32", "::/128",  # "this host": connects to the local machine, never a real upstream
))
# Names that resolve to a metadata service inside a cloud: refused before any lookup.
REFUSED_NAMES = frozenset({"metadata.google.internal", "metadata.goog", "metadata"})
# IPv6 prefixes that carry an IPv4 address in their last 32 bits (NAT64 translates them
# to it): the IPv4 address inside is what gets reached.
_NAT64 = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("64:ff9b:1::/48"))


PRIVATE_HINT = ("a loopback or private address; set GATEWAY_ALLOW_PRIVATE_UPSTREAMS=1 to allow "
                "upstreams on this machine or network")


class UnsafeUpstream(ValueError):
    """A base URL or address the gateway refuses to contact; the message says why, and
    `kind` says what for callers with messages of their own: "url" (scheme, user info,
    a malformed host), "link_local" (link-local, metadata, unspecified, multicast) or
    "private" (loopback or private while GATEWAY_ALLOW_PRIVATE_UPSTREAMS is off)."""

    def __init__(self, message: str, kind: str = "url"):
        super().__init__(message)
        self.kind = kind


def check_base_url(url: str, allow_private: bool) -> None:
    """Raise UnsafeUpstream unless url is an http(s) URL without user info whose host is
    not a refused address (in any spelling) or name. Host names are not resolved here."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018  raises ValueError on a bad port
    except ValueError:
        raise UnsafeUpstream("not a valid URL") from None
    if parts.scheme not in ("http", "https"):
        raise UnsafeUpstream("only http:// and https:// base URLs are allowed")
    if "@" in parts.netloc:
        raise UnsafeUpstream("user info (user:password@) is not allowed in a base URL; "
                             "put credentials in a provider key or a secret header")
    host = parts.hostname
    if not host:
        raise UnsafeUpstream("the URL has no host")
    check_host(host, allow_private)


def check_host(host: str, allow_private: bool) -> None:
    """Raise UnsafeUpstream if host (a name or an IP literal in any spelling) is refused."""
    name = host.strip("[]").rstrip(".").lower()
    if name in REFUSED_NAMES:
        raise UnsafeUpstream(f"{host} is a cloud metadata service", kind="link_local")
    if "%" in name and ":" not in name:
        raise UnsafeUpstream(f"{host}: percent-encoded host names are not allowed")
    ip = parse_ip(name)
    if ip is not None:
        check_ip(ip, allow_private)
    elif name == "localhost" or name.endswith(".localhost"):
        check_ip(ipaddress.ip_address("127.0.0.1"), allow_private)
    elif _looks_numeric(name):
        # Something like 1.2.3.4.5 or 0x1g: not an address, and resolvers disagree on it.
        raise UnsafeUpstream(f"{host} is not a valid IP address")


def check_ip(ip: IPAddress, allow_private: bool) -> None:
    """Raise UnsafeUpstream if the gateway must not connect to ip."""
    reason = refusal(ip, allow_private)
    if reason:
        raise UnsafeUpstream(f"{ip} is {reason}", kind="private" if PRIVATE_HINT in reason else "link_local")


def refusal(ip: IPAddress, allow_private: bool) -> str | None:
    """Why ip is refused, or None when it may be contacted."""
    for inner in _embedded_ipv4(ip):
        reason = refusal(inner, allow_private)
        if reason:
            return f"{reason} (as {inner})"
    if isinstance(ip, ipaddress.IPv6Address) and ip.scope_id:
        return "link-local (an IPv6 zone)"
    if any(ip in network for network in ALWAYS_REFUSED_NETWORKS):
        return "link-local or a cloud metadata address, never allowed"
    if ip.is_multicast:
        return "a multicast address"
    if not ip.is_global and not allow_private:
        return PRIVATE_HINT
    return None


def _embedded_ipv4(ip: IPAddress) -> list[ipaddress.IPv4Address]:
    """IPv4 addresses that an IPv6 address also designates (mapped, compatible, 6to4,
    NAT64, Teredo server and client)."""
    if not isinstance(ip, ipaddress.IPv6Address):
        return []
    found = []
    if ip.ipv4_mapped:
        found.append(ip.ipv4_mapped)
    if ip.sixtofour:
        found.append(ip.sixtofour)
    if ip.teredo:
        found.extend(ip.teredo)
    packed = int(ip)
    if packed >> 32 == 0 and packed > 1:  # ::a.b.c.d, deprecated IPv4-compatible
        found.append(ipaddress.IPv4Address(packed))
    if any(ip in network for network in _NAT64):
        found.append(ipaddress.IPv4Address(packed & 0xFFFFFFFF))
    return found


def parse_ip(host: str) -> IPAddress | None:
    """host as an IP address, reading IPv4 the way inet_aton and browsers do (2852039166,
    0xa9fea9fe, 0251.0376.0251.0376, 169.254.43518, 0xa9.254.169.254), or None for a name."""
    host = host.strip("[]")
    if ":" in host:
        try:
            return ipaddress.IPv6Address(host)  # keeps a %zone as scope_id
        except ValueError:
            return None
    parts = host.split(".")
    if not 1 <= len(parts) <= 4:
        return None
    numbers = []
    for part in parts:
        number = _inet_aton_number(part)
        if number is None:
            return None
        numbers.append(number)
    # The last part fills all remaining bytes: a, a.b (8+24 bits), a.b.c (8+8+16), a.b.c.d.
    *leading, last = numbers
    if any(n > 0xFF for n in leading) or last >= 1 << (8 * (5 - len(numbers))):
        return None
    value = last
    for i, n in enumerate(leading):
        value |= n << (8 * (3 - i))
    return ipaddress.IPv4Address(value)


def _inet_aton_number(part: str) -> int | None:
    try:
        if part[:2].lower() == "0x":
            return int(part[2:] or "0", 16)
        if len(part) > 1 and part.startswith("0"):
            return int(part[1:], 8)
        return int(part, 10) if part.isdigit() else None
    except ValueError:
        return None


def _looks_numeric(name: str) -> bool:
    return all(p.isdigit() or p[:2].lower() == "0x" for p in name.split(".") if p)


# ---------------------------------------------------------------------------
# Connect time. The settings are read when called, so that a change of
# GATEWAY_ALLOW_PRIVATE_UPSTREAMS applies to the next connection.

def _allow_private() -> bool:
    from django.conf import settings

    return settings.GATEWAY_ALLOW_PRIVATE_UPSTREAMS


def guarded_socket_factory(addr_info) -> socket.socket:
    """aiohttp's socket_factory (TCPConnector(socket_factory=...)): called with each
    address aiohttp is about to dial, after DNS; refuses it with an OSError (aiohttp then
    tries the next address, and fails the request with a connect error if none is left)."""
    family, type_, proto, _, address = addr_info
    ip = ipaddress.ip_address(address[0])
    reason = refusal(ip, _allow_private())
    if reason:
        raise OSError(f"refused to connect to {ip}: {reason}")
    return socket.socket(family=family, type=type_, proto=proto)


class GuardedNetworkBackend(httpcore.AsyncNetworkBackend):
    """httpcore's network backend for the plain httpx transport: resolves the host itself,
    skips refused addresses, and connects to a checked one (TLS still verifies the host
    name: httpcore passes it to start_tls separately)."""

    def __init__(self, inner: httpcore.AsyncNetworkBackend | None = None):
        self._inner = inner or httpcore.AnyIOBackend()

    async def connect_tcp(self, host, port, timeout=None, local_address=None, socket_options=None):
        try:
            async with asyncio.timeout(timeout):
                infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except TimeoutError:
            raise httpcore.ConnectTimeout(f"resolving {host} timed out") from None
        except socket.gaierror as exc:
            raise httpcore.ConnectError(f"{host} does not resolve: {exc.strerror}") from exc
        allow_private = _allow_private()
        refused, last_error = [], None
        for ip in dict.fromkeys(ipaddress.ip_address(address[0]) for *_, address in infos):
            reason = refusal(ip, allow_private)
            if reason:
                refused.append(f"refused to connect to {ip}: {reason}")
                continue
            try:
                return await self._inner.connect_tcp(str(ip), port, timeout, local_address, socket_options)
            except httpcore.ConnectError as exc:
                last_error = exc
        if last_error is not None:
            raise last_error
        raise httpcore.ConnectError("; ".join(refused))

    async def connect_unix_socket(self, path, timeout=None, socket_options=None):
        return await self._inner.connect_unix_socket(path, timeout, socket_options)

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


async def check_destination(url: str) -> None:
    """Raise UnsafeUpstream unless every address url's host resolves to may be contacted
    (a check ahead of time, e.g. for a "test connection" button: the transports check
    the addresses they actually dial anyway)."""
    allow_private = _allow_private()
    check_base_url(url, allow_private)
    parts = urlsplit(url)
    if parse_ip(parts.hostname) is not None:
        return
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(
            parts.hostname, parts.port or (443 if parts.scheme == "https" else 80), type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise UnsafeUpstream(f"{parts.hostname} does not resolve: {exc.strerror}") from None
    for *_, address in infos:
        ip = ipaddress.ip_address(address[0])
        reason = refusal(ip, allow_private)
        if reason:
            raise UnsafeUpstream(f"{parts.hostname} resolves to {ip}, {reason}",
                                 kind="private" if PRIVATE_HINT in reason else "link_local")
