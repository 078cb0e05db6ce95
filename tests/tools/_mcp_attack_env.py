"""Shared by the session-7 MCP attack files: the real governance chain over both stacks with an
allow-all-MCP policy (``chain_env``), and ``code`` of an outcome."""

from __future__ import annotations

import asyncio
import secrets
from typing import Any

import pytest

from supervisor.audit.chain import Sealer
from supervisor.audit.keys import load_audit_key
from supervisor.audit.recorder import AuditRecorder
from supervisor.chain.base import Binding, CallState
from supervisor.chain.build import build_chain
from supervisor.errors import StockadeError
from supervisor.factory import open_services
from supervisor.policy import load_policy
from supervisor.settings import Settings
from tests.fakes.hostile_http import RawRequest, jsonrpc_result, respond
from tests.tools import test_mcp_chain as _mcp_chain_tests

POLICY = """
version: 1
rules:
  - id: mcp-all
    tool: "mcp.*"
    verdict: allow
"""


settings = _mcp_chain_tests.settings  # both stacks, loopback egress open, a fixed audit key


@pytest.fixture
async def chain_env(settings: Settings) -> Any:
    """(call, services, tenant): the real chain over ``open_services`` with an allow-all-MCP policy."""
    svc = await open_services(settings)
    svc.extras["mcp"]._ttl = 0.0
    chain, _ = build_chain(AuditRecorder(svc.audit, Sealer(load_audit_key(settings))))
    tenant = (await svc.tenants.create_tenant("t-" + secrets.token_hex(3))).id
    await svc.policies.put(tenant, POLICY, load_policy(POLICY).version)
    binding = Binding(tenant_id=tenant, run_id="run_" + secrets.token_hex(4), bundle="b", bundle_version="1")
    events: list[tuple[str, dict[str, Any]]] = []

    async def call(tool: str, /, **args: Any) -> Any:
        async def emit(type_: str, data: dict[str, Any]) -> None:
            events.append((type_, data))

        c = CallState(binding=binding, tool_name=tool, raw_args=args, services=svc, emit=emit)
        try:
            return await chain(c)
        except StockadeError as exc:
            return exc

    yield call, svc, tenant
    await svc.close()


def code(out: Any) -> str | None:
    return out.code if isinstance(out, StockadeError) else None


def call_answer(result: dict[str, Any]) -> Any:
    async def on_call(req: RawRequest, mid: Any, w: asyncio.StreamWriter) -> None:
        await respond(w, 200, jsonrpc_result(mid, result))
    return on_call


def bad_names(n: int, valid: int = 0) -> Any:
    async def on_list(req: RawRequest, mid: Any, w: asyncio.StreamWriter) -> None:
        tools = [{"name": f"t{i}", "inputSchema": {"type": "object"}} for i in range(valid)]
        tools += [{"name": f"bad name {i}", "inputSchema": {"type": "object"}} for i in range(n)]
        await respond(w, 200, jsonrpc_result(mid, {"tools": tools}))
    return on_list
