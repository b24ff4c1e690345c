/**
 * The one place that starts a session's processes. Everything a session runs (its
 * interpreter, each bash command) goes through `launch()`: an argv, an explicit
 * minimal environment, a cwd of /workspace, pipes, and a kill that takes the whole tree.
 *
 * Process tree of one launch:
 *   node (server)
 *    └─ bwrap (outer monitor, host uid U: unprivileged, per session when we are root)
 *        └─ bwrap init = pid 1 of a fresh pid namespace (host pid reported on FD.status)
 *            └─ prlimit … -- <argv>   (pid 2; rlimits set inside the user namespace)
 * Killing init makes the kernel kill every process of the pid namespace, whatever
 * setsid/nohup/double-fork did (sandboxing.md 2.6). The outer bwrap has
 * --die-with-parent, so a SIGKILLed server takes every sandbox with it. Session-level
 * sweeps (all processes of uid U) are in sessions/, on top of this.
 *
 * Known limits: without cgroups, memory is bounded per process (RLIMIT_AS), not per
 * session; see cgroups.ts for the per-session limit where a cgroup can be made.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, promises as fsp } from 'node:fs';
import { constants as osConstants } from 'node:os';
import type { Readable, Writable } from 'node:stream';
import { FD, GROUP, PASSWD, bwrapOptions, prlimitPrefix, sandboxEnv, ETC_ALLOW_LIST, type BwrapLayout, type ResourceLimits } from './bwrap-args.js';

export interface Identity {
  /** Host uid/gid the sandbox runs as; undefined: the server's own (when not root). */
  uid?: number;
  gid?: number;
}

export interface LaunchOptions {
  layout: BwrapLayout;
  identity: Identity;
  limits: ResourceLimits;
  argv: string[];
  env?: Record<string, string>;
  /** Give the program a control channel on fds 3 (in) and 4 (out). */
  controlChannel?: boolean;
  /** Join this cgroup (its cgroup.procs file) before bwrap starts anything. */
  cgroupProcsFile?: string;
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
}

export class SandboxedProcess implements InterpreterProcess {
  readonly stdout: Readable;
  readonly stderr: Readable;
  readonly controlIn: Writable | null;
  readonly controlOut: Readable | null;
  readonly control: Promise<ControlChannel | null>;
  readonly exited: Promise<ExitInfo>;
  private initPid: number | null = null;
  private done = false;

  constructor(
    private readonly child: ChildProcess,
    controlChannel: boolean,
  ) {
    const stdio = child.stdio;
    this.stdout = stdio[1] as Readable;
    this.stderr = stdio[2] as Readable;
    this.controlIn = controlChannel ? (stdio[3] as Writable) : null;
    this.controlOut = controlChannel ? (stdio[4] as Readable) : null;
    this.control = Promise.resolve(this.controlIn && this.controlOut ? { input: this.controlIn, output: this.controlOut } : null);
    let statusText = '';
    const status = (stdio as unknown as Readable[])[FD.status]!;
    status.setEncoding('utf8');
    status.on('data', (d: string) => {
      if (statusText.length > 4096) return;
      statusText += d;
      const m = /"child-pid":\s*(\d+)/.exec(statusText);
      if (m && this.initPid === null) this.initPid = Number(m[1]);
    });
    status.on('error', () => {});
    this.exited = new Promise((resolve) => {
      child.once('exit', (code, signal) => {
        this.done = true;
        resolve({ exitCode: code ?? 128 + signalNumber(signal), signal });
      });
      child.once('error', () => {
        this.done = true;
        resolve({ exitCode: 127, signal: null });
      });
    });
  }

  get pid(): number | undefined {
    return this.child.pid;
  }

  get alive(): boolean {
    return !this.done;
  }

  /** Host pids of the outer bwrap, the namespace init and the program (init's child). */
  async hostPids(): Promise<number[]> {
    const pids = [this.child.pid, this.initPid].filter((p): p is number => typeof p === 'number');
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
      if (this.initPid !== null) {
        // The outer bwrap is init's parent and has not been reaped, so initPid cannot
        // have been reused by another process yet.
        try {
          process.kill(this.initPid, 'SIGKILL');
        } catch {
          /* already gone */
        }
      }
      this.child.kill('SIGKILL');
    }
    const info = await this.exited;
    this.destroyStreams();
    return info;
  }

  /** Streams may be held open by survivors; never wait for 'close' after exit. */
  destroyStreams(): void {
    for (const s of this.child.stdio) s?.destroy();
  }
}

function signalNumber(signal: NodeJS.Signals | null): number {
  return signal === null ? 0 : ((osConstants.signals as Record<string, number>)[signal] ?? 0);
}

export interface LauncherDeps {
  seccompBpf: Buffer;
  driverDir: string;
}

export class Launcher {
  private readonly etc: string[];

  constructor(private readonly deps: LauncherDeps) {
    this.etc = ETC_ALLOW_LIST.filter((p) => existsSync(p));
  }

  launch(opts: LaunchOptions): SandboxedProcess {
    const env = sandboxEnv(opts.env);
    const options = bwrapOptions(opts.layout, env, this.etc);
    // bwrap reads only options from --args; the command stays on its real argv.
    const command = ['--', ...prlimitPrefix(opts.limits), ...opts.argv];
    const ctl = opts.controlChannel === true;
    const stdio: ('pipe' | 'ignore')[] = ['ignore', 'pipe', 'pipe', ctl || opts.fd3Data ? 'pipe' : 'ignore', ctl ? 'pipe' : 'ignore', 'pipe', 'pipe', 'pipe', 'pipe', 'pipe'];
    const niced = opts.nice ? ['/usr/bin/nice', '-n', String(opts.nice)] : [];
    const bwrapArgv = [...niced, '/usr/bin/bwrap', '--args', String(FD.args), ...command];
    const { uid, gid } = opts.identity;
    let argv = bwrapArgv;
    let spawnAs: { uid?: number; gid?: number } = { uid, gid };
    if (opts.cgroupProcsFile) {
      // A one-line wrapper joins the cgroup and execs bwrap (same pid), so no process of
      // the sandbox ever runs outside it. Moving a process needs write access up to the
      // common ancestor's cgroup.procs (cgroup v2), which only we have: the wrapper runs
      // with our identity and drops to the box's uid (setpriv) just before bwrap.
      const drop = uid !== undefined && gid !== undefined ? ['/usr/bin/setpriv', `--reuid=${uid}`, `--regid=${gid}`, '--clear-groups', '--'] : [];
      argv = ['/bin/sh', '-c', 'echo $$ > "$0" && exec "$@"', opts.cgroupProcsFile, ...drop, ...bwrapArgv];
      spawnAs = {};
    }
    const [file, ...args] = argv;
    const child = spawn(file!, args, {
      stdio,
      // bwrap's own environment is what /proc/1/environ shows inside: keep it minimal.
      env: { PATH: '/usr/bin:/bin' },
      cwd: '/',
      ...spawnAs,
      windowsHide: true,
    });
    const proc = new SandboxedProcess(child, ctl);
    const feed = (fd: number, data: Buffer | string) => {
      const s = child.stdio[fd] as Writable | null;
      if (!s) return;
      s.on('error', () => {});
      s.end(data);
    };
    feed(FD.args, options.map((a) => `${a}\0`).join(''));
    feed(FD.seccomp, this.deps.seccompBpf);
    feed(FD.passwd, PASSWD);
    feed(FD.group, GROUP);
    if (opts.fd3Data && !ctl) feed(3, opts.fd3Data);
    for (const s of child.stdio) s?.on('error', () => {});
    return proc;
  }
}
