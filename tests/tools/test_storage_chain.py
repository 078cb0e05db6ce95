"""storage.*, kb.* and http.request through the real governance chain (SQLite services, real policy).

The point: the policy sees the *resolved* resource — a glob written for one
directory or one URL prefix cannot be side-stepped by ``..``, ``%2e%2e``,
symlinks or IP spellings, because the chain matches what the tool will touch.
"""

from __future__ import annotations

import os
import secrets
from typing import Any

import pytest

from supervisor.audit.chain import Sealer
from supervisor.audit.keys import load_audit_key
from supervisor.audit.recorder import AuditRecorder
from supervisor.chain.base import Binding, CallState
from supervisor.chain.build import build_chain
from supervisor.errors import StockadeError
from supervisor.factory import open_services
from supervisor.policy import load_policy
from supervisor.settings import Settings
from tests.tools.test_http_helpers import start_server

pytestmark = pytest.mark.timeout(60)

POLICY = """
version: 1
rules:
  - id: reports-only
    tool: storage.*
    resource: "storage://u/usr_1/reports/**"
    verdict: allow
  - id: kb
    tool: kb.*
    verdict: allow
  - id: partner-api
    tool: http.request
    resource: "http://127.0.0.2:{port}/v1/**"
    verdict: allow
"""


@pytest.fixture
async def env(tmp_path):
    srv = await start_server("127.0.0.2", name="PARTNER")
    s = Settings(data_dir=tmp_path / "data", egress_allow_private=["127.0.0.2/32"])
    svc = await open_services(s)
    chain, _ = build_chain(AuditRecorder(svc.audit, Sealer(load_audit_key(s))))
    tenant = (await svc.tenants.create_tenant("t-" + secrets.token_hex(3))).id
    text = POLICY.replace("{port}", str(srv.port))
    await svc.policies.put(tenant, text, load_policy(text).version)
    binding = Binding(tenant_id=tenant, run_id="run_" + secrets.token_hex(4), bundle="b", bundle_version="1",
                      user_id="usr_1")

    async def call(tool: str, **args: Any) -> tuple[dict[str, Any] | StockadeError, CallState]:
        async def emit(type_: str, data: dict[str, Any]) -> None:
            return None

        c = CallState(binding=binding, tool_name=tool, raw_args=args, services=svc, emit=emit)
        try:
            return await chain(c), c
        except StockadeError as exc:
            return exc, c

    yield call, srv, s
    await svc.close()
    await srv.close()


async def test_storage_policy_matches_the_resolved_path(env):
    call, _srv, s = env
    out, c = await call("storage.write", path="reports/./q1.txt", content="ok")
    assert isinstance(out, dict) and c.resource == "storage://u/usr_1/reports/q1.txt" and c.rule_id == "reports-only"
    for path in ("reports/../secret.txt", "reports/%2e%2e/x"):
        out, c = await call("storage.write", path=path, content="x")
        if path.startswith("reports/%2e"):
            # a literal directory named "%2e%2e" inside reports/: allowed, and it really is inside reports/
            assert isinstance(out, dict) and c.resource == "storage://u/usr_1/reports/%2e%2e/x"
        else:
            assert isinstance(out, StockadeError) and out.code == "storage.escape"
    out, c = await call("storage.write", path="notes.txt", content="x")
    assert isinstance(out, StockadeError) and out.code == "policy.denied"
    # a symlink under reports/ pointing elsewhere in the user's scope: the policy sees the target
    root = s.data_dir / "storage" / c.binding.tenant_id / "u" / "usr_1"
    (root / "private").mkdir()
    (root / "private" / "diary.txt").write_text("dear diary")
    os.symlink(root / "private" / "diary.txt", root / "reports" / "diary-link")
    out, c = await call("storage.read", path="reports/diary-link")
    assert isinstance(out, StockadeError) and out.code == "policy.denied"
    assert c.resource == "storage://u/usr_1/private/diary.txt"


async def test_a_folder_listing_is_judged_as_its_contents(env):
    """storage.list of a folder is the resource ``.../folder/``, so the rule written for the files in it
    (``.../folder/**``) decides the listing too. Before, ``storage://.../reports`` matched neither: a deny of
    ``secret/**`` still listed the secret files' names and sizes, and an allow of ``reports/**`` denied
    listing reports (found by a walkthrough)."""
    call, _srv, s = env
    assert isinstance((await call("storage.write", path="reports/q1.txt", content="ok"))[0], dict)
    out, c = await call("storage.list", path="reports")
    assert isinstance(out, dict) and [e["name"] for e in out["entries"]] == ["q1.txt"], out
    assert c.resource == "storage://u/usr_1/reports/" and c.rule_id == "reports-only"
    out, c = await call("storage.list", path="reports/./")
    assert isinstance(out, dict) and c.resource == "storage://u/usr_1/reports/"
    # the user's root and any folder outside reports/: no rule allows them
    root = s.data_dir / "storage" / c.binding.tenant_id / "u" / "usr_1"
    (root / "secret").mkdir()
    (root / "secret" / "ceo-salary.txt").write_text("1")
    for path in ("", "secret", "./secret"):
        out, c = await call("storage.list", path=path)
        assert isinstance(out, StockadeError) and out.code == "policy.denied", (path, out)
        assert c.resource == ("storage://u/usr_1/" if path == "" else "storage://u/usr_1/secret/")


async def test_kb_through_the_chain(env):
    call, _srv, _s = env
    out, _ = await call("kb.add", text="the quarterly numbers are up", title="Q1")
    assert isinstance(out, dict)
    out, _ = await call("kb.search", query="quarterly numbers")
    assert isinstance(out, dict) and [r["title"] for r in out["results"]] == ["Q1"]
    out, _ = await call("kb.search", query="x", limit="3")
    assert isinstance(out, StockadeError) and out.code == "input.invalid"


async def test_http_policy_matches_the_normalised_url(env):
    call, srv, _s = env
    out, c = await call("http.request", method="GET", url=f"http://0x7f000002:{srv.port}/v1/./echo")
    assert isinstance(out, dict) and out["status"] == 200, out
    assert c.resource == f"http://127.0.0.2:{srv.port}/v1/echo" and c.rule_id == "partner-api"
    out, c = await call("http.request", method="GET", url=f"http://127.0.0.2:{srv.port}/v1/%2e%2e/admin")
    assert isinstance(out, StockadeError) and out.code == "policy.denied"
    assert c.resource == f"http://127.0.0.2:{srv.port}/admin"
    out, c = await call("http.request", method="GET", url=f"http://u@127.0.0.2:{srv.port}/v1/x")
    assert isinstance(out, StockadeError) and out.code == "input.invalid"
    # allowed by policy, refused by the address check on the redirect hop
    out, c = await call("http.request", method="GET", url=f"http://127.0.0.2:{srv.port}/v1/redirect?to=http://127.0.0.1:9/")
    assert isinstance(out, StockadeError) and out.code == "egress.blocked"
