/**
 * The HTTP surface: the OpenAPI document, request validation (400 unknown tool, 422
 * bad input, 404 unknown session / route, malformed JSON), tool_use_id echo and
 * generation, timeout clamping, unknown fields ignored, /health, error bodies without
 * internals, and one JSON access-log line per request.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { startServer, api, createSession, py, exec, waitFor, type TestServer } from '../helpers/server.js';

let server: TestServer;
let id: string;

async function raw(method: string, path: string, body: string, contentType = 'application/json') {
  const res = await fetch(`${server.url}${path}`, { method, headers: { 'content-type': contentType }, body });
  const text = await res.text();
  let parsed: any = text;
  try {
    parsed = JSON.parse(text);
  } catch {
    /* not JSON */
  }
  return { status: res.status, headers: res.headers, body: parsed, text };
}

/** Access-log lines (JSON objects with msg "request") from the server's output. */
function accessLog(): Record<string, any>[] {
  return server
    .logs()
    .split('\n')
    .filter((l) => l.startsWith('{'))
    .map((l) => {
      try {
        return JSON.parse(l) as Record<string, any>;
      } catch {
        return {};
      }
    })
    .filter((o) => o.msg === 'request');
}

const errorBodies: { where: string; text: string }[] = [];
function noteError(where: string, body: unknown) {
  errorBodies.push({ where, text: typeof body === 'string' ? body : JSON.stringify(body) });
}

before(async () => {
  server = await startServer({ SANDBOX_WARM_POOL_SIZE: '2' });
  id = await createSession(server);
});
after(async () => {
  if (server && (server.proc.exitCode !== null || server.proc.signalCode !== null)) console.error(`server died early:\n${server.logs().slice(-4000)}`);
  await server?.stop();
});

test('GET /openapi.json serves the document with every route and the request schemas', async () => {
  const r = await api(server, 'GET', '/openapi.json');
  assert.equal(r.status, 200);
  assert.match(r.headers.get('content-type') ?? '', /^application\/json/);
  const doc = r.body;
  assert.match(doc.openapi, /^3\./);
  assert.equal(doc.info.title, 'otari-sandbox-container');
  const paths = Object.keys(doc.paths).map((p) => p.replace(/\{[^}]+\}/g, '{id}'));
  for (const p of [
    '/sessions',
    '/sessions/{id}',
    '/sessions/{id}/exec',
    '/sessions/{id}/files',
    '/sessions/{id}/files/list',
    '/sessions/{id}/programmatic-tools/register',
    '/health',
  ]) {
    assert.ok(paths.includes(p), `${p} in ${paths.join(', ')}`);
  }
  const execPath = Object.keys(doc.paths).find((p) => p.endsWith('/exec'))!;
  const post = doc.paths[execPath].post;
  const schema = post.requestBody.content['application/json'].schema;
  assert.deepEqual([...schema.required].sort(), ['input', 'tool']);
  assert.ok('timeout_seconds' in schema.properties && 'tool_use_id' in schema.properties);
  assert.ok(post.responses['200'], 'the exec response is documented');
  const sessionsPost = doc.paths['/sessions'].post;
  assert.ok(sessionsPost.responses['201'] && sessionsPost.responses['503']);
  assert.ok(doc.paths['/sessions/{id}'].delete || doc.paths[Object.keys(doc.paths).find((p) => /^\/sessions\/\{[^}]+\}$/.test(p))!].delete);
});

test('the result block shape is the same for the three tools', async () => {
  for (const [tool, input, type] of [
    ['code_execution', { code: 'print(1)' }, 'code_execution_tool_result'],
    ['bash_code_execution', { command: 'echo 1' }, 'bash_code_execution_tool_result'],
    ['text_editor_code_execution', { command: 'create', path: 'shape.txt', file_text: '1' }, 'text_editor_code_execution_tool_result'],
  ] as const) {
    const r = await exec(server, id, tool, input);
    assert.equal(r.status, 200);
    const b = r.body;
    assert.equal(b.result_block.type, type);
    assert.equal(b.result_block.tool_use_id, b.tool_use_id);
    const c = b.result_block.content;
    assert.ok(c && typeof c === 'object' && !Array.isArray(c), 'content is one object');
    assert.equal(c.type, 'code_execution_result');
    assert.equal(typeof c.stdout, 'string');
    assert.equal(typeof c.stderr, 'string');
    assert.equal(c.return_code, 0);
    assert.ok(Array.isArray(c.content));
    assert.ok(Number.isInteger(b.execution_time_ms));
    assert.equal(b.limit_exceeded, null);
    assert.equal(b.interpreter_restarted, false);
  }
});

test('tool_use_id is echoed when given, else generated as srvtoolu_ + 24 hex', async () => {
  const given = await py(server, id, 'print(1)', { tool_use_id: 'srvtoolu_otari-conformance-ok' });
  assert.equal(given.body.tool_use_id, 'srvtoolu_otari-conformance-ok');
  assert.equal(given.body.result_block.tool_use_id, 'srvtoolu_otari-conformance-ok');
  const seen = new Set<string>();
  for (const extra of [{}, { tool_use_id: null }, { tool_use_id: '' }]) {
    const r = await py(server, id, 'print(1)', extra);
    assert.equal(r.status, 200);
    assert.match(r.body.tool_use_id, /^srvtoolu_[0-9a-f]{24}$/, JSON.stringify(extra));
    assert.equal(r.body.result_block.tool_use_id, r.body.tool_use_id);
    seen.add(r.body.tool_use_id);
  }
  assert.equal(seen.size, 3, 'a fresh id each time');
  // It is echoed twice in the answer, so it is bounded (red team: 1.6 MB ids made answers
  // that escaped the memory budget): 256 characters pass, 257 are a 422.
  const long = await py(server, id, 'print(1)', { tool_use_id: 'a'.repeat(256) });
  assert.equal(long.status, 200);
  assert.equal(long.body.tool_use_id, 'a'.repeat(256));
  const tooLong = await py(server, id, 'print(1)', { tool_use_id: 'a'.repeat(257) });
  assert.equal(tooLong.status, 422, JSON.stringify(tooLong.body));
  assert.match(JSON.stringify(tooLong.body.detail), /tool_use_id/);
});

test('unknown tool is 400', async () => {
  for (const tool of ['python', 'bash', '', 'code_execution_20250825']) {
    const r = await api(server, 'POST', `/sessions/${id}/exec`, { tool, input: { code: 'print(1)' } });
    assert.equal(r.status, 400, tool);
    assert.equal(r.body.code, 'SBX_UNKNOWN_TOOL');
    assert.equal(typeof r.body.detail, 'string');
    noteError('unknown tool', r.body);
  }
});

test('input missing what its tool needs, or a bad body, is 422', async () => {
  const bodies: unknown[] = [
    { input: { code: 'print(1)' } },
    { tool: 'code_execution' },
    { tool: 'code_execution', input: 'print(1)' },
    { tool: 'code_execution', input: {} },
    { tool: 'code_execution', input: { code: '' } },
    { tool: 'code_execution', input: { code: 42 } },
    { tool: 'code_execution', input: { command: 'echo' } },
    { tool: 'bash_code_execution', input: { code: 'echo' } },
    { tool: 'text_editor_code_execution', input: { command: 'view' } },
    { tool: 'code_execution', input: { code: 'print(1)' }, timeout_seconds: 0 },
    { tool: 'code_execution', input: { code: 'print(1)' }, timeout_seconds: -3 },
    { tool: 'code_execution', input: { code: 'print(1)' }, timeout_seconds: 1.5 },
    { tool: 'code_execution', input: { code: 'print(1)' }, timeout_seconds: 'soon' },
    [1, 2],
  ];
  for (const body of bodies) {
    const r = await api(server, 'POST', `/sessions/${id}/exec`, body);
    assert.equal(r.status, 422, `${JSON.stringify(body)} -> ${r.status} ${JSON.stringify(r.body)}`);
    assert.equal(r.body.code, 'SBX_VALIDATION');
    assert.ok(r.body.detail !== undefined);
    noteError('422', r.body);
  }
  const tooLong = await api(server, 'POST', `/sessions/${id}/exec`, { tool: 'code_execution', input: { code: `#${'x'.repeat(200_001)}` } });
  assert.equal(tooLong.status, 422, 'code above 200000 characters');
});

test('unknown session is 404 for every session route', async () => {
  const ghost = 'sbx_000000000000000000000000';
  const checks = [
    await api(server, 'GET', `/sessions/${ghost}`),
    await api(server, 'POST', `/sessions/${ghost}/exec`, { tool: 'code_execution', input: { code: 'print(1)' } }),
    await api(server, 'GET', `/sessions/${ghost}/files?path=a`),
    await api(server, 'GET', `/sessions/${ghost}/files/list`),
    await api(server, 'POST', `/sessions/${ghost}/programmatic-tools/register`, { callback_url: 'http://127.0.0.1:9/', token: 't', tools: [] }),
  ];
  for (const r of checks) {
    assert.equal(r.status, 404);
    assert.equal(r.body.code, 'SBX_SESSION_NOT_FOUND');
    noteError('404 session', r.body);
  }
});

test('unknown route is 404 with a JSON error body', async () => {
  for (const [method, path] of [
    ['GET', '/nope'],
    ['POST', `/sessions/${id}/nope`],
  ] as const) {
    const r = await api(server, method, path);
    assert.equal(r.status, 404, `${method} ${path}`);
    assert.ok(r.body && typeof r.body === 'object' && 'detail' in r.body, JSON.stringify(r.body));
  }
});

test('malformed JSON is a 4xx with a JSON error body, never a 500', async () => {
  for (const [path, text] of [
    ['/sessions', '{bad json'],
    [`/sessions/${id}/exec`, '{"tool": "code_execution", "input": {"code": "print(1)"'],
    [`/sessions/${id}/exec`, 'not json at all'],
  ] as const) {
    const r = await raw('POST', path, text);
    assert.ok(r.status >= 400 && r.status < 500, `${path}: ${r.status}`);
    assert.ok(r.body && typeof r.body === 'object' && 'detail' in r.body, r.text);
    noteError('malformed', r.body);
  }
});

test('timeout_seconds above the ceiling is clamped, not refused', async () => {
  const r = await py(server, id, 'print("ok")', { timeout_seconds: 100_000 });
  assert.equal(r.status, 200);
  assert.equal(r.stdout, 'ok');
  const limited = await py(server, id, 'print("ok")', { timeout_seconds: 1 });
  assert.equal(limited.stdout, 'ok');
});

test('unknown request fields and an Authorization header are ignored', async () => {
  const r = await api(server, 'POST', `/sessions/${id}/exec`, { tool: 'code_execution', input: { code: 'print("x")', extra: 1 }, image: 'foo', stream: false });
  assert.equal(r.status, 200);
  assert.equal(r.body.result_block.content.stdout, 'x');
  const secret = `Bearer gw-${randomBytes(8).toString('hex')}`;
  const res = await fetch(`${server.url}/sessions/${id}/exec`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', authorization: secret },
    body: JSON.stringify({ tool: 'code_execution', input: { code: 'print(2)' } }),
  });
  assert.equal(res.status, 200);
  // (log lines are written in batches: wait for the line, an event, not for a fixed time)
  assert.ok(await waitFor(() => server.logs().includes(`"url":"/sessions/${id}/exec"`), 10_000), 'the request was logged');
  assert.ok(!server.logs().includes(secret.slice(7)), 'the Authorization header is never logged');
});

test('execution_time_ms measures the call', async () => {
  // Bounds that load cannot break: at least the 0.3 s the code sleeps, at most the time the
  // client waited for the whole request (a figure in the wrong unit or of the wrong span
  // fails one of them).
  const t0 = performance.now();
  const r = await py(server, id, 'import time\ntime.sleep(0.3)');
  const clientMs = performance.now() - t0;
  assert.ok(r.body.execution_time_ms >= 290 && r.body.execution_time_ms <= clientMs + 1, `${r.body.execution_time_ms} ms (the client waited ${Math.round(clientMs)} ms)`);
});

test('/health reports status, session count, max sessions, version, isolation and the warm pool', async () => {
  const h1 = await api(server, 'GET', '/health');
  assert.equal(h1.status, 200);
  assert.equal(h1.body.status, 'ok');
  assert.ok(Number.isInteger(h1.body.session_count));
  assert.equal(h1.body.max_sessions, 32);
  assert.match(h1.body.version, /^\d+\.\d+\.\d+/);
  assert.equal(typeof h1.body.isolation, 'object');
  assert.equal(typeof h1.body.isolation.mode, 'string');
  // Open files have no per-cgroup count: /health says the session bound and the host's.
  assert.match(h1.body.isolation.open_files, /RLIMIT_NOFILE 256 .*fs\.file-max/);
  assert.ok(h1.body.warm_pool && typeof h1.body.warm_pool === 'object');
  const sid = await createSession(server);
  const h2 = await api(server, 'GET', '/health');
  assert.equal(h2.body.session_count, h1.body.session_count + 1);
  await api(server, 'DELETE', `/sessions/${sid}`);
  const h3 = await api(server, 'GET', '/health');
  assert.equal(h3.body.session_count, h1.body.session_count);
});

test('one JSON access-log line per request, with method, path, status, duration and session id', async () => {
  const ghost = `sbx_${randomBytes(12).toString('hex')}`;
  // Log lines are written in batches, a little after their request, in request order: once
  // the line of a fence request is out, so is every line before it (an event, not a sleep).
  const fence = async () => {
    const f = `sbx_${randomBytes(12).toString('hex')}`;
    await api(server, 'GET', `/sessions/${f}`);
    assert.ok(await waitFor(() => accessLog().some((l) => JSON.stringify(l).includes(f)), 10_000), 'the fence request was logged');
  };
  await fence();
  const before = accessLog().length;
  await api(server, 'GET', `/sessions/${ghost}`);
  await py(server, id, 'print("logged")');
  await api(server, 'GET', '/health');
  await fence();
  const lines = accessLog().slice(0, -1); // without the fence's own line
  assert.equal(lines.length - before, 3, `exactly one line per request: ${JSON.stringify(lines.slice(before))}`);
  const ghostLines = lines.filter((l) => JSON.stringify(l).includes(ghost));
  assert.equal(ghostLines.length, 1);
  const g = ghostLines[0]!;
  assert.equal(g.method, 'GET');
  assert.equal(g.status, 404);
  assert.equal(g.session_id, ghost);
  assert.equal(typeof g.duration_ms, 'number');
  assert.match(String(g.path), /^\/sessions\//);
  const e = lines.at(-2)!;
  assert.equal(e.method, 'POST');
  assert.equal(e.status, 200);
  assert.equal(e.session_id, id);
  assert.match(String(e.path), /\/exec$/);
  assert.ok(e.duration_ms >= 0);
  const h = lines.at(-1)!;
  assert.equal(h.path, '/health');
  assert.equal(h.status, 200);
  assert.ok(!server.logs().includes('print("logged")'), 'request bodies are not logged');
});

test('error bodies carry no stack traces, host paths or internals', async () => {
  const extra = [
    await api(server, 'GET', `/sessions/${id}/files?path=../../etc/passwd`),
    await api(server, 'GET', `/sessions/${id}/files?path=missing.txt`),
    await api(server, 'GET', `/sessions/${id}/files?path=.`),
    await api(server, 'GET', `/sessions/${id}/files/list?path=missing`),
  ];
  for (const r of extra) noteError(`files ${r.status}`, r.body);
  assert.ok(errorBodies.length > 10);
  for (const { where, text } of errorBodies) {
    assert.ok(!text.includes(server.sessionsRoot), `${where}: ${text}`);
    assert.ok(!text.includes('/work/'), `${where}: ${text}`);
    assert.ok(!/\n\s+at /.test(text) && !text.includes('.js:'), `${where}: ${text}`);
    assert.ok(!/box_[0-9a-f]{24}/.test(text), `${where}: ${text}`);
  }
});
