import json


async def main(ctx):
    await ctx.answer(json.dumps({
        "conversation_id": ctx.conversation_id,
        "turns": [[t.get("role"), str(t.get("content"))[:40], len(str(t.get("content")))] for t in ctx.history],
    }))
