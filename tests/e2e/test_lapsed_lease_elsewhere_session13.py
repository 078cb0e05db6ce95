"""A run whose job lease lapses goes on when the job is redelivered to *another* node (session 13).

Session 12 fixed the case of a late heartbeat whose job came back to the very worker running the run.
With two nodes the job can go to the other one instead, which took any redelivery of a started run for
a lost worker's and ended the live run ``run.worker_lost``. Now that node first watches the run's
``seen_at`` (marked by its worker every visibility/3 s) for one visibility timeout: marked again, the
worker lives, and the job is dropped; the run goes on there. Should that worker die afterwards, nothing
redelivers a job any more, and the sweepers end the run (``runs/lost.py``).

Production stack only: the embedded queue lives in one process, so a job never reaches another node.
"""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path

import pytest

from tests.e2e.harness import collect, start_node

TICKER = Path(__file__).resolve().parent / "bundles" / "ticker"
pytestmark = [pytest.mark.timeout(90)]


@pytest.mark.parametrize("stack_kind", ["production"])
@pytest.mark.parametrize("then", ["lives", "dies"])
@pytest.mark.parametrize("b_id", ["node-b", "node-a"], ids=["own-id", "same-id"])
async def test_a_job_redelivered_to_another_node_while_its_worker_lives(node_config, stack_kind, then, b_id, caplog):
    """same-id (found by a walkthrough): two workers given one STOCKADE_WORKER_ID (a scaled compose service).
    The node that got the job took the run for one it had started itself and lost, and ended it at once as
    run.worker_lost while the other worker ran it; it now watches the run as for any other worker's. Since
    session 24 the second worker claims an id of its own (node-a~2: stores/redis/worker_ids.py)."""
    settings = node_config.model_copy(update={"queue_visibility_s": 1.0})
    # one slot: once it runs the run, this node claims nothing more, so the job's redelivery goes to the other
    a = await start_node(settings.model_copy(update={"worker_concurrency": 1, "worker_id": "node-a"}))
    b = None
    try:
        tid, key = await a.tenant()
        await a.rt.registry.register_dir(TICKER, tid)
        late: list[int] = []

        async def too_late(job):  # every heartbeat of node a misses the visibility timeout (a stalled loop)
            late.append(job.attempts)

        a.rt.services.queue.extend = too_late
        c = a.client(key)
        wait = 3.5 if then == "lives" else 60
        r = await c.post("/v1/runs", json={"bundle": "ticker", "input": json.dumps({"wait": wait, "n": 2})})
        assert r.status_code in (200, 201), r.text
        run_id = r.json()["id"]
        for _ in range(500):
            if run_id in a.rt.worker.beats._carried:
                break
            await asyncio.sleep(0.01)
        assert run_id in a.rt.worker.beats._carried
        b = await start_node(settings.model_copy(update={"worker_id": b_id}), api=False, workers=True)
        assert b.rt.worker.worker_id == ("node-b" if b_id == "node-b" else "node-a~2")
        dropped = asyncio.Event()
        ack = b.rt.services.queue.ack

        async def acked(job):
            await ack(job)
            if job.run_id == run_id:
                dropped.set()

        b.rt.services.queue.ack = acked
        with caplog.at_level(logging.WARNING, logger="stockade.worker"):
            await asyncio.wait_for(dropped.wait(), 20)
            assert "its worker (" in caplog.text and "still carries it" in caplog.text, caplog.text
            if then == "dies":  # node a stops marking its runs (as a dead node would): the sweepers end the run
                async def no_beat(run_ids, worker_id):
                    return None

                a.rt.services.runs.beat_runs = no_beat
            events = await asyncio.wait_for(collect(c, run_id), 40)
        if then == "lives":
            assert events[-1].event == "run.completed", events[-1]
            assert not any(e.data.get("code") == "run.worker_lost" for e in events), events
            assert await b.rt.services.queue.depth() == 0  # acked by the node that got it; nothing comes back
        else:
            assert events[-1].event == "run.failed" and events[-1].data["code"] == "run.worker_lost", events[-1]
            # the operator hears of it too (a walkthrough found no log line of a run ended as lost)
            line = f"run {run_id} (tenant {tid}) ended run.worker_lost"
            for _ in range(200):  # the stream may show the end (read from the store) before its ender logs it
                if line in caplog.text:
                    break
                await asyncio.sleep(0.025)
            assert line in caplog.text, caplog.text
        assert [e.event for e in events].count("run.started") == 1
    finally:
        if b is not None:
            await b.stop()
        await a.stop()


@pytest.mark.parametrize("stack_kind", ["production"])
async def test_judging_a_redelivered_job_holds_no_run_slot(node_config, stack_kind):
    """Node b (one run slot) watches a redelivered job of node a's run for its visibility timeout (3 s): a
    node that stalls can hand the others many such jobs at once, and watching them in run slots would stop
    those nodes running anything meanwhile. A run posted while the watch goes on runs on b at once; node a,
    which stopped marking its run, then has it ended as lost by b's watch."""
    settings = node_config.model_copy(update={"queue_visibility_s": 1.0, "sweep_interval_s": 600.0})
    a = await start_node(settings.model_copy(update={"worker_concurrency": 1, "worker_id": "node-a"}))
    b = None
    try:
        tid, key = await a.tenant()
        await a.rt.registry.register_dir(TICKER, tid)

        async def too_late(job):
            return None

        async def no_beat(run_ids, worker_id):  # node a is as good as dead: no heartbeat, no mark
            return None

        a.rt.services.queue.extend = too_late
        a.rt.services.runs.beat_runs = no_beat
        c = a.client(key)
        r = await c.post("/v1/runs", json={"bundle": "ticker", "input": json.dumps({"wait": 60, "n": 1})})
        stuck = r.json()["id"]
        for _ in range(500):
            if stuck in a.rt.worker.beats._carried:
                break
            await asyncio.sleep(0.01)
        b = await start_node(settings.model_copy(update={"worker_id": "node-b", "worker_concurrency": 1,
                                                         "queue_visibility_s": 3.0}), api=False, workers=True)
        watching = asyncio.Event()
        last_seen = b.rt.services.runs.last_seen

        async def seen(run_id):
            if run_id == stuck:
                watching.set()
            return await last_seen(run_id)

        b.rt.services.runs.last_seen = seen
        await asyncio.wait_for(watching.wait(), 20)
        r = await c.post("/v1/runs", json={"bundle": "ticker", "input": json.dumps({"n": 2})})
        other = r.json()["id"]
        events = await asyncio.wait_for(collect(c, other), 20)
        assert events[-1].event == "run.completed", events[-1]
        assert (await a.rt.services.runs.get_run_any_tenant(other)).worker_id == "node-b"
        assert (await a.rt.services.runs.get_run_any_tenant(stuck)).status == "running"  # still being judged
        events = await asyncio.wait_for(collect(c, stuck), 20)
        assert events[-1].event == "run.failed" and events[-1].data["code"] == "run.worker_lost", events[-1]
    finally:
        if b is not None:
            await b.stop()
        await a.stop()
