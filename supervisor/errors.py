"""The one error hierarchy and the one table mapping codes to HTTP status.

Every error has a stable dotted ``code`` and a ``retryable`` flag. The same
code travels over the socket to the in-sandbox SDK (``ToolError.code``), into
SSE ``run.failed`` / ``tool.result`` events and into problem+json bodies.
"""

from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass
from typing import Any

__all__ = ["ERRORS", "ErrorSpec", "StockadeError", "log_failure", "spec_for"]


@dataclass(frozen=True)
class ErrorSpec:
    code: str
    http_status: int
    retryable: bool
    title: str


def _t(*specs: ErrorSpec) -> dict[str, ErrorSpec]:
    return {s.code: s for s in specs}


# The one table. Add a row to add an error; never rename a code.
ERRORS: dict[str, ErrorSpec] = _t(
    ErrorSpec("input.invalid", 422, False, "Invalid input"),
    ErrorSpec("input.too_large", 413, False, "Payload too large"),
    ErrorSpec("input.unsupported_media", 415, False, "Unsupported media type"),
    ErrorSpec("input.method_not_allowed", 405, False, "Method not allowed"),
    ErrorSpec("input.not_acceptable", 406, False, "Not acceptable: the Accept header admits no type this route serves"),
    ErrorSpec("auth.missing", 401, False, "Authentication required"),
    ErrorSpec("auth.invalid", 401, False, "Invalid API key"),
    ErrorSpec("auth.forbidden", 403, False, "Forbidden for this role"),
    ErrorSpec("project.not_member", 403, False, "The user is not a member of the project"),
    ErrorSpec("not_found", 404, False, "Not found"),
    ErrorSpec("conflict", 409, False, "Conflict"),
    ErrorSpec("idempotency.mismatch", 422, False, "Idempotency key reused with a different body"),
    ErrorSpec("idempotency.in_progress", 409, True, "A request with this idempotency key is in progress"),
    ErrorSpec("idempotency.interrupted", 409, False, "The first call with this idempotency key was cut off; its outcome is unknown"),
    ErrorSpec("policy.denied", 403, False, "Denied by policy"),
    ErrorSpec("policy.invalid", 422, False, "Invalid policy"),
    ErrorSpec("policy.unavailable", 503, True, "Policy unavailable"),
    ErrorSpec("budget.exceeded", 402, False, "Budget exceeded"),
    ErrorSpec("ledger.unavailable", 503, True, "Ledger unavailable"),
    ErrorSpec("rate.limited", 429, True, "Rate limited"),
    ErrorSpec("rate.unavailable", 503, True, "Rate limiter unavailable"),
    ErrorSpec("approval.rejected", 403, False, "Approval rejected"),
    ErrorSpec("approval.expired", 403, False, "Approval expired"),
    ErrorSpec("approval.already_decided", 409, False, "Approval already decided"),
    ErrorSpec("approval.separation", 403, False, "Separation of duties: the run's own key or user, or a key made after the request, may not decide its approval"),
    ErrorSpec("audit.unavailable", 503, True, "Audit log unavailable"),
    ErrorSpec("audit.corrupt", 500, False, "An audit record fails verification"),
    ErrorSpec("tool.unknown", 404, False, "Unknown tool"),
    ErrorSpec("tool.failed", 502, True, "Tool failed"),
    ErrorSpec("tool.timeout", 504, True, "Tool timed out"),
    ErrorSpec("tool.unavailable", 503, True, "Tool unavailable"),
    ErrorSpec("tool.quarantined", 403, False, "Tool definition changed; quarantined"),
    ErrorSpec("egress.blocked", 403, False, "Egress to this address is blocked"),
    ErrorSpec("egress.too_large", 502, False, "Response larger than the egress size cap"),
    ErrorSpec("egress.too_many_redirects", 502, False, "Too many redirects"),
    ErrorSpec("storage.escape", 403, False, "Path escapes the storage root"),
    ErrorSpec("storage.not_found", 404, False, "No such file"),
    ErrorSpec("storage.quota", 413, False, "Storage quota exceeded"),
    ErrorSpec("kb.quota", 413, False, "Knowledge base quota exceeded"),
    ErrorSpec("llm.unconfigured", 503, False, "LLM provider not configured"),
    ErrorSpec("llm.provider_error", 502, True, "LLM provider error"),
    ErrorSpec("llm.circuit_open", 503, True, "LLM provider circuit open"),
    ErrorSpec("bundle.invalid", 422, False, "Invalid bundle"),
    ErrorSpec("bundle.not_found", 404, False, "Bundle not found"),
    ErrorSpec("archive.absolute_path", 422, False, "Archive member has an absolute path"),
    ErrorSpec("archive.path_traversal", 422, False, "Archive member escapes the bundle"),
    ErrorSpec("archive.link", 422, False, "Archive member is a link pointing out"),
    ErrorSpec("archive.special_file", 422, False, "Archive member is a device or special file"),
    ErrorSpec("archive.too_many_files", 422, False, "Archive has too many files"),
    ErrorSpec("archive.too_large", 413, False, "Archive unpacks too large"),
    ErrorSpec("archive.invalid", 422, False, "Not a valid tar.gz or zip archive"),
    ErrorSpec("run.not_cancelable", 409, False, "Run already ended"),
    ErrorSpec("run.timed_out", 408, False, "Run timed out"),
    ErrorSpec("run.canceled", 409, False, "Run canceled"),
    ErrorSpec("run.failed", 500, False, "Run failed"),
    ErrorSpec("run.worker_lost", 500, True, "The worker running this run was lost"),
    ErrorSpec("run.ended", 409, False, "The call's run has already ended, or another worker carries it"),
    ErrorSpec("call.canceled", 409, False, "The bundle canceled the call"),
    ErrorSpec("limit.memory", 507, False, "Sandbox memory limit reached"),
    ErrorSpec("limit.cpu", 408, False, "Sandbox CPU limit reached"),
    ErrorSpec("limit.output", 413, False, "Sandbox output limit reached"),
    ErrorSpec("limit.events", 429, False, "Sandbox event rate limit reached"),
    ErrorSpec("limit.disk", 507, False, "Sandbox disk limit reached"),
    ErrorSpec("sandbox.unavailable", 503, False, "Sandbox backend unavailable"),
    ErrorSpec("sandbox.crashed", 500, False, "Sandbox exited abnormally"),
    ErrorSpec("peer.rejected", 403, False, "Socket peer is not this run's sandbox"),
    ErrorSpec("frame.invalid", 400, False, "Malformed frame"),
    ErrorSpec("frame.too_large", 413, False, "Frame too large"),
    ErrorSpec("frame.identity", 403, False, "Frame names another tenant or run"),
    ErrorSpec("store.unavailable", 503, True, "Store unavailable"),
    ErrorSpec("store.misconfigured", 503, False, "Store misconfigured"),
    ErrorSpec("secret.unreadable", 500, False, "A stored secret cannot be opened"),
    ErrorSpec("settings.invalid", 500, False, "Invalid settings"),  # the CLI's, at start-up: never served
    ErrorSpec("receipt.invalid", 422, False, "Receipt signature does not verify"),  # `stockade receipt verify`
    # this node's signing key stopped being the deployment's while it ran (supervisor/audit/signing_watch.py):
    # retryable - another node signs, and so does this one once restarted with the deployment's key
    ErrorSpec("receipt.foreign_key", 503, True, "This node's receipt signing key is not the deployment's"),
    ErrorSpec("internal", 500, True, "Internal error"),
)


def spec_for(code: str) -> ErrorSpec:
    return ERRORS.get(code) or ERRORS["internal"]


class StockadeError(Exception):
    """Base of every error Stockade raises on purpose.

    ``detail`` is a human sentence safe to show the tenant - except for the
    codes of ``_OPERATOR_DETAIL``, whose detail names the operator's
    infrastructure (a database address, a file path, a driver's message): a
    tenant is shown ``public_detail`` (API bodies, tool error frames, events,
    audit records), the operator the full ``detail`` (CLI, server log).
    ``extra`` holds structured members (``tier``, ``retry_after``, ``rule_id``
    ...) that are copied into problem+json bodies and tool error frames.
    """

    def __init__(self, code: str, detail: str = "", **extra: Any) -> None:
        if code not in ERRORS:
            raise ValueError(f"unknown error code {code!r}: add it to ERRORS")
        self.code = code
        self.detail = detail or ERRORS[code].title
        self.extra = extra
        super().__init__(f"{code}: {self.detail}")

    @property
    def spec(self) -> ErrorSpec:
        return ERRORS[self.code]

    @property
    def retryable(self) -> bool:
        return self.spec.retryable

    @property
    def http_status(self) -> int:
        return self.spec.http_status

    @property
    def public_detail(self) -> str:
        """``detail`` as a tenant may see it (see the class docstring)."""
        return _OPERATOR_DETAIL.get(self.code, self.detail)

    def to_dict(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.public_detail, "retryable": self.retryable, **self.extra}


# Codes whose detail is the operator's: what tenants are told instead.
_OPERATOR_DETAIL = {
    "store.unavailable": "The store cannot be reached right now; try again later.",
    "store.misconfigured": "The store is misconfigured; the operator can see why in the server log.",
    "audit.unavailable": "The audit log cannot be reached right now; try again later.",  # wraps store.unavailable
    # names this node's key settings (logged once, in full, by supervisor/audit/signing_watch.py)
    "receipt.foreign_key": "This node cannot sign receipts: its signing key is not the deployment's. Try again "
                           "(another node may answer); the operator can see why in the server log.",
}


def log_failure(logger: logging.Logger, message: str, *args: Any) -> None:
    """Log the exception being handled, at WARNING: an outage (a ``StockadeError`` whose code ends in
    ``.unavailable``: the store, the bus or the ledger away) in one line, its cause named; anything else
    with its traceback, which says where the bug is. (A node that cannot reach Redis for a while - a
    restart, a VM pause - must not fill its log with tracebacks that look like crashes.)"""
    exc = sys.exc_info()[1]
    if isinstance(exc, StockadeError) and exc.code.endswith(".unavailable"):
        logger.warning(message + ": %s", *args, exc)
    else:
        logger.warning(message, *args, exc_info=True)


class Outage:
    """What a background loop (a sweep step, the queue claim) says of an outage it meets every iteration: the
    first failure (``log_failure``), a reminder every ``REMIND_S`` while it lasts, the recovery once; the
    repeats in between at DEBUG. (A 10 s outage wrote 86 WARNING lines: each sweep step every sweep, the
    claim loop every second.)"""

    REMIND_S = 60.0

    def __init__(self, logger: logging.Logger, what: str) -> None:
        self._log, self._what = logger, what
        self._since: float | None = None
        self._told = 0.0

    def failed(self, message: str, *args: Any) -> None:
        """Call in an ``except`` block, as ``log_failure``."""
        now = time.monotonic()
        if self._since is None:
            self._since = self._told = now
            log_failure(self._log, message, *args)
        elif now - self._told >= self.REMIND_S:
            self._told = now
            log_failure(self._log, message + " (failing for %d s)", *args, int(now - self._since))
        else:
            self._log.debug(message + ": %s", *args, sys.exc_info()[1])

    def ok(self) -> None:
        if self._since is not None:
            self._log.info("%s works again (after %.0f s)", self._what, time.monotonic() - self._since)
            self._since = None
