"""SDK clients, built once per (provider, event loop) and reused, so HTTP connections are pooled.

The SDK itself is imported off the event loop (``_sdk``) the first time a provider is used.

The keys live here and in the SDK clients only; nothing of them reaches a
sandbox. Every constructor argument the SDKs would otherwise read from the
environment (key, base URL, telemetry) is passed explicitly, and the SDKs' own
retries are off (``max_retries=0``): the tool's retry policy is the only one.
"""

from __future__ import annotations

import asyncio
import weakref
from dataclasses import dataclass
from typing import Any

from supervisor.errors import StockadeError
from supervisor.tools._capped import cap_responses
from supervisor.tools._guard import guard_messages
from supervisor.tools.llm._sdk import sdk

__all__ = ["ClientPool", "Endpoint", "endpoint_for"]

OPENAI_URL = "https://api.openai.com/v1"
ANTHROPIC_URL = "https://api.anthropic.com"
# OpenAI-compatible local servers (Ollama, vLLM, LM Studio) take any key; the SDKs insist on one
NO_KEY = "stockade-no-key"
# One response (a whole JSON answer, or a whole stream) may not exceed this: a 128k-token stream with
# per-delta framing is ~30 MB; a hostile endpoint must not be able to fill the supervisor's memory.
MAX_RESPONSE_BYTES = 64 * 1024 * 1024

UNCONFIGURED = (
    "No LLM provider is configured for {model}: set STOCKADE_OPENAI_API_KEY for OpenAI "
    "(or STOCKADE_OPENAI_BASE_URL for an OpenAI-compatible server such as vLLM or Ollama), "
    "or STOCKADE_ANTHROPIC_API_KEY for Anthropic, then restart Stockade."
)


@dataclass(frozen=True)
class Endpoint:
    provider: str
    base_url: str
    api_key: str
    official: bool  # the provider's own API (not an OpenAI-compatible stand-in)


def endpoint_for(settings: Any, provider: str, model: str) -> Endpoint:
    """Where ``provider`` calls go, or ``llm.unconfigured`` with one sentence on how to configure it."""
    if provider == "openai":
        key, base = settings.openai_api_key, settings.openai_base_url
        default = OPENAI_URL
    else:
        key, base = settings.anthropic_api_key, settings.anthropic_base_url
        default = ANTHROPIC_URL
    secret = key.get_secret_value() if key is not None else ""
    if not secret and not base:
        raise StockadeError("llm.unconfigured", UNCONFIGURED.format(model=model), provider=provider)
    base_url = (base or default).rstrip("/")
    return Endpoint(provider, base_url, secret or NO_KEY, official=base_url == default)


class ClientPool:
    def __init__(self, timeout_s: float) -> None:
        self._timeout_s = timeout_s
        # httpx connections belong to the loop that opened them: one set of clients per loop
        self._by_loop: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[Endpoint, Any]] = (
            weakref.WeakKeyDictionary()
        )

    async def get(self, ep: Endpoint) -> Any:
        clients = self._by_loop.setdefault(asyncio.get_running_loop(), {})
        client = clients.get(ep)
        if client is None:
            mod = await sdk(ep.provider)  # imported off the loop (seconds, cold)
            client = clients.get(ep)  # a concurrent first call may have made it meanwhile
            if client is None:
                client = clients[ep] = self._make(ep, mod)
        return client

    def _make(self, ep: Endpoint, mod: Any) -> Any:  # mod: the provider's SDK
        # Redirects are never followed: a provider has no reason to send one, and following it would
        # carry the request (and Anthropic's x-api-key header, which httpx does not strip) anywhere.
        hooks = {"response": [cap_responses(MAX_RESPONSE_BYTES), guard_messages()]}
        timeout = mod.Timeout(self._timeout_s, connect=min(10.0, self._timeout_s))
        http_client = mod.DefaultAsyncHttpxClient(timeout=timeout, follow_redirects=False, event_hooks=hooks)
        if ep.provider == "openai":
            return mod.AsyncOpenAI(
                api_key=ep.api_key, base_url=ep.base_url, max_retries=0, timeout=timeout, http_client=http_client
            )
        return mod.AsyncAnthropic(
            api_key=ep.api_key,
            base_url=ep.base_url,
            max_retries=0,
            timeout=timeout,
            open_telemetry=False,
            http_client=http_client,
        )

    async def aclose(self) -> None:
        """Close the clients of the running loop (clients of other loops die with their loop)."""
        clients = self._by_loop.pop(asyncio.get_running_loop(), {})
        for client in clients.values():
            await client.close()
