"""JSON request bodies are read one way only: UTF-8, no duplicate key at any depth (else ``input.invalid``);
and a query names only parameters its route takes (else ``input.invalid``, naming them).

``json.loads`` keeps the last of two equal keys, other parsers the first (or refuse): a body such as
``{"role": "viewer", "role": "admin"}`` meant one thing to whatever read it before Stockade (a gateway, a
log, a request audit) and another to Stockade itself. RFC 8259 says the names "SHOULD be unique"; a body
where they are not has no one meaning, so it is bad input and changes nothing. Likewise ``json.loads``
given bytes guesses UTF-16 or UTF-32 from their look, where RFC 8259 has JSON between systems in UTF-8:
a body anything else reads as UTF-8 (NUL bytes and all) is refused, not guessed at.

A query parameter the route does not take was ignored: ``GET /v1/audit?kind=tool.denied`` answered every
record as if filtered, ``?limt=5`` a page of 100. As with a body's unknown field (``extra="forbid"``), the
request is refused and names what it did not understand. So is a parameter named twice (no route takes a
list: one value was taken silently, where a proxy or a log may have read the other), and a whole-number
parameter (``limit``, ``after``) spelled other than in ASCII digits: pydantic's lax mode read ``1.0``,
``+3``, `` 3``, ``3_000`` and Arabic-Indic digits as numbers.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Coroutine
from types import UnionType
from typing import Any, Union, get_args, get_origin

from fastapi import Request, Response
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException

__all__ = ["DuplicateKey", "StrictJSONRoute", "unique_object"]


class DuplicateKey(ValueError):
    """A JSON object names the same key twice (a ValueError: what JSON decoders' callers expect)."""


def unique_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """``object_pairs_hook`` for ``json.loads``: the object, unless a key repeats (DuplicateKey)."""
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise DuplicateKey(f"duplicate key {key[:64]!r} in a JSON object")
            seen.add(key)
    return obj


class _StrictJSONRequest(Request):
    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            try:
                # bytes to json.loads would be guessed UTF-16 or UTF-32 (or UTF-8 behind a BOM) from their look
                text = (await self.body()).decode("utf-8")
            except UnicodeDecodeError:
                raise HTTPException(status_code=422, detail="a JSON body must be UTF-8 (RFC 8259)") from None
            try:
                self._json = json.loads(text, object_pairs_hook=unique_object)  # a BOM: JSONDecodeError
            except DuplicateKey as exc:
                # HTTPException: FastAPI lets it through as it is (anything else is "error parsing the body")
                raise HTTPException(status_code=422, detail=f"{exc} of the body") from None
        return self._json


def _query_fields(dependant: Dependant) -> dict[str, Any]:
    """The query parameters a route takes, by name: its own and those of its dependencies (at any depth)."""
    fields = {f.alias: f for f in dependant.query_params}
    for sub in dependant.dependencies:
        fields.update(_query_fields(sub))
    return fields


def _is_int(field: Any) -> bool:
    """``int`` or ``int | None``: a whole number, which pydantic's lax mode also reads from "1.0", "+3", " 3",
    "3_000" or Arabic-Indic digits."""
    annotation = getattr(field.field_info, "annotation", None)
    return annotation is int or (get_origin(annotation) in (Union, UnionType)
                                 and set(get_args(annotation)) == {int, type(None)})


_WHOLE = re.compile(r"-?[0-9]{1,19}\Z")  # ASCII (\d is any Unicode digit); 64 bits: int() of 4,300+ digits raises


class StrictJSONRoute(APIRoute):
    """An ``APIRoute`` whose JSON body must be UTF-8 without a duplicate key, and whose query names only
    the parameters the route takes."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        fields = _query_fields(self.dependant)
        takes = frozenset(fields)
        whole = frozenset(name for name, f in fields.items() if _is_int(f))

        async def strict(request: Request) -> Response:
            unknown = [k for k in dict.fromkeys(request.query_params.keys()) if k not in takes]
            if unknown:
                names = ", ".join(repr(k[:64]) for k in unknown[:5])
                said = f"takes the query parameters {', '.join(sorted(takes))}" if takes else "takes no query parameters"
                raise HTTPException(status_code=422, detail=f"unknown query parameter {names}: this request {said}")
            items = request.query_params.multi_items()
            if len(items) != len(request.query_params):
                # no route takes a list: of ?limit=1&limit=500 one was taken silently, where a proxy or a log
                # in front may have read the other
                twice = next(k for k in request.query_params if len(request.query_params.getlist(k)) > 1)
                raise HTTPException(status_code=422, detail=f"the query parameter {twice[:64]!r} is named twice: send it once")
            for name, value in items:
                if name in whole and not _WHOLE.match(value):
                    raise HTTPException(status_code=422,
                                        detail=f"the query parameter {name!r} must be a whole number in ASCII digits")
            return await handler(_StrictJSONRequest(request.scope, request.receive))

        return strict
