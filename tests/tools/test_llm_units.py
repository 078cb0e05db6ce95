"""llm.chat pieces without a provider: argument model, price table, breaker, endpoints, estimates."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr, ValidationError

from supervisor.errors import StockadeError
from supervisor.settings import Settings, SettingsError
from supervisor.tools.llm import CircuitBreaker, LlmChatArgs, LlmChatTool, LlmPricing, Price, make_llm_tool
from supervisor.tools.llm._clients import NO_KEY, endpoint_for
from supervisor.tools.llm._failures import backoff_s
from supervisor.tools.llm._openai_chat import _request as chat_request
from supervisor.tools.llm._tokens import estimate_tokens, input_ceiling, input_estimate
from tests.fakes.tool_ctx import make_tool_ctx

MSG = [{"role": "user", "content": "hi"}]


def valid(**kw: Any) -> LlmChatArgs:
    return LlmChatArgs.model_validate({"model": "openai/gpt-4.1-mini", "messages": MSG, **kw})


# --- arguments


@pytest.mark.parametrize(
    "model",
    [
        "openai/gpt-4.1-mini",
        "anthropic/claude-sonnet-4-5",
        "openai/llama3.2:3b",
        "openai/meta-llama/Llama-3.1-8B-Instruct",
    ],
)
def test_model_names_accepted(model: str) -> None:
    assert valid(model=model).model == model


@pytest.mark.parametrize(
    "model",
    [
        "gpt-4.1-mini",
        "google/gemini",
        "openai/",
        "/gpt",
        "openai//x",
        "OpenAI/gpt",
        "openai/../x",
        "openai/gpt 4",
        "anthropic/claude\n",
        "openai/x/",
        7,
    ],
)
def test_bad_model_names_refused(model: Any) -> None:
    with pytest.raises(ValidationError):
        valid(model=model)


@pytest.mark.parametrize(
    "bad",
    [
        {"messages": []},
        {"messages": [{"role": "user"}]},
        {"messages": [{"role": "robot", "content": "x"}]},
        {"messages": [{"role": "user", "content": "x", "extra": 1}]},
        {"messages": [{"role": "tool", "content": "x"}]},  # needs tool_call_id
        {"messages": [{"role": "user", "content": "x", "tool_calls": [{"id": "1", "name": "f"}]}]},
        {"max_tokens": 0},
        {"max_tokens": 10**7},
        {"max_tokens": "100"},
        {"max_tokens": 100.0},
        {"temperature": 3},
        {"temperature": "0.5"},
        {"stream": "yes"},
        {"stream": 1},
        {"api": "completions"},
        {"model": "anthropic/claude-sonnet-4-5", "api": "responses"},
        {"model": "anthropic/claude-sonnet-4-5", "temperature": 1.5},
        {"model": "anthropic/claude-sonnet-4-5", "reasoning": "high", "max_tokens": 1000},
        {"tools": [{"name": "bad name!", "parameters": {}}]},
        {"tools": [{"name": "f"}, {"name": "f"}]},
        {"unknown": True},
    ],
)
def test_bad_arguments_are_validation_errors(bad: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        valid(**bad)


def test_defaults() -> None:
    a = valid()
    assert (a.max_tokens, a.stream, a.api, a.temperature, a.provider, a.model_name) == (
        1024,
        True,
        "chat",
        None,
        "openai",
        "gpt-4.1-mini",
    )
    assert make_llm_tool(Settings()).args_model is LlmChatArgs


def test_official_openai_gets_max_completion_tokens() -> None:
    official = endpoint_for(Settings(openai_api_key=SecretStr("k")), "openai", "openai/gpt-4.1-mini")
    assert official.official and official.base_url == "https://api.openai.com/v1"
    assert chat_request(valid(max_tokens=77), official)["max_completion_tokens"] == 77
    local = endpoint_for(Settings(openai_base_url="http://127.0.0.1:11434/v1/"), "openai", "openai/x")
    assert not local.official and local.api_key == NO_KEY and local.base_url == "http://127.0.0.1:11434/v1"
    assert chat_request(valid(max_tokens=77), local)["max_tokens"] == 77


# --- pricing


def test_shipped_prices_and_fallbacks() -> None:
    p = LlmPricing.load()
    assert p.price_for("openai/gpt-4.1-mini") == Price(Decimal("0.4"), Decimal("1.6"))
    assert p.price_for("anthropic/claude-sonnet-4-5-20250929") == p.price_for("anthropic/claude-sonnet-4-5")
    top = max((v for v in p._exact.values()), key=lambda v: (v.output, v.input))
    assert p.price_for("openai/some-new-model") == p.default
    assert p.default.input >= top.input and p.default.output >= top.output  # unknown: never under-reserved
    assert p.cost_micro("openai/gpt-4.1-mini", 12, 0) == 5  # 4.8 micro-USD, rounded up, no float noise
    assert p.cost_micro("openai/gpt-4.1-mini", 1_000_000, 1_000_000) == 2_000_000


def test_pricing_file_and_overrides_layer(tmp_path: Path) -> None:
    f = tmp_path / "prices.yaml"
    f.write_text(
        "default: {input: 1, output: 2}\nmodels:\n  openai/llama*: {input: 0, output: 0}\n"
        "  openai/gpt-4.1-mini: {input: 0.5, output: 2}\n"
    )
    p = LlmPricing.load(f)
    assert p.price_for("openai/llama3.2:3b") == Price(Decimal(0), Decimal(0))
    assert p.price_for("openai/gpt-4.1-mini").input == Decimal("0.5")
    assert p.price_for("anthropic/claude-haiku-4-5").output == Decimal(5)  # shipped entry kept
    assert p.price_for("openai/unknown") == Price(Decimal(1), Decimal(2))
    over = {"openai/gpt-4.1-mini": {"input": 9, "output": 9}, "default": {"input": 3, "output": 3}}
    assert p.price_for("openai/gpt-4.1-mini", over).input == Decimal(9)
    assert p.price_for("openai/unknown", over).input == Decimal(3)
    j = tmp_path / "p.json"
    j.write_text(json.dumps({"openai/x": {"input": 1, "output": 1}}))
    assert LlmPricing.load(j).price_for("openai/x").input == Decimal(1)


@pytest.mark.parametrize(
    "text",
    [
        "models: [1, 2]",
        "openai/x: {input: -1, output: 1}",
        "openai/x: {input: 1}",
        "openai/x: {input: one, output: 1}",
        "openai/x: {input: 1, output: 1, cache: 1}",
        "openai/x: {input: .nan, output: 1}",
        ": : :",
    ],
)
def test_bad_pricing_file_is_one_clear_settings_error(tmp_path: Path, text: str) -> None:
    f = tmp_path / "prices.yaml"
    f.write_text(text)
    with pytest.raises(SettingsError) as ei:
        LlmPricing.load(f)
    assert "\n" not in str(ei.value)


def test_pricing_file_reads_yaml_1_2(tmp_path: Path) -> None:
    # 1e-3 was a string under YAML 1.1 ("prices must be numbers"); an ambiguous `on` is refused with its line
    f = tmp_path / "prices.yaml"
    f.write_text("models:\n  openai/x: {input: 1e-1, output: 2e0}\n")
    assert LlmPricing.load(f).price_for("openai/x") == Price(Decimal("0.1"), Decimal("2.0"))
    f.write_text("models:\n  openai/x: {input: 1, output: 1}\n  on: {input: 1, output: 1}\n")
    with pytest.raises(SettingsError, match="line 3: 'on' is a boolean in YAML 1.1"):
        LlmPricing.load(f)


def test_missing_pricing_file(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="STOCKADE_LLM_PRICING_FILE"):
        LlmPricing.load(tmp_path / "nope.yaml")


async def test_bad_tenant_overrides_are_refused_before_calling() -> None:
    tool = LlmChatTool(Settings(openai_api_key=SecretStr("k")))
    ctx, _ = make_tool_ctx(tool.settings, llm_prices={"openai/gpt-4.1-mini": {"input": "free"}})
    with pytest.raises(StockadeError) as ei:
        await tool.run(valid(), ctx)
    assert ei.value.code == "policy.invalid"


# --- estimates


def test_estimate_tokens_errs_high_for_non_ascii() -> None:
    assert estimate_tokens("") == 0
    assert estimate_tokens("abcd") == 1 and estimate_tokens("abcde") == 2
    assert estimate_tokens("海の話") == 3


def test_estimate_micro_is_prompt_plus_max_output() -> None:
    tool = LlmChatTool(Settings())
    ctx, _ = make_tool_ctx(tool.settings)
    a = valid(messages=[{"role": "user", "content": "x" * 400}], system="y" * 40, max_tokens=1000)
    tokens_in = input_estimate(a)
    assert tokens_in >= (400 + 40) // 4
    assert input_ceiling(a) >= 400 + 40  # the reservation: one token per byte at most
    assert tool.estimate_micro(a, ctx) == tool.pricing.price_for(a.model).cost_micro(input_ceiling(a), 1000)
    with_tools = valid(tools=[{"name": "f", "description": "d", "parameters": {"type": "object"}}])
    assert input_estimate(with_tools) > input_estimate(valid()) + 300
    assert tool.resource(a, ctx) == "openai/gpt-4.1-mini"


# --- breaker and backoff


def test_breaker_state_machine() -> None:
    now = [0.0]
    b = CircuitBreaker("openai", threshold=3, cooldown_s=10, clock=lambda: now[0])
    for _ in range(2):
        b.before_call()
        b.record_failure()
    b.before_call()
    b.record_success()  # a success resets the count: failures must be consecutive
    for _ in range(3):
        b.before_call()
        b.record_failure()
    assert b.state == "open"
    with pytest.raises(StockadeError) as ei:
        b.before_call()
    assert ei.value.code == "llm.circuit_open" and ei.value.extra["retry_after"] == 10
    now[0] = 10.0
    assert b.state == "half_open"
    b.before_call()  # the probe
    with pytest.raises(StockadeError):
        b.before_call()  # only one probe at a time
    b.release()  # the probe was cancelled: the next call may probe
    b.before_call()
    b.record_success()
    assert b.state == "closed"


def test_backoff_grows_and_honours_retry_after() -> None:
    for attempt in range(6):
        d = backoff_s(attempt, 0.5, 8.0)
        assert min(8.0, 0.5 * 2**attempt) / 2 <= d <= min(8.0, 0.5 * 2**attempt)
    assert backoff_s(0, 0.5, 8.0, retry_after=3.0) == 3.0
    assert backoff_s(0, 0.5, 8.0, retry_after=100.0) == 8.0
