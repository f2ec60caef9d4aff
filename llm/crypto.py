"""Provider credentials at rest: the gateway's shared Fernet encryption (gateway_project.crypto)."""

from __future__ import annotations

from gateway_project import crypto as _crypto
from gateway_project.crypto import DecryptionError as CredentialDecryptionError
from gateway_project.crypto import encrypt

__all__ = ["CredentialDecryptionError", "decrypt", "encrypt", "reencrypt"]


def decrypt(token: str) -> str:
    return _crypto.decrypt(token, what="A stored credential")


def reencrypt(token: str) -> str:
    return _crypto.reencrypt(token, what="A stored credential")
