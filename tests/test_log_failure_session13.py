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


def test_an_outage_is_told_when_it_starts_and_ends_not_every_iteration(caplog, monkeypatch):
    """``Outage`` (a background loop's view): the first failure at WARNING, the repeats at DEBUG until a reminder
    is due, one line when it works again; a bug keeps its traceback on the first line."""
    from supervisor import errors
    from supervisor.errors import Outage

    clock = [1000.0]
    monkeypatch.setattr(errors.time, "monotonic", lambda: clock[0])
    log = logging.getLogger("stockade.test.outage")
    outage = Outage(log, "the queue")
    caplog.set_level(logging.DEBUG, logger="stockade.test.outage")
    for _ in range(30):
        try:
            raise StockadeError("store.unavailable", "Redis away")
        except StockadeError:
            outage.failed("queue unavailable; retrying")
        clock[0] += 1.0
    outage.ok()
    outage.ok()
    told = [(r.levelname, r.getMessage()) for r in caplog.records if r.levelno >= logging.INFO]
    assert told == [("WARNING", "queue unavailable; retrying: store.unavailable: Redis away"),
                    ("INFO", "the queue works again (after 30 s)")], told
    caplog.clear()
    clock[0] += 100
    for _ in range(3):  # a new outage, long enough for a reminder
        try:
            raise ValueError("a bug")
        except ValueError:
            outage.failed("sweep of %s failed", "ledger")
        clock[0] += Outage.REMIND_S
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert [r.getMessage() for r in warnings] == ["sweep of ledger failed", "sweep of ledger failed (failing for 60 s)",
                                                  "sweep of ledger failed (failing for 120 s)"]
    assert all(r.exc_info for r in warnings)
