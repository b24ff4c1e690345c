/**
 * The only file that reads the environment, listens, handles signals and exits.
 * Start-up: validate the configuration (all problems at once), sweep what a killed
 * predecessor left, build the seccomp filter, prove the sandbox holds (fail closed),
 * then serve. SIGTERM/SIGINT: stop accepting, let in-flight calls finish until
 * SANDBOX_SHUTDOWN_GRACE_SECONDS, destroy every session, exit.
 */
import { closeSync, promises as fsp, readdirSync, readFileSync } from 'node:fs';
import { createHash, randomBytes } from 'node:crypto';
import { fileURLToPath } from 'node:url';
import { loadConfig, ConfigError, preloadList, type Config } from './config.js';
import { createLogger, type Logger } from './log.js';
import { Launcher } from './sandbox/launcher.js';
import { UidAllocator, killUid, pidsOfUids } from './sandbox/uids.js';
import { buildSeccompFilter, probeSandbox, probeTemplate, sweepSessionsRoot, PreflightError, FIX_HINT } from './sandbox/preflight.js';
import { Zygote } from './sandbox/zygote.js';
import { removeTree } from './sessions/box.js';
import { detectCgroups } from './sandbox/cgroups.js';
import { canMountTmpfs } from './sandbox/mounts.js';
import { SessionManager } from './sessions/manager.js';
import { ExecService } from './sessions/exec.js';
import { buildApp } from './http/app.js';
import { MemoryBudget } from './budget.js';
import { LoopMonitor } from './loop-monitor.js';
import { EditorWorkers } from './tools/text-editor.js';
import type { IsolationInfo } from './http/routes/health.js';

const here = (rel: string) => fileURLToPath(new URL(rel, import.meta.url));
const DRIVER_DIR = here('../../sandbox-python');
const SECCOMP_GEN = here('../../sandbox-host/seccomp-gen.py');
const VERSION = (JSON.parse(readFileSync(here('../../package.json'), 'utf8')) as { version: string }).version;

async function prepareIsolation(
  config: Config,
  log: Logger,
  launcher: Launcher,
  zygote: Zygote | null,
  uids: UidAllocator,
  privileged: boolean,
  tmpfsQuota: boolean,
): Promise<{ isolation: IsolationInfo; templateOk: boolean }> {
  const dir = `${config.sessionsRoot}/probe_${randomBytes(6).toString('hex')}`;
  let templateOk = false;
  const uid = privileged ? uids.allocate() : undefined;
  try {
    for (const d of [dir, `${dir}/workspace`, `${dir}/tmp`, `${dir}/lib`]) await fsp.mkdir(d, { mode: 0o711 });
    if (uid !== undefined) for (const d of [`${dir}/workspace`, `${dir}/tmp`]) await fsp.chown(d, uid, uid);
    const layout = { workspaceDir: `${dir}/workspace`, tmpDir: `${dir}/tmp`, libDir: `${dir}/lib`, driverDir: DRIVER_DIR, shmBytes: config.shmMb * 1024 * 1024 };
    const limits = { addressSpaceBytes: config.memoryMb * 1024 * 1024, cpuSeconds: 10, fileSizeBytes: 1 << 20, openFiles: 64, processes: 16 };
    // bash commands run in bubblewrap; interpreters too, or forked from the template:
    // every way a sandbox is made must pass the probe.
    const { protections } = await probeSandbox(launcher, layout, { uid, gid: uid }, limits, config.sessionsRoot, config.pythonPath);
    if (zygote && uid !== undefined) {
      // A template whose sandbox does not hold is not used: interpreters then start in
      // bubblewrap, which just passed the same checks (the same protections, more memory).
      try {
        const template = await probeTemplate(zygote, layout, uid, limits, config.sessionsRoot);
        const missing = protections.filter((p) => !template.protections.includes(p));
        if (missing.length > 0) throw new PreflightError(`its sandbox lacks: ${missing.join(', ')}`);
        protections.push('interpreters forked from a template that has the preload modules imported, each building the same sandbox');
        templateOk = true;
      } catch (e) {
        log.warn({ err: String((e as Error)?.message ?? e).slice(0, 1000) }, 'the interpreter template does not work here; interpreters start in bubblewrap instead');
      }
    }
    if (privileged) protections.push('distinct unprivileged host uid per session');
    if (tmpfsQuota) protections.push('disk quota per session (tmpfs)');
    const isolation: IsolationInfo = {
      mode: 'bwrap',
      protections,
      uid_per_session: privileged,
      disk_quota: tmpfsQuota
        ? `tmpfs of ${config.workspaceMb} MiB per session`
        : 'none per session (mounting a tmpfs needs root with CAP_SYS_ADMIN); RLIMIT_FSIZE still caps each file',
      memory_limit: `RLIMIT_AS ${config.memoryMb} MiB per process`,
    };
    return { isolation, templateOk };
  } finally {
    if (uid !== undefined) {
      await killUid(uid);
      uids.release(uid);
    }
    await removeTree(dir).catch((e: unknown) => log.warn({ err: String(e) }, 'could not remove the probe folder'));
  }
}

/**
 * The interpreter template (SANDBOX_PYTHON_TEMPLATE=auto, as root). Where it cannot work
 * (no CAP_SYS_ADMIN, as in a container started without it), interpreters start in
 * bubblewrap: the same sandbox, each importing the preloads itself.
 */
async function startTemplate(config: Config, log: Logger, seccompBpf: Buffer): Promise<Zygote | null> {
  if (!hasCapability(CAP_SYS_ADMIN)) {
    log.warn('no CAP_SYS_ADMIN: the interpreter template cannot build sandboxes; interpreters start in bubblewrap instead');
    return null;
  }
  try {
    const { zygote, info } = await Zygote.start({
      python: config.pythonPath,
      driverDir: DRIVER_DIR,
      stateDir: `${config.sessionsRoot}/.template`,
      preload: preloadList(config),
      seccompBpf,
      log,
    });
    log.info({ pid: info.pid, preloaded: info.preloaded, preload_errors: info.preloadErrors }, 'interpreter template ready');
    return zygote;
  } catch (e) {
    log.warn({ err: String((e as Error)?.message ?? e).slice(0, 1000) }, 'the interpreter template did not start; interpreters start in bubblewrap instead');
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

const CAP_SYS_ADMIN = 21;
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
  const privileged = process.getuid?.() === 0;
  await fsp.mkdir(config.sessionsRoot, { recursive: true, mode: 0o711 });
  await fsp.chmod(config.sessionsRoot, 0o711);
  const uids = new UidAllocator(config.sandboxUidBase, config.maxSessions + config.warmPoolSize + 8);

  await claimSessionsRoot(config.sessionsRoot);
  if (privileged) await checkSearchable(config.sessionsRoot);
  // What a SIGKILLed predecessor left: processes of our uids, folders, mounts.
  if (privileged) {
    const { first, last } = uids.range();
    for (const uid of (await pidsOfUids(first, last)).keys()) await killUid(uid);
  }
  const swept = await sweepSessionsRoot(config.sessionsRoot, privileged, removeTree);
  if (swept > 0) log.warn({ folders: swept }, 'removed session folders left by an earlier run');

  const tmpfsQuota = privileged && (await canMountTmpfs(config.sessionsRoot));
  let isolation: IsolationInfo;
  let launcher: Launcher;
  let zygote: Zygote | null = null;
  try {
    const seccompBpf = await buildSeccompFilter('/usr/bin/python3', SECCOMP_GEN);
    launcher = new Launcher({ seccompBpf, driverDir: DRIVER_DIR });
    if (privileged && config.pythonTemplate === 'auto') zygote = await startTemplate(config, log, seccompBpf);
    const prepared = await prepareIsolation(config, log, launcher, zygote, uids, privileged, tmpfsQuota);
    isolation = prepared.isolation;
    if (zygote && !prepared.templateOk) {
      await zygote.close();
      zygote = null;
    }
  } catch (e) {
    const message = e instanceof PreflightError ? e.message : String((e as Error)?.stack ?? e);
    log.fatal({ err: message }, 'the sandbox does not work here; refusing to start');
    process.stderr.write(`otari-sandbox-container: refusing to start: ${message}\n${FIX_HINT}\n`);
    process.exit(1);
  }

  const cgroups = await detectCgroups(privileged, `otari-${createHash('sha256').update(config.sessionsRoot).digest('hex').slice(0, 12)}`);
  if (cgroups) await cgroups.sweep();
  isolation.memory_limit = cgroups
    ? `${cgroups.describe}, and RLIMIT_AS ${config.memoryMb} MiB per process`
    : `RLIMIT_AS ${config.memoryMb} MiB per process (no writable cgroup: no per-session total)`;
  if (cgroups) isolation.protections.push('memory limit per session (cgroup)');
  log.info({ isolation }, `isolation mode: ${isolation.mode}`);
  const budget = new MemoryBudget(config.serverMemoryBudgetMb * 1024 * 1024);
  const editorWorkers = new EditorWorkers();
  const sessions = new SessionManager(
    config,
    { config, launcher, zygote, cgroups, uids, privileged, canRenice: privileged && hasCapability(CAP_SYS_NICE), tmpfsQuota, driverHostDir: DRIVER_DIR, budget },
    log,
    () => {
      if (!privileged) return {};
      const uid = uids.allocate();
      return { uid, gid: uid };
    },
  );
  const exec = new ExecService(config, sessions, budget, editorWorkers);
  const loop = new LoopMonitor();
  const app = await buildApp({ config, log, sessions, exec, isolation, version: VERSION, budget, loopStats: () => loop.snapshot() });
  await app.listen({ port: config.port, host: config.host });
  loop.start();
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
    const closing = app.close();
    sessions
      .shutdown(config.shutdownGraceSeconds * 1000)
      .then(async () => {
        // Every session is gone, so no call is still useful: cut what is left.
        app.server.closeAllConnections();
        await zygote?.close();
        await editorWorkers.close();
        return closing;
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
}

main().catch((e: unknown) => {
  process.stderr.write(`otari-sandbox-container: ${String((e as Error)?.stack ?? e)}\n`);
  process.exit(1);
});
