"""A receipt over a run whose FIRST or LAST record a database writer deleted is refused (both stacks).

Session 8 checked the chain from the run's first remaining record to its last: a record deleted from
either end left a shorter run whose records all still linked, and the supervisor signed a receipt without
that call. The window now reaches one record past each end: the record before the run's first must still
be there and link on, and the record after its last must link to it.
"""

from __future__ import annotations

import pytest

from supervisor.audit.receipts import verify_receipt
from tests.e2e.harness import idle_runs
from tests.e2e.test_attack_audit_api_session7 import _db, _tenant_with_records
from tests.test_attack_audit_session7 import tamper

pytestmark = pytest.mark.timeout(120)


@pytest.mark.parametrize("deleted", ["first", "last"])
async def test_a_receipt_over_a_run_with_its_first_or_last_record_deleted_is_refused(node, deleted):
    tid, other, c = await _tenant_with_records(node, 1)  # seq 1: another run's record before the run's
    (run_id,) = await idle_runs(node, tid, 1)
    for i in range(3):  # seq 2, 3, 4: the run's records
        await node.rt.recorder.record(tid, "tool.allowed", run_id=run_id, tool="echo", detail={"i": i})
    await node.rt.recorder.record(tid, "tool.allowed", run_id=other, tool="echo")  # seq 5: after the run's
    pem = (await c.get("/v1/receipts/public-key")).text
    intact = await c.get(f"/v1/runs/{run_id}/receipt")
    assert intact.status_code == 200 and verify_receipt(intact.json(), pem)
    assert [s["seq"] for s in intact.json()["spans"]] == [2, 3, 4]
    seq = 2 if deleted == "first" else 4
    await tamper(_db(node), f"DELETE FROM audit_log WHERE tenant_id = ? AND seq = {seq}", tid)
    r = await c.get(f"/v1/runs/{run_id}/receipt")
    assert r.status_code == 500 and r.json()["code"] == "audit.corrupt", r.text[:300]
    assert r.json()["detail"].startswith("audit record "), r.json()
    assert "sequence gap" in r.json()["detail"], r.json()


async def test_a_receipt_of_a_run_that_starts_the_chain_or_ends_it_is_signed(node):
    """The window's edges: a run whose first record is the chain's first (no record before) and whose last
    is the chain's last (none after) still gets its receipt."""
    tid, run_id, c = await _tenant_with_records(node, 3)  # seq 1..3, nothing before or after
    pem = (await c.get("/v1/receipts/public-key")).text
    r = await c.get(f"/v1/runs/{run_id}/receipt")
    assert r.status_code == 200 and verify_receipt(r.json(), pem)
    assert [s["seq"] for s in r.json()["spans"]] == [1, 2, 3]
