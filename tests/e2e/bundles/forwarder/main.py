async def main(ctx):
    messages = [*ctx.history, {"role": "user", "content": ctx.input}]
    result = await ctx.call("echo", messages=messages)
    await ctx.answer(f"forwarded {len(result['messages'])} messages")
