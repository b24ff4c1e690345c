/**
 * Issue 8 (docs/threat-model.md, "the server process"): nothing a client, a tool router or
 * a session sends can crash, freeze or bloat the server. Each numbered case below is an
 * attack that worked against an earlier build; each ends with finishCase (the attacker's
 * session leaves nothing behind, /health answers, the victim session still runs, and the
 * server's event loop was never held by its own work for 100 ms, see support.ts).
 *
 * Memory is checked as growth of the server's resident set across the case, against a
 * bound far below what the unbounded builds held (hundreds of MiB).
 */
import { before, after, test } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import net from 'node:net';
import type { AddressInfo } from 'node:net';
import { readdir, readFile, readlink } from 'node:fs/promises';
import { createSession, notHung, startServer, upload } from '../helpers/server.js';
import { SseClient } from '../helpers/sse.js';
import {
  api,
  attacker,
  download,
  exists,
  finishCase,
  py,
  pyMarker,
  serverRssKb,
  sh,
  sleepMarker,
  startSuite,
  stopSuite,
  waitNoMarkers,
  pidsWithMarker,
  waitFor,
  type Suite,
} from './support.js';

let S: Suite;
let router: http.Server;
let routerUrl = '';
/** What the mock router answers next, by tool name. */
const replies = new Map<string, (res: http.ServerResponse) => void>();

before(async () => {
  router = http.createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      let name = '';
      try {
        name = (JSON.parse(Buffer.concat(chunks).toString('utf8')) as { name: string }).name;
      } catch {
        /* not JSON */
      }
      const answer = replies.get(name);
      if (answer) answer(res);
      else res.writeHead(200, { 'content-type': 'application/json' }).end('{"content": "ok"}');
    });
  });
  await new Promise<void>((r) => router.listen(0, '127.0.0.1', () => r()));
  routerUrl = `http://127.0.0.1:${(router.address() as AddressInfo).port}/tool-call`;
  S = await startSuite({
    SANDBOX_HTTP_REQUEST_TIMEOUT_SECONDS: '3',
    SANDBOX_HTTP_HEADERS_TIMEOUT_SECONDS: '2',
    SANDBOX_HTTP_MAX_CONNECTIONS: '64',
    SANDBOX_HTTP_SEND_TIMEOUT_SECONDS: '2',
    SANDBOX_INTERRUPT_GRACE_MS: '500',
    SANDBOX_EXEC_QUEUE_MAX: '1',
    SANDBOX_SERVER_MEMORY_BUDGET_MB: '128',
  });
});

after(async () => {
  await stopSuite(S);
  router.closeAllConnections();
  await new Promise((r) => router.close(r));
});

const MiB = 1024;
/** Resident set growth allowed across one case, KiB. */
const RSS_GROWTH_KB = 150 * MiB;

async function register(id: string, body: unknown) {
  return api(S.server, 'POST', `/sessions/${id}/programmatic-tools/register`, body);
}

test('#S1 router replies nested 20,000 and 100,000 deep raise ToolError in the session; the server stays up', async (t) => {
  const a = await attacker(S, t);
  const nested = (depth: number) => `{"content": ${'['.repeat(depth)}${']'.repeat(depth)}}`;
  replies.set('deep', (res) => res.writeHead(200, { 'content-type': 'application/json' }).end(nested(20_000)));
  replies.set('deeper', (res) => res.writeHead(200, { 'content-type': 'application/json' }).end(nested(100_000)));
  replies.set('deeperror', (res) => res.writeHead(200, { 'content-type': 'application/json' }).end(`{"is_error": true, "content": ${'{"a":'.repeat(5000)}1${'}'.repeat(5000)}}`));
  assert.equal(
    (await register(a.id, { callback_url: routerUrl, token: 'tok-123456', tools: [{ name: 'deep' }, { name: 'deeper' }, { name: 'deeperror' }, { name: 'fine' }] })).status,
    200,
  );
  const r = await py(
    S.server,
    a.id,
    "from _platform_tools import deep, deeper, deeperror, fine, ToolError\nfor f in (deep, deeper, deeperror):\n    try:\n        f()\n    except ToolError as e:\n        print('caught:', str(e)[:120])\nprint(fine())",
  );
  assert.equal(r.status, 200);
  const lines = r.stdout.split('\n');
  assert.match(lines[0] ?? '', /^caught: tool 'deep' transport error: the reply is nested deeper than 64 levels/);
  assert.match(lines[1] ?? '', /^caught: tool 'deeper' transport error: the reply holds more than 50000 JSON values/);
  assert.match(lines[2] ?? '', /^caught: /);
  assert.equal(lines[3], 'ok', 'the session goes on using its tools');
  // The same from the session's side: arguments nested deeper than the bound, sent as a
  // hand-made frame (json.dumps would hit Python's recursion limit first).
  const args = await py(
    S.server,
    a.id,
    `import _sandbox_driver as d, json
body = b'{"call_id":"c1","name":"fine","input":{"x":' + b'[' * 200000 + b']' * 200000 + b'}}'
d.DRIVER.chan.send(ord('T'), body)
print('sent')`,
  );
  assert.equal(args.status, 200);
  assert.equal(args.stdout, 'sent');
  await finishCase(S, a);
});

test('#S6 a register body of 600k wrong items is refused unparsed (413); 40k wrong items answer a small 422 (first problem only)', async (t) => {
  const a = await attacker(S, t);
  for (const [n, status] of [
    [600_000, 413],
    [40_000, 422],
  ] as const) {
    const body = `{"callback_url":"${routerUrl}","token":"tok-123456","tools":[${Array(n).fill('1').join(',')}]}`;
    const res = await fetch(`${S.server.url}/sessions/${a.id}/programmatic-tools/register`, { method: 'POST', headers: { 'content-type': 'application/json' }, body });
    const text = await res.text();
    assert.equal(res.status, status, `${n} items`);
    assert.ok(text.length < 4096, `answer of ${text.length} bytes`);
  }
  // Past the route's body limit: 413 on the announced length, before any of it is read
  // (a raw socket: a client library still uploading may see the early answer as a reset).
  const u = new URL(S.server.url);
  const s = net.connect(Number(u.port), u.hostname);
  t.after(() => void s.destroy());
  s.on('error', () => {});
  let head = '';
  const answered = new Promise<void>((r) => {
    s.on('data', (d: Buffer) => ((head += d.toString('latin1')), r()));
    s.once('close', () => r());
  });
  s.write(`POST /sessions/${a.id}/programmatic-tools/register HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: ${15 * 1024 * 1024}\r\n\r\n{`);
  await answered;
  assert.match(head, /^HTTP\/1\.1 413/);
  s.destroy();
  // Other routes take small bodies only.
  const create = await fetch(`${S.server.url}/sessions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: `{"x":"${'a'.repeat(200_000)}"}` });
  assert.equal(create.status, 413);
  await finishCase(S, a);
});

test('#S8 a million one-byte output frames: the server keeps copies of the kept bytes only', async (t) => {
  const a = await attacker(S, t);
  const before = await serverRssKb(S.server);
  // Each os.write carries one 1-byte stdout frame and a 32 KiB stderr frame; the stderr
  // bytes pass the cap and are dropped, the stdout bytes are kept.
  const r = await py(
    S.server,
    a.id,
    `import _sandbox_driver as d, struct, os
ch = d.DRIVER.chan
pad = struct.pack('>IB', 32768, ord('R')) + b'e' * 32768
one = struct.pack('>IB', 1, ord('O')) + b'o'
for i in range(8000):
    ch.send_raw(one + pad)
print('done')`,
    { timeout_seconds: 60 },
  );
  assert.equal(r.status, 200);
  assert.ok(r.stdout.startsWith('o'.repeat(1000)), 'the one-byte frames are kept');
  assert.ok(r.stdout.endsWith('done'));
  const grown = (await serverRssKb(S.server)) - before;
  assert.ok(grown < RSS_GROWTH_KB, `server RSS grew by ${grown} KiB`);
  await finishCase(S, a);
});

test('#S9 tool-call frames whose replies are never read: the server stops reading, the call ends at its timeout', async (t) => {
  const a = await attacker(S, t);
  const before = await serverRssKb(S.server);
  const r = await py(
    S.server,
    a.id,
    `import _sandbox_driver as d, os
ch = d.DRIVER.chan
ch.rfd = os.open('/dev/null', os.O_RDONLY)  # the driver never reads the server's frames again
# (ids as the driver makes them: past four in flight each call is refused with an answer,
# and the answers back up; an unanswerable call would be a frame of no use, see T8)
body = b'{"call_id":"' + b'c' * 32 + b'","name":"' + b'n' * 120 + b'","input":{}}'
for i in range(400000):
    ch.send(ord('T'), body)
print('never')`,
    { timeout_seconds: 4 },
  );
  assert.equal(r.status, 200);
  assert.equal(r.return_code, -1);
  assert.equal(r.interpreter_restarted, true, r.stderr);
  const grown = (await serverRssKb(S.server)) - before;
  assert.ok(grown < RSS_GROWTH_KB, `server RSS grew by ${grown} KiB`);
  const next = await py(S.server, a.id, 'print(41 + 1)');
  assert.equal(next.stdout, '42');
  await finishCase(S, a);
});

test('#S11 connections that send headers and one byte of body are timed out; past the cap they are closed at once', async (t) => {
  const u = new URL(S.server.url);
  const sockets: net.Socket[] = [];
  t.after(() => {
    for (const s of sockets) s.destroy();
  });
  const closed: Promise<void>[] = [];
  for (let i = 0; i < 150; i++) {
    const s = net.connect(Number(u.port), u.hostname);
    sockets.push(s);
    s.on('error', () => {});
    s.resume(); // read the 408 and the end, so 'close' can come
    closed.push(new Promise((r) => s.once('close', () => r())));
    s.write(`POST /sessions HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{`);
  }
  // Every one of them ends: the ones over the cap at once, the rest at the request timeout.
  await Promise.all(closed);
  const fds = (await readdir(`/proc/${S.server.proc.pid}/fd`)).length;
  assert.ok(fds < 500, `server holds ${fds} descriptors`);
  // Headers that never end are cut as well.
  const slow = net.connect(Number(u.port), u.hostname);
  slow.on('error', () => {});
  slow.resume();
  const slowClosed = new Promise<void>((r) => slow.once('close', () => r()));
  slow.write('GET /health HTTP/1.1\r\nHost: localhost\r\nX-Slow: ');
  await slowClosed;
  await finishCase(S, null);
});

/** TCP state (hex, /proc/net/tcp) of the server's end of a loopback connection, found by
 * its two ports; null when it is gone. '01' is ESTABLISHED. */
async function serverSideState(serverPort: number, clientPort: number): Promise<string | null> {
  const hex = (p: number) => `:${p.toString(16).toUpperCase().padStart(4, '0')}`;
  for (const line of (await readFile('/proc/net/tcp', 'utf8')).split('\n').slice(1)) {
    const f = line.trim().split(/\s+/);
    if (f[1]?.endsWith(hex(serverPort)) && f[2]?.endsWith(hex(clientPort))) return f[3] ?? null;
  }
  return null;
}

test('#S11b a client that stops reading a large download has its connection cut; nothing stays reserved', async (t) => {
  const a = await attacker(S, t);
  assert.equal((await sh(S.server, a.id, 'head -c 64M /dev/zero > /workspace/big.bin && echo ok')).stdout, 'ok\n');
  const u = new URL(S.server.url);
  const s = net.connect(Number(u.port), u.hostname);
  t.after(() => void s.destroy());
  s.on('error', () => {});
  await new Promise<void>((r) => s.once('connect', () => r()));
  const port = s.localPort!;
  s.write(`GET /sessions/${a.id}/files?path=big.bin HTTP/1.1\r\nHost: localhost\r\n\r\n`);
  s.pause(); // never read: the server's writes stall once the socket buffers are full
  // The server closes its end: no longer ESTABLISHED (its FIN waits behind the unread
  // bytes, in the kernel, without a descriptor of ours).
  const serverPort = Number(u.port);
  const cut = await waitFor(async () => (await serverSideState(serverPort, port)) !== '01', 60_000);
  assert.ok(cut, `the stalled download's connection is still open (state ${await serverSideState(serverPort, port)})`);
  const health = await api(S.server, 'GET', '/health');
  assert.equal(health.body.memory_budget.used_bytes, 0, 'nothing is reserved once every answer is done');
  await finishCase(S, a);
});

test('#S15 tool names that were the module internals are plain tools; reserved names are refused', async (t) => {
  const a = await attacker(S, t);
  const ok = await register(a.id, { callback_url: routerUrl, token: 'tok-123456', tools: [{ name: '_call' }, { name: '_driver' }, { name: '_TIMEOUT' }, { name: 'fine' }] });
  assert.equal(ok.status, 200, JSON.stringify(ok.body));
  const r = await py(S.server, a.id, 'from _platform_tools import fine, _call, _TIMEOUT\nprint(fine(), _call(), _TIMEOUT())');
  assert.equal(r.stdout, 'ok ok ok', r.stderr);
  for (const name of ['ToolError', '_sbx_call', '_sbx_timeout', '__init__', '__all__']) {
    const bad = await register(a.id, { callback_url: routerUrl, token: 'tok-123456', tools: [{ name }] });
    assert.equal(bad.status, 422, name);
  }
  const still = await py(S.server, a.id, 'from _platform_tools import fine\nprint(fine())');
  assert.equal(still.stdout, 'ok', 'a refused register leaves the last one in force');
  await finishCase(S, a);
});

test('#S16 forged done frames with 1e400 or 1e300 as return code give an integer return code', async (t) => {
  const a = await attacker(S, t);
  for (const value of ['1e400', '1e300', '-1e400', '"7"', '2.5']) {
    const r = await py(
      S.server,
      a.id,
      `import _sandbox_driver as d
d.DRIVER.chan.send(ord('D'), b'{"id":%d,"return_code":${value.replace(/"/g, '\\"')},"stdout_dropped":1e400,"stderr_dropped":-5}' % d.DRIVER.cell.id)
print('after')`,
    );
    assert.equal(r.status, 200, `${value}: ${JSON.stringify(r.body).slice(0, 300)}`);
    assert.ok(Number.isInteger(r.return_code), `${value}: return code ${r.return_code}`);
    assert.ok(Number.isInteger(r.body.stdout_dropped_bytes) && r.body.stdout_dropped_bytes >= 0);
    assert.ok(Number.isInteger(r.body.stderr_dropped_bytes) && r.body.stderr_dropped_bytes >= 0);
  }
  // A session may lie about its own results (its driver is its own); the next call
  // still works, though its output may start with what the lying cell printed late.
  const next = await py(S.server, a.id, 'print(6 * 7)');
  assert.equal(next.status, 200);
  assert.match(next.stdout, /42$/);
  await finishCase(S, a);
});

/** POST exec with a client we can cut off; resolves when the request is on the wire. */
function execAbortable(id: string, code: string): { abort: () => void; settled: Promise<number | string> } {
  const ac = new AbortController();
  const settled = fetch(`${S.server.url}/sessions/${id}/exec`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ tool: 'code_execution', input: { code }, timeout_seconds: 120 }),
    signal: ac.signal,
  }).then(
    (r) => r.status,
    (e: Error) => e.name,
  );
  return { abort: () => ac.abort(), settled };
}

test('#S17b bash calls cut off at once and deletes racing bash starts: no stray error in the server, no leaked descriptor, the session works', async (t) => {
  const a = await attacker(S, t);
  // the server's ends of sandbox pipes: FIFOs of its .pipes folder, unlinked once open
  const pipeFds = async () => {
    let n = 0;
    for (const fd of await readdir(`/proc/${S.server.proc.pid}/fd`).catch(() => [] as string[])) {
      if ((await readlink(`/proc/${S.server.proc.pid}/fd/${fd}`).catch(() => '')).includes('/.pipes/')) n++;
    }
    return n;
  };
  const fdsBefore = await pipeFds();
  const cut = Array.from({ length: 40 }, () => {
    const ac = new AbortController();
    const done = fetch(`${S.server.url}/sessions/${a.id}/exec`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ tool: 'bash_code_execution', input: { command: 'echo hi' } }),
      signal: ac.signal,
    }).then(
      (r) => r.status,
      (e: Error) => e.name,
    );
    // cut off as soon as the request is written: the command is still opening its pipes
    setImmediate(() => ac.abort());
    return done;
  });
  await Promise.all(cut);
  // a session deleted while its bash commands start
  const doomed = await createSession(S.server);
  const starts = Array.from({ length: 8 }, () => sh(S.server, doomed, 'echo hi').catch(() => null));
  await api(S.server, 'DELETE', `/sessions/${doomed}`);
  await Promise.all(starts);
  const r = await sh(S.server, a.id, 'echo still');
  assert.equal(r.stdout, 'still\n', r.stderr);
  assert.doesNotMatch(S.server.logs(), /contained/, 'no exception reached the last-resort handler');
  assert.ok(await waitFor(async () => (await pipeFds()) <= fdsBefore, 10_000), `no pipe descriptor leaked (${await pipeFds()} open, ${fdsBefore} before)`);
  await finishCase(S, a);
});

test('#S17 a client that disconnects cancels its call: the running one is interrupted (state kept), a waiting one leaves the queue', async (t) => {
  const a = await attacker(S, t);
  await py(S.server, a.id, 'kept = 41');
  const marker = sleepMarker();
  const running = execAbortable(a.id, `import subprocess\nsubprocess.run(['sleep', '${marker}'])`);
  assert.ok(await waitFor(async () => (await pidsWithMarker(marker)).length > 0, 20_000), 'the call started');
  // The queue holds one waiting call (SANDBOX_EXEC_QUEUE_MAX=1): a second waits, a third is 429.
  const waiting = execAbortable(a.id, 'print("waited")');
  let third = 0;
  assert.ok(
    await waitFor(async () => (third = (await py(S.server, a.id, 'print(3)')).status) === 429, 20_000),
    `a third call is refused while one runs and one waits (got ${third})`,
  );
  const execLines = () =>
    S.server
      .logs()
      .split('\n')
      .filter((l) => l.includes('"msg":"request"') && l.includes('/exec') && l.includes(a.id)).length;
  const answered = execLines();
  waiting.abort();
  assert.equal(await waiting.settled, 'AbortError');
  // Its slot is free once the server has seen the client go (its access-log line), not
  // when the client's fetch gives up: another call can wait then (it answers once the
  // running one ends).
  assert.ok(await waitFor(() => execLines() > answered, 20_000), 'the server saw the waiting call leave');
  const queued = execAbortable(a.id, 'print(kept + 1)');
  running.abort();
  assert.equal(await running.settled, 'AbortError');
  assert.deepEqual(await waitNoMarkers([marker], 20_000), [], 'the interrupted call stopped what it started');
  assert.equal(await queued.settled, 200, 'the call queued after the aborted one ran');
  const r = await py(S.server, a.id, 'print(kept + 1)');
  assert.equal(r.stdout, '42', 'interpreter state was kept');
  // bash: the command is killed when its client leaves.
  const bashMarker = sleepMarker();
  const ac = new AbortController();
  const bash = fetch(`${S.server.url}/sessions/${a.id}/exec`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ tool: 'bash_code_execution', input: { command: `sleep ${bashMarker}` }, timeout_seconds: 120 }),
    signal: ac.signal,
  }).catch(() => null);
  assert.ok(await waitFor(async () => (await pidsWithMarker(bashMarker)).length > 0, 20_000));
  ac.abort();
  await bash;
  assert.deepEqual(await waitNoMarkers([bashMarker], 20_000), []);
  await finishCase(S, a, [marker, bashMarker]);
});

test('#S18 credentials never reach the sandbox: userinfo URLs and control characters in tokens are refused, error texts are scrubbed', async (t) => {
  const a = await attacker(S, t);
  const withUser = routerUrl.replace('http://', 'http://user:secret-pw@');
  const r1 = await register(a.id, { callback_url: withUser, token: 'tok-123456', tools: [{ name: 'fine' }] });
  assert.equal(r1.status, 422);
  assert.ok(!JSON.stringify(r1.body).includes('secret-pw'), 'the password is not echoed');
  for (const token of ['abc\r\nX-Injected: 1', 'has space', 'tab\there', 'nul\u0000', 'é-non-ascii']) {
    const r = await register(a.id, { callback_url: routerUrl, token, tools: [{ name: 'fine' }] });
    assert.equal(r.status, 422, JSON.stringify(token));
    assert.ok(!JSON.stringify(r.body).includes('X-Injected'));
  }
  // A router that echoes the token in an is_error reply: the sandbox sees it redacted.
  const token = 'tok-SECRET-9f8e7d';
  replies.set('leaky', (res) => res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ is_error: true, content: `bad token ${token} at ${routerUrl}` })));
  assert.equal((await register(a.id, { callback_url: `${routerUrl}?key=QUERYSECRET`, token, tools: [{ name: 'leaky' }] })).status, 200);
  const r = await py(S.server, a.id, 'from _platform_tools import leaky, ToolError\ntry:\n    leaky()\nexcept ToolError as e:\n    print(e)');
  assert.ok(!r.stdout.includes(token), r.stdout);
  assert.match(r.stdout, /\[redacted\]/);
  // Unreachable routers are described by an error code, never by a message quoting the URL.
  const closedPort = await new Promise<number>((resolve) => {
    const tmp = net.createServer().listen(0, '127.0.0.1', () => {
      const port = (tmp.address() as AddressInfo).port;
      tmp.close(() => resolve(port));
    });
  });
  assert.equal((await register(a.id, { callback_url: `http://127.0.0.1:${closedPort}/x?key=QUERYSECRET`, token, tools: [{ name: 'fine' }] })).status, 200);
  const down = await py(S.server, a.id, 'from _platform_tools import fine, ToolError\ntry:\n    fine()\nexcept ToolError as e:\n    print(e)');
  assert.match(down.stdout, /unreachable: [A-Z]+/);
  assert.ok(!down.stdout.includes('QUERYSECRET'));
  await finishCase(S, a);
});

test('#S-race delete against exec (python, bash, editor) and register, in both orders: only 2xx/4xx, nothing left', async (t) => {
  for (let round = 0; round < 6; round++) {
    const a = await attacker(S, t);
    const marker = pyMarker();
    const calls = [
      py(S.server, a.id, `import subprocess, time\nsubprocess.Popen(['python3', '-c', '#${marker}\\nimport time; time.sleep(60)'])\ntime.sleep(0.${round})\nprint(1)`),
      sh(S.server, a.id, `sleep 0.${round}; echo hi`),
      api(S.server, 'POST', `/sessions/${a.id}/exec`, { tool: 'text_editor_code_execution', input: { command: 'create', path: `f${round}.txt`, file_text: 'x'.repeat(100_000) } }),
      register(a.id, { callback_url: routerUrl, token: 'tok-123456', tools: [{ name: 'fine' }] }),
    ];
    // Even rounds delete first (the calls find the session gone); odd rounds delete mid-call.
    if (round % 2 === 1) await new Promise((r) => setImmediate(r));
    const del = api(S.server, 'DELETE', `/sessions/${a.id}`);
    const statuses = (await Promise.all(calls)).map((r) => r.status);
    assert.equal((await del).status, 204);
    for (const s of statuses) assert.ok(s < 500, `round ${round}: statuses ${statuses.join(',')}`);
    await finishCase(S, null, [marker]);
    assert.equal((await api(S.server, 'GET', `/sessions/${a.id}`)).status, 404);
    assert.ok(await waitFor(async () => !(await exists(a.box.dir)), 30_000), `round ${round}: the session's folder is gone`);
  }
});

test('#S-race reap and shutdown against exec, register, editor, upload, download and list: no 5xx but 503, nothing left', { timeout: 180_000 }, async () => {
  const srv = await startServer({ SANDBOX_SESSION_GC_INTERVAL: '1', SANDBOX_SHUTDOWN_GRACE_SECONDS: '1' });
  let stopped = false;
  try {
    // Reap: a session whose lifetime ends while every kind of call keeps hitting it.
    const id = await createSession(srv, { max_lifetime_seconds: 2 });
    assert.equal((await sh(srv, id, 'head -c 4M /dev/zero > big.bin; mkdir -p d && touch d/a d/b; echo ok')).stdout, 'ok\n');
    const seen: (number | 'cut')[] = [];
    // A download that its session's end cuts short is a dropped connection, by design ('cut').
    const hit = async (): Promise<(number | 'cut')[]> =>
      Promise.all(
        [
          py(srv, id, 'x = 1'),
          sh(srv, id, 'true'),
          api(srv, 'POST', `/sessions/${id}/exec`, { tool: 'text_editor_code_execution', input: { command: 'create', path: 'e.txt', file_text: 'e' } }),
          api(srv, 'POST', `/sessions/${id}/programmatic-tools/register`, { callback_url: routerUrl, token: 'tok-123456', tools: [{ name: 'fine' }] }),
          api(srv, 'GET', `/sessions/${id}/files/list?recursive=true`),
          fetch(`${srv.url}/sessions/${id}/files?path=big.bin`).then(async (r) => (await r.arrayBuffer(), r)),
          upload(srv, id, 'u', { path: 'u.txt' }),
        ].map((p) => p.then((r) => r.status).catch(() => 'cut' as const)),
      );
    assert.ok(
      await waitFor(async () => {
        const statuses = await hit();
        seen.push(...statuses);
        return statuses.every((s) => s === 404);
      }, 60_000),
      'the session was reaped',
    );
    assert.ok(
      seen.every((s) => s === 'cut' || s < 500),
      `statuses while reaping: ${[...new Set(seen)].join(',')}`,
    );
    // Shutdown with calls of every kind in flight.
    const b = await createSession(srv);
    assert.equal((await sh(srv, b, 'head -c 32M /dev/zero > big.bin; echo ok')).stdout, 'ok\n');
    const inflight = [
      py(srv, b, 'import time\ntime.sleep(30)', { timeout_seconds: 60 }),
      sh(srv, b, 'sleep 30', { timeout_seconds: 60 }),
      api(srv, 'GET', `/sessions/${b}/files/list?recursive=true`),
      fetch(`${srv.url}/sessions/${b}/files?path=big.bin`).then(async (r) => (await r.arrayBuffer(), r)),
      upload(srv, b, Buffer.alloc(8 << 20, 1), { path: 'up.bin' }),
    ].map((p) => p.then((r) => r.status).catch(() => 'cut' as const));
    const exited = new Promise<number | null>((resolve) => srv.proc.once('exit', (code) => resolve(code)));
    srv.proc.kill('SIGTERM');
    const late = await Promise.all([
      createSession(srv).then(
        () => 201,
        (e: Error) => (/503/.test(e.message) ? 503 : 'cut'),
      ),
      ...inflight,
    ]);
    assert.equal(await exited, 0, srv.logs().slice(-2000));
    stopped = true;
    for (const s of late) assert.ok(s === 'cut' || s < 500 || s === 503, `statuses at shutdown: ${late.join(',')}`);
    // a clean stop removes the sessions root it made, with everything in it
    assert.equal(await readdir(srv.sessionsRoot).catch((e: NodeJS.ErrnoException) => e.code), 'ENOENT', 'every session folder removed');
  } finally {
    if (!stopped) srv.proc.kill('SIGKILL');
    await srv.stop();
  }
});

// ---- Found by a red-team review of the fixes above (R1-R8) and their siblings.

test('#R1 forged control frames whose JSON is slow to parse (2 MiB of {} objects) are refused unparsed; tool calls get an error', async (t) => {
  const a = await attacker(S, t);
  replies.set('hang', () => {}); // never answers: calls stay in flight
  assert.equal((await register(a.id, { callback_url: routerUrl, token: 'tok-123456', tools: [{ name: 'hang' }, { name: 'fine' }] })).status, 200);
  const before = await serverRssKb(S.server);
  const r = await py(
    S.server,
    a.id,
    `import _sandbox_driver as d, uuid
n = 2 * 1024 * 1024 - 64
objs = b'[' + b'{},' * (n // 3 - 1) + b'{}]'
for kind in 'THD':
    for i in range(6):
        head = b'{"call_id":"' + uuid.uuid4().hex.encode() + b'","name":"hang","input":' if kind == 'T' else b'{"id":%d,"x":' % d.DRIVER.cell.id
        d.DRIVER.chan.send(ord(kind), head + objs[: 1024 * 1024 - 200] + b']}')
from _platform_tools import fine, ToolError
big = [{} for _ in range(60000)]
try:
    fine(x=big)
except ToolError as e:
    print('caught:', e)
print(fine())`,
    { timeout_seconds: 30 },
  );
  assert.equal(r.status, 200);
  assert.match(r.stdout, /^caught: tool arguments too large or too complex/);
  assert.match(r.stdout, /ok$/, 'the session still calls its tools');
  const grown = (await serverRssKb(S.server)) - before;
  assert.ok(grown < RSS_GROWTH_KB, `server RSS grew by ${grown} KiB`);
  replies.delete('hang');
  await finishCase(S, a);
});

test('#R2 #R3 request bodies too complex to parse cheaply are 413 before parsing; validation of a huge array stays small', async (t) => {
  const a = await attacker(S, t);
  const objs = `[${Array(300_000).fill('{}').join(',')}]`;
  for (const [path, status] of [
    ['/sessions/sbx_nonexistent/programmatic-tools/register', 404],
    [`/sessions/${a.id}/programmatic-tools/register`, 413],
    [`/sessions/${a.id}/exec`, 413],
    ['/sessions', 413],
  ] as const) {
    const res = await fetch(`${S.server.url}${path}`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: `{"junk":${objs}}` });
    await res.arrayBuffer();
    assert.equal(res.status, status, path);
  }
  // Under the token cap but many wrong items: one small 422.
  const range = Array(40_000).fill('');
  const r = await api(S.server, 'POST', `/sessions/${a.id}/exec`, { tool: 'text_editor_code_execution', input: { command: 'view', path: 'x', view_range: range } });
  assert.equal(r.status, 422);
  assert.ok(JSON.stringify(r.body).length < 4096);
  await finishCase(S, a);
});

test('#R4 many half-sent large bodies: past the memory budget the server answers 503 at once instead of holding them', async (t) => {
  const a = await attacker(S, t);
  const u = new URL(S.server.url);
  const sockets: net.Socket[] = [];
  t.after(() => {
    for (const s of sockets) s.destroy();
  });
  const before = await serverRssKb(S.server);
  const answers: Promise<string>[] = [];
  const body = Buffer.alloc(3 * 1024 * 1024, 0x20);
  for (let i = 0; i < 40; i++) {
    const s = net.connect(Number(u.port), u.hostname);
    sockets.push(s);
    s.on('error', () => {});
    let got = '';
    answers.push(
      new Promise((resolve) => {
        s.on('data', (d: Buffer) => (got += d.toString('latin1')));
        s.once('close', () => resolve(got.slice(0, 12)));
      }),
    );
    s.write(`POST /sessions/${a.id}/programmatic-tools/register HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: ${body.length + 10}\r\n\r\n`);
    s.write(body);
  }
  // Some are refused with 503 while the rest wait for their last bytes (then time out).
  const statuses = await Promise.all(answers);
  assert.ok(
    statuses.some((s) => s.startsWith('HTTP/1.1 503')),
    `statuses: ${[...new Set(statuses)].join(' | ')}`,
  );
  const grown = (await serverRssKb(S.server)) - before;
  assert.ok(grown < RSS_GROWTH_KB, `server RSS grew by ${grown} KiB`);
  assert.equal((await api(S.server, 'GET', '/health')).body.memory_budget.used_bytes, 0);
  await finishCase(S, a);
});

test('#R5 answers that clients never read hold the memory budget: past it an answer goes out cut short, and it is freed when they go', async (t) => {
  // Its own server: the suite's short send timeout would cut the stalled readers first.
  const srv = await startServer({ SANDBOX_SERVER_MEMORY_BUDGET_MB: '96' });
  t.after(() => srv.stop());
  const id = await createSession(srv);
  // Control bytes escape to six characters each, and the euro sign makes the decoded
  // streams two-byte strings (second red team: such answers held twice their charge).
  const code = "import os\nos.write(1, b'\\x01' * 1048573 + '€'.encode())\nos.write(2, b'\\x01' * 1048573 + '€'.encode())";
  const u = new URL(srv.url);
  const sockets: net.Socket[] = [];
  t.after(() => {
    for (const s of sockets) s.destroy();
  });
  const body = JSON.stringify({ tool: 'code_execution', input: { code } });
  const rss0Kb = await serverRssKb(srv);
  // One at a time: each answer is being sent (its first bytes arrived) before the next
  // call is made, so no answer is still being built (holding its reservation at its upper
  // bound) while the next one reserves.
  for (let i = 0; i < 8; i++) {
    const s = net.connect(Number(u.port), u.hostname);
    sockets.push(s);
    s.on('error', () => {});
    const begun = new Promise<void>((resolve) =>
      s.once('data', () => {
        s.pause(); // never read the rest of the ~12 MB answer
        resolve();
      }),
    );
    s.write(`POST /sessions/${id}/exec HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: ${Buffer.byteLength(body)}\r\n\r\n${body}`);
    await notHung(begun, `stalled answer ${i} begins`);
  }
  // Each answer reserves what building it may take (20 bytes a character) before it is
  // built, then holds what it does take (~17 MB: its UTF-8 bytes and decoded streams):
  // four held fill the 96 MB budget for a fifth.
  const used = async () => ((await api(srv, 'GET', '/health')).body as { memory_budget: { used_bytes: number } }).memory_budget.used_bytes;
  assert.ok(await waitFor(async () => (await used()) > 48 * 1024 * 1024, 60_000), 'the stalled answers hold the budget');
  // What the server holds follows its charge (not twice it): its resident set grew by at
  // most the budget and some slack.
  const rssKb = await serverRssKb(srv);
  assert.ok(rssKb - rss0Kb < 96 * 1024 + 160 * 1024, `server RSS grew by ${Math.round((rssKb - rss0Kb) / 1024)} MiB`);
  // The call runs in full; its answer, without room, is cut short and says why.
  const lean = await py(srv, id, `${code}\nprint('ran')`);
  assert.equal(lean.status, 200);
  assert.ok(lean.stdout.length < 20_000, `stdout of ${lean.stdout.length} characters`);
  assert.match(lean.stderr, /this answer was cut to fit the memory the server has free for answers \(SANDBOX_SERVER_MEMORY_BUDGET_MB\); the call itself ran in full/);
  assert.equal(lean.limit_exceeded, 'output_bytes');
  assert.ok((await used()) <= 96 * 1024 * 1024);
  for (const s of sockets) s.destroy();
  assert.ok(await waitFor(async () => (await used()) === 0, 20_000), 'the budget is freed');
  const again = await py(srv, id, code);
  assert.equal(again.status, 200);
  assert.ok(again.stdout.length > 1_000_000, 'with room again, the whole answer');
});

test('#R9 escape-heavy answers of a few MiB, in four sessions and streamed: each comes whole and exact, serialised in slices (the event loop turns between them)', async (t) => {
  // Red team of issue 12: one such answer was ~100 ms of JSON.stringify in one turn of the
  // event loop. Now long strings are serialised in slices (src/http/json-slices.ts, whose
  // unit test shows the loop turning); here the real answers must still be exact.
  const a = await attacker(S, t);
  const more = [await createSession(S.server), await createSession(S.server), await createSession(S.server)];
  t.after(async () => {
    for (const id of more) await api(S.server, 'DELETE', `/sessions/${id}`).catch(() => {});
  });
  const code = "import os\nos.write(1, b'\\x01' * 1048573 + '\u20ac'.encode())\nos.write(2, b'\\x1f\\\\\\x00\"' * 262143)";
  const want = { stdout: '\u0001'.repeat(1048573) + '\u20ac', stderr: '\u001f\\\u0000"'.repeat(262143) };
  // (one after another: at once, they would pass the suite's memory budget for answers
  // and go out cut short, as #R5 shows)
  for (const id of [a.id, ...more]) {
    const r = await api(S.server, 'POST', `/sessions/${id}/exec`, { tool: 'code_execution', input: { code } });
    assert.equal(r.status, 200, JSON.stringify(r.body).slice(0, 300));
    const c = (r.body as { result_block: { content: { stdout: string; stderr: string; return_code: number } } }).result_block.content;
    assert.equal(c.return_code, 0);
    assert.ok(c.stdout === want.stdout, `stdout of ${c.stdout.length} characters differs`);
    assert.ok(c.stderr === want.stderr, `stderr of ${c.stderr.length} characters differs`);
  }
  // Streamed, the result event carries the same answer. (Smaller, and mostly plain: a
  // stream client more than twice the replay buffer, 512 KiB, behind is cut, and a loaded
  // machine can leave a test client that far behind; 100 Ki characters still take two
  // slices.)
  const small = "import os\nos.write(1, (b'x' * 1023 + b'\\x01') * 100)\nos.write(2, b'\\x1f\\\\\\x00\"' * 64)";
  const wantSmall = { stdout: ('x'.repeat(1023) + '\u0001').repeat(100), stderr: '\u001f\\\u0000"'.repeat(64) };
  const s = await SseClient.exec(S.server, a.id, 'code_execution', { code: small });
  await notHung(s.ended, 'streamed escape-heavy answer');
  const result = s.events.find((e) => e.event === 'result');
  assert.ok(result, `a result event (events: ${s.events.map((e) => e.event).join(',')})`);
  const streamed = (JSON.parse(result.data) as { result_block: { content: { stdout: string; stderr: string } } }).result_block.content;
  assert.ok(streamed.stdout === wantSmall.stdout && streamed.stderr === wantSmall.stderr, 'the streamed result is the whole answer');
  await finishCase(S, a);
});

test('#R8 tokens with quotes or backslashes are refused; a router echoing its URL query or token has it redacted', async (t) => {
  const a = await attacker(S, t);
  for (const token of ['ab"c', 'ab\\c', "ab'c", 'a,b', 'a b']) {
    assert.equal((await register(a.id, { callback_url: routerUrl, token, tools: [{ name: 'x' }] })).status, 422, token);
  }
  const token = 'ab1';
  replies.set('echo', (res) =>
    res
      .writeHead(200, { 'content-type': 'application/json' })
      .end(JSON.stringify({ is_error: true, content: { seen: `/tool-call?api_key=QSECRET auth=Bearer ${token}`, enc: 'api_key%3DQSECRET' } })),
  );
  assert.equal((await register(a.id, { callback_url: `${routerUrl}?api_key=QSECRET`, token, tools: [{ name: 'echo' }] })).status, 200);
  const r = await py(S.server, a.id, 'from _platform_tools import echo, ToolError\ntry:\n    echo()\nexcept ToolError as e:\n    print(e)');
  assert.ok(!r.stdout.includes('QSECRET') && !r.stdout.includes(token), r.stdout);
  replies.delete('echo');
  await finishCase(S, a);
});

// ---- Found by a second red-team review (T1-T6) and their siblings.

test('#T1 half-sent bodies hold only what arrived; a body for an unknown session is refused before it is read', async (t) => {
  const u = new URL(S.server.url);
  const sockets: net.Socket[] = [];
  t.after(() => {
    for (const s of sockets) s.destroy();
  });
  const a = await attacker(S, t);
  // 30 of them: this suite's server takes 64 connections at most (S11).
  for (let i = 0; i < 30; i++) {
    const s = net.connect(Number(u.port), u.hostname);
    sockets.push(s);
    s.on('error', () => {});
    s.resume();
    s.write(`POST /sessions/${a.id}/exec HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: 1600000\r\n\r\n{`);
  }
  await new Promise<void>((r) => sockets.at(-1)!.write('', () => r()));
  const health = await api(S.server, 'GET', '/health');
  assert.equal(health.body.memory_budget.used_bytes, 0, 'announced sizes are not charged');
  // Unknown session: 404 at once, before the client sends its body.
  const s = net.connect(Number(u.port), u.hostname);
  sockets.push(s);
  s.on('error', () => {});
  let got = '';
  const answered = new Promise<void>((r) => {
    s.on('data', (d: Buffer) => ((got += d.toString('latin1')), r()));
    s.once('close', () => r());
  });
  s.write(`POST /sessions/sbx_nosuch/exec HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: 1600000\r\n\r\n{`);
  await answered;
  assert.match(got, /^HTTP\/1\.1 404/);
  for (const x of sockets) x.destroy();
  await finishCase(S, a);
});

test('#T2 tool calls still in flight when their cell ends are cancelled: the router sees them go, nothing stays reserved', async (t) => {
  const a = await attacker(S, t);
  const held: http.ServerResponse[] = [];
  let gone = 0;
  replies.set('hold', (res) => {
    held.push(res);
    res.once('close', () => gone++);
  });
  t.after(() => {
    replies.delete('hold');
    for (const r of held) r.destroy();
  });
  assert.equal((await register(a.id, { callback_url: routerUrl, token: 'tok-123456', tools: [{ name: 'hold' }], timeout_seconds: 3600 })).status, 200);
  for (let round = 0; round < 3; round++) {
    const r = await py(
      S.server,
      a.id,
      `import _sandbox_driver as d, json, uuid, time, os
for i in range(4):
    d.DRIVER.chan.send(ord('T'), json.dumps({"call_id": uuid.uuid4().hex, "name": "hold", "input": {}}).encode())
time.sleep(0.3)
os._exit(0)`,
    );
    assert.equal(r.status, 200);
  }
  assert.ok(await waitFor(() => held.length === 12 && gone === 12, 20_000), `router requests: ${held.length} made, ${gone} cancelled`);
  assert.ok(await waitFor(async () => (await api(S.server, 'GET', '/health')).body.memory_budget.used_bytes === 0, 20_000), 'nothing reserved');
  await finishCase(S, a);
});

test('#T3 #T4 floods of empty control frames, during a call (which they end, see T8) and from a process left running after it, never hold the loop', async (t) => {
  const a = await attacker(S, t);
  const flood = `import _sandbox_driver as d, os, struct, time
raw = struct.pack('>IB', 0, ord('O')) * 13000
def flood(seconds):
    end = time.time() + seconds
    while time.time() < end:
        try:
            os.write(d.DRIVER.chan.wfd, raw)
        except BlockingIOError:
            time.sleep(0.001)
`;
  // During a call: the victim's calls go on meanwhile; empty frames are of no use, so the
  // flood ends with its interpreter (T8).
  const during = py(S.server, a.id, `${flood}flood(3)\nprint('flooded')`, { timeout_seconds: 30 });
  for (let i = 0; i < 5; i++) assert.equal((await py(S.server, S.victim, 'print(1)')).stdout, '1');
  const d = await during;
  assert.equal(d.interpreter_restarted, true, d.stdout);
  assert.match(d.stderr, /flooded the interpreter's control channel/);
  // After it: a detached grandchild keeps the channel and floods while no call runs (it
  // starts once the cell's output pipe is closed, that is once the call is over).
  const after = await py(
    S.server,
    a.id,
    `${flood}if os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n        try:\n            while True:\n                os.write(1, b'.')\n                time.sleep(0.01)\n        except OSError:\n            pass\n        time.sleep(0.2)\n        flood(3)\n    os._exit(0)\nos.wait()\nprint('returned')`,
  );
  // Its frames may interleave with the driver's own (pipe writes over 4 KiB are not atomic):
  // that garbles only this session's channel, which the server then restarts.
  assert.equal(after.status, 200);
  for (let i = 0; i < 5; i++) assert.equal((await py(S.server, S.victim, 'print(1)')).stdout, '1');
  await finishCase(S, a);
});

test('#T5 a reader that trickles a large answer is cut at its deadline (send timeout + size at the minimum pace)', async (t) => {
  const srv = await startServer({ SANDBOX_HTTP_SEND_TIMEOUT_SECONDS: '2', SANDBOX_HTTP_MIN_SEND_BYTES_PER_SECOND: String(1024 * 1024) });
  t.after(() => srv.stop());
  const id = await createSession(srv);
  assert.equal((await sh(srv, id, 'head -c 8M /dev/zero > big.bin && echo ok')).stdout, 'ok\n');
  const u = new URL(srv.url);
  const s = net.connect(Number(u.port), u.hostname);
  t.after(() => void s.destroy());
  s.on('error', () => {});
  await new Promise<void>((r) => s.once('connect', () => r()));
  const port = s.localPort!;
  s.pause();
  s.write(`GET /sessions/${id}/files?path=big.bin HTTP/1.1\r\nHost: localhost\r\n\r\n`);
  // Read a little every half second: always some progress, never the pace.
  const trickle = setInterval(() => s.read(1024), 500);
  t.after(() => clearInterval(trickle));
  const cut = await waitFor(async () => (await serverSideState(Number(u.port), port)) !== '01', 60_000);
  clearInterval(trickle);
  assert.ok(cut, 'the trickled download is cut');
});

/** A cell that waits until /workspace/go exists (uploaded by the test), after saying it
 * started in /workspace/started. */
const BLOCKER = "import os, time\nopen('/workspace/started', 'w').close()\nwhile not os.path.exists('/workspace/go'):\n    time.sleep(0.05)\nprint('released')";

/** Starts BLOCKER in session `id` and waits until it runs; its answer comes in `call`. */
async function block(server: { url: string }, id: string) {
  const call = py(server, id, BLOCKER, { timeout_seconds: 120 });
  assert.ok(await waitFor(async () => (await download(server, id, 'started')).status === 200, 30_000), 'the blocking call runs');
  return { call };
}

/** An exec body of about `bytes` bytes (a padding field the call never reads). */
function bigExecBody(code: string, bytes: number): string {
  return JSON.stringify({ tool: 'code_execution', input: { code }, padding: 'p'.repeat(bytes) });
}

test('#T6 a queued call and the running one hold their parsed bodies in the memory budget until their answers end, at their parsed size', async (t) => {
  const a = await attacker(S, t);
  const used = async () => ((await api(S.server, 'GET', '/health')).body as { memory_budget: { used_bytes: number } }).memory_budget.used_bytes;
  assert.equal(await used(), 0);
  const blocker = bigExecBody(BLOCKER, 1_000_000);
  const running = fetch(`${S.server.url}/sessions/${a.id}/exec`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: blocker });
  assert.ok(await waitFor(async () => (await download(S.server, a.id, 'started')).status === 200, 30_000), 'the blocking call runs');
  const queued = api(S.server, 'POST', `/sessions/${a.id}/exec`, JSON.parse(bigExecBody("print('queued')", 1_000_000)));
  // Queued once both bodies are held and a third call is refused (this suite's queue holds
  // one). A probe that came before the big body took the slot would wait behind the
  // blocker: it is given up after a while (a waiting call that loses its client leaves the
  // queue), and the next probe tries again.
  assert.ok(await waitFor(async () => (await used()) >= 4 * blocker.length, 30_000), 'both bodies are held');
  const probe = async () => {
    try {
      const r = await fetch(`${S.server.url}/sessions/${a.id}/exec`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ tool: 'code_execution', input: { code: 'print(3)' } }),
        signal: AbortSignal.timeout(2000),
      });
      await r.arrayBuffer();
      return r.status === 429;
    } catch {
      return false;
    }
  };
  assert.ok(await waitFor(probe, 30_000), 'the second call waits in the queue');
  // Both bodies are held as parsed (two bytes per byte of text and a few tokens), not
  // released at parse, and not at the three times their size they held while arriving.
  const held = await used();
  assert.ok(held >= 4 * blocker.length && held < 4 * blocker.length + 64 * 1024, `${held} bytes held for two bodies of ${blocker.length}`);
  assert.equal((await upload(S.server, a.id, 'go', { path: 'go' })).status, 201);
  assert.equal((await running).status, 200);
  const q = await queued;
  assert.equal(q.status, 200);
  assert.equal(q.body.result_block.content.stdout, 'queued');
  assert.ok(await waitFor(async () => (await used()) === 0, 20_000), 'the budget is freed with the answers');
  await finishCase(S, a);
});

test('#T7 full queues of large bodies in many sessions stay within the memory budget: past it 503 SBX_SERVER_BUSY with Retry-After; freed when the calls end', async (t) => {
  const srv = await startServer({ SANDBOX_SERVER_MEMORY_BUDGET_MB: '16', SANDBOX_EXEC_QUEUE_MAX: '8' });
  t.after(() => srv.stop());
  const budgetBytes = 16 * 1024 * 1024;
  const used = async () => ((await api(srv, 'GET', '/health')).body as { memory_budget: { used_bytes: number } }).memory_budget.used_bytes;
  const ids = await Promise.all([0, 1, 2].map(() => createSession(srv)));
  const blockers = [];
  for (const id of ids) blockers.push((await block(srv, id)).call);
  const before = await serverRssKb(srv);
  const u = new URL(srv.url);
  const sockets: net.Socket[] = [];
  t.after(() => {
    for (const x of sockets) x.destroy();
  });
  // 8 bodies of 1 MB for each session's queue (24 MB of text, 48 MB parsed, against a
  // budget of 16 MiB), one at a time: each is either refused or held before the next.
  const body = bigExecBody("print('ran')", 1_000_000);
  const answers: Promise<string>[] = [];
  let refused = 0;
  let queued = 0;
  let peak = 0;
  for (const id of ids) {
    for (let i = 0; i < 8; i++) {
      const start = await used();
      const s = net.connect(Number(u.port), u.hostname);
      sockets.push(s);
      s.on('error', () => {});
      // (A refused body's answer comes while the rest of it is unread: the answer is taken
      // as soon as it is whole, not when the server closes the connection.)
      let got = '';
      let answered = false;
      answers.push(
        new Promise((resolve) => {
          const end = () => {
            answered = true;
            resolve(got);
            s.destroy();
          };
          s.on('data', (d: Buffer) => {
            got += d.toString('latin1');
            const head = got.indexOf('\r\n\r\n');
            const length = Number(/\r\ncontent-length: (\d+)/i.exec(got)?.[1] ?? NaN);
            if (head >= 0 && got.length - head - 4 >= length) end();
          });
          s.once('close', end);
        }),
      );
      s.write(`POST /sessions/${id}/exec HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: ${body.length}\r\n\r\n`);
      s.write(body);
      let now = start;
      assert.ok(await waitFor(async () => answered || (now = await used()) >= start + 2 * body.length, 30_000), 'each body is refused or held');
      peak = Math.max(peak, now);
      if (answered) refused++;
      else queued++;
    }
  }
  t.diagnostic(`${queued} bodies held, ${refused} refused; at most ${peak} bytes charged`);
  assert.ok(queued >= 1 && refused >= 1, `${queued} held, ${refused} refused`);
  assert.ok(peak <= budgetBytes, `${peak} bytes charged, more than the budget`);
  const rss = (await serverRssKb(srv)) - before;
  assert.ok(rss < RSS_GROWTH_KB, `server RSS grew by ${rss} KiB`);
  for (const id of ids) assert.equal((await upload(srv, id, 'go', { path: 'go' })).status, 201);
  for (const b of await Promise.all(blockers)) assert.equal(b.stdout, 'released');
  const texts = await Promise.all(answers);
  const statuses = texts.map((x) => x.slice(0, 12));
  assert.equal(statuses.filter((x) => x === 'HTTP/1.1 200').length, queued, `statuses: ${[...new Set(statuses)].join(' | ')}`);
  const busy = texts.filter((x) => x.startsWith('HTTP/1.1 503'));
  assert.equal(busy.length, refused);
  for (const x of busy) {
    assert.match(x, /\r\nretry-after: 1\r\n/i);
    assert.match(x, /"code":"SBX_SERVER_BUSY"/);
  }
  assert.ok(await waitFor(async () => (await used()) === 0, 20_000), 'the budget is back to 0');
  assert.equal((await py(srv, ids[0]!, 'print(6 * 7)')).stdout, '42');
});

test('#T8 a flood of forged frames of no use (empty output, done frames of no call, hellos, unanswerable tool calls) ends its interpreter with a note; the next call gets a fresh one', async (t) => {
  const a = await attacker(S, t);
  assert.equal((await py(S.server, a.id, 'kept = 1')).status, 200);
  // The junk goes out before the cell's own done frame, so the server meets it first.
  const r = await py(
    S.server,
    a.id,
    `import _sandbox_driver as d, json, struct
def frame(kind, body):
    return struct.pack('>IB', len(body), ord(kind)) + body
cell = d.DRIVER.cell.id
junk = [frame('O', b''), frame('R', b''), frame('D', json.dumps({'id': cell + 1000, 'return_code': 0}).encode()), frame('H', b'{}'), frame('X', b'{"error": "x"}'), frame('T', b'{"name": "x"}')]
d.DRIVER.chan.send_raw(b''.join(junk[i % len(junk)] for i in range(6000)))
print('sent')`,
    { timeout_seconds: 20 },
  );
  assert.equal(r.status, 200);
  assert.equal(r.return_code, -1);
  assert.equal(r.interpreter_restarted, true, JSON.stringify(r.body).slice(0, 400));
  assert.match(
    r.stderr,
    /runner: the code flooded the interpreter's control channel: 1025 frames in this call were of no use to the server \(at most 1024 more than the 0 it used\); the interpreter was restarted and its state was lost/,
  );
  const next = await py(S.server, a.id, "print('kept' in globals())");
  assert.equal(next.stdout, 'False', 'the next call runs in a fresh interpreter');
  await finishCase(S, a);
});

test('#L1 a log reader that stops reading (a full stdout pipe) neither freezes the server nor keeps it from stopping', { timeout: 120_000 }, async (t) => {
  const srv = await startServer();
  t.after(() => srv.stop());
  srv.proc.stdout!.pause(); // nobody reads the log from here on: the pipe fills
  const id = await createSession(srv);
  // Thousands of access-log lines: far more than a pipe holds.
  for (let i = 0; i < 1500; i++) assert.equal((await api(srv, 'GET', '/health')).status, 200);
  assert.equal((await py(srv, id, 'print(6 * 7)')).stdout, '42', 'sessions still work');
  const exited = new Promise<number | null>((resolve) => srv.proc.once('exit', (code) => resolve(code)));
  srv.proc.kill('SIGTERM');
  assert.equal(await exited, 0, 'it stops on SIGTERM');
});

test('#L1b a log reader that goes away (a closed stdout pipe) neither fails a call nor keeps the server from stopping', { timeout: 120_000 }, async (t) => {
  const srv = await startServer();
  t.after(() => srv.stop());
  srv.proc.stdout!.destroy(); // the only reader: every write to the log now fails (EPIPE)
  const id = await createSession(srv);
  for (let i = 0; i < 50; i++) assert.equal((await api(srv, 'GET', '/health')).status, 200);
  assert.equal((await py(srv, id, 'print(6 * 7)')).stdout, '42', 'sessions still work');
  // The lines of the shutdown itself are still buffered at exit: the synchronous flush
  // there must give up on the closed pipe (it once slept and retried for ever).
  const exited = new Promise<number | null>((resolve) => srv.proc.once('exit', (code) => resolve(code)));
  srv.proc.kill('SIGTERM');
  assert.equal(await exited, 0, 'it stops on SIGTERM');
});

test("#S19 a session whose code holds its own workspace's folder and file locks waits alone: other sessions' calls run, and its own answer (fourth red team: the artifact scan on the event loop waited on those locks up to 3.9 s at a time, and every session with it)", async (t) => {
  const a = await attacker(S, t);
  const v = await attacker(S, t);
  // Threads that keep a file's inode lock taken (fallocate punch-holes) and both folders'
  // locks with it (a rename exchange across them waits for that file's lock while it holds
  // theirs), for 20 s at most.
  const hog = [
    'import ctypes, os, threading, time',
    'libc = ctypes.CDLL(None)',
    'libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_long, ctypes.c_long]',
    'libc.renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]',
    "os.makedirs('/workspace/b', exist_ok=True)",
    "open('/workspace/G', 'w').write('g'); open('/workspace/b/H', 'w').write('h')",
    "G = os.open('/workspace/G', os.O_RDWR)",
    'end = time.monotonic() + 20',
    'def hog():',
    '    while time.monotonic() < end:',
    '        libc.fallocate(G, 1, 0, 250 << 20); libc.fallocate(G, 3, 0, 250 << 20)',
    'def ren():',
    '    while time.monotonic() < end:',
    "        libc.renameat2(-100, b'/workspace/G', -100, b'/workspace/b/H', 2)",
    'for _ in range(12): threading.Thread(target=hog, daemon=True).start()',
    'threading.Thread(target=ren, daemon=True).start()',
    "print('holding')",
  ].join('\n');
  assert.equal((await py(S.server, a.id, hog)).stdout, 'holding');
  for (let i = 0; i < 3; i++) {
    const own = await py(S.server, a.id, 'pass');
    // (answered: with its files looked at, or a note that its workspace did not answer)
    assert.equal(own.return_code, 0, own.stderr);
  }
  for (let i = 0; i < 20; i++) {
    const r = await py(S.server, v.id, 'print(1)');
    assert.equal(r.stdout, '1', `victim call ${i}: ${r.stderr}`);
  }
  // (the hog's threads end with the interpreter)
  await py(S.server, a.id, 'import os\nos._exit(0)');
  await finishCase(S, a);
});
