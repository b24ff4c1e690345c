/**
 * Drain on SIGTERM, against the real server: it keeps answering through the grace; a new
 * session gets 503 SBX_SHUTTING_DOWN with Retry-After, /health turns 503 "draining" (a
 * readiness probe takes the replica out), a call in flight finishes with its result; then
 * every session is destroyed and the sessions root is left as it was found (gone: the
 * server made it).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readdir, writeFile } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import { api, createSession, py, startServer } from '../helpers/server.js';

test('SIGTERM during a running call: creates get 503 with Retry-After, the call finishes, the host is left as found', async () => {
  const srv = await startServer({ SANDBOX_SHUTDOWN_GRACE_SECONDS: '60', SANDBOX_WARMUP: '0' });
  let exitedCode: number | null | undefined;
  try {
    const id = await createSession(srv);
    // The call says it runs (a file), then waits for a flag the test writes after checking
    // the drain: it is in flight through all of it. Its workspace is found by the file.
    const call = py(srv, id, "import os, time\nopen('/workspace/runs', 'w').close()\nwhile not os.path.exists('/workspace/go'):\n    time.sleep(0.02)\nprint('finished')", {
      timeout_seconds: 120,
    });
    let workspace: string | null = null;
    while (workspace === null) {
      for (const box of await readdir(srv.sessionsRoot).catch(() => [] as string[])) {
        if (existsSync(`${srv.sessionsRoot}/${box}/workspace/runs`)) workspace = `${srv.sessionsRoot}/${box}/workspace`;
      }
      if (workspace === null) await new Promise((r) => setTimeout(r, 20));
    }
    const exited = new Promise<number | null>((resolve) => srv.proc.once('exit', (code) => resolve(code)));
    srv.proc.kill('SIGTERM');
    // An event, not a clock: the server logs that it is shutting down.
    while (!srv.logs().includes('shutting down')) await new Promise((r) => setTimeout(r, 20));

    const create = await api(srv, 'POST', '/sessions', {});
    assert.equal(create.status, 503);
    assert.equal(create.body.code, 'SBX_SHUTTING_DOWN');
    assert.ok(Number(create.headers.get('retry-after')) > 0, 'Retry-After');
    const health = await api(srv, 'GET', '/health');
    assert.equal(health.status, 503);
    assert.equal(health.body.status, 'draining');
    // The live session still answers what it holds while the call runs.
    assert.equal((await api(srv, 'GET', `/sessions/${id}`)).status, 200);

    await writeFile(`${workspace}/go`, '');
    const r = await call;
    assert.equal(r.status, 200);
    assert.equal(r.stdout, 'finished');
    exitedCode = await exited;
    assert.equal(exitedCode, 0, srv.logs().slice(-2000));
    assert.equal(existsSync(srv.sessionsRoot), false, 'the sessions root the server made is gone');
  } finally {
    if (exitedCode === undefined) srv.proc.kill('SIGKILL');
    await srv.stop();
  }
});
