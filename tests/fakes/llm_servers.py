"""A fake LLM provider: a real HTTP/1.1 server speaking the OpenAI and Anthropic wire protocols.

One server answers ``POST /v1/chat/completions``, ``POST /v1/responses`` and
``POST /v1/messages`` (JSON or SSE, as the request asks), so the real
``openai`` and ``anthropic`` SDKs run unmodified against it. It runs on its own
event loop in a daemon thread, which makes it usable from any pytest fixture,
from end-to-end tests whose supervisor runs elsewhere, and from ``make run``::

    with FakeLLMServer() as srv:                       # 127.0.0.1, a free port
        srv.enqueue(Script(status=429), Script(text="hi", abort_after_deltas=1))
        Settings(openai_base_url=srv.openai_base_url, anthropic_base_url=srv.anthropic_base_url, ...)
        ...
        srv.requests[-1].body["max_tokens"]

    python -m tests.fakes.llm_servers --port 8911       # friendly echo replies until Ctrl-C

Scripts are consumed one per request from the queue; when it is empty,
``srv.script`` answers. Responses use chunked transfer encoding so connections
are kept alive (the SDKs pool them); a mid-stream failure aborts the TCP
connection without the terminating chunk, exactly what a dying upstream does
(``end_after_deltas`` ends it cleanly instead, short of the answer's final
events; ``body`` answers with any 200 body at all).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import threading
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from tests.fakes._anthropic_wire import anthropic_error, messages_json, messages_problem, messages_stream
from tests.fakes._openai_wire import (
    chat_json,
    chat_stream,
    openai_error,
    responses_json,
    responses_stream,
)
from tests.fakes._script import Item, Script, ToolCallSpec, sse

__all__ = ["FakeLLMServer", "ReceivedRequest", "Script", "ToolCallSpec", "main"]

_REASONS = {
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    404: "Not Found",
    429: "Too Many Requests",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
    529: "Overloaded",
}


@dataclass(frozen=True)
class ReceivedRequest:
    method: str
    path: str
    headers: dict[str, str]  # lower-case names
    body: Any  # parsed JSON, or None


class FakeLLMServer:
    def __init__(
        self, script: Script | None = None, *, host: str = "127.0.0.1", port: int = 0, api_key: str | None = None
    ) -> None:
        self.script = script or Script()
        self.api_key = api_key  # when set, requests with another key get 401 in the provider's format
        self.requests: list[ReceivedRequest] = []
        self._queue: deque[Script] = deque()
        self._lock = threading.Lock()
        self._host, self._port = host, port
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.Server | None = None
        self._thread: threading.Thread | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    # --- scripting

    def enqueue(self, *scripts: Script) -> None:
        with self._lock:
            self._queue.extend(scripts)

    def reset(self, script: Script | None = None) -> None:
        with self._lock:
            self._queue.clear()
            self.requests.clear()
            self.script = script or Script()

    def count(self, path: str | None = None) -> int:
        return sum(1 for r in list(self.requests) if path is None or r.path == path)

    def _next_script(self) -> Script:
        with self._lock:
            return self._queue.popleft() if self._queue else self.script

    # --- addresses

    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        return f"http://{self._host}:{self._port}"

    @property
    def openai_base_url(self) -> str:
        return self.url + "/v1"

    @property
    def anthropic_base_url(self) -> str:
        return self.url

    # --- lifecycle

    def start(self) -> FakeLLMServer:
        ready = threading.Event()
        errors: list[BaseException] = []

        def serve() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                self._server = loop.run_until_complete(
                    asyncio.start_server(self._on_connection, self._host, self._port)
                )
                self._port = self._server.sockets[0].getsockname()[1]
            except BaseException as exc:  # surfaced to the caller of start()
                errors.append(exc)
                ready.set()
                return
            ready.set()
            loop.run_forever()
            loop.close()

        self._thread = threading.Thread(target=serve, name="fake-llm", daemon=True)
        self._thread.start()
        ready.wait(10)
        if errors:
            raise errors[0]
        return self

    def stop(self) -> None:
        loop = self._loop
        if loop is None or self._thread is None:
            return

        async def shutdown() -> None:
            if self._server is not None:
                self._server.close()
            for t in list(self._tasks):
                t.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            loop.stop()

        asyncio.run_coroutine_threadsafe(shutdown(), loop)
        self._thread.join(10)
        self._loop = None

    def __enter__(self) -> FakeLLMServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- HTTP/1.1

    async def _on_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
                    return
                method, path, headers = _parse_head(head)
                body_bytes = await _read_body(reader, headers)
                keep = await self._dispatch(method, path, headers, body_bytes, writer)
                if not keep or headers.get("connection", "").lower() == "close":
                    return
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        except asyncio.CancelledError:
            return  # stop(): swallowed so asyncio's stream callback does not log the cancellation
        finally:
            self._tasks.discard(task)
            if not writer.is_closing():
                writer.close()

    async def _dispatch(
        self, method: str, path: str, headers: dict[str, str], raw: bytes, writer: asyncio.StreamWriter
    ) -> bool:
        path = path.split("?", 1)[0]
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        if method == "GET" and path in ("/health", "/healthz"):
            await _send_json(writer, 200, {"ok": True})
            return True
        routes = {"/v1/chat/completions": "chat", "/v1/responses": "responses", "/v1/messages": "messages"}
        kind = routes.get(path)
        if method != "POST" or kind is None or not isinstance(body, dict):
            await _send_json(writer, 404, {"error": {"message": f"no route {method} {path}", "type": "not_found"}})
            return True
        self.requests.append(ReceivedRequest(method, path, headers, body))
        script = self._next_script()
        if script.stall_s:
            await asyncio.sleep(script.stall_s)  # the client's timeout is what is under test
        error_body = anthropic_error if kind == "messages" else openai_error
        if self.api_key is not None and _presented_key(kind, headers) != self.api_key:
            await _send_json(writer, 401, error_body(401))
            return True
        if script.status != 200:
            extra = {"retry-after": f"{script.retry_after:g}"} if script.retry_after is not None else {}
            await _send_json(writer, script.status, error_body(script.status), extra)
            return True
        if script.body is not None:
            await _send_body(writer, 200, script.body, script.content_type)
            return True
        if kind == "messages":
            if (problem := messages_problem(body)) is not None:
                await _send_json(writer, 400, {**anthropic_error(400), "error": {"type": "invalid_request_error",
                                                                                 "message": problem}})
                return True
            body.setdefault("model", "fake")
        if body.get("stream"):
            stream = {"chat": chat_stream, "responses": responses_stream, "messages": messages_stream}[kind]
            return await _send_stream(writer, stream(script, body), script, _stream_error(kind))
        build = {"chat": chat_json, "responses": responses_json, "messages": messages_json}[kind]
        await _send_json(writer, 200, build(script, body))
        return True


def _presented_key(kind: str, headers: dict[str, str]) -> str | None:
    if kind == "messages" and "x-api-key" in headers:  # older anthropic SDKs; newer ones send a bearer token
        return headers["x-api-key"]
    auth = headers.get("authorization", "")
    return auth[7:] if auth.lower().startswith("bearer ") else None


def _parse_head(head: bytes) -> tuple[str, str, dict[str, str]]:
    lines = head.decode("latin-1").split("\r\n")
    method, path, _ = lines[0].split(" ", 2)
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if ":" in line:
            k, v = line.split(":", 1)
            headers[k.strip().lower()] = v.strip()
    return method, path, headers


async def _read_body(reader: asyncio.StreamReader, headers: dict[str, str]) -> bytes:
    if headers.get("transfer-encoding", "").lower() == "chunked":
        out = bytearray()
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            chunk = await reader.readexactly(size + 2)
            if size == 0:
                return bytes(out)
            out += chunk[:-2]
    n = int(headers.get("content-length", "0") or 0)
    return await reader.readexactly(n) if n else b""


def _status_line(status: int) -> bytes:
    return f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}\r\n".encode()


async def _send_json(writer: asyncio.StreamWriter, status: int, data: Any, extra: dict[str, str] | None = None) -> None:
    await _send_body(writer, status, json.dumps(data).encode(), "application/json", extra)


async def _send_body(
    writer: asyncio.StreamWriter, status: int, payload: bytes, content_type: str, extra: dict[str, str] | None = None
) -> None:
    head = _status_line(status) + f"content-type: {content_type}\r\n".encode()
    head += b"request-id: req_fake\r\nx-request-id: req_fake\r\n"
    for k, v in (extra or {}).items():
        head += f"{k}: {v}\r\n".encode()
    head += f"content-length: {len(payload)}\r\n\r\n".encode()
    writer.write(head + payload)
    await writer.drain()


def _stream_error(kind: str) -> bytes:
    """The event a provider sends when it fails inside an already-started 200 stream."""
    if kind == "messages":
        return sse({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}, event="error")
    if kind == "responses":
        data = {
            "type": "error",
            "code": "server_error",
            "message": "The model failed.",
            "param": None,
            "sequence_number": 999,
        }
        return sse(data, event="error")
    return sse({"error": {"message": "The server had an error.", "type": "server_error", "param": None, "code": None}})


async def _send_stream(writer: asyncio.StreamWriter, body: Iterator[Item], script: Script, error_event: bytes) -> bool:
    head = _status_line(200) + b"content-type: text/event-stream; charset=utf-8\r\ncache-control: no-cache\r\n"
    head += b"request-id: req_fake\r\nx-request-id: req_fake\r\ntransfer-encoding: chunked\r\n\r\n"
    writer.write(head)
    sent = 0
    for item in body:
        if script.abort_after_deltas is not None and item.counts and sent >= script.abort_after_deltas:
            await writer.drain()
            writer.transport.abort()  # no terminating chunk: the client sees a broken stream
            return False
        if script.hold_after_deltas is not None and item.counts and sent >= script.hold_after_deltas:
            await writer.drain()
            await asyncio.sleep(3600)  # mid-answer, silent: until the client goes away (the server closes it)
        if script.error_after_deltas is not None and item.counts and sent >= script.error_after_deltas:
            writer.write(b"%x\r\n%s\r\n" % (len(error_event), error_event))
            break
        if script.end_after_deltas is not None and sent >= script.end_after_deltas and (item.counts or sent):
            break  # the terminating chunk follows: a clean end, without what closes an answer
        writer.write(b"%x\r\n%s\r\n" % (len(item.data), item.data))
        await writer.drain()  # one TCP write per event, as a real provider streams
        sent += item.counts
    writer.write(b"0\r\n\r\n")
    await writer.drain()
    return True


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Serve fake OpenAI + Anthropic APIs with friendly echo replies.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8911)
    parser.add_argument(
        "--thinking",
        default="The user wants a reply; I will echo their words back kindly.",
        help="reasoning text streamed before each answer ('' for none)",
    )
    args = parser.parse_args(argv)
    script = Script(echo_prefix="Hello! I am Stockade's fake model. You said: ", thinking=args.thinking)
    srv = FakeLLMServer(script, host=args.host, port=args.port).start()
    print(
        f"fake LLM server on {srv.url}  (STOCKADE_OPENAI_BASE_URL={srv.openai_base_url} "
        f"STOCKADE_ANTHROPIC_BASE_URL={srv.anthropic_base_url})",
        flush=True,
    )
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        srv.stop()


if __name__ == "__main__":
    main()
