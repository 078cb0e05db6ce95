"""The broker bundle against the demo broker: an order is booked once however it is retried, and an order
above the policy's notional threshold waits for a human (both stacks, real HTTP, real sandboxes)."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from deployment.demo_broker import Book, OrderRejected, parse_order, running_broker
from deployment.demo_broker.app import build_app
from tests.e2e.harness import SSE, collect, make_data_dir, read_sse, settings_for, start_node

TERMINAL = {"run.completed", "run.failed", "run.canceled", "run.timed_out"}

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
async def node(stack_kind, stores):
    """A node that may reach 127.0.0.0/8 (where the demo broker listens) and has no LLM configured."""
    settings = settings_for(stack_kind, make_data_dir(), **stores, egress_allow_private=["127.0.0.0/8"],
                            openai_api_key=None, openai_base_url=None, anthropic_api_key=None, anthropic_base_url=None)
    n = await start_node(settings)
    try:
        yield n
    finally:
        await n.stop()


@pytest.fixture
async def broker():
    async with running_broker() as b:
        yield b


def broker_policy(url: str, *, approval_from_digits: int | None = 5) -> str:
    """The README's policy: POST /orders allowed below the threshold, require_approval from it on.
    ``approval_from_digits`` = 5 means 10,000.00 and up (five integer digits or more)."""
    approval = "" if approval_from_digits is None else f"""
  - id: broker.big-orders
    tool: http.request
    resource: "{url}/orders"
    when:
      args.method: {{eq: POST}}
      args.headers.X-Order-Notional: {{matches: '^[1-9][0-9]{{{approval_from_digits - 1},}}\\.[0-9]{{2}}$'}}
    verdict: require_approval
    reason: orders of 10,000.00 or more need a human"""
    below = "[1-9][0-9]*" if approval_from_digits is None else f"[1-9][0-9]{{0,{approval_from_digits - 2}}}"
    return f"""version: 1
rules:{approval}
  - id: broker.orders
    tool: http.request
    resource: "{url}/orders"
    when:
      args.method: {{eq: POST}}
      args.headers.X-Order-Notional: {{matches: '^(0|{below})\\.[0-9]{{2}}$'}}
    verdict: allow
  - id: broker.read
    tool: http.request
    resource: ["{url}/orders", "{url}/positions"]
    when: {{args.method: {{eq: GET}}}}
    verdict: allow
"""


async def tenant_with_policy(node, policy: str | None):
    _, key = await node.tenant()
    c = node.client(key)
    if policy is not None:
        r = await c.put("/v1/policy", content=policy.encode())
        assert r.status_code == 200, r.text
    return c


async def start(c, text: str, **extra: Any) -> str:
    r = await c.post("/v1/runs", json={"bundle": "broker", "input": text, **extra})
    assert r.status_code == 201, r.text
    return r.json()["id"]


async def finish(c, run_id: str, after: int | None = None) -> list[SSE]:
    events = await collect(c, run_id, after=after)
    assert sum(e.event in TERMINAL for e in events) == 1
    assert events[-1].event == "run.completed", events[-1].data
    return events


def answer(events: list[SSE]) -> str:
    return "".join(e.data["text"] for e in events if e.event == "message.delta" and e.data["channel"] == "answer")


def order_event(events: list[SSE]) -> dict[str, Any]:
    (data,) = [e.data["data"] for e in events if e.event == "custom" and e.data["name"] == "order"]
    return data


def http_results(events: list[SSE]) -> list[dict[str, Any]]:
    return [e.data for e in events if e.event == "tool.result" and e.data["tool"] == "http.request"]


async def until_approval(c, run_id: str) -> tuple[int, dict[str, Any]]:
    """Read the run's stream up to its approval request (event-driven, no polling)."""
    async for e in read_sse(c, f"/v1/runs/{run_id}/events"):
        assert e.event not in TERMINAL, e.data
        if e.event == "approval.requested":
            return e.id or 0, e.data
    raise AssertionError("the stream ended without an approval request")


# --------------------------------------------------------------------------------- idempotency


async def test_a_lost_response_is_retried_without_a_second_trade(node, broker):
    c = await tenant_with_policy(node, broker_policy(broker.url))
    broker.book.lose_responses = 1  # the first order is booked, but its answer is a 504
    events = await finish(c, await start(c, f"buy 10 ACME @ 12.5 broker={broker.url}"))

    assert len(broker.book.orders) == 1 and broker.book.order_requests == 2 and broker.book.replays == 1
    booked = broker.book.orders[0].to_json()
    got = order_event(events)
    assert got["status"] == "placed" and got["order"]["id"] == booked["id"]
    assert got["client_order_id"] == booked["client_order_id"] and got["detail"] == "confirmed on attempt 2"
    assert [r["verdict"] for r in http_results(events)] == ["allow", "allow"]
    assert f"Placed {booked['id']}: BUY 10 ACME @ 12.5 (notional 125.00)" in answer(events)
    async with httpx.AsyncClient(base_url=broker.url) as direct:
        assert (await direct.get("/positions")).json() == {"data": [{"symbol": "ACME", "qty": 10, "cost": "125.00"}]}


async def test_a_resent_order_is_answered_by_stockade_without_calling_the_broker(node, broker):
    c = await tenant_with_policy(node, broker_policy(broker.url))
    text = f"buy 5 ACME @ 10 id=rebalance-1 broker={broker.url}"
    first = await finish(c, await start(c, text, conversation_id="a"))
    again = await finish(c, await start(c, text, conversation_id="b"))  # the client sent the turn again
    assert order_event(first)["status"] == order_event(again)["status"] == "placed"
    assert order_event(first)["order"] == order_event(again)["order"]
    assert [r["deduped"] for r in http_results(again)] == [True]
    assert broker.book.order_requests == 1 and len(broker.book.orders) == 1

    other = await finish(c, await start(c, f"buy 6 ACME @ 10 id=rebalance-1 broker={broker.url}"))
    got = order_event(other)
    assert got["status"] == "refused" and got["order"] is None
    assert http_results(other)[0]["code"] == "idempotency.mismatch"
    assert broker.book.order_requests == 1 and len(broker.book.orders) == 1


async def test_without_a_policy_for_the_broker_nothing_is_sent(node, broker):
    c = await tenant_with_policy(node, None)  # the shipped default: no egress at all
    events = await finish(c, await start(c, f"buy 1 ACME @ 1 broker={broker.url}"))
    assert order_event(events)["status"] == "denied"
    assert answer(events).startswith("Not placed: the policy does not allow BUY 1 ACME @ 1")
    assert broker.book.order_requests == 0


# ------------------------------------------------------------------------------------ approvals


async def test_an_order_above_the_threshold_waits_for_approval(node, broker):
    c = await tenant_with_policy(node, broker_policy(broker.url))
    small = await finish(c, await start(c, f"buy 100 ACME @ 99.99 broker={broker.url}"))  # 9,999.00: no human
    assert order_event(small)["status"] == "placed" and not [e for e in small if e.event.startswith("approval.")]

    run_id = await start(c, f"buy 1000 ACME @ 12.5 broker={broker.url}")  # 12,500.00
    seq, requested = await until_approval(c, run_id)
    assert requested["rule_id"] == "broker.big-orders" and requested["tool"] == "http.request"
    assert requested["args"]["headers"]["X-Order-Notional"] == "12500.00"
    assert (await c.get(f"/v1/runs/{run_id}")).json()["status"] == "waiting_approval"
    pending = (await c.get("/v1/approvals", params={"status": "pending"})).json()["data"]
    assert [a["id"] for a in pending] == [requested["approval_id"]]
    assert len(broker.book.orders) == 1, "nothing is sent before the decision"
    r = await c.post(f"/v1/approvals/{pending[0]['id']}/decision", json={"decision": "approve"})
    assert r.status_code == 200 and r.json()["status"] == "approved"
    events = await finish(c, run_id, after=seq)
    resolved = [e.data for e in events if e.event == "approval.resolved"]
    assert [x["decision"] for x in resolved] == ["approved"]
    assert order_event(events)["status"] == "placed" and len(broker.book.orders) == 2
    assert broker.book.orders[-1].to_json()["notional"] == "12500.00"

    run_id = await start(c, f"sell 2000 ACME @ 12.5 broker={broker.url}")
    seq, requested = await until_approval(c, run_id)
    r = await c.post(f"/v1/approvals/{requested['approval_id']}/decision",
                     json={"decision": "reject", "reason": "too big for a Friday"})
    assert r.status_code == 200 and r.json()["status"] == "rejected"
    events = await finish(c, run_id, after=seq)
    got = order_event(events)
    assert got["status"] == "rejected" and got["order"] is None and "too big for a Friday" in got["detail"]
    assert "Not placed" in answer(events) and "rejected by an approver" in answer(events)
    assert len(broker.book.orders) == 2 and broker.book.order_requests == 2
    assert (await c.get(f"/v1/runs/{run_id}")).json()["status"] == "succeeded"


async def test_the_bundle_layer_asks_for_approval_even_when_the_tenant_allows_all(node, broker):
    c = await tenant_with_policy(node, broker_policy(broker.url, approval_from_digits=None))
    big = await finish(c, await start(c, f"buy 4000 ACME @ 12.5 broker={broker.url}"))  # 50,000.00: tenant allows
    assert order_event(big)["status"] == "placed"

    run_id = await start(c, f"buy 10000 ACME @ 12.5 broker={broker.url}")  # 125,000.00
    seq, requested = await until_approval(c, run_id)
    assert requested["rule_id"] == "broker.huge-orders-need-approval"
    await c.post(f"/v1/approvals/{requested['approval_id']}/decision", json={"decision": "reject"})
    events = await finish(c, run_id, after=seq)
    assert order_event(events)["status"] == "rejected"
    assert len(broker.book.orders) == 1


# ------------------------------------------------------------------------- the demo broker alone


async def test_demo_broker_books_a_client_order_id_once():
    book = Book()
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=build_app(book)), base_url="http://b") as c:
        order = {"symbol": "acme", "side": "buy", "qty": 3, "limit_price": "2.5", "client_order_id": "c-1"}
        r1 = await c.post("/orders", json=order, headers={"X-Order-Notional": "7.50"})
        r2 = await c.post("/orders", json=order, headers={"Idempotency-Key": "c-1"})
        assert (r1.status_code, r2.status_code) == (201, 200) and r1.json() == r2.json()
        assert r2.headers["Idempotent-Replayed"] == "true" and r1.json()["symbol"] == "ACME"
        r = await c.post("/orders", json={**order, "qty": 4})
        assert r.status_code == 409 and r.json()["error"]["code"] == "client_order_id_reused"
        r = await c.post("/orders", json={**order, "client_order_id": "c-2"}, headers={"X-Order-Notional": "7.49"})
        assert r.status_code == 422 and r.json()["error"]["code"] == "notional_mismatch"
        r = await c.post("/orders", json={**order, "client_order_id": "c-3"},
                         headers=[("X-Order-Notional", "7.50"), ("x-order-notional", "1.00")])
        assert r.status_code == 400 and r.json()["error"]["code"] == "duplicate_header"
        r = await c.post("/orders", json={**order, "client_order_id": "c-4"}, headers={"Idempotency-Key": "c-5"})
        assert r.status_code == 422 and r.json()["error"]["code"] == "idempotency_key_mismatch"
        assert len((await c.get("/orders")).json()["data"]) == 1
        assert (await c.get("/positions")).json()["data"] == [{"symbol": "ACME", "qty": 3, "cost": "7.50"}]


@pytest.mark.parametrize("body, message", [
    ({"symbol": "ACME", "side": "hold", "qty": 1, "limit_price": 1, "client_order_id": "x"}, "side"),
    ({"symbol": "ACME", "side": "buy", "qty": 1.5, "limit_price": 1, "client_order_id": "x"}, "qty"),
    ({"symbol": "ACME", "side": "buy", "qty": True, "limit_price": 1, "client_order_id": "x"}, "qty"),
    ({"symbol": "ACME", "side": "buy", "qty": 1, "limit_price": "-1", "client_order_id": "x"}, "limit_price"),
    ({"symbol": "ACME", "side": "buy", "qty": 1, "limit_price": "1e3", "client_order_id": "x"}, "limit_price"),
    ({"symbol": "ACME", "side": "buy", "qty": 1, "limit_price": 1}, "client_order_id"),
    ({"symbol": "../x", "side": "buy", "qty": 1, "limit_price": 1, "client_order_id": "x"}, "symbol"),
    ({"symbol": "ACME", "side": "buy", "qty": 1, "limit_price": 1, "client_order_id": "x", "extra": 1}, "unknown"),
])
def test_demo_broker_refuses_bad_orders(body, message):
    with pytest.raises(OrderRejected) as exc:
        parse_order(body, None, None)
    assert exc.value.status == 422 and message in exc.value.message
