"""Encryption at rest for secrets the gateway stores (provider keys, webhook signing secrets).

Fernet (AES-128-CBC + HMAC-SHA256). The keys are settings.CREDENTIALS_ENCRYPTION_KEY: one or more
Fernet keys, comma-separated, newest first. The newest encrypts; every listed key decrypts, so a
key is rotated by prepending a new one, re-encrypting what is stored, then dropping the old key.
Plaintext never leaves this module except as the return value of `decrypt`; error messages
never contain it.
"""

from __future__ import annotations

from functools import lru_cache

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from django.conf import settings


class DecryptionError(Exception):
    """The stored value was not encrypted with any configured key (or was tampered with)."""


@lru_cache(maxsize=8)
def _fernet_for(keys: str) -> MultiFernet:
    return MultiFernet([Fernet(key.strip().encode()) for key in keys.split(",") if key.strip()])


def _fernet() -> MultiFernet:
    return _fernet_for(settings.CREDENTIALS_ENCRYPTION_KEY)


def encrypt(plaintext: str) -> str:
    return _fernet().encrypt(plaintext.encode()).decode()


def decrypt(token: str, *, what: str = "A stored secret") -> str:
    try:
        return _fernet().decrypt(token.encode()).decode()
    except (InvalidToken, ValueError, TypeError):
        raise DecryptionError(
            f"{what} cannot be decrypted with CREDENTIALS_ENCRYPTION_KEY "
            "(wrong or rotated-away key, or a tampered value)."
        ) from None


def reencrypt(token: str, *, what: str = "A stored secret") -> str:
    """The same plaintext, encrypted with the newest key."""
    try:
        return _fernet().rotate(token.encode()).decode()
    except (InvalidToken, ValueError, TypeError):
        raise DecryptionError(f"{what} cannot be decrypted for re-encryption.") from None
