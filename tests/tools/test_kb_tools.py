"""kb.add / kb.search / kb.delete through the tool classes, on the embedded SQLite store."""

from __future__ import annotations

import secrets
from typing import Any

import pytest
from pydantic import ValidationError

from supervisor.audit.chain import Sealer
from supervisor.audit.keys import load_audit_key
from supervisor.audit.recorder import AuditRecorder
from supervisor.chain.base import Binding, CallState
from supervisor.chain.build import build_chain
from supervisor.errors import StockadeError
from supervisor.factory import open_services
from supervisor.policy import load_policy
from supervisor.settings import Settings
from supervisor.stores.kb_port import MAX_TEXT_CHARS, KbQuota, KbUsage
from supervisor.stores.sqlite import SqliteTenantStore, open_sqlite
from supervisor.stores.sqlite.kb import SqliteKbStore
from supervisor.tools.kb import KbAddTool, KbDeleteTool, KbSearchTool, tools
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
    assert set(by_name) == {"kb.add", "kb.search", "kb.delete"}
    assert by_name["kb.search"].risk == "low" and not by_name["kb.search"].side_effects
    assert by_name["kb.add"].side_effects
    assert by_name["kb.delete"].side_effects and by_name["kb.delete"].risk == "medium"
    for bad in ({}, {"doc_id": ""}, {"doc_id": "x" * 201}, {"doc_id": "d\x00"}, {"doc_id": 7}, {"doc_id": "a b"},
                {"doc_id": "-x"}, {"doc_id": "d", "tenant_id": "other"}):
        with pytest.raises(ValidationError):
            KbDeleteTool.args_model.model_validate(bad)
        if "doc_id" in bad and len(bad) == 1:  # the same ids are refused by kb.add, before the policy sees them
            with pytest.raises(ValidationError):
                KbAddTool.args_model.model_validate({"text": "x", **bad})
    # one resource spelling for a document, whichever tool names it: a policy's kb:// glob covers both
    add = KbAddTool.args_model.model_validate({"text": "x", "doc_id": "notes/a"})
    delete = KbDeleteTool.args_model.model_validate({"doc_id": "notes/a"})
    assert KbAddTool().resource(add, None) == KbDeleteTool().resource(delete, None) == "kb://notes/a"


async def test_delete_removes_the_document_of_the_runs_tenant_only(env):
    s, kb, a, b = env
    doc_id = (await _run(KbAddTool(), s, kb, a, text="tenant a quarterly plan"))["doc_id"]
    await _run(KbAddTool(), s, kb, b, text="tenant b quarterly plan", doc_id="same")
    assert await _run(KbDeleteTool(), s, kb, b, doc_id=doc_id) == {"doc_id": doc_id, "deleted": False}
    assert len((await _run(KbSearchTool(), s, kb, a, query="quarterly"))["results"]) == 1  # b cannot touch a's
    assert await _run(KbDeleteTool(), s, kb, a, doc_id="same") == {"doc_id": "same", "deleted": False}
    assert await _run(KbDeleteTool(), s, kb, a, doc_id=doc_id) == {"doc_id": doc_id, "deleted": True}
    assert (await _run(KbSearchTool(), s, kb, a, query="quarterly"))["results"] == []
    assert await kb.usage(a) == KbUsage(0, 0)
    assert await _run(KbDeleteTool(), s, kb, a, doc_id=doc_id) == {"doc_id": doc_id, "deleted": False}
    assert [r["doc_id"] for r in (await _run(KbSearchTool(), s, kb, b, query="quarterly"))["results"]] == ["same"]
    with pytest.raises(StockadeError) as ei:  # an id kb.add would refuse: refused the same way, by the store
        await kb.delete(a, "has space")
    assert ei.value.code == "input.invalid"


async def test_kb_add_over_the_quota_is_refused_with_kb_quota(tmp_path):
    db = await open_sqlite(tmp_path / "s.db")
    try:
        ts, s = SqliteTenantStore(db), Settings(data_dir=tmp_path)
        a, b = (await ts.create_tenant("a")).id, (await ts.create_tenant("b")).id
        kb = SqliteKbStore(db, KbQuota(max_bytes=10**6, max_docs=1))
        await _run(KbAddTool(), s, kb, a, text="first document")
        with pytest.raises(StockadeError) as ei:
            await _run(KbAddTool(), s, kb, a, text="second document")
        # what the session sends the bundle in its error frame (ctx.call raises ToolError with this .code)
        frame = ei.value.to_dict()
        assert frame["code"] == "kb.quota" and frame["retryable"] is False and frame["quota_docs"] == 1
        assert (await _run(KbSearchTool(), s, kb, a, query="second"))["results"] == []
        assert (await _run(KbAddTool(), s, kb, b, text="second document"))["doc_id"]  # b has its own room
    finally:
        await db.close()


async def test_kb_quota_setting_reaches_the_store_and_the_refusal_is_audited(tmp_path):
    # settings -> factory -> store, and the governance chain a bundle's ctx.call("kb.add") goes through
    s = Settings(data_dir=tmp_path / "data", kb_quota_docs=2, kb_quota_mb=1)
    svc = await open_services(s)
    try:
        chain, _ = build_chain(AuditRecorder(svc.audit, Sealer(load_audit_key(s))))
        tenant = (await svc.tenants.create_tenant("t-" + secrets.token_hex(3))).id
        policy = "version: 1\nrules:\n  - id: kb\n    tool: kb.*\n    verdict: allow\n"
        await svc.policies.put(tenant, policy, load_policy(policy).version)
        binding = Binding(tenant_id=tenant, run_id="run_" + secrets.token_hex(4), bundle="b", bundle_version="1")

        async def call(**args: Any) -> dict[str, Any] | StockadeError:
            async def emit(type_: str, data: dict[str, Any]) -> None:
                return None

            try:
                return await chain(CallState(binding=binding, tool_name="kb.add", raw_args=args, services=svc,
                                             emit=emit))
            except StockadeError as exc:
                return exc

        assert isinstance(await call(text="one", doc_id="one"), dict)
        assert isinstance(await call(text="two", doc_id="two"), dict)
        out = await call(text="three")
        assert isinstance(out, StockadeError) and out.code == "kb.quota" and out.extra["quota_docs"] == 2
        # 800,000 bytes each (4-byte characters): one fits in the 1 MB, two do not
        assert isinstance(await call(text="\U0001F600" * 200_000, doc_id="one"), dict)
        out = await call(text="\U0001F600" * 200_000, doc_id="two")
        assert isinstance(out, StockadeError) and out.code == "kb.quota" and out.extra["quota_bytes"] == 1024 * 1024
        records = await svc.audit.list(tenant, run_id=binding.run_id)
        failed = [r for r in records if r.kind == "tool.failed"]
        assert [(r.tool, r.code) for r in failed] == [("kb.add", "kb.quota")] * 2
        assert (await svc.kb.usage(tenant)).docs == 2
    finally:
        await svc.close()


async def test_kb_delete_through_the_chain_frees_quota_under_the_default_policy(tmp_path):
    # what a bundle's ctx.call("kb.delete") goes through: no tenant policy, so the shipped default decides
    s = Settings(data_dir=tmp_path / "data", kb_quota_docs=2, kb_quota_mb=1)
    svc = await open_services(s)
    try:
        chain, _ = build_chain(AuditRecorder(svc.audit, Sealer(load_audit_key(s))))
        tenant = (await svc.tenants.create_tenant("t-" + secrets.token_hex(3))).id
        binding = Binding(tenant_id=tenant, run_id="run_" + secrets.token_hex(4), bundle="b", bundle_version="1")

        async def call(tool: str, **args: Any) -> dict[str, Any] | StockadeError:
            async def emit(type_: str, data: dict[str, Any]) -> None:
                return None

            try:
                return await chain(CallState(binding=binding, tool_name=tool, raw_args=args, services=svc, emit=emit))
            except StockadeError as exc:
                return exc

        assert (await call("kb.add", text="one", doc_id="one"))["doc_id"] == "one"
        assert (await call("kb.add", text="two", doc_id="two"))["doc_id"] == "two"
        assert (await call("kb.add", text="three", doc_id="three")).code == "kb.quota"
        assert await call("kb.delete", doc_id="one") == {"doc_id": "one", "deleted": True}
        assert (await svc.kb.usage(tenant)).docs == 1
        assert (await call("kb.add", text="three", doc_id="three"))["doc_id"] == "three"  # the room it made
        assert await call("kb.delete", doc_id="missing") == {"doc_id": "missing", "deleted": False}
        assert await call("kb.delete", doc_id="one") == {"doc_id": "one", "deleted": True}  # a repeat: the first answer
        assert (await call("kb.delete", doc_id="bad id")).code == "input.invalid"
        records = await svc.audit.list(tenant, run_id=binding.run_id)
        deletes = [r for r in records if r.tool == "kb.delete"]
        allowed = [r for r in deletes if r.kind == "tool.allowed"]
        assert [(r.rule_id, r.detail["resource"]) for r in allowed] == [("default.kb", "kb://one"),
                                                                         ("default.kb", "kb://missing")]
        refused = [r for r in deletes if r.kind not in ("tool.allowed", "tool.completed")]
        assert [(r.kind, r.code) for r in refused] == [("tool.deduped", None), ("tool.invalid", "input.invalid")]
        completed = [r for r in deletes if r.kind == "tool.completed"]
        assert [r.cost_micro for r in completed] == [100, 100]  # the default price, like its siblings
    finally:
        await svc.close()


async def test_a_policy_on_kb_resources_judges_kb_add_and_kb_delete_alike(tmp_path):
    s = Settings(data_dir=tmp_path / "data")
    svc = await open_services(s)
    try:
        chain, _ = build_chain(AuditRecorder(svc.audit, Sealer(load_audit_key(s))))
        tenant = (await svc.tenants.create_tenant("t-" + secrets.token_hex(3))).id
        policy = ("version: 1\nrules:\n  - id: keep-pinned\n    tool: kb.*\n    resource: kb://pinned/**\n"
                  "    verdict: deny\n  - id: kb\n    tool: kb.*\n    verdict: allow\n")
        await svc.policies.put(tenant, policy, load_policy(policy).version)
        await svc.kb.add(tenant, "a pinned note", doc_id="pinned/1")
        binding = Binding(tenant_id=tenant, run_id="run_" + secrets.token_hex(4), bundle="b", bundle_version="1")

        async def call(tool: str, **args: Any) -> dict[str, Any] | StockadeError:
            try:
                return await chain(CallState(binding=binding, tool_name=tool, raw_args=args, services=svc))
            except StockadeError as exc:
                return exc

        for tool, args in (("kb.add", {"text": "x", "doc_id": "pinned/1"}), ("kb.delete", {"doc_id": "pinned/1"})):
            out = await call(tool, **args)
            assert isinstance(out, StockadeError) and (out.code, out.extra["rule_id"]) == ("policy.denied", "keep-pinned")
        assert await call("kb.delete", doc_id="scratch") == {"doc_id": "scratch", "deleted": False}
        assert (await svc.kb.usage(tenant)).docs == 1
    finally:
        await svc.close()


async def test_kb_add_of_text_over_the_limit_is_input_too_large_before_the_policy(tmp_path):
    # the store's check_doc says input.too_large for it; the tool's argument check said input.invalid
    s = Settings(data_dir=tmp_path / "data")
    svc = await open_services(s)
    try:
        chain, _ = build_chain(AuditRecorder(svc.audit, Sealer(load_audit_key(s))))
        tenant = (await svc.tenants.create_tenant("t-" + secrets.token_hex(3))).id
        binding = Binding(tenant_id=tenant, run_id="run_" + secrets.token_hex(4), bundle="b", bundle_version="1")

        async def call(**args: Any) -> dict[str, Any] | StockadeError:
            try:
                return await chain(CallState(binding=binding, tool_name="kb.add", raw_args=args, services=svc))
            except StockadeError as exc:
                return exc

        for text in ("x" * (MAX_TEXT_CHARS + 1), "\U0001F600" * (MAX_TEXT_CHARS + 1), "x\x00" * MAX_TEXT_CHARS):
            out = await call(text=text, doc_id="big")
            assert isinstance(out, StockadeError) and out.code == "input.too_large" and out.http_status == 413
            assert f"{MAX_TEXT_CHARS} characters" in out.detail
        # the same code from the store itself, which the tool's check stands in front of
        with pytest.raises(StockadeError) as ei:
            await svc.kb.add(tenant, "x" * (MAX_TEXT_CHARS + 1))
        assert ei.value.code == "input.too_large"
        # other bad arguments stay input.invalid, as the store has them, even beside a large text
        out = await call(text="ok", title="t" * 501)
        assert out.code == "input.invalid" and "at most 500 characters" in out.detail, out.detail  # was: "500 items"
        assert (await call(text="ok", doc_id="a b")).code == "input.invalid"
        assert (await call(text="")).code == "input.invalid"
        assert (await call(text="x" * (MAX_TEXT_CHARS + 1), title="t" * 501)).code == "input.too_large"
        assert (await svc.kb.usage(tenant)).docs == 0
        assert (await call(text="y" * MAX_TEXT_CHARS, doc_id="big"))["doc_id"] == "big"  # exactly the limit
        records = await svc.audit.list(tenant, run_id=binding.run_id)
        assert [(r.kind, r.code) for r in records][:4] == [("tool.invalid", "input.too_large")] * 3 + [
            ("tool.invalid", "input.invalid")]  # refused before the policy: no tool.allowed
    finally:
        await svc.close()
