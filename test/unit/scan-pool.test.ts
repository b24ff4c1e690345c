import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { ScanPool } from '../../src/files/scan-pool.js';

const STUB = new URL('../helpers/scan-worker-stub.js', import.meta.url);

test("a session whose workspace does not answer waits alone: its scans run one at a time and give up after the wait, other sessions' scans answer meanwhile, and the event loop never waits (fourth red team: the scan on the loop waited on one session's folder locks for seconds, and every session with it)", async () => {
  // (the wait is what a stuck scan ends with: the stub never answers, so no timing is judged)
  const pool = new ScanPool(3, 300, STUB);
  let ticks = 0;
  const ticker = setInterval(() => ticks++, 1);
  try {
    const stuck = pool.scan('a', 'stuck-a', 100);
    // (the same session again while its scan is stuck: it waits behind it, on no new thread)
    const again = pool.scan('a', 'stuck-a', 100);
    const other = await pool.scan('b', 'b', 100);
    assert.deepEqual([...other.files.keys()], ['b.txt'], "another session's scan answers while one is stuck");
    assert.equal(pool.size, 2, 'one thread for the stuck session, one for the other');
    assert.equal((await stuck).truncated, 'stuck');
    assert.equal((await again).truncated, 'stuck');
    assert.equal(pool.size, 2, "the stuck session's second scan never started");
    assert.ok(ticks > 0, 'the event loop ran while the scan was stuck');
    // Every thread stuck (three sessions holding their folders): the others' scans queue
    // and give up after the wait, never hang.
    const more = [pool.scan('c', 'stuck-c', 100), pool.scan('d', 'stuck-d', 100)];
    const queued = await pool.scan('e', 'e', 100);
    assert.equal(queued.truncated, 'stuck', 'queued behind stuck threads: given up after the wait');
    assert.equal(pool.size, 3, 'never more threads than the bound');
    for (const m of more) assert.equal((await m).truncated, 'stuck');
  } finally {
    clearInterval(ticker);
    await pool.close();
  }
});

test('the real scan thread lists a workspace: regular files, hidden ones skipped, folders walked', async () => {
  const dir = mkdtempSync(`${tmpdir()}/scan-pool-`);
  try {
    mkdirSync(`${dir}/sub`);
    mkdirSync(`${dir}/.hidden`);
    writeFileSync(`${dir}/a.txt`, 'a');
    writeFileSync(`${dir}/sub/b.txt`, 'b');
    writeFileSync(`${dir}/.hidden/c.txt`, 'c');
    const pool = new ScanPool(1, 30_000);
    try {
      const scan = await pool.scan('k', dir, 100);
      assert.equal(scan.truncated, false);
      assert.deepEqual([...scan.files.keys()].sort(), ['a.txt', 'sub/b.txt']);
      assert.equal((await pool.scan('k', dir, 2)).truncated, 'entries', 'the entries bound holds on the thread too');
    } finally {
      await pool.close();
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('a thread idle for the idle time ends, and the pool makes one again when work comes (kept threads held 4 descriptors each: the 100-session lifecycle test saw the server grow by 16)', async () => {
  const dir = mkdtempSync(`${tmpdir()}/scan-pool-`);
  const pool = new ScanPool(2, 30_000, undefined, 50);
  try {
    writeFileSync(`${dir}/a.txt`, 'a');
    const [x, y] = await Promise.all([pool.scan('x', dir, 10), pool.scan('y', dir, 10)]);
    assert.deepEqual([[...x.files.keys()], [...y.files.keys()]], [['a.txt'], ['a.txt']]);
    assert.equal(pool.size, 2, 'two sessions at once: two threads');
    // (an event, not a clock: the pool's count falls once both threads have exited)
    while (pool.size > 0) await new Promise((r) => setTimeout(r, 20));
    const again = await pool.scan('x', dir, 10);
    assert.deepEqual([...again.files.keys()], ['a.txt'], 'work after the idle end gets a new thread');
    assert.equal(pool.size, 1);
  } finally {
    await pool.close();
    rmSync(dir, { recursive: true, force: true });
  }
});
