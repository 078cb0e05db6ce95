"""Walkthrough of the deployment's receipt signing key (session 24), as an operator and a database writer.

- A key id that is not UTF-8 (or a blob) put in ``deployment_keys`` by a SQLite writer failed every `serve` and
  `stockade receipt adopt-key` - the documented way out - with ``internal: OperationalError: Could not decode
  to UTF-8``; a blob made adopt-key move the record and then fail ``internal: TypeError`` printing it.
- A garbage key id (control characters, any length) went verbatim into the one-line start-up refusal.
- `adopt-key` run again (a retried command) reported ``"replaced"`` as this very key: it replaced nothing.
"""

from __future__ import annotations

import sqlite3
from typing import Any

import asyncpg
import pytest

from supervisor.audit.keys import key_id
from supervisor.audit.signing_check import NAME
from supervisor.settings import SettingsError
from tests.e2e.harness import start_node
from tests.e2e.test_signing_key_check_session23 import _cli

pytestmark = pytest.mark.timeout(180)


def _sqlite_set(settings: Any, sql_value: str) -> None:
    """What a writer with the database file does: the recorded key id set to an SQL expression."""
    with sqlite3.connect(settings.sqlite_path) as c:
        c.execute(f"UPDATE deployment_keys SET key_id = {sql_value} WHERE name = ?", [NAME])  # noqa: S608


async def _pg_set(settings: Any, value: str) -> None:
    conn = await asyncpg.connect(settings.database_url)
    try:
        await conn.execute("UPDATE deployment_keys SET key_id = $1 WHERE name = $2", value, NAME)
    finally:
        await conn.close()


@pytest.mark.parametrize("stack_kind", ["embedded"])
@pytest.mark.parametrize("garbage", ["CAST(X'ff41' AS TEXT)", "X'e754491af0ad5c27'"], ids=["not-utf8", "blob"])
async def test_a_key_id_sqlite_cannot_decode_is_refused_clearly_and_adopt_key_replaces_it(node_config, garbage):
    keeper = await start_node(node_config, workers=False)  # holds the data dir
    try:
        mine = key_id(keeper.rt.signing_key)
        _sqlite_set(node_config, garbage)
        with pytest.raises(SettingsError) as info:  # before: sqlite3.OperationalError (an "internal" error)
            await start_node(node_config, workers=False)
        assert "<not a key id: " in str(info.value) and mine in str(info.value)
        rc, out, err = await _cli(node_config, "receipt", "adopt-key")  # the way out works
        assert rc == 0, err
        assert out is not None and out["key_id"] == mine and out["changed"] is True
        assert out["replaced"].startswith("<not a key id: ")
        assert await keeper.rt.services.audit.deployment_key(NAME) == mine
        node = await start_node(node_config, workers=False)
        await node.stop()
    finally:
        await keeper.stop()


async def test_a_garbage_key_id_is_shown_escaped_and_cut_in_the_refusal(node_config):
    keeper = await start_node(node_config, workers=False)
    try:
        garbage = "x\n\x1b[2Jall good" + "y" * 5000
        if node_config.uses_postgres:
            await _pg_set(node_config, garbage)
        else:
            _sqlite_set(node_config, "'" + garbage.replace("'", "''") + "'")
        with pytest.raises(SettingsError) as info:
            await start_node(node_config, workers=False)
        msg = str(info.value)
        assert "\n" not in msg and "\x1b" not in msg and "y" * 100 not in msg
        assert "<not a key id: x\\n\\x1b[2Jall good" in msg
    finally:
        await keeper.stop()


async def test_adopt_key_run_again_replaced_nothing(node_config):
    keeper = await start_node(node_config, workers=False)
    try:
        mine = key_id(keeper.rt.signing_key)  # the first node's: recorded already
        rc, out, err = await _cli(node_config, "receipt", "adopt-key")
        assert rc == 0, err
        assert out == {"key_id": mine, "replaced": None, "changed": False}  # before: "replaced": mine
        assert await keeper.rt.services.audit.deployment_key(NAME) == mine
    finally:
        await keeper.stop()
