"""The execution plane's one error type.

``sandbox/`` may not import from ``supervisor/`` (imports point down only), so
it raises ``SandboxError`` carrying the same stable dotted codes as the
supervisor's error table (``sandbox.unavailable``, ``input.invalid``). The
supervisor re-raises it as ``StockadeError(exc.code, exc.detail)``.
"""

from __future__ import annotations

__all__ = ["SandboxError"]


class SandboxError(Exception):
    """A sandbox could not be prepared or started; ``detail`` is one sentence."""

    def __init__(self, code: str, detail: str) -> None:
        self.code = code
        self.detail = detail
        super().__init__(f"{code}: {detail}")
