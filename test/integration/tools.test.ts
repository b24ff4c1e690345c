/**
 * Programmatic tools end to end: register over HTTP, call from the session's Python
 * with `from _platform_tools import …`, and a real callback server started here on
 * 127.0.0.1. Checks the wire format the router sees (bearer token, {call_id,name,input}),
 * return values, every ToolError path, name validation, per-session isolation, and that
 * the token never becomes visible inside the sandbox or in the logs.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createServer, type IncomingMessage, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { existsSync, readFileSync } from 'node:fs';
import { readdir } from 'node:fs/promises';
import { randomBytes } from 'node:crypto';
import { startServer, api, createSession, py, sh, waitFor, type TestServer } from '../helpers/server.js';

interface Recorded {
  method: string;
  url: string;
  headers: IncomingMessage['headers'];
  raw: string;
  body: any;
}

const TOKEN = `tok-${randomBytes(16).toString('hex')}`;
const TOOLS = [{ name: 'echo', doc: 'Echoes its input back.' }, { name: 'fail', doc: '' }, { name: 'boom' }, { name: 'nocontent' }, { name: 'slow' }];

let server: TestServer;
let router: Server;
let routerUrl: string;
let deadUrl: string;
const calls: Recorded[] = [];

/** A callback router: what it answers depends on the tool name. */
function startRouter(): Promise<Server> {
  const srv = createServer((req, res) => {
    let raw = '';
    req.setEncoding('utf8');
    req.on('data', (d: string) => (raw += d));
    req.on('end', () => {
      let body: any = null;
      try {
        body = JSON.parse(raw);
      } catch {
        /* recorded as raw */
      }
      calls.push({ method: req.method ?? '', url: req.url ?? '', headers: req.headers, raw, body });
      const reply = (status: number, obj: unknown) => {
        res.writeHead(status, { 'content-type': 'application/json' });
        res.end(JSON.stringify(obj));
      };
      switch (body?.name) {
        case 'echo':
          return reply(200, { content: body.input });
        case 'fail':
          return reply(200, { is_error: true, content: 'permission denied' });
        case 'boom':
          return reply(500, { detail: 'internal' });
        case 'nocontent':
          return reply(200, {});
        case 'slow':
          // Never answers: only the caller's timeout can end the call (no race with a timer
          // here); the server's abort at that timeout closes the connection.
          return;
        default:
          return reply(404, { detail: 'no such tool' });
      }
    });
  });
  return new Promise((resolve) => srv.listen(0, '127.0.0.1', () => resolve(srv)));
}

async function register(sid: string, body: Record<string, unknown>) {
  return api(server, 'POST', `/sessions/${sid}/programmatic-tools/register`, body);
}

before(async () => {
  router = await startRouter();
  routerUrl = `http://127.0.0.1:${(router.address() as AddressInfo).port}/tool-call`;
  // A port that was just free and is closed again: nothing listens there.
  const tmp = createServer();
  await new Promise<void>((r) => tmp.listen(0, '127.0.0.1', () => r()));
  deadUrl = `http://127.0.0.1:${(tmp.address() as AddressInfo).port}/tool-call`;
  await new Promise((r) => tmp.close(r));
  server = await startServer({ SANDBOX_WARM_POOL_SIZE: '2' });
});
after(async () => {
  if (server && (server.proc.exitCode !== null || server.proc.signalCode !== null)) console.error(`server died early:\n${server.logs().slice(-4000)}`);
  await server?.stop();
  router?.closeAllConnections();
  await new Promise((r) => router?.close(r));
});

test('register answers 200 with stub_path and tool_count', async () => {
  const sid = await createSession(server);
  const r = await register(sid, { callback_url: routerUrl, token: TOKEN, tools: TOOLS });
  assert.equal(r.status, 200, JSON.stringify(r.body));
  assert.equal(r.body.tool_count, TOOLS.length);
  assert.match(r.body.stub_path, /\/_platform_tools\.py$/);
  const none = await register(sid, { callback_url: routerUrl, token: TOKEN });
  assert.equal(none.status, 200);
  assert.equal(none.body.tool_count, 0);
});

test('a call POSTs {call_id, name, input} with the bearer token and returns the reply content', async () => {
  const sid = await createSession(server);
  assert.equal((await register(sid, { callback_url: routerUrl, token: TOKEN, tools: TOOLS })).status, 200);
  calls.length = 0;
  const r = await py(server, sid, "import json\nfrom _platform_tools import echo, ToolError\nprint(json.dumps(echo(a=1, b=[1, 2], c={'d': 'é'}), sort_keys=True))");
  assert.equal(r.return_code, 0, r.stderr);
  assert.deepEqual(JSON.parse(r.stdout), { a: 1, b: [1, 2], c: { d: 'é' } });
  assert.equal(calls.length, 1);
  const call = calls[0]!;
  assert.equal(call.method, 'POST');
  assert.equal(call.url, '/tool-call');
  assert.equal(call.headers.authorization, `Bearer ${TOKEN}`);
  assert.match(call.headers['content-type'] ?? '', /^application\/json/);
  assert.deepEqual(Object.keys(call.body), ['call_id', 'name', 'input']);
  assert.match(call.body.call_id, /^[0-9a-f]{32}$/);
  assert.equal(call.body.name, 'echo');
  assert.deepEqual(call.body.input, { a: 1, b: [1, 2], c: { d: 'é' } });
  // Each call has its own id; JSON types pass through; a reply without content gives None.
  const more = await py(server, sid, "from _platform_tools import echo, nocontent\nprint(repr(echo(x='s')), repr(nocontent()), echo.__doc__)");
  assert.equal(more.stdout, "{'x': 's'} None Echoes its input back.");
  assert.notEqual(calls[1]!.body.call_id, calls[0]!.body.call_id);
});

test('is_error, an HTTP error and an unreachable router each raise ToolError', async () => {
  const sid = await createSession(server);
  await register(sid, { callback_url: routerUrl, token: TOKEN, tools: TOOLS });
  const failed = await py(server, sid, "from _platform_tools import fail, ToolError\ntry:\n    fail(x=1)\nexcept ToolError as e:\n    print('caught:', e)");
  assert.equal(failed.stdout, 'caught: permission denied');
  const http = await py(server, sid, "from _platform_tools import boom, ToolError\ntry:\n    boom()\nexcept ToolError as e:\n    print('caught:', e)");
  assert.match(http.stdout, /^caught: .*HTTP 500/);
  const uncaught = await py(server, sid, 'from _platform_tools import fail\nfail()');
  assert.equal(uncaught.return_code, 1);
  assert.match(uncaught.stderr, /ToolError: permission denied/);

  const other = await createSession(server);
  await register(other, { callback_url: deadUrl, token: TOKEN, tools: [{ name: 'echo' }] });
  // (no clock: "unreachable" is the refused connection; a call that hung on a dead router
  // would say "timed out" or run into the cell's 60 s limit, its backstop)
  const down = await py(server, other, "from _platform_tools import echo, ToolError\ntry:\n    echo(a=1)\nexcept ToolError as e:\n    print('caught:', e)", {
    timeout_seconds: 60,
  });
  assert.equal(down.limit_exceeded, null, 'answered, not timed out');
  assert.match(down.stdout, /^caught: .*unreachable/);
});

test('a router slower than the registration timeout raises ToolError', async () => {
  const sid = await createSession(server);
  await register(sid, { callback_url: routerUrl, token: TOKEN, tools: TOOLS, timeout_seconds: 1 });
  const t0 = Date.now();
  const r = await py(server, sid, "from _platform_tools import slow, ToolError\ntry:\n    slow()\nexcept ToolError as e:\n    print('caught:', e)", { timeout_seconds: 60 });
  const took = Date.now() - t0;
  // (the router never answers: "timed out" shows the 1 s tool timeout ended the call, and the
  // lower bound, which load cannot break, that it did not fire early)
  assert.match(r.stdout, /^caught: .*timed out/);
  assert.ok(took >= 900, `not before the tool timeout (${took} ms)`);
});

test('tool arguments over 1 MiB raise ToolError without calling the router; the interpreter keeps its state', async () => {
  const sid = await createSession(server);
  await register(sid, { callback_url: routerUrl, token: TOKEN, tools: TOOLS });
  calls.length = 0;
  const r = await py(server, sid, "kept = 5\nfrom _platform_tools import echo, ToolError\ntry:\n    echo(blob='x' * (3 << 20))\nexcept ToolError as e:\n    print('ToolError', e)");
  assert.match(r.stdout, /^ToolError tool 'echo': arguments of \d+ bytes exceed the 1048576-byte limit$/, r.stderr);
  assert.equal(r.interpreter_restarted, false);
  assert.equal(calls.length, 0, 'the router was not called');
  assert.equal((await py(server, sid, 'print(kept)')).stdout, '5');
});

test('tools take keyword arguments only', async () => {
  const sid = await createSession(server);
  await register(sid, { callback_url: routerUrl, token: TOKEN, tools: TOOLS });
  const r = await py(server, sid, 'from _platform_tools import echo\necho(1)');
  assert.equal(r.return_code, 1);
  assert.match(r.stderr, /TypeError/);
});

test('422 for names that are not identifiers, are keywords or repeat; 422 for bad fields; 404 unknown session', async () => {
  const sid = await createSession(server);
  for (const tools of [
    [{ name: '1abc' }],
    [{ name: 'a-b' }],
    [{ name: 'has space' }],
    [{ name: '' }],
    [{ name: 'class' }],
    [{ name: 'None' }],
    [{ name: 'dup' }, { name: 'dup' }],
  ]) {
    const r = await register(sid, { callback_url: routerUrl, token: TOKEN, tools });
    assert.equal(r.status, 422, JSON.stringify(tools));
    assert.equal(r.body.code, 'SBX_VALIDATION');
  }
  const kw = await register(sid, { callback_url: routerUrl, token: TOKEN, tools: [{ name: 'class' }] });
  assert.match(kw.body.detail, /keyword/);
  const dup = await register(sid, { callback_url: routerUrl, token: TOKEN, tools: [{ name: 'dup' }, { name: 'dup' }] });
  assert.match(dup.body.detail, /duplicate/);
  for (const body of [
    { token: TOKEN, tools: [] },
    { callback_url: routerUrl, tools: [] },
    { callback_url: '', token: TOKEN, tools: [] },
    { callback_url: routerUrl, token: '', tools: [] },
    { callback_url: routerUrl, token: TOKEN, tools: [], timeout_seconds: 0 },
    { callback_url: routerUrl, token: TOKEN, tools: [], timeout_seconds: 3601 },
    { callback_url: routerUrl, token: TOKEN, tools: [{ doc: 'no name' }] },
  ]) {
    const r = await register(sid, body);
    assert.equal(r.status, 422, JSON.stringify(body));
  }
  const missing = await api(server, 'POST', '/sessions/sbx_000000000000000000000000/programmatic-tools/register', { callback_url: routerUrl, token: TOKEN, tools: [] });
  assert.equal(missing.status, 404);
  // Nothing was registered by the refused calls.
  const r = await py(server, sid, 'import _platform_tools');
  assert.equal(r.return_code, 1);
});

test("a second session cannot import the first one's tools", async () => {
  const a = await createSession(server);
  const b = await createSession(server);
  await register(a, { callback_url: routerUrl, token: TOKEN, tools: TOOLS });
  assert.equal((await py(server, a, "from _platform_tools import echo\nprint(echo(v=1)['v'])")).stdout, '1');
  const r = await py(server, b, 'import _platform_tools');
  assert.equal(r.return_code, 1);
  assert.match(r.stderr, /ModuleNotFoundError|ImportError/);
  await register(b, { callback_url: routerUrl, token: TOKEN, tools: [{ name: 'own_tool' }] });
  const cross = await py(server, b, 'from _platform_tools import echo');
  assert.equal(cross.return_code, 1);
  assert.match(cross.stderr, /ImportError/);
});

test('registering again replaces the set', async () => {
  const sid = await createSession(server);
  await register(sid, { callback_url: routerUrl, token: TOKEN, tools: [{ name: 'echo' }] });
  assert.equal((await py(server, sid, "from _platform_tools import echo\nprint(echo(k='v')['k'])")).stdout, 'v');
  await register(sid, { callback_url: routerUrl, token: TOKEN, tools: [{ name: 'fail' }] });
  const r = await py(
    server,
    sid,
    [
      'import importlib, _platform_tools',
      'importlib.reload(_platform_tools)',
      "print(hasattr(_platform_tools, 'fail'), hasattr(_platform_tools, 'echo'))",
      'try:',
      "    echo(k='v')",
      'except _platform_tools.ToolError as e:',
      "    print('old tool refused')",
      'except Exception as e:',
      "    print('old tool refused:', type(e).__name__)",
    ].join('\n'),
  );
  assert.equal(r.stdout.split('\n')[0], 'True False');
  assert.match(r.stdout, /old tool refused/);
});

test('the token appears nowhere inside the sandbox, in the stub on disk, or in the logs', async () => {
  const sid = await createSession(server);
  await register(sid, { callback_url: routerUrl, token: TOKEN, tools: TOOLS });
  await py(server, sid, 'from _platform_tools import echo\necho(x=1)');
  await sh(server, sid, 'touch token_box_marker');
  // The command must not hold the token itself (its own argv would match): rebuild it
  // at run time, and hand it to grep through a pipe.
  const reversed = [...TOKEN].reverse().join('');
  const grep = await sh(
    server,
    sid,
    [
      `T=$(printf '%s' '${reversed}' | rev)`,
      'n=0',
      'for f in /proc/[0-9]*/environ /proc/[0-9]*/cmdline; do c=$(tr \'\\0\' \'\\n\' < "$f" 2>/dev/null); [[ "$c" == *"$T"* ]] && n=$((n+1)); done',
      'echo "procs=$n len=${#T}"',
      // Every folder a session can write or the server writes for it (/usr is the host's, read-only:
      // reading all of it cold took more than the call's timeout on a fresh CI machine).
      'grep -r -l -F -f <(printf \'%s\\n\' "$T") /workspace /tmp /opt /etc /home 2>/dev/null',
      'echo end',
    ].join('\n'),
  );
  assert.equal(grep.stdout, `procs=0 len=${TOKEN.length}\nend\n`, 'no process environment, argument or file holds the token');
  const mem = await py(
    server,
    sid,
    [
      'import os, _platform_tools',
      // Built at run time so that the cell's own source does not hold the token.
      `T = ''.join(reversed('${[...TOKEN].reverse().join('')}'))`,
      'src = open(_platform_tools.__file__).read()',
      'mods = [m for m in list(__import__("sys").modules.values()) if m.__name__ != "__main__" and T in repr(getattr(m, "__dict__", {}))[:1000000]]',
      // The interpreter's own pid namespace (bash runs in another one).
      'procs = 0',
      "for p in [p for p in os.listdir('/proc') if p.isdigit()]:",
      "    for f in ('environ', 'cmdline'):",
      '        try:',
      "            procs += T in open(f'/proc/{p}/{f}', 'rb').read().decode('latin-1')",
      '        except OSError:',
      '            pass',
      'print(T in src, any(T in v for v in os.environ.values()), len(mods), procs)',
    ].join('\n'),
  );
  assert.equal(mem.return_code, 0, mem.stderr);
  assert.equal(mem.stdout, 'False False 0 0');
  let stub: string | null = null;
  for (const name of await readdir(server.sessionsRoot)) {
    if (existsSync(`${server.sessionsRoot}/${name}/workspace/token_box_marker`)) stub = readFileSync(`${server.sessionsRoot}/${name}/lib/_platform_tools.py`, 'utf8');
  }
  assert.ok(stub !== null, 'found the stub on disk');
  assert.ok(!stub.includes(TOKEN));
  assert.ok(stub.includes('def echo('));
  // (log lines are written in batches: wait for the line, an event, not for a fixed time)
  assert.ok(await waitFor(() => server.logs().includes('/programmatic-tools/register'), 10_000), 'the registration was logged');
  assert.ok(!server.logs().includes(TOKEN), 'the token is not logged');
});
