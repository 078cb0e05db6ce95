"""Policies, approvals, dedupe, budgets, audit and receipts — from a bundle, through the API, on both stacks."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import pytest

from supervisor.audit.receipts import verify_receipt
from tests.e2e.harness import collect, read_sse
from tests.e2e.test_run_pipeline import check_stream, push, start

ROOT = Path(__file__).resolve().parents[2]

POLICY = """
version: 1
rules:
  - id: no-big-echo
    tool: echo
    when: {args.n: {gt: 100}}
    verdict: deny
    reason: too big
  - id: echo-needs-human
    tool: echo
    when: {args.n: {gt: 10}}
    verdict: require_approval
    reason: a human looks at n > 10
  - id: echo
    tool: echo
    verdict: allow
prices:
  echo: 0.001
"""


def plan(*calls, concurrent: bool = False) -> str:
    return json.dumps({"calls": list(calls), "concurrent": concurrent})


async def results_of(client, run_id: str) -> tuple[list, list]:
    events = await collect(client, run_id)
    check_stream(events)
    custom = [e for e in events if e.event == "custom" and e.data.get("name") == "results"]
    return (custom[0].data["data"] if custom else None), events


async def setup(node, policy: str = POLICY):
    tid, key = await node.tenant()
    await push(node, tid, "caller")
    c = node.client(key)
    r = await c.put("/v1/policy", content=policy, headers={"Content-Type": "application/yaml"})
    assert r.status_code == 200, r.text
    return tid, key, c


async def test_policy_verdicts_reach_the_bundle_and_the_audit(node):
    tid, _, c = await setup(node)
    run = await start(c, "caller", plan(
        {"tool": "echo", "args": {"n": 1}},
        {"tool": "echo", "args": {"n": 500}},
        {"tool": "Echo", "args": {"n": 1}},
        {"tool": "ｅcho", "args": {"n": 1}},
        {"tool": "echo", "args": {"n": "2000"}},  # a string is not a number: no deny rule matches, allow rule does
        {"tool": "http.request", "args": {"method": "GET", "url": "http://169.254.169.254/"}},
        {"tool": "nope.tool", "args": {}},
    ))
    results, events = await results_of(c, run["id"])
    assert results[0] == {"ok": {"n": 1}}
    assert results[1]["error"] == "policy.denied" and results[1]["extra"]["rule_id"] == "no-big-echo"
    assert results[2]["error"] == "input.invalid" and results[3]["error"] == "input.invalid"
    assert results[4] == {"ok": {"n": "2000"}}
    assert results[5]["error"] == "policy.denied"  # no egress rule in this policy
    assert results[6]["error"] == "tool.unknown"
    audit = (await c.get("/v1/audit", params={"run_id": run["id"]})).json()["data"]
    kinds = [a["kind"] for a in audit]
    assert kinds.count("tool.denied") == 2 and kinds.count("tool.invalid") == 3
    denied = [a for a in audit if a["kind"] == "tool.denied"]
    assert {a["rule_id"] for a in denied} == {"no-big-echo", "policy.no_match"}  # no match names a rule too
    assert all(a["policy_version"] for a in audit if a["kind"] in ("tool.allowed", "tool.denied"))


async def test_a_run_waits_until_its_last_pending_approval_is_decided(node):
    _, _, c = await setup(node)
    approver = (await c.post("/v1/keys", json={"role": "approver"})).json()["api_key"]
    run = await start(c, "caller", plan({"tool": "echo", "args": {"n": 50}}, {"tool": "echo", "args": {"n": 60}},
                                        concurrent=True))
    requested, seen = [], []
    async for e in read_sse(c, f"/v1/runs/{run['id']}/events"):
        seen.append(e)
        if e.event == "approval.requested":
            requested.append(e.data["approval_id"])
            if len(requested) == 2:  # both calls wait: decide one, the run still waits for the other
                r = await node.client(approver).post(f"/v1/approvals/{requested[0]}/decision",
                                                     json={"decision": "approve"})
                assert r.status_code == 200
        if e.event == "approval.resolved" and len(requested) == 2 and e.data["approval_id"] == requested[0]:
            assert (await c.get(f"/v1/runs/{run['id']}")).json()["status"] == "waiting_approval"
            r = await node.client(approver).post(f"/v1/approvals/{requested[1]}/decision",
                                                 json={"decision": "approve"})
            assert r.status_code == 200
        if e.event.startswith("run.") and e.event != "run.started":
            break
    check_stream(seen)
    assert seen[-1].event == "run.completed"
    results = next(e for e in seen if e.event == "custom").data["data"]
    assert results == [{"ok": {"n": 50}}, {"ok": {"n": 60}}]


async def test_invalid_policy_is_refused_and_the_old_one_kept(node):
    _, _, c = await setup(node)
    before = (await c.get("/v1/policy")).text
    r = await c.put("/v1/policy", content="version: 1\nrules:\n  - id: x\n    tool: echo\n    verdict: maybe\n",
                    headers={"Content-Type": "application/yaml"})
    assert r.status_code == 422 and r.json()["code"] == "policy.invalid"
    assert any("line 5" in e for e in r.json()["errors"])
    assert (await c.get("/v1/policy")).text == before


async def test_approval_flow_approve_and_reject(node):
    tid, admin_key, c = await setup(node)
    member = (await c.post("/v1/keys", json={"role": "member"})).json()["api_key"]
    approver = (await c.post("/v1/keys", json={"role": "approver"})).json()["api_key"]
    run = await start(c, "caller", plan({"tool": "echo", "args": {"n": 50}}, {"tool": "echo", "args": {"n": 60}}))
    stream = read_sse(c, f"/v1/runs/{run['id']}/events")
    decisions = [("approve", 50), ("reject", 60)]
    seen = []
    async for e in stream:
        seen.append(e)
        if e.event == "approval.requested":
            assert (await c.get(f"/v1/runs/{run['id']}")).json()["status"] == "waiting_approval"
            pending = (await c.get("/v1/approvals", params={"status": "pending"})).json()["data"]
            assert [p["id"] for p in pending] == [e.data["approval_id"]]
            decision, n = decisions.pop(0)
            assert pending[0]["args"] == {"n": n}
            # a member may not decide; an approver may, once
            r = await node.client(member).post(f"/v1/approvals/{pending[0]['id']}/decision", json={"decision": decision})
            assert r.status_code == 403 and r.json()["code"] == "auth.forbidden"
            r = await node.client(approver).post(f"/v1/approvals/{pending[0]['id']}/decision",
                                                 json={"decision": decision, "reason": "checked"})
            assert r.status_code == 200 and r.json()["status"] == ("approved" if decision == "approve" else "rejected")
            r = await node.client(approver).post(f"/v1/approvals/{pending[0]['id']}/decision", json={"decision": "approve"})
            assert r.status_code == 409 and r.json()["code"] == "approval.already_decided"
        if e.event.startswith("run.") and e.event != "run.started":
            break
    check_stream(seen)
    results = next(e for e in seen if e.event == "custom").data["data"]
    assert results[0] == {"ok": {"n": 50}}
    assert results[1]["error"] == "approval.rejected"
    resolved = [e.data["decision"] for e in seen if e.event == "approval.resolved"]
    assert resolved == ["approved", "rejected"]
    audit = (await c.get("/v1/audit", params={"run_id": run["id"]})).json()["data"]
    kinds = [a["kind"] for a in audit]
    assert "approval.approved" in kinds and "approval.rejected" in kinds
    assert kinds.count("approval.rejected") == 1 and kinds.count("tool.rejected") == 1, kinds  # decision, outcome
    approver_rec = next(a for a in audit if a["kind"] == "approval.approved")
    assert approver_rec["detail"]["approver_key_id"].startswith("key_")


async def test_a_run_canceled_while_waiting_for_approval_withdraws_the_request(node):
    """Approvers must not be left deciding for a run that is gone: once the worker sees the cancel,
    the request is expired with the reason (it used to stay pending until its expiry)."""
    _, _, c = await setup(node)
    run = await start(c, "caller", plan({"tool": "echo", "args": {"n": 50}}))
    async for e in read_sse(c, f"/v1/runs/{run['id']}/events"):
        if e.event == "approval.requested":
            break
    pending = (await c.get("/v1/approvals", params={"status": "pending"})).json()["data"]
    r = await c.post(f"/v1/runs/{run['id']}/cancel")
    assert r.status_code == 200 and r.json()["status"] == "canceled"
    # an approver deciding now (before or after the worker withdraws the request) learns it is moot
    r = await c.post(f"/v1/approvals/{pending[0]['id']}/decision", json={"decision": "approve"})
    assert r.status_code == 403 and r.json()["code"] == "approval.expired", r.text
    assert "the run ended before a decision" in r.json()["detail"]
    for _ in range(100):  # the worker polls for cancels every 0.25 s
        approvals = (await c.get("/v1/approvals")).json()["data"]
        if approvals[0]["status"] != "pending":
            break
        await asyncio.sleep(0.05)
    assert approvals[0]["status"] == "expired" and approvals[0]["decision_reason"] == "the run ended before a decision"
    # the call's one audit record: canceled with its run, or (if the worker's poll saw the request
    # expired by that decision first) refused as an unapproved call
    for _ in range(100):
        audit = (await c.get("/v1/audit", params={"run_id": run["id"]})).json()["data"]
        outcomes = [a for a in audit if a["kind"] in ("tool.canceled", "tool.rejected", "approval.rejected",
                                                      "tool.failed")]
        if outcomes:
            break
        await asyncio.sleep(0.05)
    assert [a["kind"] for a in outcomes] in (["tool.canceled"], ["tool.rejected"]), audit
    events = await collect(c, run["id"])
    check_stream(events)
    assert events[-1].event == "run.canceled"


async def test_cancel_takes_the_runs_requests_off_the_approvers_list_at_once(node):
    """The API's cancel withdraws the run's pending requests itself: they are expired (RUN_ENDED) when
    the cancel returns, not once the run's worker notices (a worker that died never would).
    ``GET /v1/approvals?run_id=`` lists one run's requests."""
    _, _, c = await setup(node)
    runs = [await start(c, "caller", plan({"tool": "echo", "args": {"n": 50 + i}})) for i in range(2)]
    for run in runs:
        async for e in read_sse(c, f"/v1/runs/{run['id']}/events"):
            if e.event == "approval.requested":
                break
    mine = (await c.get("/v1/approvals", params={"status": "pending", "run_id": runs[0]["id"]})).json()["data"]
    assert [a["run_id"] for a in mine] == [runs[0]["id"]] and mine[0]["args"] == {"n": 50}
    r = await c.post(f"/v1/runs/{runs[0]['id']}/cancel")
    assert r.status_code == 200 and r.json()["status"] == "canceled"
    # no waiting: the cancel itself did it
    assert (await c.get("/v1/approvals", params={"status": "pending", "run_id": runs[0]["id"]})).json()["data"] == []
    gone = (await c.get(f"/v1/approvals/{mine[0]['id']}")).json()
    assert gone["status"] == "expired" and gone["decision_reason"] == "the run ended before a decision"
    # the other run's request is untouched
    other = (await c.get("/v1/approvals", params={"status": "pending"})).json()["data"]
    assert [a["run_id"] for a in other] == [runs[1]["id"]]
    r = await c.get("/v1/approvals", params={"run_id": ""})
    assert r.status_code == 422 and r.json()["code"] == "input.invalid"
    await c.post(f"/v1/runs/{runs[1]['id']}/cancel")
    for run in runs:
        events = await collect(c, run["id"])
        check_stream(events)
        assert events[-1].event == "run.canceled"


async def test_racing_decisions_leave_one_decision_in_the_audit_log(node):
    """Two approvers decide the same request at once (approve and reject): one wins (200), one gets 409.
    Each wrote its decision record before deciding (no unrecorded decision); the loser's record is
    then voided by an ``approval.void`` record naming it, so the log holds exactly one decision."""
    _, _, c = await setup(node)
    approver = (await c.post("/v1/keys", json={"role": "approver"})).json()["api_key"]
    run = await start(c, "caller", plan({"tool": "echo", "args": {"n": 50}}))
    async for e in read_sse(c, f"/v1/runs/{run['id']}/events"):
        if e.event == "approval.requested":
            apr = e.data["approval_id"]
            break
    a, b = node.client(approver), c
    r1, r2 = await asyncio.gather(a.post(f"/v1/approvals/{apr}/decision", json={"decision": "approve"}),
                                  b.post(f"/v1/approvals/{apr}/decision", json={"decision": "reject"}))
    assert sorted([r1.status_code, r2.status_code]) == [200, 409], (r1.text, r2.text)
    winner = (r1 if r1.status_code == 200 else r2).json()["status"]
    await collect(c, run["id"])
    audit = (await c.get("/v1/audit", params={"run_id": run["id"]})).json()["data"]
    # the approvers' records (the call's own outcome, tool.rejected when rejected, is not one of them)
    decisions = {a["seq"]: a for a in audit if a["kind"] in ("approval.approved", "approval.rejected")
                 and a["detail"].get("approval_id") == apr and "approver_key_id" in a["detail"]}
    voided = {a["detail"]["voids_seq"] for a in audit if a["kind"] == "approval.void"}
    assert voided <= set(decisions)
    standing = [d["kind"] for seq, d in decisions.items() if seq not in voided]
    assert standing == [f"approval.{winner}"], audit


async def test_repeated_idempotency_key_runs_once_and_charges_nothing(node):
    _, _, c = await setup(node)
    run = await start(c, "caller", plan(
        *[{"tool": "echo", "args": {"n": 3}, "key": "order-1"} for _ in range(5)], concurrent=True))
    results, events = await results_of(c, run["id"])
    assert all(r == {"ok": {"n": 3}} for r in results)
    tool_results = [e.data for e in events if e.event == "tool.result"]
    assert sum(1 for t in tool_results if not t["deduped"]) == 1
    assert sum(1 for t in tool_results if t["deduped"]) == 4
    ledger = (await c.get("/v1/ledger")).json()["data"]
    assert round(sum(e["amount_usd"] for e in ledger if e["scope"] == "tenant"), 6) == 0.001
    r1b = await start(c, "caller", plan({"tool": "echo", "args": {"n": 3}, "key": "order-1", "meta": True}))
    meta, _ = await results_of(c, r1b["id"])
    assert meta[0] == {"meta": {"result": {"n": 3}, "deduped": True}}  # the bundle can tell it did not re-run
    r2 = await start(c, "caller", plan({"tool": "echo", "args": {"n": 4}, "key": "order-1"}))
    results2, _ = await results_of(c, r2["id"])
    assert results2[0]["error"] == "idempotency.mismatch"


STORAGE_POLICY = """
version: 1
rules:
  - {id: storage, tool: "storage.*", verdict: allow}
  - {id: kb, tool: "kb.*", verdict: allow}
"""


async def test_a_derived_key_dedupes_a_repeat_not_a_return_to_an_earlier_value(node):
    """Found by a walkthrough: the key derived from run + tool + args swallowed deliberate repeats.
    write A, write B, write A left B (the third was 'deduped'); a second delete after a re-write left the
    file; two rollbacks undid one step; kb.add alpha, beta, alpha left beta. A repeat is now a duplicate
    only while nothing else in the run acted on the same resource; a rollback is never one."""
    _, _, c = await setup(node, STORAGE_POLICY)

    def w(text: str, path: str = "ws/t.txt") -> dict:
        return {"tool": "storage.write", "args": {"path": path, "content": text, "scope": "shared"}}

    read = {"tool": "storage.read", "args": {"path": "ws/t.txt", "scope": "shared"}}
    delete = {"tool": "storage.delete", "args": {"path": "ws/t.txt", "scope": "shared"}}
    rollback = {"tool": "storage.rollback", "args": {"path": "ws/t.txt", "scope": "shared"}}
    run = await start(c, "caller", plan(
        w("A"), w("B"), w("A"), read,                   # 0-3: A again is a new request
        w("A"), w("A", "ws/other.txt"), w("A"),         # 4-6: only other files in between: duplicates
        delete, w("C"), delete, read,                   # 7-10: the second delete runs
        w("1"), w("2"), w("3"), rollback, rollback, read,  # 11-16: each rollback undoes a step
        {"tool": "kb.add", "args": {"doc_id": "d", "text": "alpha"}}, {"tool": "kb.add", "args": {"doc_id": "d", "text": "beta"}},
        {"tool": "kb.add", "args": {"doc_id": "d", "text": "alpha"}}, {"tool": "kb.search", "args": {"query": "alpha"}},
        {"tool": "kb.delete", "args": {"doc_id": "d"}}, {"tool": "kb.add", "args": {"doc_id": "d", "text": "alpha"}},
        {"tool": "kb.delete", "args": {"doc_id": "d"}}, {"tool": "kb.search", "args": {"query": "alpha"}},  # 21-24
    ))
    results, events = await results_of(c, run["id"])
    deduped = [e.data["deduped"] for e in events if e.event == "tool.result"]
    assert results[3] == {"ok": {"path": "ws/t.txt", "scope": "shared", "content": "A", "size": 1}}, results[3]
    assert deduped[:4] == [False, False, False, False]
    assert deduped[4:7] == [True, False, True]
    assert "error" not in results[9] and results[10]["error"] == "storage.not_found", results[9:11]
    assert deduped[7:10] == [False, False, False]
    assert [r["ok"]["outcome"] for r in results[14:16]] == ["restored", "restored"] and deduped[14:16] == [False, False]
    assert results[16]["ok"]["content"] == "1", results[16]
    assert deduped[17:20] == [False, False, False]
    assert [h["doc_id"] for h in results[20]["ok"]["results"]] == ["d"], results[20]
    assert [r["ok"]["deleted"] for r in (results[21], results[23])] == [True, True] and deduped[21:24] == [False] * 3
    assert results[24]["ok"]["results"] == [], results[24]

    # concurrent duplicates still execute once, and a repeat in a later run is a new request
    run = await start(c, "caller", plan(*[w("X", "ws/c.txt") for _ in range(4)], concurrent=True))
    _, events = await results_of(c, run["id"])
    assert sorted(e.data["deduped"] for e in events if e.event == "tool.result") == [False, True, True, True]


async def test_an_idempotent_result_with_a_nul_is_kept_and_replayed(node):
    """The stored copy of an idempotent result has U+FFFD for each NUL (PostgreSQL holds none): the
    first call gets the real result, a duplicate the stored one, on both stacks. Before, on
    PostgreSQL, the call failed after the tool had run and the key stayed pending."""
    _, _, c = await setup(node)
    call = {"tool": "echo", "args": {"t": "a\x00b"}, "key": "nul-1"}
    run = await start(c, "caller", plan(call, call))
    _, events = await results_of(c, run["id"])
    assert [e.data["deduped"] for e in events if e.event == "tool.result"] == [False, True]
    # as the bundle saw them: its answer is json.dumps(results), where a NUL is an escape, not a NUL
    output = (await c.get(f"/v1/runs/{run['id']}")).json()["output"]
    assert json.loads(output) == [{"ok": {"t": "a\x00b"}}, {"ok": {"t": "a\ufffdb"}}]


async def test_nul_in_a_tool_name_a_key_or_approval_args_is_decided_alike_on_both_stacks(node):
    """Each is refused or decided as on SQLite, with its audit record (on PostgreSQL the record
    itself could not be written, so the call failed audit.unavailable, and an approval with such
    args could not be created). A key past 255 characters is refused, no longer silently dropped
    (the call then ran without the at-most-once protection its bundle asked for)."""
    _, _, c = await setup(node)
    approver = (await c.post("/v1/keys", json={"role": "approver"})).json()["api_key"]
    run = await start(c, "caller", plan(
        {"tool": "ec\x00ho", "args": {"n": 1}},
        {"tool": "echo", "args": {"n": 1}, "key": "k\x00"},
        {"tool": "echo", "args": {"n": 1}, "key": "k" * 256},
        {"tool": "echo", "args": {"n": 50, "t": "a\x00b"}},
    ))
    seen = []
    async for e in read_sse(c, f"/v1/runs/{run['id']}/events"):
        seen.append(e)
        if e.event == "approval.requested":
            assert e.data["args"] == {"n": 50, "t": "a\ufffdb"}
            pending = (await c.get("/v1/approvals", params={"status": "pending"})).json()["data"]
            assert pending[0]["args"] == {"n": 50, "t": "a\ufffdb"}
            r = await node.client(approver).post(f"/v1/approvals/{pending[0]['id']}/decision",
                                                 json={"decision": "approve"})
            assert r.status_code == 200, r.text
        if e.event.startswith("run.") and e.event != "run.started":
            break
    check_stream(seen)
    output = json.loads((await c.get(f"/v1/runs/{run['id']}")).json()["output"])
    assert [r.get("error") for r in output[:3]] == ["input.invalid"] * 3
    assert output[3] == {"ok": {"n": 50, "t": "a\x00b"}}  # approved on its args hash: the real args ran
    audit = (await c.get("/v1/audit", params={"run_id": run["id"]})).json()["data"]
    calls = [a for a in audit if a["kind"].startswith("tool.")]
    assert [a["kind"] for a in calls] == ["tool.invalid", "tool.invalid", "tool.invalid", "tool.allowed", "tool.completed"]
    assert calls[0]["tool"] == "ec\ufffdho"


async def test_concurrent_runs_never_overspend_a_small_cap(node):
    tid, _, c = await setup(node)
    r = await c.put("/v1/budgets", json={"budgets": [{"scope": "tenant", "cap_usd": 0.01}]})
    assert r.status_code == 200, r.text
    runs = await asyncio.gather(*(
        start(c, "caller", plan(*[{"tool": "echo", "args": {"n": 1, "i": i, "r": k}} for i in range(6)], concurrent=True))
        for k in range(4)))
    executed = exceeded = 0
    for run in runs:
        results, _ = await results_of(c, run["id"])
        executed += sum(1 for x in results if "ok" in x)
        exceeded += sum(1 for x in results if x.get("error") == "budget.exceeded")
    assert executed == 10 and exceeded == 14  # cap / price, exactly
    budgets = (await c.get("/v1/budgets")).json()["data"]
    assert budgets[0]["spent_usd"] == 0.01 and budgets[0]["reserved_usd"] == 0


async def test_audit_chain_verifies_and_receipt_is_signed(node):
    tid, _, c = await setup(node)
    run = await start(c, "caller", plan({"tool": "echo", "args": {"n": 1}}, {"tool": "echo", "args": {"n": 500}}))
    await results_of(c, run["id"])
    receipt = (await c.get(f"/v1/runs/{run['id']}/receipt")).json()
    pem = (await c.get("/v1/receipts/public-key")).text
    assert verify_receipt(receipt, pem)
    assert [s["kind"] for s in receipt["spans"]] == ["tool.allowed", "tool.completed", "tool.denied"]
    assert receipt["spans"][2]["rule_id"] == "no-big-echo"
    forged = json.loads(json.dumps(receipt))
    forged["total_cost_usd"] = 0
    assert not verify_receipt(forged, pem)
    audit = node.rt.services.audit
    from supervisor.audit.chain import verify_chain

    records = await audit.list(tid, limit=1000)
    assert verify_chain(tid, records, node.rt.sealer) is None


def test_cli_audit_verify_detects_tampering(tmp_path):
    """The offline verifier: intact → 0; a record changed in the database → non-zero naming it.
    2,500 records: the verifier reads the chain a page (1,000) at a time, the change is on page 3."""
    import sqlite3

    env = {"STOCKADE_DATA_DIR": str(tmp_path), "PATH": "/usr/bin:/bin", "STOCKADE_BUNDLES_DIR": str(tmp_path / "none")}
    cli = [sys.executable, "-m", "app.cli"]
    out = subprocess.run(cli + ["tenant", "create", "acme"], env=env, cwd=ROOT, capture_output=True, text=True, check=True)
    tid = json.loads(out.stdout)["tenant_id"]

    async def write_records() -> None:
        from supervisor.runtime import open_runtime
        from supervisor.settings import Settings

        rt = await open_runtime(Settings(data_dir=tmp_path, bundles_dir=tmp_path / "none"))
        for i in range(2500):
            await rt.recorder.record(tid, "tool.allowed", tool="echo", detail={"i": i})
        await rt.stop()

    asyncio.run(write_records())
    ok = subprocess.run(cli + ["audit", "verify", "--tenant", tid], env=env, cwd=ROOT, capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["records"] == 2501  # and tenant create's key.created
    db = sqlite3.connect(tmp_path / "stockade.db")
    # an attacker with write access to the file drops the guard triggers and rewrites a record
    for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type='trigger' AND tbl_name='audit_log'").fetchall():
        db.execute(f"DROP TRIGGER {name}")
    db.execute("UPDATE audit_log SET detail = '{\"i\": 99}' WHERE tenant_id = ? AND seq = 2100", (tid,))
    db.commit()
    db.close()
    bad = subprocess.run(cli + ["audit", "verify", "--tenant", tid], env=env, cwd=ROOT, capture_output=True, text=True)
    assert bad.returncode != 0 and "record 2100" in bad.stderr and "Traceback" not in bad.stderr


@pytest.mark.node_settings(approval_ttl_s=1.0)
async def test_unanswered_approval_expires_to_rejected(node):
    _, _, c = await setup(node)
    run = await start(c, "caller", plan({"tool": "echo", "args": {"n": 50}}))
    results, events = await results_of(c, run["id"])
    assert results[0]["error"] == "approval.rejected" and "expired" in results[0]["message"]
    assert [e.data["decision"] for e in events if e.event == "approval.resolved"] == ["expired"]
    approvals = (await c.get("/v1/approvals", params={"status": "expired"})).json()["data"]
    assert len(approvals) == 1


async def test_revoked_key_stops_working(node):
    _, _, c = await setup(node)
    made = (await c.post("/v1/keys", json={"role": "viewer"})).json()
    viewer = node.client(made["api_key"])
    assert (await viewer.get("/v1/runs")).status_code == 200
    r = await viewer.post("/v1/runs", json={"bundle": "echo", "input": "x"})
    assert r.status_code == 403 and r.json()["code"] == "auth.forbidden"
    assert (await c.delete(f"/v1/keys/{made['id']}")).status_code == 200
    r = await viewer.get("/v1/runs")
    assert r.status_code == 401 and r.json()["code"] == "auth.invalid"
