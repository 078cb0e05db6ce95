"""The quarantine rule as pure functions, so both store adapters apply exactly the same one."""

from __future__ import annotations

import dataclasses

from supervisor.errors import StockadeError
from supervisor.tools.mcp.store import APPROVED, QUARANTINED, PinnedTool, ToolDef

__all__ = ["after_approve", "after_observe", "new_pin"]


def new_pin(tenant_id: str, server: str, tool: ToolDef, *, approved_by: str | None, now: float) -> PinnedTool:
    """A first sighting: approved when an admin registers the server, else quarantined."""
    d, h = tool.as_dict(), tool.hash
    if approved_by is not None:
        return PinnedTool(tenant_id, server, tool.name, d, h, APPROVED, now, approved_by)
    # Never approved: the pinned definition is a placeholder equal to pending; calls refuse it anyway.
    return PinnedTool(tenant_id, server, tool.name, d, h, QUARANTINED, now, None, d, h, now)


def after_observe(existing: PinnedTool, live: ToolDef, now: float) -> PinnedTool | None:
    """The row after seeing ``live``, or None if nothing changes."""
    h = live.hash
    if existing.status == APPROVED:
        if existing.def_hash == h:
            return None
        return dataclasses.replace(existing, status=QUARANTINED, pending_definition=live.as_dict(), pending_hash=h,
                                   changed_at=now)
    if existing.pending_hash == h:
        return None
    return dataclasses.replace(existing, pending_definition=live.as_dict(), pending_hash=h, changed_at=now)


def after_approve(existing: PinnedTool, key_id: str | None, expected_hash: str | None, now: float) -> PinnedTool | None:
    """The row after an admin approves it, or None if it is already approved (a no-op)."""
    if existing.status == APPROVED:
        if expected_hash is not None and expected_hash != existing.def_hash:
            raise StockadeError("conflict", f"{existing.full_name} is approved with another definition",
                                def_hash=existing.def_hash)
        return None
    pending, ph = existing.pending_definition, existing.pending_hash
    if pending is None or ph is None:  # cannot happen through observe; refuse rather than approve nothing
        raise StockadeError("conflict", f"{existing.full_name} has no pending definition to approve")
    if expected_hash is not None and expected_hash != ph:
        raise StockadeError("conflict", f"the pending definition of {existing.full_name} changed since it was reviewed",
                            pending_hash=ph)
    return dataclasses.replace(existing, definition=pending, def_hash=ph, status=APPROVED, pinned_at=now,
                               approved_by=key_id, pending_definition=None, pending_hash=None)
