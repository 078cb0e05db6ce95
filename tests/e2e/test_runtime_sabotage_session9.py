"""A bundle that sabotages the interpreter it shares with the runtime still gets its own outcome reported.

The runtime reports an exception with builtins (``isinstance``, ``str``, ``len``, ``getattr`` ...) that
the bundle's code can replace for the whole process; replaced, the report raised inside the runtime and
the run ended ``sandbox.crashed`` - the bundle's exception lost. The runtime now puts back the builtins
it took at start before it reports (what the bundle did to them is its own business until then).
"""

from __future__ import annotations

import pytest

from tests.e2e.test_attack_sdk_ending_session8 import _failed, run_bundles

pytestmark = pytest.mark.timeout(120)

SABOTAGE = """
    import builtins

    async def main(ctx):
        for name in ("isinstance", "str", "len", "getattr", "repr", "type", "dict", "slice", "print"):
            setattr(builtins, name, None)
        raise ValueError("the bundle's own failure")
"""
SABOTAGE_OK = """
    import builtins

    async def main(ctx):
        await ctx.answer("done")
        for name in ("isinstance", "str", "len", "getattr", "repr", "type", "dict", "min", "print"):
            setattr(builtins, name, None)
"""


async def test_a_bundle_that_replaces_builtins_still_gets_its_own_outcome(node):
    got = await run_bundles(node, {"sabotage-error": SABOTAGE, "sabotage-ok": SABOTAGE_OK})
    data = _failed(got["sabotage-error"][0])
    assert data["code"] == "run.failed" and data.get("error_type") == "ValueError", data
    assert "the bundle's own failure" in data["message"], data
    assert got["sabotage-ok"][0][-1].event == "run.completed", got["sabotage-ok"][0][-1].data
