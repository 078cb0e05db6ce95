import asyncio
import json

from stockade_sdk import ToolError


def expand(value):
    if isinstance(value, dict):
        if set(value) == {"$repeat"}:
            text, n = value["$repeat"]
            return text * n
        return {k: expand(v) for k, v in value.items()}
    if isinstance(value, list):
        return [expand(v) for v in value]
    return value


async def call(ctx, spec):
    for _ in range(50):  # a long plan meets the per-principal rate limit: wait as told, as a bundle should
        try:
            return await ctx.call(spec["tool"], idempotency_key=spec.get("key"), **expand(spec.get("args", {})))
        except ToolError as exc:
            if exc.code != "rate.limited":
                raise
            await asyncio.sleep(min(float(exc.extra.get("retry_after") or 0.05), 1.0))
    raise ToolError("rate.limited", "still rate limited after 50 tries")


async def one(ctx, spec):
    try:
        res = await call(ctx, spec)
        if isinstance(res, dict) and isinstance(res.get("content"), str) and len(res["content"]) > 200:
            res = {**res, "content": res["content"][:20] + "...", "content_len": len(res["content"])}
        return {"ok": res}
    except ToolError as exc:
        return {"error": exc.code, "message": exc.message, "extra": exc.extra}


async def main(ctx):
    plan = json.loads(ctx.input)
    if plan.get("concurrent"):
        results = await asyncio.gather(*(one(ctx, s) for s in plan["calls"]))
    else:
        results = [await one(ctx, s) for s in plan["calls"]]
    await ctx.emit("custom", name="results", data=results)
    await ctx.answer(json.dumps(results))
