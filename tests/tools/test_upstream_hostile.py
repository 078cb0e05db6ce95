"""Hostile upstreams (LLM endpoints, MCP servers) on loopback: every call ends in time, with a stable code,
bounded memory and a sane charge (never negative, usage from lies clamped, the ledger caps at the reservation)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from supervisor.errors import StockadeError
from supervisor.settings import Settings
from supervisor.tools.llm import LlmChatArgs, LlmChatTool
from tests.fakes.hostile_http import HostileServer, RawRequest, jsonrpc_result, mcp_handler, respond
from tests.fakes.tool_ctx import make_tool_ctx

pytestmark = [pytest.mark.timeout(60), pytest.mark.filterwarnings("ignore::DeprecationWarning")]


def chat_body(text: str = "hello", usage: Any = None) -> bytes:
    d: dict[str, Any] = {"id": "c1", "object": "chat.completion", "created": 1, "model": "m",
                         "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                      "finish_reason": "stop"}]}
    if usage is not None:
        d["usage"] = usage
    return json.dumps(d).encode()


async def run_llm(handler: Any, *, stream: bool = False, timeout_s: float = 30.0) -> tuple[Any, HostileServer]:
    with HostileServer(handler) as srv:
        tool = LlmChatTool(Settings(openai_api_key="sk-x", openai_base_url=srv.url + "/v1", llm_timeout_s=1.0,
                                    llm_max_retries=1), backoff_base_s=0.001, backoff_cap_s=0.01, timeout_s=timeout_s)
        ctx, _ = make_tool_ctx(tool.settings)
        a = LlmChatArgs.model_validate({"model": "openai/gpt-4.1-mini", "stream": stream, "max_tokens": 100,
                                        "messages": [{"role": "user", "content": "Hi"}]})
        try:
            out: Any = await asyncio.wait_for(tool.run(a, ctx), timeout_s + 5)
        except StockadeError as exc:
            out = exc
        finally:
            await tool.aclose()
    return out, srv


async def test_llm_slowloris_is_cut_at_the_tool_deadline() -> None:
    async def slowloris(req: RawRequest, w: asyncio.StreamWriter) -> None:
        body = chat_body("x" * 100)
        w.write(f"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n\r\n".encode())
        for b in body:  # one byte every 0.3 s: never idle long enough for the read timeout
            w.write(bytes([b]))
            await w.drain()
            await asyncio.sleep(0.3)

    out, _ = await run_llm(slowloris, timeout_s=3.0)
    assert isinstance(out, StockadeError) and out.code == "tool.timeout"


async def test_llm_endless_stream_is_cut_and_charged() -> None:
    async def forever(req: RawRequest, w: asyncio.StreamWriter) -> None:
        w.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\r\n")
        while True:
            chunk = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m",
                     "choices": [{"index": 0, "delta": {"content": "x" * 400}, "finish_reason": None}]}
            w.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")
            await w.drain()
            await asyncio.sleep(0.001)

    out, _ = await run_llm(forever, stream=True)
    assert isinstance(out, StockadeError) and out.code == "llm.provider_error"
    assert out.extra["cost_micro"] > 0 and out.extra["partial_usage"]["output_tokens"] > 100  # what it sent is charged


@pytest.mark.parametrize("status", [200, 500])
async def test_llm_gigantic_body_is_refused_not_buffered(status: int) -> None:
    async def giant(req: RawRequest, w: asyncio.StreamWriter) -> None:
        head = f"HTTP/1.1 {status} X\r\ncontent-type: application/json\r\n\r\n"  # no length: read until close
        w.write(head.encode() + b'{"error": {"message": "')
        for _ in range(80):
            w.write(b"y" * (1024 * 1024))
            await w.drain()

    out, srv = await run_llm(giant)
    assert isinstance(out, StockadeError) and out.code == "egress.too_large"
    assert len(srv.requests) == 1  # not retried


async def test_llm_gigantic_sse_line_is_refused() -> None:
    async def line(req: RawRequest, w: asyncio.StreamWriter) -> None:
        w.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\r\ndata: ")
        for _ in range(80):
            w.write(b"z" * (1024 * 1024))
            await w.drain()

    out, _ = await run_llm(line, stream=True)
    assert isinstance(out, StockadeError) and out.code == "egress.too_large"


async def test_llm_redirect_is_not_followed() -> None:
    followed: list[str] = []

    async def target(req: RawRequest, w: asyncio.StreamWriter) -> None:
        followed.append(req.headers.get("authorization", ""))
        await respond(w, 200, chat_body())

    with HostileServer(target) as other:
        async def redirect(req: RawRequest, w: asyncio.StreamWriter) -> None:
            await respond(w, 307, b"", headers={"location": other.url + "/v1/chat/completions"})

        out, srv = await run_llm(redirect)
    assert isinstance(out, StockadeError) and out.code == "llm.provider_error" and out.extra["status"] == 307
    assert out.extra.get("retryable") is False and len(srv.requests) == 1
    assert followed == []


@pytest.mark.parametrize(("usage", "expect"), [
    ({"prompt_tokens": -5, "completion_tokens": -100}, None),
    ({"prompt_tokens": "NaN", "completion_tokens": "NaN"}, None),
    ({"prompt_tokens": "12", "completion_tokens": "x"}, None),
    ({"prompt_tokens": 1e30, "completion_tokens": 1e30}, 10**9),
    (None, None),
])
async def test_llm_absurd_usage_is_clamped(usage: Any, expect: int | None) -> None:
    async def lie(req: RawRequest, w: asyncio.StreamWriter) -> None:
        await respond(w, 200, chat_body("hello", usage))

    out, _ = await run_llm(lie)
    assert not isinstance(out, StockadeError), out
    assert out.cost_micro >= 0
    for n in (out.usage["input_tokens"], out.usage["output_tokens"]):
        assert isinstance(n, int) and 0 <= n <= 10**9
    if expect is None:
        assert out.usage["estimated"] is True and out.usage["output_tokens"] < 100
    else:
        assert out.usage["output_tokens"] == expect  # fits a 64-bit ledger column; the ledger charges <= reserved


async def test_llm_lone_surrogates_are_replaced() -> None:
    async def bad(req: RawRequest, w: asyncio.StreamWriter) -> None:
        await respond(w, 200, chat_body("a\ud800b\x00c"))

    out, _ = await run_llm(bad)
    assert not isinstance(out, StockadeError)
    out.result["text"].encode("utf-8")  # a socket frame or a store can carry it
    assert out.result["text"].startswith("a\ufffd")


# ---------------------------------------------------------------- MCP


async def mcp_call(tmp_path: Path, handler: Any, *, register_only: bool = False) -> Any:
    from supervisor.stores.sqlite import SqliteTenantStore
    from supervisor.stores.sqlite.db import open_sqlite
    from supervisor.tools.mcp import McpService, open_store

    db = await open_sqlite(tmp_path / "s.db")
    tenant = (await SqliteTenantStore(db).create_tenant("t-hostile")).id
    svc = McpService(open_store(db), allow_private=["127.0.0.0/8"], timeout_s=3.0, call_timeout_s=3.0,
                     max_result_bytes=1024 * 1024)
    try:
        with HostileServer(handler) as srv:
            try:
                await svc.register(tenant, "h", srv.url + "/mcp", None, key_id="k")
                if register_only:
                    return None
                return await asyncio.wait_for(svc.call(tenant, "h", "add", {"a": 1, "b": 2}), 30)
            except StockadeError as exc:
                return exc
    finally:
        await svc.close()
        await db.close()


async def test_mcp_gigantic_result_is_cut_off(tmp_path: Path) -> None:
    async def giant(req: RawRequest, mid: Any, w: asyncio.StreamWriter) -> None:
        w.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\r\n")
        w.write(b'{"jsonrpc": "2.0", "id": %d, "result": {"content": [{"type": "text", "text": "' % mid)
        for _ in range(200):  # 200 MB unless the client stops reading
            w.write(b"x" * (1024 * 1024))
            await w.drain()

    out = await mcp_call(tmp_path, mcp_handler(on_call=giant))
    assert isinstance(out, StockadeError) and out.code == "egress.too_large", out


async def test_mcp_hundreds_of_thousands_of_tools_are_refused(tmp_path: Path) -> None:
    async def many(req: RawRequest, mid: Any, w: asyncio.StreamWriter) -> None:
        tools = [{"name": f"t{i}", "description": "d" * 40, "inputSchema": {"type": "object"}} for i in range(300_000)]
        await respond(w, 200, jsonrpc_result(mid, {"tools": tools}))

    out = await mcp_call(tmp_path, mcp_handler(on_list=many), register_only=True)
    assert isinstance(out, StockadeError) and out.code == "tool.unavailable" and "larger than" in out.detail


async def test_mcp_server_initiated_requests_are_refused(tmp_path: Path) -> None:
    answers: list[Any] = []

    async def sampling(req: RawRequest, mid: Any, w: asyncio.StreamWriter) -> None:
        w.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\r\n")
        for i, method in enumerate(("sampling/createMessage", "roots/list", "elicitation/create")):
            msg = {"jsonrpc": "2.0", "id": f"srv{i}", "method": method,
                   "params": {"messages": [], "maxTokens": 1, "message": "m", "requestedSchema": {"type": "object"}}}
            w.write(b"event: message\ndata: " + json.dumps(msg).encode() + b"\n\n")
        await w.drain()
        await asyncio.sleep(0.5)
        w.write(b"event: message\ndata: " + jsonrpc_result(mid, {"content": [{"type": "text", "text": "3"}]}) + b"\n\n")
        await w.drain()

    handler = mcp_handler(on_call=sampling)

    async def record(req: RawRequest, w: asyncio.StreamWriter) -> None:
        body = req.json()
        if isinstance(body, dict) and "method" not in body and "id" in body:
            answers.append(body)
        await handler(req, w)

    out = await mcp_call(tmp_path, record)
    assert isinstance(out, dict) and out["content"][0]["text"] == "3"
    assert answers and all("error" in a and "result" not in a for a in answers)  # every one refused
