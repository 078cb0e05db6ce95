"""A node never appends after a chain head sealed with a key it does not have (session 20), on both stores.

Found by an ops walkthrough: on a fresh deployment, an API and a worker with data dirs of their own and no
STOCKADE_AUDIT_KEY each generated a key (the start-up check looks at records already stored: there were
none) and sealed records of one chain, interleaved. ``stockade audit verify`` then failed with either key -
record 1 with one, record 3 with the other - and the chain could not be repaired; nothing was logged. Now
the first head of a tenant another process wrote is verified (one extra read per tenant and process): one
this node cannot verify refuses the append (``audit.corrupt``, nothing written) and says why in the log.
"""

from __future__ import annotations

import logging
from typing import Any

import pytest

from supervisor.audit.chain import Sealer, verify_chain
from supervisor.errors import StockadeError
from tests.contract._helpers import store

pytestmark = pytest.mark.timeout(30)

KEY_A = b"a" * 32
KEY_B = b"b" * 32


@pytest.fixture(params=["sqlite", "postgres"])
def sql_target(request: pytest.FixtureRequest, tmp_path: Any) -> tuple[str, Any]:
    """A database of its own (on PostgreSQL too): the chains written here end in heads no node of the test
    deployment can verify, and a node's start-up check samples the heads of the database it is given."""
    if request.param == "sqlite":
        return "sqlite", tmp_path / "stockade.db"
    return "postgres", request.getfixturevalue("fresh_pg_url")


@pytest.fixture
async def two(sql_db):
    """Two handles on one database, as an API process and a worker process have."""
    other = await sql_db.reopen()
    try:
        yield sql_db, store(sql_db, "AuditLog"), store(sql_db, "AuditLog", other), await sql_db.new_tenant()
    finally:
        await other.close()


async def _append(audit: Any, t: str, sealer: Sealer, kind: str) -> Any:
    return await audit.append(t, {"kind": kind}, sealer.for_tenant(t))


async def test_a_node_with_another_key_appends_nothing_after_a_head_it_cannot_verify(two, caplog):
    _, api, worker, t = two
    await _append(api, t, Sealer(KEY_A), "one")
    await _append(api, t, Sealer(KEY_A), "two")
    with caplog.at_level(logging.ERROR), pytest.raises(StockadeError) as err:
        await _append(worker, t, Sealer(KEY_B), "forged in the eyes of key A")
    assert err.value.code == "audit.corrupt"
    assert "same STOCKADE_AUDIT_KEY" in caplog.text
    records = await api.list(t)
    assert [r.kind for r in records] == ["one", "two"]
    assert verify_chain(t, records, Sealer(KEY_A)) is None
    await _append(worker, t, Sealer(KEY_A), "three")  # the same key: appended, and the chain verifies
    await _append(worker, t, Sealer(KEY_B, retired=[KEY_A]), "four")  # a rotated node: it has key A, retired
    assert verify_chain(t, await api.list(t), Sealer(KEY_B, retired=[KEY_A])) is None


async def test_whoever_wrote_the_first_record_the_other_key_is_refused(two):
    _, api, worker, t = two
    await _append(worker, t, Sealer(KEY_B), "first, by the odd node")
    sealer = Sealer(KEY_A)
    for _ in range(2):  # refused each time: never appended, never taken for checked
        with pytest.raises(StockadeError) as err:
            await _append(api, t, sealer, "refused")
        assert err.value.code == "audit.corrupt"
    assert [r.kind for r in await api.list(t)] == ["first, by the odd node"]
