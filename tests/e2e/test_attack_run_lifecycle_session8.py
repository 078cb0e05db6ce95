"""Session 8 attacks on the run lifecycle through real HTTP, both stacks: cancel races, hostile ids and
list cursors.

Found:
* ``GET /v1/runs`` paged by created_at alone: runs sharing a created_at across a page's end were skipped;
* a page of 200 runs could hold 200 x (256 KiB input + 8 MiB answer), read and encoded at once by the API.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest

from supervisor.ids import new_id
from supervisor.stores.records import Run
from tests.e2e.harness import collect, idle_runs, read_sse

TEST_BUNDLES = Path(__file__).parent / "bundles"
TERMINAL = {"run.completed", "run.failed", "run.canceled", "run.timed_out"}


def _one_terminal(events) -> str:
    assert [e.id for e in events] == list(range(1, len(events) + 1))
    ends = [e.event for e in events if e.event in TERMINAL]
    assert len(ends) == 1 and events[-1].event == ends[0], ends
    return ends[0]


async def test_concurrent_cancels_of_a_running_run_end_it_once(node):
    """Eight cancels at once of a run whose sandbox is running: one wins (200 canceled), the others are told
    it already ended (409 run.not_cancelable), and the stream has exactly one terminal event."""
    tid, key = await node.tenant()
    await node.rt.registry.register_dir(TEST_BUNDLES / "sleeper", tid)
    c = node.client(key)
    run = (await c.post("/v1/runs", json={"bundle": "sleeper", "input": "60"})).json()
    async with asyncio.timeout(30):
        async for e in read_sse(c, f"/v1/runs/{run['id']}/events"):
            if e.event == "message.delta":
                break
        answers = await asyncio.gather(*(c.post(f"/v1/runs/{run['id']}/cancel") for _ in range(8)))
        events = await collect(c, run["id"])
    codes = sorted(r.status_code for r in answers)
    assert codes == [200] + [409] * 7, [r.text for r in answers]
    assert all(r.json()["code"] == "run.not_cancelable" for r in answers if r.status_code == 409)
    assert _one_terminal(events) == "run.canceled"
    assert (await c.get(f"/v1/runs/{run['id']}")).json()["status"] == "canceled"


async def test_a_run_canceled_while_queued_is_never_started(node):
    """Canceled before a worker claimed it; its job then arrives (a late delivery): the worker must not
    start it - no run.started after run.canceled, the status stays canceled."""
    tid, key = await node.tenant()
    c = node.client(key)
    [rid] = await idle_runs(node, tid, 1)
    r = await c.post(f"/v1/runs/{rid}/cancel")
    assert r.status_code == 200 and r.json()["status"] == "canceled", r.text
    # a run that comes after it on the same queue: once it has ended, the worker has taken the job before it
    await node.rt.services.queue.enqueue(tid, rid)
    later = (await c.post("/v1/runs", json={"bundle": "echo", "input": "after"})).json()
    async with asyncio.timeout(30):
        _one_terminal(await collect(c, later["id"]))
    async with asyncio.timeout(30):
        assert [e.event for e in await collect(c, rid)] == ["run.canceled"]
    assert (await c.get(f"/v1/runs/{rid}")).json()["status"] == "canceled"


@pytest.mark.parametrize("run_id", ["x" * 5000, "run_%00", "run_%2e%2e", "%E2%80%AE", "run_%F0%9F%98%80", "%20",
                                    "run_'%3B--", "run_%FF", "a%2Fb", "%2E%2E%2Fbudgets"])
async def test_a_hostile_run_id_is_a_plain_404(node, run_id):
    """Any id in the path - huge, NUL, unicode, invalid UTF-8, SQL - is a run that does not exist: 404
    not_found (or a 422 input.invalid), never a 500 and never another tenant's run."""
    _, key = await node.tenant()
    c = node.client(key)
    for method, suffix in (("GET", ""), ("POST", "/cancel"), ("GET", "/events"), ("GET", "/receipt")):
        r = await c.request(method, f"/v1/runs/{run_id}{suffix}")
        assert r.status_code in (404, 422), (method, suffix, r.status_code, r.text[:300])
        assert r.json()["code"] in ("not_found", "input.invalid"), r.text[:300]


@pytest.mark.parametrize("query", ["limit=0", "limit=201", "limit=-1", "limit=abc", "limit=1e3", "before=nan",
                                   "before=inf", "before=-inf", "before=1e400", "before=abc", "limit=99999999999999999999",
                                   "before_id=run_x", "before=1&before_id=", "before=1&before_id=a%00",
                                   "before=1&before_id=" + "a" * 65, "before=1&before_id=%C3%A9"])
async def test_hostile_list_cursors_are_refused(node, query):
    _, key = await node.tenant()
    c = node.client(key)
    r = await c.get(f"/v1/runs?{query}")
    assert r.status_code == 422 and r.json()["code"] == "input.invalid", r.text


async def test_paging_through_runs_created_at_the_same_instant_misses_none(node):
    """Runs share a created_at (two API replicas, a coarse clock): a page that ends inside such a group
    must not lose the rest of it. Every run appears exactly once when paging with the cursors given."""
    tid, key = await node.tenant()
    c = node.client(key)
    now = time.time()
    ids = set()
    for i in range(7):
        run = Run(id=new_id("run_"), tenant_id=tid, bundle="echo", bundle_version="x", input=str(i),
                  status="queued", created_at=now if i < 5 else now - 1)
        await node.rt.services.runs.create_run(run)
        ids.add(run.id)
    seen: list[str] = []
    params: dict = {"limit": 2}
    for _ in range(10):
        page = (await c.get("/v1/runs", params=params)).json()
        seen += [r["id"] for r in page["data"]]
        if page["next_before"] is None:
            break
        params = {"limit": 2, "before": page["next_before"]}
        if page.get("next_before_id"):
            params["before_id"] = page["next_before_id"]
    assert sorted(seen) == sorted(ids) and len(seen) == len(ids), (len(seen), len(ids))


async def test_concurrent_posts_with_one_idempotency_key_make_one_run(node):
    """Ten POSTs at once with one Idempotency-Key and one body (a client's retries racing): one run, every
    answer 201 with its id; the same key with other bodies at once: a mismatch each, never a second run."""
    _, key = await node.tenant()
    c = node.client(key)
    body = {"bundle": "echo", "input": "once", "conversation_id": "c"}
    async with asyncio.timeout(60):
        answers = await asyncio.gather(*(c.post("/v1/runs", json=body, headers={"Idempotency-Key": "race"})
                                         for _ in range(10)),
                                       *(c.post("/v1/runs", json={**body, "input": f"other {i}"},
                                                headers={"Idempotency-Key": "race"}) for i in range(4)))
    listed = (await c.get("/v1/runs")).json()["data"]
    assert len(listed) == 1, listed
    [run] = listed
    for r in answers:
        sent = json.loads(r.request.content)
        if sent["input"] == run["input"]:
            assert r.status_code == 201 and r.json()["id"] == run["id"], r.text
        else:
            assert r.status_code == 422 and r.json()["code"] == "idempotency.mismatch", r.text
    async with asyncio.timeout(30):
        _one_terminal(await collect(c, run["id"]))


async def test_a_page_of_runs_is_bounded_in_bytes_and_paging_still_gets_them_all(node):
    """Each run holds up to 256 KiB of input and an answer up to the output limit (8 MiB): a page of 200
    such runs was 1.6 GiB read and encoded in the API process at once - one tenant could take a shared API
    down. A page now ends once it holds ``PAGE_BYTES`` of inputs and answers (always at least one run),
    with the cursor to the rest."""
    from app.routes.runs import PAGE_BYTES

    tid, key = await node.tenant()
    c = node.client(key)
    size = 2 * 1024 * 1024
    count = PAGE_BYTES // size + 4
    base = time.time() - 100
    ids = set()
    for i in range(count):
        run = Run(id=new_id("run_"), tenant_id=tid, bundle="echo", bundle_version="x", input=f"q{i}",
                  status="queued", created_at=base + i)
        await node.rt.services.runs.create_run(run)
        await node.rt.services.runs.finish_run(tid, run.id, "succeeded", "run.completed", {}, output="o" * size)
        ids.add(run.id)
    seen: list[str] = []
    params: dict = {"limit": 200}
    async with asyncio.timeout(60):
        for _ in range(count + 2):
            r = await c.get("/v1/runs", params=params)
            assert len(r.content) <= PAGE_BYTES + size + 64 * 1024, len(r.content)
            page = r.json()
            assert page["data"], "a page always has a run, or there is no next page"
            seen += [x["id"] for x in page["data"]]
            if page["next_before"] is None:
                break
            params = {"limit": 200, "before": page["next_before"], "before_id": page["next_before_id"]}
    assert len(seen) == len(ids) and set(seen) == ids
