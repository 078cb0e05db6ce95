"""Tenants and keys as the CLI and the API create them."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from supervisor.budget.amounts import cap_to_micro
from supervisor.errors import StockadeError
from supervisor.hidden_chars import hidden_char
from supervisor.ids import new_id
from supervisor.keys import generate_key, hash_key, key_display_prefix, well_formed
from supervisor.stores.records import ROLES, ApiKey, Tenant

__all__ = ["NewKey", "Principal", "authenticate", "check_membership", "create_key", "create_tenant", "revoke_key", "key_failure",
           "key_is_live"]

_TENANT_ID = re.compile(r"ten_[0-9a-z]{20}")


@dataclass(frozen=True)
class Principal:
    tenant_id: str
    key_id: str
    role: str
    user_id: str | None = None
    project_id: str | None = None
    key_hash: str = field(default="", repr=False, compare=False)  # what an open stream looks the key up by again

    # A key bound to a user and/or a project acts as that user / within that project: it sees the runs (and
    # their events, receipts, approvals, audit records, conversations) of its binding only, and nothing it
    # does reaches past it (tenant-wide settings, other keys). An unbound key sees the whole tenant.
    @property
    def bound(self) -> bool:
        return self.user_id is not None or self.project_id is not None

    def sees(self, user_id: str | None, project_id: str | None) -> bool:
        """Whether an object owned by ``user_id`` / ``project_id`` (a run, a key) is within this key's binding."""
        return (self.user_id is None or user_id == self.user_id) and (
            self.project_id is None or project_id == self.project_id)


@dataclass(frozen=True)
class NewKey:
    key: ApiKey
    secret: str  # shown once


async def check_membership(services: Any, tenant_id: str, user_id: str | None, project_id: str | None) -> None:
    """A run or a key that carries both a user and a project: the user must be a member of the project
    (else a key bound to a project could act as any user of the tenant - their storage, their budget -
    and a key bound to a user could charge any project)."""
    if user_id is not None and project_id is not None and not await services.tenants.is_member(tenant_id, project_id, user_id):
        raise StockadeError("project.not_member", f"user {user_id} is not a member of project {project_id}",
                            user_id=user_id, project_id=project_id)


async def create_key(services: Any, tenant_id: str, role: str = "admin", *, user_id: str | None = None,
                     project_id: str | None = None) -> NewKey:
    if role not in ROLES:
        raise StockadeError("input.invalid", f"role must be one of {', '.join(ROLES)}")
    if await services.tenants.get_tenant(tenant_id) is None:
        raise StockadeError("not_found", f"no tenant {tenant_id}")
    if user_id is not None and await services.tenants.get_user(tenant_id, user_id) is None:
        raise StockadeError("not_found", f"no user {user_id}")
    if project_id is not None and await services.tenants.get_project(tenant_id, project_id) is None:
        raise StockadeError("not_found", f"no project {project_id}")
    await check_membership(services, tenant_id, user_id, project_id)
    secret = generate_key()
    key = await services.tenants.create_key(
        tenant_id, key_id=new_id("key_"), key_hash=hash_key(secret), prefix=key_display_prefix(secret), role=role,
        user_id=user_id, project_id=project_id,
    )
    return NewKey(key=key, secret=secret)


async def revoke_key(services: Any, tenant_id: str, key_id: str) -> bool | None:
    """Revoke the tenant's key: True if this call revoked it, False if it was revoked already (what was asked
    holds: a retried request succeeds), None if the tenant has no such key."""
    if await services.tenants.revoke_key(tenant_id, key_id):
        return True
    return False if any(k.id == key_id for k in await services.tenants.list_keys(tenant_id)) else None


async def create_tenant(services: Any, name: str, *, budget_usd: float | None = None) -> tuple[Tenant, NewKey]:
    name = (name or "").strip()
    if not name or len(name) > 100 or hidden_char(name) is not None:
        raise StockadeError("input.invalid", "tenant name must be 1 to 100 characters, without control or format "
                            "characters (a newline, U+202E)")
    if _TENANT_ID.fullmatch(name):  # `--tenant REF` looks ids up first: such a name could never be found by name
        raise StockadeError("input.invalid", "a tenant name cannot look like a tenant id (ten_...)")
    # every check before the first write: a refused request leaves no tenant behind
    if budget_usd is not None and not 0 <= budget_usd <= 1e9:  # NaN fails both comparisons
        raise StockadeError("input.invalid", "--budget-usd must be a number from 0 to 1,000,000,000")
    cap_micro = cap_to_micro(budget_usd, "--budget-usd") if budget_usd is not None else 0
    tenant = await services.tenants.create_tenant(name)
    if budget_usd is not None:
        await services.ledger.set_cap(tenant.id, "tenant", tenant.id, cap_micro, "month")
    key = await create_key(services, tenant.id, "admin")
    return tenant, key


async def authenticate(services: Any, authorization: str | None) -> Principal:
    if not authorization:
        raise StockadeError("auth.missing", "send Authorization: Bearer <api key>")
    scheme, _, token = authorization.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise StockadeError("auth.missing", "send Authorization: Bearer <api key>")
    if not well_formed(token):
        raise StockadeError("auth.invalid", "the API key is malformed")
    key_hash = hash_key(token)
    key = await services.tenants.find_key(key_hash)
    if key is None or key.revoked_at is not None:
        raise StockadeError("auth.invalid", "the API key is unknown or revoked")
    return Principal(tenant_id=key.tenant_id, key_id=key.id, role=key.role, user_id=key.user_id, project_id=key.project_id,
                     key_hash=key_hash)


async def key_is_live(services: Any, p: Principal) -> bool:
    """Whether the key ``p`` authenticated with still authenticates (not revoked, not gone with its tenant).

    Open streams call this periodically: authentication happens once per request, a stream outlives it.
    Store errors propagate; the caller fails closed.
    """
    key = await services.tenants.find_key(p.key_hash) if p.key_hash else None
    return _authenticates(key, p)


def _authenticates(key: ApiKey | None, p: Principal) -> bool:
    return key is not None and key.revoked_at is None and key.id == p.key_id and key.tenant_id == p.tenant_id


async def key_failure(services: Any, p: Principal, *, max_age: float = 0.0) -> StockadeError | None:
    """What an open stream checks every ``KEY_RECHECK_S``: None while the key ``p`` authenticated with still
    authenticates; else why it stops - ``auth.invalid`` once revoked, or the lookup's own error (fail closed).
    ``max_age``: a lookup of the same key by another stream that started at most this long ago will do."""
    try:
        if max_age > 0 and p.key_hash:
            live = _authenticates(await services.key_checks.find(services.tenants, p.key_hash, max_age), p)
        else:
            live = await key_is_live(services, p)
    except StockadeError as exc:
        return exc
    if live:
        return None
    return StockadeError("auth.invalid", "the API key was revoked")
