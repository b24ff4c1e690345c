/**
 * The server side of sandbox-host/devpts-cap.py: caps the private devpts of each
 * bubblewrap sandbox at the spec's `ptysMax` (bwrap's --dev mounts it without max=, so
 * one sandbox could otherwise open ptys up to the host's kernel.pty.max, for every other
 * sandbox and the host to find none left). The template builds its devpts with max= itself.
 *
 * How a launch uses it (launcher.ts): bwrap gets --block-fd, builds the whole sandbox and
 * waits on that descriptor before it loads the seccomp filter and runs the program; once
 * bwrap reports its child's pid, cap() asks the helper to reconfigure that sandbox's
 * devpts (from inside the sandbox's own user and mount namespaces, so nothing else can be
 * changed); only when it answers is the block descriptor written. A cap that fails kills
 * the sandbox before any of its code ran.
 *
 * Wire: JSON lines on the helper's stdin and stdout (see the script). One helper per
 * server, started at start-up (a helper that cannot start stops the start: bubblewrap's
 * sandbox would differ from its description); restarted at the next cap() if it dies,
 * which fails the requests it held. Requests in flight are bounded by the launches in
 * flight; a line from the helper is at most 64 KiB.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import type { Logger } from '../log.js';

const MAX_LINE = 64 * 1024;

export interface DevptsCapRequest {
  /** bwrap's child (its "child-pid"), whose mount namespace holds the devpts. */
  pid: number;
  /** The outer bwrap, the server's own child: the helper checks it is `pid`'s parent. */
  parent: number;
  max: number;
  /** The options the devpts was mounted with, which a reconfiguration must repeat. */
  options: string;
}

export class DevptsCap {
  private child: ChildProcess | null = null;
  private readonly pending = new Map<number, { resolve: () => void; reject: (e: Error) => void }>();
  private nextId = 1;
  private buffer = '';
  private closed = false;

  private constructor(
    private readonly python: string,
    private readonly script: string,
    private readonly log?: Pick<Logger, 'warn'>,
  ) {}

  /** Starts the helper; rejects if it does not run. */
  static async start(python: string, script: string, log?: Pick<Logger, 'warn'>): Promise<DevptsCap> {
    const cap = new DevptsCap(python, script, log);
    const child = cap.ensure();
    await new Promise<void>((resolve, reject) => {
      child.once('spawn', () => resolve());
      child.once('error', (e) => reject(e));
    });
    return cap;
  }

  private ensure(): ChildProcess {
    if (this.child) return this.child;
    const child = spawn(this.python, ['-I', this.script], { stdio: ['pipe', 'pipe', 'pipe'], env: { PATH: '/usr/bin:/bin' } });
    this.child = child;
    let stderr = '';
    child.stderr!.setEncoding('utf8').on('data', (d: string) => {
      if (stderr.length < MAX_LINE) stderr += d;
    });
    child.stdout!.setEncoding('utf8').on('data', (d: string) => this.read(d));
    child.stdin!.on('error', () => {});
    const gone = (why: string) => {
      if (this.child !== child) return;
      this.child = null;
      this.buffer = '';
      const failed = [...this.pending.values()];
      this.pending.clear();
      for (const p of failed) p.reject(new Error(`the devpts helper ended (${why}) ${stderr.trim().slice(-500)}`));
      if (!this.closed) this.log?.warn({ why, stderr: stderr.trim().slice(-1000) }, 'the devpts helper ended; the next bubblewrap launch starts a new one');
    };
    child.once('exit', (code, signal) => gone(`status ${code ?? signal}`));
    child.once('error', (e) => gone(String(e.message)));
    return child;
  }

  private read(data: string): void {
    this.buffer += data;
    let nl: number;
    while ((nl = this.buffer.indexOf('\n')) >= 0) {
      const line = this.buffer.slice(0, nl);
      this.buffer = this.buffer.slice(nl + 1);
      let msg: { id?: unknown; ok?: unknown; error?: unknown };
      try {
        msg = JSON.parse(line) as typeof msg;
      } catch {
        continue;
      }
      const p = typeof msg.id === 'number' ? this.pending.get(msg.id) : undefined;
      if (!p) continue;
      this.pending.delete(msg.id as number);
      if (msg.ok === true) p.resolve();
      else p.reject(new Error(String(msg.error ?? 'no answer')));
    }
    if (this.buffer.length > MAX_LINE) this.buffer = '';
  }

  /** Resolves once the devpts of `req.pid`'s sandbox holds at most `req.max` ptys;
   * rejects if it cannot be capped, or on `signal` (the sandbox ended first). */
  cap(req: DevptsCapRequest, signal: AbortSignal): Promise<void> {
    if (this.closed) return Promise.reject(new Error('the devpts helper is closed'));
    if (signal.aborted) return Promise.reject(new Error('the sandbox ended'));
    const id = this.nextId++;
    const child = this.ensure();
    return new Promise<void>((resolve, reject) => {
      const onAbort = () => {
        if (!this.pending.delete(id)) return;
        child.stdin!.write(`${JSON.stringify({ id, cancel: true })}\n`);
        reject(new Error('the sandbox ended'));
      };
      signal.addEventListener('abort', onAbort, { once: true });
      const settle =
        <T>(fn: (v: T) => void) =>
        (v: T) => {
          signal.removeEventListener('abort', onAbort);
          fn(v);
        };
      this.pending.set(id, { resolve: settle(resolve), reject: settle(reject) });
      child.stdin!.write(`${JSON.stringify({ id, ...req })}\n`);
    });
  }

  /** At shutdown, after every sandbox is gone. */
  async close(): Promise<void> {
    this.closed = true;
    const child = this.child;
    if (!child) return;
    const exited = new Promise<void>((r) => child.once('exit', () => r()));
    child.stdin!.end();
    const timer = setTimeout(() => child.kill('SIGKILL'), 2000);
    await exited;
    clearTimeout(timer);
  }
}
