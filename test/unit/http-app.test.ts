/**
 * The HTTP layer without a sandbox: buildApp() with fake services, driven by inject().
 * The fakes record every call, so these tests see what the routes ask of the services
 * (and how often), not only what they answer.
 */
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { pino } from 'pino';
import { Readable } from 'node:stream';
import { buildApp } from '../../src/http/app.js';
import type { App, Executor, SessionStore } from '../../src/http/types.js';
import { loadConfig } from '../../src/config.js';
import { MemoryBudget } from '../../src/budget.js';
import { SandboxError } from '../../src/errors.js';
import { Session } from '../../src/sessions/session.js';
import type { Box } from '../../src/sessions/box.js';
import type { ExecBody } from '../../src/sessions/exec.js';
import type { ExecResponse } from '../../src/tools/result.js';

const NOT_FOUND = (id: string) => ({ detail: `session not found: ${id}`, code: 'SBX_SESSION_NOT_FOUND' });
/** A time no request can produce: a session whose lastActivityAt is still this was not touched. */
const UNTOUCHED = 1000;

/** Not typed here: main's IsolationInfo gains fields (`interpreters`) and narrows `mode`;
 * a variable (not a literal) passes either shape. */
const ISOLATION = {
  mode: 'root' as const,
  interpreters: 'fake',
  commands: 'fake',
  protections: [],
  uid_per_session: true,
  disk_quota: 'none',
  memory_limit: 'none',
  socket_memory: 'none',
  kernel_memory: 'none',
  sessions_total: 'none',
  ptys: 'none',
  system_files: 'overlaid',
  device_nodes: 'own',
};

function answer(stdout: string): ExecResponse {
  return {
    tool_use_id: 'toolu_1',
    result_block: { type: 'code_execution_tool_result', tool_use_id: 'toolu_1', content: { type: 'code_execution_result', stdout, stderr: '', return_code: 0, content: [] } },
    execution_time_ms: 3,
    limit_exceeded: null,
    interpreter_restarted: false,
    stdout_dropped_bytes: 0,
    stderr_dropped_bytes: 0,
  };
}

interface Fixture {
  app: App;
  session: Session;
  libDir: string;
  /** Every call the fakes received, in order: [service.method, ...args]. */
  calls: unknown[][];
  /** Ids the fake store says exist (has) while get() finds nothing: a session that ended
   * while its request's body was being read. */
  vanishing: Set<string>;
  count(method: string): number;
}

async function setup(
  t: TestContext,
  opts: { budget?: MemoryBudget; exec?: Executor['exec']; download?: () => { stream: Readable | Buffer; size: number } } = {},
): Promise<Fixture> {
  const libDir = await mkdtemp(`${tmpdir()}/sbx-unit-lib-`);
  t.after(() => rm(libDir, { recursive: true, force: true }));
  const calls: unknown[][] = [];
  const fs = {
    async list(p: { rel: string }, display: string, opts: { recursive: boolean }) {
      calls.push(['fs.list', p.rel, display, opts.recursive]);
      return { entries: [{ path: 'a.py', size_bytes: 1, mime_type: 'text/x-python', modified_at: 1 }], truncated: false, jsonBytes: 80 };
    },
    async streamFile(p: { rel: string }, display: string, maxBytes: number) {
      calls.push(['fs.streamFile', p.rel, display, maxBytes]);
      return opts.download ? opts.download() : { stream: Buffer.from('hello'), size: 5 };
    },
  };
  const box = { undoDir: `${libDir}/undo`, undoMaxBytes: 0, libDir, fs } as unknown as Box;
  const session = new Session('sbx_known', box, 300, 3600);
  session.lastActivityAt = UNTOUCHED;
  const live = new Map([[session.id, session]]);
  const vanishing = new Set<string>();
  const sessions: SessionStore = {
    get count() {
      return live.size;
    },
    cleaning: 0,
    replica: 'test',
    poolState: () => ({ target: 2, ready: 1, starting: 1, min: 2, max: 8 }),
    has(id) {
      calls.push(['sessions.has', id]);
      return live.has(id) || vanishing.has(id);
    },
    get(id) {
      calls.push(['sessions.get', id]);
      const s = live.get(id);
      if (!s) throw new SandboxError('SBX_SESSION_NOT_FOUND', `session not found: ${id}`);
      return s;
    },
    async create(opts) {
      calls.push(['sessions.create', opts]);
      return session;
    },
    async destroy(id) {
      calls.push(['sessions.destroy', id]);
      return live.delete(id);
    },
  };
  const exec: Executor = {
    async exec(target: Session, body: ExecBody, signal?: AbortSignal) {
      calls.push(['exec.exec', target.id, body, signal instanceof AbortSignal]);
      return opts.exec ? opts.exec(target, body, signal) : answer('hi\n');
    },
  };
  const app = await buildApp({
    config: loadConfig({}),
    log: pino({ level: 'silent' }),
    sessions,
    exec,
    isolation: ISOLATION,
    version: '0.0.0-test',
    budget: opts.budget ?? new MemoryBudget(64 * 1024 * 1024),
  });
  t.after(() => app.close());
  return { app, session, libDir, calls, vanishing, count: (method) => calls.filter((c) => c[0] === method).length };
}

const json = (payload: unknown) => ({ headers: { 'content-type': 'application/json' }, payload: JSON.stringify(payload) });

test('an unknown session is 404 SBX_SESSION_NOT_FOUND on every route under /sessions/:id, from one lookup', async (t) => {
  const f = await setup(t);
  const boundary = 'b0undary';
  const upload = `--${boundary}\r\nContent-Disposition: form-data; name="file"; filename="f.txt"\r\n\r\nabc\r\n--${boundary}--\r\n`;
  const requests = [
    { method: 'GET', url: '/sessions/sbx_nope' },
    { method: 'GET', url: '/sessions/sbx_nope/files?path=a.txt' },
    { method: 'GET', url: '/sessions/sbx_nope/files/list' },
    { method: 'POST', url: '/sessions/sbx_nope/files', headers: { 'content-type': `multipart/form-data; boundary=${boundary}` }, payload: upload },
  ] as const;
  for (const r of requests) {
    f.calls.length = 0;
    const res = await f.app.inject(r);
    assert.equal(res.statusCode, 404, `${r.method} ${r.url}`);
    assert.deepEqual(res.json(), NOT_FOUND('sbx_nope'), `${r.method} ${r.url}`);
    assert.deepEqual(f.calls, [['sessions.get', 'sbx_nope']], `${r.method} ${r.url}`);
  }
});

test('a JSON POST to an unknown session is refused before its body is read; one that ends while it is read, by the lookup', async (t) => {
  const f = await setup(t);
  const call = { tool: 'code_execution', input: { code: 'print(1)' } };
  let res = await f.app.inject({ method: 'POST', url: '/sessions/sbx_nope/exec', ...json(call) });
  assert.equal(res.statusCode, 404);
  assert.deepEqual(res.json(), NOT_FOUND('sbx_nope'));
  assert.deepEqual(f.calls, [['sessions.has', 'sbx_nope']]);

  f.vanishing.add('sbx_gone');
  for (const [url, body] of [
    ['/sessions/sbx_gone/exec', call],
    ['/sessions/sbx_gone/programmatic-tools/register', { callback_url: 'http://127.0.0.1:1/t', token: 'tok', tools: [] }],
  ] as const) {
    f.calls.length = 0;
    res = await f.app.inject({ method: 'POST', url, ...json(body) });
    assert.equal(res.statusCode, 404, url);
    assert.deepEqual(res.json(), NOT_FOUND('sbx_gone'), url);
    assert.deepEqual(f.calls, [
      ['sessions.has', 'sbx_gone'],
      ['sessions.get', 'sbx_gone'],
    ]);
  }
});

test("a known session's exec goes to the exec service with the session's id, the validated body and an abort signal", async (t) => {
  const f = await setup(t);
  const res = await f.app.inject({
    method: 'POST',
    url: '/sessions/sbx_known/exec',
    ...json({ tool: 'bash_code_execution', input: { command: 'ls' }, timeout_seconds: '7', extra: 1 }),
  });
  assert.equal(res.statusCode, 200);
  assert.deepEqual(res.json(), answer('hi\n'));
  const execs = f.calls.filter((c) => c[0] === 'exec.exec');
  // timeout_seconds coerced from "7" by the body schema; unknown fields pass through.
  assert.deepEqual(execs, [['exec.exec', 'sbx_known', { tool: 'bash_code_execution', input: { command: 'ls' }, timeout_seconds: 7, extra: 1 }, true]]);
  // The exec service touches the session once it knows the tool: the route does not.
  assert.equal(f.session.lastActivityAt, UNTOUCHED);
});

test('validation errors are 422 with a FastAPI-style detail, before the session is looked up', async (t) => {
  const f = await setup(t);
  const cases = [
    { req: { method: 'POST', url: '/sessions/sbx_known/exec', ...json({ input: {} }) }, detail: [{ type: 'missing', loc: ['body', 'tool'], msg: 'Field required', input: null }] },
    {
      req: { method: 'POST', url: '/sessions/sbx_known/exec', ...json({ tool: 'code_execution', input: 'x' }) },
      detail: [{ type: 'type', loc: ['body', 'input'], msg: 'must be object', input: null }],
    },
    { req: { method: 'GET', url: '/sessions/sbx_nope/files' }, detail: [{ type: 'missing', loc: ['query', 'path'], msg: 'Field required', input: null }] },
    { req: { method: 'GET', url: '/sessions/sbx_known/files/list?recursive=maybe' }, detail: [{ type: 'type', loc: ['query', 'recursive'], msg: 'must be boolean', input: null }] },
    {
      req: { method: 'GET', url: `/sessions/${'x'.repeat(129)}` },
      detail: [{ type: 'maxLength', loc: ['path', 'id'], msg: 'must NOT have more than 128 characters', input: null }],
    },
  ] as const;
  for (const { req, detail } of cases) {
    const res = await f.app.inject(req);
    assert.equal(res.statusCode, 422, req.url);
    assert.deepEqual(res.json(), { detail, code: 'SBX_VALIDATION' }, req.url);
  }
  assert.equal(f.count('sessions.get'), 0);
  assert.equal(f.count('exec.exec'), 0);
  assert.equal(f.session.lastActivityAt, UNTOUCHED);
});

test('each request under /sessions/:id looks its session up once, and touches it where it did before', async (t) => {
  const f = await setup(t);
  const routes = [
    { req: { method: 'GET', url: '/sessions/sbx_known' }, status: 200, touches: false },
    { req: { method: 'POST', url: '/sessions/sbx_known/exec', ...json({ tool: 'code_execution', input: { code: '1' } }) }, status: 200, touches: false },
    { req: { method: 'GET', url: '/sessions/sbx_known/files?path=a.txt' }, status: 200, touches: true },
    { req: { method: 'GET', url: '/sessions/sbx_known/files/list?recursive=true' }, status: 200, touches: true },
    {
      req: { method: 'POST', url: '/sessions/sbx_known/programmatic-tools/register', ...json({ callback_url: 'http://127.0.0.1:1/t', token: 'tok', tools: [{ name: 'f' }] }) },
      status: 200,
      touches: true,
    },
  ] as const;
  for (const { req, status, touches } of routes) {
    f.calls.length = 0;
    f.session.lastActivityAt = UNTOUCHED;
    const res = await f.app.inject(req);
    assert.equal(res.statusCode, status, `${req.method} ${req.url}: ${res.body}`);
    assert.equal(f.count('sessions.get'), 1, `${req.method} ${req.url}`);
    assert.equal(f.session.lastActivityAt !== UNTOUCHED, touches, `${req.method} ${req.url} touches`);
  }
  // What the handlers did with the session they were given.
  assert.equal((await f.app.inject({ method: 'GET', url: '/sessions/sbx_known' })).json().session_id, 'sbx_known');
  assert.equal((await f.app.inject({ method: 'GET', url: '/sessions/sbx_known/files?path=a.txt' })).body, 'hello');
  assert.match(await readFile(`${f.libDir}/_platform_tools.py`, 'utf8'), /\bf\b/);
  assert.deepEqual(f.session.tools?.names, new Set(['f']));
});

test('DELETE /sessions/:id stays idempotent: 204 for an unknown id, with no lookup', async (t) => {
  const f = await setup(t);
  for (const id of ['sbx_known', 'sbx_known', 'sbx_nope']) {
    const res = await f.app.inject({ method: 'DELETE', url: `/sessions/${id}` });
    assert.equal(res.statusCode, 204, id);
    assert.equal(res.body, '');
  }
  assert.deepEqual(f.calls, [
    ['sessions.destroy', 'sbx_known'],
    ['sessions.destroy', 'sbx_known'],
    ['sessions.destroy', 'sbx_nope'],
  ]);
});

test('POST /sessions and /health answer from the services they are given', async (t) => {
  const f = await setup(t);
  const created = await f.app.inject({ method: 'POST', url: '/sessions', ...json({ idle_timeout_seconds: null, max_lifetime_seconds: 5 }) });
  assert.equal(created.statusCode, 201);
  assert.equal(created.json().session_id, 'sbx_known');
  assert.deepEqual(f.calls, [['sessions.create', { idleTimeoutSeconds: undefined, maxLifetimeSeconds: 5 }]]);
  const health = await f.app.inject({ method: 'GET', url: '/health' });
  assert.equal(health.statusCode, 200);
  const h = health.json();
  assert.equal(h.session_count, 1);
  assert.equal(h.version, '0.0.0-test');
  assert.deepEqual(h.warm_pool, { target: 2, ready: 1, starting: 1, min: 2, max: 8 });
  assert.deepEqual(h.isolation, ISOLATION);
});

test('a large body stays charged to the memory budget until its answer ends (a waiting call holds it); past the budget, 503 with Retry-After', async (t) => {
  const budget = new MemoryBudget(1024 * 1024);
  const waiting: (() => void)[] = [];
  const f = await setup(t, {
    budget,
    exec: () => new Promise<ExecResponse>((resolve) => waiting.push(() => resolve(answer('done\n')))),
  });
  const post = (body: unknown) => f.app.inject({ method: 'POST', url: '/sessions/sbx_known/exec', ...json(body) });
  const call = (padding: number) => post({ tool: 'code_execution', input: { code: 'x' }, padding: 'p'.repeat(padding) });
  /** Until `n` calls wait in the (fake) exec service. */
  const calls = async (n: number) => {
    while (waiting.length < n) await new Promise((r) => setImmediate(r));
  };
  const raw = JSON.stringify({ tool: 'code_execution', input: { code: 'x' }, padding: 'p'.repeat(200_000) }).length;
  const first = call(200_000);
  const second = call(200_000);
  await calls(2);
  // Both held at their parsed size (2 bytes per byte of text, plus their few tokens), not
  // the three times their raw size they held while arriving.
  assert.ok(budget.usedBytes >= 2 * 2 * raw && budget.usedBytes < 2 * 3 * raw, `${budget.usedBytes} bytes held for two bodies of ${raw}`);
  // A third does not fit: refused before the call is made.
  const third = await call(200_000);
  assert.equal(third.statusCode, 503);
  assert.equal(third.json().code, 'SBX_SERVER_BUSY');
  assert.equal(third.headers['retry-after'], '1');
  assert.equal(waiting.length, 2);
  // A small body is never charged, however full the budget.
  const small = call(1000);
  await calls(3);
  for (const w of waiting.splice(0)) w();
  for (const r of await Promise.all([first, second, small])) assert.equal(r.statusCode, 200);
  assert.equal(budget.usedBytes, 0);
  // Few bytes with many values are charged by their values.
  const values = post({ tool: 'code_execution', input: { code: 'x' }, many: Array(5_000).fill(0) });
  await calls(1);
  assert.ok(budget.usedBytes >= 96 * 5_000, `${budget.usedBytes} bytes held for 5,000 values`);
  waiting[0]!();
  assert.equal((await values).statusCode, 200);
  assert.equal(budget.usedBytes, 0);
});

test("a download whose file changes before its first byte is sent answers the file's error as JSON (4xx), not a 500: the download's own headers are dropped", async (t) => {
  // (red team: a file the sandbox keeps truncating and rewriting; its stream failed once
  // the download's Content-Type was set, and the error object could not be sent as text)
  const f = await setup(t, {
    download: () => ({
      stream: new Readable({
        read() {
          this.destroy(new SandboxError('SBX_FILE_NOT_FOUND', 'file changed while it was being sent: a.txt'));
        },
      }),
      size: 5,
    }),
  });
  const res = await f.app.inject({ method: 'GET', url: '/sessions/sbx_known/files?path=a.txt' });
  assert.equal(res.statusCode, 404, res.body);
  assert.match(String(res.headers['content-type']), /^application\/json/);
  assert.equal(res.headers['content-disposition'], undefined);
  assert.deepEqual(res.json(), { detail: 'file changed while it was being sent: a.txt', code: 'SBX_FILE_NOT_FOUND' });
});
