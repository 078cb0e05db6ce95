"""Stopping a background task without swallowing the caller's own cancel.

The common close-path idiom ``task.cancel(); with suppress(CancelledError): await task``
cannot tell the task's end (expected) from a cancel of the caller itself
landing during the wait: it swallows both, so a caller canceled while it
closes something returns normally and goes on as if nothing happened.
``asyncio.wait`` never raises the task's outcome, only the caller's own
cancel, so the two stay apart here.
"""

from __future__ import annotations

import asyncio
import logging

__all__ = ["cancel_and_wait"]

log = logging.getLogger("stockade.tasks")


async def cancel_and_wait(*tasks: asyncio.Future[object] | None) -> None:
    """Cancel ``tasks`` (``None`` entries skipped) and wait until each has ended.

    A cancel of the caller propagates (the tasks are still canceled; they end on their own). A task
    that ended with an exception other than its cancel has it logged, never raised.
    """
    live = {t for t in tasks if t is not None}
    for t in live:
        t.cancel()
    if not live:
        return
    await asyncio.wait(live)
    for t in live:
        if not t.cancelled() and (exc := t.exception()) is not None:
            log.warning("background task %r ended with %s: %s", t, type(exc).__name__, exc)
