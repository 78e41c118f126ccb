"""Authentication of virtual keys: against a mapping of key hashes (no I/O), or against the
process's key cache (keys/lookup.py), which reads the database only on a miss."""
import hmac
import logging
import time
from dataclasses import dataclass
from decimal import Decimal

from llmgateway.errors import AuthenticationFailed, PermissionDenied, ServiceUnavailable

from .secrets import hash_key

log = logging.getLogger(__name__)

# One answer for an unknown, wrong, disabled or expired key: a client cannot tell them apart
# (the request log keeps the real reason for the operator).
WRONG_KEY = "Incorrect API key provided."

# The request log's reasons for a caller whose key is not known (see llmgateway.api).
NO_KEY = "no key"
NO_SUCH_KEY = "no such key"

# Compared against when the presented key is unknown, so unknown and wrong keys
# do the same work.
_NO_SUCH_HASH = hash_key("no such key")


@dataclass(frozen=True, slots=True)
class KeyEntry:
    """What the hot path knows of a virtual key."""

    id: int
    name: str
    prefix: str
    key_hash: str
    enabled: bool
    expires_at: float | None  # epoch seconds
    allowed_route_ids: frozenset[int] | None  # None: every route
    rpm: int | None
    tpm: int | None
    budget_usd: Decimal | None
    budget_period: str
    log_bodies: bool
    unpriced_policy: str = "refuse"  # refuse | admit_and_flag: a budgeted key meeting a model with no price
    is_monitoring: bool = False  # the health monitor's key: excluded from every limit

    def may_use(self, route_id: int) -> bool:
        return self.allowed_route_ids is None or route_id in self.allowed_route_ids


def key_entry(vk, allowed_route_ids) -> KeyEntry:
    """The entry for a VirtualKey row (keys/lookup.py reads rows as values, not models)."""
    return KeyEntry(
        id=vk.pk,
        name=vk.name,
        prefix=vk.prefix,
        key_hash=vk.key_hash,
        enabled=vk.enabled,
        expires_at=vk.expires_at.timestamp() if vk.expires_at else None,
        allowed_route_ids=None if vk.all_models else frozenset(allowed_route_ids),
        rpm=vk.rpm,
        tpm=vk.tpm,
        budget_usd=vk.budget_usd,
        budget_period=vk.budget_period,
        log_bodies=vk.log_bodies,
        unpriced_policy=vk.unpriced_policy,
        is_monitoring=vk.is_monitoring,
    )


def presented_key(meta) -> str | None:
    """The key from `Authorization: Bearer …`, `api-key` or `x-api-key`, read from the
    request's META (request.headers would build a whole header map for this)."""
    auth = meta.get("HTTP_AUTHORIZATION")
    if auth:
        scheme, _, value = auth.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
        return None
    return meta.get("HTTP_API_KEY") or meta.get("HTTP_X_API_KEY") or None


def authenticate(meta, keys_by_hash, now: float | None = None) -> KeyEntry:
    """The key entry for the request's credentials, or raise AuthenticationFailed."""
    digest = presented_digest(meta)
    return verified(digest, keys_by_hash.get(digest), now)


async def authenticate_request(meta, key_cache, now: float | None = None) -> KeyEntry:
    """authenticate() against a KeyCache: a cached key costs a dict lookup; an uncached one
    one indexed query in a worker thread."""
    digest = presented_digest(meta)
    try:
        entry = await key_cache.get(digest)
    except Exception as exc:  # the database is down: not the client's fault, and not a 401
        log.error("cannot look the virtual key up: %s", type(exc).__name__)
        raise ServiceUnavailable("The gateway cannot check API keys right now; try again in a moment.",
                                 code="not_ready", headers={"Retry-After": "1"}) from None
    return verified(digest, entry, now)


def presented_digest(meta) -> str:
    plaintext = presented_key(meta)
    if plaintext is None:
        raise AuthenticationFailed(
            "Missing API key. Send it as 'Authorization: Bearer <key>' (or the 'api-key' header).",
            log_message=NO_KEY,
        )
    return hash_key(plaintext)


def verified(digest: str, entry: KeyEntry | None, now: float | None = None) -> KeyEntry:
    """`entry` if it is the key for `digest` and usable now; else the one answer for every
    refused key (AuthenticationFailed with the real reason for the log)."""
    matched = hmac.compare_digest(digest, entry.key_hash if entry else _NO_SUCH_HASH)
    if entry is None or not matched:
        raise AuthenticationFailed(WRONG_KEY, log_message=NO_SUCH_KEY)
    if not entry.enabled:
        raise AuthenticationFailed(WRONG_KEY, log_message="the key is disabled")
    if entry.expires_at is not None and entry.expires_at <= (now or time.time()):
        raise AuthenticationFailed(WRONG_KEY, log_message="the key has expired")
    return entry


def check_route_allowed(entry: KeyEntry, route_id: int, model: str) -> None:
    if not entry.may_use(route_id):
        raise PermissionDenied(f"This API key may not use the model '{model}'.", param="model")
