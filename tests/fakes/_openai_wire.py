"""OpenAI wire formats: chat completions (JSON and SSE chunks) and the Responses API (JSON and typed SSE events).

Shapes follow the ``openai`` SDK's types (``types/chat/chat_completion_chunk.py``,
``types/responses/response_*_event.py``) so the real SDK parses them.
"""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Iterator
from typing import Any

from tests.fakes._script import Item, Script, split_deltas, split_json, sse, text_of

__all__ = [
    "chat_json",
    "chat_last_user",
    "chat_stream",
    "openai_error",
    "responses_json",
    "responses_last_user",
    "responses_stream",
]

_ids = itertools.count(1)


def _id(prefix: str) -> str:
    return f"{prefix}_{next(_ids):06d}"


def openai_error(status: int) -> dict[str, Any]:
    kind = {401: "invalid_request_error", 429: "rate_limit_error", 400: "invalid_request_error"}.get(
        status, "server_error"
    )
    message = {
        401: "Incorrect API key provided.",
        429: "Rate limit reached for requests.",
        400: "Invalid request.",
    }.get(status, "The server had an error while processing your request.")
    return {"error": {"message": message, "type": kind, "param": None, "code": None}}


# --- chat completions


def chat_last_user(body: dict[str, Any]) -> str:
    for m in reversed(body.get("messages") or []):
        if isinstance(m, dict) and m.get("role") == "user":
            return text_of(m.get("content"))
    return ""


def _chunk(cid: str, model: str, delta: dict[str, Any], finish: str | None = None, usage: bool = False) -> bytes:
    data: dict[str, Any] = {
        "id": cid,
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "system_fingerprint": "fp_fake",
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
    }
    if usage:
        data["usage"] = None  # with include_usage every chunk but the last carries usage: null
    return sse(data)


def _chat_usage(inp: int, out: int) -> dict[str, Any]:
    return {"prompt_tokens": inp, "completion_tokens": out, "total_tokens": inp + out}


def chat_stream(script: Script, body: dict[str, Any]) -> Iterator[Item]:
    model = str(body.get("model", "fake"))
    cid = _id("chatcmpl")
    user = chat_last_user(body)
    with_usage = bool((body.get("stream_options") or {}).get("include_usage"))
    yield Item(_chunk(cid, model, {"role": "assistant", "content": ""}, usage=with_usage))
    # OpenAI-compatible reasoning servers (vLLM, DeepSeek) stream reasoning as ``reasoning_content``
    for piece in split_deltas(script.thinking):
        yield Item(_chunk(cid, model, {"reasoning_content": piece}, usage=with_usage), counts=True)
    for piece in script.answer_deltas(user):
        yield Item(_chunk(cid, model, {"content": piece}, usage=with_usage), counts=True)
    for i, call in enumerate(script.tool_calls):
        head = {
            "index": i,
            "id": call.id or _id("call"),
            "type": "function",
            "function": {"name": call.name, "arguments": ""},
        }
        yield Item(_chunk(cid, model, {"tool_calls": [head]}, usage=with_usage), counts=True)
        for part in split_json(call.arguments):
            tc = {"index": i, "function": {"arguments": part}}
            yield Item(_chunk(cid, model, {"tool_calls": [tc]}, usage=with_usage), counts=True)
    finish = "tool_calls" if script.tool_calls else "stop"
    yield Item(_chunk(cid, model, {}, finish, usage=with_usage))
    if with_usage:
        inp, out = script.usage(body, user)
        final = {
            "id": cid,
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": model,
            "system_fingerprint": "fp_fake",
            "choices": [],
            "usage": _chat_usage(inp, out),
        }
        yield Item(sse(final))
    yield Item(sse("[DONE]"))


def chat_json(script: Script, body: dict[str, Any]) -> dict[str, Any]:
    user = chat_last_user(body)
    inp, out = script.usage(body, user)
    message: dict[str, Any] = {"role": "assistant", "content": script.answer_text(user), "refusal": None}
    if script.thinking:
        message["reasoning_content"] = script.thinking
    if script.tool_calls:
        message["tool_calls"] = [
            {
                "id": c.id or _id("call"),
                "type": "function",
                "function": {"name": c.name, "arguments": json.dumps(c.arguments)},
            }
            for c in script.tool_calls
        ]
    return {
        "id": _id("chatcmpl"),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": str(body.get("model", "fake")),
        "system_fingerprint": "fp_fake",
        "choices": [
            {
                "index": 0,
                "message": message,
                "logprobs": None,
                "finish_reason": "tool_calls" if script.tool_calls else "stop",
            }
        ],
        "usage": _chat_usage(inp, out),
    }


# --- Responses API


def responses_last_user(body: dict[str, Any]) -> str:
    inp = body.get("input")
    if isinstance(inp, str):
        return inp
    for item in reversed(inp or []):
        if isinstance(item, dict) and item.get("role") == "user":
            return text_of(item.get("content"))
    return ""


def _response(
    body: dict[str, Any], rid: str, status: str, output: list[Any], usage: dict[str, Any] | None
) -> dict[str, Any]:
    return {
        "id": rid,
        "object": "response",
        "created_at": int(time.time()),
        "status": status,
        "error": None,
        "incomplete_details": None,
        "instructions": body.get("instructions"),
        "max_output_tokens": body.get("max_output_tokens"),
        "model": str(body.get("model", "fake")),
        "output": output,
        "parallel_tool_calls": True,
        "temperature": body.get("temperature"),
        "tool_choice": "auto",
        "tools": body.get("tools") or [],
        "top_p": 1.0,
        "usage": usage,
    }


def _responses_usage(inp: int, out: int, reasoning: int) -> dict[str, Any]:
    return {
        "input_tokens": inp,
        "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
        "output_tokens": out,
        "output_tokens_details": {"reasoning_tokens": reasoning},
        "total_tokens": inp + out,
    }


def _output_items(script: Script, user: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    if script.thinking:
        summary = [{"type": "summary_text", "text": script.thinking}]
        out.append({"id": _id("rs"), "type": "reasoning", "summary": summary, "status": "completed"})
    text = script.answer_text(user)
    if text or not script.tool_calls:
        content = [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}]
        out.append(
            {"id": _id("msg"), "type": "message", "role": "assistant", "status": "completed", "content": content}
        )
    for c in script.tool_calls:
        out.append(
            {
                "id": _id("fc"),
                "type": "function_call",
                "call_id": c.id or _id("call"),
                "name": c.name,
                "arguments": json.dumps(c.arguments),
                "status": "completed",
            }
        )
    return out


def responses_json(script: Script, body: dict[str, Any]) -> dict[str, Any]:
    user = responses_last_user(body)
    inp, out = script.usage(body, user)
    reasoning = min(out, len(script.thinking) // 4)
    return _response(body, _id("resp"), "completed", _output_items(script, user), _responses_usage(inp, out, reasoning))


def responses_stream(script: Script, body: dict[str, Any]) -> Iterator[Item]:
    user = responses_last_user(body)
    rid = _id("resp")
    seq = itertools.count(0)
    final_items = _output_items(script, user)

    def ev(kind: str, **data: Any) -> bytes:
        return sse({"type": kind, "sequence_number": next(seq), **data}, event=kind)

    yield Item(ev("response.created", response=_response(body, rid, "in_progress", [], None)))
    yield Item(ev("response.in_progress", response=_response(body, rid, "in_progress", [], None)))
    for idx, item in enumerate(final_items):
        kind = item["type"]
        iid = item["id"]
        if kind == "reasoning":
            yield Item(
                ev(
                    "response.output_item.added",
                    output_index=idx,
                    item={**item, "summary": [], "status": "in_progress"},
                )
            )
            part = {"type": "summary_text", "text": ""}
            yield Item(
                ev("response.reasoning_summary_part.added", item_id=iid, output_index=idx, summary_index=0, part=part)
            )
            for piece in split_deltas(script.thinking):
                yield Item(
                    ev(
                        "response.reasoning_summary_text.delta",
                        item_id=iid,
                        output_index=idx,
                        summary_index=0,
                        delta=piece,
                    ),
                    counts=True,
                )
            yield Item(
                ev(
                    "response.reasoning_summary_text.done",
                    item_id=iid,
                    output_index=idx,
                    summary_index=0,
                    text=script.thinking,
                )
            )
        elif kind == "message":
            yield Item(
                ev(
                    "response.output_item.added",
                    output_index=idx,
                    item={**item, "content": [], "status": "in_progress"},
                )
            )
            empty: dict[str, Any] = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
            yield Item(ev("response.content_part.added", item_id=iid, output_index=idx, content_index=0, part=empty))
            for piece in script.answer_deltas(user):
                yield Item(
                    ev(
                        "response.output_text.delta",
                        item_id=iid,
                        output_index=idx,
                        content_index=0,
                        delta=piece,
                        logprobs=[],
                    ),
                    counts=True,
                )
            text = item["content"][0]["text"]
            yield Item(
                ev("response.output_text.done", item_id=iid, output_index=idx, content_index=0, text=text, logprobs=[])
            )
            yield Item(
                ev(
                    "response.content_part.done",
                    item_id=iid,
                    output_index=idx,
                    content_index=0,
                    part=item["content"][0],
                )
            )
        else:
            yield Item(
                ev(
                    "response.output_item.added",
                    output_index=idx,
                    item={**item, "arguments": "", "status": "in_progress"},
                )
            )
            for part_s in split_json(json.loads(item["arguments"])):
                yield Item(
                    ev("response.function_call_arguments.delta", item_id=iid, output_index=idx, delta=part_s),
                    counts=True,
                )
            yield Item(
                ev("response.function_call_arguments.done", item_id=iid, output_index=idx, arguments=item["arguments"])
            )
        yield Item(ev("response.output_item.done", output_index=idx, item=item))
    inp, out = script.usage(body, user)
    usage = _responses_usage(inp, out, min(out, len(script.thinking) // 4))
    yield Item(ev("response.completed", response=_response(body, rid, "completed", final_items, usage)))
