"""``http.request``: governed HTTP egress (SSRF-safe: resolve, check, pin, re-check every redirect)."""

from __future__ import annotations

from typing import Any

from supervisor.tools.base import Tool
from supervisor.tools.http.tool import HttpRequestArgs, HttpRequestTool, RedirectGuard

__all__ = ["HttpRequestArgs", "HttpRequestTool", "RedirectGuard", "tools"]


def tools(settings: Any = None) -> list[Tool]:
    return [HttpRequestTool(settings)]
