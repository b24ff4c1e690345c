/**
 * A box is everything one session owns on the host: its folder, its host uid, its
 * interpreter sandbox, and the bash sandboxes of its running commands. Boxes are made
 * ahead of time by the warm pool and handed to sessions; a box is used by one session
 * only and destroyed with it.
 *
 * Host layout of a box (folder names are random, never the session id):
 *   <sessionsRoot>/<name>/            0711 root; when we are root, a size-capped tmpfs
 *     workspace/   -> /workspace      owned by the box uid
 *     tmp/         -> /tmp            owned by the box uid
 *     lib/         -> /opt/session-lib (read-only inside; _platform_tools.py)
 *     staging/                        uploads land here first, then rename() in
 *     undo/                           the text editor's undo snapshots (server-only, 0700)
 * The tmpfs gives each session a hard disk quota (ENOSPC) that counts the workspace and
 * /tmp together, and makes deletion one umount.
 */
import { promises as fsp } from 'node:fs';
import { randomBytes } from 'node:crypto';
import type { Config } from '../config.js';
import { preloadList } from '../config.js';
import type { Launcher, SandboxedProcess } from '../sandbox/launcher.js';
import type { ResourceLimits } from '../sandbox/bwrap-args.js';
import { DRIVER_DIR } from '../sandbox/bwrap-args.js';
import { Interpreter, fmtSeconds, type ExecOutcome } from '../runner/interpreter.js';
import { detectLimit, describeLimit, type LimitKind } from '../limits.js';
import { CappedBuffer } from '../runner/output.js';
import { WorkspaceFs } from '../files/workspace-fs.js';
import type { UidAllocator } from '../sandbox/uids.js';
import { killUid, renice } from '../sandbox/uids.js';
import { SandboxError } from '../errors.js';
import { mountTmpfs, unmountLazy } from '../sandbox/mounts.js';
import type { Cgroups, CgroupLeaf } from '../sandbox/cgroups.js';
import type { Zygote } from '../sandbox/zygote.js';
import type { MemoryBudget } from '../budget.js';

const MiB = 1024 * 1024;
/** Longest bash command passed in argv (the kernel's MAX_ARG_STRLEN is 128 KiB). */
const ARGV_COMMAND_MAX = 100_000;

export interface BoxDeps {
  config: Config;
  launcher: Launcher;
  /** The interpreter template (root only); null: each interpreter starts in its own bwrap. */
  zygote: Zygote | null;
  cgroups: Cgroups | null;
  uids: UidAllocator;
  /** Server runs as root: per-box uid and kill-by-uid. */
  privileged: boolean;
  /** Pool boxes may start at a lower priority: the server can raise it back when a
   * session takes one (CAP_SYS_NICE, which containers often lack). */
  canRenice: boolean;
  /** A size-capped tmpfs can be mounted per box (root with CAP_SYS_ADMIN). */
  tmpfsQuota: boolean;
  driverHostDir: string;
  /** Server memory for large transient work (see budget.ts). */
  budget: MemoryBudget;
}

export interface BashOutcome {
  stdout: CappedBuffer;
  stderr: CappedBuffer;
  returnCode: number;
  limit: LimitKind | null;
  notes: string[];
  durationMs: number;
}

export class Box {
  readonly name: string;
  readonly dir: string;
  readonly workspaceDir: string;
  readonly tmpDir: string;
  readonly libDir: string;
  readonly stagingDir: string;
  /** Server-only folder of the text editor's undo history (tools/text-editor.ts): on the
   * box's own disk, so the history counts against the session's quota. */
  readonly undoDir: string;
  readonly fs: WorkspaceFs;
  interpreter: Interpreter;
  private readonly bash = new Set<SandboxedProcess>();
  private destroyed = false;
  private mounted = false;
  private cgroup: CgroupLeaf | null = null;
  private oomSeen = 0;

  constructor(
    private readonly deps: BoxDeps,
    readonly uid: number | undefined,
    readonly gid: number | undefined,
  ) {
    this.name = `box_${randomBytes(12).toString('hex')}`;
    this.dir = `${deps.config.sessionsRoot}/${this.name}`;
    this.workspaceDir = `${this.dir}/workspace`;
    this.tmpDir = `${this.dir}/tmp`;
    this.libDir = `${this.dir}/lib`;
    this.stagingDir = `${this.dir}/staging`;
    this.undoDir = `${this.dir}/undo`;
    this.background = deps.canRenice && uid !== undefined;
    this.fs = new WorkspaceFs(this.workspaceDir, uid !== undefined && gid !== undefined ? { uid, gid } : null, this.stagingDir);
    this.interpreter = this.newInterpreter();
  }

  /** SANDBOX_EDITOR_UNDO_MB in bytes: the undo history's size in undoDir at most (0: off). */
  get undoMaxBytes(): number {
    return this.deps.config.editorUndoMb * MiB;
  }

  get limits(): ResourceLimits {
    const c = this.deps.config;
    return {
      addressSpaceBytes: c.memoryMb * MiB,
      cpuSeconds: c.cpuSeconds,
      fileSizeBytes: c.fileSizeMb * MiB,
      openFiles: c.maxOpenFiles,
      processes: c.maxProcesses,
    };
  }

  private layout() {
    return { workspaceDir: this.workspaceDir, tmpDir: this.tmpDir, driverDir: this.deps.driverHostDir, libDir: this.libDir, shmBytes: this.deps.config.shmMb * MiB };
  }

  /** True once per new OOM kill in the box's cgroup (any of its processes). */
  consumeOomKill(): boolean {
    const n = this.cgroup?.oomKills() ?? 0;
    const hit = n > this.oomSeen;
    this.oomSeen = n;
    return hit;
  }

  /** Pool boxes start in the background at nice 10; promote() brings them to 0 when a
   * session takes them (root only: lowering niceness needs CAP_SYS_NICE). */
  private background: boolean;

  async promote(): Promise<void> {
    if (!this.background || this.uid === undefined) return;
    this.background = false;
    // Only the interpreter's sandbox exists yet (no bash command has run in a pooled box).
    await renice(await this.interpreter.hostPids(), 0);
  }

  private newInterpreter(): Interpreter {
    const c = this.deps.config;
    const nice = this.background ? 10 : undefined;
    const { zygote } = this.deps;
    const startProcess =
      zygote && this.uid !== undefined && this.gid !== undefined
        ? // forked from the template, which has the modules imported already
          () => zygote.spawn({ layout: this.layout(), uid: this.uid!, gid: this.gid!, limits: this.limits, cgroupProcsFile: this.cgroup?.procsFile, nice })
        : () =>
            this.deps.launcher.launch({
              layout: this.layout(),
              identity: { uid: this.uid, gid: this.gid },
              limits: this.limits,
              env: { SANDBOX_PRELOAD: preloadList(c).join(',') },
              cgroupProcsFile: this.cgroup?.procsFile,
              nice,
              argv: [c.pythonPath, '-I', '-u', '-X', 'faulthandler', `${DRIVER_DIR}/driver.py`],
              controlChannel: true,
            });
    return new Interpreter({
      startProcess,
      wasOomKilled: () => this.consumeOomKill(),
      interruptGraceMs: c.interruptGraceMs,
      startTimeoutMs: 60_000,
      cpuSeconds: c.cpuSeconds,
      memoryMb: c.memoryMb,
    });
  }

  /** Makes the folders and starts the interpreter; resolves when it is ready. */
  async prepare(): Promise<void> {
    const { config } = this.deps;
    await fsp.mkdir(this.dir, { mode: 0o711 });
    if (this.deps.tmpfsQuota) {
      await mountTmpfs(this.dir, config.workspaceMb);
      this.mounted = true;
    }
    for (const d of [this.workspaceDir, this.tmpDir]) {
      await fsp.mkdir(d, { mode: 0o700 });
      if (this.uid !== undefined && this.gid !== undefined) await fsp.chown(d, this.uid, this.gid);
    }
    await fsp.chmod(this.tmpDir, 0o700);
    await fsp.mkdir(this.libDir, { mode: 0o755 });
    await fsp.mkdir(this.stagingDir, { mode: 0o700 });
    await fsp.mkdir(this.undoDir, { mode: 0o700 });
    if (this.deps.cgroups) {
      // tmpfs pages are charged to the writer's cgroup: the limit covers them too.
      const limit = (config.memoryMb + config.workspaceMb + config.shmMb) * MiB;
      this.cgroup = await this.deps.cgroups.create(this.name, limit);
      this.interpreter = this.newInterpreter();
    }
    await this.interpreter.start();
  }

  private restarting: Promise<void> | null = null;

  /** Starts a fresh interpreter after a crash, a kill or a limit (variables are gone);
   * concurrent callers share one restart. */
  restartInterpreter(): Promise<void> {
    if (this.restarting) return this.restarting;
    const run = async () => {
      await this.interpreter.kill();
      if (this.destroyed) throw new SandboxError('SBX_SESSION_NOT_FOUND', 'session is gone');
      this.interpreter = this.newInterpreter();
      await this.interpreter.start();
    };
    this.restarting = run().finally(() => {
      this.restarting = null;
    });
    return this.restarting;
  }

  /** Waits for a restart under way (after a loss already reported to the caller that
   * saw it), or makes one if the interpreter died between calls; true in that case
   * only: the state was lost and nobody has been told yet. */
  async ensureInterpreter(): Promise<boolean> {
    if (this.restarting) {
      await this.restarting;
      return false;
    }
    if (this.interpreter.alive) return false;
    await this.restartInterpreter();
    return true;
  }

  /** Runs one command in its own sandbox; `signal` (the client left) kills it as a timeout would. */
  async runBash(command: string, timeoutMs: number, maxOutputBytes: number, signal?: AbortSignal): Promise<BashOutcome> {
    if (this.destroyed) throw new SandboxError('SBX_SESSION_NOT_FOUND', 'session is gone');
    const started = performance.now();
    const long = Buffer.byteLength(command) > ARGV_COMMAND_MAX;
    const proc = this.deps.launcher.launch({
      layout: this.layout(),
      identity: { uid: this.uid, gid: this.gid },
      limits: this.limits,
      // A long script is read from fd 3 (a socket, which /dev/fd/3 cannot open), then fd 3
      // is closed so the script's own processes do not inherit it.
      argv: long ? ['/bin/bash', '--noprofile', '--norc', '-c', '__sbx_script=$(cat <&3); exec 3<&-; eval "$__sbx_script"'] : ['/bin/bash', '--noprofile', '--norc', '-c', command],
      fd3Data: long ? Buffer.from(command, 'utf8') : undefined,
      cgroupProcsFile: this.cgroup?.procsFile,
    });
    this.bash.add(proc);
    const stdout = new CappedBuffer(maxOutputBytes);
    const stderr = new CappedBuffer(maxOutputBytes);
    proc.stdout.on('data', (c: Buffer) => stdout.push(c));
    proc.stderr.on('data', (c: Buffer) => stderr.push(c));
    let timedOut = false;
    let abandoned = false;
    const timer = setTimeout(() => {
      timedOut = true;
      void proc.kill();
    }, timeoutMs);
    const onAbort = () => {
      abandoned = true;
      void proc.kill();
    };
    if (signal?.aborted) onAbort();
    else signal?.addEventListener('abort', onAbort, { once: true });
    const info = await proc.exited;
    clearTimeout(timer);
    signal?.removeEventListener('abort', onAbort);
    // The pid namespace died with bash, so every writer is gone: the pipes end at once.
    await Promise.all([ended(proc.stdout), ended(proc.stderr)]);
    proc.destroyStreams();
    this.bash.delete(proc);
    const notes: string[] = [];
    let limit: LimitKind | null = null;
    let returnCode = info.exitCode;
    if (abandoned && !timedOut) {
      returnCode = -1;
      notes.push('bash: the client disconnected; the command and every process it started were killed');
    } else if (timedOut) {
      limit = 'wall_clock';
      returnCode = -1;
      notes.push(`bash: command timed out after ${fmtSeconds(timeoutMs, false)}s (wall-clock limit); the command and every process it started were killed`);
    } else if (this.consumeOomKill()) {
      limit = 'memory';
      notes.push(`bash: a process was killed by the sandbox memory limit (${this.deps.config.memoryMb} MiB, SANDBOX_RUNNER_MEMORY_MB)`);
    } else {
      limit = detectLimit(info.exitCode, stderr.text());
      if (limit) notes.push(`bash: ${describeLimit(limit, this.deps.config)}`);
    }
    return { stdout, stderr, returnCode, limit, notes, durationMs: performance.now() - started };
  }

  /** Kills every process of the box and removes its folder. Idempotent. */
  async destroy(): Promise<void> {
    if (this.destroyed) return;
    this.destroyed = true;
    await Promise.all([this.interpreter.kill(), ...[...this.bash].map((p) => p.kill())]);
    if (this.uid !== undefined && this.deps.privileged) await killUid(this.uid);
    await this.cgroup?.remove();
    if (this.mounted) await unmountLazy(this.dir);
    await removeTree(this.dir);
    if (this.uid !== undefined) this.deps.uids.release(this.uid);
  }
}

function ended(s: NodeJS.ReadableStream & { readableEnded?: boolean; destroyed?: boolean }): Promise<void> {
  if (s.readableEnded || s.destroyed) return Promise.resolve();
  return new Promise((resolve) => {
    const t = setTimeout(resolve, 500);
    const done = () => {
      clearTimeout(t);
      resolve();
    };
    s.once('end', done);
    s.once('close', done);
    s.once('error', done);
  });
}

/**
 * rm -rf that also works when sandboxed code made things unreadable (chmod -R 000):
 * on EACCES, give the owner rwx back while walking, then retry.
 */
export async function removeTree(dir: string): Promise<void> {
  try {
    await fsp.rm(dir, { recursive: true, force: true, maxRetries: 2 });
    return;
  } catch (e) {
    if (!['EACCES', 'EPERM', 'ENOTEMPTY'].includes((e as NodeJS.ErrnoException).code ?? '')) throw e;
  }
  const fix = async (d: string): Promise<void> => {
    await fsp.chmod(d, 0o700).catch(() => {});
    const names = await fsp.readdir(d).catch(() => [] as string[]);
    for (const n of names) {
      const p = `${d}/${n}`;
      const st = await fsp.lstat(p).catch(() => null);
      if (st?.isDirectory()) await fix(p);
    }
  };
  await fix(dir);
  await fsp.rm(dir, { recursive: true, force: true, maxRetries: 2 });
}

export type { ExecOutcome };
