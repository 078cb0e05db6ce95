"""PolicyStore contract: append-only history, newest wins, per tenant."""

from __future__ import annotations

import pytest

from supervisor.errors import StockadeError
from tests.contract._helpers import store


@pytest.fixture
async def ctx(sql_db):
    return sql_db, store(sql_db, "PolicyStore"), await sql_db.new_tenant()


async def test_put_get_newest(ctx):
    sql_db, policies, t = ctx
    other = await sql_db.new_tenant()
    assert await policies.get(t) is None
    await policies.put(t, "version: 1\nrules: []\n", "v1")
    await policies.put(t, "version: 1\nrules: [{id: a}]\n", "v2")
    assert await policies.get(t) == ("version: 1\nrules: [{id: a}]\n", "v2")
    await policies.put(t, "version: 1\nrules: []\n", "v1")  # going back is a new entry
    assert await policies.get(t) == ("version: 1\nrules: []\n", "v1")
    assert await policies.get(other) is None


async def test_history_is_append_only(ctx):
    sql_db, policies, t = ctx
    for v in ("v1", "v2", "v2", "v3"):
        await policies.put(t, f"# {v}\n", v)
    if sql_db.kind == "sqlite":
        rows = sql_db.db.query("SELECT version FROM policies WHERE tenant_id = ? ORDER BY id", (t,))
        versions = [r[0] for r in rows]
    else:
        async with sql_db.db.tenant_tx(t) as c:
            versions = [r[0] for r in await c.fetch("SELECT version FROM policies ORDER BY id")]
    assert versions == ["v1", "v2", "v3"]  # re-putting the current version adds nothing


async def test_a_new_text_of_the_same_version_is_kept(ctx):
    # the version is a hash of the policy's content: a PUT that changes only comments or layout has the
    # same version, and was dropped - GET /v1/policy went on returning the old text
    _, policies, t = ctx
    await policies.put(t, "version: 1\nrules: []\n", "v1")
    await policies.put(t, "# who changed what, and why\nversion: 1\nrules: []\n", "v1")
    assert await policies.get(t) == ("# who changed what, and why\nversion: 1\nrules: []\n", "v1")


async def test_bad_input(ctx):
    _, policies, t = ctx
    with pytest.raises(StockadeError) as err:
        await policies.put("ten_missing", "rules: []", "v1")
    assert err.value.code == "not_found"
    with pytest.raises(StockadeError) as err:
        await policies.put(t, "rules: []", "")
    assert err.value.code == "input.invalid"
    assert await policies.get(t) is None
