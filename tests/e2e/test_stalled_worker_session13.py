"""A worker process frozen for a moment past the visibility timeout keeps its run (session 13).

Two `stockade worker` processes on one PostgreSQL database and one Redis prefix, as compose runs them.
The one carrying a run is frozen (SIGSTOP: a VM pause, a long GC, a starved host) until its run's job
has been handed to the other worker, then thawed. Before: the other worker took any redelivered job of
a started run for a dead worker's and ended the live run ``run.worker_lost``. Now it first watches the
run for one visibility timeout; the thawed worker marks it, and the run completes there, main() entered
once. (Frozen for good, the run is ended as lost: test_attack_multiprocess_session9.py.)
"""

from __future__ import annotations

import asyncio
import os
import signal

import pytest
import redis.asyncio as aioredis

from tests.e2e.harness import collect
from tests.e2e.multiproc import audit_verify, deployment, entries, post, wait_for_event
from tests.e2e.test_run_pipeline import check_stream

pytestmark = pytest.mark.parametrize("stack_kind", ["production"])


@pytest.fixture
def pg_url(fresh_pg_url):
    """A database of its own: the workers' sweepers act on every run of the database."""
    return fresh_pg_url


async def _holder(r: aioredis.Redis, key: str, run_id: str) -> str | None:
    """The worker (stream consumer) that holds the run's job now."""
    for entry in await r.xpending_range(key, "workers", min="-", max="+", count=100):
        fields = await r.xrange(key, entry["message_id"], entry["message_id"])
        if fields and fields[0][1].get(b"r") == run_id.encode():
            return entry["consumer"].decode()
    return None


@pytest.mark.timeout(120)
async def test_a_worker_frozen_for_a_moment_past_the_visibility_timeout_keeps_its_run(node_config, stack_kind):
    settings = node_config.model_copy(update={"queue_visibility_s": 3.0})
    async with deployment(settings) as d:
        ca, cb = d.a.client(d.key), d.b.client(d.key)
        await d.both_claiming(ca)
        run = await post(ca, {"calls": [{"tool": "echo", "args": {"n": 1}}], "sleep": 8})
        await asyncio.wait_for(wait_for_event(cb, run["id"], "custom", "entered"), 30)
        frozen = await d.carrier(run["id"])
        other = next(w for w in d.workers if w is not frozen)
        r = aioredis.from_url(settings.redis_url)
        key = settings.redis_prefix + "q:runs"
        os.kill(frozen.pid, signal.SIGSTOP)  # the worker alone: its sandbox goes on
        try:
            runs = d.a.rt.services.runs
            for _ in range(400):  # the job lapses (3 s) and the other worker claims it (before: and ends the run)
                if await _holder(r, key, run["id"]) == d.worker_id(other):
                    break
                if (await runs.get_run_any_tenant(run["id"])).status != "running":
                    break
                await asyncio.sleep(0.05)
            else:
                raise AssertionError("the frozen worker's job was never handed to the other worker")
        finally:
            os.kill(frozen.pid, signal.SIGCONT)
            await r.aclose()
        events = await asyncio.wait_for(collect(cb, run["id"]), 40)
        check_stream(events)
        assert events[-1].event == "run.completed", events[-1]
        assert entries(events) == 1
        assert (await d.a.rt.services.runs.get_run_any_tenant(run["id"])).worker_id == d.worker_id(frozen)
        assert all(w.poll() is None for w in d.workers)
    await audit_verify(settings)

