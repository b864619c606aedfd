"""A background heartbeat for long activities: alive through every phase, not only between chunks.

An activity that heartbeats only after each unit of work goes silent while it awaits one long
call (a big load, a lock wait, a slow commit), and Temporal then times out and retries a
healthy attempt. `Heartbeat` beats on its own every third of the heartbeat timeout with the
latest details the activity gave it, so the attempt stays alive exactly as long as its process
and event loop do: a dead or frozen worker still stops beating and is noticed in time. What
bounds a hung call is the activity's start-to-close timeout.
"""

from __future__ import annotations

import asyncio
from types import TracebackType
from typing import Any

from temporalio import activity

# Without a heartbeat timeout (none configured), beat this often anyway.
_DEFAULT_INTERVAL = 10.0
_MIN_INTERVAL = 0.2


class Heartbeat:
    """`async with Heartbeat(details) as beat:` ... `beat.set(new_details)` as work progresses."""

    def __init__(self, *details: Any) -> None:
        self._details: tuple[Any, ...] = details
        self._task: asyncio.Task[None] | None = None
        timeout = activity.info().heartbeat_timeout
        seconds = timeout.total_seconds() / 3 if timeout else _DEFAULT_INTERVAL
        self.interval = max(_MIN_INTERVAL, seconds)

    def set(self, *details: Any) -> None:
        """Records the latest progress (what a retry resumes from) and heartbeats it now."""
        self._details = details
        activity.heartbeat(*details)

    async def _beat(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            activity.heartbeat(*self._details)

    async def __aenter__(self) -> Heartbeat:
        activity.heartbeat(*self._details)
        self._task = asyncio.create_task(self._beat())
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
