"""A conversation's turns in the order they were made, whatever the clocks of the nodes that made them (session 26).

The hole: a turn's history is the turns of its conversation created before it, ordered by ``created_at`` - the
clock of the API node that took each POST. Behind a load balancer, a second turn taken by a replica whose clock
ran behind the first one's (or by a node whose clock was stepped back by NTP) got a ``created_at`` before the
first turn's: the bundle ran with a history missing the previous turn, the user's follow-up question without
the answer it follows up on. Now the store creates a turn after every turn already in its conversation
(``stores._common.after_last_turn``, read in the creating transaction).

Through real HTTP on both stacks: the second POST is taken with the API's clock 30 s behind (the node's
``time.time`` as runs.py reads it), and the ``historian`` bundle reports what ``ctx.history`` held.
"""

from __future__ import annotations

import time
import types

import pytest

import app.routes.runs as runs_route
from tests.e2e.test_attack_conversations_session8 import TEST_BUNDLES, _history_seen

pytestmark = pytest.mark.timeout(120)


async def test_a_turn_taken_by_a_node_whose_clock_is_behind_still_has_the_turn_before_it(node, monkeypatch):
    tid, key = await node.tenant()
    await node.rt.registry.register_dir(TEST_BUNDLES / "historian", tid)
    c = node.client(key)
    first_turns, _ = await _history_seen(node, c, "skewed")
    assert first_turns == []
    first = (await c.get("/v1/runs")).json()["data"][0]
    monkeypatch.setattr(runs_route, "time", types.SimpleNamespace(time=lambda: time.time() - 30,
                                                                   monotonic=time.monotonic))
    turns, _ = await _history_seen(node, c, "skewed")
    monkeypatch.undo()
    assert [t[:2] for t in turns] == [["user", "what came before?"], ["assistant", turns[1][1]]], turns
    assert turns[1][1].startswith('{"conversation_id": "skewed"'), turns  # the first turn's answer
    listed = (await c.get("/v1/runs")).json()["data"]
    second = listed[0]
    assert [r["id"] for r in listed[:2]] == [second["id"], first["id"]]  # newest first, in the order made
    assert second["created_at"] > first["created_at"]
    # a third turn (clock right again) has both before it, in order
    turns, _ = await _history_seen(node, c, "skewed")
    assert [t[0] for t in turns] == ["user", "assistant", "user", "assistant"]
    assert turns[2][1] == "what came before?"
