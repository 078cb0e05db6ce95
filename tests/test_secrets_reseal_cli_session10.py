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
