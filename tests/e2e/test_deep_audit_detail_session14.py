"""Session 14: how deep an audit detail may nest is Stockade's bound, not the interpreter's, on both stacks.

Session 7's test put a detail nested 3,000 deep in the log and saw GET /v1/audit hold: Python 3.11's JSON
parser gives up near 1,000 levels, so the store kept the text. Two holes remained:

* a detail 256 to ~1,000 deep parsed, and the API's serializer (pydantic-core: 255 levels) failed on it:
  GET /v1/audit was a 500 for the whole tenant on every Python;
* Python 3.13's parser goes several thousand levels deep, so there session 7's own case was a 500 again.

``load_audit_detail`` now keeps as text any detail nested deeper than ``MAX_DETAIL_DEPTH`` (which the
supervisor never writes: ``dump_audit_detail`` refuses it, and the action it would record does not run).
"""

from __future__ import annotations

import json

import pytest

from supervisor.errors import StockadeError
from supervisor.stores._common import MAX_DETAIL_DEPTH, dump_audit_detail, load_audit_detail
from tests.e2e.test_attack_audit_api_session7 import _db, _tenant_with_records
from tests.test_attack_audit_session7 import tamper

pytestmark = pytest.mark.timeout(120)


def nested(n: int) -> str:
    return "[" * n + "]" * n


@pytest.mark.parametrize("depth", [300, 3000])
async def test_a_deeply_nested_hand_edited_detail_does_not_take_the_audit_api_down(node, depth):
    tid, run_id, c = await _tenant_with_records(node)
    text = nested(depth)
    await tamper(_db(node), "UPDATE audit_log SET detail = {detail} WHERE tenant_id = ? AND seq = 2", text, tid)
    r = await c.get("/v1/audit")
    assert r.status_code == 200, r.text[:300]
    data = r.json()["data"]
    assert [d["seq"] for d in data] == [1, 2, 3]
    assert data[1]["detail"] == text  # as stored, and the record named by verification
    assert data[0]["detail"] == {"i": 0, "verdict": "allow"}
    receipt = await c.get(f"/v1/runs/{run_id}/receipt")
    assert receipt.status_code == 500 and receipt.json()["code"] == "audit.corrupt", receipt.text[:300]


def test_the_bound_is_within_what_the_api_can_answer_with():
    import pydantic_core

    deepest = json.loads(nested(MAX_DETAIL_DEPTH - 1))  # inside a detail dict: MAX_DETAIL_DEPTH levels
    assert load_audit_detail(dump_audit_detail({"x": deepest})) == {"x": deepest}
    pydantic_core.to_json({"data": [{"detail": {"x": deepest}}], "next_after": None})  # what GET /v1/audit sends
    with pytest.raises(StockadeError) as exc:
        dump_audit_detail({"x": [deepest]})
    assert exc.value.code == "input.invalid"
    text = json.dumps({"x": [deepest]})
    assert load_audit_detail(text) == text


async def test_the_recorder_refuses_a_detail_too_deep_to_read_back(node):
    tid, _, c = await _tenant_with_records(node)
    with pytest.raises(StockadeError) as exc:
        await node.rt.recorder.record(tid, "tool.allowed", run_id="run_x", detail={"x": json.loads(nested(MAX_DETAIL_DEPTH))})
    assert exc.value.code == "audit.unavailable"
    assert [d["seq"] for d in (await c.get("/v1/audit")).json()["data"]] == [1, 2, 3]  # nothing written
