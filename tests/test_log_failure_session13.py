"""An outage is logged in one line, a bug with its traceback (session 13).

A worker frozen for a moment (a VM pause) found Redis "not answering" when it thawed: each failed event
publish was logged with a full traceback, which reads as a crash (the multi-process tests refuse any
"Traceback" in a worker's log). Outages name their cause; only the unexpected shows where it happened.
"""

from __future__ import annotations

import logging

from supervisor.errors import StockadeError, log_failure

log = logging.getLogger("stockade.test")


def test_an_outage_is_one_line_and_a_bug_has_its_traceback(caplog):
    with caplog.at_level(logging.WARNING, logger="stockade.test"):
        try:
            raise StockadeError("store.unavailable", "the live event stream is away")
        except StockadeError:
            log_failure(log, "event bus publish failed for %s seq %s", "run_1", 6)
        try:
            raise KeyError("seq")
        except KeyError:
            log_failure(log, "event bus publish failed for %s seq %s", "run_1", 7)
        try:
            raise StockadeError("input.invalid", "not an outage")
        except StockadeError:
            log_failure(log, "sweep of %s failed", "ledger")
    outage, bug, other = caplog.records
    assert outage.getMessage() == ("event bus publish failed for run_1 seq 6: store.unavailable: "
                                   "the live event stream is away")
    assert outage.exc_info is None and "Traceback" not in caplog.text.split("\n")[0]
    assert bug.getMessage() == "event bus publish failed for run_1 seq 7" and bug.exc_info is not None
    assert other.exc_info is not None  # an error that is no outage is a bug here: where it happened is shown
    assert all(r.levelno == logging.WARNING for r in caplog.records)
