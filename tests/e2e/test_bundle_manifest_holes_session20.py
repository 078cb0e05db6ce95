"""Two ways past bundle.yaml's checks (session 20, a bundle walkthrough), on both stacks.

- ``version: !!binary MhtbMG0=`` (``"2\\x1b[0m"``): YAML made bytes, which the checks written for strings let
  through, and pydantic then made a string. The upload answered 201; the stored manifest failed its own
  validation when read back, so the bundle left the listing and every run of it failed ``bundle.invalid`` - the
  tenant's working version replaced, a platform bundle gone for every tenant through the hot-load folder. Now
  the YAML 1.1 tags beyond the core schema are refused, and version and description must be strings.
- ``name: "echo\\n"``: ``$`` with ``re.match`` also takes a final newline. Listed beside the platform ``echo``,
  it could be neither run nor deleted through the API. Now refused as any other bad name.
"""

from __future__ import annotations

import pytest

from supervisor.bundles.manifest import parse_manifest
from supervisor.errors import StockadeError
from supervisor.policy import load_policy
from tests.e2e.test_bundles_api import MAIN, good, targz

pytestmark = pytest.mark.timeout(60)


@pytest.mark.parametrize("manifest", [
    "name: evil\nversion: !!binary MhtbMG0=\n",  # "2\x1b[0m"
    "name: evil\nversion: !!binary MQA=\n",  # "1\x00"
    "name: evil\nversion: '1'\ndescription: !!binary 4oCuZXZpbA==\n",  # U+202E "evil"
    'name: "echo\\n"\nversion: "1"\n',
    "name: evil\nversion: !!timestamp 2001-12-14\n",
    "name: evil\nversion: '1'\ntools: !!set {echo: null}\n",
])
async def test_an_upload_with_a_value_past_the_checks_is_refused_and_changes_nothing(node, manifest):
    _, key = await node.tenant()
    c = node.client(key)
    r = await c.post("/v1/bundles", content=good("evil"), headers={"Content-Type": "application/gzip"})
    assert r.status_code == 201, r.text
    before = (await c.get("/v1/bundles")).json()["data"]
    blob = targz([("evil/bundle.yaml", manifest.encode(), {}), ("evil/main.py", MAIN, {})])
    r = await c.post("/v1/bundles", content=blob, headers={"Content-Type": "application/gzip"})
    assert r.status_code == 422 and r.json()["code"] == "bundle.invalid", r.text
    assert (await c.get("/v1/bundles")).json()["data"] == before
    r = await c.post("/v1/runs", json={"bundle": "evil", "input": "still"})
    assert r.status_code == 201, r.text  # the working version is still the one run


def test_a_policy_takes_no_binary_or_timestamp_either():
    """(Already refused by the policy loader's own tag check: kept as a guard.)"""
    for text in ("version: 1\nrules:\n  - {id: !!binary YQ==, tool: echo, verdict: allow}\n",
                 "version: 1\nrules:\n  - {id: a, tool: echo, verdict: allow, when: {args.t: {eq: !!timestamp 2001-12-14}}}\n"):
        with pytest.raises(Exception) as err:
            load_policy(text)
        assert "!!binary" in str(err.value) or "!!timestamp" in str(err.value)


def test_a_tool_entry_with_a_final_newline_is_refused():
    with pytest.raises(StockadeError) as err:
        parse_manifest('name: x\nversion: "1"\ntools: ["echo\\n"]\n')
    assert err.value.code == "bundle.invalid"
