/**
 * The one place that starts a session's processes. Everything a session runs (its
 * interpreter, each bash command) goes through `launch()`: an argv, an explicit
 * minimal environment, a cwd of /workspace, pipes (real pipes, never sockets of the
 * server's network namespace: pipes.ts), and a kill that takes the whole tree.
 *
 * Process tree of one launch:
 *   node (server)
 *    └─ bwrap (outer monitor, host uid U: unprivileged, per session when we are root)
 *        └─ bwrap init = pid 1 of a fresh pid namespace (host pid reported on FD.status)
 *            └─ prlimit … -- <argv>   (pid 2; rlimits set inside the user namespace)
 * Killing init makes the kernel kill every process of the pid namespace, whatever
 * setsid/nohup/double-fork did (docs/threat-model.md, "Killing the pid-namespace init"). The outer bwrap has
 * --die-with-parent, so a SIGKILLed server takes every sandbox with it. Session-level
 * sweeps (all processes of uid U) are in sessions/, on top of this.
 *
 * Start-up of one launch: bwrap builds the sandbox and waits on FD.block; when it reports
 * its child's pid, the devpts of the sandbox is capped (devpts-cap.ts), then FD.block is
 * written and the program starts. A cap that fails kills the sandbox first.
 *
 * Known limits: without cgroups, memory is bounded per process (RLIMIT_AS), not per
 * session; see cgroups.ts for the per-session limit where a cgroup can be made.
 */
import { spawn, type ChildProcess, type SpawnOptions } from 'node:child_process';
import { closeSync, constants, openSync, promises as fsp } from 'node:fs';
import type { Socket } from 'node:net';
import { constants as osConstants } from 'node:os';
import { PassThrough, type Readable, type Writable } from 'node:stream';
import { closeChildFds, type Pipes } from './pipes.js';
import { FD, renderBwrap, type BwrapCommand } from './bwrap-args.js';
import type { DevptsCap } from './devpts-cap.js';
import type { SandboxSpec } from './spec.js';

export interface Identity {
  /** Host uid/gid the sandbox runs as; undefined: the server's own (when not root). */
  uid?: number;
  gid?: number;
}

export interface LaunchOptions {
  /** The sandbox to build (spec.ts). */
  spec: SandboxSpec;
  identity: Identity;
  argv: string[];
  /** Give the program a control channel on fds 3 (in) and 4 (out). */
  controlChannel?: boolean;
  /** Join these cgroups (their cgroup.procs files) before bwrap starts anything. */
  cgroupProcsFiles?: string[];
  /** Start every process of the sandbox at this niceness (background work: the pool). */
  nice?: number;
  /** Bytes the program can read from fd 3 (a script too long for argv); exclusive with controlChannel. */
  fd3Data?: Buffer;
}

export interface ExitInfo {
  /** Exit status as bash reports it: 128 + signal number for a signal death. */
  exitCode: number;
  signal: NodeJS.Signals | null;
}

/** The control channel of an interpreter: frames to it, frames from it. */
export interface ControlChannel {
  input: Writable;
  output: Readable;
}

/** The pid-namespace init of a template sandbox: its host pid and its start time (in
 * clock ticks since boot, /proc/<pid>/stat), which together name it even after the pid
 * is reused. */
export interface SandboxInit {
  pid: number;
  start: number;
}

/** What the interpreter client needs of a running interpreter, however it was started
 * (bubblewrap here, or forked by the template in zygote.ts). */
export interface InterpreterProcess {
  readonly stdout: Readable;
  readonly stderr: Readable;
  /** Resolves once the channel is up; null if the process ended first. */
  readonly control: Promise<ControlChannel | null>;
  readonly exited: Promise<ExitInfo>;
  readonly alive: boolean;
  hostPids(): Promise<number[]>;
  kill(): Promise<ExitInfo>;
  destroyStreams(): void;
  /** A template interpreter's init while it lives (commands join its sandbox); absent: none. */
  sandboxInit?(): SandboxInit | null;
}

/** One bubblewrap launch. Streams exist at once; the process starts once its pipes are
 * open (pipes.ts), a few filesystem calls later. */
export class SandboxedProcess implements InterpreterProcess {
  readonly stdout = new PassThrough();
  readonly stderr = new PassThrough();
  readonly control: Promise<ControlChannel | null>;
  readonly exited: Promise<ExitInfo>;
  private child: ChildProcess | null = null;
  private initPid: number | null = null;
  private done = false;
  private killWanted = false;
  private readonly servers: Socket[] = [];
  private resolveControl!: (c: ControlChannel | null) => void;
  private resolveExit!: (info: ExitInfo) => void;

  constructor() {
    this.control = new Promise((r) => (this.resolveControl = r));
    this.exited = new Promise((r) => (this.resolveExit = r));
    // (ended by destroyStreams while a pipe may still write: never an unhandled error)
    this.stdout.on('error', () => {});
    this.stderr.on('error', () => {});
  }

  /** @internal Launcher.launch: opens the pipes, spawns, wires the streams. */
  async start(
    pipes: Pipes,
    argv: string[],
    spawnOptions: SpawnOptions,
    bwrapFds: { fd: number; data: Buffer | string }[],
    opts: LaunchOptions,
    devpts: { cap: DevptsCap; limit: NonNullable<BwrapCommand['devpts']> } | null,
  ): Promise<void> {
    const ctl = opts.controlChannel === true;
    const childFds: number[] = [];
    // Each pipe is ours to close from the moment it is open (a later one may fail).
    const take = <P extends { childFd: number; server: Socket }>(p: P): P => {
      p.server.on('error', () => {});
      this.servers.push(p.server);
      childFds.push(p.childFd);
      return p;
    };
    let child: ChildProcess;
    let stdinFd: number | undefined;
    try {
      const out = take(await pipes.out());
      const err = take(await pipes.out());
      const fd3 = ctl || opts.fd3Data ? take(await pipes.in()) : null;
      const fd4 = ctl ? take(await pipes.out()) : null;
      if (this.killWanted) throw new Error('killed before it started');
      // (stdin: the box's own null device where it has one, not the host's /dev/null, whose
      // inode the program and bwrap's init would hold: a lock on it was seen host-wide)
      const dev = opts.spec.mounts.find((m) => m.op === 'dev');
      if (dev?.op === 'dev' && dev.nodes !== null) stdinFd = openSync(`${dev.nodes}/null`, constants.O_RDONLY | constants.O_NOFOLLOW);
      const stdio: (number | 'pipe' | 'ignore')[] = [stdinFd ?? 'ignore', out.childFd, err.childFd, fd3?.childFd ?? 'ignore', fd4?.childFd ?? 'ignore', 'pipe', 'pipe', 'pipe'];
      for (const d of bwrapFds) stdio[d.fd] = 'pipe';
      if (devpts) stdio[FD.block] = 'pipe';
      const [file, ...args] = argv;
      child = spawn(file!, args, { ...spawnOptions, stdio });
      this.child = child;
      out.server.pipe(this.stdout);
      err.server.pipe(this.stderr);
      if (fd3 && !ctl && opts.fd3Data) fd3.server.end(opts.fd3Data);
      this.resolveControl(fd3 && fd4 && ctl ? { input: fd3.server, output: fd4.server } : null);
    } catch (e) {
      closeChildFds(childFds);
      if (stdinFd !== undefined) closeSync(stdinFd);
      for (const s of this.servers) s.destroy();
      // A kill that came first is a kill, not a failure to start.
      if (!this.killWanted) this.stderr.write(`could not start the sandbox: ${String((e as Error)?.message ?? e)}\n`);
      this.stdout.end();
      this.stderr.end();
      this.finish(this.killWanted ? { exitCode: 137, signal: 'SIGKILL' } : { exitCode: 127, signal: null });
      return;
    }
    closeChildFds(childFds); // the child has its own copies
    if (stdinFd !== undefined) closeSync(stdinFd);
    const feed = (fd: number, data: Buffer | string) => {
      const s = child.stdio[fd] as Writable | null;
      if (!s) return;
      s.on('error', () => {});
      s.end(data);
    };
    for (const d of bwrapFds) feed(d.fd, d.data);
    let statusText = '';
    const status = (child.stdio as unknown as Readable[])[FD.status]!;
    status.setEncoding('utf8');
    status.on('data', (d: string) => {
      if (statusText.length > 4096) return;
      statusText += d;
      const m = /"child-pid":\s*(\d+)/.exec(statusText);
      if (m && this.initPid === null) {
        this.initPid = Number(m[1]);
        if (devpts) this.capDevpts(devpts.cap, devpts.limit, child);
      }
    });
    for (const s of child.stdio) s?.on('error', () => {});
    child.once('exit', (code, signal) => this.finish({ exitCode: code ?? 128 + signalNumber(signal), signal }));
    child.once('error', (e: NodeJS.ErrnoException) => {
      // (spawn EAGAIN: out of processes; the interpreter's start failure names it)
      if (!this.done && !this.stderr.writableEnded) this.stderr.write(`could not start the sandbox: spawn ${e.code ?? e.message}\n`);
      this.finish({ exitCode: 127, signal: null });
    });
  }

  /** The sandbox ended (or failed to start): a cap still under way is cancelled. */
  private readonly ended = new AbortController();

  /** Caps the sandbox's devpts while bwrap waits on FD.block, then lets it go on; a
   * sandbox whose devpts cannot be capped is killed before its program runs. */
  private capDevpts(cap: DevptsCap, limit: NonNullable<BwrapCommand['devpts']>, child: ChildProcess): void {
    const block = (child.stdio as unknown as (Writable | null | undefined)[])[FD.block] ?? null;
    block?.on('error', () => {});
    cap
      .cap(
        {
          pid: this.initPid!,
          parent: child.pid!,
          max: limit.max,
          options: limit.options,
          network: limit.network,
          ipc: limit.ipc,
          overlays: limit.overlays,
          selfBinds: limit.selfBinds,
          covers: limit.covers,
        },
        this.ended.signal,
      )
      .then(
        () => block?.end(Buffer.from([1])),
        (e: unknown) => {
          if (this.done) return;
          this.stderr.write(`could not start the sandbox: its ptys could not be capped, its network set up or its system overlaid: ${String((e as Error)?.message ?? e)}\n`);
          void this.kill();
        },
      );
  }

  private finish(info: ExitInfo): void {
    if (this.done) return;
    this.done = true;
    this.ended.abort();
    this.resolveControl(null);
    this.resolveExit(info);
  }

  get pid(): number | undefined {
    return this.child?.pid;
  }

  get alive(): boolean {
    return !this.done;
  }

  /** Host pids of the outer bwrap, the namespace init and the program (init's child). */
  async hostPids(): Promise<number[]> {
    const pids = [this.child?.pid, this.initPid].filter((p): p is number => typeof p === 'number');
    if (this.initPid !== null) {
      const children = await fsp.readFile(`/proc/${this.initPid}/task/${this.initPid}/children`, 'utf8').catch(() => '');
      for (const p of children.split(' ')) if (/^\d+$/.test(p)) pids.push(Number(p));
    }
    return pids;
  }

  /** SIGKILL the pid-namespace init (the kernel then kills every process inside) and the
   * outer bwrap. Resolves when the outer bwrap has exited. Safe to call repeatedly. */
  async kill(): Promise<ExitInfo> {
    if (!this.done) {
      if (!this.child) this.killWanted = true; // still opening its pipes: it never starts
      if (this.initPid !== null) {
        // The outer bwrap is init's parent and has not been reaped, so initPid cannot
        // have been reused by another process yet.
        try {
          process.kill(this.initPid, 'SIGKILL');
        } catch {
          /* already gone */
        }
      }
      this.child?.kill('SIGKILL');
    }
    const info = await this.exited;
    this.destroyStreams();
    return info;
  }

  /** Streams may be held open by survivors; never wait for 'close' after exit. */
  destroyStreams(): void {
    for (const s of this.servers) s.destroy();
    if (this.child) for (const s of this.child.stdio) s?.destroy();
    this.stdout.end();
    this.stderr.end();
  }
}

function signalNumber(signal: NodeJS.Signals | null): number {
  return signal === null ? 0 : ((osConstants.signals as Record<string, number>)[signal] ?? 0);
}

export interface LauncherDeps {
  seccompBpf: Buffer;
  /** Fresh pipes for each launch (never Node's socket pairs: see pipes.ts). */
  pipes: Pipes;
  /** Caps each sandbox's devpts at the spec's ptysMax (bwrap's --dev has no max=). */
  devpts: DevptsCap;
}

export class Launcher {
  constructor(private readonly deps: LauncherDeps) {}

  /** At shutdown, after every sandbox is gone. */
  async close(): Promise<void> {
    await this.deps.devpts.close();
    await this.deps.pipes.close();
  }

  launch(opts: LaunchOptions): SandboxedProcess {
    const { options, dataFds, prefix, devpts } = renderBwrap(opts.spec);
    // bwrap reads only options from --args; the command stays on its real argv.
    const command = ['--', ...prefix, ...opts.argv];
    const niced = opts.nice ? ['/usr/bin/nice', '-n', String(opts.nice)] : [];
    const bwrapArgv = [...niced, '/usr/bin/bwrap', '--args', String(FD.args), ...command];
    const { uid, gid } = opts.identity;
    let argv = bwrapArgv;
    let spawnAs: { uid?: number; gid?: number } = { uid, gid };
    if (opts.cgroupProcsFiles?.length) {
      // A one-line wrapper joins the cgroup and execs bwrap (same pid), so no process of
      // the sandbox ever runs outside it. Moving a process needs write access up to the
      // common ancestor's cgroup.procs (cgroup v2), which only we have: the wrapper runs
      // with our identity and drops to the box's uid (setpriv) just before bwrap.
      const drop = uid !== undefined && gid !== undefined ? ['/usr/bin/setpriv', `--reuid=${uid}`, `--regid=${gid}`, '--clear-groups', '--'] : [];
      const files = opts.cgroupProcsFiles;
      argv = [
        '/bin/sh',
        '-c',
        `for f in ${files.map((_, i) => `"$${i + 1}"`).join(' ')}; do echo $$ > "$f" || exit 1; done; shift ${files.length}; exec "$@"`,
        'sh',
        ...files,
        ...drop,
        ...bwrapArgv,
      ];
      spawnAs = {};
    }
    const proc = new SandboxedProcess();
    const bwrapFds = [
      { fd: FD.args, data: options.map((a) => `${a}\0`).join('') },
      { fd: FD.seccomp, data: this.deps.seccompBpf },
      ...dataFds.map((d) => ({ fd: d.fd, data: d.content })),
    ];
    // bwrap's own environment is what /proc/1/environ shows inside: keep it minimal.
    void proc.start(
      this.deps.pipes,
      argv,
      { env: { PATH: '/usr/bin:/bin' }, cwd: '/', ...spawnAs, windowsHide: true },
      bwrapFds,
      opts,
      devpts ? { cap: this.deps.devpts, limit: devpts } : null,
    );
    return proc;
  }
}
