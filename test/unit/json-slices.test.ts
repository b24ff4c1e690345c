/**
 * stringifySliced (src/http/json-slices.ts): the same bytes as JSON.stringify, whatever the
 * strings hold (control bytes, surrogate pairs cut at any place, lone surrogates, text that
 * looks like a placeholder), and the event loop runs between slices.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { stringifySliced } from '../../src/http/json-slices.js';

const same = async (value: unknown, sliceChars: number) => {
  const got = (await stringifySliced(value, sliceChars)).toString('utf8');
  assert.equal(got, JSON.stringify(value));
};

test('the text equals JSON.stringify for every slice size, pairs and lone surrogates included', async () => {
  const tricky = 'a\u0000b\u001f"\\\n😀x\ud83d\ude00\ud800lone\udc00end\u2028é';
  const value = {
    result_block: { content: { stdout: tricky.repeat(7), stderr: '', return_code: 0, content: [{ file_id: 'x', filename: tricky }] } },
    tool_use_id: 'toolu_1',
    list: [tricky.repeat(3), 1, null, true, { nested: tricky.repeat(2) }],
  };
  for (const n of [1, 2, 3, 5, 8, 64, 1024]) await same(value, n);
});

test('a string that spells a placeholder is not taken for one', async () => {
  // Output can hold any text; the nonce is random per call, so this only checks that a
  // look-alike is serialised as itself.
  const value = { a: 'x'.repeat(40), b: '00000000000000000000000000000000:0', c: '"00:0"'.repeat(20) };
  await same(value, 4);
});

test('values without long strings, and scalars, come out whole', async () => {
  await same({ a: 1, b: 'short' }, 64);
  await same('just a string that is long enough', 4);
  await same([], 4);
  await assert.rejects(stringifySliced(undefined, 4), TypeError);
});

test('other work runs between the slices of one long string', async () => {
  const s = '\u0001'.repeat(10_000);
  let turns = 0;
  let stop = false;
  const tick = () => {
    turns++;
    if (!stop) setImmediate(tick);
  };
  setImmediate(tick);
  const out = await stringifySliced({ stdout: s }, 1000);
  stop = true;
  assert.equal(out.toString('utf8'), JSON.stringify({ stdout: s }));
  // Ten slices: the loop ran the other callback between them.
  assert.ok(turns >= 9, `other callbacks ran ${turns} times`);
});
