"""Budgets, policy, ledger, audit, keys, projects and users of the caller's tenant."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import PlainTextResponse
from pydantic import BaseModel, ConfigDict, Field

from app.deps import MAX_ID, READ_ROLES, require_role, require_tenant_wide, runtime
from app.strict_json import StrictJSONRoute
from supervisor import tenancy
from supervisor.budget import cap_to_micro
from supervisor.errors import StockadeError
from supervisor.policy import MAX_POLICY_BYTES  # one limit: what `stockade policy validate` accepts, PUT accepts
from supervisor.storable import Name, text
from supervisor.tenancy import Principal, create_key

_Id = text(min_length=1, max_length=64)  # a user or project id; its limits said in characters
_ScopeId = text(max_length=64)

__all__ = ["router"]

router = APIRouter(prefix="/v1", tags=["tenant"], route_class=StrictJSONRoute)
_DEFAULT_POLICY = Path(__file__).resolve().parents[2] / "supervisor" / "policy" / "default.yaml"


class YamlResponse(PlainTextResponse):
    media_type = "application/yaml"


_YAML_BODY = {"requestBody": {"required": True, "content": {"application/yaml": {"schema": {"type": "object"}}}}}


class Cap(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    scope: Literal["tenant", "project", "user"]
    scope_id: _ScopeId | None = None
    cap_usd: float = Field(ge=0, le=1e9, allow_inf_nan=False)
    period: Literal["month", "lifetime"] = "month"


class PutBudgets(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    budgets: list[Cap] = Field(min_length=1, max_length=100)


def _account_json(a: Any) -> dict[str, Any]:
    return {"scope": a.scope, "scope_id": a.scope_id, "period": a.period, "period_key": a.period_key,
            "cap_usd": a.cap_micro / 1e6, "spent_usd": a.spent_micro / 1e6, "reserved_usd": a.reserved_micro / 1e6,
            "remaining_usd": max(0, a.cap_micro - a.spent_micro - a.reserved_micro) / 1e6}


@router.get("/me")
async def whoami(p: Principal = Depends(require_role(*READ_ROLES))) -> dict[str, Any]:
    """The calling key as the server sees it: what a client (the web UI) may offer its user - a viewer's
    Approve button would only earn a 403. Nothing another key could not learn about itself."""
    return {"tenant_id": p.tenant_id, "key_id": p.key_id, "role": p.role, "user_id": p.user_id,
            "project_id": p.project_id, "can_decide": p.role in ("admin", "approver"),
            "can_start_runs": p.role in ("admin", "member")}


@router.get("/budgets")
async def get_budgets(rt: Any = Depends(runtime), p: Principal = Depends(require_role(*READ_ROLES))) -> dict[str, Any]:
    import time

    accounts = await rt.services.ledger.accounts(p.tenant_id, time.time())
    if p.bound:  # a bound key sees the accounts of its own user / project
        accounts = [a for a in accounts if (a.scope, a.scope_id) in (("user", p.user_id), ("project", p.project_id))]
    return {"data": [_account_json(a) for a in accounts]}


@router.put("/budgets")
async def put_budgets(body: PutBudgets, rt: Any = Depends(runtime), p: Principal = Depends(require_tenant_wide("admin"))) -> dict[str, Any]:
    s = rt.services
    resolved = []
    for cap in body.budgets:  # validate every entry before writing any
        sid = p.tenant_id if cap.scope == "tenant" else cap.scope_id
        if cap.scope == "tenant" and cap.scope_id not in (None, p.tenant_id):
            raise StockadeError("input.invalid", "a tenant budget's scope_id is the tenant itself")
        if sid is None:
            raise StockadeError("input.invalid", f"a {cap.scope} budget needs scope_id")
        if cap.scope == "project" and await s.tenants.get_project(p.tenant_id, sid) is None:
            raise StockadeError("not_found", f"no project {sid}")
        if cap.scope == "user" and await s.tenants.get_user(p.tenant_id, sid) is None:
            raise StockadeError("not_found", f"no user {sid}")
        if any((cap.scope, sid) == (seen.scope, seen_id) for seen, seen_id, _ in resolved):
            # an account has one cap: two entries for it contradict each other (the last one won, silently)
            raise StockadeError("input.invalid", f"the {cap.scope} budget {sid} is named twice")
        resolved.append((cap, sid, cap_to_micro(cap.cap_usd, f"{cap.scope} budget cap")))
    # one transaction: a failure part-way (the database going away) leaves every cap as it was
    written = await s.ledger.set_caps(p.tenant_id, [(cap.scope, sid, micro, cap.period) for cap, sid, micro in resolved])
    # Recorded once the caps are written, as put_policy and the other admin changes are: a record states a change
    # that happened. If it cannot be written the client gets audit.unavailable (retryable), not 200, and its
    # retry (a PUT: the same caps again) writes the record then - so a PUT that changes nothing is recorded too.
    # Each entry says what the cap was just before (``previous``: null for an account that had no cap), read in
    # the same transaction that changed it.
    await _record(rt, p, "budget.updated", budgets=[
        {"scope": a.scope, "scope_id": a.scope_id, "period": a.period, "cap_usd": a.cap_micro / 1e6,
         "previous": None if a.previous_cap_micro is None else {
             "period": a.previous_period, "cap_usd": a.previous_cap_micro / 1e6}}
        for a in written])
    return await get_budgets(rt, p)


@router.get("/policy", response_class=YamlResponse,
            responses={200: {"content": {"application/yaml": {"schema": {"type": "object"}}}}})
async def get_policy(rt: Any = Depends(runtime), p: Principal = Depends(require_role(*READ_ROLES))) -> PlainTextResponse:
    got = await rt.services.policies.get(p.tenant_id)
    if got:
        text, version = got
    else:
        from supervisor.policy import default_policy

        text, version = _DEFAULT_POLICY.read_text(encoding="utf-8"), default_policy().version
    return YamlResponse(text, headers={"Policy-Version": version})


@router.put("/policy", openapi_extra=_YAML_BODY)
async def put_policy(request: Request, rt: Any = Depends(runtime), p: Principal = Depends(require_tenant_wide("admin"))) -> dict[str, Any]:
    from supervisor.policy import PolicyError, load_policy

    raw = await request.body()
    if len(raw) > MAX_POLICY_BYTES:
        raise StockadeError("input.too_large", f"a policy is at most {MAX_POLICY_BYTES} bytes")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise StockadeError("policy.invalid", "the policy must be UTF-8 YAML") from None
    try:
        # on a thread: a document near the size limit takes a second or more to check, and the event loop
        # serves every other request (and stream) of this process meanwhile
        policy = await asyncio.to_thread(load_policy, text, source="policy")
    except PolicyError as exc:
        raise StockadeError("policy.invalid", exc.detail, errors=getattr(exc, "errors", [])) from None
    await rt.services.policies.put(p.tenant_id, text, policy.version)
    for icpt in getattr(rt, "interceptors", ()):  # this process applies it at once; others within a second
        forget = getattr(icpt, "forget_tenant", None)
        if forget is not None:
            forget(p.tenant_id)
    await rt.recorder.record(p.tenant_id, "policy.updated", policy_version=policy.version,
                             detail={"key_id": p.key_id, "rules": len(policy.rules)})
    return {"version": policy.version, "rules": len(policy.rules)}


def _page(items: list[Any], fn: Any, cursor_attr: str, limit: int) -> dict[str, Any]:
    return {"data": [fn(i) for i in items], "next_after": getattr(items[-1], cursor_attr) if len(items) == limit else None}


@router.get("/ledger")
async def get_ledger(rt: Any = Depends(runtime), p: Principal = Depends(require_tenant_wide(*READ_ROLES)),
                     after: int = Query(0, ge=0, le=MAX_ID), limit: int = Query(100, ge=1, le=1000)) -> dict[str, Any]:
    items = await rt.services.ledger.entries(p.tenant_id, after_id=after, limit=limit)
    return _page(items, lambda e: {"id": e.id, "scope": e.scope, "scope_id": e.scope_id, "period_key": e.period_key,
                                   "amount_usd": e.amount_micro / 1e6, "reservation_id": e.reservation_id,
                                   "run_id": e.run_id, "tool": e.tool, "ts": e.ts, "detail": e.detail}, "id", limit)


@router.get("/audit")
async def get_audit(rt: Any = Depends(runtime), p: Principal = Depends(require_role(*READ_ROLES)),
                    after: int = Query(0, ge=0, le=MAX_ID), limit: int = Query(100, ge=1, le=1000),
                    run_id: str | None = None) -> dict[str, Any]:
    if p.bound:  # the records of its own runs only, one run at a time
        if run_id is None:
            raise StockadeError("auth.forbidden", "this key is bound to a user or project: name one of its runs (run_id)")
        run = await rt.services.runs.get_run(p.tenant_id, run_id)
        if run is None or not p.sees(run.user_id, run.project_id):
            return _page([], None, "seq", limit)  # as for a run that does not exist
    items = await rt.services.audit.list(p.tenant_id, after_seq=after, limit=limit, run_id=run_id)
    return _page(items, lambda r: {"seq": r.seq, "ts": r.ts, "kind": r.kind, "run_id": r.run_id, "tool": r.tool,
                                   "args_hash": r.args_hash, "rule_id": r.rule_id, "policy_version": r.policy_version,
                                   "code": r.code, "cost_usd": r.cost_micro / 1e6, "detail": r.detail,
                                   "prev_hash": r.prev_hash, "hash": r.hash}, "seq", limit)


class NewKeyBody(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    role: Literal["admin", "member", "approver", "viewer"] = "member"
    user_id: _Id | None = None
    project_id: _Id | None = None


@router.post("/keys", status_code=201)
async def post_key(body: NewKeyBody, rt: Any = Depends(runtime), p: Principal = Depends(require_role("admin"))) -> dict[str, Any]:
    # a key bound to a user / project mints only keys bound as narrowly: never a way out of its binding
    if p.user_id is not None and body.user_id not in (None, p.user_id):
        raise StockadeError("auth.forbidden", "this key is bound to another user")
    if p.project_id is not None and body.project_id not in (None, p.project_id):
        raise StockadeError("auth.forbidden", "this key is bound to another project")
    nk = await create_key(rt.services, p.tenant_id, body.role, user_id=p.user_id or body.user_id,
                          project_id=p.project_id or body.project_id)
    await _record(rt, p, "key.created", id=nk.key.id, role=nk.key.role, user_id=nk.key.user_id,
                  project_id=nk.key.project_id)
    return {"id": nk.key.id, "api_key": nk.secret, "role": nk.key.role, "user_id": nk.key.user_id,
            "project_id": nk.key.project_id}


@router.get("/keys")
async def list_keys(rt: Any = Depends(runtime), p: Principal = Depends(require_role("admin"))) -> dict[str, Any]:
    keys = [k for k in await rt.services.tenants.list_keys(p.tenant_id) if p.sees(k.user_id, k.project_id)]
    return {"data": [{"id": k.id, "prefix": k.prefix, "role": k.role, "user_id": k.user_id, "project_id": k.project_id,
                      "created_at": k.created_at, "revoked_at": k.revoked_at} for k in keys]}


@router.delete("/keys/{key_id}")
async def revoke_key(key_id: str, rt: Any = Depends(runtime), p: Principal = Depends(require_role("admin"))) -> dict[str, Any]:
    if p.bound and not any(k.id == key_id and p.sees(k.user_id, k.project_id)
                           for k in await rt.services.tenants.list_keys(p.tenant_id)):
        raise StockadeError("not_found", f"no key {key_id}")  # outside its binding: as if it did not exist
    revoked = await tenancy.revoke_key(rt.services, p.tenant_id, key_id)  # False: revoked already, a retry holds
    if revoked is None:
        raise StockadeError("not_found", f"no key {key_id}")
    if revoked:
        await _record(rt, p, "key.revoked", id=key_id)
    return {"id": key_id, "revoked": True}


async def _record(rt: Any, p: Principal, kind: str, **detail: Any) -> None:
    """Who may do what in the tenant changed: one audit record, naming the key that changed it (as
    ``policy.updated`` and ``bundle.registered`` do). Keys minted and revoked, users, projects and memberships
    went unrecorded (found by a walkthrough)."""
    await rt.recorder.record(p.tenant_id, kind, detail={"key_id": p.key_id, **detail})


class NameBody(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    name: Name = Field(min_length=1, max_length=100)


@router.post("/projects", status_code=201)
async def post_project(body: NameBody, rt: Any = Depends(runtime), p: Principal = Depends(require_tenant_wide("admin"))) -> dict[str, Any]:
    pr = await rt.services.tenants.create_project(p.tenant_id, body.name)
    await _record(rt, p, "project.created", id=pr.id, name=pr.name)
    return {"id": pr.id, "name": pr.name}


@router.post("/users", status_code=201)
async def post_user(body: NameBody, rt: Any = Depends(runtime), p: Principal = Depends(require_tenant_wide("admin"))) -> dict[str, Any]:
    u = await rt.services.tenants.create_user(p.tenant_id, body.name)
    await _record(rt, p, "user.created", id=u.id, name=u.name)
    return {"id": u.id, "name": u.name}


@router.get("/projects")
async def get_projects(rt: Any = Depends(runtime), p: Principal = Depends(require_tenant_wide(*READ_ROLES))) -> dict[str, Any]:
    return {"data": [{"id": x.id, "name": x.name} for x in await rt.services.tenants.list_projects(p.tenant_id)]}


@router.get("/users")
async def get_users(rt: Any = Depends(runtime), p: Principal = Depends(require_tenant_wide(*READ_ROLES))) -> dict[str, Any]:
    return {"data": [{"id": x.id, "name": x.name} for x in await rt.services.tenants.list_users(p.tenant_id)]}


async def _project(rt: Any, p: Principal, project_id: str) -> str:
    if await rt.services.tenants.get_project(p.tenant_id, project_id) is None:
        raise StockadeError("not_found", f"no project {project_id}")
    return project_id


@router.get("/projects/{project_id}/members")
async def get_members(project_id: str, rt: Any = Depends(runtime),
                      p: Principal = Depends(require_tenant_wide(*READ_ROLES))) -> dict[str, Any]:
    await _project(rt, p, project_id)
    return {"data": [{"user_id": u} for u in await rt.services.tenants.list_members(p.tenant_id, project_id)]}


@router.put("/projects/{project_id}/members/{user_id}")
async def put_member(project_id: str, user_id: str, rt: Any = Depends(runtime),
                     p: Principal = Depends(require_tenant_wide("admin"))) -> dict[str, Any]:
    """Make the user a member of the project (idempotent: ``added`` is false when it already was)."""
    await _project(rt, p, project_id)
    if await rt.services.tenants.get_user(p.tenant_id, user_id) is None:
        raise StockadeError("not_found", f"no user {user_id}")
    added = await rt.services.tenants.add_member(p.tenant_id, project_id, user_id)
    if added:
        await _record(rt, p, "member.added", project_id=project_id, user_id=user_id)
    return {"project_id": project_id, "user_id": user_id, "added": added}


@router.delete("/projects/{project_id}/members/{user_id}")
async def delete_member(project_id: str, user_id: str, rt: Any = Depends(runtime),
                        p: Principal = Depends(require_tenant_wide("admin"))) -> dict[str, Any]:
    """The user leaves the project: new runs and keys for the pair are refused (``project.not_member``),
    including runs of keys already bound to both; runs already started go on."""
    await _project(rt, p, project_id)
    if not await rt.services.tenants.remove_member(p.tenant_id, project_id, user_id):
        raise StockadeError("not_found", f"user {user_id} is not a member of project {project_id}")
    await _record(rt, p, "member.removed", project_id=project_id, user_id=user_id)
    return {"project_id": project_id, "user_id": user_id, "removed": True}
