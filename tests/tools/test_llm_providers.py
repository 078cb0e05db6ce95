"""llm.chat through the real openai / anthropic SDKs against fake servers speaking the real wire formats."""

from __future__ import annotations

from decimal import Decimal

import pytest

from supervisor.settings import Settings
from supervisor.tools.llm import LlmChatArgs, LlmChatTool, LlmPricing, Price
from tests.fakes.llm_servers import FakeLLMServer, Script, ToolCallSpec
from tests.fakes.tool_ctx import make_tool_ctx

pytestmark = [
    pytest.mark.timeout(30),
    pytest.mark.filterwarnings("ignore:The model .* is deprecated:DeprecationWarning"),  # the SDK's own notice
]

OPENAI_KEY = "sk-test-openai-0123456789"
ANTHROPIC_KEY = "sk-ant-test-0123456789"
MODELS = ["openai/gpt-4.1-mini", "openai/gpt-4.1-mini@responses", "anthropic/claude-sonnet-4-5"]


def settings_for(srv: FakeLLMServer, **kw: object) -> Settings:
    base: dict[str, object] = dict(
        openai_api_key=OPENAI_KEY,
        openai_base_url=srv.openai_base_url,
        anthropic_api_key=ANTHROPIC_KEY,
        anthropic_base_url=srv.anthropic_base_url,
        llm_timeout_s=5.0,
        llm_max_retries=2,
    )
    base.update(kw)
    return Settings(**base)  # type: ignore[arg-type]


def args_for(model: str, **kw: object) -> LlmChatArgs:
    api = "chat"
    if model.endswith("@responses"):
        model, api = model.removesuffix("@responses"), "responses"
    raw: dict[str, object] = {"model": model, "messages": [{"role": "user", "content": "Say hello"}], "api": api}
    raw.update(kw)
    return LlmChatArgs.model_validate(raw)


def path_of(model: str) -> str:
    if model.startswith("anthropic/"):
        return "/v1/messages"
    return "/v1/responses" if model.endswith("@responses") else "/v1/chat/completions"


@pytest.mark.parametrize("model", MODELS)
async def test_streams_answer_and_thinking_on_their_channels(srv: FakeLLMServer, model: str) -> None:
    srv.script = Script(text="Hello there, friend.", thinking="The user greets me.", input_tokens=40, output_tokens=12)
    tool = LlmChatTool(settings_for(srv))
    ctx, rec = make_tool_ctx(tool.settings)
    res = await tool.run(args_for(model, system="Be brief.", max_tokens=300), ctx)

    assert rec.deltas("thinking") == ["The ", "user ", "greets ", "me."]
    assert rec.deltas("answer") == ["Hello ", "there, ", "friend."]
    assert rec.channels() == ["thinking"] * 4 + ["answer"] * 3  # thinking streams first, in order
    assert rec.chunks == [d for t, d in rec.events if t == "message.delta"]  # the bundle gets the same chunks
    out = res.result
    assert out["text"] == "Hello there, friend."
    assert out["thinking"] == "The user greets me."
    assert out["model"] == model.removesuffix("@responses")
    assert out["usage"] == {"input_tokens": 40, "output_tokens": 12}
    price = tool.pricing.price_for(out["model"])
    expected = price.cost_micro(40, 12)
    assert res.cost_micro == expected > 0
    assert out["cost_usd"] == pytest.approx(expected / 1e6)
    assert "tool_calls" not in out
    await tool.aclose()


@pytest.mark.parametrize("model", MODELS)
async def test_request_reaches_provider_with_key_system_and_limits(srv: FakeLLMServer, model: str) -> None:
    tool = LlmChatTool(settings_for(srv))
    ctx, _ = make_tool_ctx(tool.settings)
    args = args_for(
        model,
        system="You are terse.",
        max_tokens=321,
        temperature=0.5,
        messages=[
            {"role": "user", "content": "first"},
            {"role": "assistant", "content": "ok"},
            {"role": "user", "content": "second"},
        ],
    )
    await tool.run(args, ctx)
    [req] = srv.requests
    assert req.path == path_of(model)
    key = ANTHROPIC_KEY if model.startswith("anthropic/") else OPENAI_KEY
    assert key in (req.headers.get("authorization", "") + req.headers.get("x-api-key", ""))
    body = req.body
    assert body["model"] == model.split("/", 1)[1].removesuffix("@responses")
    assert body["stream"] is True
    assert body["temperature"] == 0.5
    if model.startswith("anthropic/"):
        assert body["system"] == "You are terse."
        assert body["max_tokens"] == 321
        assert [m["role"] for m in body["messages"]] == ["user", "assistant", "user"]
        assert body["messages"][-1]["content"] == [{"type": "text", "text": "second"}]
    elif model.endswith("@responses"):
        assert body["instructions"] == "You are terse."
        assert body["max_output_tokens"] == 321
        assert body["input"][-1] == {"role": "user", "content": "second"}
    else:
        assert body["messages"][0] == {"role": "system", "content": "You are terse."}
        assert body["messages"][-1] == {"role": "user", "content": "second"}
        assert body["max_tokens"] == 321  # a custom base URL is an OpenAI-compatible server: max_tokens
        assert body["stream_options"] == {"include_usage": True}
    await tool.aclose()


@pytest.mark.parametrize("model", MODELS)
async def test_non_streaming_emits_nothing_and_returns_everything(srv: FakeLLMServer, model: str) -> None:
    srv.script = Script(text="Plain reply.", thinking="hmm", input_tokens=9, output_tokens=4)
    tool = LlmChatTool(settings_for(srv))
    ctx, rec = make_tool_ctx(tool.settings)
    res = await tool.run(args_for(model, stream=False), ctx)
    assert rec.events == [] and rec.chunks == []
    assert srv.requests[0].body.get("stream") in (None, False)
    assert res.result["text"] == "Plain reply."
    assert res.result["thinking"] == "hmm"
    assert res.result["usage"] == {"input_tokens": 9, "output_tokens": 4}
    assert res.cost_micro == tool.pricing.price_for(res.result["model"]).cost_micro(9, 4)
    await tool.aclose()


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("stream", [True, False])
async def test_tool_calls_pass_through(srv: FakeLLMServer, model: str, stream: bool) -> None:
    calls = (
        ToolCallSpec("get_weather", {"city": "Paris", "units": "metric"}, id="call_1"),
        ToolCallSpec("get_time", {"tz": "Europe/Paris"}, id="call_2"),
    )
    srv.script = Script(text="", tool_calls=calls)
    tool = LlmChatTool(settings_for(srv))
    ctx, rec = make_tool_ctx(tool.settings)
    spec = {
        "name": "get_weather",
        "description": "Weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    }
    spec2 = {"name": "get_time", "description": "Time in a zone", "parameters": {"type": "object", "properties": {}}}
    res = await tool.run(args_for(model, tools=[spec, spec2], stream=stream), ctx)
    assert res.result["tool_calls"] == [
        {"id": "call_1", "name": "get_weather", "arguments": {"city": "Paris", "units": "metric"}},
        {"id": "call_2", "name": "get_time", "arguments": {"tz": "Europe/Paris"}},
    ]
    assert rec.deltas("answer") == []  # tool-call fragments are not answer text
    sent = srv.requests[0].body["tools"]
    if model.startswith("anthropic/"):
        assert sent[0] == {
            "name": "get_weather",
            "description": "Weather for a city",
            "input_schema": spec["parameters"],
        }
    elif model.endswith("@responses"):
        assert sent[0]["type"] == "function" and sent[0]["name"] == "get_weather"
        assert sent[0]["parameters"] == spec["parameters"]
    else:
        assert sent[0] == {"type": "function", "function": spec}
    await tool.aclose()


@pytest.mark.parametrize("model", MODELS)
async def test_tool_results_go_back_in_the_provider_format(srv: FakeLLMServer, model: str) -> None:
    tool = LlmChatTool(settings_for(srv))
    ctx, _ = make_tool_ctx(tool.settings)
    messages = [
        {"role": "user", "content": "Weather in Paris and Rome?"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {"id": "c1", "name": "get_weather", "arguments": {"city": "Paris"}},
                {"id": "c2", "name": "get_weather", "arguments": {"city": "Rome"}},
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "18C"},
        {"role": "tool", "tool_call_id": "c2", "content": "24C"},
    ]
    await tool.run(args_for(model, messages=messages), ctx)
    body = srv.requests[0].body
    if model.startswith("anthropic/"):
        assert [m["role"] for m in body["messages"]] == ["user", "assistant", "user"]  # results merged in one turn
        assert body["messages"][1]["content"][0] == {
            "type": "tool_use",
            "id": "c1",
            "name": "get_weather",
            "input": {"city": "Paris"},
        }
        assert body["messages"][2]["content"] == [
            {"type": "tool_result", "tool_use_id": "c1", "content": "18C"},
            {"type": "tool_result", "tool_use_id": "c2", "content": "24C"},
        ]
    elif model.endswith("@responses"):
        kinds = [i.get("type", i.get("role")) for i in body["input"]]
        assert kinds == ["user", "function_call", "function_call", "function_call_output", "function_call_output"]
        assert body["input"][3] == {"type": "function_call_output", "call_id": "c1", "output": "18C"}
    else:
        msgs = body["messages"]
        assert msgs[1]["tool_calls"][1]["function"] == {"name": "get_weather", "arguments": '{"city": "Rome"}'}
        assert msgs[2] == {"role": "tool", "tool_call_id": "c1", "content": "18C"}
    await tool.aclose()


async def test_anthropic_reasoning_enables_thinking_without_temperature(srv: FakeLLMServer) -> None:
    tool = LlmChatTool(settings_for(srv))
    ctx, _ = make_tool_ctx(tool.settings)
    await tool.run(args_for("anthropic/claude-sonnet-4-5", reasoning="medium", max_tokens=3000, temperature=0.2), ctx)
    body = srv.requests[0].body
    assert body["thinking"] == {"type": "enabled", "budget_tokens": 2999}  # capped inside max_tokens
    assert "temperature" not in body  # Anthropic rejects a temperature with thinking on
    await tool.aclose()


async def test_openai_compatible_server_without_key_gets_a_placeholder(srv: FakeLLMServer) -> None:
    settings = Settings(openai_base_url=srv.openai_base_url, llm_timeout_s=5.0)  # e.g. Ollama: no key at all
    tool = LlmChatTool(settings)
    ctx, rec = make_tool_ctx(settings)
    res = await tool.run(args_for("openai/llama3.2:3b"), ctx)
    assert res.result["text"] == "You said: Say hello"
    assert "".join(rec.deltas("answer")) == "You said: Say hello"
    assert srv.requests[0].body["model"] == "llama3.2:3b"
    assert srv.requests[0].headers["authorization"] == "Bearer stockade-no-key"
    await tool.aclose()


@pytest.mark.parametrize("model", MODELS)
async def test_estimate_covers_the_worst_case(srv: FakeLLMServer, model: str) -> None:
    max_tokens = 200
    srv.script = Script(text="word " * 150, output_tokens=max_tokens)  # the model runs to the limit
    tool = LlmChatTool(settings_for(srv))
    ctx, _ = make_tool_ctx(tool.settings)
    messages = [
        {"role": "user", "content": "Tell me everything about " + "the sea, " * 40},
        {"role": "assistant", "content": "Ok."},
        {"role": "user", "content": "海の話をして 🌊"},
    ]
    args = args_for(model, system="You are a sailor.", messages=messages, max_tokens=max_tokens)
    estimate = tool.estimate_micro(args, ctx)
    res = await tool.run(args, ctx)
    assert res.result["usage"]["output_tokens"] == max_tokens
    assert estimate is not None and estimate >= res.cost_micro > 0
    await tool.aclose()


async def test_tenant_price_overrides_win(srv: FakeLLMServer) -> None:
    srv.script = Script(text="hi", input_tokens=1000, output_tokens=500)
    pricing = LlmPricing(
        {"openai/gpt-4.1-mini": Price(Decimal("0.4"), Decimal("1.6"))}, Price(Decimal(15), Decimal(75))
    )
    tool = LlmChatTool(settings_for(srv), pricing=pricing)
    ctx, _ = make_tool_ctx(tool.settings, llm_prices={"openai/gpt-4.1-mini": {"input": 1.0, "output": 2.0}})
    res = await tool.run(args_for("openai/gpt-4.1-mini"), ctx)
    assert res.cost_micro == 1000 * 1 + 500 * 2  # USD per 1M tokens x tokens = micro-USD
    ctx2, _ = make_tool_ctx(tool.settings)
    res2 = await tool.run(args_for("openai/gpt-4.1-mini"), ctx2)
    assert res2.cost_micro == 400 + 800
    await tool.aclose()


async def test_clients_are_reused_across_calls(srv: FakeLLMServer) -> None:
    tool = LlmChatTool(settings_for(srv))
    ctx, _ = make_tool_ctx(tool.settings)
    await tool.run(args_for("openai/gpt-4.1-mini"), ctx)
    await tool.run(args_for("openai/gpt-4.1-mini"), ctx)
    ep_clients = [c for d in tool.clients._by_loop.values() for c in d.values()]
    assert len(ep_clients) == 1  # one pooled client per provider endpoint, not one per call
    await tool.aclose()
