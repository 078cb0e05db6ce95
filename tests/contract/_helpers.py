"""Store constructors by adapter kind, shared by the contract tests."""

from __future__ import annotations

import time
from typing import Any

from supervisor.ids import new_id
from supervisor.stores.records import Run


def store(kind_or_handle: Any, port: str, db: Any = None) -> Any:
    """``store(sql_db, "RunStore")`` -> SqliteRunStore/PgRunStore on sql_db.db (or on ``db``)."""
    kind = kind_or_handle if isinstance(kind_or_handle, str) else kind_or_handle.kind
    target = db if db is not None else kind_or_handle.db
    if kind == "sqlite":
        import supervisor.stores.sqlite as mod

        names = {"AuditLog": "SqliteAuditLog"}
        return getattr(mod, names.get(port, "Sqlite" + port))(target)
    import supervisor.stores.postgres as pmod

    names = {"AuditLog": "PgAuditLog"}
    return getattr(pmod, names.get(port, "Pg" + port))(target)


def make_run(tenant_id: str, **kw: Any) -> Run:
    fields: dict[str, Any] = {
        "id": new_id("run_"), "tenant_id": tenant_id, "bundle": "echo", "bundle_version": "1",
        "input": "hello", "status": "queued", "created_at": time.time(),
    }
    fields.update(kw)
    return Run(**fields)
