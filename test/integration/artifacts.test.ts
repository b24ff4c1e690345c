/**
 * Artifacts, figures and head+tail output over real HTTP with real Python and bash in the
 * real sandbox: files each tool makes (sub-folders too) are listed with a file_id, kept as
 * they were when the call ended and served by GET /sessions/{id}/artifacts/{file_id}; a
 * file only read is not listed; the hidden rule; the per-call and per-session bounds and
 * the disk quota; matplotlib figures saved as PNGs; a stream past its cap keeping head and
 * tail, with the complete output in a spill file.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startServer, api, createSession, exec, py, sh, upload, type ExecResult, type TestServer } from '../helpers/server.js';

interface Entry {
  type: string;
  file_id: string;
  filename: string;
  path: string;
  size_bytes: number;
  mime_type: string | null;
}

const files = (r: ExecResult): Entry[] => r.body.result_block.content.content;
const names = (r: ExecResult): string[] => files(r).map((f) => f.filename);
const byName = (r: ExecResult, name: string): Entry => {
  const f = files(r).find((e) => e.filename === name);
  assert.ok(f, `${name} listed in ${JSON.stringify(names(r))}`);
  return f;
};

async function download(server: TestServer, id: string, fileId: string): Promise<{ status: number; bytes: Buffer; type: string | null; length: string | null; body: string }> {
  const res = await fetch(`${server.url}/sessions/${id}/artifacts/${encodeURIComponent(fileId)}`);
  const bytes = Buffer.from(await res.arrayBuffer());
  return { status: res.status, bytes, type: res.headers.get('content-type'), length: res.headers.get('content-length'), body: bytes.toString('utf8') };
}

let server: TestServer;
/** Small bounds: 3 files and 40,000 bytes per call, 5 kept per session, 50 names scanned, a 2 KiB
 * output cap with a 16 KiB spill, a 16 MiB disk. */
let tight: TestServer;

before(async () => {
  [server, tight] = await Promise.all([
    startServer({ SANDBOX_WARM_POOL_SIZE: '2' }),
    startServer({
      SANDBOX_ARTIFACTS_MAX_FILES: '3',
      SANDBOX_ARTIFACTS_MAX_BYTES: '40000',
      SANDBOX_ARTIFACTS_KEEP_MAX: '5',
      SANDBOX_ARTIFACTS_SCAN_MAX_ENTRIES: '50',
      SANDBOX_RUNNER_MAX_OUTPUT_BYTES: '2048',
      SANDBOX_OUTPUT_SPILL_MAX_BYTES: '16384',
      SANDBOX_WORKSPACE_MB: '16',
    }),
  ]);
});
after(async () => {
  for (const s of [server, tight]) {
    if (s && (s.proc.exitCode !== null || s.proc.signalCode !== null)) console.error(`server died early:\n${s.logs().slice(-4000)}`);
  }
  await Promise.all([server?.stop(), tight?.stop()]);
});

test('a call that writes no file lists none', async () => {
  const id = await createSession(server);
  assert.deepEqual(files(await py(server, id, 'print(1)')), []);
  assert.deepEqual(files(await sh(server, id, 'echo hi')), []);
});

test('files made by Python, bash and the editor, in sub-folders too, are listed with their details and downloadable', async () => {
  const id = await createSession(server);
  const p = await py(server, id, "import os\nos.makedirs('out/deep', exist_ok=True)\nopen('out/deep/data.csv', 'w').write('a,b\\n1,2\\n')\nopen('top.txt', 'w').write('top')");
  assert.equal(p.return_code, 0, p.stderr);
  assert.deepEqual(names(p), ['out/deep/data.csv', 'top.txt']);
  const csv = byName(p, 'out/deep/data.csv');
  assert.equal(csv.type, 'code_execution_output');
  assert.match(csv.file_id, /^file_[0-9a-f]{24}$/);
  assert.equal(csv.path, '/workspace/out/deep/data.csv');
  assert.equal(csv.size_bytes, 8);
  assert.equal(csv.mime_type, 'text/csv');
  const d = await download(server, id, csv.file_id);
  assert.equal(d.status, 200);
  assert.equal(d.body, 'a,b\n1,2\n');
  assert.equal(d.length, '8');
  assert.match(d.type ?? '', /^text\/csv/);

  const b = await sh(server, id, 'mkdir -p logs/a && printf "hello" > logs/a/run.log');
  assert.deepEqual(names(b), ['logs/a/run.log']);
  assert.equal((await download(server, id, byName(b, 'logs/a/run.log').file_id)).body, 'hello');

  const e = await exec(server, id, 'text_editor_code_execution', { command: 'create', path: 'notes/readme.md', file_text: '# hi\n' });
  assert.equal(e.return_code, 0, e.stderr);
  assert.deepEqual(names(e), ['notes/readme.md']);
  assert.equal((await download(server, id, byName(e, 'notes/readme.md').file_id)).body, '# hi\n');
  const r = await exec(server, id, 'text_editor_code_execution', { command: 'str_replace', path: 'notes/readme.md', old_str: 'hi', new_str: 'there' });
  assert.deepEqual(names(r), ['notes/readme.md']);
  assert.equal((await download(server, id, byName(r, 'notes/readme.md').file_id)).body, '# there\n');
});

test('a file a call only reads (with any tool) is not listed', async () => {
  const id = await createSession(server);
  await py(server, id, "open('data.txt', 'w').write('x' * 100)");
  assert.deepEqual(files(await py(server, id, "print(len(open('data.txt').read()))")), []);
  assert.deepEqual(files(await sh(server, id, 'cat data.txt > /dev/null; ls -la')), []);
  assert.deepEqual(files(await exec(server, id, 'text_editor_code_execution', { command: 'view', path: 'data.txt' })), []);
});

test('an uploaded file is not listed by the next call; changing it in a call is', async () => {
  const id = await createSession(server);
  await py(server, id, 'pass');
  assert.equal((await upload(server, id, 'uploaded', { path: 'up.txt' })).status, 201);
  assert.deepEqual(files(await py(server, id, 'pass')), []);
  const r = await sh(server, id, 'echo more >> up.txt');
  assert.deepEqual(names(r), ['up.txt']);
  assert.equal((await download(server, id, byName(r, 'up.txt').file_id)).body, 'uploadedmore\n');
});

test("an editor call lists the files it wrote (hidden ones not); a file a session's own thread writes meanwhile is listed once, by that call or the next", async () => {
  const id = await createSession(server);
  // A thread that writes bg.txt once the editor has made go.txt (an event, no clock).
  const started = await py(
    server,
    id,
    "import os, threading, time\ndef later():\n    while not os.path.exists('/workspace/go.txt'):\n        time.sleep(0.005)\n    open('/workspace/bg.txt', 'w').write('bg')\nthreading.Thread(target=later, daemon=True).start()",
  );
  assert.equal(started.return_code, 0, started.stderr);
  const edit = await exec(server, id, 'text_editor_code_execution', { command: 'create', path: 'go.txt', file_text: 'go\n' });
  assert.ok(names(edit).includes('go.txt'), JSON.stringify(names(edit)));
  assert.deepEqual(names(edit).filter((n) => n !== 'go.txt' && n !== 'bg.txt'), []);
  const next = await py(server, id, "import os, time\nwhile not os.path.exists('/workspace/bg.txt'):\n    time.sleep(0.005)");
  const seen = [...names(edit), ...names(next)].filter((n) => n === 'bg.txt');
  assert.deepEqual(seen, ['bg.txt'], `listed once: editor ${JSON.stringify(names(edit))}, next ${JSON.stringify(names(next))}`);
  const hidden = await exec(server, id, 'text_editor_code_execution', { command: 'create', path: '.cache/h.txt', file_text: 'h\n' });
  assert.deepEqual(names(hidden), []);
  const rewrite = await exec(server, id, 'text_editor_code_execution', { command: 'str_replace', path: 'go.txt', old_str: 'go', new_str: 'went' });
  assert.deepEqual(names(rewrite), ['go.txt']);
  assert.equal((await download(server, id, byName(rewrite, 'go.txt').file_id)).body, 'went\n');
  assert.deepEqual(names(await exec(server, id, 'text_editor_code_execution', { command: 'view', path: 'go.txt' })), []);
  assert.deepEqual(names(await py(server, id, 'pass')), [], 'nothing listed twice');
});

test('an artifact keeps its bytes after a later rewrite and a delete; the rewrite gets a new file_id', async () => {
  const id = await createSession(server);
  const first = byName(await py(server, id, "open('r.txt', 'w').write('one')"), 'r.txt');
  const second = byName(await py(server, id, "open('r.txt', 'w').write('two!')"), 'r.txt');
  assert.notEqual(first.file_id, second.file_id);
  assert.equal(second.size_bytes, 4);
  assert.deepEqual(files(await sh(server, id, 'rm r.txt')), []);
  assert.equal((await download(server, id, first.file_id)).body, 'one');
  assert.equal((await download(server, id, second.file_id)).body, 'two!');
  // A same-size rewrite is seen as well (mtime/ctime change).
  await py(server, id, "open('s.txt', 'w').write('aaaa')");
  const r = await py(server, id, "open('s.txt', 'w').write('bbbb')");
  assert.equal((await download(server, id, byName(r, 's.txt').file_id)).body, 'bbbb');
});

test("unknown ids, other sessions' ids and ids of deleted sessions answer 404", async () => {
  const a = await createSession(server);
  const b = await createSession(server);
  const f = byName(await py(server, a, "open('mine.txt', 'w').write('secret')"), 'mine.txt');
  assert.equal((await download(server, a, f.file_id)).status, 200);
  const other = await download(server, b, f.file_id);
  assert.equal(other.status, 404);
  assert.equal(JSON.parse(other.body).code, 'SBX_FILE_NOT_FOUND');
  assert.equal((await download(server, a, 'file_000000000000000000000000')).status, 404);
  assert.equal((await download(server, a, '__proto__')).status, 404);
  assert.equal((await download(server, a, 'x'.repeat(65))).status, 422);
  assert.equal((await api(server, 'DELETE', `/sessions/${a}`)).status, 204);
  const gone = await download(server, a, f.file_id);
  assert.equal(gone.status, 404);
  assert.equal(JSON.parse(gone.body).code, 'SBX_SESSION_NOT_FOUND');
});

test('the hidden rule: dot paths are skipped except the top-level .output/; links and FIFOs are never listed', async () => {
  const id = await createSession(server);
  const r = await sh(
    server,
    id,
    'mkdir -p .cache sub/.git .output/.x && echo a > .hidden && echo b > .cache/c && echo c > sub/.git/d && echo d > sub/.e && echo e > .output/kept.txt && echo f > .output/.x/no && echo g > visible.txt && ln -s /etc/passwd link && mkfifo fifo',
  );
  assert.equal(r.return_code, 0, r.stderr);
  assert.deepEqual(names(r), ['.output/kept.txt', 'visible.txt']);
});

test('a folder swapped for a link to the host is not followed', async () => {
  const id = await createSession(server);
  await sh(server, id, 'mkdir d && echo x > d/f');
  const r = await sh(server, id, 'rm -rf d && ln -s /etc d && touch other');
  assert.deepEqual(names(r), ['other']);
});

test('bounds: at most SANDBOX_ARTIFACTS_MAX_FILES per call (the first by path) and stderr says so', async () => {
  const id = await createSession(tight);
  const r = await sh(tight, id, 'for i in 1 2 3 4 5; do echo $i > f$i.txt; done');
  assert.deepEqual(names(r), ['f1.txt', 'f2.txt', 'f3.txt']);
  assert.match(r.stderr, /artifacts: 5 files changed; the first 3 are listed \(SANDBOX_ARTIFACTS_MAX_FILES\)/);
  assert.equal(r.return_code, 0);
});

test('bounds: files past SANDBOX_ARTIFACTS_MAX_BYTES per call are left out and stderr says so', async () => {
  const id = await createSession(tight);
  const r = await py(tight, id, "open('a.bin', 'wb').write(b'a' * 30000)\nopen('b.bin', 'wb').write(b'b' * 30000)\nopen('c.bin', 'wb').write(b'c' * 9000)");
  assert.deepEqual(names(r), ['a.bin', 'c.bin']);
  assert.match(r.stderr, /artifacts: 1 changed files were not kept: past 40000 bytes per call \(SANDBOX_ARTIFACTS_MAX_BYTES\)/);
});

test('bounds: a session keeps SANDBOX_ARTIFACTS_KEEP_MAX artifacts, the oldest evicted first', async () => {
  const id = await createSession(tight);
  const ids: string[] = [];
  for (let i = 0; i < 6; i++) ids.push(byName(await sh(tight, id, `echo ${i} > k${i}.txt`), `k${i}.txt`).file_id);
  assert.equal((await download(tight, id, ids[0]!)).status, 404, 'the oldest was evicted');
  for (const [i, f] of ids.slice(1).entries()) assert.equal((await download(tight, id, f)).body, `${i + 1}\n`);
});

test('bounds: editor calls add to the baseline one entry per file written, and past SANDBOX_ARTIFACTS_SCAN_MAX_ENTRIES additions the next call scans anew', async () => {
  const id = await createSession(tight);
  await py(tight, id, 'pass');
  // 60 rewrites of 3 files (more additions than the 50 names a scan takes here)
  for (let i = 0; i < 60; i++) {
    const r = await exec(tight, id, 'text_editor_code_execution', { command: 'create', path: `e${i % 3}.txt`, file_text: `${i}\n` });
    assert.deepEqual(names(r), [`e${i % 3}.txt`], `call ${i}`);
  }
  assert.deepEqual(names(await py(tight, id, 'pass')), [], 'nothing listed again');
  assert.deepEqual(names(await sh(tight, id, 'echo x >> e1.txt')), ['e1.txt']);
});

test('bounds: the scan stops at SANDBOX_ARTIFACTS_SCAN_MAX_ENTRIES names and says so', async () => {
  const id = await createSession(tight);
  const r = await sh(tight, id, 'mkdir many && for i in $(seq 1 60); do : > many/n$i; done');
  assert.match(r.stderr, /artifacts: the workspace has more than 50 names \(a folder counts as 4\); files past them were not looked at \(SANDBOX_ARTIFACTS_SCAN_MAX_ENTRIES\)/);
  assert.ok(files(r).length <= 3);
});

test("bounds: artifact copies count against the session's disk; a full disk stops the copying and says so", async () => {
  const id = await createSession(tight);
  // 16 MiB of disk: small.txt takes its page, then fill.bin takes the rest; the copy of
  // small.txt (fill.bin is past the per-call byte cap) finds no room.
  const r = await sh(tight, id, 'printf abc > small.txt; head -c 20000000 /dev/zero > fill.bin 2>/dev/null; echo done');
  assert.equal(r.stdout, 'done\n');
  assert.deepEqual(files(r), []);
  assert.match(r.stderr, /artifacts: the session's disk is full; 1 changed files were not kept \(SANDBOX_WORKSPACE_MB\)/);
  // With room again, the next call's files are kept.
  const again = await sh(tight, id, 'rm fill.bin; printf abcd > small.txt');
  assert.deepEqual(names(again), ['small.txt']);
  assert.equal((await download(tight, id, byName(again, 'small.txt').file_id)).body, 'abcd');
});

const PNG_MAGIC = Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]);

test('figures: plt.show() and figures left open are saved as PNGs and listed', async () => {
  const id = await createSession(server);
  // pyplot is not preloaded here (the test servers preload nothing): the cell imports it
  // and calls show() itself.
  const shown = await py(server, id, 'import matplotlib.pyplot as plt\nplt.plot([1, 2, 3], [1, 4, 9])\nplt.show()\nprint("after show", plt.get_fignums())');
  assert.equal(shown.return_code, 0, shown.stderr);
  assert.equal(shown.stderr, '', 'no non-GUI backend warning');
  assert.equal(shown.stdout, 'after show []', 'show() saved and closed the figure');
  assert.deepEqual(names(shown), ['figures/figure_1.png']);
  const png = byName(shown, 'figures/figure_1.png');
  assert.equal(png.mime_type, 'image/png');
  const d = await download(server, id, png.file_id);
  assert.equal(d.status, 200);
  assert.deepEqual(d.bytes.subarray(0, 8), PNG_MAGIC);
  assert.equal(d.bytes.length, png.size_bytes);
  assert.ok(png.size_bytes > 1000, `a real picture: ${png.size_bytes} bytes`);

  const open = await py(server, id, 'fig1 = plt.figure()\nplt.bar(["a", "b"], [3, 5])\nfig2, ax = plt.subplots()\nax.scatter([1, 2], [2, 1])');
  assert.equal(open.return_code, 0, open.stderr);
  assert.deepEqual(names(open), ['figures/figure_2.png', 'figures/figure_3.png']);
  for (const f of files(open)) assert.deepEqual((await download(server, id, f.file_id)).bytes.subarray(0, 8), PNG_MAGIC);
  const none = await py(server, id, 'print(plt.get_fignums())');
  assert.equal(none.stdout, '[]', 'figures were closed once saved');
  assert.deepEqual(files(none), []);
});

test('figures: a user file with the next figure name is never overwritten', async () => {
  const id = await createSession(server);
  await sh(server, id, 'mkdir -p figures && echo mine > figures/figure_1.png');
  const r = await py(server, id, 'import matplotlib.pyplot as plt\nplt.plot([0, 1])');
  assert.deepEqual(names(r), ['figures/figure_2.png']);
  assert.equal((await sh(server, id, 'cat figures/figure_1.png')).stdout, 'mine\n');
});

/** 2 KiB cap: 1 KiB of head, 1 KiB of tail. */
const HALF = 1024;

async function workspaceText(s: TestServer, id: string, path: string): Promise<string> {
  const res = await fetch(`${s.url}/sessions/${id}/files?path=${encodeURIComponent(path)}`);
  assert.equal(res.status, 200, path);
  return await res.text();
}

for (const tool of ['python', 'bash'] as const) {
  test(`${tool}: a stream past its cap keeps head and tail; the complete output is in a spill file that is listed`, async () => {
    const id = await createSession(tight);
    // 9 lines of 1000 digits: 9009 bytes, over the 2048-byte cap, under the 16 KiB spill.
    const lines = Array.from({ length: 9 }, (_, i) => String(i).repeat(1000));
    const whole = lines.map((l) => `${l}\n`).join('');
    const r =
      tool === 'python' ? await py(tight, id, 'for i in range(9): print(str(i) * 1000)') : await sh(tight, id, 'for i in $(seq 0 8); do printf "%01000d\\n" 0 | tr 0 $i; done');
    assert.equal(r.return_code, 0, r.stderr);
    const m =
      /^([\s\S]*)\n\.\.\. \[output truncated by sandbox: (\d+) bytes elided; the complete output is in \/workspace\/(\.output\/call-[0-9a-f]{8}-stdout\.txt)\]\n([\s\S]*)$/.exec(
        r.stdout,
      );
    assert.ok(m, r.stdout.slice(0, 200) + ' ... ' + r.stdout.slice(-300));
    const [, head, elided, spill, tail] = m;
    assert.equal(head, whole.slice(0, HALF));
    const tailWant = whole.slice(-HALF);
    assert.equal(tail, tool === 'python' ? tailWant.slice(0, -1) : tailWant, 'the tail (Python loses one trailing newline)');
    assert.equal(Number(elided), whole.length - 2 * HALF);
    assert.equal(r.body.stdout_dropped_bytes, whole.length - 2 * HALF);
    assert.equal(r.limit_exceeded, 'output_bytes');
    assert.deepEqual(names(r), [spill]);
    assert.equal(await workspaceText(tight, id, spill!), whole);
    assert.equal((await download(tight, id, byName(r, spill!).file_id)).body, whole);
  });
}

test('a stream past the spill cap: the spill holds its first bytes and the marker says so; stderr spills too', async () => {
  const id = await createSession(tight);
  const r = await py(tight, id, "import sys\nsys.stdout.write('a' * 40000 + 'END')\nsys.stderr.write('e' * 3000)");
  const m =
    /\n\.\.\. \[output truncated by sandbox: (\d+) bytes elided; its first 16384 bytes are in \/workspace\/(\.output\/call-[0-9a-f]{8}-stdout\.txt) \(SANDBOX_OUTPUT_SPILL_MAX_BYTES\)\]\n/.exec(
      r.stdout,
    );
  assert.ok(m, r.stdout.slice(1000, 1300));
  assert.equal(Number(m[1]), 40003 - 2 * HALF);
  assert.ok(r.stdout.startsWith('a'.repeat(HALF) + '\n... ['));
  assert.ok(r.stdout.endsWith('a'.repeat(HALF - 3) + 'END'), 'the true tail, past the spill cap');
  assert.equal(await workspaceText(tight, id, m[2]!), 'a'.repeat(16384));
  assert.match(
    r.stderr,
    /^e{1024}\n\.\.\. \[output truncated by sandbox: 952 bytes elided; the complete output is in \/workspace\/\.output\/call-[0-9a-f]{8}-stderr\.txt\]\ne{1024}\n/,
  );
  assert.equal(names(r).length, 2);
});

test('output under the cap writes no spill file', async () => {
  const id = await createSession(tight);
  const r = await py(tight, id, "print('x' * 2000)");
  assert.equal(r.stdout, 'x'.repeat(2000));
  assert.deepEqual(files(r), []);
  assert.equal((await sh(tight, id, 'ls -A')).stdout, '');
});

test('names too long for a path (ENAMETOOLONG) are no error: the call answers 200 and the session works on', async () => {
  const id = await createSession(server);
  // 20 nested folders of 240-character names: the full path is far past PATH_MAX.
  const r = await py(
    server,
    id,
    "import os\nos.chdir('/workspace')\nfor _ in range(20):\n    os.mkdir('n' * 240)\n    os.chdir('n' * 240)\nopen('deep.txt', 'w').write('x')\nprint('made')",
  );
  assert.equal(r.status, 200, JSON.stringify(r.body));
  assert.equal(r.stdout, 'made');
  const again = await sh(server, id, 'echo ok > shallow.txt && cat shallow.txt');
  assert.equal(again.status, 200, JSON.stringify(again.body));
  assert.equal(again.stdout, 'ok\n');
  assert.ok(names(again).includes('shallow.txt'));
});

test("what a scan holds is bounded by its names' bytes: past 1 MiB of names the scan stops and says so", async () => {
  const id = await createSession(server);
  // 1,500 files of 742-character paths (two folders of 250-character names): about 1.1 MB
  // of names, under the entry bound.
  const r = await py(
    server,
    id,
    "import os\nd = '/workspace/' + 'a' * 250 + '/' + 'b' * 250\nos.makedirs(d, exist_ok=True)\nfor i in range(1500):\n    open(d + '/%04d' % i + 'n' * 236, 'w').close()\nprint('made')",
  );
  assert.equal(r.status, 200);
  assert.equal(r.stdout, 'made');
  assert.match(r.stderr, /file names add up to more than 1048576 bytes/);
  assert.ok(files(r).length > 0, 'files before the bound are still listed');
});
