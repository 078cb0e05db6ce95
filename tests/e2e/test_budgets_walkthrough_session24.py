"""Budget walkthrough (session 24), through whole nodes on both stacks: attacks that held."""

from __future__ import annotations

import asyncio

import pytest

from tests.e2e.test_governance import plan, results_of, setup, start

pytestmark = [pytest.mark.timeout(90)]

J = {"Content-Type": "application/json"}


@pytest.mark.parametrize("body", [
    '{"budgets": [{"scope": "tenant", "cap_usd": NaN}]}',
    '{"budgets": [{"scope": "tenant", "cap_usd": 1e309}]}',
    '{"budgets": [{"scope": "tenant", "cap_usd": "5"}]}',
    '{"budgets": [{"scope": "tenant", "cap_usd": true}]}',
    '{"budgets": [{"scope": "tenant", "cap_usd": 1e-12}]}',
    '{"budgets": [{"scope": "tenant", "cap_usd": 123456789012345678901234567890}]}',
    '{"budgets": [{"scope": "tenant", "cap_usd": 1' + "0" * 5000 + '}]}',  # past int's digit limit
    '{"budgets": [{"scope": "tenant", "cap_usd": 1000000000.0000001}]}',
])
async def test_hostile_cap_amounts_are_refused_and_change_nothing(node, body):
    _tid, key = await node.tenant()
    c = node.client(key)
    async with asyncio.timeout(20):
        assert (await c.put("/v1/budgets", json={"budgets": [{"scope": "tenant", "cap_usd": 3}]})).status_code == 200
        before = (await c.get("/v1/budgets")).json()
        r = await c.put("/v1/budgets", content=body, headers=J)
        assert r.status_code == 422 and r.json()["code"] == "input.invalid", r.text
        assert (await c.get("/v1/budgets")).json() == before


async def test_negative_zero_is_a_zero_cap_and_refuses_every_priced_call_with_one_record_each(node):
    tid, _, c = await setup(node)
    async with asyncio.timeout(60):
        r = await c.put("/v1/budgets", content='{"budgets": [{"scope": "tenant", "cap_usd": -0.0}]}', headers=J)
        assert r.status_code == 200 and r.json()["data"][0]["cap_usd"] == 0, r.text
        run = await start(c, "caller", plan(*[{"tool": "echo", "args": {"n": 1, "i": i}} for i in range(3)]))
        results, _ = await results_of(c, run["id"])
        assert [x.get("error") for x in results] == ["budget.exceeded"] * 3
        audit = (await c.get("/v1/audit", params={"run_id": run["id"]})).json()["data"]
        assert [a["kind"] for a in audit] == ["budget.exceeded"] * 3  # one record per refused call
        [acct] = (await c.get("/v1/budgets")).json()["data"]
        assert (acct["spent_usd"], acct["reserved_usd"]) == (0, 0)
