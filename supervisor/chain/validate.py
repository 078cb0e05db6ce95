"""Step 1: the tool exists, the bundle declared it, the arguments fit its schema; resolve the resource."""

from __future__ import annotations

import fnmatch
from typing import Any

from pydantic import ValidationError

from supervisor.audit.canonical import args_hash
from supervisor.chain.base import CallState, Next
from supervisor.errors import StockadeError
from supervisor.tools.base import TOO_LARGE, ToolContext

__all__ = ["MAX_KEY_CHARS", "ValidateInterceptor", "validation_message"]

MAX_KEY_CHARS = 255  # an explicit idempotency key


def validation_message(exc: ValidationError) -> str:
    return _describe(exc.errors())


def _describe(errors: list[Any]) -> str:
    parts = []
    for err in errors[:5]:
        loc = ".".join(str(p) for p in err.get("loc", ())) or "args"
        parts.append(f"{loc}: {err.get('msg')}")
    return "; ".join(parts)


class ValidateInterceptor:
    async def __call__(self, call: CallState, next: Next) -> dict[str, Any]:
        services = call.services
        b = call.binding
        if not isinstance(call.raw_args, dict):
            raise StockadeError("input.invalid", "args must be a JSON object")
        key = call.idempotency_key
        if key is not None and (type(key) is not str or not 1 <= len(key) <= MAX_KEY_CHARS or "\x00" in key):
            # refused, not ignored: a call its bundle meant to be at-most-once must not run unprotected
            raise StockadeError("input.invalid", f"idempotency_key must be a string of 1 to {MAX_KEY_CHARS} "
                                                 "characters without NUL")
        if type(call.stream) is not bool:  # "stream": "no" streamed
            raise StockadeError("input.invalid", "stream must be true or false")
        tool = await services.tools.get(call.tool_name, b.tenant_id)
        call.args_hash = args_hash(call.tool_name, call.raw_args)
        declared = b.bundle_tools is None or _declared(b.bundle_tools, (call.tool_name,))
        stands_for = getattr(tool, "stands_for", None)
        if stands_for is not None:
            # A generic door (mcp.call {server, tool, arguments}) is another spelling of a call with a name of its
            # own (mcp.<server>.<tool> {arguments}): from here on it IS that call - judged by the same rules on the
            # same arguments, priced, limited, deduplicated and audited alike - so no rule written on one spelling
            # can be walked around through the other. The door's name stays one of the call's names (aliases).
            door_args = _validated(call, tool)
            name, raw = stands_for(door_args)
            call.called_as, call.tool_name, call.raw_args = call.tool_name, name, raw
            if not declared and not _declared(b.bundle_tools or (), (name,)):
                raise _undeclared(call)  # before the store is asked about a tool the bundle may not call
            call.args_hash = args_hash(name, raw)  # approvals and derived idempotency keys: the call that runs
            tool = await tool.target(door_args, b.tenant_id)
        call.tool = tool
        call.aliases = tuple(getattr(tool, "aliases", ()))
        if not declared and not _declared(b.bundle_tools or (), call.names()):
            raise _undeclared(call)
        call.args = _validated(call, tool)
        call.tool_ctx = ToolContext(
            tenant_id=b.tenant_id, run_id=b.run_id, user_id=b.user_id, project_id=b.project_id,
            emit=call.emit or _no_emit, services=services, stream_chunk=call.extra.get("stream_chunk"),
        )
        call.tool_ctx.call = call
        call.resource = tool.resource(call.args, call.tool_ctx)
        tokens = getattr(tool, "estimate_tokens", None)
        if tokens is not None:  # LLM calls: the per-user token-throughput limit charges this
            call.extra["llm_tokens"] = int(tokens(call.args))
        return await next(call)


def _declared(globs: tuple[str, ...], names: tuple[str, ...]) -> bool:
    return any(fnmatch.fnmatchcase(n, g) for g in globs for n in names)


def _undeclared(call: CallState) -> StockadeError:
    b = call.binding
    call.verdict, call.rule_id = "deny", "bundle.tools"
    call.outcome = "tool.denied"
    spelled = call.called_as or call.tool_name
    return StockadeError("policy.denied", f"bundle {b.bundle} does not declare tool {spelled!r} in bundle.yaml",
                         rule_id="bundle.tools")


def _validated(call: CallState, tool: Any) -> Any:
    try:
        return tool.args_model.model_validate(call.raw_args)
    except ValidationError as exc:
        # a size limit first, as the stores check it first (kb_port.check_doc)
        errors = sorted(exc.errors(), key=lambda e: e["type"] != TOO_LARGE)
        code = "input.too_large" if errors[0]["type"] == TOO_LARGE else "input.invalid"
        call.outcome = "tool.invalid"  # refused before anything ran, whichever of the two
        raise StockadeError(code, f"{call.tool_name}: {_describe(errors)}") from None


async def _no_emit(type: str, data: dict[str, Any]) -> None:
    return None
