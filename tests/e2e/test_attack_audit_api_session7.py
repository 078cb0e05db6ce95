"""Attacks on GET /v1/audit, run receipts and the receipt key over HTTP (session 7), on both stacks.

Findings (each fails without its fix):
- a record a database writer left unreadable (nesting deeper than the parser goes on PostgreSQL: GET
  /v1/audit and the run's receipt a 500 for the whole tenant; a NaN verdict on SQLite: the receipt a
  500, and GET /v1/audit showed null for it);
- the supervisor signed a receipt over whatever the database held: a writer's edit of one of the run's
  records (its cost, its verdict, a record moved in from another run, the chain head) came back as a
  validly signed receipt - the signature vouched for the forgery. Now 500 ``audit.corrupt`` naming the record;
  likewise (PostgreSQL) a receipt whose chain head was cut off the end of the chain.
Held: pagination abuse gets 422 input.invalid; hostile run ids never reach a 500.
"""

from __future__ import annotations

from types import SimpleNamespace
from urllib.parse import quote

import pytest

from supervisor.audit.receipts import verify_receipt
from tests.e2e.harness import idle_runs
from tests.test_attack_audit_session7 import tamper

pytestmark = pytest.mark.timeout(120)


def _db(node):
    s = node.rt.settings
    return SimpleNamespace(kind="postgres" if s.uses_postgres else "sqlite", is_pg=s.uses_postgres,
                           url=s.database_url, path=s.sqlite_path)


async def _tenant_with_records(node, n: int = 3):
    tid, key = await node.tenant()
    (run_id,) = await idle_runs(node, tid, 1)
    for i in range(n):
        await node.rt.recorder.record(tid, "tool.allowed", run_id=run_id, tool="echo", detail={"i": i, "verdict": "allow"})
    return tid, run_id, node.client(key)


# each a query string GET /v1/audit must refuse (422 input.invalid), never a 500 nor a silent default
BAD_PAGES = [
    "after=-1", "after=9223372036854775808", "after=abc", "after=1.5", "after=", "after=1e3",
    "limit=0", "limit=-1", "limit=1001", "limit=abc", "limit=99999999999999999999",
]


async def test_audit_pagination_abuse_is_refused(node):
    _, _, c = await _tenant_with_records(node)
    for q in BAD_PAGES:
        r = await c.get(f"/v1/audit?{q}")
        assert r.status_code == 422 and r.json()["code"] == "input.invalid", (q, r.status_code, r.text)
    r = await c.get("/v1/audit?after=9223372036854775807&limit=1000")  # the largest seq: nothing after it
    assert r.status_code == 200 and r.json() == {"data": [], "next_after": None}
    pages, after = [], 0
    while after is not None:  # limit=1 pages through the chain one record at a time, in order
        body = (await c.get(f"/v1/audit?after={after}&limit=1")).json()
        pages += [d["seq"] for d in body["data"]]
        after = body["next_after"]
    assert pages == [1, 2, 3]


# run ids a client may send: NUL, invalid UTF-8, a lone surrogate, 10,000 characters, SQL and LIKE syntax
HOSTILE_RUN_IDS = ["%00", "run_%00x", "%ED%A0%80", "%FF", "%C0%80",
                   "r" * 10_000, quote("' OR '1'='1"), "%25", "_"]


async def test_hostile_run_ids_never_reach_a_500(node):
    _, _, c = await _tenant_with_records(node)
    for rid in HOSTILE_RUN_IDS:
        r = await c.get(f"/v1/audit?run_id={rid}")
        assert r.status_code in (200, 422), (rid[:20], r.status_code, r.text[:200])
        if r.status_code == 200:
            assert r.json()["data"] == []
        r = await c.get(f"/v1/runs/{rid}/receipt")
        assert r.status_code in (404, 422), (rid[:20], r.status_code, r.text[:200])


async def test_a_hand_edited_record_does_not_take_the_audit_api_down(node):
    tid, run_id, c = await _tenant_with_records(node)
    db = _db(node)
    text = "[" * 3000 + "]" * 3000 if db.is_pg else '{"i":1,"verdict":NaN}'  # each store's unreadable detail
    await tamper(db, "UPDATE audit_log SET detail = {detail} WHERE tenant_id = ? AND seq = 2", text, tid)
    r = await c.get("/v1/audit")
    assert r.status_code == 200, r.text[:300]
    assert [d["seq"] for d in r.json()["data"]] == [1, 2, 3]
    assert r.json()["data"][1]["detail"] == text  # as stored: not a NaN silently turned into null
    receipt = await c.get(f"/v1/runs/{run_id}/receipt")  # named, not signed (nor an internal error)
    assert receipt.status_code == 500 and receipt.json()["code"] == "audit.corrupt", receipt.text[:300]
    assert receipt.json()["detail"].startswith("audit record 2 fails verification (content does not match its hash")


# a database writer's edit to one of the run's records, and the receipt the supervisor would then sign over it
RECEIPT_FORGERIES = {
    "cost-changed": "UPDATE audit_log SET cost_micro = 1 WHERE tenant_id = ? AND seq = 2",
    "verdict-flipped": "UPDATE audit_log SET detail = {detail} WHERE tenant_id = ? AND seq = 2",
    "moved-from-another-run": "UPDATE audit_log SET run_id = ? WHERE tenant_id = ? AND seq = 4",
    "chain-head-rewritten": "UPDATE audit_log SET kind = 'tool.denied' WHERE tenant_id = ? AND seq = 4",
}


@pytest.mark.parametrize("forgery", list(RECEIPT_FORGERIES))
async def test_the_supervisor_never_signs_a_receipt_over_a_forged_record(node, forgery):
    tid, run_id, c = await _tenant_with_records(node)
    await node.rt.recorder.record(tid, "tool.allowed", run_id="run_other", tool="echo", cost_micro=7)  # seq 4
    pem = (await c.get("/v1/receipts/public-key")).text
    intact = await c.get(f"/v1/runs/{run_id}/receipt")  # before the edit: signed, and it verifies
    assert intact.status_code == 200 and verify_receipt(intact.json(), pem)
    assert [s["seq"] for s in intact.json()["spans"]] == [1, 2, 3] and intact.json()["chain_head"]["seq"] == 4
    args = {"verdict-flipped": ('{"i": 1, "verdict": "deny"}', tid), "moved-from-another-run": (run_id, tid)}
    await tamper(_db(node), RECEIPT_FORGERIES[forgery], *args.get(forgery, (tid,)))
    r = await c.get(f"/v1/runs/{run_id}/receipt")
    assert r.status_code == 500 and r.json()["code"] == "audit.corrupt", r.text[:300]
    assert "stockade audit verify" in r.json()["detail"]


async def test_a_receipt_over_a_chain_whose_tail_was_cut(node):
    """Records after the run's cut off the chain: PostgreSQL's head row still names the last one, so the
    receipt is refused; SQLite keeps no head apart from the records (only an anchor catches it there)."""
    tid, run_id, c = await _tenant_with_records(node)
    for _ in range(2):
        await node.rt.recorder.record(tid, "tool.denied", run_id="run_other", code="policy.denied")
    db = _db(node)
    await tamper(db, "DELETE FROM audit_log WHERE tenant_id = ? AND seq > 3", tid)
    r = await c.get(f"/v1/runs/{run_id}/receipt")
    if db.is_pg:
        assert r.status_code == 500 and r.json()["code"] == "audit.corrupt", r.text[:300]
        assert r.json()["detail"] == "the chain's head row names record 5 (records deleted from the end)"
    else:
        assert r.status_code == 200 and r.json()["chain_head"]["seq"] == 3


@pytest.mark.parametrize("deleted", [2, 4], ids=["a-record-of-the-run", "another-runs-record-mid-run"])
async def test_a_receipt_over_a_run_with_a_record_deleted_mid_run_is_refused(node, deleted):
    """Session 8 (carried over): each remaining record of the run still verified on its own, so the
    supervisor signed a receipt without the deleted call - as if it never happened. Every record between
    the run's first and last is now checked to link to the one before it."""
    tid, run_id, c = await _tenant_with_records(node, 2)  # seq 1, 2
    await node.rt.recorder.record(tid, "tool.allowed", run_id="run_other", tool="echo")  # seq 3
    await node.rt.recorder.record(tid, "tool.allowed", run_id="run_other", tool="echo")  # seq 4
    await node.rt.recorder.record(tid, "tool.completed", run_id=run_id, tool="echo")  # seq 5
    pem = (await c.get("/v1/receipts/public-key")).text
    intact = await c.get(f"/v1/runs/{run_id}/receipt")
    assert intact.status_code == 200 and verify_receipt(intact.json(), pem)
    assert [s["seq"] for s in intact.json()["spans"]] == [1, 2, 5]
    await tamper(_db(node), f"DELETE FROM audit_log WHERE tenant_id = ? AND seq = {deleted}", tid)
    r = await c.get(f"/v1/runs/{run_id}/receipt")
    assert r.status_code == 500 and r.json()["code"] == "audit.corrupt", r.text[:300]
    assert r.json()["detail"].startswith(f"audit record {deleted + 1} fails verification (sequence gap"), r.json()
