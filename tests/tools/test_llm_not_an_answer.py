"""llm.chat on an HTTP 200 that is no completed answer (found by a walkthrough).

The SDKs take whatever a 200 carries: an HTML page or a JSON error body in reply
to a streamed call iterated zero events, a JSON body without the answer's fields
became a model of Nones, a stream that ended cleanly halfway was a short stream.
Each came back as success - ``{"text": "" or the cut-off part, "stop_reason":
null}`` - and the run went on, charged an estimated input cost. Now each is
``llm.provider_error`` with the provider's own message, never retried, charged
like any failed call: nothing before output started, what was generated after.
"""

from __future__ import annotations

import json

import pytest

from supervisor.errors import StockadeError
from supervisor.settings import Settings
from supervisor.tools.llm import LlmChatArgs, LlmChatTool
from tests.fakes.llm_servers import FakeLLMServer, Script
from tests.fakes.tool_ctx import make_tool_ctx

pytestmark = [
    pytest.mark.timeout(30),
    pytest.mark.filterwarnings("ignore:The model .* is deprecated:DeprecationWarning"),
]

OPENAI_KEY = "sk-test-openai-secret-value"
ANTHROPIC_KEY = "sk-ant-test-secret-value"
MODELS = ["openai/gpt-4.1-mini", "openai/gpt-4.1-mini@responses", "anthropic/claude-sonnet-4-5"]
JSON_ERROR = {"error": {"message": "model not found", "type": "invalid_request_error"}}


def make_tool(srv: FakeLLMServer, **settings: object) -> LlmChatTool:
    base: dict[str, object] = dict(
        openai_api_key=OPENAI_KEY,
        openai_base_url=srv.openai_base_url,
        anthropic_api_key=ANTHROPIC_KEY,
        anthropic_base_url=srv.anthropic_base_url,
        llm_timeout_s=5.0,
        llm_max_retries=2,  # so that a retry would show
    )
    base.update(settings)
    return LlmChatTool(Settings(**base), backoff_base_s=0.001, backoff_cap_s=0.01)  # type: ignore[arg-type]


def args_for(model: str, **kw: object) -> LlmChatArgs:
    api = "chat"
    if model.endswith("@responses"):
        model, api = model.removesuffix("@responses"), "responses"
    raw: dict[str, object] = {"model": model, "messages": [{"role": "user", "content": "Hi"}], "api": api}
    raw.update(kw)
    return LlmChatArgs.model_validate(raw)


async def fails(tool: LlmChatTool, model: str, **kw: object) -> tuple[StockadeError, list[str]]:
    ctx, rec = make_tool_ctx(tool.settings)
    try:
        with pytest.raises(StockadeError) as ei:
            res = await tool.run(args_for(model, **kw), ctx)
            pytest.fail(f"succeeded: {res.result} charged {res.cost_micro}")
    finally:
        await tool.aclose()
    text = json.dumps(ei.value.to_dict()) + json.dumps(rec.events) + json.dumps(rec.chunks)
    assert OPENAI_KEY not in text and ANTHROPIC_KEY not in text
    return ei.value, rec.deltas()


def not_charged_nor_retried(err: StockadeError, srv: FakeLLMServer) -> None:
    assert err.code == "llm.provider_error", err
    assert err.extra["retryable"] is False and err.to_dict()["retryable"] is False
    assert "cost_micro" not in err.extra and "partial_usage" not in err.extra  # nothing reached the tenant
    assert len(srv.requests) == 1


# ---------------------------------------------------------------- a body that is no answer


@pytest.mark.parametrize("stream", [True, False])
@pytest.mark.parametrize("model", MODELS)
async def test_an_html_page_is_a_provider_error(srv: FakeLLMServer, model: str, stream: bool) -> None:
    srv.script = Script(body=b"<html>oops</html>", content_type="text/html")
    err, deltas = await fails(make_tool(srv), model, stream=stream)
    not_charged_nor_retried(err, srv)
    assert deltas == []
    if stream:
        assert "web page (text/html)" in err.detail and "base URL" in err.detail
    else:
        assert "not JSON" in err.detail


@pytest.mark.parametrize("stream", [True, False])
@pytest.mark.parametrize("model", MODELS)
async def test_a_json_error_body_is_a_provider_error_with_its_message(
    srv: FakeLLMServer, model: str, stream: bool
) -> None:
    srv.script = Script(body=json.dumps(JSON_ERROR).encode())
    err, deltas = await fails(make_tool(srv), model, stream=stream)
    not_charged_nor_retried(err, srv)
    assert deltas == []
    assert "model not found (invalid_request_error)" in err.detail  # the provider's own words


@pytest.mark.parametrize("model", ["openai/gpt-4.1-mini", "anthropic/claude-sonnet-4-5"])
async def test_an_anthropic_style_error_body_echoing_the_key_is_scrubbed(srv: FakeLLMServer, model: str) -> None:
    said = {"type": "error", "error": {"type": "overloaded_error", "message": f"no {OPENAI_KEY} {ANTHROPIC_KEY}"}}
    srv.script = Script(body=json.dumps(said).encode())
    err, _ = await fails(make_tool(srv), model)  # fails() asserts neither key reached the error or the stream
    not_charged_nor_retried(err, srv)
    assert "[redacted]" in err.detail and "(overloaded_error)" in err.detail


@pytest.mark.parametrize("stream", [True, False])
@pytest.mark.parametrize("model", MODELS)
async def test_json_without_an_answer_is_a_provider_error(srv: FakeLLMServer, model: str, stream: bool) -> None:
    srv.script = Script(body=b"{}")
    err, _ = await fails(make_tool(srv), model, stream=stream)
    not_charged_nor_retried(err, srv)
    assert "JSON" in err.detail and ("not an event stream" in err.detail) is stream


async def test_anthropic_stream_of_one_line_that_is_no_event(srv: FakeLLMServer) -> None:
    # data without an event: line, and not JSON: the SDK skips it, leaving an empty "answer"
    srv.script = Script(body=b"data: {not json\n\n", content_type="text/event-stream")
    err, _ = await fails(make_tool(srv), "anthropic/claude-sonnet-4-5")
    not_charged_nor_retried(err, srv)
    assert "without a single event" in err.detail and "message_stop" in err.detail


# ---------------------------------------------------------------- a stream that ends before the answer does


@pytest.mark.parametrize("model", MODELS)
async def test_a_stream_ending_cleanly_mid_answer_is_a_failure_charged_what_was_generated(
    srv: FakeLLMServer, model: str
) -> None:
    srv.script = Script(text="one two three four", input_tokens=50, end_after_deltas=2)
    tool = make_tool(srv)
    price = tool.pricing.price_for(model.removesuffix("@responses"))
    err, deltas = await fails(tool, model)
    assert err.code == "llm.provider_error"
    assert "before the answer was complete" in err.detail and "not retried" in err.detail
    assert deltas == ["one ", "two "]  # already forwarded to the answer channel: the run must not take them as all
    assert len(srv.requests) == 1
    usage = err.extra["partial_usage"]
    assert usage["output_tokens"] >= 2  # what arrived (the provider never gave its final count)
    if model.startswith("anthropic/"):
        assert usage["input_tokens"] == 50  # message_start had reported it
    assert err.extra["cost_micro"] == price.cost_micro(usage["input_tokens"], usage["output_tokens"]) > 0


@pytest.mark.parametrize("model", MODELS)
async def test_a_stream_ending_cleanly_before_any_output_is_not_retried_nor_charged(
    srv: FakeLLMServer, model: str
) -> None:
    srv.script = Script(text="never", end_after_deltas=0)
    err, deltas = await fails(make_tool(srv), model)
    not_charged_nor_retried(err, srv)
    assert deltas == [] and "before the answer was complete" in err.detail


async def test_openai_done_without_a_finish_reason_is_a_complete_answer(srv: FakeLLMServer) -> None:
    # some OpenAI-compatible servers close an answer with [DONE] alone: that is no cut-off stream
    def chunk(delta: dict[str, object]) -> bytes:
        data = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m",
                "choices": [{"index": 0, "delta": delta, "finish_reason": None}]}
        return b"data: " + json.dumps(data).encode() + b"\n\n"

    srv.script = Script(body=chunk({"content": "all "}) + chunk({"content": "of it"}) + b"data: [DONE]\n\n",
                        content_type="text/event-stream")
    tool = make_tool(srv)
    ctx, rec = make_tool_ctx(tool.settings)
    res = await tool.run(args_for("openai/gpt-4.1-mini"), ctx)
    await tool.aclose()
    assert res.result["text"] == "all of it" and rec.deltas() == ["all ", "of it"]


async def test_anthropic_message_stop_without_message_delta_is_a_complete_answer(srv: FakeLLMServer) -> None:
    def ev(kind: str, **data: object) -> bytes:
        return f"event: {kind}\ndata: {json.dumps({'type': kind, **data})}\n\n".encode()

    usage = {"input_tokens": 7, "output_tokens": 1}
    message = {"id": "m", "type": "message", "role": "assistant", "model": "x", "content": [],
               "stop_reason": None, "stop_sequence": None, "usage": usage}
    body = (ev("message_start", message=message)
            + ev("content_block_start", index=0, content_block={"type": "text", "text": ""})
            + ev("content_block_delta", index=0, delta={"type": "text_delta", "text": "done"})
            + ev("content_block_stop", index=0) + ev("message_stop"))
    srv.script = Script(body=body, content_type="text/event-stream")
    tool = make_tool(srv)
    ctx, _ = make_tool_ctx(tool.settings)
    res = await tool.run(args_for("anthropic/claude-sonnet-4-5"), ctx)
    await tool.aclose()
    assert res.result["text"] == "done"


# ---------------------------------------------------------------- the shared breaker


async def test_non_answers_do_not_open_the_breaker_but_cut_streams_do(srv: FakeLLMServer) -> None:
    # a JSON error for one tenant's model name says nothing about the provider; streams that keep breaking off
    # (like connections that keep dropping) do
    tool = make_tool(srv)
    srv.script = Script(body=json.dumps(JSON_ERROR).encode())
    for _ in range(6):
        ctx, _ = make_tool_ctx(tool.settings)
        with pytest.raises(StockadeError) as ei:
            await tool.run(args_for("openai/gpt-4.1-mini"), ctx)
        assert ei.value.code == "llm.provider_error"
    assert tool.breakers["openai"].state == "closed"
    srv.script = Script(text="a b c", end_after_deltas=1)
    for _ in range(5):
        ctx, _ = make_tool_ctx(tool.settings)
        with pytest.raises(StockadeError):
            await tool.run(args_for("openai/gpt-4.1-mini"), ctx)
    assert tool.breakers["openai"].state == "open"
    await tool.aclose()
