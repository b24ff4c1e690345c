"""The interpreter template ("zygote"): one per server.

It imports the heavy modules (numpy, pandas, matplotlib, ...) and the driver once, then
forks every session interpreter from itself, so the imported pages are shared
copy-on-write by all sessions instead of being built again in each (tens of MiB each).
A forked child builds its own sandbox from the spec the server sends with each spawn
(src/sandbox/spec.ts, the same description bubblewrap launches are rendered from) before
any session code runs. It works as root (a host uid per session) and unprivileged (where
user namespaces are allowed), the same way bubblewrap does:

  Z  zygote (the server's uid, host namespaces; never runs session code; a subreaper)
  ├─ S  the fork server (serve_forks): makes a B per spawn (clone_box), from a loop that
  │     writes few pages (each page a process writes after a fork is copied, with a TLB
  │     flush)
  └─ B  made by S as the zygote's child (CLONE_PARENT), with the box's host uid as its
     │   effective uid (the server's when unprivileged), in a new user namespace (that
     │   uid's: S maps root of it to that uid) and, owned by it, new network (empty),
     │   mount, pid, ipc and uts namespaces: pid 1 of the new pid namespace. setsid,
     │   joins the session's cgroups (through descriptors S opened), becomes root of its
     │   user namespace, makes a cgroup namespace; connects to the server's socket from
     │   there (the channel); reports; forks C; then blocks every catchable signal, drops
     │   every capability, not dumpable, seccomp; reaps; exits with C's status, which
     │   makes the kernel kill every process left in the namespace; SIGKILLed when the
     │   zygote dies (which dies with the server). (Until 2026-12-03 a process A between
     │   S and B made the namespaces and forked B: a third copy of the template's memory,
     │   and its teardown, per session.)
     └─ C  the interpreter: carries out the spec's mount list on a new root
           (build_root), pivot_root, hostname, loopback up; a second user
           namespace mapping the spec's uid to root of the first (as bubblewrap
           does); no capabilities; rlimits; no_new_privs; the seccomp filter; then
           it unwinds to the top level (no zygote frame stays reachable) and runs
           the driver in the spec's env and cwd.

Control channel (fd 3 in, fd 4 out), one JSON object per line:
  server -> zygote  {"op": "init", "seccomp": base64, "preload", "driver_source",
                     "driver_file", "probe_file", "socket_path"}  first
                    {"op": "spawn", "id", ...}             see Zygote.spawn()
                    {"op": "kill", "id"}                   SIGKILL the init of that spawn
                    {"op": "command", "id", "box", ...}    see Zygote.command()
                    {"op": "forget", "box"}                the box is gone (its host too)
  zygote -> server  {"t": "ready", "pid", "preloaded", "preload_errors"}
                    {"t": "spawned", "id", "pid"} | {"t": "failed", "id", "error"}
                    {"t": "exit", "pid", "code" | "signal"}
Starts are answered as they finish, not in the order they were asked for: one session's
slow start never holds up another's (see Zygote).
The source arrives on stdin, with that of sandbox_network.py (the network set-up it shares
with sandbox-host/devpts-cap.py), and each is compiled under its in-sandbox name; its environment
holds relative paths only (its working folder is the server's state folder), so the
environment block every interpreter inherits names no host folder.
"""

import array
import base64
import ctypes
import errno
import fcntl
import gc
import hmac
import json
import mmap
import os
import platform
import re
import resource
import select
import signal
import socket
import stat
import struct
import sys
import termios
import time

# Shared with sandbox-host/devpts-cap.py. The server registers this module before it runs
# this source (sandbox_network.py says how); loaded from its file instead (probe.py, the
# tests: for the builder's rules), this file finds it next to itself.
if "sandbox_network" not in sys.modules:
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from sandbox_network import configure_ipc, configure_network, loopback_up

CTL_IN, CTL_OUT = 3, 4
ALL_SIGNALS = set(signal.Signals) - {signal.SIGKILL, signal.SIGSTOP}
# In-sandbox names of the driver and the probe (from the init message, i.e. the spec)
DRIVER_FILE = PROBE_FILE = ""

CLONE_NEWNS, CLONE_NEWCGROUP, CLONE_NEWUTS, CLONE_NEWIPC = 0x20000, 0x02000000, 0x04000000, 0x08000000
CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET = 0x10000000, 0x20000000, 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 32, 4096, 16384, 1 << 18
MS_NOATIME, MS_NODIRATIME, MS_RELATIME, MS_STRICTATIME = 1024, 2048, 1 << 21, 1 << 24
MNT_DETACH = 2
PR_SET_PDEATHSIG, PR_SET_DUMPABLE, PR_SET_SECCOMP, PR_CAPBSET_DROP = 1, 4, 22, 24
PR_SET_CHILD_SUBREAPER, PR_SET_NO_NEW_PRIVS, PR_CAP_AMBIENT = 36, 38, 47
PR_CAP_AMBIENT_CLEAR_ALL, SECCOMP_MODE_FILTER = 4, 2
SYSCALLS = {
    "x86_64": {"pivot_root": 155, "capset": 126, "open_tree": 428, "move_mount": 429, "ioprio_get": 252, "clone": 56},
    "aarch64": {"pivot_root": 41, "capset": 91, "open_tree": 428, "move_mount": 429, "ioprio_get": 31, "clone": 220},
}[platform.machine()]
OPEN_TREE_CLONE, AT_RECURSIVE, MOVE_MOUNT_F_EMPTY_PATH, AT_FDCWD = 1, 0x8000, 0x4, -100

libc = ctypes.CDLL(None, use_errno=True)
libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
libc.sethostname.argtypes = [ctypes.c_char_p, ctypes.c_size_t]
libc.setns.argtypes = [ctypes.c_int, ctypes.c_int]
libc.setfsuid.argtypes = [ctypes.c_uint]
NS_GET_PARENT = 0xB702  # ioctl: a descriptor of a user namespace's parent


def check(ret, what):
    if ret != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def mount(src, target, fstype, flags, data=None):
    enc = lambda s: None if s is None else s.encode()  # noqa: E731
    check(libc.mount(enc(src), enc(target), enc(fstype), flags, enc(data)), f"mount {target}")


def unescape_mountinfo(field):
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


MOUNT_FLAGS = {
    "ro": MS_RDONLY, "nosuid": MS_NOSUID, "nodev": MS_NODEV, "noexec": MS_NOEXEC,
    "noatime": MS_NOATIME, "nodiratime": MS_NODIRATIME, "relatime": MS_RELATIME,
}


def mount_flags(options):
    """The per-mount flags of a mountinfo options field, access-time mode included (a
    remount that left it out would change it, which a user namespace refuses: EPERM)."""
    flags = sum(MOUNT_FLAGS.get(o, 0) for o in options)
    return flags if flags & (MS_NOATIME | MS_RELATIME) else flags | MS_STRICTATIME


def under(path, top):
    return path == top or path.startswith(top.rstrip("/") + "/")


def reachable(entries):
    """The entries (id, parent id, point, ...) of a mount table that path resolution can
    reach, worked out from the root down: a mount is reachable when nothing is mounted over
    it (a child at its own point), and the mount it sits in is reachable with no other
    child of that one mounted at a folder above its point (which would cover it)."""
    by_id = {e[0]: e for e in entries}
    children = {}
    for e in entries:
        if e[1] in by_id and e[1] != e[0]:
            children.setdefault(e[1], []).append(e)
    over = {e[1] for e in entries if e[1] in by_id and e[1] != e[0] and by_id[e[1]][2] == e[2]}
    memo = {}

    def bottom(e):
        for _ in range(256):
            parent = by_id.get(e[1])
            if parent is None or parent is e or parent[2] != e[2]:
                break
            e = parent
        return e

    def ok(e, depth=0):
        if e[0] in memo:
            return memo[e[0]]
        memo[e[0]] = False  # (a cycle or a depth past any real table: not reachable)
        result = False
        if e[0] not in over and depth < 256:
            b = bottom(e)
            parent = by_id.get(b[1])
            if parent is None or parent is b:
                result = True
            else:
                covered = any(c is not b and c[2] != b[2] and under(b[2], c[2]) for c in children.get(parent[0], []))
                result = not covered and ok(parent, depth + 1)
        memo[e[0]] = result
        return result

    return [e for e in entries if ok(e)]


def visible_mounts(roots=None):
    """{mount point: per-mount flags} of the mounts one can reach, from one read of
    /proc/self/mountinfo. Flags come from the table, never from the file system (a hung
    FUSE mount cannot hold a spawn; a read-only superblock under a read-write mount is not
    mistaken for a read-only mount). `roots`: only mounts at, above or below one of these
    paths are taken (the mounts reachability depends on: a mount sits in one above it);
    the other lines, the host's and other sessions' mounts among them, are compared in
    place in a mapping that is then unmapped, never copied into an object: an interpreter built here could read
    its own freed memory (red team C found the whole host table there)."""
    buf, size = read_unmappable("/proc/self/mountinfo")
    view = memoryview(buf)
    try:
        wanted = None if roots is None else [r.encode() for r in roots]
        entries = []
        pos = 0
        while pos < size:
            end = buf.find(b"\n", pos, size)
            end = size if end < 0 else end
            spaces, at = [], pos
            while len(spaces) < 6 and (at := buf.find(b" ", at, end)) >= 0:
                spaces.append(at)
                at += 1
            if len(spaces) == 6 and (wanted is None or related(view, spaces[3] + 1, spaces[4], wanted)):
                fields = bytes(view[pos:end]).decode().split(" ")
                entries.append((fields[0], fields[1], unescape_mountinfo(fields[4]), mount_flags(fields[5].split(","))))
            pos = end + 1
    finally:
        view.release()
        buf.close()
    table = {}
    for e in reachable(entries):
        # two reachable mounts on one point cannot be: if the table says so, keep the
        # weaker flags (a remount or verify_mounts then errs on the safe side)
        table[e[2]] = table[e[2]] & e[3] if e[2] in table else e[3]
    return table


def related(view, start, end, roots):
    """Whether the mount point view[start:end] (as mountinfo writes it) is one of `roots`,
    above one or below one; compared in place. A point with an escaped character counts
    as related (never dropped for a spelling difference)."""
    n = end - start
    if b"\\"[0] in view[start:end]:
        return True
    for r in roots:
        if n == len(r) and view[start:end] == r:
            return True
        if n > len(r) and view[start:start + len(r)] == r and (r == b"/" or view[start + len(r)] == 47):
            return True
        if n < len(r) and view[start:end] == r[:n] and (n == 1 or r[n] == 47):
            return True
    return False


def read_unmappable(path):
    """(buffer, size): a /proc file's bytes read straight into an anonymous mapping (no
    intermediate bytes objects), which the caller closes: unmapped, nothing of it stays in
    the process's memory. (Only the pages written are touched: a bytearray of the same
    size would zero, and so copy-fault, all of them.)"""
    buf = mmap.mmap(-1, 1 << 24)
    size = 0
    fd = os.open(path, os.O_RDONLY)
    try:
        while True:
            if size == len(buf):
                bigger = mmap.mmap(-1, 2 * len(buf))
                with memoryview(buf) as old:
                    bigger[:size] = old[:size]
                buf.close()
                buf = bigger
            with memoryview(buf) as view:
                n = os.readv(fd, [view[size:]])
            if n == 0:
                return buf, size
            size += n
    finally:
        os.close(fd)


STATVFS_FLAGS = (
    (os.ST_RDONLY, MS_RDONLY), (os.ST_NOSUID, MS_NOSUID), (os.ST_NODEV, MS_NODEV), (os.ST_NOEXEC, MS_NOEXEC),
    (os.ST_NOATIME, MS_NOATIME), (os.ST_NODIRATIME, MS_NODIRATIME), (os.ST_RELATIME, MS_RELATIME),
)


def flags_at(path):
    """The flags of a mount this builder made itself (its tmpfs, its proc), by statvfs."""
    have = os.statvfs(path).f_flag
    flags = sum(ms for st, ms in STATVFS_FLAGS if have & st)
    return flags if flags & (MS_NOATIME | MS_RELATIME) else flags | MS_STRICTATIME


def bind(src, target, readonly, devices=False, host=None):
    """bubblewrap's bind: recursive; the top mount and every visible submount keep the
    flags the source already has (in a user namespace they are locked anyway) and get
    nosuid, nodev (unless `devices`) and ro (if `readonly`) added. A bind remount changes
    one mount only, hence the walk over the submounts. `host`: visible_mounts() of the tree
    a host path comes from; None for a source this builder made (its own flags are read)."""
    mount(src, target, None, MS_BIND | MS_REC)
    new = MS_NOSUID | (0 if devices else MS_NODEV) | (MS_RDONLY if readonly else 0)
    if host is None:
        points = [(target, flags_at(target))]
    else:
        real = os.path.realpath(src)
        top = max((p for p in host if under(real, p)), key=len)
        points = [(target, host[top])] + [(target + p[len(real):], fl) for p, fl in host.items() if p != real and under(p, real)]
    for point, have in points:
        if new & ~have:
            try:
                mount(None, point, None, MS_REMOUNT | MS_BIND | have | new)
            except OSError as e:
                # As bubblewrap: a submount we may not even look at (EACCES) is skipped;
                # any other failure fails the spawn. verify_mounts() then refuses a
                # skipped submount that is weaker than the spec says.
                if point == target or e.errno != errno.EACCES:
                    raise


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


def readable(fd, timeout=None):
    """Whether `fd` is readable within `timeout` seconds (None: wait). poll, not select:
    select refuses descriptors past 1023, which a template serving hundreds of boxes has."""
    p = select.poll()
    p.register(fd, select.POLLIN)
    return bool(p.poll(None if timeout is None else int(timeout * 1000)))


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


def touch(path):
    """An empty file (a mount point), with no buffered file object (what a spawn allocates
    stays in every session's memory)."""
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o644))


def read_small(path):
    """A /proc file's bytes by plain reads (no buffered file object)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        parts = []
        while chunk := os.read(fd, 65536):
            parts.append(chunk)
        return b"".join(parts)
    finally:
        os.close(fd)


def make_parents(path):
    os.makedirs(os.path.dirname(path), 0o755, exist_ok=True)


def mount_roots(mounts, base):
    """The host paths a build looks up in the mount table: the bind sources (as they
    resolve), /dev and /proc (whose nodes and sys it binds), and its own base."""
    roots = {"/dev", "/proc", os.path.realpath(base)}
    for m in mounts:
        if m["op"] == "dev" and m.get("nodes"):
            roots.add(os.path.realpath(m["nodes"]))
        if m["op"] == "bind" and os.path.exists(m["source"]):
            roots.add(os.path.realpath(m["source"]))
        if m["op"] == "overlay":
            roots.update(os.path.realpath(f"{m['dir']}/{p}") for p in m["lowers"])
    return sorted(roots)


def build_root(mounts, base):
    """C, inside the user and mount namespaces S made B in: the file system of the spec
    (src/sandbox/spec.ts), one operation after the other with bubblewrap's semantics, on
    a new root that then replaces the host's (pivot_root; the host tree is gone after)."""
    # (a local: the interpreter must keep no name of the host's tree, other boxes' included)
    host = visible_mounts(mount_roots(mounts, base))
    base = os.path.realpath(base)
    mount("sbx-base", base, "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755,size=1m,nr_inodes=4096")
    new, data = f"{base}/newroot", f"{base}/data"
    os.mkdir(new, 0o755)
    os.mkdir(data, 0o700)
    mount(new, new, None, MS_BIND | MS_REC)
    for n, m in enumerate(mounts):
        op, dest = m["op"], new + m["dest"]
        if op == "bind":
            if m.get("optional") and not os.path.exists(m["source"]):
                continue  # (as bubblewrap's --ro-bind-try)
            make_parents(dest)
            if os.path.isdir(m["source"]):
                os.makedirs(dest, 0o755, exist_ok=True)
            elif not os.path.exists(dest):
                touch(dest)
            bind(m["source"], dest, m["readonly"], host=host)
        elif op == "overlay":
            # inodes of the sandbox's own over the host's files (spec.ts: their locks)
            make_parents(dest)
            os.makedirs(dest, 0o755, exist_ok=True)
            # (the layers by their names in the folder: the mount table shows what was given)
            os.chdir(m["dir"])
            try:
                mount("sbx-system", dest, "overlay", MS_RDONLY | MS_NOSUID | MS_NODEV, "lowerdir=" + ":".join(m["lowers"]))
            except OSError as e:
                # the host has a mount below the first layer: no overlay of a tree with
                # mounts locked in it (it would show what they cover); a read-only bind
                # of it, as before the overlays (spec.ts MountOp)
                if e.errno != errno.EINVAL:
                    raise
                bind(os.path.realpath(m["lowers"][0]), dest, True, host=host)
            finally:
                os.chdir("/")
        elif op == "data":
            source = f"{data}/{n}"
            fd = os.open(source, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            try:
                os.write(fd, m["content"].encode())
            finally:
                os.close(fd)
            make_parents(dest)
            if not os.path.exists(dest):
                touch(dest)
            bind(source, dest, True)
        elif op == "symlink":
            make_parents(dest)
            os.symlink(m["target"], dest)
        elif op == "proc":
            os.makedirs(dest, 0o755, exist_ok=True)
            mount_proc(dest, host)
        elif op == "dev":
            build_dev(dest, host, int(m["ptysMax"]), m.get("nodes") or "/dev")
        elif op == "tmpfs":
            os.makedirs(dest, 0o755, exist_ok=True)
            mount("tmpfs", dest, "tmpfs", MS_NOSUID | MS_NODEV, f"mode={int(m['mode']):o},size={int(m['sizeBytes'])}")
        elif op == "remount-ro":
            target = dest.rstrip("/") or "/"
            mount(None, target, None, MS_REMOUNT | MS_BIND | MS_RDONLY | flags_at(target))
        else:
            raise ValueError(f"unknown mount operation {op!r}")
    verify_mounts(mounts, new)
    libc.malloc_trim(0)  # the build's freed buffers go back: not kept by every session
    os.chdir(new)
    check(libc.syscall(SYSCALLS["pivot_root"], b".", b"."), "pivot_root")
    check(libc.umount2(b".", MNT_DETACH), "umount old root")
    os.chdir("/")


# The mounts over a sandbox's /proc entries that a command's new proc keeps: sys's cover and
# the spec's empty files over locks and cgroups (spec.ts sandboxMounts, PROC_EMPTY_FILES;
# the start-up probe compares a command's mounts with the spec).
PROC_COVERS = ("sys", "locks", "cgroups")


def mount_proc(dest, host=None):
    """The spec's "proc": a proc of the caller's pid namespace; its sys covered read-only
    by a bind of itself (its ipc limits are writable by the namespace's root, the
    sandbox's own uid; not a bind of the builder's /proc/sys, whose inodes are the host's),
    and as bubblewrap, those of the other old entries that we could write to. `host`:
    visible_mounts() of the builder's tree; None for a proc mounted over the sandbox's own
    (a command's init), whose covers (sys's, and the spec's empty files) are
    moved over from the one below. (/proc/sys shows the namespaces of whoever opens its
    files, whichever proc it is reached through.)"""
    covers = []
    try:
        if host is None:
            flags = OPEN_TREE_CLONE | AT_RECURSIVE | os.O_CLOEXEC
            for name in PROC_COVERS:
                fd = libc.syscall(SYSCALLS["open_tree"], AT_FDCWD, f"{dest}/{name}".encode(), flags)
                if fd < 0:
                    check(fd, f"open_tree {name}")
                covers.append((fd, name))
        mount("proc", dest, "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
        for fd, name in covers:
            check(libc.syscall(SYSCALLS["move_mount"], fd, b"", AT_FDCWD, f"{dest}/{name}".encode(), MOVE_MOUNT_F_EMPTY_PATH), "move_mount")
        if host is not None:
            bind(f"{dest}/sys", f"{dest}/sys", True)
    finally:
        for fd, _ in covers:
            os.close(fd)
    for sub in ("sysrq-trigger", "irq", "bus"):
        if os.access(f"{dest}/{sub}", os.W_OK):
            bind(f"{dest}/{sub}", f"{dest}/{sub}", True)


def verify_mounts(mounts, new):
    """Each spawn checks what it built before it is used, so a host mount that appeared
    after the start-up probe cannot weaken a sandbox: every mount at or below a bind's
    destination has nosuid and nodev, and ro for a read-only bind or an overlay (or the
    bind in its place); none is suid."""
    table = {p: fl for p, fl in visible_mounts([new]).items() if under(p, new)}
    for point, flags in table.items():
        if not flags & MS_NOSUID:
            raise OSError(errno.EPERM, f"mount {point[len(new):] or '/'} is not nosuid")
    for m in mounts:
        if m["op"] not in ("bind", "overlay"):
            continue
        dest = new + m["dest"]
        if m["op"] == "overlay" and dest not in table:
            raise OSError(errno.EPERM, f"nothing is mounted on {m['dest']}")
        need = MS_NOSUID | MS_NODEV | (MS_RDONLY if m["op"] == "overlay" or m["readonly"] else 0)
        for point, flags in table.items():
            if under(point, dest) and need & ~flags:
                raise OSError(errno.EPERM, f"mount {point[len(new):]} lacks {'ro, ' if need & MS_RDONLY else ''}nosuid or nodev")


def build_dev(dev, host, ptys_max, nodes):
    """bubblewrap's --dev: a tmpfs with the harmless device nodes bound in from `nodes`
    (the box's own, or the host's /dev), the standard symlinks, a private devpts and a
    folder for shm. The devpts holds at most `ptys_max` ptys (bubblewrap's gets the same
    cap from the server while bwrap waits)."""
    os.makedirs(dev, 0o755, exist_ok=True)
    mount("tmpfs", dev, "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755")
    for node in ("null", "zero", "full", "random", "urandom", "tty"):
        touch(f"{dev}/{node}")
        bind(f"{nodes}/{node}", f"{dev}/{node}", False, devices=True, host=host)
    for n, name in enumerate(("stdin", "stdout", "stderr")):
        os.symlink(f"/proc/self/fd/{n}", f"{dev}/{name}")
    os.symlink("/proc/self/fd", f"{dev}/fd")
    os.symlink("/proc/kcore", f"{dev}/core")
    os.mkdir(f"{dev}/shm", 0o755)
    os.mkdir(f"{dev}/pts", 0o755)
    mount("devpts", f"{dev}/pts", "devpts", MS_NOSUID | MS_NOEXEC, f"newinstance,ptmxmode=0666,mode=620,max={ptys_max}")
    os.symlink("pts/ptmx", f"{dev}/ptmx")


def enter_user_namespace(uid, gid, outer_uid, outer_gid):
    """A user namespace of our own in which `outer_*` (our ids one level up) are
    `uid`/`gid`, as bubblewrap maps them; we hold every capability in it until drop_caps."""
    check(libc.unshare(CLONE_NEWUSER), "unshare user namespace")
    write_file("/proc/self/setgroups", "deny")
    write_file("/proc/self/uid_map", f"{uid} {outer_uid} 1\n")
    write_file("/proc/self/gid_map", f"{gid} {outer_gid} 1\n")


def drop_caps():
    """Every capability gone, from every set, for good. (Its constants are made once in the
    zygote: what a spawned process allocates turns into its own, unshared memory.)"""
    for cap in CAPS:
        check(libc_prctl(PR_CAPBSET_DROP, cap, 0, 0, 0), "prctl capbset_drop")
    check(libc_prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0), "prctl cap_ambient")
    check(libc.syscall(SYSCALLS["capset"], CAPSET_HEADER, CAPSET_NONE), "capset")


with open("/proc/sys/kernel/cap_last_cap") as _f:
    CAPS = tuple(range(int(_f.read()) + 1))
CAPSET_HEADER = struct.pack("Ii", 0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3, this thread
CAPSET_NONE = bytes(24)  # two all-zero {effective, permitted, inheritable} sets
libc_prctl = libc.prctl


def enter_sandbox_user(user):
    """C: loopback up in the sandbox's empty network namespace (which S made with the first
    user namespace, as bubblewrap does, and in which the control socket lives), then the
    spec's uid inside a second user namespace (root of the first one maps to it), as
    bubblewrap's --unshare-user --uid does, and no capability left."""
    loopback_up()
    enter_user_namespace(int(user["uid"]), int(user["gid"]), 0, 0)
    drop_caps()


class SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def seccomp_program(bpf):
    """The filter as prctl takes it (made once, in the zygote: see drop_caps)."""
    buf = ctypes.create_string_buffer(bpf, len(bpf))
    return buf, SockFprog(len(bpf) // 8, ctypes.addressof(buf))


def load_seccomp(program):
    """no_new_privs, then the filter `program` (seccomp_program)."""
    prctl(PR_SET_NO_NEW_PRIVS, 1)
    check(libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.addressof(program[1]), 0, 0), "seccomp")


def spec_limits(rlimits):
    """(resource, (soft, hard)) of the spec's rlimits, in its order; -1 is unlimited."""

    def value(n):
        return resource.RLIM_INFINITY if int(n) < 0 else int(n)

    return [(getattr(resource, "RLIMIT_" + r["resource"].upper()), (value(r["soft"]), value(r["hard"]))) for r in rlimits]


def set_limits(rlimits):
    """The spec's rlimits, in its order; -1 is unlimited."""
    for res, pair in spec_limits(rlimits):
        resource.setrlimit(res, pair)


def run_interpreter(req, sock_fd):
    """C: builds the sandbox of the spec around itself, then becomes the session's driver."""
    spec = req["spec"]
    try:
        build_root(spec["mounts"], req["base"])
        hostname = spec["hostname"].encode()
        check(libc.sethostname(hostname, len(hostname)), "sethostname")
        os.setsid()
        enter_sandbox_user(spec["user"])
        set_limits(spec["rlimits"])
        os.umask(0o022)
        load_seccomp(SECCOMP)
    except BaseException as e:  # noqa: BLE001 - report anything, then die
        frame = json.dumps({"error": f"sandbox set-up failed: {e}"}).encode()
        try:
            os.write(sock_fd, struct.pack(">IB", len(frame), sys.modules["_sandbox_driver"].FrameKind.SETUP_FAILED) + frame)
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
    raise BecomeSandboxed(dict(spec["env"]), spec["cwd"], None if probe is None else list(probe))


class BecomeSandboxed(BaseException):
    """Raised in an interpreter whose sandbox is built; caught at the top level."""

    def __init__(self, env, cwd, probe_args):
        super().__init__()
        self.env, self.cwd, self.probe_args = env, cwd, probe_args


def become(env, cwd, probe_args):
    """C, at the top level: the session's driver (or the start-up probe)."""
    os.chdir(cwd)
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
    sys.argv = [PROBE_FILE, *probe_args]
    status = 0
    try:
        import runpy
        runpy.run_path(PROBE_FILE, run_name="__main__")
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


def tie_to_zygote(a_pidfd, zygote_pidfd):
    """A pid-namespace init, once its parent has exited: SIGKILLed when the zygote dies."""
    # Our parent exits right after forking us: then our parent is the zygote (a
    # subreaper), and the death signal ties us to it. The parent's pidfd turns readable
    # only after the kernel has moved us to the zygote; armed earlier, the death signal
    # would fire for the parent.
    readable(a_pidfd)
    os.close(a_pidfd)
    prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if readable(zygote_pidfd, 0):
        os._exit(137)  # the zygote died before the death signal was armed
    os.close(zygote_pidfd)


def reap_command(child):
    """Y: reaps every process of the namespace until `child` (the command) ends; its
    status as bash reports one."""
    while True:
        try:
            p, status = os.wait()
        except ChildProcessError:
            return 70
        except InterruptedError:
            continue
        if p == child:
            return exit_status(status)

def reap_until(child):
    """Reaps every process of the namespace until `child` ends, then exits with its status
    (which makes the kernel kill every process left in the namespace)."""
    os._exit(reap_command(child))


def connect_control(req):
    """The interpreter's channel: a connection to the server's socket, named by the token.
    The socket's folder is the server's alone (0700): the box's uid reaches the socket
    through the zygote's O_PATH descriptor of it, never by its path."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(f"/proc/self/fd/{CTL_PATH_FD}")
    sock.sendall(req["token"].encode() + b"\n")
    return sock.detach()


def enter_box(ids, cgroup_fds, oom_score_adj="0"):
    """H: out of the zygote's ways, into the session's cgroups (through the descriptors of
    their cgroup.procs files the zygote opened), then the box's host uid when the server
    is root (`ids`: uid, gid, nice; uid -1 when not); nothing after this needs the host's
    root. (B does the same its own way: run_box_init.)"""
    uid, gid, nice = ids
    signal.set_wakeup_fd(-1)  # the zygote's SIGCHLD wake-up is not ours
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    try:
        write_file("/proc/self/oom_score_adj", oom_score_adj)
    except OSError:
        pass  # the zygote could not lower its own either
    os.setsid()
    for fd in cgroup_fds:
        os.write(fd, b"0")  # (0: the writer)
        os.close(fd)
    if nice:
        os.setpriority(os.PRIO_PROCESS, 0, nice)
    if uid >= 0:
        os.setgroups([])
        os.setresgid(gid, gid, gid)
        os.setresuid(uid, uid, uid)
        prctl(PR_SET_DUMPABLE, 1)  # the credential change cleared it; /proc/self must stay ours


def report_spawn(report_fd, sid, msg):
    """B's report (or X's) on the pipe its makers share with the zygote: one line, written
    at once (select.PIPE_BUF bytes at most, so concurrent reports never interleave)."""
    msg["id"] = sid
    if "error" in msg:
        msg["error"] = str(msg["error"])[:500]  # (ASCII-escaped: 3,000 bytes at most)
    data = (json.dumps(msg, separators=(",", ":")) + "\n").encode()
    if len(data) > select.PIPE_BUF:
        data = (json.dumps({"id": sid, "error": "the spawner's report was too long"}) + "\n").encode()
    os.write(report_fd, data)


def run_box_init(body, go_fd, cgroup_fds, report_fd, zygote_pidfd):
    """B: pid 1 of the session's pid namespace, cloned by S into new user, network, mount,
    pid, ipc and uts namespaces, as the zygote's child (CLONE_PARENT). S maps root of the
    new user namespace to the box's host uid (the server's when unprivileged) and says so
    on `go_fd`; B then joins the session's cgroups, connects to the server's socket from
    its network namespace (the channel), becomes that root, makes a cgroup namespace, sets
    up the network, reports, forks C, and becomes the init: every catchable signal blocked, no
    capabilities, not dumpable, seccomp; it reaps and exits with C's status, which makes
    the kernel kill every process left in the namespace; SIGKILLed when the zygote dies."""
    try:
        if os.read(go_fd, 1) != b"g":
            os._exit(1)  # S could not map our user namespace (it kills us) or died
        os.close(go_fd)
        req = json.loads(body)
        signal.set_wakeup_fd(-1)  # the zygote's SIGCHLD wake-up is not ours
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        os.setsid()
        # Not dumpable (S's flag) while we hold descriptors root opened, and real and saved
        # ids root's: no process of the box's uid can attach to us or take them.
        for fd in cgroup_fds:
            os.write(fd, b"0")  # (0: the writer)
            os.close(fd)
        if req.get("nice"):
            os.setpriority(os.PRIO_PROCESS, 0, int(req["nice"]))
        # The control socket is made here, in the sandbox's own (empty) network namespace:
        # a socket belongs to the namespace it was made in, and one of the host's would let
        # code read the host's interfaces or take abstract socket names there. Before we
        # are dumpable: the server's socket (CTL_PATH_FD) is then closed (red team of
        # 2026-12-03: taken from a dumpable init, it let a process of the box's uid open
        # connections to the server until it ran out of descriptors).
        sock_fd = connect_control(req)
        os.close(CTL_PATH_FD)
        # (nor the template's stdio, the server's pipes: red team of 2026-12-03)
        null = os.open("/dev/null", os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(null, fd)
        os.close(null)
        # Root of our user namespace: the box's uid on the host (S made us with it as our
        # effective uid; the real and saved ids were still the zygote's).
        os.setresgid(0, 0, 0)
        os.setresuid(0, 0, 0)
        # As A was from here on (C inherits it: a rootless server's command template joins
        # the interpreter's namespaces only while it is dumpable); /proc/self is ours.
        prctl(PR_SET_DUMPABLE, 1)
        # Our parent is the zygote (a subreaper, which dies with the server). Armed after
        # the credential change, which clears it.
        prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        if readable(zygote_pidfd, 0):
            os._exit(137)  # the zygote died before the death signal was armed
        # (after the cgroups were joined: its root is the session's cgroup)
        check(libc.unshare(CLONE_NEWCGROUP), "unshare")
        # bubblewrap's --disable-userns: this namespace may hold one child namespace, the
        # sandbox's (C makes it), so no user namespace can be made below that (the seccomp
        # filter refuses unshare and CLONE_NEW* as well). Here, as the sandbox's /proc/sys
        # is read-only.
        write_file("/proc/sys/user/max_user_namespaces", "1")
        configure_network(req["spec"]["network"])
        configure_ipc(req["spec"]["ipc"])
        mount(None, "/", None, MS_REC | MS_PRIVATE)
        prctl(PR_SET_CHILD_SUBREAPER, 0)
        # Reported before C is forked, as A reported B before B forked C: the server then
        # knows the init (a command joins the sandbox by it) before the interpreter can say
        # hello. (Reported after the fork, under a CPU hog the hello came first, and a bash
        # command sent then ran in bubblewrap.) A fork that fails after is B's exit status.
        report_spawn(report_fd, req["id"], {"ok": True, "token": req["token"]})
        pid = os.fork()
        if pid == 0:
            os.close(report_fd)
            os.close(zygote_pidfd)
            run_interpreter(req, sock_fd)
        # Session code can send us signals (same host uid): none but SIGKILL/SIGSTOP
        # gets through (and those, to a pid-namespace init, only from outside).
        signal.pthread_sigmask(signal.SIG_BLOCK, ALL_SIGNALS)
        close_except({zygote_pidfd})
        drop_caps()  # root of the first user namespace, which it needs no more
        prctl(PR_SET_DUMPABLE, 0)  # whatever fs.suid_dumpable says: no ptrace, no /proc/1/mem
        load_seccomp(SECCOMP)  # no_new_privs and the sessions' filter, as bwrap's init
        if readable(zygote_pidfd, 0):
            os._exit(137)
        os.close(zygote_pidfd)
        reap_until(pid)
    except BecomeSandboxed:
        raise  # C, on its way to the top level
    except BaseException as e:  # noqa: BLE001
        try:
            req = json.loads(body)
            report_spawn(report_fd, req.get("id"), {"error": f"{type(e).__name__}: {e}", "token": req.get("token")})
        finally:
            os._exit(1)


def receive_into(sock, view, max_fds):
    """One message of a SOCK_SEQPACKET socket read straight into `view` (no bytes object
    holds it: the caller wipes it when done): (its length, the descriptors it carried,
    whether it was cut short). (0, [], False) when the peer is gone."""
    n, ancdata, flags, _ = sock.recvmsg_into([view], socket.CMSG_SPACE(max_fds * 4))
    fds = []
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.extend(array.array("i", data[: len(data) - len(data) % 4]))
    return n, fds, bool(flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC))


def ids_of(req):
    """A request's uid and gid as integers, -1 for none (an unprivileged server)."""
    if req.get("uid") is None:
        return -1, -1
    return int(req["uid"]), int(req["gid"])


def wipe(view, n):
    """Zeroes the first `n` bytes of a request buffer (a fork made after this holds none of
    the request: the next session's sandbox is a copy of this process)."""
    view[:n] = bytes(n)


def open_procs(paths):
    """Descriptors of cgroup.procs files, opened for writing here (the kernel checks the
    opener's credentials when a process writes "0" through them)."""
    fds = []
    try:
        for path in paths or []:
            fds.append(os.open(path, os.O_WRONLY | os.O_CLOEXEC))
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise
    return fds


# The namespaces S makes each B in (its cgroup namespace B makes itself, once it is in the
# session's cgroups, which are then its root).
BOX_NAMESPACES = CLONE_NEWUSER | CLONE_NEWPID | CLONE_NEWNET | CLONE_NEWNS | CLONE_NEWIPC | CLONE_NEWUTS
CLONE_PARENT = 0x8000


def clone_box(uid, gid, cgroups):
    """S: B, a copy of S in new namespaces (BOX_NAMESPACES), the zygote's child
    (CLONE_PARENT: reaped by it, tied to it by its death signal). Returns (pid, -1, [])
    in S, (0, go_fd, cgroup_fds) in B, which waits on go_fd until S has mapped root of its
    user namespace to the box's host uid (the server's when unprivileged).

    A user namespace is owned by the effective uid that makes it. S makes B with the box's
    uid and gid as its effective ids, so that uid owns it, as it owned the one A made
    before (a box's command host, of that uid, joins it: see run_command_spawner), and
    writes B's maps as that owner (which needs no capability of the host's: a root
    server without CAP_SYS_ADMIN works as before), through files it opens with its
    file-system uid root (B's /proc files are root's: neither S nor B is dumpable while
    either holds anything of root's). The session's cgroup.procs files (`cgroups`: descriptors
    the zygote opened, passed to S, closed here, and written through by B: the kernel
    checks the opener's credentials): S does not wait for the migrations (milliseconds
    each). `uid` -1: the server's own ids (unprivileged).

    Red team of 2026-12-03 (on the first version, which made S dumpable for the window so
    that it could open B's files as the box's uid): a process of the box's uid in the
    host's pid namespace attached to the new B (dumpable, in a user namespace that uid
    owns), took the cgroup.procs descriptors root had opened and moved a root process
    into the session's cgroups; and it opened S's own /proc files while S's effective uid
    was the box's, then set the server's autogroup nice value through them. Session code
    never runs there, but nothing of root's may be reachable by the box's uid."""
    as_box = uid >= 0 and os.geteuid() == 0
    if not as_box:
        uid, gid = os.geteuid(), os.getegid()
    go_r, go_w = os.pipe2(os.O_CLOEXEC)
    try:
        if as_box:
            os.setegid(gid)
            os.seteuid(uid)
            # (the change set S's dumpable flag to fs.suid_dumpable, which a host may have
            # at 1: never dumpable with the box's uid, nor its copy B)
            prctl(PR_SET_DUMPABLE, 0)
    except BaseException:
        restore_ids(as_box)
        for fd in (go_r, go_w, *cgroups):
            os.close(fd)
        raise
    # (no try around the clone: B must not run S's clean-up on its way out)
    pid = libc.syscall(SYSCALLS["clone"], CLONE_PARENT | BOX_NAMESPACES | signal.SIGCHLD, 0, 0, 0, 0)
    if pid == 0:
        os.close(go_w)
        return 0, go_r, cgroups
    err = ctypes.get_errno()
    try:
        if pid < 0:
            raise OSError(err, os.strerror(err))
        try:
            if as_box:
                # The real uid's, to open B's root-owned files; the maps are checked against
                # the opener's effective uid, the owner's. (setfsuid reports no error: the
                # next call, with an invalid id, returns the one in force.)
                libc.setfsuid(0)
                if libc.setfsuid(0xFFFFFFFF) != 0:
                    raise OSError(errno.EPERM, "setfsuid")
            write_file(f"/proc/{pid}/setgroups", "deny")
            write_file(f"/proc/{pid}/uid_map", f"0 {uid} 1\n")
            write_file(f"/proc/{pid}/gid_map", f"0 {gid} 1\n")
            restore_ids(as_box)
            # The template's own value, lowered so the OOM killer picks a session's process
            # first, is not the sessions'. Written here, not by B (a process of the box's
            # uid attached to B once it is dumpable could skip it: red team), and as root
            # again: a write with CAP_SYS_RESOURCE also sets the lowest value B and its
            # descendants may go back to (0); one without it, with the box's uid as the
            # effective one, left the template's, and session code could lower its own to
            # it (found in review; the start-up probe checks it: probe.py oom_lower).
            write_file(f"/proc/{pid}/oom_score_adj", "0")
        except OSError:
            kill_child(pid)  # (the zygote reaps it; it has not reported)
            raise
        os.write(go_w, b"g")
        return pid, -1, []
    finally:
        restore_ids(as_box)
        for fd in (go_r, go_w, *cgroups):
            os.close(fd)


def restore_ids(as_box):
    """S: back to root after clone_box made a B as the box's uid."""
    if as_box and os.geteuid() != 0:
        os.seteuid(0)  # (the file-system uid follows)
        os.setegid(0)
        prctl(PR_SET_DUMPABLE, 0)
        prctl(PR_SET_PDEATHSIG, signal.SIGKILL)  # (the credential change cleared it)


# The largest spawn request S takes (the spec of a sandbox is a few KiB).
SPAWN_MAX_BYTES = 1 << 18
# S's part of a spawn request, before its body: the box's uid and gid (-1: none).
SPAWN_HEAD = struct.Struct("<qq")
# Descriptors a request carries at most (cgroup.procs files, and a host's socket).
REQUEST_FDS_MAX = 16


def serve_forks(sock, reports, zygote_pid):
    """S, the fork server: makes one B per spawn request (clone_box). Each request is one
    message on `sock` (SOCK_SEQPACKET): SPAWN_HEAD, then the spawn's JSON, which only B
    parses, with the descriptors of the session's cgroup.procs files; it is answered with
    B's pid (4 bytes; negative: an errno). S's parent is the zygote: every page they share
    with the interpreters was shared at its fork, so a page the zygote writes in its loop
    (parsing requests, bookkeeping) is copied once and stays its own, as no fork of the
    zygote follows. S writes few pages between two clones (this loop), and each clone
    write-protects those again: a copy, with a flush of the TLB, per page written, which
    in the zygote's loop was hundreds per spawn and most of its time.

    Every B (and so every session's interpreter) is a copy of S: S keeps nothing of any
    request past its clone. It parses none (its head is two integers), reads each into one
    buffer and zeroes it after the clone (red team of 2026-12-03: the requests S had read,
    freed but not cleared, were in every later interpreter's memory, other sessions' box
    names and host paths among them, readable by that session's code)."""
    # (B is in a pid namespace where the zygote has no pid: it inherits this descriptor)
    zygote_pidfd = os.pidfd_open(zygote_pid)
    if os.geteuid() == 0:
        os.setgroups([])  # (B keeps them: its user namespace refuses setgroups)
    buf = bytearray(SPAWN_MAX_BYTES)
    view = memoryview(buf)
    while True:
        try:
            n, fds, cut = receive_into(sock, view, REQUEST_FDS_MAX)
        except OSError:
            os._exit(1)
        if n == 0 and not fds:
            os._exit(0)  # the zygote is gone
        pid, go, cgroups = -errno.EMSGSIZE, -1, []
        if cut or n < SPAWN_HEAD.size:
            for fd in fds:
                os.close(fd)
        else:
            try:
                uid, gid = SPAWN_HEAD.unpack_from(buf)
                pid, go, cgroups = clone_box(uid, gid, fds)  # (closes fds in S)
            except OSError as e:
                pid = -(e.errno or errno.EAGAIN)
        if pid == 0:
            sock.close()
            body = bytes(view[SPAWN_HEAD.size : n])  # (B's own request)
            run_box_init(body, go, cgroups, reports, zygote_pidfd)
            os._exit(1)
        wipe(view, n)
        sock.send(pid.to_bytes(4, "little", signed=True))


def serve_fork_servers(sock, reports, zygote_pid):
    """M, the fork servers' maker: clones a new S when the zygote's S has died. Forked by
    the zygote before it reads its first request, as the first S is, so a new S holds
    nothing of any request either: forked from the zygote, it would hold what the zygote
    parsed (other boxes' names, host paths, spawn tokens), freed but not cleared, and so
    would every interpreter forked from it. Each request on `sock` (SOCK_SEQPACKET) is one
    byte with S's end of its socket pair; M parses nothing, clones S with CLONE_PARENT (the
    zygote's child, as if it had forked it) and answers its pid (4 bytes; negative: an
    errno). S keeps M's own descriptors but `sock`: the report pipe and the server's
    socket path."""
    buf = bytearray(1)
    while True:
        try:
            n, fds, cut = receive_into(sock, memoryview(buf), 1)
        except OSError:
            os._exit(1)
        if n == 0 and not fds:
            os._exit(0)  # the zygote is gone
        if cut or n != 1 or len(fds) != 1:
            os._exit(1)  # (only the zygote speaks here)
        # (no try around the clone, nor in S: an interpreter, a copy of S, leaves S's
        # frames by an exception, BecomeSandboxed, on its way to the top level)
        pid = libc.syscall(SYSCALLS["clone"], CLONE_PARENT | signal.SIGCHLD, 0, 0, 0, 0)
        if pid == 0:
            prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
            if os.getppid() != zygote_pid:
                os._exit(0)
            sock.close()
            serve_forks(socket.socket(fileno=fds[0]), reports, zygote_pid)
            os._exit(0)
        if pid < 0:
            pid = -(ctypes.get_errno() or errno.EAGAIN)
        os.close(fds[0])
        sock.send(pid.to_bytes(4, "little", signed=True))


# ---------------------------------------------------------------- commands --------------
# A bash command runs in the sandbox of its session's interpreter, without building one:
#
#   Zc  the command zygote (a second zygote.py with nothing preloaded: forks are cheap)
#   └─ H  the box's command host, made at its first command: enter_box once (joining a
#      │   cgroup costs milliseconds, tens under load: never per command), then one fork
#      │   per command slot; requests come from Zc on a socket (the namespaces to join,
#      │   the slot's channels), answers go back on a pipe; it runs as the box's uid in
#      │   the host's namespaces, where session code cannot name it; killed with the box
#      └─ X  joins the user namespace of the session's
#         │   sandbox and its mount, network, ipc, uts and cgroup namespaces (those of a
#         │   process of the running interpreter, found, checked and opened by Zc in
#         │   session_namespaces, and passed down with the request);
#         │   then a pid namespace and a mount namespace for the box's commands; forks Y,
#         │   reports it to H once Y is ready, exits (Y's parent is then Zc, a subreaper)
#         └─ Y  pid 1 of that pid namespace: a /proc of that namespace over the
#            │   interpreter's; the sandbox user's namespace (the interpreter's second one);
#            │   no capabilities, not dumpable, the spec's rlimits, umask, the seccomp
#            │   filter. A command slot: it waits for a command on a socket Zc made (its
#            │   end came down through H and X); then its cwd; starts the command and reaps
#            │   until it ends; then sends SIGKILL to every process the command left
#            │   (setsid, nohup, double forks: kill(-1) from the namespace's init) and reaps
#            │   them all, and only then tells Zc the command's status (end_leftovers), on a
#            │   pipe Zc made; then waits for the next one
#            └─ the command (posix_spawn: a new session, default signal dispositions, an
#               empty signal mask, stdin /dev/null, stdout/stderr the server's pipes, a long
#               script on fd 3), in the spec's environment
#
# Slots: building Y (two forks, six setns, a new pid and mount namespace, a /proc, the
# capabilities dropped) costs more than the command it starts, so it is done once per
# box: each box has at most one slot, made for its interpreter's init (pid and start
# time) and its rlimits when its first command comes, and used by its commands one after
# another (a box runs one command at a time). A command then costs Zc one message to the
# slot (its request, stdout and stderr), one answer and one report of its end; between
# commands the slot's pid namespace holds Y alone. A slot serves one box: it is in that
# box's sandbox, and is dropped (closed and killed) when the box is forgotten, when the
# interpreter it was made for dies (Zc watches a pidfd of its init), when a command comes
# for another init (the interpreter was restarted) or other rlimits, or when a command in
# it is killed (a timeout, the client gone: Y dies with it); the next command then makes
# a new one.
#
# Channels: Zc receives nothing on a socket that a process of a box's uid can write to.
# H's answers and Y's reports come on pipes, which carry no descriptors; every socket Zc
# writes to (H's requests, Y's commands) is one it made, shut for reading at its end
# before the other end leaves it, so no one can queue a message there. A descriptor
# passed to a process is released in that process when it is its last holder, in the
# kernel's close, which a peer can make block: third red team of 2026-12-03, a process of
# the box's uid took H's socket, answered with a TCP socket lingering on unsent data, and
# Zc's close of it blocked every session's commands for as long as the peer chose.


# The namespaces a command shares with its session's interpreter, after the user one.
JOINED = (("mnt", CLONE_NEWNS), ("net", CLONE_NEWNET), ("ipc", CLONE_NEWIPC), ("uts", CLONE_NEWUTS), ("cgroup", CLONE_NEWCGROUP))


def read_at(dir_fd, name):
    fd = os.open(name, os.O_RDONLY, dir_fd=dir_fd)
    try:
        return os.read(fd, 1 << 16)
    finally:
        os.close(fd)


def proc_stat(dir_fd):
    """(parent pid, start time) of the process of a /proc/<pid> folder descriptor."""
    data = read_at(dir_fd, "stat")
    fields = data[data.rindex(b")") + 2:].split()
    return int(fields[1]), int(fields[19])


def session_namespaces(init):
    """Zc: descriptors of the namespaces of the session's running interpreter, whose
    pid-namespace init is init["pid"], started at init["start"] (so a reused pid is never
    taken for it). Any child of that init is a process of the session (the interpreter, or
    an orphan of it); one qualifies when its user namespace is two levels below ours (the
    sandbox user's, inside the box's own): a process still building its sandbox does not.
    Each check reads through the process's /proc folder descriptor, which stays with that
    process whatever happens to its pid.

    Why Zc and not X (the box's uid): opening /proc/<pid>/ns/* is a ptrace access check,
    which a process that is not dumpable passes only for a caller with CAP_SYS_PTRACE over
    its memory's user namespace. A forked interpreter never ran execve, so that is the
    host's: once session code calls prctl(PR_SET_DUMPABLE, 0), the box's uid could not
    enter its sandbox any more, and every command went to a bubblewrap sandbox of its own
    (a devpts of its own beside the session's capped one). Zc, root of the host when the
    server is, passes the check whatever the interpreter did to itself; unprivileged, it
    fails as X did, and the server answers that the command did not run: never in
    bubblewrap while the interpreter lives (src/sessions/box.ts). In Zc's loop, which serves every session, this is a few system
    calls per child of that init up to the first that qualifies (the interpreter, its
    oldest child, in practice)."""
    pid = int(init["pid"])
    b = os.open(f"/proc/{pid}", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        if proc_stat(b)[1] != int(init["start"]):
            raise OSError(errno.ESRCH, "the session's interpreter is gone")
        children = read_at(b, f"task/{pid}/children").split()
    finally:
        os.close(b)
    own = os.stat("/proc/self/ns/user")
    for child in children:
        fds = {}
        try:
            c = os.open(f"/proc/{int(child)}", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            if proc_stat(c)[0] != pid:
                continue
            fds["inner"] = os.open("ns/user", os.O_RDONLY | os.O_CLOEXEC, dir_fd=c)
            fds["user"] = fcntl.ioctl(fds["inner"], NS_GET_PARENT)
            top = fcntl.ioctl(fds["user"], NS_GET_PARENT)
            st = os.fstat(top)
            os.close(top)
            if (st.st_dev, st.st_ino) != (own.st_dev, own.st_ino):
                continue
            for name, _ in JOINED:
                fds[name] = os.open(f"ns/{name}", os.O_RDONLY | os.O_CLOEXEC, dir_fd=c)
            if proc_stat(c)[0] == pid:  # still that init's child: the descriptors are its
                found, fds = fds, {}
                return found
        except OSError:
            continue
        finally:
            os.close(c)
            for fd in fds.values():
                os.close(fd)
    raise OSError(errno.ESRCH, "the session's interpreter has no process to join")


# The order of the namespace descriptors that follow a command's request and stdio.
NS_FDS = ("inner", "user", *(name for name, _ in JOINED))


def setns(fd, kind):
    check(libc.setns(fd, kind), "setns")


# What a box's command host is told of its box (enter_box): its uid, gid and nice value (uid
# -1: none), with the descriptors of its socket and of its cgroup.procs files.
HOST_HEAD = struct.Struct("<qqq")
# F answers in a clone's time; past this it is taken for stuck (and the zygote ends).
HOST_FORK_TIMEOUT_S = 10


def serve_hosts(sock, zygote_pid):
    """F, the host forker: makes each box's command host H. Forked by the command zygote
    before it reads its first request, so its memory holds no command of any session (the
    zygote's does: the requests it parsed, freed but not cleared; H, when the zygote
    forked it, inherited them, readable by a process of the box's uid in the host's
    namespaces: second red team of 2026-12-03). Each request, a message on `sock`
    (SOCK_SEQPACKET), is HOST_HEAD with H's end of its request socket, the write end of
    its answer pipe and the box's cgroup.procs descriptors, which the zygote opened; F
    parses nothing (its memory gains
    nothing of any box). The answer is H's pid (4 bytes; negative: an errno). H is cloned
    with CLONE_PARENT: the zygote's child, as if it had forked it (it reaps H and kills it
    by pid; H's death signal is tied to it)."""
    buf = bytearray(HOST_HEAD.size)
    while True:
        try:
            n, fds, cut = receive_into(sock, memoryview(buf), REQUEST_FDS_MAX)
        except OSError:
            os._exit(1)
        if n == 0 and not fds:
            os._exit(0)  # the zygote is gone
        if cut or n != HOST_HEAD.size or len(fds) < 2:
            os._exit(1)  # (only the zygote speaks here)
        # (no try around the clone: H must not run F's clean-up on its way out)
        pid = libc.syscall(SYSCALLS["clone"], CLONE_PARENT | signal.SIGCHLD, 0, 0, 0, 0)
        if pid == 0:
            null = os.open("/dev/null", os.O_RDWR)
            for fd in (0, 1, 2):
                os.dup2(null, fd)
            close_except({0, 1, 2, *fds})
            run_command_host(HOST_HEAD.unpack(buf), fds[2:], socket.socket(fileno=fds[0]), fds[1], zygote_pid)
            os._exit(1)
        if pid < 0:
            pid = -(ctypes.get_errno() or errno.EAGAIN)
        for fd in fds:
            os.close(fd)
        sock.send(pid.to_bytes(4, "little", signed=True))


def run_command_host(ids, cgroup_fds, sock, answers, zygote_pid):
    """H: see the diagram above. Each request on `sock` asks for a command slot and carries
    the descriptors of the namespaces of the session's sandbox (NS_FDS), then Y's end of
    the slot's socket and the write end of its report pipe (both made by Zc); the answer,
    one line on the pipe `answers`, is {"pid": Y} or {"error": why}."""
    try:
        # 0, as any session process: set while H is still root, this is also the lowest
        # its descendants may go back to. Set to -1000 (as it once was), with
        # CAP_SYS_RESOURCE, it let every command of the box set its own -1000 (the kernel
        # lets a process return to the lowest value a privileged write gave its
        # ancestors): processes the OOM killer never picks. Checked by the start-up probe
        # in every kind (probe.py oom_lower).
        enter_box(ids, cgroup_fds)
        prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != zygote_pid:
            os._exit(0)  # the zygote died before the death signal was armed
        while True:
            limits, fds, _, _ = socket.recv_fds(sock, 1 << 16, len(NS_FDS) + 2)
            if len(fds) != len(NS_FDS) + 2:
                os._exit(0)  # the zygote is gone (or spoke nonsense)
            for fd in fds:
                os.set_inheritable(fd, False)  # (received without close-on-exec)
            try:
                ns = dict(zip(NS_FDS, fds[:-2], strict=True))
                answer = make_slot(json.loads(limits), ns, fds[-2], fds[-1], (sock.fileno(), answers), zygote_pid)
            except BaseException as e:  # noqa: BLE001
                answer = {"error": f"{type(e).__name__}: {e}"}
            finally:
                for fd in fds:
                    os.close(fd)
            line = json.dumps(answer)
            if len(line) >= STATUS_LINE_MAX // 2:  # (one line, one write: json.dumps escapes to ASCII)
                line = json.dumps({"error": str(answer.get("error"))[: STATUS_LINE_MAX // 16]})
            os.write(answers, (line + "\n").encode())
    except BaseException:  # noqa: BLE001
        os._exit(1)


def read_fd(fd):
    parts = []
    while chunk := os.read(fd, 1 << 20):
        parts.append(chunk)
    return b"".join(parts)


def make_slot(rlimits, ns, sock, status, host_fds, zygote_pid):
    """H: forks X for one slot (`sock`: Y's end of its socket, `status`: the write end of
    its report pipe) and waits for its report: {"pid": Y} or {"error": why}. `host_fds`:
    H's own channels, closed in X."""
    r, w = os.pipe2(os.O_CLOEXEC)
    pid = os.fork()
    if pid == 0:
        os.close(r)
        for fd in host_fds:
            os.close(fd)  # (H's socket is of the host's network namespace: never into the sandbox)
        run_command_spawner(w, zygote_pid, rlimits, ns, socket.socket(fileno=sock), status)
        os._exit(1)
    os.close(w)
    try:
        data = read_fd(r) if readable(r, 10) else b""
    finally:
        os.close(r)
    if not data:
        os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    try:
        answer = json.loads(data)
    except ValueError:
        answer = {"error": "the command's spawner did not answer"}
    return answer if isinstance(answer, dict) else {}


def run_command_spawner(report_fd, zygote_pid, rlimits, ns, sock, status):
    """X: see the diagram above. `ns`: descriptors of the namespaces to join (NS_FDS);
    `sock`: the slot's end of its socket, `status`: the write end of its report pipe, for
    Y."""
    try:
        setns(ns["user"], CLONE_NEWUSER)  # root of the box's namespace: owner of the others
        for name, kind in JOINED:
            setns(ns[name], kind)
        check(libc.unshare(CLONE_NEWPID | CLONE_NEWNS), "unshare")
        zygote_pidfd = os.pidfd_open(zygote_pid)
        own_pidfd = os.pidfd_open(os.getpid())
        ready_r, ready_w = os.pipe2(os.O_CLOEXEC)
        pid = os.fork()
        if pid == 0:
            os.close(report_fd)
            os.close(ready_r)
            run_command_init(sock, status, rlimits, ns["inner"], own_pidfd, zygote_pidfd, ready_w)
        os.close(ready_w)
        # Y says whether it is ready: a sandbox that could not be entered is a failure to
        # start (the server then uses bubblewrap), never the command's status.
        said = read_fd(ready_r)
        if said != b"ready":
            raise OSError(errno.EPERM, said.decode(errors="replace") or "the command's init died")
        os.write(report_fd, json.dumps({"pid": pid}).encode())
        os._exit(0)
    except BaseException as e:  # noqa: BLE001
        try:
            os.write(report_fd, json.dumps({"error": f"{type(e).__name__}: {e}"}).encode())
        finally:
            os._exit(1)


def run_command_init(sock, status, rlimits, inner, a_pidfd, zygote_pidfd, ready_fd):
    """Y: see the diagram above. Writes "ready" or why not on `ready_fd`, then waits for
    its command on `sock` and tells Zc of it on `status` (tell). The rlimits, umask and
    seccomp filter are in force before it waits (all it does after is allowed to session
    code too)."""
    try:
        signal.pthread_sigmask(signal.SIG_BLOCK, ALL_SIGNALS)
        prctl(PR_SET_CHILD_SUBREAPER, 0)
        mount_proc("/proc")
        setns(inner, CLONE_NEWUSER)
        drop_caps()
        prctl(PR_SET_DUMPABLE, 0)
        set_limits(rlimits)
        os.umask(0o022)
        load_seccomp(SECCOMP)
        # (nothing of H's or X's: the namespaces' descriptors, H's socket, X's report pipe)
        close_except({sock.fileno(), status, a_pidfd, zygote_pidfd, ready_fd})
    except BaseException as e:  # noqa: BLE001
        try:
            os.write(ready_fd, f"{type(e).__name__}: {e}".encode())
        finally:
            os._exit(71)
    try:
        os.write(ready_fd, b"ready")
        os.close(ready_fd)
        tie_to_zygote(a_pidfd, zygote_pidfd)
        inherited = slot_attributes()
        while True:
            child = start_in_slot(sock, status)
            code = reap_command(child)
            end_leftovers()
            # Only now, with nothing of the command left, does Zc hear of its end; the
            # slot then waits for the box's next command, unless the command changed what
            # the next one would inherit from it (prlimit, renice, sched_setscheduler,
            # sched_setaffinity and ioprio_set on pid 1 need only the same uid; an
            # unprivileged process cannot undo some of them): then it reports the end as
            # its last and exits.
            intact = slot_attributes() == inherited
            tell(status, f"exit {code}" if intact else f"exit {code} last")
            if not intact:
                os._exit(0)
    except BaseException:  # noqa: BLE001
        os._exit(70)


RLIMITS = tuple(getattr(resource, n) for n in dir(resource) if n.startswith("RLIMIT_"))


def slot_attributes():
    """Y: what a command started by this process inherits from it and another command of
    the box could change on it: every rlimit, the nice value, the scheduling policy, the
    CPU affinity and the I/O priority."""
    return (
        tuple(resource.getrlimit(r) for r in RLIMITS),
        os.getpriority(os.PRIO_PROCESS, 0),
        os.sched_getscheduler(0),
        os.sched_getaffinity(0),
        libc.syscall(SYSCALLS["ioprio_get"], 1, 0),  # IOPRIO_WHO_PROCESS, this process
    )


def end_leftovers():
    """Y, at a command's end: every process it left (&, nohup, setsid, double forks) is
    sent SIGKILL (kill(-1) from the namespace's init reaches each of them and nothing
    outside it; a fork under way when it comes fails) and reaped (orphans are ours), so
    none is left when this returns."""
    try:
        os.kill(-1, signal.SIGKILL)
    except OSError:
        pass  # (none left)
    while True:
        try:
            os.wait()
        except ChildProcessError:
            return
        except InterruptedError:
            continue


def above_stdio(fd):
    """`fd`, or a close-on-exec copy of it numbered 4 or more (the original closed)."""
    if fd > 3:
        return fd
    copy = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 4)
    os.close(fd)
    return copy


def tell(status, what):
    """Y: one line to Zc on the slot's report pipe."""
    data = what.encode(errors="replace").replace(b"\n", b" ")[:STATUS_LINE_MAX - 1] + b"\n"
    while data:
        data = data[os.write(status, data):]


def start_in_slot(sock, status):
    """Y: waits for its command: a descriptor of the request (JSON: argv, script, spec),
    then the command's stdout and stderr; starts it and answers "started", or why not.
    Returns the command's pid. A socket closed by Zc (the slot is dropped) ends Y."""
    try:
        _, fds, _, _ = socket.recv_fds(sock, 16, 3)
    except OSError:
        fds = []
    if len(fds) != 3:
        os._exit(0)
    try:
        for fd in fds:  # (received without close-on-exec: they would reach bash)
            os.set_inheritable(fd, False)
        os.lseek(fds[0], 0, os.SEEK_SET)
        req = json.loads(read_fd(fds[0]))
        os.close(fds[0])
        stdio = fds[1:]
        spec = req["spec"]
        os.chdir(spec["cwd"])
        script = None
        if req.get("script") is not None:
            script = os.memfd_create("script", os.MFD_CLOEXEC)
            view = memoryview(req["script"].encode())
            while view:
                view = view[os.write(script, view):]
            os.lseek(script, 0, os.SEEK_SET)
        null = os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC)
        # (a source already at its target would keep its close-on-exec flag through the
        # spawn's dup2, hence none below 4)
        null, *stdio = (above_stdio(fd) for fd in (null, *stdio))
        actions = [(os.POSIX_SPAWN_DUP2, null, 0), (os.POSIX_SPAWN_DUP2, stdio[0], 1), (os.POSIX_SPAWN_DUP2, stdio[1], 2)]
        if script is not None:
            script = above_stdio(script)
            actions.append((os.POSIX_SPAWN_DUP2, script, 3))
        close_except({null, *stdio, *([] if script is None else [script]), sock.fileno(), status})
        argv = [str(a) for a in req["argv"]]
        child = os.posix_spawn(argv[0], argv, dict(spec["env"]), file_actions=actions, setsid=True, setsigmask=(), setsigdef=ALL_SIGNALS)
    except BaseException as e:  # noqa: BLE001
        try:
            tell(status, f"{type(e).__name__}: {e}")
        finally:
            os._exit(71)
    tell(status, "started")
    close_except({sock.fileno(), status})  # (close-on-exec: the command never had them)
    return child



# ---------------------------------------------------------------- the zygote ------------

SECCOMP = seccomp_program(b"")
CTL_PATH_FD = -1  # an O_PATH descriptor of the server's socket (spawns connect through it)

# How long a spawn's B, or a box's command host, may take to report a start: a bound on a
# start stuck in its session's own cgroups (frozen, or out of memory there), which delays no
# other session's start. 10 s was passed by healthy spawns under a CPU hog beside a full test
# run; a spawn that passes it is answered as busy, not taken for a sandbox the template
# cannot build (box.ts).
START_WAIT_S = 30
# Children reaped while starts were waiting, kept for those starts (see Zygote.remember).
UNCLAIMED_MAX = 4096
# Commands of one box waiting for its host to finish the one it is starting.
BOX_QUEUE_MAX = 4
# The longest line on a host's answer pipe or a slot's report pipe (one atomic write).
STATUS_LINE_MAX = select.PIPE_BUF


class Start:
    """A start under way: a spawn waiting for its B's report (B is the zygote's child from
    its start: `pid`), a box's host making a command slot
    (`init`: its slot_key, `pidfd`: a pidfd of the interpreter's init), or a command handed to its slot (`pid`: the slot's Y,
    `sock`: its socket) waiting for its answer. `since`: the zygote's reap count when it
    began (only children reaped after that can be the ones it reports)."""

    __slots__ = ("req", "deadline", "since", "pid", "fd", "init", "pidfd", "slot")

    def __init__(self, req, since, pid=-1, fd=-1):
        self.req, self.deadline, self.since = req, time.monotonic() + START_WAIT_S, since
        self.pid, self.fd = pid, fd
        self.init: tuple[tuple[int, int], bytes] | None = None
        self.pidfd = -1
        self.slot: Slot | None = None


class Slot:
    """A box's command slot: Y (`pid`, our child), Zc's end of its socket (`sock`, shut
    for reading), the read end of its report pipe (`status`, non-blocking) with what was
    read of it and not taken yet (`buf`), what it was made for (`init`: slot_key, the
    interpreter init's pid and start time and the rlimits), and a pidfd of that init."""

    __slots__ = ("pid", "sock", "status", "buf", "init", "pidfd")

    def __init__(self, sock, status, init, pidfd):
        self.pid, self.sock, self.status, self.buf, self.init, self.pidfd = -1, sock, status, b"", init, pidfd

    def close(self):
        """Closes Zc's ends (its own socket and pipe: nothing a peer sent is in them)."""
        self.sock.close()
        os.close(self.status)
        os.close(self.pidfd)

    def line(self):
        """The next line Y wrote (without its newline); b"" when the pipe's end was reached
        with nothing more (Y died); None for nothing yet. Longer than a line can be: the end
        of the slot (b"")."""
        while b"\n" not in self.buf:
            try:
                chunk = os.read(self.status, STATUS_LINE_MAX)
            except BlockingIOError:
                return None
            except OSError:
                chunk = b""
            if not chunk or len(self.buf) + len(chunk) > STATUS_LINE_MAX:
                self.buf = b""
                return b""
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return line


def send_rights(sock, data, fds):
    """One message with descriptors on a socket of Zc's, never blocking (MSG_DONTWAIT;
    socket.send_fds drops its flags argument in Python 3.11)."""
    sock.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))], socket.MSG_DONTWAIT)


def pipe_for_peer():
    """(read end, write end): the read end non-blocking (Zc's alone), the write end
    blocking (a peer's)."""
    r, w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
    os.set_blocking(w, True)
    return r, w


def send_only_pair():
    """(Zc's end, the peer's end) of a new SOCK_SEQPACKET pair; Zc's is shut for reading
    (a send to it fails: no one can queue a message, or a descriptor, for Zc there) and
    non-blocking (its file is Zc's alone: no other holder can change that)."""
    mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    mine.shutdown(socket.SHUT_RD)
    mine.setblocking(False)
    return mine, theirs


def unread(sock):
    """The bytes Zc sent on `sock` that its peer has not read yet (SIOCOUTQ)."""
    return struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0"))[0]


def init_key(init):
    return (int(init["pid"]), int(init["start"]))


def slot_key(req):
    """What a command needs its slot to have been made for: its interpreter's init and its
    rlimits."""
    return (init_key(req["init"]), slot_limits(req))


def slot_limits(req):
    """What a slot is made with besides its sandbox: the spec's rlimits (JSON). A slot
    serves a command whose spec has the same (the box's: always, in practice)."""
    return json.dumps(req["spec"]["rlimits"], separators=(",", ":")).encode()


class Zygote:
    """One loop serves every session: no request waits for another one's start. A spawn
    has S make B and goes on; B's report (or its death) finishes it. A command is
    handed to its box's host on a non-blocking socket, which the loop polls; a box has at
    most one command at its host, the next ones wait in that box's queue. Each start has a
    deadline, and the poll's timeout is the nearest one; past it, the spawn's B is killed
    or the box's host dropped, and the start fails. A session whose processes are slow (a
    host or a B in its own cgroups, starved by it) delays its own starts only."""

    def __init__(self):
        self.out = CTL_OUT
        self.inbuf = b""
        self.inits = {}  # pid -> spawn id of live inits (B, or a command's Y): our children
        self.init_of = {}  # spawn id -> pid
        self.pending = []  # requests read but not handled yet
        self.spawns = {}  # pid of B (our child) -> Start, until B reports or dies
        self.forker = None  # S (serve_forks): its pid and socket
        self.forker_maker = None  # M (serve_fork_servers): its pid and socket
        self.forkers_started = 0
        self.reports = self.report_w = -1  # the pipe every B reports on
        self.report_buf = b""
        self.reported = {}  # spawn id -> B's report, for the spawns under way
        self.commands = {}  # box -> Start of the command handed to its slot
        self.running = {}  # socket fd of a started command's Y -> box
        self.busy = {}  # box -> its Slot while a command runs in it
        self.preparing = {}  # box -> Start of the slot its host is making
        self.slots = {}  # box -> its Slot, ready
        self.slot_of = {}  # pid of a ready slot's Y -> box
        self.watch = {}  # pidfd of a ready slot's interpreter init -> box
        self.queued = {}  # box -> requests waiting for a slot (the first: for the one being made)
        self.unclaimed = {}  # pid -> (reap count, status) of children not (yet) known as inits
        self.reaped = 0
        self.hosts = {}  # box name -> {"pid", "sock"} of its command host (the command zygote)
        self.host_of = {}  # pid -> box name
        self.host_forker = None  # F (serve_hosts): its pid and socket
        self.poller = select.poll()

    def send(self, msg):
        data = (json.dumps(msg, separators=(",", ":")) + "\n").encode()
        view = memoryview(data)
        while view:
            n = os.write(self.out, view)
            view = view[n:]

    def failed(self, req, error):
        self.send({"t": "failed", "id": req["id"], "error": error})

    def read_messages(self):
        chunk = os.read(CTL_IN, 1 << 20)
        if not chunk:
            os._exit(0)  # the server is gone
        self.inbuf += chunk
        *lines, self.inbuf = self.inbuf.split(b"\n")
        return [json.loads(line) for line in lines if line.strip()]

    # -------------------------------------------------------------- spawns --------------

    def start_forker(self):
        """Forks S (serve_forks), which forks the spawners from then on; and, the first
        time (before any request is read), M, which makes each S after it. With M gone (only
        root, or the OOM killer, ends it), an S is forked from here, as it once always was:
        it then holds remnants of the requests read so far (see serve_fork_servers)."""
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        if self.reports < 0:
            self.reports, self.report_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
            os.set_blocking(self.report_w, True)
            self.poller.register(self.reports, select.POLLIN)
            maker, maker_theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            # (nothing of the zygote's: the server's channel, pidfds of spawners)
            pid = self.fork_server({0, 1, 2, maker_theirs.fileno(), self.report_w, CTL_PATH_FD})
            if pid == 0:
                serve_fork_servers(maker_theirs, self.report_w, self.pid)
                os._exit(0)
            maker_theirs.close()
            maker.settimeout(HOST_FORK_TIMEOUT_S)
            self.forker_maker = (pid, maker)
        pid = self.made_forker(theirs) if self.forkers_started and self.forker_maker is not None else -1
        self.forkers_started += 1
        if pid == -1:
            pid = self.fork_server({0, 1, 2, theirs.fileno(), self.report_w, CTL_PATH_FD})
            if pid == 0:
                serve_forks(theirs, self.report_w, self.pid)
                os._exit(0)
        theirs.close()
        # (a spawn request is one message: room for the largest S takes)
        mine.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 2 * SPAWN_MAX_BYTES)
        self.forker = (pid, mine)

    def made_forker(self, theirs):
        """A new S, cloned by M with `theirs` as its socket: its pid, or -1 when M did not
        make one (M is dropped if it did not answer: a late answer would be the next
        one's)."""
        assert self.forker_maker is not None
        sock = self.forker_maker[1]
        try:
            socket.send_fds(sock, [b"s"], [theirs.fileno()])
            answer = sock.recv(8)
        except OSError:
            answer = b""
        if len(answer) != 4:
            self.drop_forker_maker()
            return -1
        return max(-1, int.from_bytes(answer, "little", signed=True))

    def drop_forker_maker(self, reaped=False):
        if self.forker_maker is not None:
            pid, sock = self.forker_maker
            self.forker_maker = None
            if not reaped:
                kill_child(pid)
            sock.close()

    def fork_server(self, keep, quiet=False):
        """Forks one of the zygote's servers (S, F): it dies with the zygote, has no child
        of its own (each process it makes is the zygote's), and keeps no descriptor but
        `keep`; `quiet`: stdio on /dev/null, and never the OOM killer's pick (it holds
        nothing). Returns its pid, 0 in it."""
        pid = os.fork()
        if pid == 0:
            try:
                signal.set_wakeup_fd(-1)
                signal.signal(signal.SIGCHLD, signal.SIG_IGN)
                prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
                if os.getppid() != self.pid:
                    os._exit(0)
                if quiet:
                    try:
                        write_file("/proc/self/oom_score_adj", "-1000")
                    except OSError:
                        pass
                    null = os.open("/dev/null", os.O_RDWR)
                    for fd in (0, 1, 2):
                        os.dup2(null, fd)
                close_except(keep)
            except BaseException:  # noqa: BLE001
                os._exit(1)
        return pid

    def drop_forker(self, reaped=False):
        """S died (`reaped`: and was reaped, its pid no longer ours to signal) or stopped
        answering: the next spawn starts a new one."""
        if self.forker is not None:
            pid, sock = self.forker
            self.forker = None
            if not reaped:
                kill_child(pid)
            sock.close()

    def start_host_forker(self):
        """Forks F (serve_hosts), which forks every box's command host. Once, before the
        first request is read: F is never forked again (a zygote that has read requests
        holds remnants of them), and its death ends the zygote (see reap), which the
        server then starts anew."""
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        pid = self.fork_server({0, 1, 2, theirs.fileno()}, quiet=True)
        if pid == 0:
            serve_hosts(theirs, self.pid)
            os._exit(0)
        theirs.close()
        mine.settimeout(HOST_FORK_TIMEOUT_S)
        self.host_forker = (pid, mine)

    def fork_spawner(self, req):
        """B's pid, made by S for `req` (our child)."""
        if self.forker is None:
            self.start_forker()
        assert self.forker is not None
        _, sock = self.forker
        body = json.dumps(req, separators=(",", ":")).encode()
        if len(body) + SPAWN_HEAD.size > SPAWN_MAX_BYTES:
            raise OSError(errno.EMSGSIZE, f"the spawn request is longer than {SPAWN_MAX_BYTES} bytes")
        fds = open_procs(req.get("cgroup_procs"))  # (its errors are the spawn's)
        try:
            socket.send_fds(sock, [SPAWN_HEAD.pack(*ids_of(req)) + body], fds)
            answer = sock.recv(8)
        except OSError:
            answer = b""
        finally:
            for fd in fds:
                os.close(fd)
        if len(answer) != 4:
            self.drop_forker()
            raise OSError(errno.EPIPE, "the template's fork server is gone")
        pid = int.from_bytes(answer, "little", signed=True)
        if pid < 0:
            raise OSError(-pid, os.strerror(-pid))
        return pid

    def spawn(self, req):
        """S makes B (clone_box), our child, which reports on the report pipe once it has
        forked C, or why it failed; its death before that fails the spawn (see reap)."""
        try:
            pid = self.fork_spawner(req)
        except OSError as e:
            self.failed(req, f"{type(e).__name__}: {e}")
            return
        self.spawns[pid] = Start(req, self.reaped, pid=pid)

    def drain_reports(self, finishing=None):
        """Reads the B's reports (one line each) for the spawns under way, and for the
        spawn `finishing` (its Start), which its caller has just taken out of them (a B
        reaped before its report was read: its report was once dropped as nobody's then,
        "the spawner did not answer", several times a test run, more often under load).

        A report counts only with its spawn's token, which only that B knows (the pipe is
        every B's: red team of 2026-12-03, a process of a box's uid that took it from its
        own dumpable init wrote failures for other boxes' spawn ids, and one line that
        was not a report of the expected shape stopped the template, and every session's
        interpreter with it)."""
        try:
            while chunk := os.read(self.reports, 65536):
                self.report_buf += chunk
        except BlockingIOError:
            pass
        *lines, self.report_buf = self.report_buf.split(b"\n")
        if len(self.report_buf) > select.PIPE_BUF:
            self.report_buf = b""  # (no report is that long)
        tokens = {s.req["id"]: s.req["token"] for s in self.spawns.values()}
        if finishing is not None:
            tokens[finishing.req["id"]] = finishing.req["token"]
        for line in lines:
            try:
                msg = json.loads(line)
            except (ValueError, RecursionError):
                continue
            if not isinstance(msg, dict) or type(msg.get("id")) is not int or msg["id"] not in tokens:
                continue
            token = msg.get("token")
            if isinstance(token, str) and hmac.compare_digest(token.encode(), str(tokens[msg["id"]]).encode()):
                self.reported[msg["id"]] = msg

    def spawns_reported(self):
        """The spawns whose B has reported: started, or failed (B exits then)."""
        for pid, start in list(self.spawns.items()):
            msg = self.reported.pop(start.req["id"], None)
            if msg is None:
                continue
            del self.spawns[pid]
            if msg.get("ok") is True:
                self.started(start, pid, with_start_time=True)
            else:
                kill_child(pid)  # (not reaped yet: still ours)
                self.failed(start.req, str(msg.get("error", "the spawner did not answer")))

    def spawn_died(self, pid, status):
        """B died before its report was taken (reap): its report may be in the pipe still."""
        start = self.spawns.pop(pid)
        sid = start.req["id"]
        self.drain_reports(start)
        msg = self.reported.pop(sid, None) or {}
        if msg.get("ok") is True:
            self.send({"t": "spawned", "id": sid, "pid": pid, "start": None})
            self.report_exit(pid, status)
        else:
            how = f"signal {os.WTERMSIG(status)}" if os.WIFSIGNALED(status) else f"status {os.WEXITSTATUS(status)}"
            self.failed(start.req, str(msg.get("error") or f"the spawner did not answer (the sandbox's init ended with {how})"))

    def started(self, start, pid, with_start_time=False):
        """The init `pid` a start reported: ours to kill by spawn id while it lives. Its
        death may already have been reaped (it died before it was reported)."""
        sid = start.req["id"]
        early = self.claim(start, pid)
        if early is None:
            info = child_stat(pid)
            if info is None or info[0] != self.pid or pid in self.inits or pid in self.host_of or pid in self.forker_pids():
                # Not (or no longer) a child of ours: it died, and its status was not kept
                # (UNCLAIMED_MAX). Never taken as an init: its pid may be another's now.
                self.send({"t": "spawned", "id": sid, "pid": pid, "start": None})
                self.send({"t": "exit", "pid": pid, "signal": signal.SIGKILL.value})
                return
            self.inits[pid] = sid
            self.init_of[sid] = pid
            # Not reaped yet, the pid is still that init's: its start time tells it from
            # any later process with the same pid (a command joins its sandbox by both).
            self.send({"t": "spawned", "id": sid, "pid": pid, "start": info[1] if with_start_time else None})
            return
        self.send({"t": "spawned", "id": sid, "pid": pid, "start": None})
        self.report_exit(pid, early)  # it died (and was reaped) before it was reported

    # -------------------------------------------------------------- reaping -------------

    def reap(self):
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            if self.host_forker is not None and pid == self.host_forker[0]:
                os._exit(1)  # (start_host_forker: the server starts a new command template)
            if pid in self.inits:
                box = self.busy_box(pid)
                if box is not None:
                    # A slot that died running a command: the end it reported, if any, is
                    # read first (its pipe may have no end yet: a process of the box's uid
                    # can hold a copy of its write end).
                    self.command_ended(self.busy[box].status, died=True)
                if pid in self.inits:
                    self.report_exit(pid, status)
            elif pid in self.host_of:
                self.drop_host(self.host_of[pid], "the box's command host died", reaped=True)
            elif pid in self.slot_of:
                self.drop_slot(self.slot_of[pid], kill=False)
            elif self.forker is not None and pid == self.forker[0]:
                self.drop_forker(reaped=True)
            elif self.forker_maker is not None and pid == self.forker_maker[0]:
                self.drop_forker_maker(reaped=True)
            elif pid in self.spawns:
                self.spawn_died(pid, status)
            elif self.spawns or self.commands or self.preparing:
                self.remember(pid, status)  # an init that died before its start reported it?

    def remember(self, pid, status):
        """Keeps a reaped child's status for the starts waiting now. Bounded: with starts
        always under way, the oldest entries go (a start whose init is not found here nor
        among our children reports it dead; see started)."""
        self.reaped += 1
        self.unclaimed.pop(pid, None)
        self.unclaimed[pid] = (self.reaped, status)
        while len(self.unclaimed) > UNCLAIMED_MAX:
            del self.unclaimed[next(iter(self.unclaimed))]

    def claim(self, start, pid):
        """The status of `pid` if it was reaped after `start` began (before, it was another
        process with that pid)."""
        entry = self.unclaimed.get(pid)
        if entry is None or entry[0] <= start.since:
            return None
        del self.unclaimed[pid]
        return entry[1]

    def prune(self):
        """Forgets what no start under way can claim any more (a later child may get these
        pids again)."""
        waiting = [s.since for starts in (self.spawns, self.commands, self.preparing) for s in starts.values()]
        if not waiting:
            self.unclaimed.clear()
            return
        oldest = min(waiting)
        while self.unclaimed:
            pid = next(iter(self.unclaimed))
            if self.unclaimed[pid][0] > oldest:
                break
            del self.unclaimed[pid]

    def report_exit(self, pid, status):
        self.init_of.pop(self.inits.pop(pid, None), None)
        if os.WIFSIGNALED(status):
            self.send({"t": "exit", "pid": pid, "signal": os.WTERMSIG(status)})
        else:
            self.send({"t": "exit", "pid": pid, "code": os.WEXITSTATUS(status)})

    # -------------------------------------------------------------- the loop ------------

    def serve(self):
        global SECCOMP, DRIVER_FILE, PROBE_FILE, CTL_PATH_FD
        self.pid = os.getpid()
        server = os.getppid()
        prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != server:
            os._exit(0)  # the server died before the death signal was armed
        # Under memory pressure the kernel should pick a session's process, not the
        # template every session depends on (B puts itself back to 0). Needs
        # CAP_SYS_RESOURCE, which a container may not grant: best effort.
        try:
            write_file("/proc/self/oom_score_adj", "-500")
        except OSError:
            pass
        prctl(PR_SET_CHILD_SUBREAPER, 1)
        for fd in (CTL_IN, CTL_OUT):
            os.set_inheritable(fd, False)  # (never through an exec: only the server's)
        wake_r, wake_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self.wake_r = wake_r
        signal.set_wakeup_fd(wake_w)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        init = self.read_messages()
        while not init:
            init = self.read_messages()
        SECCOMP = seccomp_program(base64.b64decode(init[0]["seccomp"]))
        DRIVER_FILE, PROBE_FILE = init[0]["driver_file"], init[0]["probe_file"]
        if init[0].get("socket_path"):  # (the command zygote has none: commands use FIFOs)
            CTL_PATH_FD = os.open(init[0]["socket_path"], os.O_PATH | os.O_CLOEXEC)
        self.pending = init[1:]
        preloaded, errors = preload(init[0].get("preload", []))
        if init[0].get("driver_source"):
            load_driver(init[0]["driver_source"])
        gc.collect()
        gc.freeze()  # the children's collector then never writes to the template's objects
        if CTL_PATH_FD >= 0:
            self.start_forker()  # (the template of interpreters: it spawns)
        else:
            self.start_host_forker()  # (the command template; the server sends no request before "ready")
        self.send({"t": "ready", "pid": self.pid, "preloaded": preloaded, "preload_errors": errors})
        self.poller.register(CTL_IN, select.POLLIN)
        self.poller.register(wake_r, select.POLLIN)
        while True:
            while self.pending:
                self.handle(self.pending.pop(0))
            self.start_queued()
            try:
                ready = dict(self.poller.poll(self.poll_timeout_ms()))
            except InterruptedError:
                continue
            # (answers first: a host that answered and died is then not taken for a failure)
            for box, start in list(self.preparing.items()):
                if start.fd in ready:
                    self.host_answered(box)
            for box, start in list(self.commands.items()):
                if start.fd in ready:
                    self.slot_answered(box)
            for fd, box in list(self.watch.items()):
                if fd in ready:
                    self.drop_slot(box)  # its interpreter is gone
            for fd in list(self.running):
                if fd in ready:
                    self.command_ended(fd)
            if wake_r in ready:
                self.drain_wake()
            if self.reports in ready:
                self.drain_reports()
                self.spawns_reported()
            self.reap()
            self.expire()
            self.prune()
            if CTL_IN in ready:
                self.pending.extend(self.read_messages())

    def poll_timeout_ms(self):
        """Until the nearest deadline (None: no start under way)."""
        deadlines = [s.deadline for starts in (self.spawns, self.commands, self.preparing) for s in starts.values()]
        if not deadlines:
            return None
        return max(0, int((min(deadlines) - time.monotonic()) * 1000) + 1)

    def expire(self):
        now = time.monotonic()
        for pid, start in list(self.spawns.items()):
            if start.deadline <= now:
                del self.spawns[pid]
                self.reported.pop(start.req["id"], None)
                kill_child(pid)  # (not reaped yet: still ours)
                self.failed(start.req, "the spawner did not answer")
        for box, start in list(self.preparing.items()):
            if start.deadline <= now:
                self.drop_host(box, "the box's command host did not answer")
        for box, start in list(self.commands.items()):
            if start.deadline <= now:
                self.drop_command(box, "the command's init did not answer")

    def drain_wake(self):
        try:
            while os.read(self.wake_r, 512):
                pass
        except BlockingIOError:
            pass

    # -------------------------------------------------------------- commands ------------

    def command(self, req):
        """A command in the sandbox of a running interpreter (see "commands" above), handed
        to its box's slot, one at a time per box; the others wait in the box's queue."""
        queue = self.queued.setdefault(str(req["box"]), [])
        # (the first in the queue waits for its slot; BOX_QUEUE_MAX more may wait behind it)
        if len(queue) > BOX_QUEUE_MAX:
            self.failed(req, f"{len(queue) - 1} commands of this box are already waiting for its command host")
            return
        queue.append(req)

    def start_queued(self):
        for box in list(self.queued):
            queue = self.queued[box]
            while queue and box not in self.commands and box not in self.preparing:
                req = queue[0]
                slot = self.slots.get(box)
                if slot is not None and slot.init == slot_key(req) and not readable(slot.pidfd, 0):
                    queue.pop(0)
                    self.hand_off(box, req)
                    continue
                # (no slot, or one in the sandbox of an interpreter that is gone)
                self.drop_slot(box)
                error = self.prepare(box, req)
                if error is not None:
                    queue.pop(0)
                    self.failed(req, error)
            if not queue:
                del self.queued[box]

    def prepare(self, box, req):
        """Asks the box's host for a slot in the sandbox of the interpreter req["init"],
        whose namespaces are opened here (see session_namespaces), with the slot's channels,
        made here (see "Channels" above). Returns why not, or None: host_answered()
        finishes it."""
        pidfd = -1
        fds = []
        slot = None
        try:
            host = self.host_for(req)
            if unread(host["sock"]):
                # Its last request is unread: a host that answered without reading it is
                # not itself (a process of the box's uid can write on its answer pipe), and
                # each unread request holds descriptors of ours. A new host takes this one.
                self.drop_host(box, "")
                host = self.host_for(req)
            # (before the check of its start time: then the pidfd is of the process checked)
            pidfd = os.pidfd_open(int(req["init"]["pid"]))
            ns = session_namespaces(req["init"])
            fds = [ns[name] for name in NS_FDS]
            sock, theirs = send_only_pair()
            fds.append(theirs.detach())
            status, status_w = pipe_for_peer()
            fds.append(status_w)
            slot, pidfd = Slot(sock, status, slot_key(req), pidfd), -1
            try:
                send_rights(host["sock"], slot_limits(req), fds)
            except BlockingIOError:
                # (its socket is full: it reads no requests; the next command makes a new one)
                self.drop_host(box, "")
                raise OSError(errno.EAGAIN, "the box's command host takes no more requests") from None
        except OSError as e:
            if slot is not None:
                slot.close()
            if pidfd >= 0:
                os.close(pidfd)
            return f"{type(e).__name__}: {e}"
        finally:
            for fd in fds:
                os.close(fd)
        start = self.preparing[box] = Start(req, self.reaped, fd=host["answers"])
        start.slot = slot
        self.poller.register(start.fd, select.POLLIN)
        return None

    def host_answered(self, box):
        """The box's host's answer pipe is readable: Y's pid (or why not), or its end (the
        host died)."""
        host = self.hosts[box]
        try:
            data = os.read(host["answers"], STATUS_LINE_MAX)
        except BlockingIOError:
            return  # (nothing after all)
        except OSError:
            data = b""
        start = self.preparing.pop(box)
        self.poller.unregister(start.fd)
        slot = start.slot
        assert slot is not None
        # (one answer per request, one line each: anything after it is not the host's)
        answer = parse_answer(data.split(b"\n", 1)[0])
        if not answer:
            self.drop_host(box, "")  # dead or stuck: the next command makes a new one
        pid = answer.get("pid")
        if isinstance(pid, int) and self.claim(start, pid) is None and self.fresh_child(pid, ids_of(start.req)[0]):
            slot.pid = pid
            self.slots[box] = slot
            self.slot_of[pid] = box
            self.watch[slot.pidfd] = box
            self.poller.register(slot.pidfd, select.POLLIN)
            return
        slot.close()  # (Y, if any, then sees the end of its socket and exits)
        if isinstance(pid, int):
            # A pid that is no new slot of ours: the host is out of step or not itself
            # (a process of the box's uid can write on its pipe); the next command of
            # this box makes a new one.
            self.drop_host(box, "")
        self.unqueue(box, start.req)
        why = "the command's init died" if isinstance(pid, int) else "the box's command host did not answer"
        self.failed(start.req, str(answer.get("error", why)))

    def fresh_child(self, pid, uid=-1):
        """`pid` is a child of ours that is no init, host or slot yet, in a pid namespace
        that is not ours (a new slot's Y is the init of its own). A box's host, which says
        the pid, is dumpable as the box's uid: red team of 2026-12-03, a process of that uid
        took its socket and named the host forker, a child of ours in our namespace that
        was none of those; the command sent to that "slot" went to the process, and its
        answer had us kill the host forker, which ended the command template and every
        session's running command."""
        info = child_stat(pid)
        if info is None or info[0] != self.pid or pid in self.inits or pid in self.host_of or pid in self.slot_of:
            return False
        if pid in self.forker_pids():
            return False
        # Y is pid 1 of a namespace one below ours (NSpid lists a pid in each namespace
        # from ours down; its ns/pid link would need ptrace access, which an unprivileged
        # template lacks), of the box's uid when it has one: another box's Y, in the
        # moment it is ours and no slot yet, cannot be named (red team of 2026-12-03).
        own = nspid(os.getpid())
        theirs = nspid(pid)
        if own is None or theirs is None or len(theirs[0]) != len(own[0]) + 1 or theirs[0][-1] != b"1":
            return False
        return uid < 0 or theirs[1] == uid

    def forker_pids(self):
        return {f[0] for f in (self.forker, self.forker_maker, self.host_forker) if f is not None}

    def unqueue(self, box, req):
        queue = self.queued.get(box)
        if queue and queue[0] is req:
            queue.pop(0)

    def hand_off(self, box, req):
        """Gives the command to the box's slot: a descriptor of what Y needs of the request,
        and the write ends of the server's FIFOs (opened here, so the server can unlink them
        once it hears "spawned"; closed here at once). slot_answered() finishes it."""
        slot = self.take_slot(box)
        fds = []
        try:
            if unread(slot.sock):
                # (Y reads each command before it starts it: one still unread was not read
                # by Y, or Y is stuck)
                raise OSError(errno.EAGAIN, "the command's init did not take the last command")
            for path in (req["stdout"], req["stderr"]):
                fds.append(open_fifo(path))
            memfd = os.memfd_create("request", os.MFD_CLOEXEC)
            fds.insert(0, memfd)
            view = memoryview(json.dumps({k: req[k] for k in ("argv", "script", "spec")}).encode())
            while view:
                view = view[os.write(memfd, view):]
            send_rights(slot.sock, b"c", fds)
        except OSError as e:
            slot.close()
            kill_child(slot.pid)  # (not reaped: it was a ready slot until now)
            self.failed(req, f"{type(e).__name__}: {e}")
            return
        finally:
            for fd in fds:
                os.close(fd)
        self.busy[box] = slot
        start = self.commands[box] = Start(req, self.reaped, pid=slot.pid, fd=slot.status)
        start.slot = slot
        self.poller.register(start.fd, select.POLLIN)

    def slot_answered(self, box):
        """A slot's report pipe is readable: "started", why not, or its end (Y died)."""
        start = self.commands[box]
        assert start.slot is not None
        line = start.slot.line()
        if line is None:
            return
        del self.commands[box]
        self.poller.unregister(start.fd)
        if line == b"started":
            # Y reports the command's end on the same pipe (see command_ended).
            self.running[start.fd] = box
            self.poller.register(start.fd, select.POLLIN)
            self.started(start, start.pid)
            self.command_ended(start.fd)  # (its end may have come in the same read)
            return
        self.release_busy(box)
        if not line and not start.req.get("retried"):
            # Y died before it took the command (nothing ran): once more, with a new slot.
            start.req["retried"] = True
            self.queued.setdefault(box, []).insert(0, start.req)
        else:
            self.failed(start.req, line.decode(errors="replace") or "the command's init died")

    def command_ended(self, fd, died=False):
        """A started command's Y wrote its status (the command ended and every process it
        left is gone: end_leftovers), or its pipe ended (it died; `died`: it has been
        reaped). Its exit is reported, and Y, alive and still in the sandbox of the box's
        interpreter, is the box's ready slot again: the box's next command needs no new
        one."""
        box = self.running[fd]
        slot = self.busy[box]
        line = slot.line()
        if line is None:
            if not died:
                return  # (nothing yet)
            line = b""
        del self.running[fd]
        self.poller.unregister(fd)
        del self.busy[box]
        words = line.split()
        # (an exit status: 0 to 255; anything else is no end of a command)
        status_ok = len(words) in (2, 3) and words[1].isdigit() and len(words[1]) <= 3 and int(words[1]) <= 255
        ended = status_ok and words[0] == b"exit" and slot.pid in self.inits
        if ended:
            self.report_exit(slot.pid, int(words[1]) << 8)  # (a wait status: exited with that code)
            interpreter_gone = readable(slot.pidfd, 0)
            # ("last": the command changed the slot's limits or priority; it exits)
            if box not in self.slots and not interpreter_gone and len(words) == 2 and not died:
                self.slots[box] = slot
                self.slot_of[slot.pid] = box
                self.watch[slot.pidfd] = box
                self.poller.register(slot.pidfd, select.POLLIN)
                return
        slot.close()
        if ended and not died:
            kill_child(slot.pid)  # (not reaped: its end was just reported)

    def busy_box(self, pid):
        """The box whose command runs in the slot `pid`, if any."""
        return next((box for box, slot in self.busy.items() if slot.pid == pid), None)

    def release_busy(self, box):
        """The box's Y that ran (or was handed) a command is not taken back: Zc's ends of
        its channels and the pidfd of its interpreter's init are closed (Y sees the end of
        its socket and exits, if it has not died already; its death is reaped as any
        init's)."""
        slot = self.busy.pop(box, None)
        if slot is None:
            return
        if self.running.pop(slot.status, None) is not None:
            self.poller.unregister(slot.status)
        slot.close()

    def drop_command(self, box, why):
        """The command handed to the box's slot fails: its Y is killed."""
        start = self.commands.pop(box, None)
        if start is None:
            return
        self.poller.unregister(start.fd)
        self.release_busy(box)
        entry = self.unclaimed.get(start.pid)
        if entry is None or entry[0] <= start.since:
            kill_child(start.pid)  # (not reaped since it was handed the command: still our Y)
        self.failed(start.req, why)

    def take_slot(self, box):
        """The box's ready slot, no longer ready (a command takes it, or it is dropped)."""
        slot = self.slots.pop(box)
        self.slot_of.pop(slot.pid, None)
        self.watch.pop(slot.pidfd, None)
        self.poller.unregister(slot.pidfd)
        return slot

    def drop_slot(self, box, kill=True):
        """Closes the box's ready slot (Y sees the end of its socket and exits) and kills
        its Y, unless it has been reaped (`kill` False)."""
        if box not in self.slots:
            return
        slot = self.take_slot(box)
        slot.close()
        if kill:
            kill_child(slot.pid)

    def host_for(self, req):
        box = str(req["box"])
        host = self.hosts.get(box)
        if host is None:
            # Made by F, never forked from here: nothing of the zygote's (the server's
            # pipes, other boxes' hosts or slots, the requests it has read).
            if self.host_forker is None:
                raise OSError(errno.EPIPE, "the command template has no host forker")
            fds = open_procs(req.get("cgroup_procs"))
            mine, theirs = send_only_pair()
            answers, answers_w = pipe_for_peer()
            try:
                head = HOST_HEAD.pack(*ids_of(req), int(req.get("nice") or 0))
                socket.send_fds(self.host_forker[1], [head], [theirs.fileno(), answers_w, *fds])
                answer = self.host_forker[1].recv(8)
            except OSError:
                answer = b""
            finally:
                theirs.close()
                os.close(answers_w)
                for fd in fds:
                    os.close(fd)
            pid = int.from_bytes(answer, "little", signed=True) if len(answer) == 4 else 0
            if pid <= 0:
                mine.close()
                os.close(answers)
                if len(answer) != 4:
                    kill_child(self.host_forker[0])  # (a late answer would be the next one's: see reap)
                    raise OSError(errno.EPIPE, "the command template's host forker did not answer")
                raise OSError(-pid or errno.EIO, os.strerror(-pid or errno.EIO))
            host = self.hosts[box] = {"pid": pid, "sock": mine, "answers": answers}
            self.host_of[pid] = box
        return host

    def drop_host(self, box, why, reaped=False):
        """Kills the box's host (`reaped`: it is dead and reaped, its pid no longer ours to
        signal: red team of 2026-12-03). The slot it was making, if a command waits for
        it, fails that command with `why`."""
        start = self.preparing.pop(box, None)
        host = self.hosts.pop(box, None)
        if host is not None:
            self.host_of.pop(host["pid"], None)
            if start is not None:
                self.poller.unregister(start.fd)
            host["sock"].close()
            os.close(host["answers"])
            if not reaped:
                kill_child(host["pid"])
        if start is not None:
            assert start.slot is not None
            start.slot.close()
            self.unqueue(box, start.req)
            self.failed(start.req, why or "the box's command host did not answer")

    def forget(self, box):
        """The box is gone: its host and slot are killed, its commands fail."""
        self.drop_host(box, "the box is gone")
        self.drop_slot(box)
        self.drop_command(box, "the box is gone")
        self.release_busy(box)
        for req in self.queued.pop(box, []):
            self.failed(req, "the box is gone")

    def handle(self, msg):
        op = msg.get("op")
        if op == "spawn":
            self.spawn(msg)
        elif op == "command":
            self.command(msg)
        elif op == "forget":
            self.forget(str(msg.get("box")))
        elif op == "kill":
            # By spawn id, never by pid: a pid is only ours until we reap it, and could
            # name another session's init after that.
            pid = self.init_of.get(msg.get("id"))
            if pid is not None:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass


def nspid(pid):
    """(`pid`'s number in each pid namespace from ours down, its real uid), from
    /proc/<pid>/status; None when it is gone or a line is missing."""
    ids, uid = None, None
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"NSpid:"):
                    ids = line.split()[1:]
                elif line.startswith(b"Uid:"):
                    uid = int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None if ids is None or uid is None else (ids, uid)


def kill_child(pid):
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def parse_answer(data):
    try:
        answer = json.loads(data or b"{}")
    except (ValueError, RecursionError):
        return {}
    return answer if isinstance(answer, dict) else {}


def child_stat(pid):
    """(parent pid, start time) of process `pid`, None if there is none."""
    try:
        fd = os.open(f"/proc/{pid}", os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return None
    try:
        return proc_stat(fd)
    except (OSError, ValueError, IndexError):
        return None
    finally:
        os.close(fd)


def open_fifo(path):
    """The write end of the server's FIFO, blocking once open (a reader is there: the open
    does not wait); anything but a FIFO is refused."""
    fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        if not stat.S_ISFIFO(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, f"{path} is not a FIFO")
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
        return fd
    except BaseException:
        os.close(fd)
        raise


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
        job = (sandboxed.env, sandboxed.cwd, sandboxed.probe_args)
    gc.collect()  # the unwound frames and the zygote's objects are gone
    become(*job)
