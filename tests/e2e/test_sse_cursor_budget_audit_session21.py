"""Two gaps of the REST API (session 21), through a whole node on both stacks.

1. The SSE cursor: ``?after=`` was an ``int`` query parameter, so ``after=1.0``, ``+3``, `` 3``, ``3_000`` and
   ``-0`` were read as numbers (pydantic's lax int), while ``Last-Event-ID`` took ASCII digits only; a repeated
   ``after`` and two ``Last-Event-ID`` headers silently took one value. Both now read one way: ASCII digits up
   to MAX_ID, one value, else 422 ``input.invalid`` naming the parameter. A non-empty ``Last-Event-ID`` wins
   over ``?after=`` (an EventSource opened on ``...?after=5`` reconnects to that same URL with it).
2. ``PUT /v1/budgets`` changed caps without an audit record; it now writes one ``budget.updated`` naming the key
   and every cap set, after the caps are written (as ``policy.updated``), and nothing on refused input.
"""

from __future__ import annotations

import asyncio

import pytest

from app.deps import MAX_ID
from supervisor.errors import StockadeError
from supervisor.events import RunEmitter
from tests.e2e.harness import idle_runs, read_sse

pytestmark = pytest.mark.timeout(90)


def _problem(r, code: str = "input.invalid", status: int = 422) -> dict:
    assert r.status_code == status, (r.status_code, r.text[:300])
    assert r.headers["content-type"].startswith("application/problem+json"), r.headers
    body = r.json()
    assert body["code"] == code, body
    return body


async def _ended_run(node, n: int = 6) -> tuple[str, str]:
    """A run with ``n`` events (the last its terminal one): every stream of it ends by itself."""
    tid, key = await node.tenant()
    [run_id] = await idle_runs(node, tid, 1)
    emitter = RunEmitter(node.rt.services.runs, node.rt.services.events, tid, run_id)
    for i in range(n - 1):
        await emitter.emit("message.delta", {"channel": "answer", "text": str(i)})
    await emitter.finish("succeeded", {})
    return key, run_id


async def _ids(c, path: str, headers=None) -> list[int]:
    async with asyncio.timeout(20):
        return [e.id async for e in read_sse(c, path, headers=headers)]


# --- 1. the SSE cursor

BAD_AFTERS = [
    "1.0",  # was: 1 (pydantic's lax int takes an integral float spelling)
    "+3",  # was: 3
    " 3", "3 ",  # was: 3 (whitespace stripped)
    "3_000",  # was: 3000 (Python's digit grouping)
    "0x10", "1e3", "3.5", "abc", "-1", "",
    "\u0661\u0662",  # Arabic-Indic digits
    "\uff11\uff12",  # fullwidth digits
    "\u00b2",  # superscript two: isdigit() is true
    str(MAX_ID + 1),  # past bigint
    "9" * 5000,  # int() of it raises past 4300 digits
]


@pytest.mark.parametrize("bad", BAD_AFTERS)
async def test_after_is_ascii_digits_only(node, bad):
    key, run_id = await _ended_run(node)
    c = node.client(key)
    async with asyncio.timeout(20):
        r = await c.get(f"/v1/runs/{run_id}/events", params={"after": bad})
    body = _problem(r)
    assert "after" in body["detail"], body


async def test_after_edges_that_are_numbers_still_resume(node):
    """Leading zeros are the number (as in Last-Event-ID); MAX_ID itself is a cursor (past every event: 204)."""
    key, run_id = await _ended_run(node)
    c = node.client(key)
    assert await _ids(c, f"/v1/runs/{run_id}/events?after=003") == [4, 5, 6]
    assert await _ids(c, f"/v1/runs/{run_id}/events?after=0") == [1, 2, 3, 4, 5, 6]
    async with asyncio.timeout(20):
        r = await c.get(f"/v1/runs/{run_id}/events", params={"after": str(MAX_ID)})
    assert r.status_code == 204, r.text


@pytest.mark.parametrize("query", ["after=1&after=5", "after=2&after=2", "after=1&after=x"])
async def test_after_named_twice_is_refused(node, query):
    """Was: one of the two values taken silently (a proxy or a log may have read the other)."""
    key, run_id = await _ended_run(node)
    c = node.client(key)
    async with asyncio.timeout(20):
        r = await c.get(f"/v1/runs/{run_id}/events?{query}")
    assert "after" in _problem(r)["detail"]


@pytest.mark.parametrize("values", [("4", "0"), ("3", "3"), ("", "3")])
async def test_two_last_event_id_headers_are_refused(node, values):
    """Was: the first taken silently. Two field lines are one list value (RFC 9110 5.3), as ``1, 2`` in one
    header is, which was already refused."""
    key, run_id = await _ended_run(node)
    c = node.client(key)
    async with asyncio.timeout(20):
        r = await c.get(f"/v1/runs/{run_id}/events", headers=[("Last-Event-ID", v) for v in values])
    assert "Last-Event-ID" in _problem(r)["detail"]


async def test_last_event_id_wins_over_after_and_empty_means_none(node):
    """An EventSource opened on ``...?after=2`` reconnects to that same URL with ``Last-Event-ID`` = the last
    event it got (the newer position): the header wins, whether above or below ``after``. An empty header
    (HTML's EventSource sends none then) is no id: ``after`` holds."""
    key, run_id = await _ended_run(node)
    c = node.client(key)
    path = f"/v1/runs/{run_id}/events?after=2"
    assert await _ids(c, path) == [3, 4, 5, 6]
    assert await _ids(c, path, {"Last-Event-ID": "4"}) == [5, 6]
    assert await _ids(c, path, {"Last-Event-ID": "1"}) == [2, 3, 4, 5, 6]
    assert await _ids(c, path, {"Last-Event-ID": ""}) == [3, 4, 5, 6]
    assert await _ids(c, f"/v1/runs/{run_id}/events", {"Last-Event-ID": ""}) == [1, 2, 3, 4, 5, 6]
    async with asyncio.timeout(20):
        done = await c.get(path, headers={"Last-Event-ID": "6"})  # the terminal event's id: nothing left
        assert done.status_code == 204, done.text
        # a bad ?after= is refused even where the header would have won: bad input never passes unread
        _problem(await c.get(f"/v1/runs/{run_id}/events?after=1.0", headers={"Last-Event-ID": "4"}))
        # nor does an id with anything but ASCII digits around it (was: str.strip() took "3\xa0" as 3)
        _problem(await c.get(f"/v1/runs/{run_id}/events", headers={"Last-Event-ID": b"3\xa0"}))


async def test_the_openapi_document_says_what_after_takes(node):
    """An integer from 0 to MAX_ID, as it always was (a client generated from the document keeps working): what
    the server now reads strictly (ASCII digits) is what an integer's decimal spelling is."""
    key, run_id = await _ended_run(node)
    c = node.client(key)
    async with asyncio.timeout(20):
        doc = (await c.get("/openapi.json")).json()
        params = {p["name"]: p for p in doc["paths"]["/v1/runs/{run_id}/events"]["get"]["parameters"]}
        schema = params["after"]["schema"]
        assert params["after"]["in"] == "query" and not params["after"]["required"]
        integer = next(x for x in schema["anyOf"] if x.get("type") == "integer")
        assert (integer["minimum"], integer["maximum"]) == (0, MAX_ID), schema
        assert str(MAX_ID) in params["after"]["description"]
        assert params["last-event-id"]["in"] == "header"
    assert await _ids(c, f"/v1/runs/{run_id}/events?after=5") == [6]


# --- 2. PUT /v1/budgets is audited


async def _audit(c) -> list[dict]:
    return (await c.get("/v1/audit", params={"limit": 1000})).json()["data"]


async def _tenant_with_user_and_project(node):
    _, key = await node.tenant()
    c = node.client(key)
    user = (await c.post("/v1/users", json={"name": "ann"})).json()["id"]
    project = (await c.post("/v1/projects", json={"name": "apollo"})).json()["id"]
    me = (await c.get("/v1/me")).json()["key_id"]
    return c, me, user, project


async def test_a_budget_change_writes_one_budget_updated_record(node):
    """Was: no record at all - every other admin change (policy, keys, bundles, MCP servers) had one."""
    c, me, user, project = await _tenant_with_user_and_project(node)
    async with asyncio.timeout(30):
        before = await _audit(c)
        caps = [{"scope": "tenant", "cap_usd": 50}, {"scope": "project", "scope_id": project, "cap_usd": 12.5},
                {"scope": "user", "scope_id": user, "cap_usd": 0.000001, "period": "lifetime"}]
        r = await c.put("/v1/budgets", json={"budgets": caps})
        assert r.status_code == 200, r.text
        after = await _audit(c)
        assert after[:len(before)] == before
        [rec] = after[len(before):]
        assert rec["kind"] == "budget.updated" and rec["run_id"] is None, rec
        tid = (await c.get("/v1/me")).json()["tenant_id"]
        assert rec["detail"] == {"key_id": me, "budgets": [
            {"scope": "tenant", "scope_id": tid, "period": "month", "cap_usd": 50.0, "previous": None},
            {"scope": "project", "scope_id": project, "period": "month", "cap_usd": 12.5, "previous": None},
            {"scope": "user", "scope_id": user, "period": "lifetime", "cap_usd": 0.000001, "previous": None}]}, rec
        # a second PUT (the same caps: a retry) is a second record - the chain says each time caps were set
        r = await c.put("/v1/budgets", json={"budgets": caps[:1]})
        assert r.status_code == 200, r.text
        again = await _audit(c)
        assert [a["kind"] for a in again[len(after):]] == ["budget.updated"]
        assert again[-1]["detail"]["budgets"] == [
            {"scope": "tenant", "scope_id": tid, "period": "month", "cap_usd": 50.0,
             "previous": {"period": "month", "cap_usd": 50.0}}]
        assert again[-1]["prev_hash"] == rec["hash"]
        # a change records the cap it replaced (was: only the new caps, so the chain could not say what changed)
        r = await c.put("/v1/budgets", json={"budgets": [
            {"scope": "tenant", "cap_usd": 7, "period": "lifetime"},
            {"scope": "user", "scope_id": user, "cap_usd": 2}]})
        assert r.status_code == 200, r.text
        assert (await _audit(c))[-1]["detail"]["budgets"] == [
            {"scope": "tenant", "scope_id": tid, "period": "lifetime", "cap_usd": 7.0,
             "previous": {"period": "month", "cap_usd": 50.0}},
            {"scope": "user", "scope_id": user, "period": "month", "cap_usd": 2.0,
             "previous": {"period": "lifetime", "cap_usd": 0.000001}}]


@pytest.mark.parametrize("case", ["named_twice", "unknown_project", "unknown_user", "other_tenant_id",
                                  "no_scope_id", "bad_body"])
async def test_refused_budget_changes_write_no_record_and_change_nothing(node, case):
    c, _, user, project = await _tenant_with_user_and_project(node)
    async with asyncio.timeout(30):
        r = await c.put("/v1/budgets", json={"budgets": [{"scope": "tenant", "cap_usd": 5}]})
        assert r.status_code == 200, r.text
        budgets, audit = (await c.get("/v1/budgets")).json()["data"], await _audit(c)
        first = {"scope": "tenant", "cap_usd": 7}  # valid on its own: the bad entry after it must stop it too
        bad, code = {
            "named_twice": ([first, {"scope": "project", "scope_id": project, "cap_usd": 1},
                             {"scope": "project", "scope_id": project, "cap_usd": 2}], "input.invalid"),
            "unknown_project": ([first, {"scope": "project", "scope_id": "prj_nope", "cap_usd": 1}], "not_found"),
            "unknown_user": ([first, {"scope": "user", "scope_id": "usr_nope", "cap_usd": 1}], "not_found"),
            "other_tenant_id": ([{"scope": "tenant", "scope_id": "ten_other", "cap_usd": 1}], "input.invalid"),
            "no_scope_id": ([first, {"scope": "user", "cap_usd": 1}], "input.invalid"),
            "bad_body": ([first, {"scope": "user", "scope_id": user, "cap_usd": -1}], "input.invalid"),
        }[case]
        r = await c.put("/v1/budgets", json={"budgets": bad})
        _problem(r, code, 404 if code == "not_found" else 422)
        assert (await c.get("/v1/budgets")).json()["data"] == budgets
        assert await _audit(c) == audit


async def test_a_budget_change_whose_record_cannot_be_written_is_not_a_success(node, monkeypatch):
    """As for the policy: the caps are written first (a record states a change that happened), then the record.
    If the audit log cannot take it the client is told ``audit.unavailable`` (retryable), never 200; its retry
    of the same PUT records the change."""
    c, me, _, _ = await _tenant_with_user_and_project(node)
    audit_log = node.rt.services.audit
    real_append = audit_log.append

    async def away(*args, **kwargs):
        raise StockadeError("store.unavailable", "the audit store is away (test)")

    async with asyncio.timeout(30):
        before = await _audit(c)
        monkeypatch.setattr(audit_log, "append", away)
        r = await c.put("/v1/budgets", json={"budgets": [{"scope": "tenant", "cap_usd": 3}]})
        body = _problem(r, "audit.unavailable", 503)
        assert body["retryable"] is True
        monkeypatch.setattr(audit_log, "append", real_append)
        assert await _audit(c) == before
        r = await c.put("/v1/budgets", json={"budgets": [{"scope": "tenant", "cap_usd": 3}]})
        assert r.status_code == 200 and [b["cap_usd"] for b in r.json()["data"]] == [3.0], r.text
        recs = (await _audit(c))[len(before):]
        assert [(a["kind"], a["detail"]["key_id"], a["detail"]["budgets"][0]["cap_usd"]) for a in recs] == [
            ("budget.updated", me, 3.0)]
