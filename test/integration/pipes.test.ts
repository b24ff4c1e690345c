/**
 * The FIFOs of template commands (src/sandbox/pipes.ts): a command's stdout and stderr are
 * opened ahead, one pair at a time.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm, open } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { Pipes } from '../../src/sandbox/pipes.js';
import { waitFor } from '../helpers/server.js';

test('outNamedPair: each call a pair of its own, what a writer writes reaches the server end; close() removes the spare pair', async (t) => {
  const root = await mkdtemp(`${tmpdir()}/pipes-test-`);
  t.after(() => rm(root, { recursive: true, force: true }));
  const pipes = await Pipes.create(`${root}/fifos`, 8);
  const first = await pipes.outNamedPair();
  const second = await pipes.outNamedPair();
  const paths = [...first, ...second].map((p) => p.path);
  assert.equal(new Set(paths).size, 4, 'four different FIFOs');
  const [out] = second;
  const got = new Promise<string>((resolve) => {
    let text = '';
    out.server.on('data', (d: Buffer) => (text += d.toString()));
    out.server.on('end', () => resolve(text));
  });
  const writer = await open(out.path, 'w');
  out.release();
  // (release() unlinks without waiting: the name goes shortly after)
  assert.ok(await waitFor(() => !existsSync(out.path), 10_000), 'unlinked once released');
  await writer.write('hello');
  await writer.close();
  assert.equal(await got, 'hello');
  for (const p of [...first, second[1]]) {
    p.release();
    p.server.destroy();
  }
  await pipes.close();
  assert.equal(existsSync(`${root}/fifos`), false, 'the folder is gone, with the spare pair');
});
