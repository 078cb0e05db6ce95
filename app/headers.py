"""Security headers on every HTTP response, as a plain ASGI middleware (streams pass through untouched).

Everything: ``X-Content-Type-Options: nosniff`` (a JSON or YAML body a tenant wrote is never
sniffed into HTML), ``Referrer-Policy: no-referrer`` and ``X-Frame-Options: DENY`` (no page of
the node may be framed: the approvals side bar is not clickjackable). The web UI under ``/ui/``
also gets a strict Content-Security-Policy: its own script and style files only, no inline
script, no plugins, fetches to this origin only, and Trusted Types so that no string can ever
be assigned to ``innerHTML`` (the UI builds its DOM with ``textContent``). The API docs under
``/docs`` (served by the node: app/docs.py) get one as strict but for style attributes.
"""

from __future__ import annotations

from typing import Any

from app.docs import DOCS_CSP

__all__ = ["UI_CSP", "SecurityHeaders"]

UI_CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
          "base-uri 'none'; form-action 'none'; frame-ancestors 'none'; "
          "require-trusted-types-for 'script'; trusted-types 'none'")

_COMMON = [(b"x-content-type-options", b"nosniff"), (b"referrer-policy", b"no-referrer"),
           (b"x-frame-options", b"DENY")]
_UI = [*_COMMON, (b"content-security-policy", UI_CSP.encode())]
_DOCS = [*_COMMON, (b"content-security-policy", DOCS_CSP.encode())]


class SecurityHeaders:
    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        if path == "/ui" or path.startswith("/ui/"):
            extra = _UI
        elif path == "/docs" or path.startswith("/docs/"):
            extra = _DOCS
        else:
            extra = _COMMON

        async def send_with_headers(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers") or [])
                have = {k.lower() for k, _ in headers}
                headers += [(k, v) for k, v in extra if k not in have]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)
