"""The benchmark's lean HTTP client reads what a server really sends, and survives a server that
closes an idle keep-alive connection (as uvicorn does after 5 s)."""

from __future__ import annotations

import asyncio
import json

from bench.lean_http import LeanClient


async def test_content_length_chunked_and_a_closed_idle_connection() -> None:
    seen: list[tuple[str, bytes]] = []
    connections = 0

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        while True:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except asyncio.IncompleteReadError:
                break
            lines = head.decode().split("\r\n")
            length = next(int(h.split(":")[1]) for h in lines if h.lower().startswith("content-length"))
            body = await reader.readexactly(length)
            seen.append((lines[0], body))
            if lines[0].startswith("PATCH"):
                payload = json.dumps({"echo": json.loads(body)}).encode()
                writer.write(
                    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                    + f"content-length: {len(payload)}\r\nserver-timing: temporal;dur=1.0\r\n\r\n".encode()
                    + payload
                )
            elif lines[0].startswith("GET /chunked"):
                writer.write(
                    b"HTTP/1.1 404 Not Found\r\ntransfer-encoding: chunked\r\n\r\n"
                    b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
                )
            else:
                # Answers, then closes the connection the client will want to reuse.
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                await writer.drain()
                break
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client = LeanClient("127.0.0.1", port, {"Authorization": "Bearer k"})
    try:
        r = await client.patch("/api/v1/deals/d1/stage", json={"stage": "qualified"})
        assert r.status_code == 200 and r.json() == {"echo": {"stage": "qualified"}}
        assert r.headers["server-timing"] == "temporal;dur=1.0"
        r = await client.get("/chunked")
        assert (r.status_code, r.text) == (404, "hello world")
        assert connections == 1, "keep-alive: one connection for consecutive requests"
        assert (await client.get("/closing")).text == "ok"
        await asyncio.sleep(0.05)
        # The server closed the kept connection meanwhile: the request goes out on a new one.
        r = await client.patch("/api/v1/deals/d1/stage", json={"stage": "proposal"})
        assert r.json() == {"echo": {"stage": "proposal"}}
        assert connections == 2
        assert [line for line, _ in seen] == [
            "PATCH /api/v1/deals/d1/stage HTTP/1.1",
            "GET /chunked HTTP/1.1",
            "GET /closing HTTP/1.1",
            "PATCH /api/v1/deals/d1/stage HTTP/1.1",
        ]
    finally:
        await client.aclose()
        server.close()
        await server.wait_closed()
