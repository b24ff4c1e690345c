/**
 * text_editor_code_execution over HTTP: every command with the Anthropic detail fields,
 * errors as results (return_code 1, `text_editor: …` in stderr, error_code), paths
 * relative or under /workspace/, escapes refused, undo history per file and per session.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { startServer, api, createSession, exec, sh, py, type TestServer } from '../helpers/server.js';
import { SMALL_IO_BYTES } from '../../src/files/workspace-fs.js';

let server: TestServer;
let id: string;

const ed = (input: Record<string, unknown>, sid = id) => exec(server, sid, 'text_editor_code_execution', input);
const content = (r: { body: any }) => r.body.result_block.content as Record<string, any>;

before(async () => {
  server = await startServer({ SANDBOX_WARM_POOL_SIZE: '2' });
  id = await createSession(server);
});
after(async () => {
  if (server && (server.proc.exitCode !== null || server.proc.signalCode !== null)) console.error(`server died early:\n${server.logs().slice(-4000)}`);
  await server?.stop();
});

test('create writes a new file (parents too) and reports is_file_update false', async () => {
  const r = await ed({ command: 'create', path: 'notes/a.txt', file_text: 'hello\nworld\n' });
  assert.equal(r.status, 200);
  assert.equal(r.return_code, 0);
  assert.equal(r.stderr, '');
  assert.match(r.stdout, /notes\/a\.txt/);
  assert.equal(r.body.result_block.type, 'text_editor_code_execution_tool_result');
  assert.equal(content(r).type, 'code_execution_result');
  assert.deepEqual(
    content(r).content.map((f: { type: string; filename: string; size_bytes: number }) => [f.type, f.filename, f.size_bytes]),
    [['code_execution_output', 'notes/a.txt', 12]],
    'the file it wrote, as an artifact',
  );
  assert.equal(content(r).is_file_update, false);
  assert.equal((await sh(server, id, 'cat notes/a.txt')).stdout, 'hello\nworld\n');
});

test('view of a file: its text in stdout with file_type, num_lines, start_line, total_lines', async () => {
  const r = await ed({ command: 'view', path: 'notes/a.txt' });
  assert.equal(r.return_code, 0);
  assert.equal(r.stdout, 'hello\nworld\n');
  const c = content(r);
  assert.equal(c.file_type, 'text');
  assert.equal(c.num_lines, 2);
  assert.equal(c.start_line, 1);
  assert.equal(c.total_lines, 2);
});

test('view_range is 1-indexed and inclusive; -1 means to the end', async () => {
  await ed({ command: 'create', path: 'lines.txt', file_text: 'line1\nline2\nline3\nline4\nline5\n' });
  const mid = await ed({ command: 'view', path: 'lines.txt', view_range: [2, 4] });
  assert.equal(mid.return_code, 0);
  assert.equal(mid.stdout, 'line2\nline3\nline4');
  assert.equal(content(mid).num_lines, 3);
  assert.equal(content(mid).start_line, 2);
  assert.equal(content(mid).total_lines, 5);
  const tail = await ed({ command: 'view', path: 'lines.txt', view_range: [4, -1] });
  assert.equal(tail.stdout, 'line4\nline5');
  assert.equal(content(tail).num_lines, 2);
  assert.equal(content(tail).start_line, 4);
});

test('view of a directory lists two levels deep', async () => {
  await sh(server, id, 'mkdir -p tree/sub/deeper && touch tree/top.txt tree/sub/b.txt tree/sub/deeper/c.txt');
  const r = await ed({ command: 'view', path: 'tree' });
  assert.equal(r.return_code, 0);
  const entries = r.stdout.split('\n').filter(Boolean);
  for (const e of ['top.txt', 'sub', 'sub/b.txt'])
    assert.ok(
      entries.some((x) => x.replace(/\/$/, '').endsWith(e)),
      `${e} in ${JSON.stringify(entries)}`,
    );
  assert.ok(!entries.some((x) => x.includes('deeper/c.txt')), 'not deeper than two levels');
  const root = await ed({ command: 'view', path: '/workspace' });
  assert.equal(root.return_code, 0);
  assert.ok(root.stdout.split('\n').includes('lines.txt'));
});

test('create over an existing file overwrites it, says so, and undo_edit restores it', async () => {
  await ed({ command: 'create', path: 'over.txt', file_text: 'v1\n' });
  const r = await ed({ command: 'create', path: 'over.txt', file_text: 'v2\n' });
  assert.equal(r.return_code, 0);
  assert.equal(content(r).is_file_update, true);
  assert.equal((await sh(server, id, 'cat over.txt')).stdout, 'v2\n');
  const u = await ed({ command: 'undo_edit', path: 'over.txt' });
  assert.equal(u.return_code, 0);
  assert.equal((await sh(server, id, 'cat over.txt')).stdout, 'v1\n');
});

test('str_replace edits a unique match and returns the diff hunk fields', async () => {
  await ed({ command: 'create', path: 'code.py', file_text: 'a = 1\nb = 2\nc = 3\nd = 4\n' });
  const r = await ed({ command: 'str_replace', path: 'code.py', old_str: 'b = 2', new_str: 'b = 20\nbb = 21' });
  assert.equal(r.return_code, 0, r.stderr);
  assert.equal((await sh(server, id, 'cat code.py')).stdout, 'a = 1\nb = 20\nbb = 21\nc = 3\nd = 4\n');
  const c = content(r);
  assert.equal(c.old_start, 1);
  assert.equal(c.new_start, 1);
  assert.equal(c.old_lines, 4);
  assert.equal(c.new_lines, 5);
  assert.deepEqual(c.lines, [' a = 1', '-b = 2', '+b = 20', '+bb = 21', ' c = 3', ' d = 4']);
});

test('str_replace with no match or several matches is an error with counts and line numbers', async () => {
  await ed({ command: 'create', path: 'dup.txt', file_text: 'x\ny\nx\n' });
  const none = await ed({ command: 'str_replace', path: 'dup.txt', old_str: 'zzz', new_str: 'q' });
  assert.equal(none.status, 200);
  assert.equal(none.return_code, 1);
  assert.equal(none.stdout, '');
  assert.match(none.stderr, /^text_editor: .*not found/);
  assert.equal(typeof content(none).error_code, 'string');
  const many = await ed({ command: 'str_replace', path: 'dup.txt', old_str: 'x', new_str: 'q' });
  assert.equal(many.return_code, 1);
  assert.match(many.stderr, /2 times/);
  assert.match(many.stderr, /1, 3/);
  assert.equal(content(many).error_code, 'invalid_tool_input');
  assert.equal((await sh(server, id, 'cat dup.txt')).stdout, 'x\ny\nx\n', 'the file is unchanged');
});

test('insert puts new_str after insert_line (0 = top); out of range is an error', async () => {
  await ed({ command: 'create', path: 'ins.txt', file_text: 'line1\nline2\n' });
  const r = await ed({ command: 'insert', path: 'ins.txt', insert_line: 1, new_str: 'inserted' });
  assert.equal(r.return_code, 0, r.stderr);
  assert.equal((await sh(server, id, 'cat ins.txt')).stdout, 'line1\ninserted\nline2\n');
  await ed({ command: 'insert', path: 'ins.txt', insert_line: 0, new_str: 'top' });
  assert.equal((await sh(server, id, 'cat ins.txt')).stdout, 'top\nline1\ninserted\nline2\n');
  const bad = await ed({ command: 'insert', path: 'ins.txt', insert_line: 99, new_str: 'nope' });
  assert.equal(bad.return_code, 1);
  assert.match(bad.stderr, /^text_editor: .*out of range/);
  assert.equal(content(bad).error_code, 'invalid_tool_input');
  const neg = await ed({ command: 'insert', path: 'ins.txt', insert_line: -1, new_str: 'nope' });
  assert.equal(neg.return_code, 1);
});

test('undo_edit walks back a per-file history, then says there is nothing to undo', async () => {
  await ed({ command: 'create', path: 'u.txt', file_text: 'one\n' });
  await ed({ command: 'str_replace', path: 'u.txt', old_str: 'one', new_str: 'two' });
  await ed({ command: 'insert', path: 'u.txt', insert_line: 1, new_str: 'three' });
  await ed({ command: 'create', path: 'other.txt', file_text: 'o\n' });
  await ed({ command: 'str_replace', path: 'other.txt', old_str: 'o', new_str: 'p' });
  assert.equal((await ed({ command: 'undo_edit', path: 'u.txt' })).return_code, 0);
  assert.equal((await sh(server, id, 'cat u.txt')).stdout, 'two\n');
  assert.equal((await ed({ command: 'undo_edit', path: '/workspace/u.txt' })).return_code, 0, 'same file by its absolute path');
  assert.equal((await sh(server, id, 'cat u.txt')).stdout, 'one\n');
  const empty = await ed({ command: 'undo_edit', path: 'u.txt' });
  assert.equal(empty.return_code, 1);
  assert.match(empty.stderr, /^text_editor: no edits to undo/);
  assert.equal((await sh(server, id, 'cat other.txt')).stdout, 'p\n', 'another file keeps its edit');
});

test('the undo history belongs to the session', async () => {
  await ed({ command: 'create', path: 'mine.txt', file_text: 'a\n' });
  await ed({ command: 'str_replace', path: 'mine.txt', old_str: 'a', new_str: 'b' });
  const other = await createSession(server);
  await ed({ command: 'create', path: 'mine.txt', file_text: 'b\n' }, other);
  const r = await ed({ command: 'undo_edit', path: 'mine.txt' }, other);
  assert.equal(r.return_code, 1);
  assert.match(r.stderr, /no edits to undo/);
});

test('files on both sides of the small-file threshold: every command reads and writes them whole, owned by the session', async () => {
  // Up to SMALL_IO_BYTES the workspace is read and written with synchronous calls, above it
  // through the thread pool: both paths must give the same files.
  for (const size of [SMALL_IO_BYTES, SMALL_IO_BYTES + 1]) {
    const path = `threshold/f${size}.txt`;
    // `size` bytes in lines of 64 (63 letters and a newline), then one unique last line.
    const text = `${'a'.repeat(63)}\n`.repeat(Math.ceil(size / 64)).slice(0, size - 8) + 'LASTLN!\n';
    const made = await ed({ command: 'create', path, file_text: text });
    assert.equal(made.return_code, 0, made.stderr);
    const owner = await sh(server, id, `stat -c '%s %u' ${path}; id -u`);
    const [stat, uid] = owner.stdout.trim().split('\n');
    assert.equal(stat, `${size} ${uid}`, `size and owner of the ${size}-byte file`);
    const view = await ed({ command: 'view', path });
    assert.equal(view.stdout, text);
    const sr = await ed({ command: 'str_replace', path, old_str: 'LASTLN!', new_str: 'END' });
    assert.equal(sr.return_code, 0, sr.stderr);
    const ins = await ed({ command: 'insert', path, insert_line: 0, new_str: 'TOP' });
    assert.equal(ins.return_code, 0, ins.stderr);
    const over = await ed({ command: 'create', path, file_text: `${text}more\n` });
    assert.equal(content(over).is_file_update, true);
    const edited = await sh(server, id, `head -c 4 ${path}; tail -c 9 ${path}; stat -c ' %s' ${path}`);
    assert.equal(edited.stdout, `${text.slice(0, 4)}${`${text}more\n`.slice(-9)} ${size + 5}\n`);
    // Undo walks back create, insert and str_replace to the bytes first written.
    for (const step of ['create', 'insert', 'str_replace']) assert.equal((await ed({ command: 'undo_edit', path })).return_code, 0, `undo of ${step}`);
    const back = await py(server, id, `import hashlib\nprint(hashlib.sha256(open('/workspace/${path}', 'rb').read()).hexdigest())`);
    assert.equal(back.stdout, createHash('sha256').update(text).digest('hex'));
  }
});

test('a missing file is file_not_found', async () => {
  for (const input of [
    { command: 'view', path: 'nope.txt' },
    { command: 'str_replace', path: 'nope.txt', old_str: 'a', new_str: 'b' },
    { command: 'insert', path: 'nope.txt', insert_line: 0, new_str: 'b' },
  ]) {
    const r = await ed(input);
    assert.equal(r.status, 200);
    assert.equal(r.return_code, 1, JSON.stringify(input));
    assert.equal(r.stdout, '');
    assert.match(r.stderr, /^text_editor: file not found: nope\.txt\n$/);
    assert.equal(content(r).error_code, 'file_not_found');
    assert.equal(content(r).type, 'code_execution_result');
  }
});

test('paths may be absolute under /workspace/, and the sandboxed code sees the same file', async () => {
  const r = await ed({ command: 'create', path: '/workspace/abs/dir/f.txt', file_text: 'absolute\n' });
  assert.equal(r.return_code, 0, r.stderr);
  assert.equal((await sh(server, id, 'cat abs/dir/f.txt')).stdout, 'absolute\n');
  assert.equal((await py(server, id, "print(open('/workspace/abs/dir/f.txt').read(), end='')")).stdout, 'absolute');
  assert.equal((await ed({ command: 'view', path: 'abs/dir/f.txt' })).stdout, 'absolute\n');
});

test('paths that escape the workspace are refused as results, and nothing is written outside', async () => {
  for (const path of ['../escape.txt', '/etc/passwd', '/tmp/x.txt', 'a/../../escape.txt', '/workspace/../etc/passwd']) {
    for (const input of [
      { command: 'view', path },
      { command: 'create', path, file_text: 'pwned' },
    ]) {
      const r = await ed(input);
      assert.equal(r.status, 200);
      assert.equal(r.return_code, 1, JSON.stringify(input));
      assert.match(r.stderr, /^text_editor: .*escapes workspace/);
      assert.equal(r.stdout, '');
    }
  }
  const outside = await sh(server, id, 'ls /tmp/x.txt ../escape.txt 2>&1; true');
  assert.match(outside.stdout, /No such file/);
});

test('the editor refuses to follow a symlink out of the workspace', async () => {
  await sh(server, id, 'ln -sf /etc/passwd link_out && ln -sfn /etc linkdir');
  const view = await ed({ command: 'view', path: 'link_out' });
  assert.equal(view.return_code, 1);
  assert.doesNotMatch(view.stdout, /root:/);
  const through = await ed({ command: 'view', path: 'linkdir/passwd' });
  assert.equal(through.return_code, 1);
  assert.doesNotMatch(through.stdout, /root:/);
});

test('input problems: unknown command or missing path is 422; a command missing its fields is an error result', async () => {
  for (const input of [{ command: 'bogus', path: 'a.txt' }, { command: 'view' }, { path: 'a.txt' }, { command: 'view', path: 7 }]) {
    const r = await api(server, 'POST', `/sessions/${id}/exec`, { tool: 'text_editor_code_execution', input });
    assert.equal(r.status, 422, JSON.stringify(input));
    assert.equal(r.body.code, 'SBX_VALIDATION');
  }
  const noText = await ed({ command: 'create', path: 'x.txt' });
  assert.equal(noText.return_code, 1);
  assert.match(noText.stderr, /create requires file_text/);
  const noStr = await ed({ command: 'str_replace', path: 'lines.txt', old_str: 'line1' });
  assert.equal(noStr.return_code, 1);
  assert.match(noStr.stderr, /requires old_str and new_str/);
  const noLine = await ed({ command: 'insert', path: 'lines.txt', new_str: 'z' });
  assert.equal(noLine.return_code, 1);
  assert.match(noLine.stderr, /requires new_str and insert_line/);
});
