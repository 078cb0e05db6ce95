"""Session 8 attacks on conversations (ctx.history) and on the run lifecycle, through real HTTP, both stacks.

Found:
* a conversation's history was unbounded: every earlier turn (inputs up to 256 KiB, answers up to the
  output limit) went into the ``welcome`` frame, so a conversation grown past the frame cap failed every
  later turn with ``frame.too_large`` / ``sandbox.crashed`` for ever (the supervisor read all of it first);
* bounded to half the frame cap alone, history + a big input could still not be passed on in one call.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest

from supervisor.ids import new_id
from supervisor.stores.records import Run
from tests.e2e.harness import collect

TEST_BUNDLES = Path(__file__).parent / "bundles"
TERMINAL = {"run.completed", "run.failed", "run.canceled", "run.timed_out"}


async def _start(client, bundle: str, text: str, **extra) -> dict:
    r = await client.post("/v1/runs", json={"bundle": bundle, "input": text, **extra})
    assert r.status_code == 201, r.text
    return r.json()


async def _history_seen(node, client, conversation_id: str, **extra) -> tuple[list[list], list]:
    """Run ``historian`` in the conversation: (the turns it got, its events)."""
    run = await _start(client, "historian", "what came before?", conversation_id=conversation_id, **extra)
    async with asyncio.timeout(60):
        events = await collect(client, run["id"])
    assert sum(e.event in TERMINAL for e in events) == 1
    assert events[-1].event == "run.completed", events[-1].data
    answer = "".join(e.data["text"] for e in events if e.event == "message.delta" and e.data["channel"] == "answer")
    return json.loads(answer)["turns"], events


async def _turn(node, tenant_id: str, conversation_id: str, text: str, answer: str | None, *, status: str = "succeeded",
                created_at: float | None = None, **kw) -> Run:
    """A finished (or not) turn of the conversation, written as the worker writes it."""
    runs = node.rt.services.runs
    run = Run(id=new_id("run_"), tenant_id=tenant_id, bundle="echo", bundle_version="x", input=text, status="queued",
              created_at=created_at or time.time(), conversation_id=conversation_id, **kw)
    await runs.create_run(run)
    if status != "queued":
        await runs.finish_run(tenant_id, run.id, status, {"succeeded": "run.completed", "failed": "run.failed",
                                                          "canceled": "run.canceled"}[status], {}, output=answer)
    return run


async def test_a_huge_conversation_still_runs_with_its_newest_turns(node):
    """Was: 20 turns with 1 MiB answers (each within the output limit) made a 20 MiB ``welcome``: the next
    turn failed (sandbox.crashed), and so would every later one. The history is now bounded by the
    sandbox's frame cap, keeping the newest turns whole (an assistant answer with its question)."""
    tid, key = await node.tenant()
    await node.rt.registry.register_dir(TEST_BUNDLES / "historian", tid)
    c = node.client(key)
    base = time.time() - 100
    questions = []
    for i in range(28):
        size = 1024 * 1024 if i < 20 else 100 * 1024  # the old turns huge, the newer ones merely big
        questions.append(f"question {i:02d}")
        await _turn(node, tid, "long", questions[-1], "a" * size, created_at=base + i)
    questions.append("last question")
    await _turn(node, tid, "long", "last question", "short answer", created_at=base + 50)
    turns, _ = await _history_seen(node, c, "long")
    assert turns[-2:] == [["user", "last question", 13], ["assistant", "short answer", 12]]
    assert turns[0][0] == "user", "a kept answer comes with its question"
    assert sum(t[2] for t in turns) <= node.rt.settings.sandbox_max_frame_bytes, \
        "what the bundle gets fits the frame it may send on (to llm.chat)"
    kept = [t[1] for t in turns if t[0] == "user"]
    assert len(kept) >= 3 and kept == questions[-len(kept):], "the newest turns, in order, none skipped"


async def test_history_is_the_owners_earlier_turns_only(node, monkeypatch):
    """What a turn sees: earlier turns of its own conversation, owner and tenant, oldest first - a failed
    turn's question without an answer, an unfinished earlier turn's question only; never a later turn
    (stored after it, before its history is read - even one made by a clock an hour ahead: since session 26
    a turn is ordered after every turn stored before it), another conversation's, another user's, or another
    tenant's with the same id."""
    import supervisor.runs.worker as worker_mod
    tid, key = await node.tenant()
    other_tid, other_key = await node.tenant()
    await node.rt.registry.register_dir(TEST_BUNDLES / "historian", tid)
    user = (await node.rt.services.tenants.create_user(tid, "alice")).id
    c = node.client(key)
    base = time.time() - 50
    await _turn(node, tid, "conv", "q-ok", "a-ok", created_at=base)
    await _turn(node, tid, "conv", "q-failed", None, status="failed", created_at=base + 1)
    await _turn(node, tid, "conv", "q-running", None, status="queued", created_at=base + 2)
    await _turn(node, tid, "elsewhere", "q-other-conv", "nope", created_at=base + 3)
    await _turn(node, other_tid, "conv", "q-other-tenant", "nope", created_at=base + 4)
    await _turn(node, tid, "conv", "q-other-user", "nope", created_at=base + 5, user_id=user)
    real_history = worker_mod.conversation_history

    async def later_turn_first(runs, tenant_id, conversation_id, *a, **kw):  # stored once the historian's run is
        if tenant_id == tid and conversation_id == "conv":
            await _turn(node, tid, "conv", "q-later", "nope", created_at=time.time() + 3600)
        return await real_history(runs, tenant_id, conversation_id, *a, **kw)

    monkeypatch.setattr(worker_mod, "conversation_history", later_turn_first)
    turns, _ = await _history_seen(node, c, "conv")
    monkeypatch.undo()
    assert [t[:2] for t in turns] == [["user", "q-ok"], ["assistant", "a-ok"], ["user", "q-failed"],
                                      ["user", "q-running"]]
    # tenant B naming the same conversation id runs with none of it
    await node.rt.registry.register_dir(TEST_BUNDLES / "historian", other_tid)
    turns, _ = await _history_seen(node, node.client(other_key), "conv")
    assert [t[1] for t in turns] == ["q-other-tenant", "nope"]


@pytest.mark.parametrize("conversation_id", ["a\n", "a" * 65, "é", "a b", "", "a\x00", "../x", "ａ", 5, ["a"]])
async def test_a_malformed_conversation_id_is_refused_and_creates_nothing(node, conversation_id):
    _, key = await node.tenant()
    c = node.client(key)
    r = await c.post("/v1/runs", json={"bundle": "echo", "input": "x", "conversation_id": conversation_id})
    assert r.status_code == 422 and r.json()["code"] == "input.invalid", r.text
    assert (await c.get("/v1/runs")).json()["data"] == []


async def test_an_idempotent_replay_binds_the_conversation(node):
    """The same Idempotency-Key: the same body (conversation included) replays the run; another
    conversation (or none) is a mismatch - never a replay of a run of another conversation."""
    _, key = await node.tenant()
    c = node.client(key)
    body = {"bundle": "echo", "input": "once", "conversation_id": "c1"}
    r1 = await c.post("/v1/runs", json=body, headers={"Idempotency-Key": "k"})
    r2 = await c.post("/v1/runs", json=body, headers={"Idempotency-Key": "k"})
    assert r1.status_code == r2.status_code == 201 and r1.json()["id"] == r2.json()["id"]
    for other in ({**body, "conversation_id": "c2"}, {"bundle": "echo", "input": "once"}):
        r = await c.post("/v1/runs", json=other, headers={"Idempotency-Key": "k"})
        assert r.status_code == 422 and r.json()["code"] == "idempotency.mismatch", r.text
    assert [x["id"] for x in (await c.get("/v1/runs")).json()["data"]] == [r1.json()["id"]]
    async with asyncio.timeout(30):
        await collect(c, r1.json()["id"])


async def test_history_and_a_big_input_still_fit_the_bundles_own_frame(node):
    """A bundle passes history + input on in one call (the chat bundle to llm.chat), in a frame capped at
    the negotiated size: the history leaves room for the input. Was (half the cap for history, whatever the
    input): 768 KiB of input (256 Ki three-byte characters) + 512 KiB of history could not be sent on."""
    tid, key = await node.tenant()
    await node.rt.registry.register_dir(TEST_BUNDLES / "forwarder", tid)
    c = node.client(key)
    base = time.time() - 100
    for i in range(12):
        await _turn(node, tid, "fwd", f"q{i}", "b" * 60_000, created_at=base + i)
    text = "€" * (256 * 1024 - 1)
    run = await _start(c, "forwarder", text, conversation_id="fwd")
    async with asyncio.timeout(60):
        events = await collect(c, run["id"])
    assert events[-1].event == "run.completed", events[-1].data
    answer = "".join(e.data["text"] for e in events if e.event == "message.delta")
    assert answer.startswith("forwarded ") and int(answer.split()[1]) >= 3, answer
