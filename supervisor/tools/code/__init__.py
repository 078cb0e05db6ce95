"""``code.run``: code an LLM wrote, run in a second, stricter sandbox with no socket at all."""

from supervisor.tools.code.tool import CodeRunTool

__all__ = ["CodeRunTool", "tools"]


def tools(settings=None) -> list:
    return [CodeRunTool()]
