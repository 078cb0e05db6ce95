"""A production deployment as compose runs it: two API nodes and two separate `stockade worker` OS
processes on one PostgreSQL database and one Redis prefix. Every run is executed exactly once (its
bundle marks each entry into main() with an event), cancels and approval decisions posted to either
API reach the worker process carrying the run, streams are gap-free from either API, a worker killed
or stopped mid-run loses its run once and gives back what it held, and the audit chain verifies."""

from __future__ import annotations

import asyncio
import json
import os
import signal

import pytest

from tests.e2e.harness import collect, read_sse, start_node, worker_process
from tests.e2e.multiproc import (
    SLOW_CALL,
    alive,
    audit_verify,
    deployment,
    descendants,
    entries,
    post,
    reap,
    reserved,
    resume,
    wait_for_event,
    warm_worker_process,
)
from tests.e2e.test_run_pipeline import TEST_BUNDLES, check_stream

pytestmark = pytest.mark.parametrize("stack_kind", ["production"])


@pytest.fixture
def pg_url(fresh_pg_url):
    """A database of its own: the workers' sweepers act on every run of the database."""
    return fresh_pg_url


@pytest.mark.timeout(90)
async def test_many_runs_on_two_worker_processes_each_run_once_streamed_from_either_api(node_config, stack_kind):
    """Sixteen runs posted at once through two APIs, two worker processes racing for their jobs: each
    main() is entered exactly once, each stream (from either API) is gap-free with one terminal event,
    a replay after N from the other API is the rest; the same Idempotency-Key posted to both APIs at
    once makes one run; the audit chain verifies."""
    settings = node_config.model_copy(update={"queue_visibility_s": 3.0})
    async with deployment(settings) as d:
        ca, cb = d.a.client(d.key), d.b.client(d.key)
        probes = await d.both_claiming(ca)
        plans = [{"calls": [{"tool": "echo", "args": {"n": i % 10}}], "sleep": 0.3} for i in range(16)]
        runs = await asyncio.gather(*(post(ca if i % 2 else cb, p) for i, p in enumerate(plans)))
        same = await asyncio.gather(*(post(c, {"sleep": 0}, **{"Idempotency-Key": "once"}) for c in (ca, cb, ca, cb)))
        assert len({r["id"] for r in same}) == 1, same
        clash = await asyncio.gather(*(c.post("/v1/runs", json={"bundle": "marker", "input": text},
                                               headers={"Idempotency-Key": "clash"})
                                       for c, text in ((ca, "{}"), (cb, '{"sleep": 0}'))))
        assert sorted(r.status_code for r in clash)[0] == 201, [r.text for r in clash]
        assert [r.json().get("code") for r in clash if r.status_code != 201] == ["idempotency.mismatch"], [r.text for r in clash]
        same.append([r.json() for r in clash if r.status_code == 201][0])
        ids = [r["id"] for r in runs] + [same[0]["id"], same[-1]["id"]]
        streams = await asyncio.wait_for(asyncio.gather(*(collect(ca if i % 2 else cb, rid) for i, rid in enumerate(ids))), 60)
        for rid, events in zip(ids, streams, strict=True):
            check_stream(events)
            assert events[-1].event == "run.completed", (rid, "\n".join(repr((e.event, e.data)) for e in events))
            assert entries(events) == 1, (rid, [e.event for e in events])
        carriers = {(await d.a.rt.services.runs.get_run_any_tenant(rid)).worker_id for rid in ids}
        assert carriers == {d.worker_id(w) for w in d.workers}, carriers  # both raced for the jobs
        listed = (await ca.get("/v1/runs", params={"limit": 200})).json()["data"]
        assert len(listed) == len(ids) + len(probes), len(listed)
        for n in (0, 2, len(streams[0]) - 1):
            again = await asyncio.wait_for(collect(cb if n % 2 else ca, ids[0], after=n), 10)
            assert [e.data for e in again] == [e.data for e in streams[0][n:]]
        assert await reserved(ca) == 0
        assert all(w.poll() is None for w in d.workers)
    await audit_verify(settings)


@pytest.mark.timeout(90)
async def test_cancel_and_approvals_through_either_api_reach_the_worker_process(node_config, stack_kind):
    """A cancel posted to the API that did not create the run ends it and its sandbox within ~1.5 s; an
    approval decided through the other API resumes the run waiting on a worker process, and a
    rejection raises approval.rejected inside it."""
    settings = node_config.model_copy(update={"queue_visibility_s": 3.0})
    async with deployment(settings) as d:
        ca, cb = d.a.client(d.key), d.b.client(d.key)
        victim = await post(ca, {"sleep": 60})
        await asyncio.wait_for(wait_for_event(ca, victim["id"], "custom", "entered"), 30)
        box = descendants((await d.carrier(victim["id"])).pid)
        assert box, "the sandbox runs below its worker process"
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        r = await cb.post(f"/v1/runs/{victim['id']}/cancel")
        assert r.status_code == 200 and r.json()["status"] == "canceled", r.text
        while alive(box) or (settings.data_dir / "runs" / victim["id"]).exists():
            assert loop.time() - t0 < 2.0, "the sandbox outlived the cancel"
            await asyncio.sleep(0.02)
        events = await asyncio.wait_for(collect(cb, victim["id"]), 10)
        check_stream(events)
        assert events[-1].event == "run.canceled" and entries(events) == 1

        approve = await post(ca, {"calls": [{"tool": "echo", "args": {"n": 50}}]})
        reject = await post(cb, {"calls": [{"tool": "echo", "args": {"n": 51}}]})
        for run, decision, c in ((approve, "approve", cb), (reject, "reject", ca)):
            asked = await asyncio.wait_for(wait_for_event(ca, run["id"], "approval.requested"), 30)
            r = await c.post(f"/v1/approvals/{asked.data['approval_id']}/decision", json={"decision": decision})
            assert r.status_code == 200, r.text
        for run, want in ((approve, {"ok": {"n": 50}}), (reject, {"error": "approval.rejected"})):
            events = await asyncio.wait_for(collect(cb, run["id"]), 30)
            check_stream(events)
            assert events[-1].event == "run.completed" and entries(events) == 1, events[-1]
            [results] = [e.data["data"] for e in events if e.event == "custom" and e.data["name"] == "results"]
            assert results == [want], results
        assert await reserved(ca) == 0
    await audit_verify(settings)


@pytest.mark.timeout(90)
async def test_sigkill_of_a_worker_process_mid_call_loses_its_run_once(node_config, stack_kind):
    """The worker carrying a run with a priced call in flight is SIGKILLed: its sandbox dies with it, the
    other worker process ends the run run.worker_lost after the visibility timeout (never runs it again),
    the reservation is released, and the surviving worker still runs new runs."""
    settings = node_config.model_copy(update={"queue_visibility_s": 1.0})
    async with deployment(settings) as d:
        ca, cb = d.a.client(d.key), d.b.client(d.key)
        run = await post(ca, {"calls": [SLOW_CALL]})
        await asyncio.wait_for(wait_for_event(cb, run["id"], "tool.call"), 30)
        loop = asyncio.get_running_loop()
        for _ in range(200):
            if await reserved(ca) > 0:
                break
            await asyncio.sleep(0.05)
        assert await reserved(ca) > 0
        dead = await d.carrier(run["id"])
        box = descendants(dead.pid)
        assert box, "the sandbox and its call run below the worker process"
        os.killpg(dead.pid, signal.SIGKILL)
        await asyncio.to_thread(dead.wait, 10)
        t0 = loop.time()
        events = await asyncio.wait_for(collect(cb, run["id"]), 30)
        took = loop.time() - t0
        check_stream(events)
        assert events[-1].event == "run.failed" and events[-1].data["code"] == "run.worker_lost", events[-1]
        assert entries(events) == 1
        assert took < 3 * settings.queue_visibility_s + 5, took
        assert await reserved(ca) == 0
        while alive(box):
            assert loop.time() - t0 < 10, "the dead worker's sandbox lives on"
            await asyncio.sleep(0.05)
        # what the dead worker left on the shared volume (the run's work files: tenant data) goes with the run
        while (settings.data_dir / "runs" / run["id"]).exists():  # removed right after the terminal event
            assert loop.time() - t0 < 10, "the lost run's directory stays on the shared volume"
            await asyncio.sleep(0.05)
        [survivor] = [w for w in d.workers if w is not dead]
        after = await post(cb, {"sleep": 0})
        events = await asyncio.wait_for(collect(ca, after["id"]), 30)
        assert events[-1].event == "run.completed" and entries(events) == 1
        assert (await d.carrier(after["id"])) is survivor
    await audit_verify(settings)


@pytest.mark.timeout(90)
async def test_sigterm_of_a_worker_process_ends_its_runs_and_the_other_takes_new_ones(node_config, stack_kind):
    """SIGTERM while the worker carries a run with a priced call in flight and maybe one waiting for a
    human: it exits 0 at once, its runs end run.worker_lost "shut down" (calls settled, reservation
    released, requests withdrawn: a late approval is refused); the other worker's runs go on, and new
    runs complete there, each once."""
    settings = node_config.model_copy(update={"queue_visibility_s": 3.0})
    async with deployment(settings) as d:
        ca, cb = d.a.client(d.key), d.b.client(d.key)
        run = await post(ca, {"calls": [SLOW_CALL]})
        waiting = await post(cb, {"calls": [{"tool": "echo", "args": {"n": 80}}]})
        await asyncio.wait_for(wait_for_event(cb, run["id"], "tool.call"), 30)
        asked = await asyncio.wait_for(wait_for_event(ca, waiting["id"], "approval.requested"), 30)
        stopping = await d.carrier(run["id"])
        on_stopping = (await d.carrier(waiting["id"])) is stopping
        stopping.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(stopping.wait, 20) == 0
        err = reap(stopping)
        assert "Task was destroyed" not in err and "Traceback" not in err, err
        events = await asyncio.wait_for(collect(ca, run["id"]), 10)
        check_stream(events)
        assert events[-1].event == "run.failed" and events[-1].data["code"] == "run.worker_lost", events[-1]
        assert "shut down" in events[-1].data["message"] and entries(events) == 1, events[-1]  # not a redelivery's
        r = await ca.post(f"/v1/approvals/{asked.data['approval_id']}/decision", json={"decision": "approve"})
        events = await asyncio.wait_for(collect(cb, waiting["id"]), 30)
        check_stream(events)
        if on_stopping:
            assert r.json()["code"] == "approval.expired", r.text
            assert events[-1].data["code"] == "run.worker_lost" and "shut down" in events[-1].data["message"]
        else:
            assert r.status_code == 200, r.text
            assert events[-1].event == "run.completed", events[-1]
        assert entries(events) == 1
        assert await reserved(ca) == 0
        later = await asyncio.gather(*(post(cb if i % 2 else ca, {"sleep": 0}) for i in range(6)))
        for r in later:
            events = await asyncio.wait_for(collect(cb, r["id"]), 30)
            check_stream(events)
            assert events[-1].event == "run.completed" and entries(events) == 1, (r["id"], events[-1])
    await audit_verify(settings)


@pytest.mark.timeout(90)
async def test_a_worker_stopping_before_its_claimed_run_started_hands_the_run_on(node_config, stack_kind):
    """A worker stops (SIGTERM: the node's tasks are canceled) after claiming a job but before the run
    started (no sandbox, no side effect, status still queued). The run is not lost: another worker
    process runs it, once. Was: ended run.failed / run.worker_lost "its worker shut down" - a rolling
    restart of the workers failed every run claimed in that window."""
    settings = node_config.model_copy(update={"queue_visibility_s": 2.0})
    async with deployment(settings) as d:
        for w in d.workers:  # only the stopping worker may claim the job first
            reap(w)
        d.workers.clear()
        stopping = await start_node(settings.model_copy(update={"worker_id": "stopping"}), api=False, workers=True)
        claimed, never = asyncio.Event(), asyncio.Event()
        real_get = stopping.rt.worker.registry.get

        async def held_get(*args, **kw):
            claimed.set()
            await never.wait()  # the stop comes here: claimed, not started
            return await real_get(*args, **kw)

        stopping.rt.worker.registry = type("Held", (), {"get": staticmethod(held_get)})()
        try:
            c = d.a.client(d.key)
            run = await post(c, {"sleep": 0})
            await asyncio.wait_for(claimed.wait(), 30)
        finally:  # as Node.stop, but the data dir is the deployment's: it stays
            stopping.server.should_exit = True
            await asyncio.wait_for(stopping.task, 10)
            await stopping.rt.stop()
        d.workers.append(worker_process(settings))
        events = await asyncio.wait_for(collect(c, run["id"]), 30)
        check_stream(events)
        assert events[-1].event == "run.completed", [(e.event, e.data) for e in events]
        assert entries(events) == 1
    await audit_verify(settings)


@pytest.mark.timeout(90)
async def test_racing_decisions_and_cancels_on_two_apis_settle_once(node_config, stack_kind):
    """Approve on one API and reject on the other at once: one wins (the other 409) and the run on the
    worker process sees that one. Two cancels at once: one 200, one 409, one terminal event. A cancel
    racing an approval of the same waiting run: the run ends canceled, nothing left pending or reserved."""
    settings = node_config.model_copy(update={"queue_visibility_s": 3.0})
    async with deployment(settings) as d:
        ca, cb = d.a.client(d.key), d.b.client(d.key)
        split = await post(ca, {"calls": [{"tool": "echo", "args": {"n": 60}}]})
        twice = await post(cb, {"sleep": 60})
        mixed = await post(ca, {"calls": [{"tool": "echo", "args": {"n": 61}}], "sleep": 60})
        asked = await asyncio.wait_for(wait_for_event(cb, split["id"], "approval.requested"), 30)
        path = f"/v1/approvals/{asked.data['approval_id']}/decision"
        got = await asyncio.gather(ca.post(path, json={"decision": "approve"}), cb.post(path, json={"decision": "reject"}))
        assert sorted(r.status_code for r in got) == [200, 409], [r.text for r in got]
        [won] = [r.json()["status"] for r in got if r.status_code == 200]
        events = await asyncio.wait_for(collect(ca, split["id"]), 30)
        check_stream(events)
        [results] = [e.data["data"] for e in events if e.event == "custom" and e.data["name"] == "results"]
        assert results == ([{"ok": {"n": 60}}] if won == "approved" else [{"error": "approval.rejected"}]), (won, results)
        audit = (await ca.get("/v1/audit", params={"run_id": split["id"]})).json()["data"]
        voided = {a["detail"]["voids_seq"] for a in audit if a["kind"] == "approval.void"}
        decisions = [a["kind"] for a in audit if "approver_key_id" in (a.get("detail") or {})
                     and a["kind"] != "approval.void" and a["seq"] not in voided]
        assert decisions == [f"approval.{won}"], [(a["kind"], a["seq"], a.get("detail")) for a in audit]

        await asyncio.wait_for(wait_for_event(ca, twice["id"], "custom", "entered"), 30)
        got = await asyncio.gather(ca.post(f"/v1/runs/{twice['id']}/cancel"), cb.post(f"/v1/runs/{twice['id']}/cancel"))
        assert sorted(r.status_code for r in got) == [200, 409], [r.text for r in got]
        events = await asyncio.wait_for(collect(cb, twice["id"]), 10)
        check_stream(events)
        assert events[-1].event == "run.canceled" and entries(events) == 1

        asked = await asyncio.wait_for(wait_for_event(cb, mixed["id"], "approval.requested"), 30)
        path = f"/v1/approvals/{asked.data['approval_id']}/decision"
        got = await asyncio.gather(cb.post(path, json={"decision": "approve"}), ca.post(f"/v1/runs/{mixed['id']}/cancel"))
        assert got[1].status_code == 200, got[1].text
        # before the cancel: decided; after it: the request was withdrawn with the run (expired, 403)
        assert got[0].status_code == 200 or got[0].json()["code"] == "approval.expired", got[0].text
        events = await asyncio.wait_for(collect(cb, mixed["id"]), 10)
        check_stream(events)
        assert events[-1].event == "run.canceled" and entries(events) == 1
        assert (await ca.get("/v1/approvals", params={"status": "pending"})).json()["data"] == []
        assert await reserved(ca) == 0
    await audit_verify(settings)


@pytest.mark.timeout(90)
async def test_cancels_racing_the_claim_on_worker_processes_leave_nothing_behind(node_config, stack_kind):
    """Each of twelve runs is canceled on the other API the moment it is created, racing the worker
    processes' claim, start and launch: every run ends canceled once, main() entered at most once, no
    sandbox process or run directory survives, and the workers go on running new runs. A stream
    resumed on the other API with Last-Event-ID mid-run misses nothing."""
    settings = node_config.model_copy(update={"queue_visibility_s": 3.0})
    async with deployment(settings) as d:
        ca, cb = d.a.client(d.key), d.b.client(d.key)

        async def post_and_cancel(i: int) -> str:
            mine, other = (ca, cb) if i % 2 else (cb, ca)
            run = await post(mine, {"sleep": 60})
            if i % 3:
                await asyncio.sleep(0.1 * (i % 4))  # some before the claim, some while the sandbox starts
            r = await other.post(f"/v1/runs/{run['id']}/cancel")
            assert r.status_code == 200, r.text
            return run["id"]

        ids = await asyncio.gather(*(post_and_cancel(i) for i in range(12)))
        for rid in ids:
            events = await asyncio.wait_for(collect(ca, rid), 10)
            check_stream(events)
            assert events[-1].event == "run.canceled" and entries(events) <= 1, [(e.event, e.data) for e in events]
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        while any(descendants(w.pid) for w in d.workers) or any((settings.data_dir / "runs" / rid).exists() for rid in ids):
            assert loop.time() - t0 < 10, "a canceled run's sandbox or directory survived"
            await asyncio.sleep(0.05)

        run = await post(ca, {"calls": [{"tool": "echo", "args": {"n": 1}}], "sleep": 1})
        first = [e async for e in read_sse(ca, f"/v1/runs/{run['id']}/events", stop_after=2)]  # hang up mid-run
        rest = await asyncio.wait_for(
            asyncio.gather(*(asyncio.wait_for(resume(c, run["id"], first[-1].id), 30) for c in (ca, cb))), 40)
        for tail in rest:
            check_stream(first + tail)
            assert tail[-1].event == "run.completed" and entries(first + tail) == 1
        assert [e.data for e in rest[0]] == [e.data for e in rest[1]]  # both APIs stream the same tail
    await audit_verify(settings)



@pytest.mark.timeout(90)
async def test_both_worker_processes_killed_a_fresh_one_ends_every_run_once(node_config, stack_kind):
    """Both workers are SIGKILLed while four runs are in flight on them (priced calls running, requests
    waiting for a human). A worker process started afterwards ends each run.worker_lost once, never
    runs one again, releases every reservation and withdraws every request."""
    settings = node_config.model_copy(update={"queue_visibility_s": 1.0})
    async with deployment(settings) as d:
        ca, cb = d.a.client(d.key), d.b.client(d.key)
        runs = [await post(ca, {"calls": [SLOW_CALL]}), await post(cb, {"calls": [SLOW_CALL]}),
                await post(ca, {"calls": [{"tool": "echo", "args": {"n": 70}}]}),
                await post(cb, {"calls": [{"tool": "echo", "args": {"n": 71}}]})]
        for run, kind in zip(runs, ("tool.call", "tool.call", "approval.requested", "approval.requested"), strict=True):
            await asyncio.wait_for(wait_for_event(ca, run["id"], kind), 30)
        for _ in range(200):
            if await reserved(ca) > 0.02 - 1e-9:
                break
            await asyncio.sleep(0.05)
        for w in d.workers:
            os.killpg(w.pid, signal.SIGKILL)
        for w in d.workers:
            await asyncio.to_thread(w.wait, 10)
        d.workers.append(worker_process(settings))
        for i, run in enumerate(runs):
            events = await asyncio.wait_for(collect(ca if i % 2 else cb, run["id"]), 30)
            check_stream(events)
            assert events[-1].event == "run.failed" and events[-1].data["code"] == "run.worker_lost", events[-1]
            assert entries(events) == 1
        assert await reserved(ca) == 0
        assert (await ca.get("/v1/approvals", params={"status": "pending"})).json()["data"] == []
        after = await post(cb, {"sleep": 0})
        events = await asyncio.wait_for(collect(ca, after["id"]), 30)
        assert events[-1].event == "run.completed" and entries(events) == 1
    await audit_verify(settings)


@pytest.mark.timeout(90)
async def test_a_worker_frozen_past_the_visibility_timeout_cannot_revive_its_lost_run(node_config, stack_kind):
    """The worker carrying a run with a priced call in flight is frozen (SIGSTOP: a VM pause, a stuck
    host) past the visibility timeout: the other worker ends the run run.worker_lost. Thawed, the first
    worker writes nothing more to the run (one terminal event, main() entered once), kills its sandbox,
    leaves nothing reserved, and goes on serving runs."""
    settings = node_config.model_copy(update={"queue_visibility_s": 1.0})
    async with deployment(settings) as d:
        ca, cb = d.a.client(d.key), d.b.client(d.key)
        slow = {"tool": "code.run", "args": {"code": "import time\ntime.sleep(0.5)\nprint('slept')", "timeout_s": 30}}  # done while frozen
        run = await post(ca, {"calls": [slow], "sleep": 20})
        await asyncio.wait_for(wait_for_event(cb, run["id"], "tool.call"), 30)
        frozen = await d.carrier(run["id"])
        box = descendants(frozen.pid)
        os.kill(frozen.pid, signal.SIGSTOP)  # the worker alone: its sandboxes (other sessions) go on
        try:
            events = await asyncio.wait_for(collect(cb, run["id"]), 30)
        finally:
            os.kill(frozen.pid, signal.SIGCONT)
        assert events[-1].event == "run.failed" and events[-1].data["code"] == "run.worker_lost", events[-1]
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        while alive(box) or (settings.data_dir / "runs" / run["id"]).exists():
            assert loop.time() - t0 < 15, "the thawed worker kept the lost run's sandbox"
            await asyncio.sleep(0.05)
        for _ in range(40):  # its call in flight has settled by now (the code.run slept 4 s)
            if await reserved(ca) == 0:
                break
            await asyncio.sleep(0.25)
        final = await asyncio.wait_for(collect(ca, run["id"]), 10)
        check_stream(final)
        assert [e.data for e in final] == [e.data for e in events] and entries(final) == 1
        assert await reserved(ca) == 0
        assert (await ca.get(f"/v1/runs/{run['id']}")).json()["status"] == "failed"
        assert frozen.poll() is None
        later = await asyncio.gather(*(post(cb, {"sleep": 0}) for _ in range(4)))
        for r in later:
            events = await asyncio.wait_for(collect(ca, r["id"]), 30)
            assert events[-1].event == "run.completed" and entries(events) == 1
    await audit_verify(settings)


@pytest.mark.timeout(90)
async def test_a_killed_warm_workers_slots_leave_no_files_on_the_shared_volume(node_config, stack_kind):
    """The production warm pool (2 parked sandboxes per worker): SIGKILL of the worker. Once its run is
    ended as lost, neither the run's directory nor the dead worker's parked slots stay on the data
    volume every node shares (each kill leaked two directories, for ever)."""
    settings = node_config.model_copy(update={"queue_visibility_s": 1.0})
    async with deployment(settings) as d:
        for w in d.workers:
            reap(w)
        d.workers[:] = [warm_worker_process(settings, 2)]
        ca = d.a.client(d.key)
        runs_dir = settings.data_dir / "runs"
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        while len([p for p in runs_dir.glob("_warm_*/sock/s")]) < 2:  # the pool is parked
            assert loop.time() - t0 < 30, "the warm pool never filled"
            await asyncio.sleep(0.05)
        await d.a.rt.registry.register_dir(TEST_BUNDLES / "caller", d.tenant_id)  # default limits: may take a slot
        r = await ca.post("/v1/runs", json={"bundle": "caller", "input": json.dumps({"calls": [SLOW_CALL]})})
        assert r.status_code == 201, r.text
        run = r.json()
        await asyncio.wait_for(wait_for_event(ca, run["id"], "tool.call"), 30)
        dead = d.workers[0]
        os.killpg(dead.pid, signal.SIGKILL)
        await asyncio.to_thread(dead.wait, 10)
        d.workers.append(worker_process(settings))
        events = await asyncio.wait_for(collect(ca, run["id"]), 30)
        assert events[-1].data["code"] == "run.worker_lost", events[-1]
        t0 = loop.time()
        while left := sorted(p.name for p in runs_dir.iterdir()):
            assert loop.time() - t0 < 5, left
            await asyncio.sleep(0.05)


@pytest.mark.timeout(90)
async def test_a_cap_holds_across_worker_processes(node_config, stack_kind):
    """Ten concurrent runs on two worker processes, each making five priced calls, against a tenant
    cap that covers seven: committed spend never passes the cap, exactly that many calls are let through,
    the rest are refused budget.exceeded, and nothing stays reserved."""
    settings = node_config.model_copy(update={"queue_visibility_s": 3.0})
    async with deployment(settings, budget_usd=0.07) as d:
        ca, cb = d.a.client(d.key), d.b.client(d.key)
        plan = {"calls": [{"tool": "echo", "args": {"n": i}} for i in range(5)]}
        runs = await asyncio.gather(*(post(ca if i % 2 else cb, plan) for i in range(10)))
        outcomes = []
        for i, run in enumerate(runs):
            events = await asyncio.wait_for(collect(cb if i % 2 else ca, run["id"]), 60)
            check_stream(events)
            assert events[-1].event == "run.completed" and entries(events) == 1, events[-1]
            [results] = [e.data["data"] for e in events if e.event == "custom" and e.data["name"] == "results"]
            outcomes += [next(iter(r)) if "ok" in r else r["error"] for r in results]
        carriers = {(await d.a.rt.services.runs.get_run_any_tenant(r["id"])).worker_id for r in runs}
        [budget] = (await ca.get("/v1/budgets")).json()["data"]
        assert budget["reserved_usd"] == 0 and budget["spent_usd"] <= 0.07 + 1e-9, budget
        assert outcomes.count("ok") == 7 and outcomes.count("budget.exceeded") == 43, (outcomes, carriers)
        assert abs(budget["spent_usd"] - 0.07) < 1e-9, budget
    await audit_verify(settings)
