"""Authorization matrix: every route of the app x every kind of caller.

Callers: no key, a malformed key, a revoked key, viewer / member / approver / admin keys of tenant A, the
admin of tenant B acting on tenant A's objects, and an admin key of tenant A bound to a user and a project
acting on tenant A's objects outside its binding (BOUND: ``hidden`` - as tenant B's admin sees them;
``forbidden`` - 403, tenant-wide; ``ok`` - as an unbound admin). Every route of the app must have a row in MATRIX: a route
added later without one fails ``test_every_route_has_a_matrix_row``.

Row semantics (``ok`` = the roles of tenant A that succeed; the others of A get 403 ``auth.forbidden``):
- ``public``: no key needed, and the body never names tenant A's objects.
- ``object``: the route names one object of tenant A; tenant B's admin gets 404, byte-identical (modulo the
  id) to what it gets for an id that never existed - existence is not revealed.
- ``collection``: tenant B's admin succeeds on its own tenant and never sees tenant A's objects.
No key -> 401 ``auth.missing``; a malformed key -> 401 ``auth.invalid``; a revoked key -> 401 ``auth.invalid``.
"""

from __future__ import annotations

import io
import itertools
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from app.main import create_app
from supervisor.ids import new_id
from supervisor.stores.records import Approval, Run
from tests.e2e.harness import idle_runs, start_node
from tests.fakes.mcp_server import McpTestServer

pytestmark = [pytest.mark.timeout(180), pytest.mark.node_settings(egress_allow_private=["127.0.0.0/8"])]

SLEEPER = Path(__file__).resolve().parent / "bundles" / "sleeper"
CALLERS = ("none", "malformed", "revoked", "viewer", "member", "approver", "admin", "other_admin", "bound_admin")
READ = frozenset({"viewer", "member", "approver", "admin"})
WRITE = frozenset({"member", "admin"})
ADMIN = frozenset({"admin"})
DECIDE = frozenset({"admin", "approver"})
PUBLIC_ROLES = frozenset(CALLERS)
_n = itertools.count()


@dataclass(frozen=True)
class Row:
    kind: str  # public | object | collection
    ok: frozenset[str]
    status: int = 200  # on success
    stream: bool = False


# (METHOD, path template) -> Row. {id} placeholders are filled by _target below.
MATRIX: dict[tuple[str, str], Row] = {
    ("GET", "/healthz"): Row("public", PUBLIC_ROLES),
    ("GET", "/readyz"): Row("public", PUBLIC_ROLES),
    ("GET", "/metrics"): Row("public", PUBLIC_ROLES),
    ("GET", "/v1/receipts/public-key"): Row("public", PUBLIC_ROLES),
    ("GET", "/v1/receipts/public-keys"): Row("public", PUBLIC_ROLES),
    ("GET", "/openapi.json"): Row("public", PUBLIC_ROLES),
    ("GET", "/docs"): Row("public", PUBLIC_ROLES),
    ("GET", "/docs/assets/init.js"): Row("public", PUBLIC_ROLES),
    ("GET", "/docs/assets/{name}"): Row("public", PUBLIC_ROLES),
    ("GET", "/"): Row("public", PUBLIC_ROLES, 307),
    ("GET", "/ui/"): Row("public", PUBLIC_ROLES),
    ("GET", "/ui/{name}"): Row("public", PUBLIC_ROLES),
    ("POST", "/v1/runs"): Row("collection", WRITE, 201),
    ("GET", "/v1/runs"): Row("collection", READ),
    ("GET", "/v1/runs/{run_id}"): Row("object", READ),
    ("POST", "/v1/runs/{run_id}/cancel"): Row("object", WRITE),
    ("GET", "/v1/runs/{run_id}/events"): Row("object", READ, stream=True),
    ("GET", "/v1/runs/{run_id}/receipt"): Row("object", READ),
    ("GET", "/v1/approvals"): Row("collection", READ),
    ("GET", "/v1/approvals/{approval_id}"): Row("object", READ),
    ("POST", "/v1/approvals/{approval_id}/decision"): Row("object", DECIDE),
    ("GET", "/v1/me"): Row("collection", READ),
    ("GET", "/v1/bundles"): Row("collection", READ),
    ("POST", "/v1/bundles"): Row("collection", ADMIN, 201),  # a bundle is code every user of the tenant runs
    ("DELETE", "/v1/bundles/{name}"): Row("object", ADMIN),
    ("GET", "/v1/budgets"): Row("collection", READ),
    ("PUT", "/v1/budgets"): Row("object", ADMIN),  # object: names tenant A's user
    ("GET", "/v1/policy"): Row("collection", READ),
    ("PUT", "/v1/policy"): Row("collection", ADMIN),
    ("GET", "/v1/ledger"): Row("collection", READ),
    ("GET", "/v1/audit"): Row("collection", READ),  # ?run_id= names tenant A's run: B sees nothing
    ("POST", "/v1/keys"): Row("object", ADMIN, 201),  # object: names tenant A's user
    ("GET", "/v1/keys"): Row("collection", ADMIN),
    ("DELETE", "/v1/keys/{key_id}"): Row("object", ADMIN),
    ("POST", "/v1/projects"): Row("collection", ADMIN, 201),
    ("POST", "/v1/users"): Row("collection", ADMIN, 201),
    ("GET", "/v1/projects"): Row("collection", READ),
    ("GET", "/v1/users"): Row("collection", READ),
    ("GET", "/v1/projects/{project_id}/members"): Row("object", READ),
    ("PUT", "/v1/projects/{project_id}/members/{user_id}"): Row("object", ADMIN),
    ("DELETE", "/v1/projects/{project_id}/members/{user_id}"): Row("object", ADMIN),
    ("POST", "/v1/mcp/servers"): Row("collection", ADMIN, 201),
    ("GET", "/v1/mcp/servers"): Row("collection", READ),
    ("GET", "/v1/mcp/servers/{name}"): Row("object", READ),
    ("POST", "/v1/mcp/servers/{name}/refresh"): Row("object", ADMIN),
    ("POST", "/v1/mcp/servers/{name}/tools/{tool}/approve"): Row("object", ADMIN),
    ("DELETE", "/v1/mcp/servers/{name}"): Row("object", ADMIN),
}

# what the admin key bound to alice / apollo gets on tenant A's objects outside that binding
BOUND: dict[tuple[str, str], str] = {
    ("POST", "/v1/runs"): "ok", ("GET", "/v1/runs"): "hidden", ("GET", "/v1/runs/{run_id}"): "hidden",
    ("POST", "/v1/runs/{run_id}/cancel"): "hidden", ("GET", "/v1/runs/{run_id}/events"): "hidden",
    ("GET", "/v1/runs/{run_id}/receipt"): "hidden", ("GET", "/v1/approvals"): "hidden",
    ("GET", "/v1/approvals/{approval_id}"): "hidden", ("POST", "/v1/approvals/{approval_id}/decision"): "hidden",
    ("GET", "/v1/me"): "ok", ("GET", "/v1/bundles"): "ok", ("POST", "/v1/bundles"): "forbidden",
    ("DELETE", "/v1/bundles/{name}"): "forbidden",
    ("GET", "/v1/budgets"): "hidden", ("PUT", "/v1/budgets"): "forbidden",
    ("GET", "/v1/policy"): "ok", ("PUT", "/v1/policy"): "forbidden",
    ("GET", "/v1/ledger"): "forbidden", ("GET", "/v1/audit"): "hidden",
    ("POST", "/v1/keys"): "ok", ("GET", "/v1/keys"): "hidden", ("DELETE", "/v1/keys/{key_id}"): "hidden",
    ("POST", "/v1/projects"): "forbidden", ("POST", "/v1/users"): "forbidden",
    ("GET", "/v1/projects"): "forbidden", ("GET", "/v1/users"): "forbidden",
    ("GET", "/v1/projects/{project_id}/members"): "forbidden",
    ("PUT", "/v1/projects/{project_id}/members/{user_id}"): "forbidden",
    ("DELETE", "/v1/projects/{project_id}/members/{user_id}"): "forbidden",
    ("POST", "/v1/mcp/servers"): "forbidden", ("GET", "/v1/mcp/servers"): "ok", ("GET", "/v1/mcp/servers/{name}"): "ok",
    ("POST", "/v1/mcp/servers/{name}/refresh"): "forbidden",
    ("POST", "/v1/mcp/servers/{name}/tools/{tool}/approve"): "forbidden",
    ("DELETE", "/v1/mcp/servers/{name}"): "forbidden",
}

POLICY = "version: 1\nrules:\n  - id: echo\n    tool: echo\n    verdict: allow\n"


def _app_routes() -> set[tuple[str, str]]:
    from types import SimpleNamespace

    from supervisor.settings import Settings

    rt = SimpleNamespace(settings=Settings(), metrics=None)
    out: set[tuple[str, str]] = set()

    def walk(routes: list[Any]) -> None:
        for r in routes:
            if hasattr(r, "effective_candidates"):  # FastAPI >= 0.165 keeps included routers as branches
                walk(r.effective_candidates())
                continue
            for m in getattr(r, "methods", None) or ():
                if m != "HEAD":
                    out.add((m, r.path))

    walk(create_app(rt).routes)
    return out


def test_every_route_has_a_matrix_row():
    routes = _app_routes()
    assert routes - MATRIX.keys() == set(), "routes without an authorization-matrix row"
    assert MATRIX.keys() - routes == set(), "matrix rows for routes that no longer exist"
    assert {k for k, row in MATRIX.items() if row.kind != "public"} == BOUND.keys(), "every row says what a bound key gets"


def _bundle_tgz() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        tar.add(SLEEPER, arcname="sleeper")
    return buf.getvalue()


class World:
    """Tenant A with one key per role and objects of every kind; tenant B with its admin."""

    async def setup(self, node: Any, mcp: McpTestServer) -> None:
        self.node, self.mcp = node, mcp
        self.tid_a, admin_a = await node.tenant()
        self.tid_b, admin_b = await node.tenant()
        self.admin_a = node.client(admin_a)
        self.keys = {"admin": admin_a, "other_admin": admin_b, "malformed": "sk_not-a-real-key"}
        self.keys_outside: list[str] = []  # ids of keys outside the bound key's binding
        for role in ("viewer", "member", "approver"):
            r = await self.admin_a.post("/v1/keys", json={"role": role})
            assert r.status_code == 201, r.text
            self.keys[role] = r.json()["api_key"]
            self.keys_outside.append(r.json()["id"])
        r = await self.admin_a.post("/v1/keys", json={"role": "admin"})
        self.keys["revoked"] = r.json()["api_key"]
        assert (await self.admin_a.delete(f"/v1/keys/{r.json()['id']}")).status_code == 200
        r = await self.admin_a.post("/v1/users", json={"name": "alice"})
        self.user_a = r.json()["id"]
        r = await self.admin_a.post("/v1/projects", json={"name": "apollo"})
        self.project_a = r.json()["id"]
        r = await self.admin_a.put(f"/v1/projects/{self.project_a}/members/{self.user_a}")
        assert r.status_code == 200, r.text
        r = await self.admin_a.post("/v1/keys", json={"role": "admin", "user_id": self.user_a, "project_id": self.project_a})
        self.keys["bound_admin"] = r.json()["api_key"]
        # a budget of another user: what a key bound to alice must not see
        r = await self.admin_a.post("/v1/users", json={"name": "carol"})
        self.user_c = r.json()["id"]
        r = await self.admin_a.put("/v1/budgets", json={"budgets": [{"scope": "user", "scope_id": self.user_c, "cap_usd": 1.0}]})
        assert r.status_code == 200, r.text
        await node.rt.registry.register_dir(SLEEPER, self.tid_a)
        self.run_a = (await idle_runs(node, self.tid_a, 1))[0]
        self.mcp_a = await self.mcp_server()
        self.approval_a = await self.approval()
        assert (await self.admin_a.put("/v1/policy", content=POLICY)).status_code == 200

    def client(self, caller: str) -> Any:
        return self.node.client(self.keys.get(caller))

    async def approval(self) -> str:
        run_id = (await idle_runs(self.node, self.tid_a, 1))[0]
        a = Approval(id=new_id("apr_"), tenant_id=self.tid_a, run_id=run_id, tool="echo", args_hash="0" * 64,
                     args={"n": 11}, rule_id="big", reason="needs a human", status="pending",
                     created_at=time.time(), expires_at=time.time() + 3600)
        await self.node.rt.services.approvals.create(a)
        return a.id

    async def mcp_server(self) -> str:
        name = f"mcp-{next(_n)}-a"  # "-": never inside base64 (a PEM), unlike "s12"
        r = await self.admin_a.post("/v1/mcp/servers", json={"name": name, "url": self.mcp.url})
        assert r.status_code == 201, r.text
        return name

    async def bundle(self) -> str:
        """A bundle of tenant A's own (a fresh one: the row deletes it)."""
        name = f"bnd-{next(_n)}-a"
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w:gz") as tar:
            for member, data in ((f"{name}/bundle.yaml", f"name: {name}\nversion: '1'\ntools: []\n".encode()),
                                 (f"{name}/main.py", b"async def main(ctx):\n    await ctx.answer('x')\n")):
                info = tarfile.TarInfo(member)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
        r = await self.admin_a.post("/v1/bundles", content=buf.getvalue(), headers={"content-type": "application/gzip"})
        assert r.status_code == 201, r.text
        return name

    async def key(self) -> str:
        r = await self.admin_a.post("/v1/keys", json={"role": "viewer"})
        return r.json()["id"]

    async def member(self) -> str:
        """A new user of tenant A, member of apollo."""
        uid = (await self.admin_a.post("/v1/users", json={"name": f"m{next(_n)}"})).json()["id"]
        r = await self.admin_a.put(f"/v1/projects/{self.project_a}/members/{uid}")
        assert r.status_code == 200, r.text
        return uid

    async def target(self, method: str, path: str, *, fresh: bool, missing: bool = False) -> tuple[str, dict[str, Any]]:
        """The concrete request for a matrix row on tenant A's objects (or on ids that never existed)."""
        kw: dict[str, Any] = {}
        ghost = "x_doesnotexist00000000"
        if "{run_id}" in path:
            rid = ghost.replace("x_", "run_") if missing else (
                (await idle_runs(self.node, self.tid_a, 1))[0] if fresh else self.run_a)
            path = path.replace("{run_id}", rid)
        if "{approval_id}" in path:
            aid = ghost.replace("x_", "apr_") if missing else (await self.approval() if fresh else self.approval_a)
            path = path.replace("{approval_id}", aid)
            kw["json"] = {"decision": "approve"}
        if "{key_id}" in path:
            path = path.replace("{key_id}", ghost.replace("x_", "key_") if missing else await self.key())
        if "{name}" in path:
            if path.startswith("/ui/"):
                path = path.replace("{name}", "index.html")
            elif path.startswith("/docs/"):
                path = path.replace("{name}", "swagger-ui.css")
            elif path.startswith("/v1/bundles/"):
                path = path.replace("{name}", "ghost" if missing else await self.bundle())
            else:
                name = "ghost" if missing else (await self.mcp_server() if fresh else self.mcp_a)
                path = path.replace("{name}", name)
        if "{tool}" in path:
            path = path.replace("{tool}", "add")
        if "{project_id}" in path:
            path = path.replace("{project_id}", ghost.replace("x_", "prj_") if missing else self.project_a)
        if "{user_id}" in path:
            uid = ghost.replace("x_", "usr_") if missing else (await self.member() if method == "DELETE" else self.user_a)
            path = path.replace("{user_id}", uid)
        if (method, path) == ("POST", "/v1/runs"):
            kw["json"] = {"bundle": "echo", "input": "hi"}
        elif (method, path) == ("POST", "/v1/bundles"):
            kw["content"], kw["headers"] = _bundle_tgz(), {"content-type": "application/gzip"}
        elif (method, path) == ("PUT", "/v1/budgets"):
            uid = "usr_doesnotexist000000" if missing else self.user_a
            kw["json"] = {"budgets": [{"scope": "user", "scope_id": uid, "cap_usd": 5.0}]}
        elif (method, path) == ("PUT", "/v1/policy"):
            kw["content"] = POLICY
        elif (method, path) == ("GET", "/v1/audit"):
            kw["params"] = {"run_id": "run_doesnotexist000000" if missing else self.run_a}
        elif (method, path) == ("POST", "/v1/keys"):
            uid = "usr_doesnotexist000000" if missing else self.user_a
            kw["json"] = {"role": "viewer", "user_id": uid}
        elif method == "POST" and path in ("/v1/projects", "/v1/users"):
            kw["json"] = {"name": f"n{next(_n)}"}
        elif (method, path) == ("POST", "/v1/mcp/servers"):
            kw["json"] = {"name": f"mcp-{next(_n)}-a", "url": self.mcp.url}
        return path, kw

    def a_ids(self) -> list[str]:
        return [self.tid_a, self.run_a, self.approval_a, self.user_a, self.project_a, "sleeper", self.mcp_a]


async def _call(client: Any, method: str, path: str, row: Row, kw: dict[str, Any]) -> tuple[int, bytes]:
    if row.stream:
        async with client.stream(method, path, **kw) as r:
            if r.status_code >= 400:
                return r.status_code, await r.aread()
            return r.status_code, b""
    r = await client.request(method, path, **kw)
    return r.status_code, r.content


def _code(body: bytes) -> str | None:
    import json

    try:
        return json.loads(body).get("code")
    except Exception:
        return None


async def _matrix(node: Any) -> list[str]:
    mcp = McpTestServer.start()
    try:
        w = World()
        await w.setup(node, mcp)
        failures = await _escalations(w)  # first: the matrix has tenant B upload a bundle of its own
        for (method, template), row in MATRIX.items():
            for caller in CALLERS:
                fresh = row.status != 200 or method != "GET"  # writes act on an object of their own
                path, kw = await w.target(method, template, fresh=fresh)
                status, body = await _call(w.client(caller), method, path, row, kw)
                where = f"{method} {template} as {caller}: {status} {body[:200]!r}"
                if row.kind == "public":
                    if status != row.status or any(i.encode() in body for i in w.a_ids()):
                        failures.append(f"{where} (public: expected {row.status}, no tenant data)")
                    continue
                if caller == "none":
                    want: tuple[int, str | None] = (401, "auth.missing")
                elif caller in ("malformed", "revoked"):
                    want = (401, "auth.invalid")
                elif caller == "bound_admin" and BOUND[(method, template)] == "forbidden":
                    want = (403, "auth.forbidden")
                elif caller == "bound_admin" and BOUND[(method, template)] == "hidden" and row.kind == "collection":
                    want = (row.status, None)
                    hidden = (w.run_a, w.approval_a, w.user_c) + tuple(w.keys_outside)
                    if any(i.encode() in body for i in hidden):
                        failures.append(f"{where} shows objects outside its binding")
                elif caller == "other_admin" or (caller == "bound_admin" and BOUND[(method, template)] == "hidden"):
                    if row.kind == "object":
                        want = (404, "bundle.not_found" if template.startswith("/v1/bundles/") else "not_found")
                        gpath, gkw = await w.target(method, template, fresh=False, missing=True)
                        gstatus, gbody = await _call(w.client(caller), method, gpath, row, gkw)
                        real = body
                        for seg, gseg in zip(path.split("/"), gpath.split("/"), strict=True):
                            if seg != gseg:
                                real, gbody = real.replace(seg.encode(), b"<id>"), gbody.replace(gseg.encode(), b"<id>")
                        real = real.replace(w.user_a.encode(), b"<id>")
                        gbody = gbody.replace(b"usr_doesnotexist000000", b"<id>")
                        if (status, real) != (gstatus, gbody):
                            failures.append(f"{where} differs from a missing id: {gstatus} {gbody[:200]!r}")
                    else:
                        want = (row.status, None)
                        # (POST /v1/bundles as tenant B uploads a "sleeper" of its own)
                        if any(i.encode() in body for i in w.a_ids() if i != "sleeper" or method == "GET"):
                            failures.append(f"{where} shows tenant A's objects")
                elif caller in row.ok or (caller == "bound_admin" and "admin" in row.ok):
                    want = (row.status, None)
                else:
                    want = (403, "auth.forbidden")
                if status != want[0] or (want[1] is not None and _code(body) != want[1]):
                    failures.append(f"{where} (expected {want[0]} {want[1] or ''})")
        return failures
    finally:
        mcp.stop()


async def _escalations(w: World) -> list[str]:
    """Keys bound to a user / project stay within their binding; nobody but an admin widens anything."""
    bad: list[str] = []
    admin = w.admin_a
    r = await admin.post("/v1/users", json={"name": "bob"})
    bob = r.json()["id"]
    for role in ("admin", "member"):
        r = await admin.post("/v1/keys", json={"role": role, "user_id": w.user_a, "project_id": w.project_a})
        assert r.status_code == 201, r.text
        bound = w.node.client(r.json()["api_key"])
        # a run on behalf of another user / project
        for extra in ({"user_id": bob}, {"project_id": "prj_other"}):
            r = await bound.post("/v1/runs", json={"bundle": "echo", "input": "x", **extra})
            if r.status_code != 403:
                bad.append(f"{role} key bound to alice started a run with {extra}: {r.status_code} {r.text[:200]}")
        r = await bound.post("/v1/runs", json={"bundle": "echo", "input": "x"})
        if r.status_code != 201 or (r.json()["user_id"], r.json()["project_id"]) != (w.user_a, w.project_a):
            bad.append(f"{role} key bound to alice: run not bound to alice/apollo: {r.status_code} {r.text[:200]}")
        own = r.json()["id"]
        # an Idempotency-Key another's run was created with replays nothing of it, even with the very same body:
        # a bound key's keys are its binding's own (it gets a run of its own, not the other's, nor a 422
        # telling it that someone else used that key)
        for i, owner in enumerate(({}, {"user_id": bob})):
            key = f"idem-{role}-{i}"
            r = await admin.post("/v1/runs", json={"bundle": "echo", "input": "x", **owner}, headers={"Idempotency-Key": key})
            assert r.status_code == 201, r.text
            theirs = r.json()["id"]
            r = await bound.post("/v1/runs", json={"bundle": "echo", "input": "x"}, headers={"Idempotency-Key": key})
            if (r.status_code != 201 or r.json()["id"] == theirs or "Idempotent-Replayed" in r.headers
                    or (r.json()["user_id"], r.json()["project_id"]) != (w.user_a, w.project_a)):
                bad.append(f"{role} key bound to alice, Idempotency-Key of a run of {owner or 'nobody'}: "
                           f"{r.status_code} {r.text[:200]}")
        r = await bound.post("/v1/runs", json={"bundle": "echo", "input": "y"}, headers={"Idempotency-Key": f"idem-{role}-own"})
        again = await bound.post("/v1/runs", json={"bundle": "echo", "input": "y"}, headers={"Idempotency-Key": f"idem-{role}-own"})
        if again.status_code != 201 or again.json()["id"] != r.json()["id"]:
            bad.append(f"{role} key bound to alice: its own Idempotency-Key does not replay: {again.status_code} {again.text[:200]}")
        # its own runs it does see, in the list and one by one
        listed = [x["id"] for x in (await bound.get("/v1/runs")).json()["data"]]
        if own not in listed or w.run_a in listed or (await bound.get(f"/v1/runs/{own}")).status_code != 200:
            bad.append(f"{role} key bound to alice: its own run {own} not visible, or another's listed: {listed}")
        # a conversation id is not a way into another user's conversation: bob's turns stay bob's
        runs = w.node.rt.services.runs
        await runs.create_run(Run(id=new_id("run_"), tenant_id=w.tid_a, bundle="echo", bundle_version="x",
                                  input="secret-of-bob", status="queued",
                                  created_at=time.time(), user_id=bob, conversation_id=f"shared-{role}"))
        r = await bound.post("/v1/runs", json={"bundle": "echo", "input": "mine", "conversation_id": f"shared-{role}"})
        assert r.status_code == 201, r.text
        if await runs.conversation_history(w.tid_a, f"shared-{role}", r.json()["id"]):
            bad.append(f"{role} key bound to alice reads bob's conversation history")
        # minting a key outside the binding (unbound, or bound to someone else)
        for body in ({"role": "viewer"}, {"role": "admin", "user_id": bob}):
            r = await bound.post("/v1/keys", json=body)
            if r.status_code == 201 and (r.json()["user_id"], r.json()["project_id"]) != (w.user_a, w.project_a):
                bad.append(f"{role} key bound to alice minted a key outside its binding {body}: {r.text[:200]}")
    # nobody but an admin may raise a role: every non-admin gets 403 for every role
    for caller in ("viewer", "member", "approver"):
        for role in ("admin", "member", "approver", "viewer"):
            r = await w.client(caller).post("/v1/keys", json={"role": role})
            if r.status_code != 403:
                bad.append(f"{caller} created a {role} key: {r.status_code}")
    # tenant B cannot run tenant A's bundle, and cannot tell it from a bundle that does not exist
    b = w.client("other_admin")
    r1 = await b.post("/v1/runs", json={"bundle": "sleeper", "input": "1"})
    r2 = await b.post("/v1/runs", json={"bundle": "nosuchbundle", "input": "1"})
    if r1.status_code != 404 or r1.json()["code"] != r2.json()["code"]:
        bad.append(f"tenant B ran tenant A's bundle: {r1.status_code} {r1.text[:200]}")
    # conversation_id: tenant B naming tenant A's conversation gets none of its history (the worker reads the
    # history with the run's own tenant) - checked at the store, as the worker asks it
    runs = w.node.rt.services.runs
    await runs.create_run(Run(id=new_id("run_"), tenant_id=w.tid_a, bundle="echo", bundle_version="x",
                              input="secret-a", status="queued", created_at=time.time(),
                              conversation_id="conv-a"))
    r = await b.post("/v1/runs", json={"bundle": "echo", "input": "again", "conversation_id": "conv-a"})
    assert r.status_code == 201, r.text
    assert await runs.conversation_history(w.tid_a, "conv-a", "run_x"), "tenant A sees its own conversation"
    if await runs.conversation_history(w.tid_b, "conv-a", r.json()["id"]):
        bad.append("tenant B reads tenant A's conversation history")
    bad += await _socketio(w)
    return bad


async def _socketio(w: World) -> list[str]:
    """The one stream outside app.routes (mounted around FastAPI): the same answers as the REST routes."""
    import socketio

    bad: list[str] = []
    for caller in ("malformed", "revoked"):
        c = socketio.AsyncClient(reconnection=False)
        try:
            await c.connect(w.node.base_url, auth={"token": w.keys[caller]}, transports=["websocket"], wait_timeout=5)
            bad.append(f"socket.io accepted a {caller} key")
            await c.disconnect()
        except socketio.exceptions.ConnectionError:
            pass
    # tenant B's admin, and a key bound to a user, subscribing to tenant A's unbound run: as if it did not exist
    for caller in ("other_admin", "bound_admin"):
        c = socketio.AsyncClient(reconnection=False)
        await c.connect(w.node.base_url, auth={"token": w.keys[caller]}, transports=["websocket"], wait_timeout=5)
        try:
            real = await c.call("subscribe", {"run_id": w.run_a}, timeout=10)
            ghost = await c.call("subscribe", {"run_id": "run_doesnotexist000000"}, timeout=10)
            if real.get("ok") is not False or real != ghost:
                bad.append(f"socket.io: {caller} subscribing to tenant A's unbound run got {real}, a missing one {ghost}")
        finally:
            await c.disconnect()
    # the bound key subscribes to its own runs
    c = socketio.AsyncClient(reconnection=False)
    await c.connect(w.node.base_url, auth={"token": w.keys["bound_admin"]}, transports=["websocket"], wait_timeout=5)
    try:
        own = (await w.node.client(w.keys["bound_admin"]).post("/v1/runs", json={"bundle": "echo", "input": "x"})).json()
        if (await c.call("subscribe", {"run_id": own["id"]}, timeout=10)).get("ok") is not True:
            bad.append("socket.io: a key bound to alice cannot subscribe to its own run")
    finally:
        await c.disconnect()
    # a key revoked while its connection stays open subscribes to nothing more
    r = await w.admin_a.post("/v1/keys", json={"role": "viewer"})
    c = socketio.AsyncClient(reconnection=False)
    await c.connect(w.node.base_url, auth={"token": r.json()["api_key"]}, transports=["websocket"], wait_timeout=5)
    try:
        assert (await c.call("subscribe", {"run_id": w.run_a}, timeout=10))["ok"] is True
        await w.admin_a.delete(f"/v1/keys/{r.json()['id']}")
        ack = await c.call("subscribe", {"run_id": w.run_a}, timeout=10)
        if ack.get("code") != "auth.invalid":
            bad.append(f"socket.io: a key revoked mid-connection still subscribes: {ack}")
    finally:
        await c.disconnect()
    return bad


@pytest.fixture
async def api_node(node_config):
    """API only: runs stay queued, nothing needs a sandbox."""
    n = await start_node(node_config, workers=False)
    try:
        yield n
    finally:
        await n.stop()


async def test_authorization_matrix(api_node):
    failures = await _matrix(api_node)
    assert not failures, "\n".join(failures)
