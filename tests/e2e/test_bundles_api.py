"""Bundle upload over HTTP (hostile archives included), push from the CLI, hot-loading in a running node."""

from __future__ import annotations

import asyncio
import io
import json
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from tests.e2e.harness import collect, make_data_dir, settings_for, start_node
from tests.e2e.test_run_pipeline import start

ROOT = Path(__file__).resolve().parents[2]
MAIN = b"async def main(ctx):\n    await ctx.answer('uploaded ' + ctx.input)\n"


def targz(members: list[tuple[str, bytes | None, dict]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data, opts in members:
            info = tarfile.TarInfo(name)
            for k, v in opts.items():
                setattr(info, k, v)
            if data is not None:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            else:
                tar.addfile(info)
    return buf.getvalue()


def good(name: str = "uploaded") -> bytes:
    manifest = f"name: {name}\nversion: '1'\ndescription: test\ntools: []\n".encode()
    return targz([(f"{name}/bundle.yaml", manifest, {}), (f"{name}/main.py", MAIN, {})])


async def test_upload_run_and_hostile_archives(node):
    _, key = await node.tenant()
    c = node.client(key)
    r = await c.post("/v1/bundles", content=good(), headers={"Content-Type": "application/gzip"})
    assert r.status_code == 201, r.text
    assert r.json()["name"] == "uploaded" and r.json()["digest"].startswith("sha256:")
    names = [b["name"] for b in (await c.get("/v1/bundles")).json()["data"]]
    assert "uploaded" in names and "echo" in names
    run = await start(c, "uploaded", "ok")
    events = await collect(c, run["id"])
    assert events[-1].event == "run.completed"
    assert "".join(e.data.get("text", "") for e in events) == "uploaded ok"

    manifest = b"name: evil\nversion: '1'\ntools: []\n"
    hostile = {
        "archive.absolute_path": targz([("/etc/evil.py", b"x", {}), ("bundle.yaml", manifest, {}), ("main.py", MAIN, {})]),
        "archive.path_traversal": targz([("evil/../../x.py", b"x", {}), ("evil/bundle.yaml", manifest, {})]),
        "archive.link": targz([("evil/bundle.yaml", manifest, {}), ("evil/main.py", None,
                                                                    {"type": tarfile.SYMTYPE, "linkname": "/etc/passwd"})]),
        "archive.special_file": targz([("evil/bundle.yaml", manifest, {}), ("evil/dev", None, {"type": tarfile.CHRTYPE})]),
        "archive.invalid": b"\x1f\x8bnot really gzip at all" * 10,
        # a control character in bundle.yaml was a 500 (PyYAML's reader raised outside the YAML error handling)
        "bundle.invalid": targz([("evil/bundle.yaml", b"name: evil\x00\nversion: '1'\n", {}), ("evil/main.py", MAIN, {})]),
    }
    before = (await c.get("/v1/bundles")).json()["data"]
    for code, blob in hostile.items():
        r = await c.post("/v1/bundles", content=blob, headers={"Content-Type": "application/gzip"})
        assert r.status_code in (413, 422) and r.json()["code"] == code, (code, r.text)
    assert (await c.get("/v1/bundles")).json()["data"] == before
    r = await c.post("/v1/bundles", content=good(), headers={"Content-Type": "text/plain"})
    assert r.status_code == 415


async def test_upload_as_multipart_form(node):
    """``curl -F bundle=@b.tar.gz`` (multipart/form-data) was a 415: the archive may come as the one file
    part of a form, under any field name, text fields ignored; the same hostile-archive checks apply."""
    _, key = await node.tenant()
    c = node.client(key)
    r = await c.post("/v1/bundles", files={"bundle": ("formed.tar.gz", good("formed"), "application/gzip")},
                     data={"submit": "Upload"})
    assert r.status_code == 201, r.text
    assert r.json()["name"] == "formed"
    run = await start(c, "formed", "by form")
    events = await collect(c, run["id"])
    assert events[-1].event == "run.completed"
    assert "".join(e.data.get("text", "") for e in events) == "uploaded by form"
    # a browser's content type for the part, another field name: the archive is sniffed, not named
    r = await c.post("/v1/bundles", files={"file": ("x.bin", good("formed-two"), "application/octet-stream")})
    assert r.status_code == 201 and r.json()["name"] == "formed-two", r.text

    before = (await c.get("/v1/bundles")).json()["data"]
    traversal = targz([("evil/../../x.py", b"x", {}), ("evil/bundle.yaml", b"name: evil\nversion: '1'\n", {})])
    refused = {
        "archive.path_traversal": {"files": {"bundle": ("evil.tar.gz", traversal, "application/gzip")}},
        "archive.invalid": {"files": {"bundle": ("empty.tar.gz", b"", "application/gzip")}},
    }
    for code, kw in refused.items():
        r = await c.post("/v1/bundles", **kw)
        assert r.status_code in (413, 422) and r.json()["code"] == code, (code, r.text)
    # two files: refused, not picked between; no file at all; a body that is not multipart as declared
    two = [("a", ("a.tar.gz", good("two-a"), "application/gzip")), ("b", ("b.tar.gz", good("two-b"), "application/gzip"))]
    r = await c.post("/v1/bundles", files=two)
    assert r.status_code == 422 and r.json()["code"] == "input.invalid" and "files" in r.json()["detail"], r.text
    r = await c.post("/v1/bundles", files={"bundle": (None, "just text")})
    assert r.status_code == 422 and r.json()["code"] == "input.invalid" and "no file part" in r.json()["detail"], r.text
    r = await c.post("/v1/bundles", content=b"--x\r\nnot a part", headers={"Content-Type": "multipart/form-data"})
    assert r.status_code == 422 and r.json()["code"] == "input.invalid", r.text
    r = await c.post("/v1/bundles", content=good("form-urlencoded"),
                     headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert r.status_code == 415 and "multipart/form-data" in r.json()["detail"], r.text
    assert (await c.get("/v1/bundles")).json()["data"] == before


async def test_only_an_admin_publishes_a_tenant_bundle(node):
    """Found by a walkthrough: a member key uploaded a bundle named ``echo`` and every user of the tenant,
    the admin included, ran its code from then on ("member-trojan: hello"). A tenant bundle is code that
    every user of the tenant runs by name, as a platform bundle it shadows: publishing one manages the
    tenant, so it takes an admin key (as policy, budgets and MCP servers do); members start runs."""
    _, admin_key = await node.tenant()
    admin = node.client(admin_key)
    for role in ("member", "approver", "viewer"):
        r = await admin.post("/v1/keys", json={"role": role})
        c = node.client(r.json()["api_key"])
        r = await c.post("/v1/bundles", content=good("echo"), headers={"Content-Type": "application/gzip"})
        assert r.status_code == 403 and r.json()["code"] == "auth.forbidden", (role, r.text)
    run = await start(admin, "echo", "still the platform's")
    events = await collect(admin, run["id"])
    assert "".join(e.data.get("text", "") for e in events if e.event == "message.delta").strip() == "still the platform's"
    r = await admin.post("/v1/bundles", content=good("mine"), headers={"Content-Type": "application/gzip"})
    assert r.status_code == 201, r.text


async def test_tenant_bundle_invisible_to_other_tenants(node):
    _, key_a = await node.tenant()
    _, key_b = await node.tenant()
    a, b = node.client(key_a), node.client(key_b)
    assert (await a.post("/v1/bundles", content=good("private-one"), headers={"Content-Type": "application/gzip"})).status_code == 201
    assert "private-one" not in [x["name"] for x in (await b.get("/v1/bundles")).json()["data"]]
    r = await b.post("/v1/runs", json={"bundle": "private-one", "input": "x"})
    assert r.status_code == 404 and r.json()["code"] == "bundle.not_found"


async def test_a_shadowed_platform_bundle_is_marked(node):
    """A tenant's own "echo" shadows the platform's for that tenant (runs get the tenant's); the listing keeps
    the platform version but marks it "shadowed" (the web UI offered both, under the same name, and ran the
    tenant's whichever was picked). Other tenants and every other bundle: "shadowed" is false."""
    _, key_a = await node.tenant()
    _, key_b = await node.tenant()
    a, b = node.client(key_a), node.client(key_b)
    r = await a.post("/v1/bundles", content=good("echo"), headers={"Content-Type": "application/gzip"})
    assert r.status_code == 201, r.text
    listed = (await a.get("/v1/bundles")).json()["data"]
    echoes = [(x["platform"], x["shadowed"], x["description"]) for x in listed if x["name"] == "echo"]
    assert echoes == [(False, False, "test"), (True, True, "Streams the input back, word by word.")], echoes
    others = [x for x in listed if x["name"] != "echo"]
    assert others and all(x["shadowed"] is False for x in others), others
    # the existing fields are all still there (API surface): only "shadowed" was added
    assert all(set(x) == {"name", "version", "digest", "platform", "description", "tools", "shadowed"} for x in listed)
    assert [(x["platform"], x["shadowed"]) for x in (await b.get("/v1/bundles")).json()["data"]
            if x["name"] == "echo"] == [(True, False)]
    # what the mark says: a run by that name is the tenant's bundle
    run = await start(a, "echo", "mine")
    events = await collect(a, run["id"])
    assert "".join(e.data.get("text", "") for e in events) == "uploaded mine"


def slow(name: str, says: str) -> bytes:
    manifest = f"name: {name}\nversion: '1'\ndescription: slow\ntools: []\n".encode()
    main = ("import asyncio\nasync def main(ctx):\n    await asyncio.sleep(float(ctx.input or 0))\n"
            f"    await ctx.answer({says!r})\n").encode()
    return targz([(f"{name}/bundle.yaml", manifest, {}), (f"{name}/main.py", main, {})])


async def upload(c, blob: bytes) -> dict:
    r = await c.post("/v1/bundles", content=blob, headers={"Content-Type": "application/gzip"})
    assert r.status_code == 201, r.text
    return r.json()


async def answer(c, bundle: str, text: str) -> str:
    events = await collect(c, (await start(c, bundle, text))["id"])
    assert events[-1].event == "run.completed", events[-1]
    return "".join(e.data.get("text", "") for e in events if e.event == "message.delta")


@pytest.mark.timeout(60)
async def test_delete_a_tenant_bundle(node):
    """There was no way to take a tenant bundle back: an upload was for ever (DELETE /v1/bundles/{name} was a
    405). Deleting retires the name's versions: new runs by the name are bundle.not_found (or get the platform
    bundle it shadowed), runs already created finish on the version they pinned, the listing drops it,
    and uploading it again brings it back. Only a tenant-wide admin deletes, only its own tenant's, and never a
    platform bundle; each upload and delete is audited with the key that made it."""
    _, key = await node.tenant()
    _, other_key = await node.tenant()
    c, other = node.client(key), node.client(other_key)
    v1 = await upload(c, slow("doomed", "v1"))
    assert (await upload(other, slow("doomed", "theirs")))["name"] == "doomed"
    pinned = await start(c, "doomed", "1.5")  # created before the delete: keeps its version

    for role in ("member", "approver", "viewer"):
        k = (await c.post("/v1/keys", json={"role": role})).json()["api_key"]
        r = await node.client(k).delete("/v1/bundles/doomed")
        assert r.status_code == 403 and r.json()["code"] == "auth.forbidden", (role, r.text)
    r = await c.delete("/v1/bundles/doomed")
    assert r.status_code == 200, r.text
    assert r.json() == {"name": "doomed", "deleted": True, "versions": 1, "platform_fallback": False}
    assert "doomed" not in [b["name"] for b in (await c.get("/v1/bundles")).json()["data"]]
    r = await c.post("/v1/runs", json={"bundle": "doomed", "input": "0"})
    assert r.status_code == 404 and r.json()["code"] == "bundle.not_found", r.text
    events = await collect(c, pinned["id"])
    assert events[-1].event == "run.completed" and "".join(
        e.data.get("text", "") for e in events if e.event == "message.delta") == "v1"
    assert (await c.get(f"/v1/runs/{pinned['id']}/receipt")).status_code == 200
    r = await c.delete("/v1/bundles/doomed")  # once
    assert r.status_code == 404 and r.json()["code"] == "bundle.not_found", r.text
    assert await answer(other, "doomed", "0") == "theirs"  # another tenant's of the same name: untouched

    # uploaded again (the same content): back, as the current version
    assert (await upload(c, slow("doomed", "v1")))["digest"] == v1["digest"]
    assert await answer(c, "doomed", "0") == "v1"

    # a tenant bundle that shadowed a platform one: deleting it gives the tenant the platform's again
    await upload(c, slow("echo", "shadow"))
    assert await answer(c, "echo", "0") == "shadow"
    r = await c.delete("/v1/bundles/echo")
    assert r.status_code == 200 and r.json()["platform_fallback"] is True, r.text
    assert (await answer(c, "echo", "platform again")).strip() == "platform again"
    assert [(b["platform"], b["shadowed"]) for b in (await c.get("/v1/bundles")).json()["data"]
            if b["name"] == "echo"] == [(True, False)]
    # the platform bundle itself is not the tenant's to delete; names that cannot be bundles are not found
    r = await c.delete("/v1/bundles/echo")
    assert r.status_code == 403 and r.json()["code"] == "auth.forbidden" and "platform" in r.json()["detail"], r.text
    assert (await answer(other, "echo", "still here")).strip() == "still here"
    for bad in ("no-such-bundle", "a..b", "Echo", "x" * 300, "%E2%80%8Becho"):
        r = await c.delete(f"/v1/bundles/{bad}")
        assert r.status_code == 404 and r.json()["code"] == "bundle.not_found", (bad, r.text)

    records = (await c.get("/v1/audit", params={"limit": 200})).json()["data"]
    trail = [(a["kind"], a["detail"].get("bundle"), a["detail"].get("versions")) for a in records
             if a["kind"].startswith("bundle.")]
    assert trail == [("bundle.registered", "doomed", None), ("bundle.deleted", "doomed", 1),
                     ("bundle.registered", "doomed", None), ("bundle.registered", "echo", None),
                     ("bundle.deleted", "echo", 1)], trail
    me = (await c.get("/v1/me")).json()["key_id"]
    assert all(a["detail"]["key_id"] == me for a in records if a["kind"].startswith("bundle."))


@pytest.mark.timeout(60)
async def test_hot_load_registers_a_new_version_while_runs_keep_theirs(tmp_path):
    bundles = tmp_path / "bundles"
    (bundles / "live").mkdir(parents=True)
    (bundles / "live" / "bundle.yaml").write_text("name: live\nversion: '1'\ntools: []\nlimits: {timeout_s: 5}\n")
    (bundles / "live" / "main.py").write_text(
        "import asyncio\nasync def main(ctx):\n    await asyncio.sleep(float(ctx.input))\n    await ctx.answer('v1')\n")
    node = await start_node(settings_for("embedded", make_data_dir(), bundles_dir=bundles, watch_bundles=True))
    try:
        _, key = await node.tenant()
        c = node.client(key)
        slow = await start(c, "live", "1.0")  # pinned to v1 at creation
        (bundles / "live" / "main.py").write_text("async def main(ctx):\n    await ctx.answer('v2')\n")
        for _ in range(100):
            run = await start(c, "live", "0")
            events = await collect(c, run["id"])
            if "".join(e.data.get("text", "") for e in events) == "v2":
                break
            await asyncio.sleep(0.1)
        else:
            raise AssertionError("the edit was not hot-loaded within 10 s")
        old = await collect(c, slow["id"])
        assert "".join(e.data.get("text", "") for e in old) == "v1"
    finally:
        await node.stop()


def test_cli_commands_and_errors(tmp_path):
    env = {"STOCKADE_DATA_DIR": str(tmp_path), "PATH": "/usr/bin:/bin", "STOCKADE_BUNDLES_DIR": str(tmp_path / "none")}

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "app.cli", *args], env=env, cwd=ROOT, capture_output=True, text=True)

    out = cli("tenant", "create", "acme", "--budget-usd", "5")
    assert out.returncode == 0, out.stderr
    created = json.loads(out.stdout)
    assert created["api_key"].startswith("stk_") and created["tenant_id"].startswith("ten_")
    k = cli("key", "create", "--tenant", "acme", "--role", "approver")
    assert k.returncode == 0 and json.loads(k.stdout)["role"] == "approver"
    push = cli("bundle", "push", str(ROOT / "bundles" / "echo"), "--tenant", "acme")
    assert push.returncode == 0 and json.loads(push.stdout)["name"] == "echo"
    assert cli("migrate").returncode == 0
    gone = cli("bundle", "delete", "echo", "--tenant", "acme")
    assert gone.returncode == 0, gone.stderr
    assert json.loads(gone.stdout) == {"name": "echo", "deleted": True, "versions": 1, "platform_fallback": False,
                                       "tenant_id": created["tenant_id"]}
    for args, needle in [
        (("tenant", "create", "acme"), "conflict"),
        (("key", "create", "--tenant", "nobody"), "not_found"),
        (("bundle", "push", str(tmp_path / "missing"), "--tenant", "acme"), "bundle.invalid"),
        (("bundle", "delete", "echo", "--tenant", "acme"), "bundle.not_found"),  # already deleted
        (("bundle", "delete", "nothing", "--platform"), "bundle.not_found"),
        (("bundle", "delete", "echo", "--tenant", "nobody"), "not_found"),
        (("tenant", "create", "beta", "--budget-usd", "-5"), "input.invalid"),
        (("tenant", "create", "beta", "--budget-usd", "nan"), "input.invalid"),
        (("tenant", "create", "beta", "--budget-usd", "1e400"), "input.invalid"),
    ]:
        bad = cli(*args)
        assert bad.returncode != 0 and needle in bad.stderr, (args, bad.stderr)
        assert "Traceback" not in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
    # a refused budget left no tenant behind (it used to be created before the budget was checked)
    assert cli("tenant", "create", "beta").returncode == 0
    policy = tmp_path / "p.yaml"
    policy.write_text("version: 1\nrules:\n  - id: a\n    tool: echo\n    verdict: allow\n")
    assert cli("policy", "validate", str(policy)).returncode == 0
    policy.write_text("version: 1\nrules:\n  - id: a\n    tool: echo\n    verdict: perhaps\n")
    bad = cli("policy", "validate", str(policy))
    assert bad.returncode == 1 and "line 5" in bad.stderr
    env["STOCKADE_PORT"] = "not-a-port"
    bad = cli("migrate")
    assert bad.returncode != 0 and "STOCKADE_PORT" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1


@pytest.mark.timeout(60)
async def test_an_entrypoint_in_a_folder_imports_its_siblings_and_the_bundles_packages(node):
    """``entrypoint: app/run.py`` was accepted, but only /bundle was on sys.path: ``import helpers`` next to
    app/run.py failed the run with ModuleNotFoundError (``python app/run.py`` puts app/ first). Both import
    styles work now: a sibling module by name, and a package at the bundle's top by its dotted name."""
    _, key = await node.tenant()
    c = node.client(key)
    manifest = b"name: nested\nversion: '1'\nentrypoint: app/run.py\ntools: []\n"
    main = (b"import helpers\nfrom lib.words import shout\n"
            b"async def main(ctx):\n    await ctx.answer(helpers.greet(shout(ctx.input)))\n")
    await upload(c, targz([("nested/bundle.yaml", manifest, {}), ("nested/app/run.py", main, {}),
                           ("nested/app/helpers.py", b"def greet(s):\n    return 'hello ' + s\n", {}),
                           ("nested/lib/__init__.py", b"", {}),
                           ("nested/lib/words.py", b"def shout(s):\n    return s.upper()\n", {})]))
    assert await answer(c, "nested", "world") == "hello WORLD"
