def helper(x):
    return {}[x]


async def main(ctx):
    await ctx.answer("about to fail")
    helper("missing-key")
