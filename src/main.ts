/**
 * The only file that reads the environment, listens, handles signals and exits.
 * Start-up: validate the configuration (all problems at once), sweep what a killed
 * predecessor left, build the seccomp filter, prove the sandbox holds (fail closed),
 * start the warm pool, warm the request path up (SANDBOX_WARMUP, http/warm-up.ts), then
 * listen. SIGTERM/SIGINT: stop accepting, let in-flight calls finish until
 * SANDBOX_SHUTDOWN_GRACE_SECONDS, destroy every session, exit.
 */
import { closeSync, existsSync, promises as fsp, readdirSync, readFileSync } from 'node:fs';
import { createHash, randomBytes } from 'node:crypto';
import { fileURLToPath } from 'node:url';
import { loadConfig, ConfigError, parseTokens, preloadList, type Config } from './config.js';
import { allowedHosts, isLoopbackAddress } from './http/auth.js';
import { createLogger, type Logger } from './log.js';
import { Launcher } from './sandbox/launcher.js';
import { Pipes } from './sandbox/pipes.js';
import { DevptsCap } from './sandbox/devpts-cap.js';
import { UidAllocator, killUid, pidsOfUids } from './sandbox/uids.js';
import { hostFileMax, openFilesBound } from './sandbox/open-files.js';
import { ALL_SERVERS_MEMORY_SHARE, MEMORY_TAKE, hostMemoryBytes, hostTaskLimits, hostTasksBound, serverBudget } from './sandbox/host-tasks.js';
import { sessionTcpWant } from './sandbox/tcp-memory.js';
import { claimUidRange, UidRangeTaken, type UidClaim } from './sandbox/uid-claims.js';
import { buildSeccompFilter, hostFacts, probeBwrap, probeCommand, probeTemplate, sweepSessionsRoot, PreflightError, FIX_HINT } from './sandbox/preflight.js';
import { Interpreter } from './runner/interpreter.js';
import { compareKinds } from './sandbox/probe-compare.js';
import { ETC_ALLOW_LIST, sandboxSpec, type SystemTree } from './sandbox/spec.js';
import { overlaysWork, prepareProgramCopies, prepareSystemTree, removeProgramCopies, removeSystemTree, type ProgramCopies } from './sandbox/system-tree.js';
import { sandboxRlimits } from './limits.js';
import { Zygote } from './sandbox/zygote.js';
import { boxFactory, removeTree, sessionCgroupLimits } from './sessions/box.js';
import { detectCgroups, type ParentBound } from './sandbox/cgroups.js';
import { Mounts } from './sandbox/mounts.js';
import { HostHelper } from './sandbox/host-helper.js';
import { SessionManager } from './sessions/manager.js';
import { replicaName } from './sessions/session.js';
import { hostname } from 'node:os';
import { ExecService } from './sessions/exec.js';
import { buildApp } from './http/app.js';
import { ExecStreams } from './http/exec-streams.js';
import { ServerMetrics } from './http/metrics.js';
import { warmUp } from './http/warm-up.js';
import { MemoryBudget } from './budget.js';
import { LoopMonitor } from './loop-monitor.js';
import { EditorWorkers } from './tools/text-editor.js';
import type { IsolationInfo } from './http/types.js';

// libuv's thread pool (file work the event loop hands off) starts with its first task and
// reads this then: 16 threads, not 4, unless the environment says otherwise. A session's
// code can hold its files' locks, so work on its files can wait in a thread for as long
// as it likes (fourth red team of 2026-12-03: six listings of one workspace held all four
// threads, and other sessions' bash commands, whose pipes are opened there, waited).
// Session code alone holds at most one per session (the artifact copy after its call: a
// session's calls run one at a time); each listing or download of its files that its
// client runs in parallel can hold another.
process.env.UV_THREADPOOL_SIZE ??= '16';

const here = (rel: string) => fileURLToPath(new URL(rel, import.meta.url));
const DRIVER_DIR = here('../../sandbox-python');
const SECCOMP_GEN = here('../../sandbox-host/seccomp-gen.py');
const DEVPTS_CAP = here('../../sandbox-host/devpts-cap.py');
const MOUNTER = here('../../sandbox-host/mounter.py');
/** The entries of the sandbox's /etc allow-list this host has. */
const HOST_ETC = ETC_ALLOW_LIST.filter((p) => existsSync(p));
/** The address space (MiB) below which numpy's OpenBLAS cannot place its buffer and retries
 * forever (measured: 256 hangs, 384 works; spec.ts ONE_THREAD_BELOW_BYTES). */
const BLAS_NEEDS_MB = 384;
const VERSION = (JSON.parse(readFileSync(here('../../package.json'), 'utf8')) as { version: string }).version;

/** What a verified sandbox guarantees (each is a field of the spec the probes compared). */
const PROTECTIONS = [
  'non-root uid inside',
  'no capabilities',
  'no_new_privs',
  'seccomp filter',
  'server environment hidden',
  'own pid namespace',
  'host file system hidden (allow-list)',
  'no network',
  'socket families filtered',
  'no nested namespaces',
  'read-only system',
  'writable workspace',
];
const TEMPLATE_PROTECTION = 'interpreters forked from a template that has the preload modules imported, each building the same sandbox';
/** The probe kind of a bubblewrap bash command beside a living interpreter (no ptys). */
const NO_PTYS_KIND = 'bwrap command without ptys';
const COMMANDS_PROTECTION =
  "bash commands started in the sandbox of the session's interpreter, in a pid namespace of their own whose every process is killed at each command's end";

async function prepareIsolation(
  config: Config,
  log: Logger,
  launcher: Launcher,
  zygote: Zygote | null,
  commands: Zygote | null,
  uids: UidAllocator,
  privileged: boolean,
  tmpfsQuota: boolean,
  system: SystemTree | null,
  mounts: Mounts,
  ownDevices: boolean,
): Promise<{ isolation: IsolationInfo; templateOk: boolean; commandsOk: boolean }> {
  const dir = `${config.sessionsRoot}/probe_${randomBytes(6).toString('hex')}`;
  let templateOk = false;
  let commandsOk = false;
  const uid = privileged ? uids.allocate() : undefined;
  try {
    for (const d of [dir, `${dir}/workspace`, `${dir}/tmp`, `${dir}/lib`]) await fsp.mkdir(d, { mode: 0o711 });
    if (uid !== undefined) for (const d of [`${dir}/workspace`, `${dir}/tmp`]) await fsp.chown(d, uid, uid);
    // (before the host's mount table is read: the probe compares the binds of its nodes)
    if (ownDevices) await mounts.makeDevices(dir);
    const folders = {
      workspaceDir: `${dir}/workspace`,
      tmpDir: `${dir}/tmp`,
      libDir: `${dir}/lib`,
      driverDir: DRIVER_DIR,
      shmBytes: config.shmMb * 1024 * 1024,
      ptysMax: config.sessionPtysMax,
      system,
      devicesDir: ownDevices ? `${dir}/devices` : null,
    };
    const limits = { addressSpaceBytes: config.memoryMb * 1024 * 1024, cpuSeconds: 10, fileSizeBytes: 1 << 20, openFiles: 64, processes: 16 };
    const spec = sandboxSpec(folders, sandboxRlimits(limits), { kind: 'interpreter', preload: preloadList(config) }, HOST_ETC);
    const host = hostFacts(privileged);
    const identity = { uid, gid: uid };
    // bash commands run in bubblewrap; interpreters too, or forked from the template:
    // every kind of sandbox the server uses is probed and compared with the spec.
    const bwrap = await probeBwrap(launcher, spec, identity, config.sessionsRoot, config.pythonPath, host);
    log.debug({ kind: 'bwrap', dump: bwrap.dump }, 'sandbox probe');
    if (bwrap.differences.length > 0) throw new PreflightError(`the bubblewrap sandbox differs from its description:\n  ${bwrap.differences.join('\n  ')}`, false);
    // A bash command in bubblewrap beside its session's living interpreter: no ptys (an
    // empty read-only cover on /dev/pts; box.ts), which openpty() inside must confirm.
    const noPtysSpec = sandboxSpec(folders, sandboxRlimits(limits), { kind: 'command', ptys: false }, HOST_ETC);
    const noPtys = await probeBwrap(launcher, noPtysSpec, identity, config.sessionsRoot, config.pythonPath, host, NO_PTYS_KIND);
    log.debug({ kind: NO_PTYS_KIND, dump: noPtys.dump }, 'sandbox probe');
    if (noPtys.differences.length > 0)
      throw new PreflightError(`the bubblewrap sandbox of a command without ptys differs from its description:\n  ${noPtys.differences.join('\n  ')}`, false);
    const protections = [...PROTECTIONS];
    if (zygote) {
      // A template whose sandbox differs is not used: interpreters then start in
      // bubblewrap, which just matched the description (same sandbox, more memory).
      try {
        const template = await onceMoreIfSpawnerSilent(() => probeTemplate(zygote, spec, identity, config.sessionsRoot, host));
        log.debug({ kind: 'template', dump: template.dump }, 'sandbox probe');
        const differences = [...template.differences, ...compareKinds(bwrap, template)];
        if (differences.length > 0) throw new PreflightError(`its sandbox differs:\n  ${differences.join('\n  ')}`);
        protections.push(TEMPLATE_PROTECTION);
        templateOk = true;
      } catch (e) {
        log.warn({ err: String((e as Error)?.message ?? e).slice(0, 4000) }, 'the interpreter template does not work here; interpreters start in bubblewrap instead');
      }
    }
    if (zygote && templateOk && commands) {
      // A command started in a template interpreter's sandbox: checked against the spec of
      // a command (its rlimits, environment, cwd; the same mounts and namespaces).
      const probeInterpreter = () =>
        new Interpreter({
          startProcess: () => zygote.spawn({ spec, uid: identity.uid, gid: identity.gid }),
          interruptGraceMs: 1000,
          startTimeoutMs: 60_000,
          describeLimit: () => '',
        });
      let interpreter = probeInterpreter();
      try {
        await onceMoreIfSpawnerSilent(async () => {
          await interpreter.kill();
          interpreter = probeInterpreter();
          await interpreter.start();
        });
        const init = interpreter.sandboxInit();
        if (!init) throw new PreflightError('the probe interpreter has no sandbox init to join', false);
        const commandSpec = sandboxSpec(folders, sandboxRlimits(limits), { kind: 'command' }, HOST_ETC);
        const command = await probeCommand(commands, commandSpec, init, identity, config.sessionsRoot, config.pythonPath, host);
        log.debug({ kind: 'template command', dump: command.dump }, 'sandbox probe');
        if (command.differences.length > 0) throw new PreflightError(`its sandbox differs:\n  ${command.differences.join('\n  ')}`, false);
        protections.push(COMMANDS_PROTECTION);
        commandsOk = true;
      } catch (e) {
        log.warn({ err: String((e as Error)?.message ?? e).slice(0, 4000) }, 'the command template does not work here; bash commands start in bubblewrap instead');
      } finally {
        await interpreter.kill();
      }
    }
    const kinds = ['bwrap', NO_PTYS_KIND, ...(templateOk ? ['template'] : []), ...(commandsOk ? ['template command'] : [])];
    log.info({ kinds, mounts: (bwrap.dump.mounts as unknown[]).length }, 'every sandbox kind matches the sandbox description');
    if (privileged) protections.push('distinct unprivileged host uid per session');
    if (tmpfsQuota) protections.push('disk quota per session (tmpfs)');
    // (the probes just compared each kind's devpts options with the spec)
    protections.push(`at most ${config.sessionPtysMax} ptys per sandbox (its own devpts)`);
    const isolation: IsolationInfo = {
      mode: privileged ? 'root' : 'rootless',
      interpreters: templateOk ? 'forked from the template' : 'bubblewrap',
      commands: commandsOk ? "in the sandbox of the session's interpreter, in a pid namespace of their own emptied at each command's end" : 'bubblewrap',
      protections,
      uid_per_session: privileged,
      ...(privileged ? { uid_range: `${uids.range().first}-${uids.range().last}` } : {}),
      disk_quota: tmpfsQuota
        ? `tmpfs of ${config.workspaceMb} MiB per session`
        : 'none per session (mounting a tmpfs needs root with CAP_SYS_ADMIN); RLIMIT_FSIZE still caps each file',
      memory_limit: `RLIMIT_AS ${config.memoryMb} MiB per process`,
      socket_memory: 'not bounded per session (no memory cgroup)',
      kernel_memory: 'not bounded per session (no memory cgroup)',
      sessions_total: 'not bounded as a whole (no writable cgroup)',
      ptys: describePtys(config, log),
      system_files: system
        ? '/usr, /etc and the driver overlaid in each sandbox: their inodes and locks are its own'
        : "the host's /usr and driver bound (an overlay in a user namespace does not work here): a lock on one of their files is seen host-wide",
      device_nodes: ownDevices
        ? "each session's own (null, zero, full, random, urandom, tty; read-only): their locks and times are its own"
        : "the host's /dev nodes bound (making them needs root with CAP_MKNOD): a lock on one is seen host-wide",
    };
    return { isolation, templateOk, commandsOk };
  } finally {
    if (uid !== undefined) {
      await killUid(uid);
      uids.release(uid);
    }
    if (ownDevices) await mounts.unmountLazy(dir);
    await removeTree(dir).catch((e: unknown) => log.warn({ err: String(e) }, 'could not remove the probe folder'));
  }
}

/**
 * Ptys: a sandbox's devpts holds at most SANDBOX_SESSION_PTYS_MAX; a session has one
 * devpts (its interpreter's, which template commands share) or two at once (a bubblewrap
 * command's next to it, which holds none: its ptmx is covered while the interpreter lives,
 * spec.ts), so a session holds the cap at most; the count below keeps two per session as
 * a margin. New devpts instances share kernel.pty.max less kernel.pty.reserve
 * (the reserve is the host's own): where all sessions together could take them all, the
 * log says so, and /health.
 */
function describePtys(config: Config, log: Logger): string {
  const perSandbox = `at most ${config.sessionPtysMax} per sandbox (its devpts is mounted with max=${config.sessionPtysMax}), two sandboxes per session at most`;
  const read = (name: string) => Number(readFileSync(`/proc/sys/kernel/pty/${name}`, 'utf8'));
  let shared: number;
  try {
    shared = read('max') - read('reserve');
  } catch {
    return perSandbox;
  }
  const worst = 2 * config.maxSessions * config.sessionPtysMax;
  if (worst <= shared) return `${perSandbox}; all sessions together ${worst} at most, within the ${shared} the host lets sandboxes share`;
  log.warn(
    { worst, shared },
    'all sessions together could hold every pty the host lets sandboxes share (raise kernel.pty.max, or lower SANDBOX_SESSION_PTYS_MAX or SANDBOX_MAX_SESSIONS)',
  );
  return `${perSandbox}; all sessions together up to ${worst}, more than the ${shared} the host lets sandboxes share (kernel.pty.max less kernel.pty.reserve): raise kernel.pty.max`;
}

/** The parent cgroup's bound, as /health says it: what holds, and what the kernel refused. */
function describeParentBound(bound: ParentBound, parent: string): string {
  const MiB = 1024 * 1024;
  const held = [
    bound.memoryBytes !== null ? `memory ${Math.floor(bound.memoryBytes / MiB)} MiB` : null,
    bound.tcpBytes !== null ? `TCP buffers ${Math.floor(bound.tcpBytes / MiB)} MiB` : null,
    bound.pidsMax !== null ? `${bound.pidsMax} processes and threads` : null,
  ].filter((x) => x !== null);
  const text = held.length > 0 ? `${held.join(', ')} for all sessions together (SANDBOX_MAX_SESSIONS times a session's limits; ${parent})` : 'not bounded as a whole';
  return bound.problems.length > 0 ? `${text}; not set: ${bound.problems.join('; ')}` : text;
}

/**
 * The interpreter template (SANDBOX_PYTHON_TEMPLATE=auto). It needs what bubblewrap needs
 * (user namespaces), root or not; where it does not start or its probe differs,
 * interpreters start in bubblewrap: the same sandbox, each importing the preloads itself.
 */
async function startTemplate(config: Config, log: Logger, seccompBpf: Buffer, programs: ProgramCopies): Promise<Zygote | null> {
  try {
    const { zygote, info } = await Zygote.start({
      python: config.pythonPath,
      image: programs.python,
      driverDir: DRIVER_DIR,
      stateDir: `${config.sessionsRoot}/.template`,
      preload: preloadList(config),
      seccompBpf,
      log,
      addressSpaceBytes: config.memoryMb * 1024 * 1024,
    });
    log.info({ pid: info.pid, preloaded: info.preloaded, preload_errors: info.preloadErrors }, 'interpreter template ready');
    return zygote;
  } catch (e) {
    log.warn({ err: String((e as Error)?.message ?? e).slice(0, 1000) }, 'the interpreter template did not start; interpreters start in bubblewrap instead');
    return null;
  }
}

/** The command template: bash commands start in the sandbox of the session's template
 * interpreter (zygote.py, "commands"), from a small process of its own (nothing
 * preloaded: its forks are cheap). Where it does not start, commands use bubblewrap. */
async function startCommandTemplate(config: Config, log: Logger, seccompBpf: Buffer, pipes: Pipes, programs: ProgramCopies): Promise<Zygote | null> {
  try {
    const { zygote } = await Zygote.start({
      python: config.pythonPath,
      image: programs.python,
      driverDir: DRIVER_DIR,
      stateDir: `${config.sessionsRoot}/.commands`,
      preload: [],
      seccompBpf,
      log,
      role: 'commands',
      pipes,
      addressSpaceBytes: config.memoryMb * 1024 * 1024,
    });
    return zygote;
  } catch (e) {
    log.warn({ err: String((e as Error)?.message ?? e).slice(0, 1000) }, 'the command template did not start; bash commands start in bubblewrap instead');
    return null;
  }
}

/**
 * One server per sessions root: the start-up sweep removes every box folder it finds,
 * which must never hit the boxes of a server that is still running.
 */
async function claimSessionsRoot(root: string): Promise<void> {
  const file = `${root}/.server.pid`;
  const previous = Number((await fsp.readFile(file, 'utf8').catch(() => '')).trim());
  if (previous > 0 && previous !== process.pid) {
    const cmdline = await fsp.readFile(`/proc/${previous}/cmdline`, 'utf8').catch(() => '');
    if (cmdline.includes('main.js')) {
      process.stderr.write(`otari-sandbox-container: another server (pid ${previous}) is using SANDBOX_SESSIONS_ROOT=${root}; stop it or choose another folder\n`);
      process.exit(1);
    }
  }
  await fsp.writeFile(file, `${process.pid}\n`);
}

const CAP_SYS_NICE = 23;

/** Whether this process holds a capability (its effective set, /proc/self/status). */
function hasCapability(bit: number): boolean {
  const hex = /^CapEff:\s*([0-9a-f]+)/m.exec(readFileSync('/proc/self/status', 'utf8'))?.[1];
  return hex !== undefined && ((BigInt(`0x${hex}`) >> BigInt(bit)) & 1n) === 1n;
}

/** Sandboxes run as other uids, which must be able to reach their folders. */
async function checkSearchable(root: string): Promise<void> {
  const parts = root.split('/').filter(Boolean);
  for (let i = 1; i <= parts.length; i++) {
    const dir = `/${parts.slice(0, i).join('/')}`;
    const st = await fsp.stat(dir);
    if ((st.mode & 0o001) === 0) {
      process.stderr.write(
        `otari-sandbox-container: ${dir} (above SANDBOX_SESSIONS_ROOT) is not searchable by other users (mode ${(st.mode & 0o777).toString(8)}); sandboxes run as their own uids and need o+x on it\n`,
      );
      process.exit(1);
    }
  }
}

/**
 * Descriptors this process inherited without close-on-exec would pass into every sandbox
 * (libuv does not close them in children). Node's own descriptors are all close-on-exec,
 * so whatever lacks the flag came from our parent: close it before anything is spawned.
 */
function closeInheritedDescriptors(): number {
  let closed = 0;
  for (const name of readdirSync('/proc/self/fd')) {
    const fd = Number(name);
    if (fd <= 2) continue;
    let info: string;
    try {
      info = readFileSync(`/proc/self/fdinfo/${fd}`, 'utf8');
    } catch {
      continue; // the directory listing's own descriptor, already closed
    }
    const flags = parseInt(/^flags:\s*([0-7]+)/m.exec(info)?.[1] ?? '0', 8);
    if ((flags & 0o2000000) === 0) {
      try {
        closeSync(fd);
        closed++;
      } catch {
        /* not ours to close */
      }
    }
  }
  return closed;
}

/**
 * The last line of defence: an exception or rejection that nothing handled is logged and
 * contained, not allowed to end the process (and every session with it). Each code path
 * that can fail handles its own errors; reaching this is a defect, and the log says where.
 * The state stays safe: every session's work runs in its own promise chain, so a failed
 * chain loses at most that call.
 */
function containStrayErrors(getLog: () => Logger | null): void {
  const report = (kind: string, e: unknown) => {
    const err = { message: String((e as Error)?.message ?? e).slice(0, 2000), stack: String((e as Error)?.stack ?? '').slice(0, 4000) };
    // On stderr as well as in the log: stdout (the log) may be what failed.
    process.stderr.write(`otari-sandbox-container: ${kind} (contained): ${err.stack || err.message}\n`);
    try {
      getLog()?.error({ err }, `${kind} (contained; the server goes on)`);
    } catch {
      /* the log is gone; stderr has it */
    }
  };
  process.on('unhandledRejection', (reason) => report('unhandled rejection', reason));
  process.on('uncaughtException', (e) => report('uncaught exception', e));
}

async function main(): Promise<void> {
  let logRef: Logger | null = null;
  containStrayErrors(() => logRef);
  const inherited = closeInheritedDescriptors();
  let config: Config;
  try {
    config = loadConfig(process.env);
  } catch (e) {
    if (e instanceof ConfigError) {
      process.stderr.write(`otari-sandbox-container: ${e.message}\n`);
      process.exit(1);
    }
    throw e;
  }
  const log = createLogger(config.logLevel);
  logRef = log;
  if (inherited > 0) log.warn({ descriptors: inherited }, 'closed descriptors inherited without close-on-exec (they would have reached the sandboxes)');
  if (config.memoryMb < BLAS_NEEDS_MB && preloadList(config).includes('numpy'))
    log.warn(
      { memory_mb: config.memoryMb, needs_mb: BLAS_NEEDS_MB },
      "SANDBOX_RUNNER_MEMORY_MB is below what numpy's BLAS needs for its buffers: a matrix product waits for memory until the call's time limit (raise it)",
    );
  const privileged = process.getuid?.() === 0;
  // Made here: removed at a clean stop (the host as the server found it).
  const madeRoot = !existsSync(config.sessionsRoot);
  await fsp.mkdir(config.sessionsRoot, { recursive: true, mode: 0o711 });
  await fsp.chmod(config.sessionsRoot, 0o711);
  await claimSessionsRoot(config.sessionsRoot);
  // Our own uid range for as long as we run: never one another server on this host uses.
  const uidCount = config.maxSessions + config.warmPoolSize + 8;
  let uidClaim: UidClaim | null = null;
  if (privileged) {
    try {
      // The default base moves on to a free range; one the operator chose must be free.
      uidClaim = await claimUidRange(config.sandboxUidBase, uidCount, {
        pick: process.env.SANDBOX_UID_BASE === undefined,
        root: config.sessionsRoot,
        // what this server's sessions would take of host-wide budgets (host-tasks.ts)
        needs: {
          tasks: config.maxSessions * config.sessionPidsMax,
          tcpBytes: config.maxSessions * sessionTcpWant(sessionCgroupLimits(config).memoryBytes),
          memoryBytes: config.maxSessions * sessionCgroupLimits(config).memoryBytes,
        },
      });
    } catch (e) {
      if (!(e instanceof UidRangeTaken)) throw e;
      process.stderr.write(`otari-sandbox-container: ${e.message}\n`);
      process.exit(1);
    }
    if (uidClaim.first !== config.sandboxUidBase)
      log.info({ first: uidClaim.first, last: uidClaim.last }, 'the default sandbox uid range is in use by another server: using the next free one');
  }
  const uids = new UidAllocator(uidClaim?.first ?? config.sandboxUidBase, uidCount);
  if (privileged) await checkSearchable(config.sessionsRoot);
  // What a SIGKILLed predecessor left in our range: sandboxed processes (in a pid
  // namespace of their own; a host process that merely has such a uid is not ours).
  if (privileged) {
    const { first, last } = uids.range();
    const ownNs = await fsp.readlink('/proc/self/ns/pid');
    for (const pids of (await pidsOfUids(first, last)).values()) {
      for (const pid of pids) {
        if ((await fsp.readlink(`/proc/${pid}/ns/pid`).catch(() => ownNs)) === ownNs) continue;
        try {
          process.kill(pid, 'SIGKILL');
        } catch {
          /* gone */
        }
      }
    }
  }
  // Box tmpfs mounts through one helper, not a mount program per box (mounts.ts).
  const mounter = privileged
    ? await HostHelper.start('mount', '/usr/bin/python3', MOUNTER, [config.sessionsRoot], log).catch((e: unknown) => {
        log.warn({ err: String((e as Error)?.message ?? e) }, 'the mount helper did not start: box tmpfs mounts use /usr/bin/mount');
        return null;
      })
    : null;
  const mounts = new Mounts(mounter);
  const swept = await sweepSessionsRoot(config.sessionsRoot, privileged, mounts, removeTree);
  if (swept > 0) log.warn({ folders: swept }, 'removed session folders left by an earlier run');

  const tmpfsQuota = privileged && (await mounts.canMountTmpfs(config.sessionsRoot));
  // Each box's own device nodes, in its tmpfs (mounts.ts).
  const ownDevices = tmpfsQuota && (await mounts.canMakeDevices(config.sessionsRoot));
  if (tmpfsQuota && !ownDevices)
    log.warn("device nodes cannot be made here (the mount helper, or CAP_MKNOD, is missing): sandboxes bind the host's /dev nodes (a lock on one is seen host-wide)");
  // The programs a session can reach through procfs are the server's copies (system-tree.ts).
  const programs = await prepareProgramCopies(config.sessionsRoot, { python: config.pythonPath });
  // Each sandbox's /usr, /etc and driver are overlays with inodes of their own (system-tree.ts).
  let system: SystemTree | null = await prepareSystemTree(config.sessionsRoot, HOST_ETC, DRIVER_DIR);
  const overlays = await overlaysWork(system);
  if (!overlays.ok) {
    log.warn({ err: overlays.reason }, "an overlay does not mount in a user namespace here: sandboxes bind the host's system files (a lock on one is seen host-wide)");
    await removeSystemTree(config.sessionsRoot);
    system = null;
  }
  let isolation: IsolationInfo;
  let launcher: Launcher;
  let zygote: Zygote | null = null;
  let commands: Zygote | null = null;
  let pipes: Pipes | null = null;
  let devpts: DevptsCap | null = null;
  try {
    const seccompBpf = await buildSeccompFilter('/usr/bin/python3', SECCOMP_GEN);
    pipes = await Pipes.create(`${config.sessionsRoot}/.pipes`);
    devpts = await DevptsCap.start('/usr/bin/python3', DEVPTS_CAP, log).catch((e: unknown) => {
      throw new PreflightError(`could not start the devpts helper (${DEVPTS_CAP}): ${String((e as Error)?.message ?? e)}`);
    });
    launcher = new Launcher({ seccompBpf, pipes, devpts });
    if (config.pythonTemplate === 'auto') zygote = await startTemplate(config, log, seccompBpf, programs);
    if (zygote) commands = await startCommandTemplate(config, log, seccompBpf, pipes, programs);
    const prepared = await prepareIsolation(config, log, launcher, zygote, commands, uids, privileged, tmpfsQuota, system, mounts, ownDevices);
    isolation = prepared.isolation;
    if (zygote && !prepared.templateOk) {
      await zygote.close();
      zygote = null;
    }
    if (commands && !prepared.commandsOk) {
      await commands.close();
      commands = null;
    }
  } catch (e) {
    const message = e instanceof PreflightError ? e.message : String((e as Error)?.stack ?? e);
    log.fatal({ err: message }, 'the sandbox does not work here; refusing to start');
    const hint = !(e instanceof PreflightError) || e.hint ? `${FIX_HINT}\n` : '';
    process.stderr.write(`otari-sandbox-container: refusing to start: ${message}\n${hint}`);
    // nothing of ours stays behind
    await zygote?.close().catch(() => {});
    await commands?.close().catch(() => {});
    await pipes?.close().catch(() => {});
    await devpts?.close().catch(() => {});
    await mounter?.close().catch(() => {});
    await removeSystemTree(config.sessionsRoot).catch(() => {});
    await removeProgramCopies(config.sessionsRoot).catch(() => {});
    await fsp.rm(`${config.sessionsRoot}/.server.pid`, { force: true });
    await uidClaim?.release();
    if (madeRoot) await fsp.rmdir(config.sessionsRoot).catch(() => {});
    process.exit(1);
  }

  // This server's part of host-wide budgets (pids, TCP memory) comes after what the live
  // servers on the host that started before it need: all together keep within half
  // (host-tasks.ts serverBudget).
  const older = uidClaim?.older ?? [];
  const cgroups = await detectCgroups(
    privileged,
    `otari-${createHash('sha256').update(config.sessionsRoot).digest('hex').slice(0, 12)}`,
    config.maxSessions,
    older.map((n) => n.tcpBytes),
  );
  if (cgroups) await cgroups.sweep();
  // All sessions' processes and threads together stay within this server's share of the
  // host's (host-tasks.ts): where SANDBOX_SESSION_PIDS_MAX would not, the limit in force from
  // here on (cgroups, open-files arithmetic, /health) is lowered.
  const tasks = hostTasksBound({ sessionPidsMax: config.sessionPidsMax, maxSessions: config.maxSessions, ...hostTaskLimits(), olderNeeds: older.map((n) => n.tasks) });
  if (tasks.lowered) {
    log.warn(
      { configured: config.sessionPidsMax, in_force: tasks.perSession, processes: tasks.text },
      "SANDBOX_SESSION_PIDS_MAX lowered: all sessions together would pass this server's share of the host's processes and threads",
    );
    config = Object.freeze({ ...config, sessionPidsMax: tasks.perSession });
  }
  if (tasks.hostExhaustible) log.warn({ processes: tasks.text }, "processes: sessions together could exhaust the host's pids");
  isolation.processes = cgroups?.controllers.includes('pids')
    ? tasks.text
    : `${tasks.text}; not enforced per session (no pids cgroup): RLIMIT_NPROC ${config.maxProcesses} per sandbox`;
  isolation.memory_limit = cgroups
    ? `${cgroups.describe}, and RLIMIT_AS ${config.memoryMb} MiB per process`
    : `RLIMIT_AS ${config.memoryMb} MiB per process (no writable cgroup: no per-session total)`;
  if (cgroups) {
    isolation.protections.push('memory limit per session (cgroup)');
    isolation.socket_memory = cgroups.socketMemory;
    isolation.kernel_memory = cgroups.kernelMemory;
    // TCP buffers are host-wide (net.ipv4.tcp_mem): each session's share (tcp-memory.ts)
    const tcp = cgroups.tcpMemory(sessionCgroupLimits(config).memoryBytes);
    isolation.tcp_memory = tcp.text;
    if (tcp.hostExhaustible) log.warn({ tcp_memory: tcp.text }, "TCP buffers: sessions together could pass the host's TCP memory");
    else log.info({ tcp_memory: tcp.text, tcp_bytes_per_session: tcp.perSessionBytes }, 'TCP buffers per session');
    // All sessions' memory together: at most this server's part of the host's memory
    // (host-tasks.ts), however much their own limits add up to.
    const leaf = sessionCgroupLimits(config);
    const ram = hostMemoryBytes();
    const memoryCap =
      config.sessionsMemoryMb > 0
        ? config.sessionsMemoryMb * 1024 * 1024
        : ram === null
          ? Number.MAX_SAFE_INTEGER
          : serverBudget(
              ram,
              older.map((n) => n.memoryBytes),
              leaf.memoryBytes * config.maxSessions,
              ALL_SERVERS_MEMORY_SHARE,
              MEMORY_TAKE,
            );
    const bound = await cgroups.boundParent(leaf, config.maxSessions, memoryCap);
    isolation.sessions_total = describeParentBound(bound, cgroups.parent);
    if (ram !== null && memoryCap < leaf.memoryBytes * config.maxSessions) {
      const MiB = 1024 * 1024;
      const held = `${Math.floor(memoryCap / MiB)} MiB, not ${config.maxSessions} x ${Math.floor(leaf.memoryBytes / MiB)} MiB`;
      isolation.sessions_total +=
        config.sessionsMemoryMb > 0
          ? `; memory held to SANDBOX_SESSIONS_MEMORY_MB (${held}; the host has ${Math.floor(ram / MiB)} MiB)`
          : `; memory held to this server's part of the host's ${Math.floor(ram / MiB)} MiB (${held}: all servers on the host together keep within ${ALL_SERVERS_MEMORY_SHARE * 100} % of it; past it the kernel reclaims or OOM-kills within the sessions, never elsewhere on the host)`;
      log.info({ memory_cap_mib: Math.floor(memoryCap / MiB), host_mib: Math.floor(ram / MiB) }, "all sessions' memory together held to this server's part of the host's memory");
    }
    if (bound.problems.length > 0) log.warn({ problems: bound.problems }, "the kernel refused part of the bound on all sessions together (the server's parent cgroup)");
    // A session's disk (its tmpfs) is memory no OOM kill frees: sessions filling theirs
    // leave the others the rest of the pool, and past it the kernel kills the others'
    // interpreters (docs/threat-model.md, memory row).
    const pinnedMb = config.workspaceMb + config.shmMb;
    if (memoryCap < 4 * pinnedMb * 1024 * 1024) {
      log.warn(
        { sessions_memory_mib: Math.floor(memoryCap / (1024 * 1024)), disk_per_session_mib: pinnedMb },
        `all sessions' memory (${Math.floor(memoryCap / (1024 * 1024))} MiB) holds fewer than 4 sessions' disks (${pinnedMb} MiB each: SANDBOX_WORKSPACE_MB + SANDBOX_SHM_MB, memory no OOM kill frees): a few sessions filling theirs leave the others without memory; lower SANDBOX_WORKSPACE_MB or raise SANDBOX_SESSIONS_MEMORY_MB`,
      );
    }
  }
  if (cgroups?.controllers.includes('pids')) isolation.protections.push(`at most ${config.sessionPidsMax} processes and threads per session (pids cgroup)`);
  if (cgroups?.controllers.includes('cpu')) isolation.protections.push('an equal CPU share per session (cpu cgroup)');
  const files = openFilesBound({
    nofile: config.maxOpenFiles,
    sessionPidsMax: config.sessionPidsMax,
    pidsCgroup: cgroups?.controllers.includes('pids') ?? false,
    maxSessions: config.maxSessions,
    fileMax: hostFileMax(),
  });
  isolation.open_files = files.text;
  if (files.hostExhaustible) log.warn({ open_files: files.text }, 'open files: sessions together could exhaust the host');
  log.info({ isolation }, `isolation mode: ${isolation.mode}, interpreters ${isolation.interpreters}`);
  const budget = new MemoryBudget(config.serverMemoryBudgetMb * 1024 * 1024);
  const replica = replicaName(config.replicaId, hostname());
  log.info({ replica }, 'replica name (in every session id)');
  const editorWorkers = new EditorWorkers();
  const sessions = new SessionManager(
    config,
    boxFactory(
      {
        config,
        launcher,
        zygote,
        commands,
        cgroups,
        uids,
        privileged,
        canRenice: privileged && hasCapability(CAP_SYS_NICE),
        tmpfsQuota,
        ownDevices,
        mounts,
        driverHostDir: DRIVER_DIR,
        hostEtc: HOST_ETC,
        system,
        budget,
        log,
      },
      () => {
        if (!privileged) return {};
        const uid = uids.allocate();
        return { uid, gid: uid };
      },
    ),
    log,
    undefined,
    replica,
  );
  const exec = new ExecService(config, budget, editorWorkers);
  const loop = new LoopMonitor();
  // Requests get access-log lines once the server serves clients (not the warm-up's).
  let serving = false;
  let draining = false;
  const streams = new ExecStreams(config);
  const metrics = new ServerMetrics(sessions, budget, config);
  const app = await buildApp({
    config,
    log,
    sessions,
    exec,
    streams,
    isolation,
    version: VERSION,
    budget,
    metrics,
    loopStats: () => loop.snapshot(),
    logRequests: () => serving,
    draining: () => draining,
  });
  sessions.start();

  let stopping = false;
  const stop = (signal: string) => {
    if (stopping) return;
    stopping = true;
    log.info({ signal }, 'shutting down');
    const hardStop = setTimeout(
      () => {
        log.error('shutdown deadline passed; exiting');
        process.exit(1);
      },
      (config.shutdownGraceSeconds + 20) * 1000,
    );
    hardStop.unref();
    // Draining: the server keeps listening through the grace, so a client (or a proxy's
    // retry) gets an answer, not a refused connection: creates get 503 SBX_SHUTTING_DOWN
    // with Retry-After (the session manager), /health 503 "draining" (a readiness probe
    // takes the replica out), and calls on live sessions run until their deadline.
    draining = true;
    streams.beginShutdown();
    sessions
      .shutdown(config.shutdownGraceSeconds * 1000)
      .then(async () => {
        // Every session is gone, so no call is still useful: streamed calls are sent their
        // last event and ended, the server stops listening, and what is left is cut.
        await streams.close();
        const closing = app.close();
        app.server.closeAllConnections();
        await zygote?.close();
        await commands?.close();
        await editorWorkers.close();
        await closing;
        // The host as the server found it: its own folders, its cgroup, its root.
        await launcher.close();
        await mounter?.close();
        await cgroups?.close();
        await removeSystemTree(config.sessionsRoot);
        await removeProgramCopies(config.sessionsRoot);
        await fsp.rm(`${config.sessionsRoot}/.server.pid`, { force: true });
        await uidClaim?.release();
        if (madeRoot) await fsp.rmdir(config.sessionsRoot).catch((e: unknown) => log.warn({ err: String(e) }, 'the sessions root is not empty at exit'));
      })
      .then(
        () => {
          log.info('stopped');
          process.exit(0);
        },
        (e: unknown) => {
          log.error({ err: String(e) }, 'shutdown failed');
          process.exit(1);
        },
      );
  };
  process.on('SIGTERM', () => stop('SIGTERM'));
  process.on('SIGINT', () => stop('SIGINT'));

  // Not listening yet: no client can reach the server (nor its /health) until this ends.
  if (config.warmUp) {
    const report = await warmUp(app, { headers: warmUpHeaders(config) });
    if (report.sessionId !== undefined) await sessions.destroy(report.sessionId); // a no-op unless its DELETE failed
    sessions.forgetCreates();
    metrics.reset();
    await sessions.cleanupsDone();
    const fields = { duration_ms: Math.round(report.durationMs), requests: report.requests };
    if (report.error === undefined) log.info(fields, 'warm-up done');
    else if (!stopping) log.warn({ ...fields, err: report.error.slice(0, 1000) }, 'warm-up ended early; the first calls may be slower');
  }
  if (stopping) return;
  serving = true;
  await app.listen({ port: config.port, host: config.host });
  const tokens = parseTokens(config.apiToken).tokens.length;
  if (tokens > 0) log.info({ tokens }, 'bearer authentication on: every route but /health needs a token (SANDBOX_API_TOKEN)');
  else if (!isLoopbackAddress(config.host))
    log.warn({ host: config.host }, 'listening beyond loopback without SANDBOX_API_TOKEN: anyone who can reach this port can run code; set a token');
  loop.start();
}

/** What the warm-up's requests carry so the auth hook lets them through (and is warmed too). */
function warmUpHeaders(config: Config): Record<string, string> {
  const headers: Record<string, string> = {};
  const token = parseTokens(config.apiToken).tokens[0];
  if (token !== undefined) headers.authorization = `Bearer ${token}`;
  const hosts = allowedHosts(config.allowedHosts, config.host);
  if (hosts !== null) headers.host = hosts.example;
  return headers;
}

main().catch((e: unknown) => {
  process.stderr.write(`otari-sandbox-container: ${String((e as Error)?.stack ?? e)}\n`);
  process.exit(1);
});

/** Runs `fn` again, once, when the template's spawner ended without its report (seen a few
 * times per test run under load; cause not found yet): not a sign that the template does
 * not work here, which the start-up decides for the server's whole life. */
async function onceMoreIfSpawnerSilent<T>(fn: () => Promise<T>): Promise<T> {
  try {
    return await fn();
  } catch (e) {
    if (!/the spawner did not answer/.test(String((e as Error)?.message ?? e))) throw e;
    return fn();
  }
}
