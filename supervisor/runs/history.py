"""What a run of a conversation gets as ``ctx.history``: its newest earlier turns, bounded.

The history travels in the ``welcome`` frame, and a bundle passes it on (to ``llm.chat``) in frames of its
own, capped at the negotiated frame size: a conversation grown past that (turns of 256 KiB inputs and
answers up to the output limit) would fail every later turn. It keeps the newest turns whose encoded size
fits half the frame cap, and leaves room for the input besides (history and input go on in one frame, with
``SLACK`` bytes for the call around them: a tool name, a model, a system prompt).

It also keeps at most ``MAX_MESSAGES`` (500) messages, newest first: ``llm.chat`` takes 1,000, and a
conversation of short turns fit ~5,000 into the bytes. Was: the shipped ``chat`` bundle, which passes the
history on whole, failed every turn of a conversation past ~500 runs (each failure one more turn in it).
"""

from __future__ import annotations

import json
from typing import Any

__all__ = ["MAX_MESSAGES", "conversation_history", "history_budget"]

_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)


SLACK = 16 * 1024
MAX_MESSAGES = 500  # half of what llm.chat takes (LlmChatArgs.messages): room for the new turn, tools, a system


def history_budget(max_frame_bytes: int, input_text: str = "") -> int:
    room = int(max_frame_bytes) - len(_ENCODER.encode(input_text).encode()) - SLACK
    return max(0, min(int(max_frame_bytes) // 2, room))


def _trim(turns: list[dict[str, str]], budget: int, max_messages: int = MAX_MESSAGES) -> list[dict[str, str]]:
    """The newest turns (at most ``max_messages``) whose JSON encoding (escapes included: a control character
    takes 6 bytes) fits ``budget``; never one that starts with an answer whose question was dropped."""
    kept: list[dict[str, str]] = []
    used = 0
    for turn in reversed(turns):
        size = len(_ENCODER.encode(turn).encode()) + 1  # the comma between items
        if used + size > budget or len(kept) >= max_messages:
            break
        kept.append(turn)
        used += size
    kept.reverse()
    while kept and kept[0].get("role") != "user":
        kept.pop(0)
    return kept


async def conversation_history(runs: Any, tenant_id: str, conversation_id: str, run_id: str,
                               max_frame_bytes: int, input_text: str = "") -> list[dict[str, str]]:
    budget = history_budget(max_frame_bytes, input_text)
    # the store bounds what it reads by the raw text (an old huge answer never leaves the database); the
    # encoded size, which only grows, is checked here
    return _trim(await runs.conversation_history(tenant_id, conversation_id, run_id, max_bytes=budget), budget)
