"""Two workers on one host never share sandbox uids: the second to claim an overlapping range is refused.

Found by a walkthrough: two `stockade worker`s left at the same STOCKADE_SANDBOX_UID_BASE gave one uid to
runs of two tenants; a fork bomb in one tenant's bundle (RLIMIT_NPROC counts per uid) crashed every run of the
other worker, and each worker's start-up reaped the other's live sandboxes as orphans.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from sandbox.errors import SandboxError
from sandbox.uid_claim import claim_uid_range

ROOT = Path(__file__).resolve().parents[2]


def _holder(lock: Path, base: int, count: int) -> subprocess.Popen:
    """Another process holding a claim until its stdin closes; returns once the claim is made."""
    code = textwrap.dedent(f"""
        import sys
        from pathlib import Path
        from sandbox.uid_claim import claim_uid_range
        claim_uid_range({base}, {count}, Path({str(lock)!r}))
        print("held", flush=True)
        sys.stdin.read()
    """)
    p = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "held"
    return p


@pytest.mark.timeout(30)
def test_overlapping_ranges_of_two_processes_conflict(tmp_path: Path) -> None:
    lock = tmp_path / "run" / "sandbox-uids.lock"
    holder = _holder(lock, 500_000, 100)
    try:
        for base, count in ((500_000, 100), (500_099, 10), (499_950, 51), (499_000, 5_000)):
            with pytest.raises(SandboxError) as ei:
                claim_uid_range(base, count, lock)
            assert ei.value.code == "sandbox.uids_taken" and "STOCKADE_SANDBOX_UID_BASE" in ei.value.detail
        claim_uid_range(500_100, 100, lock).release()  # the next range: free
        claim_uid_range(499_900, 100, lock).release()
    finally:
        holder.stdin.close()
        holder.wait(10)
    # the holder is gone (however it ended): its range is free, no stale lock left behind
    claim_uid_range(500_000, 100, lock).release()
    holder = subprocess.Popen([sys.executable, "-c", f"from pathlib import Path; from sandbox.uid_claim import "
                               f"claim_uid_range; claim_uid_range(500000, 100, Path({str(lock)!r})); import os; "
                               "os.kill(os.getpid(), 9)"], cwd=ROOT)
    holder.wait(10)
    claim_uid_range(500_000, 100, lock).release()


def test_claims_in_one_process(tmp_path: Path) -> None:
    lock = tmp_path / "sandbox-uids.lock"
    a = claim_uid_range(600_000, 50, lock)
    b = claim_uid_range(600_000, 50, lock)  # the same range again (in-process nodes of a test run): shared
    with pytest.raises(SandboxError):
        claim_uid_range(600_010, 50, lock)  # an overlapping other range: refused, in this process too
    a.release()
    with pytest.raises(SandboxError):
        claim_uid_range(600_010, 50, lock)  # still held by b
    b.release()
    b.release()  # twice: harmless
    claim_uid_range(600_010, 50, lock).release()
