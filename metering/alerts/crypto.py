"""Webhook signing secrets, encrypted at rest with the gateway's Fernet keys.

The keys are settings.CREDENTIALS_ENCRYPTION_KEY: comma-separated Fernet keys, newest first. The
newest encrypts, every listed key decrypts, so keys rotate exactly as provider credentials do (the
llm app encrypts those the same way; metering sits below llm and may not import it, DESIGN.md §2).
"""

from __future__ import annotations

import secrets
from functools import lru_cache

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from django.conf import settings

SECRET_PREFIX = "whsec_"


class SecretDecryptionError(Exception):
    """The stored secret was not encrypted with any configured key (or was tampered with)."""


@lru_cache(maxsize=8)
def _fernet_for(keys: str) -> MultiFernet:
    return MultiFernet([Fernet(key.strip().encode()) for key in keys.split(",") if key.strip()])


def _fernet() -> MultiFernet:
    return _fernet_for(settings.CREDENTIALS_ENCRYPTION_KEY)


def secret_generate() -> str:
    return SECRET_PREFIX + secrets.token_urlsafe(32)


def secret_encrypt(plaintext: str) -> str:
    return _fernet().encrypt(plaintext.encode()).decode()


def secret_decrypt(token: str) -> str:
    try:
        return _fernet().decrypt(token.encode()).decode()
    except (InvalidToken, ValueError, TypeError):
        raise SecretDecryptionError(
            "The channel's signing secret cannot be decrypted with CREDENTIALS_ENCRYPTION_KEY "
            "(wrong or rotated-away key, or a tampered value)."
        ) from None


def secret_reencrypt(token: str) -> str:
    """The same secret, encrypted with the newest key."""
    try:
        return _fernet().rotate(token.encode()).decode()
    except (InvalidToken, ValueError, TypeError):
        raise SecretDecryptionError("The channel's signing secret cannot be decrypted for re-encryption.") from None
