/**
 * The typed client (src/client, exported as otari-sandbox-container/client) against the
 * real server: every endpoint, typed errors with the server's codes and Retry-After, the
 * bearer token.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { SandboxApiError, SandboxClient, type ExecAnswer, type StreamEvent } from '../../src/client/index.js';
import { startServer, type TestServer } from '../helpers/server.js';

const TOKEN = 'client-token-0123456789abcdef';
let server: TestServer;
let sbx: SandboxClient;

before(async () => {
  server = await startServer({ SANDBOX_API_TOKEN: TOKEN, SANDBOX_WARMUP: '0', SANDBOX_MAX_SESSIONS: '3', SANDBOX_WARM_POOL_SIZE: '0' });
  sbx = new SandboxClient({ baseUrl: `${server.url}/`, token: TOKEN });
});
after(async () => {
  await server?.stop();
});

test('the package exports the client as otari-sandbox-container/client', async () => {
  const name = 'otari-sandbox-container/client';
  const mod = (await import(name)) as { SandboxClient?: unknown; SandboxApiError?: unknown };
  assert.equal(typeof mod.SandboxClient, 'function');
  assert.equal(typeof mod.SandboxApiError, 'function');
});

test('every endpoint through the client', async () => {
  const health = await sbx.health();
  assert.equal(health.status, 'ok');
  const h = await sbx.createSession({ idle_timeout_seconds: 600 });
  assert.equal(h.idle_timeout_seconds, 600);
  assert.equal((await sbx.getSession(h.session_id)).session_id, h.session_id);

  const py = await sbx.runPython(h.session_id, 'x = 6 * 7\nprint(x)', { toolUseId: 'srvtoolu_client1' });
  assert.equal(py.result_block.content.stdout.trim(), '42');
  assert.equal(py.tool_use_id, 'srvtoolu_client1');
  const bash = await sbx.runBash(h.session_id, 'echo $((1+2)) && exit 4');
  assert.equal(bash.result_block.content.stdout.trim(), '3');
  assert.equal(bash.result_block.content.return_code, 4);
  const slow = await sbx.runPython(h.session_id, 'import time\ntime.sleep(30)', { timeoutSeconds: 1 });
  assert.equal(slow.limit_exceeded, 'wall_clock');
  assert.equal((await sbx.edit(h.session_id, { command: 'create', path: 'notes/a.txt', file_text: 'one\ntwo\n' })).result_block.content.return_code, 0);
  await sbx.edit(h.session_id, { command: 'str_replace', path: 'notes/a.txt', old_str: 'two', new_str: 'three' });

  const up = await sbx.uploadFile(h.session_id, new Uint8Array([0, 1, 2, 255]), { path: 'data/blob.bin' });
  assert.equal(up.size_bytes, 4);
  assert.deepEqual([...(await sbx.downloadFile(h.session_id, 'data/blob.bin'))], [0, 1, 2, 255]);
  assert.equal(new TextDecoder().decode(await sbx.downloadFile(h.session_id, 'notes/a.txt')), 'one\nthree\n');
  const listed = await sbx.listFiles(h.session_id, { recursive: true });
  const paths = listed.files.map((f) => f.path);
  for (const p of ['notes/a.txt', 'data/blob.bin'])
    assert.ok(
      paths.some((x) => x.endsWith(p)),
      `${p} in ${paths.join(', ')}`,
    );

  const reg = await sbx.registerTools(h.session_id, { callback_url: 'http://127.0.0.1:9/cb', token: 'router-token', tools: [{ name: 'lookup', doc: 'Looks up.' }] });
  assert.equal(reg.tool_count, 1);
  assert.match(await sbx.metrics(), /^sandbox_sessions_active 1$/m);

  await sbx.deleteSession(h.session_id);
  await sbx.deleteSession(h.session_id); // idempotent
});

test('errors are SandboxApiErrors with the server code, status and Retry-After', async () => {
  const notFound = await sbx.getSession('sbx_nope').catch((e: unknown) => e);
  assert.ok(notFound instanceof SandboxApiError);
  assert.equal(notFound.status, 404);
  assert.equal(notFound.code, 'SBX_SESSION_NOT_FOUND');
  assert.equal(notFound.retryAfterSeconds, null);

  const id = (await sbx.createSession()).session_id;
  const invalid = await sbx.exec(id, 'code_execution', { nope: 1 }).catch((e: unknown) => e);
  assert.ok(invalid instanceof SandboxApiError && invalid.status === 422 && invalid.code === 'SBX_VALIDATION' && Array.isArray(invalid.detail));
  const outside = await sbx.downloadFile(id, '../../etc/passwd').catch((e: unknown) => e);
  assert.ok(outside instanceof SandboxApiError && outside.code === 'SBX_PATH_OUTSIDE_WORKSPACE', String(outside));

  // At capacity (3 sessions): a 503 with Retry-After.
  const more = [await sbx.createSession(), await sbx.createSession()];
  const full = await sbx.createSession().catch((e: unknown) => e);
  assert.ok(full instanceof SandboxApiError);
  assert.equal(full.status, 503);
  assert.equal(full.code, 'SBX_AT_CAPACITY');
  assert.ok((full.retryAfterSeconds ?? 0) > 0);
  for (const s of [id, ...more.map((m) => m.session_id)]) await sbx.deleteSession(s);

  const anonymous = new SandboxClient({ baseUrl: server.url });
  const denied = await anonymous.createSession().catch((e: unknown) => e);
  assert.ok(denied instanceof SandboxApiError && denied.status === 401 && denied.code === 'SBX_UNAUTHORIZED');
  assert.equal((await anonymous.health()).status, 'ok', '/health needs no token');
});

test('streaming through the client: events as they come, the result last; a resume reads the rest; artifacts download', async () => {
  const id = (await sbx.createSession()).session_id;
  const events: StreamEvent[] = [];
  for await (const e of sbx.execStream(id, 'code_execution', { code: "print('one', flush=True)\nopen('out.txt', 'w').write('artifact')\nprint('two')" })) events.push(e);
  assert.deepEqual(
    events.map((e) => e.event),
    ['stream', ...events.slice(1, -1).map((e) => e.event), 'result'],
  );
  const text = events
    .filter((e) => e.event === 'stdout')
    .map((e) => (e.data as { text: string }).text)
    .join('');
  assert.equal(text, 'one\ntwo\n');
  const result = events.at(-1)!.data as ExecAnswer;
  assert.equal(result.result_block.content.stdout, 'one\ntwo');
  const artifact = result.result_block.content.content.find((f) => f.filename === 'out.txt')!;
  assert.ok(artifact, JSON.stringify(result.result_block.content.content));
  assert.equal(new TextDecoder().decode(await sbx.downloadArtifact(id, artifact.file_id)), 'artifact');

  // A client that goes away mid-call resumes from the last event it had: the rest comes,
  // the result included. (The program waits for a file the test uploads after the cut.)
  const stop = new AbortController();
  const seen: StreamEvent[] = [];
  const cut = await (async () => {
    const code = "import os, time\nprint('first', flush=True)\nwhile not os.path.exists('/workspace/go'):\n    time.sleep(0.02)\nprint('second')";
    for await (const e of sbx.execStream(id, 'code_execution', { code }, { signal: stop.signal, timeoutSeconds: 120 })) {
      seen.push(e);
      if (e.event === 'stdout') stop.abort();
    }
  })().catch((e: unknown) => e);
  assert.equal((cut as Error).name, 'AbortError');
  const streamId = (seen[0]!.data as { stream_id: string }).stream_id;
  await sbx.uploadFile(id, 'x', { path: 'go' });
  const rest: StreamEvent[] = [];
  for await (const e of sbx.execStream(id, 'code_execution', {}, { resume: { streamId, lastEventId: seen.at(-1)!.id! } })) rest.push(e);
  assert.equal(rest[0]!.id, seen.at(-1)!.id! + 1, 'the events after the last one had');
  assert.equal(rest.at(-1)!.event, 'result');
  assert.equal((rest.at(-1)!.data as ExecAnswer).result_block.content.stdout, 'first\nsecond');

  // A refused call throws before any event.
  const refused = await (async () => {
    for await (const _ of sbx.execStream(id, 'code_execution', { nope: 1 })) void _;
  })().catch((e: unknown) => e);
  assert.ok(refused instanceof SandboxApiError && refused.code === 'SBX_VALIDATION');
  await sbx.deleteSession(id);
});
