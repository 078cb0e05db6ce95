"""Session 14: tool-call arguments are decoded only as deep as a reply frame can carry them, on every Python.

Session 7 handed over arguments too deep for the JSON parser as the text the model wrote. How deep the parser
goes depends on the interpreter (about 1,000 levels on 3.11, several thousand on 3.13), so on 3.13 the 5,000-level
arguments of that test were decoded - into a result no reply frame could take back to the bundle. Arguments nested
deeper than ``ARGS_MAX_DEPTH`` are now handed over as text everywhere; shallower ones are decoded as before.
"""

from __future__ import annotations

import asyncio
import json

import pytest

from supervisor.errors import StockadeError
from supervisor.tools.llm._collector import ARGS_MAX_DEPTH
from supervisor.wire import HEADER, MAX_DEPTH, decode_frame, encode, nests_deeper
from tests.fakes.hostile_http import RawRequest, respond
from tests.tools.test_attack_llm_session7 import run_llm

pytestmark = pytest.mark.timeout(30)


def _answer(arguments: str) -> bytes:
    usage = {"prompt_tokens": 10, "completion_tokens": 20, "total_tokens": 30}
    msg = {"role": "assistant", "content": None, "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "f", "arguments": arguments}}]}
    return json.dumps({"id": "c", "object": "chat.completion", "created": 1, "model": "m", "usage": usage,
                       "choices": [{"index": 0, "message": msg, "finish_reason": "tool_calls"}]}).encode()


@pytest.mark.parametrize(("depth", "decoded"), [(ARGS_MAX_DEPTH, True), (ARGS_MAX_DEPTH + 1, False), (300, False)])
async def test_arguments_deeper_than_a_frame_carries_come_as_text(depth: int, decoded: bool) -> None:
    arguments = "[" * depth + "]" * depth  # parses on every Python

    async def handler(req: RawRequest, w: asyncio.StreamWriter) -> None:
        await respond(w, 200, _answer(arguments))

    out, _, _ = await run_llm(handler, stream=False, max_tokens=100)
    assert not isinstance(out, StockadeError), out
    (call,) = out.result["tool_calls"]
    assert call["arguments"] == (json.loads(arguments) if decoded else arguments)
    # the reply to the bundle nests no deeper than a frame may (session.py sends exactly this)
    frame = {"type": "result", "id": 1, "result": out.result, "deduped": False}
    assert not nests_deeper(frame, MAX_DEPTH)
    assert decode_frame(encode(frame)[HEADER.size:])["result"] == json.loads(json.dumps(out.result))
