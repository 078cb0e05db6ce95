"""The demo broker's order book: validation, dedupe on the client order id, fills, positions.

Plain Python (no web framework), in memory, single event loop: ``place`` has
no ``await`` inside, so two requests for the same client order id can never
both book.

Decisions:
- The dedupe key is the client order id (``client_order_id`` in the body, or
  the ``Idempotency-Key`` header when the body has none; both given must
  agree). A repeat of the same order returns the first order, never books
  again; the same id with a different order is refused (409).
- Limit orders only, filled at once at the limit price: a demo needs a fill,
  not a market simulation.
- ``X-Order-Notional``, when sent, must equal ``qty * limit_price`` written
  with exactly two decimals (``notional_text``). Policies can only compare that
  header as text, so the broker makes sure the text tells the truth.
"""

from __future__ import annotations

import re
import secrets
import time
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import Any

__all__ = ["Book", "Order", "OrderRejected", "OrderRequest", "notional_text", "parse_order"]

_SYMBOL = re.compile(r"[A-Z][A-Z0-9.]{0,9}")
_CLIENT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}")
_PRICE = re.compile(r"\d{1,7}(\.\d{1,4})?")
MAX_QTY = 1_000_000
CENT = Decimal("0.01")


class OrderRejected(Exception):
    """An order the broker will not book. ``status`` is the HTTP status, ``code`` a stable name."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message

    def to_json(self) -> dict[str, Any]:
        return {"error": {"code": self.code, "message": self.message}}


@dataclass(frozen=True)
class OrderRequest:
    client_order_id: str
    symbol: str
    side: str
    qty: int
    limit_price: Decimal

    @property
    def notional(self) -> Decimal:
        return (self.qty * self.limit_price).quantize(CENT, rounding=ROUND_HALF_UP)


@dataclass(frozen=True)
class Order:
    id: str
    request: OrderRequest
    status: str
    created_at: float

    def to_json(self) -> dict[str, Any]:
        r = self.request
        return {
            "id": self.id, "client_order_id": r.client_order_id, "symbol": r.symbol, "side": r.side,
            "qty": r.qty, "limit_price": str(r.limit_price), "notional": notional_text(r.notional),
            "filled_qty": r.qty, "filled_avg_price": str(r.limit_price), "status": self.status,
            "created_at": self.created_at,
        }


def notional_text(value: Decimal) -> str:
    """The one spelling of a notional: plain digits, exactly two decimals (``12500.00``)."""
    return f"{value.quantize(CENT, rounding=ROUND_HALF_UP):f}"


def _price(raw: Any) -> Decimal:
    if isinstance(raw, bool) or not isinstance(raw, str | int | float):
        raise OrderRejected(422, "invalid_order", "limit_price must be a number or a decimal string")
    text = raw if isinstance(raw, str) else repr(raw)
    if not _PRICE.fullmatch(text):
        raise OrderRejected(422, "invalid_order", "limit_price must be positive with at most 4 decimals")
    try:
        value = Decimal(text)
    except InvalidOperation:
        raise OrderRejected(422, "invalid_order", "limit_price is not a number") from None
    if value <= 0:
        raise OrderRejected(422, "invalid_order", "limit_price must be positive")
    return value


def parse_order(body: Any, idempotency_key: str | None, declared_notional: str | None) -> OrderRequest:
    """Validate one ``POST /orders`` body (already JSON-decoded) with its headers."""
    if not isinstance(body, dict):
        raise OrderRejected(422, "invalid_order", "the body must be a JSON object")
    unknown = set(body) - {"symbol", "side", "qty", "limit_price", "client_order_id"}
    if unknown:
        raise OrderRejected(422, "invalid_order", f"unknown fields: {', '.join(sorted(unknown))}")
    cid = body.get("client_order_id", idempotency_key)
    if idempotency_key is not None and cid != idempotency_key:
        raise OrderRejected(422, "idempotency_key_mismatch", "Idempotency-Key and client_order_id differ")
    if not isinstance(cid, str) or not _CLIENT_ID.fullmatch(cid):
        raise OrderRejected(422, "invalid_order", "client_order_id (or Idempotency-Key) is required: 1-64 of A-Za-z0-9_.:-")
    symbol = body.get("symbol")
    if not isinstance(symbol, str) or not _SYMBOL.fullmatch(symbol.upper()):
        raise OrderRejected(422, "invalid_order", "symbol must be 1-10 letters, digits or dots, starting with a letter")
    side = body.get("side")
    if side not in ("buy", "sell"):
        raise OrderRejected(422, "invalid_order", "side must be 'buy' or 'sell'")
    qty = body.get("qty")
    if isinstance(qty, bool) or not isinstance(qty, int) or not 0 < qty <= MAX_QTY:
        raise OrderRejected(422, "invalid_order", f"qty must be a whole number from 1 to {MAX_QTY}")
    req = OrderRequest(cid, symbol.upper(), side, qty, _price(body.get("limit_price")))
    if declared_notional is not None and declared_notional != notional_text(req.notional):
        raise OrderRejected(
            422, "notional_mismatch",
            f"X-Order-Notional says {declared_notional[:32]!r} but qty * limit_price is {notional_text(req.notional)}",
        )
    return req


@dataclass
class _Position:
    qty: int = 0
    cost: Decimal = Decimal(0)


@dataclass
class Book:
    """All state of one broker process. ``lose_responses``: how many newly booked orders answer 504 anyway."""

    orders: list[Order] = field(default_factory=list)
    by_client_id: dict[str, Order] = field(default_factory=dict)
    positions: dict[str, _Position] = field(default_factory=dict)
    order_requests: int = 0  # every POST /orders that reached the book, replays and refusals included
    replays: int = 0
    lose_responses: int = 0

    def place(self, req: OrderRequest) -> tuple[Order, bool]:
        """Book ``req`` once. Returns ``(order, created)``; a repeat returns the first order with ``created=False``."""
        existing = self.by_client_id.get(req.client_order_id)
        if existing is not None:
            if existing.request != req:
                raise OrderRejected(
                    409, "client_order_id_reused",
                    f"client_order_id {req.client_order_id} was already used for a different order ({existing.id})",
                )
            self.replays += 1
            return existing, False
        order = Order(id=f"ord_{secrets.token_hex(6)}", request=req, status="filled", created_at=time.time())
        self.orders.append(order)
        self.by_client_id[req.client_order_id] = order
        pos = self.positions.setdefault(req.symbol, _Position())
        sign = 1 if req.side == "buy" else -1
        pos.qty += sign * req.qty
        pos.cost += sign * req.qty * req.limit_price
        return order, True

    def take_lost_response(self) -> bool:
        """True when this fresh booking should answer as if the gateway timed out (fault injection)."""
        if self.lose_responses > 0:
            self.lose_responses -= 1
            return True
        return False

    def positions_json(self) -> list[dict[str, Any]]:
        return [
            {"symbol": s, "qty": p.qty, "cost": notional_text(p.cost)}
            for s, p in sorted(self.positions.items()) if p.qty or p.cost
        ]
