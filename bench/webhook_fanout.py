"""Webhook fan-out: events written in a burst, delivered to every endpoint; lag against a bare loop.

Product: N endpoints subscribed to everything (one WebhookEndpointWorkflow each, the worker's
settings as shipped: a 1 s poll after work, 5 s when idle, 8 deliveries in flight per endpoint),
E events written into the outbox the way the product writes them (a few per transaction, over many
entities). Lag = when a receiver got the event minus when its transaction committed.
Anchor, in the same run: a bare loop that reads the same events as they are written (the same
schedule) and POSTs each, signed, to every receiver one after the other with one HTTP client:
the simplest sender there is, with no durability at all.

    .venv/bin/python -m bench.webhook_fanout     (BENCH_WEBHOOK_EVENTS=1000, BENCH_WEBHOOK_ENDPOINTS=10)
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import select
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment

from api.main import create_app
from bench.stack import results_path
from db.embedded import ensure_database, start_server
from db.engine import make_engine, make_sessionmaker, tenant_tx
from db.events import emit_event
from db.migrate import upgrade
from db.models import Event
from db.tenants import create_tenant
from domain.webhooks import generate_secret, message_id, signature_header
from settings import Settings
from worker import build_worker
from workflows.search_attributes import ALL_KEYS

EVENTS_PER_TX = 5


def _pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


class Receivers:
    """N HTTP servers answering 200 at once, each recording when every event id arrived."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.arrived: list[dict[str, float]] = [{} for _ in range(n)]
        self.ports: list[int] = []
        self._servers: list[asyncio.Server] = []
        self.done = asyncio.Event()
        self.expect = 0

    async def start(self) -> None:
        """Starts the servers on free ports."""
        for i in range(self.n):
            server = await asyncio.start_server(self._handler(i), "127.0.0.1", 0)
            self._servers.append(server)
            self.ports.append(server.sockets[0].getsockname()[1])

    def reset(self, expect: int) -> None:
        """Forgets what arrived; `done` is set once `expect` arrivals (all receivers) are in."""
        self.arrived = [{} for _ in range(self.n)]
        self.expect = expect
        self.done.clear()

    def _handler(self, i: int) -> Any:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                while True:
                    line = await reader.readline()
                    if not line:
                        return
                    length = 0
                    while True:
                        h = await reader.readline()
                        if h in (b"\r\n", b"\n", b""):
                            break
                        name, _, value = h.decode("latin-1").partition(":")
                        if name.strip().lower() == "content-length":
                            length = int(value.strip())
                    body = await reader.readexactly(length)
                    now = time.perf_counter()
                    event_id = str(json.loads(body)["id"])
                    self.arrived[i].setdefault(event_id, now)
                    if sum(len(a) for a in self.arrived) >= self.expect:
                        self.done.set()
                    writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: keep-alive\r\n\r\nok")
                    await writer.drain()
            except (ConnectionError, asyncio.IncompleteReadError):
                return
            finally:
                writer.close()

        return handle

    async def stop(self) -> None:
        """Stops the servers."""
        for s in self._servers:
            s.close()


async def write_events(
    sm: Any, tenant_id: uuid.UUID, n: int, entities: int
) -> tuple[dict[str, float], float]:
    """Writes n events a few per transaction; returns each event's commit time and the start."""
    committed: dict[str, float] = {}
    t0 = time.perf_counter()
    for start in range(0, n, EVENTS_PER_TX):
        ids: list[str] = []
        async with tenant_tx(sm=sm, tenant_id=tenant_id) as session:
            for k in range(start, min(n, start + EVENTS_PER_TX)):
                key = f"bench/{uuid.uuid4()}"
                await emit_event(
                    session=session,
                    tenant_id=tenant_id,
                    type="io.delivery_reported",
                    entity_type="io",
                    entity_id=f"io-{k % entities}",
                    payload={"impressions": k, "impressions_goal": n},
                    occurred_at=datetime.now(UTC),
                    idempotency_key=key,
                )
                ids.append(key)
        now = time.perf_counter()
        async with tenant_tx(sm=sm, tenant_id=tenant_id) as session:
            rows = (await session.execute(select(Event.id).where(Event.idempotency_key.in_(ids)))).all()
        for (event_id,) in rows:
            committed[str(event_id)] = now
    return committed, t0


async def bare_loop(receivers: Receivers, bodies: list[tuple[str, str, float]], secret: str) -> None:
    """The anchor: each event, once its (replayed) commit time has come, POSTed to every receiver."""
    async with httpx.AsyncClient(timeout=10, trust_env=False) as http:
        t0 = time.perf_counter()
        for event_id, body, offset in bodies:
            wait = t0 + offset - time.perf_counter()
            if wait > 0:
                await asyncio.sleep(wait)
            ts = int(time.time())
            msg = message_id(event_id)
            headers = {
                "content-type": "application/json",
                "webhook-id": msg,
                "webhook-timestamp": str(ts),
                "webhook-signature": signature_header([secret], msg, ts, body),
            }
            for port in receivers.ports:
                await http.post(f"http://127.0.0.1:{port}/hook", content=body.encode(), headers=headers)


def lags(receivers: Receivers, committed: dict[str, float]) -> list[float]:
    """Seconds from commit to arrival, every event at every receiver."""
    return [at - committed[eid] for per in receivers.arrived for eid, at in per.items() if eid in committed]


async def main() -> None:
    n_events = int(os.environ.get("BENCH_WEBHOOK_EVENTS", "1000"))
    n_endpoints = int(os.environ.get("BENCH_WEBHOOK_ENDPOINTS", "10"))
    entities = int(os.environ.get("BENCH_WEBHOOK_ENTITIES", "100"))
    deadline_s = float(os.environ.get("BENCH_WEBHOOK_TIMEOUT_S", "600"))
    root = Path(tempfile.mkdtemp(prefix="sf-bench-hooks-"))
    server = start_server(pgdata=root / "pg")
    db = ensure_database(server=server, name="bench", app_role="sponsorflow_app")
    await asyncio.to_thread(upgrade, url=db.owner_url)
    engine = make_engine(url=db.app_url, pool_size=20)
    sm = make_sessionmaker(engine=engine)
    env = await WorkflowEnvironment.start_local(
        data_converter=pydantic_data_converter,
        dev_server_existing_path=str(Path(sys.executable).parent / "temporal"),
        search_attributes=ALL_KEYS,
        dev_server_log_level="error",
    )
    settings = Settings(
        database_url=db.app_url,
        temporal_address=env.client.service_client.config.target_host,
        temporal_task_queue=f"bench-{uuid.uuid4()}",
        admin_token="bench-admin-token",
        environment="development",
        worker_versioning=False,
    )
    app = create_app(settings)
    receivers = Receivers(n_endpoints)
    await receivers.start()
    out: dict[str, Any] = {"events": n_events, "endpoints": n_endpoints, "entities": entities}
    try:
        async with (
            build_worker(env.client, settings, sm),
            app.router.lifespan_context(app),
            httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://bench") as http,
        ):
            tenant = await create_tenant(sm=sm, name="bench")
            h = {"Authorization": f"Bearer {tenant.api_key}"}
            for port in receivers.ports:
                r = await http.post(
                    "/api/v1/webhooks",
                    json={"url": f"http://127.0.0.1:{port}/hook", "event_types": ["*"]},
                    headers=h,
                )
                assert r.status_code == 201, r.text
            await asyncio.sleep(1.0)  # each workflow's first claim
            receivers.reset(n_events * n_endpoints)
            t_start = time.perf_counter()
            committed, t0 = await write_events(sm, tenant.id, n_events, entities)
            write_s = time.perf_counter() - t0
            await asyncio.wait_for(receivers.done.wait(), deadline_s)
            product_s = time.perf_counter() - t_start
            product = lags(receivers, committed)
            async with tenant_tx(sm=sm, tenant_id=tenant.id) as session:
                rows = (await session.execute(select(Event).order_by(Event.id))).scalars().all()
                bodies = [
                    (
                        str(e.id),
                        json.dumps({"id": str(e.id), "type": e.type, "payload": e.payload}),
                        committed[str(e.id)] - t0,
                    )
                    for e in rows
                    if str(e.id) in committed
                ]
            receivers.reset(n_events * n_endpoints)
            t_anchor = time.perf_counter()
            await bare_loop(receivers, bodies, generate_secret())
            anchor_s = time.perf_counter() - t_anchor
            # The anchor's commit times are the replayed schedule, relative to its own start.
            offsets = {eid: off for eid, _, off in bodies}
            anchor = [at - (t_anchor + offsets[eid]) for per in receivers.arrived for eid, at in per.items()]
    finally:
        await receivers.stop()
        await env.shutdown()
        await engine.dispose()
        server.cleanup()
        shutil.rmtree(root, ignore_errors=True)

    print(
        f"webhook fan-out: {n_events} events ({entities} entities) x {n_endpoints} endpoints, "
        f"written in {write_s:.1f} s"
    )
    print(f"{'sender':<12}{'p50 s':>9}{'p99 s':>9}{'max s':>9}{'mean s':>9}{'total s':>9}")
    for name, xs, total in (("product", product, product_s), ("bare loop", anchor, anchor_s)):
        row = {
            "p50": _pct(xs, 50),
            "p99": _pct(xs, 99),
            "max": max(xs),
            "mean": statistics.mean(xs),
            "total_s": total,
            "deliveries": len(xs),
        }
        out[name.replace(" ", "_")] = row
        print(
            f"{name:<12}{row['p50']:>9.2f}{row['p99']:>9.2f}{row['max']:>9.2f}{row['mean']:>9.2f}{total:>9.1f}"
        )
    ratio = out["product"]["p50"] / max(out["bare_loop"]["p50"], 1e-6)
    ratio99 = out["product"]["p99"] / max(out["bare_loop"]["p99"], 1e-6)
    out["ratio_p50_product_over_anchor"] = ratio
    out["ratio_p99_product_over_anchor"] = ratio99
    print(f"lag product/anchor p50 = {ratio:.2f}x, p99 = {ratio99:.2f}x")
    results_path("webhook_fanout").write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    from settings import exit_skipping_teardown

    asyncio.run(main())
    exit_skipping_teardown(0)
