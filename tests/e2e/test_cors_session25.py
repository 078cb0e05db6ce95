"""Cross-origin access (``STOCKADE_CORS_ORIGINS``): the REST API and the Socket.IO endpoint answer a browser
the same way. Neither takes credentials (cookies, HTTP auth) from another origin: the key is sent as a bearer
header or in the Socket.IO ``auth`` payload, never by the browser on its own."""

from __future__ import annotations

import pytest

pytestmark = [pytest.mark.timeout(60), pytest.mark.node_settings(cors_origins=["https://app.example"])]

ALLOWED = "https://app.example"
OTHER = "https://evil.example"


def _lower(headers) -> dict[str, str]:
    return {k.lower(): v for k, v in headers.items()}


async def test_rest_answers_an_allowed_origin_without_credentials(node):
    _, key = await node.tenant()
    c = node.client(key)
    pre = await c.options("/v1/runs", headers={"Origin": ALLOWED, "Access-Control-Request-Method": "POST",
                                              "Access-Control-Request-Headers": "authorization,content-type"})
    h = _lower(pre.headers)
    assert pre.status_code == 200
    assert h["access-control-allow-origin"] == ALLOWED
    assert "access-control-allow-credentials" not in h
    got = await c.get("/v1/runs", headers={"Origin": ALLOWED})
    assert got.status_code == 200
    assert _lower(got.headers)["access-control-allow-origin"] == ALLOWED
    assert "access-control-allow-credentials" not in _lower(got.headers)
    other = await c.get("/v1/runs", headers={"Origin": OTHER})
    assert "access-control-allow-origin" not in _lower(other.headers)


@pytest.mark.parametrize("stack_kind", ["embedded"])  # the ASGI layer only
async def test_socketio_answers_an_allowed_origin_as_rest_does(node):
    """Engine.IO sent ``Access-Control-Allow-Credentials: true`` (python-socketio's default) with every answer
    to an allowed origin, while the REST API allows no credentials: a page of that origin could make the
    browser send its cookies to the Socket.IO endpoint, and read the answers."""
    c = node.client()
    pre = await c.options("/socket.io/", params={"EIO": "4", "transport": "polling"},
                          headers={"Origin": ALLOWED, "Access-Control-Request-Method": "GET"})
    h = _lower(pre.headers)
    assert h.get("access-control-allow-origin") == ALLOWED
    assert "access-control-allow-credentials" not in h, h
    opened = await c.get("/socket.io/", params={"EIO": "4", "transport": "polling"}, headers={"Origin": ALLOWED})
    assert opened.status_code == 200, opened.text
    h = _lower(opened.headers)
    assert h.get("access-control-allow-origin") == ALLOWED
    assert "access-control-allow-credentials" not in h, h
    refused = await c.get("/socket.io/", params={"EIO": "4", "transport": "polling"}, headers={"Origin": OTHER})
    assert refused.status_code == 400
    assert "access-control-allow-origin" not in _lower(refused.headers)
