"""MCP server headers are sealed at rest (SQLite and PostgreSQL): the database never holds a header
value, a value moved to another tenant or header does not open, and nothing is sent then."""

from __future__ import annotations

import base64
import json
import os
import threading

import pytest

from supervisor.errors import StockadeError
from supervisor.secretbox import PREFIX, SecretBox, load_secrets_key
from supervisor.settings import load_settings
from supervisor.stores.postgres.db import PgDB
from supervisor.tools.mcp.sealed import SealedMcpStore
from tests.contract.test_mcp_store import ADD, _server, _store

pytestmark = pytest.mark.timeout(60)

SECRET = "Bearer s3cret-token-value"


async def _raw_headers(sql_db, tenant: str, name: str) -> dict:
    if isinstance(sql_db.db, PgDB):
        async with sql_db.db.acquire() as c:
            raw = await c.fetchval("SELECT headers FROM mcp_servers WHERE tenant_id = $1 AND name = $2", tenant, name)
        return json.loads(raw) if isinstance(raw, str) else dict(raw)
    row = sql_db.db.query_one("SELECT headers FROM mcp_servers WHERE tenant_id = ? AND name = ?", (tenant, name))
    return json.loads(row[0])


async def _set_raw_headers(sql_db, tenant: str, name: str, headers: dict) -> None:
    """What a database writer can do."""
    if isinstance(sql_db.db, PgDB):
        async with sql_db.db.acquire() as c:
            await c.execute("UPDATE mcp_servers SET headers = $3::text::jsonb WHERE tenant_id = $1 AND name = $2",
                            tenant, name, json.dumps(headers))
    else:
        sql_db.db.execute("UPDATE mcp_servers SET headers = ? WHERE tenant_id = ? AND name = ?",
                          (json.dumps(headers), tenant, name))


@pytest.fixture
async def sealed(sql_db):
    return SealedMcpStore(_store(sql_db), SecretBox(os.urandom(32))), sql_db


async def test_values_are_sealed_names_are_not(sealed):
    store, sql_db = sealed
    t = await sql_db.new_tenant()
    await store.create_server(_server(t, headers={"Authorization": SECRET, "X-Team": "blue"}), [ADD], approved_by="k")
    raw = await _raw_headers(sql_db, t, "calc")
    assert set(raw) == {"Authorization", "X-Team"}
    assert all(v.startswith(PREFIX) for v in raw.values()) and "s3cret" not in json.dumps(raw)
    assert (await store.get_server(t, "calc")).headers == {"Authorization": SECRET, "X-Team": "blue"}
    assert (await store.list_servers(t))[0].headers["Authorization"] == SECRET
    server, pin = await store.get_pinned(t, "calc", "add")
    assert server.headers["Authorization"] == SECRET and pin.name == "add"


async def test_a_value_moved_by_a_database_writer_does_not_open(sealed):
    store, sql_db = sealed
    a, b = await sql_db.new_tenant(), await sql_db.new_tenant()
    await store.create_server(_server(a, headers={"Authorization": SECRET}), [ADD], approved_by="k")
    await store.create_server(_server(b, headers={"Authorization": "Bearer b-own"}), [ADD], approved_by="k")
    # tenant A's sealed token copied into tenant B's server: bound to A, it must not open for B
    await _set_raw_headers(sql_db, b, "calc", await _raw_headers(sql_db, a, "calc"))
    with pytest.raises(StockadeError) as err:
        await store.get_server(b, "calc")
    assert err.value.code == "secret.unreadable"
    with pytest.raises(StockadeError):
        await store.get_pinned(b, "calc", "add")
    # moved to another header name of the same server: also refused
    raw = await _raw_headers(sql_db, a, "calc")
    await _set_raw_headers(sql_db, a, "calc", {"X-Other": raw["Authorization"]})
    with pytest.raises(StockadeError):
        await store.get_server(a, "calc")
    # one bit of the ciphertext changed: refused (flipped in the bytes - a base64 character next to the
    # padding can differ only in bits the decoder drops, which would change nothing)
    blob = bytearray(base64.urlsafe_b64decode(raw["Authorization"][len(PREFIX):]))
    blob[len(blob) // 2] ^= 1
    await _set_raw_headers(sql_db, a, "calc", {"Authorization": PREFIX + base64.urlsafe_b64encode(bytes(blob)).decode()})
    with pytest.raises(StockadeError):
        await store.get_server(a, "calc")


async def test_another_key_cannot_open_and_plain_legacy_values_still_read(sealed):
    store, sql_db = sealed
    t = await sql_db.new_tenant()
    await store.create_server(_server(t, headers={"Authorization": SECRET}), [ADD], approved_by="k")
    other = SealedMcpStore(store.inner, SecretBox(os.urandom(32)))
    with pytest.raises(StockadeError) as err:
        await other.get_server(t, "calc")
    assert err.value.code == "secret.unreadable"
    await _set_raw_headers(sql_db, t, "calc", {"Authorization": "Bearer written-before-sealing"})
    assert (await store.get_server(t, "calc")).headers == {"Authorization": "Bearer written-before-sealing"}


def test_generated_key_is_made_once_even_by_racing_processes(tmp_path):
    settings = load_settings(data_dir=tmp_path / "data")
    keys: list[bytes] = []
    barrier = threading.Barrier(8)

    def load() -> None:
        barrier.wait()
        keys.append(load_secrets_key(settings))

    threads = [threading.Thread(target=load) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(keys)) == 1 and len(keys[0]) == 32
    path = tmp_path / "data" / "keys" / "secrets.key"
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    assert [p.name for p in path.parent.iterdir()] == ["secrets.key"]  # no temporary file left behind
    configured = load_settings(data_dir=tmp_path / "data", secrets_key="x" * 32)
    assert load_secrets_key(configured) != keys[0]


async def _raw_url(sql_db, tenant: str, name: str) -> str:
    sql = "SELECT url FROM mcp_servers WHERE tenant_id = {} AND name = {}"
    if isinstance(sql_db.db, PgDB):
        async with sql_db.db.acquire() as c:
            return await c.fetchval(sql.format("$1", "$2"), tenant, name)
    return sql_db.db.query_one(sql.format("?", "?"), (tenant, name))[0]


async def _set_raw_url(sql_db, tenant: str, name: str, url: str) -> None:
    sql = "UPDATE mcp_servers SET url = {} WHERE tenant_id = {} AND name = {}"
    if isinstance(sql_db.db, PgDB):
        async with sql_db.db.acquire() as c:
            await c.execute(sql.format("$3", "$1", "$2"), tenant, name, url)
    else:
        sql_db.db.execute(sql.format("?", "?", "?"), (url, tenant, name))


async def test_the_url_is_sealed_too_bound_to_its_tenant_and_server(sealed):
    """Many MCP servers take their token in the URL's path (``/mcp/<token>``), which no redaction can tell
    from a name: the stored URL was plain text in the database (and its backups)."""
    store, sql_db = sealed
    a, b = await sql_db.new_tenant(), await sql_db.new_tenant()
    url = "http://127.0.0.1:9/mcp/tok-0123456789abcdef?key=q-secret"
    await store.create_server(_server(a, url=url), [ADD], approved_by="k")
    await store.create_server(_server(b, url="http://127.0.0.1:9/mcp/b-own"), [ADD], approved_by="k")
    raw = await _raw_url(sql_db, a, "calc")
    assert raw.startswith(PREFIX) and "tok-0123" not in raw and "q-secret" not in raw
    assert (await store.get_server(a, "calc")).url == url
    assert (await store.list_servers(a))[0].url == url
    assert (await store.get_pinned(a, "calc", "add"))[0].url == url
    await _set_raw_url(sql_db, b, "calc", raw)  # A's sealed URL moved to B's server: it does not open there
    with pytest.raises(StockadeError) as err:
        await store.get_server(b, "calc")
    assert err.value.code == "secret.unreadable"
    await _set_raw_url(sql_db, b, "calc", "http://127.0.0.1:9/mcp/written-before-sealing")  # legacy: read as is
    assert (await store.get_server(b, "calc")).url == "http://127.0.0.1:9/mcp/written-before-sealing"
