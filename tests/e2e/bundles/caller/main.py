import asyncio
import json

from stockade_sdk import ToolError


async def one(ctx, spec):
    try:
        if spec.get("helper"):  # a typed SDK helper, e.g. "kb.delete" -> ctx.kb.delete(**args)
            group, method = spec["helper"].split(".")
            return {"ok": await getattr(getattr(ctx, group), method)(**spec.get("args", {}))}
        if spec.get("meta"):
            return {"meta": await ctx.call_meta(spec["tool"], idempotency_key=spec.get("key"), **spec.get("args", {}))}
        res = await ctx.call(spec["tool"], idempotency_key=spec.get("key"), **spec.get("args", {}))
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
