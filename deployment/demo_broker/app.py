"""The demo broker's HTTP surface (Starlette): orders, positions, and one fault-injection knob.

    POST /orders      {symbol, side, qty, limit_price, client_order_id}  -> 201 order
                      a repeat of a client order id -> 200, the same order, Idempotent-Replayed: true
    GET  /orders      {"data": [order, ...]}           GET /orders/{id} -> order
    GET  /positions   {"data": [{symbol, qty, cost}]}
    GET  /healthz
    POST /admin/faults {"lose_responses": N}  the next N new orders are booked but answered 504,
                      like a gateway that timed out after the trade went through
"""

from __future__ import annotations

import json
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from deployment.demo_broker.book import Book, OrderRejected, parse_order

__all__ = ["build_app"]

MAX_BODY = 16 * 1024


def _error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse(OrderRejected(status, code, message).to_json(), status_code=status)


def _single_header(request: Request, name: str) -> str | None:
    values = request.headers.getlist(name)
    if len(values) > 1:  # two spellings of one header could show a policy one value and us another
        raise OrderRejected(400, "duplicate_header", f"{name} was sent more than once")
    return values[0] if values else None


async def _json_body(request: Request) -> Any:
    raw = await request.body()
    if len(raw) > MAX_BODY:
        raise OrderRejected(413, "too_large", f"the body is larger than {MAX_BODY} bytes")
    try:
        return json.loads(raw)
    except ValueError:
        raise OrderRejected(400, "invalid_json", "the body is not JSON") from None


def build_app(book: Book | None = None) -> Starlette:
    """The ASGI app over ``book`` (a fresh one if not given); ``app.state.book`` exposes it."""
    book = book if book is not None else Book()

    async def place_order(request: Request) -> JSONResponse:
        book.order_requests += 1
        try:
            body = await _json_body(request)
            req = parse_order(body, _single_header(request, "idempotency-key"),
                              _single_header(request, "x-order-notional"))
            order, created = book.place(req)
        except OrderRejected as exc:
            return JSONResponse(exc.to_json(), status_code=exc.status)
        if created and book.take_lost_response():
            return _error(504, "gateway_timeout", "the upstream venue did not answer in time")
        if created:
            return JSONResponse(order.to_json(), status_code=201, headers={"Location": f"/orders/{order.id}"})
        return JSONResponse(order.to_json(), status_code=200, headers={"Idempotent-Replayed": "true"})

    async def list_orders(request: Request) -> JSONResponse:
        return JSONResponse({"data": [o.to_json() for o in book.orders]})

    async def get_order(request: Request) -> JSONResponse:
        oid = request.path_params["order_id"]
        for o in book.orders:
            if o.id == oid:
                return JSONResponse(o.to_json())
        return _error(404, "not_found", f"no order {oid}")

    async def positions(request: Request) -> JSONResponse:
        return JSONResponse({"data": book.positions_json()})

    async def faults(request: Request) -> JSONResponse:
        try:
            body = await _json_body(request)
        except OrderRejected as exc:
            return JSONResponse(exc.to_json(), status_code=exc.status)
        n = body.get("lose_responses") if isinstance(body, dict) else None
        if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n <= 1000:
            return _error(422, "invalid_fault", "lose_responses must be a whole number from 0 to 1000")
        book.lose_responses = n
        return JSONResponse({"lose_responses": n})

    async def healthz(request: Request) -> JSONResponse:
        return JSONResponse({"ok": True, "orders": len(book.orders)})

    app = Starlette(routes=[
        Route("/orders", place_order, methods=["POST"]),
        Route("/orders", list_orders, methods=["GET"]),
        Route("/orders/{order_id}", get_order, methods=["GET"]),
        Route("/positions", positions, methods=["GET"]),
        Route("/admin/faults", faults, methods=["POST"]),
        Route("/healthz", healthz, methods=["GET"]),
    ])
    app.state.book = book
    return app
