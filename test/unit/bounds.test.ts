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

test('CappedBuffer keeps copies in one buffer: a million one-byte chunks hold no more than 1.5 times the cap', () => {
  const cap = 8192;
  const c = new CappedBuffer(cap);
  const big = Buffer.alloc(64 * 1024, 0x61);
  for (let i = 0; i < 1_000_000; i++) c.push(big.subarray(i % 1000, (i % 1000) + 1));
  assert.equal(c.size, cap);
  assert.equal(c.dropped, 1_000_000 - cap);
  assert.ok(c.heldBytes <= 1.5 * cap, `holds ${c.heldBytes} bytes`);
  assert.equal(c.text(), 'a'.repeat(cap));
  const d = new CappedBuffer(10);
  d.push(enc('hello '));
  d.push(enc('world!'));
  assert.equal(d.head(), 'hello');
  assert.equal(d.tail(), 'world!'.slice(1));
  assert.equal(d.dropped, 2);
});

test('CappedBuffer keeps the head and the tail, however the stream is split; the sink gets every byte once past the cap', () => {
  const stream = Buffer.from(Array.from({ length: 5000 }, (_, i) => String.fromCharCode(97 + (i % 26))).join(''));
  for (const size of [1, 7, 1000, 1024, 4096, 5000]) {
    const sunk: Buffer[] = [];
    const c = new CappedBuffer(2048, { write: (b) => sunk.push(Buffer.from(b)) });
    for (let off = 0; off < stream.length; off += size) c.push(stream.subarray(off, off + size));
    assert.equal(c.overflowed, true);
    assert.equal(c.head(), stream.toString('latin1', 0, 1024), `head, chunks of ${size}`);
    assert.equal(c.tail(), stream.toString('latin1', 5000 - 1024), `tail, chunks of ${size}`);
    assert.equal(c.dropped, 5000 - 2048);
    assert.equal(c.total, 5000);
    assert.deepEqual(Buffer.concat(sunk), stream, `sink, chunks of ${size}`);
  }
  const under: Buffer[] = [];
  const u = new CappedBuffer(2048, { write: (b) => under.push(b) });
  u.push(stream.subarray(0, 2048));
  assert.equal(u.overflowed, false);
  assert.equal(u.head(), stream.toString('latin1', 0, 2048));
  assert.deepEqual(under, [], 'a stream that fits never touches the sink');
});

test('CappedBuffer never cuts a UTF-8 character in two at the head or the tail', () => {
  const c = new CappedBuffer(1024);
  c.push(enc('é'.repeat(2000))); // 4000 bytes, 2 bytes each
  assert.equal(c.head(), 'é'.repeat(256));
  assert.equal(c.tail(), 'é'.repeat(256));
  const d = new CappedBuffer(1024);
  d.push(enc('x' + '€'.repeat(1000))); // head cut 1 byte into a 3-byte character
  assert.ok(/^x(€)*$/.test(d.head()), d.head().slice(-3));
  assert.ok(!d.head().includes('\ufffd') && !d.tail().includes('\ufffd'));
});
