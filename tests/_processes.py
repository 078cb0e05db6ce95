"""Processes released together: the barrier the cross-process race tests share."""

from __future__ import annotations

import json
import subprocess
from typing import Any


def release_together(procs: list[subprocess.Popen[str]], timeout: float) -> list[dict[str, Any]]:
    """Each process prints ``ready`` once set up and waits for ``go`` on stdin; its last stdout line
    is a JSON result. All are told to go only when all are ready. Kills what is left on the way out."""
    try:
        for p in procs:  # barrier: every process is set up (pools connected) before any starts
            assert p.stdout is not None
            line = p.stdout.readline()
            assert line.strip() == "ready", (line, p.stderr.read() if p.stderr else "")
        for p in procs:
            assert p.stdin is not None
            p.stdin.write("go\n")
            p.stdin.flush()
        results = []
        for p in procs:
            out, err = p.communicate(timeout=timeout)
            assert p.returncode == 0, err
            results.append(json.loads(out.strip().splitlines()[-1]))
        return results
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
