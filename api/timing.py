"""Server-Timing headers: where a request spent its time, visible in browser dev tools and curl -v."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

from fastapi import Response


class ServerTiming:
    """Accumulates named phase durations into the response's Server-Timing header."""

    def __init__(self, response: Response) -> None:
        self._response = response
        self._parts: dict[str, float] = {}

    def headers(self) -> dict[str, str]:
        """The Server-Timing header, for handlers that build their own Response."""
        value = self._response.headers.get("Server-Timing")
        return {"Server-Timing": value} if value else {}

    @contextmanager
    def measure(self, name: str) -> Iterator[None]:
        """Times the block and (re)writes the header, so it is set even if a later phase raises."""
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self._parts[name] = self._parts.get(name, 0.0) + (time.perf_counter() - t0) * 1000
            self._response.headers["Server-Timing"] = ", ".join(
                f"{k};dur={v:.1f}" for k, v in self._parts.items()
            )
