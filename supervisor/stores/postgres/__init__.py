"""PostgreSQL adapters: the production store (asyncpg, row-level security per tenant)."""

from supervisor.stores.postgres.approvals import PgApprovalStore
from supervisor.stores.postgres.audit import PgAuditLog
from supervisor.stores.postgres.bundles import PgBundleStore
from supervisor.stores.postgres.db import PgDB, open_postgres
from supervisor.stores.postgres.idempotency import PgIdempotencyStore
from supervisor.stores.postgres.policies import PgPolicyStore
from supervisor.stores.postgres.runs import PgRunStore
from supervisor.stores.postgres.tenants import PgTenantStore

__all__ = [
    "PgApprovalStore", "PgAuditLog", "PgBundleStore", "PgDB", "PgIdempotencyStore", "PgPolicyStore",
    "PgRunStore", "PgTenantStore", "open_postgres",
]
