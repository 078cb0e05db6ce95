"""The OpenAI Responses API: request translation and typed stream events."""

from __future__ import annotations

import json
from typing import Any

from supervisor.tools.llm._clients import Endpoint
from supervisor.tools.llm._collector import Collector
from supervisor.tools.llm._failures import ProviderStreamError
from supervisor.tools.llm._replies import cut_short, not_an_answer, refuse_non_stream
from supervisor.tools.llm.args import LlmChatArgs

__all__ = ["call_responses", "responses_input"]


def responses_input(args: LlmChatArgs) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    for m in args.messages:
        if m.role == "tool":
            items.append({"type": "function_call_output", "call_id": m.tool_call_id, "output": m.content})
            continue
        if m.content or m.role != "assistant":
            items.append({"role": m.role, "content": m.content})
        for c in m.tool_calls or []:
            items.append(
                {"type": "function_call", "call_id": c.id, "name": c.name, "arguments": json.dumps(c.arguments)}
            )
    return items


def _request(args: LlmChatArgs) -> dict[str, Any]:
    kw: dict[str, Any] = {
        "model": args.model_name,
        "input": responses_input(args),
        "max_output_tokens": args.max_tokens,
        "store": False,  # Stockade keeps the conversation; nothing needs to live at the provider
    }
    if args.system:
        kw["instructions"] = args.system
    if args.temperature is not None:
        kw["temperature"] = args.temperature
    if args.tools:
        kw["tools"] = [
            {
                "type": "function",
                "name": t.name,
                "description": t.description,
                "parameters": t.parameters,
                "strict": False,
            }
            for t in args.tools
        ]
    if args.reasoning is not None:
        kw["reasoning"] = {"effort": args.reasoning, "summary": "auto"}
    return kw


def _take_response(col: Collector, response: Any) -> None:
    usage = getattr(response, "usage", None)
    if usage is not None:
        col.usage(usage.input_tokens, usage.output_tokens, final=True)
    details = getattr(response, "incomplete_details", None)
    col.stop(getattr(details, "reason", None) or getattr(response, "status", None))


async def _take_output(col: Collector, output: list[Any]) -> None:
    for idx, item in enumerate(output):
        kind = getattr(item, "type", None)
        if kind == "reasoning":
            for part in list(getattr(item, "summary", None) or []) + list(getattr(item, "content", None) or []):
                await col.delta("thinking", getattr(part, "text", None))
        elif kind == "message":
            for part in item.content:
                await col.delta("answer", getattr(part, "text", None))
        elif kind == "function_call":
            col.tool_call(idx, item.call_id, item.name, item.arguments, replace=True)


async def call_responses(client: Any, args: LlmChatArgs, ep: Endpoint, col: Collector) -> None:
    kw = _request(args)
    if not args.stream:
        r = await client.responses.create(**kw)
        if not isinstance(getattr(r, "output", None), list):
            raise not_an_answer(r, "a response")
        await _take_output(col, r.output)
        _take_response(col, r)
        return
    stream = await client.responses.create(**kw, stream=True)
    events = 0
    async with stream:
        await refuse_non_stream(stream, "a response")
        async for ev in stream:
            events += 1
            kind = ev.type
            if kind == "response.output_text.delta":
                await col.delta("answer", ev.delta)
            elif kind in ("response.reasoning_summary_text.delta", "response.reasoning_text.delta"):
                await col.delta("thinking", ev.delta)
            elif kind == "response.output_item.added" and getattr(ev.item, "type", None) == "function_call":
                col.tool_call(ev.output_index, ev.item.call_id, ev.item.name)
            elif kind == "response.function_call_arguments.delta":
                col.tool_call(ev.output_index, arguments=ev.delta)
            elif kind == "response.output_item.done" and getattr(ev.item, "type", None) == "function_call":
                col.tool_call(ev.output_index, ev.item.call_id, ev.item.name, ev.item.arguments, replace=True)
            elif kind in ("response.completed", "response.incomplete"):
                _take_response(col, ev.response)
            elif kind == "response.failed":
                _take_response(col, ev.response)
                err = getattr(ev.response, "error", None)
                raise ProviderStreamError(getattr(err, "message", None) or "the response failed")
            elif kind == "error":
                raise ProviderStreamError(getattr(ev, "message", None) or "stream error")
    if not col.finished:
        raise cut_short("response.completed", events=events)
