async def main(ctx):
    await ctx.answer("calling")
    res = await ctx.call("code.run", code="import time\ntime.sleep(%s)\nprint('slept')" % ctx.input, timeout_s=30)
    await ctx.answer(" " + res["stdout"].strip())
