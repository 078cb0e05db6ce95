"""Closing a background task must not swallow a cancel of the closer itself.

The idiom these close paths used, ``task.cancel(); with suppress(CancelledError): await task``,
cannot tell the task's end from the caller's own cancel landing during the wait, and swallowed
both: a worker shutting down while it closed its run beat or cancel watch went on as if never
canceled. Each attack below is run against that idiom too, to show it loses the cancel.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from types import SimpleNamespace

import pytest

from supervisor.aio import cancel_and_wait
from supervisor.runs.cancel_watch import CancelWatch
from supervisor.runs.lost import RunBeat

pytestmark = pytest.mark.timeout(30)


class _SlowToStop:
    """A task body that, once canceled, takes until ``gate`` opens to end (a clean-up await)."""

    def __init__(self) -> None:
        self.started = asyncio.Event()
        self.stopping = asyncio.Event()
        self.gate = asyncio.Event()

    async def body(self, *_: object) -> None:
        self.started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.stopping.set()
            await self.gate.wait()
            raise


async def _old_idiom(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def _cancel_the_closer(close, slow: _SlowToStop) -> asyncio.Task[None]:
    """Run ``close()`` in a task, cancel that task while it waits for the slow task, then let the slow
    task end. Returns the closer's task, done."""
    closer = asyncio.create_task(close())
    await slow.stopping.wait()  # the closer canceled the task and waits for it
    closer.cancel()
    await asyncio.sleep(0)
    slow.gate.set()
    await asyncio.wait({closer})
    return closer


@pytest.mark.parametrize("impl", ["cancel_and_wait", "old idiom"])
async def test_a_canceled_closer_stays_canceled(impl: str) -> None:
    slow = _SlowToStop()
    task = asyncio.create_task(slow.body())
    await slow.started.wait()
    close = (lambda: cancel_and_wait(task)) if impl == "cancel_and_wait" else (lambda: _old_idiom(task))
    closer = await _cancel_the_closer(close, slow)
    assert task.cancelled()
    if impl == "old idiom":
        assert not closer.cancelled(), "the old idiom was expected to swallow the closer's cancel"
    else:
        assert closer.cancelled()


async def test_a_task_that_ended_badly_is_logged_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    async def boom() -> None:
        try:
            await asyncio.Event().wait()
        finally:
            raise ValueError("clean-up failed")

    task = asyncio.create_task(boom())
    await asyncio.sleep(0)
    with caplog.at_level(logging.WARNING, logger="stockade.tasks"):
        await cancel_and_wait(task, None)
    assert "ValueError: clean-up failed" in caplog.text
    await cancel_and_wait()  # nothing to stop: returns
    await cancel_and_wait(task)  # already ended: returns (logged again, raised never)


async def test_a_normal_close_still_returns() -> None:
    slow = _SlowToStop()
    task = asyncio.create_task(slow.body())
    await slow.started.wait()
    slow.gate.set()
    await asyncio.wait_for(cancel_and_wait(task), 5)
    assert task.cancelled()


async def test_run_beat_close_keeps_the_closers_cancel() -> None:
    slow = _SlowToStop()
    beat = RunBeat(SimpleNamespace(beat_runs=slow.body), SimpleNamespace(queue_visibility_s=0.15), "w1")
    beat.carry("run_1")
    await slow.started.wait()  # the beat is inside its store write
    closer = await _cancel_the_closer(beat.close, slow)
    assert closer.cancelled()


async def test_cancel_watch_close_keeps_the_closers_cancel() -> None:
    slow = _SlowToStop()
    watch = CancelWatch(SimpleNamespace(ended_among=slow.body), interval=0.01)
    watch.watch("run_1")
    await slow.started.wait()  # the poll is inside its store query
    closer = await _cancel_the_closer(watch.close, slow)
    assert closer.cancelled()
