"""Project membership: a run or key that carries both a user and a project needs the user in the project.

Before it, a key bound to a project could start a run for any user of its tenant: the run was that user's
(their ``u/<user>`` storage, their budget, their audit trail), and a key bound to a user could charge any
project's budget. Now both get 403 ``project.not_member`` until an admin makes the user a member
(``PUT /v1/projects/{id}/members/{user_id}``); removing the member refuses new runs of the pair again,
including those of keys already bound to both. Both stacks.
"""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.timeout(120)


async def _new(admin, kind: str, name: str) -> str:
    r = await admin.post(f"/v1/{kind}", json={"name": name})
    assert r.status_code == 201, r.text
    return r.json()["id"]


async def _key(admin, **binding) -> str:
    r = await admin.post("/v1/keys", json={"role": "member", **binding})
    assert r.status_code == 201, r.text
    return r.json()["api_key"]


def _refused(r, code: str = "project.not_member") -> bool:
    return r.status_code == 403 and r.json()["code"] == code


async def test_a_project_key_cannot_act_as_a_user_outside_its_project(node):
    tid, admin_key = await node.tenant()
    admin = node.client(admin_key)
    proj, alice, bob = await _new(admin, "projects", "apollo"), await _new(admin, "users", "alice"), await _new(admin, "users", "bob")
    project_key = node.client(await _key(admin, project_id=proj))
    run = {"bundle": "echo", "input": "hi"}

    r = await project_key.post("/v1/runs", json={**run, "user_id": bob})  # bob is in no project
    assert _refused(r), r.text
    assert r.json()["user_id"] == bob and r.json()["project_id"] == proj
    assert (await project_key.post("/v1/runs", json=run)).status_code == 201  # no user: the project's own run

    r = await admin.put(f"/v1/projects/{proj}/members/{alice}")
    assert r.status_code == 200 and r.json() == {"project_id": proj, "user_id": alice, "added": True}
    assert (await admin.put(f"/v1/projects/{proj}/members/{alice}")).json()["added"] is False  # idempotent
    r = await project_key.post("/v1/runs", json={**run, "user_id": alice})
    assert r.status_code == 201 and (r.json()["user_id"], r.json()["project_id"]) == (alice, proj), r.text
    assert _refused(await project_key.post("/v1/runs", json={**run, "user_id": bob}))

    # a key bound to a user charges only projects the user is in
    alice_key = node.client(await _key(admin, user_id=alice))
    other = await _new(admin, "projects", "zeus")
    assert _refused(await alice_key.post("/v1/runs", json={**run, "project_id": other}))
    assert (await alice_key.post("/v1/runs", json={**run, "project_id": proj})).status_code == 201
    # a tenant-wide key too: the pair must be a membership
    assert _refused(await admin.post("/v1/runs", json={**run, "user_id": bob, "project_id": proj}))

    # keys bound to both: only for a member; removing the member refuses that key's new runs
    r = await admin.post("/v1/keys", json={"role": "member", "user_id": bob, "project_id": proj})
    assert _refused(r), r.text
    both = node.client(await _key(admin, user_id=alice, project_id=proj))
    assert (await both.post("/v1/runs", json=run)).status_code == 201
    r = await admin.get(f"/v1/projects/{proj}/members")
    assert r.status_code == 200 and r.json() == {"data": [{"user_id": alice}]}
    r = await admin.delete(f"/v1/projects/{proj}/members/{alice}")
    assert r.status_code == 200 and r.json()["removed"] is True
    assert _refused(await both.post("/v1/runs", json=run))
    assert _refused(await project_key.post("/v1/runs", json={**run, "user_id": alice}))
    r = await admin.delete(f"/v1/projects/{proj}/members/{alice}")
    assert r.status_code == 404 and r.json()["code"] == "not_found"
    assert (await admin.get(f"/v1/projects/{proj}/members")).json() == {"data": []}

    # lists of the tenant's projects and users, for tenant-wide keys
    r = await admin.get("/v1/projects")
    assert r.status_code == 200 and [p["id"] for p in r.json()["data"]] == [proj, other]
    r = await admin.get("/v1/users")
    assert r.status_code == 200 and [u["id"] for u in r.json()["data"]] == [alice, bob]
    for path in ("/v1/projects", "/v1/users", f"/v1/projects/{proj}/members"):
        assert _refused(await project_key.get(path), "auth.forbidden"), path
    assert _refused(await project_key.put(f"/v1/projects/{proj}/members/{bob}"), "auth.forbidden")


async def test_memberships_do_not_cross_tenants(node):
    _, key_a = await node.tenant()
    _, key_b = await node.tenant()
    a, b = node.client(key_a), node.client(key_b)
    proj_a, user_a = await _new(a, "projects", "p"), await _new(a, "users", "u")
    proj_b, user_b = await _new(b, "projects", "p"), await _new(b, "users", "u")
    for client, proj, user in ((b, proj_b, user_a), (b, proj_a, user_b), (b, proj_a, user_a)):
        r = await client.put(f"/v1/projects/{proj}/members/{user}")
        assert r.status_code == 404 and r.json()["code"] == "not_found", r.text
        r = await client.delete(f"/v1/projects/{proj}/members/{user}")
        assert r.status_code == 404, r.text
    assert (await b.get(f"/v1/projects/{proj_a}/members")).status_code == 404
    assert (await a.get(f"/v1/projects/{proj_a}/members")).json() == {"data": []}
    assert [p["id"] for p in (await b.get("/v1/projects")).json()["data"]] == [proj_b]
    assert [u["id"] for u in (await b.get("/v1/users")).json()["data"]] == [user_b]


async def test_idempotency_keys_of_bound_keys_are_their_bindings_own(node):
    """Found by a walkthrough: Bob's user-bound key POSTed a run with ``Idempotency-Key: order-42``, then
    Alice's key posting the identical body and key got 422 ``idempotency.mismatch`` - two end users whose
    keys happened to match blocked each other, and the 422 told Alice that someone had used it. A bound
    key's Idempotency-Keys are now scoped by its binding (as tool-call keys are by user and project);
    an unbound key's stay tenant-wide."""
    _, admin_key = await node.tenant()
    admin = node.client(admin_key)
    alice, bob = await _new(admin, "users", "alice"), await _new(admin, "users", "bob")
    a, b = node.client(await _key(admin, user_id=alice)), node.client(await _key(admin, user_id=bob))
    body, key = {"bundle": "echo", "input": "same"}, {"Idempotency-Key": "order-42"}
    rb = await b.post("/v1/runs", json=body, headers=key)
    ra = await a.post("/v1/runs", json=body, headers=key)
    assert rb.status_code == 201 and ra.status_code == 201, (rb.text, ra.text)
    assert ra.json()["id"] != rb.json()["id"] and ra.json()["user_id"] == alice and rb.json()["user_id"] == bob
    assert "Idempotent-Replayed" not in ra.headers
    # each still replays its own, and a different body under one's own key is still a mismatch
    again = await a.post("/v1/runs", json=body, headers=key)
    assert again.status_code == 201 and again.json()["id"] == ra.json()["id"] and again.headers["Idempotent-Replayed"] == "true"
    other = await a.post("/v1/runs", json={**body, "input": "other"}, headers=key)
    assert other.status_code == 422 and other.json()["code"] == "idempotency.mismatch"
    # a second key bound to alice shares her namespace (it acts as her)
    a2 = node.client(await _key(admin, user_id=alice))
    r = await a2.post("/v1/runs", json=body, headers=key)
    assert r.status_code == 201 and r.json()["id"] == ra.json()["id"]
    # the unbound admin key: tenant-wide, its own namespace (none of the users' runs is replayed to it)
    r = await admin.post("/v1/runs", json=body, headers=key)
    assert r.status_code == 201 and r.json()["id"] not in (ra.json()["id"], rb.json()["id"])
    assert (await admin.post("/v1/runs", json=body, headers=key)).json()["id"] == r.json()["id"]


async def test_a_key_can_ask_what_it_is(node):
    """GET /v1/me: the calling key's tenant, id, role and binding, and what it may do - the web UI offers
    Approve / Reject only to keys that may decide. Any role may ask; nothing about other keys is told."""
    tid, admin_key = await node.tenant()
    admin = node.client(admin_key)
    alice = await _new(admin, "users", "alice")
    me = (await admin.get("/v1/me")).json()
    assert me["tenant_id"] == tid and me["role"] == "admin" and me["can_decide"] and me["can_start_runs"]
    assert me["user_id"] is None and me["project_id"] is None and me["key_id"].startswith("key_")
    for role, decide, start in (("viewer", False, False), ("approver", True, False), ("member", False, True)):
        r = await admin.post("/v1/keys", json={"role": role, "user_id": alice})
        me = (await node.client(r.json()["api_key"]).get("/v1/me")).json()
        assert (me["role"], me["user_id"], me["can_decide"], me["can_start_runs"]) == (role, alice, decide, start)
        assert me["key_id"] == r.json()["id"]
    assert (await node.client("stk_nope").get("/v1/me")).status_code == 401
