"""Leak tests of tools/jail.py, the grading worker's sandbox: each starts a small probe in the sandbox
and checks on the host side that nothing it did got out. A naive sandbox (shared /dev, IPC, UTS or
network namespace, the host's file system, an inherited fd, no memory accounting) fails them."""
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import pytest

import course
import jail

REASON = jail.available()
if REASON is not None and os.environ.get("CI"):
    # CI must prove the sandbox: there, a missing bubblewrap is a failure, not a skip
    def test_the_sandbox_is_available_in_ci():
        pytest.fail(f"no bubblewrap sandbox in CI: {REASON}")
pytestmark = pytest.mark.skipif(REASON is not None and not os.environ.get("CI"),
                                reason=f"no bubblewrap sandbox here: {REASON}")

ENV = {"PATH": "/usr/bin:/bin", "HOME": jail.WORK, "TMPDIR": jail.WORK, "LANG": "C.UTF-8"}
MiB = 2**20


TRY = """
import errno, json, os
def attempt(f):
    try:
        r = f()
        return "ok" if r is None else r
    except OSError as e:
        return errno.errorcode.get(e.errno, str(e.errno))
    except Exception as e:
        return type(e).__name__
"""


def start(code: str, *, binds=None, memory=2**30, tmp_bytes=32 * MiB, shm_bytes=16 * MiB, pass_fds=(),
          env=None, cgroups=(), popen=None):
    """Popen a Python probe in the sandbox (TRY's helpers first); its last stdout line is JSON."""
    argv, preexec = jail.command([sys.executable, "-c", TRY + textwrap.dedent(code)], binds=binds or {},
                                 env={**ENV, **(env or {})}, memory=memory, tmp_bytes=tmp_bytes,
                                 shm_bytes=shm_bytes, pass_fds=pass_fds, cgroups=cgroups)
    popen = {"pass_fds": pass_fds, **(popen or {})}
    return subprocess.Popen(argv, preexec_fn=preexec, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, **popen)


def probe(code: str, timeout=60, **kw) -> dict:
    proc = start(code, **kw)
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == 0, f"probe failed ({proc.returncode}):\n{out}\n{err}"
    return json.loads(out.strip().splitlines()[-1])




def test_dev_is_private():
    name = f"jail-probe-{uuid.uuid4().hex}"
    r = probe(f"""
    print(json.dumps({{"dev": attempt(lambda: open("/dev/{name}", "w").close()),
                      "mknod": attempt(lambda: os.mknod("/dev/{name}-n")),
                      "shm": attempt(lambda: open("/dev/shm/{name}", "w").write("x") and None),
                      "devs": sorted(os.listdir("/dev"))}}))
    """)
    assert not Path(f"/dev/{name}").exists() and not Path(f"/dev/{name}-n").exists()
    assert not Path(f"/dev/shm/{name}").exists()
    assert r["dev"] in ("EROFS", "EACCES") and r["mknod"] in ("EROFS", "EACCES", "EPERM")
    assert r["shm"] == "ok"                                  # the sandbox's own /dev/shm works
    assert {"null", "zero", "urandom", "shm"} <= set(r["devs"]) and not {"sda", "mem", "kmsg", "vda"} & set(r["devs"])


def host_segments() -> set[tuple[str, str, str]]:
    lines = Path("/proc/sysvipc/shm").read_text().splitlines()[1:]
    return {tuple(line.split()[:2] + [line.split()[3]]) for line in lines}   # key, shmid, size


def test_sysv_shared_memory_stays_inside():
    key, size = 0x6A41_1000 + os.getpid() % 4096, 1_234_567
    before = host_segments()
    r = probe(f"""
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    libc.shmat.restype = ctypes.c_void_p
    def make(k):
        def f():
            i = libc.shmget(k, {size}, 0o1600)               # IPC_CREAT | 0600, never removed
            if i < 0:
                raise OSError(ctypes.get_errno(), "shmget")
            libc.shmat(i, None, 0)
            return i
        return f
    print(json.dumps({{"private": attempt(make(0)), "fixed": attempt(make({key}))}}))
    """)
    after = host_segments()
    assert not {s for s in after - before if s[2] == str(size)}, f"segments left on the host: {after - before}"
    assert not any(int(k) == key for k, _, _ in after)
    assert r["private"] in ("EPERM", "ENOSYS") or isinstance(r["private"], int), r
    print("SysV shmget inside:", r)


def test_hostname_is_the_sandboxes_own():
    host = socket.gethostname()
    r = probe("""
    import ctypes, socket
    libc = ctypes.CDLL(None, use_errno=True)
    def sethostname():
        if libc.sethostname(b"pwned", 5) != 0:
            raise OSError(ctypes.get_errno(), "sethostname")
    print(json.dumps({"proc": attempt(lambda: open("/proc/sys/kernel/hostname", "w").write("pwned") and None),
                      "sysrq": attempt(lambda: open("/proc/sysrq-trigger", "w").close()),
                      "call": attempt(sethostname), "name": socket.gethostname(),
                      "proc_name": open("/proc/sys/kernel/hostname").read().strip()}))
    """)
    assert socket.gethostname() == host != "pwned"
    assert r["name"] == r["proc_name"] == jail.HOSTNAME
    assert r["proc"] in ("EROFS", "EACCES") and r["sysrq"] in ("EROFS", "EACCES", "ENOENT") and r["call"] == "EPERM", r


def test_tmpfs_sizes_and_the_memory_limit():
    small = probe("""
    chunk = b"x" * (5 << 20)
    def fill(path, n, tag="f"):
        def f():
            for i in range(n):
                with open(f"{path}/{tag}{i}", "wb") as fh:
                    fh.write(chunk)
        return f
    home = os.environ["HOME"]
    work, shm = attempt(fill(home, 2)), attempt(fill("/dev/shm", 2))        # 10 MiB into 8 MiB each
    for p in os.listdir(home):
        if p.startswith("f"):
            os.remove(os.path.join(home, p))
    tmp_shares = attempt(lambda: [fill("/tmp", 1)(), fill(home, 1, "g")()] and None)
    print(json.dumps({"work": work, "shm": shm, "tmp_shares": tmp_shares}))
    """, tmp_bytes=8 * MiB, shm_bytes=8 * MiB)
    assert small == {"work": "ENOSPC", "shm": "ENOSPC", "tmp_shares": "ENOSPC"}, small

    # memory=1 GiB: 256 MiB of work tmpfs and 64 MiB of /dev/shm filled, then 900 MB more is refused
    big = probe("""
    chunk = b"x" * (16 << 20)
    for path, n in ((os.environ["HOME"], 16), ("/dev/shm", 4)):
        for i in range(n):
            with open(f"{path}/f{i}", "wb") as fh:
                try:
                    fh.write(chunk[: (16 << 20) - (4096 if i == n - 1 else 0)])
                except OSError:
                    pass
    used = sum(os.path.getsize(f"{p}/{f}") for p in (os.environ["HOME"], "/dev/shm") for f in os.listdir(p)
               if f.startswith("f"))
    def alloc(n):
        def f():
            b = bytearray(n)
            b[::4096] = b"y" * len(b[::4096])
        return f
    print(json.dumps({"used": used, "900MB": attempt(alloc(900 * 10**6)), "300MB": attempt(alloc(300 * 10**6)),
                      "memfd": attempt(lambda: os.memfd_create("x") and None)}))
    """, memory=2**30, tmp_bytes=256 * MiB, shm_bytes=64 * MiB, timeout=120)
    assert big["used"] > 310 * MiB, big
    assert big["900MB"] == "MemoryError" and big["300MB"] == "ok", big
    assert big["memfd"] == "EPERM", big                   # memfd pages would escape RLIMIT_AS


def test_no_network():
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        listener.settimeout(0.5)
        port = listener.getsockname()[1]
        abstract = f"\0course-jail-{uuid.uuid4().hex}"
        with socket.socket(socket.AF_UNIX) as unix:
            unix.bind(abstract)
            unix.listen()
            r = probe(f"""
            import socket
            def tcp():
                socket.create_connection(("127.0.0.1", {port}), timeout=3).close()
            def unix():
                s = socket.socket(socket.AF_UNIX); s.settimeout(3); s.connect({abstract!r}); s.close()
            print(json.dumps({{"tcp": attempt(tcp), "unix": attempt(unix), "ifs": sorted(os.listdir("/sys/class/net"))
                              if os.path.isdir("/sys/class/net") else [n for _, n in socket.if_nameindex()]}}))
            """)
        with pytest.raises(socket.timeout):
            listener.accept()
    assert r["tcp"] in ("ECONNREFUSED", "ENETUNREACH") and r["unix"] == "ECONNREFUSED", r
    assert r["ifs"] == ["lo"], r


def test_no_host_process_no_privilege():
    r = probe("""
    import ctypes, subprocess
    def unshare_user():
        if ctypes.CDLL(None, use_errno=True).unshare(0x10000000) != 0:          # CLONE_NEWUSER
            raise OSError(ctypes.get_errno(), "unshare")
    status = dict(l.split(":", 1) for l in open("/proc/self/status").read().splitlines())
    print(json.dumps({"pids": sorted(p for p in os.listdir("/proc") if p.isdigit()), "uid": os.getuid(),
                      "gid": os.getgid(), "groups": os.getgroups(),
                      "caps": {k: status[k].strip() for k in status if k.startswith("Cap")},
                      "nnp": status["NoNewPrivs"].strip(), "seccomp": status["Seccomp"].strip(),
                      "fork": attempt(lambda: os.fork() and None),
                      "spawn": attempt(lambda: subprocess.run(["true"]) and None),
                      "userns": attempt(unshare_user),
                      "chroot": attempt(lambda: os.chroot("/")), "ppid": os.getppid()}))
    """)
    assert r["pids"] == ["1"], r["pids"]                      # only itself: no bwrap, no host process
    assert r["uid"] == r["gid"] == 65534 and r["groups"] in ([], [65534]), r
    assert set(r["caps"].values()) == {"0000000000000000"}, r["caps"]
    assert r["nnp"] == "1" and r["seccomp"] == "2"
    assert r["fork"] == "EAGAIN" and r["spawn"] == "EAGAIN" and r["chroot"] == "EPERM", r
    assert r["userns"] in ("ENOSPC", "EPERM", "EUSERS"), r                  # --disable-userns


def test_course_invisible_bound_folder_read_only(tmp_path):
    copy = tmp_path / "course-copy"                             # another copy of the course, under /tmp
    shutil.copytree(course.ROOT / "solutions", copy / "solutions")
    shutil.copy(course.ROOT / "tools" / "course.py", copy / "course.py")
    lib = tmp_path / "lib"                                      # what the judge would prepare and bind
    (lib / "solutions").mkdir(parents=True)
    (lib / "solutions" / "__init__.py").write_text("")
    (lib / "solutions" / "ch01_tensors.py").write_text("EARLIER = 'chapter 1'\n")
    hidden = [str(course.ROOT), str(course.ROOT / "tools" / "course.py"), str(course.ROOT / "solutions"),
              str(course.SOLUTIONS / "ch03_attention.py"), str(copy), str(copy / "solutions"),
              str(course.ROOT.parent / "shared"), "/root/.bashrc", "/home/" + os.environ.get("USER", "root"),
              "/etc/passwd", "/sys", "/run"]
    site_packages = next(p for p in sys.path if p.startswith(sys.prefix) and p.endswith("site-packages"))
    site_packages = os.path.join(jail.VENV, os.path.relpath(site_packages, sys.prefix))
    writable = ["/", "/usr", "/usr/bin", jail.VENV, site_packages, sys.base_prefix, "/course/lib",
                "/course/lib/solutions", "/proc/sys/kernel", "/dev", "/root", "/work", "/bin"]
    r = probe(f"""
    import importlib, sys
    hidden = {hidden!r}
    def write(d):
        def f():
            with open(os.path.join(d, "jail-probe"), "w"):
                pass
        return f
    def link():
        os.symlink({str(course.SOLUTIONS / "ch01_tensors.py")!r}, "link.py")
        return open("link.py").read()
    import solutions, solutions.ch01_tensors
    out = {{"seen": [p for p in hidden if os.path.exists(p)], "solutions": solutions.__file__,
           "earlier": solutions.ch01_tensors.EARLIER,
           "later": attempt(lambda: importlib.import_module("solutions.ch03_attention") and None),
           "finder": [type(f).__name__ if not isinstance(f, type) else f.__name__ for f in sys.meta_path],
           "link": attempt(link),
           "writes": {{d: attempt(write(d)) for d in {writable!r}}},
           "rewrite": attempt(lambda: open("/course/lib/solutions/ch01_tensors.py", "a").close()),
           "root": sorted(os.listdir("/"))}}
    sys.meta_path[:] = [f for f in sys.meta_path if "Editable" not in getattr(f, "__name__", "")]
    del sys.modules["solutions"]
    out["without_finder"] = importlib.import_module("solutions").__file__
    print(json.dumps(out))
    """, binds={str(lib): "/course/lib"}, env={"PYTHONPATH": "/course/lib"})
    assert r["seen"] == [], r["seen"]
    assert r["solutions"] == r["without_finder"] == "/course/lib/solutions/__init__.py"
    assert r["earlier"] == "chapter 1" and r["later"] == "ModuleNotFoundError", r
    assert r["link"] == "ENOENT", r
    assert all(v in ("EROFS", "EACCES", "ENOENT") for v in r["writes"].values()), r["writes"]
    assert r["rewrite"] in ("EROFS", "EACCES"), r
    assert not (copy / "jail-probe").exists() and not (lib / "solutions" / "jail-probe").exists()
    assert set(r["root"]) <= {"bin", "sbin", "lib", "lib64", "lib32", "libx32", "usr", "proc", "dev", "tmp",
                              "home", "course", *{p.split("/")[1] for p in jail.runtime_binds().values()}}, r["root"]
    print("meta_path inside:", r["finder"])


def test_editable_finder_alone_finds_nothing():
    r = probe("""
    import importlib.util, sys
    print(json.dumps({"spec": str(importlib.util.find_spec("solutions")),
                      "finders": [getattr(f, "__name__", type(f).__name__) for f in sys.meta_path]}))
    """)
    assert r["spec"] == "None" and any("Editable" in f for f in r["finders"]), r


def test_only_pass_fds_reach_the_worker():
    extra = os.open("/dev/null", os.O_RDONLY)
    os.set_inheritable(extra, True)
    read_end, write_end = os.pipe()
    try:
        code = f"""
        fds = sorted(int(f) for f in os.listdir("/proc/self/fd")
                     if attempt(lambda: os.fstat(int(f)) and None) == "ok")   # not listdir's own, closed
        os.write({write_end}, b"hello")
        print(json.dumps({{"fds": fds}}))
        """
        os.set_inheritable(write_end, True)
        os.set_inheritable(read_end, True)
        # Popen closing what is not in pass_fds; then Popen closing nothing (jail's preexec still does)
        for popen in ({}, {"close_fds": False, "pass_fds": ()}):
            r = probe(code, pass_fds=(write_end,), popen=popen)
            assert os.read(read_end, 5) == b"hello"
            assert r["fds"] == [0, 1, 2, write_end], (popen, r)
    finally:
        for fd in (extra, read_end, write_end):
            os.close(fd)


def test_fork_bomb_and_thread_bomb_are_contained():
    r = probe("""
    import threading
    def forks():
        n = 0
        for _ in range(1000):
            try:
                if os.fork() == 0:
                    os._exit(0)
                n += 1
            except OSError:
                break
        return n
    threading.stack_size(32768)
    stop, threads = threading.Event(), []
    try:
        for _ in range(20000):
            threads.append(threading.Thread(target=stop.wait, daemon=True))
            threads[-1].start()
    except (RuntimeError, MemoryError):
        threads.pop()
    n, tasks = len(threads), len(os.listdir("/proc/self/task"))
    stop.set()
    for t in threads:                   # (threads killed at exit would need memory to unwind)
        t.join()
    print(json.dumps({"forks": forks(), "threads": n, "tasks": tasks}))
    """, memory=320 * MiB, tmp_bytes=16 * MiB, shm_bytes=16 * MiB)
    assert r["forks"] == 0, r
    assert 10 < r["threads"] < 5000, r                      # bounded by RLIMIT_AS (stacks) without a cgroup
    print("threads before RLIMIT_AS stopped them (memory=320 MiB):", r["threads"])


@pytest.mark.skipif("pids" not in jail.cgroup_parents(), reason="no writable pids cgroup: threads are bounded "
                    "by RLIMIT_AS only (RLIMIT_NPROC does not apply: the sandbox's uid is host root's)")
def test_pids_cgroup_bounds_threads():
    proc = start("""
    import threading
    stop, threads = threading.Event(), []
    try:
        for _ in range(5000):
            threads.append(threading.Thread(target=stop.wait, daemon=True))
            threads[-1].start()
    except (RuntimeError, MemoryError):
        threads.pop()
    stop.set()
    for t in threads:
        t.join()
    print(json.dumps({"threads": len(threads)}))
    """, cgroups=("pids",))
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert json.loads(out.splitlines()[-1])["threads"] < jail.PIDS_MAX, out
    jail.cleanup()
    assert not any(d.name == f"{jail.CGROUP_PREFIX}{proc.pid}" for d in jail.cgroup_parents()["pids"].iterdir())


def children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(c) for c in (task / "children").read_text().split()]
    return found


def test_worker_dies_with_its_parent():
    proc = start("import time\nprint('{}', flush=True)\ntime.sleep(60)")
    assert proc.stdout.readline().strip() == "{}"
    workers = children(proc.pid)
    assert workers, "bwrap has no child"
    proc.kill()                                             # SIGKILL the Popen'd bwrap
    proc.wait(timeout=10)
    deadline = time.monotonic() + 10
    while any(Path(f"/proc/{w}").exists() and "Z" not in Path(f"/proc/{w}/stat").read_text().split()[2]
              for w in workers) and time.monotonic() < deadline:
        time.sleep(0.05)
    left = [w for w in workers if Path(f"/proc/{w}").exists()
            and Path(f"/proc/{w}/stat").read_text().split()[2] != "Z"]
    assert not left, f"worker processes left after bwrap was killed: {left}"


def timed(argv, preexec=None) -> float:
    t = time.perf_counter()
    out = subprocess.run(argv, preexec_fn=preexec, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "tensor(2.)", out.stderr
    return time.perf_counter() - t


def test_torch_runs_inside_and_start_time():
    code = ["-c", "import torch; print(torch.ones(2).sum())"]
    inside, outside = [], []
    for _ in range(3):
        argv, preexec = jail.command([sys.executable, *code], binds={}, env=ENV, memory=4 * 2**30)
        inside.append(timed(argv, preexec))
        outside.append(timed([sys.executable, *code]))
    print(f"import torch: {statistics.median(inside):.2f} s in the sandbox, "
          f"{statistics.median(outside):.2f} s outside (median of 3)")
    assert statistics.median(inside) < statistics.median(outside) + 2.0
