import asyncio
import time


async def main(ctx):
    n, wait = (ctx.input or "2000 1").split()
    await asyncio.sleep(float(wait))  # let the subscribers attach
    for i in range(int(n)):
        await ctx.emit("custom", name="tick", data={"i": i, "t": time.time(), "pad": "x" * 40})
        if i % 50 == 49:
            await asyncio.sleep(0)
