import time


async def main(ctx):
    n = int(ctx.input or "1000")
    samples = []
    for i in range(n):
        t0 = time.perf_counter()
        await ctx.call("echo", i=i)
        samples.append(time.perf_counter() - t0)
    await ctx.emit("custom", name="samples", data=samples)
