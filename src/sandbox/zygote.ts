/**
 * The server side of the interpreter template (sandbox-python/zygote.py): one Python
 * process that has imported the heavy modules once and forks every session interpreter,
 * which then builds its own sandbox from the spec sent with the spawn (spec.ts, the same
 * description bubblewrap launches are rendered from) before any session code runs.
 * Forked interpreters share the imported pages copy-on-write: an idle session costs a
 * few MiB instead of the tens of MiB an interpreter that imports numpy, pandas and
 * matplotlib itself costs.
 *
 * Root or not: each spawn first makes a user namespace (as bubblewrap does), so the
 * template needs what bubblewrap needs (unprivileged user namespaces), no capability.
 *
 * Channels: the zygote's fds 3/4 carry JSON lines (spawn, kill; ready, spawned, exit);
 * starts are answered as they finish, in any order (by id).
 * Each interpreter reaches us on a Unix socket in the server's private state folder and
 * names itself with a one-time token; that socket is its control channel (frames).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { promises as fsp } from 'node:fs';
import { createServer, type Server, type Socket } from 'node:net';
import { randomBytes } from 'node:crypto';
import { PassThrough, type Readable, type Writable } from 'node:stream';
import type { Logger } from '../log.js';
import { SANDBOX_PATHS, sandboxEnv, type SandboxSpec } from './spec.js';
import type { ControlChannel, ExitInfo, InterpreterProcess, SandboxInit } from './launcher.js';
import type { NamedOutPipe, Pipes } from './pipes.js';

export interface ZygoteOptions {
  python: string;
  /** The file to run as `python` (the server's copy: system-tree.ts prepareProgramCopies),
   * so that a forked interpreter's /proc/self/exe is not the host's inode. */
  image?: string;
  /** Host path of sandbox-python/ (zygote.py, driver.py, probe.py). */
  driverDir: string;
  /** Private folder of the server (0711: searchable, not listable): the socket (0600), the mount point of new roots, the zygote's home (0700). */
  stateDir: string;
  preload: string[];
  seccompBpf: Buffer;
  log: Logger;
  /** 'commands': the command zygote (nothing preloaded, no driver, no socket): it starts
   * bash commands in the sandboxes of running interpreters (command()). */
  role?: 'interpreters' | 'commands';
  /** The FIFOs of commands' stdout and stderr (role 'commands'). */
  pipes?: Pipes;
  /** The address-space limit of the sandboxes it starts: the threads its preloaded math
   * libraries start with (spec.ts sandboxEnv), which every interpreter inherits. */
  addressSpaceBytes: number;
}

export interface ZygoteSpawn {
  /** The sandbox to build (spec.ts). */
  spec: SandboxSpec;
  /** Host uid/gid of the box (the server is root); undefined: the server's own. */
  uid?: number;
  gid?: number;
  cgroupProcsFiles?: string[];
  nice?: number;
  /** Run sandbox-python/probe.py with these arguments instead of the driver; its output comes on the control channel. */
  probeArgs?: string[];
}

/** A command started in the sandbox of a running interpreter of its session. */
export interface ZygoteCommandRequest {
  /** The box (its name): its commands start from one host process (zygote.py "H"). */
  box: string;
  argv: string[];
  /** Its spec (spec.ts, role 'command'): the rlimits, environment and cwd are carried out
   * for the command; the file system and namespaces are the interpreter's, built from
   * the same spec's mount list. */
  spec: SandboxSpec;
  /** The interpreter's pid-namespace init (ZygoteProcess.sandboxInit()). */
  init: SandboxInit;
  /** Bytes the command reads on fd 3 (a script too long for argv). */
  script?: string;
  uid?: number;
  gid?: number;
  cgroupProcsFiles?: string[];
}

export interface ZygoteInfo {
  pid: number;
  preloaded: string[];
  preloadErrors: Record<string, string>;
}

const TOKEN_WAIT_MS = 10_000;
/** Connections to the control socket that have not said their token yet, at most; past it
 * a new one is closed at once. A sandbox's init says its token as soon as it connects; red
 * team of 2026-12-03: a process of a box's uid that had the socket's descriptor opened
 * 19,950 silent connections, and the server, out of descriptors, answered no HTTP. */
const PENDING_MAX = 64;
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
  private initStart: number | null = null;
  private socket: Socket | null = null;
  private done = false;
  protected killWanted = false;
  /** The template said it could not start this process (nothing of it ran). */
  failedToStart = false;

  constructor(
    private readonly zygote: Zygote,
    readonly token: string,
    readonly spawnId: number,
    /** An interpreter writes only on its control channel: its stdout ends at once. */
    stdoutEnded = true,
  ) {
    this.exited = new Promise((r) => (this.resolveExit = r));
    this.control = new Promise((r) => (this.resolveControl = r));
    if (stdoutEnded) this.stdout.end();
  }

  /** Its pid-namespace init while it lives (a command of the session joins its sandbox by it). */
  sandboxInit(): SandboxInit | null {
    return !this.done && this.initPid !== null && this.initStart !== null ? { pid: this.initPid, start: this.initStart } : null;
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
  spawned(pid: number, start: number | null): void {
    this.initPid = pid;
    this.initStart = start;
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

/** A command started by the command zygote; its stdout and stderr come on FIFOs that
 * are unlinked as soon as the zygote has opened them (or failed). */
export class ZygoteCommand extends ZygoteProcess {
  private fifos: NamedOutPipe[] = [];
  /** Why the template could not start it (failedToStart). */
  failure = '';

  constructor(zygote: Zygote, spawnId: number) {
    super(zygote, '', spawnId, false);
    this.stdout.on('error', () => {});
    this.stderr.on('error', () => {});
  }

  /** @internal */
  get wantsKill(): boolean {
    return this.killWanted;
  }

  /** @internal the FIFOs of its stdout and stderr, open on our side */
  attach(stdout: NamedOutPipe, stderr: NamedOutPipe): void {
    this.fifos = [stdout, stderr];
    stdout.server.pipe(this.stdout);
    stderr.server.pipe(this.stderr);
  }

  override spawned(pid: number, start: number | null): void {
    for (const f of this.fifos) f.release();
    super.spawned(pid, start);
  }

  override ended(info: ExitInfo, why?: string): void {
    for (const f of this.fifos) f.release();
    if (this.failedToStart) {
      // nothing ran: the caller starts it another way, with nothing in its output
      this.failure = why ?? '';
      for (const f of this.fifos) f.server.destroy();
      this.stdout.end();
      this.stderr.end();
      super.ended(info);
      return;
    }
    super.ended(info, why);
  }

  override destroyStreams(): void {
    for (const f of this.fifos) {
      f.release();
      f.server.destroy();
    }
    this.stdout.end();
    this.stderr.end();
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
  private readonly socketPath: string;
  private readonly rootMount: string;
  private readonly home: string;
  private readyWaiters: { resolve: (i: ZygoteInfo) => void; reject: (e: Error) => void }[] = [];

  private constructor(private readonly opts: ZygoteOptions) {
    this.socketPath = `${opts.stateDir}/sock/ctl.sock`;
    this.rootMount = `${opts.stateDir}/root`;
    this.home = `${opts.stateDir}/home`;
    this.server = createServer((s) => this.accept(s));
  }

  /** Starts the zygote and resolves once it has imported the modules. */
  private sources = { zygote: '', network: '', driver: '' };

  static async start(opts: ZygoteOptions): Promise<{ zygote: Zygote; info: ZygoteInfo }> {
    const z = new Zygote(opts);
    const read = (name: string) => fsp.readFile(`${opts.driverDir}/${name}`, 'utf8');
    z.sources = { zygote: await read('zygote.py'), network: await read('sandbox_network.py'), driver: await read('driver.py') };
    await fsp.rm(opts.stateDir, { recursive: true, force: true });
    // Searchable (not listable) by a box's uid: a spawn changes to it before it mounts
    // the new root on rootMount; the socket and the zygote's home stay 0600/0700.
    await fsp.mkdir(opts.stateDir, { mode: 0o711 });
    await fsp.chmod(opts.stateDir, 0o711);
    await fsp.mkdir(z.rootMount, { mode: 0o755 });
    // The socket's folder is ours alone; the socket itself is open to every uid, which
    // reaches it only through the template's O_PATH descriptor (zygote.py connect_control).
    await fsp.mkdir(`${opts.stateDir}/sock`, { mode: 0o700 });
    for (const d of [z.home, `${z.home}/tmp`, `${z.home}/mpl`]) await fsp.mkdir(d, { mode: 0o700 });
    if (!z.commands) {
      await new Promise<void>((resolve, reject) => {
        z.server.once('error', reject);
        z.server.listen(z.socketPath, () => resolve());
      });
      await fsp.chmod(z.socketPath, 0o666);
    }
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
    const env = {
      ...sandboxEnv({ kind: 'command' }, this.opts.addressSpaceBytes),
      HOME: 'home',
      TMPDIR: 'home/tmp',
      MPLCONFIGDIR: 'home/mpl',
      XDG_CACHE_HOME: 'home/tmp/.cache',
      XDG_CONFIG_HOME: 'home/tmp/.config',
    };
    // The sources come on stdin and are compiled under their in-sandbox names, so no host
    // path is in the template's memory (which every interpreter inherits): first
    // sandbox_network.py (the network set-up zygote.py shares with devpts-cap.py), made the
    // module zygote.py imports by that name, then zygote.py. One line: the command line
    // shows in the sandbox (/proc/1/cmdline of a command).
    const compileAs = (file: string) => JSON.stringify(`${SANDBOX_PATHS.driver}/${file}`);
    const code = [
      'import json, sys, types',
      '_src = json.loads(sys.stdin.buffer.read())',
      "_net = sys.modules['sandbox_network'] = types.ModuleType('sandbox_network')",
      `exec(compile(_src.pop('network'), ${compileAs('sandbox_network.py')}, 'exec'), _net.__dict__)`,
      `exec(compile(_src.pop('zygote'), ${compileAs('zygote.py')}, 'exec'))`,
    ].join('; ');
    // (its role on its command line: which of the two templates a process is)
    // (argv[0] the interpreter's own name: Python finds its prefix and sys.executable there)
    const child = spawn(this.opts.image ?? python, ['-I', '-u', '-X', 'faulthandler', '-c', code, this.opts.role ?? 'interpreters'], {
      argv0: python,
      stdio: ['pipe', 'pipe', 'pipe', 'pipe', 'pipe'],
      env,
      cwd: this.opts.stateDir,
    });
    child.stdin!.on('error', () => {});
    child.stdin!.end(JSON.stringify({ network: this.sources.network, zygote: this.sources.zygote }));
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
    const init = {
      op: 'init',
      seccomp: seccompBpf.toString('base64'),
      preload: this.commands ? [] : preload,
      driver_source: this.commands ? null : this.sources.driver,
      driver_file: `${SANDBOX_PATHS.driver}/driver.py`,
      probe_file: `${SANDBOX_PATHS.driver}/probe.py`,
      socket_path: this.commands ? null : this.socketPath,
    };
    input.write(`${JSON.stringify(init)}\n`);
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
        p.spawned(pid, typeof msg.start === 'number' ? msg.start : null);
        return;
      }
      case 'failed': {
        const p = this.byId.get(Number(msg.id));
        this.byId.delete(Number(msg.id));
        if (!p) return;
        this.byToken.delete(p.token);
        p.failedToStart = true;
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
    this.send({
      op: 'spawn',
      id,
      token,
      base: this.rootMount,
      uid: req.uid ?? null,
      gid: req.gid ?? null,
      spec: req.spec,
      cgroup_procs: req.cgroupProcsFiles ?? [],
      nice: req.nice ?? 0,
      probe_args: req.probeArgs ?? null,
    });
    return proc;
  }

  /** Connections that have not said their token yet. */
  private pending = 0;

  private accept(socket: Socket): void {
    socket.on('error', () => {});
    if (this.pending >= PENDING_MAX) {
      socket.destroy();
      return;
    }
    this.pending++;
    let counted = true;
    const settle = () => {
      if (counted) this.pending--;
      counted = false;
    };
    socket.once('close', settle);
    let buf = Buffer.alloc(0);
    const timer = setTimeout(() => socket.destroy(), TOKEN_WAIT_MS);
    const onData = (d: Buffer) => {
      buf = Buffer.concat([buf, d]);
      const nl = buf.indexOf(10);
      if (nl < 0) {
        if (buf.length > 128) socket.destroy();
        return;
      }
      clearTimeout(timer);
      settle();
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

  /** Stops the template (its interpreters die with it) and removes its state folder. */
  async close(): Promise<void> {
    this.closing = true;
    const child = this.child;
    if (child && child.exitCode === null && child.signalCode === null) {
      const gone = new Promise<void>((r) => child.once('exit', () => r()));
      child.kill('SIGKILL');
      await gone;
    }
    if (this.server.listening) await new Promise<void>((r) => this.server.close(() => r()));
    await fsp.rm(this.opts.stateDir, { recursive: true, force: true }).catch(() => {});
  }

  private get commands(): boolean {
    return this.opts.role === 'commands';
  }

  /** The box is gone: its command host (if it made one) is killed. */
  forget(box: string): void {
    if (this.commands) this.send({ op: 'forget', box });
  }

  /** Starts a command in the sandbox of a running interpreter of its session (role
   * 'commands'). When the template cannot (the interpreter is gone, its sandbox cannot be
   * entered), the command ends with `failedToStart` and nothing of it ran. */
  command(req: ZygoteCommandRequest): ZygoteCommand {
    const id = this.nextId++;
    const proc = new ZygoteCommand(this, id);
    const pipes = this.opts.pipes;
    const refuse = (why: string) => {
      proc.failedToStart = true;
      proc.ended({ exitCode: 127, signal: null }, why);
    };
    if (this.closing || !this.commands || !pipes) {
      refuse('the command template is not running');
      return proc;
    }
    void (async () => {
      let fifos: NamedOutPipe[];
      try {
        fifos = await pipes.outNamedPair();
      } catch (e) {
        refuse(`no pipes: ${String((e as Error)?.message ?? e)}`);
        return;
      }
      proc.attach(fifos[0]!, fifos[1]!);
      if (proc.wantsKill || this.closing) {
        proc.ended({ exitCode: 137, signal: 'SIGKILL' });
        return;
      }
      this.byId.set(id, proc);
      this.send({
        op: 'command',
        id,
        box: req.box,
        argv: req.argv,
        spec: { rlimits: req.spec.rlimits, env: req.spec.env, cwd: req.spec.cwd },
        script: req.script ?? null,
        init: req.init,
        stdout: fifos[0]!.path,
        stderr: fifos[1]!.path,
        uid: req.uid ?? null,
        gid: req.gid ?? null,
        cgroup_procs: req.cgroupProcsFiles ?? [],
      });
    })();
    return proc;
  }
}

function signalName(n: number): NodeJS.Signals | null {
  const names: Record<number, NodeJS.Signals> = { 9: 'SIGKILL', 6: 'SIGABRT', 7: 'SIGBUS', 8: 'SIGFPE', 11: 'SIGSEGV', 15: 'SIGTERM', 24: 'SIGXCPU', 25: 'SIGXFSZ', 31: 'SIGSYS' };
  return names[n] ?? null;
}
