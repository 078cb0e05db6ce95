"""``kb.add`` / ``kb.search`` / ``kb.delete``: tenant-scoped full-text knowledge base."""

from __future__ import annotations

from typing import Any

from supervisor.tools.base import Tool
from supervisor.tools.kb.tools import KbAddArgs, KbAddTool, KbDeleteArgs, KbDeleteTool, KbSearchArgs, KbSearchTool

__all__ = ["KbAddArgs", "KbAddTool", "KbDeleteArgs", "KbDeleteTool", "KbSearchArgs", "KbSearchTool", "tools"]


def tools(settings: Any = None) -> list[Tool]:
    return [KbAddTool(), KbSearchTool(), KbDeleteTool()]
