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


def _assert(cond: bool, what: str) -> None:
    assert cond, what


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
    # path sockets of host services (the host's /run and /tmp are not in the sandbox at all)
    Attack("host_service_sockets", "".join(f"attempt(lambda: socket.socket(socket.AF_UNIX).connect('{p}'))\n" for p in
                                           ("/run/mysqld/mysqld.sock", "/run/postgresql/.s.PGSQL.5432",
                                            "/var/run/postgresql/.s.PGSQL.5432", "/tmp/.s.PGSQL.5432",
                                            "/run/docker.sock", "/var/run/docker.sock", "/run/dbus/system_bus_socket",
                                            "/run/systemd/private", "/run/systemd/journal/socket",
                                            "/run/containerd/containerd.sock", "/run/podman/podman.sock",
                                            "/tmp/.X11-unix/X0")),
           fails_with(*GONE)),
    # the kernel checks ancillary credentials: no forged pid (SO_PASSCRED receivers) or uid
    Attack("forged_scm_credentials", "import struct\na, b = socket.socketpair()\n"
                                     "for cred in ((os.getpid(), 0, 0), (1, 0, 0), (4242, os.getuid(), os.getgid()),\n"
                                     "             (os.getpid(), os.getuid() + 1, os.getgid())):\n"
                                     "    attempt(a.sendmsg, [b'x'], [(socket.SOL_SOCKET, socket.SCM_CREDENTIALS, "
                                     "struct.pack('3i', *cred))])\n",
           fails_with(E.EPERM, E.EINVAL)),  # EINVAL: the uid is not even mapped into the sandbox's user namespace
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
    # world-accessible SysV and POSIX IPC objects of the host: a private IPC namespace has none of them
    Attack("host_ipc_objects", "attempt(sc, 29, $ipc_key, 0, 0)\nattempt(sc, 68, $ipc_key, 0)\n"
                               "attempt(sc, 64, $ipc_key, 0, 0)\n"
                               "attempt(sc, 240, ctypes.cast(ctypes.c_char_p(b'$mq_name'[1:]), ctypes.c_void_p).value, 0, 0, 0)\n",
           fails_with(*GONE)),
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
    # the bundle, the runtime and the socket dir are owned by the run's uid on the host: only the binds hold
    Attack("tamper_bundle_runtime_socket_dir",
           "import stat\n"
           "attempt(lambda: open('/bundle/main.py', 'a').write('evil'))\n"
           "attempt(lambda: open('/bundle/new.py', 'w'))\nattempt(os.chmod, '/bundle/main.py', 0o777)\n"
           "attempt(os.rename, '/bundle/main.py', '/bundle/old.py')\nattempt(os.utime, '/bundle/main.py', (0, 0))\n"
           "attempt(lambda: open('/runtime/boot.py', 'w'))\nattempt(os.mkdir, '/runtime/x')\n"
           "attempt(os.unlink, '/run/stockade/s')\nattempt(os.rename, '/run/stockade/s', '/run/stockade/t')\n"
           "attempt(lambda: socket.socket(socket.AF_UNIX).bind('/run/stockade/evil'))\n"
           "attempt(os.mknod, '/run/stockade/fifo', 0o600 | stat.S_IFIFO)\n"
           "attempt(os.symlink, '/work', '/run/stockade/w')\n",
           both(fails_with(*READ_ONLY), lambda r, c: _assert(c["layout_intact"], "bundle or socket dir changed")),
           host="run_layout"),
    # setuid binaries of the read-only system run without privilege (nosuid + NO_NEW_PRIVS): ld.so honours
    # LD_DEBUG only when the exec is not a secure (setuid) one
    Attack("setuid_binaries", "import subprocess, stat\n"
                              "found = [p for d in ('/usr/bin', '/usr/sbin', '/usr/lib/openssh', '/usr/lib/dbus-1.0')\n"
                              "         if os.path.isdir(d) for p in (os.path.join(d, n) for n in sorted(os.listdir(d)))\n"
                              "         if os.path.isfile(p) and os.stat(p).st_mode & stat.S_ISUID]\n"
                              "for p in found[:8]:\n"
                              "    r = subprocess.run([p, '--help'], env={'LD_DEBUG': 'statistics'}, capture_output=True,\n"
                              "                       stdin=subprocess.DEVNULL, timeout=5)\n"
                              "    out(ok=b'runtime linker statistics' not in r.stderr, path=p)\n"
                              "out(ok=False, found=len(found))\n",
           line_says(lambda ln, c: ln["ok"] is False, "a setuid binary ran as a secure (privileged) exec")),
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
    # inotify/fanotify on a shared read-only file sees other runs and the host open and read it
    Attack("watch_shared_files", "attempt(sc, 294, 0)\nattempt(sc, 253)\n"
                                 "attempt(sc, 254, 0, ctypes.cast(ctypes.c_char_p(sys.executable.encode()), "
                                 "ctypes.c_void_p).value, 0x21)\n"
                                 "attempt(sc, 300, 0x200, 0)\nattempt(sc, 300, 0, 0)\n", fails_with(*DENIED)),
    # a crash must leave no core anywhere: a piped core_pattern (apport, systemd-coredump) ignores
    # RLIMIT_CORE 0 and gives the whole image to a root helper; only a limit of exactly 1 stops it
    Attack("core_dump_limit", "import resource\n"
                              "zero, soft0 = (ctypes.c_ulong * 2)(0, 0), (ctypes.c_ulong * 2)(0, 1)\n"
                              "attempt(sc, 160, 4, ctypes.addressof(zero))\nattempt(sc, 160, 4, ctypes.addressof(soft0))\n"
                              "attempt(sc, 160, 4 | (1 << 32), ctypes.addressof(zero))\n"
                              "attempt(sc, 302, 0, 4, ctypes.addressof(soft0), 0)\n"
                              "attempt(sc, 302, 0, 4 | (1 << 32), ctypes.addressof(zero), 0)\n"
                              "pid = os.fork()\n"
                              "if pid == 0:\n    attempt(sc, 302, os.getppid(), 4, ctypes.addressof(zero), 0)\n"
                              "    sys.stdout.flush(); b = b'bundle-secret' * 10000; ctypes.string_at(0)\n"
                              "_, st = os.waitpid(pid, 0)\n"
                              "out(ok=resource.getrlimit(resource.RLIMIT_CORE) != (1, 1) or os.WCOREDUMP(st)\n"
                              "    or bool(os.listdir('/work')), errno=1, limit=resource.getrlimit(resource.RLIMIT_CORE),\n"
                              "    sig=os.WTERMSIG(st))\n",
           fails_with(*DENIED)),
    # the stacked filter can only add refusals: an allow-all filter of our own loosens nothing
    Attack("seccomp_second_filter", "prog = (ctypes.c_uint64 * 1)(0x06 | (0x7FFF0000 << 32))\n"  # BPF_RET|K ALLOW
                                    "fprog = (ctypes.c_uint64 * 2)(1, ctypes.addressof(prog))\n"
                                    "out(installed=sc(317, 1, 0, ctypes.addressof(fprog)), ok=False, errno=0)\n"
                                    "out(installed=sc(157, 22, 2, ctypes.addressof(fprog)), ok=False, errno=0)\n"
                                    "attempt(lambda: socket.socket(socket.AF_INET, socket.SOCK_STREAM))\n"
                                    "attempt(sc, 272, 0x10000000)\n"
                                    "attempt(sc, 157, 38, 0, 0, 0, 0)\n"  # prctl(PR_SET_NO_NEW_PRIVS, 0)
                                    "attempt(sc, 101, 0, 0, 0, 0)\n",
           line_says(lambda ln, c: ln["ok"] is False and ln.get("errno") in (0, E.EAFNOSUPPORT, E.EPERM, E.EINVAL)
                     and ln.get("installed", 0) == 0, "a second seccomp filter loosened the first")),
    Attack("set_system_clock", "ts = (ctypes.c_long * 2)(0, 0)\ntx = (ctypes.c_char * 256)()\n"
                               "ctypes.c_uint.from_buffer(tx).value = 1\n"  # modes = ADJ_OFFSET
                               "attempt(sc, 227, 0, ctypes.addressof(ts))\nattempt(sc, 164, ctypes.addressof(ts), 0)\n"
                               "attempt(sc, 159, ctypes.addressof(tx))\nattempt(sc, 305, 0, ctypes.addressof(tx))\n",
           fails_with(*DENIED)),
    # RLIMIT_RTPRIO/NICE are 0 and there is no CAP_SYS_NICE: no real-time class to starve the host with
    Attack("realtime_priority", "attempt(os.sched_setscheduler, 0, os.SCHED_FIFO, os.sched_param(1))\n"
                                "attempt(os.sched_setscheduler, 0, os.SCHED_RR, os.sched_param(99))\n"
                                "attr = (ctypes.c_uint32 * 12)(48, 6, 0, 0, 0, 0, 10**6, 0, 10**7, 0, 10**7, 0)\n"
                                "attempt(sc, 314, 0, ctypes.addressof(attr), 0)\n"  # sched_setattr SCHED_DEADLINE
                                "attempt(os.setpriority, os.PRIO_PROCESS, 0, -10)\n"
                                "attempt(sc, 251, 1, 0, (1 << 13) | 0)\n",  # ioprio_set(IOPRIO_CLASS_RT)
           fails_with(E.EPERM, E.EACCES)),
    # RLIMIT_MEMLOCK 0: no pinned (unswappable, uncharged-to-the-page-cache) memory, secret memory included
    Attack("lock_memory", "import mmap\n"
                          "attempt(sc, 149, ctypes.addressof(ctypes.c_char.from_buffer(bytearray(4096))) & ~4095, 4096)\n"
                          "attempt(sc, 151, 3)\n"
                          "attempt(mmap.mmap, -1, 1 << 20, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | 0x2000)\n"  # MAP_LOCKED
                          "fd = sc(447, 0)\nos.ftruncate(fd, 4096)\nattempt(mmap.mmap, fd, 4096)\n",  # memfd_secret
           fails_with(E.EPERM, E.EAGAIN, E.ENOMEM)),
    # page 0 stays unmappable (mmap_min_addr): no NULL-dereference kernel exploits
    Attack("map_null_page", "libc.mmap.restype = ctypes.c_void_p\n"
                            "r = libc.mmap(ctypes.c_void_p(0), 4096, 3, 0x32, -1, 0)\n"  # FIXED|PRIVATE|ANON
                            "out(ok=r is None, errno=ctypes.get_errno())\n",
           fails_with(E.EPERM, E.EACCES)),
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
    # POSIX timers: each pins a pending-signal slot of kernel memory; only RLIMIT_SIGPENDING bounds them
    Attack("posix_timer_flood", "tid = ctypes.c_int(0)\nn = 0\n"
                                "while n < 100000:\n"
                                "    try:\n        sc(222, 1, 0, ctypes.addressof(tid))\n"  # timer_create(MONOTONIC)
                                "    except OSError as e:\n        out(ok=False, errno=e.errno, timers=n); break\n"
                                "    n += 1\n"
                                "else:\n    out(ok=True, timers=n)\n",
           line_says(lambda ln, c: ln["ok"] is False and ln["errno"] == E.EAGAIN and ln["timers"] <= 1024,
                     "posix timer flood")),
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
    # one spinning, setsid() process per allowed task: every session is a scheduling entity of its own
    # (autogroup), so without the run's cpu cgroup the host got ~5 % of the machine. Only root places
    # cgroups; without root this is a documented limit and the share is not checked.
    Attack("cpu_starve_host_with_sessions", "import time\n"
                                            "for _ in range(31):\n"
                                            "    if os.fork() == 0:\n        os.setsid()\n        while True: pass\n"
                                            "time.sleep(10)\n",
           lambda r, c: None if not c["root"] else _assert(c["host_cpu_share"] >= 0.25,
                                                          f"host got {c['host_cpu_share']:.2f} of a CPU"),
           limits={"max_procs": 40, "wall_s": 3.5}, host="cpu_meter", alone=True),
    Attack("wall_clock_sleep", "import time\ntime.sleep(60)\n", reason("limit.wall", within_s=4), limits={"wall_s": 1}),
    Attack("output_flood", "while True: sys.stdout.buffer.write(b'A' * 65536)\n", reason("limit.output", within_s=10),
           limits={"max_output_bytes": 1 << 20}),
]

assert len({a.name for a in ATTACKS}) == len(ATTACKS)
