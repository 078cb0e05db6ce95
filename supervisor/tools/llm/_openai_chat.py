"""OpenAI chat completions (and every OpenAI-compatible server): request translation and stream reading."""

from __future__ import annotations

import json
from typing import Any

from supervisor.tools.llm._clients import Endpoint
from supervisor.tools.llm._collector import Collector
from supervisor.tools.llm._replies import cut_short, not_an_answer, refuse_non_stream
from supervisor.tools.llm.args import LlmChatArgs

__all__ = ["call_chat", "chat_messages"]


def chat_messages(args: LlmChatArgs) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    if args.system:
        out.append({"role": "system", "content": args.system})
    for m in args.messages:
        if m.role == "tool":
            out.append({"role": "tool", "tool_call_id": m.tool_call_id, "content": m.content})
        elif m.role == "assistant" and m.tool_calls:
            calls = [
                {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": json.dumps(c.arguments)}}
                for c in m.tool_calls
            ]
            out.append({"role": "assistant", "content": m.content or None, "tool_calls": calls})
        else:
            out.append({"role": m.role, "content": m.content})
    return out


def _request(args: LlmChatArgs, ep: Endpoint) -> dict[str, Any]:
    kw: dict[str, Any] = {"model": args.model_name, "messages": chat_messages(args)}
    # OpenAI's own API wants max_completion_tokens (reasoning models reject max_tokens); compatible servers
    # (Ollama, older vLLM) only know max_tokens
    kw["max_completion_tokens" if ep.official else "max_tokens"] = args.max_tokens
    if args.temperature is not None:
        kw["temperature"] = args.temperature
    if args.tools:
        kw["tools"] = [
            {"type": "function", "function": {"name": t.name, "description": t.description, "parameters": t.parameters}}
            for t in args.tools
        ]
    if args.reasoning is not None:
        kw["reasoning_effort"] = args.reasoning
    return kw


def _reasoning_of(obj: Any) -> str | None:
    # not in OpenAI's schema: vLLM/DeepSeek send reasoning_content, Ollama/OpenRouter send reasoning
    extra = getattr(obj, "model_extra", None) or {}
    value = extra.get("reasoning_content") or extra.get("reasoning")
    return value if isinstance(value, str) else None


class _DoneWatch:
    """The stream's SSE decoder, noting ``data: [DONE]`` (the SDK ends the iteration on it without a word)."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.done = False

    async def aiter_bytes(self, iterator: Any) -> Any:
        async for sse in self._inner.aiter_bytes(iterator):
            if sse.data.startswith("[DONE]"):
                self.done = True
            yield sse

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


async def call_chat(client: Any, args: LlmChatArgs, ep: Endpoint, col: Collector) -> None:
    kw = _request(args, ep)
    if not args.stream:
        r = await client.chat.completions.create(**kw)
        if not isinstance(getattr(r, "choices", None), list) or not r.choices:
            raise not_an_answer(r, "a chat completion")
        if r.usage is not None:
            col.usage(r.usage.prompt_tokens, r.usage.completion_tokens, final=True)
        choice = r.choices[0]
        msg = choice.message
        await col.delta("thinking", _reasoning_of(msg))
        await col.delta("answer", msg.content)
        for i, tc in enumerate(msg.tool_calls or []):
            fn = getattr(tc, "function", None)
            if fn is not None:
                col.tool_call(i, tc.id, fn.name, fn.arguments)
        col.stop(choice.finish_reason)
        return
    stream = await client.chat.completions.create(**kw, stream=True, stream_options={"include_usage": True})
    events = 0
    async with stream:
        await refuse_non_stream(stream, "a chat completion")
        watch = None
        if hasattr(stream, "_decoder"):  # private to the SDK: without it, only a finish_reason ends an answer
            watch = stream._decoder = _DoneWatch(stream._decoder)
        async for chunk in stream:
            events += 1
            if chunk.usage is not None:
                col.usage(chunk.usage.prompt_tokens, chunk.usage.completion_tokens, final=True)
            if not chunk.choices:
                continue
            choice = chunk.choices[0]
            delta = choice.delta
            await col.delta("thinking", _reasoning_of(delta))
            await col.delta("answer", delta.content)
            for tc in delta.tool_calls or []:
                fn = tc.function
                col.tool_call(tc.index, tc.id, fn.name if fn else None, fn.arguments if fn else None)
            if choice.finish_reason:
                col.stop(choice.finish_reason)
        if watch is not None and watch.done:
            col.finished = True
    if not col.finished:
        raise cut_short("finish_reason, no [DONE]", events=events)
