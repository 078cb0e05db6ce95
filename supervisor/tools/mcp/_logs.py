"""Keep the credentials of tenants' MCP servers out of the process's logs.

The HTTP client under the MCP SDK (httpx2) logs every exchange at INFO with the
whole URL - ``HTTP Request: POST http://h/mcp?token=... "HTTP/1.1 200 OK"`` -
and many hosted MCP servers take their key in the query. The SDK logs the URL
too (DEBUG), httpcore logs response headers (DEBUG: a server echoing the
Authorization header), and errors and tracebacks may quote either. The API,
the audit log and the bundle already see these redacted (``redact_query``,
``map_error``); this is the same rule for the logs.

``RedactingFilter`` rewrites a record before any handler sees it: the query
values of every URL in its message (and traceback) become ``[redacted]``, and
so does every header or query value of a server this process has connected to
(``remember_secrets``, called for each connection). It is put on the loggers
of httpx2, httpx, httpcore(2) and the SDK when the SDK is first imported
(``protect_sdk_loggers``), so it holds whatever handlers an operator
configures; ``stockade serve`` also puts it on the root handlers
(``protect_logs``), for any other logger. Requests stay visible, only the
values go.
"""

from __future__ import annotations

import logging
import re
import threading
from collections import OrderedDict
from collections.abc import Iterable

from supervisor.tools.mcp._egress import redact_query
from supervisor.tools.mcp._redact import redact_words, server_secrets

__all__ = ["RedactingFilter", "protect_logs", "protect_sdk_loggers", "redact_text", "remember_secrets"]

MAX_WORDS = 4096  # the credentials of the servers used most recently (each connection remembers its own again)
_PREFIXES = ("httpx2", "httpx", "httpcore2", "httpcore", "mcp", "mcp_types")
# Created by modules imported only when a first connection is made: named here so they have the filter from
# the start ("client" is the SDK's client session).
_KNOWN = ("httpx2", "httpx", "mcp", "client", *(f"{p}.{m}" for p in ("httpcore2", "httpcore")
                                                 for m in ("connection", "http11", "http2", "proxy", "socks")))
# A URL with a query, as it appears in a message, a repr (URL('...')) or a traceback.
_URL_WITH_QUERY = re.compile(r"(?i)\bhttps?://[^\s\"'<>?]*\?[^\s\"'<>]*")

_lock = threading.Lock()
_words: OrderedDict[str, None] = OrderedDict()
_snapshot: tuple[str, ...] = ()  # longest first; read without the lock (filters run on any thread)


def remember_secrets(headers: dict[str, str], url: str) -> None:
    """A server's header values and URL query values: cut out of every log record from now on."""
    global _snapshot
    new = server_secrets(headers, url)
    if not new:
        return
    with _lock:
        changed = False
        for w in new:
            if w in _words:
                _words.move_to_end(w)
            else:
                _words[w] = None
                changed = True
        while len(_words) > MAX_WORDS:
            _words.popitem(last=False)
            changed = True
        if changed:
            _snapshot = tuple(sorted(_words, key=len, reverse=True))


def redact_text(text: str) -> str:
    if "?" in text:
        text = _URL_WITH_QUERY.sub(lambda m: redact_query(m.group(0)), text)
    return redact_words(text, _snapshot)


class RedactingFilter(logging.Filter):
    """Rewrites the record (message, traceback, stack) with credentials cut out; never drops one."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            msg = record.getMessage()
        except Exception:  # a record that cannot be formatted: the handler reports it, as without us
            return True
        clean = redact_text(msg)
        if clean != msg:
            record.msg, record.args = clean, None
        if record.exc_info and not record.exc_text:
            text = logging.Formatter().formatException(record.exc_info)
            clean = redact_text(text)
            if clean != text:
                record.exc_text = clean  # formatters use exc_text when set, instead of formatting exc_info
        elif record.exc_text:
            record.exc_text = redact_text(record.exc_text)
        if record.stack_info:
            record.stack_info = redact_text(record.stack_info)
        return True


_FILTER = RedactingFilter()


def _protect(target: logging.Filterer) -> None:
    if not any(isinstance(f, RedactingFilter) for f in target.filters):
        target.addFilter(_FILTER)


def protect_sdk_loggers() -> None:
    """The filter on every logger of httpx2, httpx, httpcore(2) and the MCP SDK that exists now (a filter on a
    parent logger does not see its children's records, so each gets its own)."""
    for name in _KNOWN:
        _protect(logging.getLogger(name))
    for name, logger in list(logging.root.manager.loggerDict.items()):
        if isinstance(logger, logging.Logger) and name.split(".", 1)[0] in _PREFIXES:
            _protect(logger)


def protect_logs(handlers: Iterable[logging.Handler] | None = None) -> None:
    """The filter on ``handlers`` (default: the root logger's), and on the SDK's loggers."""
    for h in logging.getLogger().handlers if handlers is None else handlers:
        _protect(h)
    protect_sdk_loggers()
