"""A bundle's own ``limits.max_output_bytes`` and ``limits.max_events_per_s`` hold for what it emits.

Both were accepted in ``bundle.yaml`` and ignored by the run session, which applied only the settings'
caps (8 MiB, 500 events/s): a bundle that asked to be stopped past 64 KiB of events streamed 160 KiB,
and one that asked for 20 events/s sent 200 in a burst. ``max_output_bytes`` already reached the
launcher's stdout cap; the session now takes both from the same narrowing (settings are the ceiling).
"""

from __future__ import annotations

import pytest

from tests.e2e.test_attack_sdk_ending_session8 import _failed, run_bundles

pytestmark = pytest.mark.timeout(120)

EMIT_BYTES = """
    async def main(ctx):
        for i in range(10):
            await ctx.emit("custom", blob="x" * 16384, i=i)
        await ctx.answer("done")
"""
EMIT_BURST = """
    async def main(ctx):
        for i in range(200):
            await ctx.emit("custom", i=i)
        await ctx.answer("done")
"""


async def test_a_bundles_own_output_and_event_rate_limits_stop_its_emits(node):
    got = await run_bundles(node, {"bytes-unasked": EMIT_BYTES, "burst-unasked": EMIT_BURST})
    for name in ("bytes-unasked", "burst-unasked"):  # within the settings' caps: both complete
        assert got[name][0][-1].event == "run.completed", (name, got[name][0][-1].data)
    got = await run_bundles(node, {"bytes-asked": EMIT_BYTES}, limits="  max_output_bytes: 65536\n")
    assert _failed(got["bytes-asked"][0])["code"] == "limit.output"
    got = await run_bundles(node, {"burst-asked": EMIT_BURST}, limits="  max_events_per_s: 20\n")
    assert _failed(got["burst-asked"][0])["code"] == "limit.events"


@pytest.mark.node_settings(sandbox_max_events_per_s=20)
async def test_a_bundle_cannot_ask_for_more_than_the_settings_allow(node):
    got = await run_bundles(node, {"burst-wider": EMIT_BURST}, limits="  max_events_per_s: 100000\n")
    assert _failed(got["burst-wider"][0])["code"] == "limit.events"
