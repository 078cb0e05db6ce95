"""`stockade serve` stopped (SIGTERM) with an SSE stream open closes the stream cleanly (session 20).

Found by an ops walkthrough: nothing told the open streams that the server was stopping, so uvicorn's graceful
shutdown waited its 3 s for them and then cancelled each: ``ERROR: Cancel 1 running task(s), timeout graceful
shutdown exceeded`` and ``Exception in ASGI application`` with a CancelledError traceback in the log, and the
client's response cut mid-chunk (curl exit 18) - for a routine stop. Now each stream ends at once with a
comment, and the client resumes with ``Last-Event-ID`` (after the restart, or on another replica).
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.e2e.harness import make_data_dir, worker_uid_env

pytestmark = pytest.mark.timeout(120)
ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_ready(proc: subprocess.Popen, base: str) -> None:
    deadline = time.monotonic() + 60
    while True:
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(proc.communicate(timeout=10))
        try:
            if httpx.get(base + "/healthz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)


@pytest.mark.skipif(os.geteuid() != 0, reason="a run's sandbox needs root (bubblewrap with a uid of its own)")
def test_an_open_stream_ends_cleanly_when_serve_is_stopped():
    data = make_data_dir()
    port = _free_port()
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("STOCKADE_")},
           "STOCKADE_DATA_DIR": str(data), "STOCKADE_BUNDLES_DIR": str(ROOT / "tests" / "e2e" / "bundles"),
           "STOCKADE_HOST": "127.0.0.1", "STOCKADE_PORT": str(port), "STOCKADE_SANDBOX_WARM_POOL": "0",
           **worker_uid_env()}
    made = subprocess.run([sys.executable, "-m", "app.cli", "tenant", "create", "acme"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)
    assert made.returncode == 0, made.stderr
    key = re.search(r"stk_[A-Za-z0-9_\-]+", made.stdout).group(0)
    proc = subprocess.Popen([sys.executable, "-m", "app.cli", "serve"], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(proc, base)
        with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {key}"}, timeout=30) as c:
            r = c.post("/v1/runs", json={"bundle": "ticker", "input": '{"wait": 60}'})  # quiet for a minute
            assert r.status_code == 201, r.text
            lines: list[str] = []
            with c.stream("GET", f"/v1/runs/{r.json()['id']}/events") as stream:
                it = stream.iter_lines()
                for line in it:
                    lines.append(line)
                    if line.startswith("event: run.started"):
                        break
                proc.send_signal(signal.SIGTERM)
                lines.extend(it)  # to its end: no ReadError (a response cut mid-chunk)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert ": server stopping: stream closed" in lines, lines[-5:]
    assert proc.returncode == 0, err
    for bad in ("Traceback", "Exception in ASGI application", "timeout graceful shutdown exceeded"):
        assert bad not in err, err
