import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { FILE_REQUESTS_PER_SESSION, FILE_REQUESTS_WAITING_MAX, Session, type SessionBox } from '../../src/sessions/session.js';
import { SandboxError } from '../../src/errors.js';

test("a session runs at most FILE_REQUESTS_PER_SESSION file requests at once; the next ones wait their turn, and past FILE_REQUESTS_WAITING_MAX waiting get SBX_SESSION_BUSY (fifth red team: one session's parallel downloads, each waiting on its own code's locks, held every thread of libuv's pool)", async () => {
  const dir = mkdtempSync(`${tmpdir()}/file-requests-`);
  try {
    const box = { undoDir: dir, undoMaxBytes: 1 << 20 } as unknown as SessionBox;
    const session = new Session('s', box, 60, 600);
    const releases: (() => void)[] = [];
    let running = 0;
    let most = 0;
    const request = (value: string) =>
      session.fileRequest(async () => {
        running++;
        most = Math.max(most, running);
        await new Promise<void>((r) => releases.push(r));
        running--;
        return value;
      });
    const all = Array.from({ length: FILE_REQUESTS_PER_SESSION + FILE_REQUESTS_WAITING_MAX }, (_, i) => request(`r${i}`));
    await new Promise((r) => setImmediate(r));
    assert.equal(running, FILE_REQUESTS_PER_SESSION, 'the others wait their turn');
    await assert.rejects(
      session.fileRequest(async () => 'one too many'),
      (e: unknown) => e instanceof SandboxError && e.code === 'SBX_SESSION_BUSY',
    );
    // Each ending hands its place to the next.
    while (releases.length > 0) {
      releases.shift()!();
      await new Promise((r) => setImmediate(r));
    }
    const values = await Promise.all(all);
    assert.equal(values.length, FILE_REQUESTS_PER_SESSION + FILE_REQUESTS_WAITING_MAX);
    assert.equal(most, FILE_REQUESTS_PER_SESSION, 'never more at once');
    await assert.rejects(
      session.fileRequest(async () => Promise.reject(new Error('boom'))),
      /boom/,
    );
    assert.equal(await session.fileRequest(async () => 'after a failure'), 'after a failure', 'a failed request frees its place');
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
