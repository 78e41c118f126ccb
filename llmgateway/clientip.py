"""The client's IP address: the socket peer, unless the peer is a trusted proxy.

Shared by the public health API's rate limit (healthcheck.ratelimit) and the /v1 API's
refusal counting and authentication slow-down (keys.authfailures).
"""
import ipaddress
import logging
from functools import lru_cache

log = logging.getLogger(__name__)


def client_ip(remote_addr: str | None, forwarded_for: str | None, trusted) -> str:
    """The socket peer, unless the peer is a trusted proxy: then the nearest address in
    X-Forwarded-For that is not a trusted proxy itself (addresses further left are the
    client's to write, so they are not believed)."""
    peer = remote_addr or "unknown"
    networks = trusted_networks(tuple(trusted))
    if not networks or not forwarded_for or not _is_trusted(peer, networks):
        return peer
    for hop in reversed([part.strip() for part in forwarded_for.split(",") if part.strip()]):
        if not _valid_ip(hop):
            return peer  # a garbled header: fall back to the proxy itself
        if not _is_trusted(hop, networks):
            return hop
    return peer


def request_client_ip(meta) -> str:
    """client_ip for a Django request's META, with the API's trusted proxies
    (GATEWAY_TRUSTED_PROXIES). Cheap when no proxy is configured: the peer as it is."""
    from django.conf import settings

    trusted = settings.GATEWAY_TRUSTED_PROXIES
    if not trusted:
        return meta.get("REMOTE_ADDR") or "unknown"
    return client_ip(meta.get("REMOTE_ADDR"), meta.get("HTTP_X_FORWARDED_FOR"), trusted)


@lru_cache(maxsize=8)
def trusted_networks(trusted: tuple[str, ...]) -> tuple:
    """The trusted proxies as networks, parsed once per distinct setting."""
    networks = []
    for entry in trusted:
        try:
            networks.append(ipaddress.ip_network(entry.strip(), strict=False))
        except ValueError:
            log.error("trusted proxies: %r is not an IP address or network; ignored", entry)
    return tuple(networks)


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
