"""Web sessions: a signed HttpOnly cookie naming the API key, and the CSRF token bound to it.

The cookie carries the SHA-256 of the key (the form the database stores), never the key itself,
plus a random nonce and an expiry, signed with HMAC-SHA256. Every request re-checks the hash against
`api_keys` (through the key cache), so a revoked key ends its web sessions too.

CSRF: a request authenticated by the cookie and not safe (POST, PATCH, PUT, DELETE) must carry the
session's token in `X-CSRF-Token` (the page shell puts it in a meta tag) or, for plain HTML forms,
a `csrf_token` field. The token is an HMAC of the nonce, so another site can neither read nor forge it;
cross-site requests announced by the browser (`Sec-Fetch-Site: cross-site`) are refused outright.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass

COOKIE = "sf_session"
SIGNIN_COOKIE = "sf_signin"  # double-submit token of the sign-in form (login CSRF)
CSRF_HEADER = "X-CSRF-Token"
CSRF_FIELD = "csrf_token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


@dataclass(frozen=True)
class WebSession:
    """A verified session cookie."""

    key_hash: str
    nonce: str
    expires_at: int

    def csrf_token(self, secret: bytes) -> str:
        """The CSRF token of this session."""
        return _mac(secret, f"csrf|{self.nonce}")


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _mac(secret: bytes, message: str) -> str:
    return _b64(hmac.new(secret, message.encode(), hashlib.sha256).digest())


def issue(
    secret: bytes, key_hash: str, lifetime_s: float, now: float | None = None
) -> tuple[str, WebSession]:
    """Returns a new cookie value and its session."""
    session = WebSession(
        key_hash=key_hash,
        nonce=secrets.token_urlsafe(16),
        expires_at=int((now if now is not None else time.time()) + lifetime_s),
    )
    body = _b64(json.dumps({"h": session.key_hash, "n": session.nonce, "e": session.expires_at}).encode())
    return f"{body}.{_mac(secret, body)}", session


def verify(secret: bytes, cookie: str | None, now: float | None = None) -> WebSession | None:
    """Returns the session of a cookie value, or None if it is absent, forged, malformed or expired."""
    if not cookie or cookie.count(".") != 1:
        return None
    body, mac = cookie.split(".")
    if not hmac.compare_digest(mac, _mac(secret, body)):
        return None
    try:
        data = json.loads(_unb64(body))
        session = WebSession(key_hash=str(data["h"]), nonce=str(data["n"]), expires_at=int(data["e"]))
    except (ValueError, KeyError, TypeError):
        return None
    if session.expires_at <= (now if now is not None else time.time()):
        return None
    return session


def csrf_ok(secret: bytes, session: WebSession, token: str | None) -> bool:
    """True when `token` is this session's CSRF token."""
    return bool(token) and hmac.compare_digest(str(token), session.csrf_token(secret))


def signin_token() -> str:
    """A fresh random token for the sign-in form's double submit."""
    return secrets.token_urlsafe(16)
