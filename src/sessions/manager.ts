/**
 * Session manager: create / get / destroy / reap, capacity, the warm pool, shutdown.
 *
 * Capacity: live sessions + pooled boxes + boxes being made + boxes being cleaned up
 * never exceed maxSessions; the pool only refills into room that sessions do not use. A
 * create with no room waits for a cleanup under way, else is refused with 503 and a
 * Retry-After.
 *
 * Delete: the session leaves the map and every process of its box is sent SIGKILL before
 * destroy() resolves (the 204); unmounting, removing its folder and cgroup and freeing its
 * uid go on in the background, counted against capacity until done. A server that dies
 * meanwhile leaves folders and cgroups that its next start sweeps.
 *
 * Warm pool: boxes whose interpreter is already running (and has imported the
 * preload modules). A create takes one (each box is handed out once: it leaves the
 * pool array synchronously) and a refill starts in the background. A pooled box has
 * never run user code, so a session cannot tell it from a fresh one.
 * - Its target follows demand (pool-demand.ts): SANDBOX_WARM_POOL_SIZE at least, more
 *   while the recent create rate takes boxes faster than one refill makes them, at most
 *   SANDBOX_WARM_POOL_MAX (and never past capacity: the refill loop checks `used`).
 *   Ready boxes above a target that has fallen are destroyed at the next GC tick.
 * - Refills run in parallel up to SANDBOX_WARM_POOL_PARALLEL (default: one per CPU, at
 *   most 4), and one at a time while any session has a call running: a refill costs CPU
 *   (the sandbox's set-up, the interpreter's start), which running calls should not wait
 *   for. Pool boxes also start at nice 10 where the server may raise them back
 *   (box.ts, promote()). A create that finds the pool empty still makes its own box at
 *   once (not bounded by the refill limit): its client is waiting.
 *
 * Boxes come from a factory (main.ts passes boxFactory of box.ts; unit tests a fake that
 * starts no process), and the idle, lifetime and pool-demand clocks from `nowSeconds`.
 */
import { availableParallelism } from 'node:os';
import { warmPoolParallelism, type Config } from '../config.js';
import { SandboxError } from '../errors.js';
import type { Box } from './box.js';
import { Session, newSessionId, type SessionBox } from './session.js';
import type { Logger } from '../log.js';
import { PoolDemand } from './pool-demand.js';

export interface CreateOptions {
  idleTimeoutSeconds?: number;
  maxLifetimeSeconds?: number;
}

/** Makes a box ready for a session (its interpreter running), or throws; a box it could
 * not finish is its own to clean up. */
export type BoxFactory<B extends SessionBox = Box> = () => Promise<B>;

/** The warm pool as /health reports it: its current target (between min and max), boxes
 * ready, boxes being made for it. */
export interface PoolState {
  target: number;
  ready: number;
  starting: number;
  min: number;
  max: number;
}

export class SessionManager<B extends SessionBox = Box> {
  private readonly sessions = new Map<string, Session<B>>();
  /** Since start, for /metrics: plain numbers, read at scrape time. */
  readonly stats = { created: 0, deleted: 0, reaped: 0, poolHits: 0, poolMisses: 0 };
  private readonly pool: B[] = [];
  /** Boxes being made for the pool (refills), boxes a create is making for itself, and
   * creates waiting for a refill to land. A create only waits while there are more
   * refills under way than creates already waiting for them. */
  private refilling = 0;
  /** Creates waiting for a cleanup under way to free room; refills leave that room to them. */
  private waitingForRoom = 0;
  private creating = 0;
  private readonly waiting: { resolve: (box: B | null) => void }[] = [];
  private gcTimer: NodeJS.Timeout | null = null;
  private closing = false;
  private poolFailures = 0;
  private readonly destroying = new Set<Promise<void>>();
  private readonly demand: PoolDemand;
  /** Refills at once at most (while no call is running). */
  private readonly refillParallel: number;
  /** Calls running in sessions right now; refills go one at a time while there are any. */
  private runningCalls = 0;
  /** A refill was held back because calls were running: start it when they end. */
  private refillHeldBack = false;
  private readonly onRunning = (delta: 1 | -1): void => {
    this.runningCalls += delta;
    if (this.runningCalls === 0 && this.refillHeldBack) this.refillSoon();
  };

  constructor(
    private readonly config: Config,
    private readonly makeBox: BoxFactory<B>,
    private readonly log: Logger,
    /** Seconds, for session idle and lifetime and the pool's demand (Date.now() by default). */
    private readonly nowSeconds: () => number = () => Date.now() / 1000,
    /** This server's name in session ids (SANDBOX_REPLICA_ID, see replicaName). */
    readonly replica = 'local',
  ) {
    this.demand = new PoolDemand(config.warmPoolSize, Math.max(config.warmPoolSize, config.warmPoolMax));
    this.refillParallel = warmPoolParallelism(config, availableParallelism());
  }

  start(): void {
    this.gcTimer = setInterval(() => {
      void this.reap();
      this.balancePool();
    }, this.config.gcIntervalSeconds * 1000);
    this.gcTimer.unref();
    this.refill();
  }

  get count(): number {
    return this.sessions.size;
  }

  poolState(): PoolState {
    return { target: this.demand.target(this.nowSeconds()), ready: this.pool.length, starting: this.refilling, min: this.demand.min, max: this.demand.max };
  }

  /** Forgets the creates seen so far: the start-up warm-up's is not demand (nor counted in /metrics). */
  forgetCreates(): void {
    this.demand.forgetCreates();
    for (const k of Object.keys(this.stats) as (keyof typeof this.stats)[]) this.stats[k] = 0;
  }

  /** Resolves once no cleanup is under way (the warm-up leaves no folder behind). */
  async cleanupsDone(): Promise<void> {
    while (this.destroying.size > 0) await Promise.all([...this.destroying]);
  }

  private get used(): number {
    return this.sessions.size + this.pool.length + this.refilling + this.creating + this.destroying.size;
  }

  /** Calls queued behind a running one, across sessions (a scrape walks the sessions). */
  get queuedCalls(): number {
    let n = 0;
    for (const s of this.sessions.values()) n += s.queuedCalls;
    return n;
  }

  /** Boxes whose processes are dead but whose folders and cgroups are still being removed. */
  get cleaning(): number {
    return this.destroying.size;
  }

  private refillTimer: NodeJS.Timeout | null = null;

  private refillSoon(): void {
    if (this.refillTimer) return;
    this.refillTimer = setTimeout(() => {
      this.refillTimer = null;
      this.refill();
    }, 25);
    this.refillTimer.unref();
  }

  /** Brings the pool to its target: destroys ready boxes above a target that has fallen
   * since they were made, and starts refills up to it. */
  balancePool(): void {
    const target = this.demand.target(this.nowSeconds());
    while (!this.closing && this.pool.length > target) void this.discard(this.pool.pop()!);
    this.refill();
  }

  /** Makes a box, timed for the pool's refill estimate. */
  private async timedMakeBox(): Promise<B> {
    const started = this.nowSeconds();
    const box = await this.makeBox();
    this.demand.recordRefill(this.nowSeconds() - started);
    return box;
  }

  /** Starts refills towards the pool's target within the capacity left over by sessions,
   * at most `refillParallel` at once (one while calls are running). */
  private refill(): void {
    this.refillHeldBack = false;
    if (this.closing || this.poolFailures >= 5) return;
    const target = this.demand.target(this.nowSeconds());
    const parallel = this.runningCalls > 0 ? 1 : this.refillParallel;
    while (this.pool.length + this.refilling < target && this.used + this.waitingForRoom < this.config.maxSessions) {
      if (this.refilling >= parallel) {
        this.refillHeldBack = parallel < this.refillParallel;
        return;
      }
      this.refilling++;
      this.timedMakeBox().then(
        (box) => {
          this.refilling--;
          this.poolFailures = 0;
          const waiter = this.waiting.shift();
          if (this.closing) {
            void this.discard(box);
            waiter?.resolve(null);
            return;
          }
          if (waiter) {
            waiter.resolve(box);
            // Its session's first call comes next: the next refill waits a moment (see create).
            this.refillSoon();
          } else {
            this.pool.push(box);
            this.refill(); // the next one, if the target wants more than ran at once
          }
        },
        (e: unknown) => {
          this.refilling--;
          this.poolFailures++;
          this.waiting.shift()?.resolve(null); // that create makes its own box
          this.log.error({ err: String((e as Error)?.message ?? e) }, 'warm pool: could not prepare a sandbox');
          // Back off after repeated failures, but never give up on the pool for good.
          const backoffMs = this.poolFailures >= 5 ? 30_000 : 1000;
          setTimeout(() => {
            if (this.poolFailures >= 5) this.poolFailures = 0;
            this.refill();
          }, backoffMs).unref();
        },
      );
    }
  }

  async create(opts: CreateOptions): Promise<Session<B>> {
    this.demand.recordCreate(this.nowSeconds());
    let box: B | undefined;
    for (;;) {
      if (this.closing) throw new SandboxError('SBX_SHUTTING_DOWN', 'server is shutting down', { headers: { 'retry-after': '5' } });
      box = this.pool.shift();
      if (box && !box.usable()) {
        // Its interpreter died while it waited (red team of 2026-12-03: after the template
        // died, the pool still offered its boxes, and a new session's first call said its
        // interpreter "had stopped since the last call"): made anew by the refill.
        this.log.warn({ pool: this.pool.length }, 'warm pool: a ready sandbox had lost its interpreter; discarded');
        void this.discard(box);
        continue;
      }
      if (box) {
        this.stats.poolHits++;
        break;
      }
      // A refill under way is room a create may take: wait for that box rather than refuse.
      if (this.refilling > this.waiting.length) {
        box = (await new Promise<B | null>((resolve) => this.waiting.push({ resolve }))) ?? undefined;
        if (box && this.closing) void this.discard(box);
        else if (box) break;
        continue; // that refill failed (or shutdown began): look again
      }
      if (this.used < this.config.maxSessions) break; // room to make a box of its own
      // No room, but a cleanup under way will make some: wait for it (each is bounded). The
      // refill a finished cleanup starts leaves that room to the creates waiting for it.
      if (this.destroying.size === 0) {
        throw new SandboxError('SBX_AT_CAPACITY', `sandbox holds ${this.sessions.size} sessions (max=${this.config.maxSessions})`, {
          headers: { 'retry-after': String(Math.min(60, this.config.gcIntervalSeconds)) },
        });
      }
      this.waitingForRoom++;
      try {
        await Promise.race([...this.destroying]);
      } finally {
        this.waitingForRoom--;
      }
    }
    if (!box) {
      this.stats.poolMisses++;
      this.creating++;
      try {
        box = await this.timedMakeBox();
      } finally {
        this.creating--;
      }
      if (this.closing) {
        void this.discard(box);
        throw new SandboxError('SBX_SHUTTING_DOWN', 'server is shutting down', { headers: { 'retry-after': '5' } });
      }
    }
    // Lifetime hints are clamped to the server's ceilings, never refused.
    // The refill waits a moment: spawning blocks the event loop for ~2 ms (fork of a big
    // process), which the new session's first call should not pay.
    const maxLifetime = Math.min(opts.maxLifetimeSeconds ?? this.config.maxLifetimeSeconds, this.config.maxLifetimeSeconds);
    const idle = Math.min(opts.idleTimeoutSeconds ?? this.config.idleTimeoutSeconds, this.config.idleTimeoutSeconds);
    void box.promote().catch(() => {}); // normal priority from now on
    const session = new Session(newSessionId(this.replica), box, idle, maxLifetime, this.nowSeconds, this.onRunning);
    this.sessions.set(session.id, session);
    this.stats.created++;
    this.refillSoon();
    return session;
  }

  has(id: string): boolean {
    return this.sessions.has(id);
  }

  get(id: string): Session<B> {
    const s = this.sessions.get(id);
    if (!s) throw new SandboxError('SBX_SESSION_NOT_FOUND', `session not found: ${id}`);
    return s;
  }

  /** Idempotent. Resolves once the session is gone from the API and every process of it
   * has been sent SIGKILL; the rest of the cleanup goes on in the background. */
  async destroy(id: string, why: 'deleted' | 'reaped' = 'deleted'): Promise<boolean> {
    const s = this.sessions.get(id);
    if (!s) return false;
    this.sessions.delete(id);
    this.stats[why]++;
    s.close();
    const cleanup = this.discard(s.box, id);
    await Promise.race([s.box.stop().catch(() => {}), cleanup]);
    return true;
  }

  /** Destroys a box in the background, counted in `used` until done; shutdown waits for
   * every destroy under way (none is cut off by the process exiting, which would leave
   * its folder and mounts behind). Never throws. */
  private discard(box: B, sessionId?: string): Promise<void> {
    const done = box
      .destroy()
      .catch((e: unknown) => this.log.error({ session_id: sessionId, err: String((e as Error)?.message ?? e) }, 'sandbox cleanup failed'))
      .finally(() => {
        this.destroying.delete(done);
        this.refill(); // its room is free again
      });
    this.destroying.add(done);
    return done;
  }

  async reap(): Promise<number> {
    const now = this.nowSeconds();
    const victims = [...this.sessions.values()].filter((s) => s.expired(now));
    await Promise.all(victims.map((s) => this.destroy(s.id, 'reaped')));
    if (victims.length > 0) this.log.info({ reaped: victims.map((s) => s.id) }, 'reaped expired sessions');
    return victims.length;
  }

  /** Stop taking work; let in-flight calls finish until the deadline; destroy everything. */
  async shutdown(graceMs: number): Promise<void> {
    this.closing = true;
    if (this.gcTimer) clearInterval(this.gcTimer);
    for (const w of this.waiting.splice(0)) w.resolve(null);
    const inflight = Promise.all([...this.sessions.values()].map((s) => s.drained()));
    await Promise.race([inflight, new Promise((r) => setTimeout(r, graceMs).unref())]);
    const boxes = [...this.sessions.values()].map((s) => s.box);
    for (const s of this.sessions.values()) s.close();
    this.sessions.clear();
    boxes.push(...this.pool.splice(0));
    await Promise.all(boxes.map((b) => this.discard(b)));
    // Boxes still being made are destroyed by refill's callback when they land.
    const deadline = Date.now() + 10_000;
    while (this.refilling + this.creating > 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
    while (this.destroying.size > 0) await Promise.all([...this.destroying]);
  }
}
