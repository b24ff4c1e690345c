/**
 * Warm pool: handed-out sandboxes are fresh, never shared, preloaded, and the pool
 * never pushes the server past its session capacity.
 */
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startServer, api, createSession, py, sh, waitFor, type TestServer } from '../helpers/server.js';

async function health(server: TestServer) {
  return (await api(server, 'GET', '/health')).body as { session_count: number; max_sessions: number; warm_pool: { target: number; ready: number; starting: number; min: number; max: number } };
}

describe('warm pool', () => {
  let server: TestServer;
  before(async () => {
    server = await startServer({ SANDBOX_WARM_POOL_SIZE: '2', SANDBOX_WARM_POOL_MAX: '2', SANDBOX_MAX_SESSIONS: '4', SANDBOX_PRELOAD_MODULES: 'csv,json,no_such_module_xyz' });
  });
  after(() => server.stop());

  it('fills to its target and reports it in /health', async () => {
    assert.ok(await waitFor(async () => (await health(server)).warm_pool.ready === 2, 20_000), 'pool never reached 2 ready');
    const h = await health(server);
    assert.equal(h.warm_pool.target, 2);
    assert.equal(h.warm_pool.min, 2);
    assert.equal(h.warm_pool.max, 2);
    assert.equal(h.session_count, 0);
  });

  it('hands out interpreters that already imported the preload modules (a missing one is skipped)', async () => {
    const id = await createSession(server);
    const r = await py(server, id, "import sys; print(sorted(m for m in ('csv', 'json', 'no_such_module_xyz') if m in sys.modules))");
    assert.equal(r.stdout, "['csv', 'json']");
    await api(server, 'DELETE', `/sessions/${id}`);
  });

  it('gives each session its own fresh sandbox, never one another session used', async () => {
    const a = await createSession(server);
    await py(server, a, 'secret = 41');
    await sh(server, a, 'echo a > /workspace/a.txt; echo t > /tmp/t.txt');
    const mountA = (await sh(server, a, 'stat -c %d:%i /workspace')).stdout;
    await api(server, 'DELETE', `/sessions/${a}`);
    const b = await createSession(server);
    const r = await py(server, b, "import os; print('secret' in globals(), os.listdir('/workspace'), [n for n in os.listdir('/tmp') if not n.startswith('.')])");
    assert.equal(r.stdout, 'False [] []');
    const mountB = (await sh(server, b, 'stat -c %d:%i /workspace')).stdout;
    assert.notEqual(mountB.trim(), '');
    assert.notEqual(mountA.trim(), mountB.trim(), "a second session got the first one's workspace");
    await api(server, 'DELETE', `/sessions/${b}`);
  });

  it('never hands one pooled sandbox to two concurrent creates', async () => {
    assert.ok(await waitFor(async () => (await health(server)).warm_pool.ready === 2, 20_000));
    const ids = await Promise.all([1, 2, 3, 4].map(() => createSession(server)));
    assert.equal(new Set(ids).size, 4);
    const mounts = await Promise.all(ids.map(async (id) => (await sh(server, id, 'stat -c %d:%i /workspace')).stdout.trim()));
    assert.equal(new Set(mounts).size, 4, `workspaces shared: ${mounts.join(', ')}`);
    // At capacity: no room for the pool, and a fifth create is refused with Retry-After.
    const h = await health(server);
    assert.equal(h.session_count, 4);
    assert.equal(h.warm_pool.ready + h.warm_pool.starting, 0, 'the pool grew past the session capacity');
    const refused = await api(server, 'POST', '/sessions', {});
    assert.equal(refused.status, 503);
    assert.match(refused.headers.get('retry-after') ?? '', /^\d+$/);
    for (const id of ids) await api(server, 'DELETE', `/sessions/${id}`);
    assert.ok(await waitFor(async () => (await health(server)).warm_pool.ready === 2, 20_000), 'the pool did not refill after deletes');
  });
});
