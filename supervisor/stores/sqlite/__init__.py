"""SQLite adapters: the embedded (single-node) store, one file under the data dir."""

from supervisor.stores.sqlite.approvals import SqliteApprovalStore
from supervisor.stores.sqlite.audit import SqliteAuditLog
from supervisor.stores.sqlite.bundles import SqliteBundleStore
from supervisor.stores.sqlite.db import SqliteDB, open_sqlite
from supervisor.stores.sqlite.idempotency import SqliteIdempotencyStore
from supervisor.stores.sqlite.policies import SqlitePolicyStore
from supervisor.stores.sqlite.runs import SqliteRunStore
from supervisor.stores.sqlite.tenants import SqliteTenantStore

__all__ = [
    "SqliteApprovalStore", "SqliteAuditLog", "SqliteBundleStore", "SqliteDB", "SqliteIdempotencyStore",
    "SqlitePolicyStore", "SqliteRunStore", "SqliteTenantStore", "open_sqlite",
]
