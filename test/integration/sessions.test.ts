/**
 * Sessions over HTTP against the real server: the start-up warm-up leaving nothing
 * behind, create / get / delete, the handle's fields, lifetime clamping and validation,
 * idle and lifetime reaping, capacity (503 + Retry-After), delete and reap killing every
 * process and removing the folder (also after `chmod -R 000`), and a SIGTERM shutdown
 * that leaves nothing behind.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { readdir, readFile, writeFile } from 'node:fs/promises';
import { randomBytes } from 'node:crypto';
import { startServer, api, createSession, py, sh, pidsWithMarker, waitFor, type TestServer } from '../helpers/server.js';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const unique = () => randomBytes(6).toString('hex');
/** A valid `sleep` argument no other process has: 1000.<random digits>. */
const sleepMarker = () => `1000.${String(Math.floor(Math.random() * 1e9)).padStart(9, '0')}${Date.now() % 1000}`;

/** The host folder of the session whose workspace holds `marker` (box folders are not named after the session). */
async function boxDirWith(sessionsRoot: string, marker: string): Promise<string | null> {
  for (const name of await readdir(sessionsRoot).catch(() => [] as string[])) {
    if (existsSync(`${sessionsRoot}/${name}/workspace/${marker}`)) return `${sessionsRoot}/${name}`;
  }
  return null;
}

/** Starts `sleep <n>.<marker>` detached from the interpreter and returns the marker. */
async function spawnSleeper(server: TestServer, id: string): Promise<string> {
  const marker = sleepMarker();
  const r = await py(server, id, `import subprocess\nsubprocess.Popen(['sleep', '${marker}'], start_new_session=True)\nprint('spawned')`);
  assert.equal(r.stdout, 'spawned', JSON.stringify(r.body));
  assert.ok(await waitFor(async () => (await pidsWithMarker(marker)).length > 0, 10_000), 'the sleeper is running on the host');
  return marker;
}

let server: TestServer;

before(async () => {
  // A few warm sandboxes, so that creates do not wait for an interpreter to start.
  server = await startServer({ SANDBOX_SESSION_GC_INTERVAL: '1', SANDBOX_WARM_POOL_SIZE: '3' });
});
after(async () => {
  if (server.proc.exitCode !== null || server.proc.signalCode !== null) {
    console.error(`server died early (${server.proc.exitCode ?? server.proc.signalCode}):\n${server.logs().slice(-4000)}`);
  }
  await server.stop();
});

/** The server's JSON log lines, up to the one that says it listens and after it. */
function logLines(server: TestServer): { before: Record<string, unknown>[]; after: Record<string, unknown>[] } {
  const lines = server
    .logs()
    .split('\n')
    .filter((l) => l.startsWith('{'))
    .map((l) => JSON.parse(l) as Record<string, unknown>);
  const listening = lines.findIndex((l) => String(l.msg).startsWith('Server listening at'));
  assert.ok(listening >= 0, 'the server logged that it listens');
  return { before: lines.slice(0, listening), after: lines.slice(listening) };
}

// First in this file: the server has served nothing but what the tests below send.
test('the start-up warm-up leaves no session, no box folder beyond the pool, no access-log line, and one log line with its duration', async () => {
  const { before, after } = logLines(server);
  const done = [...before, ...after].filter((l) => typeof l.msg === 'string' && l.msg.startsWith('warm-up'));
  assert.equal(done.length, 1, `one warm-up line: ${JSON.stringify(done)}`);
  assert.equal(done[0]!.msg, 'warm-up done');
  assert.ok(before.includes(done[0]!), 'before the server listens');
  assert.equal(typeof done[0]!.duration_ms, 'number');
  assert.ok((done[0]!.requests as number) > 10, `it made its calls: ${JSON.stringify(done[0])}`);
  assert.deepEqual(
    before.filter((l) => l.msg === 'request' || JSON.stringify(l).includes('sbx_')),
    [],
    'its requests and its session are in no log line',
  );
  // Its session is gone and its box cleaned up: what is left is the pool's.
  const h = (await api(server, 'GET', '/health')).body;
  assert.equal(h.session_count, 0);
  assert.equal(h.sessions_cleaning, 0);
  let pool = h.warm_pool;
  assert.ok(
    await waitFor(async () => {
      pool = (await api(server, 'GET', '/health')).body.warm_pool;
      return pool.starting === 0 && pool.ready === pool.target;
    }, 20_000),
    `the pool settles: ${JSON.stringify(pool)}`,
  );
  const boxes = (await readdir(server.sessionsRoot)).filter((n) => n.startsWith('box_'));
  assert.equal(boxes.length, pool.ready, `box folders: ${boxes.join(', ')}`);
  // And the server works.
  const id = await createSession(server);
  assert.equal((await py(server, id, 'print(6 * 7)')).stdout, '42');
  assert.equal((await api(server, 'DELETE', `/sessions/${id}`)).status, 204);
});

test('SANDBOX_WARMUP=false starts without a warm-up, and the server works', async () => {
  const cold = await startServer({ SANDBOX_WARMUP: 'false', SANDBOX_WARM_POOL_SIZE: '0' });
  try {
    assert.deepEqual(
      logLines(cold).before.filter((l) => String(l.msg).startsWith('warm-up')),
      [],
    );
    const id = await createSession(cold);
    assert.equal((await py(cold, id, 'print(1)')).stdout, '1');
    assert.equal((await api(cold, 'DELETE', `/sessions/${id}`)).status, 204);
  } finally {
    await cold.stop();
  }
});

test('POST /sessions answers 201 with a handle: sbx_ id, float times, default timeouts', async () => {
  const before = Date.now() / 1000;
  const r = await api(server, 'POST', '/sessions', {});
  const afterT = Date.now() / 1000;
  assert.equal(r.status, 201);
  assert.match(r.headers.get('content-type') ?? '', /^application\/json/);
  const h = r.body;
  assert.deepEqual(Object.keys(h).sort(), ['created_at', 'idle_timeout_seconds', 'last_activity_at', 'max_lifetime_seconds', 'session_id']);
  // sbx_<replica>_<96 random bits>: the replica (SANDBOX_REPLICA_ID, the host name by default) routes it.
  assert.match(h.session_id, /^sbx_[a-z0-9-]{1,63}_[0-9a-f]{24}$/);
  assert.equal(typeof h.created_at, 'number');
  assert.ok(h.created_at >= before - 1 && h.created_at <= afterT + 1, `created_at ${h.created_at} is now`);
  assert.equal(h.last_activity_at, h.created_at);
  assert.equal(h.idle_timeout_seconds, 900);
  assert.equal(h.max_lifetime_seconds, 7200);
});

test('ids are unique across sessions', async () => {
  const ids = await Promise.all([createSession(server), createSession(server), createSession(server)]);
  assert.equal(new Set(ids).size, 3);
  for (const id of ids) assert.equal((await api(server, 'GET', `/sessions/${id}`)).body.session_id, id);
});

test('a missing, empty, null or extra-field body means defaults', async () => {
  const noBody = await fetch(`${server.url}/sessions`, { method: 'POST' });
  assert.equal(noBody.status, 201);
  const emptyJson = await fetch(`${server.url}/sessions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: '' });
  assert.equal(emptyJson.status, 201);
  const nullBody = await api(server, 'POST', '/sessions', null);
  assert.equal(nullBody.status, 201);
  const image = await api(server, 'POST', '/sessions', { image: 'python:3.12', idle_timeout_seconds: 300 });
  assert.equal(image.status, 201);
  assert.equal(image.body.idle_timeout_seconds, 300);
  for (const r of [(await noBody.json()) as { session_id: string }, (await emptyJson.json()) as { session_id: string }, nullBody.body, image.body]) {
    assert.match(r.session_id, /^sbx_/);
  }
});

test('GET /sessions/{id} returns the same handle and does not touch it', async () => {
  const created = (await api(server, 'POST', '/sessions', { idle_timeout_seconds: 120, max_lifetime_seconds: 600 })).body;
  await sleep(30);
  const got = await api(server, 'GET', `/sessions/${created.session_id}`);
  assert.equal(got.status, 200);
  assert.deepEqual(got.body, created);
});

test('last_activity_at moves on exec and on file operations', async () => {
  const created = (await api(server, 'POST', '/sessions', {})).body;
  const id = created.session_id as string;
  await sleep(30);
  assert.equal((await py(server, id, 'pass')).status, 200);
  const afterExec = (await api(server, 'GET', `/sessions/${id}`)).body;
  assert.ok(afterExec.last_activity_at > created.last_activity_at, 'exec moved last_activity_at');
  assert.equal(afterExec.created_at, created.created_at);
  await sleep(30);
  assert.equal((await api(server, 'GET', `/sessions/${id}/files/list`)).status, 200);
  const afterList = (await api(server, 'GET', `/sessions/${id}`)).body;
  assert.ok(afterList.last_activity_at > afterExec.last_activity_at, 'a file listing moved last_activity_at');
});

test('unknown session: GET 404 with a stable code', async () => {
  const r = await api(server, 'GET', '/sessions/sbx_000000000000000000000000');
  assert.equal(r.status, 404);
  assert.equal(r.body.code, 'SBX_SESSION_NOT_FOUND');
  assert.equal(typeof r.body.detail, 'string');
});

test('DELETE answers 204, is idempotent, and the session is gone', async () => {
  const id = await createSession(server);
  const d1 = await fetch(`${server.url}/sessions/${id}`, { method: 'DELETE' });
  assert.equal(d1.status, 204);
  assert.equal(await d1.text(), '');
  assert.equal((await api(server, 'GET', `/sessions/${id}`)).status, 404);
  assert.equal((await py(server, id, 'print(1)')).status, 404);
  assert.equal((await api(server, 'DELETE', `/sessions/${id}`)).status, 204);
  assert.equal((await api(server, 'DELETE', '/sessions/sbx_never_existed')).status, 204);
});

test('lifetime hints above the ceilings are clamped, never refused; smaller ones are kept', async () => {
  const big = await api(server, 'POST', '/sessions', { idle_timeout_seconds: 1_000_000, max_lifetime_seconds: 10_000_000 });
  assert.equal(big.status, 201);
  assert.equal(big.body.idle_timeout_seconds, 900);
  assert.equal(big.body.max_lifetime_seconds, 7200);
  const small = await api(server, 'POST', '/sessions', { idle_timeout_seconds: 300, max_lifetime_seconds: 600 });
  assert.equal(small.status, 201);
  assert.equal(small.body.idle_timeout_seconds, 300);
  assert.equal(small.body.max_lifetime_seconds, 600);
  // The gateway's conformance check: the reported idle timeout is never above the request.
  const conf = await api(server, 'POST', '/sessions', { idle_timeout_seconds: 300 });
  assert.ok(conf.body.idle_timeout_seconds <= 300);
});

test('422 for non-integer or < 1 lifetime hints', async () => {
  const before = (await api(server, 'GET', '/health')).body.session_count;
  for (const body of [
    { idle_timeout_seconds: 0 },
    { idle_timeout_seconds: -5 },
    { idle_timeout_seconds: 1.5 },
    { idle_timeout_seconds: 'abc' },
    { idle_timeout_seconds: [1] },
    { idle_timeout_seconds: '' },
    { max_lifetime_seconds: 0 },
    { max_lifetime_seconds: 2.25 },
    { max_lifetime_seconds: 'forever' },
  ]) {
    const r = await api(server, 'POST', '/sessions', body);
    assert.equal(r.status, 422, `${JSON.stringify(body)} -> ${r.status} ${JSON.stringify(r.body)}`);
    assert.ok(r.body.detail !== undefined, 'error body has detail');
    assert.equal(r.body.code, 'SBX_VALIDATION');
  }
  assert.equal((await api(server, 'GET', '/health')).body.session_count, before, 'no session was made by a refused create');
});

test('an idle session is reaped: processes killed, folder removed, then 404', async () => {
  // One call after the create (the session must not be reaped before it, on a loaded
  // machine too: 2 s idle), which marks the folder and starts a sleeper that outlives it.
  const id = await createSession(server, { idle_timeout_seconds: 2 });
  const tag = `idle_${unique()}`;
  const marker = sleepMarker();
  const r = await py(server, id, `import subprocess\nopen('/workspace/${tag}', 'w').close()\nsubprocess.Popen(['sleep', '${marker}'], start_new_session=True)\nprint('spawned')`);
  assert.equal(r.stdout, 'spawned', JSON.stringify(r.body));
  const box = await boxDirWith(server.sessionsRoot, tag);
  assert.ok(box, 'found the session folder');
  assert.ok((await pidsWithMarker(marker)).length > 0, 'the sleeper is running on the host');
  // idle 2 s + GC every 1 s: gone within a few seconds (the waits below are backstops).
  assert.ok(await waitFor(async () => (await api(server, 'GET', `/sessions/${id}`)).status === 404, 30_000, 200), 'reaped');
  assert.ok(await waitFor(async () => (await pidsWithMarker(marker)).length === 0, 10_000), 'its processes are dead');
  assert.ok(await waitFor(() => !existsSync(box), 30_000), 'its folder is removed');
});

test('a session past its max lifetime is reaped even while in use', async () => {
  const id = await createSession(server, { max_lifetime_seconds: 2 });
  const started = Date.now();
  let reaped = false;
  // Keep it busy: activity does not extend a lifetime. (60 s only bounds the loop; the
  // reaping itself comes a second or two after the lifetime.)
  while (Date.now() - started < 60_000) {
    const r = await py(server, id, 'x = 1');
    if (r.status === 404) {
      reaped = true;
      break;
    }
    assert.equal(r.status, 200);
    await sleep(250);
  }
  assert.ok(reaped, 'reaped although active');
  const elapsed = Date.now() - started;
  assert.ok(elapsed >= 1900, `not before its lifetime (${elapsed} ms)`);
});

test('a busy-but-young session with activity is not reaped by its idle timeout', async () => {
  // 8 calls 500 ms apart span 4 s, past the 3 s idle timeout; each gap leaves 2.5 s of
  // room for a slow answer on a loaded machine.
  const id = await createSession(server, { idle_timeout_seconds: 3 });
  for (let i = 0; i < 8; i++) {
    const r = await py(server, id, `print(${i})`);
    assert.equal(r.status, 200, `call ${i} while active`);
    await sleep(500);
  }
  assert.equal((await api(server, 'GET', `/sessions/${id}`)).status, 200);
});

test('DELETE kills every process of the session and removes its folder', async () => {
  const id = await createSession(server);
  const tag = `del_${unique()}`;
  await sh(server, id, `touch ${tag}`);
  const box = await boxDirWith(server.sessionsRoot, tag);
  assert.ok(box);
  const marker = await spawnSleeper(server, id);
  assert.equal((await api(server, 'DELETE', `/sessions/${id}`)).status, 204);
  assert.ok(await waitFor(async () => (await pidsWithMarker(marker)).length === 0, 10_000), 'processes gone');
  // The folder, mounts and cgroup go in the background after the 204.
  assert.ok(await waitFor(() => !existsSync(box), 10_000), 'folder removed');
});

test('a DELETE racing a running exec, a queued exec and an upload in progress: each answers 404, nothing is left behind', async () => {
  const id = await createSession(server);
  const tag = `race_${unique()}`;
  const marker = await spawnSleeper(server, id);
  const running = py(server, id, `import time\nopen('/workspace/${tag}', 'w').close()\ntime.sleep(60)`, { timeout_seconds: 90 });
  assert.ok(await waitFor(async () => (await boxDirWith(server.sessionsRoot, tag)) !== null, 10_000), 'the first call is running');
  const box = (await boxDirWith(server.sessionsRoot, tag))!;
  const queued = sh(server, id, 'echo never');
  // An upload whose body is still coming when the session goes.
  const boundary = `b${unique()}`;
  let push!: (chunk: string | null) => void;
  const body = new ReadableStream<Uint8Array>({
    start(controller) {
      push = (chunk) => (chunk === null ? controller.close() : controller.enqueue(new TextEncoder().encode(chunk)));
    },
  });
  push(`--${boundary}\r\nContent-Disposition: form-data; name="file"; filename="late.bin"\r\nContent-Type: application/octet-stream\r\n\r\n${'x'.repeat(64 * 1024)}`);
  const uploading = fetch(`${server.url}/sessions/${id}/files`, {
    method: 'POST',
    body,
    headers: { 'content-type': `multipart/form-data; boundary=${boundary}` },
    duplex: 'half',
  } as RequestInit);
  assert.equal((await api(server, 'DELETE', `/sessions/${id}`)).status, 204);
  assert.equal((await api(server, 'GET', `/sessions/${id}`)).status, 404, 'gone from the API when DELETE answers');
  push(`${'y'.repeat(64 * 1024)}\r\n--${boundary}--\r\n`);
  push(null);
  const [r, q, u] = await Promise.all([running, queued, uploading.then(async (res) => ({ status: res.status, text: await res.text() }))]);
  assert.equal(r.status, 404, JSON.stringify(r.body));
  assert.equal(q.status, 404, JSON.stringify(q.body));
  assert.equal(u.status, 404, u.text);
  assert.ok(await waitFor(async () => (await pidsWithMarker(marker)).length === 0, 10_000), 'processes gone');
  assert.ok(await waitFor(() => !existsSync(box), 10_000), 'folder removed');
  assert.equal((await api(server, 'GET', '/health')).status, 200);
});

test('DELETE removes the folder even after chmod -R 000 by the code', async () => {
  const id = await createSession(server);
  const tag = `locked_${unique()}`;
  const r = await sh(
    server,
    id,
    `touch ${tag} && mkdir -p deep/er/est && echo x > deep/er/est/f && mkdir -p /tmp/t/u && echo y > /tmp/t/u/g && chmod -R 000 deep /tmp/t && chmod 000 ${tag} && ls deep 2>&1; echo done`,
  );
  assert.match(r.stdout, /done/);
  const box = await boxDirWith(server.sessionsRoot, tag);
  assert.ok(box);
  const lock = await sh(server, id, 'chmod -R 000 /workspace; echo locked');
  assert.match(lock.stdout, /locked/);
  assert.equal((await api(server, 'DELETE', `/sessions/${id}`)).status, 204);
  assert.ok(await waitFor(() => !existsSync(box), 10_000), 'folder removed');
});

test('capacity: 503 with Retry-After at SANDBOX_MAX_SESSIONS, room again after a delete', async () => {
  const small = await startServer({ SANDBOX_MAX_SESSIONS: '2', SANDBOX_WARM_POOL_SIZE: '0' });
  try {
    const a = await createSession(small);
    const b = await createSession(small);
    const refused = await api(small, 'POST', '/sessions', {});
    assert.equal(refused.status, 503);
    assert.equal(refused.body.code, 'SBX_AT_CAPACITY');
    assert.equal(typeof refused.body.detail, 'string');
    const retryAfter = refused.headers.get('retry-after');
    assert.ok(retryAfter !== null, 'Retry-After is set');
    assert.match(retryAfter, /^\d{1,6}$/);
    assert.ok(Number(retryAfter) >= 1);
    const health = (await api(small, 'GET', '/health')).body;
    assert.equal(health.session_count, 2);
    assert.equal(health.max_sessions, 2);
    assert.equal((await api(small, 'DELETE', `/sessions/${a}`)).status, 204);
    const c = await createSession(small);
    assert.equal((await py(small, c, 'print("room")')).stdout, 'room');
    assert.equal((await py(small, b, 'print("still")')).stdout, 'still');
  } finally {
    await small.stop();
  }
});

test('SIGTERM: in-flight calls finish, long ones are cut at the deadline, nothing is left behind', async () => {
  const srv = await startServer({ SANDBOX_SHUTDOWN_GRACE_SECONDS: '5' });
  let stopped = false;
  try {
    const health = await api(srv, 'GET', '/health');
    const cgroup = /\((\/sys\/fs\/cgroup\/[^)]+)\)/.exec(String(health.body.isolation?.memory_limit ?? ''))?.[1] ?? null;
    const a = await createSession(srv);
    const b = await createSession(srv);
    const markers = [await spawnSleeper(srv, a), await spawnSleeper(srv, b)];
    await sh(srv, a, 'touch marker_a');
    const boxA = await boxDirWith(srv.sessionsRoot, 'marker_a');
    assert.ok(boxA);
    // Events, not clocks: each call says it runs (a file in its workspace); the short one
    // then waits for a flag the test makes only after the SIGTERM, so it is in flight
    // during the shutdown and ends well inside the 5 s grace; the long one never ends by
    // itself within it.
    const short = py(
      srv,
      a,
      "import os, time\nopen('/workspace/short_runs', 'w').close()\nwhile not os.path.exists('/workspace/finish'):\n    time.sleep(0.02)\nprint('finished')",
      { timeout_seconds: 60 },
    );
    const long = py(srv, b, "import time\nopen('/workspace/long_runs', 'w').close()\ntime.sleep(60)\nprint('never')", { timeout_seconds: 120 }).catch((e: unknown) => e);
    const running = await waitFor(async () => existsSync(`${boxA}/workspace/short_runs`) && (await boxDirWith(srv.sessionsRoot, 'long_runs')) !== null, 30_000);
    assert.ok(running, 'both calls are running');
    const exited = new Promise<number | null>((resolve) => srv.proc.once('exit', (code) => resolve(code)));
    srv.proc.kill('SIGTERM');
    await writeFile(`${boxA}/workspace/finish`, '');
    const code = await exited;
    stopped = true;
    assert.equal(code, 0, `clean exit:\n${srv.logs().slice(-2000)}`);
    // (no clock: the long call below was cut, and exit code 0 is not the hard-stop deadline's 1)
    const r = await short;
    assert.equal(r.status, 200, 'the short in-flight call finished');
    assert.equal(r.stdout, 'finished');
    const l = await long;
    assert.ok(l instanceof Error || (l as { stdout?: string }).stdout !== 'never', 'the long call was cut');
    for (const m of markers) assert.deepEqual(await pidsWithMarker(m), [], `no process with ${m} left`);
    // The host as the server found it: the sessions root it made is gone with everything
    // in it (template state, pipes, pid file), and so is its cgroup.
    assert.deepEqual(await readdir(srv.sessionsRoot).catch((e: NodeJS.ErrnoException) => e.code), 'ENOENT', 'the sessions root is removed');
    if (cgroup) assert.equal(existsSync(cgroup), false, `the server's cgroup ${cgroup} is removed`);
  } finally {
    if (!stopped) srv.proc.kill('SIGKILL');
    await srv.stop();
  }
});

test("two servers started at once with the default uid base both work, on ranges of their own; one deleting its sessions leaves the other's alone", async () => {
  const [one, two] = await Promise.all([startServer({}, { defaultUidBase: true }), startServer({}, { defaultUidBase: true })]);
  try {
    const ranges = await Promise.all([one, two].map(async (s) => String((await api(s, 'GET', '/health')).body.isolation.uid_range)));
    const [a, b] = ranges.map((r) => r.split('-').map(Number) as [number, number]);
    assert.ok(a![1] < b![0] || b![1] < a![0], `ranges ${ranges.join(' and ')} do not overlap`);
    // Host-wide budgets (pids, TCP memory): each takes its part after what the servers
    // older than it need, so together they stay within half of the host's.
    const parts = await Promise.all(
      [one, two].map(async (s) => {
        const iso = (await api(s, 'GET', '/health')).body.isolation as { processes: string };
        const m = /this server's part \((\d+)(?:, after (\d+) older servers? on the host)?\) of the host's (\d+) tasks/.exec(iso.processes);
        assert.ok(m, iso.processes);
        return { budget: Number(m[1]), older: Number(m[2] ?? 0), host: Number(m[3]) };
      }),
    );
    assert.ok(parts[0]!.budget + parts[1]!.budget <= parts[0]!.host / 2, `both servers' parts together: ${JSON.stringify(parts)}`);
    const ids = await Promise.all([one, two].map((s) => createSession(s)));
    const uids = await Promise.all([one, two].map(async (s, i) => (await sh(s, ids[i]!, 'sleep 300 & stat -c %u /proc/self/ns/pid >/dev/null; echo ok')).stdout));
    assert.deepEqual(uids, ['ok\n', 'ok\n']);
    // every session of `one` goes; `two`'s keeps its state and its processes
    assert.equal((await py(two, ids[1]!, 'kept = 9')).return_code, 0);
    await api(one, 'DELETE', `/sessions/${ids[0]}`);
    await one.stop();
    assert.equal((await py(two, ids[1]!, 'print(kept)')).stdout, '9', "the other server's session is untouched");
    // a third server asking for a range in use by a live one on purpose is refused
    const clash = await startServer({ SANDBOX_UID_BASE: String(b![0]) }).then(
      (s) => s.stop().then(() => 'started'),
      (e: Error) => e.message,
    );
    assert.match(clash, /overlap .* used by the server with pid/);
  } finally {
    await Promise.all([one.stop(), two.stop()]);
  }
});

test('SIGTERM with 100 live sessions: a clean exit within the shutdown deadline, and the host as the server found it', async () => {
  const srv = await startServer({ SANDBOX_MAX_SESSIONS: '110', SANDBOX_WARM_POOL_SIZE: '4', SANDBOX_SHUTDOWN_GRACE_SECONDS: '2' });
  let stopped = false;
  try {
    const health = await api(srv, 'GET', '/health');
    const cgroup = /\((\/sys\/fs\/cgroup\/[^)]+)\)/.exec(String(health.body.isolation?.memory_limit ?? ''))?.[1] ?? null;
    const ids: string[] = [];
    for (let i = 0; i < 100; i += 10) ids.push(...(await Promise.all(Array.from({ length: 10 }, () => createSession(srv)))));
    // each one has run code (an interpreter and a bash sandbox's worth of state)
    await Promise.all(ids.slice(0, 20).map((id) => sh(srv, id, 'echo hi > /workspace/f')));
    const exited = new Promise<number | null>((resolve) => srv.proc.once('exit', (code) => resolve(code)));
    srv.proc.kill('SIGTERM');
    // (no clock: past its deadline the server exits with 1, not 0)
    assert.equal(await exited, 0, `clean exit:\n${srv.logs().slice(-2000)}`);
    stopped = true;
    assert.equal(await readdir(srv.sessionsRoot).catch((e: NodeJS.ErrnoException) => e.code), 'ENOENT', 'the sessions root is removed');
    if (cgroup) assert.equal(existsSync(cgroup), false, `the server's cgroup ${cgroup} is removed`);
    const mounts = await readFile('/proc/self/mountinfo', 'utf8');
    assert.ok(!mounts.includes(srv.sessionsRoot), 'no tmpfs of a box is left mounted');
  } finally {
    if (!stopped) srv.proc.kill('SIGKILL');
    await srv.stop();
  }
});
