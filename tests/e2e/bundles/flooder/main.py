async def main(ctx):
    chunk = "x" * 60000
    while True:
        await ctx.answer(chunk)
