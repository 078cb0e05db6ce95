"""Token estimates without a tokenizer, for budget reservations and for usage a provider did not report."""

from __future__ import annotations

import json
import math
from collections.abc import Callable

from supervisor.tools.llm.args import LlmChatArgs

__all__ = ["estimate_tokens", "input_ceiling", "input_estimate"]

PER_MESSAGE = 4  # role markers and separators a chat template adds per message
PER_REQUEST = 8
TOOL_USE_OVERHEAD = 400  # providers add a tool-use system prompt (Anthropic documents ~350 tokens)


def estimate_tokens(text: str) -> int:
    """chars/4 (rounded up) for ASCII, and one token per non-ASCII char: CJK and emoji cost about that much."""
    non_ascii = sum(1 for c in text if ord(c) > 127)
    return math.ceil((len(text) - non_ascii) / 4) + non_ascii


def _utf8_len(text: str) -> int:
    return len(text.encode("utf-8", "surrogatepass"))


def _input_tokens(args: LlmChatArgs, count: Callable[[str], int]) -> int:
    parts = [args.system or ""]
    for m in args.messages:
        parts.append(m.content)
        parts.extend(c.name + json.dumps(c.arguments) for c in m.tool_calls or [])
    total = sum(count(p) for p in parts) + PER_MESSAGE * len(args.messages) + PER_REQUEST
    if args.tools:
        total += count(json.dumps([t.model_dump() for t in args.tools])) + TOOL_USE_OVERHEAD
    return total


def input_estimate(args: LlmChatArgs) -> int:
    """Input tokens of ``args`` as a provider would likely count them (ordinary text): what is charged when the
    provider reported no count, and what the token-throughput rate limit counts."""
    return _input_tokens(args, estimate_tokens)


def input_ceiling(args: LlmChatArgs) -> int:
    """The most input tokens ``args`` can cost: what the budget reserves.

    Byte-level tokenizers (OpenAI's, Anthropic's, Llama's, and SentencePiece's byte fallback) never make more
    than one token of one UTF-8 byte; text built to tokenize badly (punctuation soup, rare 4-byte characters)
    comes close, ~4x the ``input_estimate`` of chars/4, and settlement is capped at the reservation.
    """
    return _input_tokens(args, _utf8_len)


# More than any context window; a provider reporting more is lying, and the cost of a bigger number would not
# even fit the ledger's 64-bit columns. The charge is capped at the reservation anyway.
MAX_REPORTED_TOKENS = 10**9


def as_count(value: object) -> int | None:
    """A provider-reported token count as a sane int, or None (then our estimate is used).

    Providers are untrusted: counts may arrive as floats, numeric strings, ``"NaN"``, negatives or 1e30.
    """
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int):
        n = value
    else:
        try:
            f = float(value) if isinstance(value, (float, str)) else float("nan")
        except ValueError:
            return None
        if not math.isfinite(f):
            return None
        n = int(f) if f < MAX_REPORTED_TOKENS else MAX_REPORTED_TOKENS
    if n < 0:
        return None
    return min(n, MAX_REPORTED_TOKENS)
