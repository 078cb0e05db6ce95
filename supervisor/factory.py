"""Chooses one adapter per port from settings, once, at start-up."""

from __future__ import annotations

from typing import Any

from supervisor.services import Services
from supervisor.settings import Settings, SettingsError
from supervisor.stores.kb_port import KbQuota

__all__ = ["open_services"]


def _ensure_data_dir(settings: Settings) -> None:
    try:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise SettingsError(f"invalid setting STOCKADE_DATA_DIR: {settings.data_dir} is not a directory") from None
    except OSError as exc:
        raise SettingsError(
            f"invalid setting STOCKADE_DATA_DIR: cannot create {settings.data_dir}: {exc.strerror or exc}") from None


async def open_services(settings: Settings, *, migrate: bool = True) -> Services:
    _ensure_data_dir(settings)
    sql = await _open_sql(settings, migrate)
    kv = await _open_kv(settings)
    services = Services(settings=settings, **sql["ports"], **kv["ports"])
    services.closers.extend(sql["closers"] + kv["closers"])
    services.extras["db"] = sql["db"]
    services.extras["redis"] = kv.get("client")
    from supervisor.tools.registry import default_registry

    services.tools = default_registry(settings, services)
    if getattr(sql["db"], "migrations_applied", None):
        await _seal_plain_secrets(services)
    return services


async def _seal_plain_secrets(services: Services) -> None:
    """After an upgrade (this process applied migrations): MCP server URLs and headers an older version stored
    in plain are sealed (sealing at rest came later; they were read as stored, and stayed plain in the database
    for good). Values sealed already are left as they are (re-sealing under a new key is ``stockade secrets
    reseal``'s, when the operator says so). Housekeeping: a failure is logged, never stops a start."""
    import logging

    mcp = services.extras.get("mcp")
    if mcp is None:
        return
    try:
        for tenant in await services.tenants.list_tenants():
            servers, sealed = await mcp.store.reseal(tenant.id, plain_only=True)
            if sealed:
                logging.getLogger(__name__).info("tenant %s: %d MCP server(s) stored in plain sealed", tenant.id, sealed)
    except Exception as exc:
        logging.getLogger(__name__).warning("MCP secrets stored in plain not sealed: %s", exc)


async def _open_sql(settings: Settings, migrate: bool) -> dict[str, Any]:
    if settings.uses_postgres:
        from supervisor.stores import postgres as pg
        from supervisor.stores.postgres.db import open_postgres

        db = await open_postgres(settings.database_url, min_size=settings.db_pool_min, max_size=settings.db_pool_max,
                                 migrate=migrate)
        mod, kb_cls = pg, _kb("postgres")
        prefix = "Pg"
    else:
        from supervisor.stores import sqlite as sq
        from supervisor.stores.sqlite.db import open_sqlite

        db = await open_sqlite(settings.sqlite_path, migrate=migrate)
        mod, kb_cls = sq, _kb("sqlite")
        prefix = "Sqlite"
    ledger_mod = __import__(f"supervisor.stores.{'postgres' if prefix == 'Pg' else 'sqlite'}.ledger", fromlist=["x"])
    ports = {
        "tenants": getattr(mod, f"{prefix}TenantStore")(db),
        "runs": getattr(mod, f"{prefix}RunStore")(db),
        "audit": getattr(mod, f"{prefix}AuditLog")(db),
        "approvals": getattr(mod, f"{prefix}ApprovalStore")(db),
        "idempotency": getattr(mod, f"{prefix}IdempotencyStore")(db),
        "bundles": getattr(mod, f"{prefix}BundleStore")(db),
        "policies": getattr(mod, f"{prefix}PolicyStore")(db),
        "ledger": getattr(ledger_mod, f"{prefix}Ledger")(db),
        "kb": kb_cls(db, _kb_quota(settings)) if kb_cls else None,
    }

    async def close() -> None:
        res = db.close()
        if hasattr(res, "__await__"):
            await res

    return {"ports": ports, "closers": [close], "db": db}


def _kb_quota(settings: Settings) -> KbQuota:
    return KbQuota(max_bytes=settings.kb_quota_mb * 1024 * 1024, max_docs=settings.kb_quota_docs)


def _kb(kind: str) -> Any:
    try:
        mod = __import__(f"supervisor.stores.{kind}.kb", fromlist=["x"])
    except ImportError:
        return None
    return getattr(mod, "PgKbStore" if kind == "postgres" else "SqliteKbStore", None)


async def _open_kv(settings: Settings) -> dict[str, Any]:
    if settings.redis_url:
        from supervisor.stores.redis import RedisEventBus, RedisRateLimiter, RedisRunQueue, RedisVelocityLog
        from supervisor.stores.redis.client import open_redis

        client = await open_redis(settings.redis_url)
        p = settings.redis_prefix
        bus = RedisEventBus(client, p)
        ports = {"events": bus, "queue": RedisRunQueue(client, p, settings.queue_visibility_s),
                 "rate": RedisRateLimiter(client, p), "velocity": RedisVelocityLog(client, p)}

        async def close() -> None:
            await bus.close()
            await client.aclose()

        return {"ports": ports, "closers": [close], "client": client}
    from supervisor.stores.memory import MemoryEventBus, MemoryRateLimiter, MemoryRunQueue

    bus = MemoryEventBus()
    return {"ports": {"events": bus, "queue": MemoryRunQueue(settings.queue_visibility_s), "rate": MemoryRateLimiter()},
            "closers": [bus.close]}
