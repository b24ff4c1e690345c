/**
 * The per-box uid allocator (src/sandbox/uids.ts): every uid of the range is handed out
 * once before any is reused, and a released uid goes to the back of the queue, so the uid
 * of a box just deleted (whose last process may still be finishing its exit) is the last
 * one taken again.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { UidAllocator } from '../../src/sandbox/uids.js';

test('fresh uids first, then the one released longest ago; none past the range', () => {
  const a = new UidAllocator(1000, 3);
  assert.deepEqual([a.allocate(), a.allocate()], [1000, 1001]);
  a.release(1000);
  assert.equal(a.allocate(), 1002, 'a never-used uid before a just-released one');
  a.release(1002);
  a.release(1001);
  assert.deepEqual([a.allocate(), a.allocate(), a.allocate()], [1000, 1002, 1001]);
  assert.throws(() => a.allocate(), /no free sandbox uid/);
  a.release(1001);
  a.release(1001);
  a.release(5);
  assert.equal(a.allocate(), 1001);
  assert.throws(() => a.allocate(), /no free sandbox uid/, 'a uid released twice, or outside the range, is not handed out twice');
});
