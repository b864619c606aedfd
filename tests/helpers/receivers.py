"""Local webhook receivers: a real HTTP/1.1 server in the test process on a free port.

Each receiver answers its requests by a script, one behaviour per request in order (the last one
repeats): `ok` (200), `error` (500), `hang` (never answers), `close` (drops the connection
without an answer), `redirect` (302 to `redirect_to`), `slow-429` (429 with `Retry-After`).
Every request is recorded with its headers, body and arrival time.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Literal

Behaviour = Literal["ok", "error", "hang", "close", "redirect", "429"]


@dataclass
class Received:
    """One request as the receiver saw it."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    at: float


@dataclass
class Receiver:
    """A running receiver: its URL, its script and what it received."""

    port: int
    script: list[Behaviour]
    retry_after: str = "1"
    redirect_to: str = "http://127.0.0.1:9/elsewhere"
    # When set, decides each request's behaviour from the request (instead of the script).
    decide: Callable[[Received], Behaviour] | None = None
    requests: list[Received] = field(default_factory=list)
    _arrived: asyncio.Condition = field(default_factory=asyncio.Condition)

    @property
    def url(self) -> str:
        """Where to send webhooks."""
        return f"http://127.0.0.1:{self.port}/hook"

    def behaviour(self, n: int) -> Behaviour:
        """What the n-th request (0-based) gets."""
        return self.script[min(n, len(self.script) - 1)]

    async def wait_for(self, count: int, timeout: float = 20.0) -> list[Received]:
        """Waits until at least `count` requests arrived; returns them all."""

        async def enough() -> None:
            async with self._arrived:
                await self._arrived.wait_for(lambda: len(self.requests) >= count)

        try:
            await asyncio.wait_for(enough(), timeout)
        except TimeoutError:
            raise AssertionError(f"{self.url} received {len(self.requests)} of {count} requests") from None
        return list(self.requests)

    async def record(self, req: Received) -> None:
        """Records a request and wakes the waiters."""
        async with self._arrived:
            self.requests.append(req)
            self._arrived.notify_all()


async def _read_request(reader: asyncio.StreamReader) -> Received | None:
    line = await reader.readline()
    if not line:
        return None
    method, path, _ = line.decode("latin-1").split(" ", 2)
    headers: dict[str, str] = {}
    while True:
        h = await reader.readline()
        if h in (b"\r\n", b"\n", b""):
            break
        name, _, value = h.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return Received(method=method, path=path, headers=headers, body=body, at=time.monotonic())


def _answer(status: str, headers: Sequence[tuple[str, str]] = (), body: bytes = b"") -> bytes:
    lines = [f"HTTP/1.1 {status}", f"content-length: {len(body)}", "connection: keep-alive"]
    lines += [f"{k}: {v}" for k, v in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def _handler(receiver: Receiver) -> Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                req = await _read_request(reader)
                if req is None:
                    return
                n = len(receiver.requests)
                await receiver.record(req)
                what = receiver.decide(req) if receiver.decide else receiver.behaviour(n)
                if what == "hang":
                    await asyncio.sleep(3600)
                    return
                if what == "close":
                    return
                if what == "ok":
                    writer.write(_answer("200 OK", body=b"ok"))
                elif what == "error":
                    writer.write(_answer("500 Internal Server Error", body=b"boom"))
                elif what == "redirect":
                    writer.write(_answer("302 Found", [("location", receiver.redirect_to)]))
                elif what == "429":
                    writer.write(_answer("429 Too Many Requests", [("retry-after", receiver.retry_after)]))
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            return
        finally:
            writer.close()

    return handle


@asynccontextmanager
async def receiver(
    *script: Behaviour,
    retry_after: str = "1",
    redirect_to: str | None = None,
    decide: Callable[[Received], Behaviour] | None = None,
) -> AsyncIterator[Receiver]:
    """Runs a receiver answering by `script` (default: always 200), or by `decide`, until the block ends."""
    r = Receiver(port=0, script=list(script) or ["ok"], retry_after=retry_after, decide=decide)
    if redirect_to is not None:
        r.redirect_to = redirect_to
    server = await asyncio.start_server(_handler(r), "127.0.0.1", 0)
    r.port = server.sockets[0].getsockname()[1]
    try:
        yield r
    finally:
        server.close()
        # Connections left hanging (the `hang` behaviour) are not waited for.
        try:
            await asyncio.wait_for(server.wait_closed(), 1)
        except TimeoutError:
            pass
