"""Noticing that a run hosted here was ended elsewhere (the API's cancel, on any process).

One poller per worker asks the store, every ``interval`` seconds, which of ALL the runs it hosts
have a terminal status - one query per tick, however many runs are in flight (a poll per run cost
a tenant transaction per run four times a second). The store is the signal because it works across
processes; a tick that fails (store away) is simply skipped.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from supervisor.aio import cancel_and_wait
from supervisor.errors import StockadeError

__all__ = ["CancelWatch"]

log = logging.getLogger("stockade.worker")


class CancelWatch:
    def __init__(self, runs: Any, interval: float) -> None:
        self._runs = runs  # RunStore (ended_among)
        self._interval = interval
        self._watched: dict[str, asyncio.Future[None]] = {}
        self._task: asyncio.Task[None] | None = None
        self.queries = 0  # store queries made (tests, metrics)

    def watch(self, run_id: str) -> asyncio.Future[None]:
        """A future resolved once the run has a terminal status in the store; ``unwatch`` when done."""
        fut = self._watched.get(run_id)
        if fut is None or fut.done():
            fut = self._watched[run_id] = asyncio.get_running_loop().create_future()
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._poll())
        return fut

    def unwatch(self, run_id: str) -> None:
        fut = self._watched.pop(run_id, None)
        if fut is not None and not fut.done():
            fut.cancel()

    async def _poll(self) -> None:
        while self._watched:
            await asyncio.sleep(self._interval)
            ids = [rid for rid, fut in self._watched.items() if not fut.done()]
            if not ids:
                continue
            self.queries += 1
            try:
                ended = await self._runs.ended_among(ids)
            except StockadeError as exc:
                log.debug("cancel poll skipped: %s", exc)
                continue
            except Exception:  # a bug, not an outage: had it ended the poll, no cancel would reach a run again
                log.warning("cancel poll failed; retrying", exc_info=True)
                continue
            for rid in ended:
                fut = self._watched.get(rid)
                if fut is not None and not fut.done():
                    fut.set_result(None)

    async def close(self) -> None:
        for rid in list(self._watched):
            self.unwatch(rid)
        if self._task is not None:
            await cancel_and_wait(self._task)
