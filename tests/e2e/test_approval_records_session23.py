"""A call refused for want of an approval is audited ``tool.rejected`` (session 23), on both stacks.

Before: a human rejection wrote two ``approval.rejected`` records - the API's (the decision, naming the
approver) and the chain's (the waiting call's outcome) - so an auditor filtering by kind counted every
rejection twice, and so did ``stockade_governance_decisions_total{kind="approval.rejected"}``. Decisions are
``approval.*`` (the API's), a call's outcomes ``tool.*`` (the chain's): the call's record is now
``tool.rejected``, code ``approval.rejected`` (what the bundle's ``ToolError.code`` still says), with the
approval id and the reason. An expiry nobody decided, and a request that vanished, are recorded by the chain
only (the sweeper's ``expire_due`` records nothing): one ``tool.rejected``, no ``approval.*`` record.
Chains written before hold ``approval.rejected`` for the call's record; they verify as they did.
"""

from __future__ import annotations

import asyncio
import json

import pytest

from supervisor.audit.recorder import AuditRecorder
from tests.e2e.test_approvals_audit_walkthrough_session21 import _verify_cli, audit_of, decide
from tests.e2e.test_four_eyes_session10 import approval_records, policy, requested
from tests.e2e.test_governance import plan, results_of, setup
from tests.e2e.test_run_pipeline import start
from tests.e2e.test_worker_metrics_session22 import _decisions, _diff, _scrape

pytestmark = pytest.mark.timeout(120)

ONE = policy("{approvers: 1}")
BIG = {"tool": "echo", "args": {"n": 50}}


async def _key(c, role: str = "approver") -> tuple[str, str]:
    r = await c.post("/v1/keys", json={"role": role})
    assert r.status_code in (200, 201), r.text
    return r.json()["id"], r.json()["api_key"]


def _of(audit: list[dict], kind: str, apr: str) -> list[dict]:
    return [a for a in audit if a["kind"] == kind and a["detail"].get("approval_id") == apr]


def _the_calls_record(audit: list[dict], apr: str) -> dict:
    """The call's one outcome record: tool.rejected, code approval.rejected, no approver named; nothing ran."""
    (rec,) = _of(audit, "tool.rejected", apr)
    assert rec["code"] == "approval.rejected" and rec["tool"] == "echo" and rec["rule_id"] == "big-echo", rec
    assert rec["detail"]["verdict"] == "require_approval" and "approver_key_id" not in rec["detail"], rec
    assert not [a for a in audit if a["kind"] in ("tool.allowed", "tool.completed")], audit
    return rec


async def test_a_human_rejection_is_one_decision_and_one_call_outcome(node):
    """Fails on the old code: two approval.rejected records (the second the call's), no tool.rejected."""
    _, _, c = await setup(node, ONE)
    key_id, secret = await _key(c)
    approver = node.client(secret)
    run = await start(c, "caller", plan(BIG))
    apr = await requested(c, run["id"])
    r = await decide(approver, apr, "reject", reason="not today")
    assert r.status_code == 200 and r.json()["status"] == "rejected" and r.json()["decided_by"] == key_id, r.text
    results, _ = await results_of(c, run["id"])
    assert results[0]["error"] == "approval.rejected" and results[0]["message"] == "not today", results  # unchanged
    audit = await audit_of(c, run["id"])
    assert [a["kind"] for a in audit].count("approval.rejected") == 1, audit
    (decision,) = _of(audit, "approval.rejected", apr)
    assert decision["detail"]["approver_key_id"] == key_id and decision["detail"]["reason"] == "not today", decision
    rec = _the_calls_record(audit, apr)
    assert rec["detail"]["message"] == "not today", rec
    assert rec["detail"]["approval"] == {"id": apr, "status": "rejected", "decided_by": key_id}, rec
    assert decision["seq"] < rec["seq"]  # the decision, then the call's outcome
    assert approval_records(audit, apr) == ["approval.rejected"]
    kinds = [a["kind"] for a in audit]
    assert sorted(kinds) == ["approval.rejected", "tool.rejected"], kinds


@pytest.mark.node_settings(approval_ttl_s=1.5)
async def test_an_expiry_is_the_calls_record_alone(node):
    """Nobody decides: the chain expires the request (or the sweeper does; it records nothing) and its record
    is the only one - tool.rejected saying expired; no approval.* record (no one decided anything)."""
    _, _, c = await setup(node, ONE)
    run = await start(c, "caller", plan(BIG, {"tool": "echo", "args": {"n": 1}}))
    apr = await requested(c, run["id"])
    results, _ = await results_of(c, run["id"])
    assert results[0]["error"] == "approval.rejected" and "expired" in results[0]["message"], results
    assert results[1] == {"ok": {"n": 1}}
    audit = await audit_of(c, run["id"])
    rec = _the_calls_record([a for a in audit if a["detail"].get("approval_id") == apr], apr)
    assert "expired" in rec["detail"]["message"] and rec["detail"]["approval"]["status"] == "expired", rec
    assert [a["kind"] for a in audit if a["kind"].startswith("approval.")] == [], audit
    assert sorted(a["kind"] for a in audit) == ["tool.allowed", "tool.completed", "tool.rejected"], audit
    assert (await c.get(f"/v1/approvals/{apr}")).json()["status"] == "expired"


async def test_one_reject_of_n_approvers_is_one_decision_and_one_call_outcome(node):
    """approvers: 2 - an approve (approval.vote), then a reject that decides (approval.rejected, once), then
    the call's tool.rejected."""
    _, _, c = await setup(node, policy("{approvers: 2}"))
    (k1, s1), (k2, s2) = await _key(c), await _key(c)
    run = await start(c, "caller", plan(BIG))
    apr = await requested(c, run["id"])
    assert (await decide(node.client(s1), apr)).json()["status"] == "pending"
    r = await decide(node.client(s2), apr, "reject", reason="no")
    assert r.status_code == 200 and r.json()["status"] == "rejected", r.text
    results, events = await results_of(c, run["id"])
    assert results[0]["error"] == "approval.rejected" and results[0]["message"] == "no", results
    assert [e.data["decision"] for e in events if e.event == "approval.vote"] == ["approve", "reject"]
    audit = await audit_of(c, run["id"])
    assert approval_records(audit, apr) == ["approval.vote", "approval.rejected"]
    assert [a["detail"]["approver_key_id"] for a in audit if a["kind"].startswith("approval.")] == [k1, k2]
    assert [a["kind"] for a in audit].count("approval.rejected") == 1, audit
    rec = _the_calls_record(audit, apr)
    assert rec["detail"]["message"] == "no", rec
    assert sorted(a["kind"] for a in audit) == ["approval.rejected", "approval.vote", "tool.rejected"], audit


async def test_a_vanished_request_fails_the_call_as_tool_rejected(node):
    """A database writer deletes the pending request: the call fails closed, its record tool.rejected."""
    tid, _, c = await setup(node, ONE)
    run = await start(c, "caller", plan(BIG))
    apr = await requested(c, run["id"])
    db = node.rt.services.approvals._db
    if hasattr(db, "tenant_tx"):
        async with db.tenant_tx(tid) as conn:
            await conn.execute("DELETE FROM approvals WHERE id = $1", apr)
    else:
        db.execute("DELETE FROM approvals WHERE id = ?", (apr,))
    results, _ = await results_of(c, run["id"])
    assert results[0]["error"] == "approval.rejected" and "no longer exists" in results[0]["message"], results
    audit = await audit_of(c, run["id"])
    rec = _the_calls_record(audit, apr)
    assert "no longer exists" in rec["detail"]["message"], rec
    assert [a["kind"] for a in audit] == ["tool.rejected"], audit


async def test_the_governance_metric_counts_each_rejection_once(node):
    """`serve`'s /metrics (the node fixture: API and worker in one): two rejections are approval.rejected 2
    (was 4: the call's records counted too) and tool.rejected 2."""
    _, _, c = await setup(node, ONE)
    _, secret = await _key(c)
    approver, anon = node.client(secret), node.client()
    before = _decisions(await _scrape(anon))
    run = await start(c, "caller", plan(BIG, {"tool": "echo", "args": {"n": 60}}))
    seen: set[str] = set()
    async with asyncio.timeout(60):
        while len(seen) < 2:
            pending = (await c.get("/v1/approvals", params={"status": "pending", "run_id": run["id"]})).json()["data"]
            for a in pending:
                if a["id"] not in seen:
                    assert (await decide(approver, a["id"], "reject")).status_code == 200
                    seen.add(a["id"])
            await asyncio.sleep(0.05)
    results, _ = await results_of(c, run["id"])
    assert [r["error"] for r in results] == ["approval.rejected"] * 2, results
    after = _decisions(await _scrape(anon))
    assert _diff(after, before) == {"approval.rejected": 2, "tool.rejected": 2}, _diff(after, before)


async def test_a_chain_with_the_old_kind_still_verifies(node):
    """Records written before the change (the call's outcome as approval.rejected) are never rewritten: a
    chain holding both spellings verifies with `stockade audit verify`."""
    tid, _, c = await setup(node, ONE)
    rec = AuditRecorder(node.rt.services.audit, node.rt.sealer)
    old = {"verdict": "require_approval", "approval_id": "apr_old", "message": "rejected by an approver"}
    await rec.record(tid, "approval.rejected", run_id="run_old", tool="echo", rule_id="big-echo",
                     detail={"approval_id": "apr_old", "approver_key_id": "key_old", "reason": None})
    await rec.record(tid, "approval.rejected", run_id="run_old", tool="echo", rule_id="big-echo",
                     code="approval.rejected", detail=old)
    run = await start(c, "caller", plan(BIG))
    apr = await requested(c, run["id"])
    assert (await decide(c, apr, "reject")).status_code == 200
    await results_of(c, run["id"])
    kinds = [a["kind"] for a in (await c.get("/v1/audit", params={"limit": 1000})).json()["data"]]
    assert kinds.count("approval.rejected") == 3 and kinds.count("tool.rejected") == 1, kinds
    rc, out, err = await _verify_cli(node, tid)
    assert rc == 0 and json.loads(out)["verified"] is True, (out, err)
