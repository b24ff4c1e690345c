/**
 * The bubblewrap command line of a sandbox. Pure: builds argv, starts nothing.
 *
 * Every flag is here for a reason; omitting one is a hole (bwrap is a tool, not a policy).
 * Layout seen from inside:
 *   /usr (ro)  + /bin /sbin /lib /lib64 symlinks     the system, read-only, allow-listed
 *   /etc       a handful of files (ld cache, python, fonts) + synthetic passwd/group
 *   /opt/sandbox (ro)                                 the trusted driver code
 *   /workspace (rw)                                   the session's folder
 *   /tmp (rw)                                         the session's scratch, shared by
 *                                                     its interpreter and bash commands
 *   /proc (own pid namespace), /dev (minimal, ro), /dev/shm (private, size-capped)
 *   everything else: the new root tmpfs, remounted read-only at the end
 * Never `--ro-bind / /`: that would show other sessions, the server's files and sockets.
 *
 * File descriptors bwrap itself reads (they are consumed by bwrap and not passed on):
 *   FD.args (the options, NUL-separated, so /proc/1/cmdline shows none of them),
 *   FD.seccomp (cBPF), FD.passwd and FD.group (file contents), FD.status (json status).
 * fds 3 and 4 are left for the sandboxed program (the interpreter's control channel).
 */

export const FD = { args: 5, seccomp: 6, passwd: 7, group: 8, status: 9 } as const;

export const SANDBOX_UID = 1000;
export const SANDBOX_HOME = '/workspace';
export const DRIVER_DIR = '/opt/sandbox';

export interface BwrapLayout {
  /** Host folder bound at /workspace. */
  workspaceDir: string;
  /** Host folder bound at /tmp. */
  tmpDir: string;
  /** Host folder with the trusted driver code, bound read-only at /opt/sandbox. */
  driverDir: string;
  /** Host folder bound read-only at /opt/session-lib (generated modules such as
   * _platform_tools; on the interpreter's sys.path). */
  libDir: string;
  /** Size of the private /dev/shm, bytes. */
  shmBytes: number;
}

export const SESSION_LIB_DIR = '/opt/session-lib';

export interface ResourceLimits {
  /** Address space per process, bytes (0: unlimited, when a cgroup limits memory). */
  addressSpaceBytes: number;
  cpuSeconds: number;
  fileSizeBytes: number;
  openFiles: number;
  processes: number;
}

/** Host paths under /etc that are bound read-only when they exist. */
const ETC_ALLOW_LIST = [
  '/etc/ld.so.cache',
  '/etc/alternatives',
  '/etc/localtime',
  '/etc/python3.11',
  '/etc/python3',
  '/etc/fonts',
  '/etc/matplotlibrc',
  '/etc/mime.types',
  '/etc/ssl/certs',
];

/** The environment seen inside; nothing comes from the server's own environment. */
export function sandboxEnv(extra: Record<string, string> = {}): Record<string, string> {
  return {
    PATH: '/usr/local/bin:/usr/bin:/bin',
    HOME: SANDBOX_HOME,
    TMPDIR: '/tmp',
    LANG: 'C.UTF-8',
    LC_ALL: 'C.UTF-8',
    USER: 'sandbox',
    PYTHONUNBUFFERED: '1',
    PYTHONDONTWRITEBYTECODE: '1',
    MPLBACKEND: 'Agg',
    MPLCONFIGDIR: '/tmp/.matplotlib',
    // Caches and configs of libraries go to /tmp, so they never show up as produced files.
    XDG_CACHE_HOME: '/tmp/.cache',
    XDG_CONFIG_HOME: '/tmp/.config',
    // Pinned thread pools keep address-space reservations (OpenBLAS per-thread buffers,
    // glibc arenas) small, so the address-space limit does not break `import numpy`.
    OPENBLAS_NUM_THREADS: '2',
    OMP_NUM_THREADS: '2',
    MKL_NUM_THREADS: '2',
    MALLOC_ARENA_MAX: '2',
    ...extra,
  };
}

export const PASSWD = `sandbox:x:${SANDBOX_UID}:${SANDBOX_UID}:sandbox:${SANDBOX_HOME}:/bin/bash\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n`;
export const GROUP = `sandbox:x:${SANDBOX_UID}:\nnogroup:x:65534:\n`;

/** The options bwrap reads from FD.args. */
export function bwrapOptions(layout: BwrapLayout, env: Record<string, string>, existingEtc: readonly string[]): string[] {
  const o: string[] = [];
  // identity and namespaces: non-root inside (mapped to the unprivileged host uid bwrap
  // runs as), no nested user namespaces, and a namespace of every kind.
  o.push('--unshare-user', '--uid', String(SANDBOX_UID), '--gid', String(SANDBOX_UID), '--disable-userns');
  o.push('--unshare-pid', '--unshare-ipc', '--unshare-uts', '--unshare-net', '--unshare-cgroup-try', '--hostname', 'sandbox');
  // lifecycle: setsid() so there is no controlling terminal (no TIOCSTI injection);
  // die with the server as a backup to the explicit kill of the pid-namespace init.
  o.push('--new-session', '--die-with-parent', '--cap-drop', 'ALL');
  o.push('--json-status-fd', String(FD.status));
  // environment: cleared, then only what a program needs.
  o.push('--clearenv');
  for (const [k, v] of Object.entries(env)) o.push('--setenv', k, v);
  // the system, read-only, by allow-list
  o.push('--ro-bind', '/usr', '/usr');
  o.push('--symlink', 'usr/bin', '/bin', '--symlink', 'usr/sbin', '/sbin', '--symlink', 'usr/lib', '/lib', '--symlink', 'usr/lib64', '/lib64');
  for (const p of existingEtc) o.push('--ro-bind', p, p);
  o.push('--ro-bind-data', String(FD.passwd), '/etc/passwd', '--ro-bind-data', String(FD.group), '/etc/group');
  o.push('--ro-bind', layout.driverDir, DRIVER_DIR, '--ro-bind', layout.libDir, SESSION_LIB_DIR);
  // kernel views: own /proc (own pid namespace), minimal /dev, private capped /dev/shm
  o.push('--proc', '/proc', '--dev', '/dev');
  o.push('--perms', '1777', '--size', String(layout.shmBytes), '--tmpfs', '/dev/shm');
  // the session's folders
  o.push('--bind', layout.workspaceDir, '/workspace', '--bind', layout.tmpDir, '/tmp');
  // freeze the layout: the new root and /dev are writable tmpfs until remounted
  o.push('--remount-ro', '/dev', '--remount-ro', '/');
  o.push('--chdir', '/workspace');
  // seccomp last: it also applies to bwrap's init
  o.push('--seccomp', String(FD.seccomp));
  return o;
}

/** prlimit argv prefix, run inside the user namespace (RLIMIT_NPROC counts per userns+uid there). */
export function prlimitPrefix(limits: ResourceLimits): string[] {
  const as = limits.addressSpaceBytes > 0 ? String(limits.addressSpaceBytes) : 'unlimited';
  return [
    '/usr/bin/prlimit',
    `--as=${as}`,
    // soft < hard: SIGXCPU (reported as the cpu limit) at the soft limit, SIGKILL a second later
    `--cpu=${limits.cpuSeconds}:${limits.cpuSeconds + 1}`,
    `--fsize=${limits.fileSizeBytes}`,
    `--nofile=${limits.openFiles}`,
    `--nproc=${limits.processes}`,
    '--core=0',
    '--memlock=65536',
    '--',
  ];
}

export { ETC_ALLOW_LIST };
