"""The web app in a real headless Chromium (Debian's), driven by Playwright, against a real stack.

The API (uvicorn on a free port) and the worker run in this process against the session's
PostgreSQL and Temporal dev server. Screenshots of every page land in test-output/screenshots/
(or $SPONSORFLOW_TEST_OUTPUT/screenshots) for a person to look at.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import socket
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from playwright.async_api import Browser, Page, async_playwright, expect
from standardwebhooks.webhooks import Webhook

from api.main import create_app
from db.embedded import EmbeddedDatabase
from db.engine import SessionMaker
from db.tenants import NewTenant, create_tenant
from domain.events import EVENT_TYPES
from tests.conftest import make_settings
from tests.helpers.factories import ad_unit, make_advertiser, make_deal, make_show, move
from tests.helpers.receivers import receiver
from worker import build_worker

pytestmark = pytest.mark.timeout(300)

ROOT = Path(__file__).resolve().parents[2]
SHOTS = Path(os.environ.get("SPONSORFLOW_TEST_OUTPUT", ROOT / "test-output")) / "screenshots"
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def _chromium() -> str:
    path = os.environ.get("SPONSORFLOW_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(path).exists():
        pytest.fail(
            "Debian's chromium is needed for the browser tests: `apt-get install chromium` "
            "(`make test` does this when it can), or point SPONSORFLOW_CHROMIUM at a Chromium binary"
        )
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Live:
    """A served stack and a Chromium to look at it."""

    base: str
    http: httpx.AsyncClient
    browser: Browser
    sm: SessionMaker

    async def tenant(self, name: str) -> tuple[NewTenant, dict[str, str]]:
        t = await create_tenant(sm=self.sm, name=f"{name} {uuid.uuid4().hex[:4]}")
        return t, {"Authorization": f"Bearer {t.api_key}"}

    async def signed_in(self, tenant: NewTenant, *, width: int = 1280, height: int = 900) -> Page:
        context = await self.browser.new_context(
            base_url=self.base, viewport={"width": width, "height": height}, accept_downloads=True
        )
        page = await context.new_page()
        await page.goto("/")
        await expect(page).to_have_url(f"{self.base}/signin?next=%2F")
        await page.fill("#api_key", tenant.api_key)
        await page.click("button[type=submit]")
        await expect(page.locator("[data-testid=card-pipeline]")).to_be_visible()
        return page


async def shot(page: Page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


@asynccontextmanager
async def _serve(
    database: EmbeddedDatabase, client: Any, sm: SessionMaker, **overrides: Any
) -> AsyncIterator[Live]:
    """The API on a free port and the worker, with these settings, and a Chromium."""
    executable = _chromium()
    port = _free_port()
    settings = make_settings(
        database, client, api_port=port, temporal_ui_url="http://127.0.0.1:8233", **overrides
    )
    app = create_app(settings)
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", timeout_graceful_shutdown=2)
    )
    async with build_worker(client, settings, sm):
        serving = asyncio.create_task(server.serve())
        while not server.started:
            assert not serving.done(), "uvicorn did not start"
            await asyncio.sleep(0.05)
        base = f"http://127.0.0.1:{port}"
        try:
            async with (
                httpx.AsyncClient(base_url=base, timeout=30) as http,
                async_playwright() as pw,
            ):
                browser = await pw.chromium.launch(executable_path=executable, args=CHROMIUM_FLAGS)
                try:
                    yield Live(base=base, http=http, browser=browser, sm=sm)
                finally:
                    await browser.close()
        finally:
            server.should_exit = True
            await serving


@pytest.fixture
async def live(database: EmbeddedDatabase, client: Any, sm: SessionMaker) -> AsyncIterator[Live]:
    async with _serve(database, client, sm) as served:
        yield served


# Webhook clocks for a delivery that fails within seconds: polls every 0.2 s, retries from 0.2 s
# up to 1 s apart, for 3.6 s (webhook_retry_hours), then `failed`.
FAST_FAILING_WEBHOOKS: dict[str, Any] = {
    "webhook_poll_seconds": 0.2,
    "webhook_idle_poll_seconds": 0.3,
    "webhook_retry_initial_seconds": 0.2,
    "webhook_retry_max_interval_seconds": 1.0,
    "webhook_timeout_seconds": 1.0,
    "webhook_retry_hours": 0.001,
}


@pytest.fixture
async def live_fast_webhooks(
    database: EmbeddedDatabase, client: Any, sm: SessionMaker
) -> AsyncIterator[Live]:
    """A second stack, only for the test that needs a delivery to fail in seconds."""
    async with _serve(database, client, sm, **FAST_FAILING_WEBHOOKS) as served:
        yield served


async def _column_of(page: Page, deal_id: str) -> str | None:
    card = page.locator(f"[data-testid=deal-card][data-deal-id='{deal_id}']")
    await expect(card).to_have_count(1)
    column = card.locator("xpath=ancestor::*[starts-with(@data-testid, 'column-')]")
    testid = await column.first.get_attribute("data-testid")
    return testid.removeprefix("column-") if testid else None


async def test_the_board_moves_deals_and_shows_the_servers_refusals(live: Live) -> None:
    tenant, h = await live.tenant("Board Network")
    other, oh = await live.tenant("Rival Network")
    advertiser = await make_advertiser(live.http, h, name="Acme Coffee")
    show = await make_show(live.http, h, name="The Daily Grind")
    mover = await make_deal(live.http, h, advertiser=advertiser, show=show, name="Acme spring flight")
    stuck = await make_deal(live.http, h, advertiser=advertiser, show=show, name="Acme summer flight")
    loser = await make_deal(live.http, h, advertiser=advertiser, show=show, name="Acme autumn flight")
    secret = await make_deal(live.http, oh, name="Rival secret deal")

    page = await live.signed_in(tenant)
    await shot(page, "01-dashboard")
    await page.goto("/board")
    card = page.locator(f"[data-testid=deal-card][data-deal-id='{mover['id']}']")
    await expect(card).to_be_visible()
    await shot(page, "02-board")

    # Drag to the next stage: persisted through the same update the API uses.
    await card.drag_to(page.locator("[data-testid=column-qualified]"))
    qualified = page.locator("[data-testid=column-qualified]")
    await expect(qualified.locator(f"[data-deal-id='{mover['id']}']")).to_be_visible()
    await _eventually_stage(live, h, mover["id"], "qualified")
    await page.reload()
    assert await _column_of(page, mover["id"]) == "qualified"

    # A forbidden move snaps back and shows the server's message.
    await page.locator(f"[data-testid=deal-card][data-deal-id='{stuck['id']}']").drag_to(
        page.locator("[data-testid=column-won]")
    )
    flash = page.locator("[data-testid=flash]")
    await expect(flash).to_contain_text("cannot move a deal from lead to won")
    assert await _column_of(page, stuck["id"]) == "lead"
    await shot(page, "03-board-forbidden-move")
    got = await live.http.get(f"/api/v1/deals/{stuck['id']}", headers=h)
    assert got.json()["stage"] == "lead" and len(got.json()["history"]) == 1

    # Lost asks for a reason, which becomes the deal's lost_reason.
    await page.locator(f"[data-testid=deal-card][data-deal-id='{loser['id']}']").drag_to(
        page.locator("[data-testid=column-lost]")
    )
    dialog = page.locator("[data-testid=lost-dialog]")
    await expect(dialog).to_be_visible()
    await dialog.locator("[name=reason]").fill("Budget moved to Q3")
    await shot(page, "04-board-lost-reason")
    await dialog.locator("[data-testid=lost-confirm]").click()
    await _eventually_stage(live, h, loser["id"], "lost")
    lost = (await live.http.get(f"/api/v1/deals/{loser['id']}", headers=h)).json()
    assert lost["lost_reason"] == "Budget moved to Q3"

    # The deal page: timeline, days in stage, the workflow link.
    await page.goto(f"/deals/{mover['id']}")
    await expect(page.locator("[data-testid=deal-stage]")).to_contain_text("qualified")
    await expect(page.locator("[data-testid=history] li")).to_have_count(2)
    await expect(page.locator("[data-testid=days-in-stage]")).to_contain_text("0")
    href = await page.locator("[data-testid=workflow-link]").get_attribute("href")
    assert href == f"http://127.0.0.1:8233/namespaces/default/workflows/deal%2F{tenant.id}%2F{mover['id']}"
    await shot(page, "05-deal")

    # Another tenant's deal never shows up, on any page.
    for path in ("/", "/board", "/events"):
        await page.goto(path)
        await page.wait_for_load_state("networkidle")
        assert secret["name"] not in await page.content(), path
    await page.context.close()


async def _eventually_stage(live: Live, h: dict[str, str], deal_id: str, stage: str) -> None:
    for _ in range(100):
        if (await live.http.get(f"/api/v1/deals/{deal_id}", headers=h)).json()["stage"] == stage:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"deal {deal_id} never reached {stage}")


async def test_an_upload_shows_progress_to_completion_and_its_row_errors(live: Live, tmp_path: Path) -> None:
    tenant, h = await live.tenant("Import Network")
    csv = tmp_path / "shows.csv"
    csv.write_text(
        "external_id,name,avg_downloads,categories\n"
        "s-1,Morning Brew,42000,news\n"
        "s-2,Night Owls,lots,comedy\n"
        "s-3,Deep Dive,18000,technology\n"
    )
    page = await live.signed_in(tenant)
    await page.goto("/imports")
    form = page.locator("[data-testid=upload-form]")
    await form.locator("select[name=kind]").select_option("shows")
    await form.locator("input[type=file]").set_input_files(str(csv))
    await form.locator("button[type=submit], input[type=submit]").first.click()
    status = page.locator("[data-testid=import-status]")
    await expect(status).to_have_text("completed_with_errors", timeout=60_000)
    assert await page.locator("[data-testid=import-progress]").evaluate("p => p.value") == 1
    errors = page.locator("[data-testid=row-errors] tbody tr")
    await expect(errors).to_have_count(1)
    cells = [c.strip() for c in await errors.first.locator("td").all_inner_texts()]
    assert cells[:3] == ["3", "avg_downloads", "lots"] and cells[3]
    await expect(page.locator("[data-testid=import-counts]")).to_contain_text("2")
    await expect(page.locator("[data-testid=import-history]")).to_contain_text("shows.csv")
    await shot(page, "06-imports")
    shows = (await live.http.get("/api/v1/shows", headers=h)).json()["items"]
    assert sorted(s["name"] for s in shows) == ["Deep Dive", "Morning Brew"]
    await page.context.close()


async def test_an_io_its_document_and_a_match_rationale(live: Live) -> None:
    tenant, h = await live.tenant("IO Network")
    advertiser = await make_advertiser(
        live.http,
        h,
        name="Acme Coffee",
        target_geo=["US"],
        target_categories=["news"],
        brand_safety_tolerance="medium",
    )
    show = await make_show(
        live.http, h, name="The Daily Grind", categories=["news"], geo={"US": 0.8, "GB": 0.2}, cpm_usd=25
    )
    deal = await make_deal(live.http, h, advertiser=advertiser, show=show, name="Acme winter flight")
    for stage in ("qualified", "proposal", "won"):
        assert (await move(live.http, h, deal["id"], stage)).status_code == 200
    air = datetime.now(UTC).date() + timedelta(days=10)
    r = await live.http.post(
        "/api/v1/io",
        json={"campaign_id": deal["id"], "ad_units": [ad_unit(show["id"], air)]},
        headers=h,
    )
    assert r.status_code == 201, r.text
    io = r.json()

    page = await live.signed_in(tenant)
    await page.goto("/ios")
    row = page.locator("[data-testid=io-row]")
    await expect(row).to_have_count(1)
    await shot(page, "07-ios")
    await row.locator(f"a[href='/ios/{io['id']}']").first.click()
    await expect(page).to_have_url(f"{live.base}/ios/{io['id']}")
    await expect(page.locator("[data-testid=io-units] tbody tr")).to_have_count(1)
    await expect(page.locator("[data-testid=io-units]")).to_contain_text("The Daily Grind")
    await expect(page.locator("[data-testid=io-invoice]")).to_be_visible()
    await shot(page, "08-io")
    pdf_href = await page.locator("[data-testid=doc-pdf]").get_attribute("href")
    assert pdf_href == f"/api/v1/io/{io['id']}/document?format=pdf"
    pdf = await page.request.get(pdf_href)  # the browser's own session cookie, no API key
    assert pdf.status == 200 and (await pdf.body()).startswith(b"%PDF")
    xlsx = await page.request.get(await page.locator("[data-testid=doc-xlsx]").get_attribute("href") or "")
    assert xlsx.status == 200 and (await xlsx.body()).startswith(b"PK")

    # The booking form hints at free slots for the chosen show.
    await page.goto(f"/ios/new?deal={deal['id']}")
    await expect(page.locator("[data-testid=slot-hints]").first).to_be_visible(timeout=15_000)
    await shot(page, "09-io-new")

    # Matches: Recalculate on the page waits for the new ranking, shows it, and says which it is;
    # the rationale the API ranks is the one the page reads out.
    await page.goto(f"/matches?advertiser_id={advertiser['id']}")
    await expect(page.locator("[data-testid=recalc-status]")).to_have_text("Not scored yet")
    await page.locator("[data-testid=recalculate]").click()
    first = page.locator("[data-testid=match-row]").first
    await expect(first).to_be_visible(timeout=60_000)
    await expect(page.locator("[data-testid=recalc-status]")).to_contain_text("Ranking of")
    ranked = (
        await live.http.get("/api/v1/matches", params={"advertiser_id": advertiser["id"]}, headers=h)
    ).json()["items"]
    assert ranked, "the recalculation wrote no matches"
    await expect(first.locator("[data-testid=rationale]")).to_have_text(ranked[0]["rationale"])
    await expect(first.locator("[data-testid=signal-bar]")).to_have_count(6)
    await shot(page, "10-matches")
    await page.context.close()


async def test_the_event_feed_is_live_and_pages_fit_a_phone(live: Live) -> None:
    tenant, h = await live.tenant("Phone Network")
    deal = await make_deal(live.http, h, name="Pocket-size deal")
    page = await live.signed_in(tenant, width=375, height=812)
    overflow = await page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 1, f"the dashboard overflows a phone by {overflow}px"
    await shot(page, "11-dashboard-phone")
    await page.goto("/events")
    feed = page.locator("[data-testid=event-feed] li")
    await expect(feed.first).to_contain_text("deal.created")
    assert (await move(live.http, h, deal["id"], "qualified")).status_code == 200
    await expect(feed.first).to_contain_text("deal.stage_changed", timeout=15_000)
    await shot(page, "12-events-phone")
    await page.goto("/board")
    await expect(page.locator(f"[data-deal-id='{deal['id']}']")).to_be_visible()
    overflow = await page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 1, f"the board page overflows a phone by {overflow}px (columns should scroll inside)"
    await shot(page, "13-board-phone")
    await page.context.close()


def _crm_campaigns(open_deals: int, closed: int, advertisers: list[str]) -> str:
    """A CRM export: `open_deals` open deals (lead..negotiation), then `closed` won or lost ones."""
    opens = ("lead", "qualified", "proposal", "negotiation")
    lines = ["external_id,advertiser_external_id,name,value_usd,stage,lost_reason"]
    for i in range(open_deals + closed):
        if i < open_deals:
            stage, reason = opens[i % 4], ""
        else:
            stage, reason = ("won", "") if i % 2 else ("lost", "Budget cut")
        ext = advertisers[i % len(advertisers)]
        lines.append(f"crm-{i:05d},{ext},Deal {i},{1000 + i % 9000},{stage},{reason}")
    return "\n".join(lines) + "\n"


# Records every phase the import panel shows (and the workflows line while it shows `workflows`),
# so a phase that lasts one poll is still seen by the test.
_WATCH_PHASES = """() => {
  window.__phases = [];
  window.__workflowLines = [];
  const panel = document.querySelector('[data-testid=import-panel]');
  new MutationObserver(() => {
    const phase = panel.dataset.phase;
    if (phase && window.__phases[window.__phases.length - 1] !== phase) window.__phases.push(phase);
    const line = panel.querySelector('[data-testid=import-workflows]');
    if (phase === 'workflows' && line) window.__workflowLines.push(line.textContent);
  }).observe(panel, { attributes: true, childList: true, subtree: true });
}"""


async def test_a_campaigns_upload_shows_rows_then_workflows_started(live: Live, tmp_path: Path) -> None:
    tenant, h = await live.tenant("Migration Network")
    advertisers = [f"adv-{i}" for i in range(5)]
    for ext in advertisers:
        await make_advertiser(live.http, h, name=f"Advertiser {ext}", external_id=ext)
    # Enough open deals that starting their workflows outlasts a 500 ms poll (~350 starts/s at best).
    open_deals, closed = 400, 100
    csv = tmp_path / "crm_export.csv"
    csv.write_text(_crm_campaigns(open_deals, closed, advertisers))

    page = await live.signed_in(tenant)
    await page.goto("/imports")
    form = page.locator("[data-testid=upload-form]")
    await expect(form).to_be_visible()
    await page.evaluate(_WATCH_PHASES)
    await form.locator("select[name=kind]").select_option("campaigns")
    await form.locator("input[type=file]").set_input_files(str(csv))
    await form.locator("button[type=submit]").click()
    phase = page.locator("[data-testid=import-phase]")
    await expect(phase).to_have_attribute("data-phase", "workflows", timeout=60_000)
    await expect(page.locator("[data-testid=phase-rows]")).to_have_attribute("data-state", "done")
    await shot(page, "14-import-workflows-phase")
    await expect(page.locator("[data-testid=import-status]")).to_have_text("completed", timeout=120_000)

    # The final panel: both phases done, with their counts and when the rows phase ended.
    await expect(phase).to_have_text("done")
    counts = page.locator("[data-testid=import-counts]")
    await expect(counts).to_have_attribute("data-processed", str(open_deals + closed))
    await expect(counts).to_contain_text(f"inserted {open_deals + closed}")
    workflows = page.locator("[data-testid=import-workflows]")
    await expect(workflows).to_have_text(f"Workflows started {open_deals} of {open_deals} (0 pending)")
    await expect(page.locator("[data-testid=phase-workflows]")).to_have_attribute("data-state", "done")
    await expect(page.locator("[data-testid=rows-finished]")).to_contain_text("done")
    assert await page.locator("[data-testid=rows-finished] time").count() == 1
    await shot(page, "15-import-two-phases-done")

    seen = await page.evaluate("window.__phases")
    assert seen[-1] == "done" and "workflows" in seen, seen
    assert seen == [p for p in ("rows", "workflows", "done") if p in seen], seen  # never backwards
    lines = await page.evaluate("window.__workflowLines")
    assert lines and all(f"of {open_deals} (" in line for line in lines), lines
    status = (await live.http.get("/api/v1/etl/history", headers=h)).json()["items"][0]
    api_status = (await live.http.get(f"/api/v1/etl/status/{status['import_id']}", headers=h)).json()
    assert (api_status["workflows_started"], api_status["workflows_pending"]) == (open_deals, 0)
    await page.context.close()

    # On a phone the two phases stack and nothing overflows.
    phone = await live.signed_in(tenant, width=375, height=812)
    await phone.goto("/imports")
    await phone.locator(f"[data-import-id='{status['import_id']}']").click()
    await expect(phone.locator("[data-testid=import-workflows]")).to_have_text(
        f"Workflows started {open_deals} of {open_deals} (0 pending)"
    )
    overflow = await phone.evaluate("document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 1, f"the imports page overflows a phone by {overflow}px"
    await shot(phone, "16-import-phone")
    await phone.context.close()


async def _io_status(live: Live, h: dict[str, str], io_id: str, want: str) -> dict[str, Any]:
    for _ in range(300):
        io = dict((await live.http.get(f"/api/v1/io/{io_id}", headers=h)).json())
        if io["status"] == want:
            return io
        await asyncio.sleep(0.1)
    raise AssertionError(f"IO {io_id} never reached {want}: {io['status']}")


async def test_an_io_awaiting_delivery_is_closed_from_its_page(live: Live) -> None:
    tenant, h = await live.tenant("Overdue Network")
    show = await make_show(live.http, h, name="Morning Brew", cpm_usd=25)
    deal = await make_deal(live.http, h, show=show, name="Acme launch flight")
    for stage in ("qualified", "proposal", "won"):
        assert (await move(live.http, h, deal["id"], stage)).status_code == 200
    # Aired today with a window of 0 days: the window ends at once, and nobody reported delivery.
    today = datetime.now(UTC).date()
    flat = ad_unit(
        show["id"],
        today,
        placement="pre_roll",
        pricing_model="flat",
        flat_usd=300,
        cpm_usd=None,
        impressions_goal=None,
    )
    r = await live.http.post(
        "/api/v1/io",
        json={
            "campaign_id": deal["id"],
            "ad_units": [ad_unit(show["id"], today, impressions_goal=10000), flat],
            "measurement_window_days": 0,
        },
        headers=h,
    )
    assert r.status_code == 201, r.text
    io = await _io_status(live, h, r.json()["id"], "awaiting_delivery")
    assert io["invoice"] is None

    page = await live.signed_in(tenant)
    await page.goto(f"/ios/{io['id']}")
    await expect(page.locator("[data-testid=io-status]")).to_have_text("awaiting_delivery")
    awaiting = page.locator("[data-testid=io-awaiting]")
    await expect(awaiting).to_contain_text("Awaiting a delivery report")
    await expect(awaiting).to_contain_text("1 CPM unit has no delivery report")
    await expect(awaiting.locator("[data-testid=io-awaiting-units] tbody tr")).to_have_count(1)
    await expect(awaiting.locator("[data-testid=io-awaiting-units]")).to_contain_text("Morning Brew")
    await expect(page.locator("[data-testid=io-invoice]")).to_contain_text("Not invoiced yet")
    overdue = page.locator("[data-testid=io-events] li[data-type='io.delivery_overdue']")
    await expect(overdue).to_contain_text("no delivery report for 1 unit (Morning Brew")
    await shot(page, "17-io-awaiting-delivery")
    # A reminder (every 72 h by default, so not waited for here) reads as one line too.
    reminder = await page.evaluate(
        """() => import('/static/lib.js').then((m) => m.eventSummary({type: 'io.delivery_reminder', payload: {
             reminder: 2, window_ended_at: '2026-03-02T00:00:00Z', reminder_hours: 72,
             units: [{ad_unit_id: 'u1', show_name: 'Morning Brew', air_date: '2026-03-01',
                      impressions_goal: 10000}]}}))"""
    )
    assert reminder.startswith("reminder 2: still no delivery report for 1 unit (Morning Brew Mar 1)"), (
        reminder
    )
    phone = await live.signed_in(tenant, width=375, height=812)
    await phone.goto(f"/ios/{io['id']}")
    await expect(phone.locator("[data-testid=io-awaiting] [data-testid=io-awaiting-units]")).to_be_visible()
    await expect(phone.locator("[data-testid=io-close-delivery-goal]")).to_be_visible()
    overflow = await phone.evaluate("document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 1, f"the IO page overflows a phone by {overflow}px"
    await shot(phone, "17b-io-awaiting-delivery-phone")
    await phone.context.close()

    # Confirm first: dismissing the question sends nothing.
    questions: list[str] = []

    async def dismiss(dialog: Any) -> None:
        questions.append(dialog.message)
        await dialog.dismiss()

    async def accept(dialog: Any) -> None:
        questions.append(dialog.message)
        await dialog.accept()

    page.once("dialog", dismiss)
    await page.locator("[data-testid=io-close-delivery-zero]").click()
    await expect(page.locator("[data-testid=io-close-delivery-zero]")).to_be_enabled()
    assert questions and "0 impressions" in questions[0], questions
    assert (await live.http.get(f"/api/v1/io/{io['id']}", headers=h)).json()["status"] == "awaiting_delivery"

    # Bill the goal: the unit is billed as 10,000 impressions, the IO is invoiced and completed.
    page.once("dialog", accept)
    await page.locator("[data-testid=io-close-delivery-goal]").click()
    await expect(page.locator("[data-testid=io-status]")).to_have_text("completed", timeout=30_000)
    assert "$250.00" in questions[1], questions
    invoice = page.locator("[data-testid=io-invoice]")
    await expect(invoice).to_contain_text("Invoice ")
    await expect(invoice.locator("tfoot")).to_contain_text("$550.00")
    await expect(page.locator("[data-testid=flash]")).to_contain_text("billed as their goal delivered")
    await expect(awaiting).to_be_hidden()
    await expect(page.locator("[data-testid=io-events] li[data-type='io.completed']")).to_contain_text("$550")
    await shot(page, "18-io-delivery-closed-invoice")
    got = (await live.http.get(f"/api/v1/io/{io['id']}", headers=h)).json()
    assert float(got["invoice"]["total_usd"]) == 550.0
    assert [u["delivered_impressions"] for u in got["ad_units"] if u["impressions_goal"]] == [10000]
    await page.context.close()


async def test_the_webhooks_page_adds_tests_and_pauses_an_endpoint(live: Live) -> None:
    tenant, h = await live.tenant("Webhook Network")
    other, oh = await live.tenant("Rival Hooks")
    async with receiver("ok") as r, receiver("ok") as rival:
        hidden = (
            await live.http.post(
                "/api/v1/webhooks", json={"url": rival.url, "event_types": ["*"]}, headers=oh
            )
        ).json()
        page = await live.signed_in(tenant)
        posts: list[str] = []
        page.on("request", lambda req: posts.append(req.url) if req.method == "POST" else None)
        await page.goto("/webhooks")
        await expect(page.locator(".topbar nav a.active")).to_have_text("Webhooks")
        form = page.locator("[data-testid=webhook-form]")
        # The checkboxes are the API's known event types (webhook.test is not subscribable), each
        # with its description, read from GET /api/v1/webhooks/event-types (no refused POST).
        boxes = form.locator("[data-testid=webhook-event-types] input[type=checkbox]")
        await expect(boxes.first).to_be_visible()
        values = set(await boxes.evaluate_all("bs => bs.map((b) => b.value)"))
        assert values == (EVENT_TYPES - {"webhook.test"}) | {"*"}, values
        described = {
            i["type"]: i["description"]
            for i in (await live.http.get("/api/v1/webhooks/event-types", headers=h)).json()["items"]
        }
        stage_label = form.locator("label.check", has=page.locator("input[value='deal.stage_changed']"))
        await expect(stage_label).to_have_attribute("title", described["deal.stage_changed"])
        assert posts == [], posts
        await expect(page.locator("[data-testid=webhook-list]")).to_have_count(0)  # none yet

        await form.locator("input[name=url]").fill(r.url)
        await form.locator("input[name=description]").fill("CRM sync")
        await form.locator("input[value='deal.stage_changed']").check()
        await form.locator("input[value='io.completed']").check()
        await form.locator("[data-testid=webhook-add]").click()
        secret_el = page.locator("[data-testid=webhook-secret]")
        await expect(secret_el).to_contain_text("whsec_")
        await expect(page.locator("[data-testid=webhook-secret-panel]")).to_contain_text("shown this once")
        secret = (await secret_el.inner_text()).strip()
        row = page.locator("[data-testid=webhook-row]")
        await expect(row).to_have_count(1)  # never the other tenant's endpoint
        await expect(row).to_contain_text("127.0.0.1")
        await expect(row).to_contain_text("deal.stage_changed, io.completed")
        await expect(row.locator("[data-testid=webhook-status]")).to_have_text("active")
        (hook,) = (await live.http.get("/api/v1/webhooks", headers=h)).json()["items"]
        assert hook["event_types"] == ["deal.stage_changed", "io.completed"] and hook["url"] == r.url
        assert hook["id"] != hidden["id"]
        await shot(page, "19-webhooks-secret-once")

        # The secret is gone after a reload: the page never sees it again.
        await page.reload()
        await expect(row).to_have_count(1)
        assert secret not in await page.content()
        await expect(page.locator("[data-testid=webhook-secret-panel]")).to_be_hidden()

        # Send a test: the receiver gets it signed with that secret, the page shows it delivered, 200.
        await row.locator("[data-testid=webhook-test]").click()
        (req,) = await r.wait_for(1)
        body = Webhook(secret).verify(req.body, req.headers)
        assert body["type"] == "webhook.test"
        delivery = page.locator("[data-testid=deliveries] [data-testid=delivery-row]")
        await expect(delivery).to_have_count(1, timeout=20_000)
        await expect(delivery.locator("[data-testid=delivery-status]")).to_have_text(
            "delivered", timeout=20_000
        )
        await expect(delivery.locator("[data-testid=delivery-code]")).to_have_text("200")
        await expect(delivery).to_contain_text("webhook.test")
        await expect(delivery.locator("[data-testid=delivery-retry]")).to_have_count(0)  # only failed ones
        await shot(page, "20-webhooks-delivered")

        # Pause: the status shows it, the API agrees, and a test is no longer offered.
        await row.locator("[data-testid=webhook-toggle]").click()
        await expect(row.locator("[data-testid=webhook-status]")).to_have_text("paused")
        await expect(row.locator("[data-testid=webhook-toggle]")).to_have_text("Resume")
        await expect(row.locator("[data-testid=webhook-test]")).to_be_disabled()
        got = (await live.http.get(f"/api/v1/webhooks/{hook['id']}", headers=h)).json()
        assert got["status"] == "paused"

        # Resume and rotate the secret (after a confirm): the new one is shown once, with how long
        # the old one keeps signing; a test is signed with both.
        await row.locator("[data-testid=webhook-toggle]").click()
        await expect(row.locator("[data-testid=webhook-status]")).to_have_text("active")
        page.once("dialog", lambda d: asyncio.ensure_future(d.accept()))
        await row.locator("[data-testid=webhook-rotate]").click()
        await expect(page.locator("[data-testid=webhook-previous-until]")).to_contain_text("keeps signing")
        rotated = (await secret_el.inner_text()).strip()
        assert rotated.startswith("whsec_") and rotated != secret
        await row.locator("[data-testid=webhook-test]").click()
        (_, again) = await r.wait_for(2)
        assert Webhook(rotated).verify(again.body, again.headers)["type"] == "webhook.test"
        assert Webhook(secret).verify(again.body, again.headers)["type"] == "webhook.test"
        await expect(delivery).to_have_count(2, timeout=20_000)

        # Send again everything of the last hour (the form's default): both tests, same webhook-ids.
        await page.locator("[data-testid=replay]").click()
        await expect(page.get_by_text("Sending again: 2 delivered or failed before")).to_be_visible()
        replayed = await r.wait_for(4)
        assert sorted(q.headers["webhook-id"] for q in replayed[2:]) == sorted(
            q.headers["webhook-id"] for q in replayed[:2]
        )
        await expect(delivery.locator("[data-testid=delivery-status]")).to_have_text(
            ["delivered", "delivered"], timeout=20_000
        )
        await page.context.close()

        # On a phone: no sideways scrolling (the tables scroll inside their card).
        phone = await live.signed_in(tenant, width=375, height=812)
        await phone.goto("/webhooks")
        await expect(phone.locator("[data-testid=webhook-row]")).to_have_count(1)
        await phone.locator("[data-testid=webhook-show-deliveries]").click()
        await expect(phone.locator("[data-testid=delivery-row]")).to_have_count(2)
        overflow = await phone.evaluate("document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 1, f"the webhooks page overflows a phone by {overflow}px"
        await shot(phone, "21-webhooks-phone")

        # Delete (after a confirm): the row goes, and so does the endpoint.
        phone.once("dialog", lambda d: asyncio.ensure_future(d.accept()))
        await phone.locator("[data-testid=webhook-delete]").click()
        await expect(phone.locator("[data-testid=webhook-row]")).to_have_count(0)
        await expect(phone.locator("[data-testid=deliveries-panel]")).to_be_hidden()
        gone = await live.http.get(f"/api/v1/webhooks/{hook['id']}", headers=h)
        assert gone.status_code == 404
        await phone.context.close()
        assert rival.requests == []


async def test_a_failed_webhook_delivery_shows_its_500_and_retry_delivers_it(
    live_fast_webhooks: Live,
) -> None:
    live = live_fast_webhooks
    tenant, h = await live.tenant("Retry Network")
    async with receiver("error") as r:
        created = await live.http.post(
            "/api/v1/webhooks", json={"url": r.url, "event_types": ["deal.stalled"]}, headers=h
        )
        assert created.status_code == 201, created.text
        hook = created.json()
        page = await live.signed_in(tenant)
        await page.goto("/webhooks")
        row = page.locator("[data-testid=webhook-row]")
        await expect(row).to_have_count(1)

        # The receiver answers 500 to every attempt: retried until the window ends, then failed.
        await row.locator("[data-testid=webhook-test]").click()
        delivery = page.locator("[data-testid=deliveries] [data-testid=delivery-row]")
        await expect(delivery).to_have_count(1, timeout=20_000)
        await expect(delivery.locator("[data-testid=delivery-status]")).to_have_text("failed", timeout=20_000)
        await expect(delivery.locator("[data-testid=delivery-code]")).to_have_text("500")
        await expect(delivery).to_contain_text("HTTP 500")
        failed_attempts = len(r.requests)
        assert failed_attempts >= 2, r.requests
        (d,) = (await live.http.get(f"/api/v1/webhooks/{hook['id']}/deliveries", headers=h)).json()["items"]
        assert (d["status"], d["attempts"], d["last_status_code"]) == ("failed", failed_attempts, 500)
        await shot(page, "22-webhooks-failed")

        # The receiver is fixed; Retry sends the same delivery again and the page shows it delivered.
        r.script[:] = ["ok"]
        await delivery.locator("[data-testid=delivery-retry]").click()
        await expect(page.get_by_text("Sending it again.")).to_be_visible()
        await expect(delivery.locator("[data-testid=delivery-status]")).to_have_text(
            "delivered", timeout=20_000
        )
        await expect(delivery.locator("[data-testid=delivery-code]")).to_have_text("200")
        await expect(delivery.locator("[data-testid=delivery-retry]")).to_have_count(0)
        await expect(delivery).to_have_attribute("data-delivery-id", d["id"])
        assert len(r.requests) == failed_attempts + 1
        assert r.requests[-1].headers["webhook-id"] == r.requests[0].headers["webhook-id"]
        (again,) = (await live.http.get(f"/api/v1/webhooks/{hook['id']}/deliveries", headers=h)).json()[
            "items"
        ]
        assert (again["id"], again["status"], again["last_status_code"]) == (d["id"], "delivered", 200)
        await shot(page, "23-webhooks-retried")

        # Ops filter the list: nothing failed any more; the delivered one under "Delivered".
        await page.locator("[data-testid=delivery-filter]").select_option("failed")
        await expect(page.get_by_text("No failed deliveries.")).to_be_visible()
        await expect(delivery).to_have_count(0)
        await page.locator("[data-testid=delivery-filter]").select_option("delivered")
        await expect(delivery).to_have_count(1)
        await expect(delivery).to_have_attribute("data-delivery-id", d["id"])
        await page.context.close()


def test_every_event_type_has_a_one_liner() -> None:
    """The feed, the dashboard and the IO page read each event type as a sentence, not raw JSON."""
    lib = (ROOT / "api" / "web" / "static" / "lib.js").read_text()
    summary = lib[lib.index("export function eventSummary") :]
    summary = summary[: summary.index("default:")]
    cases = set(re.findall(r'case "([a-z_]+\.[a-z_]+)"', summary))
    assert cases >= EVENT_TYPES, f"no one-liner in lib.js eventSummary for {sorted(EVENT_TYPES - cases)}"
