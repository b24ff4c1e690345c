import { test } from 'node:test';
import assert from 'node:assert/strict';
import { encodeFrame, FrameDecoder, FrameProtocolError } from '../../src/runner/frame-codec.js';

test('a frame round-trips with kind and body', () => {
  const d = new FrameDecoder(1024);
  const frames = d.push(encodeFrame('D', { id: 3, return_code: 0 }));
  assert.equal(frames.length, 1);
  assert.equal(frames[0]!.kind, 'D');
  assert.deepEqual(JSON.parse(frames[0]!.body.toString()), { id: 3, return_code: 0 });
  assert.equal(d.pendingBytes, 0);
});

test('frames split at every byte boundary decode the same', () => {
  const wire = Buffer.concat([encodeFrame('O', Buffer.from('hello')), encodeFrame('R', Buffer.from('')), encodeFrame('D', '{"id":1}')]);
  for (let cut = 0; cut <= wire.length; cut++) {
    const d = new FrameDecoder(1024);
    const got = [...d.push(wire.subarray(0, cut)), ...d.push(wire.subarray(cut))];
    assert.deepEqual(
      got.map((f) => [f.kind, f.body.toString()]),
      [
        ['O', 'hello'],
        ['R', ''],
        ['D', '{"id":1}'],
      ],
      `cut at ${cut}`,
    );
  }
});

test('byte-by-byte feeding yields each frame exactly once', () => {
  const wire = Buffer.concat([encodeFrame('O', Buffer.alloc(300, 1)), encodeFrame('O', Buffer.alloc(5, 2))]);
  const d = new FrameDecoder(1024);
  const got = [];
  for (const b of wire) got.push(...d.push(Buffer.from([b])));
  assert.equal(got.length, 2);
  assert.equal(got[0]!.body.length, 300);
  assert.equal(got[1]!.body.length, 5);
});

test('an oversized declared length is refused before its body is buffered', () => {
  const d = new FrameDecoder(16);
  const head = Buffer.alloc(5);
  head.writeUInt32BE(1 << 30, 0);
  head.writeUInt8('O'.charCodeAt(0), 4);
  assert.throws(() => d.push(head), FrameProtocolError);
});

test('binary bodies (NUL, invalid UTF-8) are preserved', () => {
  const body = Buffer.from([0, 0xff, 0xfe, 10, 13, 0x1b]);
  const [f] = new FrameDecoder(64).push(encodeFrame('O', body));
  assert.deepEqual(f!.body, body);
});

/** Feeds `wire` cut into chunks of the given sizes (cycled); returns the frames. */
function feed(d: FrameDecoder, wire: Buffer, sizes: number[]) {
  const got = [];
  for (let pos = 0, i = 0; pos < wire.length; i++) {
    const n = sizes[i % sizes.length]!;
    got.push(...d.push(wire.subarray(pos, pos + n)));
    pos += n;
  }
  return got;
}

test('whole frames in a chunk are handed out as views: nothing is copied', () => {
  const wire = Buffer.concat(Array.from({ length: 10_000 }, (_, i) => encodeFrame('O', Buffer.from(String(i)))));
  const d = new FrameDecoder(1024);
  const got = d.push(wire);
  assert.equal(got.length, 10_000);
  assert.equal(got[9_999]!.body.toString(), '9999');
  assert.equal(d.copiedBytes, 0);
});

test('bytes copied stay under three times the input, whatever the chunking', () => {
  const small = Buffer.concat(Array.from({ length: 20_000 }, (_, i) => encodeFrame(i % 2 ? 'O' : 'R', Buffer.alloc(i % 7, 0x61))));
  const big = Buffer.concat(Array.from({ length: 8 }, (_, i) => encodeFrame('O', Buffer.alloc(300_000 + i * 1_000, 0x62))));
  const cases: [string, Buffer, number[]][] = [
    ['many small frames, a byte at a time', small, [1]],
    ['many small frames, chunks that cut every header', small, [3, 4, 2]],
    ['many small frames, 64 KiB chunks', small, [65_536]],
    ['large frames, a byte at a time', big.subarray(0, 700_000), [1]],
    ['large frames, 7-byte chunks', big, [7]],
    ['large frames, 64 KiB chunks', big, [65_536]],
    ['large frames, chunks just under a frame', big, [299_999]],
  ];
  for (const [what, wire, sizes] of cases) {
    const d = new FrameDecoder(1024 * 1024);
    const frames = feed(d, wire, sizes);
    const bodies = frames.reduce((n, f) => n + 5 + f.body.length, 0);
    assert.equal(bodies + d.pendingBytes, wire.length, `${what}: every byte is in a frame or pending`);
    assert.ok(d.copiedBytes < 3 * wire.length, `${what}: ${d.copiedBytes} bytes copied for ${wire.length} in`);
  }
  // The copies follow the input, not its square: ten times the frames, ten times the copies.
  const copies = (n: number) => {
    const d = new FrameDecoder(1024);
    feed(d, Buffer.concat(Array.from({ length: n }, () => encodeFrame('O', Buffer.alloc(9, 1)))), [5]);
    return d.copiedBytes;
  };
  assert.ok(copies(20_000) <= 10 * copies(2_000) + 256);
});

test('a frame trickled a byte at a time is held in one buffer at most twice its size', () => {
  const body = Buffer.alloc(100_000, 0x63);
  const wire = encodeFrame('O', body);
  const d = new FrameDecoder(1024 * 1024);
  let got: ReturnType<FrameDecoder['push']> = [];
  for (let i = 0; i < wire.length; i++) {
    got = d.push(wire.subarray(i, i + 1));
    if (i < wire.length - 1) assert.equal(got.length, 0);
  }
  assert.equal(got.length, 1);
  assert.deepEqual(got[0]!.body, body);
  assert.equal(d.pendingBytes, 0);
  assert.ok(got[0]!.body.buffer.byteLength <= 2 * wire.length + 8192, 'the body is a view of one buffer sized by doubling');
});

test('bodies handed out stay intact while later frames are decoded', () => {
  const d = new FrameDecoder(1024);
  const wire = Buffer.concat(Array.from({ length: 50 }, (_, i) => encodeFrame('O', Buffer.alloc(40 + i, i))));
  const held = feed(d, wire, [13]);
  assert.equal(held.length, 50);
  held.forEach((f, i) => assert.deepEqual(f.body, Buffer.alloc(40 + i, i), `frame ${i}`));
});

test('an oversized declared length is refused when its header completes across chunks', () => {
  const d = new FrameDecoder(16);
  const head = Buffer.alloc(5);
  head.writeUInt32BE(17, 0);
  head.writeUInt8('O'.charCodeAt(0), 4);
  assert.deepEqual(d.push(head.subarray(0, 2)), []);
  assert.throws(() => d.push(head.subarray(2)), FrameProtocolError);
});
