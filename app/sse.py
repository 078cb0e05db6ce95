"""SSE: replay from the store after the cursor, then the live tail from the bus.

Frames are pre-encoded and everything pending is joined into writes of up to ``CHUNK`` bytes
(FACTS.md: ~30x under load, 12-100x on replay). What a stream holds is bounded, however slowly
its client reads (a client that never reads blocks the stream at its next write): one write in
the transport, and one page of stored events (``app/_pages.py``: fitted to about 1 MB). ``id`` is the per-run seq;
gaps in the live tail are filled from the store, so a client never misses an
event. The stream ends after the terminal event; a comment keep-alive goes out after ``KEEPALIVE_S``
without a write (CONTRACT: at least every 15 s). A cursor at or past the end of a run that has ended
gets 204 (routes/runs.py: an EventSource then stops reconnecting); if the run ends behind the cursor while the stream is open, the next keep-alive check closes it.
The key is checked again on a clock (however busy the stream; ``deps.key_recheck``), so a revoked key
is cut off within ``deps.KEY_RECHECK_S``: once revoked, or if the lookup fails otherwise than with the store
away, the stream closes after a comment naming the code (events already sent stay sent). The store away
(PostgreSQL restarting) does not end a stream its live tail still serves: its checks are skipped until it is
back, the key check too for up to ``deps.STORE_AWAY_GRACE_S`` (then it fails closed); a gap only the store could
fill, or a replay it cannot serve (away, or its pool exhausted), closes the stream the same way (the client
resumes with Last-Event-ID; an empty Last-Event-ID is no id, as HTML's EventSource sends none then). A live
event is encoded once per process for every stream of its run (``_shared_frame``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import OrderedDict
from collections.abc import AsyncIterator
from typing import Any

from fastapi import Request

from app import deps
from app._pages import PAGE, stored
from supervisor.aio import cancel_and_wait
from supervisor.errors import StockadeError
from supervisor.stores.records import TERMINAL_STATUSES, Event
from supervisor.tenancy import Principal

__all__ = ["KEEPALIVE_S", "encode_event", "event_stream"]

# CONTRACT: "at least every 15 s". The timer is the floor of a gap, not its length: the wake-up, the disconnect
# check and a slow write come on top (15.0 here gave gaps of 15.1 s), hence the margin.
KEEPALIVE_S = 10.0
# the process is stopping: the stream ends cleanly, and the client resumes with Last-Event-ID (``retry``)
STOPPING = b": server stopping: stream closed\n\n"
TERMINAL = frozenset({"run.completed", "run.failed", "run.canceled", "run.timed_out"})
CHUNK = 64 * 1024  # one write, about (it ends with the frame that reaches it)


_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)  # built once, not per event
# Left raw by ensure_ascii=False, yet line breaks to clients that split lines like str.splitlines (httpx's
# aiter_lines): a bundle's text would cut its own data line in two. Escaped, the JSON means the same.
_LINE_BREAKS = (("\u2028", "\\u2028"), ("\u2029", "\\u2029"), ("\x85", "\\u0085"))


def encode_event(e: Event) -> bytes:
    data = _ENCODER.encode(e.to_wire())
    for raw, escaped in _LINE_BREAKS:
        if raw in data:  # rare: a scan, no copy
            data = data.replace(raw, escaped)
    return f"id: {e.seq}\nevent: {e.type}\ndata: {data}\n\n".encode()


_SHARED: OrderedDict[tuple[str, int], bytes] = OrderedDict()
SHARED_FRAMES = 4096  # the newest live events' frames, encoded once for every stream of their run


def _shared_frame(e: Event) -> bytes:
    """``encode_event`` of a live event, once per process: 200 streams of one run encoded each event 200
    times on the loop that also runs the run (an event's seq names it for good: it never changes)."""
    key = (e.run_id, e.seq)
    frame = _SHARED.get(key)
    if frame is None:
        frame = _SHARED[key] = encode_event(e)
        if len(_SHARED) > SHARED_FRAMES:
            _SHARED.popitem(last=False)
    return frame


async def event_stream(rt: Any, request: Request, tenant_id: str, run_id: str, cursor: int, *,
                       principal: Principal) -> AsyncIterator[bytes]:
    runs, bus = rt.services.runs, rt.services.events
    metrics = rt.metrics
    loop = asyncio.get_running_loop()
    key = _KeyCheck(rt.services, principal, loop)
    slots = rt.stream_slots
    if not slots.take(tenant_id):  # the route checked: only streams started since then took it
        yield b": rate.limited: stream closed\n\n"
        return
    metrics.sse_subscribers.inc()
    try:
        yield b": stream of run " + run_id.encode() + b"\nretry: 1000\n\n"
        # 1. replay what the store has
        out, ended = _Writes(), False
        try:
            async with contextlib.aclosing(stored(runs, tenant_id, run_id, cursor, encode_event, len)) as replay:
                async for e, frame in replay:
                    cursor, ended = e.seq, e.type in TERMINAL
                    if (chunk := out.add(frame)) is not None:
                        if (closing := await key.closing()) is not None:
                            yield closing
                            return
                        yield chunk
                        if slots.draining:
                            yield STOPPING
                            return
                    if ended:
                        break
        except StockadeError as exc:
            if not exc.code.endswith(".unavailable"):
                raise
            # the store is away (or its pool exhausted) mid-replay: what was read goes out, then the stream
            # closes naming the code, as in the live tail (was: the response cut mid-chunk, an ERROR traceback)
            yield (out.flush() or b"") + b": " + exc.code.encode() + b": stream closed\n\n"
            return
        if (chunk := out.flush()) is not None:
            yield chunk
        if ended:
            return
        # 2. live tail; a batch arrives per wake-up, joined into writes
        queue: asyncio.Queue = asyncio.Queue(maxsize=64)
        pump = asyncio.create_task(_pump(bus, run_id, cursor, queue))
        quiet_until = loop.time() + KEEPALIVE_S
        # (a full queue is read before the next wait, and the flag checked then)
        unwatch = slots.on_drain(lambda: None if queue.full() else queue.put_nowait(_Draining()))
        try:
            while True:
                if (closing := await key.closing()) is not None:
                    yield closing
                    return
                if slots.draining:
                    yield (out.flush() or b"") + STOPPING
                    return
                try:
                    if queue.empty():  # (a timer only when there is nothing to send yet)
                        async with asyncio.timeout_at(max(loop.time() + 0.001, min(quiet_until, key.due))):
                            batch = await queue.get()
                    else:
                        batch = queue.get_nowait()
                    while not isinstance(batch, BaseException) and not queue.empty():  # all that is waiting, in one go
                        more = queue.get_nowait()
                        if isinstance(more, BaseException):
                            queue.put_nowait(more)  # (room: just taken) handled on the next turn
                            break
                        batch.extend(more)
                except TimeoutError:
                    if loop.time() < quiet_until:
                        continue  # woken for the key check only
                    quiet_until = loop.time() + KEEPALIVE_S
                    if await request.is_disconnected():
                        return
                    yield b": keep-alive\n\n"
                    # the bus may have missed a publish (e.g. a restarted node): check the store; a run
                    # that ended behind a cursor past its end publishes nothing more (status read first:
                    # a run ending between the two reads still has its last events delivered)
                    try:
                        over = await _ended(runs, tenant_id, run_id)
                        batch = await runs.events_after(tenant_id, run_id, cursor, limit=PAGE)
                    except StockadeError as exc:
                        if not exc.code.endswith(".unavailable"):
                            raise
                        continue  # the store is away (restarting): the live tail goes on; checked next time
                    if not batch:
                        if over:
                            return
                        continue
                if isinstance(batch, _Draining):
                    continue  # (closed at the top of the loop)
                if isinstance(batch, BaseException):
                    pump = asyncio.create_task(_pump(bus, run_id, cursor, queue, delay=1.0))
                    try:
                        batch = await runs.events_after(tenant_id, run_id, cursor, limit=PAGE)
                    except StockadeError as exc:
                        if not exc.code.endswith(".unavailable"):
                            raise
                        continue  # the store is away too: read again when that pump fails (the key re-check
                        # closes the stream if the store stays away)
                    if not batch:
                        continue
                for e in batch:
                    if e.seq <= cursor:
                        continue
                    if e.seq != cursor + 1:  # the bus skipped some: fill from the durable log
                        missed = stored(runs, tenant_id, run_id, cursor, encode_event, len, e.seq - cursor - 1)
                        try:
                            async with contextlib.aclosing(missed) as gap:
                                async for g, frame in gap:
                                    cursor = g.seq
                                    if (chunk := out.add(frame)) is not None:
                                        yield chunk
                                        quiet_until = loop.time() + KEEPALIVE_S
                        except StockadeError as exc:
                            if not exc.code.endswith(".unavailable"):
                                raise
                            # the store is away: the gap can be neither filled nor skipped. What was read goes
                            # out, then the stream closes naming the code (as a failed key re-check closes it);
                            # the client resumes with Last-Event-ID
                            yield (out.flush() or b"") + b": " + exc.code.encode() + b": stream closed\n\n"
                            return
                    if (chunk := out.add(_shared_frame(e))) is not None:
                        yield chunk
                        quiet_until = loop.time() + KEEPALIVE_S
                    cursor, ended = e.seq, e.type in TERMINAL
                    if ended:
                        break
                if (chunk := out.flush()) is not None:
                    yield chunk
                    # only a write resets the timer: a batch of events the stream had already sent (the store
                    # filled them in first) writes nothing, and reset it, the gap past the keep-alive interval
                    quiet_until = loop.time() + KEEPALIVE_S
                if ended:
                    return
        finally:
            unwatch()
            await cancel_and_wait(pump)
    finally:
        metrics.sse_subscribers.dec()
        slots.give_back(tenant_id)


class _Draining(Exception):
    """Put on a stream's queue when the process starts stopping (``StreamSlots.drain``)."""


class _Writes:
    """Frames joined into writes of about CHUNK bytes."""

    def __init__(self) -> None:
        self.frames: list[bytes] = []
        self.size = 0

    def add(self, frame: bytes) -> bytes | None:
        self.frames.append(frame)
        self.size += len(frame)
        return self.flush() if self.size >= CHUNK else None

    def flush(self) -> bytes | None:
        if not self.frames:
            return None
        chunk, self.frames, self.size = b"".join(self.frames), [], 0
        return chunk


class _KeyCheck:
    """The stream's key, looked up again by the clock, not per event (deps.key_recheck, deps.KeyWatch)."""

    def __init__(self, services: Any, principal: Principal, loop: asyncio.AbstractEventLoop) -> None:
        self.watch, self.loop = deps.KeyWatch(services, principal), loop
        self.due = loop.time() + deps.key_recheck()[0]  # the request was authenticated just now

    async def closing(self) -> bytes | None:
        """None unless a check is due and fails; then the comment to close the stream with (the client
        reconnects to resume, and is refused if the key was revoked)."""
        if self.loop.time() < self.due:
            return None
        if (err := await self.watch.failure()) is not None:
            return b": " + err.code.encode() + b": stream closed\n\n"
        self.due = self.loop.time() + deps.key_recheck()[0]
        return None


async def _ended(runs: Any, tenant_id: str, run_id: str) -> bool:
    run = await runs.get_run(tenant_id, run_id)
    return run is None or run.status in TERMINAL_STATUSES


async def _pump(bus: Any, run_id: str, after: int, queue: asyncio.Queue, delay: float = 0.0) -> None:
    if delay:
        await asyncio.sleep(delay)  # back off before re-subscribing to a failing bus
    try:
        batches = getattr(bus, "tail_batches", None)
        if batches is not None:
            async for batch in batches(run_id, after):
                await queue.put(list(batch))
        else:
            async for e in bus.tail(run_id, after):
                await queue.put([e])
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # bus down: the consumer falls back to the store
        await queue.put(exc)
