"""HEAD is never a way into a run's event stream, however the path is spelled.

Found by attack: app.head excluded the stream by the path's text (``.../events``), the router matches it by
a regex ending in ``$``, which also matches before one trailing newline. ``HEAD /v1/runs/{id}/events%0A``
was served as the stream's GET with the body dropped: the client got its 200 at once, and the server kept
a stream of the run open behind it (replay, live tail, a store query per keep-alive) until the run ended -
for an idle run, for ever; ``.../events%0A/`` redirected to that. Now 405 like ``.../events``.
"""

from __future__ import annotations

import asyncio

import pytest

from tests.e2e.harness import idle_runs

pytestmark = [pytest.mark.timeout(60), pytest.mark.parametrize("stack_kind", ["embedded"])]  # HTTP only


def _open_streams(node) -> float:
    return node.rt.metrics.sse_subscribers._value.get()


@pytest.mark.parametrize("suffix", ["%0A", "/", "//", "%2F", "%0A/"])
async def test_head_never_opens_an_event_stream(node, suffix):
    tid, key = await node.tenant()
    [run] = await idle_runs(node, tid, 1)  # never ends: a stream of it would stay open
    c = node.client(key)
    before = _open_streams(node)
    path = f"/v1/runs/{run}/events{suffix}"
    async with asyncio.timeout(10):
        for _ in range(3):  # a redirect (a trailing slash) is followed as a client would
            r = await c.head(path)
            if r.status_code != 307:
                break
            path = r.headers["location"]
    if "%0A" in suffix:  # app.guard refuses a control character in the path before any route is matched
        assert r.status_code == 422, (suffix, r.status_code, dict(r.headers))  # input.invalid (HEAD: no body)
    else:
        assert r.status_code == 405 and r.headers["allow"] == "GET", (suffix, r.status_code, dict(r.headers))
    assert not r.headers.get("content-type", "").startswith("text/event-stream")
    assert _open_streams(node) == before, "a HEAD left an event stream open on the server"
    # the stream itself is still there for GET
    async with asyncio.timeout(10), c.stream("GET", f"/v1/runs/{run}/events") as resp:
        assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/event-stream")
