"""What a provider failure means for us: retry or not, count against the breaker or not, what to tell the tenant.

Both SDKs share the same exception shape (``APIStatusError`` with ``status_code``,
``APIConnectionError``, ``APITimeoutError``), so one classifier serves both.
Provider messages are scrubbed of the key and truncated; for authentication
failures they are dropped altogether (OpenAI echoes a masked key in them).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from supervisor.tools._capped import too_large_in
from supervisor.tools._guard import TooManyItems
from supervisor.tools.llm._sdk import loaded

__all__ = ["AnswerTooBig", "Failure", "NotAnAnswer", "ProviderStreamError", "backoff_s", "classify"]

_MAX_MESSAGE = 300


class ProviderStreamError(Exception):
    """The provider reported a failure inside a 200 stream (Responses ``error`` / ``response.failed`` events)."""


class AnswerTooBig(Exception):
    """The answer passed a limit of ours (far past max_tokens, over 128 tool calls). A tenant can ask a model
    for that, so it is no sign of an outage: the shared breaker does not count it."""


class NotAnAnswer(Exception):
    """A 200 reply that is no (complete) answer: an HTML page or a JSON error where a stream was asked for, a JSON
    body without the answer's fields, a stream that ended without its final event. Never retried (the next try
    gets the same page, or repeats what was streamed); ``cut`` (a stream that stopped early, like a dropped
    connection) counts against the breaker, the others say nothing about the provider's health."""

    def __init__(self, message: str, *, cut: bool = False) -> None:
        super().__init__(message)
        self.cut = cut


@dataclass(frozen=True)
class Failure:
    retryable: bool  # worth another attempt (if no output has gone out yet)
    unhealthy: bool  # counts as a failure of the provider for the circuit breaker
    message: str  # safe to show the tenant
    status: int | None = None
    retry_after: float | None = None
    timeout: bool = False
    too_large: bool = False  # the response passed the byte cap (``egress.too_large``)
    unread: bool = False  # a generated reply nobody could read (nested too deep): it may hold the whole answer
    neutral: bool = False  # says nothing about the provider's health: the breaker neither counts nor clears it


def classify(exc: BaseException, provider: str, secrets: tuple[str, ...] = ()) -> Failure | None:
    """A ``Failure`` for provider/transport errors; None for anything else (cancellation, our own errors)."""
    env = "STOCKADE_OPENAI_API_KEY" if provider == "openai" else "STOCKADE_ANTHROPIC_API_KEY"
    big = too_large_in(exc)  # the SDKs wrap it (APIConnectionError): it must not be retried as one
    if isinstance(exc, AnswerTooBig):
        return Failure(False, False, f"the {provider} API {exc}")
    if isinstance(exc, NotAnAnswer):
        return Failure(False, exc.cut, _scrub(f"the {provider} API {exc}", secrets), neutral=not exc.cut)
    if isinstance(big, TooManyItems):  # said by the provider: not a sign of an outage
        return Failure(False, False, f"the {provider} API sent {big}", too_large=True)
    if big is not None:
        return Failure(False, True, f"the {provider} API sent a response larger than {big.cap} bytes", too_large=True)
    timeouts, transport = _transport_errors()
    if isinstance(exc, (*_sdk_errors("APITimeoutError"), *timeouts)):
        return Failure(True, True, f"the {provider} API did not answer in time", timeout=True)
    # the anthropic SDK lets the HTTP library's errors out of a stream unwrapped
    if isinstance(exc, (*_sdk_errors("APIConnectionError"), *transport)):
        return Failure(True, True, f"lost the connection to the {provider} API")
    if isinstance(exc, _sdk_errors("APIStatusError")):
        status = int(exc.status_code)
        if 300 <= status < 400:  # redirects are not followed (see _clients): a misconfigured or hostile endpoint
            return Failure(False, True, f"the {provider} API answered with a redirect (HTTP {status}), which is "
                           "not followed; point the base URL at the final address", status=status)
        if status < 400:  # an error event inside a 200 stream (Anthropic "overloaded_error" mid-answer)
            return Failure(True, True, f"the {provider} API reported an error: {_scrub(_message_of(exc), secrets)}")
        if status in (401, 403):
            return Failure(
                False,
                False,
                f"the {provider} API rejected the configured credentials (HTTP {status}); check {env}",
                status=status,
            )
        detail = _scrub(_message_of(exc), secrets)
        if status == 429 or status == 408 or status == 409 or status >= 500:
            return Failure(
                True,
                True,
                f"the {provider} API failed (HTTP {status}): {detail}",
                status=status,
                retry_after=_retry_after(exc),
            )
        return Failure(False, False, f"the {provider} API refused the request (HTTP {status}): {detail}", status=status)
    if isinstance(exc, (*_sdk_errors("APIError"), ProviderStreamError)):
        # an error event inside a stream: the upstream broke after it had accepted the request
        return Failure(True, True, f"the {provider} API reported an error: {_scrub(str(exc), secrets)}")
    return None


def _sdk_errors(name: str) -> tuple[type[BaseException], ...]:
    """The SDKs' exception class ``name``, of the SDKs imported. An exception of an SDK not imported cannot
    exist, and importing one here would hold the event loop for seconds (see ``_sdk``)."""
    return tuple(getattr(mod, name) for mod in map(loaded, ("openai", "anthropic")) if mod is not None)


def _transport_errors() -> tuple[tuple[type[BaseException], ...], tuple[type[BaseException], ...]]:
    timeouts: list[type[BaseException]] = []
    transport: list[type[BaseException]] = []
    for name in ("httpx2", "httpx"):  # newer SDKs ride on httpx2, older ones on httpx (imported by the SDK if so)
        mod = loaded(name)
        if mod is None:
            continue
        timeouts.append(mod.TimeoutException)
        transport.append(mod.TransportError)
    return tuple(timeouts), tuple(transport)


def backoff_s(attempt: int, base_s: float, cap_s: float, retry_after: float | None = None) -> float:
    """Exponential backoff with jitter (a random half to all of each step).

    A provider's Retry-After is honoured up to the cap.
    """
    ceiling = min(cap_s, base_s * (2**attempt))
    delay = random.uniform(ceiling / 2, ceiling)  # noqa: S311 - jitter, not cryptography
    if retry_after is not None:
        delay = max(delay, min(max(0.0, retry_after), cap_s))
    return delay


def _message_of(exc: BaseException) -> str:
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        err = body.get("error", body)
        message = err.get("message") if isinstance(err, dict) else None
        if isinstance(message, str):
            return message
    return str(getattr(exc, "message", "") or exc)


def _retry_after(exc: BaseException) -> float | None:
    response = getattr(exc, "response", None)
    headers = getattr(response, "headers", None)
    if headers is None:
        return None
    for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        raw = headers.get(name)
        if raw is None:
            continue
        try:
            return float(raw) * scale
        except ValueError:
            return None  # an HTTP date: ignore, our own backoff applies
    return None


def _scrub(text: str, secrets: tuple[str, ...]) -> str:
    for s in secrets:
        if s:
            text = text.replace(s, "[redacted]")
    text = " ".join(text.split())
    return text if len(text) <= _MAX_MESSAGE else text[: _MAX_MESSAGE - 1] + "…"
