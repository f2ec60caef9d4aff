"""A loopback OpenID Connect identity provider for the staff single sign-on tests.

`FakeIdP` is a real HTTP/1.1 server on 127.0.0.1 in a background thread with an RS256 key pair made at
start. It speaks the parts of OIDC Core / Discovery a relying party uses in the authorization code flow:

* `GET /.well-known/openid-configuration`: the discovery document (issuer = `url`);
* `GET /authorize`: auto-approves the identity set with `sign_in_as(...)` and redirects (302) to the
  `redirect_uri` with `code` and `state` (PKCE `code_challenge` S256 remembered with the code);
* `POST /token`: exchanges a code once (client secret in the form or HTTP Basic, same redirect URI, the
  PKCE verifier) for `access_token` + a signed `id_token` (`iss`, `sub`, `aud`, `exp`, `iat`, `nonce`,
  `email`, `email_verified`, `groups`, `name`);
* `GET /userinfo`: the identity's claims for a Bearer access token;
* `GET /jwks`: the public key (`kid`, `alg` RS256).

`tamper_next(...)` makes the next ID token wrong in one way ("signature": signed by another key under the
same kid, "audience", "nonce", "issuer", "expired"), as a forged or replayed token would be.
`received` lists every request (method, path) that reached it.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm


@dataclass
class Identity:
    sub: str
    email: str
    groups: list[str] = field(default_factory=list)
    email_verified: bool = True
    name: str = "Staff Person"

    def claims(self) -> dict[str, Any]:
        return {"sub": self.sub, "email": self.email, "email_verified": self.email_verified,
                "groups": list(self.groups), "name": self.name}


@dataclass
class _Grant:
    identity: Identity
    client_id: str
    redirect_uri: str
    nonce: str | None
    code_challenge: str | None


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    idp: FakeIdP

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that went away is normal here


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def do_GET(self) -> None:  # noqa: N802
        self.server.idp._dispatch(self, "GET")

    def do_POST(self) -> None:  # noqa: N802
        self.server.idp._dispatch(self, "POST")

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class FakeIdP:
    def __init__(self, *, client_id: str = "gateway-console", client_secret: str = "idp-client-secret") -> None:
        self.client_id = client_id
        self.client_secret = client_secret
        self.kid = "fake-key-1"
        self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.identity: Identity | None = None
        self.received: list[tuple[str, str]] = []
        self._grants: dict[str, _Grant] = {}
        self._tokens: dict[str, Identity] = {}
        self._tamper: str | None = None
        self._lock = threading.Lock()
        self._httpd = _Server(("127.0.0.1", 0), _Handler)
        self._httpd.idp = self
        self.port = self._httpd.server_address[1]
        threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True,
                         name=f"fake-idp-{self.port}").start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def __enter__(self) -> FakeIdP:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- test controls ---------------------------------------------------------------------------

    def sign_in_as(self, sub: str, email: str, groups: list[str] | None = None, *, email_verified: bool = True,
                   name: str = "Staff Person") -> None:
        """The identity /authorize approves from now on (the person at the IdP's login page)."""
        self.identity = Identity(sub, email, list(groups or []), email_verified, name)

    def tamper_next(self, how: str) -> None:
        assert how in {"signature", "audience", "nonce", "issuer", "expired"}, how
        self._tamper = how

    def count(self, path: str) -> int:
        return sum(1 for _, p in self.received if p == path)

    # ---- protocol --------------------------------------------------------------------------------

    def discovery(self) -> dict[str, Any]:
        return {
            "issuer": self.url,
            "authorization_endpoint": f"{self.url}/authorize",
            "token_endpoint": f"{self.url}/token",
            "userinfo_endpoint": f"{self.url}/userinfo",
            "jwks_uri": f"{self.url}/jwks",
            "response_types_supported": ["code"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "scopes_supported": ["openid", "email", "profile", "groups"],
            "token_endpoint_auth_methods_supported": ["client_secret_post", "client_secret_basic"],
            "code_challenge_methods_supported": ["S256"],
        }

    def jwks(self) -> dict[str, Any]:
        jwk = json.loads(RSAAlgorithm.to_jwk(self._key.public_key()))
        jwk.update({"kid": self.kid, "alg": "RS256", "use": "sig"})
        return {"keys": [jwk]}

    def _id_token(self, grant: _Grant) -> str:
        now = int(time.time())
        claims: dict[str, Any] = {"iss": self.url, "aud": grant.client_id, "iat": now, "exp": now + 300,
                                  **grant.identity.claims()}
        if grant.nonce is not None:
            claims["nonce"] = grant.nonce
        key = self._key
        with self._lock:
            tamper, self._tamper = self._tamper, None
        if tamper == "signature":
            key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        elif tamper == "audience":
            claims["aud"] = "some-other-client"
        elif tamper == "nonce":
            claims["nonce"] = "a-replayed-nonce"
        elif tamper == "issuer":
            claims["iss"] = "http://127.0.0.1:1/not-the-issuer"
        elif tamper == "expired":
            claims["iat"], claims["exp"] = now - 7200, now - 3600
        return jwt.encode(claims, key, algorithm="RS256", headers={"kid": self.kid})

    def _dispatch(self, h: _Handler, method: str) -> None:
        parts = urlsplit(h.path)
        with self._lock:
            self.received.append((method, parts.path))
        length = int(h.headers.get("Content-Length") or 0)
        raw = h.rfile.read(length).decode() if length else ""
        query = {k: v[0] for k, v in parse_qs(parts.query).items()}
        form = {k: v[0] for k, v in parse_qs(raw).items()}
        route = (method, parts.path)
        if route == ("GET", "/.well-known/openid-configuration"):
            self._json(h, 200, self.discovery())
        elif route == ("GET", "/jwks"):
            self._json(h, 200, self.jwks())
        elif route == ("GET", "/authorize"):
            self._authorize(h, query)
        elif route == ("POST", "/token"):
            self._token(h, form)
        elif route == ("GET", "/userinfo"):
            self._userinfo(h)
        else:
            self._json(h, 404, {"error": "not_found"})

    def _authorize(self, h: _Handler, q: dict[str, str]) -> None:
        if q.get("response_type") != "code" or "openid" not in q.get("scope", "").split():
            return self._json(h, 400, {"error": "invalid_request"})
        if q.get("client_id") != self.client_id or not q.get("redirect_uri"):
            return self._json(h, 400, {"error": "unauthorized_client"})
        if self.identity is None:
            return self._json(h, 403, {"error": "access_denied"})
        if q.get("code_challenge") and q.get("code_challenge_method") != "S256":
            return self._json(h, 400, {"error": "invalid_request"})
        code = secrets.token_urlsafe(24)
        with self._lock:
            self._grants[code] = _Grant(self.identity, q["client_id"], q["redirect_uri"], q.get("nonce"),
                                        q.get("code_challenge"))
        sep = "&" if "?" in q["redirect_uri"] else "?"
        location = q["redirect_uri"] + sep + urlencode({"code": code, "state": q.get("state", "")})
        h.send_response(302)
        h.send_header("Location", location)
        h.send_header("Content-Length", "0")
        h.end_headers()

    def _client_authenticated(self, h: _Handler, form: dict[str, str]) -> bool:
        basic = h.headers.get("Authorization", "")
        if basic.startswith("Basic "):
            client_id, _, secret = base64.b64decode(basic[6:]).decode().partition(":")
        else:
            client_id, secret = form.get("client_id", ""), form.get("client_secret", "")
        return client_id == self.client_id and secrets.compare_digest(secret, self.client_secret)

    def _token(self, h: _Handler, form: dict[str, str]) -> None:
        if not self._client_authenticated(h, form):
            return self._json(h, 401, {"error": "invalid_client"})
        if form.get("grant_type") != "authorization_code":
            return self._json(h, 400, {"error": "unsupported_grant_type"})
        with self._lock:
            grant = self._grants.pop(form.get("code", ""), None)  # a code is good once
        if grant is None or grant.redirect_uri != form.get("redirect_uri"):
            return self._json(h, 400, {"error": "invalid_grant"})
        if grant.code_challenge is not None:
            verifier = form.get("code_verifier", "")
            if _b64url(hashlib.sha256(verifier.encode()).digest()) != grant.code_challenge:
                return self._json(h, 400, {"error": "invalid_grant", "error_description": "PKCE"})
        access = secrets.token_urlsafe(24)
        with self._lock:
            self._tokens[access] = grant.identity
        self._json(h, 200, {"access_token": access, "token_type": "Bearer", "expires_in": 300,
                            "id_token": self._id_token(grant)})

    def _userinfo(self, h: _Handler) -> None:
        auth = h.headers.get("Authorization", "")
        with self._lock:
            identity = self._tokens.get(auth.removeprefix("Bearer ")) if auth.startswith("Bearer ") else None
        if identity is None:
            return self._json(h, 401, {"error": "invalid_token"})
        self._json(h, 200, identity.claims())

    @staticmethod
    def _json(h: _Handler, status: int, payload: Any) -> None:
        data = json.dumps(payload).encode()
        h.send_response(status)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        h.wfile.write(data)
        h.wfile.flush()
