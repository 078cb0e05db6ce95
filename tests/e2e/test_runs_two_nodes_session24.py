"""Run lifecycle through two API nodes of one production deployment (one PostgreSQL database, one Redis
prefix): an Idempotency-Key posted to both at once, across tenants, odd keys; a cancel posted to the node
that does not carry the run, twice, after the end, racing the run's own end; conversations across tenants
and nodes. Node A carries the runs (its workers), node B is API only."""

from __future__ import annotations

import asyncio
import json
from contextlib import asynccontextmanager

import pytest

from tests.e2e.harness import collect, read_sse, start_node
from tests.e2e.test_run_pipeline import TERMINAL, TEST_BUNDLES, check_stream

PRODUCTION = pytest.mark.parametrize("stack_kind", ["production"])


@pytest.fixture
def pg_url(fresh_pg_url):
    return fresh_pg_url


@asynccontextmanager
async def two_nodes(settings):
    """Node A (API + workers) and node B (API only) of one deployment; on the embedded stack (SQLite, an
    in-memory queue: one node per deployment) node A twice."""
    a = await start_node(settings)
    try:
        if settings.database_url is None or not str(settings.database_url).startswith("postgres"):
            yield a, a
            return
        b = await start_node(settings, workers=False)
        try:
            yield a, b
        finally:
            await b.stop()
    finally:
        await a.stop()


async def runs_of(c) -> list[dict]:
    r = await c.get("/v1/runs", params={"limit": 200})
    assert r.status_code == 200, r.text
    return r.json()["data"]


async def answer_of(c, run_id: str) -> str:
    events = await asyncio.wait_for(collect(c, run_id), 30)
    check_stream(events)
    return "".join(e.data["text"] for e in events if e.event == "message.delta" and e.data["channel"] == "answer")


@PRODUCTION
@pytest.mark.timeout(90)
async def test_one_key_posted_to_both_nodes_at_once_makes_one_run(node_config, stack_kind):
    async with two_nodes(node_config) as (a, b):
        tid, key = await a.tenant()
        ca, cb = a.client(key), b.client(key)
        body = {"bundle": "echo", "input": "once only"}
        answers = await asyncio.gather(*(c.post("/v1/runs", json=body, headers={"Idempotency-Key": "k-both"})
                                         for c in (ca, cb) * 6))
        assert {r.status_code for r in answers} == {201}, [r.text for r in answers]
        assert len({r.json()["id"] for r in answers}) == 1
        assert sum(r.headers.get("Idempotent-Replayed") != "true" for r in answers) == 1
        assert len(await runs_of(cb)) == 1
        events = await asyncio.wait_for(collect(cb, answers[0].json()["id"]), 30)
        check_stream(events)
        assert [e.event for e in events].count("run.started") == 1

        # the same key, bodies that differ, at once on both nodes: one run, every other answer 422
        bodies = [{"bundle": "echo", "input": f"body {i}"} for i in range(8)]
        clash = await asyncio.gather(*(c.post("/v1/runs", json=bd, headers={"Idempotency-Key": "k-clash"})
                                       for c, bd in zip((ca, cb) * 4, bodies, strict=True)))
        assert sorted(r.status_code for r in clash) == [201] + [422] * 7, [r.text for r in clash]
        assert {r.json()["code"] for r in clash if r.status_code == 422} == {"idempotency.mismatch"}
        assert len(await runs_of(ca)) == 2

        # another tenant's identical key is its own
        tid2, key2 = await b.tenant()
        other = await b.client(key2).post("/v1/runs", json=body, headers={"Idempotency-Key": "k-both"})
        assert other.status_code == 201 and other.json()["id"] != answers[0].json()["id"], other.text
        assert "Idempotent-Replayed" not in other.headers
        assert len(await runs_of(b.client(key2))) == 1 and len(await runs_of(ca)) == 2


@pytest.mark.timeout(90)
async def test_odd_keys(node_config, stack_kind):
    async with two_nodes(node_config) as (a, b):
        _, key = await a.tenant()
        ca, cb = a.client(key), b.client(key)
        body = {"bundle": "echo", "input": "odd"}
        for k in ("x" * 255, "ключ".encode().decode("latin-1"), "\xff\xfe k\t ey", "a" * 254 + "\xe9"):
            r1 = await ca.post("/v1/runs", json=body, headers={"Idempotency-Key": k.encode("latin-1")})
            r2 = await cb.post("/v1/runs", json=body, headers={"Idempotency-Key": k.encode("latin-1")})
            assert r1.status_code == 201 and r2.status_code == 201, (k, r1.text, r2.text)
            assert r1.json()["id"] == r2.json()["id"] and r2.headers.get("Idempotent-Replayed") == "true"
        n = len(await runs_of(ca))
        for bad in ("x" * 256, ""):
            r = await cb.post("/v1/runs", json=body, headers={"Idempotency-Key": bad})
            assert r.status_code == 422, (bad, r.text)
        assert len(await runs_of(ca)) == n == 4


@PRODUCTION
@pytest.mark.timeout(90)
async def test_cancel_on_the_other_node(node_config, stack_kind):
    async with two_nodes(node_config) as (a, b):
        tid, key = await a.tenant()
        await a.rt.registry.register_dir(TEST_BUNDLES / "sleeper", tid)
        ca, cb = a.client(key), b.client(key)
        run = (await cb.post("/v1/runs", json={"bundle": "sleeper", "input": "60"})).json()
        async for e in read_sse(cb, f"/v1/runs/{run['id']}/events"):
            if e.event == "message.delta":
                break
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        r = await cb.post(f"/v1/runs/{run['id']}/cancel")
        assert r.status_code == 200 and r.json()["status"] == "canceled", r.text
        while (a.data_dir / "runs" / run["id"]).exists():
            assert loop.time() - t0 < 1.5, "the sandbox outlived the cancel"
            await asyncio.sleep(0.02)
        for c in (ca, cb, ca):
            again = await c.post(f"/v1/runs/{run['id']}/cancel")
            assert again.status_code == 409 and again.json()["code"] == "run.not_cancelable", again.text
        events = await asyncio.wait_for(collect(ca, run["id"]), 10)
        check_stream(events)
        assert events[-1].event == "run.canceled"
        got = (await ca.get(f"/v1/runs/{run['id']}")).json()
        assert got["status"] == "canceled" and got["error"]["code"] == "run.canceled"


@PRODUCTION
@pytest.mark.timeout(120)
async def test_cancel_racing_the_runs_own_end(node_config, stack_kind):
    async with two_nodes(node_config) as (a, b):
        _, key = await a.tenant()
        ca, cb = a.client(key), b.client(key)
        outcomes = set()
        for i in range(12):
            run = (await ca.post("/v1/runs", json={"bundle": "echo", "input": f"w{i}"})).json()
            # wait for the start, then cancel from both nodes while it ends by itself
            async for e in read_sse(cb, f"/v1/runs/{run['id']}/events"):
                if e.event == "run.started" or e.event in TERMINAL:
                    break
            rs = await asyncio.gather(ca.post(f"/v1/runs/{run['id']}/cancel"), cb.post(f"/v1/runs/{run['id']}/cancel"))
            events = await asyncio.wait_for(collect(ca, run["id"]), 10)
            check_stream(events)
            got = (await cb.get(f"/v1/runs/{run['id']}")).json()
            ok = [r for r in rs if r.status_code == 200]
            assert len(ok) <= 1, [r.text for r in rs]
            for r in rs:
                assert r.status_code in (200, 409), r.text
            if ok:
                assert got["status"] == "canceled" and events[-1].event == "run.canceled", (got, events[-1])
            else:
                assert got["status"] == "succeeded" and events[-1].event == "run.completed", (got, events[-1])
            outcomes.add(got["status"])


@PRODUCTION
@pytest.mark.timeout(90)
async def test_conversations_across_tenants_and_nodes(node_config, stack_kind):
    async with two_nodes(node_config) as (a, b):
        tid, key = await a.tenant()
        tid2, key2 = await a.tenant()
        for t in (tid, tid2):
            await a.rt.registry.register_dir(TEST_BUNDLES / "historian", t)
        ca, cb, other = a.client(key), b.client(key), b.client(key2)
        first = (await ca.post("/v1/runs", json={"bundle": "echo", "input": "secret turn", "conversation_id": "c1"})).json()
        await answer_of(ca, first["id"])
        r = await other.post("/v1/runs", json={"bundle": "historian", "input": "peek", "conversation_id": "c1"})
        assert r.status_code == 201, r.text
        assert json.loads(await answer_of(other, r.json()["id"]))["turns"] == []

        # turns posted to both nodes at once: each run's history is the turns created before it, in order
        posted = await asyncio.gather(*(c.post("/v1/runs", json={"bundle": "historian", "input": f"t{i}",
                                                                 "conversation_id": "c2"})
                                        for i, c in enumerate((ca, cb) * 3)))
        runs = sorted((p.json() for p in posted), key=lambda x: (x["created_at"], x["id"]))
        for i, run in enumerate(runs):
            seen = [t[1] for t in json.loads(await answer_of(ca, run["id"]))["turns"] if t[0] == "user"]
            earlier = [r["input"] for r in runs[:i]]  # those created before it, in order (some may not be stored yet)
            assert seen == [x for x in earlier if x in seen], (run["input"], seen, earlier)
        last = (await cb.post("/v1/runs", json={"bundle": "historian", "input": "last", "conversation_id": "c2"})).json()
        turns = json.loads(await answer_of(cb, last["id"]))["turns"]
        users = [t[1] for t in turns if t[0] == "user"]
        assert users == [r["input"] for r in runs], (users, runs)


@pytest.mark.timeout(60)
async def test_a_retry_is_its_run_after_what_the_first_post_checked_changed(node_config, stack_kind):
    """The same Idempotency-Key and body, retried (through the other node) after the run's bundle was deleted
    or its user left its project: the run, replayed - it exists and runs. Was: 404 bundle.not_found / 403
    project.not_member, the bundle and the membership were checked again before the key was looked up, and a
    client whose first answer was lost took its run for never made. A new key is still refused; another body
    under the key is still 422."""
    async with two_nodes(node_config) as (a, b):
        tid, key = await a.tenant()
        await a.rt.registry.register_dir(TEST_BUNDLES / "historian", tid)
        ca, cb = a.client(key), b.client(key)
        body = {"bundle": "historian", "input": "hi"}
        r1 = await ca.post("/v1/runs", json=body, headers={"Idempotency-Key": "del"})
        assert r1.status_code == 201, r1.text
        await answer_of(ca, r1.json()["id"])
        r = await cb.delete("/v1/bundles/historian")
        assert r.status_code == 200, r.text
        r2 = await cb.post("/v1/runs", json=body, headers={"Idempotency-Key": "del"})
        assert r2.status_code == 201 and r2.json()["id"] == r1.json()["id"], r2.text
        assert r2.headers.get("Idempotent-Replayed") == "true"
        r3 = await cb.post("/v1/runs", json=body, headers={"Idempotency-Key": "del-new"})
        assert r3.status_code == 404 and r3.json()["code"] == "bundle.not_found", r3.text
        r4 = await cb.post("/v1/runs", json={**body, "input": "other"}, headers={"Idempotency-Key": "del"})
        assert r4.status_code == 422 and r4.json()["code"] == "idempotency.mismatch", r4.text

        user = (await ca.post("/v1/users", json={"name": "u"})).json()["id"]
        project = (await ca.post("/v1/projects", json={"name": "p"})).json()["id"]
        assert (await ca.put(f"/v1/projects/{project}/members/{user}")).status_code == 200
        body = {"bundle": "echo", "input": "member", "user_id": user, "project_id": project}
        r1 = await ca.post("/v1/runs", json=body, headers={"Idempotency-Key": "member"})
        assert r1.status_code == 201, r1.text
        assert (await ca.delete(f"/v1/projects/{project}/members/{user}")).status_code == 200
        r2 = await cb.post("/v1/runs", json=body, headers={"Idempotency-Key": "member"})
        assert r2.status_code == 201 and r2.json()["id"] == r1.json()["id"], r2.text
        r3 = await cb.post("/v1/runs", json=body, headers={"Idempotency-Key": "member-new"})
        assert r3.status_code == 403 and r3.json()["code"] == "project.not_member", r3.text
        assert len(await runs_of(cb)) == 2


@PRODUCTION
@pytest.mark.timeout(90)
async def test_cancels_racing_the_time_limit_end_the_run_once(node_config, stack_kind):
    """Cancels posted to both nodes as the run's time limit (sleeper: timeout_s 2) runs out: one terminal
    event, the run's status is the one it names, and at most one cancel was told it canceled the run."""
    async with two_nodes(node_config) as (a, b):
        tid, key = await a.tenant()
        await a.rt.registry.register_dir(TEST_BUNDLES / "sleeper", tid)
        ca, cb = a.client(key), b.client(key)
        loop = asyncio.get_running_loop()
        for delay in (1.9, 1.98, 2.02, 2.1):
            run = (await cb.post("/v1/runs", json={"bundle": "sleeper", "input": "30"})).json()
            async for e in read_sse(ca, f"/v1/runs/{run['id']}/events"):
                if e.event == "message.delta":
                    t0 = loop.time()
                    break
            await asyncio.sleep(max(0.0, delay - (loop.time() - t0)))
            rs = await asyncio.gather(ca.post(f"/v1/runs/{run['id']}/cancel"), cb.post(f"/v1/runs/{run['id']}/cancel"))
            assert sorted(r.status_code for r in rs) in ([200, 409], [409, 409]), [r.text for r in rs]
            events = await asyncio.wait_for(collect(ca, run["id"]), 10)
            check_stream(events)
            got = (await cb.get(f"/v1/runs/{run['id']}")).json()
            want = "canceled" if any(r.status_code == 200 for r in rs) else "timed_out"
            assert got["status"] == want and events[-1].event == f"run.{want}", (got["status"], events[-1])


@PRODUCTION
@pytest.mark.timeout(60)
async def test_one_key_value_of_two_users_at_once_on_both_nodes_is_two_runs(node_config, stack_kind):
    """Keys bound to two users of one tenant pick the same Idempotency-Key value and post at once through
    both nodes: one run each (replayed to its own user), neither user sees nor blocks the other's; the
    tenant's unbound key with that value is a third run."""
    async with two_nodes(node_config) as (a, b):
        _, admin = await a.tenant()
        ca = a.client(admin)
        users = [(await ca.post("/v1/users", json={"name": n})).json()["id"] for n in ("u1", "u2")]
        keys = [(await ca.post("/v1/keys", json={"role": "member", "user_id": u})).json()["api_key"] for u in users]
        clients = [(a.client(k), b.client(k)) for k in keys]
        body = {"bundle": "echo", "input": "same"}
        posted = await asyncio.gather(*(c.post("/v1/runs", json=body, headers={"Idempotency-Key": "shared"})
                                        for pair in clients for c in pair * 2))
        assert {r.status_code for r in posted} == {201}, [r.text for r in posted]
        ids = [{r.json()["id"] for r in posted[i * 4:(i + 1) * 4]} for i in range(2)]
        assert all(len(x) == 1 for x in ids) and ids[0] != ids[1], ids
        for (c, _), u, mine in zip(clients, users, ids, strict=True):
            listed = await runs_of(c)
            assert {r["id"] for r in listed} == mine and {r["user_id"] for r in listed} == {u}
        r = await b.client(admin).post("/v1/runs", json=body, headers={"Idempotency-Key": "shared"})
        assert r.status_code == 201 and r.json()["id"] not in ids[0] | ids[1], r.text
        assert len(await runs_of(ca)) == 3
