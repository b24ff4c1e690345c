/**
 * A long-lived helper process on the host (a Python script of sandbox-host/) that answers
 * JSON requests, one per line, each `{id, ...}` answered by `{id, ok: true}` or
 * `{id, error}`. One per server and helper kind; started at start-up; if it ends, the
 * requests it held fail and the next request starts a new one. Requests in flight are
 * bounded by the caller (the boxes being made or removed); a line from the helper is at
 * most MAX_LINE characters, past which it is dropped.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import type { Logger } from '../log.js';

const MAX_LINE = 64 * 1024;

export class HostHelper {
  private child: ChildProcess | null = null;
  private readonly pending = new Map<number, { resolve: () => void; reject: (e: Error) => void }>();
  private nextId = 1;
  private buffer = '';
  private closed = false;

  private constructor(
    private readonly name: string,
    private readonly python: string,
    private readonly argv: readonly string[],
    private readonly log?: Pick<Logger, 'warn'>,
  ) {}

  /** Starts `python -I script ...args`; rejects if it does not run. `name` is for messages. */
  static async start(name: string, python: string, script: string, args: readonly string[] = [], log?: Pick<Logger, 'warn'>): Promise<HostHelper> {
    const helper = new HostHelper(name, python, ['-I', script, ...args], log);
    const child = helper.ensure();
    await new Promise<void>((resolve, reject) => {
      child.once('spawn', () => resolve());
      child.once('error', (e) => reject(e));
    });
    return helper;
  }

  private ensure(): ChildProcess {
    if (this.child) return this.child;
    const child = spawn(this.python, this.argv, { stdio: ['pipe', 'pipe', 'pipe'], env: { PATH: '/usr/bin:/bin' } });
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
      for (const p of failed) p.reject(new Error(`the ${this.name} helper ended (${why}) ${stderr.trim().slice(-500)}`));
      if (!this.closed) this.log?.warn({ why, stderr: stderr.trim().slice(-1000) }, `the ${this.name} helper ended; the next request starts a new one`);
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

  /** Sends `req` (an id is added); resolves on `ok`, rejects with the helper's error. On
   * `signal`, the request is dropped: `onCancel` is sent to the helper, if given. */
  request(req: Record<string, unknown>, signal?: AbortSignal, onCancel?: (id: number) => Record<string, unknown>): Promise<void> {
    if (this.closed) return Promise.reject(new Error(`the ${this.name} helper is closed`));
    if (signal?.aborted) return Promise.reject(new Error('cancelled'));
    const id = this.nextId++;
    const child = this.ensure();
    return new Promise<void>((resolve, reject) => {
      const onAbort = () => {
        if (!this.pending.delete(id)) return;
        if (onCancel) child.stdin!.write(`${JSON.stringify(onCancel(id))}\n`);
        reject(new Error('cancelled'));
      };
      signal?.addEventListener('abort', onAbort, { once: true });
      const settle =
        <T>(fn: (v: T) => void) =>
        (v: T) => {
          signal?.removeEventListener('abort', onAbort);
          fn(v);
        };
      this.pending.set(id, { resolve: settle(resolve), reject: settle(reject) });
      child.stdin!.write(`${JSON.stringify({ ...req, id })}\n`);
    });
  }

  /** At shutdown, after the last request. */
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
