/**
 * How many boxes the warm pool should hold: its minimum (SANDBOX_WARM_POOL_SIZE) plus the
 * boxes that recent creates would take while one box is being made, at most
 * SANDBOX_WARM_POOL_MAX:
 *
 *   target = clamp(min + round(ratePerSecond × refillSeconds), min, max)
 *
 * - ratePerSecond: creates in the busiest second of the last DEMAND_WINDOW_SECONDS, each
 *   second's count weighed down linearly with its age (whole now, nothing once it is a
 *   window old). A burst raises the target at once; when creates stop, the target falls
 *   step by step and is back at the minimum one window later. The busiest second rather
 *   than the window's average: the gateway creates a session per chat request, in bursts,
 *   and an average over a minute hides a burst that emptied the pool.
 * - refillSeconds: how long making a box took lately (a moving average over every box
 *   made, for the pool or by a create; none made yet: 0, so the target is the minimum).
 * By Little's law, ratePerSecond × refillSeconds boxes are taken while one is made; a pool
 * that holds that many on top of its minimum still has about its minimum ready at that rate
 * (when its refills can run in parallel enough to keep up; see manager.ts).
 *
 * Pure: every time is passed in (the manager's clock, in seconds); the state is a fixed
 * ring of per-second counters, whatever the rate (bounded by construction).
 */

/** How long a burst of creates keeps the target up, seconds. */
export const DEMAND_WINDOW_SECONDS = 60;
/** Weight of the newest refill time in the moving average. */
const REFILL_WEIGHT = 0.25;

export class PoolDemand {
  /** counts[i] creates in second seconds[i] (a ring indexed by second % window). */
  private readonly counts: number[];
  private readonly seconds: number[];
  private refillSecondsAverage: number | null = null;

  constructor(
    readonly min: number,
    readonly max: number,
    private readonly windowSeconds = DEMAND_WINDOW_SECONDS,
  ) {
    this.counts = new Array<number>(windowSeconds).fill(0);
    this.seconds = new Array<number>(windowSeconds).fill(-Infinity);
  }

  recordCreate(nowSeconds: number): void {
    const second = Math.floor(nowSeconds);
    const i = second % this.windowSeconds;
    if (this.seconds[i] !== second) {
      this.seconds[i] = second;
      this.counts[i] = 0;
    }
    this.counts[i]!++;
  }

  /** How long one box took to make (a failed make is not recorded). */
  recordRefill(seconds: number): void {
    const s = Math.max(0, seconds);
    this.refillSecondsAverage = this.refillSecondsAverage === null ? s : this.refillSecondsAverage + REFILL_WEIGHT * (s - this.refillSecondsAverage);
  }

  /** Forgets every create seen so far (the refill time estimate stays). */
  forgetCreates(): void {
    this.counts.fill(0);
    this.seconds.fill(-Infinity);
  }

  get refillSeconds(): number {
    return this.refillSecondsAverage ?? 0;
  }

  /** Creates per second in the busiest recent second, weighed by age. */
  ratePerSecond(nowSeconds: number): number {
    const now = Math.floor(nowSeconds);
    let rate = 0;
    for (let i = 0; i < this.windowSeconds; i++) {
      const age = now - this.seconds[i]!;
      if (age < 0 || age >= this.windowSeconds) continue;
      rate = Math.max(rate, this.counts[i]! * (1 - age / this.windowSeconds));
    }
    return rate;
  }

  target(nowSeconds: number): number {
    if (this.max <= this.min) return this.min;
    const extra = Math.round(this.ratePerSecond(nowSeconds) * this.refillSeconds);
    return Math.min(this.max, this.min + extra);
  }
}
