"""The request guard (plain ASGI middleware): body limits before the app reads a byte, metrics per request."""

from __future__ import annotations

import pytest

from tests.e2e.harness import collect

pytestmark = pytest.mark.node_settings(max_body_bytes=4096)


async def test_a_declared_oversized_body_is_refused(node):
    _, key = await node.tenant()
    c = node.client(key)
    r = await c.post("/v1/runs", content=b"{" + b" " * 5000 + b"}", headers={"content-type": "application/json"})
    assert r.status_code == 413
    assert r.headers["content-type"].startswith("application/problem+json")
    assert r.json()["code"] == "input.too_large"


async def test_a_chunked_body_is_counted_as_it_arrives(node):
    _, key = await node.tenant()
    c = node.client(key)

    async def chunks(n: int):
        yield b'{"bundle": "echo", "input": "'
        for _ in range(n):
            yield b"x" * 1000
        yield b'"}'

    r = await c.post("/v1/runs", content=chunks(10), headers={"content-type": "application/json"})
    assert r.status_code == 413 and r.json()["code"] == "input.too_large"
    # under the limit, the body read by the guard reaches the route intact
    r = await c.post("/v1/runs", content=chunks(2), headers={"content-type": "application/json"})
    assert r.status_code in (200, 201), r.text
    assert r.json()["input"] == "x" * 2000


async def test_hostile_ids_and_cursors_get_a_clear_error_on_every_stack(node):
    """A NUL in the URL, a cursor past bigint, a non-ASCII digit: each got a 500 or a stream cut off
    mid-response on PostgreSQL (and on SQLite: 'Python int too large'); now 422 input.invalid."""
    _, key = await node.tenant()
    c = node.client(key)
    run = (await c.post("/v1/runs", json={"bundle": "echo", "input": "hi"})).json()["id"]
    for path in ("/v1/runs/run_%00", "/v1/audit?run_id=%00", f"/v1/runs/{run}/events?after=9223372036854775808",
                 "/v1/audit?after=9223372036854775808", "/v1/ledger?after=99999999999999999999",
                 "/v1/runs?before=nan", "/v1/runs?before=inf"):
        r = await c.get(path)
        assert r.status_code == 422 and r.json()["code"] == "input.invalid", (path, r.text)
    r = await c.post("/v1/approvals/apr_x%00/decision", json={"decision": "approve"})
    assert r.status_code == 422 and r.json()["code"] == "input.invalid"
    for last in (b"99999999999999999999999", b"9223372036854775808", "\u00b2".encode(), b"-5", b"1e3"):
        r = await c.get(f"/v1/runs/{run}/events", headers={"Last-Event-ID": last})
        assert r.status_code == 422 and r.json()["code"] == "input.invalid", (last, r.text)


async def test_every_request_is_counted(node):
    _, key = await node.tenant()
    c = node.client(key)
    await c.get("/v1/runs/run_does_not_exist")
    text = (await c.get("/metrics")).text
    assert 'stockade_http_requests_total{method="GET",status="404"}' in text
    assert "stockade_http_request_seconds_count" in text


async def test_a_method_a_route_does_not_have_is_405_with_allow_and_changes_nothing(node):
    """Found by fuzzing: Starlette's 405 was mapped to input.invalid, i.e. answered 422 and without Allow."""
    _, key = await node.tenant()
    c = node.client(key)
    before = (await c.get("/v1/runs")).json()["data"]
    for method, path, allowed in (("TRACE", "/healthz", {"GET", "HEAD"}), ("DELETE", "/v1/runs", {"GET", "HEAD", "POST"}),
                                  ("PATCH", "/v1/policy", {"GET", "HEAD", "PUT"}), ("PUT", "/v1/runs/run_x/cancel", {"POST"}),
                                  ("HEAD", "/v1/runs/run_x/events", {"GET"})):
        r = await c.request(method, path, json={"bundle": "echo", "input": "x"})
        assert r.status_code == 405, (method, path, r.text)
        assert r.headers["content-type"].startswith("application/problem+json")
        if method != "HEAD":  # a HEAD answer has no body
            assert r.json()["code"] == "input.method_not_allowed" and r.json()["status"] == 405
        assert set(r.headers["allow"].replace(" ", "").split(",")) == allowed, (method, path, r.headers["allow"])
    assert (await c.get("/v1/runs")).json()["data"] == before


async def test_head_is_get_without_the_body(node):
    """Probes and ``curl -I`` sent HEAD and got 405 on every route: HEAD is now the GET's status and headers
    with no body, auth and tenancy included; a run's event stream (whose GET lasts as long as the run) stays 405."""
    tid, key = await node.tenant()
    anon = node.client(None)
    c = node.client(key)
    for path in ("/healthz", "/readyz", "/metrics", "/ui/", "/ui/app.js", "/v1/receipts/public-key"):
        get, head = await anon.get(path), await anon.head(path)
        assert get.status_code == 200 and head.status_code == 200, (path, head.status_code, head.text)
        assert head.content == b"", path
        assert head.headers["content-type"] == get.headers["content-type"], path
        if path not in ("/readyz", "/metrics"):  # those bodies change between two requests
            assert head.headers["content-length"] == get.headers["content-length"], path
    r = await c.head("/v1/runs")
    assert r.status_code == 200 and r.content == b"" and r.headers["content-type"] == "application/json"
    r = await anon.head("/v1/runs")  # no key: the GET's 401, headers only
    assert r.status_code == 401 and r.content == b""
    r = await c.head("/v1/runs/run_does_not_exist")
    assert r.status_code == 404 and r.content == b""
    r = await c.post("/v1/runs", json={"bundle": "echo", "input": "x"})
    run = r.json()["id"]
    await collect(c, run)
    r = await c.head(f"/v1/runs/{run}/events")
    assert r.status_code == 405 and r.headers["allow"] == "GET"


async def test_an_empty_user_or_project_id_is_refused(node):
    """Found by review: ``"user_id": ""`` skipped the "no such user" check (an empty string is falsy) and
    stored a run (or minted a key) owned by a user that does not exist."""
    _, key = await node.tenant()
    c = node.client(key)
    before = (await c.get("/v1/runs")).json()["data"]
    keys_before = (await c.get("/v1/keys")).json()["data"]
    for field in ("user_id", "project_id"):
        r = await c.post("/v1/runs", json={"bundle": "echo", "input": "x", field: ""})
        assert r.status_code == 422 and r.json()["code"] == "input.invalid", r.text
        r = await c.post("/v1/keys", json={"role": "viewer", field: ""})
        assert r.status_code == 422 and r.json()["code"] == "input.invalid", r.text
    assert (await c.get("/v1/runs")).json()["data"] == before
    assert (await c.get("/v1/keys")).json()["data"] == keys_before


@pytest.mark.parametrize("stack_kind", ["embedded"])  # the ASGI layer only
async def test_a_hostile_static_file_name_is_not_found(node):
    """Found by an outside-in walkthrough: ``GET /ui/<256+ characters>`` (no key needed) raised OSError
    ENAMETOOLONG from ``is_file()``: a 500 marked retryable and a traceback in the log. Now 404 like any
    other missing file, and the same for the docs' assets."""
    anon = node.client(None)
    for path in ("/ui/" + "a" * 256, "/ui/" + "a" * 5000, "/ui/" + "a" * 255, "/ui/" + "a/" * 2000,
                 "/docs/assets/" + "a" * 256):
        r = await anon.get(path)
        assert r.status_code == 404 and r.json()["code"] == "not_found", (path[:40], r.status_code, r.text[:200])
        assert r.json()["retryable"] is False
