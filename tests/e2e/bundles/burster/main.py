async def main(ctx):
    n = int(ctx.input)
    for i in range(n):
        await ctx.emit("custom", name="burst", data={"i": i, "pad": "x" * 400})
    await ctx.answer("done")
