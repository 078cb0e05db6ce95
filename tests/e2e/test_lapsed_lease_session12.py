"""A run whose job lease lapses on the worker that runs it goes on (session 12), both stacks.

Found under load (the e2e suite with two CPU-burning processes beside it): with a 1 s visibility timeout,
a worker's heartbeat came late, the queue handed the run's job out again - to the very worker running it -
and that worker took the delivery for a lost worker's and ended its own live run ``run.worker_lost``. Now
a worker recognises a job it already holds: it adopts the new delivery, the run goes on, and the job is
acked once when the run ends. A second job for a run it carries (queued again by ``requeue_orphans``) is
dropped instead of racing the first for the start.
"""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path

import pytest

from tests.e2e.harness import collect

TICKER = Path(__file__).resolve().parent / "bundles" / "ticker"
pytestmark = [pytest.mark.timeout(60), pytest.mark.node_settings(queue_visibility_s=1.0)]


async def test_a_run_whose_heartbeat_lapses_goes_on(node, caplog):
    tid, key = await node.tenant()
    await node.rt.registry.register_dir(TICKER, tid)
    queue = node.rt.services.queue
    late = []

    async def too_late(job):  # every heartbeat misses the visibility timeout (a stalled loop, a slow queue)
        late.append(job.attempts)

    queue.extend = too_late
    c = node.client(key)
    with caplog.at_level(logging.WARNING, logger="stockade.worker"):
        r = await c.post("/v1/runs", json={"bundle": "ticker", "input": json.dumps({"wait": 3.5, "n": 2})})
        assert r.status_code in (200, 201), r.text
        events = await collect(c, r.json()["id"])
    assert events[-1].event == "run.completed", events[-1]
    assert "its job came back while this worker runs it" in caplog.text  # the lease did lapse, more than once
    assert len(set(late)) >= 2, late  # the heartbeat went on with each delivery it adopted
    assert not any("worker_lost" in e.event or e.data.get("code") == "run.worker_lost" for e in events)
    # acked once at the end: no delivery of it is left to come back
    await asyncio.sleep(1.3)
    assert await queue.claim("probe", timeout_s=0) is None
    assert await queue.depth() == 0


async def test_a_second_job_for_a_run_this_worker_carries_is_dropped(node):
    tid, key = await node.tenant()
    await node.rt.registry.register_dir(TICKER, tid)
    queue = node.rt.services.queue
    c = node.client(key)
    r = await c.post("/v1/runs", json={"bundle": "ticker", "input": json.dumps({"wait": 1.5, "n": 1})})
    run_id = r.json()["id"]
    for _ in range(200):  # until the worker carries it (claimed; started or about to)
        if run_id in node.rt.worker.beats._carried:
            break
        await asyncio.sleep(0.01)
    await queue.enqueue(tid, run_id)  # what requeue_orphans does when it finds no job for a queued run
    events = await collect(c, run_id)
    assert events[-1].event == "run.completed" and [e.event for e in events].count("run.started") == 1, events
    await asyncio.sleep(1.3)
    assert await queue.claim("probe", timeout_s=0) is None
