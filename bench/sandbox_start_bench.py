"""Sandbox cold start with the full spec (namespaces, seccomp, rlimits, cgroups when root), p50/p99.

Three figures, each over as many runs as fit in its share of a ~9 s budget:
  exit     launch() -> wait() returns for `python -I -S -c pass` (the whole life of a trivial sandbox)
  connect  launch() -> the sandbox's first connection on its run socket is accepted (what a run waits for)
  floor    the same spec running /bin/true (bwrap + setup without the interpreter)
Run: .venv/bin/python bench/sandbox_start_bench.py
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sandbox.identity import UidPool  # noqa: E402
from sandbox.interpreter import find_interpreter  # noqa: E402
from sandbox.launcher import launch  # noqa: E402
from sandbox.spec import Limits, SandboxSpec  # noqa: E402

BUDGET_S = 9.0
ROOT = os.geteuid() == 0
POOL = UidPool(410_000, 64) if ROOT else None


def _pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


async def _one(kind: str, exe: str, home: Path) -> float:
    uid = POOL.acquire() if POOL else None
    root = Path(tempfile.mkdtemp(prefix="stockade-bench-"))
    try:
        os.chmod(root, 0o711)
        work, sock = root / "work", root / "sock"
        work.mkdir()
        sock.mkdir()
        srv = None
        if kind == "connect":
            srv = socket.socket(socket.AF_UNIX)
            srv.bind(str(sock / "s"))
            srv.listen(1)
            srv.setblocking(False)
        if uid is not None:
            for p in [work, sock] + ([sock / "s"] if srv else []):
                os.chown(p, uid, uid)
        argv = {"exit": (exe, "-I", "-S", "-c", "pass"), "floor": ("/bin/true",),
                "connect": (exe, "-I", "-S", "-c",
                            "import socket; s=socket.socket(socket.AF_UNIX); s.connect('/run/stockade/s'); s.recv(1)")}
        spec = SandboxSpec(argv=argv[kind], work_dir=work, bundle_dir=None, runtime_dir=None, socket_dir=sock,
                           env={"PATH": "/usr/bin:/bin"}, limits=Limits(wall_s=10), uid=uid, gid=uid, python_home=home)
        loop = asyncio.get_running_loop()
        t0 = time.perf_counter()
        proc = await launch(spec)
        if srv is not None:
            accepted = asyncio.ensure_future(loop.sock_accept(srv))
            exited = asyncio.ensure_future(proc.wait())
            done, _ = await asyncio.wait({accepted, exited}, timeout=10, return_when=asyncio.FIRST_COMPLETED)
            took = time.perf_counter() - t0
            if accepted not in done:
                accepted.cancel()
                proc.kill()
                info = await exited
                raise RuntimeError(f"the sandbox never connected: rc={info.returncode} {info.stderr_tail[-300:]!r}")
            accepted.result()[0].close()
            srv.close()
            await exited
            return took
        await proc.wait()
        return time.perf_counter() - t0
    finally:
        shutil.rmtree(root, ignore_errors=True)
        if POOL and uid is not None:
            POOL.release(uid)


async def main() -> None:
    exe, home = find_interpreter(uid=POOL.base if POOL else None, gid=POOL.base if POOL else None)
    await _one("exit", exe, home)  # warm-up: builds the seccomp program, probes bwrap once
    print(f"sandbox cold start ({'root, pool uid + cgroups' if ROOT else 'non-root'}; interpreter {exe})")
    for kind in ("floor", "exit", "connect"):
        xs: list[float] = []
        end = time.perf_counter() + BUDGET_S / 3
        while time.perf_counter() < end and len(xs) < 300:
            xs.append(await _one(kind, exe, home))
        ms = [x * 1000 for x in xs]
        print(f"  {kind:8s} n={len(ms):4d}  p50 {statistics.median(ms):6.1f} ms  p99 {_pct(ms, 99):6.1f} ms  "
              f"min {min(ms):5.1f} ms")


if __name__ == "__main__":
    asyncio.run(main())
