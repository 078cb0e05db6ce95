"""In-process live tail of run events (the embedded default, one process).

Each run has a bounded log (``max_per_run`` newest events); every tailer of the
run keeps its own cursor into it and is woken once per publish, however many
events it then drains. A tailer that falls more than ``max_per_run`` events
behind skips the trimmed ones: callers see the gap in ``seq`` and fill it from
the RunStore, which holds every event.

Logs of ended runs are kept ``retain_s`` for late tailers, then dropped; at
most ``max_runs`` logs are held (the least recently published without tailers
go first). A tail of a run whose log was dropped waits for new events: callers
read the RunStore first and tail only runs that have not ended, so a late tailer
is one that raced the run's end by a few milliseconds; a minute covers it. Kept
ten minutes, ten minutes of every run's output stayed in memory (a run that emits
up to the default 8 MiB output cap holds ~8 MB: 48 of them in a minute took a
node from 270 to 570 MB); now a minute's worth does. The drop runs on a timer as
well as on publish: done only on publish, a server that went quiet kept its last
runs' logs for as long as it stayed quiet.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import AsyncIterator

from supervisor.errors import StockadeError
from supervisor.stores.memory._runlog import RunLog, follow
from supervisor.stores.records import Event

__all__ = ["MemoryEventBus"]


class MemoryEventBus:
    def __init__(self, max_per_run: int = 10_000, *, retain_s: float = 60.0, max_runs: int = 10_000) -> None:
        if max_per_run < 1 or max_runs < 1:
            raise ValueError("max_per_run and max_runs must be >= 1")
        self._max_per_run = max_per_run
        self._retain_s = retain_s
        self._max_runs = max_runs
        self._logs: OrderedDict[str, RunLog] = OrderedDict()  # least recently published first
        self._ended: OrderedDict[str, float] = OrderedDict()  # run -> monotonic time it ended
        self._timer: asyncio.TimerHandle | None = None  # the next drop of ended logs, while any is kept
        self._closed = False

    async def publish(self, event: Event) -> None:
        log = self._logs.get(event.run_id)
        if log is None:
            log = self._logs[event.run_id] = RunLog(self._max_per_run)
        else:
            self._logs.move_to_end(event.run_id)
        was_ended = log.ended
        log.add((event,))
        if log.ended and not was_ended:
            self._ended[event.run_id] = time.monotonic()
        self._evict()
        self._arm()

    def tail(self, run_id: str, after: int) -> AsyncIterator[Event]:
        return self._tail(run_id, after)

    async def _tail(self, run_id: str, after: int) -> AsyncIterator[Event]:
        async for batch in self.tail_batches(run_id, after):
            for event in batch:
                yield event

    async def tail_batches(self, run_id: str, after: int, idle_s: float | None = None) -> AsyncIterator[list[Event]]:
        """Like ``tail`` but yields every pending event at once (and ``[]`` after ``idle_s`` idle)."""
        if self._closed:
            raise StockadeError("store.unavailable", "The live event stream is closed.")
        log = self._logs.get(run_id)
        if log is None:
            log = self._logs[run_id] = RunLog(self._max_per_run)
        log.subscribers += 1
        try:
            async for batch in follow(log, after, idle_s):
                yield batch
        finally:
            log.subscribers -= 1
            if log.subscribers == 0 and self._logs.get(run_id) is log:
                # Nobody published and nobody waits, or the run ended past its retention: forget it.
                if not log.events or (log.ended and run_id not in self._ended):
                    del self._logs[run_id]

    async def close(self) -> None:
        """Ends every tail quietly; later tails raise ``store.unavailable``."""
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for log in self._logs.values():
            log.close()
        self._logs.clear()
        self._ended.clear()

    def _arm(self) -> None:
        """A timer for the oldest ended log still kept (one timer, however many runs ended)."""
        if self._timer is not None or not self._ended or self._closed:
            return
        ended_at = next(iter(self._ended.values()))
        # a floor: a loop clock a hair behind this one must not re-arm it over and over at zero delay
        delay = max(0.01, ended_at + self._retain_s - time.monotonic())
        self._timer = asyncio.get_running_loop().call_later(delay, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._evict()
        self._arm()

    def _evict(self) -> None:
        now = time.monotonic()
        while self._ended:
            run_id, ended_at = next(iter(self._ended.items()))
            if now - ended_at < self._retain_s:
                break
            del self._ended[run_id]
            log = self._logs.get(run_id)
            if log is not None and log.subscribers == 0:
                del self._logs[run_id]
        excess = len(self._logs) - self._max_runs
        if excess > 0:
            idle = []
            for run_id, lg in self._logs.items():
                if lg.subscribers == 0:
                    idle.append(run_id)
                    if len(idle) == excess:
                        break
            for run_id in idle:
                del self._logs[run_id]
                self._ended.pop(run_id, None)
