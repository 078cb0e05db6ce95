"""``storage.*``: tenant/user-scoped files with safe paths, a quota and rollback snapshots."""

from __future__ import annotations

from typing import Any

from supervisor.tools.base import Tool
from supervisor.tools.storage.tools import (
    StorageDeleteTool,
    StorageListTool,
    StorageReadTool,
    StorageRollbackTool,
    StorageWriteTool,
)

__all__ = [
    "StorageDeleteTool", "StorageListTool", "StorageReadTool", "StorageRollbackTool", "StorageWriteTool", "tools",
]


def tools(settings: Any = None) -> list[Tool]:
    return [StorageReadTool(), StorageWriteTool(), StorageListTool(), StorageDeleteTool(), StorageRollbackTool()]
