"""``kb.add`` / ``kb.search`` / ``kb.delete``: the tenant's knowledge base (``services.kb``, a ``KbStore``).

The tenant comes from the run's binding. Results carry document ids so a
bundle can emit ``citation`` events pointing at them. A ``kb.add`` past the
tenant's quota (``STOCKADE_KB_QUOTA_MB`` / ``STOCKADE_KB_QUOTA_DOCS``, enforced
by the store) fails with ``kb.quota`` and stores nothing; ``kb.delete`` is how a
bundle makes room. The policy matches ``kb.add`` (given a ``doc_id``) and
``kb.delete`` on the resource ``kb://<doc_id>``.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Annotated, Any, ClassVar

from pydantic import AfterValidator, Field

from supervisor.errors import StockadeError
from supervisor.storable import Text, reject_nul, text
from supervisor.stores.kb_port import (
    DOC_ID,
    MAX_LIMIT,
    MAX_QUERY_CHARS,
    MAX_SOURCE_CHARS,
    MAX_TEXT_CHARS,
    MAX_TITLE_CHARS,
    KbStore,
)
from supervisor.tools.base import ToolArgs, ToolContext, ToolResult, max_chars

__all__ = ["KbAddArgs", "KbAddTool", "KbDeleteArgs", "KbDeleteTool", "KbSearchArgs", "KbSearchTool"]


def _doc_id(value: str) -> str:
    if not DOC_ID.fullmatch(value):
        raise ValueError("1-200 printable ASCII characters without spaces")
    return value


_Title = text(max_length=MAX_TITLE_CHARS)
_Source = text(max_length=MAX_SOURCE_CHARS)

# refused before the policy sees kb://<doc_id> (the stores refuse it too: kb_port.check_doc_id)
DocId = Annotated[Text, AfterValidator(_doc_id)]


class KbAddArgs(ToolArgs):  # Text: no NUL, which PostgreSQL cannot store (supervisor/storable.py)
    # the size first and as input.too_large, as the store checks it (kb_port.check_doc); then Text's check
    text: Annotated[str, max_chars(MAX_TEXT_CHARS), AfterValidator(reject_nul)] = Field(min_length=1)
    title: _Title | None = None
    source: _Source | None = None
    doc_id: DocId | None = Field(None, min_length=1, max_length=200)


class KbDeleteArgs(ToolArgs):
    doc_id: DocId = Field(min_length=1, max_length=200)


class KbSearchArgs(ToolArgs):
    query: Text = Field(max_length=MAX_QUERY_CHARS)
    limit: int = Field(5, ge=1, le=MAX_LIMIT)


def _resource(doc_id: str) -> str:
    """What the policy's ``resource:`` globs see for a document: one spelling for every kb tool."""
    return f"kb://{doc_id}"


def _store(ctx: ToolContext) -> KbStore:
    kb = getattr(ctx.services, "kb", None)
    if kb is None:
        raise StockadeError("tool.unavailable", "the knowledge base store is not configured")
    return kb  # type: ignore[no-any-return]


class _KbTool:
    default_price_micro: ClassVar[int] = 0  # local store; operators price it in the policy if they wish
    timeout_s: ClassVar[float] = 30.0

    def __init__(self, settings: Any = None) -> None:
        pass

    def resource(self, args: ToolArgs, ctx: ToolContext) -> str | None:
        return None

    def estimate_micro(self, args: ToolArgs, ctx: ToolContext) -> int | None:
        return None


class KbAddTool(_KbTool):
    name: ClassVar[str] = "kb.add"
    args_model: ClassVar[type[ToolArgs]] = KbAddArgs
    risk: ClassVar[str] = "medium"  # persists text other runs will read (and may trust)
    side_effects: ClassVar[bool] = True  # without a doc_id a repeat would add a duplicate

    def resource(self, args: ToolArgs, ctx: ToolContext) -> str | None:
        assert isinstance(args, KbAddArgs)
        return _resource(args.doc_id) if args.doc_id else None

    async def run(self, args: ToolArgs, ctx: ToolContext) -> ToolResult:
        assert isinstance(args, KbAddArgs)
        doc_id = await _store(ctx).add(ctx.tenant_id, args.text, title=args.title, source=args.source, doc_id=args.doc_id)
        return ToolResult({"doc_id": doc_id})


class KbSearchTool(_KbTool):
    name: ClassVar[str] = "kb.search"
    args_model: ClassVar[type[ToolArgs]] = KbSearchArgs
    risk: ClassVar[str] = "low"
    side_effects: ClassVar[bool] = False

    async def run(self, args: ToolArgs, ctx: ToolContext) -> ToolResult:
        assert isinstance(args, KbSearchArgs)
        hits = await _store(ctx).search(ctx.tenant_id, args.query, limit=args.limit)
        return ToolResult({"results": [asdict(h) for h in hits]})


class KbDeleteTool(_KbTool):
    name: ClassVar[str] = "kb.delete"
    args_model: ClassVar[type[ToolArgs]] = KbDeleteArgs
    risk: ClassVar[str] = "medium"  # removes what other runs of the tenant may rely on
    side_effects: ClassVar[bool] = True  # as storage.delete: a repeat in the run is answered from the first

    def resource(self, args: ToolArgs, ctx: ToolContext) -> str | None:
        assert isinstance(args, KbDeleteArgs)
        return _resource(args.doc_id)

    async def run(self, args: ToolArgs, ctx: ToolContext) -> ToolResult:
        assert isinstance(args, KbDeleteArgs)
        deleted = await _store(ctx).delete(ctx.tenant_id, args.doc_id)
        return ToolResult({"doc_id": args.doc_id, "deleted": deleted})
