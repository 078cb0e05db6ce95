"""kb.add / kb.search through the tool classes, on the embedded SQLite store."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from supervisor.errors import StockadeError
from supervisor.settings import Settings
from supervisor.stores.sqlite import SqliteTenantStore, open_sqlite
from supervisor.stores.sqlite.kb import SqliteKbStore
from supervisor.tools.kb import KbAddTool, KbSearchTool, tools
from tests.tools.test_http_helpers import make_ctx

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
async def env(tmp_path):
    db = await open_sqlite(tmp_path / "s.db")
    ts = SqliteTenantStore(db)
    a, b = (await ts.create_tenant("a")).id, (await ts.create_tenant("b")).id
    yield Settings(data_dir=tmp_path), SqliteKbStore(db), a, b
    await db.close()


async def _run(tool, settings, kb, tenant, **args):
    parsed = tool.args_model.model_validate(args)
    ctx = make_ctx(settings, tenant=tenant, kb=kb)
    tool.resource(parsed, ctx)
    return (await tool.run(parsed, ctx)).result


async def test_add_then_search_returns_citable_results(env):
    s, kb, a, _b = env
    out = await _run(KbAddTool(), s, kb, a, text="Stockade pins egress to checked addresses.", title="Egress",
                     source="https://docs.example/egress")
    doc_id = out["doc_id"]
    res = await _run(KbSearchTool(), s, kb, a, query="egress addresses")
    assert res["results"] == [{"doc_id": doc_id, "title": "Egress", "source": "https://docs.example/egress",
                               "snippet": res["results"][0]["snippet"], "score": res["results"][0]["score"]}]
    assert "**egress**" in res["results"][0]["snippet"]
    assert (await _run(KbAddTool(), s, kb, a, text="v2", doc_id="fixed"))["doc_id"] == "fixed"


async def test_search_is_scoped_to_the_runs_tenant(env):
    s, kb, a, b = env
    await _run(KbAddTool(), s, kb, a, text="tenant a private roadmap")
    assert (await _run(KbSearchTool(), s, kb, b, query="roadmap"))["results"] == []
    assert len((await _run(KbSearchTool(), s, kb, a, query="roadmap"))["results"]) == 1


async def test_missing_store_is_tool_unavailable(tmp_path):
    s = Settings(data_dir=tmp_path)
    with pytest.raises(StockadeError) as ei:
        await _run(KbSearchTool(), s, None, "ten_a", query="x")
    assert ei.value.code == "tool.unavailable"


def test_args_and_metadata():
    with pytest.raises(ValidationError):
        KbAddTool.args_model.model_validate({"text": ""})
    with pytest.raises(ValidationError):
        KbAddTool.args_model.model_validate({"text": "x", "tenant_id": "other"})
    with pytest.raises(ValidationError):
        KbSearchTool.args_model.model_validate({"query": "x", "limit": "5"})
    with pytest.raises(ValidationError):
        KbSearchTool.args_model.model_validate({"query": "x", "limit": 0})
    for bad in ({"text": "a\x00b"}, {"text": "x", "title": "\x00"}, {"text": "x", "doc_id": "d\x00"}):
        with pytest.raises(ValidationError, match="NUL"):  # PostgreSQL cannot store it: refused on every stack
            KbAddTool.args_model.model_validate(bad)
    with pytest.raises(ValidationError, match="NUL"):
        KbSearchTool.args_model.model_validate({"query": "a\x00"})
    by_name = {t.name: t for t in tools()}
    assert set(by_name) == {"kb.add", "kb.search"}
    assert by_name["kb.search"].risk == "low" and not by_name["kb.search"].side_effects
    assert by_name["kb.add"].side_effects
