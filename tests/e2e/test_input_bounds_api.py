"""Values the API accepted and every later call then failed on, or read back as something else
(found by an outside-in walkthrough; each test says what it was before). Both stacks."""

from __future__ import annotations

import asyncio
import time

import pytest

from supervisor.errors import StockadeError
from supervisor.stores.records import Approval
from tests.e2e.harness import idle_runs

pytestmark = [pytest.mark.timeout(60)]

YAML = {"Content-Type": "application/yaml"}


def _problem(r, status: int, code: str) -> dict:
    assert r.status_code == status, (r.status_code, r.text)
    body = r.json()
    assert body.get("code") == code, body
    return body


@pytest.mark.parametrize("prices", [
    "prices: {echo: 1.0e+300}",  # was: 200, then every echo call an internal decimal.InvalidOperation
    "prices: {echo: 1000000000000}",  # was: 200, then every echo call input.invalid
    "prices: {echo: 0.0000001}",  # was: 200, and echo was free (rounded to 0 micro-USD)
    "llm_prices: {openai/gpt-x: {input_per_mtok: 1.0e+300, output_per_mtok: 1.0e+300}}",  # was: 200, then llm.chat policy.invalid
])
async def test_a_policy_price_no_call_could_use_is_refused_when_put(node, prices):
    _tid, key = await node.tenant()
    c = node.client(key)
    async with asyncio.timeout(20):
        before = await c.get("/v1/policy")
        r = await c.put("/v1/policy", content=f"version: 1\nrules: []\n{prices}\n", headers=YAML)
        body = _problem(r, 422, "policy.invalid")
        assert body["errors"][0].startswith("line 3: "), body
        after = await c.get("/v1/policy")
        assert (after.status_code, after.text) == (before.status_code, before.text)


@pytest.mark.parametrize("cap", [0.0000001, 0.0000004])
async def test_a_positive_budget_cap_that_rounds_to_zero_is_refused(node, cap):
    # was: 200 with cap_usd 0.0, a cap that blocks every priced call
    _tid, key = await node.tenant()
    c = node.client(key)
    async with asyncio.timeout(20):
        before = (await c.get("/v1/budgets")).json()["data"]
        r = await c.put("/v1/budgets", json={"budgets": [{"scope": "tenant", "cap_usd": cap}]})
        body = _problem(r, 422, "input.invalid")
        assert "at least 0.000001 USD" in body["detail"], body
        assert (await c.get("/v1/budgets")).json()["data"] == before
        # 0 is a cap (nothing may be spent) and half a micro-USD rounds up to one
        for ok, micro in ((0, 0), (0.0000005, 1)):
            r = await c.put("/v1/budgets", json={"budgets": [{"scope": "tenant", "cap_usd": ok}]})
            assert r.status_code == 200 and r.json()["data"][0]["cap_usd"] == micro / 1e6, r.text
        # the same for a tenant made with `stockade tenant create --budget-usd` (was: a tenant cap of 0)
        with pytest.raises(StockadeError) as err:
            await node.tenant(budget_usd=0.0000001)
        assert err.value.code == "input.invalid" and "at least 0.000001 USD" in err.value.detail


async def test_string_length_errors_say_characters(node):
    # was: "body.reason: Value should have at most 2000 items after validation, not 100000" (and "at most 64
    # items" / "at least 1 item" for user_id, project_id): Field limits on `Text | None` read as a list's
    tid, key = await node.tenant()
    [run] = await idle_runs(node, tid, 1)
    now = time.time()
    await node.rt.services.approvals.create(Approval(
        id="apr_len", tenant_id=tid, run_id=run, tool="echo", args={"n": 1}, args_hash="0" * 64,
        rule_id="r", reason=None, status="pending", created_at=now, expires_at=now + 600))
    c = node.client(key)
    async with asyncio.timeout(20):
        r = await c.post("/v1/approvals/apr_len/decision", json={"decision": "approve", "reason": "x" * 100_000})
        assert _problem(r, 422, "input.invalid")["detail"] == "body.reason: String should have at most 2000 characters"
        assert (await c.get("/v1/approvals/apr_len")).json()["status"] == "pending"
        for path, body, detail in [
            ("/v1/runs", {"bundle": "echo", "input": "a", "user_id": "u" * 65}, "body.user_id: String should have at most 64 characters"),
            ("/v1/runs", {"bundle": "echo", "input": "a", "project_id": ""}, "body.project_id: String should have at least 1 character"),
            ("/v1/keys", {"role": "member", "user_id": ""}, "body.user_id: String should have at least 1 character"),
            ("/v1/keys", {"role": "member", "project_id": "p" * 65}, "body.project_id: String should have at most 64 characters"),
        ]:
            r = await c.post(path, json=body)
            assert _problem(r, 422, "input.invalid")["detail"] == detail, (path, r.text)
        r = await c.put("/v1/budgets", json={"budgets": [{"scope": "user", "scope_id": "u" * 65, "cap_usd": 1}]})
        assert _problem(r, 422, "input.invalid")["detail"] == "body.budgets.0.scope_id: String should have at most 64 characters"


@pytest.mark.parametrize("path", [
    "/v1/audit?kind=tool.denied",  # was: 200 with every record, as if filtered
    "/v1/audit?limt=5",  # was: a page of 100
    "/v1/runs?status=failed",  # was: every run
    "/v1/approvals?state=pending",  # was: every approval, decided ones too
    "/v1/bundles?name=echo",  # was: every bundle
    "/v1/ledger?after=0&after_id=9",
    "/v1/me?x=1",
])
async def test_a_query_parameter_the_request_does_not_take_is_refused(node, path):
    _tid, key = await node.tenant()
    c = node.client(key)
    async with asyncio.timeout(20):
        body = _problem(await c.get(path), 422, "input.invalid")
        unknown = path.rsplit("&", 1)[-1].split("?")[-1].split("=")[0]
        assert f"unknown query parameter {unknown!r}" in body["detail"], body
        # what it takes still works, and is named
        ok = await c.get(path.split("?")[0])
        assert ok.status_code == 200, ok.text
        if path.startswith("/v1/audit"):
            assert "after, limit, run_id" in body["detail"], body
