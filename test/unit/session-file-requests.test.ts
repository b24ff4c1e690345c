import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { FILE_REQUESTS_PER_SESSION, Session, type SessionBox } from '../../src/sessions/session.js';
import { SandboxError } from '../../src/errors.js';

test("a session runs at most FILE_REQUESTS_PER_SESSION file requests at once; past them SBX_SESSION_BUSY (fifth red team: one session's parallel downloads, each waiting on its own code's locks, held every thread of libuv's pool)", async () => {
  const dir = mkdtempSync(`${tmpdir()}/file-requests-`);
  try {
    const box = { undoDir: dir, undoMaxBytes: 1 << 20 } as unknown as SessionBox;
    const session = new Session('s', box, 60, 600);
    const releases: (() => void)[] = [];
    const held = Array.from({ length: FILE_REQUESTS_PER_SESSION }, () => session.fileRequest(() => new Promise<string>((r) => releases.push(() => r('done')))));
    await assert.rejects(
      session.fileRequest(async () => 'more'),
      (e: unknown) => e instanceof SandboxError && e.code === 'SBX_SESSION_BUSY',
    );
    for (const release of releases) release();
    assert.deepEqual(await Promise.all(held), Array(FILE_REQUESTS_PER_SESSION).fill('done'));
    assert.equal(await session.fileRequest(async () => 'again'), 'again', 'room again once they ended');
    await assert.rejects(
      session.fileRequest(async () => Promise.reject(new Error('boom'))),
      /boom/,
    );
    assert.equal(await session.fileRequest(async () => 'after a failure'), 'after a failure', 'a failed request frees its place');
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
