"""Session cookies: signed, expiring, bound to a CSRF token; nothing forged or stale gets through."""

from __future__ import annotations

from api.web import session as ws
from api.web.pages import _safe_next

SECRET = b"k" * 32


def test_an_issued_cookie_verifies_and_carries_the_hash_not_the_key() -> None:
    cookie, issued = ws.issue(SECRET, "abc123hash", 3600, now=1000)
    got = ws.verify(SECRET, cookie, now=2000)
    assert got == issued and got.key_hash == "abc123hash"
    assert "sf_live_" not in cookie


def test_forged_tampered_expired_and_malformed_cookies_are_refused() -> None:
    cookie, _ = ws.issue(SECRET, "abc", 3600, now=1000)
    body, mac = cookie.split(".")
    other, _ = ws.issue(b"x" * 32, "abc", 3600, now=1000)
    assert ws.verify(b"x" * 32, cookie, now=2000) is None  # another deployment's secret
    assert ws.verify(SECRET, other, now=2000) is None
    assert ws.verify(SECRET, f"{body}x.{mac}", now=2000) is None
    assert ws.verify(SECRET, f"{body}.{mac[:-2]}", now=2000) is None
    assert ws.verify(SECRET, cookie, now=4601) is None  # expired
    for junk in (None, "", "nodot", "a.b.c", ".", "!!.??"):
        assert ws.verify(SECRET, junk) is None


def test_the_csrf_token_is_per_session_and_checked_exactly() -> None:
    _, a = ws.issue(SECRET, "h", 60)
    _, b = ws.issue(SECRET, "h", 60)
    assert a.csrf_token(SECRET) != b.csrf_token(SECRET)
    assert ws.csrf_ok(SECRET, a, a.csrf_token(SECRET))
    assert not ws.csrf_ok(SECRET, a, b.csrf_token(SECRET))
    assert not ws.csrf_ok(SECRET, a, None) and not ws.csrf_ok(SECRET, a, "")


def test_sign_in_only_returns_to_same_site_paths() -> None:
    assert _safe_next("/board?x=1") == "/board?x=1"
    for bad in (None, "", "https://evil.example/", "//evil.example", "/\\evil.example", "board"):
        assert _safe_next(bad) == "/"
