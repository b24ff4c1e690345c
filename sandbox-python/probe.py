"""Start-up probe, run inside a freshly made sandbox of each kind the server uses: dumps,
as one JSON object on stdout, what the sandbox is from inside. The server compares the
dump with what its sandbox description (src/sandbox/spec.ts) says and with the other
kinds' dumps (src/sandbox/probe-compare.ts); it does not judge anything itself.
argv[1]: a host path that must not be visible (the sessions root)."""

import ctypes
import errno
import fcntl
import importlib.util
import json
import os
import platform
import resource
import socket
import struct
import sys
from typing import Any

libc = ctypes.CDLL(None, use_errno=True)
NR = {
    "x86_64": {
        "keyctl": 250, "clone3": 435, "bpf": 321, "userfaultfd": 323, "io_uring_setup": 425, "io_setup": 206,
        "mincore": 27, "cachestat": 451, "fadvise64": 221, "madvise": 28, "preadv2": 327, "pwritev2": 328,
        "process_madvise": 440, "pidfd_getfd": 438, "seccomp": 317, "memfd_secret": 447, "sync": 162, "syncfs": 306,
    },
    "aarch64": {
        "keyctl": 219, "clone3": 435, "bpf": 280, "userfaultfd": 282, "io_uring_setup": 425, "io_setup": 0,
        "mincore": 232, "cachestat": 451, "fadvise64": 223, "madvise": 233, "preadv2": 286, "pwritev2": 287,
        "process_madvise": 440, "pidfd_getfd": 438, "seccomp": 277, "memfd_secret": 447, "sync": 81, "syncfs": 267,
    },
}[platform.machine()]
FLAGS = ("ro", "nosuid", "nodev", "noexec")


def unescape(field: str) -> str:
    out, i = "", 0
    while i < len(field):
        if field[i] == "\\" and field[i + 1 : i + 4].isdigit():
            out += chr(int(field[i + 1 : i + 4], 8))
            i += 4
        else:
            out += field[i]
            i += 1
    return out


def template_rule(name: str) -> Any:
    """A function of the template's builder (zygote.py, next to this file in every kind of
    sandbox): the probe reports mounts by the very rule the builder works by."""
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "zygote.py")
    spec = importlib.util.spec_from_file_location("_template_rules", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return getattr(module, name)


def mounts() -> list[list[Any]]:
    """The mounts one can reach by path (zygote.reachable: a mount another is mounted
    over, or one a sibling covers from a folder above, is hidden): point, file system type,
    and which of ro/nosuid/nodev/noexec."""
    entries: list[tuple[str, str, str, list[Any]]] = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            fields = left.split(" ")
            point, options = unescape(fields[4]), fields[5].split(",")
            entries.append((fields[0], fields[1], point, [point, right.split(" ")[0], [o for o in FLAGS if o in options]]))
    return sorted(e[3] for e in template_rule("reachable")(entries))


def devpts() -> dict[str, str]:
    """The options of the devpts at /dev/pts (mode, ptmxmode, and max when it has one:
    how many ptys the sandbox may hold), from the mount table."""
    found = ""  # the last one listed, if /dev/pts were mounted over
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, _, right = line.rstrip("\n").partition(" - ")
            if unescape(left.split(" ")[4]) == "/dev/pts" and right.split(" ")[0] == "devpts":
                found = right.split(" ")[2]
    options: dict[str, str] = {}
    for option in found.split(","):
        key, _, value = option.partition("=")
        options[key] = value
    return {k: options[k] for k in ("mode", "ptmxmode", "max") if k in options}


def openpty() -> str:
    """Whether a pty can be opened here: "ok", or the error's name (a bash command beside
    its session's living interpreter, in a sandbox of its own, has none: ENOENT)."""
    try:
        master, follower = os.openpty()
    except OSError as e:
        return errno.errorcode.get(e.errno or 0, str(e.errno))
    os.close(master)
    os.close(follower)
    return "ok"


def rlimits() -> dict[str, list[int]]:
    out, seen = {}, set()
    for name in sorted(n for n in dir(resource) if n.startswith("RLIMIT_")):
        if getattr(resource, name) in seen:
            continue  # an alias (RLIMIT_OFILE is RLIMIT_NOFILE)
        seen.add(getattr(resource, name))
        soft, hard = resource.getrlimit(getattr(resource, name))
        norm = [-1 if v == resource.RLIM_INFINITY else v for v in (soft, hard)]
        out[name[len("RLIMIT_") :].lower()] = norm
    return out


def status() -> dict[str, str]:
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            out[k] = v.strip()
    return out


def outcome(call) -> str:
    """The errno name a call fails with, or "ok"."""
    try:
        r = call()
    except OSError as e:
        return errno_name(e.errno or 0)
    if isinstance(r, int) and r < 0:
        return errno_name(ctypes.get_errno())
    return "ok"


def errno_name(n: int) -> str:
    # Python names 95 ENOTSUP; the kernel's name for what the filter returns is EOPNOTSUPP.
    return "EOPNOTSUPP" if n == errno.EOPNOTSUPP else errno.errorcode.get(n, str(n))


def sock(family: int, kind: int) -> int:
    socket.socket(family, kind, 0).close()
    return 0


def tcp_option(option: int, value: int) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.IPPROTO_TCP, option, value)
    return 0


def seccomp_checks() -> dict[str, str]:
    def sys_(name, *args):
        ctypes.set_errno(0)
        return libc.syscall(NR[name], *args)

    def c(fn, *args):
        ctypes.set_errno(0)
        return fn(*args)

    tiocsti = ctypes.c_char(b"x")
    return {
        "unshare(CLONE_NEWUSER)": outcome(lambda: c(libc.unshare, 0x10000000)),
        "unshare(0)": outcome(lambda: c(libc.unshare, 0)),
        "socket(AF_NETLINK)": outcome(lambda: sock(socket.AF_NETLINK, socket.SOCK_RAW)),
        "socket(AF_PACKET)": outcome(lambda: sock(socket.AF_PACKET, socket.SOCK_RAW)),
        "keyctl(GET_KEYRING_ID)": outcome(lambda: sys_("keyctl", 0, -3, 0)),
        "ioctl(TIOCSTI)": outcome(lambda: c(libc.ioctl, 0, 0x5412, ctypes.byref(tiocsti))),
        "personality(0x0040000)": outcome(lambda: c(libc.personality, 0x0040000)),
        "clone3()": outcome(lambda: sys_("clone3", 0, 0)),
        "bpf()": outcome(lambda: sys_("bpf", 0, 0, 0)),
        "userfaultfd()": outcome(lambda: sys_("userfaultfd", 0)),
        "memfd_secret()": outcome(lambda: sys_("memfd_secret", 0)),
        "sync()": outcome(lambda: sys_("sync")),
        "syncfs(0)": outcome(lambda: sys_("syncfs", 0)),
        "ptrace(PEEKDATA, 1)": outcome(lambda: c(libc.ptrace, 2, os.getpid(), 0, 0)),
        "pidfd_getfd(init, 0)": outcome(lambda: init_fd(sys_)),
        "io_uring_setup()": outcome(lambda: sys_("io_uring_setup", 0, 0)),
        "io_setup(1)": outcome(lambda: sys_("io_setup", 1, ctypes.byref(ctypes.c_ulong(0)))),
        "inotify_init1()": outcome(lambda: c(libc.inotify_init1, 0)),
        "setsockopt(TCP_LINGER2)": outcome(lambda: tcp_option(8, 120)),
        "setsockopt(IPV6_FLOWLABEL_MGR)": outcome(flow_label),
        "setsockopt(SO_ATTACH_FILTER)": outcome(socket_filter),
        "setsockopt(IPV6_ADD_MEMBERSHIP)": outcome(lambda: join_group(socket.AF_INET6)),
        "setsockopt(IP_ADD_MEMBERSHIP)": outcome(lambda: join_group(socket.AF_INET)),
        "seccomp(SET_MODE_FILTER)": outcome(lambda: sys_("seccomp", 1, 0, 0)),
        "seccomp(GET_ACTION_AVAIL)": outcome(lambda: sys_("seccomp", 2, 0, ctypes.byref(ctypes.c_uint32(0x7FFF0000)))),
        "setsockopt(TCP_NODELAY)": outcome(lambda: tcp_option(1, 1)),
        **page_cache_checks(sys_),
        **fcntl_checks(),
    }


def flow_label() -> int:
    """Asks for an IPv6 flow label (IPV6_FLOWLABEL_MGR: get, create, shared with anyone)."""
    request = struct.pack("16sIBBHHHI", socket.inet_pton(socket.AF_INET6, "::1"), 0, 0, 255, 1, 0, 0, 0)
    with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
        s.setsockopt(socket.IPPROTO_IPV6, 32, request)
    return 0


def socket_filter() -> int:
    """Attaches a one-instruction classic BPF filter (accept all) to a UDP socket."""
    insn = struct.pack("HBBI", 0x06, 0, 0, 0xFFFF)  # ret #0xffff
    buf = ctypes.create_string_buffer(insn, len(insn))
    prog = struct.pack("HxxxxxxQ", 1, ctypes.addressof(buf))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.setsockopt(socket.SOL_SOCKET, 26, prog)  # SO_ATTACH_FILTER
    return 0


def join_group(family: int) -> int:
    """Joins a multicast group on the loopback (index 1)."""
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        if family == socket.AF_INET6:
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_JOIN_GROUP, socket.inet_pton(family, "ff05::1") + struct.pack("@I", 1))
        else:
            s.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, socket.inet_aton("239.1.2.3") + socket.inet_aton("127.0.0.1"))
    return 0


def init_fd(sys_) -> int:
    """pidfd_getfd of the namespace init's descriptor 0 (a ptrace access)."""
    pidfd = os.pidfd_open(1)
    try:
        return sys_("pidfd_getfd", pidfd, 0, 0)
    finally:
        os.close(pidfd)


def init_memory() -> str:
    """Whether the namespace init's memory opens for writing ("open") or not ("refused"):
    bubblewrap's init is the sandbox's uid and dumpable, so its folder must be covered."""
    try:
        with open("/proc/1/mem", "r+b"):
            return "open"
    except OSError:
        return "refused"


def oom_lower() -> str:
    """Whether this process can lower its OOM score adjustment: "refused" (EACCES), or
    "allowed" (then put back). The kernel lets an unprivileged process return to the lowest
    value a write with CAP_SYS_RESOURCE gave it or an ancestor; a session process able to
    reach -1000 would be one the OOM killer never picks."""
    path = "/proc/self/oom_score_adj"
    try:
        now = int(read(path))
    except ValueError:
        return "unreadable"
    if now <= -1000:
        return "at -1000"
    try:
        fd = os.open(path, os.O_WRONLY)
        try:
            os.write(fd, str(now - 1).encode())
            os.lseek(fd, 0, os.SEEK_SET)
            os.write(fd, str(now).encode())
        finally:
            os.close(fd)
    except OSError as e:
        return "refused" if e.errno in (errno.EACCES, errno.EPERM) else errno_name(e.errno or 0)
    return "allowed"


def fcntl_checks() -> dict[str, str]:
    """dnotify and leases (seccomp-gen.py) on a folder and a file of this sandbox."""
    d = os.open("/tmp", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    fd = os.open(__file__, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return {
            "fcntl(F_NOTIFY)": outcome(lambda: fcntl.fcntl(d, 1026, 1)),  # DN_ACCESS
            "fcntl(F_SETLEASE)": outcome(lambda: fcntl.fcntl(fd, 1024, fcntl.F_RDLCK)),
            "fcntl(F_GETFL)": outcome(lambda: fcntl.fcntl(fd, fcntl.F_GETFL)),
        }
    finally:
        os.close(d)
        os.close(fd)


def page_cache_checks(sys_) -> dict[str, str]:
    """The page-cache side channel (seccomp-gen.py): its probes and evictions are refused,
    and the harmless neighbours of each still work. On a read-only mapping and descriptor
    of this very file (in every kind of sandbox)."""
    long, ptr = ctypes.c_long, ctypes.c_void_p
    libc.mmap.restype, libc.mmap.argtypes = ptr, [ptr, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, long]
    page = os.sysconf("SC_PAGE_SIZE")
    fd = os.open(__file__, os.O_RDONLY | os.O_CLOEXEC)
    rfd, wfd = os.pipe2(os.O_CLOEXEC)
    addr = libc.mmap(None, page, 1, 2, fd, 0)  # PROT_READ, MAP_PRIVATE
    vec = ctypes.create_string_buffer(1)
    buf = ctypes.create_string_buffer(page)
    iov = (ctypes.c_void_p * 2)(ctypes.addressof(buf), 16)  # struct iovec
    span = (ctypes.c_uint64 * 2)(0, page)  # struct cachestat_range
    stat = (ctypes.c_uint64 * 5)()  # struct cachestat
    nowait = 0x08  # RWF_NOWAIT
    try:
        return {
            "mincore()": outcome(lambda: sys_("mincore", ptr(addr), long(page), vec)),
            "cachestat()": outcome(lambda: sys_("cachestat", fd, span, stat, 0)),
            "fadvise64(DONTNEED)": outcome(lambda: sys_("fadvise64", fd, long(0), long(0), 4)),
            "fadvise64(WILLNEED)": outcome(lambda: sys_("fadvise64", fd, long(0), long(0), 3)),
            "madvise(MADV_COLD)": outcome(lambda: sys_("madvise", ptr(addr), long(page), 20)),
            "madvise(MADV_PAGEOUT)": outcome(lambda: sys_("madvise", ptr(addr), long(page), 21)),
            "madvise(MADV_DONTNEED)": outcome(lambda: sys_("madvise", ptr(addr), long(page), 4)),
            "process_madvise()": outcome(lambda: sys_("process_madvise", -1, iov, 1, 21, 0)),
            "preadv2(RWF_NOWAIT)": outcome(lambda: sys_("preadv2", fd, iov, 1, long(0), long(0), nowait)),
            "preadv2(0)": outcome(lambda: sys_("preadv2", fd, iov, 1, long(0), long(0), 0)),
            "pwritev2(RWF_NOWAIT)": outcome(lambda: sys_("pwritev2", wfd, iov, 1, long(-1), long(-1), nowait)),
        }
    finally:
        libc.munmap(ptr(addr), ctypes.c_size_t(page))
        for d in (fd, rfd, wfd):
            os.close(d)


def interfaces() -> dict[str, bool]:
    """Each network interface and whether it is up (netlink is filtered: /proc/net/dev)."""
    out = {}
    with open("/proc/net/dev") as f:
        names = [line.split(":")[0].strip() for line in f.read().splitlines()[2:]]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for name in names:
            ifr = fcntl.ioctl(s.fileno(), 0x8913, struct.pack("16sH22x", name.encode(), 0))  # SIOCGIFFLAGS
            out[name] = bool(struct.unpack("16sH22x", ifr)[1] & 1)
    return out


# The per-namespace TCP sysctls the spec sets (spec.ts SANDBOX_NETWORK); their values here.
NET_SYSCTLS = (
    "net/ipv4/tcp_orphan_retries", "net/ipv4/tcp_fin_timeout", "net/core/somaxconn", "net/ipv4/tcp_max_syn_backlog",
    "net/ipv4/tcp_max_tw_buckets",
)


def loopback() -> dict[str, Any]:
    """lo's MTU (SIOCGIFMTU) and the network namespace's TCP sysctls. (gso_max_segs is only
    readable over netlink, which the filter refuses: the builder checks its own request.)"""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        mtu = struct.unpack("16si20x", fcntl.ioctl(s.fileno(), 0x8921, struct.pack("16si20x", b"lo", 0)))[1]
    return {"mtu": mtu, "sysctls": {key: read(f"/proc/sys/{key}") for key in NET_SYSCTLS}}


# The ipc namespace's limits the spec sets (spec.ts SandboxIpc); their values here, and
# whether the sandbox could change any of them.
IPC_SYSCTLS = (
    "kernel/shm_rmid_forced", "kernel/shmmax", "kernel/shmall", "kernel/shmmni",
    "kernel/msgmni", "kernel/msgmnb", "kernel/msgmax", "kernel/sem",
)


def ipc() -> dict[str, Any]:
    return {
        "sysctls": {key: read(f"/proc/sys/{key}") for key in IPC_SYSCTLS},
        "writable": sorted(key for key in IPC_SYSCTLS if os.access(f"/proc/sys/{key}", os.W_OK)),
    }


def network() -> str:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(1)
    try:
        s.connect(("1.1.1.1", 443))
        return "connected"
    except OSError as e:
        return errno.errorcode.get(e.errno or 0, "error")
    finally:
        s.close()


def listing(folder: str) -> list[str]:
    """Entries of a folder: name, and where a symbolic link points."""
    out = []
    for name in sorted(os.listdir(folder)):
        path = os.path.join(folder, name)
        out.append(f"{name} -> {os.readlink(path)}" if os.path.islink(path) else name)
    return out


def read(path: str) -> str:
    try:
        with open(path) as f:
            return " ".join(f.read().split())
    except OSError as e:
        return f"unreadable: {errno.errorcode.get(e.errno or 0, '?')}"


def writable(folder: str) -> bool:
    try:
        open(os.path.join(folder, ".probe"), "w").close()
        return True
    except OSError:
        return False


def init_environ() -> list[str]:
    """The names in the namespace init's environment, which session code can read if it
    is readable: must not show the server's."""
    try:
        with open("/proc/1/environ") as f:
            return sorted(k.split("=", 1)[0] for k in f.read().split("\0") if k)
    except OSError:
        return []


def foreign_sockets() -> list[str]:
    """Inherited sockets that belong to another network namespace than the sandbox's
    (through one, code could read that namespace's interfaces or take its abstract
    socket names): "fd N", or what stopped the check."""
    so_netns_cookie = 71
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as own:
        try:
            mine = own.getsockopt(socket.SOL_SOCKET, so_netns_cookie, 8)
        except OSError as e:
            return [f"unknown: {errno.errorcode.get(e.errno or 0, '?')}"]
        out = []
        for name in os.listdir("/proc/self/fd"):
            fd = int(name)
            try:
                if not os.readlink(f"/proc/self/fd/{fd}").startswith("socket:") or fd == own.fileno():
                    continue
                s = socket.socket(fileno=os.dup(fd))
            except OSError:
                continue
            with s:
                if s.getsockopt(socket.SOL_SOCKET, so_netns_cookie, 8) != mine:
                    out.append(f"fd {fd}")
        return sorted(out)


def main() -> None:
    st = status()
    umask = os.umask(0)
    os.umask(umask)
    report: dict[str, Any] = {
        "mounts": mounts(),
        "devpts": devpts(),
        "openpty": openpty(),
        "rlimits": rlimits(),
        "uid": list(os.getresuid()),
        "gid": list(os.getresgid()),
        "groups": sorted(os.getgroups()),
        "uid_map": read("/proc/self/uid_map"),
        "gid_map": read("/proc/self/gid_map"),
        "capabilities": {k: st.get(k) for k in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb")},
        "no_new_privs": st.get("NoNewPrivs"),
        "seccomp": st.get("Seccomp"),
        "seccomp_filters": st.get("Seccomp_filters"),
        "seccomp_checks": seccomp_checks(),
        "env": dict(os.environ),
        "cwd": os.getcwd(),
        "umask": f"{umask:04o}",
        "hostname": socket.gethostname(),
        "namespaces": {ns: os.readlink(f"/proc/self/ns/{ns}") for ns in sorted(os.listdir("/proc/self/ns"))},
        "interfaces": interfaces(),
        "foreign_sockets": foreign_sockets(),
        "network": network(),
        "loopback": loopback(),
        "ipc": ipc(),
        "pids": sorted(int(p) for p in os.listdir("/proc") if p.isdigit()),
        "init_environ": init_environ(),
        "init_memory": init_memory(),
        "host_path_visible": os.path.exists(sys.argv[1]),
        "writable": {p: writable(p) for p in ("/", "/usr", "/etc", os.getcwd())},
        "proc_writable": {p: os.access(p, os.W_OK) for p in ("/proc/sys", "/proc/sysrq-trigger", "/proc/irq", "/proc/bus")},
        "files": {p: listing(p) for p in ("/", "/dev", "/etc", "/opt")},
        "max_user_namespaces": read("/proc/sys/user/max_user_namespaces"),
        "cgroup": read("/proc/self/cgroup"),
        "oom_score_adj": read("/proc/self/oom_score_adj"),
        "oom_lower": oom_lower(),
    }
    sys.stdout.write(json.dumps(report))
    sys.stdout.flush()


main()
