"""Webhook signing secrets, encrypted at rest with the gateway's shared Fernet keys
(gateway_project.crypto: the same keys and rotation as provider credentials)."""

from __future__ import annotations

import secrets

from gateway_project import crypto as _crypto
from gateway_project.crypto import DecryptionError as SecretDecryptionError

__all__ = ["SECRET_PREFIX", "SecretDecryptionError", "secret_decrypt", "secret_encrypt", "secret_generate",
           "secret_reencrypt"]

SECRET_PREFIX = "whsec_"
_WHAT = "The channel's signing secret"


def secret_generate() -> str:
    return SECRET_PREFIX + secrets.token_urlsafe(32)


def secret_encrypt(plaintext: str) -> str:
    return _crypto.encrypt(plaintext)


def secret_decrypt(token: str) -> str:
    return _crypto.decrypt(token, what=_WHAT)


def secret_reencrypt(token: str) -> str:
    return _crypto.reencrypt(token, what=_WHAT)
