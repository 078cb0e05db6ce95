"""An ``McpStore`` whose server headers and URL are sealed at rest (``supervisor.secretbox``).

Header names stay readable (the API lists them); each value is sealed, bound to
``tenant / server / header name``, on the way in and opened on the way out, so
the rest of the MCP code sees plain headers and the database never holds one.
The URL is sealed too, bound to ``tenant / server``: many MCP servers take
their token in the URL (``/mcp/<token>``, ``?key=``), and nothing can tell a
token in a path from a name; the API shows it with query values redacted.
Values stored before sealing existed (plain text) are still read as they are.

After a secrets key rotation (``STOCKADE_SECRETS_KEYS_RETIRED``), values sealed under a
retired key still open; ``reseal`` (``stockade secrets reseal``) seals every stored value
anew under the current key - plain ones from before sealing too - so the retired key can
be dropped.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from supervisor.errors import StockadeError
from supervisor.secretbox import SecretBox
from supervisor.tools.mcp.store import McpServer, McpStore, PinnedTool, ToolDef

__all__ = ["SealedMcpStore", "foreign_secrets"]


def _bound_to(tenant_id: str, server: str, header: str) -> str:
    return f"mcp-header\x00{tenant_id}\x00{server}\x00{header}"


def _url_bound_to(tenant_id: str, server: str) -> str:
    return f"mcp-url\x00{tenant_id}\x00{server}"


class SealedMcpStore:
    def __init__(self, inner: McpStore, box: SecretBox) -> None:
        self.inner = inner
        self.box = box

    def __getattr__(self, name: str) -> Any:  # everything that carries no headers passes straight through
        return getattr(self.inner, name)

    def _seal(self, s: McpServer) -> McpServer:
        return dataclasses.replace(s, url=self.box.seal(s.url, _url_bound_to(s.tenant_id, s.name)), headers={
            k: self.box.seal(v, _bound_to(s.tenant_id, s.name, k)) for k, v in s.headers.items()})

    def _open(self, s: McpServer) -> McpServer:
        url = self.box.open(s.url, _url_bound_to(s.tenant_id, s.name)) if self.box.is_sealed(s.url) else s.url
        return dataclasses.replace(s, url=url, headers={
            k: self.box.open(v, _bound_to(s.tenant_id, s.name, k)) if self.box.is_sealed(v) else v
            for k, v in s.headers.items()})

    async def replace_secrets(self, old: McpServer, url: str, headers: dict[str, str]) -> bool:
        raise TypeError("SealedMcpStore re-seals stored values itself (reseal); it never stores them as given")

    async def reseal(self, tenant_id: str, *, plain_only: bool = False) -> tuple[int, int]:
        """Every server of the tenant whose URL or a header value is not sealed under the current key gets
        them sealed under it (compare-and-set: a server changed or removed meanwhile is left as it is, and
        counted as not re-sealed). (servers, re-sealed); ``secret.unreadable`` if no key opens a value.
        ``plain_only``: only values stored in plain (before sealing existed); sealed ones are not opened."""
        servers = await self.inner.list_servers(tenant_id)
        todo = []  # every value opened before any is written: one no key opens changes nothing of the tenant
        for s in servers:
            url = self._resealed(s.url, _url_bound_to(s.tenant_id, s.name), plain_only)
            headers = {k: self._resealed(v, _bound_to(s.tenant_id, s.name, k), plain_only) for k, v in s.headers.items()}
            if url is not None or any(v is not None for v in headers.values()):
                todo.append((s, s.url if url is None else url,
                             {k: s.headers[k] if v is None else v for k, v in headers.items()}))
        done = 0
        for s, url, new_headers in todo:
            if await self.inner.replace_secrets(s, url, new_headers):
                done += 1
        return len(servers), done

    def _resealed(self, stored: str, bound_to: str, plain_only: bool = False) -> str | None:
        """``stored`` sealed under the current key, or None if it is already (``plain_only``: if it is sealed)."""
        if not self.box.is_sealed(stored):
            return self.box.seal(stored, bound_to)
        return None if plain_only else self.box.reseal(stored, bound_to)

    async def create_server(self, server: McpServer, tools: list[ToolDef], approved_by: str | None) -> list[PinnedTool]:
        return await self.inner.create_server(self._seal(server), tools, approved_by)

    async def get_server(self, tenant_id: str, name: str) -> McpServer | None:
        s = await self.inner.get_server(tenant_id, name)
        return None if s is None else self._open(s)

    async def list_servers(self, tenant_id: str) -> list[McpServer]:
        return [self._open(s) for s in await self.inner.list_servers(tenant_id)]

    async def get_pinned(self, tenant_id: str, server: str, tool: str) -> tuple[McpServer, PinnedTool] | None:
        got = await self.inner.get_pinned(tenant_id, server, tool)
        return None if got is None else (self._open(got[0]), got[1])


SAMPLE = 8  # servers looked at by the start-up check: one that opens clears the keys


async def foreign_secrets(store: SealedMcpStore, tenant_ids: list[str]) -> str | None:
    """Start-up check of a node that generated its secrets key (supervisor/runtime.py): the tenant of the first
    sealed MCP secret no key of this node opens, if none of the first ``SAMPLE`` servers with sealed values
    opens (a node with a key of its own - its own data dir, no STOCKADE_SECRETS_KEY - failed every MCP call
    with ``secret.unreadable``, on that node only); None as soon as one opens, or when there is none to try."""
    first, tried = None, 0
    for tenant_id in tenant_ids:
        for s in await store.inner.list_servers(tenant_id):
            if not any(store.box.is_sealed(v) for v in (s.url, *s.headers.values())):
                continue
            try:
                store._open(s)
            except StockadeError as exc:
                if exc.code != "secret.unreadable":
                    raise
                first = first or tenant_id
            else:
                return None
            tried += 1
            if tried >= SAMPLE:
                return first
    return first
