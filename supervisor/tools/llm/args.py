"""``llm.chat`` arguments: one provider-neutral shape, translated per provider by the adapters.

Tool definitions and tool calls are neutral too (``name``/``description``/
``parameters``; ``id``/``name``/``arguments``), so a bundle's tool loop keeps
working when the policy downgrades the model to another provider.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from supervisor.tools.base import ToolArgs

__all__ = ["MAX_THINKING_BLOCKS", "MAX_TOOL_CALLS", "PROVIDERS", "ChatMessage", "LlmChatArgs", "ThinkingBlock",
           "ToolCall", "ToolSpec", "split_model"]

PROVIDERS = ("openai", "anthropic")
# provider/name; names may carry a namespace ("openai/meta-llama/Llama-3.1-8B-Instruct" on vLLM) or a tag ("llama3.2:3b")
_MODEL = re.compile(r"^(openai|anthropic)/([A-Za-z0-9][A-Za-z0-9._:@-]*(?:/[A-Za-z0-9][A-Za-z0-9._:@-]*)*)$")
_FN_NAME = r"^[A-Za-z0-9_-]{1,64}$"  # what both providers accept as a function/tool name
MAX_CONTENT = 1_000_000
MAX_OUTPUT_TOKENS = 128_000
MAX_TOOL_CALLS = 128  # per assistant turn, both ways: a model's answer must fit the next request
MAX_THINKING_BLOCKS = 128  # per assistant turn, both ways, as tool calls
# Anthropic thinking budgets per reasoning level (tokens, inside max_tokens)
THINKING_BUDGET = {"low": 1024, "medium": 4096, "high": 16384}


def split_model(model: str) -> tuple[str, str]:
    m = _MODEL.fullmatch(model)
    if m is None or len(model) > 200:
        raise ValueError(
            "model must be 'provider/name' with provider openai or anthropic, e.g. 'openai/gpt-4.1-mini' "
            "or 'anthropic/claude-sonnet-4-5'"
        )
    return m.group(1), m.group(2)


class ToolCall(ToolArgs):
    """A tool call the model made, as returned in ``tool_calls`` and sent back in an assistant message."""

    id: str = Field(min_length=1, max_length=256)
    name: str = Field(pattern=_FN_NAME)
    arguments: dict[str, Any] = {}


class ToolSpec(ToolArgs):
    """A tool the model may call: a name, what it does, and a JSON schema of its arguments."""

    name: str = Field(pattern=_FN_NAME)
    description: str = Field("", max_length=8192)
    parameters: dict[str, Any] = {"type": "object", "properties": {}}


class ThinkingBlock(ToolArgs):
    """An Anthropic thinking block as returned in ``thinking_blocks`` and sent back in the assistant message
    that called tools: with thinking on, Anthropic refuses a tool loop's next request without it (its
    signature proves the text is the model's own). Other providers never get it."""

    type: Literal["thinking", "redacted_thinking"]
    thinking: str | None = Field(None, max_length=MAX_CONTENT)
    signature: str | None = Field(None, min_length=1, max_length=MAX_CONTENT)
    data: str | None = Field(None, min_length=1, max_length=MAX_CONTENT)  # redacted_thinking: encrypted

    @model_validator(mode="after")
    def _shape(self) -> ThinkingBlock:
        if self.type == "thinking" and (self.thinking is None or self.signature is None or self.data is not None):
            raise ValueError("a thinking block has thinking and signature (and no data)")
        if self.type == "redacted_thinking" and (self.data is None or self.thinking is not None
                                                 or self.signature is not None):
            raise ValueError("a redacted_thinking block has data only")
        return self

    def wire(self) -> dict[str, str]:
        return self.model_dump(exclude_none=True)


class ChatMessage(ToolArgs):
    role: Literal["system", "user", "assistant", "tool"]
    content: str = Field("", max_length=MAX_CONTENT)
    tool_calls: list[ToolCall] | None = Field(None, max_length=MAX_TOOL_CALLS)  # assistant turns that called tools
    tool_call_id: str | None = Field(None, min_length=1, max_length=256)  # role "tool": which call this answers
    # assistant turns of an Anthropic model thinking: its blocks, as the result gave them (sent back first)
    thinking_blocks: list[ThinkingBlock] | None = Field(None, max_length=MAX_THINKING_BLOCKS)

    @model_validator(mode="after")
    def _shape(self) -> ChatMessage:
        if self.tool_calls and self.role != "assistant":
            raise ValueError("only assistant messages carry tool_calls")
        if self.thinking_blocks and self.role != "assistant":
            raise ValueError("only assistant messages carry thinking_blocks")
        if (self.role == "tool") != (self.tool_call_id is not None):
            raise ValueError("role 'tool' needs tool_call_id, and only it may have one")
        if self.role in ("user", "system") and not self.content:
            raise ValueError(f"a {self.role} message needs non-empty content")
        return self


class LlmChatArgs(ToolArgs):
    model: str = Field(max_length=200)
    messages: list[ChatMessage] = Field(min_length=1, max_length=1000)
    system: str | None = Field(None, max_length=MAX_CONTENT)
    max_tokens: int = Field(1024, ge=1, le=MAX_OUTPUT_TOKENS)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    stream: bool = True
    tools: list[ToolSpec] | None = Field(None, max_length=128)
    api: Literal["chat", "responses"] = "chat"  # OpenAI only: chat completions or the Responses API
    reasoning: Literal["low", "medium", "high"] | None = None  # thinking (Anthropic) / reasoning effort (OpenAI)

    @field_validator("model")
    @classmethod
    def _model(cls, v: str) -> str:
        split_model(v)
        return v

    @model_validator(mode="after")
    def _provider_rules(self) -> LlmChatArgs:
        provider = self.provider
        if self.api == "responses" and provider != "openai":
            raise ValueError("api 'responses' is the OpenAI Responses API; use it with openai/ models only")
        if provider == "anthropic":
            if self.temperature is not None and self.temperature > 1.0:
                raise ValueError("anthropic models take temperature between 0 and 1")
            if self.reasoning is not None and self.max_tokens <= THINKING_BUDGET["low"]:
                raise ValueError("reasoning with anthropic models needs max_tokens above 1024 (thinking counts in it)")
        if self.tools:
            names = [t.name for t in self.tools]
            if len(set(names)) != len(names):
                raise ValueError("tool names must be unique")
        return self

    @property
    def provider(self) -> str:
        return split_model(self.model)[0]

    @property
    def model_name(self) -> str:
        return split_model(self.model)[1]

    def thinking_budget(self) -> int | None:
        if self.reasoning is None:
            return None
        return min(THINKING_BUDGET[self.reasoning], self.max_tokens - 1)
