"""http.request against real local servers: success path, headers, redirects, caps, TLS pinning."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from supervisor.errors import StockadeError
from supervisor.settings import Settings
from supervisor.tools.http import HttpRequestArgs, HttpRequestTool, _egress, tools
from tests.tools.test_http_helpers import A_HOST, C_HOST, make_ctx, make_tls, start_server

pytestmark = pytest.mark.timeout(30)



def _settings(tmp_path: Path, **kw: Any) -> Settings:
    kw.setdefault("egress_allow_private", [f"{A_HOST}/32", f"{C_HOST}/32"])
    return Settings(data_dir=tmp_path, **kw)


async def _call(settings: Settings, tool: HttpRequestTool | None = None, ctx: Any = None, **args: Any) -> dict[str, Any]:
    tool = tool or HttpRequestTool(settings)
    parsed = HttpRequestArgs.model_validate(args)
    res = await tool.run(parsed, ctx or make_ctx(settings))
    return res.result


async def test_get_success_sends_host_and_returns_status_headers_body(tmp_path, server_a):
    s = _settings(tmp_path)
    out = await _call(s, url=f"{server_a.base}/echo?q=1")
    assert out["status"] == 200
    assert out["headers"]["content-type"] == "application/json"
    assert out["headers"]["x-test"] == "1"
    assert "connection" not in out["headers"]
    data = json.loads(out["body"])
    assert data["server"] == "A" and data["method"] == "GET" and data["target"] == "/echo?q=1"
    assert data["headers"]["host"] == f"{A_HOST}:{server_a.port}"
    assert out["url"] == f"http://{A_HOST}:{server_a.port}/echo?q=1"


async def test_post_body_custom_headers_and_hop_by_hop_stripped(tmp_path, server_a):
    s = _settings(tmp_path)
    out = await _call(
        s, method="post", url=f"{server_a.base}/echo", body="héllo",
        headers={"X-Api": "k1", "Connection": "X-Private", "X-Private": "p", "Keep-Alive": "1", "Upgrade": "h2c"},
    )
    data = json.loads(out["body"])
    assert data["method"] == "POST" and data["body"] == "héllo"
    assert data["headers"]["x-api"] == "k1"
    for h in ("x-private", "keep-alive", "upgrade"):
        assert h not in data["headers"]


@pytest.mark.parametrize("headers", [
    {"Host": "evil.example"}, {"hOsT": "x"}, {"HOST ": "x"}, {":authority": "x"}, {"X-A": "a\r\nInjected: 1"},
    {"X-A": "a\nHost: 127.0.0.1"}, {"Bad Name": "v"}, {"X-N": "a\x00b"},
    # HTTP/1.1 values are ASCII: these used to escape as a bare UnicodeEncodeError / h11 LocalProtocolError
    {"X-A": "é"}, {"X-A": "a\x85b"}, {"X-A": "a\u2028b"}, {"X-A": "\udc80"}, {"X-A": " lead"}, {"X-A": "trail\t"},
])
async def test_bad_request_headers_are_input_invalid(tmp_path, server_a, headers):
    with pytest.raises(StockadeError) as ei:
        await _call(_settings(tmp_path), url=f"{server_a.base}/echo", headers=headers)
    assert ei.value.code == "input.invalid"
    assert server_a.requests == []


async def test_response_decoded_with_declared_charset(tmp_path, server_a):
    out = await _call(_settings(tmp_path), url=f"{server_a.base}/latin1")
    assert out["body"] == "café"


async def test_redirects_followed_and_counted(tmp_path, server_a, server_c):
    s = _settings(tmp_path)
    target = f"{server_c.base}/echo"
    out = await _call(s, url=f"{server_a.base}/redirect?to={target}")
    assert json.loads(out["body"])["server"] == "C"
    assert out["url"] == target


async def test_relative_redirect_resolved_against_the_current_url(tmp_path, server_a):
    out = await _call(_settings(tmp_path), url=f"{server_a.base}/a/b/redirect?to=../echo%3Fx%3D1")
    assert json.loads(out["body"])["target"] == "/a/echo?x=1"


async def test_too_many_redirects(tmp_path, server_a):
    s = _settings(tmp_path, egress_max_redirects=2)
    with pytest.raises(StockadeError) as ei:
        await _call(s, url=f"{server_a.base}/loop")
    assert ei.value.code == "egress.too_many_redirects"
    assert len(server_a.requests) == 3  # the first request and 2 followed hops; the third Location is refused


async def test_credentials_dropped_on_cross_origin_redirect_kept_on_same_origin(tmp_path, server_a, server_c):
    s = _settings(tmp_path)
    auth = {"Authorization": "Bearer secret", "Cookie": "sid=1", "X-Keep": "k"}
    out = await _call(s, url=f"{server_a.base}/redirect?to={server_c.base}/echo", headers=auth)
    h = json.loads(out["body"])["headers"]
    assert "authorization" not in h and "cookie" not in h and h["x-keep"] == "k"
    out = await _call(s, url=f"{server_a.base}/redirect?to=/echo", headers=auth)
    h = json.loads(out["body"])["headers"]
    assert h["authorization"] == "Bearer secret" and h["cookie"] == "sid=1"


async def test_303_turns_post_into_get_and_307_keeps_it(tmp_path, server_a):
    s = _settings(tmp_path)
    out = await _call(s, method="POST", url=f"{server_a.base}/redirect?code=303&to=/echo", body="b",
                      headers={"Content-Type": "text/plain"})
    d = json.loads(out["body"])
    assert d["method"] == "GET" and d["body"] == "" and "content-type" not in d["headers"]
    out = await _call(s, method="POST", url=f"{server_a.base}/redirect?code=307&to=/echo", body="b")
    d = json.loads(out["body"])
    assert d["method"] == "POST" and d["body"] == "b"


async def test_redirect_guard_sees_each_later_hop_and_can_refuse(tmp_path, server_a, server_c):
    s = _settings(tmp_path)
    seen: list[str] = []

    async def guard(url: str, ctx: Any) -> None:
        seen.append(url)
        raise StockadeError("policy.denied", "redirect target not allowed by policy")

    with pytest.raises(StockadeError) as ei:
        await _call(s, ctx=make_ctx(s, extras={"http.redirect_guard": guard}),
                    url=f"{server_a.base}/redirect?to={server_c.base}/echo")
    assert ei.value.code == "policy.denied"
    assert seen == [f"{server_c.base}/echo"]
    assert server_c.requests == []


async def test_response_size_cap_aborts(tmp_path, server_a):
    s = _settings(tmp_path, egress_max_bytes=1000)
    assert len((await _call(s, url=f"{server_a.base}/big?n=1000"))["body"]) == 1000
    with pytest.raises(StockadeError) as ei:
        await _call(s, url=f"{server_a.base}/big?n=5000")
    assert ei.value.code == "egress.too_large"


async def test_gzip_bomb_is_capped_on_decoded_bytes(tmp_path, server_a):
    s = _settings(tmp_path, egress_max_bytes=100_000)
    with pytest.raises(StockadeError) as ei:
        await _call(s, url=f"{server_a.base}/gzip?n=5000000")  # ~5 kB on the wire, 5 MB decoded
    assert ei.value.code == "egress.too_large"


async def test_request_body_cap(tmp_path, server_a):
    with pytest.raises(StockadeError) as ei:
        await _call(_settings(tmp_path, egress_max_bytes=10), method="POST", url=f"{server_a.base}/echo", body="x" * 11)
    assert ei.value.code == "input.too_large"
    assert server_a.requests == []


async def test_body_that_is_not_unicode_is_input_invalid(tmp_path, server_a):
    with pytest.raises(StockadeError) as ei:  # JSON "\udc80" decodes to a lone surrogate: no UTF-8 form
        await _call(_settings(tmp_path), method="POST", url=f"{server_a.base}/echo", body="a\udc80")
    assert ei.value.code == "input.invalid"
    assert server_a.requests == []


async def test_timeout_capped_by_args(tmp_path, server_a):
    with pytest.raises(StockadeError) as ei:
        await _call(_settings(tmp_path), url=f"{server_a.base}/slow", timeout_s=0.3)
    assert ei.value.code == "tool.timeout"


async def test_connection_refused_is_tool_failed(tmp_path, server_a):
    port = server_a.port
    await server_a.close()
    with pytest.raises(StockadeError) as ei:
        await _call(_settings(tmp_path), url=f"http://{A_HOST}:{port}/echo")
    assert ei.value.code == "tool.failed"


async def test_https_pinned_to_checked_ip_with_sni_and_certificate_name(tmp_path, monkeypatch):
    server_ctx, client_ctx = make_tls(tmp_path, "pinned.test")
    srv = await start_server(A_HOST, name="TLS", ssl_ctx=server_ctx)
    calls: list[str] = []

    async def resolve(host: str, port: int) -> list[str]:
        calls.append(host)
        return [A_HOST]

    monkeypatch.setattr(_egress, "resolve_addresses", resolve)
    try:
        s = _settings(tmp_path)
        tool = HttpRequestTool(s, ssl_context=client_ctx)
        out = await _call(s, tool, url=f"https://pinned.test:{srv.port}/echo")
        d = json.loads(out["body"])
        assert d["headers"]["host"] == f"pinned.test:{srv.port}"
        assert srv.sni == ["pinned.test"]  # SNI carries the name although we connected to the IP
        assert calls == ["pinned.test"]
        # a name the certificate does not cover fails verification, although the IP is the same
        with pytest.raises(StockadeError) as ei:
            await _call(s, tool, url=f"https://other.test:{srv.port}/echo")
        assert ei.value.code == "tool.failed"
        assert "CERTIFICATE_VERIFY_FAILED" in ei.value.detail or "certificate" in ei.value.detail.lower()
    finally:
        await srv.close()


def test_resource_is_the_normalised_url(tmp_path):
    tool = HttpRequestTool(_settings(tmp_path))
    ctx = make_ctx(_settings(tmp_path))
    args = HttpRequestArgs.model_validate({"url": "HTTPS://API.Example.com:443/v1/./a/../x?q=1#frag"})
    assert tool.resource(args, ctx) == "https://api.example.com/v1/x?q=1"
    args = HttpRequestArgs.model_validate({"url": "http://0x7f.1:8080/%2e%2e/admin"})
    assert tool.resource(args, ctx) == "http://127.0.0.1:8080/admin"
    with pytest.raises(StockadeError) as ei:
        tool.resource(HttpRequestArgs.model_validate({"url": "http://user@api.example.com/"}), ctx)
    assert ei.value.code == "input.invalid"


def test_args_are_strict():
    with pytest.raises(ValidationError):
        HttpRequestArgs.model_validate({"url": "http://x", "extra": 1})
    with pytest.raises(ValidationError):
        HttpRequestArgs.model_validate({"url": "http://x", "method": "TRACE"})
    with pytest.raises(ValidationError):
        HttpRequestArgs.model_validate({"url": "http://x", "timeout_s": "5"})
    with pytest.raises(ValidationError):
        HttpRequestArgs.model_validate({"url": 5})
    assert HttpRequestArgs.model_validate({"url": "http://x", "method": "post", "timeout_s": 5}).method == "POST"


def test_tool_metadata(tmp_path):
    [tool] = tools(_settings(tmp_path))
    assert tool.name == "http.request" and tool.risk == "high" and tool.side_effects is True
    assert tool.timeout_s > Settings(data_dir=tmp_path).egress_timeout_s
    for method, expected in (("GET", False), ("HEAD", False), ("POST", True), ("PUT", True), ("PATCH", True),
                             ("DELETE", True)):
        assert tool.side_effects_for(HttpRequestArgs.model_validate({"url": "http://x", "method": method})) is expected
