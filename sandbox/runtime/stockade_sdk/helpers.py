"""Typed helpers over ``ctx.call``: ``ctx.llm``, ``ctx.http``, ``ctx.kb``, ``ctx.storage``."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

__all__ = ["Http", "Kb", "Llm", "Storage"]


class _Helper:
    def __init__(self, ctx: Any) -> None:
        self._ctx = ctx


class Llm(_Helper):
    async def chat(self, messages: list[dict[str, str]] | str, model: str = "openai/gpt-4.1-mini", **kw: Any) -> dict[str, Any]:
        """One chat completion; with ``stream`` (default) deltas also reach the run's ``answer`` channel."""
        if isinstance(messages, str):
            messages = [{"role": "user", "content": messages}]
        return await self._ctx.call("llm.chat", model=model, messages=messages, **kw)

    async def stream(self, messages: list[dict[str, str]] | str, model: str = "openai/gpt-4.1-mini", **kw: Any) -> AsyncIterator[dict[str, Any]]:
        if isinstance(messages, str):
            messages = [{"role": "user", "content": messages}]
        async for chunk in self._ctx.stream("llm.chat", model=model, messages=messages, stream=True, **kw):
            yield chunk


class Http(_Helper):
    async def request(self, method: str, url: str, **kw: Any) -> dict[str, Any]:
        return await self._ctx.call("http.request", method=method, url=url, **kw)

    async def get(self, url: str, **kw: Any) -> dict[str, Any]:
        return await self.request("GET", url, **kw)

    async def post(self, url: str, body: str = "", **kw: Any) -> dict[str, Any]:
        return await self.request("POST", url, body=body, **kw)


class Kb(_Helper):
    async def add(self, text: str, **kw: Any) -> dict[str, Any]:
        return await self._ctx.call("kb.add", text=text, **kw)

    async def search(self, query: str, **kw: Any) -> dict[str, Any]:
        return await self._ctx.call("kb.search", query=query, **kw)

    async def delete(self, doc_id: str, **kw: Any) -> dict[str, Any]:
        return await self._ctx.call("kb.delete", doc_id=doc_id, **kw)


class Storage(_Helper):
    async def read(self, path: str, **kw: Any) -> dict[str, Any]:
        return await self._ctx.call("storage.read", path=path, **kw)

    async def write(self, path: str, content: str, **kw: Any) -> dict[str, Any]:
        return await self._ctx.call("storage.write", path=path, content=content, **kw)

    async def list(self, path: str = "", **kw: Any) -> dict[str, Any]:
        return await self._ctx.call("storage.list", path=path, **kw)

    async def delete(self, path: str, **kw: Any) -> dict[str, Any]:
        return await self._ctx.call("storage.delete", path=path, **kw)
