/**
 * GET /metrics against the real server: Prometheus text, the same bearer token as the API
 * (SANDBOX_METRICS_PUBLIC opens it), counts that follow what clients did (the start-up
 * warm-up's are not counted), refusals by code, and no session ids in any label.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { api, startServer, type TestServer } from '../helpers/server.js';

const TOKEN = 'metrics-token-0123456789abcdef';
const auth = { authorization: `Bearer ${TOKEN}` };
let server: TestServer;

before(async () => {
  server = await startServer({ SANDBOX_API_TOKEN: TOKEN, SANDBOX_WARMUP: '1', SANDBOX_EXEC_QUEUE_MAX: '0', SANDBOX_SESSION_GC_INTERVAL: '1' });
});
after(async () => {
  await server?.stop();
});

const call = (method: string, path: string, body?: unknown, headers: Record<string, string> = auth) => api(server, method, path, body, headers);

/** Every sample of the exposition: `name{labels}` -> value. */
async function scrape(): Promise<{ text: string; value: (name: string, labels?: Record<string, string>) => number }> {
  const r = await call('GET', '/metrics');
  assert.equal(r.status, 200);
  assert.match(r.headers.get('content-type') ?? '', /^text\/plain; version=0\.0\.4/);
  const samples = new Map<string, number>();
  for (const line of r.text.split('\n')) {
    const m = /^([a-z_:][a-z0-9_:]*)(\{[^}]*\})? (\S+)$/i.exec(line);
    if (m) samples.set(`${m[1]}${m[2] ?? ''}`, Number(m[3]));
  }
  return {
    text: r.text,
    value: (name, labels) => {
      const key = labels
        ? `${name}{${Object.entries(labels)
            .map(([k, v]) => `${k}="${v}"`)
            .join(',')}}`
        : name;
      return samples.get(key) ?? 0;
    },
  };
}

const run = (id: string, tool: string, input: Record<string, unknown>, extra: Record<string, unknown> = {}) => call('POST', `/sessions/${id}/exec`, { tool, input, ...extra });

test('/metrics needs the token like the API', async () => {
  const r = await call('GET', '/metrics', undefined, {});
  assert.equal(r.status, 401);
  assert.equal(r.body.code, 'SBX_UNAUTHORIZED');
});

test('counts follow what clients did, the warm-up not included; no label holds a session id', async () => {
  const first = await scrape();
  // The warm-up created a session and ran ~1000 calls before listening: none is counted.
  assert.equal(first.value('sandbox_sessions_created_total'), 0);
  assert.equal(first.value('sandbox_execs_total', { tool: 'code_execution', outcome: 'ok' }), 0);
  assert.match(first.text, /^process_cpu_user_seconds_total /m);
  assert.equal(first.value('sandbox_rejections_total', { code: 'SBX_UNAUTHORIZED' }), 1); // the test above

  const created = await call('POST', '/sessions', {});
  assert.equal(created.status, 201);
  const id = created.body.session_id as string;
  assert.equal((await run(id, 'code_execution', { code: 'print(1)' })).status, 200);
  assert.equal((await run(id, 'code_execution', { code: 'print(2)' })).status, 200);
  assert.equal((await run(id, 'bash_code_execution', { command: 'exit 3' })).status, 200);
  assert.equal((await run(id, 'text_editor_code_execution', { command: 'create', path: 'a.txt', file_text: 'x\n' })).status, 200);
  const slow = await run(id, 'code_execution', { code: 'import time\ntime.sleep(60)' }, { timeout_seconds: 1 });
  assert.equal(slow.body.limit_exceeded, 'wall_clock');
  assert.equal((await run(id, 'code_execution', { nope: 1 })).status, 422);
  assert.equal((await run('no-such-session', 'code_execution', { code: '1' })).status, 404);

  const m = await scrape();
  assert.equal(m.value('sandbox_sessions_created_total'), 1);
  assert.equal(m.value('sandbox_sessions_active'), 1);
  assert.equal(m.value('sandbox_execs_total', { tool: 'code_execution', outcome: 'ok' }), 2);
  assert.equal(m.value('sandbox_execs_total', { tool: 'bash_code_execution', outcome: 'error' }), 1);
  assert.equal(m.value('sandbox_execs_total', { tool: 'text_editor_code_execution', outcome: 'ok' }), 1);
  assert.equal(m.value('sandbox_execs_total', { tool: 'code_execution', outcome: 'wall_clock' }), 1);
  assert.equal(m.value('sandbox_execs_total', { tool: 'code_execution', outcome: 'SBX_VALIDATION' }), 1);
  assert.equal(m.value('sandbox_limits_exceeded_total', { kind: 'wall_clock' }), 1);
  assert.equal(m.value('sandbox_exec_duration_seconds_count', { tool: 'code_execution' }), 3);
  assert.equal(m.value('sandbox_warm_pool_hits_total') + m.value('sandbox_warm_pool_misses_total'), 1);
  assert.equal(m.text.includes(id), false, 'no session id in the exposition');

  assert.equal((await call('DELETE', `/sessions/${id}`)).status, 204);
  const after = await scrape();
  assert.equal(after.value('sandbox_sessions_deleted_total'), 1);
  assert.equal(after.value('sandbox_sessions_active'), 0);
});

test("a busy session's 429 is counted by code and by tool", async () => {
  const id = (await call('POST', '/sessions', {})).body.session_id as string;
  // The running call says it has started (a file), then waits for a file the test uploads.
  const running = run(id, 'code_execution', {
    code: "import os, time\nopen('started', 'w').close()\nwhile not os.path.exists('release'): time.sleep(0.02)\nprint('done')",
  });
  while ((await call('GET', `/sessions/${id}/files?path=started`)).status !== 200) await new Promise((r) => setTimeout(r, 20));
  const busy = await run(id, 'code_execution', { code: 'print(1)' });
  assert.equal(busy.status, 429);
  const form = new FormData();
  form.append('path', 'release');
  form.append('file', new Blob(['x']), 'release');
  assert.equal((await fetch(`${server.url}/sessions/${id}/files`, { method: 'POST', body: form, headers: auth })).status, 201);
  assert.equal((await running).body.result_block.content.stdout, 'done');
  const m = await scrape();
  assert.equal(m.value('sandbox_rejections_total', { code: 'SBX_SESSION_BUSY' }), 1);
  assert.equal(m.value('sandbox_execs_total', { tool: 'code_execution', outcome: 'SBX_SESSION_BUSY' }), 1);
  await call('DELETE', `/sessions/${id}`);
});

test('an expired session is counted as reaped, not deleted', async () => {
  const before = (await scrape()).value('sandbox_sessions_deleted_total');
  assert.equal((await call('POST', '/sessions', { idle_timeout_seconds: 1 })).status, 201);
  // The reaper runs every second (SANDBOX_SESSION_GC_INTERVAL=1): wait for its count.
  for (;;) {
    const m = await scrape();
    if (m.value('sandbox_sessions_reaped_total') === 1) {
      assert.equal(m.value('sandbox_sessions_deleted_total'), before);
      break;
    }
    await new Promise((r) => setTimeout(r, 200));
  }
});

test('SANDBOX_METRICS_PUBLIC serves /metrics without the token; the API still needs it', async () => {
  const open = await startServer({ SANDBOX_API_TOKEN: TOKEN, SANDBOX_METRICS_PUBLIC: '1', SANDBOX_WARMUP: '0' });
  try {
    const m = await fetch(`${open.url}/metrics`);
    assert.equal(m.status, 200);
    assert.match(await m.text(), /^sandbox_sessions_active 0$/m);
    assert.equal((await fetch(`${open.url}/sessions`, { method: 'POST' })).status, 401);
  } finally {
    await open.stop();
  }
});
