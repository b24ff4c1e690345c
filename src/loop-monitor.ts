/**
 * Watches the event loop for stretches of blocking work: a request or a session that makes
 * the server compute for long holds up every other session.
 *
 * A timer ticks every TICK_MS. A late tick means the loop was held, either by our own work
 * or because the machine did not schedule us (a loaded host). To tell them apart, each
 * tick also reads the CPU time of the main thread alone (/proc/thread-self/stat of the
 * loop's thread: utime + stime, in clock ticks): a stretch counts as *busy* for the
 * smaller of its wall-clock delay and the CPU the main thread used in it. So the figures
 * measure what the server itself did, not the machine's load, and tests can rely on them.
 *
 * Counters are cumulative (never reset), so several readers can each diff their own
 * before/after: stretches busy for at least 100 ms, 250 ms and 1 s, and the longest.
 */
import { closeSync, openSync, readSync } from 'node:fs';

const TICK_MS = 20;
const CLOCK_TICK_MS = 10; // USER_HZ is 100 on Linux

export interface LoopStats {
  /** Stretches in which the loop was held by our own work for >= 100 ms. */
  busy_over_100ms: number;
  /** ... for >= 250 ms (what the hostile suite holds the server to). */
  busy_over_250ms: number;
  /** ... for >= 1 s. */
  busy_over_1s: number;
  /** Longest such stretch, ms. */
  max_busy_ms: number;
  /** Longest late tick, whatever the cause (includes a loaded machine), ms. */
  max_delay_ms: number;
}

export class LoopMonitor {
  private timer: NodeJS.Timeout | null = null;
  private fd: number | null = null;
  private readonly buf = Buffer.alloc(1024);
  private readonly stats: LoopStats = { busy_over_100ms: 0, busy_over_250ms: 0, busy_over_1s: 0, max_busy_ms: 0, max_delay_ms: 0 };
  private lastWall = 0;
  private lastCpuMs = 0;

  start(): void {
    if (this.timer) return;
    try {
      // The thread that opens it is the loop's own thread: its stat is the loop's CPU.
      this.fd = openSync(`/proc/self/task/${process.pid}/stat`, 'r');
    } catch {
      this.fd = null; // no /proc: wall-clock delays only
    }
    this.lastWall = performance.now();
    this.lastCpuMs = this.cpuMs();
    this.timer = setInterval(() => this.tick(), TICK_MS);
    this.timer.unref();
  }

  stop(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
    if (this.fd !== null) closeSync(this.fd);
    this.fd = null;
  }

  snapshot(): LoopStats {
    return { ...this.stats, max_busy_ms: Math.round(this.stats.max_busy_ms), max_delay_ms: Math.round(this.stats.max_delay_ms) };
  }

  private tick(): void {
    const now = performance.now();
    const cpu = this.cpuMs();
    const delay = now - this.lastWall - TICK_MS;
    const used = cpu - this.lastCpuMs;
    this.lastWall = now;
    this.lastCpuMs = cpu;
    if (delay <= 0) return;
    if (delay > this.stats.max_delay_ms) this.stats.max_delay_ms = delay;
    // CPU time is counted in 10 ms ticks: allow one tick of rounding in our favour.
    const busy = this.fd === null ? delay : Math.min(delay, used + CLOCK_TICK_MS);
    if (busy > this.stats.max_busy_ms) this.stats.max_busy_ms = busy;
    if (busy >= 100) this.stats.busy_over_100ms++;
    if (busy >= 250) this.stats.busy_over_250ms++;
    if (busy >= 1000) this.stats.busy_over_1s++;
  }

  /** CPU time of the loop's thread, ms (0 without /proc). */
  private cpuMs(): number {
    if (this.fd === null) return 0;
    try {
      const n = readSync(this.fd, this.buf, 0, this.buf.length, 0);
      const text = this.buf.toString('latin1', 0, n);
      const fields = text.slice(text.lastIndexOf(')') + 2).split(' ');
      return (Number(fields[11]) + Number(fields[12])) * CLOCK_TICK_MS; // utime, stime
    } catch {
      return 0;
    }
  }
}
