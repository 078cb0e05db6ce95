"""The bundle SDK: what ``async def main(ctx)`` gets. Standard library only.

    async def main(ctx):
        await ctx.thinking("looking it up")
        r = await ctx.call("echo", text=ctx.input)
        await ctx.answer(r["text"])
"""

from .context import Context, ToolError

__all__ = ["Context", "ToolError"]
