"""Runs whose worker is lost: ending them, and finding them when no job is left to bring them back.

Normally a lost worker's run comes back through its job (redelivered after the visibility timeout,
``Worker.execute``). When the queue lost the job too (Redis restarted empty) nothing would ever look
at the run again, so the liveness of a run is also kept where the run is: every worker writes, one
statement every visibility/3 s, ``seen_at`` = now (the store's clock) on all the runs it carries
(``RunBeat``). A sweeper ends a running run as lost only if

1. the store says nobody has marked it for ``2 x visibility`` (one clock, the store's), and
2. this sweeper then sees that same ``seen_at`` unchanged over ``visibility`` more seconds of its own
   consecutive successful sweeps (a failed sweep starts the watch over).

(2) is what keeps a store outage from ending healthy runs: while the store is away no worker can
mark anything, and after it comes back every live worker marks its runs within visibility/3 s, before
any watch can complete. A run on a live worker is ended only if its worker could not write one beat in
three visibility timeouts while the store answered - its job would have been redelivered and the run
ended as lost far sooner. Runs started before ``seen_at`` existed (NULL) are never taken.

Deciding is not ending: the worker the run was lost by may resume (SIGSTOP, a VM pause) between an ender's
watch and its end, and its fence (supervisor/chain/lease.py) lets a call go on once it holds the run again
(``RunStore.hold``: ``seen_at`` moved, only while the run is its). So every ender of another worker's run
first takes it over (``RunStore.take_over``: the run passes to the ender only if it is still the holder's,
with the very ``seen_at`` that was watched unchanged) and ends it only if that succeeded; else its worker
came back (or another ender has it), and the run is left alone. The store orders the two statements.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from supervisor.aio import cancel_and_wait
from supervisor.chain.approval import withdraw_run
from supervisor.events import RunEmitter, finish_run_anywhere
from supervisor.rmtree import remove_tree
from supervisor.stores.records import TERMINAL_STATUSES, Event, Run

__all__ = ["AbandonedRuns", "RunBeat", "end_lost", "holder_alive", "take_over"]

log = logging.getLogger("stockade.worker")


async def end_lost(services: Any, run: Run, message: str, emitter: RunEmitter | None = None) -> Event | None:
    """End a run as ``run.worker_lost``: its reservations released first (a client that sees the end sees
    it all), its approval requests off the approvers' list, then the terminal event - through the worker's
    emitter when it hosts the run, else straight to the store. ``finish_run`` is a compare-and-set: of two
    enders (a redelivery, a sweeper, another sweeper) one writes the event, the other gets None."""
    with contextlib.suppress(Exception):
        await services.ledger.release_run(run.tenant_id, run.id)
    await withdraw_run(services.approvals, run.tenant_id, run.id)
    data = {"code": "run.worker_lost", "message": message}
    fields = {"ended_at": time.time(), "error_code": "run.worker_lost", "error_message": message}
    if emitter is None or not emitter.answer_parts:  # not ended by the worker that streamed its answer:
        with contextlib.suppress(Exception):  # what it answered is its output, as that worker would have stored it
            fields["output"] = await services.runs.stored_answer(run.tenant_id, run.id,
                                                                 services.settings.sandbox_max_output_bytes)
    if emitter is not None:
        ended = await emitter.finish("failed", data, **fields)
    else:
        ended = await finish_run_anywhere(services.runs, services.events, run.tenant_id, run.id, "failed", data,
                                          **fields)
    if ended is not None:  # the operator's one line of it (the run's stream says it to the tenant)
        log.warning("run %s (tenant %s) ended run.worker_lost: %s (worker %s)", run.id, run.tenant_id, message,
                    run.worker_id or "none")
    await _remove_run_dir(services, run.id)
    return ended


async def holder_alive(services: Any, run: Run, job: Any) -> tuple[bool, float | None]:
    """A redelivered job of a run another worker started. Its lease lapsed, which does not prove the run's
    worker dead: a stalled event loop or a slow queue makes a heartbeat late while that worker still runs
    the run and still marks it seen (``RunBeat``, every visibility/3 s). So the run's ``seen_at`` is watched
    for one visibility timeout, the delivery kept meanwhile (a third node must not get it): marked again, or
    ended -> its worker lives ((True, None); should it die later, the sweepers below end the run); unchanged
    -> that worker is lost ((False, the seen_at watched): the value to take the run over with, ``take_over``)."""
    first = await services.runs.last_seen(run.id)
    if first is None:  # never seen (started before seen_at), or over already (the takeover then fails)
        return False, None
    visibility = services.settings.queue_visibility_s
    loop = asyncio.get_running_loop()
    deadline = loop.time() + visibility
    while (left := deadline - loop.time()) > 0:
        await asyncio.sleep(min(visibility / 6, left))
        with contextlib.suppress(Exception):
            await services.queue.extend(job)
        if await services.runs.last_seen(run.id) != first:
            return True, None
    return False, first


async def take_over(services: Any, run: Run, seen_at: float | None, by: str) -> bool:
    """Before ending another worker's run found lost: the run passes to ``by`` only if its holder has not
    marked it since ``seen_at`` was watched (``RunStore.take_over``). False: that worker came back (its fence
    holds the run again) or another ender took it; the run is not to be ended here.

    An ender whose own id is the holder's (a worker restarted under the same STOCKADE_WORKER_ID, or one that
    took over the id claim of a worker frozen past it, which then resumes) takes the run under another name:
    taken under the holder's own id the run would stay "its", and its old holder's fence would hold it again
    while it is being ended (the store refuses such a takeover)."""
    if await services.runs.take_over(run.id, run.worker_id, seen_at, _taker(by, run.worker_id)):
        return True
    now = None
    with contextlib.suppress(Exception):  # for the log line only
        now = await services.runs.get_run_any_tenant(run.id)
    if now is None or now.status in TERMINAL_STATUSES:
        log.info("run %s: found lost, but it has ended meanwhile; nothing left to end", run.id)
    elif now.worker_id != run.worker_id:
        log.warning("run %s: found lost, but %s took it over first; it is left to that one", run.id, now.worker_id)
    else:
        log.warning("run %s: found lost, but its worker (%s) marked it again before %s could take it over (it "
                    "came back); the run is left to it", run.id, run.worker_id or "none", by)
    return False


def _taker(by: str, holder: str | None) -> str:
    """The name ``by`` takes a run over under: its own id, unless that is the holder's, or the holder is one of
    its own takeover names (an ender of ours that crashed before ending it): the run must not become the frozen
    worker's again. Never equal to ``holder`` (the store refuses that)."""
    if by != holder and not (holder or "").startswith(f"{by} (takeover"):
        return by
    name = f"{by} (takeover)"
    return name if name != holder else f"{by} (takeover 2)"


async def _remove_run_dir(services: Any, run_id: str) -> None:
    """A lost worker leaves its run's directory (the bundle's work files: tenant data) on the data volume
    every node shares; nothing else would ever remove it. The run is over, so whoever ends it removes it
    (a no-op when its own worker already did, on shutdown)."""
    settings = getattr(services, "settings", None)
    data_dir = getattr(settings, "data_dir", None)
    if data_dir is None or not run_id or "/" in run_id or run_id.startswith("."):
        return
    await asyncio.to_thread(remove_tree, Path(data_dir) / "runs" / run_id)


class RunBeat:
    """Worker side: one store write every visibility/3 s marks every run this worker carries as seen (only
    while it is still this worker's: one taken over by another worker is not marked any more)."""

    def __init__(self, runs: Any, settings: Any, worker_id: str) -> None:
        self._runs = runs  # RunStore (beat_runs)
        self._settings = settings
        self.worker_id = worker_id
        self._carried: set[str] = set()
        self._task: asyncio.Task[None] | None = None

    def carry(self, run_id: str) -> None:
        self._carried.add(run_id)
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._beat())

    def drop(self, run_id: str) -> None:
        self._carried.discard(run_id)

    async def _beat(self) -> None:
        every = max(0.05, self._settings.queue_visibility_s / 3)  # as the job's own heartbeat
        while self._carried:
            await asyncio.sleep(every)
            if not self._carried:
                break
            try:
                await self._runs.beat_runs(sorted(self._carried), self.worker_id)
            except Exception as exc:  # the store is away: the sweepers' watch starts over when it is back
                log.debug("run beat skipped: %s", exc)

    async def close(self) -> None:
        self._carried.clear()
        if self._task is not None:
            await cancel_and_wait(self._task)


class AbandonedRuns:
    """Sweeper side: which running runs no worker carries any more (rules in the module docstring)."""

    def __init__(self, runs: Any, visibility_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._runs = runs  # RunStore (quiet_runs)
        self.quiet_s = 2 * float(visibility_s)
        self.confirm_s = float(visibility_s)
        self._clock = clock
        # run id -> (seen_at found quiet, its carrier then, since when, on our clock)
        self._watch: dict[str, tuple[float, str | None, float]] = {}

    def forget(self) -> None:
        """A sweep failed: what was watched may have been marked meanwhile without our seeing it."""
        self._watch.clear()

    async def confirmed(self) -> list[tuple[Run, float]]:
        """The runs found abandoned, each with the ``seen_at`` watched unchanged (to take it over with)."""
        try:
            quiet = await self._runs.quiet_runs(self.quiet_s)
        except Exception:
            self.forget()
            raise
        now = self._clock()
        watch: dict[str, tuple[float, str | None, float]] = {}
        gone: list[tuple[Run, float]] = []
        for run, seen_at in quiet:
            seen = self._watch.get(run.id)
            # newly quiet, marked since, or taken over since by another ender (a takeover leaves seen_at as it
            # was): (re)start its watch - a run another ender has just taken over is that ender's to end
            if seen is None or seen[0] != seen_at or seen[1] != run.worker_id:
                seen = (seen_at, run.worker_id, now)
            watch[run.id] = seen  # a run marked since (fresh again) or ended drops out of the watch here
            if now - seen[2] >= self.confirm_s:
                gone.append((run, seen_at))
        self._watch = watch
        return gone
