"""Run queue on a Redis Stream with one consumer group.

``enqueue`` = XADD; ``claim`` = first an expired delivery (XAUTOCLAIM with
min-idle = the visibility timeout, in a script that also reads its delivery
count), else XREADGROUP BLOCK for a new entry; ``extend`` = XCLAIM JUSTID
(resets the idle time); ``ack`` / ``fail`` = XACK + XDEL; ``requeue`` =
XACK + XDEL + XADD, keeping the attempt count in the entry (field ``a``).
``Job.receipt`` is the stream entry id; ``attempts`` = earlier attempts +
the delivery count. ``extend`` / ``requeue`` by a holder whose delivery has
since gone to another worker change nothing. Blocking reads are cut into
slices no longer than the visibility timeout, so an expired claim is picked
up while a worker waits.

Every worker process is a consumer of the group (``hostname:pid``), and Redis
keeps a consumer after its process is gone: one more per restart, deploy or
scaled-up pod, for ever. Each process, when it first uses the queue, drops the
consumers that hold no job and have not read one for ``consumer_idle_s``. That is
safe even for a live worker (Redis 7.0 does not count its empty reads as activity):
a consumer holding nothing loses nothing, and its next read makes it again; the
check and the drop are one script, so no claim lands between them.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from supervisor.stores.records import Job
from supervisor.stores.redis._errors import unavailable
from supervisor.stores.redis._lua import QUEUE_CLAIM_EXPIRED, QUEUE_EXTEND, QUEUE_PRUNE_CONSUMERS, QUEUE_REQUEUE
from supervisor.stores.redis.client import block_ms

__all__ = ["RedisRunQueue"]

log = logging.getLogger("stockade.queue")

_GROUP = "workers"
_WHAT = "The run queue is unavailable"


def _s(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def _fields(flat: Any) -> dict[str, str]:
    if isinstance(flat, dict):
        return {_s(k): _s(v) for k, v in flat.items()}
    items = list(flat)
    return {_s(items[i]): _s(items[i + 1]) for i in range(0, len(items) - 1, 2)}


class RedisRunQueue:
    def __init__(self, client: aioredis.Redis, prefix: str = "stockade:", visibility_s: float = 30.0, *,
                 consumer_idle_s: float = 3600.0) -> None:
        if visibility_s <= 0 or consumer_idle_s < 0:
            raise ValueError("visibility_s must be > 0 and consumer_idle_s >= 0")
        self._client = client
        self._key = prefix + "q:runs"
        self.visibility_s = visibility_s
        self._block_ms = block_ms(client)
        self._group_ready = False
        self._claim_expired = client.register_script(QUEUE_CLAIM_EXPIRED)
        self._extend = client.register_script(QUEUE_EXTEND)
        self._requeue = client.register_script(QUEUE_REQUEUE)
        self._prune_consumers = client.register_script(QUEUE_PRUNE_CONSUMERS)
        self._consumer_idle_ms = int(consumer_idle_s * 1000)
        self._pruned = False

    async def _ensure_group(self) -> None:
        if self._group_ready:
            return
        try:
            # id 0: entries enqueued before the group existed are delivered too.
            await self._client.xgroup_create(self._key, _GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        self._group_ready = True
        if not self._pruned:
            self._pruned = True  # once per process: consumers pile up only as processes come and go
            try:
                dropped = await self._prune_consumers(keys=[self._key], args=[_GROUP, self._consumer_idle_ms])
            except ResponseError as exc:  # housekeeping: never what keeps a worker from its queue
                log.warning("run queue: stale consumers not pruned: %s", exc)
            else:
                if dropped:
                    log.info("run queue: dropped %d consumer(s) of worker processes gone", dropped)

    async def _call(self, fn: Any) -> Any:
        """Run ``fn`` with the group in place; recreate it once if the key vanished (flush, expiry)."""
        with unavailable("store.unavailable", _WHAT):
            await self._ensure_group()
            try:
                return await fn()
            except ResponseError as exc:
                if "NOGROUP" not in str(exc):
                    raise
                self._group_ready = False
                await self._ensure_group()
                return await fn()

    async def enqueue(self, tenant_id: str, run_id: str) -> None:
        with unavailable("store.unavailable", _WHAT):
            await self._client.xadd(self._key, {"t": tenant_id, "r": run_id, "a": "0"})

    def _job(self, entry_id: Any, flat: Any, deliveries: Any) -> Job | None:
        """The job an entry holds; None for an entry that holds none (another writer's, or gone)."""
        try:
            f = _fields(flat)
            return Job(run_id=f["r"], tenant_id=f["t"], receipt=_s(entry_id),
                       attempts=int(f.get("a", "0")) + int(deliveries))
        except (KeyError, ValueError, TypeError, IndexError):
            return None

    async def _drop(self, entry_id: Any) -> None:
        """An entry that is no job: off the queue, or every claim would hand it out again."""
        log.warning("run queue entry %s is not a job (fields r, t); dropped", _s(entry_id))
        await self._finish_id(_s(entry_id))

    async def claim(self, worker_id: str, timeout_s: float) -> Job | None:
        deadline = time.monotonic() + max(0.0, timeout_s)
        idle_ms = max(1, int(self.visibility_s * 1000))
        while True:
            got = await self._call(
                lambda: self._claim_expired(keys=[self._key], args=[_GROUP, worker_id, idle_ms])
            )
            if got:
                job = self._job(got[0], got[1] if len(got) > 1 else None, got[2] if len(got) > 2 else 1)
                if job is not None:
                    return job
                await self._drop(got[0])
                continue
            remaining_ms = int((deadline - time.monotonic()) * 1000)
            # BLOCK 0 would mean "forever": a finished wait polls once without blocking.
            block = min(remaining_ms, self._block_ms, idle_ms)
            kwargs: dict[str, Any] = {"count": 1}
            if block > 0:
                kwargs["block"] = block
            res = await self._call(
                lambda kw=kwargs: self._client.xreadgroup(_GROUP, worker_id, {self._key: ">"}, **kw)
            )
            for _stream, entries in res or ():
                for entry_id, flat in entries:
                    job = self._job(entry_id, flat, 1)
                    if job is not None:
                        return job
                    await self._drop(entry_id)
            if remaining_ms <= 0:
                return None

    async def extend(self, job: Job) -> None:
        await self._call(lambda: self._extend(keys=[self._key], args=[_GROUP, job.receipt, job.attempts]))

    async def _finish(self, job: Job) -> None:
        await self._finish_id(job.receipt)

    async def _finish_id(self, receipt: str) -> None:
        async def run() -> None:
            async with self._client.pipeline(transaction=True) as pipe:
                pipe.xack(self._key, _GROUP, receipt)
                pipe.xdel(self._key, receipt)
                await pipe.execute()

        await self._call(run)

    async def ack(self, job: Job) -> None:
        await self._finish(job)

    async def fail(self, job: Job) -> None:
        await self._finish(job)

    async def requeue(self, job: Job) -> None:
        await self._call(lambda: self._requeue(keys=[self._key], args=[_GROUP, job.receipt, job.attempts]))

    async def depth(self) -> int:
        """Jobs waiting to be claimed: stream length minus the deliveries in flight."""

        async def run() -> int:
            async with self._client.pipeline(transaction=True) as pipe:
                pipe.xlen(self._key)
                pipe.xpending(self._key, _GROUP)
                length, pending = await pipe.execute()
            count = pending["pending"] if isinstance(pending, dict) else pending[0]
            return max(0, int(length) - int(count))

        return await self._call(run)
