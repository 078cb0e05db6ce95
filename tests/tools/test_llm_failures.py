"""llm.chat failure semantics against fake providers: retries, mid-stream failures, circuit breaker, timeouts."""

from __future__ import annotations

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


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make_tool(srv: FakeLLMServer, clock: Clock | None = None, **settings: object) -> LlmChatTool:
    base: dict[str, object] = dict(
        openai_api_key=OPENAI_KEY,
        openai_base_url=srv.openai_base_url,
        anthropic_api_key=ANTHROPIC_KEY,
        anthropic_base_url=srv.anthropic_base_url,
        llm_timeout_s=5.0,
        llm_max_retries=2,
    )
    base.update(settings)
    return LlmChatTool(
        Settings(**base),  # type: ignore[arg-type]
        backoff_base_s=0.001,
        backoff_cap_s=0.01,
        clock=clock or Clock(),
        breaker_threshold=5,
        breaker_cooldown_s=30.0,
    )


def args_for(model: str, **kw: object) -> LlmChatArgs:
    api = "chat"
    if model.endswith("@responses"):
        model, api = model.removesuffix("@responses"), "responses"
    raw: dict[str, object] = {"model": model, "messages": [{"role": "user", "content": "Hi"}], "api": api}
    raw.update(kw)
    return LlmChatArgs.model_validate(raw)


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("status", [429, 500, 503])
async def test_retries_retryable_statuses_then_succeeds(srv: FakeLLMServer, model: str, status: int) -> None:
    srv.enqueue(Script(status=status, retry_after=0), Script(status=status))
    srv.script = Script(text="finally", input_tokens=5, output_tokens=2)
    tool = make_tool(srv)
    ctx, rec = make_tool_ctx(tool.settings)
    res = await tool.run(args_for(model), ctx)
    assert res.result["text"] == "finally"
    assert len(srv.requests) == 3  # two failures, one success: llm_max_retries=2
    assert res.usage["attempts"] == 3
    assert rec.deltas("answer") == ["finally"]  # failed attempts emitted nothing
    assert tool.breakers[model.split("/")[0]].state == "closed"
    await tool.aclose()


async def test_gives_up_after_max_retries(srv: FakeLLMServer) -> None:
    srv.script = Script(status=500)
    tool = make_tool(srv, llm_max_retries=1)
    ctx, rec = make_tool_ctx(tool.settings)
    with pytest.raises(StockadeError) as ei:
        await tool.run(args_for("anthropic/claude-sonnet-4-5"), ctx)
    assert ei.value.code == "llm.provider_error"
    assert ei.value.extra["attempts"] == 2 and ei.value.extra["status"] == 500
    assert "HTTP 500" in ei.value.detail
    assert len(srv.requests) == 2 and rec.events == []
    await tool.aclose()


@pytest.mark.parametrize("model", MODELS)
async def test_mid_stream_failure_is_not_retried_and_charges_partial_cost(srv: FakeLLMServer, model: str) -> None:
    srv.script = Script(text="one two three four five six", input_tokens=50, abort_after_deltas=3)
    tool = make_tool(srv)
    ctx, rec = make_tool_ctx(tool.settings)
    with pytest.raises(StockadeError) as ei:
        await tool.run(args_for(model), ctx)
    err = ei.value
    assert err.code == "llm.provider_error"
    assert len(srv.requests) == 1  # output had begun: a retry would repeat it
    assert rec.deltas("answer") == ["one ", "two ", "three "]
    usage = err.extra["partial_usage"]
    assert usage["output_tokens"] >= 3  # what was generated, estimated when the provider never said
    if model.startswith("anthropic/"):
        assert usage["input_tokens"] == 50  # message_start had reported it
    price = tool.pricing.price_for(model.removesuffix("@responses"))
    assert err.extra["cost_micro"] == price.cost_micro(usage["input_tokens"], usage["output_tokens"]) > 0
    assert "not retried" in err.detail
    await tool.aclose()


@pytest.mark.parametrize("model", MODELS)
async def test_failure_before_any_output_is_retried(srv: FakeLLMServer, model: str) -> None:
    # the connection drops after the stream opened but before the first content delta
    srv.enqueue(Script(text="never shown", abort_after_deltas=0))
    srv.script = Script(text="second try")
    tool = make_tool(srv)
    ctx, rec = make_tool_ctx(tool.settings)
    res = await tool.run(args_for(model), ctx)
    assert res.result["text"] == "second try"
    assert len(srv.requests) == 2
    assert rec.deltas() == ["second ", "try"]
    await tool.aclose()


@pytest.mark.parametrize("model", ["openai/gpt-4.1-mini", "anthropic/claude-sonnet-4-5"])
async def test_auth_error_is_final_clear_and_does_not_echo_the_key(srv: FakeLLMServer, model: str) -> None:
    srv.api_key = "the-right-key"
    try:
        tool = make_tool(srv)
        ctx, _ = make_tool_ctx(tool.settings)
        with pytest.raises(StockadeError) as ei:
            await tool.run(args_for(model), ctx)
    finally:
        srv.api_key = None
    err = ei.value
    assert err.code == "llm.provider_error"
    assert err.extra["status"] == 401 and err.extra["retryable"] is False
    assert err.to_dict()["retryable"] is False
    env = "STOCKADE_ANTHROPIC_API_KEY" if model.startswith("anthropic/") else "STOCKADE_OPENAI_API_KEY"
    assert env in err.detail
    text = str(err.to_dict())
    assert OPENAI_KEY not in text and ANTHROPIC_KEY not in text
    assert len(srv.requests) == 1  # never retried
    assert tool.breakers[model.split("/")[0]].state == "closed"  # a wrong key is not an outage
    await tool.aclose()


async def test_bad_request_is_not_retried(srv: FakeLLMServer) -> None:
    srv.script = Script(status=400)
    tool = make_tool(srv)
    ctx, _ = make_tool_ctx(tool.settings)
    with pytest.raises(StockadeError) as ei:
        await tool.run(args_for("openai/gpt-4.1-mini"), ctx)
    assert ei.value.code == "llm.provider_error" and ei.value.extra["status"] == 400
    assert "Invalid request." in ei.value.detail  # the provider's own reason, passed on
    assert len(srv.requests) == 1
    await tool.aclose()


async def test_circuit_opens_fails_fast_then_half_opens(srv: FakeLLMServer) -> None:
    clock = Clock()
    srv.script = Script(status=503)
    tool = make_tool(srv, clock=clock, llm_max_retries=0)
    ctx, _ = make_tool_ctx(tool.settings)
    for _ in range(5):
        with pytest.raises(StockadeError) as ei:
            await tool.run(args_for("openai/gpt-4.1-mini"), ctx)
        assert ei.value.code == "llm.provider_error"
    assert tool.breakers["openai"].state == "open"
    assert len(srv.requests) == 5

    with pytest.raises(StockadeError) as ei:  # open: fails fast, the provider is not called
        await tool.run(args_for("openai/gpt-4.1-mini"), ctx)
    assert ei.value.code == "llm.circuit_open" and ei.value.extra["retry_after"] == 30.0
    assert len(srv.requests) == 5
    srv.enqueue(Script(text="anthropic is fine"))  # one breaker per provider
    assert (await tool.run(args_for("anthropic/claude-sonnet-4-5"), ctx)).result["text"] == "anthropic is fine"
    assert len(srv.requests) == 6

    clock.now += 29.9
    with pytest.raises(StockadeError) as ei:
        await tool.run(args_for("openai/gpt-4.1-mini"), ctx)
    assert ei.value.code == "llm.circuit_open" and len(srv.requests) == 6
    clock.now += 0.1  # cool-down over: one probe goes out; it fails -> open again
    with pytest.raises(StockadeError) as ei:
        await tool.run(args_for("openai/gpt-4.1-mini"), ctx)
    assert ei.value.code == "llm.provider_error" and len(srv.requests) == 7
    assert tool.breakers["openai"].state == "open"

    clock.now += 30.0
    srv.script = Script(text="back")
    res = await tool.run(args_for("openai/gpt-4.1-mini"), ctx)  # the probe succeeds -> closed
    assert res.result["text"] == "back" and tool.breakers["openai"].state == "closed"
    await tool.aclose()


async def test_retries_stop_when_the_circuit_opens(srv: FakeLLMServer) -> None:
    srv.script = Script(status=500)
    tool = make_tool(srv, llm_max_retries=10)
    ctx, _ = make_tool_ctx(tool.settings)
    with pytest.raises(StockadeError) as ei:
        await tool.run(args_for("anthropic/claude-sonnet-4-5"), ctx)
    assert ei.value.code == "llm.circuit_open"
    assert len(srv.requests) == 5  # the breaker's threshold bounds the retry storm
    await tool.aclose()


@pytest.mark.parametrize("model", MODELS)
async def test_timeout_before_first_byte(srv: FakeLLMServer, model: str) -> None:
    srv.script = Script(stall_s=3.0)
    tool = make_tool(srv, llm_timeout_s=0.2, llm_max_retries=1)
    ctx, rec = make_tool_ctx(tool.settings)
    with pytest.raises(StockadeError) as ei:
        await tool.run(args_for(model), ctx)
    assert ei.value.code == "tool.timeout"
    assert ei.value.extra["attempts"] == 2 and "STOCKADE_LLM_TIMEOUT_S" in ei.value.detail
    assert rec.events == []
    await tool.aclose()


@pytest.mark.parametrize("model", ["openai/gpt-4.1-mini", "anthropic/claude-sonnet-4-5"])
async def test_unconfigured_provider(model: str) -> None:
    tool = LlmChatTool(
        Settings(openai_api_key=None, anthropic_api_key=None, openai_base_url=None, anthropic_base_url=None)
    )
    ctx, _ = make_tool_ctx(tool.settings)
    with pytest.raises(StockadeError) as ei:
        await tool.run(args_for(model), ctx)
    err = ei.value
    assert err.code == "llm.unconfigured"
    assert "STOCKADE_OPENAI_API_KEY" in err.detail and "STOCKADE_ANTHROPIC_API_KEY" in err.detail
    assert "STOCKADE_OPENAI_BASE_URL" in err.detail and err.detail.count(".") <= 2  # one sentence
    await tool.aclose()


async def test_emit_failure_mid_stream_keeps_the_partial_cost(srv: FakeLLMServer) -> None:
    srv.script = Script(text="a b c d e f", input_tokens=10)
    tool = make_tool(srv)
    ctx, rec = make_tool_ctx(tool.settings)
    sent = 0

    async def emit(type: str, data: dict[str, object]) -> None:
        nonlocal sent
        sent += 1
        if sent == 3:
            raise StockadeError("limit.events", "too many events")
        await rec.emit(type, data)

    ctx.emit = emit
    with pytest.raises(StockadeError) as ei:
        await tool.run(args_for("anthropic/claude-sonnet-4-5"), ctx)
    assert ei.value.code == "limit.events"
    assert ei.value.extra["partial_usage"]["input_tokens"] == 10
    assert ei.value.extra["cost_micro"] > 0
    assert len(srv.requests) == 1
    assert tool.breakers["anthropic"].state == "closed"
    await tool.aclose()


@pytest.mark.parametrize("model", MODELS)
async def test_error_event_mid_stream_is_a_provider_error_with_partial_cost(srv: FakeLLMServer, model: str) -> None:
    srv.script = Script(text="alpha beta gamma delta", input_tokens=20, error_after_deltas=2)
    tool = make_tool(srv)
    ctx, rec = make_tool_ctx(tool.settings)
    with pytest.raises(StockadeError) as ei:
        await tool.run(args_for(model), ctx)
    assert ei.value.code == "llm.provider_error"
    assert "reported an error" in ei.value.detail
    assert rec.deltas("answer") == ["alpha ", "beta "]
    assert ei.value.extra["cost_micro"] > 0 and ei.value.extra["partial_usage"]["output_tokens"] >= 2
    assert len(srv.requests) == 1
    await tool.aclose()


@pytest.mark.parametrize("model", MODELS)
async def test_error_event_before_output_is_retried(srv: FakeLLMServer, model: str) -> None:
    srv.enqueue(Script(text="lost", error_after_deltas=0))
    srv.script = Script(text="recovered")
    tool = make_tool(srv)
    ctx, rec = make_tool_ctx(tool.settings)
    res = await tool.run(args_for(model), ctx)
    assert res.result["text"] == "recovered" and rec.deltas() == ["recovered"]
    assert len(srv.requests) == 2
    await tool.aclose()


@pytest.mark.parametrize("model", MODELS)
async def test_a_call_cancelled_mid_stream_leaves_what_it_spent(srv: FakeLLMServer, model: str) -> None:
    """The run is canceled (or times out) while the answer streams: the tokens generated so far are
    owed to the provider, so the tool leaves their cost where settlement reads it (ToolContext.spent_micro)."""
    import asyncio

    srv.script = Script(text="one two three four five six", input_tokens=40, hold_after_deltas=3)
    tool = make_tool(srv)
    ctx, rec = make_tool_ctx(tool.settings)
    three = asyncio.Event()
    emit = rec.emit

    async def note(type: str, data: dict) -> None:
        await emit(type, data)
        if len(rec.deltas("answer")) == 3:
            three.set()

    ctx.emit = note
    task = asyncio.ensure_future(tool.run(args_for(model), ctx))
    await asyncio.wait_for(three.wait(), 10)  # three words arrived; the provider holds the rest
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert rec.deltas("answer") == ["one ", "two ", "three "]
    price = tool.pricing.price_for(model.removesuffix("@responses"))
    assert ctx.spent_micro >= price.cost_micro(0, 3) > 0
    await tool.aclose()

