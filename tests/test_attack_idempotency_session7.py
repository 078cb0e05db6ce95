"""Attacks on the idempotency and approval steps of the governance chain, driven directly (the real chain,
recorder and stores, on both stacks): hostile arguments, keys and duplicates, first executions that fail
or are cut off, waits that break.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, ClassVar

import pytest
from pydantic import ConfigDict

from supervisor.audit.canonical import args_hash
from supervisor.chain.approval import CALL_FAILED
from supervisor.chain.base import Binding, CallState
from supervisor.errors import StockadeError
from supervisor.events import RunEmitter
from supervisor.ids import new_id
from supervisor.policy import load_policy
from supervisor.stores.records import Run
from supervisor.tools.base import ToolArgs, ToolContext, ToolResult
from supervisor.wire import HEADER
from tests.test_wire_fuzz_findings import DONE, stack, stack_settings  # noqa: F401  (the stack fixtures)

pytestmark = pytest.mark.timeout(60)

POLICY = """
version: 1
rules:
  - id: big-needs-a-human
    tool: "*"
    when: {args.n: {gt: 10}}
    verdict: require_approval
  - id: all
    tool: "*"
    verdict: allow
"""


def literal(body: bytes) -> bytes:
    """A frame exactly as written (json.dumps would spell 1e400 as Infinity)."""
    return HEADER.pack(len(body)) + body


class GateArgs(ToolArgs):
    model_config = ConfigDict(extra="allow", strict=True, frozen=True)


class GatedTool:
    """A tool with a side effect the test can count, hold and make fail."""

    name: ClassVar[str] = "test.gated"
    args_model: ClassVar[type[ToolArgs]] = GateArgs
    risk: ClassVar[str] = "high"
    default_price_micro: ClassVar[int] = 0
    timeout_s: ClassVar[float] = 10.0
    side_effects: ClassVar[bool] = True

    def __init__(self) -> None:
        self.runs = 0
        self.started = asyncio.Event()
        self.release = asyncio.Event()
        self.fail: StockadeError | None = None

    def resource(self, args: ToolArgs, ctx: ToolContext) -> str | None:
        return None

    def estimate_micro(self, args: ToolArgs, ctx: ToolContext) -> int | None:
        return None

    async def run(self, args: ToolArgs, ctx: ToolContext) -> ToolResult:
        self.runs += 1
        self.started.set()
        await self.release.wait()
        if self.fail is not None:
            raise self.fail
        return ToolResult(result={"run": self.runs, **(args.model_extra or {})})


class Chain:
    def __init__(self, st: Any) -> None:
        self.stack = st
        self.rt = st.rt
        self.tid = st.tid
        self.tool = GatedTool()
        self.rt.services.tools.register(self.tool)

    async def run(self, user_id: str | None = None) -> str:
        s = self.rt.services
        run = Run(id=new_id("run_"), tenant_id=self.tid, bundle="echo", bundle_version="x", input="",
                  status="queued", created_at=time.time(), user_id=user_id)
        await s.runs.create_run(run)
        await s.runs.start_run(self.tid, run.id, worker_id="attack", started_at=time.time())
        return run.id

    def state(self, run_id: str, args: dict[str, Any], key: Any = None, tool: str = "test.gated") -> CallState:
        s = self.rt.services
        b = Binding(tenant_id=self.tid, run_id=run_id, bundle="echo", bundle_version="x")
        return CallState(binding=b, tool_name=tool, raw_args=args, idempotency_key=key, request_id=1,
                         services=s, emit=RunEmitter(s.runs, s.events, self.tid, run_id).emit)

    async def call(self, run_id: str, args: dict[str, Any], key: Any = None, tool: str = "test.gated") -> Any:
        """The result, or the StockadeError the chain raised."""
        try:
            return await self.rt.chain(self.state(run_id, args, key, tool))
        except StockadeError as exc:
            return exc

    def watch_requests(self) -> asyncio.Queue[Any]:
        """Each approval request as the chain creates it (the real store, watched)."""
        requested: asyncio.Queue[Any] = asyncio.Queue()
        approvals = self.rt.services.approvals
        real_create = approvals.create

        async def create(approval: Any) -> Any:
            await requested.put(await real_create(approval))
            return approval

        approvals.create = create
        return requested

    async def kinds(self, run_id: str) -> list[str]:
        return [r.kind for r in await self.stack.audit(run_id)]


@pytest.fixture
async def chain(stack):  # noqa: F811
    await stack.rt.services.policies.put(stack.tid, POLICY, load_policy(POLICY, source="test").version)
    return Chain(stack)


@pytest.mark.parametrize("body", [
    b'{"v":1,"type":"call","id":1,"tool":"echo","args":{"n":1e400}}',  # decodes to inf: no args hash exists
    b'{"v":1,"type":"call","id":1,"tool":"echo","args":{"n":-1E+999}}',
    b'{"v":1,"type":"call","id":1,"tool":"echo","args":{"n":[0.5, 1e309]}}',
    b'{"v":1,"type":"emit","event":"custom","data":{"d":-1e400}}',  # nor a stored event
], ids=["call", "call-negative", "call-nested", "emit"])
async def test_a_number_out_of_range_is_refused_at_the_door(stack, body):  # noqa: F811
    """``1e400`` is valid JSON syntax but decodes to inf, which the args hash (and every store) refuses to
    encode: the call failed ``internal`` (retryable!), the emit ended as an unhandled frame."""
    run_id, out, _ = await stack.serve(literal(body), DONE)
    assert [(f["type"], f["id"], f["code"]) for f in out] == [("error", None, "frame.invalid")], out
    assert [r.kind for r in await stack.audit(run_id)] == ["frame.invalid"]
    await stack.still_serves()


async def duplicates_of_a_first_call(chain: Chain, n: int, key: str | None, args: dict[str, Any]):
    """n calls of one key from n runs: the first holds its tool, the others have found its claim pending."""
    runs = [await chain.run() for _ in range(n)]
    store = chain.rt.services.idempotency
    real_begin, waiting = store.begin, set()
    queued = asyncio.Event()

    async def begin(tenant_id: str, k: str, now: float) -> Any:  # the real store, watched
        entry = await real_begin(tenant_id, k, now)
        if entry is not None and entry.state == "pending":
            waiting.add(asyncio.current_task())
            if len(waiting) >= n - 1:
                queued.set()
        return entry

    store.begin = begin
    first = asyncio.create_task(chain.call(runs[0], args, key=key))
    await chain.tool.started.wait()
    rest = [asyncio.create_task(chain.call(r, args, key=key)) for r in runs[1:]]
    await queued.wait()
    return runs, first, rest


async def test_a_first_call_that_fails_once_its_tool_ran_is_not_run_again_by_its_duplicates(chain):
    """The tool acted, then failed (a POST that timed out after the server took it): the waiting duplicates
    each claimed the released key and ran the tool again - three side effects for one key. Now they all
    get the first call's failure, marked deduped, and the tool ran once."""
    chain.tool.fail = StockadeError("tool.timeout", "test.gated did not finish")
    runs, first, rest = await duplicates_of_a_first_call(chain, 3, "order-7", {"x": 1})
    chain.tool.release.set()
    results = await asyncio.gather(first, *rest)
    assert chain.tool.runs == 1
    assert [r.code for r in results] == ["tool.timeout"] * 3, results
    assert [r.extra.get("deduped") for r in results] == [None, True, True]
    assert [await chain.kinds(r) for r in runs] == [["tool.allowed", "tool.failed"], ["tool.deduped"], ["tool.deduped"]]
    later = await chain.call(await chain.run(), {"x": 1}, key="order-7")  # and so does a repeat much later
    assert (later.code, chain.tool.runs) == ("tool.timeout", 1)
    other = await chain.call(await chain.run(), {"x": 2}, key="order-7")
    assert other.code == "idempotency.mismatch"


async def test_a_first_call_cut_off_while_its_tool_ran_is_not_run_again(chain):
    """The first call's run ended (canceled) while its tool was acting: the duplicate claimed the released
    key and ran the tool a second time. Now it learns the first one's outcome is unknown."""
    runs, first, rest = await duplicates_of_a_first_call(chain, 2, "order-8", {"x": 1})
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    chain.tool.release.set()
    dup = await rest[0]
    assert isinstance(dup, StockadeError) and dup.code == "idempotency.interrupted", dup
    assert chain.tool.runs == 1
    assert await chain.kinds(runs[0]) == ["tool.allowed", "tool.canceled"]
    assert await chain.kinds(runs[1]) == ["tool.deduped"]


async def test_a_derived_key_keeps_a_failed_side_effect_from_running_twice_in_a_run(chain):
    """No explicit key: a tool with side effects dedupes on run + args. Its second identical call in the run
    (a bundle's blind retry) gets the first outcome instead of acting again."""
    chain.tool.fail = StockadeError("tool.failed", "test.gated failed")
    chain.tool.release.set()
    run = await chain.run()
    first, again = await chain.call(run, {"x": 1}), await chain.call(run, {"x": 1})
    assert (first.code, again.code, again.extra.get("deduped"), chain.tool.runs) == ("tool.failed", "tool.failed", True, 1)
    elsewhere = await chain.call(await chain.run(), {"x": 1})  # another run: its own key
    assert elsewhere.code == "tool.failed" and chain.tool.runs == 2


@pytest.mark.parametrize("refusal", ["budget", "approval"])
async def test_a_first_call_refused_before_its_tool_ran_frees_the_key(chain, refusal):
    """Refused before acting (over budget, or an approver said no): nothing happened, so the key is free
    and a repeat is decided afresh, and runs when allowed."""
    chain.tool.release.set()
    s = chain.rt.services
    args = {"x": 1, "n": 50} if refusal == "approval" else {"x": 1}
    if refusal == "budget":
        policy = POLICY + "prices:\n  test.gated: 1.0\n"
        await s.policies.put(chain.tid, policy, load_policy(policy, source="test").version)
        await s.ledger.set_cap(chain.tid, "tenant", chain.tid, 500_000)
    requested = chain.watch_requests()
    first = asyncio.create_task(chain.call(await chain.run(), args, key="k-1"))
    if refusal == "approval":
        apr = await requested.get()
        await s.approvals.decide(chain.tid, apr.id, status="rejected", decided_by="key_x", reason="no", now=time.time())
    res = await first
    assert res.code == ("approval.rejected" if refusal == "approval" else "budget.exceeded"), res
    assert chain.tool.runs == 0 and await s.idempotency.get(chain.tid, "k:test.gated:k-1") is None
    if refusal == "budget":
        await s.ledger.set_cap(chain.tid, "tenant", chain.tid, 5_000_000)
        assert (await chain.call(await chain.run(), args, key="k-1"))["run"] == 1


async def test_a_tool_that_refused_having_done_nothing_frees_the_key(chain):
    """A refusal of the tool itself (quota, not found...) leaves nothing done: the repeat runs afresh."""
    chain.tool.fail = StockadeError("storage.quota", "full")
    chain.tool.release.set()
    run = await chain.run()
    assert (await chain.call(run, {"x": 1}, key="k-2")).code == "storage.quota"
    chain.tool.fail = None
    assert (await chain.call(run, {"x": 1}, key="k-2"))["run"] == 2
    assert (await chain.call(run, {"x": 1}, key="k-2"))["run"] == 2  # and from then on, that result


async def test_a_wait_for_a_decision_that_breaks_leaves_no_request_behind_and_the_run_running(chain, monkeypatch):
    """The approval store fails while the call waits for a human, for longer than a wait rides out (session 9:
    ``OUTAGE_MAX_S``; shortened here): the call fails closed, but its request stayed pending - approvable,
    recorded as approved, for a call that had already failed - and its run stayed ``waiting_approval``
    while it went on."""
    from supervisor.chain import approval

    monkeypatch.setattr(approval, "OUTAGE_MAX_S", 0.3)
    s = chain.rt.services
    run = await chain.run()
    real_get = s.approvals.get

    async def get(tenant_id: str, approval_id: str) -> Any:
        raise StockadeError("store.unavailable", "the database went away")

    s.approvals.get = get
    res = await chain.call(run, {"x": 1, "n": 50})
    s.approvals.get = real_get
    assert isinstance(res, StockadeError) and res.code == "store.unavailable", res
    (apr,) = await s.approvals.list(chain.tid, run_id=run)
    assert (apr.status, apr.decision_reason) == ("expired", CALL_FAILED), apr
    assert (await s.runs.get_run(chain.tid, run)).status == "running"
    assert chain.tool.runs == 0
    events = [(e.type, e.data.get("decision")) for e in await chain.stack.events(run)]
    assert events == [("approval.requested", None), ("approval.resolved", "expired")], events


async def test_a_claim_left_by_a_lost_worker_fails_its_repeat_at_once(chain):
    """A worker killed mid-call leaves its key claimed forever: every repeat waited out tool timeout +
    approval TTL (an hour by default, longer than the run) for a result that never comes, then got the
    retryable idempotency.in_progress - for ever. A claim older than any live claimant can hold it is
    now known dead: the repeat fails at once, outcome unknown, and the tool does not run."""
    chain.tool.release.set()
    s = chain.rt.services
    hold = chain.tool.timeout_s + s.settings.approval_ttl_s
    assert await s.idempotency.begin(chain.tid, "k:test.gated:k-lost", time.time() - hold - 120) is None
    async with asyncio.timeout(5):
        res = await chain.call(await chain.run(), {"x": 1}, key="k-lost")
    assert isinstance(res, StockadeError) and res.code == "idempotency.interrupted", res
    assert chain.tool.runs == 0
    # a claim within its hold is a live claimant's: waited for, and its result replayed
    assert await s.idempotency.begin(chain.tid, "k:test.gated:k-live", time.time() - 5) is None
    real_begin, polled = s.idempotency.begin, asyncio.Event()

    async def begin(tenant_id: str, k: str, now: float) -> Any:  # the real store, watched
        entry = await real_begin(tenant_id, k, now)
        if entry is not None and entry.state == "pending":
            polled.set()
        return entry

    s.idempotency.begin = begin
    waiter = asyncio.create_task(chain.call(await chain.run(), {"x": 1}, key="k-live"))
    await polled.wait()
    await s.idempotency.complete(chain.tid, "k:test.gated:k-live",
                                 {"args_hash": args_hash("test.gated", {"x": 1}), "result": {"first": True}})
    assert await waiter == {"first": True} and chain.tool.runs == 0


@pytest.mark.parametrize("key, refused", [
    (5, True), (True, True), ([], True), ({}, True), (1.5, True),  # not a string
    ("", True), ("k" * 256, True), ("a\x00b", True),  # empty, over the cap, NUL
    ("k" * 255, False), ("ｋ", False), ("\u200b", False), ("é", False), ("e\u0301", False), (" k ", False),
])
async def test_hostile_explicit_keys_are_refused_or_kept_apart(chain, key, refused):
    """A refused key is refused (input.invalid, nothing runs): never silently dropped (the call would run
    unprotected). An accepted one protects exactly its own spelling: look-alikes (another normal form,
    a zero-width space, padding) are other keys, never a replay of them."""
    chain.tool.release.set()
    run = await chain.run()
    res = await chain.call(run, {"x": 1}, key=key)
    if refused:
        assert isinstance(res, StockadeError) and res.code == "input.invalid", res
        assert chain.tool.runs == 0 and await chain.kinds(run) == ["tool.invalid"]
        return
    assert res == {"run": 1, "x": 1}
    assert await chain.call(await chain.run(), {"x": 1}, key=key) == {"run": 1, "x": 1}  # replayed
    for other in ("k", "e\u0301" if key == "é" else "é", ""):
        if other and other != key:
            assert (await chain.call(await chain.run(), {"x": 1}, key=other))["run"] > 1
    assert chain.tool.runs >= 2


@pytest.mark.parametrize("first, second, same", [
    ({"a": 1, "b": [1, 2]}, {"b": [1, 2], "a": 1}, True),  # key order: one canonical form
    ({"v": 1}, {"v": 1.0}, False),  # another number spelling is other arguments
    ({"v": 1}, {"v": True}, False),  # a bool is no number
    ({"v": 0.0}, {"v": -0.0}, False),
    ({"s": "é"}, {"s": "e\u0301"}, False),  # another normal form
    ({"v": 10**20}, {"v": 1e20}, False),
    ({"d": {"x": None}}, {"d": {}}, False),
])
async def test_the_args_hash_is_exact(chain, first, second, same):
    """The hash approvals bind to and derived keys dedupe on: key order does not matter, anything that
    could mean other arguments does (a repeat with a look-alike is another call, never a replay)."""
    chain.tool.release.set()
    run = await chain.run()
    await chain.call(run, first)
    res = await chain.call(run, second)
    assert (chain.tool.runs == 1) is same, (res, chain.tool.runs)
    # and with one explicit key: replayed, or refused as other arguments
    chain.tool.runs = 0
    await chain.call(await chain.run(), first, key="same-key")
    res = await chain.call(await chain.run(), second, key="same-key")
    assert same or (isinstance(res, StockadeError) and res.code == "idempotency.mismatch"), res


async def test_an_approval_covers_its_one_call_only(chain):
    """Approved once: a call with other arguments, or the same arguments from another run, asks again (it
    never rides the first approval); the approved call's own replay in its run is deduped, not re-run."""
    chain.tool.release.set()
    s = chain.rt.services
    requested = chain.watch_requests()
    run = await chain.run()
    first = asyncio.create_task(chain.call(run, {"x": 1, "n": 50}))
    apr = await requested.get()
    await s.approvals.decide(chain.tid, apr.id, status="approved", decided_by="key_x", reason=None, now=time.time())
    assert (await first)["run"] == 1
    assert await chain.call(run, {"x": 1, "n": 50}) == {"run": 1, "x": 1, "n": 50} and requested.empty()
    for run_id, args in ((run, {"x": 1, "n": 51}), (await chain.run(), {"x": 1, "n": 50})):
        again = asyncio.create_task(chain.call(run_id, args))
        apr2 = await requested.get()
        assert apr2.id != apr.id and apr2.args == args and apr2.status == "pending"
        await s.approvals.decide(chain.tid, apr2.id, status="rejected", decided_by="key_x", reason="no", now=time.time())
        assert (await again).code == "approval.rejected"
    assert chain.tool.runs == 1


async def test_a_run_ending_while_the_result_is_being_kept_still_keeps_it(chain):
    """The tool succeeded and its result is being stored for the key when the run is canceled: the store
    write was dropped, the key stayed claimed (pending) for ever, and the duplicate waiting on it got
    nothing for the whole hold. The write now finishes: the duplicate gets the result, nothing runs twice."""
    chain.tool.release.set()
    s = chain.rt.services
    real_complete, storing, proceed = s.idempotency.complete, asyncio.Event(), asyncio.Event()

    async def complete(tenant_id: str, key: str, result: dict[str, Any]) -> None:  # the real store, held
        storing.set()
        await proceed.wait()
        await real_complete(tenant_id, key, result)

    s.idempotency.complete = complete
    first = asyncio.create_task(chain.call(await chain.run(), {"x": 1}, key="k-late"))
    await storing.wait()
    first.cancel()
    await asyncio.sleep(0)
    proceed.set()
    with pytest.raises(asyncio.CancelledError):
        await first
    s.idempotency.complete = real_complete
    entry = await s.idempotency.get(chain.tid, "k:test.gated:k-late")
    assert entry is not None and entry.state == "done", entry
    async with asyncio.timeout(5):
        assert await chain.call(await chain.run(), {"x": 1}, key="k-late") == {"run": 1, "x": 1}
    assert chain.tool.runs == 1


async def test_a_repeat_of_an_approved_call_is_replayed_without_a_new_request_and_other_args_ask_nothing(chain):
    """Explicit key on a call that needed a human: its repeat (same args, another run) is the first
    result, deduped, with no second request to approvers; the key with other args is a mismatch refused
    before any request is made (an approver is never asked about a call that cannot run)."""
    chain.tool.release.set()
    s = chain.rt.services
    requested = chain.watch_requests()
    first = asyncio.create_task(chain.call(await chain.run(), {"x": 1, "n": 50}, key="pay-1"))
    apr = await requested.get()
    await s.approvals.decide(chain.tid, apr.id, status="approved", decided_by="key_x", reason=None, now=time.time())
    assert (await first)["run"] == 1
    assert await chain.call(await chain.run(), {"x": 1, "n": 50}, key="pay-1") == {"run": 1, "x": 1, "n": 50}
    res = await chain.call(await chain.run(), {"x": 1, "n": 60}, key="pay-1")
    assert isinstance(res, StockadeError) and res.code == "idempotency.mismatch"
    assert len(await s.approvals.list(chain.tid)) == 1 and chain.tool.runs == 1


async def test_a_request_removed_behind_the_stores_back_fails_the_call_closed(chain):
    """A hostile database writer deletes the pending request: the waiting call polled for it until its
    expiry (an hour), then spun without pause (expiring a missing row fails, and it tried again at once).
    It now fails closed at once: approval.rejected (audited tool.rejected), the tool never runs."""
    s = chain.rt.services
    requested = chain.watch_requests()
    run = await chain.run()
    call = asyncio.create_task(chain.call(run, {"x": 1, "n": 50}))
    apr = await requested.get()
    db = s.approvals._db
    if hasattr(db, "tenant_tx"):
        async with db.tenant_tx(chain.tid) as c:
            await c.execute("DELETE FROM approvals WHERE id = $1", apr.id)
    else:
        db.execute("DELETE FROM approvals WHERE id = ?", (apr.id,))
    async with asyncio.timeout(5):
        res = await call
    assert isinstance(res, StockadeError) and res.code == "approval.rejected", res
    assert chain.tool.runs == 0 and (await chain.kinds(run))[-1] == "tool.rejected"



async def test_the_sweeper_prunes_keys_past_their_ttl_and_a_repeat_then_runs_again(chain):
    """Session 8: a key and its result were kept for ever. Past ``idempotency_ttl_s`` the sweep drops it
    (a day in; a repeat within it is still deduped), and a repeat then runs the tool again, as with Stripe."""
    chain.tool.release.set()
    first = await chain.call(await chain.run(), {"x": 1}, key="order-9")
    again = await chain.call(await chain.run(), {"x": 1}, key="order-9")
    assert first == again and chain.tool.runs == 1
    ttl = chain.rt.settings.idempotency_ttl_s
    await chain.rt.prune_idempotency_keys(time.time() + ttl - 60)  # not yet due (on a shared PostgreSQL test
    # database other tests' older keys may go: no count is asserted, the key's own fate is)
    assert await chain.call(await chain.run(), {"x": 1}, key="order-9") == first and chain.tool.runs == 1
    assert await chain.rt.prune_idempotency_keys(time.time() + ttl + 60) >= 1
    later = await chain.call(await chain.run(), {"x": 1}, key="order-9")
    assert chain.tool.runs == 2 and later != first
