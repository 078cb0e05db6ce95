"""Secrets key rotation through the CLI (session 10): ``stockade secrets reseal`` re-seals every stored MCP
secret under the current STOCKADE_SECRETS_KEY, so the retired key can go; without the old key it fails with a
code and changes nothing. On SQLite and on a fresh PostgreSQL database."""

from __future__ import annotations

import asyncio

import pytest

from tests import test_key_rotation_session10 as _rotation

env, cli_stack, _run = _rotation.env, _rotation.cli_stack, _rotation._run  # fixtures and the CLI runner

pytestmark = pytest.mark.timeout(60)


def test_cli_secrets_reseal_lets_the_retired_secrets_key_go(cli_stack, capsys, monkeypatch):
    """The whole secrets key rotation through the CLI: an MCP server sealed under the old key; STOCKADE_SECRETS_KEY
    = new, the old one retired; `stockade secrets reseal`; then, with the retired key dropped, the server opens."""
    import json

    from supervisor.runtime import open_runtime
    from supervisor.settings import load_settings
    from supervisor.tenancy import create_tenant
    from supervisor.tools.mcp import McpServer

    old, new = "the-old-secrets-key-0123456789", "the-new-secrets-key-0123456789"

    async def with_mcp(fn):
        rt = await open_runtime(load_settings())
        try:
            return await fn(rt.services)
        finally:
            await rt.stop()

    async def register(s):
        t, _ = await create_tenant(s, "acme")
        await s.extras["mcp"].store.create_server(
            McpServer(t.id, "srv", "https://mcp.example/t0ken", {"Authorization": "Bearer x"}, 1.0), [], approved_by=None)
        return t.id

    monkeypatch.setenv("STOCKADE_SECRETS_KEY", old)
    tid = asyncio.run(with_mcp(register))
    monkeypatch.setenv("STOCKADE_SECRETS_KEY", new)
    monkeypatch.setenv("STOCKADE_SECRETS_KEYS_RETIRED", old)
    rc, out, err = _run(capsys, "secrets", "reseal")
    assert rc == 0, err
    assert json.loads(out) == {"tenant_id": tid, "servers": 1, "resealed": 1}
    rc, out, err = _run(capsys, "secrets", "reseal", "--tenant", "acme")
    assert rc == 0 and json.loads(out)["resealed"] == 0, (out, err)  # done: a second run changes nothing
    monkeypatch.delenv("STOCKADE_SECRETS_KEYS_RETIRED")  # the old key dropped

    async def read(s):
        return await s.extras["mcp"].store.get_server(tid, "srv")

    got = asyncio.run(with_mcp(read))
    assert got.url == "https://mcp.example/t0ken" and got.headers == {"Authorization": "Bearer x"}


def test_cli_secrets_reseal_without_the_old_key_fails_with_a_code_and_changes_nothing(cli_stack, capsys, monkeypatch):
    from supervisor.runtime import open_runtime
    from supervisor.settings import load_settings
    from supervisor.tenancy import create_tenant
    from supervisor.tools.mcp import McpServer

    async def register():
        rt = await open_runtime(load_settings())
        try:
            t, _ = await create_tenant(rt.services, "acme")
            await rt.services.extras["mcp"].store.create_server(
                McpServer(t.id, "srv", "https://mcp.example/", {"A": "b"}, 1.0), [], approved_by=None)
        finally:
            await rt.stop()

    monkeypatch.setenv("STOCKADE_SECRETS_KEY", "the-old-secrets-key-0123456789")
    asyncio.run(register())
    monkeypatch.setenv("STOCKADE_SECRETS_KEY", "the-new-secrets-key-0123456789")  # the old one not listed as retired
    rc, out, err = _run(capsys, "secrets", "reseal")
    assert rc != 0 and err.startswith("stockade: secret.unreadable: ") and out == "", (rc, out, err)
    monkeypatch.setenv("STOCKADE_SECRETS_KEY", "the-old-secrets-key-0123456789")
    rc, out, err = _run(capsys, "secrets", "reseal")  # the old key still opens all: nothing was changed
    assert rc == 0 and '"resealed": 0' in out, (out, err)


@pytest.mark.pg
def test_a_node_whose_secrets_key_opens_no_stored_secret_is_refused_and_keeps_no_key(env, capsys, monkeypatch, tmp_path,
                                                                                       fresh_pg_url):
    """Session 20 (an ops walkthrough): a start refused for its audit key still left a generated secrets.key; an
    operator who then gave the node only the deployment's audit key started it with a secrets key of its own,
    and every MCP call on that node failed ``secret.unreadable`` (nothing checked the secrets key). Now a start
    keeps none of the keys it generated when it is refused, and one that would generate a secrets key of its own
    while the database holds sealed MCP secrets is refused, naming STOCKADE_SECRETS_KEY."""
    import json

    from supervisor.runtime import open_runtime
    from supervisor.settings import load_settings
    from supervisor.tenancy import create_tenant
    from supervisor.tools.mcp import McpServer

    async def register():
        rt = await open_runtime(load_settings())
        try:
            t, _ = await create_tenant(rt.services, "acme")
            await rt.services.extras["mcp"].store.create_server(
                McpServer(t.id, "srv", "https://mcp.example/", {"A": "b"}, 1.0), [], approved_by=None)
            await rt.recorder.record(t.id, "mcp.registered", detail={"server": "srv"})
        finally:
            await rt.stop()

    monkeypatch.setenv("STOCKADE_DATABASE_URL", fresh_pg_url)  # nodes with data dirs of their own share a database
    asyncio.run(register())  # the first node: keys generated into its data dir
    first = env / "keys"
    audit_key = (first / "audit.key").read_text().strip()
    other = tmp_path / "other-node"
    monkeypatch.setenv("STOCKADE_DATA_DIR", str(other))
    rc, _, err = _run(capsys, "key", "list", "--tenant", "acme")
    assert rc != 0 and "STOCKADE_AUDIT_KEY" in err, err
    assert not (other / "keys").exists() or list((other / "keys").iterdir()) == []  # none of its keys kept
    monkeypatch.setenv("STOCKADE_AUDIT_KEY", audit_key)  # fixed only as that message says
    rc, _, err = _run(capsys, "key", "list", "--tenant", "acme")
    assert rc != 0 and err.startswith("stockade: settings.invalid: invalid setting STOCKADE_SECRETS_KEY: unset"), err
    assert not (other / "keys" / "secrets.key").exists()
    monkeypatch.setenv("STOCKADE_SECRETS_KEY", (first / "secrets.key").read_text().strip())
    rc, out, err = _run(capsys, "key", "list", "--tenant", "acme")
    assert rc == 0, err
    assert json.loads(out.splitlines()[0])["role"] == "admin"
