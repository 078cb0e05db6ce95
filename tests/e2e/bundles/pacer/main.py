import asyncio
import json

from stockade_sdk import ToolError


async def main(ctx):
    plan = json.loads(ctx.input or "{}")
    after, pause, report = plan.get("after", 3), plan.get("pause", 0.05), plan.get("report", True)
    need_refusal = plan.get("need_refusal", True)  # else: ends after `after` calls in a row that passed
    refused, ok_since, i = [], 0, 0
    loop = asyncio.get_running_loop()
    end = loop.time() + plan.get("max_s", 90)
    while loop.time() < end:
        i += 1
        try:
            await ctx.call("echo", i=i)
            ok_since += 1
        except ToolError as exc:
            refused.append(exc.code)
            ok_since = 0
            if report:  # an event of the run: a store cut while it is stored ends the run (fail closed)
                await ctx.emit("custom", name="refused", data={"i": i, "code": exc.code})
        if (refused or not need_refusal) and ok_since >= after:
            break
        await asyncio.sleep(pause)
    await ctx.answer(json.dumps({"calls": i, "refused": refused}))
