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
 *     artifacts/                      copies of the files calls produced (server-only, 0700)
 *     devices/                        the box's own device nodes, a read-only tmpfs (root)
 * The tmpfs gives each session a hard disk quota (ENOSPC) that counts the workspace and
 * /tmp together, and makes deletion one umount.
 */
import { promises as fsp } from 'node:fs';
import { randomBytes } from 'node:crypto';
import type { Config } from '../config.js';
import { preloadList } from '../config.js';
import type { ExitInfo, InterpreterProcess, Launcher } from '../sandbox/launcher.js';
import { SANDBOX_PATHS, sandboxSpec, type SandboxRole, type SandboxSpec, type SystemTree } from '../sandbox/spec.js';
import { Interpreter, fmtSeconds, type ExecOutcome, type ExecRequest, type OutputListener } from '../runner/interpreter.js';
import { detectLimit, describeLimit, sandboxRlimits, type LimitKind, type ResourceLimits } from '../limits.js';
import { CappedBuffer } from '../runner/output.js';
import { WorkspaceFs } from '../files/workspace-fs.js';
import { ArtifactStore } from '../files/artifacts.js';
import { scanPool } from '../files/scan-pool.js';
import { mimeOf } from '../files/mime.js';
import type { OutputSpill } from '../files/spill.js';
import type { UidAllocator } from '../sandbox/uids.js';
import { killUid, renice } from '../sandbox/uids.js';
import { isOutOfMemory, isOutOfTasks } from '../sandbox/host-tasks.js';
import { SandboxError } from '../errors.js';
import type { Mounts } from '../sandbox/mounts.js';
import type { Cgroups, CgroupLeaf, LeafLimits } from '../sandbox/cgroups.js';
import { ZygoteCommand, type Zygote } from '../sandbox/zygote.js';
import type { MemoryBudget } from '../budget.js';
import type { Logger } from '../log.js';

const MiB = 1024 * 1024;
/** Longest bash command passed in argv (the kernel's MAX_ARG_STRLEN is 128 KiB). */
const ARGV_COMMAND_MAX = 100_000;
/** A UTF-16 surrogate without its other half. */
const LONE_SURROGATE = /[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/g;

export interface BoxDeps {
  config: Config;
  launcher: Launcher;
  /** The interpreter template; null: each interpreter starts in its own bwrap. */
  zygote: Zygote | null;
  /** The command template: bash commands start in the sandbox of the session's running
   * template interpreter; null (or no such interpreter): each in its own bwrap. */
  commands: Zygote | null;
  cgroups: Cgroups | null;
  uids: UidAllocator;
  /** Server runs as root: per-box uid and kill-by-uid. */
  privileged: boolean;
  /** Pool boxes may start at a lower priority: the server can raise it back when a
   * session takes one (CAP_SYS_NICE, which containers often lack). */
  canRenice: boolean;
  /** A size-capped tmpfs can be mounted per box (root with CAP_SYS_ADMIN). */
  tmpfsQuota: boolean;
  /** Each box gets device nodes of its own in its tmpfs (mounts.ts makeDevices). */
  ownDevices: boolean;
  /** How it is mounted and unmounted. */
  mounts: Pick<Mounts, 'mountTmpfs' | 'unmountLazy'>;
  driverHostDir: string;
  /** The entries of the spec's /etc allow-list that exist on this host. */
  hostEtc: readonly string[];
  /** The copies every sandbox overlays (system-tree.ts); null: the host's files are bound. */
  system: SystemTree | null;
  /** Server memory for large transient work (see budget.ts). */
  budget: MemoryBudget;
  /** Where a box says that its interpreter fell back to bubblewrap. */
  log?: Pick<Logger, 'warn' | 'debug'>;
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
  /** Server-only folder of artifact copies (files/artifacts.ts): on the box's own disk. */
  readonly artifactsDir: string;
  readonly artifacts: ArtifactStore;
  /** Reached through runPython() only: the box owns its lifetime (start, restart, kill). */
  private interpreter: Interpreter;
  private readonly bash = new Set<CommandProcess>();
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
    // (the same key as the artifact scan's: one piece of the session's file work at a time)
    this.fs.useThreads(scanPool(), this.workspaceDir);
    this.artifactsDir = `${this.dir}/artifacts`;
    const c = deps.config;
    this.artifacts = new ArtifactStore(
      this.workspaceDir,
      this.artifactsDir,
      this.fs,
      {
        maxFiles: c.artifactsMaxFiles,
        maxBytes: c.artifactsMaxBytes,
        scanMaxEntries: c.artifactsScanMaxEntries,
        keepMax: c.artifactsKeepMax,
        // At most a quarter of the session's disk: copies never crowd out the workspace.
        keepBytes: Math.min(c.artifactsKeepMb, c.workspaceMb / 4) * MiB,
      },
      mimeOf,
    );
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

  /** The sandbox of every process of this box: its interpreter and each bash command. */
  private spec(role: SandboxRole): SandboxSpec {
    const folders = {
      workspaceDir: this.workspaceDir,
      tmpDir: this.tmpDir,
      driverDir: this.deps.driverHostDir,
      libDir: this.libDir,
      shmBytes: this.deps.config.shmMb * MiB,
      ptysMax: this.deps.config.sessionPtysMax,
      system: this.deps.system,
      devicesDir: this.deps.tmpfsQuota && this.deps.ownDevices ? `${this.dir}/devices` : null,
    };
    return sandboxSpec(folders, sandboxRlimits(this.limits), role, this.deps.hostEtc);
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

  usable(): boolean {
    return this.interpreter.alive;
  }

  async promote(): Promise<void> {
    if (!this.background || this.uid === undefined) return;
    this.background = false;
    // Only the interpreter's sandbox exists yet (no bash command has run in a pooled box).
    await renice(await this.interpreter.hostPids(), 0);
  }

  private newInterpreter(): Interpreter {
    const c = this.deps.config;
    const nice = this.background ? 10 : undefined;
    const zygote = this.bwrapOnly ? null : this.deps.zygote;
    const spec = () => this.spec({ kind: 'interpreter', preload: preloadList(c) });
    const startProcess = zygote
      ? // forked from the template, which has the modules imported already
        () => zygote.spawn({ spec: spec(), uid: this.uid, gid: this.gid, cgroupProcsFiles: this.cgroup?.procsFiles, nice })
      : () =>
          this.deps.launcher.launch({
            spec: spec(),
            identity: { uid: this.uid, gid: this.gid },
            cgroupProcsFiles: this.cgroup?.procsFiles,
            nice,
            argv: [c.pythonPath, '-I', '-u', '-X', 'faulthandler', `${SANDBOX_PATHS.driver}/driver.py`],
            controlChannel: true,
          });
    return new Interpreter({
      startProcess,
      wasOomKilled: () => this.consumeOomKill(),
      interruptGraceMs: c.interruptGraceMs,
      startTimeoutMs: 60_000,
      describeLimit: (kind) => describeLimit(kind, c),
    });
  }

  /** Makes the folders and starts the interpreter; resolves when it is ready. */
  async prepare(): Promise<void> {
    const { config } = this.deps;
    await fsp.mkdir(this.dir, { mode: 0o711 });
    if (this.deps.tmpfsQuota) {
      // (set first: a mount that took effect although its answer was lost is still undone)
      this.mounted = true;
      await this.deps.mounts.mountTmpfs(this.dir, config.workspaceMb, '0711', this.deps.ownDevices);
    }
    for (const d of [this.workspaceDir, this.tmpDir]) {
      await fsp.mkdir(d, { mode: 0o700 });
      if (this.uid !== undefined && this.gid !== undefined) await fsp.chown(d, this.uid, this.gid);
    }
    await fsp.chmod(this.tmpDir, 0o700);
    await fsp.mkdir(this.libDir, { mode: 0o755 });
    await fsp.mkdir(this.stagingDir, { mode: 0o700 });
    await fsp.mkdir(this.undoDir, { mode: 0o700 });
    await fsp.mkdir(this.artifactsDir, { mode: 0o700 });
    if (this.deps.cgroups) {
      this.cgroup = await this.deps.cgroups.create(this.name, sessionCgroupLimits(config));
      this.interpreter = this.newInterpreter();
    }
    await this.startInterpreter();
  }

  /** The template could not make this box's interpreter: bubblewrap makes it from then on. */
  private bwrapOnly = false;

  /** Starts `interpreter`. A template spawn that fails (a host mount its builder refuses,
   * the template gone) is tried again in bubblewrap, the same sandbox, and the box stays
   * with bubblewrap; the log says why. */
  private async startInterpreter(attempt = 0): Promise<void> {
    const oomKillsBefore = this.cgroup?.oomKills() ?? 0;
    try {
      await this.interpreter.start();
    } catch (e) {
      // The template's sandbox init ended without its report (the cause seen under load was
      // found and fixed: 372c2d2), or passed its deadline: tried once more before the call
      // is answered busy.
      if (attempt === 0 && !this.destroyed && /the spawner did not answer/.test(String((e as Error)?.message ?? e))) {
        this.deps.log?.warn({ box: this.name, err: String((e as Error)?.message ?? e).slice(0, 500) }, "the template's spawner did not answer; starting the interpreter once more");
        await this.interpreter.kill();
        this.interpreter = this.newInterpreter();
        return this.startInterpreter(1);
      }
      throwIfOutOfTasks(e);
      // Killed for memory while it started (its own limit, or the sessions' pool another
      // session filled): not the template's fault, so the box keeps the template, and the
      // client is told to retry rather than that the server failed (red team C).
      if ((this.cgroup?.oomKills() ?? 0) > oomKillsBefore) {
        this.oomSeen = this.cgroup?.oomKills() ?? this.oomSeen;
        throw new SandboxError(
          'SBX_SERVER_BUSY',
          "the session's sandbox could not be started: it was killed for lack of memory while it started (the host's or the sessions' memory is short); try again later",
          {
            cause: e,
            headers: { 'retry-after': '5' },
          },
        );
      }
      if (!this.deps.zygote || this.bwrapOnly || this.destroyed) throw e;
      this.bwrapOnly = true;
      this.deps.log?.warn({ box: this.name, err: String((e as Error)?.message ?? e).slice(0, 1000) }, 'the template could not start an interpreter; this session uses bubblewrap');
      await this.interpreter.kill();
      this.interpreter = this.newInterpreter();
      await this.interpreter.start().catch((e2: unknown) => throwIfOutOfTasks(e2, e2));
    }
  }

  private restarting: Promise<void> | null = null;

  /** Starts a fresh interpreter after a crash, a kill or a limit (variables are gone);
   * concurrent callers share one restart. */
  private restartInterpreter(): Promise<void> {
    if (this.restarting) return this.restarting;
    const run = async () => {
      await this.interpreter.kill();
      if (this.destroyed) throw new SandboxError('SBX_SESSION_NOT_FOUND', 'session is gone');
      this.interpreter = this.newInterpreter();
      await this.startInterpreter();
    };
    this.restarting = run().finally(() => {
      this.restarting = null;
    });
    return this.restarting;
  }

  /** Waits for a restart under way (after a loss already reported to the caller that
   * saw it), or makes one if the interpreter died between calls; true in that case
   * only: the state was lost and nobody has been told yet. */
  private async ensureInterpreter(): Promise<boolean> {
    if (this.restarting) {
      await this.restarting;
      return false;
    }
    if (this.interpreter.alive) return false;
    await this.restartInterpreter();
    return true;
  }

  /**
   * Runs one cell in the session's interpreter; `signal` (the client left) interrupts it
   * as a timeout would. An interpreter that died since the last call is replaced first,
   * and the outcome says its state was lost; one that dies during the call (or is killed
   * for it) is replaced in the background, ready for the next call.
   */
  async runPython(code: string, timeoutMs: number, maxOutputBytes: number, opts: Pick<ExecRequest, 'onToolCall' | 'signal' | 'onOutput' | 'spill'> = {}): Promise<ExecOutcome> {
    if (this.destroyed) throw new SandboxError('SBX_SESSION_NOT_FOUND', 'session is gone');
    const diedWhileIdle = await this.ensureInterpreter();
    const outcome = await this.interpreter.exec({ code, timeoutMs, maxOutputBytes, onToolCall: opts.onToolCall, signal: opts.signal, onOutput: opts.onOutput, spill: opts.spill });
    if (outcome.stateLost) this.restartInterpreter().catch(() => {});
    if (diedWhileIdle) {
      outcome.notes.unshift('runner: the interpreter had stopped since the last call; it was restarted and its state was lost');
      outcome.stateLost = true;
    }
    return outcome;
  }

  /** Runs one command; `signal` (the client left) kills it as a timeout would. It starts
   * in the sandbox of the session's interpreter when the command template can enter it
   * (a pid namespace of the session's commands, emptied at its end: every process it
   * starts dies with it), otherwise in a
   * bubblewrap sandbox of its own; either is built from the box's spec. `onOutput` is told
   * of the output it keeps as it comes (streaming); `spill` saves a stream past the cap. */
  async runBash(
    command: string,
    timeoutMs: number,
    maxOutputBytes: number,
    signal?: AbortSignal,
    onOutput?: OutputListener,
    spill?: { stdout: OutputSpill; stderr: OutputSpill },
  ): Promise<BashOutcome> {
    if (this.destroyed) throw new SandboxError('SBX_SESSION_NOT_FOUND', 'session is gone');
    const started = performance.now();
    const stdout = new CappedBuffer(maxOutputBytes, spill?.stdout);
    const stderr = new CappedBuffer(maxOutputBytes, spill?.stderr);
    let timedOut = false;
    let abandoned = false;
    let overflowed = false;
    let current: CommandProcess | null = null;
    let wake = () => {};
    const timer = setTimeout(() => {
      timedOut = true;
      wake();
      void current?.kill();
    }, timeoutMs);
    // Every byte a command writes is read here (head, tail ring, spill file), on the
    // server's CPU, not the session's: past SANDBOX_BASH_OUTPUT_READ_MAX_MB the command is
    // killed (red team: `cat /dev/zero` cost a server core for the whole timeout).
    const readMax = this.deps.config.bashOutputReadMaxMb * 1024 * 1024;
    const checkVolume = () => {
      if (overflowed || stdout.total + stderr.total <= readMax) return;
      overflowed = true;
      wake();
      void current?.kill();
    };
    const onAbort = () => {
      abandoned = true;
      wake();
      void current?.kill();
    };
    if (signal?.aborted) onAbort();
    else signal?.addEventListener('abort', onAbort, { once: true });
    let info: ExitInfo = { exitCode: 127, signal: null };
    let refused = false;
    // An interpreter being restarted (after a crash or a limit) cannot be joined until its
    // sandbox is built, and while it lives a command is never sent to bubblewrap instead:
    // wait for the restart, within this call's time.
    if (this.restarting && this.deps.commands && !this.bwrapOnly && !timedOut && !abandoned) {
      await Promise.race([this.restarting.catch(() => {}), new Promise<void>((r) => (wake = r))]);
    }
    for (const viaTemplate of this.deps.commands && !this.bwrapOnly ? [true, false] : [false]) {
      const proc = this.startCommand(command, viaTemplate);
      if (!proc) continue;
      current = proc;
      this.bash.add(proc);
      if (timedOut || abandoned || overflowed) void proc.kill();
      if (onOutput) {
        const pass = (buf: CappedBuffer, name: 'stdout' | 'stderr') => (c: Buffer) => {
          const kept = buf.push(c);
          if (kept > 0) onOutput(name, c.subarray(0, kept));
          checkVolume();
        };
        proc.stdout.on('data', pass(stdout, 'stdout'));
        proc.stderr.on('data', pass(stderr, 'stderr'));
      } else {
        proc.stdout.on('data', (c: Buffer) => {
          stdout.push(c);
          checkVolume();
        });
        proc.stderr.on('data', (c: Buffer) => {
          stderr.push(c);
          checkVolume();
        });
      }
      info = await proc.exited;
      // The pid namespace died with bash, so every writer is gone: the pipes end at once.
      await Promise.all([ended(proc.stdout), ended(proc.stderr)]);
      proc.destroyStreams();
      this.bash.delete(proc);
      if (!(proc instanceof ZygoteCommand && proc.failedToStart) || timedOut || abandoned || overflowed || this.destroyed) break;
      // Not in bubblewrap while the interpreter lives: that sandbox's devpts would be a
      // second one beside the interpreter's, and a pty master passed out of it (over a
      // socket in /workspace) keeps it, capped anew, after the command ended; the
      // session's pty cap must hold whatever its code does (docs/threat-model.md,
      // "Host-wide kernel resources", ptys). (A devpts with max=0 is no way out: the
      // kernel then allows any number.)
      if (this.interpreter.sandboxInit()) {
        refused = true;
        this.deps.log?.warn({ box: this.name, err: proc.failure.slice(0, 500) }, "the command template could not start a command in the interpreter's sandbox; it did not run");
        break;
      }
      this.deps.log?.debug({ box: this.name, err: proc.failure.slice(0, 500) }, 'the command template could not start a command; it runs in bubblewrap');
    }
    clearTimeout(timer);
    signal?.removeEventListener('abort', onAbort);
    const notes: string[] = [];
    let limit: LimitKind | null = null;
    let returnCode = info.exitCode;
    if (refused && !timedOut && !abandoned) {
      returnCode = 1;
      notes.push(
        `bash: the command did not run: it could not be started in the session's sandbox (the server's log says why); the interpreter's state is kept. Try again; if this persists, restart the interpreter (e.g. run \`import os; os._exit(0)\` in Python: its state is then lost)`,
      );
    } else if (abandoned && !timedOut) {
      returnCode = -1;
      notes.push('bash: the client disconnected; the command and every process it started were killed');
    } else if (timedOut) {
      limit = 'wall_clock';
      returnCode = -1;
      notes.push(`bash: command timed out after ${fmtSeconds(timeoutMs, false)}s (wall-clock limit); the command and every process it started were killed`);
    } else if (overflowed) {
      limit = 'output_bytes';
      returnCode = -1;
      notes.push(
        `bash: a limit was reached: the command wrote more than ${this.deps.config.bashOutputReadMaxMb} MiB of output in all (SANDBOX_BASH_OUTPUT_READ_MAX_MB); the command and every process it started were killed`,
      );
    } else if (this.consumeOomKill()) {
      limit = 'memory';
      notes.push(`bash: a process was killed: ${describeLimit('memory', this.deps.config)}`);
    } else {
      limit = detectLimit(info.exitCode, stderr.text());
      if (limit) notes.push(`bash: ${describeLimit(limit, this.deps.config)}`);
    }
    return { stdout, stderr, returnCode, limit, notes, durationMs: performance.now() - started };
  }

  /** One start of a command: in the interpreter's sandbox (`viaTemplate`, null when the
   * interpreter is not up), or in bubblewrap (without ptys while the interpreter lives). */
  private startCommand(command: string, viaTemplate: boolean): CommandProcess | null {
    // A lone surrogate (valid JSON) becomes U+FFFD, as Node's spawn makes it for a bubblewrap
    // command: the command template's encoding refused it, so the command never ran.
    command = command.replace(LONE_SURROGATE, '\uFFFD');
    // A long script is read from fd 3, then fd 3 is closed so the script's own processes
    // do not inherit it. So is one with a NUL byte, which no argument can hold (it was
    // refused by the template, and the call said to restart the interpreter: red team);
    // bash then drops the NULs and says so, as from any file.
    const long = Buffer.byteLength(command) > ARGV_COMMAND_MAX || command.includes('\0');
    const argv = long
      ? ['/bin/bash', '--noprofile', '--norc', '-c', '__sbx_script=$(cat <&3); exec 3<&-; eval "$__sbx_script"']
      : ['/bin/bash', '--noprofile', '--norc', '-c', command];
    // In the interpreter's sandbox, a command shares its devpts. In bubblewrap, a command
    // beside a living (or starting) interpreter gets no ptys at all: a devpts of its own
    // would outlive it in the masters passed out to the interpreter (a socket in
    // /workspace), each capped anew; with no interpreter, its own devpts dies with it
    // (calls of a session run one at a time), so the session still holds one at a time
    // (docs/threat-model.md, "Host-wide kernel resources", ptys).
    const ptys = viaTemplate || !(this.interpreter.alive || this.restarting !== null);
    const spec = this.spec({ kind: 'command', ptys });
    if (viaTemplate) {
      const init = this.interpreter.sandboxInit();
      // (a living template interpreter whose init is unknown is not expected: said, since
      // its command then runs in bubblewrap, without ptys)
      if (!init && this.interpreter.alive)
        this.deps.log?.warn({ box: this.name, restarting: this.restarting !== null }, "the interpreter's sandbox init is not known; the command runs in bubblewrap");
      if (!init || !this.deps.commands) return null;
      return this.deps.commands.command({
        box: this.name,
        argv,
        spec,
        init,
        script: long ? command : undefined,
        uid: this.uid,
        gid: this.gid,
        cgroupProcsFiles: this.cgroup?.procsFiles,
      });
    }
    return this.deps.launcher.launch({
      spec,
      identity: { uid: this.uid, gid: this.gid },
      argv,
      fd3Data: long ? Buffer.from(command, 'utf8') : undefined,
      cgroupProcsFiles: this.cgroup?.procsFiles,
    });
  }

  /** The deaths of the box's sandbox inits, once stop() has sent their kills. */
  private exits: Promise<void> | null = null;
  private destroying: Promise<void> | null = null;

  /** Sends SIGKILL to every process of the box: every process in its cgroup (at once,
   * from here), and each sandbox's init (the kernel then kills the rest of that pid
   * namespace; a template interpreter's through the template). Resolves once the kills
   * are sent, not once the processes are gone (a process with a large address space
   * takes milliseconds to die): a delete answers then. Nothing starts in the box after.
   * Idempotent. */
  stop(): Promise<void> {
    if (!this.exits) {
      this.destroyed = true;
      this.cgroup?.killAll();
      this.deps.commands?.forget(this.name);
      this.exits = Promise.all([this.interpreter.kill(), ...[...this.bash].map((p) => p.kill())]).then(() => {});
    }
    return Promise.resolve();
  }

  /** stop(), then removes what is left: a process of its uid anywhere, its cgroup, its
   * tmpfs and folder; its uid is free for another box only after. Idempotent. */
  destroy(): Promise<void> {
    this.destroying ??= (async () => {
      await this.stop();
      await this.exits;
      // A process of its uid anywhere: none when its cgroup is empty (the common case, read
      // in a few microseconds); otherwise the host's process list is searched for them,
      // which costs time in proportion to every process on the host. (The devpts helper's
      // children take a box's uid outside its cgroup, for a moment while a bubblewrap
      // sandbox is set up, before any session code runs; they end by themselves.)
      if (this.uid !== undefined && this.deps.privileged && !this.cgroup?.empty()) await killUid(this.uid);
      await this.cgroup?.remove();
      if (this.mounted) await this.deps.mounts.unmountLazy(this.dir);
      await removeTree(this.dir);
      if (this.uid !== undefined) this.deps.uids.release(this.uid);
    })();
    return this.destroying;
  }
}

/**
 * A sandbox that could not start because the kernel refused a fork or clone for want of
 * tasks (EAGAIN: the session's or the server's pids cgroup, kernel.pid_max, threads-max),
 * or refused memory (ENOMEM: the sessions' memory full; test #K8 saw a template spawn's
 * move into its pids cgroup fail so), or a template spawn past its deadline (a host too loaded
 * to start it in time: under a CPU hog, healthy spawns took over 10 s), is no fault of the server's: the call answers 503
 * SBX_SERVER_BUSY with Retry-After instead of a 500 (and a template spawn that failed so
 * is not taken for a mount the template cannot build: the box does not switch to
 * bubblewrap for it, which a pool box made in such a moment did for the session that later
 * took it). Otherwise returns, or throws `rethrow` when given.
 */
function throwIfOutOfTasks(e: unknown, rethrow?: unknown): void {
  const text = String((e as Error)?.message ?? e);
  if (isOutOfTasks(text)) {
    throw new SandboxError('SBX_SERVER_BUSY', 'the host cannot start more processes now (a fork failed with EAGAIN: a process or thread limit is reached); try again later', {
      cause: e,
      headers: { 'retry-after': '5' },
    });
  }
  // (the template's spawner past its deadline: the host too loaded to start it in time, or
  // the session's own cgroups stalled; bubblewrap would fare no better)
  if (/the spawner did not answer/.test(text)) {
    throw new SandboxError('SBX_SERVER_BUSY', "the session's sandbox did not start in time (the host is busy); try again later", {
      cause: e,
      headers: { 'retry-after': '5' },
    });
  }
  if (isOutOfMemory(text)) {
    throw new SandboxError(
      'SBX_SERVER_BUSY',
      "the session's sandbox could not be started: the kernel refused it memory (ENOMEM: the host's or the sessions' memory is short); try again later",
      {
        cause: e,
        headers: { 'retry-after': '5' },
      },
    );
  }
  if (rethrow !== undefined) throw rethrow;
}

/** The limits of a box's cgroup (and, times the number of sessions, of the server's
 * parent cgroup). tmpfs pages are charged to the writer's cgroup: the memory limit
 * covers the box's disk quota and /dev/shm too. */
export function sessionCgroupLimits(config: Pick<Config, 'memoryMb' | 'workspaceMb' | 'shmMb' | 'sessionPidsMax'>): LeafLimits {
  return { memoryBytes: (config.memoryMb + config.workspaceMb + config.shmMb) * MiB, pidsMax: config.sessionPidsMax };
}

/**
 * The session manager's box factory: a box with a sandbox uid from `uidFor` (which
 * throws when none is free), prepared (folders made, interpreter running). A box that
 * fails to prepare is destroyed before the error is passed on.
 */
export function boxFactory(deps: BoxDeps, uidFor: () => { uid?: number; gid?: number }): () => Promise<Box> {
  return async () => {
    let ids: { uid?: number; gid?: number };
    try {
      ids = uidFor();
    } catch {
      // Every sandbox uid is still held (sessions being destroyed): try again shortly.
      throw new SandboxError('SBX_AT_CAPACITY', 'no sandbox identity is free yet', { headers: { 'retry-after': '1' } });
    }
    const box = new Box(deps, ids.uid, ids.gid);
    try {
      await box.prepare();
      return box;
    } catch (e) {
      await box.destroy().catch(() => {});
      throw e;
    }
  };
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

/** What runBash needs of a started command, however it was started. */
type CommandProcess = Pick<InterpreterProcess, 'stdout' | 'stderr' | 'exited' | 'kill' | 'destroyStreams'>;
