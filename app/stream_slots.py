"""How many streams one tenant holds open on this API process: SSE streams and Socket.IO subscriptions.

Each costs a task, a socket and what it buffers for a slow client (bounded, app/_pages.py); without a
count any key holder could open them by the ten thousand and never read them. Per process (a tenant
reaches every replica behind a balancer, each with its own count), from ``max_streams_per_tenant``.

``drain``: the process is stopping (SIGTERM, SIGINT). Every open stream is told (its waker) and closes
cleanly, so that the server's graceful shutdown finds no response left to cancel; the client resumes
elsewhere (or after the restart) with ``Last-Event-ID``.
"""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["StreamSlots"]


class StreamSlots:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._open: dict[str, int] = {}
        self.draining = False
        self._wakers: set[Callable[[], None]] = set()

    def on_drain(self, waker: Callable[[], None]) -> Callable[[], None]:
        """Call ``waker`` (on the event loop) when the process starts stopping; returns its removal."""
        self._wakers.add(waker)
        return lambda: self._wakers.discard(waker)

    def drain(self) -> None:
        self.draining = True
        for waker in list(self._wakers):
            waker()

    def held(self, tenant_id: str) -> int:
        return self._open.get(tenant_id, 0)

    def full(self, tenant_id: str) -> bool:
        return self.held(tenant_id) >= self.limit

    def take(self, tenant_id: str, *, replacing: bool = False) -> bool:
        """One more stream of ``tenant_id``, unless it holds the limit already (``replacing``: one that takes
        the place of a stream closing now, whose place comes back a moment later)."""
        if self.full(tenant_id) and not replacing:
            return False
        self._open[tenant_id] = self._open.get(tenant_id, 0) + 1
        return True

    def give_back(self, tenant_id: str) -> None:
        n = self._open.get(tenant_id, 0) - 1
        if n > 0:
            self._open[tenant_id] = n
        else:
            self._open.pop(tenant_id, None)
