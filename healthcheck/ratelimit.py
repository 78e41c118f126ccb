"""Per-client-IP rate limit of the public health surface: a Redis counter per IP and minute."""
import ipaddress
import logging
import time

from llmgateway.redis import sync_client

from .conf import setting

log = logging.getLogger(__name__)

KEY = "gw:health:public:{}:{}"


def client_ip(remote_addr: str | None, forwarded_for: str | None, trusted: list[str]) -> str:
    """The socket peer, unless the peer is a trusted proxy: then the nearest address in
    X-Forwarded-For that is not a trusted proxy itself (addresses further left are the
    client's to write, so they are not believed)."""
    peer = remote_addr or "unknown"
    networks = _networks(trusted)
    if not networks or not _is_trusted(peer, networks) or not forwarded_for:
        return peer
    for hop in reversed([part.strip() for part in forwarded_for.split(",") if part.strip()]):
        if not _valid_ip(hop):
            return peer  # a garbled header: fall back to the proxy itself
        if not _is_trusted(hop, networks):
            return hop
    return peer


def hit(ip: str, limit: int | None = None, now: float | None = None) -> int | None:
    """Count one request of `ip`; the seconds to wait when over the limit, else None."""
    limit = limit if limit is not None else setting("HEALTH_PUBLIC_RPM")
    now = now if now is not None else time.time()
    minute = int(now // 60)
    key = KEY.format(ip, minute)
    try:
        pipe = sync_client().pipeline()
        pipe.incr(key)
        pipe.expire(key, 61)
        count, _ = pipe.execute()
    except Exception as exc:  # a Redis outage must not take the status page down with it
        log.warning("public health rate limit unavailable: %s", type(exc).__name__)
        return None
    if count > limit:
        return max(int((minute + 1) * 60 - now), 1)
    return None


def _networks(trusted: list[str]):
    networks = []
    for entry in trusted:
        try:
            networks.append(ipaddress.ip_network(entry.strip(), strict=False))
        except ValueError:
            log.error("HEALTH_TRUSTED_PROXIES: %r is not an IP address or network; ignored", entry)
    return networks


def _valid_ip(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
        return True
    except ValueError:
        return False


def _is_trusted(value: str, networks) -> bool:
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        return False
    return any(address in network for network in networks)
