async def main(ctx):
    mode = ctx.input
    if mode == "raise":
        raise ValueError("bad\x00value")
    await ctx.emit("custom", name="n\x00", data={"s": "a\x00b", "k\x00": ["\x00"], "kept": "\\u0000"})
    await ctx.emit("status", text="st\x00atus")
    await ctx.answer("an\x00swer")
