"""The fence: a worker that lost its run (stalled, SIGSTOPped) runs none of its calls any more.

A worker carries a run on a queue lease (``queue_visibility_s``, kept by ``Worker._heartbeat``). Frozen
past it, its job goes to another worker, which may end the run ``run.worker_lost`` (supervisor/runs/lost.py).
On resume, a call of the run that was in flight would go on through the chain and act for a run already
ended. ``RunLease`` keeps, per run, the monotonic time of the last queue extend (or claim) that succeeded
while the lease was still held; CLOCK_MONOTONIC runs on through SIGSTOP, so after a freeze the lease reads
stale. ``LeaseFence`` checks it right before each side effect of a call (the audit gate's ``tool.allowed``
record, the tool's run): fresh -> on, with no I/O; stale -> the run is held again in the store
(``RunStore.hold``, one statement: ``seen_at`` moved only while the run is still running and this worker's):
ended, or carried by another worker -> ``run.ended`` (nothing recorded as allowed, nothing run); still ours ->
on (a late but alive worker keeps its run, as ``holder_alive`` decides), and the lease renewed.

The store orders that hold against another worker's decision to end the run: an ender first takes the run over
(``RunStore.take_over``: the run passes to it only if its ``seen_at`` is still the value it watched unchanged),
and ends it only if that succeeded. Hold first -> the takeover fails and the run stays ours; takeover first ->
the hold fails and the call is refused. Not covered: a freeze longer than the lease between a successful hold
(or a fresh check) and the side effect, and a freeze inside a running tool.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from supervisor.chain.base import CallState, Next
from supervisor.errors import StockadeError
from supervisor.stores.records import TERMINAL_STATUSES

__all__ = ["LEASE", "LeaseFence", "RunLease"]

log = logging.getLogger("stockade.worker")
LEASE = "lease"  # CallState.extra key: the run's RunLease, put there by the run session (not audited)


class RunLease:
    """One worker's hold on one run it carries. Fresh while ``now - last_ok < ttl_s``.

    ``ttl_s`` is two thirds of the visibility timeout (margin: one heartbeat period, visibility/3). A
    healthy worker extends every visibility/3, so its lease never reads stale (the hot path never reads
    the store); no other worker can end the run before it has seen a full visibility timeout of silence
    (its job redelivered; then ``holder_alive`` watches one more), so the last third is what is left for
    the time from a check to the side effect it guards (an audit write, the tool starting)."""

    def __init__(self, runs: Any, run_id: str, worker_id: str, visibility_s: float,
                 extend: Callable[[], Awaitable[Any]], clock: Callable[[], float] = time.monotonic) -> None:
        self._runs = runs  # RunStore (hold, get_run_any_tenant)
        self.run_id = run_id
        self.worker_id = worker_id
        self.ttl_s = float(visibility_s) * 2 / 3
        self._extend = extend  # the queue extend of the run's job as this worker holds it now
        self._clock = clock
        self.last_ok = clock()  # the claim (made just before the lease is)
        self.lost: str | None = None  # why the run is no longer ours, once a read said so (no more reads)

    def fresh(self, now: float | None = None) -> bool:
        return self.lost is None and (self._clock() if now is None else now) - self.last_ok < self.ttl_s

    async def confirm(self) -> None:
        """The run held again in the store (``RunStore.hold``: marked seen now, only while it is still running
        and this worker's): ``run.ended`` if it is over or another worker carries (or took over) it. A hold
        that succeeds moves ``seen_at``, so no ender that watched it before can take the run over any more."""
        if self.lost is None and not await self._runs.hold(self.run_id, self.worker_id):
            run = await self._runs.get_run_any_tenant(self.run_id)  # why not: for the message only
            if run is None or run.status in TERMINAL_STATUSES:
                self.lost = "the run has already ended"
            else:
                self.lost = "the run is carried by another worker"
        if self.lost is not None:
            raise StockadeError("run.ended", f"{self.lost}: this worker stalled past its lease, and its call "
                                             "was not run")

    async def renew(self) -> None:
        """An extend of the run's job (the heartbeat's, or a stale fence's). An extend counts only if the lease
        was fresh when it was sent: after a freeze the job may be another worker's already (an extend of a
        lapsed receipt changes nothing and fails nothing), so the run is read first (``confirm``)."""
        sent = self._clock()
        if not self.fresh(sent):
            await self.confirm()
        try:
            await self._extend()
        except Exception as exc:  # the queue is away: the lease stays as it was (stale calls read the run)
            log.debug("run %s: lease extend failed: %s", self.run_id, exc)
            return
        self.last_ok = max(self.last_ok, sent)


class LeaseFence:
    """Before a side effect of a call: its run's lease fresh, or the run still this worker's (else ``run.ended``)."""

    async def __call__(self, call: CallState, next: Next) -> dict[str, Any]:
        lease = call.extra.get(LEASE)
        if lease is not None and not lease.fresh():
            try:
                await lease.renew()
            except StockadeError as exc:
                if exc.code == "run.ended":
                    call.outcome = "tool.canceled"  # as every call of an ended run is audited (run.ended)
                raise
        return await next(call)
