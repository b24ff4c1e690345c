"""Caps the devpts of bubblewrap sandboxes, sets up their network and ipc namespaces and
mounts their overlays: bwrap's --dev mounts a private devpts instance with no max=, so
without this one sandbox could open ptys up to the host's kernel.pty.max
and make openpty() fail for every other sandbox and the host. One process per server, on
the host, as the server's uid (src/sandbox/devpts-cap.ts starts it).

Protocol, one JSON object per line:
  stdin   {"id": n, "pid": P, "parent": Q, "max": N, "options": "ptmxmode=0666,mode=620",
           "network": {"loopbackMtu", "gsoMaxSegs", "sysctls"}, "ipc": {"sysctls"},
           "overlays": [{"dir": F, "lowers": [name in F, ...], "dest": D}, ...],
           "selfBinds": [E, ...], "covers": [C, ...]}
              P: the sandbox's first process (bwrap's "child-pid"), child of Q (the
              outer bwrap, the server's child); N: the pty cap; options: the ones bwrap
              mounted the devpts with (a reconfigure resets those it does not name)
          {"id": n, "cancel": true}           the sandbox is gone: forget the request
  stdout  {"id": n, "ok": true} | {"id": n, "error": "..."}

Order of events: bwrap builds the sandbox's mounts (devpts among them), then waits on its
--block-fd before it loads the seccomp filter and runs the program. The server sends the
request as soon as bwrap reports the child's pid; this process watches that process's
mount table (poll() on /proc/P/mountinfo wakes on every change), and once a devpts that
is not one of the host's appears, reconfigures it with max=N; the server then releases
the block fd. No program of the sandbox has run before the cap holds.

`network` (spec.ts SandboxNetwork) is set first, once the request arrives (the network
namespace exists from the moment bwrap's child does), by the code the template runs for
its own sandboxes (sandbox-python/sandbox_network.py configure_network): from a forked
child that joins the user namespace that owns the sandbox's network namespace and then that
namespace, as the namespace's root: lo's MTU, its gso_max_segs, and the sysctls of that
namespace. `ipc` (spec.ts SandboxIpc) is set the same way (configure_ipc), in the
sandbox's ipc namespace, once its devpts is mounted (its files are writable by the
namespace's root uid only, which exists once bwrap has written the uid map). Run with -I,
this script has no folder of its own on sys.path: it puts sandbox-python/ (next to
sandbox-host/) there, for that one module.

`overlays` (spec.ts `overlay`; bwrap 0.8 has no option for them, and bwrap-args.ts makes
a bare folder at D instead) are mounted last, once the sandbox's tree is finished (its
root read-only, as seen from P's root): a forked child becomes the owner of the sandbox's
user namespace, makes the overlay there (fsopen, its layers looked up on the host as the
box's uid, by their names in F: the sandbox's mount table shows the option as given, and
host paths are not for it to see), joins the sandbox's mount namespace and mounts it on
the folder D; the table is then checked to show an overlay at each D. Each `selfBinds`
folder E (the sandbox's /proc/sys: bubblewrap covers it only where it is writable) is then
bound over itself, read-only, from the same child: the sandbox's own inodes, not a bind of
the host's /proc/sys (whose files a lock on was seen host-wide). Each `covers` folder C
(the sandbox's /proc/1: bwrap's init, its pid 1, runs as the sandbox's uid and is
dumpable, so the sandbox could open its /proc/1/mem and rewrite it, or lock its image, the
host's bwrap) is then covered by an empty read-only tmpfs, from the same child.

The reconfiguration is made from a forked child that becomes the owner of the user
namespace that owns the sandbox's mount namespace (the box's uid, when the server is
root), joins it and then that mount namespace (fspick needs a capability there): so it
can only ever change a devpts that the sandbox's own user namespace mounted (the kernel
refuses one of the host or of another sandbox: EPERM, which is skipped), root or not, and
needs no CAP_SYS_ADMIN on the host. Requests wait concurrently; each is dropped when its process ends
(a pidfd) or the server cancels it.
"""

import ctypes
import errno
import json
import os
import select
import stat
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "sandbox-python"))
from sandbox_network import configure_ipc, configure_network

# the same on every architecture (new syscall table)
NR = {"open_tree": 428, "move_mount": 429, "fsopen": 430, "fsconfig": 431, "fsmount": 432, "fspick": 433, "mount_setattr": 442}
OPEN_TREE_CLONE, OPEN_TREE_CLOEXEC, AT_RECURSIVE, AT_EMPTY_PATH, AT_FDCWD = 0x1, 0o2000000, 0x8000, 0x1000, -100
FSPICK_CLOEXEC, FSPICK_EMPTY_PATH = 0x1, 0x8
FSOPEN_CLOEXEC, FSMOUNT_CLOEXEC = 0x1, 0x1
FSCONFIG_SET_STRING, FSCONFIG_CMD_CREATE, FSCONFIG_CMD_RECONFIGURE = 1, 6, 7
MOUNT_ATTR_RDONLY, MOUNT_ATTR_NOSUID, MOUNT_ATTR_NODEV, MOUNT_ATTR_NOEXEC = 0x1, 0x2, 0x4, 0x8
READ_ONLY = MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV
MOVE_MOUNT_F_EMPTY_PATH, MOVE_MOUNT_T_EMPTY_PATH = 0x4, 0x40
CLONE_NEWNS, CLONE_NEWUSER, CLONE_NEWNET, CLONE_NEWIPC = 0x20000, 0x10000000, 0x40000000, 0x08000000
NS_GET_USERNS = 0xB701  # ioctl: the user namespace that owns a namespace
NS_GET_OWNER_UID = 0xB704  # ioctl: the uid that owns a user namespace
SETNS_FAILED = 128  # a child's exit status past this: joining the namespaces failed

libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long


def check(ret, what):
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return ret


def devpts_mounts(text):
    """(device, mount point, super options) of each devpts in a mountinfo text."""
    out = []
    for line in text.splitlines():
        left, _, right = line.partition(" - ")
        fields, rest = left.split(" "), right.split(" ")
        if len(fields) >= 5 and len(rest) >= 3 and rest[0] == "devpts":
            out.append((fields[2], fields[4].replace("\\040", " "), rest[2]))
    return out


def super_options(text):
    options = {}
    for option in text.split(","):
        key, _, value = option.partition("=")
        options[key] = value
    return options


with open("/proc/self/mountinfo") as _own:
    HOST_DEVICES = {m[0] for m in devpts_mounts(_own.read())}


def join_as_owner(userns_fd, ns_fd, kind, what):
    """In a forked child: become the owner of the user namespace `userns_fd` (a root
    server's sandboxes run as the box's uid; this needs CAP_SETUID only), join it (every
    capability there), then the namespace `ns_fd` (of `kind`) that it owns."""
    become_owner(userns_fd)
    check(libc.setns(ns_fd, kind), what)


def become_owner(userns_fd):
    """join_as_owner's first half: the owner of `userns_fd`, in it."""
    owner = ctypes.c_uint(0)
    check(libc.ioctl(userns_fd, NS_GET_OWNER_UID, ctypes.byref(owner)), "NS_GET_OWNER_UID")
    if os.geteuid() != owner.value:
        os.setgroups([])
        os.setresuid(owner.value, owner.value, owner.value)
    check(libc.setns(userns_fd, CLONE_NEWUSER), "setns user")


def reconfigure(path_fd, userns_fd, mntns_fd, settings):
    """In a forked child: become the owner of the sandbox's user namespace (a root server's
    sandboxes run as the box's uid; this needs CAP_SETUID only), join that namespace and
    the sandbox's mount namespace, then set the options on the devpts `path_fd` is on.
    Returns 0, the errno of the reconfiguration, or SETNS_FAILED + the errno of a join."""
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            join_as_owner(userns_fd, mntns_fd, CLONE_NEWNS, "setns mnt")
        except OSError as e:
            os._exit(SETNS_FAILED + min(e.errno or 1, 127))
        try:
            fc = check(libc.syscall(NR["fspick"], path_fd, b"", FSPICK_CLOEXEC | FSPICK_EMPTY_PATH), "fspick")
            for key, value in settings:
                check(libc.syscall(NR["fsconfig"], fc, FSCONFIG_SET_STRING, key.encode(), value.encode(), 0), f"fsconfig {key}")
            check(libc.syscall(NR["fsconfig"], fc, FSCONFIG_CMD_RECONFIGURE, None, None, 0), "reconfigure")
        except OSError as e:
            code = min(e.errno or 1, 127)
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def finish_tree(targets, self_binds, covers, userns_fd, mntns_fd):
    """In one forked child: the owner of the sandbox's user namespace, in it, makes for each
    of `targets` (path_fd, folder, lowers) a read-only overlay (nosuid, nodev) of the layers
    `lowers`, names in the host folder `folder` (looked up in a private copy of this
    helper's mount namespace, the host's, with the box's uid), then joins the sandbox's
    mount namespace and mounts each on the folder its `path_fd` is. The overlays belong to
    the sandbox's user namespace: nothing else of the host is changed. Where the host has
    a mount below the first layer, the kernel refuses the overlay (EINVAL: a layer cannot
    be a tree with mounts locked in it, since the overlay would show what they cover): the
    first layer is then bound, recursively, read-only, nosuid and nodev, as bubblewrap
    would (the host's inodes, as before the overlays). Then, in the sandbox's mount
    namespace, binds each folder of `self_binds` (descriptors of the sandbox's own) over
    itself, read-only, nosuid, nodev and noexec, and mounts an empty tmpfs (read-only,
    nosuid, nodev, noexec, no room) on each of `covers`. Returns 0, or the errno, as
    reconfigure."""
    pid = os.fork()
    if pid == 0:
        try:
            become_owner(userns_fd)
            # a mount namespace of the sandbox's user namespace (a copy of the host's, where
            # the layers are looked up): a filesystem is made only where one may mount
            check(libc.unshare(CLONE_NEWNS), "unshare mnt")
        except OSError as e:
            os._exit(SETNS_FAILED + min(e.errno or 1, 127))
        code = 0
        try:
            mounts = []
            for path_fd, folder, lowers in targets:
                os.chdir(folder)
                mounts.append((make_overlay(lowers), path_fd))
            check(libc.setns(mntns_fd, CLONE_NEWNS), "setns mnt")
            for path_fd in self_binds:
                clone = OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC | AT_RECURSIVE | AT_EMPTY_PATH
                mnt = check(libc.syscall(NR["open_tree"], path_fd, b"", clone), "open_tree")
                attr = (ctypes.c_uint64 * 4)(READ_ONLY | MOUNT_ATTR_NOEXEC, 0, 0, 0)
                where = AT_EMPTY_PATH | AT_RECURSIVE
                check(libc.syscall(NR["mount_setattr"], mnt, b"", where, ctypes.byref(attr), ctypes.sizeof(attr)), "mount_setattr")
                mounts.append((mnt, path_fd))
            mounts += [(make_empty(), path_fd) for path_fd in covers]
            for mnt, path_fd in mounts:
                flags = MOVE_MOUNT_F_EMPTY_PATH | MOVE_MOUNT_T_EMPTY_PATH
                check(libc.syscall(NR["move_mount"], mnt, b"", path_fd, b"", flags), "move_mount")
        except OSError as e:
            code = min(e.errno or 1, 127)
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def make_overlay(lowers):
    """finish_tree's part for one overlay, in the current folder: a detached mount."""
    attrs = READ_ONLY
    try:
        fc = check(libc.syscall(NR["fsopen"], b"overlay", FSOPEN_CLOEXEC), "fsopen overlay")
        check(libc.syscall(NR["fsconfig"], fc, FSCONFIG_SET_STRING, b"source", b"sbx-system", 0), "fsconfig source")
        check(libc.syscall(NR["fsconfig"], fc, FSCONFIG_SET_STRING, b"lowerdir", ":".join(lowers).encode(), 0), "fsconfig lowerdir")
        check(libc.syscall(NR["fsconfig"], fc, FSCONFIG_CMD_CREATE, None, None, 0), "overlay")
        return check(libc.syscall(NR["fsmount"], fc, FSMOUNT_CLOEXEC, attrs), "fsmount")
    except OSError as e:
        if e.errno != errno.EINVAL:
            raise
    clone = OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC | AT_RECURSIVE
    mnt = check(libc.syscall(NR["open_tree"], AT_FDCWD, lowers[0].encode(), clone), "open_tree")
    attr = (ctypes.c_uint64 * 4)(attrs, 0, 0, 0)  # struct mount_attr: set, clr, propagation, userns_fd
    where = AT_EMPTY_PATH | AT_RECURSIVE
    check(libc.syscall(NR["mount_setattr"], mnt, b"", where, ctypes.byref(attr), ctypes.sizeof(attr)), "mount_setattr")
    return mnt


def make_empty():
    """finish_tree's part for one cover: a detached empty tmpfs, read-only, that holds
    nothing (one inode, the root; no pages)."""
    fc = check(libc.syscall(NR["fsopen"], b"tmpfs", FSOPEN_CLOEXEC), "fsopen tmpfs")
    for key, value in ((b"source", b"sbx-cover"), (b"mode", b"0555"), (b"nr_inodes", b"1"), (b"size", b"4k")):
        check(libc.syscall(NR["fsconfig"], fc, FSCONFIG_SET_STRING, key, value, 0), f"fsconfig {key.decode()}")
    check(libc.syscall(NR["fsconfig"], fc, FSCONFIG_CMD_CREATE, None, None, 0), "tmpfs")
    return check(libc.syscall(NR["fsmount"], fc, FSMOUNT_CLOEXEC, READ_ONLY | MOUNT_ATTR_NOEXEC), "fsmount")


def read_only_points(text):
    """The mount points whose top mount is read-only, in a mountinfo text."""
    top = {}
    for line in text.splitlines():
        fields = line.partition(" - ")[0].split(" ")
        if len(fields) >= 6:
            top[fields[4].replace("\\040", " ")] = fields[5].split(",")
    return {point for point, options in top.items() if "ro" in options}


def finished(text):
    """Whether a sandbox's mount table (as seen from its first process's root) is that of
    the finished tree: its root read-only (the spec's last step, remount-ro of /, which
    bubblewrap takes before it moves into the new root). While bwrap builds the tree, its
    first process's root is a scratch tmpfs (writable) and the tree is below /newroot."""
    return "/" in read_only_points(text)


def set_up_network(netns_fd, network):
    """In a forked child: the owner of the user namespace that owns the sandbox's network
    namespace, in that user namespace (every capability there) and in the network
    namespace, sets `network` up. Raises if it could not."""
    set_up_in(netns_fd, CLONE_NEWNET, "network", lambda: configure_network(network))


def set_up_ipc(ipcns_fd, ipc):
    """As set_up_network, for the sandbox's ipc namespace and its limits `ipc`."""
    set_up_in(ipcns_fd, CLONE_NEWIPC, "ipc namespace", lambda: configure_ipc(ipc))


def set_up_in(ns_fd, kind, what, configure):
    userns = check(libc.ioctl(ns_fd, NS_GET_USERNS), "NS_GET_USERNS")
    try:
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                join_as_owner(userns, ns_fd, kind, f"setns {what}")
                configure()
            except OSError as e:
                code = min(e.errno or 1, 127)
            except BaseException:  # noqa: BLE001
                code = errno.EINVAL
            os._exit(code)
        _, status = os.waitpid(pid, 0)
    finally:
        os.close(userns)
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise OSError(code, f"setting up the sandbox's {what}: {os.strerror(code)}")


class Request:
    def __init__(self, msg):
        self.id = msg["id"]
        self.max = int(msg["max"])
        self.settings = [kv.split("=", 1) for kv in str(msg["options"]).split(",") if kv] + [["max", str(self.max)]]
        self.refused = set()  # devices the sandbox's namespace may not reconfigure
        self.capped = None  # the device reconfigured, until the table shows its cap
        self.fds = []
        self.network = msg.get("network")
        self.ipc = msg.get("ipc")
        self.overlays = [(str(o["dest"]), str(o["dir"]), [str(p) for p in o["lowers"]]) for o in msg.get("overlays") or []]
        self.self_binds = [str(p) for p in msg.get("selfBinds") or []]
        self.covers = [str(p) for p in msg.get("covers") or []]
        self.overlaid = not self.overlays and not self.self_binds and not self.covers
        self.ipcns = -1
        try:
            self.open(int(msg["pid"]), int(msg["parent"]))
        except OSError:
            self.close()
            raise

    def open(self, pid, parent):
        self.pidfd = self.keep(os.pidfd_open(pid))
        self.proc = self.keep(os.open(f"/proc/{pid}", os.O_PATH | os.O_DIRECTORY))
        # the pidfd pins the process: from here on /proc/{pid} is that process, and it must
        # be a child of the server's own child (the outer bwrap), not a reused pid
        stat_fd = os.open("stat", os.O_RDONLY, dir_fd=self.proc)
        try:
            ppid = int(os.read(stat_fd, 4096).decode().rsplit(")", 1)[1].split()[1])
        finally:
            os.close(stat_fd)
        if ppid != parent:
            raise OSError(errno.ESRCH, f"process {pid} is not a child of {parent}")
        # (polled only: it wakes on every change of the sandbox's mount namespace)
        self.mountinfo = self.keep(os.open("mountinfo", os.O_RDONLY, dir_fd=self.proc))
        self.mntns = self.keep(os.open("ns/mnt", os.O_RDONLY, dir_fd=self.proc))
        self.userns = self.keep(check(libc.ioctl(self.mntns, NS_GET_USERNS), "NS_GET_USERNS"))
        if self.network is not None:
            set_up_network(self.keep(os.open("ns/net", os.O_RDONLY, dir_fd=self.proc)), self.network)
        # (the ipc limits once the sandbox's devpts is there: see try_cap)
        self.ipcns = self.keep(os.open("ns/ipc", os.O_RDONLY, dir_fd=self.proc)) if self.ipc is not None else -1

    def keep(self, fd):
        self.fds.append(fd)
        return fd

    def close(self):
        for fd in self.fds:
            os.close(fd)
        self.fds = []

    def table(self):
        """The sandbox's mount table now, as seen from its root now: opened afresh each
        time, since the file shows only what is below the root its opener had then (bwrap
        changes its root twice while it builds the sandbox)."""
        fd = os.open("mountinfo", os.O_RDONLY, dir_fd=self.proc)
        try:
            chunks = []
            while chunk := os.read(fd, 65536):
                chunks.append(chunk)
        finally:
            os.close(fd)
        return b"".join(chunks).decode(errors="replace")

    def try_cap(self):
        """True once the sandbox's devpts has the cap and its overlays and self-binds are
        mounted; False
        while it is not mounted yet (or, reconfigured, not in view: a table read while
        bwrap changes its root can be empty, and the change that ends that wakes the poll
        again), or the sandbox's tree is not finished."""
        if self.capped is None and not self.cap():
            return False
        if not self.overlaid:
            table = self.table()
            if not finished(table):
                return False
            self.overlay()
            self.overlaid = True
        return self.verify(self.capped)

    def cap(self):
        for device, point, _ in devpts_mounts(self.table()):
            if device in HOST_DEVICES or device in self.refused:
                continue
            try:
                path_fd = os.open(f"root{point}", os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=self.proc)
            except OSError:
                continue  # the sandbox's root moved since the table was read: next change
            try:
                # the folder opened is on that very mount (the path was read a moment ago)
                st = os.fstat(path_fd)
                if f"{os.major(st.st_dev)}:{os.minor(st.st_dev)}" != device or not stat.S_ISDIR(st.st_mode):
                    continue
                code = reconfigure(path_fd, self.userns, self.mntns, self.settings)
            finally:
                os.close(path_fd)
            if code == errno.EPERM:
                self.refused.add(device)  # not the sandbox's own devpts
                continue
            if code > SETNS_FAILED:
                raise OSError(code - SETNS_FAILED, f"joining the sandbox's namespaces: {os.strerror(code - SETNS_FAILED)}")
            if code != 0:
                raise OSError(code, f"devpts {point}: {os.strerror(code)}")
            # The ipc limits now, not when the request came: their files are writable by
            # the namespace's root uid only, which exists once bwrap has written the user
            # namespace's uid map, as it has before it mounts anything (a request that came
            # earlier was refused, EACCES).
            if self.ipcns >= 0:
                set_up_ipc(self.ipcns, self.ipc)
            self.capped = device
            return True
        return False

    def overlay(self):
        """The overlays, the self-binds and the covers (finish_tree), from one forked child."""
        fds = []
        try:
            for dest in self.points():
                fds.append(os.open(f"root{dest}", os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=self.proc))
            targets = [(fd, folder, lowers) for fd, (_, folder, lowers) in zip(fds, self.overlays, strict=False)]
            binds = fds[len(self.overlays) : len(self.overlays) + len(self.self_binds)]
            covers = fds[len(self.overlays) + len(self.self_binds) :]
            code = finish_tree(targets, binds, covers, self.userns, self.mntns)
        finally:
            for fd in fds:
                os.close(fd)
        if code > SETNS_FAILED:
            raise OSError(code - SETNS_FAILED, f"joining the sandbox's user namespace: {os.strerror(code - SETNS_FAILED)}")
        if code != 0:
            raise OSError(code, f"overlays and read-only mounts on {', '.join(self.points())}: {os.strerror(code)}")

    def points(self):
        """The folders overlay() mounts on: the overlays', the self-binds', the covers'."""
        return [dest for dest, _, _ in self.overlays] + self.self_binds + self.covers

    def verify(self, device):
        table = self.table()
        points = read_only_points(table)
        missing = [dest for dest in self.points() if dest not in points]
        if missing:
            raise OSError(errno.EIO, f"no read-only overlay (or bind) on {', '.join(missing)} after it was mounted")
        for dev, point, options in devpts_mounts(table):
            if dev == device:
                if super_options(options).get("max") != str(self.max):
                    raise OSError(errno.EIO, f"devpts {point} reads {options} after the reconfiguration")
                return True
        return False


def reply(msg):
    sys.stdout.write(json.dumps(msg) + "\n")
    sys.stdout.flush()


def main():
    poller = select.poll()
    poller.register(sys.stdin.fileno(), select.POLLIN)
    by_fd = {}  # fd -> request (its mountinfo and its pidfd)
    pending = {}  # id -> request
    buf = b""

    def drop(req):
        pending.pop(req.id, None)
        for fd in (req.mountinfo, req.pidfd):
            poller.unregister(fd)
            by_fd.pop(fd, None)
        req.close()

    def attempt(req):
        try:
            done = req.try_cap()
        except OSError as e:
            reply({"id": req.id, "error": str(e)})
            drop(req)
            return
        if done:
            reply({"id": req.id, "ok": True})
            drop(req)

    while True:
        for fd, _events in poller.poll():
            if fd == sys.stdin.fileno():
                data = os.read(fd, 65536)
                if not data:
                    return  # the server is gone
                buf += data
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    msg = json.loads(line)
                    if msg.get("cancel"):
                        if msg["id"] in pending:
                            drop(pending[msg["id"]])
                        continue
                    try:
                        req = Request(msg)
                    except OSError as e:
                        reply({"id": msg["id"], "error": str(e)})
                        continue
                    pending[req.id] = req
                    by_fd[req.mountinfo] = by_fd[req.pidfd] = req
                    poller.register(req.mountinfo, select.POLLPRI | select.POLLERR)
                    poller.register(req.pidfd, select.POLLIN)
                    attempt(req)
                continue
            req = by_fd.get(fd)
            if req is None:
                continue
            if fd == req.pidfd:
                reply({"id": req.id, "error": "the sandbox ended before its devpts was capped"})
                drop(req)
            else:
                attempt(req)


main()
