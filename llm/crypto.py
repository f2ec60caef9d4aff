"""Encryption at rest for provider credentials (Fernet: AES-128-CBC + HMAC-SHA256, with a timestamp).

The keys come from settings.CREDENTIALS_ENCRYPTION_KEY: one or more Fernet keys, comma-separated,
newest first. The newest key encrypts; every listed key can decrypt, so a key is rotated by
prepending a new one, re-encrypting the stored credentials (`reencrypt`, or the admin action
"Re-encrypt with the newest key") and then dropping the old key. Plaintext never leaves this
module except as the return value of `decrypt`; error messages never contain it.
"""

from __future__ import annotations

from functools import lru_cache

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from django.conf import settings


class CredentialDecryptionError(Exception):
    """The stored value was not encrypted with any configured key (or was tampered with)."""


@lru_cache(maxsize=8)
def _fernet_for(keys: str) -> MultiFernet:
    return MultiFernet([Fernet(key.strip().encode()) for key in keys.split(",") if key.strip()])


def _fernet() -> MultiFernet:
    return _fernet_for(settings.CREDENTIALS_ENCRYPTION_KEY)


def encrypt(plaintext: str) -> str:
    return _fernet().encrypt(plaintext.encode()).decode()


def decrypt(token: str) -> str:
    try:
        return _fernet().decrypt(token.encode()).decode()
    except (InvalidToken, ValueError, TypeError):
        raise CredentialDecryptionError(
            "A stored credential cannot be decrypted with CREDENTIALS_ENCRYPTION_KEY "
            "(wrong or rotated-away key, or a tampered value)."
        ) from None


def reencrypt(token: str) -> str:
    """The same plaintext, encrypted with the newest key."""
    try:
        return _fernet().rotate(token.encode()).decode()
    except (InvalidToken, ValueError, TypeError):
        raise CredentialDecryptionError("A stored credential cannot be decrypted for re-encryption.") from None
