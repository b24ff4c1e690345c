/**
 * Authentication and the Host allow-list against the real server: SANDBOX_API_TOKEN (two
 * tokens, for rotation) guards every route but /health (which shows only a public view
 * without it) with the contract's error body;
 * tokens never reach the log; the warm-up passes its own check; a Host header off the
 * allow-list is refused before anything else runs.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { request } from 'node:http';
import { api, startServer, type TestServer } from '../helpers/server.js';

const TOKEN_A = 'tok-a-0123456789abcdef0123';
const TOKEN_B = 'tok-b-fedcba9876543210fedc';
let server: TestServer;

before(async () => {
  // The warm-up stays on: its requests must carry the token to pass (main.ts), so a server
  // that starts at all shows that.
  server = await startServer({ SANDBOX_API_TOKEN: ` ${TOKEN_A} , ${TOKEN_B} `, SANDBOX_WARMUP: '1' });
});
after(async () => {
  await server?.stop();
});

const call = (method: string, path: string, headers: Record<string, string> = {}, body?: unknown) => api(server, method, path, body, headers);

const bearer = (t: string) => ({ authorization: `Bearer ${t}` });

test('/health answers without a token, showing nothing of the host; with the token, all of it', async () => {
  const r = await call('GET', '/health');
  assert.equal(r.status, 200);
  assert.equal(r.body.status, 'ok');
  assert.equal(r.body.auth, 'bearer');
  // (red team of issue 12: the open /health showed cgroup paths, the host uid range and
  // host limits to anyone who could reach the port)
  assert.deepEqual(Object.keys(r.body).sort(), ['auth', 'max_sessions', 'replica', 'session_count', 'status', 'version']);
  for (const wrong of [{}, bearer('tok-a-0123456789abcdef012'), { authorization: TOKEN_A }]) {
    const w = await call('GET', '/health', wrong);
    assert.equal(w.status, 200);
    assert.equal(w.body.isolation, undefined, JSON.stringify(w.body));
    assert.doesNotMatch(w.text, /cgroup|uid_range|\/sys\//);
  }
  for (const t of [TOKEN_A, TOKEN_B]) {
    const full = await call('GET', '/health', bearer(t));
    assert.equal(full.status, 200);
    assert.equal(typeof full.body.isolation?.mode, 'string', JSON.stringify(full.body).slice(0, 300));
    assert.ok(full.body.warm_pool !== undefined && full.body.memory_budget !== undefined && full.body.event_loop !== undefined);
  }
});

test('the warm-up ran through the auth check (its requests carried the token)', () => {
  assert.match(server.logs(), /warm-up done/);
  assert.doesNotMatch(server.logs(), /warm-up ended early/);
});

test('every other route answers 401 with the contract error body without a valid token', async () => {
  const wrong = [{}, bearer('tok-a-0123456789abcdef012'), bearer(`${TOKEN_A}x`), { authorization: TOKEN_A }, { authorization: `Basic ${TOKEN_A}` }, bearer('')];
  const routes: [string, string, unknown?][] = [
    ['POST', '/sessions', {}],
    ['GET', '/sessions/nope'],
    ['DELETE', '/sessions/nope'],
    ['POST', '/sessions/nope/exec', { tool: 'code_execution', input: { code: 'print(1)' } }],
    ['GET', '/sessions/nope/files'],
    ['GET', '/sessions/nope/files/list'],
    ['POST', '/sessions/nope/programmatic-tools/register', {}],
    ['GET', '/no-such-route'],
  ];
  for (const [method, path, body] of routes) {
    for (const headers of wrong) {
      const r = await call(method, path, headers, body);
      assert.equal(r.status, 401, `${method} ${path} with ${JSON.stringify(Object.keys(headers))}`);
      assert.deepEqual(r.body, { detail: 'missing or invalid bearer token', code: 'SBX_UNAUTHORIZED' });
      assert.equal(r.headers.get('www-authenticate'), 'Bearer');
    }
  }
});

test('either rotated token works for the whole contract flow', async () => {
  for (const token of [TOKEN_A, TOKEN_B]) {
    const created = await call('POST', '/sessions', bearer(token), {});
    assert.equal(created.status, 201);
    const id = created.body.session_id as string;
    const ran = await call('POST', `/sessions/${id}/exec`, { authorization: `bearer  ${token}` }, { tool: 'code_execution', input: { code: 'print(6*7)' } });
    assert.equal(ran.status, 200);
    assert.equal(ran.body.result_block.content.stdout.trim(), '42');
    // A session made with one token is reachable with the other (one principal).
    const other = token === TOKEN_A ? TOKEN_B : TOKEN_A;
    assert.equal((await call('GET', `/sessions/${id}`, bearer(other))).status, 200);
    assert.equal((await call('DELETE', `/sessions/${id}`, bearer(token))).status, 204);
  }
});

test('tokens never appear in the log, even after failed attempts', async () => {
  await call('POST', '/sessions', bearer(`${TOKEN_A}-not`), {});
  const logs = server.logs();
  assert.match(logs, /bearer authentication on/);
  assert.equal(logs.includes(TOKEN_A), false);
  assert.equal(logs.includes(TOKEN_B), false);
});

/** A raw request with a chosen Host header (fetch does not let one set it). */
function withHost(host: string, path: string, headers: Record<string, string> = {}): Promise<{ status: number; body: any }> {
  const url = new URL(server.url);
  return new Promise((resolve, reject) => {
    const req = request({ host: url.hostname, port: url.port, path, method: 'GET', headers: { host, ...headers } }, (res) => {
      let text = '';
      res.on('data', (c: Buffer) => (text += c.toString('utf8')));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body: JSON.parse(text) }));
    });
    req.on('error', reject);
    req.end();
  });
}

test('bound to loopback, a Host header naming another host is refused (DNS rebinding), even for /health', async () => {
  for (const host of ['evil.example', 'evil.example:8080', '127.0.0.1.evil.example', 'localhost.evil.example']) {
    const r = await withHost(host, '/health');
    assert.equal(r.status, 403, host);
    assert.equal(r.body.code, 'SBX_HOST_NOT_ALLOWED');
    assert.equal((await withHost(host, '/sessions/nope', bearer(TOKEN_A))).status, 403, host);
  }
  for (const host of ['localhost', `localhost:${new URL(server.url).port}`, '127.0.0.1', '[::1]:80']) {
    assert.equal((await withHost(host, '/health')).status, 200, host);
  }
});

test('a token that is too short or malformed stops the server at start, without echoing it', async () => {
  const secret = 'short-secret';
  await assert.rejects(
    startServer({ SANDBOX_API_TOKEN: `${TOKEN_A},${secret}` }),
    (e: Error) => /token 2 is shorter than 16 characters/.test(e.message) && !e.message.includes(secret),
  );
});

test('an explicit allow-list admits its names only; * admits any', async () => {
  const listed = await startServer({ SANDBOX_ALLOWED_HOSTS: 'sandbox.internal, Other.Example', SANDBOX_WARMUP: '1' });
  try {
    const saved = server;
    server = listed;
    try {
      assert.equal((await withHost('sandbox.internal:8080', '/health')).status, 200);
      assert.equal((await withHost('other.example', '/health')).status, 200);
      assert.equal((await withHost('localhost', '/health')).status, 403);
      assert.doesNotMatch(listed.logs(), /warm-up ended early/);
    } finally {
      server = saved;
    }
  } finally {
    await listed.stop();
  }
  const any = await startServer({ SANDBOX_ALLOWED_HOSTS: '*', SANDBOX_WARMUP: '0' });
  try {
    const saved = server;
    server = any;
    try {
      assert.equal((await withHost('anything.example', '/health')).status, 200);
      // No token configured: the API is open (a 404 for a missing session, not a 401).
      assert.equal((await withHost('anything.example', '/sessions/nope')).status, 404);
    } finally {
      server = saved;
    }
  } finally {
    await any.stop();
  }
});
