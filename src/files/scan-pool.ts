/**
 * The threads the artifact scans run on (scan.ts), off the event loop. A scan needs the
 * kernel's locks on the workspace's folders, which the session's own code can hold for as
 * long as it likes (fourth red team of 2026-12-03: on the loop, one session's scan waited
 * up to 3.9 s at a time, and every session with it). Here a session whose code holds them
 * waits alone:
 *  - a session (its box: `key`) has at most one scan running; its next ones wait for it;
 *  - at most `maxThreads` threads, made when needed; a stuck scan holds one thread, so
 *    that many sessions would have to hold their folders at once to make anyone else's
 *    scans queue. A thread idle for `idleMs` ends (each holds a few MB and 4 descriptors);

 *  - a caller waits at most `waitMs` for its scan's answer, queued or running, and then
 *    gets `truncated: 'stuck'` (the call's result says its files were not looked at); the
 *    scan itself goes on, and its answer, when it comes, is dropped.
 * A scan that was given up while still queued is never started.
 */
import { Worker } from 'node:worker_threads';
import type { Scan } from './scan.js';

/** How long a call waits for its workspace's scan at most. */
export const SCAN_WAIT_MS = 5000;
/** Threads scanning at once, at most (each mostly idle: a few MB). */
export const SCAN_THREADS_MAX = 8;
/** A thread that did nothing for this long ends. */
export const SCAN_THREAD_IDLE_MS = 30_000;

/** What a thread answers (scan-worker.ts), or `stuck` when the wait passed first. */
export type ThreadAnswer = { stuck: true } | { error: { code?: string; message: string; sandbox?: boolean } } | { value: unknown };

interface Job {
  key: string;
  msg: unknown;
  done: boolean;
  timer: NodeJS.Timeout | null;
  resolve: (answer: ThreadAnswer) => void;
}

const STUCK: ThreadAnswer = { stuck: true };

export class ScanPool {
  private readonly idle: Worker[] = [];
  /** For each idle thread, its end when nothing takes it first. */
  private readonly idleTimers = new Map<Worker, NodeJS.Timeout>();
  private readonly running = new Map<Worker, Job>();
  private readonly busy = new Set<string>();
  private queue: Job[] = [];
  private threads = 0;
  private closed = false;

  constructor(
    private readonly maxThreads = SCAN_THREADS_MAX,
    private readonly waitMs = SCAN_WAIT_MS,
    private readonly script: URL = new URL('./scan-worker.js', import.meta.url),
    private readonly idleMs = SCAN_THREAD_IDLE_MS,
  ) {}

  /** The files of `dir` (see scan.ts), or none with truncated 'stuck'. */
  async scan(key: string, dir: string, maxEntries: number): Promise<Scan> {
    const a = await this.run(key, { op: 'scan', dir, maxEntries });
    if ('value' in a) {
      const v = a.value as { files: [string, string][]; truncated: Scan['truncated'] };
      return { files: new Map(v.files), truncated: v.truncated };
    }
    return { files: new Map(), truncated: 'stuck' };
  }

  /** Runs `msg` (see scan-worker.ts) on a thread, for the session `key`. */
  run(key: string, msg: unknown): Promise<ThreadAnswer> {
    return new Promise<ThreadAnswer>((resolve) => {
      const job: Job = { key, msg, done: false, timer: null, resolve };
      job.timer = setTimeout(() => this.settle(job, STUCK), this.waitMs);
      job.timer.unref();
      this.queue.push(job);
      this.pump();
    });
  }

  /** Threads made so far (for tests and /health). */
  get size(): number {
    return this.threads;
  }

  async close(): Promise<void> {
    this.closed = true;
    for (const job of this.queue) this.settle(job, STUCK);
    this.queue = [];
    const all = [...this.idle, ...this.running.keys()];
    this.idle.length = 0;
    for (const timer of this.idleTimers.values()) clearTimeout(timer);
    this.idleTimers.clear();
    await Promise.all(all.map((w) => w.terminate().catch(() => 0)));
  }

  private settle(job: Job, answer: ThreadAnswer): void {
    if (job.done) return;
    job.done = true;
    if (job.timer) clearTimeout(job.timer);
    job.resolve(answer);
  }

  private pump(): void {
    if (this.closed) return;
    // (given-up jobs go; a job whose session has a scan running waits behind it)
    this.queue = this.queue.filter((j) => !j.done);
    for (let i = 0; i < this.queue.length;) {
      const job = this.queue[i]!;
      if (this.busy.has(job.key)) {
        i++;
        continue;
      }
      const worker = this.takeIdle() ?? (this.threads < this.maxThreads ? this.spawn() : null);
      if (!worker) return;
      this.queue.splice(i, 1);
      this.busy.add(job.key);
      this.running.set(worker, job);
      worker.ref(); // (a scan under way keeps the process alive, as any pending I/O)
      worker.postMessage(job.msg);
    }
  }

  /** The thread idle the shortest (the others are the first to end). */
  private takeIdle(): Worker | null {
    const worker = this.idle.pop();
    if (!worker) return null;
    clearTimeout(this.idleTimers.get(worker));
    this.idleTimers.delete(worker);
    return worker;
  }

  private putIdle(worker: Worker): void {
    this.idle.push(worker);
    const timer = setTimeout(() => {
      this.idleTimers.delete(worker);
      const at = this.idle.indexOf(worker);
      if (at < 0) return;
      this.idle.splice(at, 1);
      // (counted until its 'exit', as any thread)
      void worker.terminate().catch(() => 0);
    }, this.idleMs);
    timer.unref();
    this.idleTimers.set(worker, timer);
  }

  private spawn(): Worker {
    const worker = new Worker(this.script);
    this.threads++;
    worker.on('message', (m: ThreadAnswer) => {
      const job = this.running.get(worker);
      if (!job) return;
      this.running.delete(worker);
      this.busy.delete(job.key);
      worker.unref();
      this.putIdle(worker);
      this.settle(job, m);
      this.pump();
    });
    const gone = () => {
      const job = this.running.get(worker);
      this.running.delete(worker);
      const at = this.idle.indexOf(worker);
      if (at >= 0) this.idle.splice(at, 1);
      clearTimeout(this.idleTimers.get(worker));
      this.idleTimers.delete(worker);
      if (job) {
        this.busy.delete(job.key);
        this.settle(job, { error: { message: 'the thread ended' } });
      }
      this.threads--;
      this.pump();
    };
    worker.once('error', () => {});
    worker.once('exit', gone);
    // (after its listeners, which would hold the process again: an idle thread never keeps
    // it alive)
    worker.unref();
    return worker;
  }
}

let shared: ScanPool | null = null;

/** The server's pool (one per process). */
export function scanPool(): ScanPool {
  return (shared ??= new ScanPool());
}
