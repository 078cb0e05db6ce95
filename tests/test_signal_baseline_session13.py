"""The suite's Ctrl-C test holds however the test run was started (session 13).

A test run started in the background by a non-interactive shell (``make test &`` in a script, as a CI
job may be launched) inherits SIGINT *ignored*; CPython keeps it so, and every child process inherits it
too. The CLI's Ctrl-C test then saw no KeyboardInterrupt (the command returned 0): the one failure of
session 12's clean-clone CI run, which passed alone and in its file (started from a terminal). The suite
now gives each test what a process started in a terminal has (tests/conftest.py).
"""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.timeout(120)
def test_the_ctrl_c_test_passes_in_a_run_started_with_sigint_ignored():
    def ignore_sigint() -> None:
        signal.signal(signal.SIGINT, signal.SIG_IGN)

    r = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
         "tests/test_cli.py::test_audit_verify_stops_on_ctrl_c", "tests/test_cli.py::test_ctrl_c_anywhere_is_one_line"],
        cwd=ROOT, preexec_fn=ignore_sigint, capture_output=True, text=True, timeout=110,
    )
    assert r.returncode == 0 and "2 passed" in r.stdout, r.stdout[-3000:] + r.stderr[-2000:]
