"""Virtual key material: generation, hashing, and the visible prefix. Plain Python."""
import hashlib
import secrets

KEY_PREFIX = "sk-gw-"
VISIBLE_CHARS = 12


def generate_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_key(plaintext: str) -> str:
    # Keys are 256 random bits, so a fast unsalted hash is safe; it also lets the
    # hot path find a key with one dict lookup.
    return hashlib.sha256(plaintext.encode()).hexdigest()


def visible_prefix(plaintext: str) -> str:
    return plaintext[:VISIBLE_CHARS]
