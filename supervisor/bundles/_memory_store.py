"""In-memory ``BundleStore`` for unit tests (the embedded default is SQLite).

Records are dicts ``{"tenant_id", "name", "version", "digest", "manifest",
"created_at"}``. ``latest`` is the version registered (or re-registered) most
recently: putting a digest that already exists returns False but makes it the
latest again, so reverting an edit in the bundles folder takes effect.
"""

from __future__ import annotations

import asyncio
import copy
import itertools
import time
from typing import Any

__all__ = ["MemoryBundleStore"]


class MemoryBundleStore:
    def __init__(self) -> None:
        self._rows: dict[tuple[str | None, str, str], dict[str, Any]] = {}
        self._order: dict[tuple[str | None, str, str], int] = {}
        self._retired: set[tuple[str | None, str, str]] = set()
        self._tick = itertools.count(1)
        self._lock = asyncio.Lock()

    async def put_version(
        self, tenant_id: str | None, name: str, version: str, digest: str, manifest: dict[str, Any]
    ) -> bool:
        key = (tenant_id, name, digest)
        async with self._lock:
            self._order[key] = next(self._tick)
            self._retired.discard(key)
            if key in self._rows:
                return False
            self._rows[key] = {
                "tenant_id": tenant_id, "name": name, "version": version, "digest": digest,
                "manifest": copy.deepcopy(manifest), "created_at": time.time(),
            }
            return True

    async def latest(self, tenant_id: str | None, name: str) -> dict[str, Any] | None:
        keys = [k for k in self._rows if k[0] == tenant_id and k[1] == name and k not in self._retired]
        if not keys:
            return None
        return copy.deepcopy(self._rows[max(keys, key=self._order.__getitem__)])

    async def get_version(self, tenant_id: str | None, name: str, digest: str) -> dict[str, Any] | None:
        row = self._rows.get((tenant_id, name, digest))
        return copy.deepcopy(row) if row else None

    async def retire(self, tenant_id: str | None, name: str) -> int:
        async with self._lock:
            keys = {k for k in self._rows if k[0] == tenant_id and k[1] == name} - self._retired
            self._retired |= keys
            return len(keys)

    async def list(self, tenant_id: str) -> list[dict[str, Any]]:
        keys = [k for k in self._rows if k[0] in (tenant_id, None) and k not in self._retired]
        keys.sort(key=self._order.__getitem__, reverse=True)
        return [copy.deepcopy(self._rows[k]) for k in keys]
