"""Session 21: adversarial probes of ``http.request`` beyond address spellings (those are test_http_ssrf.py's).

Redirects of every kind to forbidden places, DNS answers that change or mix, proxy variables, hostile
answers (trickled, huge, compression bombs, broken framing, header floods) and hostile request arguments,
each against a real local server. The allowed "public" server sits on 127.0.0.2 (opened by
``egress_allow_private``); 127.0.0.1 stays forbidden, so the guard, not the test setup, is what refuses.
Attacks that already failed safely are kept as the adversarial suite; the ones that did not are marked.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from pydantic import ValidationError

from supervisor.errors import StockadeError
from supervisor.settings import Settings
from supervisor.tools.http import HttpRequestArgs, HttpRequestTool, _egress
from tests.fakes.hostile_http import HostileServer, RawRequest, respond
from tests.tools.test_http_helpers import A_HOST, C_HOST, make_ctx, start_server

pytestmark = pytest.mark.timeout(60)

STABLE = {"tool.failed", "tool.timeout", "egress.too_large"}


def _settings(tmp_path: Path, **kw: Any) -> Settings:
    kw.setdefault("egress_allow_private", [f"{A_HOST}/32", f"{C_HOST}/32"])
    return Settings(data_dir=tmp_path, **kw)


async def _call(settings: Settings, **args: Any) -> dict[str, Any]:
    return (await HttpRequestTool(settings).run(HttpRequestArgs.model_validate(args), make_ctx(settings))).result


async def _refused(settings: Settings, **args: Any) -> StockadeError:
    with pytest.raises(StockadeError) as ei:
        await _call(settings, **args)
    return ei.value


@pytest.fixture
async def canary():
    """A server on 127.0.0.1 (forbidden): any request reaching it is an escape."""
    srv = await start_server("127.0.0.1", name="CANARY")
    yield srv
    await srv.close()


# ------------------------------------------------------------------------------------------------ redirects

REDIRECT_TARGETS = [
    ("http://127.0.0.1:{canary}/", "loopback"),
    ("http://[::1]:{canary}/", "loopback"),
    ("http://169.254.169.254/latest/meta-data/iam/security-credentials/", "metadata"),
    ("http://internal.test:{canary}/", "private"),  # a name the (test) resolver answers with 10.1.2.3
    ("http://loopy.test:{canary}/", "loopback"),  # ... and with 127.0.0.1
    ("//127.0.0.1:{canary}/", "loopback"),  # scheme-relative
    ("file:///etc/passwd", "redirect_url"),
    ("gopher://127.0.0.1:6379/_INFO", "redirect_url"),
    ("dict://127.0.0.1:11211/stats", "redirect_url"),
    ("javascript:alert(1)", "redirect_url"),
]


@pytest.fixture
def fake_dns(monkeypatch):
    real = _egress.resolve_addresses
    names = {"internal.test": ["10.1.2.3"], "loopy.test": ["127.0.0.1"], "public.test": [A_HOST]}

    async def resolve(host: str, port: int) -> list[str]:
        return names[host] if host in names else await real(host, port)

    monkeypatch.setattr(_egress, "resolve_addresses", resolve)
    return names


@pytest.mark.parametrize("code", [301, 302, 303, 307, 308])
@pytest.mark.parametrize("target,reason", REDIRECT_TARGETS)
async def test_every_redirect_status_to_a_forbidden_target_is_refused(tmp_path, server_a, canary, fake_dns, code,
                                                                      target, reason):
    to = quote(target.format(canary=canary.port), safe="")
    err = await _refused(_settings(tmp_path), method="POST", body="x", url=f"{server_a.base}/redirect?code={code}&to={to}")
    assert err.code == "egress.blocked" and err.extra["reason"] == reason, err
    assert len(server_a.requests) == 1 and canary.requests == []


async def test_a_redirect_from_a_name_is_re_resolved_and_re_checked(tmp_path, canary, fake_dns):
    srv = await start_server(A_HOST, name="A")
    try:
        to = quote(f"http://loopy.test:{canary.port}/", safe="")
        err = await _refused(_settings(tmp_path), url=f"http://public.test:{srv.port}/redirect?to={to}")
        assert err.code == "egress.blocked" and err.extra["address"] == "127.0.0.1"
        assert canary.requests == [] and len(srv.requests) == 1
    finally:
        await srv.close()


async def test_a_relative_redirect_that_changes_the_port_is_a_new_origin(tmp_path, server_a, canary):
    s = _settings(tmp_path)
    other = await start_server(A_HOST, name="A2")
    try:
        auth = {"Authorization": "Bearer s3cret", "Cookie": "sid=1", "X-Keep": "k"}
        out = await _call(s, url=f"{server_a.base}/redirect?to=//{A_HOST}:{other.port}/echo", headers=auth)
        h = json.loads(out["body"])["headers"]
        assert json.loads(out["body"])["server"] == "A2"
        assert "authorization" not in h and "cookie" not in h and h["x-keep"] == "k"  # another port: another origin
        # the same trick to a forbidden host's port (Redis-like) is refused
        err = await _refused(s, url=f"{server_a.base}/redirect?to=//127.0.0.1:{canary.port}/")
        assert err.code == "egress.blocked" and canary.requests == []
        err = await _refused(s, url=f"{server_a.base}/redirect?to=//{A_HOST}:99999/")
        assert err.code == "egress.blocked" and err.extra["reason"] == "redirect_url"
    finally:
        await other.close()


async def test_a_redirect_loop_to_the_same_url_ends_with_too_many_redirects(tmp_path):
    async def handler(req: RawRequest, w: asyncio.StreamWriter) -> None:
        await respond(w, 307, b"", headers={"location": req.path})  # itself, for ever

    with HostileServer(handler, host=A_HOST) as srv:
        err = await _refused(_settings(tmp_path, egress_max_redirects=3), method="PUT", body="b", url=f"{srv.url}/me")
        assert err.code == "egress.too_many_redirects"
        assert len(srv.requests) == 4 and {r.body for r in srv.requests} == {b"b"}  # 307 keeps the body


async def test_with_redirects_off_a_redirect_is_refused_and_its_target_never_fetched(tmp_path, server_a, canary):
    s = _settings(tmp_path, egress_max_redirects=0)
    for to in ("/echo", f"http://127.0.0.1:{canary.port}/"):
        err = await _refused(s, url=f"{server_a.base}/redirect?to={quote(to, safe='')}")
        assert err.code == "egress.too_many_redirects"
    assert len(server_a.requests) == 2 and canary.requests == []


@pytest.mark.parametrize("code,method,expect_method,keeps_body", [
    (301, "POST", "GET", False), (302, "POST", "GET", False), (303, "POST", "GET", False), (303, "PUT", "GET", False),
    (303, "DELETE", "GET", False), (302, "DELETE", "DELETE", True), (301, "PUT", "PUT", True),
    (307, "POST", "POST", True), (308, "PATCH", "PATCH", True), (303, "HEAD", "HEAD", False),
])
async def test_redirect_method_and_body_follow_what_browsers_do(tmp_path, server_a, server_c, code, method,
                                                               expect_method, keeps_body):
    body = None if method == "HEAD" else "payload"
    headers = {"Authorization": "Bearer s3cret", "Content-Type": "text/plain", "X-Keep": "k",
               "Content-Encoding": "identity", "Content-Language": "fr", "Content-Location": "/doc"}
    out = await _call(_settings(tmp_path), method=method, body=body, headers=headers,
                      url=f"{server_a.base}/redirect?code={code}&to={server_c.base}/echo")
    req = server_c.requests[0]
    h = {n.lower(): v for n, v in req["headers"]}
    assert req["method"] == expect_method
    assert req["body"] == ("payload" if keeps_body else "")
    for name in ("content-type", "content-encoding", "content-language", "content-location"):
        assert (name in h) is (expect_method == method), name  # the body's headers go with the body (FIXED)
    assert "authorization" not in h and h["x-keep"] == "k"  # another origin: credentials never follow
    if method != "HEAD":
        assert json.loads(out["body"])["server"] == "C"


# ---------------------------------------------------------------------------------------------- DNS answers

@pytest.mark.parametrize("answers,reason", [
    (["::ffff:127.0.0.1"], "loopback"),
    (["::ffff:7f00:1"], "loopback"),
    (["64:ff9b::7f00:1"], "loopback"),
    (["64:ff9b::a9fe:a9fe"], "metadata"),
    (["0.0.0.0"], "unspecified"),
    (["::"], "unspecified"),
    (["fe80::1%eth0"], "link-local"),
    (["127.0.0.1%lo"], "loopback"),
    ([A_HOST, "::1"], "loopback"),  # A allowed, AAAA loopback
    (["2606:4700:4700::1111", "10.0.0.8"], "private"),  # a public AAAA and a private A
    ([A_HOST, A_HOST, "192.168.0.1"], "private"),
    (["not-an-address"], "unparsable"),
])
async def test_a_name_with_any_forbidden_answer_is_refused(tmp_path, monkeypatch, server_a, answers, reason):
    async def resolve(host: str, port: int) -> list[str]:
        return answers

    monkeypatch.setattr(_egress, "resolve_addresses", resolve)
    err = await _refused(_settings(tmp_path), url=f"http://mixed.test:{server_a.port}/")
    assert err.code == "egress.blocked" and err.extra["reason"] == reason, err
    assert server_a.requests == []


async def test_rebinding_between_check_and_connect_cannot_redirect_the_connection(tmp_path, monkeypatch, canary):
    """The first answer is allowed, every later one loopback: only one resolution happens per hop, and the
    connection goes to the checked address (httpx never sees the name), so the canary hears nothing."""
    good = await start_server(A_HOST, canary.port, name="GOOD")  # same port as the loopback canary
    calls: list[str] = []

    async def rebinding(host: str, port: int) -> list[str]:
        calls.append(host)
        return [A_HOST] if len(calls) == 1 else ["127.0.0.1"]

    monkeypatch.setattr(_egress, "resolve_addresses", rebinding)
    try:
        out = await _call(_settings(tmp_path), method="POST", body="x", url=f"http://rebind.test:{good.port}/echo")
        d = json.loads(out["body"])
        assert d["server"] == "GOOD" and d["headers"]["host"] == f"rebind.test:{good.port}"
        assert calls == ["rebind.test"] and canary.requests == []
    finally:
        await good.close()


@pytest.mark.parametrize("url", ["http://ｌｏｃａｌｈｏｓｔ/", "http://LOCALHOST。/", "http://localhost./",
                                 "http://localhost.localdomain/", "http://xn--localhost-/", "http://loca\u00adlhost/"])
async def test_names_that_reach_localhost_are_refused_or_invalid(tmp_path, url):
    err = await _refused(_settings(tmp_path, egress_allow_private=[]), url=url)
    assert err.code in ("egress.blocked", "input.invalid", "tool.failed"), err
    if err.code == "egress.blocked":
        assert err.extra["reason"] == "loopback"


# ----------------------------------------------------------------------------------------- environment proxies

async def test_proxy_variables_and_no_proxy_change_nothing(tmp_path, monkeypatch, server_a, canary):
    proxy = await start_server(C_HOST, name="PROXY")
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.setenv(var, proxy.base)
    monkeypatch.setenv("NO_PROXY", "*")  # a trust_env client would also bypass everything it checks
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "attacker-ca.pem"))
    try:
        s = _settings(tmp_path)
        out = await _call(s, url=f"{server_a.base}/redirect?code=307&to={quote(proxy.base + '/echo', safe='')}")
        assert json.loads(out["body"])["server"] == "PROXY"  # reached as itself (allowed), not as a proxy
        assert proxy.requests[0]["target"] == "/echo"  # origin-form: nobody asked it to proxy
        err = await _refused(s, url=f"{server_a.base}/redirect?to=http://127.0.0.1:{canary.port}/")
        assert err.code == "egress.blocked" and canary.requests == []
    finally:
        await proxy.close()


# ---------------------------------------------------------------------------------------------- request side

def _echo_raw(req: RawRequest, w: asyncio.StreamWriter) -> Any:
    return respond(w, 200, b"ok")


async def test_framing_and_hop_by_hop_headers_from_arguments_never_reach_the_wire(tmp_path):
    hostile = {"Transfer-Encoding": "chunked", "Content-Length": "0", "TE": "trailers", "Expect": "100-continue",
               "Proxy-Authorization": "Basic eA==", "Proxy-Connection": "keep-alive", "Connection": "close, X-Secret",
               "X-Secret": "s", "Keep-Alive": "timeout=999", "Upgrade": "websocket", "Trailer": "X-T"}
    with HostileServer(_echo_raw, host=A_HOST) as srv:
        await _call(_settings(tmp_path), method="POST", url=f"{srv.url}/", headers=hostile, body="GET /smuggled")
        [req] = srv.requests
        names = [n.lower() for n, _ in req.raw_headers]
        for gone in ("transfer-encoding", "te", "expect", "proxy-authorization", "proxy-connection", "x-secret",
                     "keep-alive", "upgrade", "trailer"):
            assert gone not in names, (gone, req.raw_headers)
        assert names.count("content-length") == 1 and req.headers["content-length"] == str(len("GET /smuggled"))
        assert names.count("host") == 1 and req.headers["host"] == srv.url.removeprefix("http://")
        assert req.body == b"GET /smuggled"


async def test_a_user_agent_in_any_case_is_sent_once(tmp_path):
    """FIXED: ``setdefault("User-Agent")`` missed a ``user-agent`` key, so two User-Agent lines went out."""
    with HostileServer(_echo_raw, host=A_HOST) as srv:
        for name in ("user-agent", "USER-AGENT", "User-Agent"):
            await _call(_settings(tmp_path), url=f"{srv.url}/", headers={name: "bundle/1"})
        for req in srv.requests:
            assert [v for n, v in req.raw_headers if n.lower() == "user-agent"] == ["bundle/1"], req.raw_headers
        await _call(_settings(tmp_path), url=f"{srv.url}/")
        assert [v for n, v in srv.requests[-1].raw_headers if n.lower() == "user-agent"] == ["stockade-http/0.1"]


@pytest.mark.parametrize("headers", [
    {"X-A": "v\r\n\r\nGET /smuggled HTTP/1.1"}, {"X-A\r\nHost": "127.0.0.1"}, {"Host": "127.0.0.1"},
    {"host": "localhost"}, {"X-A": "x" * 8193}, {f"X-{i}": "v" for i in range(65)}, {"": "v"}, {"X:A": "v"},
])
async def test_header_injection_through_arguments_is_input_invalid(tmp_path, headers):
    with HostileServer(_echo_raw, host=A_HOST) as srv:
        err = await _refused(_settings(tmp_path), url=f"{srv.url}/", headers=headers)
        assert err.code == "input.invalid" and srv.requests == []


@pytest.mark.parametrize("method", ["TRACE", "CONNECT", "TRACK", "PROPFIND", "GET / HTTP/1.1\r\nX:", "", "get\n"])
def test_methods_outside_the_allowed_set_are_refused(method):
    with pytest.raises(ValidationError):
        HttpRequestArgs.model_validate({"url": "http://example.com/", "method": method})


async def test_a_body_over_the_cap_is_refused_before_any_connection(tmp_path):
    with HostileServer(_echo_raw, host=A_HOST) as srv:
        err = await _refused(_settings(tmp_path, egress_max_bytes=1000), method="PUT", url=f"{srv.url}/",
                             body="é" * 501)  # 501 characters, 1002 bytes: the cap counts bytes
        assert err.code == "input.too_large" and srv.requests == []



async def test_a_downgrade_from_https_to_http_on_the_same_name_drops_credentials(tmp_path, monkeypatch):
    from tests.tools.test_http_helpers import make_tls

    server_ctx, client_ctx = make_tls(tmp_path, "api.test")
    tls = await start_server(A_HOST, name="TLS", ssl_ctx=server_ctx)
    plain = await start_server(A_HOST, name="PLAIN")

    async def resolve(host: str, port: int) -> list[str]:
        return [A_HOST]

    monkeypatch.setattr(_egress, "resolve_addresses", resolve)
    try:
        s = _settings(tmp_path)
        tool = HttpRequestTool(s, ssl_context=client_ctx)
        to = quote(f"http://api.test:{plain.port}/echo", safe="")
        args = HttpRequestArgs.model_validate({"url": f"https://api.test:{tls.port}/redirect?code=308&to={to}",
                                               "headers": {"Authorization": "Bearer s3cret", "Cookie": "a=b"}})
        out = (await tool.run(args, make_ctx(s))).result
        h = json.loads(out["body"])["headers"]
        assert json.loads(out["body"])["server"] == "PLAIN"
        assert "authorization" not in h and "cookie" not in h  # never in clear text to another origin
        assert {n.lower() for n, _ in tls.requests[0]["headers"]} >= {"authorization", "cookie"}
    finally:
        await tls.close()
        await plain.close()
