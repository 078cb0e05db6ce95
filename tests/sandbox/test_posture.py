"""The sandbox's posture as seen from inside (in the style of gVisor's sandboxposture test)."""

from __future__ import annotations

import json
import os
import resource
from pathlib import Path

import pytest
from _harness import POOL, interpreter, run_snippet

from sandbox.spec import Limits

LIMITS = Limits(memory_mb=256, max_procs=24, max_open_files=128, max_file_mb=16, cpu_s=7, wall_s=20, workdir_mb=32,
                tmpfs_mb=8)
NAMESPACES = ("cgroup", "ipc", "mnt", "net", "pid", "user", "uts")

POSTURE = r'''
import json, os, resource, socket
st = {k: v.strip() for k, v in (l.split(":", 1) for l in open("/proc/self/status") if ":" in l)}
mounts = []
for line in open("/proc/self/mountinfo"):
    f = line.split()
    sep = f.index("-")
    mounts.append({"at": f[4], "opts": f[5].split(","), "fs": f[sep + 1], "super": f[sep + 3].split(",")})
names = {n: getattr(resource, "RLIMIT_" + n) for n in ("AS", "NPROC", "NOFILE", "FSIZE", "CPU", "CORE", "MEMLOCK",
                                                     "SIGPENDING")}
print(json.dumps({
    "uid": os.getuid(), "euid": os.geteuid(), "gid": os.getgid(), "egid": os.getegid(), "groups": os.getgroups(),
    "status": {k: st[k] for k in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb", "NoNewPrivs", "Seccomp",
                                  "Seccomp_filters")},
    "ns": {n: os.stat("/proc/self/ns/" + n).st_ino for n in os.listdir("/proc/self/ns")},
    "mounts": mounts,
    "fds": sorted(int(x) for x in os.listdir("/proc/self/fd")),
    # the environment as exec'd (os.environ may gain LC_CTYPE from Python's own PEP 538 locale coercion)
    "env": dict(e.split("=", 1) for e in open("/proc/self/environ").read().split("\0") if e),
    "rlimits": {n: resource.getrlimit(r) for n, r in names.items()},
    "hostname": socket.gethostname(),
    "ifaces": [l.split(":")[0].strip() for l in open("/proc/net/dev").readlines()[2:]],
    "cwd": os.getcwd(), "pid": os.getpid(), "ppid": os.getppid(), "umask": os.umask(0o22),
    "root": sorted(os.listdir("/")), "dev": sorted(os.listdir("/dev")),
}))
'''


@pytest.fixture(scope="module")
def posture() -> dict:
    import asyncio

    r = asyncio.run(run_snippet(POSTURE, limits=LIMITS, prelude=False,
                                env={"PATH": "/usr/bin:/bin", "STOCKADE_SOCKET": "/run/stockade/s"}))
    assert r.info.returncode == 0, r.info.stderr_tail
    data = json.loads(r.info.stdout_tail)
    data["_host_uid"] = r.uid
    return data


def test_identity(posture: dict) -> None:
    want = posture["_host_uid"] if POOL else os.getuid()
    assert posture["uid"] == posture["euid"] == want
    assert posture["gid"] == posture["egid"] == (want if POOL else os.getgid())
    assert posture["groups"] in ([], [posture["gid"]])
    # the command is the namespace's pid 1 (bwrap --as-pid-1); its parent, bwrap on the host, is invisible
    assert posture["uid"] != 0 and posture["pid"] == 1 and posture["ppid"] == 0


def test_no_capabilities_no_new_privs_seccomp(posture: dict) -> None:
    st = posture["status"]
    for cap in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
        assert int(st[cap], 16) == 0, (cap, st[cap])
    assert st["NoNewPrivs"] == "1"
    assert st["Seccomp"] == "2"
    assert int(st["Seccomp_filters"]) >= 1


def test_every_namespace_differs_from_the_host(posture: dict) -> None:
    host = {n: os.stat(f"/proc/self/ns/{n}").st_ino for n in os.listdir("/proc/self/ns")}
    for n in NAMESPACES:
        assert posture["ns"][n] != host[n], f"{n} namespace shared with the host"
    # bubblewrap cannot create a time namespace; it only offsets CLOCK_MONOTONIC/BOOTTIME, so sharing it leaks nothing
    assert set(posture["ns"]) - set(NAMESPACES) <= {"time", "time_for_children", "pid_for_children"}


def test_mounts(posture: dict) -> None:
    _, home = interpreter(posture["_host_uid"])
    allowed_ro = {"/", "/usr", "/etc/passwd", "/etc/group", "/etc/hostname", "/etc/hosts", "/etc/nsswitch.conf",
                  "/etc/ld.so.cache", "/etc/localtime", "/dev"}
    if not str(home).startswith("/usr"):
        allowed_ro.add(str(home))
    devices = {"/dev/null", "/dev/zero", "/dev/random", "/dev/urandom"}
    seen = {m["at"]: m for m in posture["mounts"]}
    assert set(seen) <= allowed_ro | devices | {"/proc", "/tmp", "/work"}, set(seen) - allowed_ro
    assert {"/", "/usr", "/proc", "/tmp", "/work", "/dev", "/etc/passwd"} <= set(seen)
    for at, m in seen.items():
        assert "nosuid" in m["opts"], at
        if at in allowed_ro:
            assert "ro" in m["opts"], f"{at} is writable"
    assert "rw" in seen["/work"]["opts"] and "rw" in seen["/tmp"]["opts"]
    assert "size=8192k" in seen["/tmp"]["super"]
    assert seen["/proc"]["fs"] == "proc"
    for host_only in ("/home", "/root", "/srv", "/var", "/opt", "/mnt", "/media", "/boot", "/sys", "/run"):
        assert host_only not in seen
    assert posture["root"] == sorted(["bin", "dev", "etc", "lib", "lib64", "proc", "sbin", "tmp", "usr", "work"]
                                     + ([str(home).split("/")[1]] if not str(home).startswith("/usr") else []))
    assert posture["dev"] == ["fd", "null", "random", "shm", "stderr", "stdin", "stdout", "urandom", "zero"]


def test_descriptors_environment_and_network(posture: dict) -> None:
    assert posture["fds"] == [0, 1, 2, 3]  # 3 is listdir's own handle on /proc/self/fd
    assert posture["env"] == {"PATH": "/usr/bin:/bin", "STOCKADE_SOCKET": "/run/stockade/s", "PWD": "/work"}
    assert posture["ifaces"] == ["lo"]
    assert posture["hostname"] == "sandbox"
    assert posture["cwd"] == "/work"


def test_rlimits(posture: dict) -> None:
    mb = 1024 * 1024
    lim = {k: tuple(v) for k, v in posture["rlimits"].items()}
    assert lim["AS"] == (256 * mb, 256 * mb)
    assert lim["NOFILE"] == (128, 128)
    assert lim["FSIZE"] == (16 * mb, 16 * mb)
    assert lim["CPU"] == (7, 8)
    assert lim["CORE"] == (1, 1)  # 1, not 0: the value that also stops piped core dumps
    assert lim["SIGPENDING"] == (1024, 1024)  # queued signals and POSIX timers (kernel memory)
    assert lim["MEMLOCK"] == (0, 0)
    if POOL:
        assert lim["NPROC"] == (25, 25)  # max_procs + bwrap's host process, counted for the run's own uid
    else:
        assert lim["NPROC"][0] >= 25 and lim["NPROC"][0] != resource.RLIM_INFINITY
    assert Path("/proc/self/status").exists()
