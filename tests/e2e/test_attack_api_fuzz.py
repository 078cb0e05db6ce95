"""Hostile REST requests (schemathesis and hand-crafted): a stable problem+json code, never a 500, nothing changed.

Found by fuzzing the live API on both stacks (each test below says what it was before):

* a lone UTF-16 surrogate (``"\\ud800"``: valid JSON, not Unicode text) in an optional free-text field
  reached the stores - pydantic refuses one in a constrained ``str`` but not in ``Text | None`` - and
  answered 500, or 503 ``audit.unavailable`` (retryable) for an approval's ``reason``;
* a NUL in a bundle's ``bundle.yaml`` was stored on SQLite and refused by PostgreSQL with its internals;
* ``PUT /v1/budgets`` naming one account twice silently applied the last entry;
* a JSON body with a duplicate key, or in UTF-16 / UTF-32, was read one way by Stockade and another by
  anything in front of it (the last ``role`` won; a UTF-16 body created a run);
* ``POST /v1/runs%0A`` and ``PUT /v1/policy%0A`` reached their routes (a route regex's ``$``);
* of two ``Authorization`` or ``Idempotency-Key`` headers the first counted, silently;
* the OpenAPI document described every error as FastAPI's ``{"detail": [...]}`` JSON and the YAML,
  Prometheus, PEM and SSE answers as JSON.
"""

from __future__ import annotations

import asyncio
import io
import json
import tarfile
import time

import pytest

from supervisor.stores.records import Approval
from tests.e2e.harness import idle_runs

pytestmark = [pytest.mark.timeout(60), pytest.mark.parametrize("stack_kind", ["embedded", "production"])]

SURROGATE = "<lone>"  # stands for "\\ud800" in a body: valid JSON, not valid Unicode text


def _is_problem(r, status: int, code: str) -> bool:
    if r.status_code != status or not r.headers.get("content-type", "").startswith("application/problem+json"):
        return False
    body = r.json()
    return body.get("code") == code and body.get("status") == status


def _json(text: str) -> dict:
    return {"content": text.encode(), "headers": {"Content-Type": "application/json"}}


def _with_surrogate(obj: dict, escape: str = "\\ud800") -> dict:
    return _json(json.dumps(obj).replace(SURROGATE, escape))


async def _pending_approval(node, tenant_id: str, approval_id: str) -> None:
    """A pending request for approval on an idle run (stored, never enqueued): no sandbox needed."""
    [run] = await idle_runs(node, tenant_id, 1)
    now = time.time()
    await node.rt.services.approvals.create(Approval(
        id=approval_id, tenant_id=tenant_id, run_id=run, tool="echo", args={"n": 50}, args_hash="0" * 64,
        rule_id="r", reason=None, status="pending", created_at=now, expires_at=now + 600))


@pytest.mark.parametrize(("method", "path", "body"), [
    ("POST", "/v1/runs", {"bundle": "echo", "input": "x", "user_id": SURROGATE}),
    ("POST", "/v1/runs", {"bundle": "echo", "input": "x", "project_id": f"a{SURROGATE}b"}),
    ("POST", "/v1/keys", {"role": "member", "user_id": SURROGATE}),
    ("POST", "/v1/keys", {"role": "member", "project_id": SURROGATE}),
    ("PUT", "/v1/budgets", {"budgets": [{"scope": "user", "scope_id": SURROGATE, "cap_usd": 1}]}),
    ("PUT", "/v1/budgets", {"budgets": [{"scope": "project", "scope_id": SURROGATE, "cap_usd": 1}]}),
    ("POST", "/v1/runs", {"bundle": "echo", "input": SURROGATE}),
    ("POST", "/v1/users", {"name": SURROGATE}),
])
async def test_a_lone_surrogate_is_invalid_input_not_a_server_error(node, method, path, body):
    tid, key = await node.tenant()
    c = node.client(key)
    async with asyncio.timeout(20):
        runs_before = (await c.get("/v1/runs")).json()["data"]
        keys_before = (await c.get("/v1/keys")).json()["data"]
        budgets_before = (await c.get("/v1/budgets")).json()["data"]
        r = await c.request(method, path, **_with_surrogate(body))
        assert _is_problem(r, 422, "input.invalid"), (r.status_code, r.text)
        assert (await c.get("/v1/runs")).json()["data"] == runs_before
        assert (await c.get("/v1/keys")).json()["data"] == keys_before
        assert (await c.get("/v1/budgets")).json()["data"] == budgets_before
        # the node is fine afterwards: the same request with valid text works
        ok = await c.request(method, path, **_with_surrogate(body, "\\ud83d\\ude00"))
        assert ok.status_code < 500, ok.text


async def test_a_lone_surrogate_in_an_approval_reason_is_invalid_input(node):
    tid, key = await node.tenant()
    await _pending_approval(node, tid, "apr_fuzz")
    c = node.client(key)
    async with asyncio.timeout(20):
        audit_before = (await c.get("/v1/audit")).json()["data"]
        r = await c.post("/v1/approvals/apr_fuzz/decision",
                         **_with_surrogate({"decision": "approve", "reason": SURROGATE}))
        assert _is_problem(r, 422, "input.invalid"), (r.status_code, r.text)
        assert (await c.get("/v1/approvals/apr_fuzz")).json()["status"] == "pending"
        assert (await c.get("/v1/audit")).json()["data"] == audit_before


def _tgz(name: str, manifest_extra: str) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as t:
        for path, data in ((f"{name}/bundle.yaml", f"name: {name}\nversion: '1'\n{manifest_extra}".encode()),
                           (f"{name}/main.py", b"async def main(ctx):\n    await ctx.answer('hi')\n")):
            info = tarfile.TarInfo(path)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@pytest.mark.parametrize("extra", [
    'description: "a\\0b"\n',
    "policy:\n  rules:\n    - id: r\n      tool: echo\n      verdict: deny\n      reason: \"no\\x00pe\"\n",
])
async def test_a_nul_in_a_bundle_manifest_is_refused_alike_on_every_stack(node, extra):
    """Was: SQLite stored the manifest with the NUL (201), PostgreSQL answered 422 ``input.invalid`` with
    its own internals ("rejected by the store: unsupported Unicode escape sequence ...")."""
    tid, key = await node.tenant()
    c = node.client(key)
    async with asyncio.timeout(20):
        before = (await c.get("/v1/bundles")).json()["data"]
        r = await c.post("/v1/bundles", content=_tgz("nulbundle", extra), headers={"Content-Type": "application/gzip"})
        assert _is_problem(r, 422, "bundle.invalid"), (r.status_code, r.text)
        assert "NUL" in r.json()["detail"]
        assert (await c.get("/v1/bundles")).json()["data"] == before
        r = await c.post("/v1/runs", json={"bundle": "nulbundle", "input": "x"})
        assert _is_problem(r, 404, "bundle.not_found"), r.text


@pytest.mark.parametrize("budgets", [
    [{"scope": "tenant", "cap_usd": 100}, {"scope": "tenant", "cap_usd": 0}],
    [{"scope": "tenant", "cap_usd": 100}, {"scope": "tenant", "scope_id": "{tid}", "cap_usd": 0, "period": "lifetime"}],
    [{"scope": "user", "scope_id": "{user}", "cap_usd": 1}, {"scope": "user", "scope_id": "{user}", "cap_usd": 2}],
])
async def test_a_budgets_put_naming_one_account_twice_is_refused_and_changes_nothing(node, budgets):
    """Was: 200, the last entry silently won (each entry was written in turn), whatever the first said."""
    tid, key = await node.tenant()
    c = node.client(key)
    async with asyncio.timeout(20):
        user = (await c.post("/v1/users", json={"name": "u"})).json()["id"]
        r = await c.put("/v1/budgets", json={"budgets": [{"scope": "tenant", "cap_usd": 5},
                                                         {"scope": "user", "scope_id": user, "cap_usd": 5}]})
        assert r.status_code == 200, r.text
        before = r.json()["data"]
        body = json.loads(json.dumps({"budgets": budgets}).replace("{tid}", tid).replace("{user}", user))
        r = await c.put("/v1/budgets", json=body)
        assert _is_problem(r, 422, "input.invalid"), (r.status_code, r.text)
        assert (await c.get("/v1/budgets")).json()["data"] == before


async def test_a_json_body_with_a_duplicate_key_is_refused_and_changes_nothing(node):
    """Was: the last of the duplicates won (``json.loads``), so a body meant one thing to whatever read it first
    (a gateway, a log, an audit of the request) and another to Stockade: ``{"role": "viewer", "role": "admin"}``
    minted an admin key, ``{"decision": "approve", "decision": "reject"}`` rejected."""
    tid, key = await node.tenant()
    await _pending_approval(node, tid, "apr_dup")
    c = node.client(key)
    async with asyncio.timeout(20):
        keys_before = (await c.get("/v1/keys")).json()["data"]
        runs_before = (await c.get("/v1/runs")).json()["data"]
        for path, body in [
            ("/v1/keys", '{"role": "viewer", "role": "admin"}'),
            ("/v1/approvals/apr_dup/decision", '{"decision": "approve", "decision": "reject"}'),
            ("/v1/runs", '{"bundle": "echo", "input": "a", "input": "b"}'),
            ("/v1/runs", '{"bundle": "echo", "input": "a", "user_id": {"x": 1, "x": 2}}'),  # at any depth
            ("/v1/projects", '{"name": "a", "name": "a"}'),  # even when both agree
        ]:
            r = await c.post(path, **_json(body))
            assert _is_problem(r, 422, "input.invalid"), (path, r.status_code, r.text)
            assert "duplicate" in r.json()["detail"], r.text
        assert (await c.get("/v1/keys")).json()["data"] == keys_before
        assert (await c.get("/v1/runs")).json()["data"] == runs_before
        assert (await c.get("/v1/approvals/apr_dup")).json()["status"] == "pending"
        r = await c.put("/v1/budgets", **_json('{"budgets": [{"scope": "tenant", "cap_usd": 1, "cap_usd": 2}]}'))
        assert _is_problem(r, 422, "input.invalid"), r.text
        # the same keys in different objects are fine
        r = await c.put("/v1/budgets", json={"budgets": [{"scope": "tenant", "cap_usd": 1}]})
        assert r.status_code == 200, r.text


@pytest.mark.parametrize("suffix", ["%0A", "%0D", "%09", "%1B", "%7F", "%0A/"])
async def test_a_control_character_in_the_path_is_refused_and_changes_nothing(node, suffix):
    """Was: a route's regex ends in ``$``, which also matches before one trailing newline, so
    ``POST /v1/runs%0A`` created a run (201) and ``PUT /v1/policy%0A`` replaced the policy (200): a path that
    is no resource of the API, past any gateway rule written for ``/v1/runs`` or ``/v1/policy``."""
    tid, key = await node.tenant()
    c = node.client(key)
    async with asyncio.timeout(20):
        policy_before = (await c.get("/v1/policy")).text
        for method, path, kw in [
            ("POST", "/v1/runs", {"json": {"bundle": "echo", "input": "x"}}),
            ("PUT", "/v1/policy", {"content": b"version: 1\nrules: []\n", "headers": {"Content-Type": "application/yaml"}}),
            ("POST", "/v1/keys", {"json": {"role": "admin"}}),
            ("GET", "/v1/runs", {}),
        ]:
            r = await c.request(method, path + suffix, **kw)
            assert _is_problem(r, 422, "input.invalid"), (method, path + suffix, r.status_code, r.text)
        assert (await c.get("/v1/runs")).json()["data"] == []
        assert (await c.get("/v1/policy")).text == policy_before
        assert len((await c.get("/v1/keys")).json()["data"]) == 1


async def test_a_repeated_authorization_or_idempotency_header_is_refused(node):
    """Was: the first of two ``Authorization`` headers authenticated and the second was ignored, the first of
    two ``Idempotency-Key`` headers was the key; a proxy that reads the last one (or joins them) sees
    another request. RFC 9110 allows neither field to repeat."""
    tid, key = await node.tenant()
    c = node.client()
    async with asyncio.timeout(20):
        auth = [("Authorization", f"Bearer {key}")]
        r = await c.get("/v1/runs", headers=[*auth, ("Authorization", "Bearer stk_other")])
        assert _is_problem(r, 401, "auth.invalid"), (r.status_code, r.text)
        r = await c.get("/v1/runs", headers=[*auth, *auth])
        assert _is_problem(r, 401, "auth.invalid"), (r.status_code, r.text)
        r = await c.post("/v1/runs", json={"bundle": "echo", "input": "x"},
                         headers=[*auth, ("Idempotency-Key", "a"), ("Idempotency-Key", "b")])
        assert _is_problem(r, 422, "input.invalid"), (r.status_code, r.text)
        assert (await c.get("/v1/runs", headers=auth)).json()["data"] == []
        r = await c.post("/v1/runs", json={"bundle": "echo", "input": "x"}, headers=[*auth, ("Idempotency-Key", "a")])
        assert r.status_code == 201, r.text


async def test_the_openapi_document_describes_the_errors_and_media_types_served(node):
    """Was (schemathesis: "undocumented status code" / "undocumented Content-Type" on every operation): the
    document gave each operation one error, 422 as ``application/json`` ``{"detail": [...]}`` - a shape the API
    never sends - and declared JSON for the YAML policy, the Prometheus text, the PEM key and the SSE stream,
    and no body at all for ``PUT /v1/policy`` and ``POST /v1/bundles``."""
    tid, key = await node.tenant()
    c = node.client(key)
    async with asyncio.timeout(20):
        doc = (await c.get("/openapi.json")).json()
        problem = doc["components"]["schemas"]["Problem"]
        assert {"type", "title", "status", "detail", "code", "retryable"} <= set(problem["required"])
        assert "HTTPValidationError" not in doc["components"]["schemas"]
        for path, item in doc["paths"].items():
            for method, op in item.items():
                for status in ("4XX", "5XX"):
                    assert list(op["responses"][status]["content"]) == ["application/problem+json"], (method, path)
                assert "422" not in op["responses"], (method, path)

        def media(path: str, method: str = "get", status: str = "200") -> list[str]:
            return list(doc["paths"][path][method]["responses"][status]["content"])

        assert media("/v1/policy") == ["application/yaml"]
        assert media("/metrics") == ["text/plain"]
        assert media("/v1/receipts/public-key") == ["application/x-pem-file"]
        assert media("/v1/runs/{run_id}/events") == ["text/event-stream"]
        assert "204" in doc["paths"]["/v1/runs/{run_id}/events"]["get"]["responses"]
        assert list(doc["paths"]["/v1/policy"]["put"]["requestBody"]["content"]) == ["application/yaml"]
        assert {"application/gzip", "application/zip"} <= set(doc["paths"]["/v1/bundles"]["post"]["requestBody"]["content"])
        # and what is served is what is documented
        r = await c.post("/v1/runs", json={"bundle": "echo"})
        assert _is_problem(r, 422, "input.invalid") and set(r.json()) >= set(problem["required"])
        assert r.json()["code"] in problem["properties"]["code"]["enum"]
        r = await c.get("/v1/policy")
        assert r.headers["content-type"].split(";")[0] == "application/yaml"
        r = await c.get("/v1/receipts/public-key")
        assert r.headers["content-type"].split(";")[0] == "application/x-pem-file"


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-le", "utf-32", "utf-8-sig"])
async def test_a_json_body_not_in_utf8_is_refused_and_changes_nothing(node, encoding):
    """Was: 201 - ``json.loads`` guesses UTF-16 and UTF-32 from the bytes, and a run was created from a body
    that a gateway or a log reading it as UTF-8 (RFC 8259: JSON between systems is UTF-8) saw as something
    else entirely, NUL bytes and all."""
    tid, key = await node.tenant()
    c = node.client(key)
    async with asyncio.timeout(20):
        body = json.dumps({"bundle": "echo", "input": "x"}).encode(encoding)
        r = await c.post("/v1/runs", content=body, headers={"Content-Type": "application/json"})
        assert _is_problem(r, 422, "input.invalid"), (r.status_code, r.text)
        assert (await c.get("/v1/runs")).json()["data"] == []


async def test_a_budget_cap_rounds_as_policy_prices_do(node):
    """PUT /v1/budgets rounded cap_usd with round() on the float (half to even, after binary error): 0.0000005
    USD became a cap of 0 micro-USD, where usd_to_micro (policies, prices) rounds half up to 1."""
    tid, key = await node.tenant()
    c = node.client(key)
    async with asyncio.timeout(20):
        for usd, micro in ((0.0000005, 1), (0.0000025, 3), (0.001, 1000)):
            r = await c.put("/v1/budgets", json={"budgets": [{"scope": "tenant", "cap_usd": usd}]})
            assert r.status_code == 200, r.text
            [acct] = [a for a in await node.rt.services.ledger.accounts(tid, time.time()) if a.scope == "tenant"]
            assert acct.cap_micro == micro, (usd, acct.cap_micro)
