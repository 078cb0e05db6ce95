"""SSRF: every spelling of a forbidden address is refused, on the first hop, on redirects and under DNS rebinding."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import pytest
from pydantic import ValidationError

from supervisor.errors import StockadeError
from supervisor.settings import Settings
from supervisor.tools.http import HttpRequestArgs, HttpRequestTool, _egress
from tests.tools.test_http_helpers import make_ctx, start_server

pytestmark = pytest.mark.timeout(30)

A_HOST = "127.0.0.2"

SPELLINGS = [
    "http://127.0.0.1/",
    "http://localhost/",
    "http://LOCALHOST./",
    "http://2130706433/",
    "http://0177.0.0.1/",
    "http://0x7f000001/",
    "http://0x7f.1/",
    "http://127.1/",
    "http://017700000001/",
    "http://[::1]/",
    "http://[0:0:0:0:0:0:0:1]/",
    "http://[::ffff:127.0.0.1]/",
    "http://[::ffff:7f00:1]/",
    "http://[::127.0.0.1]/",
    "http://[64:ff9b::127.0.0.1]/",
    "http://[2002:7f00:1::]/",
    "http://169.254.169.254/latest/meta-data",
    "http://[::ffff:169.254.169.254]/latest/meta-data",
    "http://0xa9fea9fe/latest/meta-data",
    "http://[fd00:ec2::254]/latest/meta-data",
    "http://10.0.0.1/",
    "http://012.1/",
    "http://172.16.5.4/",
    "http://192.168.1.1/",
    "http://100.64.0.1/",
    "http://0.0.0.0/",
    "http://0/",
    "http://224.0.0.1/",
    "http://255.255.255.255/",
    "http://[fe80::1%25eth0]/",
    "http://[fc00::1]/",
    "http://[ff02::1]/",
    "https://１２７.０.０.１/",
    "http://127.0.0.1:6379/",
    "http://[::]/",
    "http://[::ffff:0:7f00:1]/",
    "http://[::7f00:1]/",
    "http://[::ffff:127.0.0.1%25eth0]/",
    "http://[FE80::1%25ETH0]/",
    "http://[64:ff9b::a9fe:a9fe]/latest/meta-data",
    "http://[2002:a9fe:a9fe::]/latest/meta-data",
    "http://[2001:0:4136:e378:8000:63bf:80ff:fffe]/",
    "http://[3fff::1]/",
    "http://[5f00::1]/",
    "http://0x7f.0x0.0x0.0x1/",
    "http://0000000177.1/",
    "http://127.0.0.1./",
    "HTTP://127.0.0.1:0080/",
    "http://①②⑦.0.0.1/",
    "http://127。0。0。1/",
    "http://ⓛⓞⓒⓐⓛⓗⓞⓢⓣ/",
    "http://198.18.0.1/",
]

# Shapes refused before any resolution: credentials, other schemes, parser-confusing characters.
REFUSED_SHAPES = [
    "http://evil@127.0.0.1/", "http://user:pass@127.0.0.1/", "http://127.0.0.2:80@127.0.0.1/",
    "http://[::1]@1.2.3.4/", "http://evil.com\\@127.0.0.1/", "http://127.0.0.1\\/", "file:///etc/passwd",
    "gopher://127.0.0.1:6379/_INFO", "ftp://127.0.0.1/", "data:text/plain,x", "dict://127.0.0.1:11211/",
    "http://127.0.0.1\x00.example.com/", "http://example.com/\r\nHost: 127.0.0.1", "http://127.0.0.1\t/",
    "http://127%2e0%2e0%2e1/", "http://127.0.0.1:80:80/", "http://[::ffff:127.1]/", "http://00x7f.1/",
    "http://example.com/" + "a" * 8200,
]


def _settings(tmp_path: Path, **kw: Any) -> Settings:
    return Settings(data_dir=tmp_path, **kw)


async def _call(settings: Settings, tool: HttpRequestTool | None = None, **args: Any) -> dict[str, Any]:
    tool = tool or HttpRequestTool(settings)
    return (await tool.run(HttpRequestArgs.model_validate(args), make_ctx(settings))).result


@pytest.mark.parametrize("url", SPELLINGS)
async def test_every_spelling_is_blocked_by_default(tmp_path, url):
    with pytest.raises(StockadeError) as ei:
        await _call(_settings(tmp_path), url=url)
    assert ei.value.code == "egress.blocked", ei.value
    assert ei.value.extra["reason"] in {"loopback", "metadata", "private", "cgnat", "unspecified", "multicast",
                                        "broadcast", "link-local", "reserved"}


@pytest.mark.parametrize("url", REFUSED_SHAPES)
async def test_refused_url_shapes_are_input_invalid(tmp_path, url):
    with pytest.raises((StockadeError, ValidationError)) as ei:
        await _call(_settings(tmp_path), url=url)
    assert isinstance(ei.value, ValidationError) or ei.value.code == "input.invalid", ei.value


async def test_allow_list_opens_exactly_its_range(tmp_path):
    srv = await start_server(A_HOST, name="A")
    other = await start_server("127.0.0.1", name="B")
    try:
        s = _settings(tmp_path, egress_allow_private=[f"{A_HOST}/32"])
        assert (await _call(s, url=f"http://{A_HOST}:{srv.port}/"))["body"] == "A"
        with pytest.raises(StockadeError) as ei:
            await _call(s, url=f"http://127.0.0.1:{other.port}/")
        assert ei.value.code == "egress.blocked"
        assert other.requests == []
    finally:
        await srv.close()
        await other.close()


@pytest.mark.parametrize("spelling", ["127.0.0.1", "2130706433", "[::ffff:127.0.0.1]", "0x7f.1", "localhost"])
async def test_redirect_to_loopback_redis_is_blocked(tmp_path, redis_url, spelling):
    redis_port = urlsplit(redis_url).port or 6379
    srv = await start_server(A_HOST, name="A")
    try:
        s = _settings(tmp_path, egress_allow_private=[f"{A_HOST}/32"])
        target = f"http://{spelling}:{redis_port}/"
        with pytest.raises(StockadeError) as ei:
            await _call(s, url=f"{srv.base}/redirect?to={target}")
        assert ei.value.code == "egress.blocked"
        assert ei.value.extra["reason"] == "loopback"
        assert len(srv.requests) == 1  # the allowed server was reached, the redirect was not followed
    finally:
        await srv.close()


async def test_redirect_to_a_refused_url_shape_is_blocked(tmp_path):
    srv = await start_server(A_HOST, name="A")
    try:
        s = _settings(tmp_path, egress_allow_private=[f"{A_HOST}/32"])
        for to in ("http://user@127.0.0.2/", "file:///etc/passwd", "gopher://127.0.0.2:70/"):
            with pytest.raises(StockadeError) as ei:
                await _call(s, url=f"{srv.base}/redirect?to={to}")
            assert ei.value.code == "egress.blocked" and ei.value.extra["reason"] == "redirect_url"
    finally:
        await srv.close()


# Location values the HTTP client library's own redirect parser choked on (a bare ``httpx.InvalidURL``, or a
# response lost as tool.failed): the tool owns redirects, so each is followed on the checked host or refused.
LOCATIONS = [
    ("http:127.0.0.1", None),  # a same-scheme relative reference (RFC 3986 5.2.2): a path on this host
    ("HTTP:127.0.0.1", None),
    ("http:/127.0.0.1/", None),
    ("https:127.0.0.1", "redirect_url"),
    ("http://127.0.0.1\t/", "redirect_url"),  # urljoin silently drops the tab and would read http://127.0.0.1/
    ("/\\127.0.0.1/", "redirect_url"),
    ("http://[::1", "redirect_url"),
    ("http://evil@127.0.0.1/", "redirect_url"),
    ("http://127.0.0.1/", "loopback"),
    ("//0x7f.1/", "loopback"),
    ("http://[::ffff:169.254.169.254]/latest/meta-data", "metadata"),
    ("https://[64:ff9b::a00:1]/", "private"),
]


@pytest.mark.parametrize("location,reason", LOCATIONS)
async def test_odd_redirect_locations_never_leave_the_checked_host(tmp_path, location, reason):
    srv = await start_server(A_HOST, name="A")
    try:
        s = _settings(tmp_path, egress_allow_private=[f"{A_HOST}/32"])
        url = f"{srv.base}/redirect?to={quote(location, safe='')}"
        if reason is None:
            out = await _call(s, url=url)
            assert out["url"].startswith(f"{srv.base}/") and out["body"] == "A"
            assert len(srv.requests) == 2
        else:
            with pytest.raises(StockadeError) as ei:
                await _call(s, url=url)
            assert ei.value.code == "egress.blocked" and ei.value.extra["reason"] == reason, ei.value
            assert len(srv.requests) == 1
    finally:
        await srv.close()


async def test_proxy_environment_variables_do_not_route_around_the_guard(tmp_path, monkeypatch):
    srv = await start_server(A_HOST, name="A")
    proxy = await start_server("127.0.0.3", name="PROXY")
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.setenv(var, proxy.base)
    for var in ("NO_PROXY", "no_proxy"):
        monkeypatch.delenv(var, raising=False)
    try:
        s = _settings(tmp_path, egress_allow_private=[f"{A_HOST}/32"])
        assert (await _call(s, url=f"{srv.base}/"))["body"] == "A"  # direct, to the checked address
        with pytest.raises(StockadeError) as ei:  # a proxy-honouring client would hand this name to the proxy
            await _call(s, url="http://only-the-proxy-resolves.invalid/")
        assert ei.value.code == "tool.failed"
        for url in ("http://localhost/", "https://127.0.0.1/", f"{srv.base}/redirect?to=http://10.0.0.1/"):
            with pytest.raises(StockadeError) as ei:
                await _call(s, url=url)
            assert ei.value.code == "egress.blocked"
        assert proxy.requests == []
    finally:
        await srv.close()
        await proxy.close()


async def test_dns_rebinding_connection_is_pinned_to_the_checked_address(tmp_path, monkeypatch):
    good = await start_server(A_HOST, name="GOOD")
    evil = await start_server("127.0.0.1", good.port, name="EVIL")  # same port, loopback
    answers = [[A_HOST], ["127.0.0.1"]]
    calls: list[str] = []

    async def rebinding_resolver(host: str, port: int) -> list[str]:
        calls.append(host)
        return answers[min(len(calls) - 1, 1)]  # first answer allowed, every later one loopback

    monkeypatch.setattr(_egress, "resolve_addresses", rebinding_resolver)
    try:
        s = _settings(tmp_path, egress_allow_private=[f"{A_HOST}/32"])
        # rebind.test is not resolvable by the OS: success proves nothing re-resolved it at connect time
        out = await _call(s, url=f"http://rebind.test:{good.port}/who")
        assert out["body"] == "GOOD"
        assert calls == ["rebind.test"]
        assert evil.requests == []
        # a redirect back to the same name is resolved again, now to loopback: refused
        with pytest.raises(StockadeError) as ei:
            await _call(s, url=f"http://rebind.test:{good.port}/redirect?to=/who")
        assert ei.value.code == "egress.blocked"
        assert evil.requests == []
    finally:
        await good.close()
        await evil.close()


async def test_any_forbidden_answer_refuses_the_name(tmp_path, monkeypatch):
    srv = await start_server(A_HOST, name="A")

    async def mixed(host: str, port: int) -> list[str]:
        return [A_HOST, "10.0.0.7"]

    monkeypatch.setattr(_egress, "resolve_addresses", mixed)
    try:
        s = _settings(tmp_path, egress_allow_private=[f"{A_HOST}/32"])
        with pytest.raises(StockadeError) as ei:
            await _call(s, url=f"http://mixed.test:{srv.port}/")
        assert ei.value.code == "egress.blocked" and ei.value.extra["reason"] == "private"
        assert srv.requests == []
    finally:
        await srv.close()


async def test_unresolvable_name_is_tool_failed(tmp_path):
    with pytest.raises(StockadeError) as ei:
        await _call(_settings(tmp_path), url="http://no-such-host.invalid/")
    assert ei.value.code == "tool.failed"
