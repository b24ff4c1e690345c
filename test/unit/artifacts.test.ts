import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
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
  }
  // The first call's baseline, then one every scanMaxEntries + 1 additions.
  assert.ok(scans <= 1 + Math.ceil(calls / (scanMaxEntries + 1)), `${scans} scans in ${calls} editor calls`);
});
