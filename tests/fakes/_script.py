"""What a fake LLM server answers: one ``Script`` per request, plus wire helpers shared by both providers."""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any

__all__ = ["Item", "Script", "ToolCallSpec", "split_deltas", "split_json", "sse", "text_of"]


@dataclass(frozen=True)
class ToolCallSpec:
    name: str
    arguments: dict[str, Any]
    id: str | None = None


@dataclass(frozen=True)
class Script:
    """One scripted reply. Every field has a friendly default, so ``Script()`` echoes the last user message."""

    text: str | None = None  # None: a short echo of the last user message
    thinking: str = ""  # streamed before the answer: thinking block / reasoning summary / reasoning_content
    redacted_thinking: str = ""  # Anthropic: a redacted_thinking block with this data, before the thinking block
    deltas: tuple[str, ...] | None = None  # explicit answer deltas; default: ``text`` split after each word
    tool_calls: tuple[ToolCallSpec, ...] = ()
    input_tokens: int | None = None  # None: about chars/4 of the request body
    output_tokens: int | None = None  # None: about chars/4 of what was generated
    status: int = 200  # not 200: an error body in the provider's format instead of a reply
    retry_after: float | None = None  # Retry-After header on an error reply
    abort_after_deltas: int | None = None  # drop the connection after N content deltas (mid-stream failure)
    error_after_deltas: int | None = None  # send the provider's in-stream error event after N deltas, then end
    stall_s: float = 0.0  # wait this long before the response head (client timeouts)
    hold_after_deltas: int | None = None  # after N content deltas, keep the stream open with nothing more (cancels)
    end_after_deltas: int | None = None  # after N content deltas, end the stream cleanly without its final events
    body: bytes | None = None  # a 200 with exactly this body, whatever was asked (an HTML page, a JSON error ...)
    content_type: str = "application/json"  # of ``body``
    echo_prefix: str = "You said: "

    def answer_text(self, last_user: str) -> str:
        if self.deltas is not None:
            return "".join(self.deltas)
        if self.text is not None:
            return self.text
        return f"{self.echo_prefix}{last_user}" if last_user else "Hello from the fake model."

    def answer_deltas(self, last_user: str) -> list[str]:
        if self.deltas is not None:
            return list(self.deltas)
        return split_deltas(self.answer_text(last_user))

    def usage(self, body: dict[str, Any], last_user: str) -> tuple[int, int]:
        inp = self.input_tokens
        if inp is None:
            inp = prompt_tokens(body)
        out = self.output_tokens
        if out is None:
            generated = self.answer_text(last_user) + self.thinking
            generated += "".join(json.dumps(t.arguments) + t.name for t in self.tool_calls)
            out = max(1, math.ceil(len(generated) / 4))
        return inp, out


@dataclass(frozen=True)
class Item:
    """One piece of a streamed body; ``counts`` marks a content delta (for ``abort_after_deltas``)."""

    data: bytes
    counts: bool = False


_WORD = re.compile(r"\S+\s*|\s+")


def split_deltas(text: str) -> list[str]:
    return _WORD.findall(text) if text else []


def split_json(arguments: dict[str, Any], parts: int = 3) -> list[str]:
    raw = json.dumps(arguments)
    step = max(1, math.ceil(len(raw) / parts))
    return [raw[i : i + step] for i in range(0, len(raw), step)]


def sse(data: Any, event: str | None = None) -> bytes:
    head = f"event: {event}\n" if event else ""
    payload = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
    return f"{head}data: {payload}\n\n".encode()


def text_of(content: Any) -> str:
    """The text of a message's content, whichever provider shape it has (str or a list of parts)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return ""


def prompt_tokens(body: dict[str, Any]) -> int:
    """About what a real tokenizer counts: chars/4 of the prompt text plus a few tokens of framing per message."""
    msgs = body.get("messages") or body.get("input") or []
    if isinstance(msgs, str):
        msgs = [{"content": msgs}]
    chars = sum(len(text_of(m.get("content")) or m.get("output", "") or m.get("arguments", "")) for m in msgs)
    chars += len(text_of(body.get("system"))) + len(str(body.get("instructions") or ""))
    chars += len(json.dumps(body["tools"])) if body.get("tools") else 0
    return math.ceil(chars / 4) + 4 * len(msgs) + 3
