"""The order language of the broker bundle, and the two spellings the broker and the policy rely on.

    buy 10 ACME @ 12.5
    sell 3 acme at 20.10 id=rebalance-7 broker=http://127.0.0.1:8700
    {"side": "buy", "symbol": "ACME", "qty": 10, "limit_price": "12.5", "client_order_id": "..."}
    orders | positions [broker=URL]

Standard library only; no I/O.
"""

import hashlib
import json
import re
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation

DEFAULT_BROKER = "http://127.0.0.1:8700"
CENT = Decimal("0.01")
_ORDER = re.compile(
    r"^\s*(?P<side>buy|sell)\s+(?P<qty>\d+)\s+(?P<symbol>[A-Za-z][A-Za-z0-9.]{0,9})\s*(?:@|at)\s*"
    r"(?P<price>\d+(?:\.\d+)?)(?P<opts>(?:\s+[a-z_]+=\S+)*)\s*$",
    re.I,
)
_QUERY = re.compile(r"^\s*(?P<what>orders|positions)(?P<opts>(?:\s+[a-z_]+=\S+)*)\s*$", re.I)
_CLIENT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}")
_PRICE = re.compile(r"\d{1,7}(\.\d{1,4})?")
USAGE = ("Place an order like 'buy 10 ACME @ 12.5' (optional: id=CLIENT_ORDER_ID broker=URL), "
         "or ask for 'orders' or 'positions'.")


class BadOrder(ValueError):
    pass


@dataclass(frozen=True)
class Order:
    side: str
    symbol: str
    qty: int
    limit_price: Decimal
    client_order_id: str | None  # None: derived by ``with_client_id``
    broker: str

    @property
    def notional(self):
        return (self.qty * self.limit_price).quantize(CENT, rounding=ROUND_HALF_UP)

    def with_client_id(self, scope):
        """Fill in a client order id derived from the order and ``scope`` (conversation or run)."""
        if self.client_order_id:
            return self
        canon = f"{scope}|{self.side}|{self.symbol}|{self.qty}|{self.limit_price.normalize()}"
        cid = "stk-" + hashlib.sha256(canon.encode()).hexdigest()[:24]
        return Order(self.side, self.symbol, self.qty, self.limit_price, cid, self.broker)

    def body(self):
        return {"symbol": self.symbol, "side": self.side, "qty": self.qty, "limit_price": str(self.limit_price),
                "client_order_id": self.client_order_id}

    def describe(self):
        return f"{self.side.upper()} {self.qty} {self.symbol} @ {self.limit_price} (notional {notional_text(self.notional)})"


def notional_text(value):
    """The one spelling of a notional the broker checks and policies match: digits, two decimals."""
    return f"{value.quantize(CENT, rounding=ROUND_HALF_UP):f}"


def _options(text):
    opts = {}
    for token in text.split():
        key, _, value = token.partition("=")
        if key.lower() not in ("id", "broker"):
            raise BadOrder(f"unknown option {key!r}")
        opts[key.lower()] = value
    return opts


def _broker(url):
    url = (url or DEFAULT_BROKER).rstrip("/")
    if not re.fullmatch(r"https?://[^\s/?#]+", url):
        raise BadOrder("broker= must be a base URL like http://127.0.0.1:8700")
    return url


def _make(side, symbol, qty, price, cid, broker):
    side = str(side).lower()
    if side not in ("buy", "sell"):
        raise BadOrder("side must be buy or sell")
    if not isinstance(qty, int) or isinstance(qty, bool) or not 0 < qty <= 1_000_000:
        raise BadOrder("the quantity must be a whole number from 1 to 1,000,000")
    price_text = price if isinstance(price, str) else repr(price)
    if not _PRICE.fullmatch(price_text):
        raise BadOrder("the limit price must be positive with at most 4 decimals")
    try:
        limit = Decimal(price_text)
    except InvalidOperation:
        raise BadOrder("the limit price is not a number") from None
    if limit <= 0:
        raise BadOrder("the limit price must be positive")
    if not isinstance(symbol, str) or not re.fullmatch(r"[A-Z][A-Z0-9.]{0,9}", symbol.upper()):
        raise BadOrder("the symbol must be 1-10 letters, digits or dots")
    if cid is not None and (not isinstance(cid, str) or not _CLIENT_ID.fullmatch(cid)):
        raise BadOrder("id= must be 1-64 characters of A-Z a-z 0-9 _ . : -")
    return Order(side, symbol.upper(), qty, limit, cid, _broker(broker))


def parse(text):
    """An ``Order``, or ``("orders" | "positions", broker_url)`` for a query. Raises ``BadOrder``."""
    s = text.strip()
    if s.startswith("{"):
        try:
            d = json.loads(s)
        except ValueError:
            raise BadOrder("the JSON order is not valid JSON") from None
        if not isinstance(d, dict):
            raise BadOrder("the JSON order must be an object")
        return _make(d.get("side"), d.get("symbol"), d.get("qty"), d.get("limit_price"),
                     d.get("client_order_id"), d.get("broker"))
    m = _QUERY.match(s)
    if m:
        return m.group("what").lower(), _broker(_options(m.group("opts")).get("broker"))
    m = _ORDER.match(s)
    if not m:
        raise BadOrder(USAGE)
    opts = _options(m.group("opts"))
    return _make(m.group("side"), m.group("symbol"), int(m.group("qty")), m.group("price"), opts.get("id"),
                 opts.get("broker"))
