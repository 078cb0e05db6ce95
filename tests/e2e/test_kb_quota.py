"""The knowledge-base quota seen from a bundle: ``ctx.call("kb.add")`` past it raises ToolError ``kb.quota``,
the refusal is in the tenant's audit log, and the store keeps nothing of it. Both stacks, real sandboxes."""

from __future__ import annotations

import pytest

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
