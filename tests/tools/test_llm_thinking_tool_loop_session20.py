"""A tool loop with Anthropic thinking on, through the real anthropic SDK (session 20).

Was: ``llm.chat`` streamed an Anthropic model's thinking but kept no block of it, and an assistant message
could not carry one back. With thinking on, the Messages API refuses a tool loop's next request whose last
assistant turn does not start with its (signed) thinking block, so every bundle running tools with
``reasoning`` on an Anthropic model failed at its second call. The result now has ``thinking_blocks``, which
the bundle sends back on the assistant message as it sends ``tool_calls``. The fake server refuses what the
real API refuses (``messages_problem``).
"""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from supervisor.errors import StockadeError
from supervisor.tools.llm import LlmChatArgs, LlmChatTool
from supervisor.tools.llm._collector import Collector
from tests.fakes._anthropic_wire import signature_of
from tests.fakes.llm_servers import FakeLLMServer, Script, ToolCallSpec
from tests.fakes.tool_ctx import make_tool_ctx
from tests.tools.test_llm_providers import settings_for

pytestmark = pytest.mark.timeout(30)

CLAUDE = "anthropic/claude-sonnet-4-5"
WEATHER = {"name": "get_weather", "description": "Weather for a city",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}
QUESTION = {"role": "user", "content": "Weather in Paris?"}


def _args(model: str = CLAUDE, **kw: object) -> LlmChatArgs:
    raw: dict[str, object] = {"model": model, "messages": [QUESTION], "tools": [WEATHER], "max_tokens": 4000,
                              "reasoning": "low"}
    raw.update(kw)
    return LlmChatArgs.model_validate(raw)


def _next_turn(first: dict, **assistant_extra: object) -> list[dict]:
    assistant = {"role": "assistant", "content": first["text"], "tool_calls": first["tool_calls"], **assistant_extra}
    return [QUESTION, assistant, {"role": "tool", "tool_call_id": first["tool_calls"][0]["id"], "content": "18C"}]


@pytest.mark.parametrize("stream", [True, False])
async def test_the_thinking_block_goes_back_and_the_loop_goes_on(srv: FakeLLMServer, stream: bool) -> None:
    srv.enqueue(Script(text="", thinking="The user wants Paris. I should call the tool.",
                       tool_calls=(ToolCallSpec("get_weather", {"city": "Paris"}, id="toolu_1"),)),
                Script(text="It is 18C in Paris."))
    tool = LlmChatTool(settings_for(srv))
    ctx, rec = make_tool_ctx(tool.settings)
    first = (await tool.run(_args(stream=stream), ctx)).result
    thought = "The user wants Paris. I should call the tool."
    assert first["thinking"] == thought
    assert first["thinking_blocks"] == [{"type": "thinking", "thinking": thought, "signature": signature_of(thought)}]
    second = await tool.run(_args(stream=stream, messages=_next_turn(first, thinking_blocks=first["thinking_blocks"])),
                            ctx)
    assert second.result["text"] == "It is 18C in Paris."
    sent = srv.requests[1].body["messages"][1]["content"]
    assert [b["type"] for b in sent] == ["thinking", "tool_use"]  # the thinking block first, signature intact
    assert sent[0]["signature"] == signature_of(thought)
    await tool.aclose()


async def test_without_its_thinking_block_the_provider_refuses_the_next_call(srv: FakeLLMServer) -> None:
    """What every such bundle met before: the fake refuses as the real API does (and is not retried)."""
    srv.enqueue(Script(text="", thinking="Call the tool.", tool_calls=(ToolCallSpec("get_weather", {}, id="t1"),)))
    tool = LlmChatTool(settings_for(srv))
    ctx, _ = make_tool_ctx(tool.settings)
    first = (await tool.run(_args(), ctx)).result
    with pytest.raises(StockadeError) as err:
        await tool.run(_args(messages=_next_turn(first)), ctx)
    assert err.value.code == "llm.provider_error" and "must start with a thinking block" in err.value.detail
    assert srv.count("/v1/messages") == 2
    await tool.aclose()


async def test_a_redacted_block_goes_back_too_in_its_place(srv: FakeLLMServer) -> None:
    srv.enqueue(Script(text="", redacted_thinking="EncryptedBlob==", thinking="Paris.",
                       tool_calls=(ToolCallSpec("get_weather", {"city": "Paris"}, id="toolu_2"),)),
                Script(text="Done."))
    tool = LlmChatTool(settings_for(srv))
    ctx, _ = make_tool_ctx(tool.settings)
    first = (await tool.run(_args(), ctx)).result
    assert first["thinking_blocks"] == [{"type": "redacted_thinking", "data": "EncryptedBlob=="},
                                        {"type": "thinking", "thinking": "Paris.", "signature": signature_of("Paris.")}]
    await tool.run(_args(messages=_next_turn(first, thinking_blocks=first["thinking_blocks"])), ctx)
    sent = srv.requests[1].body["messages"][1]["content"]
    assert [b["type"] for b in sent] == ["redacted_thinking", "thinking", "tool_use"]
    await tool.aclose()


async def test_a_block_without_its_signature_is_not_handed_over() -> None:
    """A block the stream ended inside has no signature: it could never go back, so none is handed over."""
    ctx, _ = make_tool_ctx(settings_for(FakeLLMServer()))
    col = Collector(ctx, stream=False)
    col.thinking_block(0, "thinking")
    col.block_part(0, "thinking", "half a thought")
    col.thinking_block(1, "redacted_thinking")
    col.block_part(1, "data", "")  # nothing: no block either
    col.thinking_block(2, "thinking")
    col.block_part(2, "thinking", "whole")
    col.block_part(2, "signature", "sig")
    col.block_part(2, "data", "not a part of a thinking block")
    col.thinking_block(3, "tool_use")  # not a thinking block: ignored
    assert col.thinking_blocks() == [{"type": "thinking", "thinking": "whole", "signature": "sig"}]


@pytest.mark.parametrize("model", ["openai/gpt-4.1-mini", CLAUDE])
async def test_blocks_go_to_anthropic_with_thinking_on_only(srv: FakeLLMServer, model: str) -> None:
    """A policy may downgrade the model to another provider, or the bundle turn thinking off: the blocks it
    holds are then not sent (OpenAI knows no such thing; Anthropic without thinking needs none)."""
    first = {"text": "", "tool_calls": [{"id": "c1", "name": "get_weather", "arguments": {}}]}
    blocks = [{"type": "thinking", "thinking": "t", "signature": signature_of("t")}]
    tool = LlmChatTool(settings_for(srv))
    ctx, _ = make_tool_ctx(tool.settings)
    await tool.run(_args(model, reasoning=None, messages=_next_turn(first, thinking_blocks=blocks)), ctx)
    body = srv.requests[0].body
    assert "thinking" not in str(body["messages"][1])
    await tool.aclose()


@pytest.mark.parametrize("bad", [
    {"role": "user", "content": "hi", "thinking_blocks": [{"type": "thinking", "thinking": "t", "signature": "s"}]},
    {"role": "assistant", "content": "", "thinking_blocks": [{"type": "thinking", "thinking": "t"}]},
    {"role": "assistant", "content": "", "thinking_blocks": [{"type": "redacted_thinking", "data": "d",
                                                              "thinking": "t"}]},
    {"role": "assistant", "content": "", "thinking_blocks": [{"type": "tool_use", "data": "d"}]},
    {"role": "assistant", "content": "", "thinking_blocks": [{"type": "thinking", "thinking": "t", "signature": ""}]},
    {"role": "assistant", "content": "", "thinking_blocks": [{"type": "thinking", "thinking": "t", "signature": "s",
                                                              "extra": 1}]},
])
def test_malformed_thinking_blocks_are_refused(bad: dict) -> None:
    with pytest.raises(ValidationError):
        _args(messages=[QUESTION, bad])
