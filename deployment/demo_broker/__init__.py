"""A small demo broker for the ``broker`` example bundle: in memory, idempotent order placement.

    python -m deployment.demo_broker --port 8700

Tests run it in their own event loop with ``running_broker()``. See README.md.
"""

from deployment.demo_broker.app import build_app
from deployment.demo_broker.book import Book, Order, OrderRejected, OrderRequest, notional_text, parse_order
from deployment.demo_broker.server import RunningBroker, running_app, running_broker

__all__ = [
    "Book", "Order", "OrderRejected", "OrderRequest", "RunningBroker", "build_app", "notional_text", "parse_order",
    "running_app", "running_broker",
]
