async def main(ctx):
    await ctx.answer("calling")
    res = await ctx.call("code.run", code=f"import time\ntime.sleep({float(ctx.input)})\nprint('slept')", timeout_s=30)
    await ctx.answer(" " + res["stdout"].strip())
