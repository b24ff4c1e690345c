"""Writes the sandbox's seccomp filter (classic BPF, native arch) to stdout.

Runs on the host, once at server start, with Debian's python3-seccomp (libseccomp 2.5).
Policy: default allow, deny the listed kernel surface (a deny-list keeps numpy, threads,
subprocess and multiprocessing working). The reasons for each entry are in
the README (Security) and docs/threat-model.md. libseccomp's default
bad-arch action (set to kill the process) refuses i386/x32 syscalls (no extra arches are added on purpose).
"""
import errno
import socket
import sys

import seccomp  # pyright: ignore[reportMissingImports] - Debian's python3-seccomp (apt, host only), not on PyPI

f = seccomp.SyscallFilter(defaction=seccomp.ALLOW)
# A syscall of another ABI (i386 int 0x80, x32) kills the whole process: libseccomp's
# default kills only the calling thread, which would leave a Python interpreter hung.
f.set_attr(seccomp.Attr.ACT_BADARCH, seccomp.KILL_PROCESS)
EPERM = seccomp.ERRNO(errno.EPERM)


def deny(name, action=EPERM, *args):
    try:
        f.add_rule(action, name, *args)
    except (RuntimeError, ValueError, OSError):
        pass  # syscall unknown to this libseccomp/arch: nothing to block


for name in (
    # debugging other processes (ptrace of the sandbox's init could cancel PDEATHSIG; a
    # pidfd_getfd of its descriptors is a ptrace access too)
    "ptrace", "process_vm_readv", "process_vm_writev", "kcmp", "pidfd_getfd",
    # namespaces and mounts
    "unshare", "setns", "mount", "umount", "umount2", "pivot_root", "chroot",
    "open_tree", "move_mount", "fsopen", "fsconfig", "fsmount", "fspick", "mount_setattr",
    # keyrings are per host uid, shared across namespaces
    "keyctl", "add_key", "request_key",
    # io_uring bypasses argument filters
    "io_uring_setup", "io_uring_enter", "io_uring_register",
    # Linux AIO: its contexts count against one host-wide limit (fs.aio-max-nr), so one
    # session could take them all from every other session and the host
    "io_setup", "io_submit", "io_getevents", "io_pgetevents", "io_cancel", "io_destroy",
    # inotify sees events of shared inodes (a read-only /usr is the same files in every
    # session): a watch would show what other sessions and the server run
    "inotify_init", "inotify_init1", "inotify_add_watch",
    # exploit primitives and information leaks
    "bpf", "userfaultfd", "perf_event_open", "fanotify_init", "name_to_handle_at",
    "open_by_handle_at", "lookup_dcookie",
    # host-level operations
    "kexec_load", "kexec_file_load", "init_module", "finit_module", "delete_module", "reboot",
    "swapon", "swapoff", "syslog", "acct", "quotactl", "settimeofday", "clock_settime",
    "clock_adjtime", "adjtimex", "iopl", "ioperm", "uselib", "modify_ldt", "vhangup",
    # NUMA and page migration
    "mbind", "move_pages", "migrate_pages", "set_mempolicy", "get_mempolicy",
    # secret memory: each page it maps leaves the kernel's direct map, which splits the
    # host's huge kernel mappings for every process (red team of 2026-12-03)
    "memfd_secret",
):
    deny(name)

# sync and syncfs write out every dirty page of a file system, the host's whole one for
# sync (a session looping it slowed other processes' fsync ~10-fold: red team of
# 2026-12-03). EPERM: sync() returns nothing, so callers (coreutils sync, os.sync) go on;
# fsync of the session's own files stays.
for name in ("sync", "syncfs"):
    deny(name)

# clone3 passes its flags in a struct seccomp cannot read: ENOSYS makes glibc use clone.
deny("clone3", seccomp.ERRNO(errno.ENOSYS))
# clone with any CLONE_NEW* bit (NEWNS, NEWCGROUP, NEWUTS, NEWIPC, NEWUSER, NEWPID, NEWNET, NEWTIME)
for bit in (0x00020000, 0x02000000, 0x04000000, 0x08000000, 0x10000000, 0x20000000, 0x40000000, 0x00000080):
    deny("clone", EPERM, seccomp.Arg(0, seccomp.MASKED_EQ, bit, bit))
# terminal injection (compare the low 32 bits only: CVE-2019-10063)
for req in (0x5412, 0x541C):  # TIOCSTI, TIOCLINUX
    deny("ioctl", EPERM, seccomp.Arg(1, seccomp.MASKED_EQ, 0xFFFFFFFF, req))
# personality other than the default
deny("personality", EPERM, seccomp.Arg(0, seccomp.NE, 0))
# sockets: only unix, inet and inet6 (no netlink, packet, vsock, alg, ...)
for domain in range(0, 64):
    if domain not in (socket.AF_UNIX, socket.AF_INET, socket.AF_INET6):
        deny("socket", seccomp.ERRNO(errno.EAFNOSUPPORT), seccomp.Arg(0, seccomp.EQ, domain))
deny("socket", seccomp.ERRNO(errno.EAFNOSUPPORT), seccomp.Arg(0, seccomp.GE, 64))
# TCP_LINGER2 keeps a closed socket in FIN_WAIT2, an orphan counted against the host-wide
# net.ipv4.tcp_max_orphans, for up to 120 s whatever the namespace's tcp_fin_timeout (spec.ts
# SandboxNetwork): refused (the level and the option are ints: their low 32 bits).
IPPROTO_TCP, TCP_LINGER2 = 6, 8
deny("setsockopt", EPERM, seccomp.Arg(1, seccomp.MASKED_EQ, 0xFFFFFFFF, IPPROTO_TCP),
     seccomp.Arg(2, seccomp.MASKED_EQ, 0xFFFFFFFF, TCP_LINGER2))
# IPv6 flow labels are allocated from one host-wide pool (FL_MAX_SIZE 4,096 labels, counted
# for every namespace together): one session could take them all (red team of 2026-12-03):
# their manager is refused.
IPPROTO_IP, SOL_SOCKET, IPPROTO_IPV6 = 0, 1, 41


def deny_sockopt(level, name):
    """setsockopt(level, name) refused with EPERM (level and name are ints: low 32 bits)."""
    deny("setsockopt", EPERM, seccomp.Arg(1, seccomp.MASKED_EQ, 0xFFFFFFFF, level),
         seccomp.Arg(2, seccomp.MASKED_EQ, 0xFFFFFFFF, name))


deny_sockopt(IPPROTO_IPV6, 32)  # IPV6_FLOWLABEL_MGR
# Socket filters (classic or eBPF) are JIT-compiled into the host-wide BPF JIT budget
# (net.core.bpf_jit_limit, 504 MiB here; vmalloc'd images no cgroup counts): one session's
# 1,904 filters took 104 MiB of it, and past the limit no unprivileged process of the host can
# load a filter, seccomp's included, where the JIT is always on (red team of 2026-12-03).
for name in (26, 50, 51, 52):  # SO_ATTACH_FILTER, SO_ATTACH_BPF, SO_ATTACH_REUSEPORT_CBPF/EBPF
    deny_sockopt(SOL_SOCKET, name)
# A session's own seccomp filters are JIT-compiled there too: refused (strict mode, which
# compiles nothing, and every other seccomp operation still work).
SECCOMP_SET_MODE_FILTER, PR_SET_SECCOMP, SECCOMP_MODE_FILTER = 1, 22, 2
deny("seccomp", EPERM, seccomp.Arg(0, seccomp.MASKED_EQ, 0xFFFFFFFF, SECCOMP_SET_MODE_FILTER))
deny("prctl", EPERM, seccomp.Arg(0, seccomp.MASKED_EQ, 0xFFFFFFFF, PR_SET_SECCOMP),
     seccomp.Arg(1, seccomp.EQ, SECCOMP_MODE_FILTER))
# Multicast memberships are kernel memory charged to no cgroup (~320 B each; IPv6 has no
# count per socket: one session held 68,000, 21 MB: red team of 2026-12-03), and of no use
# on a sandbox's own loopback: joins refused, IPv4 and IPv6.
for name in (35, 39, 42, 46):  # IP_ADD_MEMBERSHIP, IP_ADD_SOURCE_MEMBERSHIP, MCAST_JOIN_GROUP, MCAST_JOIN_SOURCE_GROUP
    deny_sockopt(IPPROTO_IP, name)
for name in (20, 42, 46):  # IPV6_ADD_MEMBERSHIP, MCAST_JOIN_GROUP, MCAST_JOIN_SOURCE_GROUP
    deny_sockopt(IPPROTO_IPV6, name)

# The page cache of the shared read-only system files (/usr is the same page cache in every
# session and on the host) is a side channel: reading whether a page of a library is
# resident tells what another session or the host ran. Its readers are refused...
#   mincore and cachestat: ENOSYS, the answer of a kernel without them (libunwind and
#   others fall back to msync when mincore is missing);
for name in ("mincore", "cachestat"):
    deny(name, seccomp.ERRNO(errno.ENOSYS))
#   reads that fail rather than wait for the disk (preadv2/pwritev2 flags, the 6th
#   argument, with RWF_NOWAIT): EOPNOTSUPP, as for a file that cannot do it;
RWF_NOWAIT = 0x08
for name in ("preadv2", "pwritev2"):
    deny(name, seccomp.ERRNO(errno.EOPNOTSUPP), seccomp.Arg(5, seccomp.MASKED_EQ, RWF_NOWAIT, RWF_NOWAIT))
# ... and so are the evictions that would make a probe repeatable: POSIX_FADV_DONTNEED
# (the other advices only tune this file's own read-ahead: NORMAL, RANDOM, SEQUENTIAL,
# WILLNEED, NOREUSE), MADV_COLD and MADV_PAGEOUT (DONTNEED, FREE, HUGEPAGE and the rest
# stay: glibc malloc and numpy use them), and process_madvise, whose advice is the same.
# The advice is an int: compare its low 32 bits only.
POSIX_FADV_DONTNEED, MADV_COLD, MADV_PAGEOUT = 4, 20, 21
deny("fadvise64", EPERM, seccomp.Arg(3, seccomp.MASKED_EQ, 0xFFFFFFFF, POSIX_FADV_DONTNEED))
for advice in (MADV_COLD, MADV_PAGEOUT):
    deny("madvise", EPERM, seccomp.Arg(2, seccomp.MASKED_EQ, 0xFFFFFFFF, advice))
deny("process_madvise")

# Extended attributes are kernel memory that no size cap counts: a tmpfs (/dev/shm, which
# bubblewrap mounts without nr_inodes) stores user.* values outside its size, so without a
# memory cgroup (rootless) nothing would bound them. Setting one is refused with
# EOPNOTSUPP, the answer of a file system without them (cp, tar and shutil.copystat go on).
for name in ("setxattr", "lsetxattr", "fsetxattr", "setxattrat"):
    deny(name, seccomp.ERRNO(errno.EOPNOTSUPP))

# Two fcntl commands act on inodes every session shares with the host (/usr) or on the
# session's files the server opens: F_NOTIFY (dnotify, the third fsnotify interface beside
# inotify and fanotify: a watch on a shared folder sees every read of it by other sessions
# and the host, and each such read pays, under a spinlock, for every watch) and F_SETLEASE
# (a lease makes the server's opens of that file fail, and could hold a host process's open
# of a shared file for lease-break-time). EINVAL, the answer of a kernel where they are
# turned off (fs.leases-enable=0, no CONFIG_DNOTIFY). The command is an int: low 32 bits.
F_SETLEASE, F_NOTIFY = 1024, 1026
for cmd in (F_SETLEASE, F_NOTIFY):
    deny("fcntl", seccomp.ERRNO(errno.EINVAL), seccomp.Arg(1, seccomp.MASKED_EQ, 0xFFFFFFFF, cmd))

f.export_bpf(sys.stdout.buffer)
