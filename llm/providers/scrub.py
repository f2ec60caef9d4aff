"""Credential scrubbing for provider error text before it is logged or written to the ledger.

A provider's error text can quote the key it was sent ("Incorrect API key provided: sk-..."), echo
an Authorization header or a request URL with `?key=`, or a proxy's URL with basic auth in it.
`scrub` replaces anything that looks like a credential with `[redacted]`, and every key a provider
of this process was built with (`secret_register`) literally, whatever its shape: a local server's
key need not look like a vendor's.
Hosts and ports stay: the log and the ledger are for operators, and where a broken connection went
is what they need. Tenants never see this text at all (they get `ProviderError.message`).
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterable

REDACTED = "[redacted]"
MIN_SECRET = 4  # a one- or two-letter "secret" would shred the text

# Replaced whole (never mutated) so that a scrub running meanwhile iterates a stable tuple.
_known: tuple[str, ...] = ()
_lock = threading.Lock()

# Order matters: the specific shapes first, so a key inside a header or a URL is named once.
_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    # user:password@ in a URL (a proxy or base URL with basic auth).
    (re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/\s:@]+:[^/\s@]*@"), r"\1" + REDACTED + "@"),
    # Authorization schemes with their credential (token= and token: are key-bearing fields, below).
    (re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=*\-]{4,}"), r"\1 " + REDACTED),
    # Key-bearing headers, query parameters and JSON fields: x-api-key: ..., ?key=..., "api_key": "...".
    (re.compile(r"""(?ix)
        (\b(?:x-goog-api-key|x-api-key|api[_-]?key|apikey|access[_-]?token|refresh[_-]?token|id[_-]?token
             |client[_-]?secret|secret|password|passwd|pwd|auth|authorization|key|token|sig|signature)
         ["']?\s*[:=]\s*["']?)
        (?!\[redacted\])[^\s"'&,;)}\]]+
    """), r"\1" + REDACTED),
    # Vendor key shapes: OpenAI (sk-, sk-proj-, sk-live-), Anthropic (sk-ant-), xAI (xai-), Google
    # (AIza..., ya29. OAuth tokens), Groq (gsk_), Hugging Face (hf_). Masked keys (sk-...****abcd) too.
    (re.compile(r"\b(?:sk-ant-|sk-|xai-|gsk_|hf_)[A-Za-z0-9_*\-.]{6,}"), REDACTED),
    (re.compile(r"\bAIza[0-9A-Za-z_\-]{10,}"), REDACTED),
    (re.compile(r"\bya29\.[0-9A-Za-z_\-.]{10,}"), REDACTED),
    # JWTs: three base64url segments, the first a JSON header ("eyJ" is '{"' encoded).
    (re.compile(r"\beyJ[A-Za-z0-9_\-]{5,}\.[A-Za-z0-9_\-]{5,}\.[A-Za-z0-9_\-]*"), REDACTED),
)


def secret_register(secret: str | None) -> None:
    """Remember a key this process sends, so that `scrub` removes it wherever it is quoted."""
    global _known
    if not secret or len(secret) < MIN_SECRET or secret in _known:
        return
    with _lock:
        if secret not in _known:
            # Longest first: a key that contains another is removed whole.
            _known = tuple(sorted((*_known, secret), key=len, reverse=True))


def scrub(text: str, secrets: Iterable[str | None] = ()) -> str:
    """`text` with every credential-looking part, every registered key and each of `secrets` replaced."""
    if not text:
        return ""
    for secret in (*secrets, *_known):
        if secret and len(secret) >= MIN_SECRET:
            text = text.replace(secret, REDACTED)
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text
