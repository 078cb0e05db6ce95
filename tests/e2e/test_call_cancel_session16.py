"""A bundle lets go of a call: the supervisor stops it (the ``cancel`` frame).

Found by a walkthrough: breaking out of ``ctx.llm.stream`` stopped nothing. The model went on
generating, its deltas kept arriving on the run's answer channel after the bundle had moved on, and
the whole answer was charged; a ``wait_for`` around a call waiting for approval left the request on
the approvers' list. The SDK now sends ``cancel`` for a call it lets go of; the supervisor cancels
the call's task, which settles, is audited ``tool.canceled`` / ``call.canceled``, and replies with
that error. Both stacks.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.e2e.harness import collect, make_data_dir, settings_for, start_node
from tests.e2e.test_run_pipeline import TEST_BUNDLES, check_stream
from tests.fakes.llm_servers import Script

pytestmark = pytest.mark.timeout(120)

POLICY = """
version: 1
rules:
  - {id: big-echo-needs-a-human, tool: echo, when: {args.n: {gt: 10}}, verdict: require_approval}
  - {id: echo, tool: echo, verdict: allow}
  - {id: llm, tool: llm.chat, verdict: allow}
"""


@pytest.fixture
async def node(stack_kind, stores, llm):
    n = await start_node(settings_for(stack_kind, make_data_dir(), **stores, openai_base_url=llm.openai_base_url,
                                      openai_api_key="sk-test", anthropic_api_key=None, anthropic_base_url=None))
    try:
        yield n
    finally:
        await n.stop()


async def _setup(node):
    tid, key = await node.tenant()
    await node.rt.registry.register_dir(TEST_BUNDLES / "letgo", tid)
    c = node.client(key)
    assert (await c.put("/v1/policy", content=POLICY)).status_code == 200
    return c


async def _run(c, text: str):
    r = await c.post("/v1/runs", json={"bundle": "letgo", "input": text})
    assert r.status_code == 201, r.text
    events = await collect(c, r.json()["id"])
    check_stream(events)
    assert events[-1].event == "run.completed", events[-1].data
    return r.json()["id"], events


def _custom(events, name: str) -> Any:
    return next(e.data["data"] for e in events if e.event == "custom" and e.data["name"] == name)


async def test_a_call_the_bundle_gives_up_on_is_withdrawn_and_audited(node):
    c = await _setup(node)
    run_id, events = await _run(c, "approval")
    assert _custom(events, "outcome") == {"outcome": "timed out"}
    assert _custom(events, "after") == {"n": 1}  # the session goes on after the cancel
    # (the cancel's withdrawal and audit record may still be on their way when the next call is answered)
    codes = {e.data["request_id"]: e.data.get("code") for e in events if e.event == "tool.result"}
    assert codes == {1: "call.canceled", 2: None}, codes
    # the request is off the approvers' list at once, as expired, saying why
    approvals = (await c.get("/v1/approvals", params={"run_id": run_id})).json()["data"]
    assert [(a["status"], a["decision_reason"]) for a in approvals] == [("expired", "the bundle canceled the call before a decision")], approvals
    assert (await c.get("/v1/approvals", params={"status": "pending"})).json()["data"] == []
    audit = (await c.get("/v1/audit", params={"run_id": run_id})).json()["data"]
    canceled = [a for a in audit if a["kind"] == "tool.canceled"]
    assert len(canceled) == 1 and canceled[0]["code"] == "call.canceled", audit


async def test_breaking_out_of_an_llm_stream_stops_the_model(node, llm):
    c = await _setup(node)
    llm.enqueue(Script(deltas=tuple(f"w{i} " for i in range(40)), hold_after_deltas=3))
    run_id, events = await _run(c, "stream")
    assert _custom(events, "broke") == {"got": ["w0 ", "w1 "]}
    assert _custom(events, "after") == {"n": 1}
    # the held stream was cut by the cancel, not by the LLM timeout (120 s): the run is long over
    assert _custom(events, "took")["s"] < 30
    answer = "".join(e.data["text"] for e in events if e.event == "message.delta" and e.data["channel"] == "answer")
    assert answer.startswith("w0 w1 ") and "w3" not in answer and answer.endswith("done"), answer
    results = {e.data["tool"]: e.data.get("code") for e in events if e.event == "tool.result"}
    assert results == {"llm.chat": "call.canceled", "echo": None}, results
    audit = (await c.get("/v1/audit", params={"run_id": run_id})).json()["data"]
    assert [a["code"] for a in audit if a["kind"] == "tool.canceled"] == ["call.canceled"]


async def test_a_cancel_of_a_call_not_in_flight_is_ignored_and_a_bad_one_refused(node):
    """An id whose reply already crossed the cancel (or that never was a call) is ignored; a cancel
    without an integer id is a protocol violation like any other: error frame, audit record, the
    connection closed, the run failed."""
    from tests.e2e.test_attack_sdk_ending_session8 import run_bundles

    got = await run_bundles(node, {
        "late-cancel": """
            async def main(ctx):
                r = await ctx.call("echo", n=1)
                await ctx._conn.notify({"type": "cancel", "id": 1})  # answered already
                await ctx._conn.notify({"type": "cancel", "id": 999})  # never was
                r2 = await ctx.call("echo", n=2)
                await ctx.answer(f"{r['n']} {r2['n']}")
        """,
        "bad-cancel": """
            async def main(ctx):
                await ctx._conn.notify({"type": "cancel", "id": "1"})
                await ctx.call("echo", n=1)
        """,
    })
    events, _ = got["late-cancel"]
    assert events[-1].event == "run.completed", events[-1].data
    assert "".join(e.data["text"] for e in events if e.event == "message.delta") == "1 2"
    assert [e.data.get("code") for e in events if e.event == "tool.result"] == [None, None]
    events, _ = got["bad-cancel"]
    assert events[-1].event == "run.failed" and events[-1].data["code"] in ("frame.invalid", "sandbox.crashed"), events[-1].data
