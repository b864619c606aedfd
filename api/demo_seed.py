"""Seeds the demo tenant of `make up` through the public HTTP API (so it exercises the real path)."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import httpx

SHOWS: list[dict[str, Any]] = [
    {
        "name": "The Daily Grind",
        "categories": ["Business", "News"],
        "avg_downloads": 85000,
        "episodes_per_month": 20,
        "cpm_usd": 28,
        "geo": {"US": 0.71, "CA": 0.09, "GB": 0.08},
        "age": {"25-34": 0.41, "35-44": 0.29, "18-24": 0.12, "45-54": 0.12},
        "female_share": 0.44,
        "brand_safety": {"debated_social_issues": "medium"},
    },
    {
        "name": "Trail & Error",
        "categories": ["Sports", "Leisure"],
        "avg_downloads": 32000,
        "episodes_per_month": 4,
        "cpm_usd": 24,
        "geo": {"US": 0.55, "CA": 0.2, "NZ": 0.05},
        "age": {"25-34": 0.38, "35-44": 0.31, "45-54": 0.15},
        "female_share": 0.51,
        "brand_safety": {},
    },
    {
        "name": "Murder on Main Street",
        "categories": ["True Crime"],
        "avg_downloads": 140000,
        "episodes_per_month": 8,
        "cpm_usd": 25,
        "geo": {"US": 0.82, "GB": 0.06},
        "age": {"25-34": 0.36, "35-44": 0.3, "18-24": 0.14},
        "female_share": 0.72,
        "brand_safety": {"crime_harmful_acts": "high", "death_injury_conflict": "high"},
    },
    {
        "name": "Byte Sized",
        "categories": ["Technology"],
        "avg_downloads": 46000,
        "episodes_per_month": 8,
        "cpm_usd": 32,
        "geo": {"US": 0.48, "GB": 0.14, "DE": 0.1, "IN": 0.08},
        "age": {"18-24": 0.22, "25-34": 0.44, "35-44": 0.22},
        "female_share": 0.27,
        "brand_safety": {},
    },
    {
        "name": "Kitchen Table Money",
        "categories": ["Business", "Education"],
        "avg_downloads": 51000,
        "episodes_per_month": 8,
        "cpm_usd": 30,
        "geo": {"US": 0.88},
        "age": {"25-34": 0.33, "35-44": 0.37},
        "female_share": 0.58,
        "brand_safety": {},
    },
    {
        "name": "Laugh Track",
        "categories": ["Comedy"],
        "avg_downloads": 120000,
        "episodes_per_month": 12,
        "cpm_usd": 22,
        "geo": {"US": 0.66, "CA": 0.1, "AU": 0.08},
        "age": {"18-24": 0.3, "25-34": 0.42},
        "female_share": 0.39,
        "brand_safety": {"obscenity_profanity": "high", "adult_explicit": "medium"},
    },
    {
        "name": "Growing Up Green",
        "categories": ["Kids & Family", "Science"],
        "avg_downloads": 18000,
        "episodes_per_month": 4,
        "cpm_usd": 26,
        "geo": {"US": 0.6, "GB": 0.15},
        "age": {"35-44": 0.5},
        "female_share": 0.68,
        "brand_safety": {},
    },
    {
        "name": "Pitch Side",
        "categories": ["Sports"],
        "avg_downloads": 64000,
        "episodes_per_month": 12,
        "cpm_usd": 23,
        "geo": {"GB": 0.62, "IE": 0.1, "US": 0.12},
        "age": {"18-24": 0.25, "25-34": 0.4},
        "female_share": 0.18,
        "brand_safety": {"obscenity_profanity": "medium"},
    },
    {
        "name": "The Long Read Aloud",
        "categories": ["Arts", "Society & Culture"],
        "avg_downloads": 22000,
        "episodes_per_month": 4,
        "cpm_usd": 35,
        "geo": {"US": 0.5, "GB": 0.25},
        "age": {"45-54": 0.3, "55+": 0.3},
        "female_share": 0.55,
        "brand_safety": {},
    },
    {
        "name": "Deal Flow",
        "categories": ["Business", "Technology"],
        "avg_downloads": 27000,
        "episodes_per_month": 4,
        "cpm_usd": 45,
        "geo": {"US": 0.74},
        "age": {"25-34": 0.35, "35-44": 0.35},
        "female_share": 0.22,
        "brand_safety": {},
    },
    {
        "name": "Healthy-ish",
        "categories": ["Health & Fitness"],
        "avg_downloads": 39000,
        "episodes_per_month": 8,
        "cpm_usd": 27,
        "geo": {"US": 0.7, "CA": 0.12},
        "age": {"25-34": 0.45, "35-44": 0.25},
        "female_share": 0.76,
        "brand_safety": {"drugs_tobacco_alcohol": "low"},
    },
    {
        "name": "Off the Record",
        "categories": ["News", "Government"],
        "avg_downloads": 58000,
        "episodes_per_month": 20,
        "cpm_usd": 26,
        "geo": {"US": 0.9},
        "age": {"35-44": 0.3, "45-54": 0.3},
        "female_share": 0.47,
        "brand_safety": {"debated_social_issues": "high", "misinformation": "low"},
    },
]

ADVERTISERS: list[dict[str, Any]] = [
    {
        "name": "Acme Mattress Co",
        "domain": "acmemattress.com",
        "target_categories": ["Comedy", "True Crime"],
        "target_geo": ["US", "CA"],
        "target_age": ["25-34", "35-44"],
        "brand_safety_tolerance": "high",
        "budget_usd": 250000,
    },
    {
        "name": "Northwind Meal Kits",
        "domain": "northwindmeals.com",
        "target_categories": ["Health & Fitness", "Kids & Family"],
        "target_geo": ["US"],
        "target_age": ["25-34", "35-44"],
        "brand_safety_tolerance": "medium",
        "budget_usd": 120000,
    },
    {
        "name": "Ledgerly",
        "domain": "ledgerly.io",
        "target_categories": ["Business", "Technology"],
        "target_geo": ["US", "GB"],
        "target_age": ["25-34", "35-44", "45-54"],
        "brand_safety_tolerance": "low",
        "budget_usd": 90000,
    },
    {
        "name": "Summit Outdoor",
        "domain": "summitoutdoor.com",
        "target_categories": ["Sports", "Leisure"],
        "target_geo": ["US", "CA", "NZ"],
        "target_age": ["18-24", "25-34"],
        "brand_safety_tolerance": "medium",
        "budget_usd": 60000,
    },
    {
        "name": "Quill VPN",
        "domain": "quillvpn.com",
        "target_categories": ["Technology", "Comedy"],
        "target_geo": ["US", "GB", "DE"],
        "target_age": ["18-24", "25-34"],
        "brand_safety_tolerance": "high",
        "budget_usd": 300000,
    },
    {
        "name": "Bright Smile Dental",
        "domain": "brightsmile.co",
        "target_categories": ["Health & Fitness"],
        "target_geo": ["US"],
        "target_age": ["35-44", "45-54"],
        "brand_safety_tolerance": "low",
        "budget_usd": 40000,
    },
    {
        "name": "Papertrail Books",
        "domain": "papertrailbooks.com",
        "target_categories": ["Arts", "Society & Culture"],
        "target_geo": ["US", "GB"],
        "target_age": ["45-54", "55+"],
        "brand_safety_tolerance": "medium",
        "budget_usd": 35000,
    },
    {
        "name": "Kickoff Sportswear",
        "domain": "kickoffsports.co.uk",
        "target_categories": ["Sports"],
        "target_geo": ["GB", "IE"],
        "target_age": ["18-24", "25-34"],
        "brand_safety_tolerance": "medium",
        "budget_usd": 80000,
    },
    {
        "name": "Harbor Bank",
        "domain": "harborbank.com",
        "target_categories": ["Business", "News"],
        "target_geo": ["US"],
        "target_age": ["35-44", "45-54", "55+"],
        "brand_safety_tolerance": "low",
        "budget_usd": 180000,
    },
    {
        "name": "Tiny Sprouts Toys",
        "domain": "tinysprouts.com",
        "target_categories": ["Kids & Family"],
        "target_geo": ["US", "GB"],
        "target_age": ["25-34", "35-44"],
        "brand_safety_tolerance": "low",
        "budget_usd": 25000,
    },
    {
        "name": "Atlas Job Board",
        "domain": "atlasjobs.com",
        "target_categories": ["Business", "Technology"],
        "target_geo": ["US", "CA", "GB"],
        "target_age": ["18-24", "25-34"],
        "brand_safety_tolerance": "medium",
        "budget_usd": 70000,
    },
    {
        "name": "Roast Republic Coffee",
        "domain": "roastrepublic.com",
        "target_categories": ["News", "Business", "Comedy"],
        "target_geo": ["US"],
        "target_age": ["25-34", "35-44"],
        "brand_safety_tolerance": "medium",
        "budget_usd": 55000,
    },
]

# Paths through the pipeline the demo deals take (each ends where the deal sits).
PATHS: list[list[str]] = [
    ["lead"],
    ["lead", "qualified"],
    ["lead", "qualified", "proposal"],
    ["lead", "qualified", "proposal", "negotiation"],
    ["lead", "qualified", "proposal", "negotiation", "won"],
    ["lead", "qualified", "proposal", "won"],
    ["lead", "qualified", "lost"],
    ["lead", "qualified", "proposal", "negotiation", "lost"],
    ["lead", "qualified", "proposal", "qualified"],
]
LOST_REASONS = ["Budget moved to Q3", "Went with a competitor network", "Audience too small", "No response"]


def seed_demo(api_url: str, admin_token: str, data_dir: Path) -> str:
    """Creates the demo tenant once per data dir and returns its API key."""
    marker = data_dir / "demo_tenant.json"
    if marker.exists():
        return str(json.loads(marker.read_text())["api_key"])
    rng = random.Random(20261124)
    with httpx.Client(base_url=api_url, timeout=30) as http:
        r = http.post(
            "/api/v1/tenants",
            json={"name": "Demo Podcast Network"},
            headers={"Authorization": f"Bearer {admin_token}"},
        )
        r.raise_for_status()
        tenant = r.json()
        http.headers["Authorization"] = f"Bearer {tenant['api_key']}"
        shows = []
        for i, show in enumerate(SHOWS):
            r = http.post("/api/v1/shows", json={"external_id": f"show-{i + 1:03d}", **show})
            r.raise_for_status()
            shows.append(r.json())
        advertisers = []
        for i, adv in enumerate(ADVERTISERS):
            r = http.post("/api/v1/advertisers", json={"external_id": f"adv-{i + 1:03d}", **adv})
            r.raise_for_status()
            advertisers.append(r.json())
        for n in range(36):
            adv = advertisers[n % len(advertisers)]
            show = rng.choice(shows)
            path = PATHS[n % len(PATHS)]
            value = rng.choice([4000, 6500, 8000, 12000, 15000, 18400, 24000, 36000, 50000])
            r = http.post(
                "/api/v1/deals",
                json={
                    "advertiser_id": adv["id"],
                    "show_id": show["id"],
                    "name": f"{adv['name']} on {show['name']} Q{1 + n % 4}",
                    "value_usd": value,
                    "owner_email": rng.choice(["maya@demo.fm", "jordan@demo.fm", "sam@demo.fm"]),
                },
            )
            r.raise_for_status()
            deal = r.json()
            for stage in path[1:]:
                body: dict[str, Any] = {"stage": stage}
                if stage == "lost":
                    body["reason"] = rng.choice(LOST_REASONS)
                r = http.patch(f"/api/v1/deals/{deal['id']}/stage", json=body)
                r.raise_for_status()
    marker.write_text(json.dumps({"tenant_id": tenant["id"], "api_key": tenant["api_key"]}))
    marker.chmod(0o600)
    return str(tenant["api_key"])
