import asyncio


async def main(ctx):
    await ctx.answer("started")
    await asyncio.sleep(float(ctx.input or "60"))
    await ctx.answer(" woke")
