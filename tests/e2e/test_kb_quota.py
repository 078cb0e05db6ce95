"""The knowledge-base quota seen from a bundle: ``ctx.call("kb.add")`` past it raises ToolError ``kb.quota``,
the refusal is in the tenant's audit log, and the store keeps nothing of it; ``kb.delete`` makes room.
Both stacks, real sandboxes."""

from __future__ import annotations

import pytest

from supervisor.stores.kb_port import KbUsage
from tests.e2e.test_governance import plan, results_of
from tests.e2e.test_run_pipeline import push, start

pytestmark = pytest.mark.timeout(120)


@pytest.mark.node_settings(kb_quota_docs=2)
async def test_a_bundle_past_the_kb_quota_gets_kb_quota(node):
    tid, key = await node.tenant()  # the default policy allows kb.*
    await push(node, tid, "caller")
    c = node.client(key)
    run = await start(c, "caller", plan(*({"tool": "kb.add", "args": {"text": f"note number {i}"}} for i in range(3))))
    results, _events = await results_of(c, run["id"])
    assert [r.get("error") for r in results] == [None, None, "kb.quota"], results
    assert results[2]["extra"]["quota_docs"] == 2 and "2 documents" in results[2]["message"]
    audit = (await c.get("/v1/audit", params={"run_id": run["id"]})).json()["data"]
    assert [(a["tool"], a["code"]) for a in audit if a["kind"] == "tool.failed"] == [("kb.add", "kb.quota")]
    assert (await node.rt.services.kb.usage(tid)).docs == 2


@pytest.mark.node_settings(kb_quota_docs=2)
async def test_a_bundle_at_the_kb_quota_deletes_documents_to_make_room(node):
    tid, key = await node.tenant()  # the default policy allows kb.*, kb.delete included
    other, other_key = await node.tenant()
    await push(node, tid, "caller")
    await push(node, other, "caller")
    c = node.client(key)
    run = await start(c, "caller", plan(
        {"tool": "kb.add", "args": {"text": "alpha note", "doc_id": "d1"}},
        {"tool": "kb.add", "args": {"text": "bravo note", "doc_id": "d2"}},
        {"tool": "kb.add", "args": {"text": "charlie note", "doc_id": "d3"}},  # refused: kb.quota
        {"tool": "kb.delete", "args": {"doc_id": "d1"}},
        {"tool": "kb.add", "args": {"text": "charlie note", "doc_id": "d3"}},  # the room d1 left
        {"helper": "kb.delete", "args": {"doc_id": "d2"}},  # the SDK's ctx.kb.delete
        {"tool": "kb.delete", "args": {"doc_id": "never-stored"}},
        {"tool": "kb.search", "args": {"query": "note"}},
    ))
    results, _ = await results_of(c, run["id"])
    assert [r.get("error") for r in results] == [None, None, "kb.quota", None, None, None, None, None], results
    assert results[3]["ok"] == {"doc_id": "d1", "deleted": True}
    assert results[5]["ok"] == {"doc_id": "d2", "deleted": True}
    assert results[6]["ok"] == {"doc_id": "never-stored", "deleted": False}
    assert [h["doc_id"] for h in results[7]["ok"]["results"]] == ["d3"]
    assert await node.rt.services.kb.usage(tid) == KbUsage(1, len("charlie note"))
    audit = (await c.get("/v1/audit", params={"run_id": run["id"]})).json()["data"]
    assert [a["rule_id"] for a in audit if a["tool"] == "kb.delete" and a["kind"] == "tool.allowed"] == [
        "default.kb"] * 3
    # another tenant's bundle naming the same id deletes nothing of this tenant's
    await node.rt.services.kb.add(tid, "delta note", doc_id="d4")
    oc = node.client(other_key)
    run = await start(oc, "caller", plan({"tool": "kb.delete", "args": {"doc_id": "d4"}}))
    results, _ = await results_of(oc, run["id"])
    assert results == [{"ok": {"doc_id": "d4", "deleted": False}}]
    assert (await node.rt.services.kb.usage(tid)).docs == 2
