import asyncio
import time

from stockade_sdk import ToolError


async def main(ctx):
    if ctx.input == "approval":
        # a call that waits for a human: the bundle gives up after 0.5 s
        try:
            await asyncio.wait_for(ctx.call("echo", n=50), 0.5)
            outcome = "returned"
        except TimeoutError:
            outcome = "timed out"
        await ctx.emit("custom", name="outcome", data={"outcome": outcome})
        # the connection still works: a call after the cancel is answered
        await ctx.emit("custom", name="after", data=await ctx.call("echo", n=1))
    elif ctx.input == "stream":
        got = []
        t0 = time.monotonic()
        async for chunk in ctx.llm.stream("tell me everything", model="openai/gpt-4.1-mini"):
            if "text" in chunk:
                got.append(chunk["text"])
            if len(got) == 2:
                break
        await ctx.emit("custom", name="broke", data={"got": got})
        await ctx.emit("custom", name="after", data=await ctx.call("echo", n=1))
        await ctx.emit("custom", name="took", data={"s": time.monotonic() - t0})
    else:
        try:
            await ctx.call("echo", n=1)
        except ToolError as exc:
            await ctx.emit("custom", name="error", data={"code": exc.code})
    await ctx.answer("done")
