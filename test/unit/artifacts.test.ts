import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { ArtifactStore } from '../../src/files/artifacts.js';
import { WorkspaceFs } from '../../src/files/workspace-fs.js';
import { resolveInside } from '../../src/files/paths.js';

const root = mkdtempSync(`${tmpdir()}/artifacts-unit-`);
after(() => rmSync(root, { recursive: true, force: true }));

test('a session of editor calls only scans its workspace once per SANDBOX_ARTIFACTS_SCAN_MAX_ENTRIES writes, not at every call past them', async () => {
  const dir = mkdtempSync(`${root}/box-`);
  for (const d of ['workspace', 'artifacts', 'staging']) mkdirSync(`${dir}/${d}`);
  const fs = new WorkspaceFs(`${dir}/workspace`, null, `${dir}/staging`);
  const scanMaxEntries = 5;
  const store = new ArtifactStore(`${dir}/workspace`, `${dir}/artifacts`, fs, { maxFiles: 10, maxBytes: 1 << 20, scanMaxEntries, keepMax: 1000, keepBytes: 1 << 20 }, () => null);
  let scans = 0;
  const scan = store.scan.bind(store);
  store.scan = () => {
    scans++;
    return scan();
  };
  // A small write's signature and bytes come with it: the store looks at the file no
  // more (each look is a trip to a workspace thread; four per editor call doubled its time).
  let looks = 0;
  const signature = fs.fileSignature.bind(fs);
  const copySmall = fs.copySmall.bind(fs);
  fs.fileSignature = (p) => (looks++, signature(p));
  fs.copySmall = (p, dest) => (looks++, copySmall(p, dest));
  const calls = 40;
  for (let i = 0; i < calls; i++) {
    // As ExecService.runWithArtifacts runs an editor call.
    await store.begin();
    fs.takeWritten();
    const path = `note-${i}.txt`;
    await fs.writeFile(resolveInside(path), path, `text ${i}\n`);
    const { files } = await store.collectWritten(fs.takeWritten() ?? []);
    assert.deepEqual(
      files.map((f) => f.filename),
      [path],
      `call ${i} lists the file it wrote`,
    );
    assert.equal(readFileSync(store.get(files[0]!.file_id)!.file, 'utf8'), `text ${i}\n`, 'the kept copy holds what was written');
  }
  assert.equal(looks, 0, 'no second look at a file the call wrote');
  // The first call's baseline, then one every scanMaxEntries + 1 additions.
  assert.ok(scans <= 1 + Math.ceil(calls / (scanMaxEntries + 1)), `${scans} scans in ${calls} editor calls`);
});
