"""A provider's HTTP 200 that is no answer, told apart from one that is.

The SDKs take whatever a 200 carries: a streamed call answered with an HTML
page or a JSON error body iterates zero events, a JSON body without the
answer's fields becomes a model whose fields are all None, a stream that ends
cleanly halfway is just a short stream. Each of those used to come back as a
successful call with an empty or cut-off text. The adapters check the shape
here and raise ``NotAnAnswer``, carrying the provider's own error message
when the body has one.
"""

from __future__ import annotations

import json
from typing import Any

from supervisor.tools._capped import ERROR_BODY_CAP
from supervisor.tools.llm._failures import NotAnAnswer

__all__ = ["cut_short", "not_an_answer", "refuse_non_stream"]

# media types no event stream is ever sent as; others (a missing or odd content-type) are read as events, and
# a body that held none ends without the final event
_JSON_SUFFIX = "+json"
_HTML = ("text/html", "application/xhtml+xml")


def _media_type(response: Any) -> str:
    headers = getattr(response, "headers", None)
    raw = headers.get("content-type", "") if headers is not None else ""
    return str(raw).partition(";")[0].strip().lower()


async def refuse_non_stream(stream: Any, what: str) -> None:
    """Raise ``NotAnAnswer`` when the reply to a streamed request is JSON or HTML, not an event stream; for
    JSON, with the error it states. ``what`` names the answer expected ("a chat completion")."""
    response = getattr(stream, "response", None)
    kind = _media_type(response)
    if kind in _HTML:
        raise NotAnAnswer(f"answered with a web page ({kind}) instead of {what}; is the base URL right?")
    if kind != "application/json" and not kind.endswith(_JSON_SUFFIX):
        return
    body = bytearray()
    async for chunk in response.aiter_bytes():  # type: ignore[union-attr]
        body += chunk
        if len(body) > ERROR_BODY_CAP:  # only read for its message
            break
    try:
        doc: Any = json.loads(bytes(body))
    except (ValueError, RecursionError):
        doc = None
    raise not_an_answer(doc, what, streamed=True)


def not_an_answer(reply: Any, what: str, *, streamed: bool = False) -> NotAnAnswer:
    """The error for ``reply`` (a parsed body or the SDK's model of one), which is not ``what``."""
    said = _error_in(reply)
    if said is not None:
        return NotAnAnswer(f"answered with an error instead of {what}: {said}")
    if streamed:
        return NotAnAnswer(f"answered a streamed request with a JSON body that is not {what}, not an event stream")
    if isinstance(reply, str):
        return NotAnAnswer(f"answered with a body that is not JSON instead of {what}")
    return NotAnAnswer(f"answered with JSON that is not {what}")


def cut_short(final: str, *, events: int) -> NotAnAnswer:
    """The stream ended cleanly without the event that closes an answer (``final``), after ``events`` events."""
    if not events:
        return NotAnAnswer(f"sent a stream without a single event of an answer (no {final})", cut=True)
    return NotAnAnswer(f"ended the stream before the answer was complete (no {final})", cut=True)


def _field(obj: Any, key: str) -> Any:
    if isinstance(obj, dict):
        return obj.get(key)
    if obj is None or isinstance(obj, str | bytes | int | float | list):
        return None
    value = getattr(obj, key, None)  # an SDK model: declared fields and the extra ones it kept
    if value is None:
        value = (getattr(obj, "model_extra", None) or {}).get(key)
    return value


def _error_in(reply: Any) -> str | None:
    """The provider's own account of a failure in ``reply``: OpenAI's ``{"error": {"message", "type"}}``,
    Anthropic's ``{"type": "error", "error": {...}}``, or a bare ``{"error": "..."}`` / ``{"detail": "..."}``."""
    err = _field(reply, "error")
    if isinstance(err, str) and err.strip():
        return err
    message, kind = _field(err, "message"), _field(err, "type") or _field(err, "code")
    if not isinstance(message, str) or not message.strip():
        detail = _field(reply, "detail") if err is None else None
        message = detail if isinstance(detail, str) and detail.strip() else None
    if message is None:
        return None
    return f"{message} ({kind})" if isinstance(kind, str) and kind.strip() else message
