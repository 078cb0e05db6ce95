"""Separation of duties and N-person approval, end to end on both stacks (a bundle waits, keys vote).

The gap: a require_approval rule was decided by ONE key, and that key could be the very key (or
user) that started the run - an admin key started a run asking for something risky and approved it
itself. A rule may now say ``approval: {approvers: N, separate: true}``.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from supervisor.ids import new_id
from supervisor.stores.records import Approval, Run
from tests.e2e.harness import idle_runs, read_sse, start_node
from tests.e2e.test_governance import plan, results_of, setup
from tests.e2e.test_run_pipeline import check_stream, start


def policy(approval: str) -> str:
    return f"""
version: 1
rules:
  - id: big-echo
    tool: echo
    when: {{args.n: {{gt: 10}}}}
    verdict: require_approval
    reason: n > 10 needs people
    approval: {approval}
  - id: echo
    tool: echo
    verdict: allow
prices:
  echo: 0.001
"""


async def key(c, role: str = "approver", user_id: str | None = None) -> str:
    r = await c.post("/v1/keys", json={"role": role, **({"user_id": user_id} if user_id else {})})
    assert r.status_code in (200, 201), r.text
    return r.json()["api_key"]


async def requested(c, run_id: str) -> str:
    """The id of the run's first approval request (once the call waits for it)."""
    async for e in read_sse(c, f"/v1/runs/{run_id}/events"):
        if e.event == "approval.requested":
            return e.data["approval_id"]
        assert not e.event.startswith("run.") or e.event == "run.started", e
    raise AssertionError("the stream ended without an approval request")


def approval_records(audit: list[dict], approval_id: str) -> list[str]:
    """The approvers' records (votes and decisions) of one approval, minus those voided later."""
    mine = {a["seq"]: a["kind"] for a in audit if a["kind"] in ("approval.vote", "approval.approved", "approval.rejected")
            and a["detail"].get("approval_id") == approval_id and "approver_key_id" in a["detail"]}
    voided = {a["detail"]["voids_seq"] for a in audit if a["kind"] == "approval.void"}
    assert voided <= set(mine)
    return [k for seq, k in sorted(mine.items()) if seq not in voided]


async def decide(client, apr: str, decision: str = "approve"):
    return await client.post(f"/v1/approvals/{apr}/decision", json={"decision": decision, "reason": "looked"})


async def test_the_starting_key_and_its_users_keys_may_not_decide(node):
    """separate: true - the admin key that started the run, and an approver key bound to the run's user,
    are refused with approval.separation; nothing is recorded or changed; another approver decides."""
    tid, _, c = await setup(node, policy("{separate: true}"))
    alice = (await c.post("/v1/users", json={"name": "alice"})).json()["id"]
    alices_approver = node.client(await key(c, "approver", alice))
    other = node.client(await key(c, "approver"))
    run = await start(c, "caller", plan({"tool": "echo", "args": {"n": 50}}), user_id=alice)
    apr = await requested(c, run["id"])
    for who in (c, alices_approver):
        for decision in ("approve", "reject"):
            r = await decide(who, apr, decision)
            assert r.status_code == 403 and r.json()["code"] == "approval.separation", r.text
    stored = await node.rt.services.approvals.get(tid, apr)
    assert stored.status == "pending" and stored.votes == () and stored.separate is True
    assert (await c.get(f"/v1/runs/{run['id']}")).json()["status"] == "waiting_approval"
    audit = (await c.get("/v1/audit", params={"run_id": run["id"]})).json()["data"]
    assert [a["kind"] for a in audit if a["kind"].startswith("approval.")] == [], audit
    r = await decide(other, apr)
    assert r.status_code == 200 and r.json()["status"] == "approved", r.text
    body = r.json()
    assert body["separate"] is True and body["required_approvals"] == 1
    assert [(v["decision"], v["reason"]) for v in body["votes"]] == [("approve", "looked")]
    results, events = await results_of(c, run["id"])
    assert results == [{"ok": {"n": 50}}]
    audit = (await c.get("/v1/audit", params={"run_id": run["id"]})).json()["data"]
    assert approval_records(audit, apr) == ["approval.approved"]


async def test_a_key_made_after_the_request_may_not_decide_a_separate_one(node):
    """separate: true - the admin whose run asked cannot mint its own second pair of eyes: a fresh admin or
    approver key made after the request is refused (nothing recorded); a key held before the request
    decides. (A key bound to a user made for the purpose sees no run but that user's: not this one.)"""
    tid, _, c = await setup(node, policy("{separate: true}"))
    before = node.client(await key(c))
    run = await start(c, "caller", plan({"tool": "echo", "args": {"n": 50}}))
    apr = await requested(c, run["id"])
    fresh = node.client(await key(c, "admin"))
    fresh_approver = node.client(await key(c, "approver"))
    for who in (fresh, fresh_approver):
        r = await decide(who, apr)
        assert r.status_code == 403 and r.json()["code"] == "approval.separation", r.text
        assert "made after" in r.json()["detail"], r.text
    stored = await node.rt.services.approvals.get(tid, apr)
    assert stored.status == "pending" and stored.votes == ()
    audit = (await c.get("/v1/audit", params={"run_id": run["id"]})).json()["data"]
    assert [a["kind"] for a in audit if a["kind"].startswith("approval.")] == [], audit
    r = await decide(before, apr)
    assert r.status_code == 200 and r.json()["status"] == "approved", r.text
    assert (await results_of(c, run["id"]))[0] == [{"ok": {"n": 50}}]


async def test_without_separation_the_starting_key_may_still_decide(node):
    """The default is today's behaviour: the key that started the run may approve its request."""
    _, _, c = await setup(node, policy("{approvers: 1}"))
    run = await start(c, "caller", plan({"tool": "echo", "args": {"n": 50}}))
    apr = await requested(c, run["id"])
    r = await decide(c, apr)
    assert r.status_code == 200 and r.json()["status"] == "approved" and r.json()["separate"] is False
    assert (await results_of(c, run["id"]))[0] == [{"ok": {"n": 50}}]


async def test_two_approvers_the_run_waits_for_the_second(node, node_config, stack_kind):
    """approvers: 2 - one vote keeps the request pending (votes visible) and the run waiting; the same key
    again is refused (409); a second distinct key - on another API process in production - completes it
    and the call runs. One approval.vote and one approval.approved record."""
    tid, _, c = await setup(node, policy("{approvers: 2, separate: true}"))
    k1, k2 = node.client(await key(c)), await key(c)
    other = await start_node(node_config, workers=False) if stack_kind == "production" else None
    try:
        second = (other or node).client(k2)
        run = await start(c, "caller", plan({"tool": "echo", "args": {"n": 50}}, {"tool": "echo", "args": {"n": 1}}))
        apr = await requested(c, run["id"])
        r = await decide(k1, apr)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["status"] == "pending" and body["required_approvals"] == 2 and len(body["votes"]) == 1
        assert body["votes"][0]["decision"] == "approve" and body["votes"][0]["key_id"].startswith("key_")
        listed = (await c.get("/v1/approvals", params={"status": "pending"})).json()["data"]
        assert [(a["id"], len(a["votes"])) for a in listed] == [(apr, 1)]
        r = await decide(k1, apr)
        assert r.status_code == 409 and r.json()["code"] == "approval.already_decided", r.text
        r = await decide(k1, apr, "reject")  # nor may it change its mind into a reject
        assert r.status_code == 409 and r.json()["code"] == "approval.already_decided", r.text
        r = await decide(c, apr)  # the starting key may not be the second pair of eyes
        assert r.status_code == 403 and r.json()["code"] == "approval.separation", r.text
        # the first vote reaches the run's stream while the run still waits ("1 of 2" as it happens)
        async with asyncio.timeout(20):
            async for e in read_sse(c, f"/v1/runs/{run['id']}/events"):
                if e.event == "approval.vote":
                    break
        assert e.data == {"run_id": run["id"], "seq": e.id, "type": "approval.vote", "approval_id": apr,
                          "decision": "approve", "key_id": body["votes"][0]["key_id"], "user_id": None,
                          "reason": "looked", "approvals": 1, "required_approvals": 2}, e.data
        # the run still waits: its call has not run
        assert (await c.get(f"/v1/runs/{run['id']}")).json()["status"] == "waiting_approval"
        assert (await node.rt.services.approvals.get(tid, apr)).status == "pending"
        r = await decide(second, apr)
        assert r.status_code == 200 and r.json()["status"] == "approved", r.text
        assert [v["decision"] for v in r.json()["votes"]] == ["approve", "approve"]
        results, events = await results_of(c, run["id"])
        check_stream(events)
        assert results == [{"ok": {"n": 50}}, {"ok": {"n": 1}}]
        # the call ran only after the second vote
        resolved = next(e for e in events if e.event == "approval.resolved")
        result = next(e for e in events if e.event == "tool.result")
        assert resolved.id < result.id and resolved.data["decision"] == "approved"
        # each vote once, in order, the deciding one too, before the resolution
        votes = [e for e in events if e.event == "approval.vote"]
        assert [(v.data["approvals"], v.data["decision"]) for v in votes] == [(1, "approve"), (2, "approve")]
        assert votes[-1].id < resolved.id
        audit = (await c.get("/v1/audit", params={"run_id": run["id"]})).json()["data"]
        assert approval_records(audit, apr) == ["approval.vote", "approval.approved"]
    finally:
        if other is not None:
            await other.stop()


async def test_a_reject_after_an_approve_rejects(node):
    _, _, c = await setup(node, policy("{approvers: 3}"))
    k1, k2, k3 = [node.client(await key(c)) for _ in range(3)]
    run = await start(c, "caller", plan({"tool": "echo", "args": {"n": 50}}))
    apr = await requested(c, run["id"])
    assert (await decide(k1, apr)).json()["status"] == "pending"
    r = await decide(k2, apr, "reject")
    assert r.status_code == 200 and r.json()["status"] == "rejected", r.text
    r = await decide(k3, apr)
    assert r.status_code == 409 and r.json()["code"] == "approval.already_decided"
    results, events = await results_of(c, run["id"])
    assert results[0]["error"] == "approval.rejected"
    votes = [(e.data["approvals"], e.data["decision"], e.data["required_approvals"]) for e in events if e.event == "approval.vote"]
    assert votes == [(1, "approve", 3), (1, "reject", 3)]
    audit = (await c.get("/v1/audit", params={"run_id": run["id"]})).json()["data"]
    assert approval_records(audit, apr) == ["approval.vote", "approval.rejected"]


async def test_one_user_votes_once_whatever_key_it_uses(node):
    """Keys bound to one user are one approver: bob's second key cannot cast the second vote."""
    tid, _, c = await setup(node, policy("{approvers: 2}"))
    bob = (await c.post("/v1/users", json={"name": "bob"})).json()["id"]
    run = Run(id=new_id("run_"), tenant_id=tid, bundle="echo", bundle_version="x", input="", status="queued",
              created_at=time.time(), user_id=bob)
    await node.rt.services.runs.create_run(run)
    a = await pending(node, tid, run_id=run.id, required_approvals=2)
    bob1, bob2 = [node.client(await key(c, "approver", bob)) for _ in range(2)]
    r = await decide(bob1, a.id)
    assert r.status_code == 200 and r.json()["status"] == "pending", r.text
    assert r.json()["votes"][0]["user_id"] == bob
    r = await decide(bob2, a.id)
    assert r.status_code == 409 and r.json()["code"] == "approval.already_decided", r.text
    assert len((await node.rt.services.approvals.get(tid, a.id)).votes) == 1
    r = await decide(node.client(await key(c)), a.id)
    assert r.status_code == 200 and r.json()["status"] == "approved", r.text


async def pending(node, tid: str, *, run_id: str | None = None, **kw) -> Approval:
    run_id = run_id or (await idle_runs(node, tid, 1))[0]
    now = kw.pop("created_at", time.time())
    a = Approval(id=new_id("apr_"), tenant_id=tid, run_id=run_id, tool="echo", args_hash="a" * 64, args={"n": 11},
                 rule_id="big-echo", reason="needs people", status="pending", created_at=now,
                 expires_at=now + kw.pop("ttl", 3600.0), **kw)
    return await node.rt.services.approvals.create(a)


async def test_an_expired_request_cannot_be_voted_on(node):
    tid, _, c = await setup(node, policy("{approvers: 2}"))
    k1, k2 = [node.client(await key(c)) for _ in range(2)]
    gone = await pending(node, tid, required_approvals=2, created_at=time.time() - 10, ttl=5)
    r = await decide(k1, gone.id)
    assert r.status_code == 403 and r.json()["code"] == "approval.expired", r.text
    # one vote in, then the request runs out of time: the second vote is refused, the first stays on record
    half = await pending(node, tid, required_approvals=2, ttl=3600)
    assert (await decide(k1, half.id)).json()["status"] == "pending"
    await node.rt.services.approvals.expire_due(time.time() + 7200)
    r = await decide(k2, half.id)
    assert r.status_code == 403 and r.json()["code"] == "approval.expired", r.text
    got = await node.rt.services.approvals.get(tid, half.id)
    assert got.status == "expired" and len(got.votes) == 1


async def test_votes_racing_on_one_request_are_each_counted_once(node):
    """Four approvers vote at once on a request of two: exactly two votes are kept, it is approved once,
    the other two are told it is decided; the audit log's standing records match what happened."""
    tid, _, c = await setup(node, policy("{approvers: 2}"))
    clients = [node.client(await key(c)) for _ in range(4)]
    for _ in range(3):
        apr = await pending(node, tid, required_approvals=2)
        await node.rt.services.runs.set_status(tid, apr.run_id, "running")
        go = asyncio.Event()

        async def one(client, go: asyncio.Event = go, apr: Approval = apr):
            await go.wait()
            return await decide(client, apr.id)

        tasks = [asyncio.create_task(one(x)) for x in clients]
        await asyncio.sleep(0)
        go.set()
        answers = await asyncio.gather(*tasks)
        codes = sorted(r.status_code for r in answers)
        assert codes == [200, 200, 409, 409], [r.text for r in answers]
        assert sorted(r.json()["status"] for r in answers if r.status_code == 200) == ["approved", "pending"]
        assert all(r.json()["code"] == "approval.already_decided" for r in answers if r.status_code == 409)
        final = await node.rt.services.approvals.get(tid, apr.id)
        assert final.status == "approved" and len(final.votes) == 2
        assert len({v["key_id"] for v in final.votes}) == 2
        audit = (await c.get("/v1/audit", params={"run_id": apr.run_id})).json()["data"]
        assert approval_records(audit, apr.id) == ["approval.vote", "approval.approved"]


async def test_bad_approval_terms_are_refused_by_put_policy_with_their_line(node):
    _, _, c = await setup(node, policy("{approvers: 2}"))
    before = (await c.get("/v1/policy")).text
    for terms, fragment in (("{approvers: 0}", "approval.approvers"), ("{approvers: 6}", "approval.approvers"),
                            ('{approvers: "2"}', "approval.approvers"), ("{approvers: true}", "approval.approvers"),
                            ('{separate: "yes"}', "approval.separate"), ("{quorum: 2}", "unknown key 'quorum'")):
        r = await c.put("/v1/policy", content=policy(terms), headers={"Content-Type": "application/yaml"})
        assert r.status_code == 422 and r.json()["code"] == "policy.invalid", r.text
        assert any(e.startswith("line 9: ") and fragment in e for e in r.json()["errors"]), r.json()
    on_allow = policy("{approvers: 2}").replace("verdict: require_approval", "verdict: allow")
    r = await c.put("/v1/policy", content=on_allow, headers={"Content-Type": "application/yaml"})
    assert r.status_code == 422 and any(e.startswith("line 4: ") and "only with verdict require_approval" in e
                                        for e in r.json()["errors"]), r.text
    assert (await c.get("/v1/policy")).text == before


def test_the_approval_step_takes_the_verdicts_terms_or_fails_closed():
    """The policy step hands on the deciding rule's terms with its verdict (call.extra["approval_terms"]); a call
    that reaches the approval step without them fails (policy.unavailable), never with the laxer default terms."""
    from types import SimpleNamespace

    from supervisor.chain.approval import approval_terms
    from supervisor.errors import StockadeError
    from supervisor.policy import ApprovalSpec

    assert approval_terms(SimpleNamespace(extra={"approval_terms": ApprovalSpec(3, True)}, rule_id="r")) == ApprovalSpec(3, True)
    for bad in ({}, {"approval_terms": None}, {"approval_terms": {"approvers": 1}}):
        with pytest.raises(StockadeError) as err:
            approval_terms(SimpleNamespace(extra=bad, rule_id="r"))
        assert err.value.code == "policy.unavailable"


async def test_approvers_for_separate_requests_hold_unbound_or_project_bound_keys(node):
    """What the README tells an admin to hand out (session 15: its earlier advice, "bind approvers' keys to
    users", left approvers who could decide nothing): two approver keys bound to the run's project decide a
    two-person separate request on another user's run; a key bound to a user sees no request of another
    user's run (404), and the run's own user is barred (403)."""
    tid, _, c = await setup(node, policy("{approvers: 2, separate: true}"))
    alice = (await c.post("/v1/users", json={"name": "alice"})).json()["id"]
    bob = (await c.post("/v1/users", json={"name": "bob"})).json()["id"]
    proj = (await c.post("/v1/projects", json={"name": "p"})).json()["id"]
    assert (await c.put(f"/v1/projects/{proj}/members/{alice}")).status_code == 200
    reviewers = []
    for _ in range(2):
        r = await c.post("/v1/keys", json={"role": "approver", "project_id": proj})
        assert r.status_code == 201, r.text
        reviewers.append(node.client(r.json()["api_key"]))
    bobs, alices = node.client(await key(c, "approver", bob)), node.client(await key(c, "approver", alice))
    run = await start(c, "caller", plan({"tool": "echo", "args": {"n": 50}}), user_id=alice, project_id=proj)
    apr = await requested(c, run["id"])
    assert (await bobs.get("/v1/approvals", params={"status": "pending"})).json()["data"] == []
    assert (await decide(bobs, apr)).status_code == 404
    r = await decide(alices, apr)
    assert r.status_code == 403 and r.json()["code"] == "approval.separation", r.text
    listed = (await reviewers[0].get("/v1/approvals", params={"status": "pending"})).json()["data"]
    assert [a["id"] for a in listed] == [apr]
    r = await decide(reviewers[0], apr)
    assert r.status_code == 200 and r.json()["status"] == "pending", r.text
    r = await decide(reviewers[1], apr)
    assert r.status_code == 200 and r.json()["status"] == "approved", r.text
    results, _ = await results_of(c, run["id"])
    assert results == [{"ok": {"n": 50}}]
