"""What one provider call produced: text, thinking, tool calls and token usage, gathered as deltas arrive.

Streaming deltas go out immediately: to the run's stream (``message.delta`` on
the ``answer`` / ``thinking`` channel) and, when the lead wired one, to the
bundle's async iterator (``ctx.stream_chunk``) - all but a first half of a
surrogate pair ending a delta, which waits for its second half (``flush`` ends
the wait when the answer is complete). The run session meters what goes to the
run's stream against the run's limits (``supervisor/tool_output.py``): past its
output limit ``ctx.emit`` raises ``limit.output``, which ends the call. ``started`` turns true with the
first content from the provider; from then on a failure is never retried
(a retry would repeat the answer) and is charged for what was generated.
``finished`` turns true with the event that closes an answer (a stop reason,
OpenAI's ``[DONE]``, Anthropic's ``message_stop``): a reply without it is no answer.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from supervisor.tools.base import ToolContext
from supervisor.tools.llm._failures import AnswerTooBig
from supervisor.tools.llm._tokens import as_count, estimate_tokens
from supervisor.tools.llm.args import MAX_THINKING_BLOCKS, MAX_TOOL_CALLS
from supervisor.wire import MAX_DEPTH, nested_past

__all__ = ["Collector", "clean_text"]

# A provider may overshoot max_tokens a little (and our estimate is rough); one that sends far more is
# broken or hostile, and would otherwise stream into memory until the tool's deadline.
_OVERRUN_FACTOR = 2
_OVERRUN_SLACK = 1024
_MAX_STOP_REASON = 64
# Tool-call arguments nested deeper than this are handed over as the text the model wrote: decoded, they could
# not go back to the bundle (a reply frame wraps them in 5 levels; the SDK refuses frames past its parser), and
# how deep a parser goes depends on the Python (about 1,000 levels on 3.11, several thousand on 3.13).
ARGS_MAX_DEPTH = MAX_DEPTH - 8


def clean_text(text: str) -> str:
    """``text`` with each lone surrogate (JSON ``"\\ud800"``) replaced by one U+FFFD, and each pair of them
    (``"\\ud83d\\ude00"``, which JSON decodes to two code points when a provider escapes them in two strings)
    joined into its character: a surrogate cannot be encoded as UTF-8, so no store, stream or socket frame
    could carry it. (A UTF-8 round trip made three U+FFFD of each, and of a pair six.)"""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")
    return text


def _opens_pair(c: str) -> bool:
    return "\ud800" <= c <= "\udbff"  # a high surrogate: the first half of a pair


@dataclass
class _ToolCallAcc:
    id: str = ""
    name: str = ""
    arguments: str = ""


@dataclass
class Collector:
    ctx: ToolContext
    stream: bool
    text: list[str] = field(default_factory=list)
    thinking: list[str] = field(default_factory=list)
    calls: dict[Any, _ToolCallAcc] = field(default_factory=dict)
    input_tokens: int | None = None
    output_tokens: int | None = None
    output_final: bool = False  # output_tokens is the provider's final count, not a running one
    stop_reason: str | None = None
    started: bool = False
    finished: bool = False  # the provider closed the answer (see the module docstring)
    max_tokens: int | None = None  # the request's max_tokens: far more output than this aborts the call
    generated: int = 0  # estimated tokens received so far (text, thinking, tool calls)
    # per channel, the first half of a surrogate pair that ended a delta: its second half opens the next one
    held: dict[str, str] = field(default_factory=dict)
    # Anthropic's thinking blocks by index, part by part (thinking, signature / data), to be sent back
    blocks: dict[Any, dict[str, list[str]]] = field(default_factory=dict)

    def _count(self, text: str) -> None:
        self.generated += estimate_tokens(text)
        if self.max_tokens is not None and self.generated > self.max_tokens * _OVERRUN_FACTOR + _OVERRUN_SLACK:
            raise AnswerTooBig(f"sent far more than max_tokens ({self.max_tokens}) of output")

    def stop(self, reason: Any) -> None:
        self.stop_reason = clean_text(reason[:_MAX_STOP_REASON]) if isinstance(reason, str) else None
        self.finished = True

    async def delta(self, channel: str, text: str | None) -> None:
        if not text or not isinstance(text, str):
            return
        self.started = True
        text = self.held.pop(channel, "") + text
        if _opens_pair(text[-1]):  # a character split between two deltas (an emoji as "\ud83d", "\ude00")
            text, self.held[channel] = text[:-1], text[-1]
        if text:
            await self._add(channel, clean_text(text))

    async def flush(self) -> None:
        """The answer is complete: a first half of a pair still held had no second half (one U+FFFD)."""
        while self.held:
            channel, half = self.held.popitem()
            await self._add(channel, clean_text(half))

    async def _add(self, channel: str, text: str) -> None:
        self._count(text)
        (self.text if channel == "answer" else self.thinking).append(text)
        if not self.stream:
            return
        chunk = {"channel": channel, "text": text}
        await self.ctx.emit("message.delta", chunk)
        if self.ctx.stream_chunk is not None:
            await self.ctx.stream_chunk(dict(chunk))

    def tool_call(
        self,
        key: Any,
        id: str | None = None,
        name: str | None = None,
        arguments: str | None = None,
        *,
        replace: bool = False,
    ) -> None:
        self.started = True
        acc = self.calls.get(key)
        if acc is None:
            # an empty call costs nothing in _count: without a cap, 50,000 of them in 2 MB all reached the bundle
            if len(self.calls) >= MAX_TOOL_CALLS:
                raise AnswerTooBig(f"sent more than {MAX_TOOL_CALLS} tool calls in one answer")
            acc = self.calls[key] = _ToolCallAcc()
        if id and isinstance(id, str):
            self._count(id)
            acc.id = clean_text(id)
        if name and isinstance(name, str):
            self._count(name)
            acc.name = clean_text(name)
        if isinstance(arguments, str):  # cleaned once whole (tool_calls): a pair may be split between fragments
            self._count(arguments)
            acc.arguments = arguments if replace else acc.arguments + arguments

    def thinking_block(self, key: Any, kind: str) -> None:
        """A thinking (or redacted_thinking) block opens at ``key``; its parts come with ``block_part``."""
        if kind not in ("thinking", "redacted_thinking") or key in self.blocks:
            return
        self.started = True
        if len(self.blocks) >= MAX_THINKING_BLOCKS:
            raise AnswerTooBig(f"sent more than {MAX_THINKING_BLOCKS} thinking blocks in one answer")
        parts = ("thinking", "signature") if kind == "thinking" else ("data",)
        self.blocks[key] = {"type": [kind], **{p: [] for p in parts}}

    def block_part(self, key: Any, part: str, text: Any) -> None:
        block = self.blocks.get(key)
        if block is None or part not in block or part == "type" or not isinstance(text, str) or not text:
            return
        if part != "thinking":  # (its text is counted as it streams on the thinking channel)
            self._count(text)
        block[part].append(text)

    def thinking_blocks(self) -> list[dict[str, str]]:
        """The blocks as the next request of a tool loop must carry them: a thinking block without its
        signature (the stream ended short of it) could not be, and is left out."""
        out = []
        for block in self.blocks.values():
            joined = {part: clean_text("".join(pieces)) for part, pieces in block.items()}
            if joined.get("signature", "x") and joined.get("data", "x"):
                out.append(joined)
        return out

    def usage(self, input_tokens: int | None = None, output_tokens: int | None = None, *, final: bool) -> None:
        inp, out = as_count(input_tokens), as_count(output_tokens)  # providers are untrusted: NaN, -5, 1e30
        if inp is not None:
            self.input_tokens = max(self.input_tokens or 0, inp)
        if out is not None:
            self.output_tokens = out
            self.output_final = final

    def tool_calls(self) -> list[dict[str, Any]]:
        out = []
        for acc in self.calls.values():
            text = clean_text(acc.arguments)
            try:
                args: Any = json.loads(text) if text.strip() else {}
            except (ValueError, RecursionError):  # nested past the decoder's limit: RecursionError, no ValueError
                args = text  # the model wrote broken JSON: hand it over as it is
            else:
                if nested_past(text, args, ARGS_MAX_DEPTH):
                    args = text
            out.append({"id": acc.id, "name": acc.name, "arguments": args})
        return out

    def settled_usage(self, input_estimate: int) -> tuple[int, int, bool]:
        """(input, output, estimated): the provider's numbers, or our estimate where it gave none.

        After a mid-stream failure the running output count lags what was sent,
        so the larger of it and an estimate from the generated text is used.
        """
        estimated = self.input_tokens is None
        inp = self.input_tokens if self.input_tokens is not None else input_estimate
        generated = (
            "".join(self.text) + "".join(self.thinking) + "".join(c.arguments + c.name for c in self.calls.values())
        )
        guess = estimate_tokens(generated)
        if self.output_tokens is not None and self.output_final:
            return inp, self.output_tokens, estimated
        return inp, max(self.output_tokens or 0, guess), True
