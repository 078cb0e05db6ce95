"""Values the API accepted and every later call then failed on, or read back as something else
(found by an outside-in walkthrough; each test says what it was before). Both stacks."""

from __future__ import annotations

import asyncio

import pytest

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
