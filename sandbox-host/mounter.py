"""Mounts and unmounts the size-capped tmpfs of each box (its disk quota) on the host, for
a root server. One process per server, started by src/sandbox/mounts.ts; it replaces a
fork and exec of /usr/bin/mount and /usr/bin/umount per box (each ~5-50 ms: a fork of the
server and libmount reading the host's whole mount table) with one system call each.

Protocol, one JSON object per line:
  stdin   {"id": n, "op": "mount", "dir": D, "size_mb": S, "nr_inodes": I, "mode": "0711"}
          {"id": n, "op": "umount", "dir": D}      lazy (MNT_DETACH); not mounted is ok
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

MS_NOSUID, MS_NODEV = 0x2, 0x4
MNT_DETACH = 0x2
PR_SET_PDEATHSIG = 1
EINVAL = 22
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


def umount(root: str, req: dict) -> None:
    try:
        fd = open_box(root, req.get("dir"))
    except FileNotFoundError:
        return
    try:
        if libc.umount2(f"/proc/self/fd/{fd}".encode(), MNT_DETACH) != 0 and ctypes.get_errno() != EINVAL:
            raise OSError(fail("umount"))
    finally:
        os.close(fd)


def main() -> None:
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() == 1:
        return
    root = os.path.realpath(sys.argv[1])
    ops = {"mount": mount, "umount": umount}
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
