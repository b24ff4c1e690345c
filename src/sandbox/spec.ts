/**
 * The sandbox of a session, described once, as data. Pure: builds a description, starts
 * nothing. Every process of a session runs in a sandbox made from this description, by one
 * of two launchers that carry it out step by step:
 *   - bubblewrap (bwrap-args.ts renders the description as bwrap options and a prlimit
 *     prefix): every bash command, and interpreters when there is no template;
 *   - the interpreter template (zygote.ts sends the description; sandbox-python/zygote.py
 *     executes the mount list in one loop with bubblewrap's bind semantics).
 * At start-up a probe in each kind of sandbox dumps what it sees from inside, and the
 * server refuses to start unless each dump equals what this description implies and the
 * kinds equal each other (probe-compare.ts).
 *
 * Layout seen from inside:
 *   /usr (ro)  + /bin /sbin /lib /lib64 symlinks     the system, read-only, allow-listed
 *   /etc       a handful of files (ld cache, python, fonts) + synthetic passwd/group
 *   /opt/sandbox (ro)                                 the trusted driver code
 *   /opt/session-lib (ro)                             generated modules (_platform_tools)
 *   /workspace (rw)                                   the session's folder
 *   /tmp (rw)                                         the session's scratch, shared by
 *                                                     its interpreter and bash commands
 *   /proc (own pid namespace), /dev (minimal, ro), /dev/shm (private, size-capped)
 *   everything else: the new root tmpfs, remounted read-only at the end
 * Never a bind of the host's /: that would show other sessions, the server's files and
 * sockets.
 */
import type { Rlimit } from '../limits.js';

/** Where things are inside every sandbox. No other module spells these paths. */
export const SANDBOX_PATHS = {
  workspace: '/workspace',
  tmp: '/tmp',
  /** The trusted driver code (driver.py, probe.py), read-only. */
  driver: '/opt/sandbox',
  /** Generated modules of a session (_platform_tools.py), read-only, on sys.path. */
  sessionLib: '/opt/session-lib',
} as const;

export const SANDBOX_USER = { name: 'sandbox', uid: 1000, gid: 1000, home: SANDBOX_PATHS.workspace } as const;
export const SANDBOX_HOSTNAME = 'sandbox';

/** Namespaces, named as in /proc/self/ns. Every one is new in a sandbox. */
export const NAMESPACES = ['user', 'mnt', 'pid', 'ipc', 'uts', 'net', 'cgroup'] as const;
export type Namespace = (typeof NAMESPACES)[number];

/**
 * One step of building the sandbox's file system, in order, on a new empty root tmpfs
 * (nosuid, nodev). Semantics are bubblewrap's, which the template copies:
 *  - bind: recursive bind of a host path; the top mount and every submount keep the
 *    source's own flags and get nosuid and nodev (and ro when readonly) added; an
 *    optional one is skipped when its source is gone (an /etc file a package removed);
 *  - data: a read-only file with the given content (a bind of a file in a private tmpfs);
 *  - overlay: a read-only overlay file system (nosuid, nodev) of the folders `lowers`,
 *    names in the folder `dir` (the first on top; the kernel wants two lower layers when
 *    there is no upper one, so the last is an empty folder; names, not host paths, since
 *    the sandbox's mount table shows them): the same files as a bind of the first, but every
 *    sandbox has inodes of its own for them. A bind shares the host's inodes, and a lock
 *    (flock, fcntl) on one is seen by the host and every other session, and slows every
 *    close of that file host-wide (docs/threat-model.md, kernel-resources table); on an
 *    overlay's inode it is the sandbox's alone, while reads and mappings still go to the
 *    host's page cache (no memory is copied). Where the host has a mount below the first
 *    layer, the kernel refuses an overlay in a user namespace (it would show what the
 *    mount covers): that sandbox gets a read-only bind of the first layer instead (the
 *    host's inodes, submounts included, as before);
 *  - symlink; dir (mkdir);
 *  - proc: a proc of the sandbox's pid namespace (nosuid, nodev, noexec); its sys is
 *    covered read-only by a bind of itself (the ipc limits there are writable by the
 *    namespace's root, which the sandbox's uid maps to; bubblewrap covers it only where
 *    the folder itself is writable, so the launcher's helper makes that bind while bwrap
 *    waits; not the builder's /proc/sys, whose inodes are the host's: a lock on one of
 *    them was seen host-wide), and those of sysrq-trigger, irq and bus that the builder
 *    could write to; where its pid 1 is bubblewrap's init (the sandbox's uid, dumpable:
 *    session code could open its /proc/1/mem and rewrite it, or lock its image, the host's
 *    bwrap), /proc/1 is covered by an empty read-only tmpfs (the launcher's helper, while
 *    bwrap waits); the template's init is not dumpable and stays in view;
 *  - dev: a tmpfs with null zero full random urandom tty bound in (devices allowed) from
 *    `nodes` (the box's own, read-only: a lock on the host's /dev/null would be seen
 *    host-wide and a long list of them slows every close of it; their times are the
 *    box's too) or, where the server cannot make them (rootless), from the host's /dev,
 *    fd/stdin/stdout/stderr/core/ptmx symlinks, a private devpts at pts holding at most
 *    `ptysMax` ptys (DEVPTS_OPTIONS and max=; below the host's shared kernel.pty.max),
 *    and a shm folder;
 *  - tmpfs: nosuid, nodev, of the given size and mode;
 *  - remount-ro: that mount point only (not its submounts).
 * Missing parent folders of a destination are made (0755); a file is made for the
 * destination of a bind whose source is a file.
 */
export type MountOp =
  | { op: 'bind'; source: string; dest: string; readonly: boolean; optional?: boolean }
  | { op: 'overlay'; dir: string; lowers: readonly string[]; dest: string }
  | { op: 'data'; dest: string; content: string }
  | { op: 'symlink'; target: string; dest: string }
  | { op: 'proc'; dest: string }
  | { op: 'dev'; dest: string; ptysMax: number; nodes: string | null }
  | { op: 'tmpfs'; dest: string; sizeBytes: number; mode: number }
  | { op: 'remount-ro'; dest: string };

/** Host folders of one sandbox. */
export interface SandboxFolders {
  /** Host folder bound at /workspace. */
  workspaceDir: string;
  /** Host folder bound at /tmp. */
  tmpDir: string;
  /** Host folder with the trusted driver code (sandbox-python/), read-only. */
  driverDir: string;
  /** Host folder of generated modules, read-only. */
  libDir: string;
  /** Size of the private /dev/shm, bytes. */
  shmBytes: number;
  /** Ptys the sandbox's devpts holds at most. */
  ptysMax: number;
  /** The box's own device nodes (mounts.ts makeDevices), or null: the host's /dev ones. */
  devicesDir: string | null;
  /** The server's copies of the system files (system-tree.ts), overlaid at /usr, /etc and
   * the driver's folder; null where overlays cannot be mounted (the host's files are
   * bound instead, their inodes shared). */
  system: SystemTree | null;
}

/** What the server prepares once for every sandbox's overlays (system-tree.ts): a folder
 * `dir` with the layers SYSTEM_LAYERS names. */
export interface SystemTree {
  dir: string;
}

/** The layers in a SystemTree's folder: `usr` and `driver` lead to the host's /usr and the
 * driver's folder, `etc` holds copies of ETC_ALLOW_LIST (those on the host) and the
 * sandbox's passwd and group, `empty` is empty (the last layer of each overlay). */
export const SYSTEM_LAYERS = { usr: 'usr', etc: 'etc', driver: 'driver', empty: 'empty' } as const;

/** The device nodes of a sandbox's /dev (spec `dev`; sandbox-host/mounter.py DEVICES). */
export const DEVICE_NODES = ['null', 'zero', 'full', 'random', 'urandom', 'tty'] as const;

/** The options of a sandbox's devpts besides `newinstance` and its `max`: bubblewrap's
 * --dev mounts it with these, and the template builder (zygote.py) does the same. */
export const DEVPTS_OPTIONS = 'ptmxmode=0666,mode=620';

/** In a sandbox without ptys: the devpts's ptmx, the one way to make a pty in it (/dev/ptmx
 * is a symlink to it), covered by a read-only, nodev bind of /dev/null (opening it: EACCES). */
const NO_PTYS_COVER = '/dev/pts/ptmx';
/** Covered by an empty read-only file in every sandbox (sandboxMounts): /proc/locks, the
 * host-wide lock list (reading it takes host-wide locks for each page, its cost the square
 * of the locks held, which a session can make many of); /proc/cgroups, the host's count of
 * cgroups per controller (it moved with every session any server on the host made or
 * deleted: red team of 2026-12-03). zygote.py PROC_COVERS names them for a command's proc. */
export const PROC_EMPTY_FILES = ['/proc/locks', '/proc/cgroups'] as const;

/** Host paths under /etc that are bound read-only when they exist on the host. */
export const ETC_ALLOW_LIST = [
  '/etc/ld.so.cache',
  '/etc/alternatives',
  '/etc/localtime',
  '/etc/python3.11',
  '/etc/python3',
  '/etc/fonts',
  '/etc/matplotlibrc',
  '/etc/mime.types',
  '/etc/ssl/certs',
] as const;

/** What a sandboxed process may do at the kernel boundary. The seccomp filter itself is
 * built at start (sandbox-host/seccomp-gen.py); `seccompChecks` are calls the probe makes
 * inside and the error each must give, which tells that filter is the one in force. */
export interface SandboxSpec {
  namespaces: readonly Namespace[];
  hostname: string;
  /** Inside ids; outside, the box's uid (or the server's, unprivileged). No groups. */
  user: { uid: number; gid: number };
  /** No nested user namespaces (besides the seccomp filter, which refuses unshare). */
  disableUserns: true;
  /** No capability in any set; no_new_privs; its own session (no controlling terminal). */
  capabilities: 'none';
  noNewPrivs: true;
  newSession: true;
  mounts: readonly MountOp[];
  rlimits: readonly Rlimit[];
  /** The whole environment: nothing comes from the server's own. */
  env: Readonly<Record<string, string>>;
  cwd: string;
  seccompChecks: Readonly<Record<string, string>>;
  /** The sandbox's own network namespace, set before any of its code runs. */
  network: SandboxNetwork;
  /** Its own ipc namespace's limits, set by the same builders at the same moment. */
  ipc: SandboxIpc;
}

/**
 * Limits of every sandbox's own ipc namespace, by sysctl path under /proc/sys (set as the
 * `network` is: by the template's sandbox init, or devpts-cap.py for bubblewrap, as root of the
 * namespace's owner, before any code of the session runs; /proc/sys is read-only inside,
 * so the session cannot raise them). Why (docs/threat-model.md, "Host-wide kernel
 * resources", SysV IPC): a SysV shared memory segment outlives the processes that made it
 * and, detached, is mapped by none, so RLIMIT_AS does not bound it and the OOM killer
 * cannot see it (red team of 2026-12-02: one session pinned 2.3 GiB that way and the
 * kernel killed other sessions' interpreters instead). Here segments are removed with
 * their last process (shm_rmid_forced) and hold at most the size of /dev/shm in all;
 * message queues and semaphores get the classic small limits (the kernel's defaults allow
 * 32,000 queues of 16 KiB). POSIX message queues are bounded per user by RLIMIT_MSGQUEUE.
 */
export interface SandboxIpc {
  sysctls: Readonly<Record<string, string>>;
}

export function sandboxIpc(shmBytes: number): SandboxIpc {
  const pages = Math.max(1, Math.floor(shmBytes / 4096));
  return {
    sysctls: {
      'kernel/shm_rmid_forced': '1',
      'kernel/shmmax': String(pages * 4096),
      'kernel/shmall': String(pages),
      'kernel/shmmni': '64',
      'kernel/msgmni': '16',
      'kernel/msgmnb': '16384',
      'kernel/msgmax': '8192',
      'kernel/sem': '250 4000 32 16',
    },
  };
}

/**
 * The loopback and the per-namespace TCP settings of every sandbox's own network
 * namespace, set by whoever builds it (zygote.py in the sandbox's init, which is root
 * of the namespace's owner; for bubblewrap, sandbox-host/devpts-cap.py from inside the
 * sandbox's user and network namespaces while bwrap waits on its block fd; both with the
 * code of sandbox-python/sandbox_network.py) before any code of the session runs, and read
 * back by the start-up probe (MTU, sysctls).
 *
 * Why (docs/threat-model.md, "Host-wide kernel resources", socket buffers and TCP
 * orphans): TCP memory and orphans are counted host-wide, and the per-session TCP limit
 * (cgroup v1 kmem.tcp) lets every socket with nothing queued take one packet past it. On
 * the default loopback (MTU 65536, and TCP always builds GSO packets of up to 64 KiB
 * whatever the device's offloads) that packet held ~76 KiB per connection (measured on
 * Linux 6.18: 500 connections, 37 MiB against a 2 MiB limit); with a 1500-byte MTU and
 * one segment per GSO packet, ~14 KiB (7 MiB). Orphans (closed sockets still finishing)
 * count against the host's tcp_max_orphans, which is not per namespace; their lifetime
 * and the accept queues that hold their peers are: one zero-window probe, a 5 s
 * FIN_WAIT2, listen backlogs of at most 64. TIME_WAIT sockets are slab charged to no
 * cgroup: at most 1,024 per namespace.
 */
export interface SandboxNetwork {
  /** lo's MTU (SIOCSIFMTU); at least 1280, which IPv6 (::1) needs. */
  loopbackMtu: number;
  /** lo's gso_max_segs (rtnetlink IFLA_GSO_MAX_SEGS): segments per TCP packet. */
  gsoMaxSegs: number;
  /** Per-network-namespace sysctls, by path under /proc/sys. */
  sysctls: Readonly<Record<string, string>>;
}

export const SANDBOX_NETWORK: SandboxNetwork = {
  loopbackMtu: 1500,
  gsoMaxSegs: 1,
  sysctls: {
    'net/ipv4/tcp_orphan_retries': '1',
    'net/ipv4/tcp_fin_timeout': '5',
    'net/core/somaxconn': '64',
    'net/ipv4/tcp_max_syn_backlog': '64',
    // A TIME_WAIT socket is kernel memory (256 B of slab) charged to no cgroup, kept 60 s,
    // and the namespace's default bound is 131,072 (red team of 2026-12-03: one session
    // held 108,892, 28 MB): past this one a closed connection goes at once instead.
    'net/ipv4/tcp_max_tw_buckets': '1024',
  },
};

const PASSWD = `${SANDBOX_USER.name}:x:${SANDBOX_USER.uid}:${SANDBOX_USER.gid}:sandbox:${SANDBOX_USER.home}:/bin/bash\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n`;
const GROUP = `${SANDBOX_USER.name}:x:${SANDBOX_USER.gid}:\nnogroup:x:65534:\n`;
/** The files of /etc that are the sandbox's own, not the host's. */
export const SANDBOX_ETC_FILES: Readonly<Record<string, string>> = { '/etc/passwd': PASSWD, '/etc/group': GROUP };

/** Below this address-space limit, math libraries get one thread: an OpenBLAS worker
 * thread whose buffer no longer fits retries its allocation forever (a core's fifth spent
 * in every idle interpreter), and every fork() then waits on that thread (red team of
 * 2026-12-03: numpy preloaded under SANDBOX_RUNNER_MEMORY_MB=256, Popen hung 4 times in 6).
 * (Below about 384 MiB a matrix product still waits forever on its own buffer, until the
 * call's time limit: main.ts warns.) */
export const ONE_THREAD_BELOW_BYTES = 1024 * 1024 * 1024;

/** The environment seen inside. `role` decides what the driver gets on top;
 * `addressSpaceBytes`, the sandbox's RLIMIT_AS (-1: none), the math libraries' threads. */
export function sandboxEnv(role: SandboxRole, addressSpaceBytes = -1): Record<string, string> {
  const threads = addressSpaceBytes >= 0 && addressSpaceBytes < ONE_THREAD_BELOW_BYTES ? '1' : '2';
  const env: Record<string, string> = {
    PATH: '/usr/local/bin:/usr/bin:/bin',
    HOME: SANDBOX_USER.home,
    // bubblewrap's --chdir sets it too (to the same value)
    PWD: SANDBOX_PATHS.workspace,
    TMPDIR: SANDBOX_PATHS.tmp,
    LANG: 'C.UTF-8',
    LC_ALL: 'C.UTF-8',
    USER: SANDBOX_USER.name,
    PYTHONUNBUFFERED: '1',
    PYTHONDONTWRITEBYTECODE: '1',
    MPLBACKEND: 'Agg',
    MPLCONFIGDIR: `${SANDBOX_PATHS.tmp}/.matplotlib`,
    // Caches and configs of libraries go to /tmp, so they never show up as produced files.
    XDG_CACHE_HOME: `${SANDBOX_PATHS.tmp}/.cache`,
    XDG_CONFIG_HOME: `${SANDBOX_PATHS.tmp}/.config`,
    // Pinned thread pools keep address-space reservations (OpenBLAS per-thread buffers,
    // glibc arenas) small, so the address-space limit does not break `import numpy`.
    OPENBLAS_NUM_THREADS: threads,
    OMP_NUM_THREADS: threads,
    MKL_NUM_THREADS: threads,
    MALLOC_ARENA_MAX: '2',
  };
  if (role.kind === 'interpreter') {
    // Read and removed by the driver before session code runs.
    env.SANDBOX_PRELOAD = role.preload.join(',');
    env.SANDBOX_SESSION_LIB = SANDBOX_PATHS.sessionLib;
  }
  return env;
}

/** An interpreter (the driver, or the probe in its place) or a bash command. `ptys:
 * false`: a bash command in a sandbox of its own while its session's interpreter lives
 * (bubblewrap, no command template): it gets no pty at all (see sandboxMounts). */
export type SandboxRole = { kind: 'interpreter'; preload: readonly string[] } | { kind: 'command'; ptys?: boolean };

/** Whether a sandbox of this role can open ptys (/dev/pts is its devpts, not covered). */
export function rolePtys(role: SandboxRole): boolean {
  return role.kind === 'interpreter' || role.ptys !== false;
}

/** What the probe's openpty() gives inside (probe.py "openpty") in a sandbox without ptys:
 * /dev/ptmx leads to the cover, a device node on a nodev mount. */
export const NO_PTYS_ERROR = 'EACCES';

/** The mounts, in order. `etc`: the entries of ETC_ALLOW_LIST that exist on this host.
 * `ptys` false: the devpts's ptmx is covered (NO_PTYS_COVER), so openpty() fails (EACCES)
 * and no pty can be made. Why: a session's ptys are bounded by the one devpts its
 * interpreter holds; a bash command with a devpts of its own beside a living interpreter
 * could pass masters out to it (a socket in /workspace), and each such devpts stays alive,
 * capped anew, after its command ended (docs/threat-model.md, "Host-wide kernel
 * resources", ptys). The devpts itself stays mounted and is capped as in every sandbox
 * (bubblewrap's helper finds it by its path); nothing inside can remove the cover (no
 * capability to unmount). Only /dev/pts itself is covered, not the devpts as a whole:
 * a mount over it would hide the devpts from that helper too. */
export function sandboxMounts(folders: SandboxFolders, etc: readonly string[], ptys = true): MountOp[] {
  const m: MountOp[] = [];
  const system = folders.system;
  // the system, read-only, by allow-list: inodes of the sandbox's own where it can be
  const readOnly = (source: string, layer: string, dest: string) =>
    m.push(system ? { op: 'overlay', dir: system.dir, lowers: [layer, SYSTEM_LAYERS.empty], dest } : { op: 'bind', source, dest, readonly: true });
  readOnly('/usr', SYSTEM_LAYERS.usr, '/usr');
  for (const [link, target] of [
    ['/bin', 'usr/bin'],
    ['/sbin', 'usr/sbin'],
    ['/lib', 'usr/lib'],
    ['/lib64', 'usr/lib64'],
  ] as const) {
    m.push({ op: 'symlink', target, dest: link });
  }
  if (system) {
    readOnly('/etc', SYSTEM_LAYERS.etc, '/etc'); // (copies, and passwd and group: system-tree.ts)
  } else {
    for (const p of etc) m.push({ op: 'bind', source: p, dest: p, readonly: true, optional: true });
    for (const [dest, content] of Object.entries(SANDBOX_ETC_FILES)) m.push({ op: 'data', dest, content });
  }
  readOnly(folders.driverDir, SYSTEM_LAYERS.driver, SANDBOX_PATHS.driver);
  m.push({ op: 'bind', source: folders.libDir, dest: SANDBOX_PATHS.sessionLib, readonly: true });
  // kernel views: own /proc (own pid namespace), minimal /dev, private capped /dev/shm
  m.push({ op: 'proc', dest: '/proc' });
  // (host-wide lists a session could load or read others' events in: empty files over them)
  for (const dest of PROC_EMPTY_FILES) m.push({ op: 'data', dest, content: '' });
  m.push({ op: 'dev', dest: '/dev', ptysMax: folders.ptysMax, nodes: folders.devicesDir });
  m.push({ op: 'tmpfs', dest: '/dev/shm', sizeBytes: folders.shmBytes, mode: 0o1777 });
  if (!ptys) m.push({ op: 'bind', source: '/dev/null', dest: NO_PTYS_COVER, readonly: true });
  // the session's folders
  m.push({ op: 'bind', source: folders.workspaceDir, dest: SANDBOX_PATHS.workspace, readonly: false });
  m.push({ op: 'bind', source: folders.tmpDir, dest: SANDBOX_PATHS.tmp, readonly: false });
  // freeze the layout: the new root and /dev are writable tmpfs until remounted
  m.push({ op: 'remount-ro', dest: '/dev' });
  m.push({ op: 'remount-ro', dest: '/' });
  return m;
}

/** The calls the probe makes and the error each must give under the filter. */
export const SECCOMP_CHECKS: Readonly<Record<string, string>> = {
  'unshare(CLONE_NEWUSER)': 'EPERM',
  'unshare(0)': 'EPERM',
  'socket(AF_NETLINK)': 'EAFNOSUPPORT',
  'socket(AF_PACKET)': 'EAFNOSUPPORT',
  'keyctl(GET_KEYRING_ID)': 'EPERM',
  'ioctl(TIOCSTI)': 'EPERM',
  'personality(0x0040000)': 'EPERM',
  'clone3()': 'ENOSYS',
  'bpf()': 'EPERM',
  'userfaultfd()': 'EPERM',
  'memfd_secret()': 'EPERM',
  // (the host's whole file system written out: its other processes' writes wait)
  'sync()': 'EPERM',
  'syncfs(0)': 'EPERM',
  'ptrace(PEEKDATA, 1)': 'EPERM',
  'pidfd_getfd(init, 0)': 'EPERM',
  'io_uring_setup()': 'EPERM',
  'io_setup(1)': 'EPERM',
  'inotify_init1()': 'EPERM',
  // TCP orphans are counted host-wide: no socket may stay an orphan in FIN_WAIT2 past the
  // namespace's tcp_fin_timeout (SandboxNetwork); other TCP options work.
  'setsockopt(TCP_LINGER2)': 'EPERM',
  // IPv6 flow labels come from one host-wide pool of 4,096 (FL_MAX_SIZE): refused.
  'setsockopt(IPV6_FLOWLABEL_MGR)': 'EPERM',
  // Socket filters and the session's own seccomp filters are JIT-compiled into the host-wide
  // BPF JIT budget; multicast memberships are kernel memory no cgroup counts.
  'setsockopt(SO_ATTACH_FILTER)': 'EPERM',
  'setsockopt(IPV6_ADD_MEMBERSHIP)': 'EPERM',
  'setsockopt(IP_ADD_MEMBERSHIP)': 'EPERM',
  'seccomp(SET_MODE_FILTER)': 'EPERM',
  'seccomp(GET_ACTION_AVAIL)': 'ok',
  'setsockopt(TCP_NODELAY)': 'ok',
  // The page-cache side channel (docs/threat-model.md, host-wide kernel resources): its
  // probes and evictions are refused; the harmless neighbours still work.
  'mincore()': 'ENOSYS',
  'cachestat()': 'ENOSYS',
  'fadvise64(DONTNEED)': 'EPERM',
  'fadvise64(WILLNEED)': 'ok',
  'madvise(MADV_COLD)': 'EPERM',
  'madvise(MADV_PAGEOUT)': 'EPERM',
  'madvise(MADV_DONTNEED)': 'ok',
  'process_madvise()': 'EPERM',
  'preadv2(RWF_NOWAIT)': 'EOPNOTSUPP',
  'preadv2(0)': 'ok',
  'pwritev2(RWF_NOWAIT)': 'EOPNOTSUPP',
  // dnotify and leases act on inodes shared with the host and other sessions (/usr) or
  // opened by the server; other fcntl commands work.
  'fcntl(F_NOTIFY)': 'EINVAL',
  'fcntl(F_SETLEASE)': 'EINVAL',
  'fcntl(F_GETFL)': 'ok',
};

export function sandboxSpec(folders: SandboxFolders, rlimits: readonly Rlimit[], role: SandboxRole, etc: readonly string[]): SandboxSpec {
  return {
    namespaces: NAMESPACES,
    hostname: SANDBOX_HOSTNAME,
    user: { uid: SANDBOX_USER.uid, gid: SANDBOX_USER.gid },
    disableUserns: true,
    capabilities: 'none',
    noNewPrivs: true,
    newSession: true,
    mounts: sandboxMounts(folders, etc, rolePtys(role)),
    rlimits,
    env: sandboxEnv(role, rlimits.find((r) => r.resource === 'as')?.soft ?? -1),
    cwd: SANDBOX_PATHS.workspace,
    seccompChecks: SECCOMP_CHECKS,
    network: SANDBOX_NETWORK,
    ipc: sandboxIpc(folders.shmBytes),
  };
}
