"""The sales team's web app: sign-in, sign-out and the page shells (the pages render in the browser).

Every page is the same small shell (nav, CSRF meta tag, one ES module) that renders itself from the
JSON API with the session cookie, so the app and API clients share one set of routes and rules.
No build step and no CDN: the static files are plain ES modules and CSS served from `api/web/static`.
"""

from __future__ import annotations

import hashlib
import html
import json
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from sqlalchemy import select

from api.deps import SessionMakerDep, SettingsDep, hash_key, key_cache_of, tenant_of_key_hash
from api.web import session as web_session
from db.engine import tenant_tx
from db.models import Tenant
from settings import Settings
from workflows.starters import deal_workflow_id

STATIC_DIR = Path(__file__).parent / "static"

router = APIRouter(include_in_schema=False)

# Pages the shell knows: name, title. The browser module renders each from the API.
_PAGES = {
    "dashboard": "Dashboard",
    "board": "Pipeline",
    "deal": "Deal",
    "imports": "Imports",
    "ios": "IOs",
    "io_new": "Book an IO",
    "io": "IO",
    "matches": "Matches",
    "events": "Events",
    "webhooks": "Webhooks",
}
_NAV = (
    ("/", "Dashboard"),
    ("/board", "Pipeline"),
    ("/imports", "Imports"),
    ("/ios", "IOs"),
    ("/matches", "Matches"),
    ("/events", "Events"),
    ("/webhooks", "Webhooks"),
)
# Inline styles are allowed for the score bars the module sizes; scripts only from this origin.
_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
_HEADERS = {
    "Content-Security-Policy": _CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


class RevalidatedStaticFiles(StaticFiles):
    """Static files the browser must revalidate (ETag, 304): the modules `app.js` imports carry no
    version in their URL, so a deploy must never leave a stale one in a cache."""

    def file_response(self, *args: Any, **kwargs: Any) -> Response:
        response = super().file_response(*args, **kwargs)
        response.headers["Cache-Control"] = "no-cache"
        return response


def _asset_version() -> str:
    """A hash of the static files, so a deploy busts browser caches without a build step."""
    digest = hashlib.sha256()
    for path in sorted(STATIC_DIR.rglob("*")):
        if path.is_file():
            digest.update(path.name.encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


_VERSION = _asset_version()


def _safe_next(target: str | None) -> str:
    """Only same-site paths: `/board` yes, `//evil.example` or `https://...` no."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target


def _signin_redirect(request: Request) -> RedirectResponse:
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return RedirectResponse(f"/signin?next={quote(target, safe='')}", status_code=303)


def _cookie_args(settings: Settings) -> dict[str, Any]:
    return {"httponly": True, "samesite": "lax", "secure": settings.session_cookie_secure, "path": "/"}


async def _tenant_name(sm: Any, tenant_id: uuid.UUID) -> str:
    async with tenant_tx(sm=sm, tenant_id=tenant_id) as session:
        name = await session.scalar(select(Tenant.name).where(Tenant.id == tenant_id))
    return str(name or "")


def _shell(page: str, *, tenant: str, csrf: str, params: dict[str, Any], settings: Settings) -> HTMLResponse:
    e = html.escape
    nav = "".join(f'<a href="{href}">{e(label)}</a>' for href, label in _NAV)
    body = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="csrf-token" content="{e(csrf)}">
<title>sponsorflow · {e(_PAGES[page])}</title>
<link rel="stylesheet" href="/static/app.css?v={_VERSION}"></head>
<body data-page="{page}" data-params="{e(json.dumps(params))}" data-tenant="{e(tenant)}"
 data-temporal-ui="{e(settings.ui_base_url)}">
<header class="topbar"><a class="brand" href="/">sponsorflow</a><nav>{nav}</nav>
<span class="tenant">{e(tenant)}</span>
<form method="post" action="/signout"><input type="hidden" name="{web_session.CSRF_FIELD}" value="{e(csrf)}">
<button type="submit">Sign out</button></form></header>
<main id="app" aria-live="polite"><p class="loading">Loading…</p></main>
<noscript>This app needs JavaScript; the same data is in the JSON API at /docs.</noscript>
<script type="module" src="/static/app.js?v={_VERSION}"></script>
</body></html>"""
    return HTMLResponse(body, headers=_HEADERS)


async def _page(
    request: Request,
    page: str,
    settings: Settings,
    sm: Any,
    params: dict[str, Any] | None = None,
    more: Callable[[uuid.UUID], dict[str, Any]] | None = None,
) -> Response:
    secret = settings.session_key()
    session = web_session.verify(secret, request.cookies.get(web_session.COOKIE))
    if session is None:
        return _signin_redirect(request)
    tenant_id = await tenant_of_key_hash(sm, key_cache_of(request), session.key_hash)
    if tenant_id is None:  # the key was revoked since sign-in
        response = _signin_redirect(request)
        response.delete_cookie(web_session.COOKIE, path="/")
        return response
    return _shell(
        page,
        tenant=await _tenant_name(sm, tenant_id),
        csrf=session.csrf_token(secret),
        params={**(params or {}), **(more(tenant_id) if more else {})},
        settings=settings,
    )


def _signin_page(
    settings: Settings, next_path: str, error: str | None, status_code: int = 200
) -> HTMLResponse:
    e = html.escape
    token = web_session.signin_token()
    message = f'<p class="flash error" role="alert" data-testid="flash">{e(error)}</p>' if error else ""
    body = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>sponsorflow · Sign in</title><link rel="stylesheet" href="/static/app.css?v={_VERSION}"></head>
<body class="signin"><main class="signin-box">
<h1>sponsorflow</h1><p>Sign in with your network's API key.</p>{message}
<form method="post" action="/signin">
<input type="hidden" name="{web_session.CSRF_FIELD}" value="{e(token)}">
<input type="hidden" name="next" value="{e(next_path)}">
<label for="api_key">API key</label>
<input id="api_key" name="api_key" type="password" autocomplete="current-password" required maxlength="200">
<button type="submit">Sign in</button></form>
<p class="hint">An admin creates keys with <code>POST /api/v1/tenants</code> or
<code>sponsorflow tenant create</code>; <code>make up</code> prints the demo key.</p></main></body></html>"""
    response = HTMLResponse(body, status_code=status_code, headers=_HEADERS)
    response.set_cookie(web_session.SIGNIN_COOKIE, token, max_age=3600, **_cookie_args(settings))
    return response


@router.get("/signin")
async def signin_form(settings: SettingsDep, next: str | None = None) -> HTMLResponse:
    """The sign-in form (sets the double-submit cookie its POST must echo)."""
    return _signin_page(settings, _safe_next(next), None)


@router.post("/signin")
async def signin(
    request: Request,
    settings: SettingsDep,
    sm: SessionMakerDep,
    api_key: Annotated[str, Form(max_length=200)] = "",
    csrf_token: Annotated[str, Form(max_length=200)] = "",
    next: Annotated[str, Form(max_length=2000)] = "/",
) -> Response:
    """Checks the key and sets the HttpOnly session cookie; wrong key: 401 with the form again."""
    target = _safe_next(next)
    expected = request.cookies.get(web_session.SIGNIN_COOKIE)
    if (
        request.headers.get("sec-fetch-site") == "cross-site"
        or not expected
        or not csrf_token
        or expected != csrf_token
    ):
        return _signin_page(settings, target, "The sign-in form expired; please try again.", 403)
    key_hash = hash_key(api_key.strip())
    tenant_id = await tenant_of_key_hash(sm, key_cache_of(request), key_hash) if api_key.strip() else None
    if tenant_id is None:
        return _signin_page(settings, target, "That API key is not valid.", 401)
    cookie, _ = web_session.issue(settings.session_key(), key_hash, settings.session_hours * 3600)
    response = RedirectResponse(target, status_code=303)
    response.set_cookie(
        web_session.COOKIE, cookie, max_age=int(settings.session_hours * 3600), **_cookie_args(settings)
    )
    response.delete_cookie(web_session.SIGNIN_COOKIE, path="/")
    return response


@router.post("/signout")
async def signout(
    request: Request, settings: SettingsDep, csrf_token: Annotated[str, Form(max_length=200)] = ""
) -> Response:
    """Ends the session (CSRF-checked, so another site cannot sign you out)."""
    secret = settings.session_key()
    session = web_session.verify(secret, request.cookies.get(web_session.COOKIE))
    if session is not None and not web_session.csrf_ok(secret, session, csrf_token):
        return Response("CSRF check failed", status_code=403, media_type="text/plain")
    response = RedirectResponse("/signin", status_code=303)
    response.delete_cookie(web_session.COOKIE, path="/")
    return response


@router.get("/")
async def dashboard_page(request: Request, settings: SettingsDep, sm: SessionMakerDep) -> Response:
    """Dashboard: the cards and charts."""
    return await _page(request, "dashboard", settings, sm)


@router.get("/board")
async def board_page(request: Request, settings: SettingsDep, sm: SessionMakerDep) -> Response:
    """Pipeline board: a column per stage, drag to move."""
    return await _page(request, "board", settings, sm)


@router.get("/deals/{deal_id}")
async def deal_page(request: Request, deal_id: str, settings: SettingsDep, sm: SessionMakerDep) -> Response:
    """One deal: history timeline and the link to its workflow."""

    def link(tenant_id: uuid.UUID) -> dict[str, Any]:
        return {"workflow_url": settings.workflow_url(deal_workflow_id(str(tenant_id), deal_id))}

    return await _page(request, "deal", settings, sm, {"deal_id": deal_id}, link)


@router.get("/imports")
async def imports_page(request: Request, settings: SettingsDep, sm: SessionMakerDep) -> Response:
    """Imports: upload with live progress of both phases (rows, deal workflows), row errors, history."""
    return await _page(request, "imports", settings, sm)


@router.get("/ios")
async def ios_page(request: Request, settings: SettingsDep, sm: SessionMakerDep) -> Response:
    """IO list."""
    return await _page(request, "ios", settings, sm)


@router.get("/ios/new")
async def io_new_page(
    request: Request, settings: SettingsDep, sm: SessionMakerDep, deal: str | None = None
) -> Response:
    """Booking form for a won deal, with free-slot hints."""
    return await _page(request, "io_new", settings, sm, {"deal_id": deal} if deal else {})


@router.get("/ios/{io_id}")
async def io_page(request: Request, io_id: str, settings: SettingsDep, sm: SessionMakerDep) -> Response:
    """One IO: units, delivery against goal, a missing delivery report to close, invoice, events."""
    return await _page(request, "io", settings, sm, {"io_id": io_id})


@router.get("/matches")
async def matches_page(
    request: Request, settings: SettingsDep, sm: SessionMakerDep, advertiser_id: str | None = None
) -> Response:
    """Matches per advertiser with the six signals and the rationale."""
    return await _page(
        request, "matches", settings, sm, {"advertiser_id": advertiser_id} if advertiser_id else {}
    )


@router.get("/events")
async def events_page(request: Request, settings: SettingsDep, sm: SessionMakerDep) -> Response:
    """Live event feed."""
    return await _page(request, "events", settings, sm)


@router.get("/webhooks")
async def webhooks_page(request: Request, settings: SettingsDep, sm: SessionMakerDep) -> Response:
    """Webhooks: endpoints (secret shown once), pause/resume, send a test, deliveries with retry."""
    return await _page(request, "webhooks", settings, sm)
