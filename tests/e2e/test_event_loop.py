"""The end-to-end suite runs nodes on the loop production uses (app.server.run picks uvloop)."""

from __future__ import annotations

import asyncio

from app.server import run


async def test_nodes_run_on_uvloop(node):
    assert type(asyncio.get_running_loop()).__module__.startswith("uvloop")
    r = await node.client((await node.tenant())[1]).get("/healthz")
    assert r.status_code == 200


def test_server_entry_point_uses_uvloop():
    async def loop_module() -> str:
        return type(asyncio.get_running_loop()).__module__

    assert run(loop_module()).startswith("uvloop")
