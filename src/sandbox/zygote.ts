/**
 * The server side of the interpreter template (sandbox-python/zygote.py): one root
 * Python process that has imported the heavy modules once and forks every session
 * interpreter, which then builds its own sandbox (same layout and protections as
 * bwrap-args.ts) before any session code runs. Forked interpreters share the imported
 * pages copy-on-write: an idle session costs a few MiB instead of the tens of MiB an
 * interpreter that imports numpy, pandas and matplotlib itself costs.
 *
 * Root only: building the namespaces and mounts of a sandbox from inside a forked
 * process needs CAP_SYS_ADMIN in the host's user namespace. Unprivileged servers start
 * each interpreter with bubblewrap instead (launcher.ts).
 *
 * Channels: the zygote's fds 3/4 carry JSON lines (spawn, kill; ready, spawned, exit).
 * Each interpreter reaches us on a Unix socket in the server's private state folder and
 * names itself with a one-time token; that socket is its control channel (frames).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, promises as fsp } from 'node:fs';
import { createServer, type Server, type Socket } from 'node:net';
import { randomBytes } from 'node:crypto';
import { PassThrough, type Readable, type Writable } from 'node:stream';
import type { Logger } from '../log.js';
import { ETC_ALLOW_LIST, GROUP, PASSWD, SANDBOX_UID, sandboxEnv, type BwrapLayout, type ResourceLimits } from './bwrap-args.js';
import type { ControlChannel, ExitInfo, InterpreterProcess } from './launcher.js';

export interface ZygoteOptions {
  python: string;
  /** Host path of sandbox-python/ (zygote.py, driver.py, probe.py). */
  driverDir: string;
  /** Private folder of the server (0700): the socket, the mount point of new roots, the zygote's home. */
  stateDir: string;
  preload: string[];
  seccompBpf: Buffer;
  log: Logger;
}

export interface ZygoteSpawn {
  layout: BwrapLayout;
  uid: number;
  gid: number;
  limits: ResourceLimits;
  env?: Record<string, string>;
  cgroupProcsFile?: string;
  nice?: number;
  /** Run sandbox-python/probe.py with these arguments instead of the driver; its output comes on the control channel. */
  probeArgs?: string[];
}

export interface ZygoteInfo {
  pid: number;
  preloaded: string[];
  preloadErrors: Record<string, string>;
}

const TOKEN_WAIT_MS = 10_000;
/** How long a kill waits for the template's exit report. */
const KILL_REPORT_MS = 15_000;
/** Importing the preload modules on a cold machine (numpy, pandas, matplotlib: a few seconds). */
const START_TIMEOUT_MS = 120_000;

/** One interpreter forked by the zygote; `pid` is its pid-namespace init (host pid). */
export class ZygoteProcess implements InterpreterProcess {
  readonly stdout = new PassThrough();
  readonly stderr = new PassThrough();
  readonly exited: Promise<ExitInfo>;
  readonly control: Promise<ControlChannel | null>;
  private resolveExit!: (info: ExitInfo) => void;
  private resolveControl!: (c: ControlChannel | null) => void;
  private initPid: number | null = null;
  private socket: Socket | null = null;
  private done = false;
  private killWanted = false;

  constructor(
    private readonly zygote: Zygote,
    readonly token: string,
    readonly spawnId: number,
  ) {
    this.exited = new Promise((r) => (this.resolveExit = r));
    this.control = new Promise((r) => (this.resolveControl = r));
    this.stdout.end();
  }

  get alive(): boolean {
    return !this.done;
  }

  /** Host pids of the namespace init and the interpreter. */
  async hostPids(): Promise<number[]> {
    if (this.initPid === null) return [];
    const pids = [this.initPid];
    const children = await fsp.readFile(`/proc/${this.initPid}/task/${this.initPid}/children`, 'utf8').catch(() => '');
    for (const p of children.split(' ')) if (/^\d+$/.test(p)) pids.push(Number(p));
    return pids;
  }

  async kill(): Promise<ExitInfo> {
    if (!this.done) {
      if (this.initPid !== null) this.zygote.killInit(this.spawnId);
      else this.killWanted = true;
      // The template reports every death it reaps; should a report never come (it is
      // stuck or gone), the caller is not held: the box's uid sweep kills what is left.
      const timer = setTimeout(() => this.ended({ exitCode: 137, signal: 'SIGKILL' }, 'no exit report from the interpreter template\n'), KILL_REPORT_MS);
      timer.unref();
      void this.exited.then(() => clearTimeout(timer));
    }
    const info = await this.exited;
    this.destroyStreams();
    return info;
  }

  destroyStreams(): void {
    this.socket?.destroy();
    this.stderr.end();
  }

  /** @internal the zygote forked our init */
  spawned(pid: number): void {
    this.initPid = pid;
    if (this.killWanted) this.zygote.killInit(this.spawnId);
  }

  /** @internal our interpreter connected */
  connected(socket: Socket): void {
    if (this.done || this.socket) {
      socket.destroy();
      return;
    }
    this.socket = socket;
    socket.on('error', () => {});
    this.resolveControl({ input: socket, output: socket });
  }

  /** @internal */
  ended(info: ExitInfo, why?: string): void {
    if (this.done) return;
    this.done = true;
    if (why) this.stderr.write(why);
    this.resolveControl(null);
    this.resolveExit(info);
  }
}

export class Zygote {
  private child: ChildProcess | null = null;
  private readonly server: Server;
  private readonly byToken = new Map<string, ZygoteProcess>();
  private readonly byId = new Map<number, ZygoteProcess>();
  private readonly byPid = new Map<number, ZygoteProcess>();
  private nextId = 1;
  private queue: string[] = [];
  private ready = false;
  private closing = false;
  private info: ZygoteInfo | null = null;
  private readonly etc = ETC_ALLOW_LIST.filter((p) => existsSync(p));
  private readonly socketPath: string;
  private readonly rootMount: string;
  private readonly home: string;
  private readyWaiters: { resolve: (i: ZygoteInfo) => void; reject: (e: Error) => void }[] = [];

  private constructor(private readonly opts: ZygoteOptions) {
    this.socketPath = `${opts.stateDir}/ctl.sock`;
    this.rootMount = `${opts.stateDir}/root`;
    this.home = `${opts.stateDir}/home`;
    this.server = createServer((s) => this.accept(s));
  }

  /** Starts the zygote and resolves once it has imported the modules. */
  private sources = { zygote: '', driver: '' };

  static async start(opts: ZygoteOptions): Promise<{ zygote: Zygote; info: ZygoteInfo }> {
    const z = new Zygote(opts);
    z.sources = { zygote: await fsp.readFile(`${opts.driverDir}/zygote.py`, 'utf8'), driver: await fsp.readFile(`${opts.driverDir}/driver.py`, 'utf8') };
    await fsp.rm(opts.stateDir, { recursive: true, force: true });
    await fsp.mkdir(opts.stateDir, { mode: 0o700 });
    for (const d of [z.rootMount, z.home, `${z.home}/tmp`, `${z.home}/mpl`]) await fsp.mkdir(d, { mode: 0o700 });
    await new Promise<void>((resolve, reject) => {
      z.server.once('error', reject);
      z.server.listen(z.socketPath, () => resolve());
    });
    await fsp.chmod(z.socketPath, 0o600);
    z.launch();
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(
        () => reject(new Error(`the interpreter template did not get ready in ${START_TIMEOUT_MS / 1000}s (importing ${opts.preload.join(', ')})`)),
        START_TIMEOUT_MS,
      );
    });
    try {
      const info = await Promise.race([z.whenReady(), timeout]);
      return { zygote: z, info };
    } catch (e) {
      await z.close();
      throw e;
    } finally {
      clearTimeout(timer);
    }
  }

  private whenReady(): Promise<ZygoteInfo> {
    if (this.ready && this.info) return Promise.resolve(this.info);
    return new Promise((resolve, reject) => this.readyWaiters.push({ resolve, reject }));
  }

  private launch(): void {
    const { python, preload, seccompBpf, log } = this.opts;
    // Relative to its working folder (the state folder): the environment block every
    // interpreter inherits (its /proc/self/environ) names no host path.
    const env = sandboxEnv({ HOME: 'home', TMPDIR: 'home/tmp', MPLCONFIGDIR: 'home/mpl', XDG_CACHE_HOME: 'home/tmp/.cache', XDG_CONFIG_HOME: 'home/tmp/.config' });
    // The source comes on stdin and is compiled under its in-sandbox name, so no host
    // path is in the template's memory (which every interpreter inherits).
    const child = spawn(python, ['-I', '-u', '-X', 'faulthandler', '-c', "import sys; exec(compile(sys.stdin.buffer.read(), '/opt/sandbox/zygote.py', 'exec'))"], {
      stdio: ['pipe', 'pipe', 'pipe', 'pipe', 'pipe'],
      env,
      cwd: this.opts.stateDir,
    });
    child.stdin!.on('error', () => {});
    child.stdin!.end(this.sources.zygote);
    this.child = child;
    this.ready = false;
    let diag = '';
    const onDiag = (d: Buffer) => {
      if (diag.length < 8192) diag += d.toString('utf8');
    };
    child.stdout!.on('data', onDiag);
    child.stderr!.on('data', onDiag);
    const input = child.stdio[3] as Writable;
    input.on('error', () => {});
    input.write(`${JSON.stringify({ op: 'init', seccomp: seccompBpf.toString('base64'), preload, driver_source: this.sources.driver })}\n`);
    let buf = '';
    (child.stdio[4] as Readable).setEncoding('utf8').on('data', (d: string) => {
      buf += d;
      // Messages are short lines; a runaway line (a defect) is dropped, never held.
      if (buf.length > 1024 * 1024 && buf.indexOf('\n') < 0) buf = '';
      let nl: number;
      while ((nl = buf.indexOf('\n')) >= 0) {
        const line = buf.slice(0, nl);
        buf = buf.slice(nl + 1);
        let msg: Record<string, unknown>;
        try {
          msg = JSON.parse(line) as Record<string, unknown>;
        } catch {
          continue;
        }
        this.onMessage(msg);
      }
    });
    child.once('exit', (code, signal) => {
      this.child = null;
      this.ready = false;
      // Every init has the zygote as parent and dies with it (PR_SET_PDEATHSIG).
      const why = 'the interpreter template exited';
      for (const p of new Set([...this.byId.values(), ...this.byPid.values(), ...this.byToken.values()])) p.ended({ exitCode: 137, signal: 'SIGKILL' }, why);
      this.byId.clear();
      this.byPid.clear();
      this.byToken.clear();
      this.queue = [];
      if (this.closing) return;
      const err = new Error(`the interpreter template exited (status ${code ?? signal}): ${diag.trim().split('\n').slice(-5).join(' | ')}`);
      log.error({ err: err.message }, 'interpreter template died; starting a new one');
      for (const w of this.readyWaiters.splice(0)) w.reject(err);
      setTimeout(() => {
        if (!this.closing) this.launch();
      }, 500).unref();
    });
  }

  private onMessage(msg: Record<string, unknown>): void {
    switch (msg.t) {
      case 'ready': {
        this.info = {
          pid: Number(msg.pid),
          preloaded: Array.isArray(msg.preloaded) ? (msg.preloaded as string[]) : [],
          preloadErrors: (msg.preload_errors as Record<string, string>) ?? {},
        };
        this.ready = true;
        for (const line of this.queue.splice(0)) this.write(line);
        for (const w of this.readyWaiters.splice(0)) w.resolve(this.info);
        return;
      }
      case 'spawned': {
        const p = this.byId.get(Number(msg.id));
        this.byId.delete(Number(msg.id));
        if (!p) return;
        const pid = Number(msg.pid);
        this.byPid.set(pid, p);
        p.spawned(pid);
        return;
      }
      case 'failed': {
        const p = this.byId.get(Number(msg.id));
        this.byId.delete(Number(msg.id));
        if (!p) return;
        this.byToken.delete(p.token);
        p.ended({ exitCode: 71, signal: null }, `could not start the sandbox: ${String(msg.error).slice(0, 500)}\n`);
        return;
      }
      case 'exit': {
        const pid = Number(msg.pid);
        const p = this.byPid.get(pid);
        this.byPid.delete(pid);
        if (!p) return;
        this.byToken.delete(p.token);
        const sig = typeof msg.signal === 'number' ? msg.signal : 0;
        p.ended(sig ? { exitCode: 128 + sig, signal: signalName(sig) } : { exitCode: Number(msg.code), signal: null });
        return;
      }
      default:
    }
  }

  private write(line: string): void {
    const input = this.child?.stdio[3] as Writable | undefined;
    if (input && !input.destroyed) input.write(line);
  }

  private send(msg: object): void {
    const line = `${JSON.stringify(msg)}\n`;
    if (this.ready) this.write(line);
    else this.queue.push(line);
  }

  /** @internal SIGKILL the namespace init of a spawn (by id: the zygote kills it only
   * while it has not reaped it, so a reused pid is never hit). */
  killInit(spawnId: number): void {
    this.send({ op: 'kill', id: spawnId });
  }

  spawn(req: ZygoteSpawn): ZygoteProcess {
    const token = randomBytes(16).toString('hex');
    const id = this.nextId++;
    const proc = new ZygoteProcess(this, token, id);
    if (this.closing) {
      proc.ended({ exitCode: 127, signal: null }, 'the server is shutting down');
      return proc;
    }
    this.byId.set(id, proc);
    this.byToken.set(token, proc);
    const l = req.limits;
    this.send({
      op: 'spawn',
      id,
      token,
      socket: this.socketPath,
      root_mount: this.rootMount,
      uid: req.uid,
      gid: req.gid,
      inner_uid: SANDBOX_UID,
      workspace_dir: req.layout.workspaceDir,
      tmp_dir: req.layout.tmpDir,
      lib_dir: req.layout.libDir,
      driver_dir: req.layout.driverDir,
      shm_bytes: req.layout.shmBytes,
      etc: this.etc,
      passwd: PASSWD,
      group: GROUP,
      env: sandboxEnv({ ...req.env, SANDBOX_PRELOAD: this.opts.preload.join(',') }),
      limits: { as: l.addressSpaceBytes, cpu: l.cpuSeconds, fsize: l.fileSizeBytes, nofile: l.openFiles, nproc: l.processes },
      cgroup_procs: req.cgroupProcsFile ?? null,
      nice: req.nice ?? 0,
      probe_args: req.probeArgs ?? null,
    });
    return proc;
  }

  private accept(socket: Socket): void {
    let buf = Buffer.alloc(0);
    const timer = setTimeout(() => socket.destroy(), TOKEN_WAIT_MS);
    socket.on('error', () => {});
    const onData = (d: Buffer) => {
      buf = Buffer.concat([buf, d]);
      const nl = buf.indexOf(10);
      if (nl < 0) {
        if (buf.length > 128) socket.destroy();
        return;
      }
      clearTimeout(timer);
      socket.off('data', onData);
      socket.pause();
      const rest = buf.subarray(nl + 1);
      if (rest.length > 0) socket.unshift(rest);
      const proc = this.byToken.get(buf.subarray(0, nl).toString('latin1'));
      if (!proc) {
        socket.destroy();
        return;
      }
      proc.connected(socket);
    };
    socket.on('data', onData);
  }

  async close(): Promise<void> {
    this.closing = true;
    this.child?.kill('SIGKILL');
    await new Promise<void>((r) => this.server.close(() => r()));
  }
}

function signalName(n: number): NodeJS.Signals | null {
  const names: Record<number, NodeJS.Signals> = { 9: 'SIGKILL', 6: 'SIGABRT', 7: 'SIGBUS', 8: 'SIGFPE', 11: 'SIGSEGV', 15: 'SIGTERM', 24: 'SIGXCPU', 25: 'SIGXFSZ', 31: 'SIGSYS' };
  return names[n] ?? null;
}
