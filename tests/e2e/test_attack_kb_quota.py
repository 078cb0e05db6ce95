"""A tenant at its knowledge-base document quota, seen from a bundle: searches keep working, replaces of its
documents (shrinking or growing within the byte limit) still go through, only a new document is refused
(``kb.quota``) and nothing of it is stored. Both stacks, real sandboxes."""

from __future__ import annotations

import pytest

from tests.e2e.test_governance import plan, results_of
from tests.e2e.test_run_pipeline import push, start

pytestmark = pytest.mark.timeout(120)


@pytest.mark.node_settings(kb_quota_docs=2)
async def test_a_tenant_at_its_kb_quota_still_searches_replaces_and_shrinks(node):
    tid, key = await node.tenant()
    await push(node, tid, "caller")
    c = node.client(key)
    run = await start(c, "caller", plan(
        {"tool": "kb.add", "args": {"text": "alpha note about rivers", "doc_id": "d1"}},
        {"tool": "kb.add", "args": {"text": "bravo note about mountains", "doc_id": "d2"}},
        {"tool": "kb.add", "args": {"text": "charlie note", "doc_id": "d3"}},  # a third document: refused
        {"tool": "kb.search", "args": {"query": "note"}},  # at quota, reading works
        {"tool": "kb.add", "args": {"text": "alpha replaced, about lakes and rivers", "doc_id": "d1"}},
        {"tool": "kb.search", "args": {"query": "lakes"}},
        {"tool": "kb.add", "args": {"text": "bravo note about mountains, grown", "doc_id": "d2"}},  # no new doc
        {"tool": "kb.search", "args": {"query": "charlie"}},
    ))
    results, _ = await results_of(c, run["id"])
    errors = [r.get("error") for r in results]
    assert errors == [None, None, "kb.quota", None, None, None, None, None], results
    assert sorted(h["doc_id"] for h in results[3]["ok"]["results"]) == ["d1", "d2"]
    assert [h["doc_id"] for h in results[5]["ok"]["results"]] == ["d1"]
    assert results[7]["ok"]["results"] == []  # the refused document was stored nowhere
    usage = await node.rt.services.kb.usage(tid)
    assert usage.docs == 2
    assert usage.bytes == len("alpha replaced, about lakes and rivers") + len("bravo note about mountains, grown")
