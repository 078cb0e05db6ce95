"""RFC 9457 problem+json for every error, with the stable ``code`` from the one error table."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from app.head import head_allowed
from supervisor.errors import StockadeError, spec_for

__all__ = ["install_problem_handlers", "problem"]

log = logging.getLogger("stockade.api")

_HTTP_CODES = {400: "input.invalid", 401: "auth.missing", 403: "auth.forbidden", 404: "not_found",
               405: "input.method_not_allowed", 409: "conflict", 413: "input.too_large", 415: "input.unsupported_media",
               422: "input.invalid"}
_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


def problem(code: str, detail: str, instance: str | None = None, **extra: Any) -> JSONResponse:
    spec = spec_for(code)
    body: dict[str, Any] = {
        "type": f"https://stockade.dev/errors/{code}", "title": spec.title, "status": spec.http_status,
        "detail": detail, "code": code, "retryable": spec.retryable,
    }
    if instance:
        body["instance"] = instance
    body.update({k: v for k, v in extra.items() if k not in body})
    headers = {}
    if "retry_after" in extra:
        headers["Retry-After"] = str(max(1, int(float(extra["retry_after"]) + 0.999)))
    if spec.http_status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    return JSONResponse(body, status_code=spec.http_status, media_type="application/problem+json", headers=headers)


def install_problem_handlers(app: FastAPI) -> None:
    @app.exception_handler(StockadeError)
    async def _stockade(request: Request, exc: StockadeError) -> JSONResponse:
        detail = exc.public_detail
        if detail != exc.detail:  # the operator's part (an address, a driver's message) goes to the log only
            log.warning("%s on %s: %s", exc.code, request.url.path, exc.detail)
        return problem(exc.code, detail, request.url.path, **exc.extra)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [{"loc": [str(p) for p in e.get("loc", ())], "msg": e.get("msg"), "type": e.get("type")}
                  for e in exc.errors()[:20]]
        first = errors[0] if errors else {"loc": [], "msg": "invalid"}
        not_json = _not_json(request)
        if not_json is not None and any(e["loc"] == ["body"] and e["type"] in _NOT_AN_OBJECT for e in errors):
            # FastAPI reads a body as JSON only under a JSON media type; otherwise the model got the raw bytes, and
            # "body: Input should be a valid dictionary" did not say what was wrong (curl -d sends a form type)
            return problem("input.unsupported_media", f"this endpoint takes a JSON body: send it with Content-Type: "
                           f"application/json (got {not_json[:100]})", request.url.path)
        return problem("input.invalid", f"{'.'.join(first['loc'])}: {first['msg']}", request.url.path, errors=errors)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = _HTTP_CODES.get(exc.status_code, "internal")
        response = problem(code, str(exc.detail), request.url.path)
        if exc.status_code == 405:  # RFC 9110: a 405 names the methods the resource has
            response.headers["Allow"] = _allowed_methods(request) or (exc.headers or {}).get("Allow", "")
        return response

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s", request.url.path)
        return problem("internal", "internal error", request.url.path)


_NOT_AN_OBJECT = frozenset({"model_attributes_type", "dict_type"})


def _not_json(request: Request) -> str | None:
    """The request's media type when it is not JSON (``application/json`` or ``application/*+json``: what FastAPI
    parses as JSON), else None."""
    value = request.headers.get("content-type")
    if not value:
        return "no Content-Type"
    media = value.split(";", 1)[0].strip().lower()
    main, _, sub = media.partition("/")
    return None if main == "application" and (sub == "json" or sub.endswith("+json")) else media


def _allowed_methods(request: Request) -> str:
    """Every method some route takes on this path: Starlette's own Allow names only the first route's
    (``GET /v1/runs`` and ``POST /v1/runs`` are two routes)."""
    base = {k: v for k, v in request.scope.items() if k in ("type", "path", "root_path", "raw_path", "query_string")}
    allowed = []
    for method in _METHODS:
        scope = {**base, "method": method, "headers": []}  # a fresh scope: matching writes into it
        if any(route.matches(scope)[0] == Match.FULL for route in request.app.router.routes):
            allowed.append(method)
    if "GET" in allowed and "HEAD" not in allowed and head_allowed(request.url.path):
        allowed.insert(allowed.index("GET") + 1, "HEAD")  # app.head.HeadAsGet serves it
    return ", ".join(allowed)
