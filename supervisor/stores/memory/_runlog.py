"""One run's recent events in this process, and the wake-up every tailer waits on.

Shared by the memory bus (the log *is* the bus) and the Redis bus (the log is
filled by the process's one stream reader). A publish wakes every tailer of
the run at once; each tailer then takes *all* events past its own cursor in one
slice, so an SSE writer can join them into one write (FACTS.md: log-and-cursor
tail, ~30x under load).
"""

from __future__ import annotations

import asyncio
from bisect import bisect_right, insort
from collections.abc import AsyncIterator, Iterable

from supervisor.errors import StockadeError
from supervisor.events import TERMINAL_EVENTS
from supervisor.stores.records import Event

__all__ = ["TERMINAL_TYPES", "RunLog", "follow"]

TERMINAL_TYPES = frozenset(TERMINAL_EVENTS.values())


def _seq(e: Event) -> int:
    return e.seq


class RunLog:
    """Events with ``seq > floor`` seen by this process, oldest trimmed past ``max_events``."""

    def __init__(self, max_events: int, floor: int = 0) -> None:
        self.max_events = max_events
        self.floor = floor
        self.events: list[Event] = []
        self.ended = False  # the terminal event is in (or was trimmed from) the log
        self.error: StockadeError | None = None
        self.subscribers = 0
        self.closed = False  # the bus shut down: tails end quietly
        self._wake = asyncio.Event()

    @property
    def last_seq(self) -> int:
        return self.events[-1].seq if self.events else self.floor

    def add(self, events: Iterable[Event]) -> None:
        added = False
        for e in events:
            if e.seq <= self.floor:
                continue
            if not self.events or e.seq > self.events[-1].seq:
                self.events.append(e)
            else:  # late or duplicate publish: keep seq order, drop duplicates
                i = bisect_right(self.events, e.seq, key=_seq)
                if i and self.events[i - 1].seq == e.seq:
                    continue
                insort(self.events, e, key=_seq)
            added = True
            if e.type in TERMINAL_TYPES:
                self.ended = True
        if not added:
            return
        # Trim in chunks so that appending stays amortised O(1).
        if len(self.events) > self.max_events + max(16, self.max_events // 4):
            del self.events[: len(self.events) - self.max_events]
        self.wake()

    def fail(self, error: StockadeError) -> None:
        self.error = error
        self.wake()

    def close(self) -> None:
        self.closed = True
        self.wake()

    def wake(self) -> None:
        old, self._wake = self._wake, asyncio.Event()
        old.set()

    def after(self, seq: int) -> list[Event]:
        return self.events[bisect_right(self.events, seq, key=_seq):]


async def follow(log: RunLog, after: int, idle_s: float | None) -> AsyncIterator[list[Event]]:
    """Yield batches past ``after`` until (and including) the terminal event.

    With ``idle_s`` an empty batch is yielded after that long without events,
    so a streaming writer can send a keep-alive without cancelling the tail.
    """
    cursor = after
    while True:
        waiter = log._wake  # taken before reading: a publish in between still wakes us
        batch = log.after(cursor)
        if batch:
            for i, e in enumerate(batch):
                if e.type in TERMINAL_TYPES:
                    yield batch[: i + 1]
                    return
            cursor = batch[-1].seq
            yield batch
            continue
        if log.closed:
            return
        if log.error is not None:  # a fresh instance per tailer: they each get their own traceback
            raise StockadeError(log.error.code, log.error.detail)
        if idle_s is None:
            await waiter.wait()
            continue
        try:
            await asyncio.wait_for(waiter.wait(), idle_s)
        except TimeoutError:
            yield []
