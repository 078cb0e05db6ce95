"""`stockade serve` stopped with SIGTERM (docker stop, systemd) stops its runtime before it exits.

Found by a walkthrough (session 18): uvicorn, once shut down after a SIGTERM, raised the signal again with the
handler it had found - the default, which ends the process at once - so the runtime was never stopped: calls
in flight were not settled and the warm sandboxes' folders were left in the data dir (the next start swept
them as "left by a worker that died").
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.e2e.harness import make_data_dir, worker_uid_env

pytestmark = pytest.mark.timeout(120)
ROOT = Path(__file__).resolve().parents[1]


def _warm(data: Path) -> list[str]:
    runs = data / "runs"
    return sorted(p.name for p in runs.iterdir() if p.name.startswith("_warm_")) if runs.exists() else []


@pytest.mark.skipif(os.geteuid() != 0, reason="warm sandboxes need root (bubblewrap with a uid of their own)")
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_serve_stopped_by_a_signal_stops_its_runtime_first(tmp_path, sig):
    data = make_data_dir()  # (the sandbox's uid must reach it: pytest's tmp_path is private to root)
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("STOCKADE_")},
           "STOCKADE_DATA_DIR": str(data), "STOCKADE_BUNDLES_DIR": str(tmp_path / "none"),
           "STOCKADE_PORT": "0", "STOCKADE_SANDBOX_WARM_POOL": "2", **worker_uid_env()}
    proc = subprocess.Popen([sys.executable, "-m", "app.cli", "serve"], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while len([n for n in _warm(data) if not n.endswith(".lock")]) < 2:  # the pool has filled
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise AssertionError(proc.communicate(timeout=10))
            time.sleep(0.1)
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert "Traceback" not in err, err
    assert _warm(data) == [], err  # the runtime's stop took the warm sandboxes and their folders
