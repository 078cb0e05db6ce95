"""Place limit orders on the demo broker through ``http.request``; a retried order is never placed twice.

Two locks against the duplicate trade, both keyed by the client order id:
- ``ctx.call(..., idempotency_key=...)``: Stockade itself returns the first
  result for a repeated key, without calling the broker again (a re-sent turn);
- the ``Idempotency-Key`` header / ``client_order_id``: the broker books an id
  once, so a retry after a lost response (504, timeout) gets the same order back.

Approval above a notional is the policy's job: every order carries its notional
in ``X-Order-Notional`` (the broker refuses a wrong one), and a
``require_approval`` rule matches it. See README.md.
"""

import asyncio
import json

import orders
from stockade_sdk import ToolError

ATTEMPTS = 3
RETRY_STATUS = {429, 502, 503, 504}
REFUSALS = {
    "approval.rejected": "rejected",
    "policy.denied": "denied",
    "idempotency.mismatch": "refused",
}


async def place(ctx, order):
    """POST the order, retrying lost responses; returns (status, broker order or None, detail)."""
    headers = {
        "Content-Type": "application/json",
        "Idempotency-Key": order.client_order_id,
        "X-Order-Notional": orders.notional_text(order.notional),
    }
    body = json.dumps(order.body(), separators=(",", ":"))
    for attempt in range(1, ATTEMPTS + 1):
        # A new Stockade key per attempt: attempt 1's recorded result (say a 504) must not be replayed to
        # attempt 2. The broker's own key stays the same, so attempt 2 cannot book a second order.
        key = f"broker-order:{order.client_order_id}" + ("" if attempt == 1 else f":retry{attempt}")
        try:
            resp = await ctx.call("http.request", idempotency_key=key, method="POST", url=order.broker + "/orders",
                                  headers=headers, body=body)
        except ToolError as exc:
            if exc.code in REFUSALS:
                return REFUSALS[exc.code], None, exc.message or exc.code
            if exc.retryable and attempt < ATTEMPTS:
                await ctx.status(f"the broker call failed ({exc.code}); retrying with the same client order id")
                await asyncio.sleep(0.2 * attempt)
                continue
            return "unknown", None, f"{exc.code}: {exc.message}"
        status = resp["status"]
        if status in RETRY_STATUS and attempt < ATTEMPTS:
            await ctx.status(f"the broker answered HTTP {status}; retrying with the same client order id")
            await asyncio.sleep(0.2 * attempt)
            continue
        data = _json(resp.get("body"))
        if status == 201 or (status == 200 and attempt > 1):
            return "placed", data, f"confirmed on attempt {attempt}" if attempt > 1 else ""
        if status == 200:
            return "duplicate", data, "the broker already had this client order id"
        if 400 <= status < 500:
            err = (data or {}).get("error") or {}
            return "refused", None, f"HTTP {status} {err.get('code', '')}: {err.get('message', '')}".strip()
        return "unknown", None, f"HTTP {status}"
    return "unknown", None, "no answer"  # unreachable: the last attempt always returns


def _json(text):
    try:
        return json.loads(text or "")
    except ValueError:
        return None


SENTENCES = {
    "placed": "Placed {oid}: {what}, status {state}.",
    "duplicate": "Not placed again: the broker already has this order as {oid} ({what}, status {state}).",
    "rejected": "Not placed: {what} was rejected by an approver ({detail}).",
    "denied": "Not placed: the policy does not allow {what} ({detail}).",
    "refused": "Not placed: {detail}.",
    "unknown": "The broker did not confirm {what} ({detail}); sending the same order again with "
               "id={cid} is safe - it cannot be booked twice.",
}


async def order_command(ctx, order):
    order = order.with_client_id(ctx.conversation_id or ctx.run_id)
    await ctx.status(f"placing {order.describe()}")
    status, data, detail = await place(ctx, order)
    data = data or {}
    await ctx.emit("custom", name="order", data={
        "status": status, "client_order_id": order.client_order_id, "order": data or None, "detail": detail,
    })
    sentence = SENTENCES[status].format(
        oid=data.get("id", "?"), what=order.describe(), state=data.get("status", "?"), detail=detail,
        cid=order.client_order_id,
    )
    await ctx.answer(f"{sentence} Client order id: {order.client_order_id}.")


async def query_command(ctx, what, broker):
    resp = await ctx.http.get(f"{broker}/{what}")
    rows = (_json(resp.get("body")) or {}).get("data") or []
    if resp["status"] != 200:
        await ctx.answer(f"The broker answered HTTP {resp['status']}.")
    elif not rows:
        await ctx.answer(f"No {what} yet.")
    elif what == "orders":
        await ctx.answer("\n".join(f"{o['id']}  {o['side']} {o['qty']} {o['symbol']} @ {o['limit_price']}  "
                                   f"{o['status']}  ({o['client_order_id']})" for o in rows))
    else:
        await ctx.answer("\n".join(f"{p['symbol']}: {p['qty']} (cost {p['cost']})" for p in rows))
    await ctx.emit("custom", name=what, data={"data": rows})


async def main(ctx):
    try:
        parsed = orders.parse(ctx.input)
    except orders.BadOrder as exc:
        await ctx.answer(str(exc) if str(exc) == orders.USAGE else f"{exc}. {orders.USAGE}")
        return
    if isinstance(parsed, tuple):
        await query_command(ctx, *parsed)
    else:
        await order_command(ctx, parsed)
