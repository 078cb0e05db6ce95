"""Session 8: a conversation's history is bounded where it is read (both adapters) and where it is sent.

Was: ``conversation_history`` returned every earlier turn of the conversation, however large; the worker
put all of it into the ``welcome`` frame (see tests/e2e/test_attack_conversations_session8.py).
"""

from __future__ import annotations

import pytest

from supervisor.runs.history import _trim, conversation_history, history_budget
from supervisor.stores._common import HISTORY_RUN_BYTES as RUN
from tests.contract._helpers import make_run, store


@pytest.fixture
async def ctx(sql_db):
    return sql_db, store(sql_db, "RunStore"), await sql_db.new_tenant()


async def _conversation(runs, t, turns: list[tuple[str, str | None]], conv: str = "c") -> list:
    made = []
    for i, (text, answer) in enumerate(turns):
        run = make_run(t, conversation_id=conv, input=text, created_at=100.0 + i)
        await runs.create_run(run)
        if answer is not None:
            await runs.finish_run(t, run.id, "succeeded", "run.completed", {}, output=answer)
        made.append(run)
    return made


async def test_max_bytes_keeps_the_newest_runs_whole_counting_utf8_bytes(ctx):
    """Both adapters count bytes (not characters: "é" is two) and keep whole runs, newest first; the
    bound is exact at the edge and 0 gives nothing."""
    _, runs, t = ctx
    made = await _conversation(runs, t, [("q0", "é" * 50), ("q1", "é" * 50), ("q2", "b" * 10), ("now", None)])
    anchor = made[-1].id
    everything = await runs.conversation_history(t, "c", anchor)
    assert [x["content"][:2] for x in everything] == ["q0", "éé", "q1", "éé", "q2", "bb"]
    assert await runs.conversation_history(t, "c", anchor, max_bytes=None) == everything
    last_two = RUN + 2 + 100 + RUN + 2 + 10  # q1 + its 50 two-byte answer, q2 + its answer
    got = await runs.conversation_history(t, "c", anchor, max_bytes=last_two)
    assert [x["content"][:2] for x in got] == ["q1", "éé", "q2", "bb"]
    got = await runs.conversation_history(t, "c", anchor, max_bytes=last_two - 1)  # q1's run no longer fits whole
    assert [x["content"][:2] for x in got] == ["q2", "bb"]
    assert await runs.conversation_history(t, "c", anchor, max_bytes=0) == []
    # a huge old turn cuts the history there, even when older turns are small: never a gap in the middle
    made = await _conversation(runs, t, [("old", "x"), ("huge", "h" * 5000), ("new", "y"), ("now", None)], conv="g")
    got = await runs.conversation_history(t, "g", made[-1].id, max_bytes=1000)
    assert got == [{"role": "user", "content": "new"}, {"role": "assistant", "content": "y"}]


def test_the_sent_history_fits_its_budget_escapes_included():
    """The store counts raw bytes; JSON escapes make a control character six bytes: the worker's trim
    counts the encoding, and never starts the history with an answer whose question was dropped."""
    turns = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "\x01" * 100},
             {"role": "user", "content": "q2"}, {"role": "assistant", "content": "fine"}]
    got = _trim(turns, 200)
    assert got == turns[2:]
    assert _trim(turns, 10_000) == turns
    assert _trim([{"role": "assistant", "content": "orphan"}, *turns[2:]], 10_000) == turns[2:]
    assert history_budget(1024 * 1024) == 512 * 1024
    assert history_budget(1024 * 1024, "€" * 256 * 1024) == 256 * 1024 - 2 - 16 * 1024  # room for the input
    assert history_budget(1024 * 1024, "€" * 400 * 1024) == 0


async def test_the_worker_path_bounds_what_it_reads(ctx):
    _, runs, t = ctx
    made = await _conversation(runs, t, [("q", "z" * 30_000), ("q2", "ok"), ("now", None)])
    got = await conversation_history(runs, t, "c", made[-1].id, max_frame_bytes=40_000)
    assert got == [{"role": "user", "content": "q2"}, {"role": "assistant", "content": "ok"}]


async def test_runs_with_empty_turns_still_count(ctx):
    """Empty inputs and answers are zero bytes of text: a conversation of hundreds of them was read whole
    however small the bound. Each run counts the JSON around its turns."""
    _, runs, t = ctx
    made = await _conversation(runs, t, [("", "") for _ in range(300)] + [("now", None)])
    got = await runs.conversation_history(t, "c", made[-1].id, max_bytes=10 * RUN)
    assert got == [{"role": "user", "content": ""}] * 10


async def test_list_runs_pages_by_created_at_and_id_and_by_size(ctx):
    """Runs sharing a created_at straddle a page's end: the (created_at, id) cursor misses none. A page
    bounded in bytes ends with the run that reaches the bound; the first run comes however big."""
    _, runs, t = ctx
    made = [make_run(t, input="é" * 5, created_at=50.0) for _ in range(4)] + [make_run(t, input="x", created_at=40.0)]
    for r in made:
        await runs.create_run(r)
    order = [r.id for r in sorted(made, key=lambda r: (r.created_at, r.id), reverse=True)]
    first = await runs.list_runs(t, limit=2)
    assert [r.id for r in first] == order[:2]
    rest = await runs.list_runs(t, limit=10, before=first[-1].created_at, before_id=first[-1].id)
    assert [r.id for r in rest] == order[2:]
    assert [r.id for r in await runs.list_runs(t, limit=10, max_bytes=1)] == order[:1]
    assert [r.id for r in await runs.list_runs(t, limit=10, max_bytes=20)] == order[:2]  # 10 + 10 reaches 20
    assert [r.id for r in await runs.list_runs(t, limit=10, max_bytes=21)] == order[:3]
    assert [r.id for r in await runs.list_runs(t, limit=3, max_bytes=None)] == order[:3]


async def test_a_long_conversation_of_short_turns_keeps_what_llm_chat_takes(ctx):
    """Was: bounded by bytes only, 520 short turns gave 1,040 messages; llm.chat takes 1,000, so the shipped
    chat bundle (which passes the history on whole) failed every turn from then on, each failure one more turn."""
    from supervisor.runs.history import MAX_MESSAGES
    from supervisor.tools.llm.args import LlmChatArgs

    _, runs, t = ctx
    made = await _conversation(runs, t, [(f"q{i}", f"a{i}") for i in range(520)] + [("now", None)])
    got = await conversation_history(runs, t, "c", made[-1].id, max_frame_bytes=1024 * 1024, input_text="now")
    assert len(got) == MAX_MESSAGES and got[0] == {"role": "user", "content": "q270"}, got[:2]
    assert got[-1] == {"role": "assistant", "content": "a519"}
    cap = next(m.max_length for m in LlmChatArgs.model_fields["messages"].metadata if hasattr(m, "max_length"))
    assert MAX_MESSAGES <= cap // 2  # the history and the new message, with room to spare for tool turns
    # an odd bound never starts with an answer
    assert _trim(got, 10**9, max_messages=3)[0]["role"] == "user"
