"""A run's stored events read in pages fitted to their size, for the streams (SSE and Socket.IO).

A stream that waits for a slow client holds the page it is sending: a fixed length of 1,000
events held up to the whole run's output (8 MB by default) per stream, and any key holder can
open streams by the hundred and never read them. Here the first page is short, and each next
one is as long as ``PAGE_BYTES`` of events of the size just seen (1,000 at most, as before).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

from supervisor.stores.records import Event

__all__ = ["FIRST_PAGE", "PAGE", "PAGE_BYTES", "stored"]

PAGE = 1000  # events per store read at most
FIRST_PAGE = 16  # the first read: the events' size is not known yet
PAGE_BYTES = 1 << 20  # what a page of events may come to, about

T = TypeVar("T")


async def stored(runs: Any, tenant_id: str, run_id: str, cursor: int, encode: Callable[[Event], T],
                 size: Callable[[T], int], count: int | None = None) -> AsyncIterator[tuple[Event, T]]:
    """The stored events after ``cursor`` (``count`` of them at most), each with ``encode(event)``."""
    limit = FIRST_PAGE
    while count is None or count > 0:
        asked = limit if count is None else min(limit, count)
        events = await runs.events_after(tenant_id, run_id, cursor, limit=asked)
        total = 0
        for e in events:
            out = encode(e)
            total += size(out)
            yield e, out
        if len(events) < asked:
            return
        cursor = events[-1].seq
        if count is not None:
            count -= len(events)
        limit = max(1, min(PAGE, limit * PAGE_BYTES // max(total, 1)))
