"""Session 21: ``code.run`` attacked the way a prompt-injected model would, through the real governance
chain (audit, idempotency, budget) on both stacks, and through a real node running a bundle.

Each probe is code the model "wrote": resource exhaustion (forks, threads, shells, memory, CPU, wall
clock, files, output), persistence (children that outlive the call, leftovers a later call could see),
information and escape (environment, descriptors, /proc, /sys, sockets of every family, ptrace,
keyrings, new kernel surfaces, clocks, set-user-ID programs, /tmp) and concurrency (the admission caps,
cancellation). Every breach must end in bounded time with a stable code, leave nothing running and
nothing behind, give the uid back and write its audit record. The attacks that already failed safely
are kept as the adversarial suite.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import time
from pathlib import Path
from typing import Any

import pytest

from supervisor.errors import StockadeError
from tests.tools import test_code_run_chain as _chain
from tests.tools.test_code_run_chain import PRICE, Env, _until

# the chain tests' node (both stacks, a small uid pool of its own) and its two tenants
stack_settings = _chain.stack_settings
make_env = _chain.make_env
env = _chain.env

pytestmark = [pytest.mark.timeout(120),
              pytest.mark.skipif(os.geteuid() != 0, reason="needs root: the node's uid pool is what is tested")]


def _pool_procs(env: Env, zombies: bool = False) -> list[tuple[int, int, str]]:
    """(pid, uid, comm) of every host process running as a uid of this node's pool."""
    pool = env.pool
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            uid = os.stat(f"/proc/{entry}").st_uid
            if uid in pool and (zombies or " Z " not in Path(f"/proc/{entry}/stat").read_text()):
                found.append((int(entry), uid, Path(f"/proc/{entry}/comm").read_text().strip()))
        except OSError:
            continue
    return found


async def _settled(env: Env) -> None:
    """After a call: nothing of the pool runs, every uid is back, the admission is empty, no work dir is left."""
    assert _pool_procs(env, zombies=True) == []  # not even a zombie: it counts against the uid's RLIMIT_NPROC
    assert env.pool.in_use == 0
    assert env.rt.services.extras["code_admission"].total == 0
    base = env.rt.settings.data_dir / "coderun"
    assert not base.exists() or list(base.iterdir()) == []


async def _timed(env: Env, args: dict[str, Any], **kw: Any) -> tuple[Any, Any, float, list[Any]]:
    run_id = "run_" + secrets.token_hex(4)
    t0 = time.monotonic()
    out, c = await env.call(args, run_id=run_id, **kw)
    took = time.monotonic() - t0
    return out, c, took, await env.audit(run_id, kw.get("tenant", 0))


def _completed(recs: list[Any]) -> None:
    assert [(r.kind, r.cost_micro) for r in recs] == [("tool.allowed", 0), ("tool.completed", PRICE)], recs


# ------------------------------------------------------------------------------------------ exhaustion

FORK_BOMB = """
import os
n = 0
while True:
    try:
        if os.fork() == 0:
            while True:
                try:
                    os.fork()
                except OSError:
                    pass
        n += 1
    except OSError:
        pass
"""

THREAD_BOMB = """
import threading, time
n = 0
try:
    while True:
        threading.Thread(target=time.sleep, args=(100,), daemon=True).start()
        n += 1
except Exception as exc:
    print("stopped at", n, type(exc).__name__)
time.sleep(100)
"""

SHELL_BOMB = """
import subprocess
procs = []
while True:
    try:
        procs.append(subprocess.Popen(["/bin/sh", "-c", "while :; do /bin/sh -c 'sleep 100' & done"]))
    except OSError:
        pass
"""


@pytest.mark.parametrize("code", [FORK_BOMB, THREAD_BOMB, SHELL_BOMB], ids=["fork", "threads", "shells"])
async def test_process_and_thread_bombs_end_on_the_wall_clock_and_leave_nothing(env, code):
    out, _, took, recs = await _timed(env, {"code": code, "timeout_s": 2})
    assert isinstance(out, dict), out
    assert out["limit"] == "limit.wall" and out["signal"] == 9, out
    assert took < 15
    _completed(recs)
    await _settled(env)


MEMORY = {
    "bytearray": "b = bytearray(1 << 30)\n",
    "mmap": "import mmap\nm = mmap.mmap(-1, 1 << 30)\nm.write(b'x' * (1 << 20))\n",
    # many processes, each under its own RLIMIT_AS, together over the run's cgroup
    "processes": ("import os, time\n"
                  "for _ in range(12):\n"
                  "    if os.fork() == 0:\n"
                  "        b = bytearray(200 << 20)\n"
                  "        b[::4096] = b'x' * len(b[::4096])\n"
                  "        time.sleep(30)\n"
                  "os.wait()\n"),
    # memfd pages are shmem: no RLIMIT_AS, charged to the run's memory cgroup
    "memfd": ("import os\nfds = []\n"
              "for i in range(40):\n"
              "    fd = os.memfd_create(f'm{i}')\n"
              "    for _ in range(15):\n"
              "        os.write(fd, b'x' * (1 << 20))\n"
              "    fds.append(fd)\n"
              "print('held', len(fds))\n"),
    # /dev/shm is the sandbox's own capped /tmp
    "shm": "with open('/dev/shm/big', 'wb') as f:\n    for _ in range(200):\n        f.write(b'x' * (1 << 20))\n",
}


@pytest.mark.parametrize("kind", list(MEMORY))
async def test_memory_balloons_end_with_a_limit_code(env, kind):
    out, _, took, recs = await _timed(env, {"code": MEMORY[kind], "timeout_s": 10})
    assert isinstance(out, dict), out
    assert out["exit_code"] != 0 or kind == "processes", out  # (the parent of an OOM-killed child exits 0)
    assert out.get("limit") in {"shm": ("limit.disk",)}.get(kind, ("limit.memory",)), out
    assert "held 40" not in out["stdout"]
    assert took < 20
    _completed(recs)
    await _settled(env)


async def test_cpu_spin_and_sleep_end_on_the_limits(env):
    spin = ("import threading\n"
            "def spin():\n    while True: pass\n"
            "for _ in range(3): threading.Thread(target=spin).start()\n"
            "spin()\n")
    out, _, took, _ = await _timed(env, {"code": spin, "timeout_s": 3})
    assert isinstance(out, dict) and out.get("limit") in ("limit.cpu", "limit.wall"), out
    assert took < 15
    out, _, took, recs = await _timed(env, {"code": "import time\ntime.sleep(3600)\n", "timeout_s": 1})
    assert isinstance(out, dict) and out["limit"] == "limit.wall", out
    assert took < 10
    _completed(recs)
    await _settled(env)


DISK = {
    "many files": ("import os\nfor i in range(300_000):\n"
                   "    open(f'f{i}', 'w').close()\n"),
    "one huge file": "with open('big', 'wb') as f:\n    f.write(b'x' * (200 << 20))\n",
    "many big files": ("import os\nfor i in range(40):\n"
                       "    with open(f'big{i}', 'wb') as f:\n"
                       "        for _ in range(15): f.write(os.urandom(1 << 20))\n"
                       "import time\ntime.sleep(30)\n"),
    "tmp": "with open('/tmp/big', 'wb') as f:\n    f.write(b'x' * (100 << 20))\n",
}


@pytest.mark.parametrize("kind", list(DISK))
async def test_disk_fillers_end_with_limit_disk_and_leave_no_work_dir(env, kind):
    out, _, took, recs = await _timed(env, {"code": DISK[kind], "timeout_s": 30})
    assert isinstance(out, dict), out
    assert out.get("limit") == "limit.disk", (out["limit"] if "limit" in out else None, out["stderr"][-500:])
    assert took < 40
    assert len(out["files"]) <= 20 and len(json.dumps(out)) < 16 * 1024 * 1024
    _completed(recs)
    await _settled(env)


@pytest.mark.parametrize("stream", ["stdout", "stderr"])
async def test_an_output_flood_is_cut_bounded_and_named_by_its_limit(env, stream):
    code = (f"import sys\nchunk = b'A' * 65535 + b'\\n'\n"
            f"while True:\n    sys.{stream}.buffer.write(chunk)\n")
    out, _, took, recs = await _timed(env, {"code": code, "timeout_s": 20})
    assert isinstance(out, dict), out
    assert out["limit"] == "limit.output", out
    assert len(out[stream]) <= 64 * 1024 and out[stream].rstrip("\n").endswith("A"), out[stream][-100:]
    assert took < 20
    _completed(recs)
    await _settled(env)


async def test_output_past_the_tails_is_marked_not_cut_silently(env):
    """Below the output limit, stdout and stderr past 64 KiB each were cut to their last 64 KiB with nothing to
    say so; ``output_bytes`` and ``output_truncated`` say it now."""
    code = "import sys\nsys.stdout.write('x' * 100_000)\nsys.stderr.write('short')\n"
    out, _, _, recs = await _timed(env, {"code": code, "timeout_s": 20})
    assert (out["output_bytes"], out["output_truncated"], len(out["stdout"]), out["stderr"]) == \
        (100_005, True, 64 * 1024, "short"), {k: v for k, v in out.items() if k not in ("stdout",)}
    out, _, _, _ = await _timed(env, {"code": "print('hi')", "timeout_s": 20})
    assert (out["output_bytes"], out["output_truncated"], out["stdout"]) == (3, False, "hi\n"), out
    _completed(recs)
    await _settled(env)


async def test_hostile_bytes_in_output_and_files_reach_the_bundle_intact(env):
    code = (
        "import sys\n"
        "sys.stdout.buffer.write(b'nul\\x00 bad\\xff\\xfe ansi\\x1b[2J\\x1b]0;title\\x07 cesu\\xed\\xa0\\x80 end\\n')\n"
        "sys.stderr.buffer.write(b'\\x00' * 100 + b'\\xc3')\n"
        "open('nul.txt', 'wb').write(b'a\\x00b\\x1b[31m')\n"
        "open('bin.dat', 'wb').write(b'\\xff\\x00\\xed\\xa0\\x80')\n"
        "open('nul\\x1b[2Jname', 'w').write('x')\n"
        "print('\\ud800')\n"  # a lone surrogate: the sandbox's own stdout refuses it (traceback on stderr)
    )
    run_id, frames = await env.through_session({"code": code})
    assert [(f["type"], f["id"]) for f in frames] == [("result", 1)], frames
    result = frames[0]["result"]
    assert result["stdout"].startswith("nul\x00 bad\ufffd\ufffd ansi\x1b[2J"), result
    assert "UnicodeEncodeError" in result["stderr"]
    files = {f["path"]: f for f in result["files"]}
    assert files["nul.txt"]["text"] == "a\x00b\x1b[31m"
    assert files["bin.dat"]["base64"] == "/wDtoIA="
    assert "nul\x1b[2Jname" in files
    assert [(r.kind, r.cost_micro) for r in await env.audit(run_id)] == [("tool.allowed", 0), ("tool.completed", PRICE)]
    await _settled(env)


async def test_files_that_would_not_fit_the_reply_are_left_out_not_the_whole_result(env):
    """20 files of 256 KiB of control characters, each escaped to six bytes in JSON: a 30 MiB result, past
    the reply cap (MAX_REPLY, 16 MiB). The bundle got frame.too_large - no stdout, no file - for a call that
    ran and was charged. Now the files that do not fit are listed as skipped and the rest arrives."""
    code = "for i in range(20):\n    open(f'f{i:02}', 'w').write('\\x01' * (256 * 1024))\nprint('done')\n"
    run_id, frames = await env.through_session({"code": code})
    assert [(f["type"], f["id"]) for f in frames] == [("result", 1)], [(f["type"], f.get("code")) for f in frames]
    result = frames[0]["result"]
    assert result["stdout"] == "done\n" and result["files_truncated"] is True
    assert 1 <= len(result["files"]) < 20 and all(f["text"] == "\x01" * 256 * 1024 for f in result["files"])
    assert {s["reason"] for s in result["files_skipped"]} == {"too large for the reply"}
    assert len(result["files"]) + len(result["files_skipped"]) == 20
    assert [(r.kind, r.cost_micro) for r in await env.audit(run_id)] == [("tool.allowed", 0), ("tool.completed", PRICE)]
    await _settled(env)


# ------------------------------------------------------------------------------------------ persistence

SURVIVOR = """
import os, signal, time
for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT, signal.SIGPIPE):
    signal.signal(sig, signal.SIG_IGN)
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        for sig in (signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)
        os.closerange(0, 3)
        while True:
            time.sleep(0.05)
    os._exit(0)
os.wait()
print('parent leaves')
"""


async def test_a_setsid_double_forked_child_ignoring_signals_dies_with_the_call(env):
    out, _, took, recs = await _timed(env, {"code": SURVIVOR, "timeout_s": 10})
    assert isinstance(out, dict) and out["stdout"] == "parent leaves\n" and out["exit_code"] == 0, out
    assert took < 8  # not the wall clock: the namespace dies with its pid 1
    _completed(recs)
    await _settled(env)


LEAVE = """
import os, socket
open('/work/left', 'w').write('x')
open('/tmp/left', 'w').write('x')
open('/dev/shm/left', 'w').write('x')
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.bind('\\0stockade-left-behind')
s.listen()
"""

LOOK = """
import os, socket, json
seen = {"work": sorted(os.listdir('/work')), "tmp": sorted(os.listdir('/tmp'))}
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
try:
    s.connect('\\0stockade-left-behind')
    seen["abstract"] = "connected"
except OSError as exc:
    seen["abstract"] = exc.errno
print(json.dumps(seen))
"""


async def test_nothing_a_call_leaves_is_seen_by_the_next_call_of_any_run_or_tenant(env):
    host_tmp = set(os.listdir("/tmp"))
    out, _ = await env.call({"code": LEAVE})
    assert isinstance(out, dict) and out["exit_code"] == 0, out
    assert [f["path"] for f in out["files"]] == ["left"]
    for tenant in (0, 1):
        out, _ = await env.call({"code": LOOK}, tenant=tenant)
        assert isinstance(out, dict), out
        seen = json.loads(out["stdout"])
        assert seen["work"] == ["main.py"] and seen["tmp"] == [], seen
        assert seen["abstract"] != "connected", seen
    assert "left" not in set(os.listdir("/tmp")) - host_tmp
    await _settled(env)


# ------------------------------------------------------------------------------------------ escape / info

PROBE = r"""
import ctypes, errno, json, os, socket, stat, time
libc = ctypes.CDLL(None, use_errno=True)
r = {}
r["env"] = dict(os.environ)
r["fds"] = sorted(os.listdir("/proc/self/fd"))
r["pids"] = sorted(int(p) for p in os.listdir("/proc") if p.isdigit())
r["ppid"] = os.getppid()
r["uid"] = (os.getuid(), os.geteuid())
st = {l.split(":")[0]: l.split(":", 1)[1].strip() for l in open("/proc/self/status")}
r["caps"] = [st["CapInh"], st["CapPrm"], st["CapEff"], st["CapBnd"], st["CapAmb"]]
r["nnp"] = st["NoNewPrivs"]
r["seccomp"] = st["Seccomp"]
r["pid1_environ"] = open("/proc/1/environ", "rb").read().decode(errors="replace")
r["sys"] = os.path.exists("/sys/kernel")
r["run"] = os.path.exists("/run/stockade")
r["data"] = [p for p in ("/root", "/home", "/var", "/srv", "/work/..", "/etc/shadow", "/etc/ssh") if os.path.exists(p) and os.listdir(p) and p != "/work/.."]
r["etc"] = sorted(os.listdir("/etc"))
socks = {}
for name, fam, typ in (("inet", socket.AF_INET, socket.SOCK_STREAM), ("inet6", socket.AF_INET6, socket.SOCK_STREAM),
                       ("udp", socket.AF_INET, socket.SOCK_DGRAM), ("netlink", socket.AF_NETLINK, socket.SOCK_RAW),
                       ("packet", socket.AF_PACKET, socket.SOCK_RAW), ("vsock", 40, socket.SOCK_STREAM),
                       ("bluetooth", 31, socket.SOCK_STREAM), ("alg", 38, socket.SOCK_SEQPACKET)):
    try:
        s = socket.socket(fam, typ)
        try:
            if fam in (socket.AF_INET, socket.AF_INET6):
                s.settimeout(1)
                s.connect(("1.1.1.1", 53) if fam == socket.AF_INET else ("2606:4700:4700::1111", 53))
                socks[name] = "connected"
            else:
                socks[name] = "opened"
        except OSError as exc:
            socks[name] = "opened, " + errno.errorcode.get(exc.errno, str(exc.errno))
        s.close()
    except OSError as exc:
        socks[name] = errno.errorcode.get(exc.errno, str(exc.errno))
r["sockets"] = socks
try:
    u = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    u.connect("\0/org/freedesktop/systemd1/notify")
    r["abstract"] = "connected"
except OSError as exc:
    r["abstract"] = errno.errorcode.get(exc.errno, str(exc.errno))
def sc(nr, *args):
    libc.syscall.restype = ctypes.c_long
    rv = libc.syscall(ctypes.c_long(nr), *[ctypes.c_long(a) for a in args])
    return "ok" if rv >= 0 else errno.errorcode.get(ctypes.get_errno(), str(ctypes.get_errno()))
# x86_64 numbers
r["syscalls"] = {
    "ptrace_attach_pid1": sc(101, 16, 1, 0, 0),
    "keyctl_join": sc(250, 1, 0),  # KEYCTL_JOIN_SESSION_KEYRING
    "add_key": sc(248, 0, 0, 0, 0, 0),
    "userfaultfd": sc(323, 0),
    "io_uring_setup": sc(425, 1, 0),
    "perf_event_open": sc(298, 0, 0, -1, -1, 0),
    "bpf": sc(321, 0, 0, 0),
    "unshare_user": sc(272, 0x10000000),
    "mount": sc(165, 0, 0, 0, 0, 0),
    "settimeofday": sc(164, 0, 0),
    "clock_settime": sc(227, 0, 0),
    "adjtimex_set": "skipped",
    "setuid0": sc(105, 0),
    "chroot": sc(161, 0),
    "kexec": sc(246, 0, 0, 0, 0),
    "init_module": sc(175, 0, 0, 0),
    "syslog": sc(103, 3, 0, 0),
}
suid = []
for top in ("/usr/bin", "/usr/sbin", "/bin", "/sbin", "/usr/lib"):
    try:
        for e in os.scandir(top):
            try:
                if e.is_file(follow_symlinks=False) and e.stat(follow_symlinks=False).st_mode & stat.S_ISUID:
                    suid.append(e.path)
            except OSError:
                pass
    except OSError:
        pass
r["suid_count"] = len(suid)
import subprocess
if suid:
    p = subprocess.run([suid[0], "--help"], capture_output=True, timeout=5)
r["suid_ran_as"] = subprocess.run(["/usr/bin/id", "-u"], capture_output=True, text=True).stdout.strip() if os.path.exists("/usr/bin/id") else None
try:
    os.chmod("/work/x", 0o4755) if open("/work/x", "w") else None
    r["setuid_file"] = "made"
except OSError as exc:
    r["setuid_file"] = errno.errorcode.get(exc.errno)
try:
    open("/usr/bin/stockade-probe", "w")
    r["usr_write"] = "wrote"
except OSError as exc:
    r["usr_write"] = errno.errorcode.get(exc.errno)
r["mountinfo_has_data_dir"] = "DATA_DIR_MARK" in open("/proc/self/mountinfo").read()
print(json.dumps(r))
"""


async def test_what_the_code_can_see_and_reach_is_its_own_sandbox_only(env):
    data_dir = str(env.rt.settings.data_dir)
    out, _ = await env.call({"code": PROBE.replace("DATA_DIR_MARK", "/nonexistent-mark"), "timeout_s": 20})
    assert isinstance(out, dict) and out["exit_code"] == 0, out
    r = json.loads(out["stdout"])
    assert set(r["env"]) <= {"PATH", "LANG", "HOME", "PYTHONDONTWRITEBYTECODE", "PWD"}, r["env"]
    assert not any("STOCKADE" in k or "KEY" in k or "SECRET" in k or "TOKEN" in k for k in r["env"])
    assert r["pid1_environ"] == "" or "STOCKADE" not in r["pid1_environ"], r["pid1_environ"]
    assert r["fds"] == ["0", "1", "2", "3"], r["fds"]  # 3: the listing's own descriptor
    assert r["pids"] == [1] and r["ppid"] == 0
    assert r["uid"][0] == r["uid"][1] and r["uid"][0] in env.pool
    assert set(r["caps"]) == {"0000000000000000"}, r["caps"]
    assert r["nnp"] == "1" and r["seccomp"] == "2"
    assert r["sys"] is False and r["run"] is False and r["data"] == [], r
    assert data_dir not in json.dumps(r["env"])
    for name in ("inet", "inet6", "udp", "netlink", "packet", "vsock", "bluetooth", "alg"):
        assert not r["sockets"][name].startswith("opened") and r["sockets"][name] != "connected", r["sockets"]
    assert r["abstract"] in ("ECONNREFUSED", "ENOENT"), r["abstract"]
    denied = {k: v for k, v in r["syscalls"].items() if v == "ok"}
    assert denied == {}, r["syscalls"]
    assert r["suid_ran_as"] == str(r["uid"][0])
    assert r["setuid_file"] == "EPERM" and r["usr_write"] in ("EROFS", "EACCES"), r
    await _settled(env)


# ------------------------------------------------------------------------------------------ concurrency

BLOCK = {"code": "import time\ntime.sleep(60)\n", "timeout_s": 60}


async def test_many_calls_at_once_are_capped_and_every_refusal_is_free(make_env):
    """12 calls at once from two tenants: at most 3 per tenant, and the node never lends code.run the uids
    its runs need (6 - worker_concurrency 1 = 5); the rest are refused at once, retryable, and free."""
    env = await make_env(code_run_max_per_tenant=3, sandbox_uid_count=6, worker_concurrency=1, sandbox_warm_pool=0)
    calls = [asyncio.ensure_future(env.call(BLOCK, tenant=i % 2)) for i in range(12)]
    try:
        await _until(lambda: sum(t.done() for t in calls) >= 7)
        refused = [t.result()[0] for t in calls if t.done()]
        assert all(isinstance(e, StockadeError) and e.to_dict()["retryable"] for e in refused), refused
        assert sorted({e.code for e in refused}) <= ["rate.limited", "sandbox.unavailable"], refused
        await _until(lambda: env.pool.in_use == 5)
        assert env.rt.services.extras["code_admission"].total == 5
        assert sum(t.done() for t in calls) == 7
        for tenant in (0, 1):
            running = env.rt.services.extras["code_admission"].running(env.tenants[tenant])
            assert running <= 3
            assert await env.spent_and_reserved(tenant) == (0, running * PRICE)  # the refused hold nothing
    finally:
        for t in calls:
            t.cancel()
        await asyncio.gather(*calls, return_exceptions=True)
    await _settled(env)


async def test_a_call_canceled_twice_while_its_sandbox_ends_still_gives_its_uid_back(env):
    """The run ends (its task canceled) while the call waits for its sandbox, and again while the
    tool waits for the killed sandbox to be gone."""
    task = asyncio.ensure_future(env.call({"code": SURVIVOR.replace("print('parent leaves')", "import time; time.sleep(60)"),
                                           "timeout_s": 60}))
    await _until(lambda: env.pool.in_use == 1 and len(_pool_procs(env)) >= 3)
    task.cancel()
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await _until(lambda: env.pool.in_use == 0 and not _pool_procs(env))
    await _settled(env)


# ------------------------------------------------------------------------------------------ through a node


def _code_procs(uids: Any) -> list[tuple[str, str]]:
    """Host processes left by code.run sandboxes (their command names /work/main.py), and zombies, of these uids."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if os.stat(f"/proc/{entry}").st_uid not in uids:
                continue
            cmd = Path(f"/proc/{entry}/cmdline").read_bytes()
            if b"/work/main.py" in cmd or " Z " in Path(f"/proc/{entry}/stat").read_text():
                found.append((entry, cmd.decode(errors="replace")))
        except OSError:
            continue
    return found


async def test_attacks_through_a_bundle_on_a_real_node(node_settings):
    """The same attacks as a bundle's model would make them: one run of the ``toolprobe`` bundle firing them
    at once under the shipped default policy. Every call gets its result or a stable code, the run ends
    well, every call is audited, nothing of the code sandboxes is left running."""
    from tests.e2e.harness import start_node
    from tests.e2e.test_governance import plan, results_of
    from tests.e2e.test_run_pipeline import push, start

    node = await start_node(node_settings)
    try:
        tid, key = await node.tenant()
        await push(node, tid, "toolprobe")
        c = node.client(key)
        flood = "import sys\nwhile True:\n    sys.stdout.buffer.write(b'\\x00\\x1b[2J\\xff' * 20000)\n"
        calls = [
            {"code": SURVIVOR, "timeout_s": 10},
            {"code": FORK_BOMB, "timeout_s": 2},
            {"code": flood, "timeout_s": 10},
            {"code": MEMORY["bytearray"]},
            {"code": "import time\ntime.sleep(60)\n", "timeout_s": 1},
            {"code": "import os, json\nprint(json.dumps(dict(os.environ)))\n"},
        ]
        run = await start(c, "toolprobe", plan(*({"tool": "code.run", "args": a} for a in calls), concurrent=True))
        results, events = await results_of(c, run["id"])
        assert events[-1].event == "run.completed", events[-1]
        assert [r.get("error") for r in results] == [None] * len(calls), results
        ok = [r["ok"] for r in results]
        assert ok[0]["stdout"] == "parent leaves\n"
        assert ok[1]["limit"] == "limit.wall" and ok[4]["limit"] == "limit.wall"
        assert ok[2]["limit"] == "limit.output" and "\x1b[2J\ufffd" in ok[2]["stdout"]  # (NUL: dropped by the event store)
        assert ok[3]["limit"] == "limit.memory"
        assert set(json.loads(ok[5]["stdout"])) <= {"PATH", "LANG", "HOME", "PYTHONDONTWRITEBYTECODE", "PWD"}
        recs = [r for r in await node.rt.services.audit.list(tid, limit=1000) if r.run_id == run["id"]]
        assert sorted(r.kind for r in recs if r.tool == "code.run") == (["tool.allowed"] * 6 + ["tool.completed"] * 6)
        pool = node.rt.services.extras["uid_pool"]
        assert _code_procs(pool) == []
        assert node.rt.services.extras["code_admission"].total == 0
    finally:
        await node.stop()
