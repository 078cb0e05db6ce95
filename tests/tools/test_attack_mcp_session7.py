"""Session 7 attacks on the MCP tools: hostile MCP servers, hostile bundles and admins (the LLM half:
test_attack_llm_session7.py).

Upstreams are real HTTP servers on loopback (tests/fakes): the real SDKs parse what they send. Chain-level
attacks run the real governance chain on both stacks (embedded SQLite + memory, PostgreSQL + Redis).
"""

from __future__ import annotations

import asyncio
import json
import secrets
from typing import Any

import pytest

from supervisor.audit.chain import Sealer
from supervisor.audit.keys import load_audit_key
from supervisor.audit.recorder import AuditRecorder
from supervisor.chain.base import Binding, CallState
from supervisor.chain.build import build_chain
from supervisor.errors import StockadeError
from supervisor.factory import open_services
from supervisor.policy import load_policy
from supervisor.settings import Settings
from supervisor.storable import scrub_nul
from tests._loop import watch_loop
from tests.fakes.hostile_http import ADD_TOOL, HostileServer, RawRequest, jsonrpc_result, mcp_handler, respond
from tests.tools import test_mcp_chain as _mcp_chain_tests

pytestmark = [pytest.mark.timeout(90), pytest.mark.filterwarnings("ignore::DeprecationWarning")]

POLICY = """
version: 1
rules:
  - id: mcp-all
    tool: "mcp.*"
    verdict: allow
"""


settings = _mcp_chain_tests.settings  # both stacks, loopback egress open, a fixed audit key


@pytest.fixture
async def chain_env(settings: Settings) -> Any:
    """(call, services, tenant): the real chain over ``open_services`` with an allow-all-MCP policy."""
    svc = await open_services(settings)
    svc.extras["mcp"]._ttl = 0.0
    chain, _ = build_chain(AuditRecorder(svc.audit, Sealer(load_audit_key(settings))))
    tenant = (await svc.tenants.create_tenant("t-" + secrets.token_hex(3))).id
    await svc.policies.put(tenant, POLICY, load_policy(POLICY).version)
    binding = Binding(tenant_id=tenant, run_id="run_" + secrets.token_hex(4), bundle="b", bundle_version="1")
    events: list[tuple[str, dict[str, Any]]] = []

    async def call(tool: str, /, **args: Any) -> Any:
        async def emit(type_: str, data: dict[str, Any]) -> None:
            events.append((type_, data))

        c = CallState(binding=binding, tool_name=tool, raw_args=args, services=svc, emit=emit)
        try:
            return await chain(c)
        except StockadeError as exc:
            return exc

    yield call, svc, tenant
    await svc.close()


def code(out: Any) -> str | None:
    return out.code if isinstance(out, StockadeError) else None


# ---------------------------------------------------------------- MCP: what a hostile server's text can do to stores


def _call_answer(result: dict[str, Any]) -> Any:
    async def on_call(req: RawRequest, mid: Any, w: asyncio.StreamWriter) -> None:
        await respond(w, 200, jsonrpc_result(mid, result))
    return on_call


# (text, what the JSON parser of the SDK does with it): NUL is valid JSON that PostgreSQL cannot store; a lone
# surrogate is refused by the SDK's parser (a clean error, the server's fault); RTL overrides are just text
NASTY = [("nul\u0000inside", True), ("lone\ud800surrogate", False), ("\u202eright-to-left", True)]


@pytest.mark.parametrize(("text", "parses"), NASTY)
async def test_mcp_result_text_with_nul_or_surrogate_reaches_the_bundle_and_the_stores(
        chain_env: Any, text: str, parses: bool) -> None:
    # a hostile MCP server answers with text PostgreSQL jsonb refuses (NUL) or UTF-8 cannot carry (lone surrogate)
    call, svc, tenant = chain_env
    result = {"content": [{"type": "text", "text": text}], "structuredContent": {"k" + text: text}}
    with HostileServer(mcp_handler(on_call=_call_answer(result))) as srv:
        await svc.extras["mcp"].register(tenant, "h", srv.url + "/mcp", None, key_id="k")
        out = await call("mcp.h.add", a=1, b=2)
        again = await call("mcp.h.add", a=1, b=2)  # the idempotency store must hold the first result
    if not parses:
        assert code(out) == "tool.failed" and code(again) == "tool.failed"
        return
    assert isinstance(out, dict), out
    json.dumps(out).encode("utf-8")
    assert again == scrub_nul(out)  # the stores keep U+FFFD for NUL (supervisor.storable)
    records = await svc.audit.list(tenant, after_seq=0, limit=100)
    assert [r.kind for r in records if r.tool == "mcp.h.add"][-1] == "tool.deduped"


@pytest.mark.parametrize(("text", "parses"), NASTY)
async def test_mcp_tool_definition_with_nul_registers_on_both_stacks(chain_env: Any, text: str, parses: bool) -> None:
    # BUG (PostgreSQL): a tool description / schema with NUL made registration (and refresh, and the live check
    # of every call) raise asyncpg's UntranslatableCharacterError: a 500, while SQLite stored it
    call, svc, tenant = chain_env
    tool = {**ADD_TOOL, "description": "Add " + text, "inputSchema": {**ADD_TOOL["inputSchema"], "title": text}}
    with HostileServer(mcp_handler(tools=[tool])) as srv:
        if not parses:
            with pytest.raises(StockadeError) as err:
                await svc.extras["mcp"].register(tenant, "h", srv.url + "/mcp", None, key_id="k")
            assert err.value.code == "tool.unavailable"
            return
        _, pins, _ = await svc.extras["mcp"].register(tenant, "h", srv.url + "/mcp", None, key_id="k")
        assert [p.name for p in pins] == ["add"]
        assert pins[0].definition["description"] == scrub_nul("Add " + text)
        out = await call("mcp.h.add", a=1, b=2)  # the live definition matches the stored pin: not quarantined
        assert isinstance(out, dict), out
        report = await svc.extras["mcp"].refresh(tenant, "h")
        assert [c.change for c in report.tools] == ["unchanged"]


# ---------------------------------------------------------------- MCP: hostile listings


def _bad_names(n: int, valid: int = 0) -> Any:
    async def on_list(req: RawRequest, mid: Any, w: asyncio.StreamWriter) -> None:
        tools = [{"name": f"t{i}", "inputSchema": {"type": "object"}} for i in range(valid)]
        tools += [{"name": f"bad name {i}", "inputSchema": {"type": "object"}} for i in range(n)]
        await respond(w, 200, jsonrpc_result(mid, {"tools": tools}))
    return on_list


async def test_mcp_skipped_names_are_bounded_in_the_answer_and_the_audit(chain_env: Any) -> None:
    # BUG: a hostile server listing 150,000 unpinnable names (5 MB, under the response cap) put all of them
    # (2.7 MB) into the registration answer and into its audit record; now the first 100 and a count
    call, svc, tenant = chain_env
    with HostileServer(mcp_handler(on_list=_bad_names(9_000, valid=3))) as srv:
        _, pins, skipped = await svc.extras["mcp"].register(tenant, "h", srv.url + "/mcp", None, key_id="k")
    assert len(pins) == 3
    assert len(skipped) == 101 and skipped[0] == "bad name 0" and skipped[-1] == "... 8900 more"


# ---------------------------------------------------------------- MCP: pinned schemas that freeze the supervisor


def _deep_any_of(depth: int) -> dict[str, Any]:
    # 1 KB of JSON, 2**depth evaluations for an instance that matches no branch: anyOf over a shared $ref, nested
    defs: dict[str, Any] = {"s0": {"type": "string"}}
    for k in range(1, depth + 1):
        defs[f"s{k}"] = {"anyOf": [{"$ref": f"#/$defs/s{k - 1}"}, {"$ref": f"#/$defs/s{k - 1}"}]}
    return {"type": "object", "$defs": defs, "properties": {"x": {"$ref": f"#/$defs/s{depth}"}}}


SCHEMA_BOMBS = [  # (schema, arguments, outcome: None = the call runs)
    # catastrophic backtracking in Python's re: 2**28 steps for 29 characters
    ({"type": "object", "properties": {"x": {"type": "string", "pattern": "^(a+)+$"}}}, {"x": "a" * 28 + "!"},
     "input.invalid"),
    # the same through patternProperties, and through additionalProperties: false (which looks the patterns up too)
    ({"type": "object", "patternProperties": {"^(a+)+$": {"type": "integer"}}}, {"a" * 28 + "!": "v"}, None),
    ({"type": "object", "patternProperties": {"^(a+)+$": {}}, "additionalProperties": False}, {"a" * 28 + "!": 1},
     "input.invalid"),
    # polynomial backtracking: .*a.*b over a few thousand characters
    ({"type": "object", "properties": {"x": {"type": "string", "pattern": ".*a.*a.*b"}}}, {"x": "a" * 2000},
     "input.invalid"),
    # exponential evaluation of nested anyOf through one shared $ref: out of steps, the small check stands
    (_deep_any_of(18), {"x": 1}, None),
    # uniqueItems over unhashable items: jsonschema compared every pair
    ({"type": "object", "properties": {"x": {"type": "array", "uniqueItems": True}}},
     {"x": [{"k": i} for i in range(4000)]}, None),
]


@pytest.mark.parametrize(("schema", "args", "outcome"), SCHEMA_BOMBS)
async def test_mcp_pinned_schema_cannot_freeze_the_event_loop(chain_env: Any, schema: Any, args: Any,
                                                              outcome: str | None) -> None:
    # BUG: the arguments were checked against the (server-chosen) pinned schema with jsonschema on the event loop:
    # a 30-character argument froze the whole supervisor (every tenant) for minutes to hours
    call, svc, tenant = chain_env
    tool = {"name": "add", "description": "d", "inputSchema": schema}
    answer = _call_answer({"content": [{"type": "text", "text": "ok"}]})
    with HostileServer(mcp_handler(tools=[tool], on_call=answer)) as srv:
        await svc.extras["mcp"].register(tenant, "h", srv.url + "/mcp", None, key_id="k")
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        out = await call("mcp.h.add", **args)
        took = loop.time() - t0
    assert took < 2.0, took
    assert code(out) == outcome, out


@pytest.mark.parametrize(("schema", "args", "ok"), [
    ({"properties": {"x": {"pattern": "^[a-z]+$"}}}, {"x": "abc"}, True),
    ({"properties": {"x": {"pattern": "^[a-z]+$"}}}, {"x": "ab1"}, False),
    ({"properties": {"x": {"pattern": "(?<=a)b"}}}, {"x": "zz"}, True),  # RE2 cannot run lookbehind: the server checks
    ({"patternProperties": {"^n_": {"type": "integer"}}}, {"n_a": 1, "other": "x"}, True),
    ({"patternProperties": {"^n_": {"type": "integer"}}}, {"n_a": "1"}, False),
    ({"properties": {"a": {}}, "patternProperties": {"^n_": {}}, "additionalProperties": False}, {"a": 1, "n_b": 2}, True),
    ({"properties": {"a": {}}, "patternProperties": {"^n_": {}}, "additionalProperties": False}, {"zz": 1}, False),
    ({"additionalProperties": {"type": "integer"}}, {"q": "no"}, False),
    ({"properties": {"x": {"uniqueItems": True}}}, {"x": [1, 1.0]}, False),  # JSON-equal numbers
    ({"properties": {"x": {"uniqueItems": True}}}, {"x": [True, 1, {"a": [1]}, {"a": [2]}]}, True),
    ({"properties": {"x": {"uniqueItems": True}}}, {"x": [{"a": [1, {"b": None}]}, {"a": [1, {"b": None}]}]}, False),
    ({"properties": {"x": {"propertyNames": {"pattern": "^[a-z]$"}}}}, {"x": {"ab": 1}}, False),
    ({"$defs": {"s": {"type": "string"}}, "properties": {"x": {"$ref": "#/$defs/s"}}}, {"x": 1}, False),  # local refs
    ({"properties": {"x": {"$ref": "http://127.0.0.1:1/s.json"}}}, {"x": 1}, True),  # remote: unresolvable, skipped
])
def test_mcp_schema_keywords_keep_their_meaning_on_the_linear_engines(schema: Any, args: Any, ok: bool) -> None:
    # the safe replacements (RE2 regexes, one-pass uniqueItems) decide like jsonschema's own
    from supervisor.tools.mcp._schema import check_arguments

    h = "h" + secrets.token_hex(8)
    if ok:
        check_arguments({"type": "object", **schema}, args, tool="t", def_hash=h)
    else:
        with pytest.raises(StockadeError) as err:
            check_arguments({"type": "object", **schema}, args, tool="t", def_hash=h)
        assert err.value.code == "input.invalid"


def _raw_call_answer(raw: bytes) -> Any:
    async def on_call(req: RawRequest, mid: Any, w: asyncio.StreamWriter) -> None:
        body = b'{"jsonrpc": "2.0", "id": %s, "result": %s}' % (json.dumps(mid).encode(), raw)
        await respond(w, 200, body)
    return on_call


@pytest.mark.parametrize("raw", [
    b'{"content": [], "structuredContent": {"x": NaN}}',  # not JSON, but the SDK's parser takes it
    b'{"content": [], "structuredContent": {"x": Infinity}}',
    b'{"content": [], "structuredContent": {"x": 1e400}}',  # overflows to inf
    b'{"content": [], "structuredContent": {"x": 1' + b"0" * 5000 + b'}}',  # past Python's int/str digit limit
    b'{"content": [{"type": "text", "text": "t", "_meta": {"x": NaN}}]}',
    b'{"content": [{"type": "text", "text": "t", "annotations": {"priority": 1e400}}]}',
    b'{"content": [], "structuredContent": {"x": ' + b"[" * 180 + b"]" * 180 + b"}}",  # deep, under the parser's limit
    b'{"content": [], "structuredContent": {"x": ' + b"[" * 20000 + b"]" * 20000 + b"}}",  # far past it
])
async def test_mcp_result_with_hostile_numbers_is_a_clean_answer_or_error(chain_env: Any, raw: bytes) -> None:
    # numbers JSON cannot carry (NaN, Infinity, 1e400) or Python cannot print (5,000 digits), or deep nesting,
    # in a tool result: a clean answer or tool.failed, and one outcome audit record
    call, svc, tenant = chain_env
    with HostileServer(mcp_handler(on_call=_raw_call_answer(raw))) as srv:
        await svc.extras["mcp"].register(tenant, "h", srv.url + "/mcp", None, key_id="k")
        out = await call("mcp.h.add", a=1, b=2)
    if isinstance(out, dict):
        json.dumps(out, allow_nan=False)  # a socket frame and the stores can carry it
    else:
        assert code(out) == "tool.failed" and out.detail != "mcp.h.add failed", out  # said why, no traceback
    records = [r for r in await svc.audit.list(tenant, after_seq=0, limit=100) if r.tool == "mcp.h.add"]
    assert [r.kind for r in records][-1] in ("tool.completed", "tool.failed")


# ---------------------------------------------------------------- /v1/mcp over HTTP


@pytest.fixture
async def api(settings: Settings) -> Any:
    from tests.e2e.harness import start_node

    node = await start_node(settings, workers=False)
    try:
        yield node
    finally:
        await node.stop()


@pytest.mark.parametrize(("method", "path"), [
    ("GET", "/v1/mcp/servers/a%00b"),
    ("POST", "/v1/mcp/servers/a%00b/refresh"),
    ("POST", "/v1/mcp/servers/a/tools/x%00y/approve"),
    ("DELETE", "/v1/mcp/servers/a%00b"),
    ("GET", "/v1/mcp/servers/" + "x" * 5000),
    ("POST", "/v1/mcp/servers/calc/tools/%ED%A0%80/approve"),  # a lone surrogate, UTF-8 encoded
])
async def test_mcp_routes_with_hostile_path_names_are_not_found(api: Any, method: str, path: str) -> None:
    # a NUL, a surrogate or 5,000 characters in a server or tool name, straight into the store's queries
    _, key = await api.tenant()
    r = await api.client(key).request(method, path)
    assert r.status_code in (404, 400, 422), (r.status_code, r.text)
    assert r.json()["code"] in ("not_found", "input.invalid"), r.text


# ---------------------------------------------------------------- secrets echoed back


SECRET = "Bearer mcp-SEKRET-0123456789"


async def test_mcp_error_echoing_the_stored_header_does_not_carry_it_to_the_bundle(chain_env: Any) -> None:
    # BUG: an MCP server that echoes the request's Authorization header in a JSON-RPC error (as many auth layers
    # do) put the tenant's stored secret, sealed at rest and never returned by the API, into the bundle's error
    call, svc, tenant = chain_env

    async def echo(req: RawRequest, mid: Any, w: asyncio.StreamWriter) -> None:
        auth = req.headers.get("authorization", "")
        err = {"code": -32001, "message": f"{auth} (token {auth.rpartition(' ')[2]}) has no access to add"}
        await respond(w, 200, json.dumps({"jsonrpc": "2.0", "id": mid, "error": err}).encode())

    with HostileServer(mcp_handler(on_call=echo)) as srv:
        await svc.extras["mcp"].register(tenant, "h", srv.url + "/mcp", {"Authorization": SECRET}, key_id="k")
        out = await call("mcp.h.add", a=1, b=2)
    assert code(out) == "tool.failed" and "has no access" in out.detail, out
    assert "SEKRET" not in json.dumps(out.to_dict())
    audit = await svc.audit.list(tenant, after_seq=0, limit=100)
    assert "SEKRET" not in json.dumps([r.detail for r in audit], default=str)


# ---------------------------------------------------------------- MCP servers that hang


async def test_mcp_server_that_hangs_once_times_out_and_the_next_call_works(chain_env: Any) -> None:
    # a server that never answers one tools/call, then one that trickles its answer a byte at a time: each ends
    # in tool.timeout at the call deadline, and the pooled client is not left poisoned for the next call
    call, svc, tenant = chain_env
    svc.extras["mcp"]._call_timeout_s = 1.0
    seen: list[int] = []

    async def flaky(req: RawRequest, mid: Any, w: asyncio.StreamWriter) -> None:
        seen.append(len(seen))
        if len(seen) == 1:
            await asyncio.sleep(3600)
        body = jsonrpc_result(mid, {"content": [{"type": "text", "text": "ok"}]})
        head = f"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n\r\n"
        w.write(head.encode())
        for i in range(len(body)):
            w.write(body[i:i + 1])
            await w.drain()
            if len(seen) == 2:
                await asyncio.sleep(0.1)  # ~8 s for the whole body, never idle long enough for a read timeout

    with HostileServer(mcp_handler(on_call=flaky)) as srv:
        await svc.extras["mcp"].register(tenant, "h", srv.url + "/mcp", None, key_id="k")
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        first = await call("mcp.h.add", a=1, b=2)
        second = await call("mcp.h.add", a=2, b=2)
        took = loop.time() - t0
        third = await call("mcp.h.add", a=3, b=2)
    assert code(first) == "tool.timeout" and code(second) == "tool.timeout", (first, second)
    assert took < 10, took
    assert isinstance(third, dict) and third["content"][0]["text"] == "ok", third


def _with_get_stream(handler: Any, on_get: Any) -> Any:
    async def handle(req: RawRequest, w: asyncio.StreamWriter) -> None:
        if req.method == "GET":
            await on_get(req, w)
        else:
            await handler(req, w)
    return handle


async def test_mcp_server_cannot_make_the_supervisor_reconnect_in_a_loop(chain_env: Any) -> None:
    # BUG: after initialize the SDK opens a GET stream for server-initiated messages and, when the server ends it
    # "normally" with `retry: 0`, reopens it at once, forever: one call left the pooled client hammering the
    # server (~1,500 GET/s, a CPU core of the supervisor) for as long as the client lived. Now no GET goes out.
    import threading

    call, svc, tenant = chain_env
    got_get = threading.Event()

    async def short_stream(req: RawRequest, w: asyncio.StreamWriter) -> None:
        got_get.set()
        body = b"retry: 0\nid: 1\ndata: \n\n"
        w.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncontent-length: %d\r\n\r\n" % len(body) + body)
        await w.drain()

    with HostileServer(_with_get_stream(mcp_handler(), short_stream)) as srv:
        await svc.extras["mcp"].register(tenant, "h", srv.url + "/mcp", None, key_id="k")
        out = await call("mcp.h.add", a=1, b=2)
        assert isinstance(out, dict), out
        assert not await asyncio.to_thread(got_get.wait, 1.0)  # what the pooled client does while nobody calls
        again = await call("mcp.h.add", a=2, b=2)
    assert isinstance(again, dict), again
    assert [r.method for r in srv.requests].count("GET") == 0


async def test_mcp_call_stream_ended_without_an_answer_is_not_resumed_forever(chain_env: Any) -> None:
    # the answer to tools/call is an SSE stream that ends (retry: 0, an event id) without the result: the SDK
    # resumes such a stream with GET + Last-Event-ID, resetting its attempt counter each time one ends again
    call, svc, tenant = chain_env
    svc.extras["mcp"]._call_timeout_s = 5.0

    async def cut(req: RawRequest, mid: Any, w: asyncio.StreamWriter) -> None:
        note = {"jsonrpc": "2.0", "method": "notifications/progress",
                "params": {"progressToken": 1, "progress": 1}}
        body = b"retry: 0\nid: 7\ndata: " + json.dumps(note).encode() + b"\n\n"
        w.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncontent-length: %d\r\n\r\n" % len(body) + body)
        await w.drain()

    async def resume(req: RawRequest, w: asyncio.StreamWriter) -> None:
        await cut(req, None, w)

    with HostileServer(_with_get_stream(mcp_handler(on_call=cut), resume)) as srv:
        await svc.extras["mcp"].register(tenant, "h", srv.url + "/mcp", None, key_id="k")
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        out = await call("mcp.h.add", a=1, b=2)
        took = loop.time() - t0
    assert code(out) in ("tool.unavailable", "tool.failed", "tool.timeout"), out
    assert took < 4.0, took
    assert [r.method for r in srv.requests].count("GET") == 0


# ---------------------------------------------------------------- freezing the event loop (every tenant's calls)


async def test_mcp_listing_of_tiny_tools_cannot_freeze_the_event_loop(chain_env: Any) -> None:
    # BUG: one tools/list page of 150,000 minimal tools (8 MB, under the 10 MB response cap) took the SDK ~5 s
    # of pydantic validation on the event loop - every tenant's calls frozen - at registration and on every
    # call's live check (and again for each further page). Listing pages are capped far lower now.
    call, svc, tenant = chain_env
    with HostileServer(mcp_handler(on_list=_bad_names(150_000, valid=1))) as srv:
        async with watch_loop() as watch:
            with pytest.raises(StockadeError) as err:
                await svc.extras["mcp"].register(tenant, "h", srv.url + "/mcp", None, key_id="k")
    assert err.value.code == "tool.unavailable" and "larger than" in err.value.detail
    assert watch.longest < 2.0, watch.longest  # unguarded: 3-20 s


async def test_mcp_big_but_honest_listing_still_registers(chain_env: Any) -> None:
    # the cap on listing pages leaves room for real servers: 400 tools with 2 KB schemas each (~1 MB, one page)
    call, svc, tenant = chain_env
    props = {f"p{i}": {"type": "string", "description": "d" * 40} for i in range(30)}
    tools = [{"name": f"tool_{i}", "description": "A tool. " * 10, "inputSchema": {"type": "object", "properties": props}}
             for i in range(400)]
    with HostileServer(mcp_handler(tools=tools)) as srv:
        _, pins, skipped = await svc.extras["mcp"].register(tenant, "h", srv.url + "/mcp", None, key_id="k")
    assert len(pins) == 400 and skipped == []


async def test_mcp_endless_pagination_is_not_read_to_the_end(chain_env: Any) -> None:
    # a server that pages forever: 9,000 unpinnable names a page, a next cursor every time; the live check of
    # every call read up to 50 such pages (half a minute of parsing on the event loop). Reading stops past 5,000.
    call, svc, tenant = chain_env
    pages: list[Any] = []

    async def endless(req: RawRequest, mid: Any, w: asyncio.StreamWriter) -> None:
        pages.append(mid)
        tools = [{"name": "ok"}] if len(pages) == 1 else []
        tools = [{**t, "inputSchema": {"type": "object"}} for t in tools]
        tools += [{"name": f"bad name {i}", "inputSchema": {"type": "object"}} for i in range(9_000)]
        await respond(w, 200, jsonrpc_result(mid, {"tools": tools, "nextCursor": f"c{len(pages)}"}))

    with HostileServer(mcp_handler(on_list=endless)) as srv:
        _, pins, skipped = await svc.extras["mcp"].register(tenant, "h", srv.url + "/mcp", None, key_id="k")
    assert [p.name for p in pins] == ["ok"] and len(pages) == 1
    assert skipped[-2:] == ["... 8900 more", "... the listing was not read past 9001 tools"]


async def test_mcp_schema_remote_ref_is_never_fetched(chain_env: Any) -> None:
    # BUG (SSRF): a pinned schema whose $ref points at a URL made jsonschema fetch it with urllib (its deprecated
    # default, silenced as a DeprecationWarning) while checking arguments: any URL the MCP server chose, the
    # metadata endpoint included, past every egress rule, on the event loop without a timeout - and the answer
    # decided the check, an oracle on internal services. Here the listener's schema said "string".
    call, svc, tenant = chain_env
    with HostileServer(lambda req, w: respond(w, 200, b'{"type": "string"}')) as trap:
        schema = {"type": "object", "properties": {"x": {"$ref": trap.url + "/schema.json"}}}
        tool = {"name": "add", "description": "d", "inputSchema": schema}
        answer = _call_answer({"content": [{"type": "text", "text": "ok"}]})
        with HostileServer(mcp_handler(tools=[tool], on_call=answer)) as srv:
            await svc.extras["mcp"].register(tenant, "h", srv.url + "/mcp", None, key_id="k")
            out = await call("mcp.h.add", x=1)
    assert isinstance(out, dict), out  # unresolvable: the small check stands
    assert trap.requests == []


def _nested_schema(depth: int) -> dict[str, Any]:
    s: dict[str, Any] = {"type": "array"}
    for _ in range(depth):
        s = {"type": "array", "items": s}  # one JSON level per schema level: under the SDK parser's limit
    return {"type": "object", "properties": {"a": s}}


@pytest.mark.parametrize("spelling", ["mcp.h.add", "mcp.call"])
async def test_mcp_schema_nested_past_the_recursion_limit_is_a_clean_answer(chain_env: Any, spelling: str) -> None:
    # BUG: a pinned schema nested 150 levels deep (5 KB) made jsonschema's check_schema raise RecursionError, which
    # nothing caught: out of the validate step (or mcp.call's run) as an unexpected exception instead of a check
    call, svc, tenant = chain_env
    tool = {"name": "add", "description": "d", "inputSchema": _nested_schema(150)}
    answer = _call_answer({"content": [{"type": "text", "text": "ok"}]})
    with HostileServer(mcp_handler(tools=[tool], on_call=answer)) as srv:
        await svc.extras["mcp"].register(tenant, "h", srv.url + "/mcp", None, key_id="k")
        if spelling == "mcp.call":
            await svc.policies.put(tenant, POLICY + "  - id: c\n    tool: mcp.call\n    verdict: allow\n",
                                   load_policy(POLICY).version + "x")
            out = await call("mcp.call", server="h", tool="add", arguments={"a": []})
        else:
            out = await call("mcp.h.add", a=[])
    assert isinstance(out, dict), out  # the small check stands for a schema too deep to check in full
    records = [r for r in await svc.audit.list(tenant, after_seq=0, limit=100) if r.tool == spelling]
    assert [r.kind for r in records] == ["tool.allowed", "tool.completed"]


@pytest.mark.parametrize("output_schema", [
    {"type": "object", "properties": {"x": {"type": "string", "pattern": "^(a+)+$"}}},
    {"type": "object", "properties": {"x": {"type": "array", "uniqueItems": True}}},
])
async def test_mcp_server_alone_cannot_freeze_the_loop_with_its_output_schema(chain_env: Any,
                                                                              output_schema: Any) -> None:
    # BUG: the SDK checks a result's structuredContent against the tool's outputSchema - both chosen by the server,
    # which needs no bundle's help - with jsonschema on the event loop: ^(a+)+$ against 28 characters, or
    # uniqueItems over 4,000 objects, froze every tenant's calls for seconds (a few more characters: hours)
    call, svc, tenant = chain_env
    tool = {**ADD_TOOL, "outputSchema": output_schema}
    x: Any = "a" * 28 + "!" if "pattern" in json.dumps(output_schema) else [{"k": i} for i in range(4000)]
    answer = _call_answer({"content": [{"type": "text", "text": "ok"}], "structuredContent": {"x": x}})
    with HostileServer(mcp_handler(tools=[tool], on_call=answer)) as srv:
        await svc.extras["mcp"].register(tenant, "h", srv.url + "/mcp", None, key_id="k")
        async with watch_loop() as watch:
            out = await call("mcp.h.add", a=1, b=2)
    assert watch.longest < 2.0, watch.longest  # unguarded: 3-20 s
    assert isinstance(out, dict) and out["structured"] == {"x": x}, out  # the server's own schema is its business


def _gzip_call_answer(result: dict[str, Any], *, sse: bool = False) -> Any:
    import gzip

    async def on_call(req: RawRequest, mid: Any, w: asyncio.StreamWriter) -> None:
        msg = json.dumps({"jsonrpc": "2.0", "id": mid, "result": result}, separators=(",", ":")).encode()
        if sse:
            body = gzip.compress(b"event: message\r\ndata: " + msg + b"\r\n\r\n")
            kind = "text/event-stream"
        else:
            body = gzip.compress(msg)
            kind = "application/json"
        await respond(w, 200, body, content_type=kind, headers={"content-encoding": "gzip"})
    return on_call


@pytest.mark.parametrize("sse", [False, True])
async def test_mcp_result_of_countless_tiny_blocks_cannot_freeze_the_loop(chain_env: Any, sse: bool) -> None:
    # BUG: a result of 300,000 empty text blocks (7.8 MB; gzip makes it 30 KB on the wire) took the SDK ~5 s of
    # pydantic validation on the event loop, every tenant's calls frozen, before any size check could run
    call, svc, tenant = chain_env
    result = {"content": [{"type": "text", "text": ""} for _ in range(300_000)]}
    with HostileServer(mcp_handler(on_call=_gzip_call_answer(result, sse=sse))) as srv:
        await svc.extras["mcp"].register(tenant, "h", srv.url + "/mcp", None, key_id="k")
        async with watch_loop() as watch:
            out = await call("mcp.h.add", a=1, b=2)
    assert watch.longest < 2.0, watch.longest  # unguarded: 3-20 s
    assert code(out) in ("egress.too_large", "tool.unavailable"), out  # as for any oversized answer


async def test_mcp_result_with_many_structured_rows_still_passes(chain_env: Any) -> None:
    # the cap leaves structuredContent alone (cheap for the SDK) and room for real answers: 20,000 rows
    call, svc, tenant = chain_env
    rows = [{"id": i, "type": "row"} for i in range(20_000)]
    result = {"content": [{"type": "text", "text": f"r{i}"} for i in range(1000)], "structuredContent": {"rows": rows}}
    with HostileServer(mcp_handler(on_call=_gzip_call_answer(result, sse=True))) as srv:
        await svc.extras["mcp"].register(tenant, "h", srv.url + "/mcp", None, key_id="k")
        out = await call("mcp.h.add", a=1, b=2)
    assert isinstance(out, dict) and len(out["structured"]["rows"]) == 20_000 and len(out["content"]) == 1000, out


# ---------------------------------------------------------------- MCP: hostile tool names against policy globs

DENY_DANGER = """
version: 1
rules:
  - id: no-danger-by-name
    tool: "mcp.h.danger*"
    verdict: deny
  - id: no-danger-by-resource
    tool: mcp.call
    resource: "mcp://h/danger*"
    verdict: deny
  - id: rest
    tool: "mcp.*"
    verdict: allow
"""


async def test_mcp_hostile_tool_names_cannot_dodge_a_deny_glob(chain_env: Any) -> None:
    # look-alikes (full-width, zero-width joiner, Cyrillic), glob metacharacters, dots, slashes and spaces in
    # tool names: none is pinned in a form that reaches a tool while dodging "danger*", by either spelling
    call, svc, tenant = chain_env
    await svc.policies.put(tenant, DENY_DANGER, load_policy(DENY_DANGER).version)
    names = ["danger", "danger.x", "danger..", "ｄanger", "d\u200danger", "dаnger", "danger*", "danger?", "[d]anger",
             "danger ", "../danger", "danger/x", "DANGER", "Danger", "mcp.call", "call"]
    tools = [{"name": n, "description": "d", "inputSchema": {"type": "object"}} for n in names]
    answer = _call_answer({"content": [{"type": "text", "text": "ran"}]})
    with HostileServer(mcp_handler(tools=tools, on_call=answer)) as srv:
        _, pins, skipped = await svc.extras["mcp"].register(tenant, "h", srv.url + "/mcp", None, key_id="k")
        pinned = sorted(p.name for p in pins)
        assert pinned == sorted(["danger", "danger.x", "danger..", "DANGER", "Danger", "mcp.call", "call"])
        for name in pinned:
            by_name = await call(f"mcp.h.{name}")
            by_call = await call("mcp.call", server="h", tool=name)
            if name.startswith("danger"):
                assert code(by_name) == code(by_call) == "policy.denied", (name, by_name, by_call)
            elif name != name.lower():  # upper case is no policy tool name: refused outright by that spelling
                assert code(by_name) == "input.invalid", (name, by_name)
            else:  # "mcp.h.mcp.call", "mcp.h.call": the server's own tools, not the built-in
                assert isinstance(by_name, dict) and by_name["content"][0]["text"] == "ran", (name, by_name)
        for name in set(names) - set(pinned):  # what was skipped is not callable by any spelling
            assert code(await call("mcp.call", server="h", tool=name)) in ("input.invalid", "tool.unknown"), name

async def test_mcp_same_server_two_tenants_each_call_carries_its_own_credentials(chain_env: Any) -> None:
    # two tenants register the same URL under the same name with different secrets, calls interleaved: a pooled
    # client or cached listing of one tenant must never carry the other's Authorization header
    call, svc, tenant = chain_env
    other = (await svc.tenants.create_tenant("t-" + secrets.token_hex(3))).id
    mcp = svc.extras["mcp"]
    seen: list[tuple[str, str]] = []

    async def who(req: RawRequest, mid: Any, w: asyncio.StreamWriter) -> None:
        seen.append((json.loads(req.body)["params"]["arguments"]["who"], req.headers.get("authorization", "")))
        await respond(w, 200, jsonrpc_result(mid, {"content": [{"type": "text", "text": "ok"}]}))

    tool = {"name": "add", "inputSchema": {"type": "object"}}
    with HostileServer(mcp_handler(tools=[tool], on_call=who)) as srv:
        await mcp.register(tenant, "s", srv.url + "/mcp", {"Authorization": "Bearer tenant-A-secret"}, key_id="k")
        await mcp.register(other, "s", srv.url + "/mcp", {"Authorization": "Bearer tenant-B-secret"}, key_id="k")
        for i in range(3):
            assert isinstance(await mcp.call(tenant, "s", "add", {"who": f"A{i}"}), dict)
            assert isinstance(await mcp.call(other, "s", "add", {"who": f"B{i}"}), dict)
        auth = [r.headers.get("authorization") for r in srv.requests]
    assert all(a.startswith("Bearer tenant-") for a in auth)
    assert seen == [(f"{t}{i}", f"Bearer tenant-{t}-secret") for i in range(3) for t in "AB"]
