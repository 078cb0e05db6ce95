"""In-process run queue with a visibility timeout (the embedded default).

Same semantics as the Redis adapter: a job's ``receipt`` names the queue entry
(not one delivery), a claimed job not acked/extended within ``visibility_s``
is handed to the next claimer with ``attempts + 1``, ``extend`` and ``requeue``
by a holder whose delivery was already handed on do nothing (``ack``/``fail``
always remove the job: it is finished, whoever finished it), ``requeue`` puts
the job at the back keeping its attempt count. Nothing survives a restart: the run
manager re-enqueues queued runs from the RunStore at start-up.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import deque
from dataclasses import dataclass

from supervisor.stores.records import Job

__all__ = ["MemoryRunQueue"]


@dataclass
class _Entry:
    id: str
    tenant_id: str
    run_id: str
    prior: int = 0  # attempts before the last requeue
    deliveries: int = 0
    deadline: float = 0.0  # monotonic; while claimed

    def job(self) -> Job:
        return Job(run_id=self.run_id, tenant_id=self.tenant_id, receipt=self.id, attempts=self.prior + self.deliveries)


class MemoryRunQueue:
    def __init__(self, visibility_s: float = 30.0) -> None:
        if visibility_s <= 0:
            raise ValueError("visibility_s must be > 0")
        self.visibility_s = visibility_s
        self._waiting: deque[_Entry] = deque()
        self._claimed: dict[str, _Entry] = {}
        self._ids = itertools.count(1)
        self._wake = asyncio.Event()

    def _notify(self) -> None:
        old, self._wake = self._wake, asyncio.Event()
        old.set()

    async def enqueue(self, tenant_id: str, run_id: str) -> None:
        self._waiting.append(_Entry(str(next(self._ids)), tenant_id, run_id))
        self._notify()

    def _take(self, now: float) -> _Entry | None:
        expired = [e for e in self._claimed.values() if e.deadline <= now]
        if expired:  # redeliver the longest-expired first, like XAUTOCLAIM scanning from the oldest
            return min(expired, key=lambda e: e.deadline)
        if self._waiting:
            return self._waiting.popleft()
        return None

    async def claim(self, worker_id: str, timeout_s: float) -> Job | None:
        deadline = time.monotonic() + max(0.0, timeout_s)
        while True:
            now = time.monotonic()
            entry = self._take(now)
            if entry is not None:
                entry.deliveries += 1
                entry.deadline = now + self.visibility_s
                self._claimed[entry.id] = entry
                return entry.job()
            remaining = deadline - now
            if remaining <= 0:
                return None
            if self._claimed:  # wake when the earliest claim expires
                remaining = min(remaining, min(e.deadline for e in self._claimed.values()) - now)
            waiter = self._wake
            try:
                await asyncio.wait_for(waiter.wait(), max(remaining, 0.001))
            except TimeoutError:
                pass

    def _holder(self, job: Job) -> _Entry | None:
        entry = self._claimed.get(job.receipt)
        if entry is None or entry.prior + entry.deliveries != job.attempts:
            return None  # acked, failed, or handed to another worker since
        return entry

    async def extend(self, job: Job) -> None:
        entry = self._holder(job)
        if entry is not None:
            entry.deadline = time.monotonic() + self.visibility_s

    async def ack(self, job: Job) -> None:
        self._claimed.pop(job.receipt, None)

    async def fail(self, job: Job) -> None:
        self._claimed.pop(job.receipt, None)

    async def requeue(self, job: Job) -> None:
        entry = self._holder(job)
        if entry is None:
            return
        del self._claimed[entry.id]
        self._waiting.append(_Entry(str(next(self._ids)), entry.tenant_id, entry.run_id, prior=job.attempts))
        self._notify()

    async def depth(self) -> int:
        """Jobs waiting to be claimed (claimed ones, even with an expired claim, are not counted)."""
        return len(self._waiting)
