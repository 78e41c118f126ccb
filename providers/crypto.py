"""Authenticated encryption of stored provider secrets, with key rotation (MultiFernet)."""
from functools import cache

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from django.conf import settings


@cache
def _fernet() -> MultiFernet:
    # Encrypts with the first key; decrypts with whichever key matches.
    return MultiFernet([Fernet(key.encode()) for key in settings.ENCRYPTION_KEYS])


def encrypt_secret(plaintext: str) -> str:
    return _fernet().encrypt(plaintext.encode()).decode()


def decrypt_secret(token: str) -> str:
    """The plaintext, or raise ValueError (never echoing the token) when no key fits."""
    try:
        return _fernet().decrypt(token.encode()).decode()
    except InvalidToken:
        raise ValueError("stored secret cannot be decrypted with the configured ENCRYPTION_KEYS") from None


def reencrypt_secret(token: str) -> str:
    """The same secret, encrypted under the first (newest) key."""
    return _fernet().rotate(token.encode()).decode()
