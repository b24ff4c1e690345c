/**
 * The pure part of `npm run bench`: statistics over raw timings, rates over the workers of a
 * parallel run, targets and their verdicts, and the command-line flags. No processes, no I/O:
 * unit-tested in test/unit/bench-figures.test.ts.
 */

export interface Stats {
  n: number;
  p50: number;
  p90: number;
  max: number;
  min: number;
  mean: number;
}

/** Nearest-rank percentiles (p50 of [1, 2, 3, 4] is 2): every reported figure is a sample
 * that was measured. Null for no samples. */
export function stats(xs: readonly number[]): Stats | null {
  if (xs.length === 0) return null;
  const s = [...xs].sort((a, b) => a - b);
  const rank = (p: number) => s[Math.min(s.length - 1, Math.max(0, Math.ceil(p * s.length) - 1))]!;
  return { n: s.length, p50: rank(0.5), p90: rank(0.9), max: s[s.length - 1]!, min: s[0]!, mean: s.reduce((a, b) => a + b, 0) / s.length };
}

/** One worker of a parallel run: when it was released, how many operations it completed,
 * and when its last one completed (ms on one monotonic clock shared by every process of
 * the host). */
export interface WorkerSpan {
  startMs: number;
  count: number;
  lastMs: number;
}

/** Completed operations per second over the run's span: from the first worker's release to
 * the last completion. Operations that a worker started before its stop time and finished
 * after it are counted, and so is the time they took. Null when nothing completed. */
export function spanRate(workers: readonly WorkerSpan[]): { count: number; seconds: number; perSecond: number } | null {
  let count = 0;
  let first = Infinity;
  let last = -Infinity;
  for (const w of workers) {
    first = Math.min(first, w.startMs);
    if (w.count === 0) continue;
    count += w.count;
    last = Math.max(last, w.lastMs);
  }
  if (count === 0 || !(last > first)) return null;
  const seconds = (last - first) / 1000;
  return { count, seconds, perSecond: count / seconds };
}

/** A target: which number of a figure is compared, how, and with what. */
export interface Target {
  stat: 'p50' | 'p90' | 'mean' | 'value';
  op: '<=' | '>=';
  limit: number;
}

/** The text shown in the table's target column, e.g. "p90 <= 10". */
export function describeTarget(t: Target): string {
  return t.stat === 'value' ? `${t.op} ${t.limit}` : `${t.stat} ${t.op} ${t.limit}`;
}

/** Pass (true), miss (false), or not measured (null). */
export function judge(t: Target, figure: { stats: Stats | null; value?: number }): boolean | null {
  const x = t.stat === 'value' ? figure.value : figure.stats?.[t.stat];
  if (x === undefined || !Number.isFinite(x)) return null;
  return t.op === '<=' ? x <= t.limit : x >= t.limit;
}

export interface Flags {
  quick: boolean;
  rootless: boolean;
}

/** `--quick` and `--rootless`; anything else is an error (a mistyped flag must not give a
 * full run that looks like the one asked for). */
export function parseFlags(argv: readonly string[]): Flags {
  const flags: Flags = { quick: false, rootless: false };
  for (const a of argv) {
    if (a === '--quick') flags.quick = true;
    else if (a === '--rootless') flags.rootless = true;
    else throw new Error(`unknown argument ${JSON.stringify(a)} (known: --quick, --rootless)`);
  }
  return flags;
}
