"""Seeds the demo tenant of `make up` through the public API and the import path.

The data are the sample files under api/demo_data/ (shows.csv, advertisers.xlsx, campaigns.csv,
show_downloads.csv): exactly what an ad-ops team would upload. The deals are then moved through
the pipeline over HTTP so they carry some history.
"""

from __future__ import annotations

import json
import random
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

DATA = Path(__file__).resolve().parent / "demo_data"
FILES = [
    ("shows", "shows.csv"),
    ("advertisers", "advertisers.xlsx"),
    ("campaigns", "campaigns.csv"),
    ("show_downloads", "show_downloads.csv"),
]

# Paths through the pipeline the demo deals take after import (each ends where the deal sits).
PATHS: list[list[str]] = [
    [],
    ["qualified"],
    ["qualified", "proposal"],
    ["qualified", "proposal", "negotiation"],
    ["qualified", "proposal", "negotiation", "won"],
    ["qualified", "proposal", "won"],
    ["qualified", "lost"],
    ["qualified", "proposal", "negotiation", "lost"],
    ["qualified", "proposal", "qualified"],
]
LOST_REASONS = ["Budget moved to Q3", "Went with a competitor network", "Audience too small", "No response"]


def _import(http: httpx.Client, kind: str, path: Path) -> dict[str, Any]:
    with path.open("rb") as f:
        r = http.post("/api/v1/etl/upload", files={"file": (path.name, f)}, data={"kind": kind})
    r.raise_for_status()
    import_id = r.json()["import_id"]
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        status = http.get(f"/api/v1/etl/status/{import_id}").json()
        if status["status"] in ("completed", "completed_with_errors", "failed", "cancelled"):
            if status["status"] != "completed":
                raise RuntimeError(f"demo import of {path.name} ended {status['status']}: {status}")
            return dict(status)
        time.sleep(0.2)
    raise RuntimeError(f"demo import of {path.name} did not finish")


def _book_demo_ios(http: httpx.Client, rng: random.Random) -> None:
    """Books an IO for each won demo deal: a few host-read units over the coming weeks."""
    shows = http.get("/api/v1/shows?limit=200").json()["items"]
    won = http.get("/api/v1/deals?stage=won&limit=200").json()["items"]
    today = datetime.now(UTC).date()
    for n, deal in enumerate(won[:6]):
        picks = [s for s in shows if s["id"] == deal["show_id"]] or shows[:1]
        picks += rng.sample([s for s in shows if s not in picks], k=min(2, len(shows) - 1))
        units = []
        for i, show in enumerate(picks):
            air = today + timedelta(days=3 + 7 * i + n)
            if i == 2:
                units.append(
                    {
                        "show_id": show["id"],
                        "placement": "post_roll",
                        "format": "produced",
                        "insertion": "dynamic",
                        "air_date": air.isoformat(),
                        "duration_s": 30,
                        "pricing_model": "flat",
                        "flat_usd": 750,
                    }
                )
                continue
            goal = max(1000, int(show["avg_downloads"] * rng.uniform(0.6, 0.9)) // 1000 * 1000)
            units.append(
                {
                    "show_id": show["id"],
                    "placement": "mid_roll",
                    "format": "host_read",
                    "insertion": "dynamic",
                    "air_date": air.isoformat(),
                    "duration_s": 60,
                    "pricing_model": "cpm",
                    "cpm_usd": show.get("cpm_usd") or 25,
                    "impressions_goal": goal,
                }
            )
        r = http.post(
            "/api/v1/io",
            json={
                "campaign_id": deal["id"],
                "ad_units": units,
                "underdelivery_policy": rng.choice(["makegood", "prorata"]),
            },
        )
        r.raise_for_status()


def seed_demo(api_url: str, admin_token: str, data_dir: Path) -> str:
    """Creates the demo tenant once per data dir and returns its API key."""
    marker = data_dir / "demo_tenant.json"
    if marker.exists():
        return str(json.loads(marker.read_text())["api_key"])
    rng = random.Random(20261124)
    with httpx.Client(base_url=api_url, timeout=60) as http:
        r = http.post(
            "/api/v1/tenants",
            json={"name": "Demo Podcast Network"},
            headers={"Authorization": f"Bearer {admin_token}"},
        )
        r.raise_for_status()
        tenant = r.json()
        http.headers["Authorization"] = f"Bearer {tenant['api_key']}"
        for kind, name in FILES:
            _import(http, kind, DATA / name)
        deals = sorted(
            http.get("/api/v1/deals?limit=200").json()["items"], key=lambda d: d["external_id"] or ""
        )
        for n, deal in enumerate(deals):
            for stage in PATHS[n % len(PATHS)]:
                body: dict[str, Any] = {"stage": stage}
                if stage == "lost":
                    body["reason"] = rng.choice(LOST_REASONS)
                r = http.patch(f"/api/v1/deals/{deal['id']}/stage", json=body)
                r.raise_for_status()
        _book_demo_ios(http, rng)
    marker.write_text(json.dumps({"tenant_id": tenant["id"], "api_key": tenant["api_key"]}))
    marker.chmod(0o600)
    return str(tenant["api_key"])
