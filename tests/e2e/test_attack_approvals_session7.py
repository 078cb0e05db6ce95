"""Attacks on human approvals and idempotency, through the API and from bundles, on both stacks.

A hostile tenant, user, approver or bundle against the promises: a decision is made once, by an admin or
approver key of the approval's tenant (another tenant's id looks exactly like a missing one), binds to the
arguments, reaches a run waiting on another process, leaves exactly one standing decision in the audit log;
every pending request stays listable; a repeated idempotency key replays the first result to the *same*
caller only.
"""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from supervisor.errors import StockadeError
from supervisor.ids import new_id
from supervisor.stores.records import Approval
from tests.e2e.harness import idle_runs, read_sse, start_node
from tests.e2e.test_governance import POLICY, plan, results_of, setup
from tests.e2e.test_run_pipeline import start

STORAGE_POLICY = POLICY.replace("prices:", """  - id: storage
    tool: "storage.*"
    verdict: allow
prices:""")


async def pending_approval(node, tid: str, **kw) -> Approval:
    """A pending request of an idle (queued) run of ``tid``: no sandbox needed to decide it."""
    run_id = (await idle_runs(node, tid, 1))[0]
    now = kw.pop("created_at", time.time())
    a = Approval(id=new_id("apr_"), tenant_id=tid, run_id=run_id, tool="echo", args_hash="a" * 64,
                 args={"n": 11}, rule_id="big", reason="needs a human", status="pending",
                 created_at=now, expires_at=now + kw.pop("ttl", 3600.0), **kw)
    return await node.rt.services.approvals.create(a)


async def test_an_explicit_key_never_replays_another_users_result(node):
    """Bob's run reuses the explicit idempotency key (and the args) Alice's run used to read her private
    file: he must read his own area (nothing there), never be handed her file as a deduped result."""
    _, _, c = await setup(node, STORAGE_POLICY)
    alice = (await c.post("/v1/users", json={"name": "alice"})).json()["id"]
    bob = (await c.post("/v1/users", json={"name": "bob"})).json()["id"]
    read = {"tool": "storage.read", "args": {"path": "diary.txt"}, "key": "read-diary"}
    run = await start(c, "caller", plan({"tool": "storage.write", "args": {"path": "diary.txt", "content": "alice's secret"}},
                                        read), user_id=alice)
    results, _ = await results_of(c, run["id"])
    assert "error" not in results[1] and "alice's secret" in json.dumps(results[1]), results
    run = await start(c, "caller", plan(read), user_id=bob)
    results, events = await results_of(c, run["id"])
    assert "alice's secret" not in json.dumps(results), results
    assert results[0]["error"] == "storage.not_found", results
    assert [e.data["deduped"] for e in events if e.event == "tool.result"] == [False]


async def test_another_tenants_or_another_users_approval_looks_exactly_like_a_missing_one(node):
    """Same status, same bytes (the id aside) for an approval of tenant A asked by tenant B's admin, or by
    an approver key bound to another user, as for an id that never existed; nothing is decided."""
    tid, _, c = await setup(node)
    theirs = await pending_approval(node, tid)
    other_tid, other_key = await node.tenant()
    bob = (await c.post("/v1/users", json={"name": "bob"})).json()["id"]
    bound = (await c.post("/v1/keys", json={"role": "approver", "user_id": bob})).json()["api_key"]
    missing = "apr_" + "0" * (len(theirs.id) - 4)
    for key in (other_key, bound):
        outsider = node.client(key)
        for method, path, body in (("GET", "/v1/approvals/{}", None),
                                   ("POST", "/v1/approvals/{}/decision", {"decision": "approve"}),
                                   ("POST", "/v1/approvals/{}/decision", {"decision": "approve", "args_hash": "x"})):
            seen = []
            for apr in (theirs.id, missing):
                r = await outsider.request(method, path.format(apr), json=body)
                seen.append((r.status_code, r.headers.get("content-type"), r.content.replace(apr.encode(), b"ID")))
            assert seen[0] == seen[1] and seen[0][0] == 404, seen
        assert (await outsider.get("/v1/approvals")).json()["data"] == []
    assert (await node.rt.services.approvals.get(tid, theirs.id)).status == "pending"
    assert (await node.client(other_key).get("/v1/approvals", params={"run_id": theirs.run_id})).json()["data"] == []


async def test_roles_that_may_not_decide_learn_nothing_about_the_id(node):
    """viewer and member keys get the same 403 for an existing and a missing approval (no id oracle)."""
    tid, _, c = await setup(node)
    a = await pending_approval(node, tid)
    missing = "apr_" + "0" * (len(a.id) - 4)
    for role in ("viewer", "member"):
        k = node.client((await c.post("/v1/keys", json={"role": role})).json()["api_key"])
        seen = [(r.status_code, r.content.replace(i.encode(), b"ID")) for i in (a.id, missing)
                for r in [await k.post(f"/v1/approvals/{i}/decision", json={"decision": "approve"})]]
        assert seen[0] == seen[1] and seen[0][0] == 403 and b"auth.forbidden" in seen[0][1], seen
    assert (await node.rt.services.approvals.get(tid, a.id)).status == "pending"


BAD_DECISIONS = [
    ({"decision": "approve", "extra": 1}, 422),  # unknown member
    ({"decision": "APPROVE"}, 422),  # case games
    ({"decision": "approved"}, 422),  # the status word, not the verb
    ({"decision": "expired"}, 422),  # an approver may not claim the system's expiry
    ({"decision": ["approve"]}, 422),  # wrong type
    ({"decision": True}, 422),
    ({"decision": None}, 422),
    ({}, 422),  # nothing
    ({"decision": "approve", "reason": 5}, 422),  # reason not text
    ({"decision": "approve", "reason": "x" * 2001}, 422),  # over the cap
    ({"decision": "approve", "reason": "a\x00b"}, 422),  # NUL: PostgreSQL cannot store it
    ({"decision": "approve", "args_hash": 7}, 422),
    ({"decision": "approve", "args_hash": "a" * 129}, 422),
    ({"decision": "approve", "args_hash": "b" * 64}, 409),  # bound to other arguments than the ones shown
    ({"decision": "approve", "decided_by": "key_someone_else"}, 422),  # forge the approver
    ({"decision": "approve", "status": "approved"}, 422),
    ([{"decision": "approve"}], 422),  # not an object
    ("approve", 422),
]


async def test_malformed_decisions_are_refused_and_decide_nothing(node):
    tid, _, c = await setup(node)
    a = await pending_approval(node, tid)
    for body, status in BAD_DECISIONS:
        r = await c.post(f"/v1/approvals/{a.id}/decision", json=body)
        assert r.status_code == status and r.headers["content-type"].startswith("application/problem+json"), (body, r.text)
    for raw_body in (b'{"decision": "approve", "reason": "\\ud800"}',  # lone surrogate
                     b'{"decision": "approve", "decision": "reject"}',  # duplicate member
                     b'{"decision": "approve"', b"", b"\xff\xfe", b'{"decision": "approve", "reason": 1e400}'):
        r = await c.post(f"/v1/approvals/{a.id}/decision", content=raw_body, headers={"Content-Type": "application/json"})
        assert 400 <= r.status_code < 500, (raw_body, r.status_code, r.text)
    huge = b'{"decision": "approve", "reason": "' + b"x" * (2 * 1024 * 1024) + b'"}'
    r = await c.post(f"/v1/approvals/{a.id}/decision", content=huge, headers={"Content-Type": "application/json"})
    assert r.status_code in (413, 422), r.status_code
    assert (await node.rt.services.approvals.get(tid, a.id)).status == "pending"
    audit = (await c.get("/v1/audit", params={"run_id": a.run_id})).json()["data"]
    assert audit == []  # nothing was decided, so nothing was recorded
    r = await c.post(f"/v1/approvals/{a.id}/decision", json={"decision": "approve", "args_hash": a.args_hash})
    assert r.status_code == 200 and r.json()["status"] == "approved"


@pytest.mark.parametrize("path", [
    "/v1/approvals/apr_%00", "/v1/approvals/%00/decision", "/v1/approvals/%F0%9F%98%80",
    "/v1/approvals/" + "a" * 5000, "/v1/approvals?run_id=%00",
    "/v1/approvals?status=PENDING", "/v1/approvals?status=pending&status=bogus", "/v1/approvals?limit=0",
    "/v1/approvals?limit=501", "/v1/approvals?limit=-1", "/v1/approvals?limit=1e9", "/v1/approvals?run_id=" + "r" * 129,
])
async def test_hostile_ids_and_filters_get_a_clear_4xx(node, path):
    _, _, c = await setup(node)
    method = "POST" if path.endswith("/decision") else "GET"
    r = await c.request(method, path, json={"decision": "approve"} if method == "POST" else None)
    assert 400 <= r.status_code < 500 and "code" in r.json(), (r.status_code, r.text)


def standing_decisions(audit: list[dict], approval_id: str) -> list[str]:
    """The approvers' decision records of one approval not voided by a later ``approval.void``."""
    decisions = {a["seq"]: a["kind"] for a in audit if a["kind"] in ("approval.approved", "approval.rejected")
                 and a["detail"].get("approval_id") == approval_id and "approver_key_id" in a["detail"]}
    voided = {a["detail"]["voids_seq"] for a in audit if a["kind"] == "approval.void"}
    assert voided <= set(decisions)
    return [k for seq, k in sorted(decisions.items()) if seq not in voided]


@pytest.mark.parametrize("stack_kind", ["production"])
async def test_decisions_racing_on_two_api_processes_one_wins(node, node_config, stack_kind):
    """Approve on one API node and reject on another (separate runtimes and pools on the same PostgreSQL),
    released together, for several requests: each time exactly one 200 and one 409, the stored decision is
    the winner's, and the audit log holds exactly that one decision."""
    other = await start_node(node_config, workers=False)
    try:
        tid, admin, c = await setup(node)
        approver = (await c.post("/v1/keys", json={"role": "approver"})).json()["api_key"]
        a, b = node.client(admin), other.client(approver)

        async def decide(go: asyncio.Event, client, apr_id: str, decision: str):
            await go.wait()
            return await client.post(f"/v1/approvals/{apr_id}/decision", json={"decision": decision})

        for _ in range(5):
            apr = await pending_approval(node, tid)
            go = asyncio.Event()
            tasks = [asyncio.create_task(decide(go, a, apr.id, "approve")),
                     asyncio.create_task(decide(go, b, apr.id, "reject"))]
            await asyncio.sleep(0)
            go.set()
            r1, r2 = await asyncio.gather(*tasks)
            assert sorted([r1.status_code, r2.status_code]) == [200, 409], (r1.text, r2.text)
            won = r1 if r1.status_code == 200 else r2
            lost = r2 if won is r1 else r1
            assert lost.json()["code"] == "approval.already_decided"
            stored = await other.rt.services.approvals.get(tid, apr.id)
            assert (stored.status, stored.decided_by) == (won.json()["status"], won.json()["decided_by"])
            audit = (await c.get("/v1/audit", params={"run_id": apr.run_id})).json()["data"]
            assert standing_decisions(audit, apr.id) == [f"approval.{stored.status}"], audit
    finally:
        await other.stop()


@pytest.mark.parametrize("stack_kind", ["production"])
async def test_a_run_waiting_on_a_worker_is_released_by_a_decision_on_another_api_process(node, node_config, stack_kind):
    """The decision is taken by an API process that shares nothing with the worker's process but the
    stores: the waiting call proceeds, approval.resolved names the deciding key, one decision audited."""
    other = await start_node(node_config, workers=False)
    try:
        tid, _, c = await setup(node)
        made = (await c.post("/v1/keys", json={"role": "approver"})).json()
        remote = other.client(made["api_key"])
        run = await start(c, "caller", plan({"tool": "echo", "args": {"n": 50}}))
        seen = []
        async for e in read_sse(c, f"/v1/runs/{run['id']}/events"):
            seen.append(e)
            if e.event == "approval.requested":
                assert (await remote.get(f"/v1/runs/{run['id']}")).json()["status"] == "waiting_approval"
                r = await remote.post(f"/v1/approvals/{e.data['approval_id']}/decision",
                                      json={"decision": "approve", "args_hash": e.data["args_hash"]})
                assert r.status_code == 200, r.text
            if e.event.startswith("run.") and e.event != "run.started":
                break
        assert seen[-1].event == "run.completed"
        resolved = [e.data for e in seen if e.event == "approval.resolved"]
        assert [(x["decision"], x["decided_by"]) for x in resolved] == [("approved", made["id"])]
        results = next(e for e in seen if e.event == "custom").data["data"]
        assert results == [{"ok": {"n": 50}}]
        audit = (await c.get("/v1/audit", params={"run_id": run["id"]})).json()["data"]
        assert standing_decisions(audit, resolved[0]["approval_id"]) == ["approval.approved"]
    finally:
        await other.stop()


async def test_a_decision_past_the_expiry_loses_to_it_and_leaves_no_decision_standing(node):
    """The request is past its expiry but not yet swept: the approver's decision must not win. It gets
    403 approval.expired, the request reads expired (without the approver's name), and the audit log
    holds no standing decision (a written one is voided)."""
    tid, _, c = await setup(node)
    apr = await pending_approval(node, tid, ttl=-1.0)
    r = await c.post(f"/v1/approvals/{apr.id}/decision", json={"decision": "approve", "reason": "late"})
    assert r.status_code == 403 and r.json()["code"] == "approval.expired", r.text
    got = (await c.get(f"/v1/approvals/{apr.id}")).json()
    assert (got["status"], got["decided_by"], got["decision_reason"]) == ("expired", None, None)
    audit = (await c.get("/v1/audit", params={"run_id": apr.run_id})).json()["data"]
    assert standing_decisions(audit, apr.id) == []
    r = await c.post(f"/v1/approvals/{apr.id}/decision", json={"decision": "reject"})
    assert r.status_code == 403 and r.json()["code"] == "approval.expired"


async def test_concurrent_run_creations_with_one_idempotency_key_make_one_run(node):
    """Eight clients POST the same run with the same Idempotency-Key at once: one run, every answer names
    it; the same key with another body is a mismatch; bad keys are refused, not ignored."""
    _, key = await node.tenant()
    c = node.client(key)
    go = asyncio.Event()

    async def post(body, k="same-run"):
        await go.wait()
        return await c.post("/v1/runs", json=body, headers={"Idempotency-Key": k})

    tasks = [asyncio.create_task(post({"bundle": "echo", "input": "hi"})) for _ in range(8)]
    await asyncio.sleep(0)
    go.set()
    answers = await asyncio.gather(*tasks)
    assert {r.status_code for r in answers} == {201}, [r.text for r in answers]
    assert len({r.json()["id"] for r in answers}) == 1
    assert sum(r.headers.get("Idempotent-Replayed") != "true" for r in answers) == 1
    go.set()
    r = await post({"bundle": "echo", "input": "other"})
    assert r.status_code == 422 and r.json()["code"] == "idempotency.mismatch"
    for bad in ("", "k" * 256):
        r = await post({"bundle": "echo", "input": "hi"}, bad)
        assert r.status_code == 422 and r.json()["code"] == "input.invalid", (bad, r.text)
    runs = (await c.get("/v1/runs")).json()["data"]
    assert len(runs) == 1


async def test_a_decision_the_store_failed_to_keep_leaves_no_decision_standing(node):
    """The decision is audited first, then stored. When the store fails (503), the audited decision was
    never made - yet its record stood, and the approver's retry wrote a second one: two approvals of one
    request in the log. The failed one is now voided, so the log holds exactly the decision made."""
    tid, _, c = await setup(node)
    apr = await pending_approval(node, tid)
    store = node.rt.services.approvals
    real_decide = store.decide

    async def down(*a, **kw):  # the real store, failing once (the database went away)
        raise StockadeError("store.unavailable", "the database went away")

    store.decide = down
    try:
        r = await c.post(f"/v1/approvals/{apr.id}/decision", json={"decision": "approve"})
    finally:
        store.decide = real_decide
    assert r.status_code == 503 and r.json()["code"] == "store.unavailable", r.text
    assert (await store.get(tid, apr.id)).status == "pending"
    r = await c.post(f"/v1/approvals/{apr.id}/decision", json={"decision": "approve"})
    assert r.status_code == 200, r.text
    audit = (await c.get("/v1/audit", params={"run_id": apr.run_id})).json()["data"]
    assert standing_decisions(audit, apr.id) == ["approval.approved"], audit
    # the answer lost after the store kept the decision: it was made, so it stands, once, and the API says so
    apr = await pending_approval(node, tid)

    async def kept_then_lost(*a, **kw):
        await real_decide(*a, **kw)
        raise StockadeError("store.unavailable", "the connection dropped before the reply")

    store.decide = kept_then_lost
    try:
        r = await c.post(f"/v1/approvals/{apr.id}/decision", json={"decision": "reject"})
    finally:
        store.decide = real_decide
    assert r.status_code == 200 and r.json()["status"] == "rejected", r.text
    audit = (await c.get("/v1/audit", params={"run_id": apr.run_id})).json()["data"]
    assert standing_decisions(audit, apr.id) == ["approval.rejected"], audit


async def test_every_pending_request_stays_within_an_approvers_reach(node):
    """A bundle that raises more requests than a page holds (64 calls in flight per run, any number of
    runs) pushed the older ones out of ``GET /v1/approvals?status=pending`` for good: the list had no
    next page. Now ``next_before`` pages through all of them, newest first, ties included, each once;
    a cursor of another tenant or a made-up one gives an empty page, not another tenant's requests."""
    tid, _, c = await setup(node)
    t0 = time.time()
    made = [await pending_approval(node, tid, created_at=t0 + (i // 2)) for i in range(7)]  # pairs share a time
    decided = await pending_approval(node, tid, created_at=t0 + 2.5)
    await node.rt.services.approvals.decide(tid, decided.id, status="rejected", decided_by="key_x", reason=None,
                                            now=time.time())
    seen, before = [], None
    for _ in range(10):
        page = (await c.get("/v1/approvals", params={"status": "pending", "limit": 3,
                                                     **({"before": before} if before else {})})).json()
        seen += [a["id"] for a in page["data"]]
        assert all(a["status"] == "pending" for a in page["data"])
        before = page["next_before"]
        if before is None:
            break
    expected = [a.id for a in sorted(made, key=lambda a: (a.created_at, a.id), reverse=True)]
    assert seen == expected
    other_tid, other_key = await node.tenant()
    theirs = await pending_approval(node, other_tid)
    for cursor in (theirs.id, "apr_nonexistent"):
        r = await c.get("/v1/approvals", params={"before": cursor})
        assert r.status_code == 200 and r.json() == {"data": [], "next_before": None}, r.text
    r = await node.client(other_key).get("/v1/approvals", params={"before": made[-1].id})
    assert r.json()["data"] == []  # tenant A's cursor does not open tenant A's list to B
    for bad in ("", "x" * 129):
        r = await c.get("/v1/approvals", params={"before": bad})
        assert r.status_code == 422 and r.json()["code"] == "input.invalid"
