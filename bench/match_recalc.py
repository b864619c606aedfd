"""Benchmark: a tenant's match recalculation against the bare NumPy kernel it is built on.

A synthetic tenant of BENCH_MATCH_SHOWS shows (default 10,000) and BENCH_MATCH_ADVERTISERS
advertisers (default 1,000): 10M pairs; (b) scores BENCH_MATCH_REFERENCE_PAIRS (default 100,000).
In the same run:

  (a) anchor     the bare kernel in-process: ShowMatrix + score_batch over every pair in chunks
                 of 64 advertisers, keeping the top 50 per advertiser and per show (activities.
                 matching.Ranker without rationales or the database)
  (b) reference  the pure-Python reference scorer on 100,000 random pairs, extrapolated to all
  (c) product    POST /api/match/recalculate on a real `sponsorflow up` (data loaded by the
                 shows and advertisers imports), until the workflow completed and
                 GET /api/v1/matches answers with the new ranking

Targets: (c) at most 3x (a); the worker's peak RSS (VmHWM) at most 1 GB. (b) and (b)/(c) are
printed for context. Figures go to bench/results/match_recalc.json.

    .venv/bin/python -m bench.match_recalc
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import math
import random
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter

from activities.matching import Ranker
from bench.import_throughput import vm_hwm_mb
from bench.stack import Stack, env_int, results_path
from db.matching import Features
from domain.catalog import AGE_BANDS, GARM_CATEGORIES
from domain.scoring import DEFAULT_WEIGHTS, HORIZON_DAYS, AdvertiserFeatures, ShowFeatures, score_pair

COUNTRIES = ("US", "GB", "CA", "AU", "DE", "FR", "IE", "NZ", "IN", "BR")
CATEGORIES = (
    "Business",
    "Technology",
    "Comedy",
    "News",
    "Sports",
    "Health & Fitness",
    "True Crime",
    "Education",
    "Society & Culture",
    "Arts",
    "Leisure",
    "Science",
)
RISKS = ("low", "medium", "high")
TOP_N = 50
REFERENCE_PAIRS = 100_000
TIMEOUT_S = 1800


def _dist(rng: random.Random, keys: tuple[str, ...], n: int) -> dict[str, float]:
    picked = rng.sample(keys, n)
    weights = [rng.random() for _ in picked]
    total = sum(weights)
    # Rounded down: shares summing past 1 are (rightly) refused by the import.
    return {k: math.floor(1000 * w / total) / 1000 for k, w in zip(picked, weights, strict=True)}


def synthesize(n_shows: int, n_advertisers: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Shows and advertisers as the API would store them (deterministic)."""
    rng = random.Random(20261124)
    shows = []
    for i in range(n_shows):
        risks = {c: rng.choice(RISKS) for c in rng.sample(GARM_CATEGORIES, rng.randint(0, 2))}
        if rng.random() < 0.01:
            risks[rng.choice(GARM_CATEGORIES)] = "floor"
        shows.append(
            {
                "external_id": f"show-{i}",
                "name": f"Show {i}",
                "categories": rng.sample(CATEGORIES, rng.randint(1, 3)),
                "avg_downloads": rng.randint(500, 300_000),
                "cpm_usd": round(rng.uniform(12, 45), 2),
                "geo": _dist(rng, COUNTRIES, rng.randint(1, 4)),
                "age": _dist(rng, AGE_BANDS, rng.randint(2, 5)),
                "female_share": round(rng.random(), 2),
                "brand_safety": risks,
            }
        )
    today = datetime.now(UTC).date()
    advertisers = []
    for j in range(n_advertisers):
        start = today + timedelta(days=rng.randint(0, 60))
        advertisers.append(
            {
                "external_id": f"adv-{j}",
                "name": f"Brand {j}",
                "domain": f"brand{j}.example",
                "target_categories": rng.sample(CATEGORIES, rng.randint(1, 3)),
                "target_geo": rng.sample(COUNTRIES, rng.randint(1, 3)),
                "target_age": rng.sample(AGE_BANDS, rng.randint(1, 3)),
                "target_gender": rng.choice(["", "", "female", "male"]),
                "brand_safety_tolerance": rng.choice(RISKS),
                "budget_usd": rng.choice([5000, 20000, 80000]),
                "flight_start": start,
                "flight_end": start + timedelta(days=rng.randint(14, 90)),
            }
        )
    return shows, advertisers


def features(shows: list[dict[str, Any]], advertisers: list[dict[str, Any]]) -> Features:
    """The same tenant as the worker would load it (no bookings, no download history)."""
    today = datetime.now(UTC).date()
    sf = [
        ShowFeatures(
            id=s["external_id"],
            name=s["name"],
            geo=s["geo"],
            age=s["age"],
            female_share=s["female_share"],
            categories=tuple(s["categories"]),
            brand_safety=s["brand_safety"],
            cpm_usd=s["cpm_usd"],
            avg_downloads=s["avg_downloads"],
            recent_downloads=None,
            prior_downloads=None,
            free_mid_slots=(2,) * HORIZON_DAYS,
        )
        for s in shows
    ]
    af = [
        AdvertiserFeatures(
            id=a["external_id"],
            name=a["name"],
            target_geo=tuple(a["target_geo"]),
            target_age=tuple(a["target_age"]),
            target_categories=tuple(a["target_categories"]),
            target_gender=a["target_gender"] or None,
            tolerance=a["brand_safety_tolerance"],
            budget_usd=float(a["budget_usd"]),
            flight_start_day=(a["flight_start"] - today).days,
            flight_end_day=min(HORIZON_DAYS, (a["flight_end"] - today).days + 1),
            flight_end_date=a["flight_end"],
        )
        for a in advertisers
    ]
    return Features(shows=sf, advertisers=af, past_delivery={}, weights=dict(DEFAULT_WEIGHTS))


def anchor(feats: Features) -> float:
    """(a): the bare kernel over every pair, with the top-50 bookkeeping."""
    started = time.perf_counter()
    ranker = Ranker(feats, TOP_N)
    for start in range(0, len(feats.advertisers), 64):
        ranker.add_chunk(start, min(len(feats.advertisers), start + 64))
    return time.perf_counter() - started


def reference(feats: Features, n_pairs: int) -> float:
    """(b): the reference scorer on n_pairs random pairs, extrapolated to every pair."""
    rng = random.Random(7)
    pairs = [(rng.choice(feats.shows), rng.choice(feats.advertisers)) for _ in range(n_pairs)]
    started = time.perf_counter()
    for show, adv in pairs:
        score_pair(show, adv, feats.weights)
    elapsed = time.perf_counter() - started
    return elapsed * (len(feats.shows) * len(feats.advertisers)) / n_pairs


def _csv(rows: list[dict[str, Any]], columns: list[str]) -> bytes:
    out = io.StringIO()
    w = csv.writer(out)
    w.writerow(columns)
    for r in rows:
        cells = []
        for c in columns:
            v = r.get(c)
            if isinstance(v, list):
                v = ";".join(v)
            elif isinstance(v, dict):
                v = ";".join(f"{k}:{x}" for k, x in v.items())
            cells.append("" if v is None else str(v))
        w.writerow(cells)
    return out.getvalue().encode()


def _import(http: httpx.Client, kind: str, content: bytes) -> None:
    r = http.post("/api/v1/etl/upload", files={"file": (f"{kind}.csv", content)}, data={"kind": kind})
    r.raise_for_status()
    iid = r.json()["import_id"]
    while True:
        status = http.get(f"/api/v1/etl/status/{iid}").json()
        if status["status"] in ("completed", "completed_with_errors", "failed"):
            if status["status"] != "completed":
                raise RuntimeError(f"{kind} import ended {status['status']}: {status['errors'][:3]}")
            return
        time.sleep(0.5)


async def _idle(port: int, workflow_id: str) -> None:
    """Waits for the import-triggered recalculation (if any) to finish before measuring."""
    client = await Client.connect(f"127.0.0.1:{port}", data_converter=pydantic_data_converter)
    handle = client.get_workflow_handle(workflow_id)
    try:
        await handle.result()
    except Exception:  # noqa: BLE001 - none started yet is fine
        pass


def product(
    stack: Stack, shows: list[dict[str, Any]], advertisers: list[dict[str, Any]]
) -> tuple[float, float | None, dict[str, Any]]:
    """(c): POST /api/match/recalculate until the matches are readable; and the worker's peak RSS."""
    with httpx.Client(base_url=stack.api_url, timeout=120, trust_env=False) as http:
        r = http.post(
            "/api/v1/tenants",
            json={"name": "Bench"},
            headers={"Authorization": f"Bearer {stack.admin_token}"},
        )
        r.raise_for_status()
        tenant = r.json()
        http.headers["Authorization"] = f"Bearer {tenant['api_key']}"
        _import(
            http,
            "shows",
            _csv(
                shows,
                [
                    "external_id",
                    "name",
                    "categories",
                    "avg_downloads",
                    "cpm_usd",
                    "geo",
                    "age",
                    "female_share",
                    "brand_safety",
                ],
            ),
        )
        _import(
            http,
            "advertisers",
            _csv(
                advertisers,
                [
                    "external_id",
                    "name",
                    "domain",
                    "target_categories",
                    "target_geo",
                    "target_age",
                    "target_gender",
                    "brand_safety_tolerance",
                    "budget_usd",
                    "flight_start",
                    "flight_end",
                ],
            ),
        )
        asyncio.run(_idle(stack.temporal_port, f"match/{tenant['id']}"))
        pids = stack.pids()
        worker = stack.app_processes()["worker"]
        started = time.perf_counter()
        r = http.post("/api/match/recalculate")
        r.raise_for_status()
        wid, run_id = r.json()["workflow_id"], r.json()["run_id"]

        async def wait() -> Any:
            c = await Client.connect(
                f"127.0.0.1:{stack.temporal_port}", data_converter=pydantic_data_converter
            )
            return await c.get_workflow_handle(wid, run_id=run_id).result()

        result = asyncio.run(asyncio.wait_for(wait(), TIMEOUT_S))
        completed = time.perf_counter()
        page = http.get("/api/v1/matches", params={"limit": 50}).json()
        elapsed = time.perf_counter() - started
        phases = ", ".join(f"{k} {v:.2f}" for k, v in result.get("phases", {}).items())
        print(
            f"    workflow completed after {completed - started:.2f} s "
            f"(activity {result['duration_s']:.2f} s: {phases}), "
            f"first page read in {elapsed - (completed - started):.2f} s",
            flush=True,
        )
        if not page["items"] or page["items"][0]["generation"] != result["generation"]:
            raise RuntimeError("the matches were not readable after the recalculation")
        if stack.pids() != pids:
            raise RuntimeError(f"a child of `up` restarted during the run: {pids} then {stack.pids()}")
        return elapsed, vm_hwm_mb(worker), result


def main() -> int:
    n_shows = env_int("BENCH_MATCH_SHOWS", 10_000)
    n_adv = env_int("BENCH_MATCH_ADVERTISERS", 1_000)
    n_ref = env_int("BENCH_MATCH_REFERENCE_PAIRS", REFERENCE_PAIRS)
    print(f"match_recalc: {n_shows:,} shows x {n_adv:,} advertisers = {n_shows * n_adv:,} pairs", flush=True)
    shows, advertisers = synthesize(n_shows, n_adv)
    feats = features(shows, advertisers)
    a = anchor(feats)
    print(f"(a) anchor: bare NumPy kernel + top {TOP_N}    {a:8.2f} s", flush=True)
    b = reference(feats, n_ref)
    print(f"(b) reference scorer, extrapolated     {b:8.1f} s", flush=True)
    stack = Stack()
    c, rss, result = stack.run(lambda: product(stack, shows, advertisers))
    ratio = c / a
    print(
        f"(c) product: POST -> matches readable  {c:8.2f} s   ({result['matches_written']:,} matches written)"
    )
    print(f"(c)/(a) = {ratio:.2f}x (target <= 3x): {'PASS' if ratio <= 3 else 'FAIL'}")
    rss_text = f"{rss:.0f} MB" if rss is not None else "unknown"
    verdict = "PASS" if rss is not None and rss <= 1024 else "FAIL"
    print(f"worker peak RSS {rss_text} (target <= 1024 MB): {verdict}")
    print(f"(b)/(c) = {b / c:.1f}x: how much the vectorised scorer saves over the reference one")
    results_path("match_recalc").write_text(
        json.dumps(
            {
                "shows": n_shows,
                "advertisers": n_adv,
                "anchor_s": a,
                "reference_extrapolated_s": b,
                "product_s": c,
                "ratio_product_anchor": ratio,
                "worker_peak_rss_mb": rss,
                "result": result,
            },
            indent=2,
            default=str,
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
