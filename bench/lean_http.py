"""A minimal HTTP/1.1 keep-alive client, so a benchmark measures the API and not its client.

httpx costs about 1 ms of client-side CPU per request on the 2-core bench machine (measured
on GET /healthz against this client in the same run by bench/stage_changes.py), more than the
whole server side of a small request. The SDK path it is compared with talks gRPC through the
SDK's Rust core, whose client cost is a fraction of that. This client writes a request and reads
a Content-Length or chunked response over a pool of persistent connections, nothing more: JSON
bodies, no TLS, no redirects, no proxies.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from typing import Any


class LeanResponse:
    """Status, headers (lower-case names) and body of one response."""

    __slots__ = ("body", "headers", "status_code")

    def __init__(self, status_code: int, headers: dict[str, str], body: bytes) -> None:
        self.status_code = status_code
        self.headers = headers
        self.body = body

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")

    def json(self) -> Any:
        return json.loads(self.body)


class LeanClient:
    """Keep-alive connections to one host; one request per connection at a time."""

    def __init__(self, host: str, port: int, headers: Mapping[str, str] | None = None) -> None:
        self._host, self._port = host, port
        self._idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        fixed = {"Host": f"{host}:{port}", **(headers or {})}
        self._fixed = "".join(f"{k}: {v}\r\n" for k, v in fixed.items())

    async def request(self, method: str, path: str, json_body: Any = None) -> LeanResponse:
        body = b"" if json_body is None else json.dumps(json_body).encode()
        head = f"{method} {path} HTTP/1.1\r\n{self._fixed}"
        if json_body is not None:
            head += "Content-Type: application/json\r\n"
        head += f"Content-Length: {len(body)}\r\n\r\n"
        data = head.encode() + body
        while self._idle:
            # A kept connection the server has closed meanwhile (its keep-alive timeout) answers
            # with nothing at all; the request then goes out again on a fresh one, as httpx does.
            reader, writer = self._idle.pop()
            try:
                writer.write(data)
                response, keep = await _read_response(reader)
                break
            except (asyncio.IncompleteReadError, ConnectionError) as exc:
                writer.close()
                if isinstance(exc, asyncio.IncompleteReadError) and exc.partial:
                    raise
        else:
            reader, writer = await self._connect()
            try:
                writer.write(data)
                response, keep = await _read_response(reader)
            except BaseException:
                writer.close()
                raise
        if keep:
            self._idle.append((reader, writer))
        else:
            writer.close()
        return response

    async def get(self, path: str) -> LeanResponse:
        return await self.request("GET", path)

    async def patch(self, path: str, json: Any) -> LeanResponse:
        return await self.request("PATCH", path, json)

    async def aclose(self) -> None:
        for _, writer in self._idle:
            writer.close()
        self._idle.clear()

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection(self._host, self._port)


async def _read_response(reader: asyncio.StreamReader) -> tuple[LeanResponse, bool]:
    raw = await reader.readuntil(b"\r\n\r\n")
    status_line, *lines = raw[:-4].decode("latin-1").split("\r\n")
    version, code, *_ = status_line.split(" ", 2)
    headers: dict[str, str] = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if "content-length" in headers:
        body = await reader.readexactly(int(headers["content-length"]))
    elif headers.get("transfer-encoding", "").lower() == "chunked":
        parts = []
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                await reader.readuntil(b"\r\n")
                break
            parts.append(await reader.readexactly(size))
            await reader.readexactly(2)
        body = b"".join(parts)
    else:
        raise ValueError(f"response without Content-Length or chunked encoding: {status_line}")
    keep = version == "HTTP/1.1" and headers.get("connection", "").lower() != "close"
    return LeanResponse(int(code), headers, body), keep
