"""A long-polling response carries at most as many packets as an Engine.IO client decodes from one.

python-engineio's server answers a poll with every packet queued for the session; its own client refuses
a payload of more than ``Payload.max_decode_packets`` (16) as "Unexpected packet from server", drops the
transport and reconnects with a new session, its subscriptions gone. A run replayed to a python-socketio
client on the polling transport (up to ``socketio_stream.QUEUE_MAX`` events queued) delivered nothing; in
a live run of 3,000 events, 14 of 50 polling clients stalled for good. ``install`` caps what one poll
takes from the queue: the rest stays queued (and counted by ``queue.join``, which the subscriptions wait
on) for the next poll. The WebSocket writer polls the same way and then sends packet by packet, so the
cap costs it one more loop turn per 16 packets.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from engineio import async_socket, exceptions, payload

__all__ = ["CLOSE_WAIT_S", "MAX_POLL_PACKETS", "install"]

MAX_POLL_PACKETS = payload.Payload.max_decode_packets  # 16
CLOSE_WAIT_S = 5.0  # a session closed waiting for its client to take the CLOSE packet waits no longer


async def _poll(self: Any) -> list[Any]:
    """``AsyncSocket.poll`` (python-engineio 4), taking at most MAX_POLL_PACKETS packets."""
    try:
        packets = [await asyncio.wait_for(self.queue.get(), self.server.ping_interval + self.server.ping_timeout)]
        self.queue.task_done()
    except (TimeoutError, asyncio.CancelledError):
        raise exceptions.QueueEmpty() from None
    if packets == [None]:
        return []
    while len(packets) < MAX_POLL_PACKETS:
        try:
            pkt = self.queue.get_nowait()
        except asyncio.QueueEmpty:
            break
        self.queue.task_done()
        if pkt is None:
            self.queue.put_nowait(None)
            break
        packets.append(pkt)
    return packets


_close = async_socket.AsyncSocket.close


async def _close_and_answer(self: Any, wait: bool = True, abort: bool = False, reason: Any = None) -> None:
    """``AsyncSocket.close``, and a poll still waiting is answered (empty) at once: a client's CLOSE (``abort``:
    no CLOSE packet back) left its pending long-poll GET open until the ping timeout, and python-socketio's
    ``disconnect()`` over polling waits for that request - 30 s and more.

    ``wait`` (for the client to take the CLOSE packet) waits at most ``CLOSE_WAIT_S``: Engine.IO closes a
    session so, with ``wait``, when a POST carries a packet it cannot take (too long, an unknown or a NOOP
    packet type: one byte, ``6``, before any key), and a polling client that never polls again took it
    never - the POST was never answered, and its task outlived the client, one more with each such POST."""
    closing = not self.closed and not self.closing
    await _close(self, wait=False, abort=abort, reason=reason)
    if abort:
        self.queue.put_nowait(None)
    if wait and closing:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(CLOSE_WAIT_S):
                await self.queue.join()


def install() -> None:
    async_socket.AsyncSocket.poll = _poll  # type: ignore[method-assign]
    async_socket.AsyncSocket.close = _close_and_answer  # type: ignore[method-assign]
