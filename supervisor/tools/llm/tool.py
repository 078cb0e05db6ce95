"""``llm.chat``: one governed call to an LLM provider, streamed, metered and priced.

Failure policy, in one place (the SDKs' own retries are off):
- a retryable failure (429, 5xx, connection, timeout) before any output is
  retried with exponential backoff and jitter, ``settings.llm_max_retries`` times;
- once output has started, nothing is retried (the answer would repeat): the
  call fails with ``llm.provider_error`` (``retryable: false``, for the same
  reason) carrying ``partial_usage`` and ``cost_micro``, so the budget step
  commits what was really spent;
- the run's own limits hold for what is streamed to its answer (the run
  session's ``ctx.emit``): past its output limit the emit fails
  ``limit.output``, the stream is closed (the model stops) and what was
  generated is charged, as above;
- a 200 that is no answer (an HTML page, a JSON error body, a stream that ends
  without its final event) is ``llm.provider_error``, not retried (the same
  page comes back; a cut stream would be repeated), charged like any failure:
  nothing before output started, what was generated after;
- a reply too deep to be read at all (a tool_use input the model nested past
  the JSON decoder's limit) is not retried and is charged the worst case, as
  nobody can tell how much of the answer it held;
- a circuit breaker per provider fails calls fast while the provider is down.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, ClassVar

from supervisor.errors import StockadeError
from supervisor.settings import SettingsError
from supervisor.tools.base import ToolArgs, ToolContext, ToolResult
from supervisor.tools.llm._anthropic import call_anthropic
from supervisor.tools.llm._clients import ClientPool, Endpoint, endpoint_for
from supervisor.tools.llm._collector import Collector
from supervisor.tools.llm._failures import Failure, backoff_s, classify
from supervisor.tools.llm._openai_chat import call_chat
from supervisor.tools.llm._openai_responses import call_responses
from supervisor.tools.llm._sdk import warm
from supervisor.tools.llm._tokens import input_ceiling, input_estimate
from supervisor.tools.llm.args import PROVIDERS, LlmChatArgs
from supervisor.tools.llm.breaker import CircuitBreaker
from supervisor.tools.llm.pricing import LlmPricing, Price

__all__ = ["LlmChatTool", "make_llm_tool"]

log = logging.getLogger("stockade.tools.llm")

ProviderCall = Callable[[Any, LlmChatArgs, Endpoint, Collector], Awaitable[None]]
_CALLS: dict[tuple[str, str], ProviderCall] = {
    ("openai", "chat"): call_chat,
    ("openai", "responses"): call_responses,
    ("anthropic", "chat"): call_anthropic,
}


class LlmChatTool:
    name: ClassVar[str] = "llm.chat"
    args_model: ClassVar[type[ToolArgs]] = LlmChatArgs
    risk: ClassVar[str] = "medium"  # spends money and sends tenant data to a third party; touches nothing else
    default_price_micro: ClassVar[int] = 0  # priced per token: estimate_micro / ToolResult.cost_micro
    timeout_s: ClassVar[float] = 900.0  # long generations stream for minutes; stalls are caught by llm_timeout_s
    side_effects: ClassVar[bool] = False  # the same prompt twice is two answers, never a duplicate action

    def __init__(
        self,
        settings: Any,
        *,
        pricing: LlmPricing | None = None,
        clock: Callable[[], float] = time.monotonic,
        backoff_base_s: float = 0.5,
        backoff_cap_s: float = 8.0,
        breaker_threshold: int = 5,
        breaker_cooldown_s: float = 30.0,
        timeout_s: float | None = None,
    ) -> None:
        self.settings = settings
        if timeout_s is not None:
            self.timeout_s = timeout_s  # type: ignore[misc]
        # Our own deadline, a little inside the chain's hard timeout: a provider that trickles bytes or
        # streams forever is cut off here, where what it generated can still be charged.
        self.deadline_s = max(0.1, self.timeout_s - min(5.0, self.timeout_s * 0.05))
        self.pricing = pricing if pricing is not None else LlmPricing.load(settings.llm_pricing_file)
        self.max_retries = int(settings.llm_max_retries)
        self.backoff_base_s = backoff_base_s
        self.backoff_cap_s = backoff_cap_s
        self.clients = ClientPool(float(settings.llm_timeout_s))
        self.breakers = {
            p: CircuitBreaker(p, threshold=breaker_threshold, cooldown_s=breaker_cooldown_s, clock=clock)
            for p in PROVIDERS
        }
        keys = (settings.openai_api_key, settings.anthropic_api_key)
        self._secrets = tuple(k.get_secret_value() for k in keys if k is not None)

    # --- the Tool protocol

    def resource(self, args: ToolArgs, ctx: ToolContext) -> str | None:
        return _as_args(args).model  # policies can match "anthropic/*" or a single model

    def estimate_tokens(self, args: ToolArgs) -> int:
        """Tokens of one call (the prompt's likely count + ``max_tokens``): what the per-user
        token-throughput rate limit charges before the call runs. Not the worst case of the budget's
        ``input_ceiling``: a throughput limit is not money, and 4x would refuse every 50k-word prompt."""
        a = _as_args(args)
        return input_estimate(a) + a.max_tokens

    def estimate_micro(self, args: ToolArgs, ctx: ToolContext) -> int | None:
        """Worst case: the whole prompt at one token per byte plus ``max_tokens`` of output."""
        a = _as_args(args)
        return _worst_case(a, self._price(a.model, ctx))

    async def run(self, args: ToolArgs, ctx: ToolContext) -> ToolResult:
        a = _as_args(args)
        ep = endpoint_for(self.settings, a.provider, a.model)
        price = self._price(a.model, ctx)
        call = _CALLS[(a.provider, a.api)]
        client = await self.clients.get(ep)
        breaker = self.breakers[a.provider]
        attempt = 0
        deadline = asyncio.get_running_loop().time() + self.deadline_s
        while True:
            breaker.before_call()
            col = Collector(ctx, a.stream, max_tokens=a.max_tokens)
            cut = asyncio.timeout_at(deadline)
            try:
                async with cut:
                    await call(client, a, ep, col)
                    await col.flush()
            except TimeoutError:
                if not cut.expired():
                    raise  # pragma: no cover - only our own deadline raises a bare TimeoutError here
                breaker.release()  # a long answer (max_tokens 128k on a slow model) says nothing about the provider
                failure = Failure(False, True, f"the {a.provider} API did not finish within {self.deadline_s:g} s",
                                  timeout=True)
                if col.started:
                    raise self._mid_stream_error(a, col, price, failure) from None
                raise self._final_error(a, failure, attempt + 1) from None
            except StockadeError as err:  # from ctx.emit / stream_chunk (a run limit, a cancelled stream)
                breaker.release()
                if col.started:
                    usage, cost = self._partial(a, col, price)
                    err.extra.setdefault("partial_usage", usage)
                    err.extra.setdefault("cost_micro", cost)
                raise
            except Exception as exc:
                failure = self._failure(exc, a.provider, breaker, streamed=a.stream)
                if col.started:
                    raise self._mid_stream_error(a, col, price, failure) from exc
                if not failure.retryable or attempt >= self.max_retries:
                    err = self._final_error(a, failure, attempt + 1)
                    if failure.unread:  # the provider may have generated (and billed) all of it: the worst case
                        err.extra["cost_micro"] = _worst_case(a, price)
                    raise err from exc
                delay = backoff_s(attempt, self.backoff_base_s, self.backoff_cap_s, failure.retry_after)
                delay = min(delay, max(0.0, deadline - asyncio.get_running_loop().time()))
                log.info(
                    "llm.chat %s attempt %d failed (%s); retrying in %.2fs",
                    a.model,
                    attempt + 1,
                    failure.message,
                    delay,
                )
                await asyncio.sleep(delay)
                attempt += 1
                continue
            except BaseException:  # cancellation: says nothing about the provider
                breaker.release()
                if col.started:  # the run was canceled or timed out mid-answer: what was generated is owed
                    ctx.spent_micro = self._partial(a, col, price)[1]
                raise
            breaker.record_success()
            return self._result(a, col, price, attempt + 1)

    def warm_up(self) -> None:
        """Start importing the SDKs of the configured providers in threads (a worker node at start-up), so the
        first call finds them imported; a provider not configured is never imported."""
        for provider in PROVIDERS:
            try:
                endpoint_for(self.settings, provider, provider)
            except StockadeError:  # llm.unconfigured
                continue
            warm(provider)

    async def aclose(self) -> None:
        await self.clients.aclose()

    # --- helpers

    def _price(self, model: str, ctx: ToolContext) -> Price:
        overrides: Mapping[str, Mapping[str, float]] | None = getattr(ctx, "llm_prices", None)
        try:
            return self.pricing.price_for(model, overrides)
        except SettingsError as exc:
            raise StockadeError("policy.invalid", f"LLM price overrides are invalid: {exc}") from None

    def _failure(self, exc: Exception, provider: str, breaker: CircuitBreaker, *, streamed: bool) -> Failure:
        """What ``exc`` means, told to the breaker. The breaker is shared by every tenant, so what one tenant's
        request can cause on its own is no sign of an outage: a non-streamed answer arrives only when all of
        it is generated, and a tenant asking for 128k tokens makes it time out every time."""
        failure = classify(exc, provider, self._secrets)
        if failure is None:  # not an API error: a reply the SDK could not make sense of, or our own bug
            log.warning("llm.chat: unexpected error from the %s adapter", provider, exc_info=exc)
            breaker.release()
            # A reply nested past the JSON decoder's limit is a generated answer (a tool_use input the model
            # wrote) nobody could read: not one that never came (an HTML error page, our own bug).
            return Failure(False, False, f"unexpected reply from the {provider} API ({type(exc).__name__})",
                           unread=_too_deep(exc))
        if failure.neutral or (failure.timeout and not streamed):
            breaker.release()
        elif failure.unhealthy:
            breaker.record_failure()
        else:
            breaker.record_success()  # the provider answered; it was this request it refused
        return failure

    def _partial(self, a: LlmChatArgs, col: Collector, price: Price) -> tuple[dict[str, int], int]:
        inp, out, _ = col.settled_usage(input_estimate(a))
        return {"input_tokens": inp, "output_tokens": out}, price.cost_micro(inp, out)

    def _mid_stream_error(self, a: LlmChatArgs, col: Collector, price: Price, failure: Failure) -> StockadeError:
        usage, cost = self._partial(a, col, price)
        code = "tool.timeout" if failure.timeout else "egress.too_large" if failure.too_large else "llm.provider_error"
        return StockadeError(
            code,
            f"{failure.message}, after part of the answer had arrived; not retried so the answer is not repeated",
            provider=a.provider,
            partial_usage=usage,
            cost_micro=cost,
            # whatever the failure's own kind (a dropped stream is retryable before output): a retry would repeat
            # the part already streamed to the run's answer (and to the bundle)
            retryable=False,
        )

    def _final_error(self, a: LlmChatArgs, failure: Failure, attempts: int) -> StockadeError:
        tried = f" ({attempts} attempts)" if attempts > 1 else ""
        extra: dict[str, Any] = {"provider": a.provider, "attempts": attempts}
        if failure.status is not None:
            extra["status"] = failure.status
        if failure.too_large:
            return StockadeError("egress.too_large", failure.message + tried, **extra)
        if failure.timeout:
            return StockadeError(
                "tool.timeout",
                f"{failure.message}{tried}; STOCKADE_LLM_TIMEOUT_S is {self.settings.llm_timeout_s:g} s",
                **extra,
            )
        if not failure.retryable:
            extra["retryable"] = False  # the code's default says retryable; this request will never succeed
        return StockadeError("llm.provider_error", failure.message + tried, **extra)

    def _result(self, a: LlmChatArgs, col: Collector, price: Price, attempts: int) -> ToolResult:
        inp, out, estimated = col.settled_usage(input_estimate(a))
        cost = price.cost_micro(inp, out)
        # Settlement charges at most what was reserved (estimate_micro, the worst case) and records the rest as
        # overage: the bundle is told what is charged, as the usage event, receipt and ledger say. The price of
        # what a provider reported past the worst case (100M input tokens) is shown apart. (Settlement charges
        # less still only if a cap was lowered under the call or its reservation lapsed: the ledger says so.)
        charged = min(cost, _worst_case(a, price))
        result: dict[str, Any] = {
            "text": "".join(col.text),
            "model": a.model,
            "usage": {"input_tokens": inp, "output_tokens": out},
            "cost_usd": charged / 1_000_000,
            "stop_reason": col.stop_reason,
        }
        if cost > charged:
            result["cost_uncapped_usd"] = cost / 1_000_000
        if col.calls:
            result["tool_calls"] = col.tool_calls()
        if col.thinking:
            result["thinking"] = "".join(col.thinking)
        if blocks := col.thinking_blocks():
            result["thinking_blocks"] = blocks
        usage = {
            "provider": a.provider,
            "model": a.model,
            "input_tokens": inp,
            "output_tokens": out,
            "attempts": attempts,
            "estimated": estimated,
        }
        return ToolResult(result=result, cost_micro=cost, usage=usage)


def _worst_case(a: LlmChatArgs, price: Price) -> int:
    """What a call is reserved, and so at most charged: the whole prompt at one token per byte plus ``max_tokens``."""
    return price.cost_micro(input_ceiling(a), a.max_tokens)


def _too_deep(exc: BaseException) -> bool:
    seen: BaseException | None = exc
    for _ in range(8):  # the SDKs may wrap it
        if seen is None:
            return False
        if isinstance(seen, RecursionError):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _as_args(args: ToolArgs | Mapping[str, Any]) -> LlmChatArgs:
    if isinstance(args, LlmChatArgs):
        return args
    raw = args.model_dump() if isinstance(args, ToolArgs) else dict(args)
    return LlmChatArgs.model_validate(raw)


def make_llm_tool(settings: Any) -> LlmChatTool:
    return LlmChatTool(settings)
