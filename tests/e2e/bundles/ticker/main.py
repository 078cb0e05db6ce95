import asyncio
import json


async def main(ctx):
    plan = json.loads(ctx.input or "{}")
    await asyncio.sleep(float(plan.get("wait", 0)))
    for i in range(int(plan.get("n", 10))):
        await ctx.answer(f"{i} ")
