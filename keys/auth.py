"""Authentication of virtual keys against the in-memory snapshot. No database access."""
import hmac
import time
from dataclasses import dataclass
from decimal import Decimal

from llmgateway.errors import AuthenticationFailed, PermissionDenied

from .secrets import hash_key

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
    """Build the entry for a VirtualKey row (called when the snapshot is built)."""
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


def authenticate(meta, keys_by_hash: dict[str, KeyEntry], now: float | None = None) -> KeyEntry:
    """The key entry for the request's credentials, or raise AuthenticationFailed."""
    plaintext = presented_key(meta)
    if plaintext is None:
        raise AuthenticationFailed(
            "Missing API key. Send it as 'Authorization: Bearer <key>' (or the 'api-key' header).",
            log_message=NO_KEY,
        )
    digest = hash_key(plaintext)
    entry = keys_by_hash.get(digest)
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
