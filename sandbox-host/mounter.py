"""Mounts and unmounts the size-capped tmpfs of each box (its disk quota) on the host, for
a root server, and makes each box's device nodes. One process per server, started by src/sandbox/mounts.ts; it replaces a
fork and exec of /usr/bin/mount and /usr/bin/umount per box (each ~5-50 ms: a fork of the
server and libmount reading the host's whole mount table) with one system call each.

Protocol, one JSON object per line:
  stdin   {"id": n, "op": "mount", "dir": D, "size_mb": S, "nr_inodes": I, "mode": "0711",
           "devices": true|false}   with "devices", then as the "devices" op below, in
                                    one request: an unmount of D sent meanwhile comes after
                                    both, never between
          {"id": n, "op": "devices", "dir": D}
              D/devices: a tiny read-only tmpfs (nosuid, noexec, not nodev) holding
              DEVICES, nodes of the same devices as the host's /dev ones: the box's
              sandboxes bind these, so a lock on one, or its times, are the box's own
              (a lock on the host's /dev/null is seen host-wide, and a long list of
              them slows every close of it on the host)
          {"id": n, "op": "umount", "dir": D}      lazy (MNT_DETACH) of D/devices, then
                                                   of D; not mounted is ok
  stdout  {"id": n, "ok": true} | {"id": n, "error": "..."}

Only a folder directly under the sessions root given as the first argument is accepted:
its last component a plain name, the folder itself not a symbolic link (it is opened with
O_NOFOLLOW and the mount goes through that descriptor, so a name swapped for a link after
the check changes nothing). Nothing of a session can write the sessions root (root's,
0711); the check is a second fence behind that. Ends when its stdin closes, or with the
server (PR_SET_PDEATHSIG).
"""

import ctypes
import json
import os
import re
import signal
import sys

MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT = 0x1, 0x2, 0x4, 0x8, 0x20
MNT_DETACH, UMOUNT_NOFOLLOW = 0x2, 0x8
DEVICES = ("null", "zero", "full", "random", "urandom", "tty")
PR_SET_PDEATHSIG = 1
EINVAL, ENOENT = 22, 2
NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,200}$")

libc = ctypes.CDLL(None, use_errno=True)


def fail(what: str) -> str:
    err = ctypes.get_errno()
    return f"{what}: {os.strerror(err)} (errno {err})"


def open_box(root: str, path: object) -> int:
    """A descriptor of `path`, which must be a folder directly under `root`."""
    if not isinstance(path, str) or os.path.normpath(path) != path:
        raise ValueError(f"not a box folder of this server: {path!r}")
    if os.path.realpath(os.path.dirname(path)) != root or not NAME.match(os.path.basename(path)):
        raise ValueError(f"not a box folder of this server: {path!r}")
    return os.open(path, os.O_PATH | os.O_NOFOLLOW | os.O_DIRECTORY | os.O_CLOEXEC)


def mount(root: str, req: dict) -> None:
    size_mb, inodes, mode = req.get("size_mb"), req.get("nr_inodes"), req.get("mode")
    if not (isinstance(size_mb, int) and isinstance(inodes, int) and isinstance(mode, str) and re.match(r"^0[0-7]{3}$", mode)):
        raise ValueError("size_mb, nr_inodes and mode are required")
    fd = open_box(root, req.get("dir"))
    try:
        data = f"size={size_mb}m,nr_inodes={inodes},mode={mode}".encode()
        if libc.mount(b"sbx-workspace", f"/proc/self/fd/{fd}".encode(), b"tmpfs", MS_NOSUID | MS_NODEV, data) != 0:
            raise OSError(fail("mount"))
    finally:
        os.close(fd)
    if req.get("devices") is True:
        devices(root, req)


def devices(root: str, req: dict) -> None:
    fd = open_box(root, req.get("dir"))
    try:
        os.mkdir("devices", 0o755, dir_fd=fd)
        where = f"/proc/self/fd/{fd}/devices".encode()
        flags = MS_NOSUID | MS_NOEXEC
        if libc.mount(b"sbx-devices", where, b"tmpfs", flags, b"size=4k,nr_inodes=16,mode=0755") != 0:
            raise OSError(fail("mount devices"))
        dev = os.open("devices", os.O_PATH | os.O_NOFOLLOW | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=fd)
        try:
            for name in DEVICES:
                st = os.stat(f"/dev/{name}")
                os.mknod(name, 0o666 | (st.st_mode & 0o170000), st.st_rdev, dir_fd=dev)
                os.chmod(name, 0o666, dir_fd=dev)  # (past the umask)
        finally:
            os.close(dev)
        if libc.mount(None, where, None, MS_REMOUNT | MS_RDONLY | flags, b"size=4k,nr_inodes=16,mode=0755") != 0:
            raise OSError(fail("remount devices read-only"))
    finally:
        os.close(fd)


def umount(root: str, req: dict) -> None:
    try:
        fd = open_box(root, req.get("dir"))
    except FileNotFoundError:
        return
    try:
        # (the devices of a folder that has no tmpfs of its own: the start-up probe's)
        for path, flags in ((f"/proc/self/fd/{fd}/devices", MNT_DETACH | UMOUNT_NOFOLLOW), (f"/proc/self/fd/{fd}", MNT_DETACH)):
            if libc.umount2(path.encode(), flags) != 0 and ctypes.get_errno() not in (EINVAL, ENOENT):
                raise OSError(fail("umount"))
    finally:
        os.close(fd)


def main() -> None:
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() == 1:
        return
    root = os.path.realpath(sys.argv[1])
    ops = {"mount": mount, "devices": devices, "umount": umount}
    for line in sys.stdin:
        try:
            req = json.loads(line)
            ident = req["id"]
        except (ValueError, KeyError, TypeError):
            continue
        try:
            ops[req.get("op")](root, req)
            answer = {"id": ident, "ok": True}
        except (OSError, ValueError, KeyError) as e:
            answer = {"id": ident, "error": str(e)}
        sys.stdout.write(json.dumps(answer) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
