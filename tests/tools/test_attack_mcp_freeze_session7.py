"""Session 7 attacks on the MCP tools that try to freeze the supervisor's event loop (every tenant's calls
wait on it): pinned schemas built to explode a validator, listings and results of countless tiny parts,
endless pagination, schemas nested past the recursion limit. Split out of test_attack_mcp_session7.py.
"""

from __future__ import annotations

import asyncio
import json
import secrets
from typing import Any

import pytest

from supervisor.errors import StockadeError
from supervisor.policy import load_policy
from tests._loop import watch_loop
from tests.fakes.hostile_http import ADD_TOOL, HostileServer, RawRequest, jsonrpc_result, mcp_handler, respond
from tests.tools import _mcp_attack_env as _env
from tests.tools._mcp_attack_env import POLICY, code
from tests.tools._mcp_attack_env import bad_names as _bad_names
from tests.tools._mcp_attack_env import call_answer as _call_answer

pytestmark = [pytest.mark.timeout(90), pytest.mark.filterwarnings("ignore::DeprecationWarning")]

settings, chain_env = _env.settings, _env.chain_env  # fixtures: both stacks; the real chain over them


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
    # both spellings are the one call mcp.h.add (mcp.call resolves to it in the validate step)
    records = [r for r in await svc.audit.list(tenant, after_seq=0, limit=100) if r.tool == "mcp.h.add"]
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
    assert code(out) == "egress.too_large", out  # as for any oversized answer (was also "Connection closed")


async def test_mcp_result_with_many_structured_rows_still_passes(chain_env: Any) -> None:
    # the cap leaves structuredContent alone (cheap for the SDK) and room for real answers: 20,000 rows
    call, svc, tenant = chain_env
    rows = [{"id": i, "type": "row"} for i in range(20_000)]
    result = {"content": [{"type": "text", "text": f"r{i}"} for i in range(1000)], "structuredContent": {"rows": rows}}
    with HostileServer(mcp_handler(on_call=_gzip_call_answer(result, sse=True))) as srv:
        await svc.extras["mcp"].register(tenant, "h", srv.url + "/mcp", None, key_id="k")
        out = await call("mcp.h.add", a=1, b=2)
    assert isinstance(out, dict) and len(out["structured"]["rows"]) == 20_000 and len(out["content"]) == 1000, out
