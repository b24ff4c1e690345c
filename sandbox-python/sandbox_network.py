"""The set-up of a sandbox's network and ipc namespaces, shared by the two places that make
them (spec.ts SandboxNetwork and SandboxIpc say what is set and why):
  - the template (zygote.py): configure_network and configure_ipc in A, loopback_up in C;
  - bubblewrap sandboxes: sandbox-host/devpts-cap.py calls each from a child that joined
    the sandbox's user namespace and that network or ipc namespace while bwrap waits.

How it is found (never through a search path that holds a host folder of the template's):
  - the template: its source comes on stdin with zygote.py's, and the server's bootstrap
    (src/sandbox/zygote.ts) registers it in sys.modules as `sandbox_network`, compiled under
    its in-sandbox name (/opt/sandbox/sandbox_network.py): no host path reaches the
    template's memory, which every interpreter inherits;
  - devpts-cap.py (run with -I: no script folder on sys.path) puts this folder
    (sandbox-python/, next to sandbox-host/) on its sys.path first;
  - zygote.py loaded from its file (probe.py, for its builder's rules; the tests) puts its
    own folder on sys.path when the module is not registered.

Standard library only; nothing runs at import.
"""

import errno
import fcntl
import os
import socket
import struct


def loopback_up():
    """lo up in the current network namespace (SIOCGIFFLAGS, then SIOCSIFFLAGS with IFF_UP)."""
    SIOCGIFFLAGS, SIOCSIFFLAGS, IFF_UP = 0x8913, 0x8914, 0x1
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        ifr = fcntl.ioctl(s.fileno(), SIOCGIFFLAGS, struct.pack("16sH22x", b"lo", 0))
        flags = struct.unpack("16sH22x", ifr)[1]
        fcntl.ioctl(s.fileno(), SIOCSIFFLAGS, struct.pack("16sH22x", b"lo", flags | IFF_UP))


def configure_network(network):
    """As root of the namespace's owner, in the sandbox's network namespace, before any
    session code: lo's MTU and segments per GSO packet, and the per-namespace sysctls of
    the spec's `network` ({"loopbackMtu", "gsoMaxSegs", "sysctls"}). /proc may still be the
    host's: its /proc/sys/net shows the namespace of whoever opens a file."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        fcntl.ioctl(s.fileno(), 0x8922, struct.pack("16si20x", b"lo", int(network["loopbackMtu"])))  # SIOCSIFMTU
    set_gso_max_segs(socket.if_nametoindex("lo"), int(network["gsoMaxSegs"]))
    write_sysctls(network["sysctls"])


def configure_ipc(ipc):
    """As root of the namespace's owner, in the sandbox's ipc namespace, before any session
    code: the spec's `ipc` limits ({"sysctls"}). /proc/sys/kernel's ipc files show the
    namespace of whoever opens them, as /proc/sys/net does."""
    write_sysctls(ipc["sysctls"])


def write_sysctls(sysctls):
    for key, value in sysctls.items():
        fd = os.open(f"/proc/sys/{key}", os.O_WRONLY)
        try:
            os.write(fd, value.encode())
        finally:
            os.close(fd)


def set_gso_max_segs(index, segs):
    """rtnetlink RTM_NEWLINK with IFLA_GSO_MAX_SEGS (no ioctl sets it), acknowledged."""
    RTM_NEWLINK, NLM_F_REQUEST, NLM_F_ACK, NLMSG_ERROR, IFLA_GSO_MAX_SEGS = 16, 1, 4, 2, 40
    body = struct.pack("BxHiII", 0, 0, index, 0, 0) + struct.pack("HHI", 8, IFLA_GSO_MAX_SEGS, segs)
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE) as nl:
        nl.sendall(struct.pack("IHHII", 16 + len(body), RTM_NEWLINK, NLM_F_REQUEST | NLM_F_ACK, 1, 0) + body)
        answer = nl.recv(4096)
    kind = struct.unpack_from("IHHII", answer)[1]
    code = struct.unpack_from("i", answer, 16)[0] if kind == NLMSG_ERROR else -errno.EPROTO
    if code != 0:
        raise OSError(-code, f"lo gso_max_segs: {os.strerror(-code)}")
