"""``storage.read/write/list/delete/rollback``: tenant- and user-scoped files.

Scope: ``user`` (``u/<user_id>``, the default when the run has a user) or
``shared`` (every user of the tenant; the default when it has none). The
tenant comes from the run's binding, never from the arguments. The policy
matches ``storage://u/<user>/<path>`` / ``storage://shared/<path>`` built from
the *resolved* path (see ``supervisor.resources.paths``).

File work is blocking and runs in a worker thread.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field

from supervisor.errors import StockadeError
from supervisor.resources.paths import MAX_KEY_CHARS, storage_resource
from supervisor.tools.base import ToolArgs, ToolContext, ToolResult
from supervisor.tools.storage._area import Located, TenantArea
from supervisor.wire import MAX_REPLY

__all__ = [
    "StorageDeleteTool", "StorageListTool", "StoragePathArgs", "StorageReadTool", "StorageRollbackTool",
    "StorageWriteArgs", "StorageWriteTool",
]

Scope = Literal["user", "shared"]


class StoragePathArgs(ToolArgs):
    path: str = Field(max_length=MAX_KEY_CHARS)
    scope: Scope | None = None


class StorageListArgs(ToolArgs):
    path: str = Field("", max_length=MAX_KEY_CHARS)
    scope: Scope | None = None


class StorageWriteArgs(ToolArgs):
    path: str = Field(max_length=MAX_KEY_CHARS)
    content: str
    scope: Scope | None = None


def _scope_key(args: Any, ctx: ToolContext) -> tuple[str, str | None]:
    """("u/<user>", user) or ("shared", None)."""
    scope = args.scope or ("user" if ctx.user_id else "shared")
    if scope == "user":
        if not ctx.user_id:
            raise StockadeError("input.invalid", "scope 'user' needs a run started by a user; use scope 'shared'")
        return f"u/{ctx.user_id}", ctx.user_id
    return "shared", None


def content_cap(settings: Any) -> int:
    """The largest file content ``storage.write`` stores and ``storage.read`` returns: the same bound, so
    that whatever was written can be read back. A write's content arrives in one frame from the sandbox
    (``sandbox_max_frame_bytes``); a read's comes back in one reply (``MAX_REPLY`` or the frame cap, if
    higher), in JSON, where a control character takes 6 bytes (``\u0001``) - so at most a sixth of it."""
    frame = int(settings.sandbox_max_frame_bytes)
    return max(1024, min(frame, max(frame, MAX_REPLY) // 6))


def _area(ctx: ToolContext) -> TenantArea:
    s = ctx.services.settings
    return TenantArea(Path(s.data_dir), ctx.tenant_id, int(s.storage_quota_mb) * 1024 * 1024)


class _StorageTool:
    risk: ClassVar[str] = "low"
    default_price_micro: ClassVar[int] = 0  # local disk; operators price it in the policy if they wish
    timeout_s: ClassVar[float] = 30.0
    side_effects: ClassVar[bool] = False
    _allow_root: ClassVar[bool] = False

    def __init__(self, settings: Any = None) -> None:
        pass

    def _locate(self, args: Any, ctx: ToolContext) -> Located:
        scope, _user = _scope_key(args, ctx)
        return _area(ctx).locate(scope, args.path, allow_root=self._allow_root)

    def resource(self, args: ToolArgs, ctx: ToolContext) -> str | None:
        _scope, user = _scope_key(args, ctx)
        return self._resource_of(ctx.tenant_id, user, self._locate(args, ctx).rel)

    @staticmethod
    def _resource_of(tenant: str, user: str | None, rel: Any) -> str:
        return storage_resource(tenant, user, rel)

    def _locate_checked(self, args: Any, ctx: ToolContext) -> Located:
        """Resolve again for the run and insist on the resource the policy judged: a link swapped
        between the check and the use (another call of the run racing this one) must not move the
        call to a path the policy never saw."""
        loc = self._locate(args, ctx)
        checked = getattr(ctx.call, "resource", None)
        if checked is not None:
            _scope, user = _scope_key(args, ctx)
            if self._resource_of(ctx.tenant_id, user, loc.rel) != checked:
                raise StockadeError("storage.escape", "the storage path resolves elsewhere than when the policy checked it")
        return loc

    def estimate_micro(self, args: ToolArgs, ctx: ToolContext) -> int | None:
        return None

    @staticmethod
    def _out(loc: Located, **extra: Any) -> dict[str, Any]:
        return {"path": loc.rel, "scope": "shared" if loc.scope == "shared" else "user", **extra}


class StorageReadTool(_StorageTool):
    name: ClassVar[str] = "storage.read"
    args_model: ClassVar[type[ToolArgs]] = StoragePathArgs

    async def run(self, args: ToolArgs, ctx: ToolContext) -> ToolResult:
        area, loc = _area(ctx), self._locate_checked(args, ctx)
        data = await asyncio.to_thread(area.read, loc, content_cap(ctx.services.settings))
        return ToolResult(self._out(loc, content=data.decode("utf-8", errors="replace"), size=len(data)))


class StorageWriteTool(_StorageTool):
    name: ClassVar[str] = "storage.write"
    args_model: ClassVar[type[ToolArgs]] = StorageWriteArgs
    risk: ClassVar[str] = "medium"
    side_effects: ClassVar[bool] = True

    async def run(self, args: ToolArgs, ctx: ToolContext) -> ToolResult:
        assert isinstance(args, StorageWriteArgs)
        area, loc = _area(ctx), self._locate_checked(args, ctx)
        try:
            data = args.content.encode("utf-8")
        except UnicodeEncodeError:
            raise StockadeError("input.invalid", "content is not valid Unicode text (lone surrogate)") from None
        cap = content_cap(ctx.services.settings)
        if len(data) > cap:  # refused before anything is touched: a file storage.read could never return
            raise StockadeError("input.too_large", f"content is {len(data)} bytes (UTF-8); files are capped at {cap}")
        created = await asyncio.to_thread(area.write, loc, data)
        return ToolResult(self._out(loc, size=len(data), created=created), usage={"bytes_written": len(data)})


class StorageListTool(_StorageTool):
    name: ClassVar[str] = "storage.list"
    args_model: ClassVar[type[ToolArgs]] = StorageListArgs
    _allow_root: ClassVar[bool] = True

    @staticmethod
    def _resource_of(tenant: str, user: str | None, rel: Any) -> str:
        """A listing reads what is *in* the folder: ``storage://shared/secret/``, which a rule for
        ``storage://shared/secret/**`` covers, as it covers the files in it (``storage://shared/secret``
        matched no such rule: a deny of the files still listed their names and sizes). The root was
        ``storage://shared/`` already."""
        res = storage_resource(tenant, user, rel)
        return res if res.endswith("/") else res + "/"

    async def run(self, args: ToolArgs, ctx: ToolContext) -> ToolResult:
        area, loc = _area(ctx), self._locate_checked(args, ctx)
        entries, truncated = await asyncio.to_thread(area.list, loc)
        return ToolResult(self._out(loc, entries=entries, truncated=truncated))


class StorageDeleteTool(_StorageTool):
    name: ClassVar[str] = "storage.delete"
    args_model: ClassVar[type[ToolArgs]] = StoragePathArgs
    risk: ClassVar[str] = "medium"
    side_effects: ClassVar[bool] = True

    async def run(self, args: ToolArgs, ctx: ToolContext) -> ToolResult:
        area, loc = _area(ctx), self._locate_checked(args, ctx)
        await asyncio.to_thread(area.delete, loc)
        return ToolResult(self._out(loc, deleted=True))


class StorageRollbackTool(_StorageTool):
    name: ClassVar[str] = "storage.rollback"
    args_model: ClassVar[type[ToolArgs]] = StoragePathArgs
    risk: ClassVar[str] = "medium"
    side_effects: ClassVar[bool] = True
    repeats_are_new: ClassVar[bool] = True  # a second rollback undoes one more step: never a duplicate

    async def run(self, args: ToolArgs, ctx: ToolContext) -> ToolResult:
        area, loc = _area(ctx), self._locate_checked(args, ctx)
        outcome = await asyncio.to_thread(area.rollback, loc)
        return ToolResult(self._out(loc, outcome=outcome))
