/**
 * Hostile inputs 47-49 of docs/threat-model.md (cross-session and API): nothing shared between two sessions
 * (SysV IPC, POSIX shm, abstract Unix sockets, /tmp, processes, keyrings, host uid),
 * session ids that cannot be guessed or listed, and hostile HTTP requests (malformed and
 * 100,000-deep JSON, wrong content types, slowloris, 50 parallel creates at a small
 * session cap): 4xx or 503, never 5xx, and the server stays up.
 */
import { before, after, test } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import { readdir } from 'node:fs/promises';
import { api, attacker, finishCase, notHung, pidsWithMarker, py, randomText, rawRequest, sh, sleepMarker, startSuite, stopSuite, serverErrors, type Suite } from './support.js';

const MAX_SESSIONS = 8;
let S: Suite;

before(async () => {
  S = await startSuite({ SANDBOX_MAX_SESSIONS: String(MAX_SESSIONS) });
});

after(async () => {
  await stopSuite(S);
});

test('#47 SysV shm/msg/sem, POSIX shm, abstract sockets, /tmp, processes and keyrings are not shared between sessions', async (t) => {
  const a = await attacker(S, t);
  const b = await attacker(S, t);
  assert.notEqual(a.box.uid, b.box.uid, 'each session has its own host uid');
  assert.ok(a.box.uid !== 0 && b.box.uid !== 0 && a.box.uid !== S.victimBox.uid);
  const secret = randomText('shared');
  const abstract = randomText('secsuite-abs');
  const m = sleepMarker();
  const write = await py(
    S.server,
    a.id,
    `import ctypes, os, socket, subprocess
libc = ctypes.CDLL(None, use_errno=True)
libc.shmat.restype = ctypes.c_void_p
shmid = libc.shmget(0x5EC5EC, 4096, 0o1666)
addr = libc.shmat(shmid, None, 0)
ctypes.memmove(addr, b'${secret}', ${secret.length})
msq = libc.msgget(0x5EC5ED, 0o1666)
sem = libc.semget(0x5EC5EE, 1, 0o1666)
open('/dev/shm/secsuite-posix', 'w').write('${secret}')
open('/tmp/secsuite-tmp', 'w').write('${secret}')
held = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
held.bind('\\0${abstract}')
held.listen(5)
child = subprocess.Popen(['sleep', '${m}'])
print(shmid >= 0, msq >= 0, sem >= 0)`,
  );
  assert.equal(write.stdout, 'True True True', write.stderr);
  assert.ok((await pidsWithMarker(m)).length > 0);
  const read = await py(
    S.server,
    b.id,
    `import ctypes, errno, os, socket
libc = ctypes.CDLL(None, use_errno=True)
res = {}
for name, fn in (('shm', lambda: libc.shmget(0x5EC5EC, 0, 0)), ('msg', lambda: libc.msgget(0x5EC5ED, 0)), ('sem', lambda: libc.semget(0x5EC5EE, 0, 0))):
    r = fn()
    res[name] = 'FOUND' if r >= 0 else errno.errorcode[ctypes.get_errno()]
res['posix shm'] = os.path.exists('/dev/shm/secsuite-posix')
res['tmp'] = os.path.exists('/tmp/secsuite-tmp')
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
try:
    s.connect('\\0${abstract}'); res['abstract'] = 'CONNECTED'
except OSError as e:
    res['abstract'] = errno.errorcode[e.errno]
own = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
own.bind('\\0${abstract}')
res['abstract bind'] = 'own namespace'
res['procs'] = [p for p in os.listdir('/proc') if p.isdigit() and '${m}' in open('/proc/%s/cmdline' % p).read()]
r = libc.syscall(250, 0, -3, 0, 0, 0)  # keyctl(KEYCTL_GET_KEYRING_ID, KEY_SPEC_USER_KEYRING)
res['keyctl'] = errno.errorcode[ctypes.get_errno()] if r < 0 else 'KEYRING'
print(sorted(res.items()))`,
  );
  assert.equal(
    read.stdout,
    "[('abstract', 'ECONNREFUSED'), ('abstract bind', 'own namespace'), ('keyctl', 'EPERM'), ('msg', 'ENOENT'), ('posix shm', False), ('procs', []), ('sem', 'ENOENT'), ('shm', 'ENOENT'), ('tmp', False)]",
    read.stderr,
  );
  const ipcs = await sh(S.server, b.id, 'ipcs -a; ls -A /dev/shm /tmp');
  assert.doesNotMatch(ipcs.stdout, /5ec5e/i, "ipcs in B shows none of A's objects");
  assert.doesNotMatch(ipcs.stdout, /secsuite-(posix|tmp)/);
  // Within A, the REPL sees its own objects (the probes above are meaningful).
  const own = await py(S.server, a.id, "import ctypes\nlibc = ctypes.CDLL(None)\nprint(libc.shmget(0x5EC5EC, 0, 0) >= 0, open('/tmp/secsuite-tmp').read() == '" + secret + "')");
  assert.equal(own.stdout, 'True True');
  await finishCase(S, b);
  await finishCase(S, a, [m]);
});

test('#48 session ids are unguessable (sbx_ + 96 random bits), cannot be listed, and never enter the sandbox', async (t) => {
  const ids: string[] = [];
  for (let i = 0; i < 3; i++) {
    const a = await attacker(S, t);
    ids.push(a.id);
    const inside = await sh(
      S.server,
      a.id,
      `N="$(echo '${[...a.id].reverse().join('')}' | rev)"; grep -rlasF "$N" /proc/[0-9]*/environ /proc/[0-9]*/cmdline /etc /opt /tmp /workspace 2>/dev/null; echo scanned`,
    );
    assert.equal(inside.stdout, 'scanned\n', `the session id is visible inside: ${inside.stdout}`);
    await finishCase(S, a);
  }
  for (let i = 0; i < 20; i++) {
    const r = await api(S.server, 'POST', '/sessions', {});
    assert.equal(r.status, 201);
    ids.push(r.body.session_id);
    assert.equal((await api(S.server, 'DELETE', `/sessions/${r.body.session_id}`)).status, 204);
  }
  for (const id of ids) assert.match(id, /^sbx_[a-z0-9-]+_[0-9a-f]{24}$/);
  assert.equal(new Set(ids).size, ids.length);
  const names = await readdir(S.sessionsRoot);
  for (const id of [...ids, S.victim]) assert.ok(!names.some((n) => n.includes(id.slice(-24))), 'host folder names are not derived from session ids');
  const list = await api(S.server, 'GET', '/sessions');
  assert.ok(list.status === 404 || list.status === 405, `GET /sessions must not list sessions: ${list.status}`);
  assert.ok(!JSON.stringify(list.body).includes(S.victim));
  for (const guess of ['sbx_000000000000000000000000', 'sbx_1', `${S.victim.slice(0, -1)}0`, S.victim.toUpperCase(), `${S.victim}/../${S.victim}`]) {
    if (guess === S.victim) continue;
    const r = await api(S.server, 'GET', `/sessions/${encodeURIComponent(guess)}`);
    assert.equal(r.status, 404, `guessed id ${guess}`);
  }
  const health = await api(S.server, 'GET', '/health');
  assert.ok(!JSON.stringify(health.body).includes(S.victim), '/health does not list session ids');
  await finishCase(S, null);
});

test('#49 malformed, 100,000-deep and wrongly typed request bodies answer 4xx, never 5xx', async (t) => {
  const a = await attacker(S, t);
  const depth = 100_000;
  const deepArray = `${'['.repeat(depth)}${']'.repeat(depth)}`;
  const deepObject = `${'{"a":'.repeat(depth)}1${'}'.repeat(depth)}`;
  // [method, path, content type, body, statuses allowed besides 4xx]
  const cases: [string, string, string, string, number[]?][] = [
    ['POST', '/sessions', 'application/json', '{"idle_timeout_seconds":'],
    ['POST', '/sessions', 'application/json', '{"idle_timeout_seconds": "x"}'],
    ['POST', '/sessions', 'application/json', deepArray],
    ['POST', '/sessions', 'application/json', deepObject, [201]], // unknown fields are ignored
    ['POST', '/sessions', 'application/json', `{"idle_timeout_seconds": ${deepArray}}`],
    ['POST', `/sessions/${a.id}/exec`, 'application/json', '{bad json'],
    ['POST', `/sessions/${a.id}/exec`, 'application/json', deepArray],
    ['POST', `/sessions/${a.id}/exec`, 'application/json', `{"tool": "bash_code_execution", "input": {"command": ${deepArray}}}`],
    ['POST', `/sessions/${a.id}/exec`, 'application/json', `{"tool": "text_editor_code_execution", "input": {"command": "view", "path": ${deepObject}}}`],
    ['POST', `/sessions/${a.id}/exec`, 'application/json', `{"tool": ${deepArray}, "input": {}}`],
    ['POST', `/sessions/${a.id}/exec`, 'text/plain', '{"tool":"code_execution","input":{"code":"print(1)"}}'],
    ['POST', `/sessions/${a.id}/exec`, 'application/x-www-form-urlencoded', 'tool=code_execution&input=x'],
    ['POST', `/sessions/${a.id}/exec`, 'multipart/form-data; boundary=x', '--x\r\nContent-Disposition: form-data; name="tool"\r\n\r\ncode_execution\r\n--x--\r\n'],
    ['POST', `/sessions/${a.id}/exec`, 'application/json; charset=utf-16', '{"tool":"code_execution","input":{"code":"print(1)"}}', [200]],
    ['POST', `/sessions/${a.id}/files`, 'application/json', '{"file": "x"}'],
    ['POST', `/sessions/${a.id}/files`, 'multipart/form-data; boundary=x', '--x\r\nContent-Disposition: form-data; name="file"; filename="a"\r\n\r\nunterminated'],
    ['POST', `/sessions/${a.id}/files`, 'multipart/form-data', 'no boundary'],
    ['POST', `/sessions/${a.id}/programmatic-tools/register`, 'application/json', `{"callback_url": "http://x", "token": "t", "tools": ${deepArray}}`],
    ['PUT', '/sessions', 'application/json', '{}'],
    ['DELETE', '/sessions', 'application/json', '{}'],
  ];
  const bad: string[] = [];
  for (const [method, path, type, body, also = []] of cases) {
    const buf = Buffer.from(body);
    const r = await rawRequest(S.server, { method, path, headers: { 'content-type': type, 'content-length': buf.length }, body: buf, timeoutMs: 10_000 }).catch((e: Error) => ({
      status: -1,
      body: Buffer.from(e.message),
    }));
    if (r.status === 201) await api(S.server, 'DELETE', `/sessions/${JSON.parse(r.body.toString()).session_id as string}`);
    if (!(r.status >= 400 && r.status < 500) && !also.includes(r.status))
      bad.push(`${method} ${path} ${type} ${body.slice(0, 60)}: ${r.status} ${r.body.toString().slice(0, 120)}`);
    assert.equal(S.server.proc.exitCode, null, `the server died on ${method} ${path} ${body.slice(0, 60)}`);
  }
  assert.deepEqual(bad, [], `answers outside 4xx:\n${serverErrors(S)}`);
  const ok = await py(S.server, a.id, 'print(1)');
  assert.equal(ok.stdout, '1');
  await finishCase(S, a);
});

test('#49 slowloris: 200 connections trickling partial headers do not stop the server answering', async (t) => {
  const u = new URL(S.server.url);
  const sockets: net.Socket[] = [];
  t.after(() => {
    for (const s of sockets) s.destroy();
  });
  const closed = new Set<net.Socket>();
  const connected: Promise<void>[] = [];
  for (let i = 0; i < 200; i++) {
    const s = net.connect(Number(u.port), u.hostname);
    s.on('error', () => {});
    s.on('close', () => closed.add(s));
    connected.push(new Promise((resolve) => s.once('connect', () => resolve())));
    s.write('POST /sessions HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n');
    sockets.push(s);
  }
  let trickled = 0;
  let firstTrickle: () => void = () => {};
  const trickledOnce = new Promise<void>((resolve) => (firstTrickle = resolve));
  const trickle = setInterval(() => {
    for (const s of sockets) if (!s.destroyed) s.write(`X-${Math.random().toString(36).slice(2)}: y\r\n`);
    if (++trickled === 1) firstTrickle();
  }, 200);
  t.after(() => clearInterval(trickle));
  // Events, not a clock: every slow client is connected and has sent a first header line
  // more; then /health must answer while all 200 of them are still open (an answer that
  // came only once the server dropped them would prove nothing, so that is checked too).
  await Promise.all(connected);
  await trickledOnce;
  for (let i = 0; i < 3; i++) {
    const h = await notHung(api(S.server, 'GET', '/health'), 'GET /health next to 200 slow clients');
    assert.equal(h.status, 200);
    assert.equal(closed.size, 0, `health answered, but ${closed.size} of the 200 slow clients were closed first`);
  }
  const v = await py(S.server, S.victim, 'print(1)');
  assert.equal(v.stdout, '1');
  clearInterval(trickle);
  for (const s of sockets) s.destroy();
  await finishCase(S, null);
});

test('#49 50 parallel session creates at SANDBOX_MAX_SESSIONS=8 give only 201 or 503 with Retry-After; 50 parallel execs give 200 or 429', async (t) => {
  const results = await Promise.all(
    Array.from({ length: 50 }, () =>
      rawRequest(S.server, { method: 'POST', path: '/sessions', headers: { 'content-type': 'application/json' }, body: '{}', timeoutMs: 20_000 }).catch((e: Error) => ({
        status: -1,
        headers: {} as Record<string, string>,
        body: Buffer.from(e.message),
        ms: 0,
      })),
    ),
  );
  const created = results.filter((r) => r.status === 201).map((r) => JSON.parse(r.body.toString()).session_id as string);
  t.after(async () => {
    for (const id of created) await api(S.server, 'DELETE', `/sessions/${id}`);
  });
  const statuses = results.map((r) => r.status);
  t.diagnostic(`create statuses: ${JSON.stringify(Object.fromEntries([...new Set(statuses)].map((s) => [s, statuses.filter((x) => x === s).length])))}`);
  assert.ok(
    statuses.every((s) => s === 201 || s === 503),
    `only 201/503 (-1: no answer within 20 s): ${statuses.join(',')}\n${serverErrors(S)}`,
  );
  assert.ok(created.length >= 1 && created.length <= MAX_SESSIONS - 1, `created ${created.length} next to the victim (cap ${MAX_SESSIONS})`);
  for (const r of results.filter((x) => x.status === 503)) assert.match(String(r.headers['retry-after']), /^\d+$/, 'Retry-After is an integer');
  const h = await api(S.server, 'GET', '/health');
  assert.equal(h.status, 200);
  assert.ok(h.body.session_count <= MAX_SESSIONS);
  // 50 parallel calls into one session: queued up to the bound, the rest 429 (each call
  // sleeps a little, so all 50 arrive while the first still runs).
  const target = created[0]!;
  const execs = await Promise.all(
    Array.from({ length: 50 }, (_, i) =>
      api(S.server, 'POST', `/sessions/${target}/exec`, { tool: 'code_execution', input: { code: `import time; time.sleep(0.05); print(${i})` } }),
    ),
  );
  const es = execs.map((r) => r.status);
  assert.ok(
    es.every((s) => s === 200 || s === 429),
    `exec statuses: ${es.join(',')}`,
  );
  assert.ok(es.includes(200) && es.includes(429));
  for (const id of created.splice(0)) assert.equal((await api(S.server, 'DELETE', `/sessions/${id}`)).status, 204);
  // Capacity is back: a new session can be made.
  const again = await api(S.server, 'POST', '/sessions', {});
  assert.equal(again.status, 201);
  assert.equal((await api(S.server, 'DELETE', `/sessions/${again.body.session_id}`)).status, 204);
  await finishCase(S, null);
});
