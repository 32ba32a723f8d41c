"""The sandbox a grading worker runs in: bubblewrap namespaces, a read-only Python runtime, size-limited tmpfs and rlimits.

    argv, preexec = jail.command([sys.executable, "/course/worker.py", "--fd", "3"],
                                 binds={prepared_lib: "/course/lib", worker_py: "/course/worker.py"},
                                 env={"PATH": "/usr/bin:/bin", "HOME": jail.WORK, "TMPDIR": jail.WORK,
                                      "PYTHONPATH": "/course/lib"},
                                 memory=4 * 2**30, pass_fds=(3,))
    proc = subprocess.Popen(argv, preexec_fn=preexec, pass_fds=(3,), stdin=..., stdout=..., ...)

What the worker gets (bubblewrap, Debian's `bubblewrap` package, does the sandboxing):
- its own user, mount, PID, network, IPC, UTS and cgroup namespaces; uid/gid 65534 inside, no
  capabilities, no further user namespaces (--disable-userns), no controlling terminal
  (--new-session); it dies with the process that started it (--die-with-parent) and is PID 1 of
  its PID namespace (--as-pid-1), so killing it ends the sandbox;
- a read-only view of the Python runtime only (/usr and the /bin, /sbin, /lib, /lib64 links; the
  interpreter's base prefix at its own path; a virtual environment at VENV, wherever it lies on the
  host, so that no path of the repository exists inside; `argv[0] == sys.executable` becomes
  python(), its path there) plus the caller's `binds`, read-only; no /etc, /home, /root, /tmp,
  /work, /sys of the host. The venv's editable finder for `solutions` points into the repository,
  which is absent: it finds nothing (bind the modules the worker may import and put them on
  PYTHONPATH, which comes first); a `solutions` package installed non-editable is masked;
- a private minimal /dev (null, zero, full, random, urandom, tty, pts) and a fresh /proc whose
  /proc/sys is read-only; the root and /dev tmpfs of the sandbox are remounted read-only;
- writable: only tmpfs of a fixed size: WORK (its home and working folder; /tmp is a link into
  it, so they share `tmp_bytes`) and /dev/shm (`shm_bytes`);
- rlimits: RLIMIT_AS = memory - tmp_bytes - shm_bytes, so files in the tmpfs plus the process stay
  under `memory`; RLIMIT_CORE 0; RLIMIT_FSIZE; RLIMIT_NOFILE 1024;
- a seccomp filter (x86_64 and aarch64) that refuses new processes (fork, vfork, clone without
  CLONE_THREAD; threads are allowed) and the memory that RLIMIT_AS would not count (memfd_create,
  SysV shmget);
- no file descriptor of the caller but 0, 1, 2 and `pass_fds`, even if Popen is given close_fds=False.

Started by root, bubblewrap maps the sandbox's uid 65534 to host uid 0: without capabilities and
with everything read-only that grants nothing but read access to bound files whatever their mode
(a 0700 mkdtemp folder can be bound as it is). It is also why RLIMIT_NPROC is not used: the kernel
never applies it to host uid 0 (tested). Threads are therefore bounded by RLIMIT_AS (each thread
needs a stack) and, with `cgroups=("pids",)` where the caller's pids cgroup is writable, by PIDS_MAX.
"""
from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import os
import platform
import resource
import shutil
import struct
import subprocess
import sys
from pathlib import Path
from typing import Callable, Iterable, Mapping

WORK = "/home/worker"           # the worker's home and working folder (tmpfs); /tmp links to WORK/.tmp
VENV = "/opt/venv"              # where the virtual environment of this interpreter is shown
UID = GID = 65534               # nobody/nogroup, inside the sandbox
HOSTNAME = "sandbox"
NOFILE = 1024
PIDS_MAX = 256                  # processes + threads per sandbox, where a pids cgroup can be had
CGROUP_PREFIX = "course-jail-"  # one cgroup per sandbox, created under the caller's own cgroup

_libc = ctypes.CDLL(None, use_errno=True)
_libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]


# --------------------------------------------------------------------------------------------
# seccomp: a small classic-BPF program, applied in preexec (so bwrap and everything it starts
# run under it). bwrap itself needs one clone, with CLONE_NEWUSER; --as-pid-1 spares it the
# fork of a reaper. Inside, --disable-userns makes any clone(CLONE_NEWUSER) fail.

_SYSCALLS = {   # arch: (AUDIT_ARCH, {name: nr}); names missing on an arch are left out
    "x86_64": (0xC000003E, {"fork": 57, "vfork": 58, "clone": 56, "clone3": 435, "memfd_create": 319,
                            "shmget": 29, "memfd_secret": 447, "userfaultfd": 323}),
    "aarch64": (0xC00000B7, {"clone": 220, "clone3": 435, "memfd_create": 279, "shmget": 194,
                             "memfd_secret": 447, "userfaultfd": 282}),
}
_CLONE_THREAD, _CLONE_NEWUSER = 0x00010000, 0x10000000
_RET_ALLOW, _RET_KILL, _RET_ERRNO = 0x7FFF0000, 0x80000000, 0x00050000
_REFUSED = {"fork": errno.EAGAIN, "vfork": errno.EAGAIN, "clone3": errno.ENOSYS,   # glibc falls back to clone
            "memfd_create": errno.EPERM, "shmget": errno.EPERM, "memfd_secret": errno.EPERM,
            "userfaultfd": errno.EPERM}


def _bpf(code, jt, jf, k):
    return struct.pack("=HBBI", code, jt, jf, k)


def seccomp_filter(machine: str | None = None) -> bytes | None:
    """The filter as the bytes of a `struct sock_filter` array, or None on an architecture without one."""
    machine = machine or platform.machine()
    if machine not in _SYSCALLS:
        return None
    arch, nrs = _SYSCALLS[machine]
    LD, JEQ, JGE, JSET, RET = 0x20, 0x15, 0x35, 0x45, 0x06   # BPF_LD|W|ABS, BPF_JMP|JEQ|K, ..., BPF_RET|K
    refused = [(nrs[n], e) for n, e in _REFUSED.items() if n in nrs]
    prog = [_bpf(LD, 0, 0, 4),                        # seccomp_data.arch
            _bpf(JEQ, 1, 0, arch),
            _bpf(RET, 0, 0, _RET_KILL),
            _bpf(LD, 0, 0, 0)]                        # seccomp_data.nr
    if machine == "x86_64":                           # the x32 ABI: refused outright
        prog += [_bpf(JGE, 0, 1, 0x40000000), _bpf(RET, 0, 0, _RET_ERRNO | errno.ENOSYS)]
    for nr, err in refused:
        prog += [_bpf(JEQ, 0, 1, nr), _bpf(RET, 0, 0, _RET_ERRNO | err)]
    prog += [_bpf(JEQ, 1, 0, nrs["clone"]),
             _bpf(RET, 0, 0, _RET_ALLOW),
             _bpf(LD, 0, 0, 16),                      # low 32 bits of args[0]: clone's flags
             _bpf(JSET, 2, 0, _CLONE_THREAD),
             _bpf(JSET, 1, 0, _CLONE_NEWUSER),
             _bpf(RET, 0, 0, _RET_ERRNO | errno.EAGAIN),
             _bpf(RET, 0, 0, _RET_ALLOW)]
    return b"".join(prog)


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


# --------------------------------------------------------------------------------------------
# cgroups (optional): a child of the caller's own cgroup, so no enclosing limit is escaped.

@functools.lru_cache(maxsize=None)
def cgroup_parents() -> dict[str, Path]:
    """controller ("pids", "memory") -> the caller's own v1 cgroup folder, where it may create children."""
    found = {}
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            _, controllers, path = line.split(":", 2)
            for c in controllers.split(","):
                d = Path("/sys/fs/cgroup", c) / path.lstrip("/")
                if c in ("pids", "memory") and (d / "cgroup.procs").is_file() and os.access(d, os.W_OK):
                    found[c] = d
    return found


def cleanup():
    """Remove the cgroups of sandboxes that have ended (each is named by its bwrap's pid; rmdir
    fails on one still in use). command() calls it; call it after the last sandbox too."""
    for parent in cgroup_parents().values():
        with contextlib.suppress(OSError):
            for d in parent.iterdir():
                if d.name.startswith(CGROUP_PREFIX) and not Path("/proc", d.name[len(CGROUP_PREFIX):]).exists():
                    with contextlib.suppress(OSError):
                        d.rmdir()


# --------------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def available() -> str | None:
    """None if bubblewrap can build the sandbox here, else why not (checked once per process)."""
    if not sys.platform.startswith("linux"):
        return "the sandbox needs Linux"
    if shutil.which("bwrap") is None:
        return "bubblewrap is not installed (Debian: apt-get install bubblewrap)"
    if seccomp_filter() is None:
        return f"no seccomp filter for the {platform.machine()} architecture"
    try:
        argv, preexec = command(["/bin/sh", "-c", "echo ok"], binds={}, env={"PATH": "/usr/bin:/bin"},
                                memory=256 * 2**20, tmp_bytes=2**20, shm_bytes=2**20)
        out = subprocess.run(argv, preexec_fn=preexec, capture_output=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as e:
        return f"bubblewrap cannot start: {e}"
    if out.returncode != 0 or out.stdout.strip() != b"ok":
        return f"bubblewrap cannot build the sandbox: {out.stderr.decode(errors='replace').strip()[-300:]}"
    return None


def isolation() -> str:
    """'bubblewrap' when the grading worker can be sandboxed here, else 'process' (a separate
    process with limits only); COURSE_SANDBOX=process asks for the latter."""
    if os.environ.get("COURSE_SANDBOX") == "process":
        return "process"
    return "bubblewrap" if available() is None else "process"


def _set_limits(limits):
    for which, value in limits:
        resource.setrlimit(which, (value, value))


def limits(memory: int) -> Callable[[], None]:
    """The preexec_fn of a worker without the sandbox: the address space, no core, no huge file."""
    return functools.partial(_set_limits, [(resource.RLIMIT_AS, memory), (resource.RLIMIT_CORE, 0),
                                           (resource.RLIMIT_FSIZE, 256 * 2**20)])


def runtime_binds() -> dict[str, str]:
    """host path -> path inside, read-only: the Python runtime. A virtual environment is shown at
    VENV (wherever it lies on the host, e.g. inside the repository or under /tmp); the interpreter
    it was made from stays at its own path, where pyvenv.cfg points."""
    binds = {}
    if sys.prefix != sys.base_prefix:
        binds[os.path.realpath(sys.prefix)] = VENV
    for p in (sys.base_prefix, sys.base_exec_prefix, os.path.dirname(os.path.realpath(sys.executable))):
        for q in (os.path.abspath(p), os.path.realpath(p)):
            binds.setdefault(os.path.realpath(q), q)
    keep = {}
    for host, inside in sorted(binds.items(), key=lambda kv: len(kv[1])):   # drop folders inside another
        if inside == "/" or any(inside == k or inside.startswith(k + "/") for k in [*keep.values(), "/usr"]):
            continue
        if _reserved(inside):
            raise ValueError(f"the Python runtime at {inside} lies where the sandbox has its own folders")
        keep[host] = inside
    return keep


def python() -> str:
    """This interpreter's path inside the sandbox (command() puts it in place of sys.executable)."""
    if sys.prefix != sys.base_prefix:
        return os.path.join(VENV, os.path.relpath(os.path.abspath(sys.executable), os.path.abspath(sys.prefix)))
    return sys.executable


def _reserved(inside: str) -> bool:
    inside = os.path.normpath(inside)
    return inside == "/" or any(inside == r or inside.startswith(r + "/") for r in (WORK, "/tmp", "/dev", "/proc"))


def _installed_solutions() -> list[str]:
    """`solutions` folders that a non-editable install put into the runtime's site-packages."""
    import site
    found = []
    for sp in site.getsitepackages() + [site.getusersitepackages()]:
        if os.path.isdir(os.path.join(sp, "solutions")):
            found.append(os.path.realpath(os.path.join(sp, "solutions")))
    return found


def command(argv: Iterable[str], *, binds: Mapping[str, str], env: Mapping[str, str], memory: int,
            tmp_bytes: int = 256 * 2**20, shm_bytes: int = 64 * 2**20, pass_fds: Iterable[int] = (),
            cgroups: Iterable[str] = ()) -> tuple[list[str], Callable[[], None]]:
    """The bwrap command line that runs `argv` (a command line as seen inside) in the sandbox, and
    the preexec_fn to give subprocess.Popen with it (fd hygiene, seccomp, optional cgroups, rlimits).

    `binds` maps host paths (files or folders) to paths inside, read-only. `env` is the whole
    environment inside. `memory` bounds the worker's address space plus what its tmpfs can hold.
    Give Popen the same `pass_fds`. `cgroups` may name "pids" and "memory": the sandbox then also
    joins a fresh cgroup under the caller's own v1 one, limited to PIDS_MAX tasks (threads count)
    and `memory` bytes (tmpfs and kernel memory included), where cgroup_parents() has that
    controller; without it, silently not (best effort: nothing depends on it).
    """
    argv = [str(a) for a in argv]
    pass_fds = tuple(sorted({int(fd) for fd in pass_fds}))
    address_space = memory - tmp_bytes - shm_bytes
    if address_space < 64 * 2**20:
        raise ValueError(f"memory={memory} leaves {address_space} bytes once the tmpfs "
                         f"({tmp_bytes} + {shm_bytes}) are counted; at least 64 MiB are needed")
    for inside in binds.values():
        if not os.path.isabs(inside) or _reserved(inside):
            raise ValueError(f"cannot bind onto {inside!r} inside the sandbox")
    if argv and argv[0] == sys.executable:
        argv[0] = python()

    bw = ["bwrap", "--unshare-all", "--unshare-user", "--disable-userns", "--uid", str(UID), "--gid", str(GID),
          "--hostname", HOSTNAME, "--cap-drop", "ALL", "--die-with-parent", "--new-session", "--as-pid-1",
          "--clearenv"]
    for k, v in env.items():
        bw += ["--setenv", str(k), str(v)]
    bw += ["--ro-bind", "/usr", "/usr"]
    for top in ("/bin", "/sbin", "/lib", "/lib64", "/lib32", "/libx32"):
        if os.path.islink(top):
            bw += ["--symlink", os.readlink(top), top]
        elif os.path.isdir(top):
            bw += ["--ro-bind", top, top]
    runtime = runtime_binds()
    for host, inside in runtime.items():
        bw += ["--ro-bind", host, inside]
    for p in _installed_solutions():                 # a non-editable install of the course package
        for host, inside in runtime.items():
            if p == host or p.startswith(host + "/"):
                bw += ["--size", "4096", "--perms", "0000", "--tmpfs", inside + p[len(host):]]
    bw += ["--proc", "/proc", "--ro-bind", "/proc/sys", "/proc/sys", "--dev", "/dev",
           "--size", str(shm_bytes), "--perms", "1777", "--tmpfs", "/dev/shm",
           "--size", str(tmp_bytes), "--perms", "0700", "--tmpfs", WORK,
           "--dir", WORK + "/.tmp", "--symlink", WORK + "/.tmp", "/tmp"]
    for host, inside in binds.items():
        if not os.path.exists(host):
            raise FileNotFoundError(host)
        bw += ["--ro-bind", os.fspath(host), os.path.normpath(inside)]
    bw += ["--remount-ro", "/dev", "--remount-ro", "/", "--chdir", WORK, "--", *argv]

    prog = seccomp_filter()
    if prog is None:
        raise OSError(f"no seccomp filter for the {platform.machine()} architecture")
    buffer = ctypes.create_string_buffer(prog, len(prog))
    fprog = _SockFprog(len(prog) // 8, ctypes.cast(buffer, ctypes.c_void_p))
    limits = [(resource.RLIMIT_CORE, 0), (resource.RLIMIT_FSIZE, max(tmp_bytes, shm_bytes)),
              (resource.RLIMIT_NOFILE, max(NOFILE, max(pass_fds, default=0) + 1)),
              (resource.RLIMIT_AS, address_space)]
    groups = {c: d for c, d in cgroup_parents().items() if c in set(cgroups)}
    if groups:
        cleanup()
    cg_values = {"pids": [("pids.max", str(PIDS_MAX))],
                 "memory": [("memory.limit_in_bytes", str(memory)), ("memory.swappiness", "0")]}
    keep = {0, 1, 2, *pass_fds}

    def preexec():
        # 1. only 0, 1, 2 and pass_fds survive the exec of bwrap (Popen's own error pipe is CLOEXEC)
        for name in os.listdir("/proc/self/fd"):
            fd = int(name)
            if fd not in keep:
                with contextlib.suppress(OSError):
                    os.set_inheritable(fd, False)
        # 2. optional cgroups, named by this (the future bwrap's) pid
        for controller, parent in groups.items():
            d = parent / f"{CGROUP_PREFIX}{os.getpid()}"
            with contextlib.suppress(OSError):
                d.mkdir(exist_ok=True)
                for f, v in cg_values[controller]:
                    with contextlib.suppress(OSError):
                        (d / f).write_text(v)
                (d / "cgroup.procs").write_text("0")
        # 3. seccomp, then the rlimits last (RLIMIT_AS may be below what this child already maps)
        if _libc.prctl(38, 1, 0, 0, 0) != 0:                                   # PR_SET_NO_NEW_PRIVS
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS)")
        if _libc.prctl(22, 2, ctypes.addressof(fprog), 0, 0) != 0:             # PR_SET_SECCOMP, FILTER
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_SECCOMP)")
        _set_limits(limits)

    preexec.keep_alive = (buffer, fprog)            # the filter's memory lives as long as preexec
    return bw, preexec
