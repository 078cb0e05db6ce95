"""Re-checks of API keys for open streams, shared by every stream of a key.

An SSE stream or a Socket.IO connection is authenticated once, then outlives
that request: it looks its key up again on a clock, so that a revoked key is
cut off (``app.deps.KEY_RECHECK_S``). Done per stream, a backend that watches
10,000 runs with one key cost 2,000 key lookups a second. Here one lookup
serves every stream of the key that asks within ``max_age`` seconds of its
start, and streams that ask while it is in flight wait for that one.

Freshness is measured from when a lookup *started*: a result is never older
than ``max_age`` for anyone who uses it, however slow the store was. A lookup
that fails is not kept; everyone waiting on it gets the error (and fails
closed).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

__all__ = ["KeyChecks"]

_KEEP_S = 60.0  # a result older than this is dropped when the table is pruned
_PRUNE_AT = 4096  # entries, before a prune


class KeyChecks:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._done: dict[str, tuple[float, Any]] = {}  # key hash -> (when its lookup started, the key or None)
        self._flight: dict[str, tuple[float, asyncio.Future[Any]]] = {}
        self.lookups = 0  # store lookups made (for tests and metrics)

    async def find(self, tenants: Any, key_hash: str, max_age: float) -> Any:
        """``tenants.find_key(key_hash)``, or a result of it that started at most ``max_age`` seconds ago."""
        now = self._clock()
        hit = self._done.get(key_hash)
        if hit is not None and now - hit[0] <= max_age:
            return hit[1]
        flight = self._flight.get(key_hash)
        if flight is None or now - flight[0] > max_age:
            flight = (now, asyncio.ensure_future(self._lookup(tenants, key_hash, now)))
            flight[1].add_done_callback(lambda f: f.cancelled() or f.exception())  # retrieved, even if all left
            self._flight[key_hash] = flight
        return await asyncio.shield(flight[1])  # one caller canceled does not cancel the others' lookup

    async def _lookup(self, tenants: Any, key_hash: str, started: float) -> Any:
        self.lookups += 1
        try:
            key = await tenants.find_key(key_hash)
        finally:
            if self._flight.get(key_hash, (None,))[0] == started:
                del self._flight[key_hash]
        prev = self._done.get(key_hash)
        if prev is None or prev[0] <= started:  # a newer lookup that finished first is kept
            self._done[key_hash] = (started, key)
        if len(self._done) > _PRUNE_AT:
            self._prune()
        return key

    def _prune(self) -> None:
        cutoff = self._clock() - _KEEP_S
        self._done = {h: v for h, v in self._done.items() if v[0] >= cutoff}
        if len(self._done) > _PRUNE_AT:
            self._done.clear()
