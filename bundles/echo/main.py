"""Streams the user's input back word by word on the answer channel."""


async def main(ctx):
    for word in ctx.input.split():
        await ctx.answer(word + " ")
