"""Live tail of run events over Redis Streams, shared by every API and worker process.

One stream per run, ``{prefix}ev:{run_id}``, whose entry ids are ``{seq}-0``:
"events after N" is simply "stream entries after ``N-0``", no mapping table.
Streams are trimmed to about ``max_per_run`` entries and expire ``ttl_s``
after the last publish (give or take an eighth: a process renews the TTL with
the first event of a run it publishes, then at most every ``ttl_s / 8``; a plain
XADD costs ~40 % less than XADD + EXPIRE in a pipeline); the RunStore keeps every
event. The terminal event sets ``ended_ttl_s`` instead (a minute, as long as
the memory bus keeps an ended run's log): tailers read the store first and tail
only runs that have not ended, so an ended run's stream serves only a tailer that
raced its end. Kept a day, every run's output stayed in Redis memory for a day
after it ended (a run that emits up to the default 8 MiB output cap leaves a
7.4 MB stream): Redis grew with a day of output, and a full Redis refuses the
queue and the rate limiter too.

Fan-out: a process runs *one* reader task issuing one ``XREAD BLOCK`` over
the streams of every run it is tailing, and feeds each run's local log; all
local tailers of a run share that log (one Redis read per batch of events,
not per subscriber per event). Adding a run to the read wakes the blocked
XREAD by appending to a per-process control stream that the same XREAD
watches, so there is no window in which a new run waits for the block to end.
A tailer starting before the shared log's first event catches up with XRANGE.

Gaps: a tailer may skip events that were trimmed (from the stream or from the
local log because it fell behind) or published out of order by two processes
(XADD refuses an id below the stream's top). Callers notice the jump in
``seq`` and fill it from the RunStore. If Redis stops answering, every tail
of the process raises ``StockadeError('store.unavailable')`` and callers fall
back to the RunStore.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from supervisor.aio import cancel_and_wait
from supervisor.errors import StockadeError
from supervisor.stores.memory._runlog import TERMINAL_TYPES, RunLog, follow
from supervisor.stores.records import Event
from supervisor.stores.redis._errors import UNAVAILABLE_ERRORS, unavailable
from supervisor.stores.redis.client import block_ms

__all__ = ["RedisEventBus"]

log = logging.getLogger("stockade.events.redis")

_WHAT = "The live event stream is unavailable"
_RENEWALS_MAX = 10_000
# After a publish times out (a Redis that hangs: a frozen primary, a partition), the next publishes of this
# process fail at once for this long instead of each waiting the socket timeout in turn - every event of a
# run is published in order, so a run of N events took N timeouts. They are in the store already; tailers,
# whose reads fail too, read them there. A terminal event is always tried (live tailers wait for it).
_QUIET_S = 1.0
_SLOW = (TimeoutError, RedisTimeoutError)

_ENCODER = json.JSONEncoder(separators=(",", ":"), default=str)  # built once, not per event


def _s(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def _seq_of(entry_id: Any) -> int:
    return int(_s(entry_id).split("-", 1)[0])


@dataclass(eq=False)
class _Feed:
    run_id: str
    key: str
    log: RunLog
    cursor: str  # last stream id the reader consumed
    done: bool = False  # the terminal event was read: nothing more to wait for


class RedisEventBus:
    def __init__(
        self, client: aioredis.Redis, prefix: str = "stockade:", *,
        max_per_run: int = 10_000, ttl_s: int = 86_400, ended_ttl_s: int = 60, local_max: int = 10_000,
        read_count: int = 500,
    ) -> None:
        self._client = client
        self._prefix = prefix + "ev:"
        self._max_per_run = max_per_run
        self._ttl_s = ttl_s
        self._ended_ttl_s = min(ended_ttl_s, ttl_s)
        self._local_max = local_max
        self._read_count = read_count
        self._block_ms = block_ms(client)
        self._ctl_key = f"{prefix}evctl:{secrets.token_hex(8)}"
        self._ctl_cursor = "0-0"
        self._feeds: dict[str, _Feed] = {}
        self._ttl_renewed: dict[str, float] = {}  # run -> monotonic time this process last set its stream's TTL
        self._clock = time.monotonic
        self._reader: asyncio.Task[None] | None = None
        self._closed = False
        self._quiet_until = 0.0  # monotonic: publishes before this fail fast (_QUIET_S)

    # --- publishing

    async def publish(self, event: Event) -> None:
        if event.seq < 1:
            raise ValueError("event seq starts at 1")
        key = self._prefix + event.run_id
        payload = _ENCODER.encode({"t": event.type, "d": event.data, "ts": event.ts})
        now = self._clock()
        renewed = self._ttl_renewed.get(event.run_id)
        final = event.type in TERMINAL_TYPES
        if not final and now < self._quiet_until:
            raise StockadeError("store.unavailable", f"{_WHAT}: Redis did not answer a moment ago.")
        renew = final or renewed is None or now - renewed > self._ttl_s / 8
        try:
            with unavailable("store.unavailable", _WHAT):
                if renew:
                    async with self._client.pipeline(transaction=False) as pipe:
                        pipe.xadd(key, {"e": payload}, id=f"{event.seq}-0", maxlen=self._max_per_run, approximate=True)
                        pipe.expire(key, self._ended_ttl_s if final else self._ttl_s)
                        added, _ = await pipe.execute(raise_on_error=False)
                else:
                    try:
                        added = await self._client.xadd(key, {"e": payload}, id=f"{event.seq}-0",
                                                        maxlen=self._max_per_run, approximate=True)
                    except ResponseError as exc:
                        added = exc
        except StockadeError as exc:
            if isinstance(exc.__cause__, _SLOW):
                self._quiet_until = self._clock() + _QUIET_S
            raise
        if final:
            self._ttl_renewed.pop(event.run_id, None)
        elif renew:
            if len(self._ttl_renewed) >= _RENEWALS_MAX:  # forget the stale ones: they renew on their next event
                self._ttl_renewed = {r: t for r, t in self._ttl_renewed.items() if now - t <= self._ttl_s / 8}
            self._ttl_renewed[event.run_id] = now
        if isinstance(added, ResponseError):
            if "equal or smaller" in str(added):  # a repeat, or a late publish from another process
                log.debug("event %s/%s not added to the live stream: %s", event.run_id, event.seq, added)
                return
            raise StockadeError("store.unavailable", f"{_WHAT}: {added}") from added

    def forget(self, run_id: str) -> None:
        """The run ended in another process (an API's cancel): this one publishes nothing more of it, so it
        stops tracking its stream's TTL. Its terminal event, published there, would have dropped the entry
        here; without this, every run canceled from elsewhere left one behind in its worker."""
        self._ttl_renewed.pop(run_id, None)

    # --- tailing

    def tail(self, run_id: str, after: int) -> AsyncIterator[Event]:
        return self._tail(run_id, after)

    async def _tail(self, run_id: str, after: int) -> AsyncIterator[Event]:
        async for batch in self.tail_batches(run_id, after):
            for event in batch:
                yield event

    async def tail_batches(self, run_id: str, after: int, idle_s: float | None = None) -> AsyncIterator[list[Event]]:
        """Every pending event at once, in seq order, until the terminal one; ``[]`` after ``idle_s`` idle."""
        if self._closed:
            raise StockadeError("store.unavailable", f"{_WHAT}: the bus is closed")
        feed = self._feeds.get(run_id)
        new = feed is None
        if feed is None:
            # The feed is shared by every tailer of the run in this process: its floor is the first one's cursor,
            # but never past the run's stream, or the events up to that cursor would be read for no one (a
            # later tailer from 0 got nothing live until the run passed the first one's odd ``after``).
            key = self._prefix + run_id
            with unavailable("store.unavailable", _WHAT):
                last = await self._client.xrevrange(key, count=1)
            floor = min(after, _seq_of(last[0][0]) if last else 0)
            feed = self._feeds.get(run_id)  # (another tailer of the run may have made it meanwhile)
            new = feed is None
            if feed is None:
                feed = _Feed(run_id, key, RunLog(self._local_max, floor=floor), f"{floor}-0")
                self._feeds[run_id] = feed
        feed.log.subscribers += 1
        try:
            if new:
                await self._wake_reader()
            cursor = after
            if after < feed.log.floor:  # older than the shared log: catch up from the stream itself
                async for batch in self._range(feed, after, feed.log.floor):
                    yield batch
                    if batch[-1].type in TERMINAL_TYPES:
                        return
                cursor = feed.log.floor
            async for batch in follow(feed.log, cursor, idle_s):
                yield batch
        finally:
            feed.log.subscribers -= 1
            if feed.log.subscribers == 0 and self._feeds.get(run_id) is feed:
                del self._feeds[run_id]  # the reader drops it from its next XREAD

    async def _range(self, feed: _Feed, after: int, upto: int) -> AsyncIterator[list[Event]]:
        start = f"{after + 1}-0"
        while True:
            with unavailable("store.unavailable", _WHAT):
                entries = await self._client.xrange(feed.key, min=start, max=f"{upto}-0", count=1000) or []
            batch = self._decode(feed.run_id, entries)
            for i, e in enumerate(batch):
                if e.type in TERMINAL_TYPES:
                    batch = batch[: i + 1]
                    break
            if batch:
                yield batch
            if len(entries) < 1000 or (batch and batch[-1].type in TERMINAL_TYPES):
                return
            start = f"{_seq_of(entries[-1][0]) + 1}-0"

    def _decode(self, run_id: str, entries: Any) -> list[Event]:
        out: list[Event] = []
        for entry_id, fields in entries or ():
            try:
                raw = fields.get("e", fields.get(b"e")) if isinstance(fields, dict) else None
                doc = json.loads(_s(raw))
                if not isinstance(doc["t"], str) or not isinstance(doc["d"], dict):  # a stream writer not ours
                    raise TypeError("an event is a type and an object")
                out.append(Event(run_id=run_id, seq=_seq_of(entry_id), type=doc["t"], data=doc["d"], ts=float(doc["ts"])))
            except (ValueError, KeyError, TypeError):
                log.warning("skipping a malformed live event %s in run %s", _s(entry_id), run_id)
        return out

    # --- the one reader of this process

    async def _wake_reader(self) -> None:
        if self._reader is None or self._reader.done():
            self._reader = asyncio.create_task(self._read_loop(), name="stockade-event-reader")
            return
        # The reader is blocked in XREAD (its only await): an entry on the control stream it
        # also watches returns it at once, even if this lands before its XREAD does.
        with unavailable("store.unavailable", _WHAT):
            async with self._client.pipeline(transaction=False) as pipe:
                pipe.xadd(self._ctl_key, {"w": "1"}, maxlen=16, approximate=True)
                pipe.expire(self._ctl_key, 3600)
                await pipe.execute()

    async def _read_loop(self) -> None:
        try:
            while not self._closed:
                snapshot = {f.key: f for f in self._feeds.values() if not f.done}
                if not snapshot:
                    return  # restarted by the next new tail
                streams: dict[Any, Any] = {self._ctl_key: self._ctl_cursor, **{k: f.cursor for k, f in snapshot.items()}}
                result = await self._client.xread(streams, count=self._read_count, block=self._block_ms)
                for key, entries in (result.items() if isinstance(result, dict) else result or ()):
                    if not entries:
                        continue
                    key = _s(key)
                    last = _s(entries[-1][0])
                    if key == self._ctl_key:
                        self._ctl_cursor = last
                        continue
                    feed = snapshot.get(key)
                    if feed is None or self._feeds.get(feed.run_id) is not feed:
                        continue  # its last tailer left meanwhile
                    feed.cursor = last
                    events = self._decode(feed.run_id, entries)
                    feed.log.add(events)
                    if any(e.type in TERMINAL_TYPES for e in events):
                        feed.done = True
        except asyncio.CancelledError:
            raise
        except UNAVAILABLE_ERRORS as exc:
            self._fail_all(StockadeError("store.unavailable", f"{_WHAT}: Redis did not answer ({type(exc).__name__})."))
        except Exception:
            log.exception("live event reader crashed")
            self._fail_all(StockadeError("store.unavailable", f"{_WHAT}: the reader failed."))

    def _fail_all(self, err: StockadeError) -> None:
        feeds, self._feeds = self._feeds, {}
        for feed in feeds.values():
            feed.log.fail(err)

    async def close(self) -> None:
        """Ends every tail quietly; later tails raise ``store.unavailable``. The client is the caller's."""
        self._closed = True
        await cancel_and_wait(self._reader)
        for feed in self._feeds.values():
            feed.log.close()
        self._feeds.clear()
        try:
            await self._client.delete(self._ctl_key)
        except UNAVAILABLE_ERRORS:
            pass
