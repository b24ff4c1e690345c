"""The interpreter template ("zygote"): one per server, run by the server as root.

It imports the heavy modules (numpy, pandas, matplotlib, ...) and the driver once, then
forks every session interpreter from itself, so the imported pages are shared
copy-on-write by all sessions instead of being built again in each (tens of MiB each).
A forked child builds its own sandbox with the same layout and the same protections as
the bubblewrap one (src/sandbox/bwrap-args.ts) before any session code runs:

  Z  zygote (root, host namespaces; never runs session code; a child subreaper)
  └─ A  (root) setsid, connects to the server's socket, joins the session cgroup,
     │   unshare(mount, pid, ipc, uts, cgroup), forks B, reports B's pid, exits
     └─ B  pid 1 of the new pid namespace; blocks every catchable signal; drops to the
        │   box uid, not dumpable, seccomp; reaps; exits with C's status, which makes
        │   the kernel kill every process left in the namespace; SIGKILLed when the
        │   zygote dies (which dies with the server)
        └─ C  the interpreter: new root on a tmpfs (ro /usr, allow-listed /etc, ro driver,
              submounts ro too, rw /workspace and /tmp, own /proc, minimal /dev, capped
              /dev/shm), pivot_root, hostname; box uid; own user namespace mapping uid
              1000 to it (as bubblewrap does) and, from it, an empty network namespace
              with loopback up; no capabilities; rlimits; no_new_privs; the seccomp
              filter; then it unwinds to the top level (no zygote frame stays reachable)
              and runs the driver.

Control channel (fd 3 in, fd 4 out), one JSON object per line:
  server -> zygote  {"op": "init", "seccomp": base64, "preload", "driver_source"}  first
                    {"op": "spawn", "id", ...}             see Zygote.spawn()
                    {"op": "kill", "id"}                   SIGKILL the B of that spawn
  zygote -> server  {"t": "ready", "pid", "preloaded", "preload_errors"}
                    {"t": "spawned", "id", "pid"} | {"t": "failed", "id", "error"}
                    {"t": "exit", "pid", "code" | "signal"}
The source arrives on stdin and is compiled under its in-sandbox name; its environment
holds relative paths only (its working folder is the server's state folder), so the
environment block every interpreter inherits names no host folder.
"""

import base64
import ctypes
import gc
import json
import os
import platform
import re
import select
import signal
import socket
import struct
import sys
import time

CTL_IN, CTL_OUT = 3, 4
DRIVER_FILE = "/opt/sandbox/driver.py"

CLONE_NEWNS, CLONE_NEWCGROUP, CLONE_NEWUTS, CLONE_NEWIPC = 0x20000, 0x02000000, 0x04000000, 0x08000000
CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET = 0x10000000, 0x20000000, 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 32, 4096, 16384, 1 << 18
MNT_DETACH = 2
PR_SET_PDEATHSIG, PR_SET_DUMPABLE, PR_SET_SECCOMP, PR_CAPBSET_DROP = 1, 4, 22, 24
PR_SET_CHILD_SUBREAPER, PR_SET_NO_NEW_PRIVS, PR_CAP_AMBIENT = 36, 38, 47
PR_CAP_AMBIENT_CLEAR_ALL, SECCOMP_MODE_FILTER = 4, 2
SYSCALLS = {"x86_64": {"pivot_root": 155, "capset": 126}, "aarch64": {"pivot_root": 41, "capset": 91}}[platform.machine()]

libc = ctypes.CDLL(None, use_errno=True)
libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
libc.sethostname.argtypes = [ctypes.c_char_p, ctypes.c_size_t]


def check(ret, what):
    if ret != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def mount(src, target, fstype, flags, data=None):
    enc = lambda s: None if s is None else s.encode()  # noqa: E731
    check(libc.mount(enc(src), enc(target), enc(fstype), flags, enc(data)), f"mount {target}")


def bind(src, target, readonly, recursive=True):
    mount(src, target, None, MS_BIND | (MS_REC if recursive else 0))
    # A remount sets the flags it is given: keep what the source mount already forbids.
    have = os.statvfs(target).f_flag
    flags = MS_REMOUNT | MS_BIND | MS_NOSUID | MS_NODEV
    flags |= MS_RDONLY if readonly or have & os.ST_RDONLY else 0
    flags |= MS_NOEXEC if have & os.ST_NOEXEC else 0
    mount(None, target, None, flags)


def unescape_mountinfo(field):
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def harden_submounts(targets):
    """A recursive bind brings the source's submounts along with their own flags, and a
    bind remount changes the top mount only: remount every mount below a read-only
    target read-only, nosuid, nodev too (keeping noexec), as bubblewrap does."""
    with open("/proc/self/mountinfo") as f:
        lines = f.read().splitlines()
    for line in lines:
        fields = line.split(" ")
        point, options = unescape_mountinfo(fields[4]), fields[5].split(",")
        if not any(point.startswith(t + "/") for t in targets):
            continue
        flags = MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV | (MS_NOEXEC if "noexec" in options else 0)
        mount(None, point, None, flags)


def prctl(option, arg2=0, arg3=0, arg4=0, arg5=0):
    check(libc.prctl(option, arg2, arg3, arg4, arg5), f"prctl {option}")


def close_except(keep):
    """Closes every descriptor but `keep` (close_range under the hood)."""
    low = 0
    for fd in sorted(keep):
        if fd > low:
            os.closerange(low, fd)
        low = fd + 1
    os.closerange(low, 1 << 20)


def write_file(path, text):
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def exit_status(status):
    """The status bash would report: 128 + signal number for a signal death."""
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)
    return os.WEXITSTATUS(status) & 0xFF


# ---------------------------------------------------------------- in the child ----------


def build_root(req):
    """C, root in the init user namespace, inside the mount namespace A made: the
    sandbox's file system, then pivot_root into it (the host tree is gone after)."""
    new = req["root_mount"]
    mount("sbx-root", new, "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755,size=1m,nr_inodes=4096")
    for d in ("usr", "etc", "opt/sandbox", "opt/session-lib", "workspace", "tmp", "proc", "dev"):
        os.makedirs(f"{new}/{d}", 0o755)
    for link, target in (("bin", "usr/bin"), ("sbin", "usr/sbin"), ("lib", "usr/lib"), ("lib64", "usr/lib64")):
        os.symlink(target, f"{new}/{link}")
    bind("/usr", f"{new}/usr", True)
    for path in req["etc"]:
        dest = f"{new}{path}"
        os.makedirs(os.path.dirname(dest), 0o755, exist_ok=True)
        if os.path.isdir(path):
            os.makedirs(dest, 0o755, exist_ok=True)
        else:
            open(dest, "w").close()
        bind(path, dest, True)
    for name in ("passwd", "group"):
        with open(f"{new}/etc/{name}", "w") as f:
            f.write(req[name])
        os.chmod(f"{new}/etc/{name}", 0o644)
    bind(req["driver_dir"], f"{new}/opt/sandbox", True)
    bind(req["lib_dir"], f"{new}/opt/session-lib", True)
    harden_submounts([f"{new}/usr", f"{new}/etc", f"{new}/opt"])
    bind(req["workspace_dir"], f"{new}/workspace", False, recursive=False)
    bind(req["tmp_dir"], f"{new}/tmp", False, recursive=False)
    mount("proc", f"{new}/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    for sub in ("sys", "sysrq-trigger", "irq", "bus"):
        if os.path.exists(f"{new}/proc/{sub}"):
            bind(f"{new}/proc/{sub}", f"{new}/proc/{sub}", True)
    dev = f"{new}/dev"
    mount("sbx-dev", dev, "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755,size=64k")
    for node in ("null", "zero", "full", "random", "urandom", "tty"):
        open(f"{dev}/{node}", "w").close()
        mount(f"/dev/{node}", f"{dev}/{node}", None, MS_BIND)
        mount(None, f"{dev}/{node}", None, MS_REMOUNT | MS_BIND | MS_NOSUID | MS_NOEXEC)
    for link, target in (
        ("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"), ("stdout", "/proc/self/fd/1"), ("stderr", "/proc/self/fd/2"),
        ("ptmx", "pts/ptmx"),
    ):
        os.symlink(target, f"{dev}/{link}")
    os.mkdir(f"{dev}/pts", 0o755)
    mount("devpts", f"{dev}/pts", "devpts", MS_NOSUID | MS_NOEXEC, "newinstance,ptmxmode=0666,mode=620")
    os.mkdir(f"{dev}/shm", 0o755)
    mount("sbx-shm", f"{dev}/shm", "tmpfs", MS_NOSUID | MS_NODEV, f"mode=1777,size={int(req['shm_bytes'])}")
    mount(None, dev, None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV)
    os.chdir(new)
    check(libc.syscall(SYSCALLS["pivot_root"], b".", b"."), "pivot_root")
    check(libc.umount2(b".", MNT_DETACH), "umount old root")
    os.chdir("/")
    mount(None, "/", None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV)


def loopback_up():
    SIOCGIFFLAGS, SIOCSIFFLAGS, IFF_UP = 0x8913, 0x8914, 0x1
    import fcntl
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        ifr = fcntl.ioctl(s.fileno(), SIOCGIFFLAGS, struct.pack("16sH22x", b"lo", 0))
        flags = struct.unpack("16sH22x", ifr)[1]
        fcntl.ioctl(s.fileno(), SIOCSIFFLAGS, struct.pack("16sH22x", b"lo", flags | IFF_UP))


def drop_to_sandbox_user(req):
    """Box uid on the host, uid 1000 inside a user namespace of its own (as bubblewrap's
    --unshare-user --uid 1000), every capability gone."""
    uid, gid, inner = int(req["uid"]), int(req["gid"]), int(req["inner_uid"])
    os.setgroups([])
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)
    prctl(PR_SET_DUMPABLE, 1)  # the credential change cleared it; /proc/self must stay ours
    check(libc.unshare(CLONE_NEWUSER), "unshare user namespace")
    write_file("/proc/self/setgroups", "deny")
    write_file("/proc/self/uid_map", f"{inner} {uid} 1\n")
    write_file("/proc/self/gid_map", f"{inner} {gid} 1\n")
    # An empty network namespace owned by this user namespace (as bubblewrap makes it):
    # bringing its loopback up needs CAP_NET_ADMIN there only, which we hold until the
    # drop below, not on the host (a container need not grant it to the server).
    check(libc.unshare(CLONE_NEWNET), "unshare network namespace")
    loopback_up()
    last_cap = int(open("/proc/sys/kernel/cap_last_cap").read())
    for cap in range(last_cap + 1):
        prctl(PR_CAPBSET_DROP, cap)
    prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL)
    header = struct.pack("Ii", 0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3, this thread
    data = bytes(24)  # two all-zero {effective, permitted, inheritable} sets
    check(libc.syscall(SYSCALLS["capset"], header, data), "capset")


def load_seccomp(bpf):
    class SockFprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

    buf = ctypes.create_string_buffer(bpf, len(bpf))
    prog = SockFprog(len(bpf) // 8, ctypes.addressof(buf))
    prctl(PR_SET_NO_NEW_PRIVS, 1)
    check(libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.addressof(prog), 0, 0), "seccomp")


def set_limits(limits):
    import resource
    inf = resource.RLIM_INFINITY
    a = int(limits["as"])
    resource.setrlimit(resource.RLIMIT_AS, (a, a) if a > 0 else (inf, inf))
    cpu = int(limits["cpu"])
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
    fsize, nofile, nproc = int(limits["fsize"]), int(limits["nofile"]), int(limits["nproc"])
    resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))
    resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))
    resource.setrlimit(resource.RLIMIT_NPROC, (nproc, nproc))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_MEMLOCK, (65536, 65536))


def run_interpreter(req, sock_fd):
    """C: builds the sandbox around itself, then becomes the session's driver."""
    try:
        build_root(req)
        check(libc.sethostname(b"sandbox", 7), "sethostname")
        os.setsid()
        drop_to_sandbox_user(req)
        set_limits(req["limits"])
        load_seccomp(SECCOMP)
    except BaseException as e:  # noqa: BLE001 - report anything, then die
        frame = json.dumps({"error": f"sandbox set-up failed: {e}"}).encode()
        try:
            os.write(sock_fd, struct.pack(">IB", len(frame), ord("X")) + frame)
        finally:
            os._exit(71)
    # Session code may run from here on: nothing of the zygote's may stay reachable.
    # Unwinding to the top level frees every frame between here and the zygote's loop
    # (the requests of other sessions, the zygote's state); only the job goes along.
    probe = req.get("probe_args")
    null = os.open("/dev/null", os.O_RDWR)
    if probe is None:
        for fd in (0, 1, 2):
            os.dup2(null, fd)
        os.dup2(sock_fd, 3)
        os.dup2(sock_fd, 4)
        close_except({0, 1, 2, 3, 4})
    else:
        os.dup2(null, 0)
        os.dup2(sock_fd, 1)  # the probe reports on the socket
        os.dup2(sock_fd, 2)
        close_except({0, 1, 2})
    raise BecomeSandboxed(dict(req["env"]), None if probe is None else list(probe))


class BecomeSandboxed(BaseException):
    """Raised in an interpreter whose sandbox is built; caught at the top level."""

    def __init__(self, env, probe_args):
        super().__init__()
        self.env, self.probe_args = env, probe_args


def become(env, probe_args):
    """C, at the top level: the session's driver (or the start-up probe)."""
    os.chdir("/workspace")
    os.umask(0o022)
    os.environ.clear()
    os.environ.update(env)
    if probe_args is not None:
        run_probe(probe_args)
    reset_module_state()
    sys.argv = [DRIVER_FILE]
    driver = sys.modules["_sandbox_driver"]
    # A module built at run time (load_driver): its attributes are unknown to the type checker.
    driver.DRIVER = driver.Driver()  # pyright: ignore[reportAttributeAccessIssue]
    driver.DRIVER.run_forever()
    os._exit(0)


def run_probe(probe_args):
    """The start-up self-test (probe.py) in this very sandbox."""
    sys.argv = ["/opt/sandbox/probe.py", *probe_args]
    status = 0
    try:
        import runpy
        runpy.run_path("/opt/sandbox/probe.py", run_name="__main__")
    except SystemExit as e:
        status = e.code if isinstance(e.code, int) else 1
    except BaseException:  # noqa: BLE001
        import traceback
        traceback.print_exc()
        status = 1
    sys.stdout.flush()
    os._exit(status)


def reset_module_state():
    """Caches the pre-imported modules filled in the zygote's world (paths, env)."""
    import tempfile
    tempfile.tempdir = None
    # Every interpreter starts from the template's memory: the random module reseeds
    # itself after fork, numpy's global generator does not (sessions would draw the same
    # numbers).
    np = sys.modules.get("numpy")
    if np is not None and hasattr(np, "random"):
        np.random.seed()
    # matplotlib remembers its config/cache folders (the zygote's) for good: new
    # remembering functions, resolved from this process's MPLCONFIGDIR.
    mpl = sys.modules.get("matplotlib")
    # (Patching modules found in sys.modules: their attributes are unknown to the type checker.)
    remembering = ("_logged_cached", "_get_config_or_cache_dir", "_get_xdg_config_dir", "_get_xdg_cache_dir")
    if mpl is not None and all(hasattr(mpl, n) for n in remembering):
        mpl.get_configdir = mpl._logged_cached("CONFIGDIR=%s")(  # pyright: ignore[reportAttributeAccessIssue]
            lambda: mpl._get_config_or_cache_dir(mpl._get_xdg_config_dir))
        mpl.get_cachedir = mpl._logged_cached("CACHEDIR=%s")(  # pyright: ignore[reportAttributeAccessIssue]
            lambda: mpl._get_config_or_cache_dir(mpl._get_xdg_cache_dir))
        style = sys.modules.get("matplotlib.style.core")
        if style is not None and hasattr(style, "USER_LIBRARY_PATHS"):
            style.USER_LIBRARY_PATHS = [os.path.join(mpl.get_configdir(), "stylelib")]  # pyright: ignore[reportAttributeAccessIssue]


def run_init(req, sock_fd, a_pidfd, zygote_pidfd):
    """B: pid 1 of the session's pid namespace. a_pidfd: a pidfd of A, our parent."""
    try:
        prctl(PR_SET_CHILD_SUBREAPER, 0)
        pid = os.fork()
        if pid == 0:
            os.close(a_pidfd)
            os.close(zygote_pidfd)
            run_interpreter(req, sock_fd)
        # Session code can send us signals (same host uid): none but SIGKILL/SIGSTOP
        # gets through (and those, to a pid-namespace init, only from outside).
        signal.pthread_sigmask(signal.SIG_BLOCK, set(signal.Signals) - {signal.SIGKILL, signal.SIGSTOP})
        close_except({a_pidfd, zygote_pidfd})
        uid, gid = int(req["uid"]), int(req["gid"])
        os.setgroups([])
        os.setresgid(gid, gid, gid)
        os.setresuid(uid, uid, uid)
        prctl(PR_SET_DUMPABLE, 0)  # whatever fs.suid_dumpable says: no ptrace, no /proc/1/mem
        load_seccomp(SECCOMP)  # no_new_privs and the sessions' filter, as bwrap's init
        # A exits right after forking us: then our parent is the zygote (a subreaper),
        # and the death signal (cleared by the uid change) ties us to it. A's pidfd turns
        # readable only after the kernel has moved us to the zygote; armed earlier, the
        # death signal would fire for A.
        select.select([a_pidfd], [], [])
        os.close(a_pidfd)
        prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        if select.select([zygote_pidfd], [], [], 0)[0]:
            os._exit(137)  # the zygote died before the death signal was armed
        os.close(zygote_pidfd)
        while True:
            try:
                p, status = os.wait()
            except ChildProcessError:
                os._exit(70)
            except InterruptedError:
                continue
            if p == pid:
                os._exit(exit_status(status))
    except BecomeSandboxed:
        raise  # C, on its way to the top level
    except BaseException:  # noqa: BLE001
        os._exit(70)


def run_spawner(req, report_fd, zygote_pid):
    """A: root, still in the host's namespaces."""
    try:
        signal.set_wakeup_fd(-1)  # the zygote's SIGCHLD wake-up is not ours
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        try:
            write_file("/proc/self/oom_score_adj", "0")
        except OSError:
            pass  # the zygote could not lower its own either
        os.setsid()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(req["socket"])
        sock.sendall(req["token"].encode() + b"\n")
        sock_fd = sock.detach()
        if req.get("cgroup_procs"):
            write_file(req["cgroup_procs"], str(os.getpid()))
        if req.get("nice"):
            os.setpriority(os.PRIO_PROCESS, 0, int(req["nice"]))
        # The network namespace comes later, from the interpreter's own user namespace.
        check(libc.unshare(CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWIPC | CLONE_NEWUTS | CLONE_NEWCGROUP), "unshare")
        mount(None, "/", None, MS_REC | MS_PRIVATE)
        zygote_pidfd = os.pidfd_open(zygote_pid)
        own_pidfd = os.pidfd_open(os.getpid())
        pid = os.fork()
        if pid == 0:
            os.close(report_fd)
            run_init(req, sock_fd, own_pidfd, zygote_pidfd)
        os.write(report_fd, json.dumps({"pid": pid}).encode())
        os._exit(0)
    except BecomeSandboxed:
        raise
    except BaseException as e:  # noqa: BLE001
        try:
            os.write(report_fd, json.dumps({"error": f"{type(e).__name__}: {e}"}).encode())
        finally:
            os._exit(1)


# ---------------------------------------------------------------- the zygote ------------

SECCOMP = b""


class Zygote:
    def __init__(self):
        self.out = CTL_OUT
        self.inbuf = b""
        self.inits = {}  # pid -> spawn id of live B processes (our children after A exits)
        self.pending = []  # requests read but not handled yet
        self.unclaimed = {}  # pid -> status of reaped children not (yet) known as a B
        self.spawning = False
        self.init_of = {}  # spawn id -> pid

    def send(self, msg):
        data = (json.dumps(msg, separators=(",", ":")) + "\n").encode()
        view = memoryview(data)
        while view:
            n = os.write(self.out, view)
            view = view[n:]

    def read_messages(self):
        chunk = os.read(CTL_IN, 1 << 20)
        if not chunk:
            os._exit(0)  # the server is gone
        self.inbuf += chunk
        *lines, self.inbuf = self.inbuf.split(b"\n")
        return [json.loads(line) for line in lines if line.strip()]

    def spawn(self, req):
        r, w = os.pipe2(os.O_CLOEXEC)
        pid = os.fork()
        if pid == 0:
            os.close(r)
            run_spawner(req, w, self.pid)
            os._exit(1)
        os.close(w)
        self.spawning = True
        data = b""
        deadline = time.monotonic() + 10
        # While A works, kills and deaths of other sessions are still served (a slow
        # spawn must not hold them up); further spawns wait their turn.
        poller = select.poll()
        for fd in (r, CTL_IN, self.wake_r):
            poller.register(fd, select.POLLIN)
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            try:
                ready = [fd for fd, _ in poller.poll(left * 1000)]
            except InterruptedError:
                continue
            if self.wake_r in ready:
                self.drain_wake()
                self.reap()
            if CTL_IN in ready:
                for m in self.read_messages():
                    if m.get("op") == "kill":
                        self.handle(m)
                    else:
                        self.pending.append(m)
            if r in ready:
                chunk = os.read(r, 4096)
                if not chunk:
                    break
                data += chunk
        os.close(r)
        try:
            msg = json.loads(data or b"{}")
        except ValueError:
            msg = {}
        if isinstance(msg.get("pid"), int):
            self.inits[msg["pid"]] = req["id"]
            self.init_of[req["id"]] = msg["pid"]
            self.send({"t": "spawned", "id": req["id"], "pid": msg["pid"]})
            early = self.unclaimed.pop(msg["pid"], None)
            if early is not None:
                self.report_exit(msg["pid"], early)  # it died (and was reaped) before A reported it
        else:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.send({"t": "failed", "id": req["id"], "error": msg.get("error", "the spawner did not answer")})
        self.unclaimed.clear()  # a later child may get these pids again
        self.spawning = False

    def reap(self):
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            if pid in self.inits:
                self.report_exit(pid, status)
            elif self.spawning:
                self.unclaimed[pid] = status  # this spawn's A, or its B dead before A reported it

    def report_exit(self, pid, status):
        self.init_of.pop(self.inits.pop(pid, None), None)
        if os.WIFSIGNALED(status):
            self.send({"t": "exit", "pid": pid, "signal": os.WTERMSIG(status)})
        else:
            self.send({"t": "exit", "pid": pid, "code": os.WEXITSTATUS(status)})

    def serve(self):
        global SECCOMP
        self.pid = os.getpid()
        server = os.getppid()
        prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != server:
            os._exit(0)  # the server died before the death signal was armed
        # Under memory pressure the kernel should pick a session's process, not the
        # template every session depends on (A puts its children back to 0). Needs
        # CAP_SYS_RESOURCE, which a container may not grant: best effort.
        try:
            write_file("/proc/self/oom_score_adj", "-500")
        except OSError:
            pass
        prctl(PR_SET_CHILD_SUBREAPER, 1)
        wake_r, wake_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self.wake_r = wake_r
        signal.set_wakeup_fd(wake_w)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        init = self.read_messages()
        while not init:
            init = self.read_messages()
        SECCOMP = base64.b64decode(init[0]["seccomp"])
        self.pending = init[1:]
        preloaded, errors = preload(init[0].get("preload", []))
        load_driver(init[0]["driver_source"])
        gc.collect()
        gc.freeze()  # the children's collector then never writes to the template's objects
        self.send({"t": "ready", "pid": self.pid, "preloaded": preloaded, "preload_errors": errors})
        poller = select.poll()
        poller.register(CTL_IN, select.POLLIN)
        poller.register(wake_r, select.POLLIN)
        while True:
            while self.pending:
                self.handle(self.pending.pop(0))
            try:
                ready = [fd for fd, _ in poller.poll()]
            except InterruptedError:
                continue
            if wake_r in ready:
                self.drain_wake()
            self.reap()
            if CTL_IN in ready:
                self.pending.extend(self.read_messages())

    def drain_wake(self):
        try:
            while os.read(self.wake_r, 512):
                pass
        except BlockingIOError:
            pass

    def handle(self, msg):
        op = msg.get("op")
        if op == "spawn":
            self.spawn(msg)
        elif op == "kill":
            # By spawn id, never by pid: a pid is only ours until we reap it, and could
            # name another session's init after that.
            pid = self.init_of.get(msg.get("id"))
            if pid is not None:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass


def preload(names):
    done, errors = [], {}
    for name in names:
        try:
            __import__(name)
            done.append(name)
        except BaseException as e:  # noqa: BLE001 - a missing module must not stop the server
            errors[name] = f"{type(e).__name__}: {e}"
    return done, errors


def load_driver(source):
    """The driver as a module whose code carries its in-sandbox file name (no host
    path ever reaches the zygote, hence none its children could find)."""
    import types
    code = compile(source, DRIVER_FILE, "exec")
    mod = types.ModuleType("_sandbox_driver")
    mod.__file__ = DRIVER_FILE
    sys.modules["_sandbox_driver"] = mod
    exec(code, mod.__dict__)


if __name__ == "__main__":
    try:
        Zygote().serve()
    except BecomeSandboxed as sandboxed:  # only in a forked interpreter, sandbox built
        job = (sandboxed.env, sandboxed.probe_args)
    gc.collect()  # the unwound frames and the zygote's objects are gone
    become(*job)
