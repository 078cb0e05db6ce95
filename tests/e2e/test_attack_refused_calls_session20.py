"""Calls that run no tool are metered (session 20), on both stacks.

Was: a call with an integer id took no token of the events-per-second bucket, and the steps that refuse
it (validate, policy) come before the rate limiter, a refusal by the rate limiter is not limited itself, and
a replayed idempotent call is answered before it. Each such call still writes a hash-chained audit record
and two events (``tool.call``, ``tool.result``, naming the tool as the bundle spelt it, up to 1 KB), none
counted against the output limit: at 50 events/s, a bundle firing 60 unknown-tool calls at a time wrote
2,520 audit records and 5,043 events in 2 s (about 9 MB with long names), for as long as a run lasts (an
hour). Now the reply to a call that ran no tool waits for a token (half the bucket stays the bundle's own),
so such a loop slows to the rate, and its events' bytes count against the output limit, past which the run
ends. Being refused is no misuse, so the rate alone does not end the run: 1,000 calls gathered at once meet
the rate limiter, and the bundle gets its ``rate.limited`` errors. A call that ran a tool passed the rate
limits and the budget, which bound it.
"""

from __future__ import annotations

import pytest

from tests.e2e.test_attack_sdk_calls_session8 import _audit_kinds
from tests.e2e.test_attack_sdk_ending_session8 import run_bundles

pytestmark = pytest.mark.timeout(120)

FLOOD = """
    import asyncio, time
    from stockade_sdk import ToolError

    async def one(ctx, tool, **kw):
        try:
            await ctx.call(tool, x=1, **kw)
        except ToolError as e:
            return e.code

    async def main(ctx):
        end = time.monotonic() + 2
        n = 0
        while time.monotonic() < end:
            await asyncio.gather(*(one(ctx, TOOL, **KW) for _ in range(60)))
            n += 60
        await ctx.answer(str(n))
"""


def _flood(tool: str, **kw: object) -> str:
    return FLOOD.replace("TOOL", repr(tool)).replace("KW", repr(kw))


@pytest.mark.node_settings(sandbox_max_events_per_s=50)
async def test_a_loop_of_calls_that_run_no_tool_slows_to_the_events_rate(node):
    got = await run_bundles(node, {"unknown-flood": _flood("nope.tool"),
                                   "denied-flood": _flood("http.request"),  # not in the bundle's tools: policy
                                   "replay-flood": _flood("echo", idempotency_key="same")})
    for name, (events, _) in got.items():
        assert events[-1].event == "run.completed", (name, events[-1].data)
        kinds = await _audit_kinds(node.clients[0], events[0].data["run_id"])
        refused = sum(n for k, n in kinds.items() if k in ("tool.invalid", "tool.denied", "tool.deduped"))
        # 2 s at 25 a second (half of 50), the half bucket at the start, one batch in flight at the end
        assert 60 <= refused <= 25 * 2 + 25 + 2 * 60, (name, kinds)
        assert len(events) <= 2 * refused + 10, (name, len(events))


@pytest.mark.node_settings(sandbox_max_events_per_s=100_000, sandbox_max_output_bytes=65_536)
async def test_refused_calls_with_long_names_end_the_run_past_the_output_limit(node):
    events, _ = (await run_bundles(node, {"long-names": _flood("nope." + "x" * 1000)}))["long-names"]
    assert events[-1].event == "run.failed" and events[-1].data["code"] == "limit.output", events[-1].data
    # at most the calls in flight when the limit was passed (MAX_IN_FLIGHT, 64: ~2 KB of events each) go past it
    stored = sum(len(str(e.data)) for e in events)
    assert stored < 65_536 + 64 * 2_300, stored


@pytest.mark.node_settings(sandbox_max_events_per_s=50)
async def test_calls_that_run_their_tool_are_not_metered_as_refusals(node):
    """A bundle calling an allowed tool fast is bounded by the rate limits and the budget, not this."""
    got = await run_bundles(node, {"busy": """
        import asyncio
        async def main(ctx):
            for _ in range(3):  # 90 calls: more than the 50 tokens, fewer than the user's rate limit burst (100)
                await asyncio.gather(*(ctx.call("echo", i=i) for i in range(30)))
            await ctx.answer("90")
    """})
    events, _ = got["busy"]
    assert events[-1].event == "run.completed", events[-1].data
