"""Through the API, on both stacks: a budget cap that switches period keeps what was spent (session 10).

``PUT /v1/budgets`` switching a cap between month and lifetime: ``GET /v1/budgets`` shows what was
spent before the switch, and the next calls are admitted or refused by it.
"""

from __future__ import annotations

from tests.e2e.test_governance import plan, results_of, setup
from tests.e2e.test_run_pipeline import start


def figures(budgets: list[dict]) -> list[tuple]:
    return [(b["scope"], b["period"], b["period_key"], b["spent_usd"], b["reserved_usd"], b["remaining_usd"])
            for b in budgets]


async def test_get_budgets_after_a_period_switch_shows_what_was_spent(node):
    _, _, c = await setup(node)  # echo costs 0.001 USD
    r = await c.put("/v1/budgets", json={"budgets": [{"scope": "tenant", "cap_usd": 1.0}]})
    assert r.status_code == 200, r.text
    run = await start(c, "caller", plan(*[{"tool": "echo", "args": {"n": 1, "i": i}} for i in range(3)]))
    results, _ = await results_of(c, run["id"])
    assert all("ok" in x for x in results), results
    # "0.004 USD lifetime" after 0.003 was spent under the monthly cap: 0.001 is left, not 0.004
    r = await c.put("/v1/budgets", json={"budgets": [{"scope": "tenant", "cap_usd": 0.004, "period": "lifetime"}]})
    assert r.status_code == 200, r.text
    assert figures(r.json()["data"]) == [("tenant", "lifetime", "lifetime", 0.003, 0.0, 0.001)]
    assert figures((await c.get("/v1/budgets")).json()["data"]) == figures(r.json()["data"])
    run = await start(c, "caller", plan(*[{"tool": "echo", "args": {"n": 1, "j": i}} for i in range(2)]))
    results, _ = await results_of(c, run["id"])
    assert "ok" in results[0] and results[1]["error"] == "budget.exceeded", results
    # and back to a monthly cap: this month's spend, whatever the period was when it was spent
    r = await c.put("/v1/budgets", json={"budgets": [{"scope": "tenant", "cap_usd": 0.005}]})
    assert r.status_code == 200, r.text
    (row,) = figures((await c.get("/v1/budgets")).json()["data"])
    assert row[:2] == ("tenant", "month") and row[3:] == (0.004, 0.0, 0.001), row
    # the ledger still has one entry per charge, booked on the period its cap checked
    ledger = [e for e in (await c.get("/v1/ledger")).json()["data"] if e["scope"] == "tenant"]
    assert [e["period_key"] for e in ledger] == [row[2]] * 3 + ["lifetime"], ledger
    assert [e["amount_usd"] for e in ledger] == [0.001] * 4
