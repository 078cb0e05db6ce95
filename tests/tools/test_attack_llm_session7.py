"""Session 7 attacks on the LLM tool: hostile providers and what one tenant can do to the others.

Providers are real HTTP servers on loopback (tests/fakes): the real OpenAI and Anthropic SDKs parse what they send.
The MCP half of these attacks: test_attack_mcp_session7.py.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from supervisor.errors import StockadeError
from supervisor.settings import Settings
from supervisor.tools.llm import LlmChatArgs, LlmChatTool
from tests._loop import watch_loop
from tests.fakes.hostile_http import HostileServer, RawRequest, respond
from tests.fakes.tool_ctx import make_tool_ctx

pytestmark = [pytest.mark.timeout(90), pytest.mark.filterwarnings("ignore::DeprecationWarning")]


# ---------------------------------------------------------------- LLM: hostile providers


def _chat_chunk(delta: dict[str, Any], finish: str | None = None, usage: Any = None) -> bytes:
    d: dict[str, Any] = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m",
                         "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
    if usage is not None:
        d["usage"] = usage
    return b"data: " + json.dumps(d).encode() + b"\n\n"


def _sse(chunks: Any) -> Any:
    async def handler(req: RawRequest, w: asyncio.StreamWriter) -> None:
        w.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n")
        for c in chunks():
            w.write(c)
        w.write(b"data: [DONE]\n\n")
        await w.drain()
        w.close()
    return handler


async def run_llm(handler: Any, *, stream: bool = True, max_tokens: int = 100, model: str = "openai/gpt-4.1-mini",
                  timeout_s: float = 30.0) -> tuple[Any, HostileServer, Any]:
    with HostileServer(handler) as srv:
        tool = LlmChatTool(Settings(openai_api_key="sk-secret-openai", openai_base_url=srv.url + "/v1",
                                    anthropic_api_key="sk-ant-secret", anthropic_base_url=srv.url,
                                    llm_timeout_s=2.0, llm_max_retries=1),
                           backoff_base_s=0.001, backoff_cap_s=0.01, timeout_s=timeout_s)
        ctx, rec = make_tool_ctx(tool.settings)
        a = LlmChatArgs.model_validate({"model": model, "stream": stream, "max_tokens": max_tokens,
                                        "messages": [{"role": "user", "content": "Hi"}]})
        try:
            out: Any = await asyncio.wait_for(tool.run(a, ctx), timeout_s + 5)
        except StockadeError as exc:
            out = exc
        finally:
            await tool.aclose()
    return out, srv, rec


async def test_llm_flood_of_empty_tool_calls_is_bounded() -> None:
    # BUG: a provider streams 50,000 tool-call deltas, each opening a new call with no id, name or arguments:
    # none of it counted against max_tokens, so all 50,000 calls reached the bundle's result (no request
    # could even send them back: an assistant turn holds at most 128)
    def chunks() -> Any:
        for i in range(50_000):
            yield _chat_chunk({"tool_calls": [{"index": i, "type": "function", "function": {}}]})
    out, srv, _ = await run_llm(_sse(chunks))
    assert isinstance(out, StockadeError) and out.code == "llm.provider_error", out
    assert "128 tool calls" in out.detail and "partial_usage" in out.extra and len(srv.requests) == 1


@pytest.mark.parametrize("model", ["openai/gpt-4.1-mini", "anthropic/claude-sonnet-4-5"])
@pytest.mark.parametrize("status", [400, 404, 422, 500, 200])  # 200: an error event inside the stream
async def test_llm_provider_echoing_the_key_does_not_reach_the_bundle(model: str, status: int) -> None:
    # a provider (or a proxy in front of it) that echoes the request's credentials in its error message
    async def echo(req: RawRequest, w: asyncio.StreamWriter) -> None:
        creds = f"{req.headers.get('authorization')} {req.headers.get('x-api-key')}"
        said = f"bad request from {creds} key={creds.split()[-1]}"
        if status != 200:
            await respond(w, status, json.dumps({"type": "error", "error": {"type": "x", "message": said}}).encode())
            return
        w.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n")
        ev = {"type": "error", "error": {"type": "overloaded_error", "message": said}}
        w.write(b"event: error\ndata: " + json.dumps(ev).encode() + b"\n\n")
        await w.drain()
        w.close()

    out, srv, rec = await run_llm(echo, model=model)
    assert isinstance(out, StockadeError) and out.code == "llm.provider_error", out
    assert "bad request from" in out.detail and len(srv.requests) >= 1
    said = json.dumps(out.to_dict()) + json.dumps(rec.events)
    assert "sk-secret-openai" not in said and "sk-ant-secret" not in said


# ---------------------------------------------------------------- LLM: what is charged


@pytest.mark.parametrize("model", ["openai/gpt-4.1-mini", "anthropic/claude-sonnet-4-5"])
async def test_llm_reservation_covers_a_prompt_built_to_tokenize_badly(srv: Any, model: str) -> None:
    # BUG: the reservation priced the prompt at chars/4 tokens (one per non-ASCII char), but a byte-level
    # tokenizer counts up to one token per UTF-8 byte: punctuation soup and rare 4-byte characters cost ~4x the
    # estimate, and settlement is capped at the reservation, so a bundle got ~3/4 of its input for free
    from tests.fakes.llm_servers import Script

    content = "`~|^" * 2000 + "\U0001d54f" * 500  # 10,000 UTF-8 bytes in 8,500 characters
    srv.script = Script(text="ok", input_tokens=len(content.encode()) + 7, output_tokens=1)
    tool = LlmChatTool(Settings(openai_api_key="sk-x", openai_base_url=srv.openai_base_url,
                                anthropic_api_key="sk-y", anthropic_base_url=srv.anthropic_base_url))
    ctx, _ = make_tool_ctx(tool.settings)
    a = LlmChatArgs.model_validate({"model": model, "max_tokens": 1, "stream": False,
                                    "messages": [{"role": "user", "content": content}]})
    try:
        reserved = tool.estimate_micro(a, ctx)
        res = await asyncio.wait_for(tool.run(a, ctx), 30)
    finally:
        await tool.aclose()
    assert res.usage["input_tokens"] == len(content.encode()) + 7 and res.usage["estimated"] is False
    assert reserved is not None and reserved >= res.cost_micro, (reserved, res.cost_micro)


@pytest.mark.parametrize("stream", [True, False])
async def test_llm_tool_call_arguments_nested_past_the_json_limit_are_charged(stream: bool) -> None:
    # BUG: tool-call arguments of 5,000 nested arrays (a model can be asked to write them) made json.loads raise
    # RecursionError, which is no ValueError: the call ended as tool.failed with a traceback, charging nothing for
    # what the provider generated. Broken arguments are handed over as the raw string, like other broken JSON.
    deep = "[" * 5000 + "]" * 5000

    async def handler(req: RawRequest, w: asyncio.StreamWriter) -> None:
        usage = {"prompt_tokens": 10, "completion_tokens": 2500, "total_tokens": 2510}
        if not stream:
            msg = {"role": "assistant", "content": None, "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "f", "arguments": deep}}]}
            body = {"id": "c", "object": "chat.completion", "created": 1, "model": "m", "usage": usage,
                    "choices": [{"index": 0, "message": msg, "finish_reason": "tool_calls"}]}
            await respond(w, 200, json.dumps(body).encode())
            return
        w.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n")
        w.write(_chat_chunk({"tool_calls": [{"index": 0, "id": "c1", "type": "function",
                                             "function": {"name": "f", "arguments": deep}}]}))
        w.write(_chat_chunk({}, finish="tool_calls"))
        d = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m", "choices": [], "usage": usage}
        w.write(b"data: " + json.dumps(d).encode() + b"\n\ndata: [DONE]\n\n")
        await w.drain()
        w.close()

    out, _, _ = await run_llm(handler, stream=stream, max_tokens=4000)
    assert not isinstance(out, StockadeError), out
    assert out.result["tool_calls"] == [{"id": "c1", "name": "f", "arguments": deep}]
    assert out.usage["output_tokens"] == 2500 and out.cost_micro > 0


async def test_llm_anthropic_reply_too_deep_to_parse_is_charged_not_free() -> None:
    # a non-streamed Anthropic answer whose tool_use input nests 5,000 arrays (the model can be asked to): the SDK
    # cannot even parse the body (RecursionError), so nothing of the generated answer was known - and nothing
    # was charged, while the provider billed every token. (100,000 levels: Python 3.13's parser takes 5,000.)
    deep = "[" * 100_000 + "]" * 100_000

    async def handler(req: RawRequest, w: asyncio.StreamWriter) -> None:
        body = ('{"id": "m", "type": "message", "role": "assistant", "model": "x", "stop_reason": "tool_use",'
                ' "usage": {"input_tokens": 10, "output_tokens": 2500},'
                ' "content": [{"type": "tool_use", "id": "t1", "name": "f", "input": {"a": ' + deep + '}}]}')
        await respond(w, 200, body.encode())

    out, srv, _ = await run_llm(handler, stream=False, max_tokens=4000, model="anthropic/claude-sonnet-4-5")
    assert isinstance(out, StockadeError) and out.code == "llm.provider_error", out
    assert len(srv.requests) == 1  # not retried: the answer was generated
    from supervisor.tools.llm import LlmPricing
    from supervisor.tools.llm._tokens import input_ceiling

    a = LlmChatArgs.model_validate({"model": "anthropic/claude-sonnet-4-5", "max_tokens": 4000,
                                    "messages": [{"role": "user", "content": "Hi"}]})
    worst = LlmPricing.load().price_for(a.model).cost_micro(input_ceiling(a), 4000)
    assert out.extra.get("cost_micro") == worst, out.extra  # what it may have cost: the reservation


# ---------------------------------------------------------------- LLM: one tenant against the others


async def test_one_tenants_slow_answers_do_not_open_the_breaker_for_everyone() -> None:
    # BUG: a non-streamed call for a long answer holds the response until the whole answer is generated, so a
    # tenant asking for long answers (stream false, max_tokens 128k) timed out each time - counted as provider
    # failures: five of them opened the shared per-provider breaker and every tenant got llm.circuit_open
    async def provider(req: RawRequest, w: asyncio.StreamWriter) -> None:
        if b"long essay" in req.body:
            await asyncio.sleep(3600)  # still generating
        await respond(w, 200, json.dumps({
            "id": "c", "object": "chat.completion", "created": 1, "model": "m",
            "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
        }).encode())

    with HostileServer(provider) as srv:
        tool = LlmChatTool(Settings(openai_api_key="sk-x", openai_base_url=srv.url + "/v1", llm_timeout_s=0.2,
                                    llm_max_retries=0), backoff_base_s=0.001, backoff_cap_s=0.01)
        try:
            a_ctx, _ = make_tool_ctx(tool.settings, tenant_id="t_a")
            long = LlmChatArgs.model_validate({"model": "openai/gpt-4.1-mini", "stream": False, "max_tokens": 128_000,
                                               "messages": [{"role": "user", "content": "a long essay please"}]})
            for _ in range(6):
                with pytest.raises(StockadeError) as err:
                    await asyncio.wait_for(tool.run(long, a_ctx), 10)
                assert err.value.code == "tool.timeout"
            b_ctx, _ = make_tool_ctx(tool.settings, tenant_id="t_b")
            short = LlmChatArgs.model_validate({"model": "openai/gpt-4.1-mini", "stream": False,
                                                "messages": [{"role": "user", "content": "hello"}]})
            res = await asyncio.wait_for(tool.run(short, b_ctx), 10)
        finally:
            await tool.aclose()
    assert res.result["text"] == "hi"


async def test_llm_html_page_instead_of_an_answer_is_not_charged() -> None:
    # the other side of the rule above: a 200 that is no answer at all (a proxy's HTML page) costs nothing
    async def html(req: RawRequest, w: asyncio.StreamWriter) -> None:
        await respond(w, 200, b"<html>please log in</html>", content_type="text/html")

    out, srv, _ = await run_llm(html, stream=False)
    assert isinstance(out, StockadeError) and out.code == "llm.provider_error", out
    assert "cost_micro" not in out.extra and len(srv.requests) == 1


@pytest.mark.parametrize("retry_after", ["1e308", "nan", "-5", "inf", "Wed, 21 Oct 2099 07:28:00 GMT", "9" * 400])
async def test_llm_hostile_retry_after_never_holds_the_call(retry_after: str) -> None:
    # a provider's Retry-After (429) of 10^308 s, NaN, negative, infinite, a far date or 400 digits
    async def limited(req: RawRequest, w: asyncio.StreamWriter) -> None:
        body = json.dumps({"error": {"message": "slow down", "type": "rate_limit"}}).encode()
        await respond(w, 429, body, headers={"retry-after": retry_after, "retry-after-ms": retry_after})

    loop = asyncio.get_running_loop()
    t0 = loop.time()
    out, srv, _ = await run_llm(limited, stream=False)
    assert isinstance(out, StockadeError) and out.code == "llm.provider_error" and len(srv.requests) == 2
    assert loop.time() - t0 < 5


@pytest.mark.parametrize(("model", "stream"), [("openai/gpt-4.1-mini", False), ("openai/gpt-4.1-mini", True),
                                             ("anthropic/claude-sonnet-4-5", False)])
async def test_llm_answer_of_countless_tiny_parts_is_refused_without_freezing(model: str, stream: bool) -> None:
    # BUG: an answer of 200,000 empty tool calls / content blocks (~10 MB, the cap is 64 MB) took the SDK 4-6 s
    # of model building on the event loop, every tenant's calls frozen, before anything could look at it
    if model.startswith("openai"):
        calls = [{"id": "", "type": "function", "function": {"name": "", "arguments": ""}}] * 200_000
        if stream:
            chunk = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m",
                     "choices": [{"index": 0, "delta": {"tool_calls": [dict(c, index=0) for c in calls]},
                                  "finish_reason": None}]}
        body: Any = {"id": "c", "object": "chat.completion", "created": 1, "model": "m",
                     "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
                     "choices": [{"index": 0, "finish_reason": "tool_calls",
                                  "message": {"role": "assistant", "content": None, "tool_calls": calls}}]}
    else:
        blocks = [{"type": "tool_use", "id": "", "name": "", "input": {}}] * 200_000
        body = {"id": "m", "type": "message", "role": "assistant", "model": "x", "stop_reason": "tool_use",
                "usage": {"input_tokens": 1, "output_tokens": 1}, "content": blocks}
    # made here, not in the handler: the server thread must not hold the GIL while the loop is watched
    raw = b"data: " + json.dumps(chunk).encode() + b"\n\n" if stream else json.dumps(body).encode()

    async def parts(req: RawRequest, w: asyncio.StreamWriter) -> None:
        await respond(w, 200, raw, content_type="text/event-stream" if stream else "application/json")

    import anthropic  # noqa: F401 - imported once per process (~2 s): not what is measured here
    import openai  # noqa: F401

    async with watch_loop() as watch:
        out, srv, _ = await run_llm(parts, stream=stream, model=model)
    assert watch.longest < 2.0, watch.longest  # unguarded: 3-20 s
    assert isinstance(out, StockadeError) and out.code == "egress.too_large", out
    assert "200000 items" in out.detail and len(srv.requests) == 1  # not retried


async def test_answers_past_our_limits_do_not_open_the_breaker_for_everyone() -> None:
    # BUG: a model can be asked for 200 parallel tool calls; the answer is refused past 128 (above), but the
    # refusal counted as a provider failure: five such answers opened the shared breaker for every tenant
    many = [{"index": i, "id": f"c{i}", "type": "function", "function": {"name": "f", "arguments": "{}"}}
            for i in range(200)]

    async def provider(req: RawRequest, w: asyncio.StreamWriter) -> None:
        if b"200 calls" in req.body:
            w.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n")
            w.write(_chat_chunk({"tool_calls": many}) + b"data: [DONE]\n\n")
            await w.drain()
            w.close()
            return
        await respond(w, 200, json.dumps({
            "id": "c", "object": "chat.completion", "created": 1, "model": "m",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
        }).encode())

    with HostileServer(provider) as srv:
        tool = LlmChatTool(Settings(openai_api_key="sk-x", openai_base_url=srv.url + "/v1", llm_max_retries=0))
        try:
            a_ctx, _ = make_tool_ctx(tool.settings, tenant_id="t_a")
            greedy = LlmChatArgs.model_validate({"model": "openai/gpt-4.1-mini", "max_tokens": 8000,
                                                 "messages": [{"role": "user", "content": "make 200 calls"}]})
            for _ in range(6):
                with pytest.raises(StockadeError) as err:
                    await asyncio.wait_for(tool.run(greedy, a_ctx), 10)
                assert err.value.code == "llm.provider_error" and "128 tool calls" in err.value.detail
            b_ctx, _ = make_tool_ctx(tool.settings, tenant_id="t_b")
            short = LlmChatArgs.model_validate({"model": "openai/gpt-4.1-mini", "stream": False,
                                                "messages": [{"role": "user", "content": "hello"}]})
            res = await asyncio.wait_for(tool.run(short, b_ctx), 10)
        finally:
            await tool.aclose()
    assert res.result["text"] == "hi"

