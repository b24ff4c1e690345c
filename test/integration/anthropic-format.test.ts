/**
 * result_format "anthropic" over HTTP with real Python, bash and the text editor: every
 * native block of Anthropic's code_execution_20250825 tool, with exactly the SDK's fields,
 * the error blocks and their codes (timeouts, the file-size limit, invalid input, a full
 * queue, a server short of memory), and contract v1 unchanged when the field is absent.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startServer, api, createSession, exec, sh, upload, type TestServer } from '../helpers/server.js';

let server: TestServer;
let id: string;

const A = { result_format: 'anthropic' };
const run = (tool: string, input: Record<string, unknown>, extra: Record<string, unknown> = {}, sid = id) =>
  api(server, 'POST', `/sessions/${sid}/exec`, { tool, input, ...A, ...extra });
const ed = (input: Record<string, unknown>) => run('text_editor_code_execution', input);

/** Field names of the SDK types (anthropic-sdk-python, types/beta), sorted. */
const SDK_KEYS: Record<string, string[]> = {
  bash_code_execution_tool_result: ['content', 'tool_use_id', 'type'],
  text_editor_code_execution_tool_result: ['content', 'tool_use_id', 'type'],
  bash_code_execution_result: ['content', 'return_code', 'stderr', 'stdout', 'type'],
  bash_code_execution_tool_result_error: ['error_code', 'type'],
  text_editor_code_execution_view_result: ['content', 'file_type', 'num_lines', 'start_line', 'total_lines', 'type'],
  text_editor_code_execution_create_result: ['is_file_update', 'type'],
  text_editor_code_execution_str_replace_result: ['lines', 'new_lines', 'new_start', 'old_lines', 'old_start', 'type'],
  text_editor_code_execution_tool_result_error: ['error_code', 'error_message', 'type'],
};
const ANSWER_KEYS = ['execution_time_ms', 'interpreter_restarted', 'limit_exceeded', 'result_block', 'stderr_dropped_bytes', 'stdout_dropped_bytes', 'tool_use_id'];

/** A 200 whose block and content have exactly the SDK's fields; returns the content. */
function native(r: { status: number; body: any }, blockType: string, contentType: string): Record<string, any> {
  assert.equal(r.status, 200, JSON.stringify(r.body));
  assert.deepEqual(Object.keys(r.body).sort(), ANSWER_KEYS);
  const b = r.body.result_block;
  assert.equal(b.type, blockType);
  assert.equal(b.tool_use_id, r.body.tool_use_id);
  assert.deepEqual(Object.keys(b).sort(), SDK_KEYS[blockType]);
  assert.equal(b.content.type, contentType, JSON.stringify(b.content));
  assert.deepEqual(Object.keys(b.content).sort(), SDK_KEYS[contentType]);
  return b.content;
}

before(async () => {
  server = await startServer({
    SANDBOX_RUNNER_FSIZE_MB: '8',
    SANDBOX_EXEC_QUEUE_MAX: '0',
    SANDBOX_SERVER_MEMORY_BUDGET_MB: '16',
  });
  id = await createSession(server);
});
after(async () => {
  if (server && (server.proc.exitCode !== null || server.proc.signalCode !== null)) console.error(`server died early:\n${server.logs().slice(-4000)}`);
  await server?.stop();
});

test('python answers with a bash_code_execution_result; state persists; v1 stays the default', async () => {
  const first = native(
    await run('code_execution', { code: 'x = 21\nprint(x)' }, { tool_use_id: 'srvtoolu_mine' }),
    'bash_code_execution_tool_result',
    'bash_code_execution_result',
  );
  assert.deepEqual(first, { type: 'bash_code_execution_result', stdout: '21', stderr: '', return_code: 0, content: [] });
  const r = await run('code_execution', { code: 'import sys\nprint(x * 2)\nprint("oops", file=sys.stderr)\nsys.exit(4)' });
  const c = native(r, 'bash_code_execution_tool_result', 'bash_code_execution_result');
  assert.equal(c.stdout, '42');
  assert.equal(c.stderr, 'oops');
  assert.equal(c.return_code, 4);
  assert.equal(r.body.limit_exceeded, null);
  assert.equal(r.body.interpreter_restarted, false);
  assert.ok(Number.isInteger(r.body.execution_time_ms));
  const echoed = await run('code_execution', { code: 'print(x)' }, { tool_use_id: 'srvtoolu_mine' });
  assert.equal(echoed.body.tool_use_id, 'srvtoolu_mine');
  assert.equal(echoed.body.result_block.tool_use_id, 'srvtoolu_mine');
  for (const extra of [{}, { result_format: 'v1' }, { result_format: null }]) {
    const v1 = await api(server, 'POST', `/sessions/${id}/exec`, { tool: 'code_execution', input: { code: 'print(x)' }, ...extra });
    assert.equal(v1.status, 200);
    assert.equal(v1.body.result_block.type, 'code_execution_tool_result');
    assert.deepEqual(v1.body.result_block.content, { type: 'code_execution_result', stdout: '21', stderr: '', return_code: 0, content: [] });
  }
});

test('bash answers with its output as written and its exit code', async () => {
  const c = native(await run('bash_code_execution', { command: 'echo hello; echo warn >&2; exit 3' }), 'bash_code_execution_tool_result', 'bash_code_execution_result');
  assert.deepEqual(c, { type: 'bash_code_execution_result', stdout: 'hello\n', stderr: 'warn\n', return_code: 3, content: [] });
});

test('a timeout is execution_time_exceeded (bash and python); the interpreter keeps its state', async () => {
  const b = await run('bash_code_execution', { command: 'sleep 60' }, { timeout_seconds: 1 });
  assert.deepEqual(native(b, 'bash_code_execution_tool_result', 'bash_code_execution_tool_result_error'), {
    type: 'bash_code_execution_tool_result_error',
    error_code: 'execution_time_exceeded',
  });
  assert.equal(b.body.limit_exceeded, 'wall_clock');
  const p = await run('code_execution', { code: 'while True:\n    pass' }, { timeout_seconds: 1 });
  assert.equal(native(p, 'bash_code_execution_tool_result', 'bash_code_execution_tool_result_error').error_code, 'execution_time_exceeded');
  assert.equal(p.body.limit_exceeded, 'wall_clock');
  assert.equal(native(await run('code_execution', { code: 'print(x)' }), 'bash_code_execution_tool_result', 'bash_code_execution_result').stdout, '21');
});

test('a file over SANDBOX_RUNNER_FSIZE_MB is output_file_too_large (bash and python)', async () => {
  const b = await run('bash_code_execution', { command: 'head -c 9000000 /dev/zero > big.bin' });
  assert.equal(native(b, 'bash_code_execution_tool_result', 'bash_code_execution_tool_result_error').error_code, 'output_file_too_large');
  assert.equal(b.body.limit_exceeded, 'file_size');
  const p = await run('code_execution', { code: "open('big2.bin', 'wb').write(b'0' * 9_000_000)" });
  assert.equal(native(p, 'bash_code_execution_tool_result', 'bash_code_execution_tool_result_error').error_code, 'output_file_too_large');
  assert.equal(p.body.limit_exceeded, 'file_size');
});

test('editor create and view: create results (is_file_update) and view results with line counts', async () => {
  const E = 'text_editor_code_execution_tool_result';
  assert.deepEqual(native(await ed({ command: 'create', path: 'notes/a.txt', file_text: 'one\ntwo\nthree\n' }), E, 'text_editor_code_execution_create_result'), {
    type: 'text_editor_code_execution_create_result',
    is_file_update: false,
  });
  assert.equal(
    native(await ed({ command: 'create', path: '/workspace/notes/a.txt', file_text: 'one\ntwo\nthree\nfour\n' }), E, 'text_editor_code_execution_create_result').is_file_update,
    true,
  );
  assert.deepEqual(native(await ed({ command: 'view', path: 'notes/a.txt', view_range: [2, 3] }), E, 'text_editor_code_execution_view_result'), {
    type: 'text_editor_code_execution_view_result',
    content: 'two\nthree',
    file_type: 'text',
    num_lines: 2,
    start_line: 2,
    total_lines: 4,
  });
  const dir = native(await ed({ command: 'view', path: 'notes' }), E, 'text_editor_code_execution_view_result');
  assert.equal(dir.file_type, 'text');
  assert.match(dir.content, /a\.txt/);
  assert.equal(dir.num_lines, null);
});

test('editor str_replace, insert and undo_edit: str_replace results, then a create result', async () => {
  const E = 'text_editor_code_execution_tool_result';
  await ed({ command: 'create', path: 'b.txt', file_text: 'alpha\nbeta\ngamma\n' });
  assert.deepEqual(native(await ed({ command: 'str_replace', path: 'b.txt', old_str: 'beta', new_str: 'BETA' }), E, 'text_editor_code_execution_str_replace_result'), {
    type: 'text_editor_code_execution_str_replace_result',
    lines: [' alpha', '-beta', '+BETA', ' gamma'],
    new_lines: 3,
    new_start: 1,
    old_lines: 3,
    old_start: 1,
  });
  const ins = native(await ed({ command: 'insert', path: 'b.txt', insert_line: 0, new_str: 'top' }), E, 'text_editor_code_execution_str_replace_result');
  assert.equal(ins.lines, null);
  assert.equal((await sh(server, id, 'cat b.txt')).stdout, 'top\nalpha\nBETA\ngamma\n');
  assert.deepEqual(native(await ed({ command: 'undo_edit', path: 'b.txt' }), E, 'text_editor_code_execution_create_result'), {
    type: 'text_editor_code_execution_create_result',
    is_file_update: true,
  });
  assert.equal((await sh(server, id, 'cat b.txt')).stdout, 'alpha\nBETA\ngamma\n');
});

test('editor errors: text_editor_code_execution_tool_result_error with Anthropic codes and a message', async () => {
  const E = 'text_editor_code_execution_tool_result';
  const err = async (input: Record<string, unknown>) => native(await ed(input), E, 'text_editor_code_execution_tool_result_error');
  assert.deepEqual(await err({ command: 'view', path: 'missing.txt' }), {
    type: 'text_editor_code_execution_tool_result_error',
    error_code: 'file_not_found',
    error_message: 'file not found: missing.txt',
  });
  const notFound = await err({ command: 'str_replace', path: 'b.txt', old_str: 'nowhere', new_str: 'x' });
  assert.equal(notFound.error_code, 'invalid_tool_input');
  assert.match(notFound.error_message, /old_str not found in b\.txt/);
  const twice = await err({ command: 'str_replace', path: 'b.txt', old_str: 'a', new_str: 'x' });
  assert.equal(twice.error_code, 'invalid_tool_input');
  assert.match(twice.error_message, /matched \d+ times/);
  const outside = await err({ command: 'view', path: '../../etc/passwd' });
  assert.equal(outside.error_code, 'invalid_tool_input');
  assert.doesNotMatch(outside.error_message, /^text_editor:/);
  assert.equal((await err({ command: 'create', path: 'c.txt' })).error_code, 'invalid_tool_input');
});

test('invalid tool input is a 200 with invalid_tool_input (v1: 422); unknown tools, sessions and formats stay HTTP errors', async () => {
  for (const [tool, input] of [
    ['bash_code_execution', {}],
    ['bash_code_execution', { command: '' }],
    ['code_execution', { code: 42 }],
  ] as const) {
    const r = await run(tool, input);
    assert.deepEqual(native(r, 'bash_code_execution_tool_result', 'bash_code_execution_tool_result_error'), {
      type: 'bash_code_execution_tool_result_error',
      error_code: 'invalid_tool_input',
    });
    assert.match(r.body.tool_use_id, /^srvtoolu_[0-9a-f]{24}$/);
    assert.equal((await exec(server, id, tool, input)).status, 422);
  }
  const bad = native(await ed({ command: 'delete', path: 'b.txt' }), 'text_editor_code_execution_tool_result', 'text_editor_code_execution_tool_result_error');
  assert.equal(bad.error_code, 'invalid_tool_input');
  assert.match(bad.error_message, /^input\.command: /);
  const missing = native(await ed({ command: 'view' }), 'text_editor_code_execution_tool_result', 'text_editor_code_execution_tool_result_error');
  assert.match(missing.error_message, /path/);

  const unknownTool = await run('python', { code: 'print(1)' });
  assert.equal(unknownTool.status, 400);
  assert.equal(unknownTool.body.code, 'SBX_UNKNOWN_TOOL');
  const unknownSession = await run('bash_code_execution', { command: 'true' }, {}, 'sbx_doesnotexist');
  assert.equal(unknownSession.status, 404);
  for (const format of ['xml', 'Anthropic', 1, {}]) {
    const r = await run('bash_code_execution', { command: 'true' }, { result_format: format });
    assert.equal(r.status, 422, `result_format ${JSON.stringify(format)}`);
    assert.equal(r.body.code, 'SBX_VALIDATION');
  }
});

test('a call past the session queue is too_many_requests (v1: 429)', async () => {
  // SANDBOX_EXEC_QUEUE_MAX=0: while one call runs, any other is refused. The running call
  // waits for a file the test uploads, and says it has started by writing another.
  const blocker = run('code_execution', {
    code: "import os, time\nopen('/workspace/started', 'w').close()\nwhile not os.path.exists('/workspace/go'):\n    time.sleep(0.01)\nprint('released')",
  });
  for (;;) {
    if ((await api(server, 'GET', `/sessions/${id}/files?path=started`)).status === 200) break;
    await new Promise((r) => setTimeout(r, 20));
  }
  try {
    assert.deepEqual(native(await run('bash_code_execution', { command: 'echo hi' }), 'bash_code_execution_tool_result', 'bash_code_execution_tool_result_error'), {
      type: 'bash_code_execution_tool_result_error',
      error_code: 'too_many_requests',
    });
    const e = native(await ed({ command: 'view', path: 'b.txt' }), 'text_editor_code_execution_tool_result', 'text_editor_code_execution_tool_result_error');
    assert.equal(e.error_code, 'too_many_requests');
    assert.match(e.error_message, /SANDBOX_EXEC_QUEUE_MAX=0/);
    const v1 = await sh(server, id, 'echo hi');
    assert.equal(v1.status, 429);
  } finally {
    assert.equal((await upload(server, id, 'go', { path: 'go' })).status, 201);
  }
  assert.equal(native(await blocker, 'bash_code_execution_tool_result', 'bash_code_execution_result').stdout, 'released');
});

test('an editor call the memory budget has no room for is unavailable (v1: 503)', async () => {
  // Another session's call holds its large request body (150 KB, over 64 KiB) of the memory budget
  // until it is answered; it waits for a file the test uploads. The editor then views a
  // file whose reservation (4 times its size plus 3 output caps of 1 MiB) fits the whole
  // budget but not what is left of it.
  const other = await createSession(server);
  const code = `# ${'x'.repeat(150_000)}\nimport os, time\nwhile not os.path.exists('/workspace/go2'):\n    time.sleep(0.01)\nprint('done')`;
  const holder = run('code_execution', { code }, {}, other);
  const budget = async () => (await api(server, 'GET', '/health')).body.memory_budget as { used_bytes: number; total_bytes: number };
  let b = await budget();
  while (b.used_bytes < 150_000) {
    await new Promise((r) => setTimeout(r, 20));
    b = await budget();
  }
  const MiB = 1024 * 1024;
  const size = Math.floor((b.total_bytes - 3 * MiB) / 4) - 1024;
  assert.ok(4 * size + 3 * MiB > b.total_bytes - b.used_bytes, `the view must not fit: ${JSON.stringify(b)}`);
  try {
    assert.equal((await sh(server, id, `head -c ${size} /dev/zero | tr '\\0' a > huge.txt && echo ok`)).stdout, 'ok\n');
    const e = native(await ed({ command: 'view', path: 'huge.txt' }), 'text_editor_code_execution_tool_result', 'text_editor_code_execution_tool_result_error');
    assert.equal(e.error_code, 'unavailable', JSON.stringify(e));
    assert.match(e.error_message, /busy|memory/i);
    const v1 = await exec(server, id, 'text_editor_code_execution', { command: 'view', path: 'huge.txt' });
    assert.equal(v1.status, 503);
    assert.equal(v1.body.code, 'SBX_SERVER_BUSY');
  } finally {
    assert.equal((await upload(server, other, 'go', { path: 'go2' })).status, 201);
  }
  assert.equal(native(await holder, 'bash_code_execution_tool_result', 'bash_code_execution_result').stdout, 'done');
  // With the budget free again, the same view succeeds.
  const view = native(await ed({ command: 'view', path: 'huge.txt', view_range: [1, 1] }), 'text_editor_code_execution_tool_result', 'text_editor_code_execution_view_result');
  assert.equal(view.total_lines, 1);
});

test('the editor without undo history answers undo_edit with unavailable', async (t) => {
  const s2 = await startServer({ SANDBOX_EDITOR_UNDO_MB: '0' });
  t.after(() => s2.stop());
  const sid = await createSession(s2);
  const r = await api(s2, 'POST', `/sessions/${sid}/exec`, { tool: 'text_editor_code_execution', input: { command: 'undo_edit', path: 'a.txt' }, ...A });
  const e = native(r, 'text_editor_code_execution_tool_result', 'text_editor_code_execution_tool_result_error');
  assert.equal(e.error_code, 'unavailable');
  assert.match(e.error_message, /SANDBOX_EDITOR_UNDO_MB=0/);
});

test('an answer the memory budget has no room for is cut and still native', async () => {
  // About 1 MB of output: the answer would reserve 20 bytes per character, more than
  // SANDBOX_SERVER_MEMORY_BUDGET_MB=16 holds, so it goes out lean (as v1 answers do).
  const r = await run('bash_code_execution', { command: "head -c 1000000 /dev/zero | tr '\\0' a" });
  const c = native(r, 'bash_code_execution_tool_result', 'bash_code_execution_result');
  assert.ok(c.stdout.startsWith('aaaa') && c.stdout.length < 100_000, `stdout of ${c.stdout.length} characters`);
  assert.match(c.stdout, /output cut: the server is short of memory for answers/);
  assert.match(c.stderr, /SANDBOX_SERVER_MEMORY_BUDGET_MB/);
  assert.equal(c.return_code, 0);
  assert.equal(r.body.limit_exceeded, 'output_bytes');
  const v1 = await sh(server, id, "head -c 1000000 /dev/zero | tr '\\0' a");
  assert.match(v1.stderr, /SANDBOX_SERVER_MEMORY_BUDGET_MB/);
});

test('the OpenAPI document describes result_format and the native answer shapes', async () => {
  const doc = (await api(server, 'GET', '/openapi.json')).body;
  const execPath = Object.keys(doc.paths).find((p) => p.endsWith('/exec'))!;
  const post = doc.paths[execPath].post;
  const body = post.requestBody.content['application/json'].schema;
  const format = JSON.stringify(body.properties.result_format);
  for (const f of ['"v1"', '"anthropic"', '"null"']) assert.ok(format.includes(f), `${f} in ${format}`);
  const answer = JSON.stringify(post.responses['200']);
  for (const type of [
    'code_execution_result',
    'bash_code_execution_tool_result',
    'bash_code_execution_result',
    'bash_code_execution_output',
    'bash_code_execution_tool_result_error',
    'text_editor_code_execution_tool_result',
    'text_editor_code_execution_view_result',
    'text_editor_code_execution_create_result',
    'text_editor_code_execution_str_replace_result',
    'text_editor_code_execution_tool_result_error',
    'output_file_too_large',
    'file_not_found',
  ]) {
    assert.ok(answer.includes(`"${type}"`), `${type} in the 200 schema`);
  }
});
