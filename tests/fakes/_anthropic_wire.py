"""Anthropic Messages wire format: JSON replies and the SSE event sequence with thinking, text and tool_use blocks.

Shapes follow the ``anthropic`` SDK's ``types/raw_*_event.py`` so the real SDK parses them.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Iterator
from typing import Any

from tests.fakes._script import Item, Script, split_deltas, split_json, sse, text_of

__all__ = ["anthropic_error", "messages_json", "messages_last_user", "messages_problem", "messages_stream",
           "signature_of"]

_ids = itertools.count(1)


def _id(prefix: str) -> str:
    return f"{prefix}_{next(_ids):06d}"


def anthropic_error(status: int) -> dict[str, Any]:
    kind = {
        400: "invalid_request_error",
        401: "authentication_error",
        403: "permission_error",
        429: "rate_limit_error",
        529: "overloaded_error",
    }.get(status, "api_error")
    return {"type": "error", "error": {"type": kind, "message": f"fake {kind}"}}


def messages_last_user(body: dict[str, Any]) -> str:
    for m in reversed(body.get("messages") or []):
        if isinstance(m, dict) and m.get("role") == "user":
            return text_of(m.get("content"))
    return ""


def _usage(inp: int, out: int) -> dict[str, Any]:
    return {"input_tokens": inp, "output_tokens": out, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0}


def _message(
    body: dict[str, Any], mid: str, content: list[Any], stop: str | None, usage: dict[str, Any]
) -> dict[str, Any]:
    return {
        "id": mid,
        "type": "message",
        "role": "assistant",
        "model": str(body.get("model", "fake")),
        "content": content,
        "stop_reason": stop,
        "stop_sequence": None,
        "usage": usage,
    }


def signature_of(thinking: str) -> str:
    """The fake's signature of a thinking text (the real API's is opaque): the request check recomputes it."""
    return "sig-fake-" + hashlib.sha256(thinking.encode()).hexdigest()[:32]


def messages_problem(body: dict[str, Any]) -> str | None:
    """What the real Messages API refuses (400 invalid_request_error) of a tool loop with thinking on: a
    final assistant turn with tool_use that does not start with a thinking block, or a thinking block
    whose signature does not match its text."""
    messages = [m for m in body.get("messages") or [] if isinstance(m, dict)]
    for i, m in enumerate(messages):
        for j, block in enumerate(m.get("content") if isinstance(m.get("content"), list) else []):
            if isinstance(block, dict) and block.get("type") == "thinking" and \
                    block.get("signature") != signature_of(str(block.get("thinking"))):
                return f"messages.{i}.content.{j}: Invalid `signature` in `thinking` block"
    if not isinstance(body.get("thinking"), dict) or body["thinking"].get("type") != "enabled":
        return None
    last = next((i for i in range(len(messages) - 1, -1, -1) if messages[i].get("role") == "assistant"), None)
    if last is None or not isinstance(messages[last].get("content"), list):
        return None
    content = messages[last]["content"]
    if any(isinstance(b, dict) and b.get("type") == "tool_use" for b in content) and (
            not content or content[0].get("type") not in ("thinking", "redacted_thinking")):
        found = content[0].get("type") if content else "nothing"
        return (f"messages.{last}.content.0.type: Expected `thinking` or `redacted_thinking`, but found `{found}`."
                " When `thinking` is enabled, a final `assistant` message must start with a thinking block")
    return None


def _blocks(script: Script, user: str) -> list[dict[str, Any]]:
    blocks: list[dict[str, Any]] = []
    if script.redacted_thinking:
        blocks.append({"type": "redacted_thinking", "data": script.redacted_thinking})
    if script.thinking:
        blocks.append({"type": "thinking", "thinking": script.thinking, "signature": signature_of(script.thinking)})
    text = script.answer_text(user)
    if text or not script.tool_calls:
        blocks.append({"type": "text", "text": text})
    for c in script.tool_calls:
        blocks.append({"type": "tool_use", "id": c.id or _id("toolu"), "name": c.name, "input": c.arguments})
    return blocks


def messages_json(script: Script, body: dict[str, Any]) -> dict[str, Any]:
    user = messages_last_user(body)
    inp, out = script.usage(body, user)
    stop = "tool_use" if script.tool_calls else "end_turn"
    return _message(body, _id("msg"), _blocks(script, user), stop, _usage(inp, out))


def messages_stream(script: Script, body: dict[str, Any]) -> Iterator[Item]:
    user = messages_last_user(body)
    inp, out = script.usage(body, user)

    def ev(kind: str, **data: Any) -> bytes:
        return sse({"type": kind, **data}, event=kind)

    yield Item(ev("message_start", message=_message(body, _id("msg"), [], None, _usage(inp, 1))))
    yield Item(ev("ping"))
    for index, block in enumerate(_blocks(script, user)):
        kind = block["type"]
        if kind == "thinking":
            yield Item(
                ev(
                    "content_block_start",
                    index=index,
                    content_block={"type": "thinking", "thinking": "", "signature": ""},
                )
            )
            for piece in split_deltas(script.thinking):
                yield Item(
                    ev("content_block_delta", index=index, delta={"type": "thinking_delta", "thinking": piece}), True
                )
            sig = {"type": "signature_delta", "signature": block["signature"]}
            yield Item(ev("content_block_delta", index=index, delta=sig))
        elif kind == "redacted_thinking":
            yield Item(ev("content_block_start", index=index, content_block=block))
        elif kind == "text":
            yield Item(ev("content_block_start", index=index, content_block={"type": "text", "text": ""}))
            for piece in script.answer_deltas(user):
                yield Item(ev("content_block_delta", index=index, delta={"type": "text_delta", "text": piece}), True)
        else:
            start = {**block, "input": {}}
            yield Item(ev("content_block_start", index=index, content_block=start))
            for part in split_json(block["input"]):
                yield Item(
                    ev("content_block_delta", index=index, delta={"type": "input_json_delta", "partial_json": part}),
                    True,
                )
        yield Item(ev("content_block_stop", index=index))
    stop = "tool_use" if script.tool_calls else "end_turn"
    yield Item(ev("message_delta", delta={"stop_reason": stop, "stop_sequence": None}, usage={"output_tokens": out}))
    yield Item(ev("message_stop"))
