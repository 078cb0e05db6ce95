"""``mcp.call {server, tool, arguments}`` and ``mcp.<server>.<tool> {arguments}`` are one call.

Found by a walkthrough: a deny rule on ``mcp.fake.greet`` was walked around with
``ctx.call("mcp.call", server="fake", name="greet", ...)`` (allowed by a rule on
``mcp.*``), and a ``require_approval`` rule on ``mcp.gated.*`` let ``mcp.call`` to
that server run with nobody asked. Now the validate step turns ``mcp.call`` into the
call it stands for, which keeps ``mcp.call`` as an alias: every rule (tenant and
bundle layer), order rule, ``when`` condition, velocity count, bundle.yaml ``tools``
glob, price, rate limit and idempotency key treats both spellings alike.

The real governance chain over ``open_services`` (both stacks), a real MCP server.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from typing import Any

import pytest

from supervisor.audit.chain import Sealer
from supervisor.audit.keys import load_audit_key
from supervisor.audit.recorder import AuditRecorder
from supervisor.chain.base import Binding, CallState
from supervisor.chain.build import build_chain
from supervisor.errors import StockadeError
from supervisor.factory import open_services
from supervisor.ids import new_id
from supervisor.policy import load_bundle_policy, load_policy
from supervisor.stores.records import Run
from tests.fakes.mcp_server import McpTestServer
from tests.tools import test_mcp_chain as _mcp_chain_tests

pytestmark = pytest.mark.timeout(60)

settings = _mcp_chain_tests.settings  # both stacks, loopback egress open, a fixed audit key

WALKTHROUGH = """
version: 1
rules:
  - id: no-greet
    tool: mcp.fake.greet
    verdict: deny
  - id: gated
    tool: "mcp.gated.*"
    verdict: require_approval
  - id: mcp
    tool: "mcp.*"
    verdict: allow
"""


class Env:
    def __init__(self, svc: Any, chain: Any, interceptors: list[Any], tenant: str, srv: McpTestServer) -> None:
        self.svc, self.chain, self.tenant, self.srv = svc, chain, tenant, srv
        self.steps = interceptors
        self.events: list[tuple[str, dict[str, Any]]] = []

    async def policy(self, text: str) -> None:
        await self.svc.policies.put(self.tenant, text, load_policy(text).version)
        for step in self.steps:  # as PUT /v1/policy does: read it again on the next call
            if hasattr(step, "forget_tenant"):
                step.forget_tenant(self.tenant)

    async def run(self) -> str:
        run = Run(id=new_id("run_"), tenant_id=self.tenant, bundle="b", bundle_version="1", input="",
                  status="queued", created_at=time.time())
        await self.svc.runs.create_run(run)
        await self.svc.runs.start_run(self.tenant, run.id, worker_id="test", started_at=time.time())
        return run.id

    async def call(self, run_id: str, tool: str, /, *, bundle: dict[str, Any] | None = None,
                   tools: tuple[str, ...] | None = None, key: str | None = None,
                   **args: Any) -> tuple[dict[str, Any] | StockadeError, CallState]:
        binding = Binding(tenant_id=self.tenant, run_id=run_id, bundle="b", bundle_version="1",
                          bundle_policy=load_bundle_policy(bundle), bundle_tools=tools)

        async def emit(type_: str, data: dict[str, Any]) -> None:
            self.events.append((type_, data))

        c = CallState(binding=binding, tool_name=tool, raw_args=args, services=self.svc, emit=emit,
                      idempotency_key=key)
        try:
            return await self.chain(c), c
        except StockadeError as exc:
            return exc, c


@pytest.fixture
async def env(settings: Any) -> Any:
    srv = McpTestServer.start()
    svc = await open_services(settings)
    svc.extras["mcp"]._ttl = 0.0
    chain, interceptors = build_chain(AuditRecorder(svc.audit, Sealer(load_audit_key(settings))))
    tenant = (await svc.tenants.create_tenant("t-" + secrets.token_hex(3))).id
    for name in ("fake", "gated"):  # one real server under two names
        await svc.extras["mcp"].register(tenant, name, srv.url, None, key_id="key_admin")
    yield Env(svc, chain, interceptors, tenant, srv)
    await svc.close()
    srv.stop()


def code(out: Any) -> str | None:
    return out.code if isinstance(out, StockadeError) else None


def greet_by(spelling: str, server: str, who: str) -> tuple[str, dict[str, Any]]:
    if spelling == "mcp.call":
        return "mcp.call", {"server": server, "name": "greet", "arguments": {"name": who}}
    return f"mcp.{server}.greet", {"name": who}


@pytest.mark.parametrize("spelling", ["per-tool", "mcp.call"])
async def test_a_deny_on_the_tool_name_holds_for_both_spellings(env: Env, spelling: str) -> None:
    await env.policy(WALKTHROUGH)
    run = await env.run()
    tool, args = greet_by(spelling, "fake", "ada")
    out, c = await env.call(run, tool, **args)
    assert code(out) == "policy.denied" and c.rule_id == "no-greet", out  # was: allowed by rule "mcp"
    out, c = await env.call(run, *greet_by(spelling, "fake", "bob")[:1], **greet_by(spelling, "fake", "bob")[1])
    assert code(out) == "policy.denied"
    # the other tool of the server is allowed by either spelling
    add = ("mcp.call", {"server": "fake", "tool": "add", "arguments": {"a": 1, "b": 2}}) if spelling == "mcp.call" \
        else ("mcp.fake.add", {"a": 1, "b": 2})
    out, c = await env.call(run, add[0], **add[1])
    assert isinstance(out, dict) and c.rule_id == "mcp"
    assert env.srv.calls == {"add": 1}  # greet never reached the server


@pytest.mark.parametrize("spelling", ["per-tool", "mcp.call"])
async def test_require_approval_on_the_server_holds_for_both_spellings(env: Env, spelling: str) -> None:
    await env.policy(WALKTHROUGH)
    run = await env.run()
    tool, args = greet_by(spelling, "gated", "ada")
    task = asyncio.create_task(env.call(run, tool, **args))
    for _ in range(400):  # the approval request is durable: wait for it in the store
        pending = await env.svc.approvals.list(env.tenant, status="pending")
        if pending or task.done():
            break
        await asyncio.sleep(0.02)
    assert not task.done(), task.result()  # was: mcp.call ran at once, nobody asked
    [apr] = pending
    # the approver sees the call that will run: the tool's own name and its MCP arguments
    assert (apr.tool, apr.args, apr.rule_id) == ("mcp.gated.greet", {"name": "ada"}, "gated")
    await env.svc.approvals.decide(env.tenant, apr.id, status="rejected", decided_by="key_x", reason="no",
                                   now=time.time())
    out, c = await task
    assert code(out) == "approval.rejected" and c.rule_id == "gated"
    assert env.srv.calls == {}


async def test_a_rule_on_mcp_call_holds_for_both_spellings(env: Env) -> None:
    await env.policy("""
version: 1
rules:
  - id: no-loud-greetings
    tool: mcp.call
    when: {args.name: {eq: SHOUT}}
    verdict: deny
  - id: mcp
    tool: "mcp.*"
    verdict: allow
""")
    run = await env.run()
    for spelling in ("per-tool", "mcp.call"):
        tool, args = greet_by(spelling, "fake", "SHOUT")
        out, c = await env.call(run, tool, **args)
        assert code(out) == "policy.denied" and c.rule_id == "no-loud-greetings", (spelling, out)
    out, _ = await env.call(run, *greet_by("mcp.call", "fake", "quiet")[:1], **greet_by("mcp.call", "fake", "quiet")[1])
    assert isinstance(out, dict) and out["content"][0]["text"] == "hello quiet"
    assert env.srv.calls == {"greet": 1}


async def test_the_bundle_layer_and_its_tools_declaration_hold_for_both_spellings(env: Env) -> None:
    await env.policy(WALKTHROUGH.replace("no-greet\n    tool: mcp.fake.greet", "no-greet\n    tool: mcp.none"))
    run = await env.run()
    narrow = {"rules": [{"id": "bundle-no-greet", "tool": "mcp.fake.greet", "verdict": "deny"}]}
    for spelling in ("per-tool", "mcp.call"):
        tool, args = greet_by(spelling, "fake", "ada")
        out, c = await env.call(run, tool, bundle=narrow, **args)
        assert code(out) == "policy.denied" and c.rule_id == "bundle-no-greet", (spelling, out)
        assert c.extra["policy_layer"] == "bundle"
    # bundle.yaml tools: [mcp.fake.*] declares the server's tools, whichever spelling calls them
    out, c = await env.call(run, "mcp.call", tools=("mcp.fake.*",), server="fake", tool="greet", arguments={"name": "x"})
    assert isinstance(out, dict), out
    out, c = await env.call(run, "mcp.call", tools=("mcp.fake.*",), server="gated", tool="greet",
                            arguments={"name": "x"})
    assert code(out) == "policy.denied" and c.rule_id == "bundle.tools"  # was: judged on "mcp.call" alone
    assert "'mcp.call'" in out.detail  # the message names what the bundle called
    # tools: [mcp.call] declares every MCP call (mcp.call reaches them all anyway)
    out, c = await env.call(run, "mcp.fake.add", tools=("mcp.call",), a=1, b=2)
    assert isinstance(out, dict), out
    out, c = await env.call(run, "mcp.fake.add", tools=("echo",), a=1, b=3)
    assert code(out) == "policy.denied" and c.rule_id == "bundle.tools"
    assert env.srv.calls == {"greet": 1, "add": 1}


async def test_order_and_velocity_count_both_spellings_as_one_tool(env: Env) -> None:
    await env.policy("""
version: 1
rules:
  - id: one-greet-a-minute
    tool: mcp.fake.greet
    velocity: {max: 1, per_s: 60, scope: run}
    verdict: deny
  - id: no-add-after-greet
    tool: mcp.fake.add
    order: {not_after: mcp.fake.greet}
    verdict: deny
  - id: nothing-after-any-mcp-call
    tool: echo
    order: {not_after: mcp.call}
    verdict: deny
  - id: mcp
    tool: "mcp.*"
    verdict: allow
  - id: echo
    tool: echo
    verdict: allow
""")
    run = await env.run()
    out, _ = await env.call(run, "mcp.fake.greet", name="a")
    assert isinstance(out, dict)
    out, c = await env.call(run, "mcp.call", server="fake", name="greet", arguments={"name": "b"})
    assert code(out) == "policy.denied" and c.rule_id == "one-greet-a-minute"  # was: counted apart, allowed
    out, c = await env.call(run, "mcp.call", server="fake", tool="add", arguments={"a": 1, "b": 2})
    assert code(out) == "policy.denied" and c.rule_id == "no-add-after-greet"
    out, c = await env.call(run, "echo", n=1)  # an order rule on mcp.call saw the call spelled mcp.fake.greet
    assert code(out) == "policy.denied" and c.rule_id == "nothing-after-any-mcp-call"
    assert env.srv.calls == {"greet": 1}


async def test_prices_rate_limits_and_idempotency_treat_both_spellings_alike(env: Env) -> None:
    await env.policy("""
version: 1
rules:
  - id: mcp
    tool: "mcp.*"
    verdict: allow
prices:
  mcp.*: 0.0005
  mcp.fake.add: 0.003
limits: {tool_per_s: 0.001, tool_burst: 2}
""")
    run = await env.run()
    out, c = await env.call(run, "mcp.call", server="fake", tool="add", arguments={"a": 1, "b": 1})
    assert isinstance(out, dict) and c.cost_micro == 3000  # was: priced as mcp.call by "mcp.*" (500)
    # the same action again by the other spelling: deduplicated (at most once), charged nothing
    out, c = await env.call(run, "mcp.fake.add", a=1, b=1)
    assert isinstance(out, dict) and c.deduped and c.cost_micro == 0
    # an explicit key binds the action, not its spelling
    out, c = await env.call(run, "mcp.fake.add", key="k1", a=2, b=2)
    assert isinstance(out, dict) and not c.deduped
    again, c = await env.call(run, "mcp.call", key="k1", server="fake", tool="add", arguments={"a": 2, "b": 2})
    assert again == out and c.deduped
    assert env.srv.calls == {"add": 2}
    # one bucket per tool, whichever spelling: two calls of mcp.fake.add spent the burst of 2
    out, c = await env.call(run, "mcp.call", server="fake", tool="add", arguments={"a": 3, "b": 3})
    assert code(out) == "rate.limited", out
    out, c = await env.call(run, "mcp.fake.greet", name="x")
    assert isinstance(out, dict), out  # another tool: its own bucket


async def test_a_price_on_mcp_call_prices_the_per_tool_spelling_too(env: Env) -> None:
    await env.policy(WALKTHROUGH + "prices:\n  mcp.call: 0.002\n")
    run = await env.run()
    out, c = await env.call(run, "mcp.fake.add", a=1, b=1)
    assert isinstance(out, dict) and c.cost_micro == 2000  # was: the default price (100)


async def test_an_mcp_tool_whose_name_has_upper_case_is_still_reachable_through_mcp_call(env: Env) -> None:
    # The per-tool spelling cannot name it (bundle-spelled tool names are lower case); mcp.call stays its door,
    # and it is judged by the server's rules like any of its tools.
    env.srv.add_tool("getUser")
    await env.svc.extras["mcp"].refresh(env.tenant, "fake")
    await env.svc.extras["mcp"].approve(env.tenant, "fake", "getUser", key_id="key_admin")
    await env.policy(WALKTHROUGH)
    run = await env.run()
    out, c = await env.call(run, "mcp.call", server="fake", name="getUser", arguments={"x": "hi"})
    assert isinstance(out, dict) and out["content"][0]["text"] == "hi" and c.tool_name == "mcp.fake.getUser"
    await env.policy(WALKTHROUGH.replace("tool: mcp.fake.greet", "tool: \"mcp.fake.*\""))
    out, c = await env.call(run, "mcp.call", server="fake", name="getUser", arguments={"x": "again"})
    assert code(out) == "policy.denied" and c.rule_id == "no-greet"
