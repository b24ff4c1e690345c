import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { EditorWorkers, TextEditor, UndoHistory, type EditorFs } from '../../src/tools/text-editor.js';
import { Searcher } from '../../src/tools/editor-ops.js';
import type { ResolvedPath } from '../../src/files/paths.js';
import type { Probe } from '../../src/files/workspace-fs.js';

/** Undo snapshots live on disk: one scratch folder per history, removed at the end. */
const undoRoot = mkdtempSync(`${tmpdir()}/editor-undo-`);
after(() => rmSync(undoRoot, { recursive: true, force: true }));
const newUndo = (maxBytes = 64 * 1024 * 1024) => new UndoHistory({ dir: mkdtempSync(`${undoRoot}/h-`), maxBytes });

/** An in-memory workspace: files by relative path; folders implied by file paths. */
class MemFs implements EditorFs {
  files = new Map<string, string>();
  async probe(p: ResolvedPath, _d: string, readMaxBytes: number): Promise<Probe> {
    if (p.rel === '.') return { kind: 'dir' };
    const text = this.files.get(p.rel);
    if (text !== undefined) {
      const size = Buffer.byteLength(text, 'utf8');
      return { kind: 'file', size, bytes: size <= readMaxBytes ? Buffer.from(text, 'utf8') : null };
    }
    for (const k of this.files.keys()) if (k.startsWith(`${p.rel}/`)) return { kind: 'dir' };
    return { kind: null };
  }
  async readFile(p: ResolvedPath) {
    return Buffer.from(this.files.get(p.rel) ?? '', 'utf8');
  }
  async writeFile(p: ResolvedPath, _d: string, data: Buffer | string) {
    this.files.set(p.rel, typeof data === 'string' ? data : data.toString('utf8'));
  }
  async tree(p: ResolvedPath) {
    const prefix = p.rel === '.' ? '' : `${p.rel}/`;
    const out = new Set<string>();
    for (const k of this.files.keys()) {
      if (!k.startsWith(prefix)) continue;
      const parts = k.slice(prefix.length).split('/');
      for (let i = 1; i <= Math.min(2, parts.length); i++) out.add(parts.slice(0, i).join('/'));
    }
    return [...out].sort();
  }
}

const setup = () => {
  const fs = new MemFs();
  return { fs, ed: new TextEditor(fs, newUndo()) };
};

test('create writes a new file and reports is_file_update false', async () => {
  const { fs, ed } = setup();
  const r = await ed.run({ command: 'create', path: 'notes/a.txt', file_text: 'hello\n' });
  assert.equal(r.return_code, 0);
  assert.equal(r.stdout, 'File created: notes/a.txt\n');
  assert.equal(r.details.is_file_update, false);
  assert.equal(fs.files.get('notes/a.txt'), 'hello\n');
});

test('create over an existing file overwrites, reports it, and can be undone', async () => {
  const { fs, ed } = setup();
  fs.files.set('a.txt', 'old\n');
  const r = await ed.run({ command: 'create', path: '/workspace/a.txt', file_text: 'new\n' });
  assert.equal(r.details.is_file_update, true);
  assert.equal(fs.files.get('a.txt'), 'new\n');
  const u = await ed.run({ command: 'undo_edit', path: 'a.txt' });
  assert.equal(u.stdout, 'Reverted a.txt\n');
  assert.equal(fs.files.get('a.txt'), 'old\n');
});

test('create without file_text is an invalid input error', async () => {
  const { ed } = setup();
  const r = await ed.run({ command: 'create', path: 'a.txt' });
  assert.equal(r.return_code, 1);
  assert.equal(r.stderr, 'text_editor: create requires file_text\n');
  assert.equal(r.details.error_code, 'invalid_tool_input');
});

test('view returns the text and line counts; view_range is 1-based inclusive, -1 to the end', async () => {
  const { fs, ed } = setup();
  fs.files.set('f.txt', 'l1\r\nl2\nl3\nl4\nl5\n');
  const all = await ed.run({ command: 'view', path: 'f.txt' });
  assert.equal(all.stdout, 'l1\nl2\nl3\nl4\nl5\n');
  assert.deepEqual(all.details, { file_type: 'text', num_lines: 5, start_line: 1, total_lines: 5 });
  const mid = await ed.run({ command: 'view', path: 'f.txt', view_range: [2, 4] });
  assert.equal(mid.stdout, 'l2\nl3\nl4');
  assert.equal(mid.details.num_lines, 3);
  assert.equal(mid.details.start_line, 2);
  const tail = await ed.run({ command: 'view', path: 'f.txt', view_range: [4, -1] });
  assert.equal(tail.stdout, 'l4\nl5');
});

test('view of a folder lists two levels', async () => {
  const { fs, ed } = setup();
  fs.files.set('a.txt', '');
  fs.files.set('sub/b.txt', '');
  fs.files.set('sub/deep/c.txt', '');
  const r = await ed.run({ command: 'view', path: '.' });
  assert.equal(r.stdout, 'a.txt\nsub\nsub/b.txt\nsub/deep\n');
});

test('view of a missing file is file_not_found', async () => {
  const { ed } = setup();
  const r = await ed.run({ command: 'view', path: 'nope.txt' });
  assert.equal(r.stderr, 'text_editor: file not found: nope.txt\n');
  assert.equal(r.details.error_code, 'file_not_found');
});

test('str_replace replaces a unique match and returns the diff hunk', async () => {
  const { fs, ed } = setup();
  fs.files.set('f.py', 'a = 1\nb = 2\nc = 3\n');
  const r = await ed.run({ command: 'str_replace', path: 'f.py', old_str: 'b = 2', new_str: 'b = 20\nbb = 21' });
  assert.equal(r.stdout, 'Edited f.py\n');
  assert.equal(fs.files.get('f.py'), 'a = 1\nb = 20\nbb = 21\nc = 3\n');
  assert.deepEqual(r.details.lines, [' a = 1', '-b = 2', '+b = 20', '+bb = 21', ' c = 3']);
  assert.equal(r.details.old_start, 1);
  assert.equal(r.details.old_lines, 3);
  assert.equal(r.details.new_lines, 4);
});

test('str_replace with several matches names how many and where', async () => {
  const { fs, ed } = setup();
  fs.files.set('f.txt', 'x\ny\nx\nz\nx\n');
  const r = await ed.run({ command: 'str_replace', path: 'f.txt', old_str: 'x', new_str: 'w' });
  assert.equal(r.return_code, 1);
  assert.equal(r.stderr, 'text_editor: old_str matched 3 times in f.txt (lines 1, 3, 5); must be unique\n');
  assert.equal(fs.files.get('f.txt'), 'x\ny\nx\nz\nx\n');
});

test('the needle search finds what a naive search finds, for short and long needles (native indexOf up to 250 bytes, KMP past it)', () => {
  // Small alphabets and periodic texts: the shapes where borders and near-misses abound.
  let seed = 7;
  const rand = (n: number) => {
    seed = (seed * 1103515245 + 12345) % 2 ** 31;
    return seed % n;
  };
  const naive = (text: Buffer, needle: Buffer, from: number) => {
    for (let i = from; i + needle.length <= text.length; i++) if (text.subarray(i, i + needle.length).equals(needle)) return i;
    return -1;
  };
  for (let round = 0; round < 300; round++) {
    const alphabet = 1 + rand(3);
    const m = [1, 5, 17, 249, 250, 251, 300, 700][rand(8)]!;
    const period = 1 + rand(12);
    const unit = Buffer.from(Array.from({ length: period }, () => 97 + rand(alphabet)));
    const text = Buffer.from(Array.from({ length: 500 + rand(3000) }, (_, i) => (rand(50) === 0 ? 97 + rand(alphabet) : unit[i % period]!)));
    // A needle taken from the text (so it is often found), sometimes with one byte changed.
    const at = rand(Math.max(1, text.length - m));
    const needle = Buffer.from(text.subarray(at, at + m));
    if (rand(3) === 0 && needle.length > 0) needle[rand(needle.length)] = 97 + rand(alphabet + 1);
    const from = rand(text.length);
    const search = new Searcher(needle);
    assert.equal(search.indexOf(text, from), naive(text, needle, from), `round ${round}: m ${m}, period ${period}, from ${from}`);
    assert.equal(search.indexOf(text), naive(text, needle, 0), `round ${round}: from 0`);
  }
});

test("str_replace with long needles (past the native search's 250 bytes: KMP) finds and misses as before, also on the red team's shape (V8's indexOf took 105 s on 16 MiB with it)", async () => {
  const { fs, ed } = setup();
  // (1 MiB of 'a' and a needle whose only mismatch is near its start: the native search
  // took ~7 s on this, the linear one ~50 ms; measured, not asserted)
  const body = 'a'.repeat(1 << 20);
  fs.files.set('big.txt', body);
  const miss = await ed.run({ command: 'str_replace', path: 'big.txt', old_str: `ab${'a'.repeat(19_998)}`, new_str: 'x' });
  assert.equal(miss.stderr, 'text_editor: old_str not found in big.txt\n');
  fs.files.set('big.txt', `${body}b${'a'.repeat(300)}`);
  const hit = await ed.run({ command: 'str_replace', path: 'big.txt', old_str: `b${'a'.repeat(300)}`, new_str: 'c' });
  assert.equal(hit.return_code, 0, hit.stderr);
  assert.equal(fs.files.get('big.txt'), `${body}c`);
});

test('str_replace with no match says so', async () => {
  const { fs, ed } = setup();
  fs.files.set('f.txt', 'abc\n');
  const r = await ed.run({ command: 'str_replace', path: 'f.txt', old_str: 'zzz', new_str: 'y' });
  assert.equal(r.stderr, 'text_editor: old_str not found in f.txt\n');
});

test('insert at 0, in the middle and at the end; out of range is an error', async () => {
  const { fs, ed } = setup();
  fs.files.set('f.txt', 'line1\nline2\n');
  await ed.run({ command: 'insert', path: 'f.txt', insert_line: 1, new_str: 'inserted' });
  assert.equal(fs.files.get('f.txt'), 'line1\ninserted\nline2\n');
  await ed.run({ command: 'insert', path: 'f.txt', insert_line: 0, new_str: 'top\n' });
  assert.equal(fs.files.get('f.txt'), 'top\nline1\ninserted\nline2\n');
  fs.files.set('g.txt', 'no-newline');
  await ed.run({ command: 'insert', path: 'g.txt', insert_line: 1, new_str: 'after' });
  assert.equal(fs.files.get('g.txt'), 'no-newline\nafter\n');
  const bad = await ed.run({ command: 'insert', path: 'f.txt', insert_line: 99, new_str: 'x' });
  assert.equal(bad.return_code, 1);
  assert.match(bad.stderr, /insert_line 99 out of range for f\.txt/);
});

test('undo history is per file and stacks', async () => {
  const { fs, ed } = setup();
  fs.files.set('a.txt', 'v1\n');
  fs.files.set('b.txt', 'b1\n');
  await ed.run({ command: 'str_replace', path: 'a.txt', old_str: 'v1', new_str: 'v2' });
  await ed.run({ command: 'str_replace', path: 'a.txt', old_str: 'v2', new_str: 'v3' });
  await ed.run({ command: 'str_replace', path: 'b.txt', old_str: 'b1', new_str: 'b2' });
  await ed.run({ command: 'undo_edit', path: 'a.txt' });
  assert.equal(fs.files.get('a.txt'), 'v2\n');
  await ed.run({ command: 'undo_edit', path: 'a.txt' });
  assert.equal(fs.files.get('a.txt'), 'v1\n');
  const none = await ed.run({ command: 'undo_edit', path: 'a.txt' });
  assert.equal(none.stderr, 'text_editor: no edits to undo for a.txt\n');
  assert.equal(fs.files.get('b.txt'), 'b2\n');
});

test('paths outside the workspace are refused as editor errors', async () => {
  const { ed } = setup();
  const r = await ed.run({ command: 'view', path: '../../etc/passwd' });
  assert.equal(r.return_code, 1);
  assert.equal(r.stderr, 'text_editor: path escapes workspace: ../../etc/passwd\n');
});

test('str_replace with more than 20 matches lists the first 20 line numbers, then …', async () => {
  const { fs, ed } = setup();
  fs.files.set('a.txt', 'a\n'.repeat(24_000));
  const r = await ed.run({ command: 'str_replace', path: 'a.txt', old_str: 'a', new_str: 'b' });
  const first20 = Array.from({ length: 20 }, (_, i) => i + 1).join(', ');
  assert.equal(r.stderr, `text_editor: old_str matched 24000 times in a.txt (lines ${first20}, …); must be unique\n`);
});

test('view text and the diff lines are capped at maxOutputBytes with the truncation marker', async () => {
  const fs = new MemFs();
  const ed = new TextEditor(fs, newUndo(), { maxOutputBytes: 1024 });
  fs.files.set('wide.txt', `${'x'.repeat(5000)}\nTARGET\n${'y'.repeat(3000)}`);
  const v = await ed.run({ command: 'view', path: 'wide.txt' });
  assert.equal(v.stdout, `${'x'.repeat(1024)}\n... [output truncated by sandbox: ${5000 + 8 + 3000 - 1024} bytes elided]`);
  assert.equal(v.limit_exceeded, 'output_bytes');
  assert.equal(v.stdout_dropped_bytes, 5000 + 8 + 3000 - 1024);
  assert.match(v.stderr, /^text_editor: a limit was reached: output \(1024 bytes per stream, SANDBOX_RUNNER_MAX_OUTPUT_BYTES\)/);
  const r = await ed.run({ command: 'str_replace', path: 'wide.txt', old_str: 'TARGET', new_str: 'HIT' });
  assert.equal(r.return_code, 0);
  assert.deepEqual(r.details.lines, [` ${'x'.repeat(1023)}\n... [output truncated by sandbox: ${5000 - 1023 + 6 + 3 + 3000} bytes elided]`]);
  assert.deepEqual([r.details.old_start, r.details.old_lines, r.details.new_lines], [1, 3, 3]);
  assert.equal(r.limit_exceeded, 'output_bytes');
  assert.equal(r.stdout_dropped_bytes, 0, 'stdout itself was whole');
  assert.equal(fs.files.get('wide.txt'), `${'x'.repeat(5000)}\nHIT\n${'y'.repeat(3000)}`);
});

test('undo restores the raw bytes of the file as it was (CRLF kept), from files on disk', async () => {
  const fs = new MemFs();
  const undo = newUndo();
  const ed = new TextEditor(fs, undo);
  fs.files.set('w.txt', 'one\r\ntwo\r\n');
  await ed.run({ command: 'str_replace', path: 'w.txt', old_str: 'two', new_str: '2' });
  assert.equal(fs.files.get('w.txt'), 'one\n2\n');
  assert.deepEqual([undo.entries, undo.bytes], [1, 10]);
  await ed.run({ command: 'undo_edit', path: 'w.txt' });
  assert.equal(fs.files.get('w.txt'), 'one\r\ntwo\r\n');
  assert.deepEqual([undo.entries, undo.bytes], [0, 0]);
});

test('the undo history keeps at most maxBytes; past it the oldest edits go and undo says why', async () => {
  const fs = new MemFs();
  const undo = newUndo(25);
  const ed = new TextEditor(fs, undo);
  fs.files.set('f.txt', 'v0 ten bytes'.slice(0, 10));
  for (let i = 0; i < 4; i++) assert.equal((await ed.run({ command: 'str_replace', path: 'f.txt', old_str: `v${i}`, new_str: `v${i + 1}` })).stderr, '');
  assert.deepEqual([undo.entries, undo.bytes], [2, 20]);
  assert.equal((await ed.run({ command: 'undo_edit', path: 'f.txt' })).return_code, 0);
  assert.equal((await ed.run({ command: 'undo_edit', path: 'f.txt' })).return_code, 0);
  assert.equal(fs.files.get('f.txt'), 'v2 ten byt');
  const none = await ed.run({ command: 'undo_edit', path: 'f.txt' });
  assert.match(none.stderr, /^text_editor: no edits to undo for f\.txt \(older edits were dropped to keep the session's undo history within SANDBOX_EDITOR_UNDO_MB=/);
  fs.files.set('big.txt', 'x'.repeat(100));
  const big = await ed.run({ command: 'create', path: 'big.txt', file_text: 'y' });
  assert.equal(big.return_code, 0);
  assert.match(big.stderr, /^text_editor: this edit cannot be undone: the previous content \(100 bytes\) is larger than the whole undo history may be/);
  const off = new TextEditor(fs, newUndo(0));
  const u = await off.run({ command: 'undo_edit', path: 'f.txt' });
  assert.deepEqual([u.stderr, u.details.error_code], ['text_editor: undo is disabled on this server (SANDBOX_EDITOR_UNDO_MB=0)\n', 'unavailable']);
});

test('operations above the inline threshold run in the worker pool with the same answers', async (t) => {
  const workers = new EditorWorkers({ maxThreads: 1 });
  t.after(() => workers.close());
  const fs = new MemFs();
  const ed = new TextEditor(fs, newUndo(), { maxOutputBytes: 1 << 20, workers, inlineMaxBytes: 0 });
  fs.files.set('f.py', 'a = 1\r\nb = 2\nc = 3\n');
  const r = await ed.run({ command: 'str_replace', path: 'f.py', old_str: 'b = 2', new_str: 'b = 20\nbb = 21' });
  assert.deepEqual(r.details.lines, [' a = 1', '-b = 2', '+b = 20', '+bb = 21', ' c = 3']);
  assert.equal(fs.files.get('f.py'), 'a = 1\nb = 20\nbb = 21\nc = 3\n');
  const v = await ed.run({ command: 'view', path: 'f.py', view_range: [2, 3] });
  assert.deepEqual([v.stdout, v.details.num_lines, v.details.total_lines], ['b = 20\nbb = 21', 2, 4]);
  const bad = await ed.run({ command: 'insert', path: 'f.py', insert_line: 9, new_str: 'x' });
  assert.equal(bad.stderr, 'text_editor: insert_line 9 out of range for f.py (it has 4 lines)\n');
  assert.equal((await ed.run({ command: 'undo_edit', path: 'f.py' })).return_code, 0);
  assert.equal(fs.files.get('f.py'), 'a = 1\r\nb = 2\nc = 3\n');
});

test('a call whose timeout passes while its work runs in the worker pool is stopped: the wall-clock limit, execution_time_exceeded, the file unchanged, the pool free for the next call', async (t) => {
  const workers = new EditorWorkers({ maxThreads: 1 });
  t.after(() => workers.close());
  const fs = new MemFs();
  const body = `${'a'.repeat(4 << 20)}b`;
  fs.files.set('big.txt', body);
  const deadline = new AbortController();
  const ed = new TextEditor(fs, newUndo(), { maxOutputBytes: 1 << 20, workers, inlineMaxBytes: 0, deadline: { signal: deadline.signal, seconds: 7 } });
  const call = ed.run({ command: 'str_replace', path: 'big.txt', old_str: 'ab', new_str: 'c' });
  deadline.abort(); // (the timer's part: fired while the task is queued or running)
  const r = await call;
  assert.equal(r.return_code, 1);
  assert.equal(r.limit_exceeded, 'wall_clock');
  assert.equal(r.details.error_code, 'execution_time_exceeded');
  assert.equal(r.stderr, "text_editor: big.txt: the operation took longer than the call's timeout (7s, wall-clock limit) and was stopped; the file is unchanged\n");
  assert.equal(fs.files.get('big.txt'), body);
  // A deadline that has not fired changes nothing; nor does one left after the call.
  const later = new AbortController();
  const ok = await new TextEditor(fs, newUndo(), { maxOutputBytes: 1 << 20, workers, inlineMaxBytes: 0, deadline: { signal: later.signal, seconds: 7 } }).run({
    command: 'str_replace',
    path: 'big.txt',
    old_str: 'ab',
    new_str: 'c',
  });
  later.abort();
  assert.equal(ok.return_code, 0, ok.stderr);
  assert.notEqual(ok.limit_exceeded, 'wall_clock'); // (its diff line is past the output cap)
  assert.equal(fs.files.get('big.txt'), `${'a'.repeat((4 << 20) - 1)}c`);
});

test('a call cancelled (its client left, its session deleted) ends its work in the worker pool: the call says so, the file is unchanged, and the pool serves the next call', async (t) => {
  const workers = new EditorWorkers({ maxThreads: 1 });
  t.after(() => workers.close());
  const fs = new MemFs();
  const body = `${'a'.repeat(4 << 20)}b`;
  fs.files.set('big.txt', body);
  const cancel = new AbortController();
  const ed = new TextEditor(fs, newUndo(), { maxOutputBytes: 1 << 20, workers, inlineMaxBytes: 0, signal: cancel.signal });
  const call = ed.run({ command: 'str_replace', path: 'big.txt', old_str: 'ab', new_str: 'c' });
  cancel.abort();
  const r = await call;
  assert.equal(r.return_code, 1);
  assert.match(r.stderr, /the operation was cancelled/);
  assert.equal(fs.files.get('big.txt'), body);
  const next = new TextEditor(fs, newUndo(), { maxOutputBytes: 1 << 20, workers, inlineMaxBytes: 0 });
  const ok = await next.run({ command: 'str_replace', path: 'big.txt', old_str: 'ab', new_str: 'c' });
  assert.equal(ok.return_code, 0, ok.stderr);
});
