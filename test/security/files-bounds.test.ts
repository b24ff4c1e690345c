/**
 * Issue 8, file API: nothing a client or a session's own files can do makes the file API
 * crash, freeze or bloat the server.
 *   3  a recursive listing over 64 levels of 255-byte folder names (16 KB paths),
 *   7  a flat listing of names made of 255 control bytes (6 JSON bytes each),
 *  12  a download of a file the sandbox truncates mid-transfer (keep-alive framing),
 *  13  names whose extension is a member of Object.prototype,
 *  14  upload / download / list racing DELETE (and reap) of their session,
 * plus the caps' boundaries. The server runs with small listing caps so the cases are
 * quick: SANDBOX_MAX_LIST_ENTRIES=500, SANDBOX_MAX_LIST_BYTES=64 KiB (the minimum).
 * No case asserts a duration: outcomes are status codes, sizes and socket events.
 */
import { before, after, test } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import net from 'node:net';
import { randomBytes } from 'node:crypto';
import { readdir } from 'node:fs/promises';
import {
  api,
  attacker,
  createSession,
  download,
  exists,
  finishCase,
  findBox,
  listFiles,
  py,
  rawRequest,
  serverErrors,
  sh,
  startSuite,
  stopSuite,
  upload,
  waitFor,
  type Attacker,
  type Suite,
} from './support.js';

const MAX_ENTRIES = 500;
const MAX_BYTES = 64 * 1024;
const MiB = 1024 * 1024;
let S: Suite;

interface Entry {
  path: string;
  size_bytes: number;
  mime_type: string | null;
  modified_at: number;
  is_dir?: boolean;
}

before(async () => {
  S = await startSuite({
    SANDBOX_MAX_LIST_ENTRIES: String(MAX_ENTRIES),
    SANDBOX_MAX_LIST_BYTES: String(MAX_BYTES),
    // Reaping is part of item 14: idle sessions are collected every second.
    SANDBOX_SESSION_GC_INTERVAL: '1',
  });
});

after(async () => {
  await stopSuite(S);
});

/** A listing fetched raw: the exact answer size, and the parsed body. */
async function listRaw(id: string, path: string, recursive: boolean) {
  const r = await rawRequest(S.server, { path: `/sessions/${id}/files/list?${new URLSearchParams({ path, recursive: String(recursive) })}` });
  const text = r.body.toString('utf8');
  return { status: r.status, bytes: r.body.length, body: JSON.parse(text) as { files: Entry[]; truncated?: boolean; code?: string }, headers: r.headers };
}

/** The JSON size of a listing's entries as the cap counts it (one comma each). */
const entriesBytes = (files: Entry[]) => files.reduce((n, f) => n + Buffer.byteLength(JSON.stringify(f)) + 1, 0);

function assertSorted(files: Entry[]): void {
  for (let i = 1; i < files.length; i++) assert.ok(files[i - 1]!.path < files[i]!.path, `sorted at ${i}`);
}

function assertNo5xx(status: number, what: string): void {
  assert.ok(status >= 200 && status < 500, `${what}: ${status}\n${serverErrors(S)}`);
}

/** The session's host folder is gone and no staged upload of it is left anywhere. */
async function assertNothingLeft(a: Attacker): Promise<void> {
  const gone = await waitFor(async () => !(await exists(a.box.dir)), 30_000, 50);
  assert.ok(gone, `host folder of the deleted session is left: ${a.box.dir}`);
  const name = a.box.dir.split('/').at(-1)!;
  assert.ok(!(await readdir(S.sessionsRoot)).includes(name), 'no folder of the session under the sessions root');
}

/**
 * A GET on a raw keep-alive connection that reads the headers, then stops reading until
 * `resume()`. resume() also pipelines a second request on the same connection, so a
 * server that leaves the connection open after a short body is caught by an event (its
 * answer to the second request shows up among the "file bytes"), not by a timeout.
 * `ended` resolves at the first of: the connection closed, or that answer seen.
 */
function slowDownload(path: string) {
  const u = new URL(S.server.url);
  const socket = net.connect({ host: u.hostname, port: Number(u.port) });
  socket.write(`GET ${path} HTTP/1.1\r\nHost: ${u.host}\r\nConnection: keep-alive\r\n\r\n`);
  const marker = `/sbx-next-request-${randomBytes(6).toString('hex')}`;
  let head = Buffer.alloc(0);
  let tail = '';
  let bodyBytes = 0;
  let headerDone = false;
  let finish: (r: { bodyBytes: number; nextAnswered: boolean }) => void = () => {};
  const ended = new Promise<{ bodyBytes: number; nextAnswered: boolean }>((resolve) => (finish = resolve));
  const headers = new Promise<{ status: number; contentLength: number }>((resolve, reject) => {
    socket.on('data', (c: Buffer) => {
      if (headerDone) {
        bodyBytes += c.length;
        // Zeros are what the file holds; a status line here is the next answer.
        tail = (tail + c.toString('latin1')).slice(-4096);
        if (tail.includes('HTTP/1.1 ')) finish({ bodyBytes, nextAnswered: true });
        return;
      }
      head = Buffer.concat([head, c]);
      const end = head.indexOf('\r\n\r\n');
      if (end < 0) return;
      headerDone = true;
      socket.pause();
      bodyBytes = head.length - end - 4;
      const raw = head.subarray(0, end).toString('latin1');
      resolve({ status: Number(/^HTTP\/1\.1 (\d+)/.exec(raw)?.[1]), contentLength: Number(/\r\ncontent-length: (\d+)/i.exec(raw)?.[1] ?? NaN) });
    });
    socket.once('error', reject);
  });
  socket.on('error', () => {});
  socket.once('close', () => finish({ bodyBytes, nextAnswered: false }));
  const resume = () => {
    socket.write(`GET ${marker} HTTP/1.1\r\nHost: ${u.host}\r\n\r\n`, () => {});
    socket.resume();
  };
  return { headers, ended, resume, socket };
}

/** The end of a download that must not complete: closed short, no answer after it. */
async function assertCutShort(dl: ReturnType<typeof slowDownload>, size: number, what: string): Promise<void> {
  dl.resume();
  const r = await dl.ended;
  assert.equal(r.nextAnswered, false, `${what}: the connection stayed open and the next answer was read as file bytes`);
  assert.ok(r.bodyBytes < size, `${what}: the connection closed after ${r.bodyBytes} of ${size} bytes`);
}

test('#3 recursive listing of 64 levels of 255-byte folders: 200, truncated by the byte cap, answer within it', async (t) => {
  const a = await attacker(S, t);
  const made = await py(
    S.server,
    a.id,
    `import os
os.chdir('/workspace')
for i in range(64):
    n = ('%02d' % i) + 'd' * 253
    os.mkdir(n); os.chdir(n)
for i in range(300):
    open('f%03d.txt' % i, 'w').close()
print(len(os.getcwd()))`,
    { timeout_seconds: 60 },
  );
  assert.equal(made.return_code, 0, made.stderr);
  assert.ok(Number(made.stdout) > 16_000, `the deepest folder's path is ${made.stdout} characters`);
  const r = await listRaw(a.id, '.', true);
  assert.equal(r.status, 200, JSON.stringify(r.body).slice(0, 300));
  assert.equal(r.body.truncated, true, 'the answer says it is truncated');
  assert.ok(r.body.files.length > 0, 'the entries that fit are returned');
  assert.ok(entriesBytes(r.body.files) <= MAX_BYTES, `entries JSON ${entriesBytes(r.body.files)} <= ${MAX_BYTES}`);
  assert.ok(r.bytes <= MAX_BYTES + 64, `answer of ${r.bytes} bytes`);
  assertSorted(r.body.files);
  assert.ok(
    r.body.files.every((f) => f.is_dir === true && f.path.length % 256 === 255),
    'the shallowest folders fit, whole',
  );
  // Listing from 15 levels down (the deepest path a request may name is 4096 characters):
  // still 200 and within the byte cap.
  const from = Array.from({ length: 15 }, (_, i) => `${String(i).padStart(2, '0')}${'d'.repeat(253)}`).join('/');
  const deep = await listRaw(a.id, from, true);
  assert.equal(deep.status, 200);
  assert.equal(deep.body.truncated, true);
  assert.ok(deep.body.files.length >= 1 && entriesBytes(deep.body.files) <= MAX_BYTES, `${deep.body.files.length} entries`);
  assert.ok(deep.body.files.every((f) => f.path.startsWith(`${from}/`)));
  // Three at once (the original crash) all answer.
  const three = await Promise.all([0, 1, 2].map(() => listRaw(a.id, '.', true)));
  for (const x of three) assert.equal(x.status, 200);
  await finishCase(S, a);
});

test('recursive listing is truncated by the entry cap: exactly the cap is complete, one more is truncated', async (t) => {
  const a = await attacker(S, t);
  const made = await py(
    S.server,
    a.id,
    `import os
os.makedirs('/workspace/exact')
for i in range(${MAX_ENTRIES}):
    open('/workspace/exact/%03d' % i, 'w').close()
os.makedirs('/workspace/over/sub')
for i in range(${MAX_ENTRIES}):
    open('/workspace/over/%03d' % i, 'w').close()
    open('/workspace/over/sub/%03d' % i, 'w').close()`,
  );
  assert.equal(made.return_code, 0, made.stderr);
  const exact = await listRaw(a.id, 'exact', true);
  assert.equal(exact.status, 200);
  assert.equal(exact.body.files.length, MAX_ENTRIES);
  assert.equal('truncated' in exact.body, false, 'a listing that fits has no truncated field');
  assert.ok(entriesBytes(exact.body.files) < MAX_BYTES, 'the entry cap, not the byte cap, is the one tested');
  const over = await listRaw(a.id, 'over', true);
  assert.equal(over.status, 200);
  assert.equal(over.body.files.length, MAX_ENTRIES);
  assert.equal(over.body.truncated, true);
  assertSorted(over.body.files);
  const flat = await listRaw(a.id, 'over', false);
  assert.equal(flat.body.files.length, MAX_ENTRIES, 'a flat listing skips the folder and fits exactly');
  assert.equal(flat.body.truncated, undefined);
  await finishCase(S, a);
});

test('#7 flat listing of names of 255 control bytes: the answer is bounded in bytes, escapes counted', async (t) => {
  const a = await attacker(S, t);
  const made = await py(
    S.server,
    a.id,
    `import os
os.makedirs(b'/workspace/ctl')
for i in range(400):
    name = bytes([1] * 252 + [1 + i // 961 % 31, 1 + i // 31 % 31, 1 + i % 31])
    open(b'/workspace/ctl/' + name, 'w').close()
print(len(os.listdir(b'/workspace/ctl')))`,
  );
  assert.equal(made.return_code, 0, made.stderr);
  assert.equal(made.stdout, '400');
  const r = await listRaw(a.id, 'ctl', false);
  assert.equal(r.status, 200);
  assert.equal(r.body.truncated, true);
  assert.ok(r.body.files.length > 0 && r.body.files.length < 400, `${r.body.files.length} entries`);
  assert.ok(r.bytes <= MAX_BYTES + 64, `answer of ${r.bytes} bytes for a cap of ${MAX_BYTES}`);
  assert.ok(entriesBytes(r.body.files) <= MAX_BYTES);
  for (const f of r.body.files) {
    const name = f.path.slice('ctl/'.length);
    assert.ok(f.path.startsWith('ctl/') && name.length === 255, 'names arrive whole');
    assert.ok(
      [...name].every((c) => c.charCodeAt(0) >= 1 && c.charCodeAt(0) < 0x20),
      'as escaped control characters',
    );
    assert.equal(f.mime_type, null);
  }
  assertSorted(r.body.files);
  const five = await Promise.all([0, 1, 2, 3, 4].map(() => listRaw(a.id, 'ctl', false)));
  for (const x of five) assert.equal(x.status, 200);
  await finishCase(S, a);
});

test('#13 names x.__proto__, x.constructor, x.hasOwnProperty, x.toString are listed and downloaded with 200', async (t) => {
  const a = await attacker(S, t);
  const names = ['x.__proto__', 'x.constructor', 'x.hasOwnProperty', 'x.toString', 'x.valueOf', '__proto__', 'constructor', 'x.py'];
  const made = await sh(S.server, a.id, `mkdir -p sub && for n in ${names.join(' ')}; do printf %s "$n" > "$n"; printf %s "$n" > "sub/$n"; done`);
  assert.equal(made.return_code, 0, made.stderr);
  for (const [path, recursive] of [
    ['.', false],
    ['sub', false],
    ['.', true],
  ] as const) {
    const l = await listFiles(S.server, a.id, path, recursive);
    assert.equal(l.status, 200, `${path} recursive=${recursive}: ${JSON.stringify(l.body)}`);
    const files = l.body.files as Entry[];
    for (const n of names) {
      const p = path === 'sub' ? `sub/${n}` : n;
      const f = files.find((e) => e.path === p);
      assert.ok(f, `${p} is listed`);
      assert.equal(f.mime_type, n === 'x.py' ? 'text/x-python' : null, `${p} mime type`);
      assert.equal(f.size_bytes, n.length);
    }
  }
  for (const n of names) {
    for (const p of [n, `sub/${n}`]) {
      const d = await download(S.server, a.id, p);
      assert.equal(d.status, 200, `download ${p}`);
      assert.equal(d.body.toString(), n);
      assert.equal(d.headers.get('content-type'), n === 'x.py' ? 'text/x-python; charset=utf-8' : 'application/octet-stream');
    }
  }
  await finishCase(S, a);
});

test('#12 a download the sandbox truncates mid-transfer ends the connection short of Content-Length', { timeout: 120_000 }, async (t) => {
  const a = await attacker(S, t);
  const size = 48 * MiB;
  const made = await sh(S.server, a.id, `truncate -s ${size} big.bin`);
  assert.equal(made.return_code, 0, made.stderr);
  const dl = slowDownload(`/sessions/${a.id}/files?path=big.bin`);
  t.after(() => dl.socket.destroy());
  const h = await dl.headers;
  assert.equal(h.status, 200);
  assert.equal(h.contentLength, size);
  // The client reads nothing while the sandbox cuts the file.
  const cut = await sh(S.server, a.id, 'truncate -s 1M big.bin');
  assert.equal(cut.return_code, 0, cut.stderr);
  await assertCutShort(dl, size, 'truncated mid-transfer');
  // A fresh connection gets the file as it is now.
  const again = await download(S.server, a.id, 'big.bin');
  assert.equal(again.status, 200);
  assert.equal(again.body.length, MiB);
  assert.equal(again.headers.get('content-length'), String(MiB));
  await finishCase(S, a);
});

test('#12 sibling: a file rewritten (same size) while it is sent ends the connection short of Content-Length', { timeout: 120_000 }, async (t) => {
  const a = await attacker(S, t);
  const size = 48 * MiB;
  assert.equal((await sh(S.server, a.id, `truncate -s ${size} same.bin`)).return_code, 0);
  const dl = slowDownload(`/sessions/${a.id}/files?path=same.bin`);
  t.after(() => dl.socket.destroy());
  const h = await dl.headers;
  assert.equal(h.contentLength, size);
  const w = await sh(S.server, a.id, `printf x | dd of=same.bin bs=1 seek=${size - 1} conv=notrunc status=none`);
  assert.equal(w.return_code, 0, w.stderr);
  await assertCutShort(dl, size, 'rewritten mid-transfer');
  await finishCase(S, a);
});

/** A multipart upload sent in pieces: the head and the first piece now, the rest on `finish()`. */
function slowUpload(id: string, piece: Buffer, pieces: number) {
  const u = new URL(S.server.url);
  const boundary = `----sbx${randomBytes(8).toString('hex')}`;
  const req = http.request({
    host: u.hostname,
    port: Number(u.port),
    method: 'POST',
    path: `/sessions/${id}/files`,
    headers: { 'content-type': `multipart/form-data; boundary=${boundary}`, 'transfer-encoding': 'chunked' },
    agent: false,
  });
  const response = new Promise<{ status: number; body: string }>((resolve, reject) => {
    req.on('response', (res) => {
      let body = '';
      res.on('data', (c: Buffer) => (body += c.toString('utf8')));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
      res.on('error', reject);
    });
    req.on('error', reject);
  });
  response.catch(() => {});
  req.write(`--${boundary}\r\nContent-Disposition: form-data; name="path"\r\n\r\nup/loaded.bin\r\n`);
  req.write(`--${boundary}\r\nContent-Disposition: form-data; name="file"; filename="loaded.bin"\r\nContent-Type: application/octet-stream\r\n\r\n`);
  req.write(piece);
  const finish = async () => {
    for (let i = 1; i < pieces && !req.destroyed; i++) {
      if (!req.write(piece)) await new Promise((r) => req.once('drain', r));
    }
    req.end(`\r\n--${boundary}--\r\n`);
  };
  return { response, finish, req };
}

test('#14 upload racing DELETE: delete while the file is being staged -> 404, nothing left', async (t) => {
  const a = await attacker(S, t);
  const up = slowUpload(a.id, randomBytes(256 * 1024), 8);
  t.after(() => up.req.destroy());
  const staged = await waitFor(async () => (await readdir(`${a.box.dir}/staging`).catch(() => [])).length > 0, 10_000, 20);
  assert.ok(staged, 'the upload reached the staging folder');
  assert.equal((await api(S.server, 'DELETE', `/sessions/${a.id}`)).status, 204);
  void up.finish().catch(() => {});
  const r = await up.response;
  assert.equal(r.status, 404, r.body);
  assert.equal(JSON.parse(r.body).code, 'SBX_SESSION_NOT_FOUND');
  await assertNothingLeft(a);
  await finishCase(S, a);
});

test('#14 upload racing DELETE in both orders and at once: only 2xx/4xx, the folder is gone', async (t) => {
  // DELETE first, then the upload.
  const first = await attacker(S, t);
  assert.equal((await api(S.server, 'DELETE', `/sessions/${first.id}`)).status, 204);
  const late = await upload(S.server, first.id, 'late', { path: 'late.txt' });
  assert.equal(late.status, 404);
  await assertNothingLeft(first);
  // Both sent at once, in either order.
  for (const deleteFirst of [false, true]) {
    const a = await attacker(S, t);
    const data = randomBytes(2 * MiB);
    const ops = deleteFirst
      ? [api(S.server, 'DELETE', `/sessions/${a.id}`), upload(S.server, a.id, data, { path: 'race/up.bin' })]
      : [upload(S.server, a.id, data, { path: 'race/up.bin' }), api(S.server, 'DELETE', `/sessions/${a.id}`)];
    const [x, y] = await Promise.all(ops);
    const up = (deleteFirst ? y : x)!;
    const del = (deleteFirst ? x : y)!;
    assert.equal(del.status, 204);
    assertNo5xx(up.status, `upload (delete first: ${deleteFirst})`);
    await assertNothingLeft(a);
    await finishCase(S, a);
  }
  await finishCase(S, first);
});

test('#14 download racing DELETE: a download under way ends with its session; DELETE first is 404', { timeout: 120_000 }, async (t) => {
  const a = await attacker(S, t);
  const size = 48 * MiB;
  assert.equal((await sh(S.server, a.id, `truncate -s ${size} big.bin`)).return_code, 0);
  const dl = slowDownload(`/sessions/${a.id}/files?path=big.bin`);
  t.after(() => dl.socket.destroy());
  const h = await dl.headers;
  assert.equal(h.status, 200);
  assert.equal((await api(S.server, 'DELETE', `/sessions/${a.id}`)).status, 204);
  await assertCutShort(dl, size, 'session deleted mid-transfer');
  await assertNothingLeft(a);
  const after = await download(S.server, a.id, 'big.bin');
  assert.equal(after.status, 404);
  // At once, both orders.
  for (const deleteFirst of [false, true]) {
    const b = await attacker(S, t);
    assert.equal((await sh(S.server, b.id, 'head -c 1M /dev/urandom > f.bin')).return_code, 0);
    const get = () => download(S.server, b.id, 'f.bin').catch(() => ({ status: 0, body: Buffer.alloc(0) }));
    const [x, y] = deleteFirst
      ? await Promise.all([api(S.server, 'DELETE', `/sessions/${b.id}`), get()])
      : await Promise.all([get(), api(S.server, 'DELETE', `/sessions/${b.id}`)]);
    const d = (deleteFirst ? y : x) as { status: number };
    // 0: the body was cut (the session went away mid-transfer), which is the right end too.
    assert.ok(d.status === 0 || (d.status >= 200 && d.status < 500), `download (delete first: ${deleteFirst}): ${d.status}`);
    assert.equal((deleteFirst ? x : y)!.status, 204);
    await assertNothingLeft(b);
    await finishCase(S, b);
  }
  await finishCase(S, a);
});

test('#14 list racing DELETE in both orders: 200 or 404, never 5xx, the folder is gone', async (t) => {
  for (const deleteFirst of [false, true, false, true]) {
    const a = await attacker(S, t);
    const made = await py(S.server, a.id, "import os\nfor d in range(20):\n    os.makedirs('t/%d' % d)\n    for i in range(100):\n        open('t/%d/%d' % (d, i), 'w').close()");
    assert.equal(made.return_code, 0, made.stderr);
    const list = () => listFiles(S.server, a.id, '.', true);
    const del = () => api(S.server, 'DELETE', `/sessions/${a.id}`);
    const [x, y] = deleteFirst ? await Promise.all([del(), list()]) : await Promise.all([list(), del()]);
    const l = deleteFirst ? y : x;
    assert.ok(l.status === 200 || l.status === 404, `list (delete first: ${deleteFirst}): ${l.status} ${JSON.stringify(l.body).slice(0, 200)}`);
    if (l.status === 404) assert.equal(l.body.code, 'SBX_SESSION_NOT_FOUND');
    await assertNothingLeft(a);
    await finishCase(S, a);
  }
});

test('#14 reap racing a download: an idle session reaped mid-transfer ends the download, nothing left', { timeout: 120_000 }, async (t) => {
  const id = await createSession(S.server, { idle_timeout_seconds: 2 });
  const a: Attacker = { id, box: await findBox(S, id) };
  const size = 48 * MiB;
  assert.equal((await sh(S.server, id, `truncate -s ${size} big.bin`)).return_code, 0);
  const dl = slowDownload(`/sessions/${id}/files?path=big.bin`);
  t.after(() => dl.socket.destroy());
  const h = await dl.headers;
  assertNo5xx(h.status, 'download of a session about to be reaped');
  const reaped = await waitFor(async () => (await api(S.server, 'GET', `/sessions/${id}`)).status === 404, 30_000, 100);
  assert.ok(reaped, 'the idle session is reaped');
  if (h.status === 200) await assertCutShort(dl, size, 'session reaped mid-transfer');
  await assertNothingLeft(a);
  assert.equal((await listFiles(S.server, id)).status, 404);
  await finishCase(S, a);
});
