"""A tenant's MCP server credentials (header values, URL query values) reach neither the logs nor the bundle.

Found by a walkthrough: the HTTP client under the MCP SDK (httpx2) logged every exchange at INFO with the
full URL, query included (``HTTP Request: POST http://.../mcp?token=qsecret-... "HTTP/1.1 200 OK"``), and a
server that echoed the stored Authorization header in a tool result with ``isError: true`` (MCP's normal tool
failure) handed it to the bundle - and to the idempotency table - unredacted.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import pytest

from tests.fakes.hostile_http import HostileServer, RawRequest, jsonrpc_result, mcp_handler, respond
from tests.tools import _mcp_attack_env as _env
from tests.tools._mcp_attack_env import code

pytestmark = pytest.mark.timeout(60)

settings = _env.settings
chain_env = _env.chain_env

HEADER = "Bearer hdr-secret-abcdef"
QUERY = "?token=qsecret-abcdef123&api_key=k2%2Bsecret-value9"
WORDS = ("hdr-secret", "qsecret", "k2%2Bsecret", "k2+secret")


def _echoing(*, is_error: bool) -> Any:
    """tools/call answered with the request's headers echoed back: in a response header, and in the result."""
    async def on_call(req: RawRequest, mid: Any, w: asyncio.StreamWriter) -> None:
        echoed = json.dumps({"authorization": req.headers.get("authorization", ""), "path": req.path})
        result = {"content": [{"type": "text", "text": f"headers: {echoed}"}], "isError": is_error,
                  "structuredContent": {"seen": {"authorization": req.headers.get("authorization", "")},
                                        "token": req.headers.get("authorization", "").rpartition(" ")[2]}}
        await respond(w, 200, jsonrpc_result(mid, result), headers={"x-echo": req.headers.get("authorization", "")})
    return on_call


def _leaks(records: list[logging.LogRecord]) -> list[str]:
    out = []
    fmt = logging.Formatter()
    for r in records:
        text = fmt.format(r)
        if any(w in text for w in WORDS):
            out.append(f"{r.name}: {text[:300]}")
    return out


async def test_no_query_or_header_value_of_a_server_reaches_the_logs(chain_env: Any,
                                                                      caplog: pytest.LogCaptureFixture) -> None:
    call, svc, tenant = chain_env
    caplog.set_level(logging.DEBUG)
    with HostileServer(mcp_handler(on_call=_echoing(is_error=False))) as srv:
        await svc.extras["mcp"].register(tenant, "h", srv.url + "/mcp" + QUERY, {"Authorization": HEADER},
                                         key_id="k")
        out = await call("mcp.h.add", a=1, b=2)
        assert isinstance(out, dict), out
        await svc.extras["mcp"].refresh(tenant, "h")
    assert _leaks(caplog.records) == []
    # operators still see the requests, with the values cut out
    seen = [r.getMessage() for r in caplog.records if r.name == "httpx2" and "HTTP Request" in r.getMessage()]
    assert seen and all("token=[redacted]&api_key=[redacted]" in m for m in seen), seen


async def test_a_failing_server_leaks_nothing_into_the_logs_either(chain_env: Any,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    # errors the SDK or the client log (a 401 naming the URL, a broken stream) go through the same redaction
    call, svc, tenant = chain_env
    caplog.set_level(logging.DEBUG)
    calls = 0

    async def refuse(req: RawRequest, w: asyncio.StreamWriter) -> None:
        nonlocal calls
        calls += 1
        auth = req.headers.get("authorization", "")
        await respond(w, 401, f"no access for {auth} at {req.path}".encode(), content_type="text/plain",
                      headers={"www-authenticate": auth})

    ok = mcp_handler(on_call=_echoing(is_error=False))

    async def handler(req: RawRequest, w: asyncio.StreamWriter) -> None:
        msg = req.json() or {}
        if msg.get("method") == "tools/call":
            await refuse(req, w)
        else:
            await ok(req, w)

    with HostileServer(handler) as srv:
        await svc.extras["mcp"].register(tenant, "h", srv.url + "/mcp" + QUERY, {"Authorization": HEADER},
                                         key_id="k")
        out = await call("mcp.h.add", a=1, b=2)
    assert code(out) is not None and calls == 1, out
    assert not any(w in json.dumps(out.to_dict()) for w in WORDS), out.to_dict()
    assert _leaks(caplog.records) == []


def test_the_root_handlers_redact_any_logger() -> None:
    # stockade serve puts the filter on the root handlers too: a logger the SDK creates later, or asyncio's
    # "Task exception was never retrieved", cannot print a stored credential either
    from supervisor.tools.mcp import protect_logs
    from supervisor.tools.mcp._logs import remember_secrets

    remember_secrets({"Authorization": "Bearer root-hdr-SEKRET-0123"}, "https://mcp.example/mcp?key=root-q-SEKRET")
    lines: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(self.format(record))

    handler = Keep()
    protect_logs([handler])
    protect_logs([handler])  # idempotent
    assert len(handler.filters) == 1
    log = logging.getLogger("stockade.test.some.new.logger")
    log.addHandler(handler)
    log.propagate = False
    try:
        log.warning("GET %s failed: %s", "https://other.example/x?sig=abc123&v=2", "root-hdr-SEKRET-0123")
        try:
            raise RuntimeError("cannot reach https://mcp.example/mcp?key=root-q-SEKRET")
        except RuntimeError:
            log.exception("boom")
    finally:
        log.removeHandler(handler)
    text = "\n".join(lines)
    assert "SEKRET" not in text and "abc123" not in text, text
    assert "https://other.example/x?sig=[redacted]&v=[redacted]" in text and "RuntimeError" in text, text


@pytest.mark.parametrize("is_error", [True, False], ids=["isError", "success"])
async def test_a_result_echoing_the_stored_credentials_reaches_the_bundle_redacted(chain_env: Any,
                                                                                   is_error: bool) -> None:
    # isError: true is MCP's ordinary tool failure ("invalid token Bearer ..."): unlike a JSON-RPC error it went to
    # the bundle as the server wrote it, and into the idempotency table
    call, svc, tenant = chain_env
    with HostileServer(mcp_handler(on_call=_echoing(is_error=is_error))) as srv:
        await svc.extras["mcp"].register(tenant, "h", srv.url + "/mcp" + QUERY, {"Authorization": HEADER},
                                         key_id="k")
        out = await call("mcp.h.add", a=1, b=2)
        again = await call("mcp.h.add", a=1, b=2)  # deduplicated: the copy kept in the idempotency table
    assert isinstance(out, dict) and out["is_error"] is is_error, out
    text = json.dumps(out)
    assert not any(w in text for w in WORDS), text
    # the rest of what the server said is kept (the path with its redacted query values, the header's scheme)
    assert out["structured"] == {"seen": {"authorization": "[redacted]"}, "token": "[redacted]"}, out
    assert "token=[redacted]" in out["content"][0]["text"] and "api_key=[redacted]" in out["content"][0]["text"]
    assert again == out
    assert not any(w in json.dumps(r.detail, default=str) for r in await svc.audit.list(tenant, after_seq=0, limit=100)
                   for w in WORDS)


def test_scrub_json_reaches_every_string_key_and_level() -> None:
    from supervisor.tools.mcp._redact import scrub_json, server_secrets

    words = server_secrets({"Authorization": "Bearer tok-0123456789", "X-Id": "12345678"}, "https://h/m?k=q%2Bval-999")
    deep: Any = "tok-0123456789"
    for _ in range(5000):  # deeper than Python's recursion limit
        deep = [deep]
    value = {"Bearer tok-0123456789": {"n": 12345678, "m": 123456789, "s": "a q+val-999 b q%2Bval-999"}, "d": deep}
    out = scrub_json(value, words)
    assert out["[redacted]"] == {"n": "[redacted]", "m": 123456789, "s": "a [redacted] b [redacted]"}
    inner = out["d"]
    while isinstance(inner, list):
        inner = inner[0]
    assert inner == "[redacted]"


async def test_a_listing_echoing_the_stored_credentials_is_pinned_redacted(chain_env: Any) -> None:
    """Found in a review of the redaction: tool definitions were pinned as listed, so a server that put the
    Authorization header it was sent (or its URL's token) into a description, a schema or a tool name had
    the credential stored, hashed and shown to every reader of the tenant (GET /v1/mcp/servers, a viewer
    key included). They are now cut out before hashing, the same way each time: a refresh finds the
    definitions unchanged, and a call's live check still matches its pin."""
    from tests.fakes.hostile_http import ADD_TOOL

    call, svc, tenant = chain_env

    async def on_list(req: RawRequest, mid: Any, w: asyncio.StreamWriter) -> None:
        auth = req.headers.get("authorization", "")
        token = req.path.partition("token=")[2].partition("&")[0]
        add = {**ADD_TOOL, "description": f"adds; called with {auth} at {req.path}",
               "inputSchema": {**ADD_TOOL["inputSchema"], "title": f"key {token}"}}
        named = {"name": token, "description": "a tool named after the token", "inputSchema": {"type": "object"}}
        await respond(w, 200, jsonrpc_result(mid, {"tools": [add, named]}))

    mcp = svc.extras["mcp"]
    with HostileServer(mcp_handler(on_list=on_list)) as srv:
        server, pins, skipped = await mcp.register(tenant, "h", srv.url + "/mcp" + QUERY, {"Authorization": HEADER},
                                                   key_id="k")
        shown = json.dumps([[p.definition for p in pins], skipped, [p.definition for _, ps in await mcp.servers(tenant)
                                                                   for p in ps]])
        assert not any(w in shown for w in WORDS), shown
        assert [p.name for p in pins] == ["add"] and skipped == ["[redacted]"], (pins, skipped)
        assert pins[0].definition["description"] == "adds; called with [redacted] at /mcp?token=[redacted]&api_key=[redacted]"
        assert pins[0].definition["input_schema"]["title"] == "key [redacted]"
        report = await mcp.refresh(tenant, "h")
        assert [(c.tool.name, c.change) for c in report.tools] == [("add", "unchanged")], report
        assert await call("mcp.h.add", a=1, b=2) == {"content": [{"type": "text", "text": "3"}], "is_error": False,
                                                      "structured": None}


LONG = "Bearer LONGTOKEN_0123456789abcdefghijklmnopqrstuvwxyz_0123456789ABCDEF"


async def test_a_malformed_answer_ending_in_the_credential_leaks_no_part_of_it(chain_env: Any) -> None:
    """Found by a walkthrough: pydantic's parse error quotes what it read shortened in the middle
    (``input_value=b'{"jsonrpc":"2.0","id":4...uvwxyz_0123456789ABCDEF'``): the credential cut in two, so the
    redaction (whole words) missed its last 23 characters, which reached the bundle, the events and the audit."""
    call, svc, tenant = chain_env
    ok = mcp_handler()

    async def handler(req: RawRequest, w: asyncio.StreamWriter) -> None:
        msg = req.json() or {}
        if msg.get("method") == "tools/call":
            head = '{"jsonrpc":"2.0","id":' + json.dumps(msg.get("id")) + ',"result":{"content":[{"type":"text","text":"'
            body = head + "x" * 200 + " token=" + req.headers.get("authorization", "")  # cut off: no closing
            await respond(w, 200, body.encode())
        else:
            await ok(req, w)

    with HostileServer(handler) as srv:
        await svc.extras["mcp"].register(tenant, "h", srv.url + "/mcp", {"Authorization": LONG}, key_id="k")
        out = await call("mcp.h.add", a=1, b=2)
    assert code(out) is not None, out
    token = LONG.split()[1]
    shown = json.dumps(out.to_dict()) + json.dumps([r.detail for r in await svc.audit.list(tenant, after_seq=0,
                                                                                           limit=100)], default=str)
    fragments = [token[i:i + 8] for i in range(len(token) - 7)]
    assert not [f for f in fragments if f in shown], shown


def test_redaction_catches_a_credential_in_any_case_and_in_part_next_to_a_shortening() -> None:
    from supervisor.tools.mcp._redact import redact_fragments, redact_words, secret_words

    words = secret_words(["Bearer HdrSecret_abcdef123456", "XKEYSECRET987654321"])
    # was: an upper- or lower-cased copy passed (a case-insensitive key is the key itself)
    assert redact_words("BEARER HDRSECRET_ABCDEF123456 / xkeysecret987654321", words) == "[redacted] / [redacted]"
    assert redact_words("nothing here", words) == "nothing here"
    # a quote shortened in the middle keeps an end of the word, or its start
    assert redact_fragments("read b'{...ecret_abcdef123456'", words) == "read b'{...[redacted]'"
    assert redact_fragments("read b'HdrSecret_ab...}'", words) == "read b'[redacted]...}'"
    assert redact_fragments("cut at the end: XKEYSECR", words) == "cut at the end: [redacted]"
    assert redact_fragments("a...b and Bearer", words) == "a...b and [redacted]"  # 6 or more of a start: gone too
