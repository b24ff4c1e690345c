import { test } from 'node:test';
import assert from 'node:assert/strict';
import { MemoryBudget } from '../../src/budget.js';
import { jsonTokens, jsonTooComplex } from '../../src/json-bounds.js';
import { CappedBuffer } from '../../src/runner/output.js';
import { nestedDeeperThan } from '../../src/tools/platform-tools.js';

const enc = (s: string) => Buffer.from(s, 'utf8');

test('MemoryBudget: reservations add up to the total; past it SBX_SERVER_BUSY, beyond it SBX_FILE_TOO_LARGE', () => {
  const b = new MemoryBudget(100);
  const r1 = b.reserve(60, 'one');
  assert.throws(
    () => b.reserve(41, 'two'),
    (e: { code?: string; status?: number }) => e.code === 'SBX_SERVER_BUSY' && e.status === 503,
  );
  assert.throws(
    () => b.reserve(101, 'huge'),
    (e: { code?: string }) => e.code === 'SBX_FILE_TOO_LARGE',
  );
  const r2 = b.reserve(40, 'two');
  assert.equal(b.usedBytes, 100);
  r1.shrink(10);
  assert.equal(b.usedBytes, 50);
  r1.shrink(30); // never grows
  assert.equal(r1.bytes, 10);
  r1.release();
  r1.release(); // idempotent
  r2.release();
  assert.equal(b.usedBytes, 0);
});

test('jsonTooComplex counts structural tokens outside strings only', () => {
  assert.equal(jsonTooComplex(enc('{"a":[1,2,3]}'), 10), false);
  assert.equal(jsonTooComplex(enc(`[${Array(11).fill('{}').join(',')}]`), 10), true);
  // Commas, colons and brackets inside strings (code, with escaped quotes) do not count.
  assert.equal(jsonTooComplex(enc(JSON.stringify({ code: `x = [${'1,'.repeat(10_000)}]; s = "{[:,\\"]}"` })), 10), false);
  assert.equal(jsonTooComplex(enc(JSON.stringify({ s: 'a\\"b' })), 3), false);
  assert.equal(jsonTooComplex(enc(`[${'['.repeat(100)}`), 50), true);
  // The count itself (what a parsed body is charged by), up to the limit plus one.
  assert.equal(jsonTokens(enc('{"a":[1,2,3],"b":"x,y"}')), 7);
  assert.equal(jsonTokens(enc(`[${Array(100).fill('0').join(',')}]`), 10), 11);
});

test('nestedDeeperThan walks iteratively (no stack overflow) and measures nesting', () => {
  let deep: unknown = 1;
  for (let i = 0; i < 200_000; i++) deep = [deep];
  assert.equal(nestedDeeperThan(deep, 64), true);
  assert.equal(nestedDeeperThan({ a: [{ b: [1] }] }, 64), false);
  assert.equal(nestedDeeperThan({ a: [{ b: [1] }] }, 3), true);
  assert.equal(nestedDeeperThan('text', 0), false);
});

test('CappedBuffer keeps copies in one buffer: a million one-byte chunks hold no more than the cap', () => {
  const cap = 8192;
  const c = new CappedBuffer(cap);
  const big = Buffer.alloc(64 * 1024, 0x61);
  for (let i = 0; i < 1_000_000; i++) c.push(big.subarray(i % 1000, (i % 1000) + 1));
  assert.equal(c.size, cap);
  assert.equal(c.dropped, 1_000_000 - cap);
  assert.ok(c.heldBytes <= cap, `holds ${c.heldBytes} bytes`);
  assert.equal(c.text(), 'a'.repeat(cap));
  const d = new CappedBuffer(10);
  d.push(enc('hello '));
  d.push(enc('world!'));
  assert.equal(d.text(), 'hello worl');
  assert.equal(d.dropped, 2);
});
