"""PostgreSQL AuditLog: per-tenant hash chain, append-only (triggers refuse UPDATE/DELETE/TRUNCATE).

Append = ONE round trip: the record is sealed here (the MAC key never reaches
the database) against the chain head this process last wrote or read, and
``stockade_audit_append`` (migration 0012) advances the head only if it still
is that head, inserting the record in the same statement-transaction. If
another process appended meanwhile, the function hands back the current head
and the record is sealed again. Appends of one tenant within this process take
turns on an asyncio lock, so they do not race each other for the head.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import asyncpg

from supervisor.errors import StockadeError
from supervisor.stores._common import AUDIT_COLS, GENESIS_HASH, dump_audit_detail, normalize_audit_fields
from supervisor.stores._common import check_limit as _limit
from supervisor.stores.postgres._rows import to_audit
from supervisor.stores.postgres.db import PgDB
from supervisor.stores.records import AuditRecord

__all__ = ["PgAuditLog"]

_APPEND = ("SELECT r_ok, r_seq, r_hash FROM stockade_audit_append("
           "$1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12::text::jsonb, $13, $14, $15)")
_OPTIMISTIC = 3  # lost races in a row before queueing on the head row's lock instead (fairness)
_LOCK_HEAD = "SELECT seq, hash FROM audit_heads WHERE tenant_id = $1 FOR UPDATE"
# First record of a tenant: create the head (genesis defaults) and lock it; a
# concurrent creator makes this wait and then return the committed head.
_CREATE_HEAD = (
    "INSERT INTO audit_heads (tenant_id) VALUES ($1)"
    " ON CONFLICT (tenant_id) DO UPDATE SET seq = audit_heads.seq RETURNING seq, hash"
)
_APPEND_LOCKED = (
    f"WITH a AS (INSERT INTO audit_log ({AUDIT_COLS})"
    " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12::text::jsonb, $13, $14, $15))"
    " UPDATE audit_heads SET seq = $2, hash = $14 WHERE tenant_id = $1"
)
_MAC_AT = "SELECT mac FROM audit_log WHERE tenant_id = $1 AND seq = $2"
_LOCKS_MAX = 4096
# detail read as text and parsed by to_audit, not by the connection's jsonb codec: a row a database
# writer made (nesting deeper than the parser goes, a 5,000-digit number) then fails its own hash
# instead of every listing of the log
_READ_COLS = AUDIT_COLS.replace("detail", "detail::text AS detail")
_COLS = AUDIT_COLS.split(", ")
_HEAD_AND_ROW = (
    f"WITH l AS (SELECT {_READ_COLS} FROM audit_log WHERE tenant_id = $1 ORDER BY seq DESC LIMIT 1),"
    " h AS (SELECT seq AS head_seq, hash AS head_hash FROM audit_heads WHERE tenant_id = $1)"
    " SELECT * FROM l FULL JOIN h ON true"
)


def _wants_head_mac(seal: Any) -> bool:
    """Whether ``seal`` looks at a head's MAC (a sealer holding a next key: rolling rotation); reading it
    costs a round trip, so it is read only then."""
    wants = getattr(seal, "wants_head_mac", None)
    return bool(wants()) if callable(wants) else False


def as_jsonb_returns(v: Any) -> Any:
    """``v`` with each float as jsonb gives it back. jsonb keeps a number as a decimal: ``1e+16`` comes
    back ``10000000000000000`` (an int to the JSON parser; every float from 1e16 up is integral) and
    ``-0.0`` as ``0.0``; every other finite float reads back as itself. The same object when nothing changes."""
    if type(v) is float:
        if v == 0.0:
            return 0.0
        return int(v) if abs(v) >= 1e16 else v
    if isinstance(v, dict):
        out = {k: as_jsonb_returns(x) for k, x in v.items()}
        return v if all(out[k] is v[k] for k in v) else out
    if isinstance(v, list | tuple):  # a tuple is written as an array: it is a list once read back
        items = [as_jsonb_returns(x) for x in v]
        return v if type(v) is list and all(a is b for a, b in zip(items, v, strict=True)) else items
    return v


@asynccontextmanager
async def _audit_errors() -> AsyncIterator[None]:
    try:
        yield
    except StockadeError as exc:
        if exc.code == "store.unavailable":
            raise StockadeError("audit.unavailable", exc.detail) from exc
        raise


class PgAuditLog:
    def __init__(self, db: PgDB) -> None:
        self._db = db
        self._heads: dict[str, tuple[int, str]] = {}  # tenant -> (seq, hash) last written or read here
        self._locks: dict[str, asyncio.Lock] = {}

    def _lock(self, tenant_id: str) -> asyncio.Lock:
        lock = self._locks.get(tenant_id)
        if lock is None:
            if len(self._locks) >= _LOCKS_MAX:  # drop idle ones; a held lock is kept
                for t in [t for t, lk in self._locks.items() if not lk.locked()]:
                    del self._locks[t]
            lock = self._locks[tenant_id] = asyncio.Lock()
        return lock

    async def append(
        self, tenant_id: str, fields: dict[str, Any], seal: Callable[[str, int, dict[str, Any], str | None], tuple[str, str]]
    ) -> AuditRecord:
        f = normalize_audit_fields(fields, time.time())
        f["detail"] = as_jsonb_returns(f["detail"])  # sealed as it will be read back, or it would not verify
        detail_json = dump_audit_detail(f["detail"])
        async with _audit_errors(), self._lock(tenant_id):
            seq, prev_hash = self._heads.get(tenant_id, (0, GENESIS_HASH))
            prev_mac: str | None = None  # the head's MAC, once it is a head another process wrote
            try:
                for _ in range(_OPTIMISTIC):
                    seq += 1
                    digest, mac = seal(prev_hash, seq, f, prev_mac)
                    async with self._db.acquire() as c:
                        row = await c.fetchrow(
                            _APPEND, tenant_id, seq, f["ts"], f["kind"], f["run_id"], f["tool"], f["args_hash"],
                            f["rule_id"], f["policy_version"], f["code"], f["cost_micro"], detail_json, prev_hash,
                            digest, mac,
                        )
                    if row is not None and row["r_ok"]:
                        break
                    # another process appended: seal against the head it left (none yet: genesis)
                    seq, prev_hash = (int(row["r_seq"]), row["r_hash"]) if row is not None else (0, GENESIS_HASH)
                    prev_mac = await self._head_mac(tenant_id, seq, seal)
                else:
                    seq, prev_hash, digest, mac = await self._append_locked(tenant_id, f, detail_json, seal)
            except asyncpg.ForeignKeyViolationError:
                raise StockadeError("not_found", "unknown tenant") from None
            except BaseException:
                self._heads.pop(tenant_id, None)  # committed or not, we cannot tell: ask next time
                raise
            self._heads[tenant_id] = (seq, digest)
        return AuditRecord(tenant_id=tenant_id, seq=seq, prev_hash=prev_hash, hash=digest, mac=mac, **f)

    async def _head_mac(self, tenant_id: str, seq: int, seal: Any) -> str | None:
        if seq == 0 or not _wants_head_mac(seal):
            return None
        async with self._db.tenant_tx(tenant_id) as c:
            return await c.fetchval(_MAC_AT, tenant_id, seq)

    async def _append_locked(
        self, tenant_id: str, f: dict[str, Any], detail_json: str,
        seal: Callable[[str, int, dict[str, Any], str | None], tuple[str, str]],
    ) -> tuple[int, str, str, str]:
        async with self._db.tenant_tx(tenant_id) as c:
            head = await c.fetchrow(_LOCK_HEAD, tenant_id)
            if head is None:
                head = await c.fetchrow(_CREATE_HEAD, tenant_id)
            prev_hash, seq = head["hash"], head["seq"] + 1
            prev_mac = None
            if head["seq"] > 0 and _wants_head_mac(seal):
                prev_mac = await c.fetchval(_MAC_AT, tenant_id, head["seq"])
            digest, mac = seal(prev_hash, seq, f, prev_mac)
            await c.execute(
                _APPEND_LOCKED, tenant_id, seq, f["ts"], f["kind"], f["run_id"], f["tool"], f["args_hash"],
                f["rule_id"], f["policy_version"], f["code"], f["cost_micro"], detail_json, prev_hash, digest, mac,
            )
        return seq, prev_hash, digest, mac

    async def list(
        self, tenant_id: str, *, after_seq: int = 0, limit: int = 100, run_id: str | None = None
    ) -> list[AuditRecord]:
        async with _audit_errors(), self._db.tenant_tx(tenant_id) as c:
            rows = await c.fetch(
                f"SELECT {_READ_COLS} FROM audit_log WHERE tenant_id = $1 AND seq > $2"
                " AND ($3::text IS NULL OR run_id = $3) ORDER BY seq LIMIT $4",
                tenant_id, after_seq, run_id, _limit(limit),
            )
        return [to_audit(r) for r in rows]

    async def head(self, tenant_id: str) -> AuditRecord | None:
        """The chain's last record, checked against the head row each append advances in the same
        statement: where the two disagree a writer cut the log's tail (or edited past the head row) -
        caught here without an anchor. ``audit.corrupt`` with ``head_seq`` (what the head row names)."""
        async with _audit_errors(), self._db.tenant_tx(tenant_id) as c:
            row = await c.fetchrow(_HEAD_AND_ROW, tenant_id)  # one statement: one snapshot of both
        if row is None:
            return None
        head_seq, head_hash = row["head_seq"], row["head_hash"]
        rec = to_audit({k: row[k] for k in _COLS}) if row["seq"] is not None else None
        if rec is None and head_seq == 0:
            return None  # a head row that names no record (seq 0, its default): an empty chain
        if head_seq is None:
            problem = "the chain has no head row (deleted)"
        elif rec is None or rec.seq < head_seq:
            problem = f"the chain's head row names record {head_seq} (records deleted from the end)"
        elif rec.seq > head_seq:
            problem = f"the chain's head row names record {head_seq} (records appended past it)"
        elif rec.hash != head_hash:
            problem = f"the chain's head row names another record {head_seq} (records replaced)"
        else:
            return rec
        raise StockadeError("audit.corrupt", problem, head_seq=head_seq)

    async def tenants(self, limit: int | None = None) -> list[str]:
        # the chains in the log itself, not only the head rows: a writer who deletes a tenant's head row
        # must not hide that tenant's chain from `audit verify` (which reads every record anyway). A sample
        # (limit) reads the head rows only: no scan of the log
        async with _audit_errors(), self._db.system_tx() as c:
            if limit is not None:
                return [r[0] for r in await c.fetch(
                    "SELECT tenant_id FROM audit_heads WHERE seq > 0 ORDER BY tenant_id LIMIT $1", _limit(limit))]
            return [r[0] for r in await c.fetch(
                "SELECT tenant_id FROM audit_heads UNION SELECT tenant_id FROM audit_log ORDER BY tenant_id")]

    async def deployment_key(self, name: str) -> str | None:
        async with _audit_errors(), self._db.system_tx() as c:
            return await c.fetchval("SELECT key_id FROM deployment_keys WHERE name = $1", name)

    async def claim_deployment_key(self, name: str, key_id: str, replaces: str | None) -> str | None:
        async with _audit_errors(), self._db.system_tx() as c:
            if replaces is None:
                await c.execute("INSERT INTO deployment_keys (name, key_id, updated_at) VALUES ($1, $2, $3) "
                                "ON CONFLICT (name) DO NOTHING", name, key_id, time.time())
            else:
                await c.execute("UPDATE deployment_keys SET key_id = $2, updated_at = $3 WHERE name = $1 "
                                "AND key_id = $4", name, key_id, time.time(), replaces)
            return await c.fetchval("SELECT key_id FROM deployment_keys WHERE name = $1", name)
