import { test } from 'node:test';
import assert from 'node:assert/strict';
import { describeTarget, judge, parseFlags, spanRate, stats } from '../../bench/figures.js';

test('stats: nearest-rank percentiles of unsorted samples, each a measured value; null for none', () => {
  assert.equal(stats([]), null);
  assert.deepEqual(stats([4, 1, 3, 2]), { n: 4, p50: 2, p90: 4, max: 4, min: 1, mean: 2.5 });
  const s = stats(Array.from({ length: 10 }, (_, i) => 10 - i))!; // 10, 9, ..., 1
  assert.equal(s.p50, 5);
  assert.equal(s.p90, 9);
  assert.deepEqual(stats([7]), { n: 1, p50: 7, p90: 7, max: 7, min: 7, mean: 7 });
  const xs = [3, 1, 2];
  stats(xs);
  assert.deepEqual(xs, [3, 1, 2], 'the samples are not sorted in place');
});

test('spanRate: operations over the span from the first release to the last completion', () => {
  // Two workers released at 1000 and 1010 ms; the last completion at 3000 ms: 2 s.
  const r = spanRate([
    { startMs: 1000, count: 300, lastMs: 2900 },
    { startMs: 1010, count: 100, lastMs: 3000 },
  ])!;
  assert.equal(r.count, 400);
  assert.equal(r.seconds, 2);
  assert.equal(r.perSecond, 200);
  // A worker that completed nothing widens the span by its start only.
  assert.equal(
    spanRate([
      { startMs: 0, count: 0, lastMs: 0 },
      { startMs: 1000, count: 10, lastMs: 2000 },
    ])!.perSecond,
    5,
  );
  assert.equal(spanRate([]), null);
  assert.equal(spanRate([{ startMs: 5, count: 0, lastMs: 5 }]), null);
});

test('judge: p50/p90/mean/value against <= and >= limits; null when not measured', () => {
  const f = { stats: stats([1, 2, 3, 4, 5, 6, 7, 8, 9, 10]), value: 150 };
  assert.equal(judge({ stat: 'p50', op: '<=', limit: 5 }, f), true);
  assert.equal(judge({ stat: 'p50', op: '<=', limit: 4.99 }, f), false);
  assert.equal(judge({ stat: 'p90', op: '<=', limit: 8 }, f), false);
  assert.equal(judge({ stat: 'mean', op: '<=', limit: 5.5 }, f), true);
  assert.equal(judge({ stat: 'value', op: '>=', limit: 150 }, f), true);
  assert.equal(judge({ stat: 'value', op: '>=', limit: 151 }, f), false);
  assert.equal(judge({ stat: 'p50', op: '<=', limit: 1 }, { stats: null }), null);
  assert.equal(judge({ stat: 'value', op: '>=', limit: 1 }, { stats: null }), null);
  assert.equal(judge({ stat: 'value', op: '>=', limit: 1 }, { stats: null, value: Number.NaN }), null);
  assert.equal(describeTarget({ stat: 'p90', op: '<=', limit: 10 }), 'p90 <= 10');
  assert.equal(describeTarget({ stat: 'value', op: '>=', limit: 4000 }), '>= 4000');
});

test('parseFlags: --quick and --rootless in any order; an unknown argument is an error', () => {
  assert.deepEqual(parseFlags([]), { quick: false, rootless: false });
  assert.deepEqual(parseFlags(['--rootless', '--quick']), { quick: true, rootless: true });
  assert.throws(() => parseFlags(['--quik']), /unknown argument "--quik"/);
  assert.throws(() => parseFlags(['quick']), /unknown argument/);
});
