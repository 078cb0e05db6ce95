"""``asyncio.wait_for`` that never loses a cancel, on Python 3.11 (what 3.12 ships).

On 3.11, ``wait_for`` awaits its awaitable in a task of its own; a cancel that lands in the loop turn that
awaitable completes is answered with the result, and the cancel is gone (fixed in 3.12: gh-86296, where
``wait_for`` became ``async with timeout(): return await aw``). Libraries call it on hot paths: redis-py
wraps every socket write in it (``Connection.send_packed_command``). So a task cancelled while it wrote to
Redis went on as if never asked: seen under load as a Socket.IO subscription forwarding on after its
unsubscribe (a subscription place held for good) and an SSE stream's bus pump that never ended (its
stream slot never given back, the stream's ``finally`` waiting on the pump forever). Our own tails
(``memory/_runlog.follow``) waited the same way.

``install()`` (run when ``supervisor`` is imported) puts 3.12's implementation in place on 3.11, for every
caller in the process. On 3.12 and later it does nothing. (Not 3.11's algorithm less the losing branch:
dropping the result there would leak what the awaitable acquired - a lock, a connection - which is why
3.11 returned it. In the caller's task nothing is dropped.) Its timeout is written out here rather than
taken from ``asyncio.timeout``: before 3.11.3 (Debian 12 ships 3.11.2) that one raised CancelledError,
not TimeoutError, for a timeout expiring in a task already being cancelled (cpython 04adf2d) - a worker's
cleanup after a shutdown cancel, for one.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable
from typing import Any, TypeVar

__all__ = ["ORIGINAL", "install", "wait_for"]

T = TypeVar("T")
ORIGINAL = asyncio.wait_for  # what the interpreter ships (tests show the bug with it)


async def wait_for(fut: Awaitable[T], timeout: float | None) -> T:  # noqa: ASYNC109 - asyncio.wait_for's own
    """CPython 3.12's ``asyncio.wait_for``: the awaitable runs in this task, under a timeout that cancels
    this task and turns that cancel - only that one - into TimeoutError (``asyncio.timeout`` as of 3.11.3)."""
    loop = asyncio.get_running_loop()
    if timeout is not None and timeout <= 0:  # as 3.12: an awaitable already done still gives its result
        task = asyncio.ensure_future(fut)
        if task.done():
            return task.result()
        task.cancel()
        await asyncio.wait({task})
        try:
            return task.result()
        except asyncio.CancelledError as exc:
            raise TimeoutError from exc
    if timeout is None:
        return await fut
    me = asyncio.current_task()
    assert me is not None
    cancelling = me.cancelling()  # cancels already asked of this task are not the timeout's
    expired = False

    def expire() -> None:
        nonlocal expired
        expired = True
        me.cancel()

    handle = loop.call_later(timeout, expire)
    try:
        return await fut
    except asyncio.CancelledError:
        if expired and me.uncancel() <= cancelling:
            raise TimeoutError from None  # the timeout's own cancel, and no other since
        raise
    finally:
        handle.cancel()


def install() -> None:
    if sys.version_info[:2] == (3, 11) and asyncio.wait_for is not wait_for:
        patched: Any = wait_for
        asyncio.wait_for = patched
        asyncio.tasks.wait_for = patched
