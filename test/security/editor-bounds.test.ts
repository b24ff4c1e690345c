/**
 * Issue 8, text-editor part: nothing sent to text_editor_code_execution can crash, freeze
 * or bloat the server. Each numbered item of the issue is crossed on purpose, with
 * siblings, against the real server over HTTP:
 *   2. the undo history lives on disk in the session's own folder (its quota), bounded in
 *      bytes (SANDBOX_EDITOR_UNDO_MB), per file (20) and in entries; a full disk drops the
 *      oldest history, never the edit; 0 turns undo off with a clear message;
 *   4. str_replace with a match on every line answers with a bounded message (at most 20
 *      line numbers);
 *   5. 16 Mi lines (a 16 MiB file of `\r`): insert, view of one line, create over it;
 *   10. answers obey SANDBOX_RUNNER_MAX_OUTPUT_BYTES: view stdout, the diff's `lines`, a
 *      folder listing; cut with the truncation marker, limit_exceeded "output_bytes",
 *      stdout_dropped_bytes.
 * Assertions are on behaviour (sizes, markers, flags, file contents, that undo works),
 * never on wall-clock time; finishCase's post-checks include the server's own event-loop
 * monitor and peak memory.
 */
import { before, after, test } from 'node:test';
import assert from 'node:assert/strict';
import { readdir, stat } from 'node:fs/promises';
import { api, attacker, createSession, editor, finishCase, py, sh, startSuite, stopSuite, type Suite } from './support.js';
import { startServer } from '../helpers/server.js';

const MiB = 1024 * 1024;
const OUTPUT_CAP = 256 * 1024;
const MARKER = /\n\.\.\. \[output truncated by sandbox: (\d+) bytes elided\]$/;
let S: Suite;

before(async () => {
  S = await startSuite({
    SANDBOX_WORKSPACE_MB: '192',
    SANDBOX_RUNNER_MAX_OUTPUT_BYTES: String(OUTPUT_CAP),
    SANDBOX_EDITOR_UNDO_MB: '64',
  });
});

after(async () => {
  await stopSuite(S);
});

const content = (r: { body: any }) => r.body.result_block.content as Record<string, any>;

/** Writes a file in the session's workspace from Python (the sandbox's own uid). */
async function makeFile(id: string, path: string, pyBytesExpr: string): Promise<void> {
  const r = await py(S.server, id, `open('/workspace/${path}', 'wb').write(${pyBytesExpr})`);
  assert.equal(r.return_code, 0, `make ${path}: ${r.stderr}`);
}

async function sizeOf(id: string, path: string): Promise<number> {
  const r = await sh(S.server, id, `stat -c %s ${path}`);
  assert.equal(r.return_code, 0, r.stderr);
  return Number(r.stdout.trim());
}

/** Snapshot files in the box's undo folder (on the host) and their total size. */
async function undoOnDisk(boxDir: string): Promise<{ files: number; bytes: number }> {
  const names = await readdir(`${boxDir}/undo`);
  let bytes = 0;
  for (const n of names) bytes += (await stat(`${boxDir}/undo/${n}`)).size;
  return { files: names.length, bytes };
}

test('#2 undo history lives on disk in the session folder, capped at SANDBOX_EDITOR_UNDO_MB; undo works up to the cap, then says why', async (t) => {
  const a = await attacker(S, t);
  const folder = await stat(`${a.box.dir}/undo`);
  assert.ok(folder.isDirectory(), 'the box has an undo/ folder');
  assert.equal(folder.mode & 0o777, 0o700, 'undo/ is the server’s own (0700)');
  assert.equal(folder.uid, 0, 'undo/ belongs to the server, not the sandbox uid');
  // ~8 MiB of Cyrillic lines (two bytes a character) and a version tag at the end.
  await makeFile(a.id, 'cyr.txt', "('ж' * 63 + '\\n').encode() * 65000 + b'v0'");
  const size = await sizeOf(a.id, 'cyr.txt');
  for (let i = 0; i < 10; i++) {
    const r = await editor(S.server, a.id, { command: 'str_replace', path: 'cyr.txt', old_str: `v${i}`, new_str: `v${i + 1}` });
    assert.equal(r.status, 200, JSON.stringify(r.body));
    assert.equal(r.return_code, 0, r.stderr);
    assert.equal(r.stderr, '', 'an edit whose history was kept says nothing more');
  }
  const onDisk = await undoOnDisk(a.box.dir);
  assert.equal(onDisk.files, 8, '64 MiB hold 8 snapshots of 8.3 MB: the 2 oldest were dropped');
  assert.equal(onDisk.bytes, 8 * size, 'snapshots are the raw bytes of the file');
  const sandboxView = await sh(S.server, a.id, `ls -a /; ls ${a.box.dir} 2>&1; true`);
  assert.doesNotMatch(sandboxView.stdout, /^undo$/m, 'the sandbox does not see the undo folder');
  for (let v = 9; v >= 2; v--) {
    const u = await editor(S.server, a.id, { command: 'undo_edit', path: 'cyr.txt' });
    assert.equal(u.return_code, 0, u.stderr);
    assert.equal((await sh(S.server, a.id, 'tail -c 2 cyr.txt')).stdout, `v${v}`, `undo back to v${v}`);
  }
  const none = await editor(S.server, a.id, { command: 'undo_edit', path: 'cyr.txt' });
  assert.equal(none.return_code, 1);
  assert.match(none.stderr, /^text_editor: no edits to undo for cyr\.txt \(older edits were dropped .*SANDBOX_EDITOR_UNDO_MB=64/);
  assert.deepEqual(await undoOnDisk(a.box.dir), { files: 0, bytes: 0 }, 'undone snapshots leave the disk');
  assert.equal(await sizeOf(a.id, 'cyr.txt'), size);
  await finishCase(S, a);
});

test('#2 many sessions editing big files keep their history on disk: the server does not grow with it', async (t) => {
  const sessions = [await attacker(S, t), await attacker(S, t), await attacker(S, t)];
  for (const a of sessions) await makeFile(a.id, 'big.txt', `('ж' * ${8 * MiB - 1}).encode() + b'v0'`); // 16 MiB
  for (let i = 0; i < 5; i++) {
    // The attack of the issue: no-op replacements, each pushing a 16 MiB snapshot.
    const rs = await Promise.all(sessions.map((a) => editor(S.server, a.id, { command: 'str_replace', path: 'big.txt', old_str: 'v0', new_str: 'v0' })));
    for (const r of rs) {
      assert.ok(r.status === 200 || r.status === 503, `${r.status}: ${JSON.stringify(r.body).slice(0, 300)}`);
      if (r.status === 200) assert.equal(r.return_code, 0, r.stderr);
    }
  }
  for (const a of sessions) {
    const onDisk = await undoOnDisk(a.box.dir);
    assert.ok(onDisk.bytes <= 64 * MiB, `undo history on disk ${onDisk.bytes} bytes`);
    assert.ok(onDisk.files >= 1, 'history was kept');
    const u = await editor(S.server, a.id, { command: 'undo_edit', path: 'big.txt' });
    assert.equal(u.return_code, 0, u.stderr);
    assert.equal(await sizeOf(a.id, 'big.txt'), 16 * MiB);
  }
  for (const a of sessions.slice(1)) assert.equal((await api(S.server, 'DELETE', `/sessions/${a.id}`)).status, 204);
  await finishCase(S, sessions[0]!);
});

test('#2 undo depth is 20 per file: the 21st undo says older edits were dropped', async (t) => {
  const a = await attacker(S, t);
  await editor(S.server, a.id, { command: 'create', path: 'n.txt', file_text: 'n0\n' });
  for (let i = 0; i < 25; i++) {
    const r = await editor(S.server, a.id, { command: 'str_replace', path: 'n.txt', old_str: `n${i}`, new_str: `n${i + 1}` });
    assert.equal(r.return_code, 0, r.stderr);
  }
  for (let i = 24; i >= 5; i--) {
    const u = await editor(S.server, a.id, { command: 'undo_edit', path: 'n.txt' });
    assert.equal(u.return_code, 0, u.stderr);
    assert.equal((await sh(S.server, a.id, 'cat n.txt')).stdout, `n${i}\n`);
  }
  const none = await editor(S.server, a.id, { command: 'undo_edit', path: 'n.txt' });
  assert.equal(none.return_code, 1);
  assert.match(none.stderr, /no edits to undo for n\.txt \(.*last 20 edits/);
  await finishCase(S, a);
});

test('#2 a full disk never fails an edit: the oldest history goes first, then the edit says it cannot be undone; undo works again once there is room', async (t) => {
  const a = await attacker(S, t);
  await makeFile(a.id, 'f.txt', "b'a\\n' * (1 << 19) + b'end0\\n'");
  const first = await editor(S.server, a.id, { command: 'str_replace', path: 'f.txt', old_str: 'end0', new_str: 'end1' });
  assert.equal(first.return_code, 0, first.stderr);
  assert.equal((await undoOnDisk(a.box.dir)).files, 1);
  // Fill the session's disk to the last byte.
  const fill = await sh(S.server, a.id, 'head -c 400M /dev/zero > /tmp/fill; df -k /tmp | tail -1');
  assert.match(fill.stderr, /No space left on device/, 'the quota is full');
  const full = await editor(S.server, a.id, { command: 'str_replace', path: 'f.txt', old_str: 'end1', new_str: 'end2' });
  assert.equal(full.status, 200, JSON.stringify(full.body));
  assert.equal(full.return_code, 0, `the edit itself succeeds: ${full.stderr}`);
  assert.match(full.stderr, /^text_editor: this edit cannot be undone: the session's disk is full \(SANDBOX_WORKSPACE_MB\)\n$/);
  assert.equal((await sh(S.server, a.id, 'tail -c 5 f.txt')).stdout, 'end2\n', 'the edit was written');
  assert.deepEqual(await undoOnDisk(a.box.dir), { files: 0, bytes: 0 }, 'the history made room for the edit');
  const none = await editor(S.server, a.id, { command: 'undo_edit', path: 'f.txt' });
  assert.equal(none.return_code, 1);
  assert.match(none.stderr, /no edits to undo for f\.txt \(.*disk is full/);
  // create over the file with room for it but not for its snapshot: also kept, also said.
  // (The edit above freed the old file's space: fill the disk again, then free 64 KiB.)
  assert.equal((await sh(S.server, a.id, 'head -c 100M /dev/zero >> /tmp/fill; truncate -s -64K /tmp/fill')).return_code, 0);
  const over = await editor(S.server, a.id, { command: 'create', path: 'f.txt', file_text: 'small\n' });
  assert.equal(over.return_code, 0, over.stderr);
  assert.match(over.stderr, /cannot be undone: the session's disk is full/);
  assert.equal((await sh(S.server, a.id, 'rm /tmp/fill && cat f.txt')).stdout, 'small\n');
  const again = await editor(S.server, a.id, { command: 'str_replace', path: 'f.txt', old_str: 'small', new_str: 'big' });
  assert.equal(again.stderr, '');
  const u = await editor(S.server, a.id, { command: 'undo_edit', path: 'f.txt' });
  assert.equal(u.return_code, 0, u.stderr);
  assert.equal((await sh(S.server, a.id, 'cat f.txt')).stdout, 'small\n', 'undo works again with room on the disk');
  await finishCase(S, a);
});

test('#2 SANDBOX_EDITOR_UNDO_MB=0 turns undo off with a clear message and writes nothing to undo/', async (t) => {
  const server = await startServer({ SANDBOX_EDITOR_UNDO_MB: '0' });
  t.after(() => server.stop());
  const id = await createSession(server);
  const ed = (input: Record<string, unknown>) => editor(server, id, input);
  assert.equal((await ed({ command: 'create', path: 'a.txt', file_text: 'one\n' })).return_code, 0);
  const r = await ed({ command: 'str_replace', path: 'a.txt', old_str: 'one', new_str: 'two' });
  assert.equal(r.return_code, 0);
  assert.equal(r.stderr, '', 'edits do not warn on every call when undo is off');
  const over = await ed({ command: 'create', path: 'a.txt', file_text: 'three\n' });
  assert.equal(over.return_code, 0);
  const u = await ed({ command: 'undo_edit', path: 'a.txt' });
  assert.equal(u.return_code, 1);
  assert.equal(u.stderr, 'text_editor: undo is disabled on this server (SANDBOX_EDITOR_UNDO_MB=0)\n');
  assert.equal(content(u).error_code, 'unavailable');
  const boxes = (await readdir(server.sessionsRoot)).filter((n) => n.startsWith('box_'));
  // A box the warm pool is still making may not have its undo/ yet: it holds nothing either.
  const undoOf = (b: string) => readdir(`${server.sessionsRoot}/${b}/undo`).catch((e: NodeJS.ErrnoException) => (e.code === 'ENOENT' ? [] : Promise.reject(e)));
  for (const b of boxes) assert.deepEqual(await undoOf(b), [], `${b}/undo is empty`);
});

test('#4 str_replace matching every line of 24,000 (and every comma of a CSV) answers with at most 20 line numbers', async (t) => {
  const a = await attacker(S, t);
  await makeFile(a.id, 'a.txt', "b'a\\n' * 24000");
  await makeFile(a.id, 'data.csv', "b'1,2,3,4\\n' * 6000");
  await makeFile(a.id, 'big.txt', "b'a\\n' * (4 << 20)"); // 8 MiB, 4 Mi lines: the worker path
  for (const [path, old_str, count] of [
    ['a.txt', 'a', 24000],
    ['data.csv', ',', 18000],
    ['big.txt', 'a', 4 * MiB],
    ['big.txt', 'a\na', 2 * MiB],
  ] as const) {
    const r = await editor(S.server, a.id, { command: 'str_replace', path, old_str, new_str: 'b' });
    assert.equal(r.status, 200);
    assert.equal(r.return_code, 1);
    const m = /^text_editor: old_str matched (\d+) times in \S+ \(lines ([\d, ]+), …\); must be unique\n$/.exec(r.stderr);
    assert.ok(m, `bounded message: ${r.stderr.slice(0, 300)}`);
    assert.equal(Number(m[1]), count, `${path} ${JSON.stringify(old_str)}: every match counted`);
    assert.equal(m[2]!.split(', ').length, 20, 'at most 20 line numbers');
    assert.ok(r.stderr.length < 400);
  }
  const csv = await editor(S.server, a.id, { command: 'str_replace', path: 'data.csv', old_str: ',', new_str: ';' });
  assert.match(csv.stderr, /\(lines 1, 1, 1, 2, 2, 2, 3, 3, 3, 4, /, 'line numbers of repeated matches on a line');
  // A unique match deep in a file of 4 Mi lines is numbered right.
  await sh(S.server, a.id, "printf 'UNIQUE\\n' >> big.txt");
  const ok = await editor(S.server, a.id, { command: 'str_replace', path: 'big.txt', old_str: 'UNIQUE', new_str: 'DONE' });
  assert.equal(ok.return_code, 0, ok.stderr);
  assert.equal(content(ok).old_start, 4 * MiB + 1 - 3);
  assert.deepEqual(content(ok).lines, [' a', ' a', ' a', '-UNIQUE', '+DONE']);
  await finishCase(S, a);
});

test('#5 16 Mi lines (16 MiB of \\r): insert at the top and at the end, view of one line, create over it, undo', async (t) => {
  const a = await attacker(S, t);
  const n = 16 * MiB - 16; // room for the inserted lines under the editor's 16 MiB limit
  await makeFile(a.id, 'cr.txt', `b'\\r' * ${n}`);
  const v = await editor(S.server, a.id, { command: 'view', path: 'cr.txt', view_range: [1, 1] });
  assert.equal(v.return_code, 0, v.stderr);
  assert.equal(v.stdout, '');
  assert.deepEqual([content(v).num_lines, content(v).start_line, content(v).total_lines], [1, 1, n]);
  const last = await editor(S.server, a.id, { command: 'view', path: 'cr.txt', view_range: [n, -1] });
  assert.deepEqual([last.return_code, last.stdout, content(last).num_lines], [0, '', 1]);
  const past = await editor(S.server, a.id, { command: 'view', path: 'cr.txt', view_range: [n + 1, n + 2] });
  assert.equal(past.stderr, `text_editor: invalid view_range [${n + 1}, ${n + 2}]: cr.txt has ${n} lines\n`);
  const top = await editor(S.server, a.id, { command: 'insert', path: 'cr.txt', insert_line: 0, new_str: 'TOP' });
  assert.equal(top.return_code, 0, top.stderr);
  const end = await editor(S.server, a.id, { command: 'insert', path: 'cr.txt', insert_line: n + 1, new_str: 'END' });
  assert.equal(end.return_code, 0, end.stderr);
  const check = await py(S.server, a.id, "d = open('/workspace/cr.txt', 'rb').read()\nprint(d[:5], d[-5:], len(d), d.count(b'\\r'), d.count(b'\\n'))");
  assert.equal(check.stdout, `b'TOP\\n\\n' b'\\nEND\\n' ${n + 8} 0 ${n + 2}`, 'newlines normalised, TOP first, END last');
  const out = await editor(S.server, a.id, { command: 'insert', path: 'cr.txt', insert_line: n + 3, new_str: 'x' });
  assert.equal(out.stderr, `text_editor: insert_line ${n + 3} out of range for cr.txt (it has ${n + 2} lines)\n`);
  // undo twice: back to the raw bytes (the \r), not a normalised copy.
  for (let i = 0; i < 2; i++) assert.equal((await editor(S.server, a.id, { command: 'undo_edit', path: 'cr.txt' })).return_code, 0);
  assert.equal((await sh(S.server, a.id, "tr -d '\\r' < cr.txt | wc -c; stat -c %s cr.txt")).stdout, `0\n${n}\n`);
  const over = await editor(S.server, a.id, { command: 'create', path: 'cr.txt', file_text: 'new\n' });
  assert.equal(over.return_code, 0, over.stderr);
  assert.equal(content(over).is_file_update, true);
  assert.equal((await editor(S.server, a.id, { command: 'undo_edit', path: 'cr.txt' })).return_code, 0);
  assert.equal(await sizeOf(a.id, 'cr.txt'), n, 'create over it is undone to the 16 MiB of \\r');
  await finishCase(S, a);
});

test('#5 view_range on a huge one-line file and insert at the end of a 16 MiB file', async (t) => {
  const a = await attacker(S, t);
  const n = 16 * MiB - 64;
  await makeFile(a.id, 'one.txt', `b'q' * ${n}`);
  const v = await editor(S.server, a.id, { command: 'view', path: 'one.txt', view_range: [1, 1] });
  assert.equal(v.return_code, 0);
  const m = MARKER.exec(v.stdout);
  assert.ok(m, 'cut with the marker');
  assert.equal(Number(m[1]), n - OUTPUT_CAP);
  assert.equal(v.stdout.length, OUTPUT_CAP + m[0].length);
  assert.equal(v.limit_exceeded, 'output_bytes');
  assert.equal(v.body.stdout_dropped_bytes, n - OUTPUT_CAP);
  assert.deepEqual([content(v).num_lines, content(v).total_lines], [1, 1]);
  const ins = await editor(S.server, a.id, { command: 'insert', path: 'one.txt', insert_line: 1, new_str: 'tail line' });
  assert.equal(ins.return_code, 0, ins.stderr);
  assert.equal((await sh(S.server, a.id, 'tail -c 12 one.txt; stat -c %s one.txt')).stdout, `q\ntail line\n${n + 11}\n`);
  const big = await editor(S.server, a.id, { command: 'view', path: 'one.txt', view_range: [2, 2] });
  assert.equal(big.stdout, 'tail line');
  assert.equal(big.limit_exceeded, null);
  await finishCase(S, a);
});

test('#10 view of 16 MiB of control bytes: stdout cut at the output cap with the marker, limit_exceeded and stdout_dropped_bytes set', async (t) => {
  const a = await attacker(S, t);
  const n = 16 * MiB;
  await makeFile(a.id, 'ctl.bin', `b'\\x01' * ${n}`);
  const res = await fetch(`${S.server.url}/sessions/${a.id}/exec`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ tool: 'text_editor_code_execution', input: { command: 'view', path: 'ctl.bin' } }),
  });
  const raw = await res.text();
  assert.equal(res.status, 200);
  assert.ok(raw.length < 6 * OUTPUT_CAP + 4096, `answer of ${raw.length} bytes (JSON escapes a control byte in 6)`);
  const body = JSON.parse(raw);
  const c = body.result_block.content;
  const m = MARKER.exec(c.stdout);
  assert.ok(m, 'the marker of python and bash');
  assert.equal(c.stdout.length - m[0].length, OUTPUT_CAP);
  assert.equal(Number(m[1]), n - OUTPUT_CAP);
  assert.equal(body.limit_exceeded, 'output_bytes');
  assert.equal(body.stdout_dropped_bytes, n - OUTPUT_CAP);
  assert.match(c.stderr, /^text_editor: a limit was reached: output \(262144 bytes per stream, SANDBOX_RUNNER_MAX_OUTPUT_BYTES\)/);
  assert.equal(c.return_code, 0);
  assert.equal(c.total_lines, 1);
  // A small file is not touched by the cap.
  await makeFile(a.id, 'small.txt', "b'hello\\n'");
  const s = await editor(S.server, a.id, { command: 'view', path: 'small.txt' });
  assert.deepEqual([s.stdout, s.limit_exceeded, s.body.stdout_dropped_bytes, s.stderr], ['hello\n', null, 0, '']);
  await finishCase(S, a);
});

test('#10 str_replace next to an 8 MiB line: the diff lines are bounded by the output cap', async (t) => {
  const a = await attacker(S, t);
  await makeFile(a.id, 'wide.txt', "b'x' * (8 << 20) + b'\\nTARGET\\n' + b'y' * (7 << 20)");
  const r = await editor(S.server, a.id, { command: 'str_replace', path: 'wide.txt', old_str: 'TARGET', new_str: 'HIT' });
  assert.equal(r.return_code, 0, r.stderr);
  assert.ok(JSON.stringify(r.body).length < 2 * OUTPUT_CAP, 'the answer is bounded');
  const lines = content(r).lines as string[];
  const bytes = lines.reduce((n, l) => n + Buffer.byteLength(l.replace(MARKER, '')), 0);
  assert.ok(bytes <= OUTPUT_CAP, `diff text ${bytes} bytes`);
  assert.match(lines.at(-1)!, MARKER);
  assert.ok(lines[0]!.startsWith(' xxxx'), 'the context line is there, cut');
  assert.equal(r.limit_exceeded, 'output_bytes');
  assert.match(r.stderr, /output .*SANDBOX_RUNNER_MAX_OUTPUT_BYTES.*diff in `lines` was cut/);
  assert.deepEqual([content(r).old_start, content(r).old_lines, content(r).new_lines], [1, 3, 3]);
  assert.equal((await sh(S.server, a.id, 'grep -c HIT wide.txt; stat -c %s wide.txt')).stdout, `1\n${15 * MiB + 5}\n`, 'the edit itself is whole');
  // A new_str of 1 MiB (four times the cap): the '+' line is cut the same way.
  const fat = await editor(S.server, a.id, { command: 'str_replace', path: 'wide.txt', old_str: 'HIT', new_str: 'z'.repeat(MiB) });
  assert.equal(fat.return_code, 0, fat.stderr);
  assert.ok(JSON.stringify(fat.body).length < 2 * OUTPUT_CAP);
  assert.equal(fat.limit_exceeded, 'output_bytes');
  await finishCase(S, a);
});

test('#10 view of a folder with many long names: the listing is cut at the output cap', async (t) => {
  const a = await attacker(S, t);
  const prep = await py(S.server, a.id, "import os\nos.mkdir('/workspace/many')\nfor i in range(3000): open('/workspace/many/%0200d' % i, 'w').close()");
  assert.equal(prep.return_code, 0, prep.stderr);
  const r = await editor(S.server, a.id, { command: 'view', path: 'many' });
  assert.equal(r.return_code, 0, r.stderr);
  const m = MARKER.exec(r.stdout);
  assert.ok(m, 'cut with the marker');
  assert.equal(Buffer.byteLength(r.stdout) - m[0].length, OUTPUT_CAP);
  assert.equal(OUTPUT_CAP + Number(m[1]), 3000 * 201, 'kept + dropped = the whole listing');
  assert.equal(r.limit_exceeded, 'output_bytes');
  assert.equal(r.body.stdout_dropped_bytes, 3000 * 201 - OUTPUT_CAP);
  assert.equal(content(r).file_type, 'directory');
  await finishCase(S, a);
});
