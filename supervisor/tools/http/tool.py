"""``http.request``: egress from the supervisor, never to loopback/private/metadata addresses.

Per hop: normalise the URL, resolve DNS here, refuse if any answer is
forbidden, connect pinned to a checked address (``_fetch``), and follow
redirects ourselves so every hop is re-normalised and re-checked. Credentials
(``Authorization``, ``Cookie``) are dropped when a redirect changes origin.

Redirects and the policy: the chain matched the policy on the first URL. A
``redirect_guard`` (constructor argument, or ``services.extras["http.redirect_guard"]``)
``async (url_text, ctx) -> None`` is awaited before each later hop and may
raise (e.g. the lead's policy re-check); without one, redirects are only
address-checked.
"""

from __future__ import annotations

import asyncio
import codecs
import re
import ssl
from collections.abc import Awaitable, Callable
from typing import Any, ClassVar, Literal
from urllib.parse import urljoin

from pydantic import Field, field_validator

from supervisor.errors import StockadeError
from supervisor.resources.addresses import parse_networks
from supervisor.resources.url import NormalizedUrl, normalize_url
from supervisor.tools.base import ToolArgs, ToolContext, ToolResult
from supervisor.tools.http import _egress
from supervisor.tools.http._fetch import default_ssl_context, exchange
from supervisor.tools.http._headers import CROSS_ORIGIN_DROP, clean_request_headers, clean_response_headers

__all__ = ["HttpRequestArgs", "HttpRequestTool", "RedirectGuard"]

RedirectGuard = Callable[[str, ToolContext], Awaitable[None]]
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_WRITES = frozenset({"POST", "PUT", "PATCH", "DELETE"})
# The Fetch standard's request-body-header names: they describe the body a 301/302/303 turning into GET drops.
_BODY_HEADERS = frozenset({"content-type", "content-encoding", "content-language", "content-location"})
_LOCATION_BAD = re.compile(r"[\x00-\x20\x7f-\x9f\\]")  # as ``normalize_url`` refuses them in a tool URL


class HttpRequestArgs(ToolArgs):
    method: Literal["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"] = "GET"
    url: str = Field(max_length=8192)
    headers: dict[str, str] | None = None
    body: str | None = None
    timeout_s: float | None = Field(None, gt=0, le=3600)

    @field_validator("method", mode="before")
    @classmethod
    def _upper(cls, v: Any) -> Any:
        return v.upper() if isinstance(v, str) else v


class HttpRequestTool:
    name: ClassVar[str] = "http.request"
    args_model: ClassVar[type[ToolArgs]] = HttpRequestArgs
    risk: ClassVar[str] = "high"
    default_price_micro: ClassVar[int] = 100  # $0.0001: egress is real traffic; policies re-price it
    timeout_s: float = 30.0
    # The chain reads one flag per tool. True keeps a retried POST from running twice;
    # ``side_effects_for`` says per call (GET/HEAD/OPTIONS are safe to repeat).
    side_effects: ClassVar[bool] = True

    def __init__(
        self, settings: Any = None, *, redirect_guard: RedirectGuard | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self._redirect_guard = redirect_guard
        self._ssl_context = ssl_context
        if settings is not None:  # the chain's outer timeout must exceed our own deadline
            self.timeout_s = float(settings.egress_timeout_s) + 5.0

    @staticmethod
    def side_effects_for(args: ToolArgs) -> bool:
        return isinstance(args, HttpRequestArgs) and args.method in _WRITES

    def resource(self, args: ToolArgs, ctx: ToolContext) -> str | None:
        assert isinstance(args, HttpRequestArgs)
        return normalize_url(args.url).text

    def estimate_micro(self, args: ToolArgs, ctx: ToolContext) -> int | None:
        return None

    async def run(self, args: ToolArgs, ctx: ToolContext) -> ToolResult:
        assert isinstance(args, HttpRequestArgs)
        settings = ctx.services.settings
        deadline_s = float(settings.egress_timeout_s)
        if args.timeout_s is not None:
            deadline_s = min(deadline_s, args.timeout_s)
        try:
            body = args.body.encode("utf-8") if args.body is not None else None
        except UnicodeEncodeError:  # a lone surrogate (JSON "\udc80") has no UTF-8 form
            raise StockadeError("input.invalid", "the request body is not valid Unicode text") from None
        if body is not None and len(body) > settings.egress_max_bytes:
            raise StockadeError("input.too_large", f"request body exceeds {settings.egress_max_bytes} bytes")
        headers = clean_request_headers(args.headers)
        if not any(n.lower() == "user-agent" for n in headers):  # case-blind: never two User-Agent lines
            headers["User-Agent"] = "stockade-http/0.1"
        try:
            async with asyncio.timeout(deadline_s):
                return await self._follow(normalize_url(args.url), args.method, headers, body, deadline_s, ctx)
        except TimeoutError:
            raise StockadeError("tool.timeout", f"http.request took longer than {deadline_s:g} s") from None

    async def _follow(
        self, url: NormalizedUrl, method: str, headers: dict[str, str], body: bytes | None, deadline_s: float,
        ctx: ToolContext,
    ) -> ToolResult:
        settings = ctx.services.settings
        allow = parse_networks(settings.egress_allow_private)
        guard = self._redirect_guard or _extras_guard(ctx)
        ssl_context = self._ssl_context or default_ssl_context()
        hop = 0
        while True:
            if hop > 0 and guard is not None:
                await guard(url.text, ctx)
            addresses = await _egress.checked_addresses(url, allow)
            resp = await exchange(
                url, addresses, method=method, headers=headers, body=body, timeout_s=deadline_s,
                max_bytes=settings.egress_max_bytes, ssl_context=ssl_context,
            )
            location = _location(resp.headers) if resp.status in _REDIRECTS else None
            if location is None:
                text = "" if method == "HEAD" else _text(resp.body, resp.encoding)
                return ToolResult(
                    result={"status": resp.status, "headers": clean_response_headers(resp.headers, decoded=resp.decoded),
                            "body": text, "url": url.text},
                    usage={"bytes_in": len(resp.body), "redirects": hop},
                )
            if hop >= settings.egress_max_redirects:
                raise StockadeError(
                    "egress.too_many_redirects", f"more than {settings.egress_max_redirects} redirects from {url.text}"
                )
            nxt = _redirect_target(url, location)
            if nxt.origin != url.origin:
                headers = {n: v for n, v in headers.items() if n.lower() not in CROSS_ORIGIN_DROP}
            if (resp.status == 303 and method != "HEAD") or (resp.status in (301, 302) and method == "POST"):
                method, body = "GET", None  # what every browser does; 307/308 keep method and body
                headers = {n: v for n, v in headers.items() if n.lower() not in _BODY_HEADERS}
            url = nxt
            hop += 1


def _location(headers: list[tuple[str, str]]) -> str | None:
    for name, value in headers:
        if name.lower() == "location":
            return value
    return None


def _redirect_target(current: NormalizedUrl, location: str) -> NormalizedUrl:
    try:
        location = location.strip()
        if _LOCATION_BAD.search(location):  # urljoin would silently drop tab/CR/LF and read what is left
            raise StockadeError("input.invalid", "the Location holds a control character or a backslash")
        return normalize_url(urljoin(current.text, location))
    except (StockadeError, ValueError) as exc:
        detail = exc.detail if isinstance(exc, StockadeError) else str(exc)
        raise StockadeError(
            "egress.blocked", f"{current.host} redirected to a URL that is refused ({detail})", reason="redirect_url"
        ) from None


# Codecs a server must not pick through ``charset=``: not character sets, and some unsafe on large input
# (punycode decodes in quadratic time, synchronously: 250 kB held the event loop for 9 s; ``idna`` and
# ``undefined`` refuse ``errors="replace"``: the call failed with an unexpected exception).
_NOT_CHARSETS = frozenset({"idna", "punycode", "undefined", "unicode-escape", "raw-unicode-escape"})


def _codec(name: str) -> str:
    """The text codec a response's ``charset`` names, else UTF-8 (unknown names and ``rot13``, ``base64``,
    ``zlib`` ... which are bytes or str transforms rather than text encodings)."""
    try:
        codec = codecs.lookup(name).name
        b"a".decode(codec, "replace")  # LookupError for a codec that is not a text encoding (b"" is not checked)
    except (LookupError, UnicodeError, ValueError):
        return "utf-8"
    return "utf-8" if codec in _NOT_CHARSETS else codec


def _text(body: bytes, encoding: str) -> str:
    try:
        return body.decode(_codec(encoding), errors="replace")
    except (LookupError, UnicodeError, ValueError):  # a text codec that still refuses: never an internal error
        return body.decode("utf-8", errors="replace")


def _extras_guard(ctx: ToolContext) -> RedirectGuard | None:
    extras = getattr(ctx.services, "extras", None)
    return extras.get("http.redirect_guard") if isinstance(extras, dict) else None
