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
