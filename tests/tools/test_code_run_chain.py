"""code.run through the real governance chain (audit, idempotency, budget), on both stacks.

Each call starts a real sandbox. The node's uid pool is a small one of this test's own (a range no
other test process uses), so the tests can fill it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
import time
from dataclasses import dataclass
from typing import Any

import pytest

from supervisor.chain.base import Binding, CallState
from supervisor.errors import StockadeError
from supervisor.events import RunEmitter
from supervisor.ids import new_id
from supervisor.policy import load_policy
from supervisor.rmtree import remove_tree
from supervisor.runtime import open_runtime
from supervisor.session import RunSession
from supervisor.stores.records import Run
from supervisor.tenancy import create_tenant
from supervisor.wire import HEADER
from tests.e2e.harness import make_data_dir, settings_for

pytestmark = [pytest.mark.timeout(90),
              pytest.mark.skipif(os.geteuid() != 0, reason="needs root: the node's uid pool is what is tested")]

POLICY = """
version: 1
rules:
  - id: code
    tool: code.run
    verdict: allow
prices:
  code.run: 0.01
"""
PRICE = 10_000  # micro-USD
UID_BASE = 420_000 + (os.getpid() % 400) * 16  # tests/sandbox uses 300,000-380,000; e2e nodes 200,000+


@dataclass
class Env:
    rt: Any
    tenants: list[str]

    @property
    def pool(self) -> Any:
        return self.rt.services.extras["uid_pool"]

    async def call(self, args: dict[str, Any], *, key: str | None = None, tenant: int = 0,
                   run_id: str | None = None) -> tuple[dict[str, Any] | StockadeError, CallState]:
        b = Binding(tenant_id=self.tenants[tenant], run_id=run_id or "run_" + secrets.token_hex(4), bundle="b",
                    bundle_version="1")

        async def emit(type_: str, data: dict[str, Any]) -> None:
            return None

        c = CallState(binding=b, tool_name="code.run", raw_args=args, idempotency_key=key,
                      services=self.rt.services, emit=emit)
        try:
            return await self.rt.chain(c), c
        except StockadeError as exc:
            return exc, c

    async def through_session(self, args: dict[str, Any]) -> tuple[str, list[dict[str, Any]]]:
        """One code.run call as a bundle makes it: a real RunSession reading the frames from a socket's
        reader; the run's id and the frames the supervisor wrote back (welcome excluded)."""
        s = self.rt.services
        tid = self.tenants[0]
        run = Run(id=new_id("run_"), tenant_id=tid, bundle="b", bundle_version="1", input="", status="queued",
                  created_at=time.time())
        await s.runs.create_run(run)
        await s.runs.start_run(tid, run.id, worker_id="test", started_at=time.time())
        binding = Binding(tenant_id=tid, run_id=run.id, bundle="b", bundle_version="1")
        sess = RunSession(services=s, chain=self.rt.chain, recorder=self.rt.recorder, binding=binding,
                          emitter=RunEmitter(s.runs, s.events, tid, run.id), welcome={"run_id": run.id},
                          on_limit=lambda code: None)
        reader = asyncio.StreamReader()
        for frame in ({"type": "hello"}, {"type": "call", "id": 1, "tool": "code.run", "args": args},
                      {"type": "done", "status": "ok"}):
            body = json.dumps({"v": 1, **frame}).encode()
            reader.feed_data(HEADER.pack(len(body)) + body)
        reader.feed_eof()
        writer = _Writer()
        async with asyncio.timeout(60):
            await sess.serve(reader, writer)  # type: ignore[arg-type]
        assert writer.frames[0]["type"] == "welcome"
        return run.id, writer.frames[1:]

    async def audit(self, run_id: str, tenant: int = 0) -> list[Any]:
        recs = await self.rt.services.audit.list(self.tenants[tenant], limit=10_000)
        return [r for r in recs if r.run_id == run_id]

    async def spent_and_reserved(self, tenant: int = 0) -> tuple[int, int]:
        tid = self.tenants[tenant]
        acct = next(a for a in await self.rt.services.ledger.accounts(tid, time.time())
                    if (a.scope, a.scope_id) == ("tenant", tid))
        return acct.spent_micro, acct.reserved_micro


class _Writer:
    """The socket's write side, as the session uses it."""

    def __init__(self) -> None:
        self.frames: list[dict[str, Any]] = []
        self.closed = False

    def is_closing(self) -> bool:
        return self.closed

    def write(self, data: bytes) -> None:
        self.frames.append(json.loads(data[HEADER.size:]))

    async def drain(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True


@pytest.fixture(params=["embedded", "production"])
def stack_settings(request: pytest.FixtureRequest) -> Any:
    """Sync on purpose: ``pg_url`` creates its database with asyncio.run."""
    kw: dict[str, Any] = dict(sandbox_uid_base=UID_BASE, sandbox_uid_count=4, worker_concurrency=1)
    if request.param == "production":
        return settings_for("production", make_data_dir(), pg_url=request.getfixturevalue("pg_url"),
                            redis_url=request.getfixturevalue("redis_url"),
                            redis_prefix=request.getfixturevalue("redis_prefix"), **kw)
    return settings_for("embedded", make_data_dir(), **kw)


@pytest.fixture
async def make_env(stack_settings: Any):
    """``await make_env(**settings)``: a node (not started: the chain and stores only) with two tenants."""
    runtimes = []

    async def make(**update: Any) -> Env:
        rt = await open_runtime(stack_settings.model_copy(update=update))
        runtimes.append(rt)
        tenants = []
        for _ in range(2):
            tenant, _key = await create_tenant(rt.services, f"code-{secrets.token_hex(4)}")
            await rt.services.policies.put(tenant.id, POLICY, load_policy(POLICY, source="test").version)
            await rt.services.ledger.set_cap(tenant.id, "tenant", tenant.id, 1_000_000)
            tenants.append(tenant.id)
        return Env(rt, tenants)

    try:
        yield make
    finally:
        for rt in runtimes:
            await rt.stop()
        remove_tree(stack_settings.data_dir)  # (shutil.rmtree raised on the old tool's deep leftovers)


@pytest.fixture
async def env(make_env: Any) -> Env:
    return await make_env()


async def _until(cond: Any) -> None:
    """Wait (bounded) for a condition another task brings about."""
    async with asyncio.timeout(20):
        while not cond():  # noqa: ASYNC110 - a uid taken by another task: no event to wait on
            await asyncio.sleep(0.01)


BLOCK = {"code": "import time\ntime.sleep(60)\n", "timeout_s": 60}


async def test_an_exhausted_uid_pool_is_a_retryable_refusal_that_frees_the_key_and_charges_nothing(env, caplog):
    """The pool's acquire was outside the try that turns a SandboxError into a StockadeError: the bundle got
    ``tool.failed`` (a traceback in the server log), the idempotency key was kept bound to that failure (a
    retry with the same key was told it again, deduped) - for a call whose tool never did anything."""
    held = [env.pool.acquire() for _ in range(env.pool.count)]
    run_id = "run_" + secrets.token_hex(4)
    with caplog.at_level(logging.DEBUG):
        out, c = await env.call({"code": "print('hi')"}, key="k-1", run_id=run_id)
    try:
        assert isinstance(out, StockadeError), out
        assert out.code == "sandbox.unavailable" and out.http_status == 503
        assert out.to_dict()["retryable"] is True  # as the bundle's ToolError has it
        assert "STOCKADE_" not in out.public_detail  # the operator's remedy is for the log, not the tenant
        assert [(r.kind, r.code, r.cost_micro) for r in await env.audit(run_id)] == [
            ("tool.allowed", None, 0), ("tool.failed", "sandbox.unavailable", 0)]
        assert await env.spent_and_reserved() == (0, 0)  # the reservation released, nothing charged
        assert not [r for r in caplog.records if r.exc_info], "a refusal is not a crash"
        assert any("STOCKADE_SANDBOX_UID_COUNT" in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    finally:
        for uid in held:
            env.pool.release(uid)
    # the key was freed: the same call with the same key now runs (not the first failure, replayed)
    out, c = await env.call({"code": "print('hi')"}, key="k-1")
    assert isinstance(out, dict) and out["stdout"] == "hi\n" and not c.deduped, out
    assert await env.spent_and_reserved() == (PRICE, 0)
    assert env.pool.in_use == 0


async def test_one_tenant_cannot_take_every_code_sandbox(make_env):
    """A bundle firing concurrent code.run calls had them all run, up to every uid of the node's pool:
    every other tenant's code.run (and the node's runs) then failed. Now a tenant has at most
    STOCKADE_CODE_RUN_MAX_PER_TENANT at once on a node; past it, a retryable rate.limited that names
    the limit, charges nothing and leaves the other tenants' calls alone."""
    env = await make_env(code_run_max_per_tenant=2, sandbox_uid_count=8)
    blockers = [asyncio.ensure_future(env.call(BLOCK)) for _ in range(2)]
    try:
        await _until(lambda: env.pool.in_use == 2)  # both sandboxes have their uid
        run_id = "run_" + secrets.token_hex(4)
        out, c = await env.call({"code": "print(1)"}, key="k-3", run_id=run_id)
        assert isinstance(out, StockadeError) and out.code == "rate.limited", out
        assert out.to_dict()["retryable"] is True and out.extra["limit"] == "code_run_concurrency"
        recs = await env.audit(run_id)
        assert [(r.kind, r.code, r.cost_micro) for r in recs] == [("tool.allowed", None, 0),
                                                                   ("rate.limited", "rate.limited", 0)]
        assert recs[-1].detail["rate_limit"] == "code_run_concurrency"
        assert await env.spent_and_reserved() == (0, 2 * PRICE)  # only the two running calls hold anything
        assert env.pool.in_use == 2
        # another tenant is not affected
        out, _ = await env.call({"code": "print('b')"}, tenant=1)
        assert isinstance(out, dict) and out["stdout"] == "b\n", out
    finally:
        for t in blockers:
            t.cancel()
        await asyncio.gather(*blockers, return_exceptions=True)
    assert env.pool.in_use == 0 and env.rt.services.extras["code_admission"].total == 0
    # the slots are back: the refused key was freed, and runs now
    out, c = await env.call({"code": "print(1)"}, key="k-3")
    assert isinstance(out, dict) and out["stdout"] == "1\n" and not c.deduped, out


async def test_code_run_never_takes_the_uids_the_nodes_runs_need(make_env):
    """code.run and the node's runs share one uid pool, and code.run could take all of it: the runs this
    node claims then failed to start. Now code.run gets at most the pool minus what the runs and warm
    slots of the node can hold at once (worker_concurrency + sandbox_warm_pool); past it
    sandbox.unavailable, retryable - whichever tenants the sandboxes are of."""
    env = await make_env(sandbox_uid_count=4, worker_concurrency=2, sandbox_warm_pool=0)
    blockers = [asyncio.ensure_future(env.call(BLOCK, tenant=i)) for i in (0, 1)]
    try:
        await _until(lambda: env.pool.in_use == 2)
        out, _ = await env.call({"code": "print(1)"})
        assert isinstance(out, StockadeError) and out.code == "sandbox.unavailable", out
        assert out.to_dict()["retryable"] is True
        assert env.pool.in_use == 2
        runs = [env.pool.acquire() for _ in range(2)]  # what the node's two run slots would take: still there
        for uid in runs:
            env.pool.release(uid)
    finally:
        for t in blockers:
            t.cancel()
        await asyncio.gather(*blockers, return_exceptions=True)
    assert env.pool.in_use == 0 and env.rt.services.extras["code_admission"].total == 0


async def test_a_file_name_that_is_not_utf8_no_longer_costs_the_whole_result(env):
    """A file the code created under a name that is not UTF-8 came back from os with lone surrogates in
    its path, and the result frame could not be encoded: the bundle got frame.invalid instead of its
    stdout and every other file, while the audit said tool.completed and the call was charged. Now
    that file is listed apart, its name escaped, and the rest of the result arrives."""
    code = ("open(b'bad\\xff\\xfename', 'w').write('hi')\n"
            "open('good.txt', 'w').write('ok')\n"
            "print('done')\n")
    run_id, out = await env.through_session({"code": code})
    assert [(f["type"], f["id"]) for f in out] == [("result", 1)], out
    result = out[0]["result"]
    assert result["stdout"] == "done\n" and result["exit_code"] == 0
    assert [(f["path"], f["text"]) for f in result["files"]] == [("good.txt", "ok")]
    assert result["files_skipped"] == [{"name": "bad\\xff\\xfename", "reason": "name is not UTF-8"}]
    assert result["files_truncated"] is False
    assert [(r.kind, r.cost_micro) for r in await env.audit(run_id)] == [("tool.allowed", 0),
                                                                         ("tool.completed", PRICE)]


DEEP = """import os
fd = os.open('.', os.O_RDONLY)
for _ in range(1500):
    os.mkdir('d', dir_fd=fd)
    nxt = os.open('d', os.O_RDONLY, dir_fd=fd)
    os.close(fd)
    fd = nxt
print('deep')
"""


async def test_a_deep_tree_costs_neither_the_result_nor_a_uid(env, caplog):
    """Code that left a directory tree ~1,500 deep: collecting its files (Path.rglob) and removing its work
    dir (shutil.rmtree, ignore_errors or not) both recurse once per level on Python 3.11 and raised
    RecursionError. The bundle got tool.failed instead of its stdout, and the exception out of the tool's
    ``finally`` skipped the release of the sandbox's uid: one call, one uid of the node's pool gone until
    a restart - and the work dir left on disk."""
    out, _ = await env.call({"code": DEEP})
    assert isinstance(out, dict) and out["stdout"] == "deep\n" and out["files_truncated"] is True, out
    assert env.pool.in_use == 0
    assert list((env.rt.settings.data_dir / "coderun").iterdir()) == []
    assert not [r for r in caplog.records if r.exc_info]
