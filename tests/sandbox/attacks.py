"""The escape table: each row is an attack run inside a real sandbox and the way it must fail.

Snippets run after ``_harness.PRELUDE`` (``attempt``, ``out``, ``sc`` for raw syscalls)
and may use ``$name`` placeholders filled from the host context (ports, paths, secrets).
Every attack tried and seen to fail stays here.
"""

from __future__ import annotations

import errno as E
import signal
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from _harness import Result

Check = Callable[[Result, dict[str, Any]], None]


@dataclass(frozen=True)
class Attack:
    name: str
    code: str
    check: Check
    limits: dict[str, Any] = field(default_factory=dict)
    host: str | None = None  # a host-side helper the test runs around it ("sleeper")
    alone: bool = False  # run after the concurrent batch (without root, RLIMIT_NPROC is shared by the uid)


# ---------------------------------------------------------------- checks
def fails_with(*codes: int) -> Check:
    """Every attempt line failed, each with one of ``codes``."""

    def check(r: Result, ctx: dict[str, Any]) -> None:
        assert r.lines, f"no output; rc={r.info.returncode} stderr={r.info.stderr_tail[-800:]!r}"
        for line in r.lines:
            assert line.get("ok") is False, f"attempt succeeded: {line}"
            assert line.get("errno") in codes, f"errno {line.get('errno')} not in {codes}: {line}"

    return check


def killed_by(sig: int) -> Check:
    def check(r: Result, ctx: dict[str, Any]) -> None:
        assert r.info.signal == sig, f"expected signal {sig}, got {r.info}"
        assert not any(line.get("ok") for line in r.lines), r.lines

    return check


def reason(code: str, *, within_s: float | None = None) -> Check:
    def check(r: Result, ctx: dict[str, Any]) -> None:
        assert r.info.reason == code, f"expected {code}, got {r.info.reason}: {r.info}"
        if within_s is not None:
            assert r.info.elapsed_s < within_s, r.info.elapsed_s

    return check


def both(*checks: Check) -> Check:
    def check(r: Result, ctx: dict[str, Any]) -> None:
        for c in checks:
            c(r, ctx)

    return check


def line_says(pred: Callable[[dict[str, Any], dict[str, Any]], bool], what: str) -> Check:
    def check(r: Result, ctx: dict[str, Any]) -> None:
        assert r.lines, f"no output; stderr={r.info.stderr_tail[-800:]!r}"
        for line in r.lines:
            assert pred(line, ctx), f"{what}: {line}"

    return check


NOPE = (E.EAFNOSUPPORT,)  # seccomp's answer to any socket family but AF_UNIX
DENIED = (E.EPERM,)
GONE = (E.ENOENT,)
READ_ONLY = (E.EROFS, E.EACCES, E.EPERM)


def _sock(family: str, kind: str, proto: str = "0") -> str:
    return f"attempt(lambda: socket.socket({family}, {kind}, {proto}))\n"


def _connect(family: str, kind: str, addr: str) -> str:
    return f"attempt(lambda: socket.socket({family}, {kind}).connect({addr}))\n"


ATTACKS: list[Attack] = [
    # ---------------------------------------------------------------- network
    Attack("tcp_loopback_api_port", _connect("socket.AF_INET", "socket.SOCK_STREAM", "('127.0.0.1', $api_port)"),
           fails_with(*NOPE)),
    Attack("tcp_loopback_postgres", _connect("socket.AF_INET", "socket.SOCK_STREAM", "('127.0.0.1', 5432)"),
           fails_with(*NOPE)),
    Attack("tcp_loopback_redis", _connect("socket.AF_INET", "socket.SOCK_STREAM", "('127.0.0.1', 6379)"),
           fails_with(*NOPE)),
    Attack("tcp6_loopback", _connect("socket.AF_INET6", "socket.SOCK_STREAM", "('::1', $api_port)"), fails_with(*NOPE)),
    Attack("udp_loopback", "attempt(lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b'x', "
                           "('127.0.0.1', $udp_port)))\n", fails_with(*NOPE)),
    Attack("tcp_host_ip", _connect("socket.AF_INET", "socket.SOCK_STREAM", "('$host_ip', $api_port)"),
           fails_with(*NOPE)),
    Attack("tcp_internet", _connect("socket.AF_INET", "socket.SOCK_STREAM", "('1.1.1.1', 443)"), fails_with(*NOPE)),
    Attack("dns_lookup", "attempt(lambda: socket.getaddrinfo('example.com', 443))\n"
                         "attempt(lambda: open('/etc/resolv.conf').read())\n",
           line_says(lambda ln, c: ln["ok"] is False and (ln["errno"] < 0 or ln["errno"] == E.ENOENT), "resolved")),
    Attack("raw_icmp_socket", _sock("socket.AF_INET", "socket.SOCK_RAW", "socket.IPPROTO_ICMP"), fails_with(*NOPE)),
    Attack("netlink_socket", _sock("socket.AF_NETLINK", "socket.SOCK_RAW"), fails_with(*NOPE)),
    Attack("packet_socket", _sock("socket.AF_PACKET", "socket.SOCK_RAW"), fails_with(*NOPE)),
    Attack("vsock_socket", _sock("40", "socket.SOCK_STREAM"), fails_with(*NOPE)),
    Attack("alg_socket", _sock("38", "socket.SOCK_SEQPACKET"), fails_with(*NOPE)),
    Attack("socket_family_high_bits", "attempt(sc, 41, 2 | (1 << 32), 1, 0)\n", fails_with(*NOPE)),
    Attack("socketpair_inet", "attempt(sc, 53, 2, 1, 0, 0)\n", fails_with(*NOPE)),
    Attack("abstract_unix_socket", "attempt(lambda: socket.socket(socket.AF_UNIX).connect('\\0$abstract'))\n",
           fails_with(E.ECONNREFUSED)),
    Attack("other_runs_socket", "attempt(lambda: socket.socket(socket.AF_UNIX).connect('$other_sock'))\n",
           fails_with(*GONE)),
    # ---------------------------------------------------------------- environment and host files
    Attack("proc_self_environ", "env = open('/proc/self/environ','rb').read().split(b'\\0')\n"
                                "out(ok=b'$secret' in b''.join(env), keys=sorted(e.split(b'=')[0].decode() for e in env if e))\n",
           line_says(lambda ln, c: ln["ok"] is False and ln["keys"] == ["HOME", "LANG", "PATH", "PWD"], "environment leaked")),
    # pid 1 is the command itself (--as-pid-1); bwrap's host process was started with an empty environment
    Attack("proc_1_environ", "data = open('/proc/1/environ','rb').read()\n"
                             "out(ok=b'$secret' in data, keys=sorted(e.split(b'=')[0].decode() for e in data.split(b'\\0') if e))\n",
           line_says(lambda ln, c: ln["ok"] is False and ln["keys"] == ["HOME", "LANG", "PATH", "PWD"],
                     "environment leaked")),
    Attack("proc_1_cmdline_host_paths", "data = open('/proc/1/cmdline','rb').read()\n"
                                        "needle = ('stockade' + '-sbx-').encode()\nout(ok=needle in data)\n",
           line_says(lambda ln, c: ln["ok"] is False, "host paths visible in bwrap's argv")),
    Attack("etc_shadow", "attempt(lambda: open('/etc/shadow').read())\n", fails_with(*GONE)),
    Attack("etc_passwd_is_synthetic", "out(ok='postgres' in open('/etc/passwd').read() or "
                                      "'/root:' in open('/etc/passwd').read())\n",
           line_says(lambda ln, c: ln["ok"] is False, "host /etc/passwd visible")),
    Attack("host_data_dir", "attempt(lambda: open('$data_secret').read())\n"
                            "attempt(lambda: os.listdir('$data_dir'))\n", fails_with(*GONE)),
    Attack("other_runs_work_dir", "attempt(lambda: os.listdir('$other_work'))\n"
                                  "attempt(lambda: open('$other_work/notes.txt').read())\n", fails_with(*GONE)),
    Attack("repo_settings_and_sources", "attempt(lambda: open('$repo/supervisor/settings.py').read())\n"
                                        "attempt(lambda: os.listdir('$repo'))\n", fails_with(*GONE)),
    Attack("home_and_root_dirs", "attempt(lambda: os.listdir('/home'))\n"
                                 "attempt(lambda: os.listdir('/root/.ssh'))\n"
                                 "attempt(lambda: os.listdir('/sys'))\n", fails_with(*GONE)),
    Attack("host_process_in_proc", "attempt(lambda: open('/proc/$host_pid/environ','rb').read())\n"
                                   "attempt(lambda: open('/proc/$host_pid/mem','rb'))\n"
                                   "attempt(os.kill, $host_pid, 0)\n",
           fails_with(E.ENOENT, E.ESRCH)),
    # ---------------------------------------------------------------- writes and links
    Attack("write_outside_work", "".join(f"attempt(lambda: open('{p}', 'w'))\n" for p in
                                         ("/escape", "/usr/escape", "/etc/escape", "/dev/escape", "/bin/escape",
                                          "/usr/lib/escape.so", "/etc/passwd")), fails_with(*READ_ONLY)),
    Attack("write_proc_sys", "attempt(lambda: open('/proc/sys/kernel/hostname', 'w').write('x'))\n"
                             "attempt(lambda: open('/proc/sysrq-trigger', 'w').write('b'))\n", fails_with(*READ_ONLY, *GONE)),
    Attack("symlink_escape", "os.symlink('/etc/shadow', '/work/l1')\n"
                             "os.symlink('/proc/1/root/../../../../$repo/supervisor/settings.py', '/work/l2')\n"
                             "attempt(lambda: open('/work/l1').read())\nattempt(lambda: open('/work/l2').read())\n",
           fails_with(*GONE)),
    Attack("hardlink_escape", "attempt(os.link, '/etc/passwd', '/work/h1')\n"
                              "attempt(os.link, os.path.realpath(sys.executable), '/work/h2')\n",
           fails_with(E.EXDEV, E.EPERM)),
    # ---------------------------------------------------------------- devices
    Attack("mknod_block_device", "import stat\n"
                                 "attempt(os.mknod, '/work/sda', 0o600 | stat.S_IFBLK, os.makedev(8, 0))\n"
                                 "attempt(os.mknod, '/tmp/mem', 0o600 | stat.S_IFCHR, os.makedev(1, 1))\n",
           fails_with(*DENIED)),
    Attack("open_host_devices", "".join(f"attempt(lambda: open('/dev/{d}', 'rb'))\n" for d in
                                        ("sda", "vda", "mem", "kmsg", "vsock", "tty", "ptmx", "fuse", "kvm")),
           fails_with(*GONE)),
    # ---------------------------------------------------------------- other processes
    Attack("ptrace_sibling", "import time\npid = os.fork()\n"
                             "if pid == 0:\n    time.sleep(5); os._exit(0)\n"
                             "attempt(sc, 101, 16, pid, 0, 0)\nos.kill(pid, 9)\n", fails_with(*DENIED)),
    # the sandbox's main process is pid 1 and its parent (bwrap, on the host) is invisible: a child attacks pid 1
    Attack("ptrace_parent_and_traceme", "if os.fork() == 0:\n"
                                        "    attempt(sc, 101, 16, os.getppid(), 0, 0)\n    attempt(sc, 101, 0, 0, 0, 0)\n"
                                        "    os._exit(0)\nos.wait()\n", fails_with(*DENIED)),
    Attack("process_vm_readv_parent", "attempt(sc, 310, os.getppid(), 0, 0, 0, 0, 0)\n"
                                      "attempt(sc, 311, os.getppid(), 0, 0, 0, 0, 0)\n", fails_with(*DENIED)),
    Attack("pidfd_getfd_parent_and_sibling", "import time\npid = os.fork()\n"
                                             "if pid == 0:\n    attempt(sc, 438, sc(434, os.getppid(), 0), 0, 0)\n"
                                             "    time.sleep(5); os._exit(0)\n"
                                             "attempt(sc, 438, sc(434, pid, 0), 0, 0)\nos.kill(pid, 9)\n",
           fails_with(*DENIED)),
    Attack("kill_all_reaches_host", "attempt(os.kill, -1, 9)\nattempt(os.kill, $sleeper_pid, 9)\n",
           lambda r, c: c["sleeper_survived"](r), host="sleeper"),
    # ---------------------------------------------------------------- kernel surfaces
    Attack("keyctl_and_add_key", "attempt(sc, 250, 0, (1 << 64) - 3, 0)\nattempt(sc, 248, 0, 0, 0, 0, 0)\n"
                                 "attempt(sc, 249, 0, 0, 0, 0)\n", fails_with(*DENIED)),
    Attack("bpf", "attempt(sc, 321, 5, 0, 0)\nattempt(sc, 321, 0, 0, 0)\n", fails_with(*DENIED)),
    Attack("io_uring", "attempt(sc, 425, 8, 0)\nattempt(sc, 426, 0, 0, 0, 0, 0, 0)\n", fails_with(*DENIED)),
    Attack("perf_event_open", "attempt(sc, 298, 0, 0, (1 << 64) - 1, (1 << 64) - 1, 0)\n", fails_with(*DENIED)),
    Attack("userfaultfd", "attempt(sc, 323, 0)\n", fails_with(*DENIED)),
    Attack("kernel_modules_kexec_reboot", "attempt(sc, 175, 0, 0, 0)\nattempt(sc, 313, 0, 0, 0)\n"
                                          "attempt(sc, 246, 0, 0, 0, 0)\nattempt(sc, 169, 0, 0, 0, 0)\n"
                                          "attempt(sc, 167, 0, 0)\n", fails_with(*DENIED)),
    Attack("open_by_handle_at", "attempt(sc, 304, 3, 0, 0)\n", fails_with(*DENIED)),
    # ---------------------------------------------------------------- namespaces and mounts
    Attack("unshare_user_namespace", "attempt(sc, 272, 0x10000000)\nattempt(sc, 272, 0x40000000)\n"
                                     "attempt(sc, 272, 0x00020000)\n", fails_with(*DENIED)),
    Attack("clone_with_namespace_flags", "attempt(sc, 56, 0x10000000 | 17, 0, 0, 0, 0)\n"
                                         "attempt(sc, 56, 0x20000000 | 17, 0, 0, 0, 0)\n", fails_with(*DENIED)),
    Attack("clone3_refused", "attempt(sc, 435, 0, 0)\n", fails_with(E.ENOSYS)),
    Attack("setns_into_pid1", "fd = os.open('/proc/1/ns/mnt', os.O_RDONLY)\nattempt(sc, 308, fd, 0)\n",
           fails_with(*DENIED)),
    Attack("mount_tmpfs", "a = ctypes.c_char_p\n"
                          "attempt(sc, 165, ctypes.cast(a(b'none'), ctypes.c_void_p).value, "
                          "ctypes.cast(a(b'/tmp'), ctypes.c_void_p).value, "
                          "ctypes.cast(a(b'tmpfs'), ctypes.c_void_p).value, 0, 0)\n"
                          "attempt(sc, 166, ctypes.cast(a(b'/usr'), ctypes.c_void_p).value, 2)\n"
                          "attempt(sc, 155, 0, 0)\nattempt(sc, 161, 0)\nattempt(sc, 430, 0, 0)\n"
                          "attempt(sc, 428, 0, 0, 0)\n", fails_with(*DENIED)),
    # ---------------------------------------------------------------- privileges and terminals
    Attack("tiocsti_injection", "import fcntl, termios\n"
                                "attempt(fcntl.ioctl, 0, termios.TIOCSTI, b'x')\n"
                                "attempt(sc, 16, 1, 0x5412 | (1 << 32), 0)\n"
                                "attempt(sc, 16, 2, 0x541C, 0)\n", fails_with(*DENIED)),
    Attack("setuid_root", "attempt(os.setuid, 0)\nattempt(os.setgid, 0)\nattempt(os.setgroups, [0])\n"
                          "attempt(os.setresuid, 0, 0, 0)\n",
           fails_with(E.EPERM, E.EINVAL)),  # EINVAL: uid 0 does not even exist in the sandbox's user namespace
    Attack("capset_raise", "hdr = (ctypes.c_uint32 * 2)(0x20080522, 0)\n"
                           "data = (ctypes.c_uint32 * 6)(0xffffffff, 0xffffffff, 0, 0xffffffff, 0xffffffff, 0)\n"
                           "attempt(sc, 126, ctypes.addressof(hdr), ctypes.addressof(data))\n", fails_with(*DENIED)),
    Attack("sethostname", "attempt(sc, 170, ctypes.cast(ctypes.c_char_p(b'evil'), ctypes.c_void_p).value, 4)\n",
           fails_with(*DENIED)),
    # ---------------------------------------------------------------- other ABIs
    Attack("x32_syscall_abi", "out(ok=False, errno=0, before=True)\nsc(0x40000000 | 39)\nout(ok=True)\n",
           killed_by(signal.SIGSYS)),
    Attack("i386_int80_abi", "import mmap\n"
                             "m = mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)\n"
                             "m.write(b'\\xb8\\x14\\x00\\x00\\x00\\xcd\\x80\\xc3')\n"  # mov eax,20 (getpid); int 0x80; ret
                             "addr = ctypes.addressof(ctypes.c_char.from_buffer(m))\n"
                             "ctypes.CFUNCTYPE(ctypes.c_int)(addr)()\nout(ok=True)\n",
           killed_by(signal.SIGSYS)),
    # ---------------------------------------------------------------- descriptors
    Attack("leaked_fds", "fds = sorted(int(f) for f in os.listdir('/proc/self/fd'))\n"
                         "out(ok=fds != [0, 1, 2, 3], fds=fds, stdin=os.readlink('/proc/self/fd/0'))\n",
           line_says(lambda ln, c: ln["ok"] is False and ln["stdin"] == "/dev/null", "extra descriptors inherited")),
    # ---------------------------------------------------------------- resource exhaustion
    Attack("fork_bomb", "import time\nkids = 0\n"
                        "while kids < 10000:\n"
                        "    try:\n        pid = os.fork()\n"
                        "    except OSError as e:\n        out(ok=False, errno=e.errno, kids=kids); break\n"
                        "    if pid == 0:\n        time.sleep(3); os._exit(0)\n"
                        "    kids += 1\n"
                        "else:\n    out(ok=True, kids=kids)\n",
           line_says(lambda ln, c: ln["ok"] is False and ln["errno"] == E.EAGAIN and ln["kids"] <= 16, "fork bomb"),
           limits={"max_procs": 16}, alone=True),
    Attack("memory_bomb_caught", "try:\n    b = bytearray(1 << 30); out(ok=True)\n"
                                 "except MemoryError:\n    out(ok=False, errno=12)\n"
                                 "chunks = []\n"
                                 "try:\n    while True: chunks.append(bytearray(16 << 20))\n"
                                 "except MemoryError:\n    out(ok=False, errno=12, mb=16 * len(chunks))\n",
           line_says(lambda ln, c: ln["ok"] is False and ln.get("mb", 0) <= 128, "allocated past the limit"),
           limits={"memory_mb": 128}),
    Attack("memory_bomb_uncaught", "x = [bytearray(32 << 20) for _ in range(100)]\nout(ok=True)\n",
           reason("limit.memory"), limits={"memory_mb": 128}),
    Attack("disk_fill_work", "try:\n    open('/work/big', 'wb').write(b'x' * (8 << 20))\n"
                             "except OSError as e:\n    out(ok=False, errno=e.errno)\n"
                             "import time\n"
                             "for i in range(6):\n    open(f'/work/f{i}', 'wb').write(b'y' * (3 << 20))\n"
                             "time.sleep(15)\n",
           both(fails_with(E.EFBIG), reason("limit.disk", within_s=8)), limits={"workdir_mb": 8, "max_file_mb": 4}),
    Attack("disk_fill_tmp", "n = 0\nf = open('/tmp/fill', 'wb', buffering=0)\n"
                            "try:\n    while True: f.write(b'z' * (1 << 20)); n += 1\n"
                            "except OSError as e:\n    out(ok=False, errno=e.errno, mb=n)\n",
           line_says(lambda ln, c: ln["errno"] == E.ENOSPC and ln["mb"] <= 4, "tmpfs not capped"),
           limits={"tmpfs_mb": 4}),
    # pid 1 of a namespace ignores SIGXCPU without a handler, so the hard limit's SIGKILL ends it
    Attack("cpu_spin", "while True: pass\n", both(killed_by(signal.SIGKILL), reason("limit.cpu")), limits={"cpu_s": 1}),
    Attack("cpu_spin_in_child", "pid = os.fork()\nif pid == 0:\n    while True: pass\n"
                                "_, st = os.waitpid(pid, 0)\nout(ok=False, errno=0, sig=os.WTERMSIG(st))\n",
           line_says(lambda ln, c: ln["sig"] == signal.SIGXCPU, "a child outran RLIMIT_CPU"), limits={"cpu_s": 1}),
    Attack("cpu_spin_ignoring_sigxcpu", "import signal\nsignal.signal(signal.SIGXCPU, signal.SIG_IGN)\n"
                                        "while True: pass\n",
           both(killed_by(signal.SIGKILL), reason("limit.cpu")), limits={"cpu_s": 1}),
    Attack("wall_clock_sleep", "import time\ntime.sleep(60)\n", reason("limit.wall", within_s=4), limits={"wall_s": 1}),
    Attack("output_flood", "while True: sys.stdout.buffer.write(b'A' * 65536)\n", reason("limit.output", within_s=10),
           limits={"max_output_bytes": 1 << 20}),
]

assert len({a.name for a in ATTACKS}) == len(ATTACKS)
