import time


async def main(ctx):
    await ctx.emit("custom", name="entered", data=time.time())
