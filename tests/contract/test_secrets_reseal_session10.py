"""After a secrets key rotation, ``SealedMcpStore.reseal`` (``stockade secrets reseal``) seals every stored MCP
URL and header value anew under the current key, on SQLite and PostgreSQL: then the retired key can be dropped
and everything still opens. Without it a retired key had to be kept for ever (nothing re-sealed what it sealed)."""

from __future__ import annotations

import os

import pytest

from supervisor.errors import StockadeError
from supervisor.secretbox import PREFIX, SecretBox
from supervisor.tools.mcp.sealed import SealedMcpStore
from tests.contract.test_mcp_sealed import _raw_headers, _set_raw_headers
from tests.contract.test_mcp_store import ADD, _server, _store

pytestmark = pytest.mark.timeout(60)

OLD, NEW = os.urandom(32), os.urandom(32)
SECRET = "Bearer s3cret-token-value"


async def _seed(sql_db) -> str:
    t = await sql_db.new_tenant()
    before = SealedMcpStore(_store(sql_db), SecretBox(OLD))
    await before.create_server(_server(t, headers={"Authorization": SECRET, "X-Team": "blue"}), [ADD], approved_by="k")
    return t


async def test_reseal_moves_every_value_to_the_current_key_and_the_old_key_can_go(sql_db):
    t = await _seed(sql_db)
    rotated = SealedMcpStore(_store(sql_db), SecretBox(NEW, [OLD]))
    assert (await rotated.get_server(t, "calc")).headers["Authorization"] == SECRET  # opens under the retired key
    raw_before = await _raw_headers(sql_db, t, "calc")
    assert await rotated.reseal(t) == (1, 1)
    raw_after = await _raw_headers(sql_db, t, "calc")
    assert set(raw_after) == set(raw_before) and all(v.startswith(PREFIX) for v in raw_after.values())
    assert all(raw_after[k] != raw_before[k] for k in raw_after)
    only_new = SealedMcpStore(_store(sql_db), SecretBox(NEW))  # the retired key dropped
    got = await only_new.get_server(t, "calc")
    assert got.headers == {"Authorization": SECRET, "X-Team": "blue"} and got.url == _server(t).url
    assert (await only_new.get_pinned(t, "calc", "add"))[1].status == "approved"  # the pins are untouched
    assert await rotated.reseal(t) == (1, 0)  # nothing left to do: a second run changes nothing


async def test_reseal_seals_plain_values_stored_before_sealing_existed(sql_db):
    t = await sql_db.new_tenant()
    await _store(sql_db).create_server(_server(t, headers={"Authorization": SECRET}), [ADD], approved_by="k")
    store = SealedMcpStore(_store(sql_db), SecretBox(NEW))
    assert await store.reseal(t) == (1, 1)
    raw = await _raw_headers(sql_db, t, "calc")
    assert raw["Authorization"].startswith(PREFIX) and "s3cret" not in raw["Authorization"]
    assert (await store.get_server(t, "calc")).headers["Authorization"] == SECRET


async def test_a_value_no_key_opens_stops_the_reseal_and_changes_nothing(sql_db):
    t = await _seed(sql_db)
    # a second server, listed first, that the new key would re-seal: it must not be written either
    await SealedMcpStore(_store(sql_db), SecretBox(NEW)).create_server(
        _server(t, name="aaa", headers={"Authorization": SECRET}), [ADD], approved_by="k")
    await _set_raw_headers(sql_db, t, "aaa", {"Authorization": "plain, from before sealing"})
    raw, raw_aaa = await _raw_headers(sql_db, t, "calc"), await _raw_headers(sql_db, t, "aaa")
    with pytest.raises(StockadeError) as e:
        await SealedMcpStore(_store(sql_db), SecretBox(NEW)).reseal(t)  # the old key was not listed as retired
    assert e.value.code == "secret.unreadable"
    assert await _raw_headers(sql_db, t, "calc") == raw and await _raw_headers(sql_db, t, "aaa") == raw_aaa


async def test_a_server_changed_meanwhile_is_left_as_it_is(sql_db):
    """Compare-and-set: what reseal read is what it replaces, or nothing (a writer changed it between)."""
    t = await _seed(sql_db)
    inner = _store(sql_db)
    [stale] = await inner.list_servers(t)
    await _set_raw_headers(sql_db, t, "calc", {"Authorization": "changed"})
    assert await inner.replace_secrets(stale, stale.url, {"Authorization": "x", "X-Team": "y"}) is False
    assert await _raw_headers(sql_db, t, "calc") == {"Authorization": "changed"}
    await inner.delete_server(t, "calc")
    assert await inner.replace_secrets(stale, stale.url, dict(stale.headers)) is False


async def test_the_sealed_store_never_stores_values_as_given(sql_db):
    t = await _seed(sql_db)
    store = SealedMcpStore(_store(sql_db), SecretBox(NEW, [OLD]))
    [s] = await store.list_servers(t)
    with pytest.raises(TypeError):
        await store.replace_secrets(s, s.url, {"Authorization": SECRET})
    assert "s3cret" not in str(await _raw_headers(sql_db, t, "calc"))


async def test_plain_only_seals_plain_values_and_leaves_sealed_ones_unopened(sql_db):
    """What a start after an upgrade does (supervisor/factory.py): plain values sealed; a value sealed under a
    key this node does not hold is neither opened nor touched (no secret.unreadable)."""
    t = await _seed(sql_db)  # sealed under OLD, which the store below does not know
    await _store(sql_db).create_server(_server(t, name="plain", headers={"Authorization": SECRET}), [ADD], approved_by="k")
    sealed_before = await _raw_headers(sql_db, t, "calc")
    store = SealedMcpStore(_store(sql_db), SecretBox(NEW))
    assert await store.reseal(t, plain_only=True) == (2, 1)
    assert await _raw_headers(sql_db, t, "calc") == sealed_before
    raw = await _raw_headers(sql_db, t, "plain")
    assert raw["Authorization"].startswith(PREFIX)
    assert (await store.get_server(t, "plain")).headers["Authorization"] == SECRET
