"""Anthropic Messages: request translation and the raw stream events (thinking, text and tool_use blocks)."""

from __future__ import annotations

import json
from typing import Any

from supervisor.tools.llm._clients import Endpoint
from supervisor.tools.llm._collector import Collector
from supervisor.tools.llm._replies import cut_short, not_an_answer, refuse_non_stream
from supervisor.tools.llm._tokens import as_count
from supervisor.tools.llm.args import LlmChatArgs

__all__ = ["anthropic_messages", "call_anthropic"]


def anthropic_messages(args: LlmChatArgs) -> tuple[str | None, list[dict[str, Any]]]:
    """(system, messages). System-role messages join ``system``; tool results become user turns.

    Anthropic wants user/assistant turns to alternate and all results of one
    assistant turn's tool calls in the next user turn, so neighbours of the same
    role are merged into one turn with several content blocks. With thinking on,
    an assistant turn's thinking blocks go first in it: Anthropic refuses a tool
    loop whose last assistant turn does not start with its thinking block.
    """
    thinking = args.thinking_budget() is not None
    system = [args.system] if args.system else []
    out: list[dict[str, Any]] = []
    for m in args.messages:
        if m.role == "system":
            system.append(m.content)
            continue
        blocks: list[dict[str, Any]]
        if m.role == "tool":
            role, blocks = "user", [{"type": "tool_result", "tool_use_id": m.tool_call_id, "content": m.content}]
        else:
            role = m.role
            blocks = [b.wire() for b in m.thinking_blocks or []] if thinking else []
            blocks += [{"type": "text", "text": m.content}] if m.content else []
            blocks += [
                {"type": "tool_use", "id": c.id, "name": c.name, "input": c.arguments} for c in m.tool_calls or []
            ]
        if out and out[-1]["role"] == role:
            out[-1]["content"].extend(blocks)
        else:
            out.append({"role": role, "content": blocks})
    return ("\n\n".join(system) or None), out


def _request(args: LlmChatArgs) -> dict[str, Any]:
    system, messages = anthropic_messages(args)
    kw: dict[str, Any] = {"model": args.model_name, "max_tokens": args.max_tokens, "messages": messages}
    if system:
        kw["system"] = system
    budget = args.thinking_budget()
    if budget is not None:
        kw["thinking"] = {"type": "enabled", "budget_tokens": budget}  # thinking requires the default temperature
    elif args.temperature is not None:
        # the Messages API takes a temperature; newer SDKs no longer expose it as a keyword
        kw["extra_body"] = {"temperature": args.temperature}
    if args.tools:
        kw["tools"] = [{"name": t.name, "description": t.description, "input_schema": t.parameters} for t in args.tools]
    return kw


def _input_of(usage: Any) -> int | None:
    # input_tokens excludes cache reads/writes; all of it is input we pay for
    base = as_count(getattr(usage, "input_tokens", None))
    if base is None:
        return None
    return (
        base
        + (as_count(getattr(usage, "cache_creation_input_tokens", None)) or 0)
        + (as_count(getattr(usage, "cache_read_input_tokens", None)) or 0)
    )


async def call_anthropic(client: Any, args: LlmChatArgs, ep: Endpoint, col: Collector) -> None:
    kw = _request(args)
    if not args.stream:
        msg = await client.messages.create(**kw)
        if not isinstance(getattr(msg, "content", None), list) or getattr(msg, "usage", None) is None:
            raise not_an_answer(msg, "a message")
        for i, block in enumerate(msg.content):
            if block.type in ("thinking", "redacted_thinking"):
                col.thinking_block(i, block.type)
                for part in ("thinking", "signature", "data"):
                    col.block_part(i, part, getattr(block, part, None))
            if block.type == "thinking":
                await col.delta("thinking", block.thinking)
            elif block.type == "text":
                await col.delta("answer", block.text)
            elif block.type == "tool_use":
                col.tool_call(i, block.id, block.name, json.dumps(block.input), replace=True)
        col.usage(_input_of(msg.usage), msg.usage.output_tokens, final=True)
        col.stop(msg.stop_reason)
        return
    stream = await client.messages.create(**kw, stream=True)
    events = 0
    async with stream:
        await refuse_non_stream(stream, "a message")
        async for ev in stream:
            events += 1
            kind = ev.type
            if kind == "content_block_delta":
                d = ev.delta
                if d.type == "text_delta":
                    await col.delta("answer", d.text)
                elif d.type == "thinking_delta":
                    col.block_part(ev.index, "thinking", d.thinking)
                    await col.delta("thinking", d.thinking)
                elif d.type == "signature_delta":
                    col.block_part(ev.index, "signature", d.signature)
                elif d.type == "input_json_delta":
                    col.tool_call(ev.index, arguments=d.partial_json)
            elif kind == "content_block_start" and ev.content_block.type == "tool_use":
                col.tool_call(ev.index, ev.content_block.id, ev.content_block.name)
            elif kind == "content_block_start" and ev.content_block.type in ("thinking", "redacted_thinking"):
                block = ev.content_block
                col.thinking_block(ev.index, block.type)
                for part in ("thinking", "signature", "data"):  # (a start block's thinking/signature are "")
                    col.block_part(ev.index, part, getattr(block, part, None))
            elif kind == "message_start":
                col.usage(_input_of(ev.message.usage), ev.message.usage.output_tokens, final=False)
            elif kind == "message_delta":
                col.usage(_input_of(ev.usage), ev.usage.output_tokens, final=True)
                col.stop(ev.delta.stop_reason)
            elif kind == "message_stop":
                col.finished = True
    if not col.finished:
        raise cut_short("message_delta or message_stop", events=events)
