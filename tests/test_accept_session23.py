"""Accept negotiation for the SSE stream (app/accept.py), and the route's answer to a client that accepts
no event stream (session 23). Before, the stream ignored Accept: `Accept: application/json` got SSE."""

from __future__ import annotations

import asyncio

import pytest

from app.accept import acceptable
from tests.e2e.harness import make_data_dir, settings_for, start_node

pytestmark = pytest.mark.timeout(120)
SSE = "text/event-stream"


@pytest.mark.parametrize("header", [
    None, "", "  ", "*/*", "text/*", SSE, "TEXT/Event-Stream", "application/json, text/event-stream",
    "text/event-stream;q=0.001", "application/json;q=1, */*;q=0.1", "text/event-stream; charset=utf-8",
    "text/*;q=0, text/event-stream", "*/*;q=0, text/event-stream;q=0.5",
    "garbage", "x/;q=1, /y", "*/event-stream",  # nothing parses: as good as no Accept
    "text/event-stream;q=2, */*",  # a q that is no qvalue: that range is ignored, */* admits
])
def test_what_admits_the_stream(header):
    assert acceptable(header, SSE), header


def test_a_header_is_read_no_further_than_64_ranges():
    assert acceptable(",".join(["application/json"] * 63 + [SSE]), SSE)
    assert not acceptable(",".join(["application/json"] * 64 + [SSE]), SSE)


@pytest.mark.parametrize("header", [
    "application/json", "text/html, application/xhtml+xml", "text/event-stream;q=0", "text/event-stream;q=0.000",
    "text/*;q=0", "*/*;q=0", "text/event-stream;q=0, */*", "text/event-stream;q=0, text/*;q=1",
    "image/*, application/problem+json", "*/*;q=1, text/*;q=0",
])
def test_what_refuses_the_stream(header):
    assert not acceptable(header, SSE), header


@pytest.mark.parametrize("kind", ["embedded"])
async def test_the_route_answers_406_to_a_client_that_accepts_no_stream_and_404_across_tenants(kind):
    node = await start_node(settings_for(kind, make_data_dir()))
    try:
        _, key = await node.tenant()
        _, other = await node.tenant()
        c = node.client(key)
        r = await c.post("/v1/runs", json={"bundle": "echo", "input": "hi there"})
        assert r.status_code == 201, r.text
        run = r.json()["id"]
        path = f"/v1/runs/{run}/events"
        refused = await c.get(path, headers={"Accept": "application/json"})
        assert refused.status_code == 406, refused.text
        assert refused.headers["content-type"].startswith("application/problem+json")
        assert refused.json()["code"] == "input.not_acceptable"
        assert (await c.get(path, headers={"Accept": "text/event-stream;q=0, */*"})).status_code == 406
        # the tenant check comes first: another tenant learns nothing, whatever it accepts
        assert (await node.client(other).get(path, headers={"Accept": "application/json"})).status_code == 404
        for ok in ("text/event-stream", "*/*", "application/json, text/event-stream;q=0.5"):
            async with asyncio.timeout(60):
                async with c.stream("GET", path, headers={"Accept": ok}) as resp:
                    assert resp.status_code == 200 and resp.headers["content-type"].startswith(SSE), ok
                    body = (await resp.aread()).decode()
            assert "event: run.completed" in body, body[-300:]
    finally:
        await node.stop()
