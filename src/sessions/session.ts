/**
 * One session: its handle fields, its box, its undo history and registered tools, and
 * the queue that runs its calls one at a time (outputs never mix). At most `queueMax`
 * calls wait behind the running one; past that a call is refused with 429.
 */
import { randomHex } from '../ids.js';
import { SandboxError } from '../errors.js';
import { UndoHistory } from '../tools/text-editor.js';
import type { Box } from './box.js';

export interface ToolRegistration {
  callbackUrl: string;
  token: string;
  names: Set<string>;
  timeoutSeconds: number;
}

export interface SessionHandle {
  session_id: string;
  created_at: number;
  last_activity_at: number;
  idle_timeout_seconds: number;
  max_lifetime_seconds: number;
}

/** `sbx_<replica>_<24 hex>`: 96 random bits, and the name of the replica that holds the
 * session, so a proxy can route by id (deploy/nginx). */
export function newSessionId(replica: string): string {
  return `sbx_${replica}_${randomHex(12)}`;
}

/** A DNS label: what a replica name may be (a StatefulSet pod's name is one). */
export const REPLICA_NAME = /^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$/;

/** SANDBOX_REPLICA_ID, or the host name made a DNS label (its first label, lower case,
 * other characters as '-'); `local` if nothing is left. */
export function replicaName(setting: string, hostname: string): string {
  if (setting !== '') return setting;
  const label = (hostname.split('.')[0] ?? '')
    .toLowerCase()
    .replace(/[^a-z0-9-]+/g, '-')
    .replace(/^-+|-+$/g, '')
    .slice(0, 63)
    .replace(/-+$/, '');
  return label === '' ? 'local' : label;
}

/** What a session and its manager need of a box: Box (box.ts) on a server; a fake in the
 * manager's unit tests. */
export interface SessionBox {
  readonly undoDir: string;
  readonly undoMaxBytes: number;
  /** Normal priority from now on (a pooled box starts in the background). */
  promote(): Promise<void>;
  /** False once a pooled box's interpreter has died while it waited (the template died,
   * or the kernel killed it): such a box is not given to a new session. */
  usable(): boolean;
  /** Sends SIGKILL to every process of the box; resolves once each is sent (a delete
   * answers then). Idempotent. */
  stop(): Promise<void>;
  /** stop(), then removes what is left (mounts, folder, cgroup, its uid). Idempotent. */
  destroy(): Promise<void>;
}

/** A session's file requests (downloads, listings, upload commits) running at once, at
 * most; more wait their turn, FILE_REQUEST_WAIT_MS and FILE_REQUESTS_WAITING_MAX at most. */
export const FILE_REQUESTS_PER_SESSION = 2;
export const FILE_REQUEST_WAIT_MS = 30_000;
export const FILE_REQUESTS_WAITING_MAX = 64;

export class Session<B extends SessionBox = Box> {
  readonly createdAt: number;
  lastActivityAt: number;
  /** The text editor's undo history: on disk in the box's own folder, capped by SANDBOX_EDITOR_UNDO_MB. */
  readonly undo: UndoHistory;
  tools: ToolRegistration | null = null;
  private tail: Promise<unknown> = Promise.resolve();
  private queued = 0;
  private active = 0;
  closed = false;
  private readonly endedController = new AbortController();

  constructor(
    readonly id: string,
    readonly box: B,
    readonly idleTimeoutSeconds: number,
    readonly maxLifetimeSeconds: number,
    /** The clock of createdAt and lastActivityAt, in seconds (the manager's). */
    private readonly nowSeconds: () => number = () => Date.now() / 1000,
    /** Told +1 when a call of this session starts running and -1 when it ends (the
     * manager counts the calls running on the server). */
    private readonly onRunning?: (delta: 1 | -1) => void,
  ) {
    this.createdAt = nowSeconds();
    this.lastActivityAt = this.createdAt;
    this.undo = new UndoHistory({ dir: box.undoDir, maxBytes: box.undoMaxBytes });
  }

  /** Aborts once the session is closed (deleted, reaped, the server stopping): work done
   * for its calls outside its sandbox (the editor's worker threads) stops with it. */
  get ended(): AbortSignal {
    return this.endedController.signal;
  }

  /** Out of the API from now on: calls refuse, and `ended` aborts. */
  close(): void {
    this.closed = true;
    this.endedController.abort(new Error('the session is gone'));
  }

  touch(): void {
    this.lastActivityAt = this.nowSeconds();
  }

  get busy(): boolean {
    return this.active > 0 || this.queued > 0;
  }

  handle(): SessionHandle {
    return {
      session_id: this.id,
      created_at: this.createdAt,
      last_activity_at: this.lastActivityAt,
      idle_timeout_seconds: this.idleTimeoutSeconds,
      max_lifetime_seconds: this.maxLifetimeSeconds,
    };
  }

  /** Reclaim when idle too long or too old. A running call counts as activity. */
  expired(nowSeconds: number): boolean {
    if (nowSeconds - this.createdAt > this.maxLifetimeSeconds) return true;
    return !this.busy && nowSeconds - this.lastActivityAt > this.idleTimeoutSeconds;
  }

  /** Calls waiting behind the running one. */
  get queuedCalls(): number {
    return this.queued;
  }

  /** Runs fn after every call queued before it; refuses past the queue bound. A call
   * whose `signal` aborts while it waits leaves the queue at once (its slot is free). */
  serialize<T>(queueMax: number, fn: () => Promise<T>, signal?: AbortSignal): Promise<T> {
    if (this.closed) return Promise.reject(new SandboxError('SBX_SESSION_NOT_FOUND', `session not found: ${this.id}`));
    if (signal?.aborted) return Promise.reject(new SandboxError('SBX_BAD_REQUEST', 'the client disconnected before the call started'));
    if (this.active + this.queued > queueMax) {
      return Promise.reject(
        new SandboxError(
          'SBX_SESSION_BUSY',
          `session ${this.id} already has ${this.active + this.queued} calls running or waiting (SANDBOX_EXEC_QUEUE_MAX=${queueMax}); retry when one finishes`,
          { headers: { 'retry-after': '1' } },
        ),
      );
    }
    // Nothing ahead of it: the call starts at once and never waits, so it needs no way out
    // of the queue (the common case: no listener, no race).
    const waits = signal !== undefined && this.active + this.queued > 0;
    this.queued++;
    let left = false;
    let onAbort: (() => void) | undefined;
    const abandoned = !waits
      ? null
      : new Promise<never>((_resolve, reject) => {
          onAbort = () => {
            if (left) return;
            left = true;
            this.queued--;
            reject(new SandboxError('SBX_BAD_REQUEST', 'the client disconnected before the call started'));
          };
          signal?.addEventListener('abort', onAbort, { once: true });
        });
    abandoned?.catch(() => {});
    const run = async (): Promise<T> => {
      if (onAbort) signal?.removeEventListener('abort', onAbort);
      if (left) throw new SandboxError('SBX_BAD_REQUEST', 'the client disconnected before the call started');
      left = true;
      this.queued--;
      this.active++;
      this.onRunning?.(1);
      try {
        if (this.closed) throw new SandboxError('SBX_SESSION_NOT_FOUND', `session not found: ${this.id}`);
        return await fn();
      } finally {
        this.active--;
        this.onRunning?.(-1);
        this.touch();
      }
    };
    const result = this.tail.then(run, run);
    this.tail = result.catch(() => {});
    return abandoned ? Promise.race([result, abandoned]) : result;
  }

  /** The error for a session that is gone (deleted, reaped, shut down). */
  gone(cause?: unknown): SandboxError {
    return new SandboxError('SBX_SESSION_NOT_FOUND', `session not found: ${this.id}`, { cause });
  }

  /**
   * Runs an operation on the session's box (a file, a register, a call). If the session
   * was deleted, reaped or shut down by the time it settles, its outcome, success or
   * failure (its folder gone, its process killed), is reported as the session being gone
   * (404), never as a server failure.
   */
  /** File requests of this session running now, and those waiting for a place (fileRequest). */
  private fileRequests = 0;
  private readonly fileWaiters: (() => void)[] = [];

  /**
   * Runs one of the session's file requests (a download's open, a listing, an upload's
   * commit): at most FILE_REQUESTS_PER_SESSION at once; the next ones wait their turn (up to
   * FILE_REQUEST_WAIT_MS, FILE_REQUESTS_WAITING_MAX of them; past that SBX_SESSION_BUSY,
   * 429). Their calls wait on libuv's thread pool, which all sessions share, and the
   * session's own code can make each of them wait there for as long as it likes by holding
   * its folders' locks (fifth red team of 2026-12-03: 24 parallel downloads of one such
   * session held all 16 threads, and every other session's downloads, listings and uploads
   * waited 17 s). A waiting request holds no thread.
   */
  async fileRequest<T>(fn: () => Promise<T>): Promise<T> {
    if (this.fileRequests >= FILE_REQUESTS_PER_SESSION) {
      const busy = () =>
        new SandboxError('SBX_SESSION_BUSY', `this session's file requests are busy (${FILE_REQUESTS_PER_SESSION} at once); try again`, { headers: { 'retry-after': '1' } });
      if (this.fileWaiters.length >= FILE_REQUESTS_WAITING_MAX) throw busy();
      const placed = await new Promise<boolean>((resolve) => {
        const turn = () => {
          clearTimeout(timer);
          resolve(true);
        };
        const timer = setTimeout(() => {
          const at = this.fileWaiters.indexOf(turn);
          if (at >= 0) this.fileWaiters.splice(at, 1);
          resolve(false);
        }, FILE_REQUEST_WAIT_MS);
        this.fileWaiters.push(turn);
      });
      if (!placed) throw busy();
      // (a request that ended handed its place to this one: the count is unchanged)
    } else {
      this.fileRequests++;
    }
    try {
      return await this.guard(fn);
    } finally {
      const next = this.fileWaiters.shift();
      if (next) next();
      else this.fileRequests--;
    }
  }

  async guard<T>(fn: () => Promise<T>): Promise<T> {
    if (this.closed) throw this.gone();
    let value: T;
    try {
      value = await fn();
    } catch (e) {
      if (this.closed) throw this.gone(e);
      throw e;
    }
    if (this.closed) throw this.gone();
    return value;
  }

  /** Resolves when every queued call has settled. */
  drained(): Promise<unknown> {
    return this.tail;
  }
}
