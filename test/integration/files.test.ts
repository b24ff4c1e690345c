/**
 * The files API over HTTP: multipart upload (201 {path,size_bytes}, 413 over the cap
 * with nothing left behind, 403 outside), download (bytes, Content-Length, Content-Type,
 * 404, 400 for anything but a regular file, never blocking on a FIFO, never following a
 * link out), and the listing the gateway diffs (non-recursive, files only, float
 * modified_at that moves on a rewrite; extensions: recursive=true, truncated). Files
 * cross between the API and the sandboxed code both ways.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { readdir } from 'node:fs/promises';
import { randomBytes } from 'node:crypto';
import { startServer, api, createSession, notHung, py, sh, type TestServer, upload as uploadFile } from '../helpers/server.js';

const MAX_UPLOAD = 1024 * 1024;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

let server: TestServer;
let id: string;

const upload = (data: Uint8Array | string, filename: string, path?: string, sid = id) => uploadFile(server, sid, data, { filename, path });

async function download(path: string, sid = id) {
  const res = await fetch(`${server.url}/sessions/${sid}/files?path=${encodeURIComponent(path)}`, { signal: AbortSignal.timeout(5000) });
  const bytes = Buffer.from(await res.arrayBuffer());
  return { status: res.status, headers: res.headers, bytes };
}

const list = (query = '', sid = id) => api(server, 'GET', `/sessions/${sid}/files/list${query}`);

/** The host folder of the session whose workspace holds `marker`. */
async function boxDirWith(marker: string): Promise<string | null> {
  for (const name of await readdir(server.sessionsRoot).catch(() => [] as string[])) {
    if (existsSync(`${server.sessionsRoot}/${name}/workspace/${marker}`)) return `${server.sessionsRoot}/${name}`;
  }
  return null;
}

before(async () => {
  server = await startServer({ SANDBOX_MAX_UPLOAD_BYTES: String(MAX_UPLOAD), SANDBOX_WARM_POOL_SIZE: '2' });
  id = await createSession(server);
});
after(async () => {
  if (server && (server.proc.exitCode !== null || server.proc.signalCode !== null)) console.error(`server died early:\n${server.logs().slice(-4000)}`);
  await server?.stop();
});

test('upload answers 201 {path, size_bytes}; the path defaults to the filename', async () => {
  const r = await upload('a,b\n1,2\n', 'data.csv');
  assert.equal(r.status, 201);
  assert.deepEqual(r.body, { path: 'data.csv', size_bytes: 8 });
  const renamed = await upload('xyz', 'ignored.bin', 'renamed/inside.bin');
  assert.equal(renamed.status, 201);
  assert.deepEqual(renamed.body, { path: 'renamed/inside.bin', size_bytes: 3 });
  assert.deepEqual((await upload('1', 'q', './dot.txt')).body, { path: 'dot.txt', size_bytes: 1 });
  assert.deepEqual((await upload('1', 'q', 'a/../b.txt')).body, { path: 'b.txt', size_bytes: 1 });
});

test('without a path field, the filename is the destination as sent, folders included (reference)', async () => {
  const r = await upload('1', 'from_name/x.csv');
  assert.equal(r.status, 201);
  assert.deepEqual(r.body, { path: 'from_name/x.csv', size_bytes: 1 });
  assert.equal((await sh(server, id, 'cat from_name/x.csv')).stdout, '1');
});

test('an uploaded file is readable by code, and an upload overwrites', async () => {
  await upload('first', 'over.txt');
  assert.equal((await upload('second!', 'over.txt')).body.size_bytes, 7);
  const r = await py(server, id, "print(open('data.csv').read(), end='')\nprint(open('over.txt').read())\nprint(open('renamed/inside.bin').read())");
  assert.equal(r.stdout, 'a,b\n1,2\nsecond!\nxyz');
  assert.equal((await sh(server, id, 'cat /workspace/renamed/inside.bin')).stdout, 'xyz');
});

test('a large binary upload round-trips byte for byte', async () => {
  const data = randomBytes(MAX_UPLOAD - 10);
  const r = await upload(data, 'big.bin');
  assert.equal(r.status, 201);
  assert.equal(r.body.size_bytes, data.length);
  const d = await download('big.bin');
  assert.equal(d.status, 200);
  assert.equal(d.headers.get('content-length'), String(data.length));
  assert.ok(d.bytes.equals(data));
  const sum = await py(server, id, "import hashlib\nprint(hashlib.sha256(open('big.bin','rb').read()).hexdigest())");
  const { createHash } = await import('node:crypto');
  assert.equal(sum.stdout, createHash('sha256').update(data).digest('hex'));
});

test('an upload over SANDBOX_MAX_UPLOAD_BYTES is 413, and nothing is left behind', async () => {
  await sh(server, id, 'touch box_marker_413');
  const box = await boxDirWith('box_marker_413');
  assert.ok(box);
  const exact = await upload(new Uint8Array(MAX_UPLOAD), 'exact.bin');
  assert.equal(exact.status, 201, 'exactly the cap is accepted');
  const r = await upload(new Uint8Array(MAX_UPLOAD + 1), 'too_big.bin');
  assert.equal(r.status, 413);
  assert.equal(r.body.code, 'SBX_FILE_TOO_LARGE');
  assert.equal(typeof r.body.detail, 'string');
  const big = await upload(new Uint8Array(3 * MAX_UPLOAD), 'huge.bin', 'nested/huge.bin');
  assert.equal(big.status, 413);
  assert.equal((await download('too_big.bin')).status, 404);
  const names = ((await list()).body.files as { path: string }[]).map((f) => f.path);
  assert.ok(!names.includes('too_big.bin') && !names.includes('huge.bin'));
  assert.equal(existsSync(`${box}/workspace/too_big.bin`), false);
  assert.equal(existsSync(`${box}/workspace/nested/huge.bin`), false);
  const staging = await readdir(`${box}/staging`).catch(() => [] as string[]);
  assert.deepEqual(staging, [], 'no partial upload is left in staging');
});

test('an upload path outside the workspace is 403 and writes nothing', async () => {
  for (const path of ['../evil.txt', '../../evil.txt', '/etc/evil.txt', 'a/../../evil.txt']) {
    const r = await upload('evil', 'evil.txt', path);
    assert.equal(r.status, 403, path);
    assert.equal(r.body.code, 'SBX_PATH_OUTSIDE_WORKSPACE');
  }
  assert.equal(existsSync('/etc/evil.txt'), false);
  await sh(server, id, 'touch box_marker_403');
  const box = await boxDirWith('box_marker_403');
  assert.equal(existsSync(`${box}/evil.txt`), false);
});

test('upload errors: no file part is 422, unknown session 404', async () => {
  const form = new FormData();
  form.append('path', 'x.txt');
  const res = await fetch(`${server.url}/sessions/${id}/files`, { method: 'POST', body: form });
  assert.equal(res.status, 422);
  assert.equal((await upload('x', 'x.txt', undefined, 'sbx_000000000000000000000000')).status, 404);
});

test('download: raw bytes with Content-Length and a Content-Type from the name', async () => {
  const csv = await download('data.csv');
  assert.equal(csv.status, 200);
  assert.equal(csv.bytes.toString(), 'a,b\n1,2\n');
  assert.equal(csv.headers.get('content-length'), '8');
  assert.equal(csv.headers.get('content-type'), 'text/csv; charset=utf-8');
  await py(server, id, "open('img.png','wb').write(b'\\x89PNG' + bytes(range(256)))\nopen('noext','wb').write(b'\\x00\\x01')\nopen('d.json','w').write('{}')");
  const png = await download('img.png');
  assert.equal(png.headers.get('content-type'), 'image/png');
  assert.ok(
    png.bytes.equals(Buffer.concat([Buffer.from([0x89, 0x50, 0x4e, 0x47]), Buffer.from(Array.from({ length: 256 }, (_, i) => i))])),
    'a file written by code downloads byte for byte',
  );
  assert.equal(png.headers.get('content-length'), '260');
  assert.equal((await download('noext')).headers.get('content-type'), 'application/octet-stream');
  assert.match((await download('d.json')).headers.get('content-type') ?? '', /^application\/json/);
});

test('download of an empty file answers 200 with Content-Length 0', async () => {
  const made = await py(server, id, "open('empty.txt','w').close()");
  assert.equal(made.return_code, 0);
  const e = await download('empty.txt');
  assert.equal(e.status, 200);
  assert.equal(e.headers.get('content-length'), '0');
  assert.equal(e.bytes.length, 0);
});

test('download errors: 404 missing, 403 outside, 422 without a path', async () => {
  const missing = await api(server, 'GET', `/sessions/${id}/files?path=nope.txt`);
  assert.equal(missing.status, 404);
  assert.equal(missing.body.code, 'SBX_FILE_NOT_FOUND');
  const outside = await api(server, 'GET', `/sessions/${id}/files?path=../../etc/passwd`);
  assert.equal(outside.status, 403);
  assert.equal(outside.body.code, 'SBX_PATH_OUTSIDE_WORKSPACE');
  assert.equal(outside.body.detail, 'path escapes workspace: ../../etc/passwd');
  assert.equal((await api(server, 'GET', `/sessions/${id}/files?path=/etc/passwd`)).status, 403);
  assert.equal((await api(server, 'GET', `/sessions/${id}/files`)).status, 422);
  assert.equal((await api(server, 'GET', '/sessions/sbx_000000000000000000000000/files?path=data.csv')).status, 404);
});

test('download of a directory, FIFO, socket or symlink is 400, and a FIFO never blocks', async () => {
  const made = await py(
    server,
    id,
    [
      'import os, socket',
      "os.makedirs('adir', exist_ok=True)",
      "os.mkfifo('fifo')",
      "s = socket.socket(socket.AF_UNIX)\ns.bind('sock')",
      "os.symlink('/etc/passwd', 'link_out')",
      "os.symlink('data.csv', 'link_in')",
      "os.symlink('/', 'rootlink')",
    ].join('\n'),
  );
  assert.equal(made.return_code, 0, made.stderr);
  for (const path of ['adir', '.', 'fifo', 'sock', 'link_out']) {
    // (no clock: a blocked open of a FIFO would never answer; notHung names that hang)
    const r = await notHung(download(path), `download ${path}`);
    assert.equal(r.status, 400, `${path}: ${r.status} ${r.bytes.toString().slice(0, 200)}`);
    assert.equal(JSON.parse(r.bytes.toString()).code, 'SBX_NOT_A_FILE');
  }
  // Links are never followed, also not through a folder link.
  for (const path of ['link_in', 'rootlink/etc/passwd']) {
    const r = await download(path);
    assert.ok(r.status >= 400 && r.status < 500, `${path}: ${r.status}`);
    assert.doesNotMatch(r.bytes.toString(), /root:/);
  }
  // The listing neither blocks on the FIFO nor shows non-files.
  const l = await notHung(list(), 'a listing next to a FIFO');
  const names = (l.body.files as { path: string }[]).map((f) => f.path);
  for (const n of ['fifo', 'sock', 'adir', 'link_out', 'rootlink']) assert.ok(!names.includes(n), `${n} is not listed`);
  const through = await list('?path=rootlink');
  assert.ok(through.status !== 200 || !(through.body.files as { path: string }[]).some((f) => /passwd|etc/.test(f.path)), 'a folder link is not followed by the listing');
});

test('list: top-level regular files only, sorted, paths from the root, mime types, float modified_at', async () => {
  const sid = await createSession(server);
  await upload('a,b\n', 'b.csv', undefined, sid);
  await upload('hi', 'a.txt', undefined, sid);
  await upload('x', 'noext', undefined, sid);
  await upload('1', 'x.csv', 'sub/x.csv', sid);
  await sh(server, sid, 'mkdir -p emptydir');
  const r = await list('', sid);
  assert.equal(r.status, 200);
  const files = r.body.files as { path: string; size_bytes: number; mime_type: string | null; modified_at: number; is_dir?: boolean }[];
  assert.deepEqual(
    files.map((f) => f.path),
    ['a.txt', 'b.csv', 'noext'],
  );
  const byPath = Object.fromEntries(files.map((f) => [f.path, f]));
  assert.equal(byPath['b.csv']!.size_bytes, 4);
  assert.equal(byPath['b.csv']!.mime_type, 'text/csv');
  assert.equal(byPath['a.txt']!.mime_type, 'text/plain');
  assert.equal(byPath['noext']!.mime_type, null);
  for (const f of files) {
    assert.equal(typeof f.modified_at, 'number');
    assert.ok(Math.abs(f.modified_at - Date.now() / 1000) < 120, 'modified_at is POSIX seconds');
    assert.equal(f.is_dir ?? false, false);
  }
  assert.ok(
    files.some((f) => !Number.isInteger(f.modified_at)),
    'sub-second precision',
  );
  const explicitDot = await list('?path=.', sid);
  assert.deepEqual(explicitDot.body, r.body);
  const sub = await list('?path=sub', sid);
  assert.deepEqual(
    (sub.body.files as { path: string }[]).map((f) => f.path),
    ['sub/x.csv'],
  );
  const one = await list('?path=a.txt', sid);
  assert.equal(one.status, 200);
  assert.deepEqual(
    (one.body.files as { path: string }[]).map((f) => f.path),
    ['a.txt'],
  );
  assert.deepEqual((await list('?path=emptydir', sid)).body, { files: [] });
  assert.equal((await list('?path=missing', sid)).status, 404);
  assert.equal((await list('?path=../', sid)).status, 403);
  assert.equal((await list('', 'sbx_000000000000000000000000')).status, 404);
});

test('list: a rewrite of the same size changes modified_at (the gateway diffs listings)', async () => {
  const sid = await createSession(server);
  await upload('aaaa', 'seed.txt', undefined, sid);
  const before = ((await list('', sid)).body.files as { path: string; size_bytes: number; modified_at: number }[]).find((f) => f.path === 'seed.txt')!;
  await sleep(20);
  await py(server, sid, "open('seed.txt', 'w').write('bbbb')");
  const after = ((await list('', sid)).body.files as { path: string; size_bytes: number; modified_at: number }[]).find((f) => f.path === 'seed.txt')!;
  assert.equal(after.size_bytes, before.size_bytes);
  assert.ok(after.modified_at > before.modified_at, `${after.modified_at} > ${before.modified_at}`);
  await py(server, sid, "open('produced.csv', 'w').write('x,y\\n')");
  const names = ((await list('', sid)).body.files as { path: string }[]).map((f) => f.path);
  assert.ok(names.includes('produced.csv'), 'a file produced by code is listed');
});

test('list extension: recursive=true walks folders and marks them is_dir', async () => {
  const sid = await createSession(server);
  await upload('1', 'top.txt', undefined, sid);
  await upload('2', 'inner.txt', 'sub/inner.txt', sid);
  await upload('3', 'leaf.txt', 'sub/deep/leaf.txt', sid);
  const r = await list('?recursive=true', sid);
  assert.equal(r.status, 200);
  const files = r.body.files as { path: string; is_dir?: boolean }[];
  const paths = files.map((f) => f.path);
  for (const p of ['top.txt', 'sub', 'sub/inner.txt', 'sub/deep', 'sub/deep/leaf.txt']) assert.ok(paths.includes(p), `${p} in ${paths.join(',')}`);
  assert.equal(files.find((f) => f.path === 'sub')!.is_dir, true);
  assert.equal(files.find((f) => f.path === 'sub/deep')!.is_dir, true);
  assert.ok(!files.find((f) => f.path === 'top.txt')!.is_dir);
});

test('list extension: a complete listing has no truncated field; the schema documents it', async () => {
  const sid = await createSession(server);
  await upload('1', 'a.txt', undefined, sid);
  await upload('2', 'b.txt', 'sub/b.txt', sid);
  for (const query of ['', '?recursive=true', '?path=a.txt']) {
    const r = await list(query, sid);
    assert.equal(r.status, 200);
    assert.equal(r.headers.get('content-type'), 'application/json; charset=utf-8');
    assert.equal('truncated' in r.body, false, `${query}: ${JSON.stringify(r.body)}`);
    assert.ok((r.body.files as unknown[]).length >= 1);
  }
  const doc = await api(server, 'GET', '/openapi.json');
  const ok = doc.body.paths['/sessions/{id}/files/list'].get.responses['200'];
  const schema = ok.content['application/json'].schema;
  assert.equal(schema.properties.truncated.type, 'boolean');
  assert.deepEqual(schema.required, ['files'], 'truncated is optional; files is the v1 field');
});

test('list and download: names that are members of Object.prototype are plain names', async () => {
  const sid = await createSession(server);
  const names = ['x.__proto__', 'x.constructor', 'x.hasOwnProperty', 'x.toString'];
  const made = await sh(server, sid, `for n in ${names.join(' ')}; do printf ok > "$n"; done`);
  assert.equal(made.return_code, 0, made.stderr);
  const r = await list('', sid);
  assert.equal(r.status, 200, JSON.stringify(r.body));
  assert.deepEqual(
    (r.body.files as { path: string; mime_type: string | null }[]).map((f) => [f.path, f.mime_type]),
    [...names].sort().map((n) => [n, null]),
  );
  for (const n of names) {
    const d = await download(n, sid);
    assert.equal(d.status, 200, n);
    assert.equal(d.headers.get('content-type'), 'application/octet-stream');
    assert.equal(d.bytes.toString(), 'ok');
  }
});

test('an upload of two file parts is refused, and says so (it said the file exceeded the size limit: red team)', async () => {
  const form = new FormData();
  form.append('file', new Blob([new Uint8Array([1])]), 'a.bin');
  form.append('file', new Blob([new Uint8Array([2])]), 'b.bin');
  const res = await fetch(`${server.url}/sessions/${id}/files`, { method: 'POST', body: form });
  const body = (await res.json()) as { detail: string };
  assert.equal(res.status, 413);
  assert.match(body.detail, /one file per upload/);
});
