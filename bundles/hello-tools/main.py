"""Calls the governed ``echo`` tool, shows its result as a custom event, then answers."""


async def main(ctx):
    result = await ctx.call("echo", greeting="hello", n=1)
    await ctx.emit("custom", name="greeting", data=result)
    await ctx.answer(f"The echo tool said {result['greeting']!r} {result['n']} time(s).")
