/**
 * The mount helper (sandbox-host/mounter.py through src/sandbox/mounts.ts): a size-capped
 * tmpfs per box folder and its lazy unmount, for folders directly under the sessions root
 * only. Needs root (CAP_SYS_ADMIN on the host); skipped otherwise, saying so.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, mkdir, rm, stat, symlink, writeFile, readFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { fileURLToPath } from 'node:url';
import { HostHelper } from '../../src/sandbox/host-helper.js';
import { Mounts } from '../../src/sandbox/mounts.js';

const MOUNTER = fileURLToPath(new URL('../../../sandbox-host/mounter.py', import.meta.url));
const root = process.getuid?.() === 0;
let dir = '';
let helper: HostHelper | null = null;
let mounts: Mounts;

before(async () => {
  dir = await mkdtemp(`${tmpdir()}/mounts-test-`);
  if (!root) return;
  helper = await HostHelper.start('mount', '/usr/bin/python3', MOUNTER, [dir]);
  mounts = new Mounts(helper);
});
after(async () => {
  await helper?.close();
  await rm(dir, { recursive: true, force: true });
});

const mountedAt = async (path: string) => (await readFile('/proc/self/mountinfo', 'utf8')).split('\n').some((l) => l.split(' ')[4] === path);

test('a box folder gets a tmpfs of the given size, and loses it again', { skip: !root && 'needs root' }, async () => {
  const box = `${dir}/box_one`;
  await mkdir(box);
  await mounts.mountTmpfs(box, 2);
  assert.notEqual((await stat(box)).dev, (await stat(dir)).dev, 'a file system of its own');
  assert.equal(await mountedAt(box), true);
  // the size cap holds: 3 MiB does not fit in 2
  await assert.rejects(writeFile(`${box}/big`, Buffer.alloc(3 * 1024 * 1024)), /ENOSPC/);
  await mounts.unmountLazy(box);
  assert.equal(await mountedAt(box), false);
  await mounts.unmountLazy(box); // not mounted: fine
  await mounts.unmountLazy(`${dir}/box_never_made`); // gone: fine
  assert.equal(await mounts.canMountTmpfs(dir), true);
});

test('folders that are not directly under the sessions root, or are links, are refused', { skip: !root && 'needs root' }, async () => {
  const outside = await mkdtemp(`${tmpdir()}/mounts-outside-`);
  try {
    await mkdir(`${dir}/box_two`);
    await mkdir(`${dir}/box_two/inner`);
    await symlink(outside, `${dir}/box_link`);
    for (const bad of [outside, `${dir}/box_two/inner`, `${dir}/box_two/../box_two`, `${dir}/box_link`, `${dir}/.`, dir]) {
      await assert.rejects(mounts.mountTmpfs(bad, 1), (e: Error) => /not a box folder|ELOOP|Not a directory|errno/.test(e.message), bad);
    }
    assert.equal(await mountedAt(outside), false, 'nothing was mounted through the link');
    // bad requests are answered, not fatal: the helper still works
    await helper!.request({ op: 'nope' }).then(
      () => assert.fail('an unknown op is refused'),
      (e: Error) => assert.match(e.message, /nope/),
    );
    await mounts.mountTmpfs(`${dir}/box_two`, 1);
    await mounts.unmountLazy(`${dir}/box_two`);
  } finally {
    await rm(outside, { recursive: true, force: true });
  }
});
